"""Figures as RGB arrays (matplotlib, Agg backend): phase masks, PSF montages, prediction overlays.

Every function returns ``(H, W, 3)`` uint8 so callers can log it to W&B, save it as PNG or stack it
into an animation.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def _figure_to_rgb(fig) -> np.ndarray:
    import matplotlib.pyplot as plt

    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())
    plt.close(fig)
    return rgba[..., :3].copy()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def phase_mask_rgb(
    mask: np.ndarray, support: np.ndarray | None = None, title: str = "phase mask"
) -> np.ndarray:
    """Wrapped phase (rad) inside the aperture, cyclic colour map; outside the aperture is blank."""
    plt = _pyplot()
    wrapped = np.angle(np.exp(1j * np.asarray(mask, dtype=np.float64)))
    if support is not None:
        wrapped = np.where(support, wrapped, np.nan)
        rows, cols = np.nonzero(support)
        if rows.size:
            wrapped = wrapped[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    fig, ax = plt.subplots(figsize=(3.6, 3.2), dpi=100)
    im = ax.imshow(wrapped, cmap="twilight", vmin=-np.pi, vmax=np.pi)
    ax.set_title(title, fontsize=9)
    ax.axis("off")
    fig.colorbar(im, ax=ax, fraction=0.046, label="rad")
    fig.tight_layout()
    return _figure_to_rgb(fig)


def psf_montage_rgb(
    stack: np.ndarray, z_um: Sequence[float], columns: int | None = None, title: str = "PSF z-stack"
) -> np.ndarray:
    """Grid of PSF slices ``(Z, P, P)``, each with its own colour scale, titled with its z (µm)."""
    plt = _pyplot()
    z_count = stack.shape[0]
    columns = columns or int(np.ceil(np.sqrt(z_count)))
    rows = int(np.ceil(z_count / columns))
    fig, axes = plt.subplots(
        rows, columns, figsize=(1.6 * columns, 1.75 * rows + 0.3), dpi=100, squeeze=False
    )
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < z_count:
            ax.imshow(stack[i], cmap="magma")
            ax.set_title(f"z = {z_um[i]:.2f} µm", fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _figure_to_rgb(fig)


def psf_frame_rgb(image: np.ndarray, z_um: float) -> np.ndarray:
    """One PSF slice as an RGB frame for animations (per-frame colour scale, z printed on it)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(2.4, 2.5), dpi=100)
    ax.imshow(image, cmap="magma")
    ax.set_title(f"z = {z_um:.2f} µm", fontsize=8)
    ax.axis("off")
    fig.tight_layout()
    return _figure_to_rgb(fig)


def overlay_rgb(
    frame: np.ndarray, truth_px: np.ndarray, predictions_px: np.ndarray, title: str = ""
) -> np.ndarray:
    """A camera frame with ground truth (circles) and predictions (crosses); positions in pixels
    ``(n, 2)`` as (column, row) of the continuous position (pixel centre at +0.5)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(3.4, 3.4), dpi=100)
    ax.imshow(frame, cmap="gray")
    # imshow puts pixel c's centre at x = c, so continuous pixel coordinates shift by -0.5
    if len(truth_px):
        ax.scatter(
            truth_px[:, 0] - 0.5,
            truth_px[:, 1] - 0.5,
            s=40,
            facecolors="none",
            edgecolors="lime",
            linewidths=1.0,
            label="truth",
        )
    if len(predictions_px):
        ax.scatter(
            predictions_px[:, 0] - 0.5,
            predictions_px[:, 1] - 0.5,
            s=30,
            marker="x",
            c="red",
            linewidths=1.0,
            label="prediction",
        )
    ax.set_xlim(-0.5, frame.shape[1] - 0.5)
    ax.set_ylim(frame.shape[0] - 0.5, -0.5)
    ax.set_title(title, fontsize=8)
    ax.axis("off")
    fig.tight_layout()
    return _figure_to_rgb(fig)


def save_png(rgb: np.ndarray, path: str | Path) -> Path:
    """Write an RGB array as PNG atomically."""
    from PIL import Image

    from dstorm3d.utils.files import atomic_write

    return atomic_write(Path(path), lambda p: Image.fromarray(rgb).save(p, format="PNG"), overwrite=True)


def save_gif(frames: Sequence[np.ndarray], path: str | Path, duration_ms: int = 150) -> Path:
    """Write RGB frames as an animated GIF atomically."""
    from PIL import Image

    from dstorm3d.utils.files import atomic_write

    images = [Image.fromarray(f) for f in frames]

    def write(p: Path) -> None:
        buffer = io.BytesIO()
        images[0].save(
            buffer, format="GIF", save_all=True, append_images=images[1:], duration=duration_ms, loop=0
        )
        p.write_bytes(buffer.getvalue())

    return atomic_write(Path(path), write, overwrite=True)
