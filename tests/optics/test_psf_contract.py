"""The PSF-model contract, written once and run against every implementation and configuration.

Cases: the clear and the Tetrapod scalar pupil (STORM optics on a 96-sample grid), the Tetrapod with a
pupil amplitude (apodisation), the Tetrapod with a Gaussian blur, the objective aperture (super-critical
light), and two microscopes without a 4f system (NA 1.49, λ 0.66 µm, 100 nm pixels, automatic pupil grid):
``configs/optics/widefield.yaml`` as :func:`psf_from_config` reads it, and the same optics with an
astigmatic pupil phase. All in float64.
"""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from dstorm3d.evaluation.fitting import fit_emitters
from dstorm3d.optics.config import psf_from_config
from dstorm3d.optics.crlb import crlb
from dstorm3d.optics.masks import tetrapod_mask, zernike_mask
from dstorm3d.optics.psf_model import (
    ScalarPupilPSF,
    blur_images,
    load_psf,
    psf_from_dict,
    save_psf,
    total_blur_px,
)
from dstorm3d.optics.render import render_frames
from dstorm3d.optics.setup import OpticalSetup, storm_setup
from dstorm3d.optics.zernike import pupil_polar_grid
from dstorm3d.simulation.simulator import FrameSimulator
from dstorm3d.utils.paths import CONFIG_DIR

STORM = storm_setup(pupil_grid=96, z_range_um=(0.5, 2.5))
WIDEFIELD = dict(
    wavelength_um=0.66,
    na=1.49,
    n_immersion=1.518,
    n_sample=1.33,
    pixel_size_um=0.1,
    nfp_um=0.6,
    z_range_um=(0.0, 1.2),
    name="widefield",
)
ORIGIN = torch.zeros(2, dtype=torch.long)


def apodisation(setup: OpticalSetup) -> np.ndarray:
    """A smooth, not rotationally symmetric pupil amplitude (N, N)."""
    rho, theta = pupil_polar_grid(setup.pupil_grid, setup.pupil_radius_px)
    return np.exp(-0.8 * rho**2) * (1.0 + 0.2 * np.cos(3.0 * theta))


def make_case(name: str) -> ScalarPupilPSF:
    if name == "clear":
        return ScalarPupilPSF(STORM, label="clear")
    if name == "tetrapod":
        return ScalarPupilPSF(STORM, tetrapod_mask(STORM))
    if name == "amplitude":
        return ScalarPupilPSF(STORM, tetrapod_mask(STORM), apodisation(STORM))
    if name == "blur":
        return ScalarPupilPSF(STORM, tetrapod_mask(STORM), blur_sigma_px=1.3)
    if name == "objective":
        setup = storm_setup(pupil_grid=96, aperture="objective", z_range_um=(0.0, 2.0))
        return ScalarPupilPSF(setup, tetrapod_mask(setup))
    if name == "widefield_config":
        return psf_from_config(OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "optics/widefield.yaml")))
    if name == "widefield_astigmatic":
        setup = OpticalSetup.from_dict(WIDEFIELD)
        return ScalarPupilPSF(setup, zernike_mask(setup, {6: 1.0}), label="astigmatism 1 rad")
    raise KeyError(name)


CASES = ["clear", "tetrapod", "amplitude", "blur", "objective", "widefield_config", "widefield_astigmatic"]


@pytest.fixture(params=CASES)
def psf(request) -> ScalarPupilPSF:
    return make_case(request.param)


def depths(psf: ScalarPupilPSF, count: int = 5) -> torch.Tensor:
    return torch.linspace(*psf.setup.z_range_um, count, dtype=torch.float64)


def emitters_at(psf: ScalarPupilPSF, column_px: float, row_px: float, z: torch.Tensor) -> torch.Tensor:
    """``(Z, 3)`` positions (µm) at one lateral position (in pixels) and depths ``z``."""
    dx = psf.setup.pixel_size_um
    return torch.stack([torch.full_like(z, column_px * dx), torch.full_like(z, row_px * dx), z], dim=1)


def full_period(psf: ScalarPupilPSF, xyz: torch.Tensor) -> torch.Tensor:
    n = psf.setup.pupil_grid
    return psf.psf_on_grid(xyz, ORIGIN, (n, n))


def spectral_variance(images: torch.Tensor) -> torch.Tensor:
    """Per image ``(…, N, N)``, the width² (px²) along x from the lowest frequency of its periodic spectrum:
    w² = −N²/(2π²)·ln(|F(1/N)|/F(0)). A Gaussian blur of σ multiplies F(ν) by exp(−2π²σ²ν²), so it adds
    exactly σ² to w² (for a wide, compact image w² is its variance)."""
    n = images.shape[-1]
    spectrum = torch.fft.fft2(images)
    ratio = spectrum[..., 0, 1].abs() / spectrum[..., 0, 0].real
    return -(n**2) / (2 * math.pi**2) * torch.log(ratio)


# ---------------------------------------------------------------------------------------------- the contract
def test_one_dft_period_holds_exactly_one_photon_at_any_depth(psf):
    """Photon normalisation: the N × N period sums to 1 per photon at every z (measured |sum − 1| ≤ 5e-16,
    tolerance 1e-12). With the objective aperture the super-critical (evanescent) light decays with depth,
    so the sum is 1 at the coverslip and Σ A²·exp(−2z·κ)/Σ A² above it (0.84 at 0.5 µm, measured)."""
    z = depths(psf)
    sums = full_period(psf, emitters_at(psf, 10.3, 7.8, z)).sum(dim=(-2, -1))
    pupil = psf.pupil_model(torch.float64)
    if pupil.has_decay:
        weights = pupil.amplitude.square()
        expected = (weights * torch.exp(-2 * z.reshape(-1, 1, 1) * pupil.decay)).sum((-2, -1)) / weights.sum()
        assert float(sums[0]) == pytest.approx(1.0, abs=1e-12) and float(sums[-1]) < 0.9
        torch.testing.assert_close(sums, expected, rtol=0, atol=1e-12)
    else:
        torch.testing.assert_close(sums, torch.ones_like(sums), rtol=0, atol=1e-12)


def test_a_sub_pixel_shift_is_a_phase_ramp_of_the_periodic_psf(psf):
    """Shift equivariance: moving the emitter by δ = (0.37, −0.21) px multiplies the period's spectrum by
    exp(−2πi ν·δ) (the intensity is band-limited within the period; measured ≤ 6e-15 of the peak,
    tolerance 1e-11)."""
    z = depths(psf, 3)
    xyz = emitters_at(psf, 10.3, 7.8, z)
    delta = torch.tensor([0.37, -0.21], dtype=torch.float64)
    moved = xyz.clone()
    moved[:, :2] += delta * psf.setup.pixel_size_um
    n = psf.setup.pupil_grid
    nu = torch.fft.fftfreq(n, dtype=torch.float64)
    ramp = torch.exp(-2j * math.pi * (nu.reshape(1, -1) * delta[0] + nu.reshape(-1, 1) * delta[1]))
    predicted = torch.fft.ifft2(torch.fft.fft2(full_period(psf, xyz)) * ramp).real
    shifted = full_period(psf, moved)
    assert float((predicted - shifted).abs().max() / shifted.max()) < 1e-11


def test_a_whole_pixel_shift_moves_the_psf_with_its_grid(psf):
    """Moving emitter and grid by (+5, −3) px gives the same window (measured: bit-identical)."""
    xyz = emitters_at(psf, 10.3, 7.8, depths(psf, 3))
    moved = xyz.clone()
    moved[:, 0] += 5 * psf.setup.pixel_size_um
    moved[:, 1] -= 3 * psf.setup.pixel_size_um
    here = psf.psf_on_grid(xyz, torch.tensor([0, 0]), (31, 31))
    there = psf.psf_on_grid(moved, torch.tensor([-3, 5]), (31, 31))
    torch.testing.assert_close(there, here, rtol=0, atol=1e-15 * float(here.max()))


def test_plain_data_survives_torch_save_and_a_weights_only_load(psf):
    """to_dict → torch.save → torch.load(weights_only=True) → psf_from_dict: the same model, bit for bit."""
    buffer = io.BytesIO()
    torch.save({"psf": psf.to_dict()}, buffer)
    buffer.seek(0)
    data = torch.load(buffer, weights_only=True)["psf"]
    again = psf_from_dict(data)
    assert again.to_dict() == psf.to_dict() and again.setup == psf.setup
    xyz = emitters_at(psf, 6.4, 5.1, depths(psf, 2))
    assert torch.equal(again.psf_on_grid(xyz, ORIGIN, (15, 15)), psf.psf_on_grid(xyz, ORIGIN, (15, 15)))


def test_a_calibration_file_round_trips(psf, tmp_path):
    """save_psf → load_psf: the same model and metadata; the file is never replaced silently."""
    path = save_psf(tmp_path / "psf.npz", psf, metadata={"beads": 12, "rms_residual": 0.031})
    again, metadata = load_psf(path)
    assert again.to_dict() == psf.to_dict() and metadata == {"beads": 12, "rms_residual": 0.031}
    with pytest.raises(FileExistsError):
        save_psf(path, psf)
    save_psf(path, psf, metadata={"beads": 3}, overwrite=True)  # replaced only when asked
    assert load_psf(path)[1] == {"beads": 3}


def test_the_zstack_is_the_psf_at_a_pixel_centre(psf):
    """zstack(z, P) equals psf_on_grid for an emitter at the centre of pixel (P//2, P//2) (measured:
    bit-identical)."""
    z, window = depths(psf), 25
    centre = window // 2 + 0.5
    on_grid = psf.psf_on_grid(emitters_at(psf, centre, centre, z), ORIGIN, (window, window))
    torch.testing.assert_close(psf.zstack(z, window), on_grid, rtol=0, atol=1e-15 * float(on_grid.max()))


def test_gradients_with_respect_to_position_and_photons_are_finite_and_exact(psf):
    """Autograd against central differences of a weighted sum of a 21 × 21 window (h = 1e-6 µm, 1e-3
    photons): measured relative error ≤ 7e-10, tolerance 1e-7."""
    dx = psf.setup.pixel_size_um
    z = float(np.mean(psf.setup.z_range_um)) + 0.13
    xyz = torch.tensor([[10.3 * dx, 9.7 * dx, z]], dtype=torch.float64, requires_grad=True)
    photons = torch.tensor([1500.0], dtype=torch.float64, requires_grad=True)
    weights = torch.rand(21, 21, dtype=torch.float64, generator=torch.Generator().manual_seed(1))

    def value(position: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        return (psf.psf_on_grid(position, ORIGIN, (21, 21), photons=count) * weights).sum()

    value(xyz, photons).backward()
    assert torch.isfinite(xyz.grad).all() and torch.isfinite(photons.grad).all()
    position, count = xyz.detach(), photons.detach()
    numeric = []
    for axis in range(3):
        step = torch.zeros_like(position)
        step[0, axis] = 1e-6
        numeric.append(float(value(position + step, count) - value(position - step, count)) / 2e-6)
    numeric = np.array(numeric)
    assert np.abs(xyz.grad[0].numpy() - numeric).max() < 1e-7 * np.abs(numeric).max()
    per_photon = float(value(position, count + 1e-3) - value(position, count - 1e-3)) / 2e-3
    assert float(photons.grad) == pytest.approx(per_photon, rel=1e-7)


def test_blur_keeps_the_photons_and_adds_its_variance(psf):
    """Raising the model's blur to √(σ_psf² + 1.5²) keeps every period's sum (measured ≤ 4e-16) and adds
    1.5² = 2.25 px² to the spectral width² (measured to 4e-13; tolerance 1e-9)."""
    wider = psf.replace(blur_sigma_px=math.hypot(psf.blur_sigma_px, 1.5))
    xyz = emitters_at(psf, 30.5, 30.5, depths(psf, 3))
    sharp, blurred = full_period(psf, xyz), full_period(wider, xyz)
    torch.testing.assert_close(blurred.sum((-2, -1)), sharp.sum((-2, -1)), rtol=0, atol=1e-12)
    added = spectral_variance(blurred) - spectral_variance(sharp)
    torch.testing.assert_close(added, torch.full_like(added, 2.25), rtol=0, atol=1e-9)


def test_the_simulator_adds_the_per_emitter_blur_in_quadrature(psf):
    """FrameSimulator(psf) blurs emitter e by √(σ_psf² + σ_e²): the same frames as rendering the bare pupil
    with that σ (measured: bit-identical in float32; tolerance 1e-6 of the peak)."""
    simulation = {"frame_shape": [24, 24], "render_window": 24, "camera": {"kind": "ideal"}}
    simulator = FrameSimulator(psf, simulation)
    dx = psf.setup.pixel_size_um
    z0, z1 = psf.setup.z_range_um
    xyz = torch.tensor([[[8.2 * dx, 9.6 * dx, z0 + 0.2], [15.1 * dx, 13.3 * dx, z1 - 0.1]]])
    sigma = torch.tensor([[0.6, 1.4]])
    batch = {
        "xyz": xyz,
        "photons": torch.tensor([[4000.0, 2500.0]]),
        "valid": torch.ones(1, 2, dtype=torch.bool),
        "blur_sigma": sigma,
        "background": torch.zeros(1, 24, 24),
    }
    frames = simulator.expected_photons(batch)
    combined = torch.sqrt(sigma[0] ** 2 + psf.blur_sigma_px**2)
    expected = render_frames(
        psf.pupil_model(torch.float32),
        xyz[0],
        batch["photons"][0],
        torch.zeros(2, dtype=torch.long),
        1,
        (24, 24),
        window=24,
        blur_sigma_px=combined,
    )
    torch.testing.assert_close(frames, expected, rtol=0, atol=1e-6 * float(expected.max()))


def test_crlb_of_the_model_is_that_of_its_pupil_with_its_blur(psf):
    """crlb(model) = crlb(model's pupil, blur σ_psf); an extra blur combines in quadrature (measured:
    identical)."""
    z = depths(psf, 3)
    own = crlb(psf, z, photons=5000.0, background=20.0, window=41, blur_sigma_px=0.8)
    bare = crlb(
        psf.pupil_model(torch.float64),
        z,
        photons=5000.0,
        background=20.0,
        window=41,
        blur_sigma_px=total_blur_px(psf.blur_sigma_px, 0.8),
    )
    for key in own:
        np.testing.assert_allclose(own[key], bare[key], rtol=1e-12)


# ---------------------------------------------------------------------------------------------- one model
def test_blurs_combine_in_quadrature():
    """Blurring by a then b is blurring by √(a² + b²) (Gaussian transfer functions multiply; measured
    4e-16 on values in [0, 1], tolerance 1e-14)."""
    image = torch.rand(3, 40, 40, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    twice = blur_images(blur_images(image, 0.7), 1.9)
    torch.testing.assert_close(twice, blur_images(image, math.hypot(0.7, 1.9)), rtol=0, atol=1e-14)
    assert total_blur_px(0.0, None) is None and total_blur_px(0.7, None) == 0.7
    assert total_blur_px(0.7, 1.9) == pytest.approx(math.hypot(0.7, 1.9))


def test_only_the_shape_of_the_pupil_amplitude_matters():
    """The amplitude is normalised: ×3 renders the same PSF (measured 5e-16 of the peak, tolerance 1e-14);
    an apodisation changes the PSF (by 17 % of the peak, measured; at least 5 % asserted)."""
    model = make_case("amplitude")
    xyz = emitters_at(model, 12.5, 12.5, depths(model, 3))
    psf = model.psf_on_grid(xyz, ORIGIN, (25, 25))
    scaled = model.replace(amplitude=3.0 * model.amplitude).psf_on_grid(xyz, ORIGIN, (25, 25))
    torch.testing.assert_close(scaled, psf, rtol=0, atol=1e-14 * float(psf.max()))
    uniform = model.replace(amplitude=None).psf_on_grid(xyz, ORIGIN, (25, 25))
    assert float((uniform - psf).abs().max()) > 0.05 * float(psf.max())


def test_the_fitter_takes_the_model_with_its_blur_and_amplitude():
    """fit_emitters(model) equals fit_emitters(its pupil, its blur) (measured: identical), and recovers a
    noise-free emitter rendered by the model on a 31-px grid from its 21-px window (measured: 0.016 px
    laterally, 3 nm in z — the window cuts the Tetrapod's tail; tolerance 0.05 px and 10 nm)."""
    model = make_case("amplitude").replace(blur_sigma_px=0.9)
    dx = model.setup.pixel_size_um
    truth = torch.tensor([[14.3 * dx, 15.6 * dx, 1.3]], dtype=torch.float64)
    frame = model.psf_on_grid(truth, ORIGIN, (31, 31), photons=torch.tensor([5000.0], dtype=torch.float64))
    frame = frame[0] + 10.0
    start = [np.array([[14.0 * dx, 16.0 * dx, 1.2]])]
    fitted = fit_emitters(model, frame, start, window=21)
    bare = fit_emitters(model.pupil_model(torch.float64), frame, start, window=21, blur_sigma_px=0.9)
    torch.testing.assert_close(fitted.emitters.xyz, bare.emitters.xyz, rtol=0, atol=0)
    error_px = (fitted.emitters.xyz[0, 0, :2] - truth[0, :2]).abs().max() / dx
    assert float(error_px) < 0.05 and abs(float(fitted.emitters.xyz[0, 0, 2] - truth[0, 2])) < 0.010


def test_a_copy_in_another_dtype_keeps_the_pupil_amplitude():
    """PupilModel.fixed_copy (used by the fitter and the CRLB for float32 pupils) keeps the apodisation
    (float32 vs float64: measured 2e-8 of the peak, tolerance 1e-5)."""
    model = make_case("amplitude")
    pupil32 = model.pupil_model(torch.float32)
    copy = pupil32.fixed_copy(torch.float64)
    assert copy.kappa.dtype == torch.float64
    z = depths(model, 2)
    torch.testing.assert_close(
        copy.psf_zstack(z, 25), model.zstack(z, 25), rtol=0, atol=1e-5 * float(model.zstack(z, 25).max())
    )
