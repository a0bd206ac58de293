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

from .pupil import PupilModel, Workspace


def intensity_filter(
    shape: tuple[int, int],
    sigma_px: Tensor | None,
    pixel_integration: bool,
    dtype: torch.dtype,
    device: torch.device,
) -> Tensor | None:
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
        transfer = transfer * torch.exp(-2 * math.pi**2 * sigma_px.reshape(-1, 1, 1) ** 2 * nu2)
    return transfer


def filter_patches(patches: Tensor, transfer: Tensor | None) -> Tensor:
    """Apply an :func:`intensity_filter` to ``(E, H, W)`` intensity grids."""
    if transfer is None:
        return patches
    return torch.fft.irfft2(torch.fft.rfft2(patches) * transfer, s=tuple(patches.shape[-2:]))


def _filtered(psf: Tensor, transfer: Tensor | None) -> Tensor:
    """Filter rendered PSFs; a grid that cuts the PSF tail rings slightly (~1e-4 of the peak) under the
    pixel filter, and intensity cannot be negative (the clamp commutes with the photon scale)."""
    return psf if transfer is None else filter_patches(psf, transfer).clamp_min(0.0)


def add_patches(canvas: Tensor, patches: Tensor, corner: Tensor, frame_index: Tensor) -> Tensor:
    """Add windows ``(E, P, P)`` with top-left pixels ``corner (E, 2)`` (row, col) of frames
    ``frame_index (E,)`` into ``canvas (B, H + 2P, W + 2P)`` (the frames padded by P on every side, see
    :func:`patch_canvas`), in place; parts beyond the padding are dropped. Returns the canvas."""
    n_frames, pad_h, pad_w = canvas.shape
    p = patches.shape[-1]
    height, width = pad_h - 2 * p, pad_w - 2 * p
    if patches.shape[0] == 0:
        return canvas
    row = corner[:, 0] + p
    col = corner[:, 1] + p
    inside = (row >= 0) & (row <= height + p) & (col >= 0) & (col <= width + p)
    row, col = row.clamp(0, height + p), col.clamp(0, width + p)
    start = frame_index.long() * (pad_h * pad_w) + row * pad_w + col
    offsets = (
        torch.arange(p, device=patches.device).unsqueeze(1) * pad_w
        + torch.arange(p, device=patches.device).unsqueeze(0)
    ).reshape(-1)
    index = (start.unsqueeze(1) + offsets.unsqueeze(0)).reshape(-1)
    source = (patches * inside.reshape(-1, 1, 1).to(patches.dtype)).reshape(-1)
    return canvas.view(-1).index_add_(0, index, source).view(n_frames, pad_h, pad_w)


def patch_canvas(reference: Tensor, n_frames: int, frame_shape: tuple[int, int], window: int) -> Tensor:
    """Zeros ``(B, H + 2P, W + 2P)`` for :func:`add_patches`; the frames are ``[:, P:P + H, P:P + W]``."""
    return reference.new_zeros(n_frames, frame_shape[0] + 2 * window, frame_shape[1] + 2 * window)


def emitter_chunk(device: torch.device, grid: tuple[int, int], cache_bytes: int = 4 << 20) -> int | None:
    """Emitters rendered together on a CPU: enough that each matrix product is large, few enough that one
    chunk's fields (real and imaginary planes, ``2 × chunk × H × W`` float32) stay in cache (~4 MiB;
    35 emitters of 121² pixels; the gain is measured by benchmarks/simulation.py). ``None`` (all at once)
    on accelerators, whose kernels want the largest batches."""
    if device.type != "cpu":
        return None
    return max(8, cache_bytes // (grid[0] * grid[1] * 8))


def render_frames(
    pupil: PupilModel,
    xyz_um: Tensor,
    photons: Tensor,
    frame_index: Tensor,
    n_frames: int,
    frame_shape: tuple[int, int],
    window: int | None = None,
    blur_sigma_px: Tensor | float | None = None,
    pixel_integration: bool = False,
    phase_mask: Tensor | None = None,
    filter_margin: int = 8,
    chunk: int | None = -1,
) -> Tensor:
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
        chunk: emitters evaluated together; ``-1`` picks by device (:func:`emitter_chunk`), ``None`` all
            at once. The result does not depend on it.
    """
    dtype, device = xyz_um.dtype, xyz_um.device
    if xyz_um.shape[0] == 0:
        return xyz_um.new_zeros(n_frames, *frame_shape)
    sigma = None
    if blur_sigma_px is not None:
        sigma = torch.as_tensor(blur_sigma_px, dtype=dtype, device=device).reshape(-1)
    per_emitter_sigma = sigma is not None and sigma.shape[0] > 1
    filtering = sigma is not None or pixel_integration
    height, width = frame_shape
    if window is None:
        margin = filter_margin if filtering else 0
        grid = (height + 2 * margin, width + 2 * margin)
        if max(grid) > pupil.setup.pupil_grid:
            raise ValueError(
                f"a {height}×{width}-pixel frame{' plus filter margins' if margin else ''} exceeds the DFT "
                f"period of {pupil.setup.pupil_grid} pixels and would wrap around: render through windows "
                f"(window ≤ {pupil.setup.pupil_grid}) or use a larger pupil_grid"
            )
    else:
        margin, grid = 0, (window, window)
    size = emitter_chunk(device, grid) if chunk == -1 else chunk
    size = size or xyz_um.shape[0]
    frames = xyz_um.new_zeros(n_frames, *frame_shape) if window is None else None
    canvas = None if window is None else patch_canvas(xyz_um, n_frames, frame_shape, window)
    transfer = None if per_emitter_sigma else intensity_filter(grid, sigma, pixel_integration, dtype, device)
    frame_corner = torch.tensor([-margin, -margin], device=device)  # whole frames: the grid's top-left pixel
    workspace = Workspace()  # scratch tensors shared by the chunks (used only without autograd)
    for start in range(0, xyz_um.shape[0], size):
        part = slice(start, start + size)
        xyz = xyz_um[part]
        if per_emitter_sigma:
            transfer = intensity_filter(grid, sigma[part], pixel_integration, dtype, device)
        corner = frame_corner if window is None else pupil.window_corner(xyz, window)
        psf = pupil.psf_on_grid(xyz, corner, grid, phase_mask, photons=photons[part], workspace=workspace)
        psf = _filtered(psf, transfer)
        if canvas is None:
            frames.index_add_(
                0, frame_index[part].long(), psf[:, margin : margin + height, margin : margin + width]
            )
        else:
            add_patches(canvas, psf, corner, frame_index[part])
    if canvas is not None:
        frames = canvas[:, window : window + height, window : window + width]
    return frames
