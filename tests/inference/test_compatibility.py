"""infer.py warns when a recording is unlike the checkpoint's training frames (its metadata, its frame
size, its background level and PSF brightness), and stays silent when it is alike."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import tifffile
import torch
from helpers_checkpoints import FRAME_PX, save_tiny_checkpoint

from dstorm3d.inference.compatibility import (
    compare_with_training,
    metadata_warnings,
    training_statistics,
)
from dstorm3d.modules.checkpoints import load_module
from dstorm3d.utils.paths import REPO_ROOT
from dstorm3d.utils.tiff import write_imagej_tiff


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("compatibility")
    return save_tiny_checkpoint(folder / "tiny.ckpt", ["model/head=offsets"], folder)


@pytest.fixture(scope="module")
def module(checkpoint):
    return load_module(checkpoint)


def test_frames_of_the_training_distribution_pass_and_far_ones_warn(module):
    """Held-out frames of the checkpoint's own distribution (another seed) raise nothing; the same frames
    with 1,000 counts more baseline, or 20× brighter or darker, do (the tiny quickstart model: background
    50–150 photons, 10k–30k photons per emitter, no camera baseline)."""
    training = training_statistics(module, frames=64, seed=0)
    alike = training_statistics(module, frames=16, seed=1)
    assert compare_with_training(alike, training).warnings() == []
    offset = alike + np.array([1000.0, 0.0])
    (line,) = compare_with_training(offset, training).warnings()
    assert "background level" in line and "camera=<name>" in line
    for factor in (20.0, 1 / 20.0):
        (line,) = compare_with_training(alike * np.array([1.0, factor]), training).warnings()
        assert "brightest PSF pixels" in line


def test_metadata_that_contradicts_the_checkpoint_warns(module, tmp_path):
    frame = np.zeros((FRAME_PX, FRAME_PX), np.uint16)
    setup = module.optical_setup
    same = tmp_path / "same.tif"
    write_imagej_tiff(same, frame, setup.pixel_size_um, "YX", info={"optical_setup": setup.to_dict()})
    assert metadata_warnings(module, [same], (FRAME_PX, FRAME_PX)) == []
    other = tmp_path / "other.tif"
    optics = {**setup.to_dict(), "wavelength_um": 0.58}
    write_imagej_tiff(other, frame, 0.16, "YX", info={"optical_setup": optics})
    lines = metadata_warnings(module, [other], (FRAME_PX, FRAME_PX))
    assert len(lines) == 2 and "160.0 nm" in lines[0] and "wavelength 0.58" in lines[1]
    (small,) = metadata_warnings(module, [same], (FRAME_PX - 8, FRAME_PX))
    assert "smaller than the checkpoint's training frames" in small
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, frame)  # no calibration, no metadata: nothing to contradict
    assert metadata_warnings(module, [plain], (FRAME_PX, FRAME_PX)) == []


def run_infer(checkpoint, data, out, tmp_path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "infer.py"),
            f"ckpt={checkpoint}",
            f"data={data}",
            f"out={out}",
            "overlay_frames=0",
            f"hydra.run.dir={tmp_path / 'hydra' / out.name}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )


@pytest.mark.slow
def test_infer_is_silent_on_its_own_kind_of_recording_and_warns_far_from_it(checkpoint, tmp_path):
    """A recording from ``simulate ckpt=`` (the checkpoint's distribution) gives no warning; the same
    recording with 2,000 counts of offset that nobody subtracts gives one, in the log and summary.json."""
    simulated = subprocess.run(
        [
            sys.executable,
            "-m",
            "dstorm3d.simulate",
            f"ckpt={checkpoint}",
            "frames=4",
            "frame_shape=[32,32]",
            "emitters=300",
            "structure=random",
            "out=sim",
            f"hydra.run.dir={tmp_path / 'hydra' / 'sim'}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert simulated.returncode == 0, simulated.stderr[-2000:]
    result = run_infer(checkpoint, tmp_path / "sim" / "recording.tif", tmp_path / "alike", tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "WARNING" not in result.stdout + result.stderr
    assert json.loads((tmp_path / "alike" / "summary.json").read_text())["warnings"] == []
    frames = tifffile.imread(tmp_path / "sim" / "recording.tif").astype(np.uint16) + np.uint16(2000)
    tifffile.imwrite(tmp_path / "offset.tif", frames, photometric="minisblack")
    result = run_infer(checkpoint, tmp_path / "offset.tif", tmp_path / "far", tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    warned = [line for line in (result.stdout + result.stderr).splitlines() if "WARNING" in line]
    assert len(warned) == 1 and "background level" in warned[0], warned
    (recorded,) = json.loads((tmp_path / "far" / "summary.json").read_text())["warnings"]
    assert "background level" in recorded


def test_a_min_max_network_is_not_warned_about_offsets_it_cannot_see(tmp_path):
    """A network that min–max normalises every frame sees no camera offset: 2,000 counts added to frames of
    its own distribution raise no warning for it, while the same frames warn a scale-normalised network."""
    from dstorm3d.data.simulated import SimulatedDataModule
    from dstorm3d.inference.compatibility import recording_statistics, units
    from dstorm3d.simulation.simulator import batch_generator

    for kind, expected in (("minmax", 0), ("scale", 1)):
        path = save_tiny_checkpoint(
            tmp_path / f"{kind}.ckpt", ["model/head=offsets", f"model.normalization.kind={kind}"], tmp_path
        )
        module = load_module(path)
        data = SimulatedDataModule(
            module.hparams.optics, module.hparams.simulation, 8, test_samples=8, seed=5
        )
        batch = next(iter(data.test_dataloader()))
        frames = module.simulate(batch, batch_generator(torch.device("cpu"), 5, "t", 0)) + 2000.0
        dataset = [{"frames": frame} for frame in frames]
        unit, slack = units(module)
        check = compare_with_training(
            recording_statistics(module, dataset), training_statistics(module), unit=unit, slack=slack
        )
        assert len(check.warnings()) == expected, (kind, check)
