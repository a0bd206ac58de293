"""Bead z-stacks: reading, conversion to photons, finding beads and cutting their windows.

A bead stack is a TIFF of Z slices ``(Z, H, W)`` in camera counts (ADU), one slice per stage position,
with isolated sub-diffraction beads. Counts become photons with the configured camera's ``to_photons``
(:mod:`dstorm3d.simulation.camera`). Beads are found on the mean projection over the slices (smoothed by
a Gaussian of window/8 pixels, so that single noisy pixels do not count as beads and an extended PSF,
e.g. a Tetrapod's lobes, makes one blob), as local maxima that stand out from the background by
``min_snr`` noise σ (both from the darkest pixels); a bead whose window leaves the frame or overlaps
another bead's window is rejected. Positions here are in pixels, (row, column), from the
frame's top-left pixel *index* (pixel ``(0, 0)`` has its centre at ``(0, 0)``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dstorm3d.errors import UserInputError


class BeadStackError(UserInputError):
    """A bead stack that cannot be calibrated from (no beads, saturated, not a z-stack)."""


@dataclass(frozen=True)
class BeadStack:
    """A z-stack read from a file.

    Attributes:
        counts: ``(Z, H, W)`` raw camera counts (ADU, float64).
        z_step_um: the stack's nominal z step from the TIFF's ImageJ calibration (µm), or ``None``.
        path: where it was read from.
        integer_max: the largest count the file's integer type can hold (``None`` for float data).
    """

    counts: np.ndarray
    z_step_um: float | None
    path: Path
    integer_max: float | None


@dataclass(frozen=True)
class BeadWindows:
    """Windows cut around the beads of a stack.

    Attributes:
        photons: ``(B, Z, P, P)`` data in photons per pixel.
        corners: ``(B, 2)`` int (row, column) of each window's top-left pixel in the frame.
        peaks: ``(B, 2)`` (row, column) of each bead's local maximum in the projection (pixel index).
        rejected: one line per bead that was found but not kept (why).
    """

    photons: np.ndarray
    corners: np.ndarray
    peaks: np.ndarray
    rejected: tuple[str, ...]

    @property
    def window_px(self) -> int:
        return int(self.photons.shape[-1])


def read_bead_stack(path: str | Path) -> BeadStack:
    """Read a ``(Z, H, W)`` TIFF z-stack (any singleton axes dropped); refuses anything else."""
    import tifffile

    from dstorm3d.utils.tiff import read_tiff_calibration

    path = Path(path)
    try:
        counts = np.asarray(tifffile.imread(path))
        calibration = read_tiff_calibration(path)
    except (OSError, ValueError, tifffile.TiffFileError) as exc:
        raise BeadStackError(f"beads={path}: cannot read it as a TIFF ({exc})") from None
    dtype = counts.dtype
    counts = np.squeeze(counts)
    if counts.ndim != 3 or counts.shape[0] < 3:
        raise BeadStackError(
            f"beads={path}: a bead z-stack needs shape (slices, height, width) with ≥ 3 slices, got "
            f"{tuple(counts.shape)}"
        )
    if not np.issubdtype(dtype, np.number) or np.issubdtype(dtype, np.complexfloating):
        raise BeadStackError(f"beads={path}: pixel type {dtype} is not a real number type")
    integer_max = float(np.iinfo(dtype).max) if np.issubdtype(dtype, np.integer) else None
    step = calibration.z_step_um if calibration.unit in ("um", "µm", "micron") else None
    return BeadStack(counts.astype(np.float64), step, path, integer_max)


def smoothed_projection(photons: np.ndarray, sigma_px: float = 1.0) -> np.ndarray:
    """``(H, W)`` mean over the slices of ``(Z, H, W)`` photons, smoothed by a Gaussian of ``sigma_px``."""
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(photons.mean(axis=0), sigma_px, mode="nearest")


def robust_background(image: np.ndarray) -> tuple[float, float]:
    """Background level and noise σ of an image from its darkest pixels, so that beads covering up to
    ~3/4 of the frame do not bias them: the 10th percentile, and σ = (P25 − P5)/0.971 (for Gaussian noise
    the 5th and 25th percentiles lie 1.645 σ and 0.674 σ below the mean)."""
    p5, p10, p25 = np.percentile(image, [5, 10, 25])
    return float(p10), max(float(p25 - p5) / 0.971, 1e-12)


def find_peaks(projection: np.ndarray, min_snr: float, min_separation_px: int) -> np.ndarray:
    """``(B, 2)`` int (row, column) of local maxima of ``projection`` ``(H, W)`` that exceed the background
    by ``min_snr`` noise σ (:func:`robust_background`), brightest first. A maximum must be the largest
    value within ``min_separation_px`` (a bright bead's shoulder is not a second bead)."""
    from scipy.ndimage import maximum_filter

    median, spread = robust_background(projection)
    size = 2 * max(int(min_separation_px) // 2, 1) + 1
    is_peak = (projection == maximum_filter(projection, size=size, mode="nearest")) & (
        projection > median + min_snr * spread
    )
    rows, cols = np.nonzero(is_peak)
    order = np.argsort(-projection[rows, cols])
    return np.stack([rows[order], cols[order]], axis=1).astype(np.int64)


def select_beads(
    peaks: np.ndarray, frame_shape: tuple[int, int], window_px: int, min_separation_px: float
) -> tuple[np.ndarray, list[str]]:
    """Keep the peaks ``(B, 2)`` whose ``window_px`` window lies in the frame and that have no other peak
    within ``min_separation_px``. Returns the kept peaks and one reason per rejected one."""
    half = window_px // 2
    height, width = frame_shape
    kept, rejected = [], []
    for index, (row, col) in enumerate(peaks):
        others = np.delete(peaks, index, axis=0)
        nearest = float(np.min(np.hypot(*(others - (row, col)).T))) if len(others) else math.inf
        where = f"bead at row {row}, column {col}"
        if (
            row - half < 0
            or col - half < 0
            or row - half + window_px > height
            or col - half + window_px > width
        ):
            rejected.append(f"{where}: its {window_px}-px window leaves the frame")
        elif nearest < min_separation_px:
            rejected.append(f"{where}: another bead {nearest:.1f} px away (< {min_separation_px:g} px)")
        else:
            kept.append((row, col))
    return np.asarray(kept, dtype=np.int64).reshape(-1, 2), rejected


def check_saturation(counts: np.ndarray, corners: np.ndarray, window_px: int, saturation_adu: float) -> None:
    """Refuse a stack in which a bead window reaches ``saturation_adu`` (the camera's largest count)."""
    for row, col in corners:
        window = counts[:, row : row + window_px, col : col + window_px]
        saturated = int(np.count_nonzero(window >= saturation_adu))
        if saturated:
            centre = (row + window_px // 2, col + window_px // 2)
            raise BeadStackError(
                f"the bead at row {centre[0]}, column {centre[1]} saturates the camera ({saturated} pixel "
                f"values ≥ {saturation_adu:g} ADU): record the beads with less light or gain (or set "
                "saturation_adu if the camera's largest count is higher)"
            )


def cut_windows(photons: np.ndarray, peaks: np.ndarray, window_px: int) -> tuple[np.ndarray, np.ndarray]:
    """``(B, Z, P, P)`` windows of ``(Z, H, W)`` photons centred on ``peaks (B, 2)``, and their corners."""
    corners = peaks - window_px // 2
    windows = np.stack([photons[:, row : row + window_px, col : col + window_px] for row, col in corners])
    return windows, corners


def bead_windows(
    stack: BeadStack,
    photons: np.ndarray,
    window_px: int,
    min_snr: float,
    min_separation_px: float,
    saturation_adu: float | None,
    max_beads: int | None = None,
) -> BeadWindows:
    """Find, select and cut the beads of a stack (``photons``: the stack's counts in photons, ``(Z, H, W)``).
    Raises :class:`BeadStackError` when no bead is usable or a bead window saturates."""
    height, width = photons.shape[1:]
    if window_px > min(height, width):
        raise BeadStackError(
            f"window_px={window_px} is larger than the stack's {height}×{width}-pixel slices: use a smaller "
            "window_px"
        )
    projection = smoothed_projection(photons, max(1.0, window_px / 8))
    peaks = find_peaks(projection, min_snr, int(round(min_separation_px)))
    if len(peaks) == 0:
        raise BeadStackError(
            f"beads={stack.path}: no bead found (no local maximum of the mean projection stands "
            f"{min_snr:g} noise σ above the background): check the file, or lower min_snr"
        )
    kept, rejected = select_beads(peaks, (height, width), window_px, min_separation_px)
    if max_beads is not None and len(kept) > max_beads:
        rejected += [
            f"bead at row {r}, column {c}: beyond max_beads={max_beads}" for r, c in kept[max_beads:]
        ]
        kept = kept[:max_beads]
    if len(kept) == 0:
        raise BeadStackError(
            f"beads={stack.path}: {len(peaks)} bead(s) found but none usable ({rejected[0]}; …): use a "
            "smaller window_px or min_separation_px"
        )
    windows, corners = cut_windows(photons, kept, window_px)
    if saturation_adu is not None:
        check_saturation(stack.counts, corners, window_px, saturation_adu)
    return BeadWindows(windows, corners, kept, tuple(rejected))


def focus_guess(windows: np.ndarray) -> int:
    """0-based slice where the beads look most compact: the smallest summed second moment of the
    background-subtracted windows ``(B, Z, P, P)`` (for an astigmatic PSF, the circle of least confusion)."""
    size = windows.shape[-1]
    coords = np.arange(size, dtype=np.float64) - (size - 1) / 2
    rows, cols = np.meshgrid(coords, coords, indexing="ij")
    border = np.concatenate(
        [windows[..., 0, :], windows[..., -1, :], windows[..., 1:-1, 0], windows[..., 1:-1, -1]], axis=-1
    )
    signal = np.clip(windows - np.median(border, axis=-1)[..., None, None], 0, None)
    total = signal.sum(axis=(-2, -1)).clip(1e-12)
    mean_r = (signal * rows).sum(axis=(-2, -1)) / total
    mean_c = (signal * cols).sum(axis=(-2, -1)) / total
    second = (signal * ((rows - mean_r[..., None, None]) ** 2 + (cols - mean_c[..., None, None]) ** 2)).sum(
        axis=(-2, -1)
    ) / total
    return int(np.argmin(np.median(second, axis=0)))


def initial_positions(windows: np.ndarray, focus_slice: int, span: int = 3) -> np.ndarray:
    """``(B, 2)`` (row, column) centroids (pixel index within the window) of the background-subtracted
    windows ``(B, Z, P, P)`` averaged over ``span`` slices either side of ``focus_slice``."""
    lo, hi = max(focus_slice - span, 0), min(focus_slice + span + 1, windows.shape[1])
    image = windows[:, lo:hi].mean(axis=1)
    size = image.shape[-1]
    border = np.concatenate([image[:, 0], image[:, -1], image[:, 1:-1, 0], image[:, 1:-1, -1]], axis=-1)
    signal = np.clip(image - np.median(border, axis=-1)[:, None, None], 0, None)
    signal = np.where(signal > 0.2 * signal.max(axis=(-2, -1), keepdims=True), signal, 0.0)
    index = np.arange(size, dtype=np.float64)
    total = signal.sum(axis=(-2, -1)).clip(1e-12)
    return np.stack(
        [(signal.sum(axis=-1) * index).sum(-1) / total, (signal.sum(axis=-2) * index).sum(-1) / total], axis=1
    )


def background_guess(windows: np.ndarray) -> np.ndarray:
    """``(B,)`` median of each bead's window border over all slices (photons per pixel, ≥ 0.01)."""
    border = np.concatenate(
        [windows[..., 0, :], windows[..., -1, :], windows[..., 1:-1, 0], windows[..., 1:-1, -1]], axis=-1
    )
    return np.clip(np.median(border.reshape(border.shape[0], -1), axis=1), 0.01, None)
