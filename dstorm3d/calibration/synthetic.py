"""Synthetic bead z-stacks from a known PSF model, for testing the calibration against the truth."""

from __future__ import annotations

import numpy as np
import torch

from dstorm3d.optics.psf_model import ScalarPupilPSF, blur_images
from dstorm3d.optics.zernike import zernike_phase


def random_aberration(
    setup_grid: int, radius_px: float, noll: list[int], rms_rad: float, rng: np.random.Generator
) -> tuple[np.ndarray, dict[int, float]]:
    """``(N, N)`` phase (rad) of random Zernike coefficients (Noll ``noll``) scaled to an RMS of ``rms_rad``
    (the Zernike polynomials are orthonormal, so the RMS over the unit disc is the coefficients' norm)."""
    values = rng.normal(size=len(noll))
    values *= rms_rad / np.linalg.norm(values)
    coefficients = {int(j): float(v) for j, v in zip(noll, values)}
    return zernike_phase(coefficients, setup_grid, radius_px), coefficients


def bead_stack(
    psf: ScalarPupilPSF,
    rowcol_px: np.ndarray,
    z_um: np.ndarray,
    frame_shape: tuple[int, int],
    photons: float,
    background: float,
    window_px: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """``(Z, H, W)`` Poisson photon counts of beads at ``rowcol_px (B, 2)`` (frame pixel indices, pixel
    ``(0, 0)``'s centre at ``(0, 0)``) and emitter depths ``z_um (Z,)`` above the coverslip, each bead with
    ``photons`` per slice, on ``background`` photons per pixel; rendered in ``window_px`` windows."""
    pupil = psf.pupil_model(torch.float64)
    size = psf.setup.pixel_size_um
    mean = np.full((len(z_um), *frame_shape), float(background))
    z = torch.as_tensor(np.asarray(z_um, dtype=np.float64))
    half = window_px // 2
    with torch.no_grad():
        for row, col in np.asarray(rowcol_px, dtype=np.float64):
            corner = torch.tensor([int(round(row)) - half, int(round(col)) - half])
            xyz = torch.stack(
                [torch.full_like(z, (col + 0.5) * size), torch.full_like(z, (row + 0.5) * size), z], dim=1
            )
            windows = pupil.psf_on_grid(xyz, corner, (window_px, window_px))
            windows = blur_images(windows, psf.blur_sigma_px).clamp_min(0.0).numpy() * photons
            r0, c0 = int(corner[0]), int(corner[1])
            mean[:, r0 : r0 + window_px, c0 : c0 + window_px] += windows
    return rng.poisson(mean).astype(np.float64)
