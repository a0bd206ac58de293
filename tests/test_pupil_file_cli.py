"""``optics.pupil=<file.npz>`` (a PSF calibration file) through the real commands, in subprocesses:
``python -m dstorm3d.optics.show``, ``train.py`` → ``infer.py`` (the PSF from the checkpoint) →
``evaluate.py`` (test frames, MP and CRLB with another calibration), and the one-line refusals."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from dstorm3d.optics.masks import tetrapod_mask
from dstorm3d.optics.psf_model import ScalarPupilPSF, load_psf, save_psf
from dstorm3d.optics.setup import storm_setup
from dstorm3d.optics.zernike import pupil_polar_grid
from dstorm3d.utils.cli import EXIT_USAGE
from dstorm3d.utils.paths import REPO_ROOT

TRAIN = [
    "debug=default",
    "optics=calibrated",
    "simulation.frame_shape=[24,24]",
    "model.network.channels=8",
    "model.head.depth_slices=11",
    "data.batch_size=2",
    "data.val_samples=2",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "test=false",
]
EVALUATE = [
    "frames=2",
    "counts=[1]",
    "reference_field_px=24",
    "z_bins=2",
    "baseline_max_frames=1",
    "mp.window=15",
    "threads=1",
]


def calibration(path: Path, blur: float) -> Path:
    """A calibration of STORM optics on a 96-sample grid, z 1–2 µm: Tetrapod, apodised, blurred."""
    setup = storm_setup(pupil_grid=96, z_range_um=(1.0, 2.0), name="calibrated_storm")
    rho, _ = pupil_polar_grid(setup.pupil_grid, setup.pupil_radius_px)
    model = ScalarPupilPSF(setup, tetrapod_mask(setup), np.exp(-0.5 * rho**2), blur, label=path.stem)
    return save_psf(path, model, metadata={"beads": 7})


def run(command: list[str], workdir: Path, expect: int = 0) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(
        {
            "MPLBACKEND": "Agg",
            "OMP_NUM_THREADS": "1",
            "DSTORM3D_LOG_DIR": str(workdir / "logs"),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")])),
        }
    )
    result = subprocess.run(
        [sys.executable, *command], cwd=workdir, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == expect, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def error_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


@pytest.mark.slow
def test_show_draws_the_calibrated_psf_and_refuses_a_setup_that_disagrees(tmp_path):
    """The z-stack written is the file's model (phase, amplitude, 0.8 px blur) bit for bit in float32; the
    STORM preset (203 pupil samples) with a 96-sample file is one error line, no files."""
    path = calibration(tmp_path / "beads.npz", blur=0.8)
    quick = ["show.z_slices=3", "show.window_px=24", "show.crlb_z_points=3", "show.crlb_window_px=48"]
    show = ["-m", "dstorm3d.optics.show", *quick]
    run([*show, "optics=calibrated", f"optics.pupil={path}", f"hydra.run.dir={tmp_path / 'ok'}"], tmp_path)
    summary = json.loads((tmp_path / "ok" / "summary.json").read_text())
    assert summary["mask"] == {"kind": "pupil file", "path": str(path.resolve())}
    assert summary["psf_model"]["blur_sigma_px"] == 0.8 and summary["psf_model"]["pupil_amplitude"] == "given"
    assert summary["setup"]["name"] == "calibrated_storm" and summary["setup"]["pupil_grid"] == 96
    model, _ = load_psf(path)
    expected = model.zstack(np.linspace(1.0, 2.0, 3), 24).numpy().astype(np.float32)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "ok" / "psf_zstack.tif"), expected)

    refused = run([*show, f"optics.pupil={path}", f"hydra.run.dir={tmp_path / 'no'}"], tmp_path, EXIT_USAGE)
    (line,) = error_lines(refused)
    assert "was calibrated with" in line and "pupil_grid = 96" in line and "optics=calibrated" in line
    assert not (tmp_path / "no" / "summary.json").exists()


@pytest.mark.slow
def test_train_infer_and_evaluate_take_the_psf_from_a_calibration_file(tmp_path):
    """train.py optics=calibrated optics.pupil=<file> stores the file's model in its checkpoint; infer.py
    localizes with that checkpoint (its overlays re-render with that PSF); evaluate.py optics.pupil=<other
    file> tests the network on frames of the other PSF (its blur in the report)."""
    trained = calibration(tmp_path / "trained.npz", blur=0.8)
    run(
        [str(REPO_ROOT / "train.py"), *TRAIN, f"optics.pupil={trained}", f"hydra.run.dir={tmp_path / 'run'}"],
        tmp_path,
    )
    (checkpoint,) = sorted((tmp_path / "run" / "checkpoints").glob("epoch*.ckpt"))
    stored = torch.load(checkpoint, weights_only=True)["hyper_parameters"]["psf"]
    assert stored == load_psf(trained)[0].to_dict()

    frames = np.random.default_rng(0).poisson(30.0, (2, 24, 24)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "frames.tif", frames, photometric="minisblack")
    infer = [
        str(REPO_ROOT / "infer.py"),
        f"ckpt={checkpoint}",
        f"data={tmp_path / 'frames.tif'}",
        "num_workers=0",
    ]
    run(
        [*infer, "overlay_frames=1", f"out={tmp_path / 'infer'}", f"hydra.run.dir={tmp_path / 'h'}"], tmp_path
    )
    summary = json.loads((tmp_path / "infer" / "summary.json").read_text())
    assert summary["optical_setup"]["name"] == "calibrated_storm"
    assert summary["psf_model"]["label"] == "trained" and summary["psf_model"]["blur_sigma_px"] == 0.8
    assert (tmp_path / "infer" / "overlay_frame0001.png").is_file()

    other = calibration(tmp_path / "other.npz", blur=1.5)
    evaluate = [str(REPO_ROOT / "evaluate.py"), f"ckpt={checkpoint}", *EVALUATE, f"optics.pupil={other}"]
    run([*evaluate, f"out={tmp_path / 'evaluate'}"], tmp_path)
    results = json.loads((tmp_path / "evaluate" / "results.json").read_text())
    (described,) = results["checkpoints"]
    assert (
        described["physics"]["psf"]["blur_sigma_px"] == 1.5
        and described["physics"]["psf"]["label"] == "other"
    )
    assert results["settings"]["optics"]["pupil"] == str(other)

    missing = run([*evaluate, "optics.pupil=nowhere.npz", f"out={tmp_path / 'e2'}"], tmp_path, EXIT_USAGE)
    assert error_lines(missing) == [
        "error: optics.pupil=nowhere.npz: no such file (e.g. optics.pupil=calibration.npz)"
    ]
