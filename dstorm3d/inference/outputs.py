"""What inference writes: the localization table, the super-resolved render, overlays, the summary.

``localizations.csv`` follows ThunderSTORM's column convention (SMAP and ThunderSTORM import it):
``"id","frame","x [nm]","y [nm]","z [nm]","intensity [photon]","confidence"`` with frames from 1, x/y
from the top-left corner of the recording's frames, z above the coverslip. A head that estimates no
photons (the volumetric head) writes its peak value as ``"intensity [au]"`` instead. A head that predicts
its own uncertainties (the offsets head) adds :data:`UNCERTAINTY_COLUMNS`: the predicted standard
deviations of x, y, z (nm) and the intensity (photons), calibrated by the checkpoint's
``uncertainty_scale`` when it has one (:mod:`dstorm3d.evaluation.uncertainty`).

The renders: ``render.png`` (:func:`render_figure`: z colour bar, scale bar), ``render.tif`` (RGB) and
``render_counts_zmean.tif`` (float32 channels: localizations per pixel, mean z in nm) as ImageJ images
calibrated in µm at the render pixel (:mod:`dstorm3d.utils.tiff`); ``overlay_frameNNNN.png``:
:func:`overlay_figure`.
"""

from __future__ import annotations

import csv
import heapq
import json
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dstorm3d.utils.files import atomic_write

PART_COLUMNS = ("frame", "x_nm", "y_nm", "z_nm", "intensity", "confidence")
LOCALIZATION_COLUMNS = ("id", "frame", "x [nm]", "y [nm]", "z [nm]")
UNCERTAINTY_COLUMNS = (
    "uncertainty_x [nm]",
    "uncertainty_y [nm]",
    "uncertainty_z [nm]",
    "uncertainty_intensity [photon]",
)
"""Predicted standard deviations of x, y, z and the intensity, in this order (offsets heads only)."""
UNCERTAINTY_KEYS = ("uncertainty_x", "uncertainty_y", "uncertainty_z", "uncertainty_intensity")
""":func:`read_localizations`' keys of :data:`UNCERTAINTY_COLUMNS`."""


def part_path(folder: Path, rank: int) -> Path:
    return Path(folder) / f".localizations.rank{rank}.part.csv"


class PartWriter:
    """Appends one rank's localizations (frame order within the rank) to a hidden part file."""

    def __init__(self, folder: Path, rank: int) -> None:
        self.path = part_path(folder, rank)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "w", newline="")
        self._writer = csv.writer(self._fh)
        self.rows = 0

    def write(
        self,
        frame: int,
        xyz_nm: np.ndarray,
        intensity: np.ndarray,
        confidence: np.ndarray,
        sigma: np.ndarray | None = None,
    ) -> None:
        """One frame's rows: ``xyz_nm (n, 3)``, ``intensity (n,)``, ``confidence (n,)`` and, for a head
        that predicts them, ``sigma (n, 4)``: standard deviations of x, y, z (nm) and intensity (photons)."""
        for k, ((x, y, z), i, c) in enumerate(zip(xyz_nm, intensity, confidence)):
            row = [frame, f"{x:.3f}", f"{y:.3f}", f"{z:.3f}", f"{i:.6g}", f"{c:.6g}"]
            if sigma is not None:
                sx, sy, sz, si = sigma[k]
                row += [f"{sx:.3f}", f"{sy:.3f}", f"{sz:.3f}", f"{si:.6g}"]
            self._writer.writerow(row)
        self.rows += len(xyz_nm)

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()


def _read_part(path: Path) -> Iterator[tuple[int, list[str]]]:
    with open(path, newline="") as fh:
        for row in csv.reader(fh):
            yield int(row[0]), row


def localization_header(intensity_unit: str, uncertainties: bool = False) -> list[str]:
    """The columns of ``localizations.csv`` (:data:`UNCERTAINTY_COLUMNS` last, when written)."""
    header = [*LOCALIZATION_COLUMNS, f"intensity [{intensity_unit}]", "confidence"]
    return header + list(UNCERTAINTY_COLUMNS) if uncertainties else header


def merge_parts(
    folder: Path,
    ranks: int,
    destination: Path,
    intensity_unit: str,
    overwrite: bool,
    uncertainties: bool = False,
) -> int:
    """Merge the ranks' part files into ``destination`` in frame order (streaming k-way merge); returns the
    number of rows. Part files are removed afterwards. ``uncertainties``: the parts hold the four
    uncertainty values after the confidence (:meth:`PartWriter.write` with ``sigma``)."""
    parts = [part_path(folder, r) for r in range(ranks) if part_path(folder, r).exists()]
    header = localization_header(intensity_unit, uncertainties)
    count = 0

    def write(tmp: Path) -> None:
        nonlocal count
        with open(tmp, "w", newline="") as fh:
            writer = csv.writer(fh, quoting=csv.QUOTE_NONNUMERIC)
            writer.writerow(header)
            plain = csv.writer(fh)
            for _, row in heapq.merge(*(_read_part(p) for p in parts), key=lambda item: item[0]):
                count += 1
                plain.writerow([count, int(row[0]) + 1, *row[1:]])

    atomic_write(destination, write, overwrite=overwrite)
    for p in parts:
        p.unlink()
    return count


def read_localizations(path: Path) -> dict[str, np.ndarray]:
    """A localization table as float arrays keyed ``frame``, ``x``, ``y``, ``z`` (nm), ``intensity``,
    ``confidence`` and, where the table has them (offsets heads), :data:`UNCERTAINTY_KEYS`
    (``uncertainty_x``, ``_y``, ``_z`` in nm, ``uncertainty_intensity`` in photons)."""
    with open(path, newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        rows = np.array([[float(v) for v in r] for r in reader], dtype=np.float64).reshape(-1, len(header))
    keys = {"frame": "frame", "x [nm]": "x", "y [nm]": "y", "z [nm]": "z", "confidence": "confidence"}
    keys.update(zip(UNCERTAINTY_COLUMNS, UNCERTAINTY_KEYS))
    out = {short: rows[:, header.index(name)] for name, short in keys.items() if name in header}
    intensity = [h for h in header if h.startswith("intensity")]
    if intensity:
        out["intensity"] = rows[:, header.index(intensity[0])]
    return out


# ---------------------------------------------------------------------------------------- renders
def super_resolution_render(
    x_nm: np.ndarray,
    y_nm: np.ndarray,
    z_nm: np.ndarray,
    field_nm: tuple[float, float],
    pixel_nm: float,
    z_range_nm: tuple[float, float],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """2-D histogram of localizations with z colour-coded (paper Fig. 3b).

    Returns ``rgb (h, w, 3) uint8`` (hue = mean z, brightness = count), ``counts (h, w)`` and
    ``mean_z_nm (h, w)`` (NaN where empty).
    """
    from matplotlib import colormaps

    width_nm, height_nm = field_nm
    bins = (max(1, int(np.ceil(height_nm / pixel_nm))), max(1, int(np.ceil(width_nm / pixel_nm))))
    ranges = ((0.0, bins[0] * pixel_nm), (0.0, bins[1] * pixel_nm))
    counts, _, _ = np.histogram2d(y_nm, x_nm, bins=bins, range=ranges)
    z_sum, _, _ = np.histogram2d(y_nm, x_nm, bins=bins, range=ranges, weights=z_nm)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_z = np.where(counts > 0, z_sum / np.maximum(counts, 1), np.nan)
    z0, z1 = z_range_nm
    hue = np.clip((np.nan_to_num(mean_z, nan=z0) - z0) / max(z1 - z0, 1e-9), 0, 1)
    colour = colormaps["turbo"](hue)[..., :3]
    top = np.percentile(counts[counts > 0], 99) if (counts > 0).any() else 1.0
    brightness = np.clip(counts / max(top, 1.0), 0, 1) ** 0.6
    rgb = (colour * brightness[..., None] * 255).astype(np.uint8)
    return rgb, counts.astype(np.float32), mean_z.astype(np.float32)


def render_figure(rgb: np.ndarray, pixel_nm: float, z_range_nm: tuple[float, float]) -> Any:
    """The render of :func:`super_resolution_render` pixel for pixel (small renders enlarged by a whole
    factor), with a scale bar in µm and a colour bar of mean z (nm); brightness is the count."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    from dstorm3d.visualization import add_scale_bar, new_figure

    height, width = rgb.shape[:2]
    zoom = max(1, math.ceil(600 / max(height, width)))
    dpi = max(100.0, max(height, width) * zoom / 8.0)  # about 8 inches of image; labels grow with it
    image_w, image_h = width * zoom / dpi, height * zoom / dpi
    bar_w, title_h = 1.3, 0.45
    figure = new_figure(image_w + bar_w, image_h + title_h, dpi=dpi, layout=None)
    total_w, total_h = image_w + bar_w, image_h + title_h
    ax = figure.add_axes((0.0, 0.0, image_w / total_w, image_h / total_h))
    ax.imshow(np.repeat(np.repeat(rgb, zoom, axis=0), zoom, axis=1), interpolation="nearest")
    ax.set_axis_off()
    add_scale_bar(ax, pixel_nm * 1e-3 / zoom, width * zoom)
    ax.set_title(f"localizations, {pixel_nm:g} nm pixels", fontsize=10, color="black")
    colour_ax = figure.add_axes(
        ((image_w + 0.15) / total_w, 0.1 * image_h / total_h, 0.18 / total_w, 0.8 * image_h / total_h)
    )
    z0, z1 = z_range_nm
    bar = figure.colorbar(ScalarMappable(Normalize(z0, z1), cmap="turbo"), cax=colour_ax)
    bar.set_label("mean z (nm); brightness: localizations per pixel", fontsize=8)
    bar.ax.tick_params(labelsize=8)
    return figure


def overlay_figure(frame: np.ndarray, rendered: np.ndarray, pixel_um: float, title: str = "") -> Any:
    """Three labelled panels: the frame, the model re-rendered from the localizations and the residual
    (frame − model), in photons per pixel (counts after preprocessing), each with a colour bar and a scale
    bar in µm."""
    from dstorm3d.visualization import add_scale_bar, new_figure

    lo, hi = np.percentile(frame, [1, 99.8])
    hi = max(hi, lo + 1e-9)
    residual = frame - rendered
    span = max(float(np.percentile(np.abs(residual), 99.8)), 1e-9)
    height, width = frame.shape
    panel_w = 3.6
    figure = new_figure(3 * (panel_w + 0.9), panel_w * height / width + 0.9)
    axes = figure.subplots(1, 3)
    unit = "photons per pixel"
    panels = (
        ("frame", frame, "gray", lo, hi, unit),
        ("model (re-rendered)", rendered, "gray", lo, hi, unit),
        ("residual (frame − model)", residual, "RdBu_r", -span, span, f"residual, {unit}"),
    )
    for ax, (name, image, cmap, vmin, vmax, label) in zip(axes, panels):
        shown = ax.imshow(image, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
        ax.set_title(name, fontsize=10)
        ax.set_axis_off()
        add_scale_bar(ax, pixel_um, width, colour="white" if cmap == "gray" else "black")
        figure.colorbar(shown, ax=ax, shrink=0.85).set_label(label, fontsize=8)
    if title:
        figure.suptitle(title, fontsize=10)
    return figure


def save_json(data: dict[str, Any], path: Path, overwrite: bool = False) -> Path:
    return atomic_write(
        Path(path), lambda p: p.write_text(json.dumps(data, indent=2, default=str)), overwrite=overwrite
    )


def existing_outputs(folder: Path, names: Sequence[str]) -> list[Path]:
    return [Path(folder) / n for n in names if (Path(folder) / n).exists()]


def per_frame_counts(frames: np.ndarray, n_frames: int) -> np.ndarray:
    """Localizations per frame (frames numbered from 1)."""
    return np.bincount(frames.astype(np.int64) - 1, minlength=n_frames)[:n_frames]
