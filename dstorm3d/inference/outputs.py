"""What inference writes: the localization table, the super-resolved render, overlays, the summary.

``localizations.csv`` follows ThunderSTORM's column convention (SMAP and ThunderSTORM import it):
``"id","frame","x [nm]","y [nm]","z [nm]","intensity [photon]","confidence"`` with frames from 1, x/y
from the top-left corner of the recording's frames, z above the coverslip. A head that estimates no
photons (the volumetric head) writes its peak value as ``"intensity [au]"`` instead.
"""

from __future__ import annotations

import csv
import heapq
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dstorm3d.utils.files import atomic_write

PART_COLUMNS = ("frame", "x_nm", "y_nm", "z_nm", "intensity", "confidence")


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

    def write(self, frame: int, xyz_nm: np.ndarray, intensity: np.ndarray, confidence: np.ndarray) -> None:
        for (x, y, z), i, c in zip(xyz_nm, intensity, confidence):
            self._writer.writerow((frame, f"{x:.3f}", f"{y:.3f}", f"{z:.3f}", f"{i:.6g}", f"{c:.6g}"))
        self.rows += len(xyz_nm)

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()


def _read_part(path: Path) -> Iterator[tuple[int, list[str]]]:
    with open(path, newline="") as fh:
        for row in csv.reader(fh):
            yield int(row[0]), row


def merge_parts(folder: Path, ranks: int, destination: Path, intensity_unit: str, overwrite: bool) -> int:
    """Merge the ranks' part files into ``destination`` in frame order (streaming k-way merge); returns the
    number of rows. Part files are removed afterwards."""
    parts = [part_path(folder, r) for r in range(ranks) if part_path(folder, r).exists()]
    header = ["id", "frame", "x [nm]", "y [nm]", "z [nm]", f"intensity [{intensity_unit}]", "confidence"]
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
    ``confidence``."""
    with open(path, newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        rows = np.array([[float(v) for v in r] for r in reader], dtype=np.float64).reshape(-1, len(header))
    keys = {"frame": "frame", "x [nm]": "x", "y [nm]": "y", "z [nm]": "z", "confidence": "confidence"}
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


def overlay_panel(frame: np.ndarray, rendered: np.ndarray) -> np.ndarray:
    """``[input | model re-rendered from the localizations | residual]`` as one RGB uint8 image."""
    lo, hi = np.percentile(frame, [1, 99.8])
    scale = max(hi - lo, 1e-9)

    def grey(a: np.ndarray) -> np.ndarray:
        v = np.clip((a - lo) / scale, 0, 1)
        return (np.repeat(v[..., None], 3, axis=2) * 255).astype(np.uint8)

    residual = frame - rendered
    r = np.clip(residual / scale, -1, 1)
    diverging = np.stack([np.clip(r, 0, 1), np.zeros_like(r), np.clip(-r, 0, 1)], axis=-1)
    gap = np.full((frame.shape[0], 4, 3), 255, dtype=np.uint8)
    return np.concatenate([grey(frame), gap, grey(rendered), gap, (diverging * 255).astype(np.uint8)], axis=1)


def save_tiff(
    array: np.ndarray, path: Path, description: dict[str, Any] | None = None, overwrite: bool = False
) -> Path:
    import tifffile

    text = json.dumps(description) if description else None
    return atomic_write(
        Path(path), lambda p: tifffile.imwrite(p, array, description=text), overwrite=overwrite
    )


def save_json(data: dict[str, Any], path: Path, overwrite: bool = False) -> Path:
    return atomic_write(
        Path(path), lambda p: p.write_text(json.dumps(data, indent=2, default=str)), overwrite=overwrite
    )


def existing_outputs(folder: Path, names: Sequence[str]) -> list[Path]:
    return [Path(folder) / n for n in names if (Path(folder) / n).exists()]


def per_frame_counts(frames: np.ndarray, n_frames: int) -> np.ndarray:
    """Localizations per frame (frames numbered from 1)."""
    return np.bincount(frames.astype(np.int64) - 1, minlength=n_frames)[:n_frames]
