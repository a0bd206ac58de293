"""Precision bound: exact pupil derivatives and the paper's Tetrapod values (reference.md §9)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dstorm3d.optics.crlb import crlb, psf_with_derivatives
from dstorm3d.optics.masks import tetrapod_mask
from dstorm3d.optics.pupil import PupilModel
from dstorm3d.optics.setup import storm_setup

SETUP = storm_setup()


@pytest.fixture(scope="module")
def tetrapod() -> PupilModel:
    return PupilModel(SETUP, tetrapod_mask(SETUP), dtype=torch.float64)


@pytest.mark.parametrize("blur, integrate", [(None, False), (1.0, True)])
def test_pupil_derivatives_match_finite_differences(tetrapod, blur, integrate):
    xyz = torch.tensor([[3.31, 2.87, 0.7], [2.05, 3.12, 3.4]], dtype=torch.float64)
    corner = torch.tensor([10, 12])
    shape = (40, 40)
    _, dh = psf_with_derivatives(tetrapod, xyz, corner, shape, blur, integrate)
    step = 1e-5
    for axis in range(3):
        delta = torch.zeros_like(xyz)
        delta[:, axis] = step
        hp, _ = psf_with_derivatives(tetrapod, xyz + delta, corner, shape, blur, integrate)
        hm, _ = psf_with_derivatives(tetrapod, xyz - delta, corner, shape, blur, integrate)
        numeric = (hp - hm) / (2 * step)
        scale = float(numeric.abs().max())
        assert float((dh[:, axis] - numeric).abs().max()) <= 1e-4 * scale


def test_model_tetrapod_bound_matches_the_paper_values(tetrapod):
    """Measured 2.31 / 2.40 / 4.43 nm against the paper's 2.3 / 2.5 / 4.5 (4 % at most; the paper's values
    are read off a figure to one decimal), and alike at 5,000 photons: 6 % leaves rounding room."""
    z = np.linspace(0.0, 4.0, 41)
    bright = crlb(tetrapod, z, photons=30000, background=150)
    means = [float(bright[k].mean()) for k in ("x_nm", "y_nm", "z_nm")]
    for value, expected in zip(means, (2.3, 2.5, 4.5)):
        assert value == pytest.approx(expected, rel=0.06)
    dim = crlb(tetrapod, z, photons=5000, background=50)
    for key, expected in zip(("x_nm", "y_nm", "z_nm"), (7.3, 7.8, 14.1)):
        assert float(dim[key].mean()) == pytest.approx(expected, rel=0.06)


def test_emccd_excess_noise_and_photon_scaling(tetrapod):
    z = np.array([1.0, 2.5])
    ideal = crlb(tetrapod, z, photons=10000, background=1e-9)
    emccd = crlb(tetrapod, z, photons=10000, background=1e-9, emccd=True)
    np.testing.assert_allclose(emccd["z_nm"], ideal["z_nm"] * np.sqrt(2), rtol=1e-9)
    # without background the bound falls as 1/sqrt(N)
    four_times = crlb(tetrapod, z, photons=40000, background=1e-9)
    np.testing.assert_allclose(four_times["x_nm"], ideal["x_nm"] / 2, rtol=0.01)
