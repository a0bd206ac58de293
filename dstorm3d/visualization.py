"""Figures that can be read on their own: phase masks, PSF montages, prediction examples.

Every figure is a matplotlib ``Figure`` on the Agg canvas (no display, no pyplot state), with colour bars
that name their unit, scale bars in µm and legends. :func:`figure_rgb` turns one into ``(H, W, 3)``
uint8 for W&B, a PNG (:func:`save_png`) or an animation (:func:`save_gif`); :func:`save_figure` writes
one as PNG directly. Figures stay small (``FIGURE_DPI``): the training callbacks draw them every epoch.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from dstorm3d.optics.setup import OpticalSetup

FIGURE_DPI = 100
SCALE_BAR_GID = "scale_bar"


# ---------------------------------------------------------------------------------------- basics
def new_figure(width: float, height: float, dpi: float = FIGURE_DPI, layout: str | None = "constrained"):
    """A matplotlib figure of ``width`` × ``height`` inches drawn by the Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=dpi, layout=layout)
    FigureCanvasAgg(figure)
    return figure


def figure_rgb(figure: Figure) -> np.ndarray:
    """The figure drawn as ``(H, W, 3)`` uint8."""
    figure.canvas.draw()
    return np.asarray(figure.canvas.buffer_rgba())[..., :3].copy()


def save_figure(figure: Figure, path: str | Path, overwrite: bool = True) -> Path:
    """Write a figure as PNG atomically (at the figure's own dpi)."""
    from dstorm3d.utils.files import atomic_write

    return atomic_write(Path(path), lambda p: figure.savefig(p, format="png"), overwrite=overwrite)


def nice_length(target: float) -> float:
    """The largest 1, 2 or 5 × 10^k not above ``target`` (> 0)."""
    power = 10.0 ** math.floor(math.log10(target))
    return max(step * power for step in (1.0, 2.0, 5.0) if step * power <= target * (1 + 1e-9))


def scale_bar_label(length_um: float) -> str:
    """``"2 µm"``, ``"0.5 µm"``; below 1 µm in nm (``"200 nm"``)."""
    return f"{length_um:g} µm" if length_um >= 1 else f"{length_um * 1e3:g} nm"


def add_scale_bar(
    ax: Axes, pixel_um: float, width_px: float, colour: str = "white", fraction: float = 0.25
) -> Any:
    """A scale bar of a round length (about ``fraction`` of the image width) in the lower right of an
    image drawn in pixel coordinates; labelled in µm (nm below 1 µm). Its artist has gid ``scale_bar``."""
    from matplotlib.font_manager import FontProperties
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

    length_um = nice_length(fraction * width_px * pixel_um)
    bar = AnchoredSizeBar(
        ax.transData,
        length_um / pixel_um,
        scale_bar_label(length_um),
        "lower right",
        pad=0.3,
        color=colour,
        frameon=False,
        size_vertical=max(0.015 * width_px, 0.4),
        fontproperties=FontProperties(size=8, weight="bold"),
    )
    bar.set_gid(SCALE_BAR_GID)
    ax.add_artist(bar)
    return bar


# ---------------------------------------------------------------------------------------- optics
def phase_mask_figure(mask: np.ndarray, setup: OpticalSetup, title: str) -> Figure:
    """Wrapped phase (−π, π] (rad) inside the aperture on a cyclic colour map, axes in ρ = n·sinθ."""
    from dstorm3d.optics.masks import aperture_support

    support = aperture_support(setup)
    wrapped = np.where(support, np.angle(np.exp(1j * np.asarray(mask, dtype=np.float64))), np.nan)
    centre, half = setup.pupil_grid // 2, int(math.ceil(setup.pupil_radius_px)) + 2
    crop = slice(max(centre - half, 0), min(centre + half + 1, setup.pupil_grid))
    rho_per_sample = setup.wavelength_um * setup.pupil_pitch
    lo = (crop.start - centre - 0.5) * rho_per_sample
    hi = (crop.stop - 1 - centre + 0.5) * rho_per_sample
    figure = new_figure(5.2, 4.4)
    ax = figure.subplots()
    image = ax.imshow(
        wrapped[crop, crop],
        cmap="twilight",
        vmin=-math.pi,
        vmax=math.pi,
        extent=(lo, hi, hi, lo),
        interpolation="nearest",
    )
    ax.set_xlabel("ρx = n·sinθ (pupil coordinate)")
    ax.set_ylabel("ρy = n·sinθ")
    ax.set_title(title, fontsize=10)
    bar = figure.colorbar(image, ax=ax, ticks=[-math.pi, -math.pi / 2, 0, math.pi / 2, math.pi])
    bar.ax.set_yticklabels(["−π", "−π/2", "0", "π/2", "π"])
    bar.set_label("wrapped phase (rad)")
    return figure


def psf_montage_figure(
    stack: np.ndarray,
    z_um: Sequence[float],
    pixel_um: float,
    title: str,
    shared_colour_scale: bool = False,
) -> Figure:
    """PSF slices ``(Z, P, P)`` (fraction of the emitted photons per pixel) in a grid, each titled with
    its z (µm), a scale bar on the first and one colour bar: photons per pixel on one shared scale, or each
    slice relative to its own peak (the peak printed under its z)."""
    stack = np.asarray(stack, dtype=np.float64)
    count, window = stack.shape[0], stack.shape[-1]
    columns = math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    figure = new_figure(max(1.9 * columns + 1.3, 5.0), 1.95 * rows + 0.8)
    axes = np.asarray(figure.subplots(rows, columns, squeeze=False)).ravel()
    shared_max = max(float(stack.max()), 1e-30)
    image = None
    for index, ax in enumerate(axes):
        ax.set_axis_off()
        if index >= count:
            continue
        peak = float(stack[index].max())
        shown = stack[index] if shared_colour_scale else stack[index] / max(peak, 1e-30)
        top = shared_max if shared_colour_scale else 1.0
        image = ax.imshow(shown, cmap="magma", vmin=0.0, vmax=top, interpolation="nearest")
        label = f"z = {z_um[index]:.2f} µm"
        ax.set_title(label if shared_colour_scale else f"{label}\npeak {peak:.1e}", fontsize=8)
        if index == 0:
            add_scale_bar(ax, pixel_um, window)
    scale = "one colour scale" if shared_colour_scale else "each slice scaled to its own peak"
    figure.suptitle(f"{title}\n{window}×{window} px of {pixel_um * 1e3:.0f} nm; {scale}", fontsize=9)
    if image is not None:
        bar = figure.colorbar(image, ax=axes.tolist(), shrink=0.8)
        bar.set_label(
            "fraction of the emitted photons per pixel"
            if shared_colour_scale
            else "relative to the slice's peak (peak: fraction of the emitted photons)"
        )
    return figure


def psf_frame_rgb(image: np.ndarray, z_um: float, pixel_um: float | None = None) -> np.ndarray:
    """One PSF slice as an RGB frame for animations (own colour scale, z and a scale bar on it)."""
    figure = new_figure(2.4, 2.5)
    ax = figure.subplots()
    ax.imshow(image, cmap="magma", interpolation="nearest")
    ax.set_title(f"z = {z_um:.2f} µm", fontsize=8)
    ax.set_axis_off()
    if pixel_um is not None:
        add_scale_bar(ax, pixel_um, image.shape[-1])
    return figure_rgb(figure)


# ---------------------------------------------------------------------------------------- training
def examples_figure(
    frames: Sequence[np.ndarray],
    truth_px: Sequence[np.ndarray],
    predictions_px: Sequence[np.ndarray],
    pixel_um: float,
    titles: Sequence[str] | None = None,
) -> Figure:
    """Camera frames side by side with the ground truth (green circles) and the predictions (red ×),
    one colour scale in camera counts, a scale bar on each and a legend. Positions ``(n, 2)`` are (column,
    row) in continuous pixel coordinates (pixel centre at +0.5)."""
    from matplotlib.lines import Line2D

    frames = [np.asarray(frame, dtype=np.float64) for frame in frames]
    lo, hi = np.percentile(np.concatenate([f.ravel() for f in frames]), [1, 99.8])
    figure = new_figure(3.0 * len(frames) + 1.0, 3.6)
    axes = np.atleast_1d(figure.subplots(1, len(frames), squeeze=False).ravel())
    image = None
    for i, (ax, frame) in enumerate(zip(axes, frames)):
        image = ax.imshow(frame, cmap="gray", vmin=lo, vmax=max(hi, lo + 1e-9), interpolation="nearest")
        # imshow puts pixel c's centre at x = c, so continuous pixel coordinates shift by -0.5
        truth, found = np.asarray(truth_px[i]).reshape(-1, 2), np.asarray(predictions_px[i]).reshape(-1, 2)
        ax.scatter(truth[:, 0] - 0.5, truth[:, 1] - 0.5, s=40, facecolors="none", edgecolors="lime", lw=1)
        ax.scatter(found[:, 0] - 0.5, found[:, 1] - 0.5, s=30, marker="x", c="red", linewidths=1)
        ax.set_xlim(-0.5, frame.shape[1] - 0.5)
        ax.set_ylim(frame.shape[0] - 0.5, -0.5)
        ax.set_title(titles[i] if titles else "", fontsize=8)
        ax.set_axis_off()
        add_scale_bar(ax, pixel_um, frame.shape[1])
    if image is not None:
        figure.colorbar(image, ax=axes.tolist(), shrink=0.85).set_label("camera counts")
    handles = [
        Line2D([], [], ls="none", marker="o", mfc="none", mec="lime", label="ground truth"),
        Line2D([], [], ls="none", marker="x", color="red", label="prediction"),
    ]
    figure.legend(handles=handles, loc="outside lower center", ncols=2, fontsize=8, frameon=False)
    return figure


# ---------------------------------------------------------------------------------------- files
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
