"""The calibration fit against known truths: a synthetic aberrated bead stack and the model Tetrapod's beads.

Both fit the library directly (dstorm3d.calibration.fit) on small stacks, a few seconds each on one core.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dstorm3d.calibration import beads as bead_tools
from dstorm3d.calibration.fit import (
    FitSettings,
    StackData,
    defocus_phase,
    fit_bead_stack,
    fitted_psf,
    lateral_shift_phase,
    phase_fidelity,
    zernike_decomposition,
)
from dstorm3d.calibration.synthetic import bead_stack, random_aberration
from dstorm3d.optics.masks import aperture_support, tetrapod_mask
from dstorm3d.optics.psf_model import ScalarPupilPSF
from dstorm3d.optics.pupil import PupilModel
from dstorm3d.optics.setup import OpticalSetup, storm_setup
from dstorm3d.optics.zernike import zernike_phase


def small_setup(pupil_grid: int = 48) -> OpticalSetup:
    """The SMLM 2016 optics (NA 1.49 oil, λ 0.66 µm, 100 nm pixels, index-matched) on a small pupil grid."""
    return OpticalSetup(
        wavelength_um=0.66,
        na=1.49,
        n_immersion=1.518,
        n_sample=1.518,
        camera_pixel_um=16.0,
        magnification=160.0,
        nfp_um=1.0,
        z_range_um=(0.2, 1.8),
        pupil_grid=pupil_grid,
        aperture="objective",
    )


def stack_data(photons: np.ndarray, step_um: float, window: int, reference: float | None) -> StackData:
    """Find the beads of a ``(Z, H, W)`` photon stack and start the fit as the command does."""
    stack = bead_tools.BeadStack(photons, step_um, None, None)  # type: ignore[arg-type]
    windows = bead_tools.bead_windows(stack, photons, window, 10.0, window, None)
    start = bead_tools.focus_guess(windows.photons) if reference is None else reference
    background = bead_tools.background_guess(windows.photons)
    signal = (windows.photons - background[:, None, None, None]).sum(axis=(-2, -1)).mean(axis=1)
    return StackData(
        photons=windows.photons,
        corners=windows.corners,
        slices=np.arange(photons.shape[0]),
        z_step_um=step_um,
        reference_slice=float(start),
        start_rowcol=bead_tools.initial_positions(windows.photons, int(round(start))),
        start_photons=signal,
        start_background=background,
    )


def test_synthetic_aberrated_beads_give_back_phase_blur_and_focus():
    """Random Zernike aberration (j = 5…15, 1 rad RMS), blur σ 1 px, 3 beads at unknown sub-pixel positions,
    41 slices 40 nm apart with the focus between slices, Poisson noise; the fit starts from the clear pupil
    with the command's defaults (2 amplitude terms, per-slice photons and background)."""
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    setup = small_setup()
    support = aperture_support(setup)
    truth_phase, _ = random_aberration(
        setup.pupil_grid, setup.zernike_radius_px, list(range(5, 16)), 1.0, rng
    )
    truth = ScalarPupilPSF(setup, truth_phase * support, None, blur_sigma_px=1.0)
    focus, step = 20.37, 0.04  # 0-based fractional slice where the beads are at z = NFP; µm
    z = setup.nfp_um + (np.arange(41) - focus) * step
    rowcol = np.array([[15, 16], [16, 48], [44, 30]]) + rng.uniform(-0.5, 0.5, (3, 2))
    photons = bead_stack(truth, rowcol, z, (64, 64), 20000.0, 5.0, 31, rng)
    data = stack_data(photons, step, 17, None)
    model, _ = fit_bead_stack(setup, data, FitSettings(max_noll=15, iterations=100))
    psf = fitted_psf(model, "synthetic")

    focus_error_nm = (model.focus_slice() - focus) * step * 1e3
    # compare the phases at the true focus: the fitted model's z there is the fitted defocus
    z_there = (focus - model.focus_slice()) * step * float(model.step_scale().detach())
    fidelity = phase_fidelity(psf.phase + defocus_phase(setup, z_there), truth.phase, support)
    found = model.positions_px().detach().numpy()
    position_error = np.min(np.linalg.norm(found[:, None] - rowcol[None], axis=-1), axis=1)
    # measured: fidelity 0.99996, σ 0.9995 px, focus −1.1 nm, positions ≤ 0.008 px, step scale 0.998
    assert fidelity >= 0.9995
    assert abs(psf.blur_sigma_px - 1.0) <= 0.01
    assert abs(focus_error_nm) <= 3.0
    assert position_error.max() <= 0.02
    assert abs(float(model.step_scale().detach()) - 1) <= 0.01


def test_the_model_tetrapods_own_beads_give_back_the_tetrapod():
    """The paper's model Tetrapod (STORM setup, water sample, pupil grid 64), 3 beads over z 0.5–3.5 µm in
    100 nm steps, blur σ 1 px, 20 000 photons on 5 per pixel; focus slice given (z = NFP), so the defocus
    term (Noll 4, 1.815 rad in the Tetrapod) is fitted with the others up to Noll 28."""
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    setup = storm_setup(pupil_grid=64)
    support = aperture_support(setup)
    mask = tetrapod_mask(setup)
    truth = ScalarPupilPSF(setup, mask, None, blur_sigma_px=1.0)
    z = np.arange(0.5, 3.51, 0.1)
    focus = (setup.nfp_um - 0.5) / 0.1  # slice 10: z = NFP
    rowcol = np.array([[22, 22], [22, 57], [57, 40]]) + rng.uniform(-0.5, 0.5, (3, 2))
    photons = bead_stack(truth, rowcol, z, (80, 80), 20000.0, 5.0, 41, rng)
    data = stack_data(photons, 0.1, 33, focus)
    settings = FitSettings(max_noll=28, amplitude_terms=0, iterations=100, fit_focus=False)
    model, _ = fit_bead_stack(setup, data, settings)
    psf = fitted_psf(model, "tetrapod beads")
    fidelity = phase_fidelity(psf.phase, mask, support)
    coefficients = zernike_decomposition(psf.phase, setup, list(range(4, 29)))
    # measured: fidelity 0.99976; Noll 12 −1.7725 (true −1.772), Noll 4 1.8145 (1.815); σ 0.987 px
    assert fidelity >= 0.9995
    assert coefficients[12] == pytest.approx(-1.772, abs=0.01)
    assert coefficients[4] == pytest.approx(1.815, abs=0.01)
    assert abs(psf.blur_sigma_px - 1.0) <= 0.025


def test_the_lateral_shift_phase_moves_the_models_origin():
    """With the tip/tilt of ``shift``, an emitter at r + shift renders exactly as one at r did without it."""
    setup = small_setup(64)
    shift = (0.3, -0.7)  # x (columns), y (rows) in pixels
    plain = PupilModel(setup, None, dtype=torch.float64)
    tilted = PupilModel(setup, lateral_shift_phase(setup, shift), dtype=torch.float64)
    xyz = torch.tensor([[1.0, 1.2, 1.3]], dtype=torch.float64)
    moved = xyz + torch.tensor([[shift[0] * 0.1, shift[1] * 0.1, 0.0]], dtype=torch.float64)
    corner = torch.tensor([5, 3])
    before = plain.psf_on_grid(xyz, corner, (15, 15))
    after = tilted.psf_on_grid(moved, corner, (15, 15))
    assert torch.allclose(before, after, atol=1e-12)  # measured: 3e-17 (peak 0.049)
    assert not torch.allclose(before, plain.psf_on_grid(moved, corner, (15, 15)), atol=1e-3)


def test_phase_fidelity_ignores_a_constant_and_sees_a_difference():
    setup = small_setup()
    support = aperture_support(setup)
    phase = np.where(support, np.random.default_rng(1).normal(size=support.shape), 0.0)
    assert phase_fidelity(phase + 2.0, phase, support) == pytest.approx(1.0)
    # a unit-variance Gaussian phase error: |E exp(iε)|² = exp(−1) = 0.37
    assert phase_fidelity(2 * phase, phase, support) == pytest.approx(np.exp(-1.0), abs=0.05)


def test_the_pixelwise_phase_recovers_aberrations_beyond_the_zernike_orders():
    """Truth: Noll 5–11 (0.8 rad RMS) plus Noll 22 (0.4 rad) and 29 (0.3 rad); the fit's Zernike orders stop
    at 11. The smooth pixel-wise map (smoothness 1) recovers what the Zernike terms cannot."""
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    setup = small_setup()
    support = aperture_support(setup)
    low, _ = random_aberration(setup.pupil_grid, setup.zernike_radius_px, list(range(5, 12)), 0.8, rng)
    high = zernike_phase({22: 0.4, 29: 0.3}, setup.pupil_grid, setup.zernike_radius_px)
    truth = ScalarPupilPSF(setup, (low + high) * support, None, blur_sigma_px=1.0)
    z = setup.nfp_um + (np.arange(41) - 20) * 0.04
    rowcol = np.array([[15, 16], [16, 48], [44, 30]]) + rng.uniform(-0.5, 0.5, (3, 2))
    photons = bead_stack(truth, rowcol, z, (64, 64), 50000.0, 5.0, 31, rng)
    data = stack_data(photons, 0.04, 17, 20.0)
    fidelity = {}
    for pixelwise in (False, True):
        settings = FitSettings(
            max_noll=11,
            amplitude_terms=0,
            iterations=100,
            fit_focus=False,
            fit_step_scale=False,
            pixelwise=pixelwise,
        )
        model, _ = fit_bead_stack(setup, data, settings)
        fidelity[pixelwise] = phase_fidelity(fitted_psf(model, "").phase, truth.phase, support)
    # measured: 0.664 with the Zernike terms alone, 0.986 with the pixel-wise map
    assert fidelity[False] < 0.75
    assert fidelity[True] >= 0.98
