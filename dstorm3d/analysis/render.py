"""A Gaussian render: every localization a 2D Gaussian as wide as its lateral precision, z colour-coded.

Each localization adds a normalised Gaussian of standard deviation σ = max(its lateral precision (mean of
x and y), ``min_sigma_nm``) at its position, so the density image counts localizations per pixel. For
speed, the localizations are grouped by σ (steps of 10 %): each group is histogrammed on the render grid
(the position snaps to its pixel: ≤ half a pixel) and blurred with that σ (``scipy.ndimage``).

Colour: hue = the density-weighted mean z of a pixel (``turbo`` over ``z_range_nm``; default the 1st–99th
percentile of z), brightness = density / the ``contrast_percentile`` percentile of the density over the
pixels that any localization lights (density above 1 % of the maximum), clipped to 1. Auto contrast on
the lit pixels keeps a sparse render visible: a render of a few hundred localizations in a large field is
bright spots on black, not a black image.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from dstorm3d.analysis.localizations import Localizations
from dstorm3d.utils.validate import flag, number, pair

SIGMA_STEP = 1.1  # σ groups: powers of this, in render pixels
LIT_FRACTION = 0.01  # a pixel is lit above this fraction of the maximum density
MAX_RENDER_PIXELS = 6000  # per side: a larger render is refused (raise render.pixel_nm)


@dataclass(frozen=True)
class RenderSettings:
    """``render.*`` of ``configs/analyze.yaml``.

    Attributes:
        enabled: run the step.
        pixel_nm: render pixel (nm).
        min_sigma_nm: smallest Gaussian σ (nm); None: one render pixel.
        contrast_percentile: brightness 1 at this percentile of the lit pixels' density.
        z_range_nm: z (nm) of the colour scale's ends; None: 1st–99th percentile of the localizations' z.
    """

    enabled: bool = True
    pixel_nm: float = 15.0
    min_sigma_nm: float | None = None
    contrast_percentile: float = 99.5
    z_range_nm: tuple[float, float] | None = None

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> RenderSettings:
        z_range = config.get("z_range_nm")
        return cls(
            enabled=flag("render.enabled", config.get("enabled")),
            pixel_nm=number("render.pixel_nm", config.get("pixel_nm"), above=0.0, example=15),
            min_sigma_nm=number(
                "render.min_sigma_nm", config.get("min_sigma_nm"), above=0.0, allow_none=True, example=10
            ),
            contrast_percentile=number(
                "render.contrast_percentile",
                config.get("contrast_percentile"),
                above=0.0,
                maximum=100.0,
                example=99.5,
            ),
            z_range_nm=None if z_range is None else pair("render.z_range_nm", z_range),
        )

    @property
    def smallest_sigma_nm(self) -> float:
        return self.min_sigma_nm if self.min_sigma_nm is not None else self.pixel_nm


def grid_shape(field_nm: tuple[float, float], pixel_nm: float) -> tuple[int, int]:
    """``(height, width)`` in render pixels of a field ``(width, height)`` in nm."""
    return max(1, math.ceil(field_nm[1] / pixel_nm)), max(1, math.ceil(field_nm[0] / pixel_nm))


def gaussian_density(
    xy_nm: np.ndarray,
    sigma_nm: np.ndarray,
    shape: tuple[int, int],
    pixel_nm: float,
    weights: np.ndarray | None = None,
) -> np.ndarray:
    """``(H, W)`` float64: Σ over localizations of ``weight`` × a normalised Gaussian of σ ``sigma_nm``
    centred on ``xy_nm (N, 2)`` (nm from the top-left corner; pixel ``(i, j)`` covers
    ``[j, j+1) × [i, i+1)`` pixels). Localizations outside the grid are left out."""
    from scipy.ndimage import gaussian_filter

    height, width = shape
    column = np.floor(xy_nm[:, 0] / pixel_nm).astype(np.int64)
    row = np.floor(xy_nm[:, 1] / pixel_nm).astype(np.int64)
    inside = (column >= 0) & (column < width) & (row >= 0) & (row < height)
    weights = np.ones(len(xy_nm)) if weights is None else np.asarray(weights, dtype=np.float64)
    sigma_px = np.asarray(sigma_nm, dtype=np.float64) / pixel_nm
    level = np.round(np.log(sigma_px) / math.log(SIGMA_STEP)).astype(np.int64)
    image = np.zeros(shape)
    flat = row * width + column
    for value in np.unique(level[inside]):
        members = inside & (level == value)
        counts = np.bincount(flat[members], weights[members], height * width).reshape(shape)
        image += gaussian_filter(counts, SIGMA_STEP**value, mode="constant", truncate=4.0)
    return image


@dataclass
class Render:
    """A Gaussian render.

    Attributes:
        rgb: ``(H, W, 3)`` uint8 (hue = mean z, brightness = density with auto contrast).
        density: ``(H, W)`` float32 localizations per pixel.
        mean_z_nm: ``(H, W)`` float32 density-weighted mean z (nm), NaN where nothing is lit.
        pixel_nm: render pixel (nm).
        z_range_nm: z (nm) at the colour scale's ends.
        contrast_top: the density shown at full brightness.
    """

    rgb: np.ndarray
    density: np.ndarray
    mean_z_nm: np.ndarray
    pixel_nm: float
    z_range_nm: tuple[float, float]
    contrast_top: float

    def record(self) -> dict[str, Any]:
        lit = self.density > LIT_FRACTION * max(float(self.density.max()), 1e-12)
        return {
            "pixel_nm": self.pixel_nm,
            "shape": list(self.density.shape),
            "z_range_nm": list(self.z_range_nm),
            "contrast_top_per_pixel": self.contrast_top,
            "lit_pixel_fraction": float(lit.mean()),
        }


def colour_z_range(z_nm: np.ndarray, settings: RenderSettings) -> tuple[float, float]:
    """The colour scale's ends (nm): the setting, else the 1st–99th percentile of z (at least 1 nm wide)."""
    if settings.z_range_nm is not None:
        low, high = settings.z_range_nm
    elif len(z_nm):
        low, high = (float(v) for v in np.percentile(z_nm, [1, 99]))
    else:
        low, high = 0.0, 1.0
    return (low, high) if high - low >= 1.0 else (low - 0.5, low + 0.5)


def auto_contrast_top(density: np.ndarray, percentile: float) -> float:
    """The density shown at full brightness: ``percentile`` of the lit pixels (above 1 % of the maximum)."""
    peak = float(density.max())
    if peak <= 0:
        return 1.0
    lit = density[density > LIT_FRACTION * peak]
    return max(float(np.percentile(lit, percentile)), 1e-12)


def render_localizations(
    locs: Localizations, field_nm: tuple[float, float], settings: RenderSettings
) -> Render:
    """The Gaussian render of ``locs`` over a field ``(width, height)`` nm (see the module docstring)."""
    from matplotlib import colormaps

    shape = grid_shape(field_nm, settings.pixel_nm)
    sigma = np.maximum(locs.precision_nm[:, :2].mean(axis=1), settings.smallest_sigma_nm)
    xy = locs.xyz_nm[:, :2]
    density = gaussian_density(xy, sigma, shape, settings.pixel_nm)
    z_weighted = gaussian_density(xy, sigma, shape, settings.pixel_nm, weights=locs.xyz_nm[:, 2])
    top = auto_contrast_top(density, settings.contrast_percentile)
    floor = LIT_FRACTION * max(float(density.max()), 1e-12)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_z = np.where(density > floor, z_weighted / np.maximum(density, 1e-300), np.nan)
    z_range = colour_z_range(locs.xyz_nm[:, 2], settings)
    hue = np.clip((np.nan_to_num(mean_z, nan=z_range[0]) - z_range[0]) / (z_range[1] - z_range[0]), 0, 1)
    brightness = np.clip(density / top, 0.0, 1.0)
    rgb = (colormaps["turbo"](hue)[..., :3] * brightness[..., None] * 255 + 0.5).astype(np.uint8)
    return Render(rgb, density.astype(np.float32), mean_z.astype(np.float32), settings.pixel_nm, z_range, top)


def render_tiffs(render: Render, info: Mapping[str, Any]) -> dict[str, Any]:
    """``{file name: write(path)}`` for render.tif (RGB) and render_density_zmean.tif (float32 channels:
    localizations per pixel, mean z in nm), ImageJ-calibrated in µm at the render pixel."""
    from dstorm3d.utils.tiff import imagej_tiff_writer

    pixel_um = render.pixel_nm / 1e3
    record = {**info, **render.record()}
    channels = ["localizations per pixel (Gaussian render)", "mean z (nm)"]
    return {
        "render.tif": imagej_tiff_writer(render.rgb, pixel_um, "YXS", info=record),
        "render_density_zmean.tif": imagej_tiff_writer(
            np.stack([render.density, render.mean_z_nm]).astype(np.float32),
            pixel_um,
            "CYX",
            info={**record, "channels": channels},
            labels=channels,
        ),
    }


def render_png_figure(render: Render, title: str) -> Any:
    """The render pixel for pixel with a scale bar (µm) and a z colour bar (nm): ``infer``'s render
    figure."""
    from dstorm3d.inference.outputs import render_figure

    figure = render_figure(render.rgb, render.pixel_nm, render.z_range_nm)
    figure.axes[0].set_title(title, fontsize=10, color="black")
    figure.axes[1].set_ylabel(
        "density-weighted mean z (nm); brightness: Gaussian density (auto contrast)", fontsize=8
    )
    return figure
