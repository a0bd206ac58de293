"""``python -m dstorm3d.analyze``: the whole pipeline in-process on a simulated recording and on a short
infer-like table with its summary.json, and the real CLI's one-line errors (exit code 2, no outputs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers_hydra import composed
from helpers_tracking import TELOMERE_D, diffusing_truth, localize

from dstorm3d.analysis.command import AnalyzeSettings
from dstorm3d.analyze import analyze
from dstorm3d.errors import UserInputError
from dstorm3d.utils.paths import REPO_ROOT

ALL_FILES = {
    "drift.csv",
    "drift.png",
    "render.png",
    "render.tif",
    "render_density_zmean.tif",
    "frc.png",
    "frc.csv",
    "localizations_analyzed.csv",
    "localizations_picasso.hdf5",
    "localizations_picasso.yaml",
    "localizations_smap.csv",
    "summary.json",
}


@pytest.fixture
def recording_csv(sim, tmp_path) -> Path:
    """300 frames of the simulated filaments (~4,400 localizations) with a 150 nm drift."""
    return sim.simulate(seed=2, frames=300).write(tmp_path / "localizations.csv")


def test_the_pipeline_writes_every_file_with_consistent_counts(recording_csv, tmp_path, capsys):
    out = tmp_path / "analysis"
    args = [f"locs={recording_csv}", f"out={out}", "camera_pixel_nm=110", "filters.min_confidence=0.5"]
    with composed("analyze.yaml", args, tmp_path) as cfg:
        record = analyze(cfg)
    assert {p.name for p in out.iterdir()} == ALL_FILES  # no temporary files left
    assert json.loads((out / "summary.json").read_text()) == record
    steps = record["steps"]
    rows = len((recording_csv).read_text().splitlines()) - 1
    assert steps["input"]["localizations"] == rows and steps["input"]["frames"] == 300
    assert steps["drift"]["applied"] and steps["drift"]["windows"] == 6
    assert steps["merging"]["before"] == rows and steps["filtering"]["before"] == steps["merging"]["after"]
    assert record["localizations"] == steps["filtering"]["after"] < steps["merging"]["after"] < rows
    assert record["frc_resolution_nm"] == steps["frc"]["resolution_nm"] > 0
    assert record["tracking"] is None and record["precision"]["columns"]["z"] == "uncertainty_z [nm]"
    exported = len((out / "localizations_analyzed.csv").read_text().splitlines()) - 1
    assert exported == record["localizations"]
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 2 and printed[0].startswith(f"{rows} localizations in 300 frames; drift corrected")

    before = (out / "summary.json").read_bytes()
    with (
        composed("analyze.yaml", args, tmp_path) as cfg,
        pytest.raises(UserInputError, match="overwrite=true"),
    ):
        analyze(cfg)
    assert (out / "summary.json").read_bytes() == before


def test_a_short_infer_table_uses_its_summary_and_skips_the_drift(sim, tmp_path):
    """One frame of about 124 localizations over a 197 × 253 px frame of 110 nm pixels, with infer's
    summary.json beside the table."""
    rng = np.random.default_rng(4)
    recording = sim.simulate(seed=4, frames=1, emitters=2000, active=124, drift_amplitude_nm=0.0)
    recording.xyz_nm[:, :2] = rng.uniform([0, 0], [197 * 110, 253 * 110], (len(recording.frame), 2))
    locs = recording.write(tmp_path / "localizations.csv", uncertainties=False)
    summary = {
        "frames": 1,
        "frame_shape": [253, 197],
        "optical_setup": {"camera_pixel_um": 11.0, "magnification": 100.0, "z_range_um": [2.0, 6.0]},
    }
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    with composed("analyze.yaml", [f"locs={locs}", f"out={tmp_path / 'out'}"], tmp_path) as cfg:
        record = analyze(cfg)
    steps = record["steps"]
    assert not steps["drift"]["applied"] and "too short a recording" in steps["drift"]["reason"]
    assert record["recording"]["camera_pixel_nm"] == pytest.approx(110.0)
    assert steps["input"]["field_nm"] == pytest.approx([197 * 110.0, 253 * 110.0], abs=1.0)
    assert steps["render"]["shape"] == [1856, 1445]  # 253 × 110 / 15, 197 × 110 / 15 (rounded up)
    assert steps["frc"]["resolution_nm"] is None and "at least 50" in steps["frc"]["reason"]
    assert record["precision"]["columns"] == {"x": None, "y": None, "z": None}  # the 20 / 40 nm fallback


def test_the_default_output_folder_is_the_run_folder(recording_csv, tmp_path):
    args = [f"locs={recording_csv}", "camera_pixel_nm=110", "drift.enabled=false", "frc.enabled=false"]
    with composed("analyze.yaml", args, tmp_path / "run") as cfg:
        record = analyze(cfg)
    assert (tmp_path / "run" / "summary.json").is_file() and not (tmp_path / "run" / "drift.csv").exists()
    assert "drift" not in record["steps"] and "frc" not in record["steps"]


@pytest.mark.parametrize(
    "content, kept",
    [
        ('"id","frame","x [nm]","y [nm]","z [nm]"\n', 0),  # a header only: every step runs on nothing
        (
            '"frame","x [nm]","y [nm]","z [nm]"\n1,100,200,300\n2,110,200,310\n',
            1,
        ),  # no photons, no confidence
    ],
)
def test_empty_and_bare_tables_run_through(content, kept, tmp_path):
    (tmp_path / "t.csv").write_text(content)
    args = [f"locs={tmp_path / 't.csv'}", f"out={tmp_path / 'out'}", "camera_pixel_nm=100"]
    with composed("analyze.yaml", args, tmp_path) as cfg:
        record = analyze(cfg)
    assert record["localizations"] == kept and record["frc_resolution_nm"] is None
    header = (tmp_path / "out" / "localizations_analyzed.csv").read_text().splitlines()[0]
    assert "intensity" not in header and "confidence" not in header


def test_the_config_parses_to_the_documented_defaults():
    with composed("analyze.yaml", ["locs=x.csv"], Path("/tmp")) as cfg:
        from omegaconf import OmegaConf

        settings = AnalyzeSettings.from_config(OmegaConf.to_container(cfg, resolve=False))
    assert settings.drift.axial_scale is None and settings.drift.frames_per_window == 50
    assert settings.render.pixel_nm == 15.0 and settings.frc.pixel_nm == 5.0
    assert settings.precision.lateral_nm == 20.0 and settings.precision.axial_nm == 40.0


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("filters.min_confidence", 2, "filters.min_confidence=2: must be a number ≥ 0 and ≤ 1"),
        ("render.pixel_nm", 0, "render.pixel_nm=0: must be a number > 0"),
        ("frc.block_frames", 0, "frc.block_frames=0: must be a whole number ≥ 1"),
        ("tracking.max_step_nm", 100, "Could not override 'tracking.max_step_nm'"),
        ("tracking.enabled", "true", "tracking.frame_interval_s is required with tracking.enabled=true"),
        ("tracking", "{enabled: true, frame_interval_s: 0.1}", "tracking.enabled=true with merging.enabled"),
        (
            "tracking",
            "{enabled: true, frame_interval_s: 0.1, fit_lags: 30}",
            "tracking.fit_lags=30: must be ≤ tracking.max_lag=20",
        ),
    ],
)
def test_bad_settings_are_refused_before_the_table_is_read(key, value, expected, tmp_path):
    args = ["locs=missing.csv", f"out={tmp_path / 'out'}", f"{key}={value}"]
    if key == "tracking.fit_lags" or expected.startswith("tracking.fit_lags"):
        args.append("merging.enabled=false")
    with pytest.raises(Exception) as error, composed("analyze.yaml", args, tmp_path) as cfg:
        analyze(cfg)
    assert expected in str(error.value).splitlines()[0]
    assert isinstance(error.value, UserInputError) or "Could not override" in expected
    assert not (tmp_path / "out").exists()


def test_tracking_step_recovers_the_diffusion_of_a_telomere_movie(tmp_path, capsys):
    """48 emitters diffusing at D = 0.005 µm²/s for 300 frames at 10 Hz (test_tracking's movie), through
    analyze with merging and drift off: the tracking files, and D within 10 % (measured −0.1 %, 48 tracks)."""
    locs = localize(diffusing_truth(0, 48, 300, TELOMERE_D), 0).drop(columns=["emitter_id"])
    locs.insert(0, "id", np.arange(1, len(locs) + 1))
    locs.to_csv(tmp_path / "locs.csv", index=False)
    out = tmp_path / "analysis"
    args = [
        f"locs={tmp_path / 'locs.csv'}",
        f"out={out}",
        "tracking.enabled=true",
        "tracking.frame_interval_s=0.1",
        "merging.enabled=false",
        "drift.enabled=false",
        "frc.enabled=false",
        "render.enabled=false",
        "exports.picasso=false",
        "exports.smap=false",
    ]
    with composed("analyze.yaml", args, tmp_path) as cfg:
        record = analyze(cfg)
    written = {p.name for p in out.iterdir()}
    assert written == {"tracks.csv", "msd.csv", "tracking.json", "tracks_3d.png", "msd.png"} | {
        "localizations_analyzed.csv",
        "summary.json",
    }
    tracking = record["tracking"]
    assert 48 <= tracking["tracks"] <= 60 and tracking["localizations_in_tracks"] > 0.95 * len(locs)
    assert tracking["diffusion"]["diffusion_um2_per_s"] == pytest.approx(TELOMERE_D, rel=0.10)
    assert json.loads((out / "tracking.json").read_text())["diffusion"] == tracking["diffusion"]
    assert "tracks, D = " in capsys.readouterr().out


# ---------------------------------------------------------------------------------------- the real CLI
def run_analyze(args: list[str], workdir: Path, expect: int) -> subprocess.CompletedProcess:
    """``python -m dstorm3d.analyze`` with its Hydra logs under ``workdir``; asserts the exit code."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(
        {
            "DSTORM3D_LOG_DIR": str(workdir / "logs"),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")])),
            "OMP_NUM_THREADS": "1",
        }
    )
    result = subprocess.run(
        [sys.executable, "-m", "dstorm3d.analyze", *args],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == expect, result.stdout[-2000:] + result.stderr[-3000:]
    return result


@pytest.mark.slow
@pytest.mark.parametrize(
    "case, args, expected",
    [
        ("missing file", ["locs=nowhere.csv"], "error: locs=nowhere.csv: no such file"),
        ("missing column", ["locs=bad.csv"], 'error: locs=bad.csv has no column "z [nm]"'),
        (
            "nonsense threshold",
            ["locs=localizations.csv", "filters.max_photons=-1"],
            "error: filters.max_photons=-1",
        ),
        (
            "threshold on a missing column",
            ["locs=localizations.csv", "filters.max_axial_uncertainty_nm=50"],
            'error: filters.max_axial_uncertainty_nm needs a column "uncertainty_z [nm]"',
        ),
        ("no camera pixel", ["locs=localizations.csv"], "error: exports.picasso needs the camera pixel size"),
        (
            "unknown key",
            ["locs=localizations.csv", "drift.window=3"],
            "error: Could not override 'drift.window'",
        ),
    ],
)
def test_cli_bad_input_is_one_line_exit_2_and_no_outputs(case, args, expected, sim, tmp_path):
    sim.simulate(seed=0, frames=20).write(tmp_path / "localizations.csv", uncertainties=False)
    (tmp_path / "bad.csv").write_text('"id","frame","x [nm]","y [nm]"\n1,1,2,3\n')
    result = run_analyze([*args, "out=analysis"], tmp_path, 2)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(expected), result.stderr
    assert result.stdout.strip() == ""
    out = tmp_path / "analysis"
    assert not out.exists() or list(out.iterdir()) == []  # at most the empty folder the write check made


@pytest.mark.slow
def test_cli_analyzes_a_table(recording_csv, tmp_path):
    result = run_analyze([f"locs={recording_csv.name}", "out=analysis", "camera_pixel_nm=110"], tmp_path, 0)
    assert "drift corrected" in result.stdout and "FRC resolution" in result.stdout
    saved = json.loads((tmp_path / "analysis" / "summary.json").read_text())
    assert saved["command"].startswith("python -m dstorm3d.analyze locs=localizations.csv")
    assert {p.name for p in (tmp_path / "analysis").iterdir()} == ALL_FILES
