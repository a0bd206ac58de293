"""Estimating a recording's imaging conditions (dstorm3d.evaluation.conditions and
``python -m dstorm3d.estimate``) on EMCCD frames simulated with the committed SMLM Challenge 2016
calibration: known emitters, photons and background."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import torch
import yaml
from helpers_hydra import composed

from dstorm3d.errors import UserInputError
from dstorm3d.estimate import estimate
from dstorm3d.evaluation.conditions import ImagingConditions, estimate_conditions
from dstorm3d.optics.psf_model import load_psf
from dstorm3d.simulation.camera import camera_from_config
from dstorm3d.simulation.simulator import FrameSimulator
from dstorm3d.utils.paths import REPO_ROOT

PSF_FILE = REPO_ROOT / "studies" / "results" / "smlm2016_calibration" / "smlm2016_as_psf.npz"
CAMERA = yaml.safe_load((REPO_ROOT / "configs" / "camera" / "smlm2016_emccd.yaml").read_text())
FRAMES, PER_FRAME, SIZE, BACKGROUND = 12, 2, 48, 100.0
PHOTONS = (2000.0, 6000.0)  # alternating per emitter


def simulated_frames(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(counts (B, H, W) uint16 ADU, photons (B·M,))``: two emitters per 48×48 px frame, ≥ 1.2 µm apart,
    z 0.4–1.6 µm, on a uniform 100 photons/px background, through the challenge's EMCCD."""
    psf, _ = load_psf(PSF_FILE)
    rng = np.random.default_rng(seed)
    pixel = psf.setup.pixel_size_um
    xyz = np.zeros((FRAMES, PER_FRAME, 3))
    for b in range(FRAMES):
        while True:
            xy = rng.uniform(8 * pixel, (SIZE - 8) * pixel, (PER_FRAME, 2))
            if np.linalg.norm(xy[0] - xy[1]) > 1.2:
                break
        xyz[b, :, :2], xyz[b, :, 2] = xy, rng.uniform(0.4, 1.6, PER_FRAME)
    photons = np.tile(PHOTONS, (FRAMES, 1))
    batch = {
        "xyz": torch.tensor(xyz, dtype=torch.float32),
        "photons": torch.tensor(photons, dtype=torch.float32),
        "valid": torch.ones(FRAMES, PER_FRAME, dtype=torch.bool),
        "background": torch.full((FRAMES, 1, 1), BACKGROUND),
    }
    simulator = FrameSimulator(psf, {"frame_shape": [SIZE, SIZE], "camera": CAMERA})
    counts = simulator(batch, generator=torch.Generator().manual_seed(seed))
    return counts.round().clamp(0, 65535).numpy().astype(np.uint16), photons.ravel()


def test_the_fit_finds_the_emitters_background_and_photons_of_emccd_frames():
    psf, _ = load_psf(PSF_FILE)
    counts, photons = simulated_frames()
    frames_photons = camera_from_config(CAMERA).to_photons(torch.from_numpy(counts.astype(np.float64)))
    conditions, found = estimate_conditions(
        psf, frames_photons.numpy(), excess_noise=2.0, max_emitters=6, min_log_likelihood_ratio=20.0
    )
    # background: the frames' median pixel, which holds the PSFs' tails (measured 101.5 photons/px)
    assert conditions.background_photons[1] == pytest.approx(BACKGROUND, rel=0.03)
    # all 24 emitters found, no false one (measured: 24, 2 in every frame)
    assert conditions.detections == FRAMES * PER_FRAME
    assert conditions.emitters_per_frame == (2.0, 2.0, 2.0)
    # photons (truth: half 2000, half 6000, mean 4000): measured mean 3607 (−10 %: the background fixed
    # at the median pixel takes some signal), 95th percentile 6080
    assert conditions.photons[3] == pytest.approx(photons.mean(), rel=0.15)
    assert conditions.photons[2] == pytest.approx(PHOTONS[1], rel=0.15)
    overrides = conditions.simulation_overrides(density_factor=3.0, photon_margin=0.5, background_margin=0.2)
    gamma = overrides["emitters"]["photons"]
    assert gamma["shape"] * gamma["scale"] == pytest.approx(conditions.photons[3], rel=1e-3)  # its mean
    low, high = overrides["background"]["level"]
    assert low < BACKGROUND < high
    area = SIZE * SIZE * psf.setup.pixel_size_um**2
    assert overrides["emitters"]["density_per_um2"][1] == pytest.approx(3 * 2 / area, rel=1e-3)


def test_the_gamma_suggestion_keeps_the_mean_and_widens_the_spread():
    conditions = ImagingConditions(
        frames=4,
        frame_area_um2=40.96,
        background_photons=(90.0, 100.0, 110.0),
        emitters_per_frame=(1.0, 2.0, 3.0),
        photons=(1000.0, 4000.0, 8000.0, 4000.0, 2000.0),
        z_um=(0.3, 1.7),
        detections=4,
    )
    gamma = conditions.simulation_overrides(photon_margin=0.5)["emitters"]["photons"]
    # mean 4000, std 2000 × 1.5 = 3000: shape (4000/3000)² = 1.778, scale 4000/1.778 = 2250
    assert gamma["shape"] == pytest.approx(16 / 9, abs=1e-4) and gamma["scale"] == pytest.approx(
        2250.0, abs=0.01
    )
    assert conditions.simulation_overrides(background_margin=0.2)["background"]["level"] == [72.0, 132.0]


def test_the_command_writes_its_three_files_and_keeps_them(tmp_path):
    counts, _ = simulated_frames(seed=1)
    tifffile.imwrite(tmp_path / "frames.tif", counts, photometric="minisblack")
    out = tmp_path / "estimate"
    args = [
        f"recording={tmp_path / 'frames.tif'}",
        "optics=smlm2016_as",
        f"optics.pupil={PSF_FILE}",
        "camera=smlm2016_emccd",
        f"out={out}",
        "max_emitters=6",
    ]
    with composed("estimate.yaml", args, tmp_path) as cfg:
        record = estimate(cfg)
    assert {p.name for p in out.iterdir()} == {
        "conditions.json",
        "simulation_overrides.yaml",
        "localizations.csv",
    }
    assert json.loads((out / "conditions.json").read_text()) == record
    lines = (out / "localizations.csv").read_text().splitlines()
    assert lines[0].startswith('"id","frame","x [nm]","y [nm]","z [nm]"')
    # measured 22 of the 24 emitters (seed 1) at the default min_log_likelihood_ratio of 20
    assert len(lines) - 1 == record["conditions"]["detections"] >= 0.85 * FRAMES * PER_FRAME
    overrides = (out / "simulation_overrides.yaml").read_text().split()
    assert overrides[0] == "simulation.emitters.count_range=null" and len(overrides) == 4
    before = (out / "conditions.json").read_bytes()
    with (
        composed("estimate.yaml", args, tmp_path) as cfg,
        pytest.raises(UserInputError, match="overwrite=true"),
    ):
        estimate(cfg)
    assert (out / "conditions.json").read_bytes() == before
