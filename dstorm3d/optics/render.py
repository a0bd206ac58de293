"""Render emitters into camera frames (expected photons per pixel, before background and noise).

Emitters are evaluated exactly on camera pixels (see :meth:`PupilModel.psf_on_grid`), optionally filtered
(Gaussian blur for finite object size or residual aberrations; integration over the pixel area), and
added into their frames. Frames may be any size, also larger than the DFT period: only the window has
to fit within one period. Everything is differentiable with respect to the mask and the positions.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .pupil import PupilModel


def intensity_filter(shape: tuple[int, int], sigma_px: Tensor | None, pixel_integration: bool,
                     dtype: torch.dtype, device: torch.device) -> Tensor | None:
    """Transfer function ``(E or 1, H, W//2 + 1)`` for ``rfft2`` of intensity grids, or ``None``.

    A Gaussian of standard deviation σ (pixels) has transfer exp(−2π²σ²ν²) (ν in cycles/pixel); averaging
    over the pixel area multiplies by sinc(ν_x)·sinc(ν_y). The intensity is band-limited below the
    camera's Nyquist frequency for the paper's setups, so filtering its samples in Fourier space is exact
    up to the window's periodic wrap of the (tiny) tail.
    """
    if sigma_px is None and not pixel_integration:
        return None
    nu_y = torch.fft.fftfreq(shape[0], dtype=dtype, device=device)
    nu_x = torch.fft.rfftfreq(shape[1], dtype=dtype, device=device)
    transfer = torch.ones(1, shape[0], nu_x.shape[0], dtype=dtype, device=device)
    if pixel_integration:
        transfer = transfer * (torch.sinc(nu_y).unsqueeze(1) * torch.sinc(nu_x).unsqueeze(0))
    if sigma_px is not None:
        nu2 = nu_y.unsqueeze(1) ** 2 + nu_x.unsqueeze(0) ** 2
        transfer = transfer * torch.exp(-2 * math.pi ** 2 * sigma_px.reshape(-1, 1, 1) ** 2 * nu2)
    return transfer


def filter_patches(patches: Tensor, transfer: Tensor | None) -> Tensor:
    """Apply an :func:`intensity_filter` to ``(E, H, W)`` intensity grids."""
    if transfer is None:
        return patches
    return torch.fft.irfft2(torch.fft.rfft2(patches) * transfer, s=tuple(patches.shape[-2:]))


def _filtered(psf: Tensor, transfer: Tensor | None) -> Tensor:
    """Filter rendered PSFs; a grid that cuts the PSF tail rings slightly (~1e-4 of the peak) under the
    pixel filter, and intensity cannot be negative."""
    return psf if transfer is None else filter_patches(psf, transfer).clamp_min(0.0)


def add_patches(patches: Tensor, corner: Tensor, frame_index: Tensor, n_frames: int,
                frame_shape: tuple[int, int]) -> Tensor:
    """Sum windows ``(E, P, P)`` with top-left pixels ``corner (E, 2)`` (row, col) into frames
    ``(n_frames, H, W)``; the parts outside the frames are dropped."""
    height, width = frame_shape
    e, p, _ = patches.shape
    pad_h, pad_w = height + 2 * p, width + 2 * p
    canvas_size = n_frames * pad_h * pad_w
    if e == 0:
        return patches.new_zeros(n_frames, height, width)
    row = corner[:, 0] + p
    col = corner[:, 1] + p
    inside = (row >= 0) & (row <= height + p) & (col >= 0) & (col <= width + p)
    row, col = row.clamp(0, height + p), col.clamp(0, width + p)
    start = frame_index.long() * (pad_h * pad_w) + row * pad_w + col
    offsets = (torch.arange(p, device=patches.device).unsqueeze(1) * pad_w
               + torch.arange(p, device=patches.device).unsqueeze(0)).reshape(-1)
    index = (start.unsqueeze(1) + offsets.unsqueeze(0)).reshape(-1)
    source = (patches * inside.reshape(-1, 1, 1).to(patches.dtype)).reshape(-1)
    canvas = patches.new_zeros(canvas_size).index_add(0, index, source)
    return canvas.reshape(n_frames, pad_h, pad_w)[:, p:p + height, p:p + width]


def render_frames(pupil: PupilModel, xyz_um: Tensor, photons: Tensor, frame_index: Tensor, n_frames: int,
                  frame_shape: tuple[int, int], window: int | None = None,
                  blur_sigma_px: Tensor | float | None = None, pixel_integration: bool = False,
                  phase_mask: Tensor | None = None, filter_margin: int = 8) -> Tensor:
    """Expected photons per pixel ``(n_frames, H, W)`` from a flat list of emitters.

    Args:
        pupil: the microscope (setup + mask).
        xyz_um: ``(E, 3)`` positions in µm (x, y from the top-left corner of pixel (0, 0); z above the
            coverslip). Emitters outside the frame still add the part of their PSF that falls inside.
        photons: ``(E,)`` signal photons of each emitter (integral over one DFT period).
        frame_index: ``(E,)`` int, the frame each emitter belongs to.
        n_frames: number of frames B.
        frame_shape: (H, W) in pixels.
        window: ``None`` evaluates every emitter on every pixel of its frame (exact FFT model; the frame
            plus filter margins must fit in one DFT period N). An integer P ≤ N evaluates each emitter
            on a P × P window centred on it (frames of any size; drops the PSF beyond the window).
        blur_sigma_px: optional Gaussian blur, a number or ``(E,)`` per emitter (pixels).
        pixel_integration: average the intensity over each pixel's area instead of sampling its centre.
        phase_mask: optional ``(N, N)`` mask overriding the pupil's own (e.g. a parameterised one).
        filter_margin: pixels added around whole frames while filtering, so filters do not wrap.
    """
    dtype, device = xyz_um.dtype, xyz_um.device
    if xyz_um.shape[0] == 0:
        return xyz_um.new_zeros(n_frames, *frame_shape)
    sigma = None
    if blur_sigma_px is not None:
        sigma = torch.as_tensor(blur_sigma_px, dtype=dtype, device=device).reshape(-1)
    filtering = sigma is not None or pixel_integration
    height, width = frame_shape
    if window is None:
        margin = filter_margin if filtering else 0
        grid = (height + 2 * margin, width + 2 * margin)
        if max(grid) > pupil.setup.pupil_grid:
            raise ValueError(
                f"a {height}×{width}-pixel frame{' plus filter margins' if margin else ''} exceeds the DFT period "
                f"of {pupil.setup.pupil_grid} pixels and would wrap around: render through windows "
                f"(window ≤ {pupil.setup.pupil_grid}) or use a larger pupil_grid")
        corner = torch.tensor([-margin, -margin], device=device)
        psf = pupil.psf_on_grid(xyz_um, corner, grid, phase_mask)
        psf = _filtered(psf, intensity_filter(grid, sigma, pixel_integration, dtype, device))
        psf = psf[:, margin:margin + height, margin:margin + width] * photons.to(dtype).reshape(-1, 1, 1)
        return psf.new_zeros(n_frames, height, width).index_add(0, frame_index.long(), psf)
    corner = pupil.window_corner(xyz_um, window)
    psf = pupil.psf_on_grid(xyz_um, corner, (window, window), phase_mask)
    psf = _filtered(psf, intensity_filter((window, window), sigma, pixel_integration, dtype, device))
    psf = psf * photons.to(dtype).reshape(-1, 1, 1)
    return add_patches(psf, corner, frame_index, n_frames, frame_shape)
