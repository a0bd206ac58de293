"""``python -m dstorm3d.simulate``: the real CLI in subprocesses on tiny recordings, plus the sample and
blinking models in-process."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from dstorm3d.simulate import CSV_COLUMNS, OUTPUT_FILES
from dstorm3d.simulation.blinking import Blinking, BlinkingSettings
from dstorm3d.simulation.structures import (
    EllipsoidSettings,
    FilamentSettings,
    Volume,
    ellipsoid_structure,
    filament_structure,
    random_structure,
)
from dstorm3d.utils.cli import UserInputError
from dstorm3d.utils.paths import REPO_ROOT

PIXEL_NM = 110.0  # the storm optics: 11 µm camera pixels / 100×
FRAMES, HEIGHT, WIDTH = 6, 48, 40
TINY = [
    f"frames={FRAMES}",
    f"frame_shape=[{HEIGHT},{WIDTH}]",
    "emitters=300",
    "render_window_px=48",
    "blinking.density_per_um2=0.3",
]


def run_simulate(args: list[str], workdir: Path, expect: int = 0) -> subprocess.CompletedProcess:
    """Run the CLI with its Hydra logs under ``workdir``; assert the exit code."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(
        {
            "DSTORM3D_LOG_DIR": str(workdir / "logs"),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")])),
        }
    )
    result = subprocess.run(
        [sys.executable, "-m", "dstorm3d.simulate", *args],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == expect, result.stdout[-2000:] + result.stderr[-3000:]
    return result


def read_ground_truth(folder: Path) -> tuple[list[str], np.ndarray]:
    """Header and ``(n, 6)`` float rows of ground_truth.csv."""
    with open(folder / "ground_truth.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    return rows[0], np.array(rows[1:], dtype=np.float64).reshape(-1, len(rows[0]))


def snapshot(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir()) if path.is_file()}


@pytest.fixture(scope="module")
def recordings(tmp_path_factory) -> dict[str, Path]:
    """The same tiny setting twice with seed 0 (filaments, Tetrapod, readout camera)."""
    root = tmp_path_factory.mktemp("simulate")
    folders = {"first": root / "first", "again": root / "again"}
    for folder in folders.values():
        run_simulate([*TINY, "seed=0", f"out={folder}"], root)
    return folders


# ---------------------------------------------------------------------------------------- the files
def test_recording_is_a_uint16_time_series_in_microns_with_the_setup_in_its_info(recordings):
    path = recordings["first"] / "recording.tif"
    with tifffile.TiffFile(path) as tif:
        assert len(tif.pages) == FRAMES and tif.is_imagej and tif.series[0].axes == "TYX"
        stack = tif.asarray()
        description = json.loads(tif.imagej_metadata["Info"])
        assert tif.imagej_metadata["unit"] == "micron"
        assert 1.0 / tif.pages[0].resolution[0] == pytest.approx(PIXEL_NM / 1e3)
    assert stack.shape == (FRAMES, HEIGHT, WIDTH) and stack.dtype == np.uint16
    assert description["optical_setup"]["name"] == "storm" and description["mask"]["name"] == "tetrapod"
    assert description["pixel_size_um"] == pytest.approx(PIXEL_NM / 1e3) and description["seed"] == 0
    # readout camera with baseline 40 and read noise σ 8–12: emitters' light stands out above the baseline
    assert np.percentile(stack, 1) < 40 < np.median(stack) < 100 and stack.max() > 150


def test_ground_truth_is_thunderstorm_csv_in_nm_inside_the_frame_and_z_range(recordings):
    folder = recordings["first"]
    header, rows = read_ground_truth(folder)
    first_line = (folder / "ground_truth.csv").read_text().splitlines()[0]
    assert first_line == '"id","frame","x [nm]","y [nm]","z [nm]","intensity [photon]","emitter_id"'
    assert tuple(header) == CSV_COLUMNS
    assert len(rows) > FRAMES  # ≈ 0.3 /µm² × 23 µm² ≈ 7 per frame
    ids, frames, x, y, z, photons, emitter = rows.T
    np.testing.assert_array_equal(ids, np.arange(1, len(rows) + 1))
    assert np.all((emitter >= 1) & (emitter <= 300)) and len(np.unique(emitter)) > FRAMES
    for fluorophore in np.unique(emitter):  # fixed emitters: one position per emitter_id in every frame
        assert len(np.unique(rows[emitter == fluorophore, 2:5], axis=0)) == 1
    assert frames.min() >= 1 and frames.max() <= FRAMES and np.all(np.diff(frames) >= 0)
    assert np.all((x >= 0) & (x < WIDTH * PIXEL_NM) & (y >= 0) & (y < HEIGHT * PIXEL_NM))
    assert np.all((z >= 0) & (z <= 4000)) and z.max() > 100  # nm, not µm
    assert np.all(photons > 0) and 3000 < photons.mean() < 20000  # Gamma(3, 3000)
    record = json.loads((folder / "simulation.json").read_text())
    assert record["seed"] == 0 and record["settings"]["frames"] == FRAMES
    assert record["derived"]["localizations"] == len(rows)
    assert record["optical_setup"]["pupil_grid"] == 203


def test_the_same_seed_gives_identical_files(recordings):
    assert snapshot(recordings["first"]) == snapshot(recordings["again"])
    assert set(snapshot(recordings["first"])) == set(OUTPUT_FILES)  # no temporary files left behind


def test_existing_files_are_kept_and_overwrite_true_replaces_them(recordings, tmp_path):
    folder = tmp_path / "sim"
    shutil.copytree(recordings["first"], folder)
    before = snapshot(folder)
    result = run_simulate([*TINY, "seed=1", f"out={folder}"], tmp_path, expect=2)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "overwrite=true" in lines[0]
    assert snapshot(folder) == before
    run_simulate([*TINY, "seed=1", f"out={folder}", "overwrite=true"], tmp_path)
    after = snapshot(folder)
    assert set(after) == set(OUTPUT_FILES)
    for name in OUTPUT_FILES:  # a different seed gives a different recording
        assert after[name] != before[name], name


@pytest.mark.parametrize("setting", ["frames=0", "optics.mask=/no/such/mask.npy"])
def test_a_bad_setting_exits_2_with_one_line_and_writes_nothing(setting, tmp_path):
    folder = tmp_path / "sim"
    result = run_simulate([*TINY, setting, f"out={folder}"], tmp_path, expect=2)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert not folder.exists() or not any(folder.iterdir())


def test_a_single_in_focus_emitter_lights_the_pixel_the_csv_names(tmp_path):
    """Clear pupil, one emitter always ON at the clear pupil's best focus (≈ 0.72 × NFP)."""
    folder = tmp_path / "one"
    run_simulate(
        [
            "frames=4",
            "frame_shape=[32,48]",
            "structure=random",
            "emitters=1",
            "blinking.duty_cycle=1",
            "optics.mask=clear",
            "z_range_um=[1.07,1.07]",
            "render_window_px=32",
            "seed=5",
            f"out={folder}",
        ],
        tmp_path,
    )
    stack = tifffile.imread(folder / "recording.tif")
    _, rows = read_ground_truth(folder)
    assert len(rows) == 4 and np.all(rows[:, 1] == np.arange(1, 5))
    assert np.all(rows[:, 4] == pytest.approx(1070.0))
    x_px, y_px = rows[0, 2] / PIXEL_NM, rows[0, 3] / PIXEL_NM
    assert np.all(rows[:, 2:4] == rows[0, 2:4])  # a fixed position
    for frame in stack:
        row, col = np.unravel_index(np.argmax(frame), frame.shape)
        assert abs(col + 0.5 - x_px) <= 1.0 and abs(row + 0.5 - y_px) <= 1.0


# ---------------------------------------------------------------------------------------- in-process
@pytest.mark.parametrize(
    "setting",
    [
        "structure=spiral",
        "blinking.density_per_um2=100",
        "render_window_px=500",
        "z_range_um=[3.0,5.0]",
        "blinking.model=poisson",
        "photons.kind=fixed",
        "camera.baseline=[40,30]",
        "blur_sigma_px=-1",
        "optics.na=1.6",
    ],
)
def test_bad_settings_are_user_errors(setting, tmp_path):
    from helpers_hydra import composed
    from omegaconf import OmegaConf, open_dict

    from dstorm3d.simulate import plan_simulation
    from dstorm3d.utils.cli import user_errors

    with composed("simulate.yaml", [*TINY, setting], tmp_path) as cfg:
        with open_dict(cfg):
            cfg.pop("hydra")  # as the app sees it
        config = OmegaConf.to_container(cfg, resolve=True)
    with pytest.raises(user_errors()):
        plan_simulation(config)


VOLUME = Volume(width_um=6.0, height_um=5.0, z_range_um=(0.5, 3.5))


@pytest.mark.parametrize("structure", ["filaments", "ellipsoids", "random"])
def test_structures_fill_the_volume_deterministically(structure):
    def build(seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        if structure == "filaments":
            return filament_structure(rng, 2000, VOLUME, FilamentSettings(3, 5, 1.0, 0.1))[0]
        if structure == "ellipsoids":
            return ellipsoid_structure(rng, 2000, VOLUME, EllipsoidSettings(2, (1.0, 2.0), (0.5, 0.9)))[0]
        return random_structure(rng, 2000, VOLUME)[0]

    points = build(0)
    assert points.shape == (2000, 3) and VOLUME.contains(points).all()
    np.testing.assert_array_equal(points, build(0))
    assert not np.array_equal(points, build(1))
    # the structure reaches across the frame and through a good part of the z range
    assert np.ptp(points[:, 0]) > 0.5 * VOLUME.width_um and np.ptp(points[:, 2]) > 0.4 * VOLUME.z_span_um


def test_markov_blinking_has_the_asked_duty_cycle_and_on_time():
    settings = BlinkingSettings(model="markov", density_per_um2=1.0, duty_cycle=None, mean_on_frames=3.0)
    blinking = Blinking.from_settings(settings, emitters=300, area_um2=30.0)  # duty = 30 / 300
    assert blinking.duty_cycle == pytest.approx(0.1)
    states = np.array(list(blinking.states(np.random.default_rng(0), 300, 2000)))
    assert states.mean() == pytest.approx(0.1, abs=0.01)
    switch_offs = np.sum(states[:-1] & ~states[1:])
    assert states[:-1].sum() / switch_offs == pytest.approx(3.0, rel=0.1)  # mean ON run in frames


def test_blinking_refuses_more_active_emitters_than_the_structure_has():
    settings = BlinkingSettings(model="independent", density_per_um2=5.0, duty_cycle=None, mean_on_frames=1.0)
    with pytest.raises(UserInputError, match="raise emitters"):
        Blinking.from_settings(settings, emitters=10, area_um2=30.0)


def test_ckpt_draws_the_recording_from_the_checkpoints_training_distribution(tmp_path):
    """``ckpt=``: optics, phase mask, photons, blur, background, camera and density come from the checkpoint
    (the tiny quickstart model: 24 × 24 px frames of 1–5 emitters, uniform 10k–30k photons, background
    50–150, readout camera with baseline 0), except what the command line sets (here the photons)."""
    from helpers_checkpoints import FRAME_PX, save_tiny_checkpoint

    from dstorm3d.modules.checkpoints import load_module

    checkpoint = save_tiny_checkpoint(tmp_path / "tiny.ckpt", [], tmp_path)
    module = load_module(checkpoint)
    run_simulate(
        [
            f"ckpt={checkpoint}",
            "frames=3",
            "frame_shape=[32,32]",
            "emitters=300",
            "~photons",
            "+photons={kind: fixed, value: 5000.0}",
            "out=sim",
        ],
        tmp_path,
    )
    record = json.loads((tmp_path / "sim" / "simulation.json").read_text())
    taken = record["settings"]["from_checkpoint"]["keys"]
    assert taken == [
        "optics",
        "blur_sigma_px",
        "background",
        "camera",
        "blinking.density_per_um2",
        "structure",
    ]
    assert record["settings"]["structure"] == "random"  # training frames hold emitters uniform at random
    settings, simulation = record["settings"], module.hparams.simulation
    assert settings["photons"] == {"kind": "fixed", "value": 5000.0}  # the command line's
    assert settings["camera"] == dict(simulation["camera"]) and settings["background"] == dict(
        simulation["background"]
    )
    assert settings["blur_sigma_px"] == list(simulation["blur_sigma_px"])
    assert record["optical_setup"]["pupil_grid"] == 96 and record["optical_setup"]["z_range_um"] == [1.0, 2.0]
    area_um2 = (FRAME_PX * module.optical_setup.pixel_size_um) ** 2  # count_range [1, 5]: 3 per frame
    assert settings["blinking"]["density_per_um2"] == pytest.approx(3.0 / area_um2)
    assert record["mask"]["kind"] == "checkpoint" and record["mask"]["path"] == str(checkpoint.resolve())
    _, rows = read_ground_truth(tmp_path / "sim")
    assert np.all(rows[:, 5] == 5000.0) and np.all((rows[:, 4] >= 1000.0) & (rows[:, 4] <= 2000.0))
