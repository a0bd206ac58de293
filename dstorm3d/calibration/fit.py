"""Poisson maximum-likelihood fit of a scalar pupil model to bead z-stacks.

Model of the expected photons in pixel k of bead b's window at slice s (all float64, CPU):

    μ_bsk = N_b · [G_σ ∗ h(x_b, y_b, z_s; φ, A)]_k + β_b,    z_s = NFP + (s − s₀)·Δz·c + δz

with h the scalar pupil PSF per photon (:class:`~dstorm3d.optics.pupil.PupilModel`, evaluated exactly on
the window's pixels), G_σ a Gaussian blur of σ pixels, the pupil phase φ = Σ_j a_j Z_j (Noll j ≥ 5) plus an
optional smooth pixel-wise map, the pupil amplitude A = exp(Σ_k b_k ρ^{2k}) (normalised to a mean square of
1 on the aperture), the bead's lateral position (x_b, y_b), photons N_b and background β_b, the stack's
nominal step Δz, its scale c (focal shift of a refractive-index mismatch, or a wrong step) and the z of a
reference slice s₀ relative to focus, −δz. The beads are at the focal plane (z = NFP) at the fractional
*focus slice* s₀ − δz/(Δz·c).

Degeneracies: piston (j = 1) does nothing; tip and tilt (j = 2, 3) move the beads, which (x_b, y_b)
already do; defocus (j = 4) trades with δz. None of them is fitted, and the pixel-wise map has them
projected out.

Likelihood: the data d are camera counts turned into photons. An EMCCD's Gamma register doubles the
variance of the photon count (excess-noise factor F² = 2), so d is treated as F² times a Poisson variable
of mean μ/F²: the negative log-likelihood Σ (μ − d·log μ)/F² (the same as fitting Poisson counts d/F² with
means μ/F²). Negative d (read noise) stays in that sum, which is still convex in μ.

Optimisation: L-BFGS with a strong-Wolfe line search on all parameters at once, in stages (the low Zernike
orders first, then all of them and the amplitude, then the optional pixel-wise phase); each stage starts
from the previous one. Gradients come from torch autograd through the renderer, one bead at a time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from dstorm3d.optics.masks import aperture_support
from dstorm3d.optics.psf_model import ScalarPupilPSF
from dstorm3d.optics.pupil import PupilModel
from dstorm3d.optics.render import filter_patches, intensity_filter
from dstorm3d.optics.setup import OpticalSetup
from dstorm3d.optics.zernike import pupil_polar_grid, zernike_basis

#: Noll indices never fitted: piston, tip, tilt, defocus (see the module docstring).
DEGENERATE_NOLL = (1, 2, 3, 4)
#: Highest Noll index of the first stage (astigmatism, coma, trefoil, primary spherical).
FIRST_STAGE_NOLL = 11
BLUR_MARGIN_PX = 5
Z_UNIT_UM = 0.1  # δz is optimised in units of 100 nm (keeps the parameters of similar scale)


@dataclass(frozen=True)
class FitSettings:
    """How the pupil model is fitted.

    Attributes:
        max_noll: highest Noll index of the fitted Zernike phase (j = 5 … max_noll).
        amplitude_terms: radial terms ρ², ρ⁴, … of the log pupil amplitude (0: uniform amplitude).
        pixelwise: refine the phase pixel-wise after the Zernike fit.
        smoothness: weight of the pixel-wise map's squared neighbour differences (rad⁻², per pair, relative
            to the per-pixel negative log-likelihood).
        iterations: L-BFGS iterations per stage.
        excess_noise: variance factor F² of the camera (2 for an EMCCD, 1 otherwise).
        fit_step_scale: fit the z-step scale c (else c = 1).
        initial_blur_px: starting blur σ (camera pixels).
        fit_focus: fit the z offset (the focus slice); else the reference slice is the focus and the
            defocus term (Noll 4) is fitted instead, so that z = NFP is that slice by definition.
        slice_photons: fit a photon factor per slice, shared by the beads (bleaching, lamp drift).
        slice_background: fit a background per bead and slice (else one per bead): it also absorbs a
            PSF halo broader than the window.
    """

    max_noll: int = 28
    amplitude_terms: int = 3
    pixelwise: bool = False
    smoothness: float = 1.0
    iterations: int = 150
    excess_noise: float = 1.0
    fit_step_scale: bool = True
    initial_blur_px: float = 1.0
    fit_focus: bool = True
    slice_photons: bool = True
    slice_background: bool = True

    @property
    def noll_indices(self) -> list[int]:
        first = DEGENERATE_NOLL[-1] + (1 if self.fit_focus else 0)
        return list(range(first, self.max_noll + 1))


@dataclass
class StackData:
    """The windows to fit (photons) and where they are.

    Attributes:
        photons: ``(B, Z, P, P)`` data (photons per pixel).
        corners: ``(B, 2)`` int (row, column) of each window's top-left pixel in the frame.
        slices: ``(Z,)`` 0-based slice numbers of the Z planes in the stack.
        z_step_um: nominal stage step between consecutive slices (µm; the sign says which way z goes).
        reference_slice: s₀, the 0-based slice the z offset refers to (the focus guess, or the given focus).
        start_rowcol: ``(B, 2)`` starting (row, column) of the beads in window pixel indices.
        start_photons, start_background: ``(B,)`` starting photons and background (photons per pixel).
    """

    photons: np.ndarray
    corners: np.ndarray
    slices: np.ndarray
    z_step_um: float
    reference_slice: float
    start_rowcol: np.ndarray
    start_photons: np.ndarray
    start_background: np.ndarray


class BeadStackModel(nn.Module):
    """The differentiable model of :mod:`dstorm3d.calibration.fit` (parameters listed there)."""

    def __init__(
        self,
        setup: OpticalSetup,
        data: StackData,
        settings: FitSettings,
        start: ScalarPupilPSF | None = None,
    ) -> None:
        """``start``: the model the fit starts from (its phase and amplitude stay as a fixed base that the
        fitted terms add to and multiply); ``None`` = the clear pupil."""
        super().__init__()
        dtype = torch.float64
        self.setup, self.settings = setup, settings
        self.pupil = PupilModel(setup, None, dtype=dtype)
        n = setup.pupil_grid
        support = aperture_support(setup)
        self.register_buffer("support_full", torch.as_tensor(support, dtype=dtype))
        basis = zernike_basis(settings.noll_indices, n, setup.zernike_radius_px) * support
        self.register_buffer("zernike_basis", torch.as_tensor(basis, dtype=dtype))
        self.register_buffer("radial_basis", torch.as_tensor(self._radial_basis(), dtype=dtype))
        start = start or ScalarPupilPSF(setup)
        self.register_buffer("base_phase", torch.as_tensor(start.phase * support, dtype=dtype))
        self.register_buffer("base_amplitude", start.pupil_model(dtype).amplitude_in_box().clone())
        self.register_buffer("corners", torch.as_tensor(data.corners, dtype=torch.long))
        self.register_buffer("slices", torch.as_tensor(data.slices, dtype=dtype))
        self.z_step_um = float(data.z_step_um)
        self.reference_slice = float(data.reference_slice)
        self.window = int(data.photons.shape[-1])
        # rendered beyond the window by this many pixels for the blur (≥ 3 σ of a blur up to 1.7 px)
        self.blur_margin = min(BLUR_MARGIN_PX, (setup.pupil_grid - self.window) // 2)
        self.register_buffer("removed_modes", torch.as_tensor(self._low_order_modes(support), dtype=dtype))

        self.zernike = nn.Parameter(torch.zeros(len(settings.noll_indices), dtype=dtype))
        self.amplitude = nn.Parameter(torch.zeros(settings.amplitude_terms, dtype=dtype))
        self.pixel_phase = nn.Parameter(torch.zeros(n, n, dtype=dtype))
        self.blur = nn.Parameter(torch.tensor(float(settings.initial_blur_px), dtype=dtype))
        self.rowcol = nn.Parameter(torch.as_tensor(data.start_rowcol, dtype=dtype).clone())
        self.log_photons = nn.Parameter(torch.as_tensor(np.log(data.start_photons), dtype=dtype).clone())
        slices = len(data.slices)
        background = np.log(np.clip(data.start_background, 1e-3, None)).reshape(-1, 1)
        if settings.slice_background:
            background = np.repeat(background, slices, axis=1)
        self.log_background = nn.Parameter(torch.as_tensor(background, dtype=dtype).clone())
        self.log_slice_gain = nn.Parameter(torch.zeros(slices, dtype=dtype))
        self.z_shift = nn.Parameter(torch.zeros((), dtype=dtype))  # δz in units of Z_UNIT_UM
        self.log_step_scale = nn.Parameter(torch.zeros((), dtype=dtype))

    # ------------------------------------------------------------------ pupil
    def _radial_basis(self) -> np.ndarray:
        """``(A, K, K)`` ρ^{2k} (k = 1 … A, ρ = 1 at the aperture edge) on the aperture box."""
        size = self.pupil.box_size
        rho, _ = pupil_polar_grid(size, self.setup.pupil_radius_px)
        terms = [rho ** (2 * k) for k in range(1, self.settings.amplitude_terms + 1)]
        return np.stack(terms) if terms else np.zeros((0, size, size))

    def _low_order_modes(self, support: np.ndarray) -> np.ndarray:
        """``(M, 4)`` orthonormal columns spanning piston, tip, tilt and defocus on the M support samples."""
        modes = zernike_basis(list(DEGENERATE_NOLL), self.setup.pupil_grid, self.setup.zernike_radius_px)
        q, _ = np.linalg.qr(modes[:, support].T)
        return q

    def smooth_phase(self) -> Tensor:
        """``(N, N)`` pixel-wise phase map (rad) with piston, tip, tilt and defocus projected out."""
        inside = self.support_full > 0
        values = self.pixel_phase[inside]
        values = values - self.removed_modes @ (self.removed_modes.T @ values)
        return torch.zeros_like(self.pixel_phase).masked_scatter(inside, values)

    def phase(self, pixelwise: bool) -> Tensor:
        """``(N, N)`` pupil phase (rad): the Zernike sum, plus the pixel-wise map when ``pixelwise``."""
        phase = self.base_phase + torch.einsum("j,jab->ab", self.zernike, self.zernike_basis)
        return phase + self.smooth_phase() if pixelwise else phase

    def amplitude_box(self) -> Tensor:
        """``(K, K)`` pupil amplitude exp(Σ b_k ρ^{2k}), mean square 1 on the aperture (0 outside)."""
        support = self.pupil.support
        log_amplitude = torch.einsum("k,kab->ab", self.amplitude, self.radial_basis)
        amplitude = self.base_amplitude * torch.exp(log_amplitude) * support
        return amplitude / amplitude.square().sum().div(support.sum()).sqrt()

    def smoothness_penalty(self) -> Tensor:
        """Mean squared difference of the pixel-wise map between neighbouring aperture samples (rad²)."""
        phase, inside = self.smooth_phase(), self.support_full > 0
        total = phase.new_zeros(())
        pairs = 0
        for dim in (0, 1):
            both = inside.narrow(dim, 0, inside.shape[dim] - 1) & inside.narrow(dim, 1, inside.shape[dim] - 1)
            step = phase.diff(dim=dim)
            total = total + step[both].square().sum()
            pairs += int(both.sum())
        return total / max(pairs, 1)

    # ------------------------------------------------------------------ geometry
    def step_scale(self) -> Tensor:
        """The z-step scale c (1 unless fitted)."""
        return (
            torch.exp(self.log_step_scale)
            if self.settings.fit_step_scale
            else self.log_step_scale.new_ones(())
        )

    def z_relative_um(self, slices: Tensor | None = None) -> Tensor:
        """``(Z,)`` emitter z relative to the focal plane (µm) of the slices."""
        s = self.slices if slices is None else slices
        return (s - self.reference_slice) * self.z_step_um * self.step_scale() + self.z_shift * Z_UNIT_UM

    def focus_slice(self) -> float:
        """The fractional 0-based slice at which the beads are in focus."""
        with torch.no_grad():
            return float(
                self.reference_slice - self.z_shift * Z_UNIT_UM / (self.z_step_um * self.step_scale())
            )

    def positions_px(self) -> Tensor:
        """``(B, 2)`` bead (row, column) in frame pixel indices (pixel (0, 0)'s centre at (0, 0))."""
        return self.corners.to(self.rowcol.dtype) + self.rowcol

    # ------------------------------------------------------------------ forward
    def expected(self, bead: int, pixelwise: bool, blur: bool = True) -> Tensor:
        """``(Z, P, P)`` expected photons of one bead's window over the slices."""
        z = self.z_relative_um() + self.setup.nfp_um
        rowcol = self.positions_px()[bead]
        size = self.setup.pixel_size_um
        x = (rowcol[1] + 0.5) * size
        y = (rowcol[0] + 0.5) * size
        xyz = torch.stack([x.expand_as(z), y.expand_as(z), z], dim=1)
        margin = self.blur_margin if blur else 0
        size = self.window + 2 * margin
        psf = self.pupil.psf_on_grid(
            xyz,
            self.corners[bead] - margin,
            (size, size),
            phase_mask=self.phase(pixelwise),
            amplitude_box=self.amplitude_box(),
        )
        if blur:  # blurred on a grid with a margin, so that light flows in from outside the window
            sigma = self.blur.abs().reshape(1)
            transfer = intensity_filter((size, size), sigma, False, psf.dtype, psf.device)
            psf = filter_patches(psf, transfer).clamp_min(0.0)
            psf = psf[:, margin : margin + self.window, margin : margin + self.window]
        photons = self.photons()[bead].reshape(-1, 1, 1)
        return psf * photons + torch.exp(self.log_background[bead]).reshape(-1, 1, 1)

    def slice_gain(self) -> Tensor:
        """``(Z,)`` relative photons per slice (geometric mean 1), all ones unless fitted."""
        if not self.settings.slice_photons:
            return torch.ones_like(self.log_slice_gain)
        return torch.exp(self.log_slice_gain - self.log_slice_gain.mean())

    def photons(self) -> Tensor:
        """``(B, Z)`` photons of each bead in each slice."""
        return torch.exp(self.log_photons).unsqueeze(1) * self.slice_gain()


def negative_log_likelihood(data: Tensor, mu: Tensor, excess_noise: float) -> Tensor:
    """Σ (μ − d·log μ)/F² over all pixels (photons; F² the excess-noise factor)."""
    return (mu - data * torch.log(mu)).sum() / excess_noise


def poisson_deviance(data: np.ndarray, mu: np.ndarray, excess_noise: float) -> np.ndarray:
    """Per-pixel scaled Poisson deviance 2[d⁺·log(d⁺/μ) − (d − μ)]/F² (d⁺ = max(d, 0)), data's shape."""
    positive = np.clip(data, 0.0, None)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_term = np.where(positive > 0, positive * np.log(positive / mu), 0.0)
    return 2.0 * (log_term - (data - mu)) / excess_noise


@dataclass
class FitTrace:
    """The loss (mean negative log-likelihood per pixel) after each stage and the iterations used."""

    stages: list[dict[str, Any]] = field(default_factory=list)


def _stage_parameters(model: BeadStackModel, stage: str) -> list[nn.Parameter]:
    common = [model.blur, model.rowcol, model.log_photons, model.log_background]
    if model.settings.fit_focus:
        common.append(model.z_shift)
    if model.settings.fit_step_scale:
        common.append(model.log_step_scale)
    if model.settings.slice_photons:
        common.append(model.log_slice_gain)
    if stage == "pixelwise":
        return [*common, model.zernike, model.amplitude, model.pixel_phase]
    if stage == "all":
        return [*common, model.zernike, *([model.amplitude] if model.settings.amplitude_terms else [])]
    return [*common, model.zernike]


def run_stage(
    model: BeadStackModel,
    data: Tensor,
    stage: str,
    iterations: int,
    zernike_mask: Tensor | None = None,
) -> dict[str, Any]:
    """One L-BFGS stage (``low``: Zernike up to :data:`FIRST_STAGE_NOLL`; ``all``; ``pixelwise``).
    Returns ``{"stage", "iterations", "loss"}`` (loss: mean NLL per pixel plus any penalty)."""
    parameters = _stage_parameters(model, stage)
    pixelwise = stage == "pixelwise"
    optimiser = torch.optim.LBFGS(
        parameters,
        lr=1.0,
        max_iter=iterations,
        max_eval=int(iterations * 1.5),
        history_size=20,
        tolerance_grad=1e-9,
        tolerance_change=1e-12,
        line_search_fn="strong_wolfe",
    )
    count = data.numel()
    evaluations = [0]

    def closure() -> Tensor:
        optimiser.zero_grad()
        total = data.new_zeros(())
        for bead in range(data.shape[0]):
            mu = model.expected(bead, pixelwise)
            loss = negative_log_likelihood(data[bead], mu, model.settings.excess_noise) / count
            loss.backward()
            total = total + loss.detach()
        if pixelwise:
            penalty = model.settings.smoothness * model.smoothness_penalty()
            penalty.backward()
            total = total + penalty.detach()
        if zernike_mask is not None and model.zernike.grad is not None:
            model.zernike.grad.mul_(zernike_mask)
        evaluations[0] += 1
        return total

    optimiser.step(closure)  # returns the loss before the stage
    with torch.no_grad():
        loss = (
            sum(
                float(
                    negative_log_likelihood(
                        data[bead], model.expected(bead, pixelwise), model.settings.excess_noise
                    )
                )
                for bead in range(data.shape[0])
            )
            / count
        )
        if pixelwise:
            loss += float(model.settings.smoothness * model.smoothness_penalty())
    return {"stage": stage, "evaluations": evaluations[0], "loss": loss}


def fit_bead_stack(
    setup: OpticalSetup, data: StackData, settings: FitSettings, start: ScalarPupilPSF | None = None
) -> tuple[BeadStackModel, FitTrace]:
    """Fit the model to the windows (stages: low orders, all orders + amplitude, pixel-wise), starting
    from ``start`` (default: the clear pupil)."""
    model = BeadStackModel(setup, data, settings, start)
    observed = torch.as_tensor(data.photons, dtype=torch.float64)
    trace = FitTrace()
    low = torch.as_tensor(
        [1.0 if j <= FIRST_STAGE_NOLL else 0.0 for j in settings.noll_indices], dtype=torch.float64
    )
    if settings.max_noll > FIRST_STAGE_NOLL:
        trace.stages.append(run_stage(model, observed, "low", settings.iterations, zernike_mask=low))
    trace.stages.append(run_stage(model, observed, "all", settings.iterations))
    if settings.pixelwise:
        trace.stages.append(run_stage(model, observed, "pixelwise", settings.iterations))
    return model, trace


def expected_windows(model: BeadStackModel) -> np.ndarray:
    """``(B, Z, P, P)`` expected photons of every window under the fitted model."""
    with torch.no_grad():
        return torch.stack(
            [model.expected(bead, model.settings.pixelwise) for bead in range(model.corners.shape[0])]
        ).numpy()


def fitted_psf(model: BeadStackModel, label: str) -> ScalarPupilPSF:
    """The calibrated PSF: the setup, the fitted phase (0 outside the aperture), amplitude and blur."""
    n = model.setup.pupil_grid
    with torch.no_grad():
        phase = model.phase(model.settings.pixelwise).numpy() * model.support_full.numpy()
        amplitude = None
        uniform = bool(torch.all(model.base_amplitude == model.pupil.support))
        if model.settings.amplitude_terms or not uniform:
            box = model.amplitude_box().numpy()
            amplitude = np.ones((n, n))
            lo = n // 2 - model.pupil.box_half
            amplitude[lo : lo + box.shape[0], lo : lo + box.shape[1]] = np.where(
                model.pupil.support.numpy() > 0, box, 1.0
            )
        blur = float(model.blur.abs())
    return ScalarPupilPSF(model.setup, phase, amplitude, blur, label)


def free_parameter_count(model: BeadStackModel) -> int:
    """Number of fitted parameters (for the degrees of freedom of the deviance)."""
    stage = "pixelwise" if model.settings.pixelwise else "all"
    count = sum(p.numel() for p in _stage_parameters(model, stage) if p is not model.pixel_phase)
    if model.settings.pixelwise:
        count += int(model.support_full.sum()) - model.removed_modes.shape[1]
    return int(count)


def zernike_decomposition(phase: np.ndarray, setup: OpticalSetup, noll: list[int]) -> dict[int, float]:
    """Least-squares Noll coefficients (rad) of an ``(N, N)`` phase over the aperture."""
    support = aperture_support(setup)
    basis = zernike_basis(noll, setup.pupil_grid, setup.zernike_radius_px)[:, support]
    coefficients, *_ = np.linalg.lstsq(basis.T, phase[support], rcond=None)
    return {int(j): float(c) for j, c in zip(noll, coefficients)}


def phase_fidelity(phase_a: np.ndarray, phase_b: np.ndarray, support: np.ndarray) -> float:
    """|mean over the support of exp(i(φ_a − φ_b))|²: 1 for phases equal up to a constant."""
    difference = (phase_a - phase_b)[support]
    return float(np.abs(np.mean(np.exp(1j * difference))) ** 2)


def lateral_shift_phase(setup: OpticalSetup, shift_px: tuple[float, float]) -> np.ndarray:
    """``(N, N)`` tip/tilt phase (rad, 0 outside the aperture) that moves the model's origin: with it, an
    emitter at r + ``shift_px`` (x = columns, y = rows, pixels) gives the image that one at r gave without."""
    n = setup.pupil_grid
    frequency = (np.arange(n) - n // 2) / n  # cycles per camera pixel
    ramp = -2 * math.pi * (frequency[None, :] * shift_px[0] + frequency[:, None] * shift_px[1])
    return np.where(aperture_support(setup), ramp, 0.0)


def defocus_phase(setup: OpticalSetup, dz_um: float) -> np.ndarray:
    """``(N, N)`` phase (rad) of moving an emitter by ``dz_um``: dz·k0·√(n_s² − ρ²) (0 outside)."""
    n = setup.pupil_grid
    rho_samples, _ = pupil_polar_grid(n, 1.0)
    rho = rho_samples * setup.wavelength_um * setup.pupil_pitch
    kz = 2 * math.pi / setup.wavelength_um * np.sqrt(np.clip(setup.n_sample**2 - rho**2, 0.0, None))
    return np.where(aperture_support(setup), dz_um * kz, 0.0)
