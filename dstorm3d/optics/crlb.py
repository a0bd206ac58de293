"""Cramér–Rao lower bound of 3D localization from exact pupil derivatives (reference.md §9).

Expected counts ``μ_k = N·h_k(x, y, z) + b`` per pixel; Poisson Fisher information
``F_ij = Σ_k ∂_i μ_k ∂_j μ_k / μ_k`` over θ = (x, y, z, N, b); the bound is ``sqrt(diag(F⁻¹))``.
The PSF derivatives come from the pupil: ``∂E/∂x0 = DFT(P·(+2πi f_x))``, ``∂E/∂z = DFT(P·i·k_z)``,
``∂I = 2·Re(E*·∂E)``. An EMCCD's excess noise factor of 2 halves the information (bound × √2).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from .psf_model import PSFModel, renderer
from .pupil import PupilModel
from .render import filter_patches, intensity_filter

PARAMETERS = ("x", "y", "z", "photons", "background")


def psf_with_derivatives(
    pupil: PupilModel,
    xyz_um: Tensor,
    corner: Tensor,
    shape: tuple[int, int],
    blur_sigma_px: float | None = None,
    pixel_integration: bool = False,
) -> tuple[Tensor, Tensor]:
    """PSF per photon ``h (E, H, W)`` and its derivatives ``(E, 3, H, W)`` w.r.t. x, y, z (per µm).

    Same grid convention as :meth:`PupilModel.psf_on_grid`.
    """
    height, width = shape
    dtype, device = xyz_um.dtype, xyz_um.device
    origin = torch.as_tensor(corner, device=device).to(dtype).reshape(-1, 2)
    origin = origin + torch.tensor([height // 2, width // 2], dtype=dtype, device=device)
    pixel = xyz_um[:, :2] / pupil.setup.pixel_size_um
    shift = origin.flip(-1) + 0.5 - pixel
    field_pupil = pupil.pupil_field(xyz_um[:, 2], shift)  # (E, K, K)
    f_x = (pupil.kappa / pupil.setup.pixel_size_um).to(dtype)  # cycles/µm along columns
    kz = pupil.kz_sample + 1j * pupil.decay  # (K, K) complex, rad/µm
    factors = torch.stack(
        [
            (2j * math.pi * f_x).reshape(1, -1).expand(f_x.shape[0], -1),  # d/dx: columns
            (2j * math.pi * f_x).reshape(-1, 1).expand(-1, f_x.shape[0]),  # d/dy: rows
            1j * kz,  # d/dz (incl. evanescent decay)
        ]
    )  # (3, K, K)
    pupils = torch.cat([field_pupil.unsqueeze(1), field_pupil.unsqueeze(1) * factors], dim=1)  # (E, 4, K, K)
    e, k = pupils.shape[0], pupils.shape[-1]
    fields = pupil.fields_on_grid(pupils.reshape(e * 4, k, k), shape).reshape(e, 4, height, width)
    field = fields[:, 0]
    h = pupil.intensity_per_photon(field)
    dh = 2 * (field.conj().unsqueeze(1) * fields[:, 1:]).real / pupil.energy_norm
    sigma = (
        None if blur_sigma_px is None else torch.tensor([float(blur_sigma_px)], dtype=dtype, device=device)
    )
    transfer = intensity_filter(shape, sigma, pixel_integration, dtype, device)
    if transfer is not None:
        h = filter_patches(h, transfer)
        dh = filter_patches(dh.reshape(e * 3, height, width), transfer).reshape(e, 3, height, width)
    return h, dh


def fisher_information(h: Tensor, dh: Tensor, photons: float, background: float) -> Tensor:
    """``(E, 5, 5)`` Poisson Fisher information over (x, y, z [µm], photons, background [photons/px])."""
    mu = photons * h + background
    grads = torch.cat([photons * dh, h.unsqueeze(1), torch.ones_like(h).unsqueeze(1)], dim=1)  # (E, 5, H, W)
    g = grads.flatten(2)
    return torch.einsum("eip,ejp->eij", g / mu.flatten(1).unsqueeze(1), g)


def crlb(
    model: PSFModel | PupilModel,
    z_um: np.ndarray | Tensor,
    photons: float,
    background: float,
    window: int | None = None,
    emccd: bool = False,
    blur_sigma_px: float | None = None,
    pixel_integration: bool = False,
) -> dict[str, np.ndarray]:
    """Precision bounds per depth for an emitter at a pixel centre.

    Args:
        model: the PSF model (its blur included; evaluated on the CPU), or a bare pupil (on its device).
        z_um: ``(Z,)`` depths above the coverslip.
        photons: signal photons per emitter; background: photons per pixel.
        window: side of the pixel window summed over (default: the DFT period N, i.e. everything).
        emccd: include the EMCCD excess-noise factor (variance × 2).
        blur_sigma_px: a blur beyond the model's own (σ in pixels; the two combine in quadrature).
        pixel_integration: average the intensity over each pixel's area.
    Returns:
        ``{"x_nm", "y_nm", "z_nm": (Z,), "photons": (Z,), "background": (Z,)}`` standard deviations.
    """
    dtype = torch.float64
    pupil, blur = renderer(model, dtype, blur_sigma_px)
    window = window or pupil.setup.pupil_grid
    z = torch.as_tensor(np.asarray(z_um, dtype=np.float64), dtype=dtype, device=pupil.kappa.device).reshape(
        -1
    )
    centre = (window // 2 + 0.5) * pupil.setup.pixel_size_um
    xyz = torch.stack([torch.full_like(z, centre), torch.full_like(z, centre), z], dim=1)
    corner = torch.zeros(2, dtype=torch.long)
    with torch.no_grad():
        h, dh = psf_with_derivatives(pupil, xyz, corner, (window, window), blur, pixel_integration)
        info = fisher_information(h, dh, photons, background)
        if emccd:
            info = info / 2.0
        variance = torch.diagonal(torch.linalg.inv(info), dim1=-2, dim2=-1)
    std = variance.clamp_min(0).sqrt().cpu().numpy()
    return {
        "x_nm": std[:, 0] * 1e3,
        "y_nm": std[:, 1] * 1e3,
        "z_nm": std[:, 2] * 1e3,
        "photons": std[:, 3],
        "background": std[:, 4],
    }
