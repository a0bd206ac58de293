"""``python evaluate.py``: the density benchmark on tiny untrained checkpoints (real CLI in subprocesses),
and the test sets and scores in-process.

The checkpoints are built as train.py builds its model (composed ``train.yaml``, quickstart experiment)
and saved in Lightning's format without training: 24 × 24 px frames, a 96-sample pupil, z 1–2 µm, an
8-channel trunk. Test: 2 densities × 4 frames, high and low SNR.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers_checkpoints import FRAME_PX, save_tiny_checkpoint
from helpers_hydra import composed

from dstorm3d.emitters import Emitters
from dstorm3d.evaluation.report import OUTPUT_FILES
from dstorm3d.evaluation.sweep import (
    ROW_COLUMNS,
    BaselineOptions,
    Condition,
    SweepSettings,
    build_test_set,
    checkpoint_physics,
    score_by_depth,
    score_point,
)
from dstorm3d.modules.checkpoints import load_module
from dstorm3d.utils.paths import REPO_ROOT

# Counts per 24 × 24 px field: 1 and 3 emitters per frame. MP on the first 2 frames, and only at 1.
SWEEP = [
    "frames=4",
    "counts=[1,3]",
    f"reference_field_px={FRAME_PX}",
    "z_bins=2",
    "baseline_max_frames=2",
    "baseline_max_count=1",
    "mp.window=15",
    "threads=1",
]


def run_evaluate(args: list[str], workdir: Path, expect: int = 0) -> subprocess.CompletedProcess:
    """The real CLI with its Hydra logs under ``workdir``; asserts the exit code."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(
        {
            "DSTORM3D_LOG_DIR": str(workdir / "logs"),
            "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")])),
        }
    )
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "evaluate.py"), *args],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == expect, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def read_rows(folder: Path) -> list[dict[str, str]]:
    with open(folder / "results.csv", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """Two PSFs: the Tetrapod with the offsets head, a clear pupil with a small volume head."""
    root = tmp_path_factory.mktemp("checkpoints")
    return {
        "tetrapod": save_tiny_checkpoint(root / "tetrapod.ckpt", [], root),
        "clear": save_tiny_checkpoint(
            root / "clear.ckpt", ["optics.mask=clear", "model/head=volume", "model.head.depth_slices=8"], root
        ),
    }


@pytest.fixture(scope="module")
def runs(checkpoints, tmp_path_factory) -> dict[str, Path]:
    """The same evaluation of both checkpoints three times: batch size 4, batch size 1, batch size 4."""
    root = tmp_path_factory.mktemp("evaluate")
    both = [f"ckpts=[{checkpoints['tetrapod']},{checkpoints['clear']}]", "labels=[Tetrapod,clear]", *SWEEP]
    folders = {"first": root / "first", "batch1": root / "batch1", "again": root / "again"}
    for name, folder in folders.items():
        run_evaluate([*both, f"batch_size={1 if name == 'batch1' else 4}", f"out={folder}"], root)
    return folders


# ------------------------------------------------------------------------------------------ the CLI
def test_outputs_hold_every_checkpoint_condition_density_and_the_baseline(runs):
    folder = runs["first"]
    for name in OUTPUT_FILES:
        assert (folder / name).is_file() and (folder / name).stat().st_size > 0, name
    rows = read_rows(folder)
    assert list(rows[0]) == list(ROW_COLUMNS)
    networks = {(r["label"], r["condition"], r["count_per_field"]) for r in rows if r["method"] == "network"}
    assert networks == {
        (label, condition, count)
        for label in ("Tetrapod", "clear")
        for condition in ("high_snr", "low_snr")
        for count in ("1", "3")
    }
    baseline = [r for r in rows if r["method"] == "matching_pursuit"]
    # MP per PSF (the two checkpoints' frames differ), at the one count it may run, on 2 frames
    assert sorted((r["label"], r["condition"]) for r in baseline) == sorted(
        (f"MP ({label})", condition)
        for label in ("Tetrapod", "clear")
        for condition in ("high_snr", "low_snr")
    )
    assert all(r["count_per_field"] == "1" and r["frames"] == "2" for r in baseline)
    for row in rows:
        assert float(row["density_per_um2"]) == pytest.approx(
            int(row["count_per_field"]) / (FRAME_PX * 0.11) ** 2
        )
        truths = int(row["tp"]) + int(row["fn"])
        assert truths == int(row["count_per_field"]) * int(row["frames"])  # integer counts on the field size
        for score in ("jaccard", "recall", "jaccard_std", "recall_std"):
            assert math.isfinite(float(row[score])), (row["label"], score)
        for score in ("rmse_lat_nm", "rmse_ax_nm", "efficiency_3d"):
            assert math.isfinite(float(row[score])) == (int(row["tp"]) > 0), (row["label"], score)
    # the Tetrapod baseline finds a lone bright emitter, within tens of nm
    lone = next(r for r in baseline if r["label"] == "MP (Tetrapod)" and r["condition"] == "high_snr")
    assert float(lone["recall"]) == 1.0 and float(lone["rmse_lat_nm"]) < 40 and float(lone["rmse_ax_nm"]) < 60

    summary = json.loads((folder / "results.json").read_text())
    assert [c["label"] for c in summary["checkpoints"]] == ["Tetrapod", "clear"]
    assert summary["command"].startswith("python evaluate.py 'ckpts=[")
    assert [(s["label"], s["count_per_field"]) for s in summary["skipped"]] == [
        ("MP (Tetrapod)", 3),
        ("MP (Tetrapod)", 3),
        ("MP (clear)", 3),
        ("MP (clear)", 3),
    ]
    assert len({c["test_set"] for c in summary["checkpoints"]}) == 2
    bounds = [b for b in summary["crlb"] if b["condition"] == "high_snr"]
    assert len(bounds) == 2 and all(0 < v < 100 for b in bounds for v in b["lat_nm"] + b["ax_nm"])
    depth = summary["rmse_vs_z"]
    assert {row["label"] for row in depth} == {"Tetrapod", "clear", "MP (Tetrapod)", "MP (clear)"}
    assert all(math.isfinite(row["crlb_lat_nm"]) for row in depth)

    report = (folder / "report.md").read_text()
    assert summary["command"] in report
    for heading in ("## high_snr", "## low_snr"):
        assert heading in report
    # trained on 10k–30k photons and 50–150 background: the low-SNR condition says it is outside that
    high, low = report.split("## low_snr")
    assert "not trained for this condition" not in high
    for label in ("Tetrapod", "clear"):
        note = f"**{label} was not trained for this condition**: 5,000 photons (trained: 10,000–30,000)"
        assert note in low
    assert (
        report.count("| Tetrapod | 4 |") == 4 and report.count("| clear | 4 |") == 4
    )  # 2 conditions × 2 counts


def test_results_are_identical_twice_and_for_any_batch_size(runs):
    def numbers(folder: Path) -> tuple[bytes, bytes, list, list]:
        summary = json.loads((folder / "results.json").read_text())
        return (
            (folder / "results.csv").read_bytes(),
            (folder / "rmse_vs_z.csv").read_bytes(),
            summary["rows"],
            summary["crlb"],
        )

    first = numbers(runs["first"])
    assert numbers(runs["again"]) == first
    assert numbers(runs["batch1"]) == first


def test_existing_outputs_are_kept_without_overwrite(runs, checkpoints, tmp_path):
    before = (runs["first"] / "results.csv").read_bytes()
    result = run_evaluate(
        [f"ckpt={checkpoints['tetrapod']}", f"out={runs['first']}", "frames=1", "counts=[1]"],
        tmp_path,
        expect=2,
    )
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "overwrite=true" in lines[0]
    assert (runs["first"] / "results.csv").read_bytes() == before


@pytest.mark.parametrize("case", ["missing", "not_a_checkpoint"])
def test_bad_checkpoints_exit_2_with_one_line(case, tmp_path):
    if case == "missing":
        path = tmp_path / "absent.ckpt"
    else:
        path = tmp_path / "notes.ckpt"
        path.write_text("not a checkpoint\n")
    result = run_evaluate([f"ckpt={path}", f"out={tmp_path / 'out'}"], tmp_path, expect=2)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert not (tmp_path / "out" / "results.json").exists()


@pytest.mark.parametrize(
    "overrides, message",
    [
        ([], "no checkpoint"),
        (["ckpts=[a.ckpt,b.ckpt]", "labels=[one]"], "labels has 1 entries for 2"),
        (["ckpt=a.ckpt", "counts=[]"], "counts must be"),
        (["ckpt=a.ckpt", "conditions=[{photons:1000}]"], "needs photons and background"),
        (["ckpt=a.ckpt", "blur_sigma_px=[2,1]"], "blur_sigma_px must be"),
        (["ckpt=a.ckpt", "+emitters.count_range=[1,2]"], "unknown key(s) ['count_range']"),
    ],
)
def test_bad_settings_are_one_line_user_errors(overrides, message, tmp_path):
    from dstorm3d.evaluation.sweep import checkpoint_paths, settings_from_config
    from dstorm3d.utils.cli import UserInputError

    with composed("evaluate.yaml", overrides, tmp_path) as cfg:
        with pytest.raises(UserInputError, match=re.escape(message)):
            checkpoint_paths(cfg)
            settings_from_config(cfg)


# ------------------------------------------------------------------------------------------ in-process
HIGH = Condition.from_config({"name": "high", "photons": 30000, "background": 150}, {"kind": "ideal"}, 0)
LOW = Condition.from_config({"name": "low", "photons": 5000, "background": 50}, {"kind": "ideal"}, 1)


def settings(**changes) -> SweepSettings:
    base = dict(counts=(1, 3), frames=4, seed=7, reference_field_px=FRAME_PX, conditions=(HIGH, LOW))
    return SweepSettings(**{**base, **changes})


@pytest.fixture(scope="module")
def modules(checkpoints) -> dict[str, object]:
    return {name: load_module(path) for name, path in checkpoints.items()}


def test_test_sets_share_emitters_across_psfs_and_conditions_and_frames_depend_only_on_their_index(modules):
    tetrapod = checkpoint_physics(modules["tetrapod"], settings())
    clear = checkpoint_physics(modules["clear"], settings())
    assert tetrapod.key != clear.key and tetrapod.frame_shape == (FRAME_PX, FRAME_PX)
    assert tetrapod.blur_sigma_px == (0.9, 1.1)  # the quickstart simulation's blur
    first = build_test_set(tetrapod, HIGH, 3, settings())
    again = build_test_set(checkpoint_physics(modules["tetrapod"], settings()), HIGH, 3, settings())
    assert torch.equal(first.frames, again.frames) and torch.equal(first.truth.xyz, again.truth.xyz)
    other_psf = build_test_set(clear, HIGH, 3, settings())
    assert torch.equal(other_psf.truth.xyz, first.truth.xyz) and not torch.equal(
        other_psf.frames, first.frames
    )
    low = build_test_set(tetrapod, LOW, 3, settings())
    assert torch.equal(low.truth.xyz, first.truth.xyz)
    assert float(low.frames.mean()) < 0.5 * float(first.frames.mean())
    fewer = build_test_set(tetrapod, HIGH, 3, settings(), frames=2)
    assert torch.equal(fewer.frames, first.frames[:2])
    # pure Poisson: the background level shows in the emitter-free frame corners on average
    assert float(first.frames.mean()) > 150


def test_counts_scale_with_frame_area_to_keep_the_density(modules):
    """On 24 × 24 frames, 10 per 121 × 121 field expects 0.39 per frame: frames hold 0 or 1, mean exact."""
    wide = settings(reference_field_px=121, frames=400, counts=(10,))
    physics = checkpoint_physics(modules["tetrapod"], wide)
    test_set = build_test_set(physics, HIGH, 10, wide)
    per_frame = test_set.truth.counts(labelled_only=True)
    assert set(per_frame.tolist()) == {0, 1}
    expected = 10 * FRAME_PX**2 / 121**2
    assert test_set.expected_per_frame == pytest.approx(expected)
    assert test_set.emitters_per_frame == pytest.approx(
        expected, abs=4 * math.sqrt(expected * (1 - expected) / 400)
    )


def test_scores_pool_frames_and_spread_per_frame():
    """Frame 0: two truths, both found 30 nm off in x; frame 1: one truth missed, one false positive."""
    truth = Emitters.from_lists([np.array([[1.0, 1.0, 1.5], [2.0, 2.0, 1.2]]), np.array([[1.0, 2.0, 1.8]])])
    pred = Emitters.from_lists(
        [np.array([[1.03, 1.0, 1.5], [2.03, 2.0, 1.2]]), np.array([[2.0, 1.0, 1.8]])],
        score=[np.ones(2), np.ones(1)],
    )
    scores = score_point(pred, truth, 150.0)
    assert (scores["tp"], scores["fp"], scores["fn"]) == (2, 1, 1)
    assert scores["jaccard"] == pytest.approx(0.5)
    assert scores["jaccard_std"] == pytest.approx(np.std([1.0, 0.0], ddof=1))
    assert scores["rmse_lat_nm"] == pytest.approx(30.0, abs=1e-3) and scores["rmse_ax_nm"] == pytest.approx(
        0.0, abs=1e-3
    )
    assert math.isnan(scores["rmse_lat_nm_std"])  # one frame has matches
    assert scores["precision"] == pytest.approx(2 / 3) and scores["recall"] == pytest.approx(2 / 3)
    depth = score_by_depth(pred, truth, 150.0, np.array([1.0, 1.4, 2.0]))
    assert [(d["truths"], d["pairs"]) for d in depth] == [(1, 1), (2, 1)]
    assert depth[1]["recall"] == pytest.approx(0.5) and depth[0]["rmse_lat_nm"] == pytest.approx(
        30.0, abs=1e-3
    )


def test_baseline_options_defaults_match_the_config():
    from omegaconf import OmegaConf

    config = OmegaConf.load(REPO_ROOT / "configs" / "evaluate.yaml")
    defaults = BaselineOptions()
    for key, value in config.mp.items():
        assert getattr(defaults, key) == value, key


def test_read_noise_enters_the_bound_as_extra_poisson_background():
    from dstorm3d.evaluation.sweep import Condition, Physics, depth_bounds, read_noise_variance
    from dstorm3d.optics.crlb import crlb
    from dstorm3d.optics.masks import tetrapod_mask
    from dstorm3d.optics.psf_model import ScalarPupilPSF
    from dstorm3d.optics.pupil import PupilModel
    from dstorm3d.optics.setup import storm_setup

    readout = {
        "kind": "readout",
        "baseline": 30.0,
        "read_noise": [8.0, 12.0],
        "read_noise_correlation_px": None,
    }
    assert read_noise_variance(readout) == pytest.approx((64 + 96 + 144) / 3)  # E[σ²], σ ~ U(8, 12)
    assert read_noise_variance({**readout, "read_noise": 10.0}) == 100.0
    assert read_noise_variance({"kind": "ideal"}) == 0.0
    setup = storm_setup(pupil_grid=96)
    mask = torch.as_tensor(tetrapod_mask(setup), dtype=torch.float32)
    physics = Physics(ScalarPupilPSF(setup, mask), (24, 24), None, False, None)
    pupil = PupilModel(setup, mask, dtype=torch.float64)
    z = np.array([1.0, 2.0])
    condition = Condition.from_config(
        {"name": "c", "photons": 10000, "background": 0.0, "camera": readout}, {}, 0
    )
    bound = depth_bounds(pupil, physics, condition, z, None)
    expected = crlb(pupil, z, 10000, read_noise_variance(readout))
    np.testing.assert_allclose(bound["x_nm"], expected["x_nm"], rtol=1e-9)
    ideal = depth_bounds(
        pupil,
        physics,
        Condition.from_config({"name": "i", "photons": 10000, "background": 0.0}, {"kind": "ideal"}, 0),
        z,
        None,
    )
    assert (bound["x_nm"] > 1.5 * ideal["x_nm"]).all()  # 100 photons/px of read variance vs none
