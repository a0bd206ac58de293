"""Fourier ring correlation (FRC) resolution of a localization table (Nieuwenhuizen et al., Nat. Methods
10, 557, 2013).

The localizations are split into two halves by blocks of ``block_frames`` frames (even blocks, odd
blocks: an emitter seen in consecutive frames stays in one half, which keeps its repeated localizations
from correlating the halves), each half is histogrammed laterally on a square grid of ``pixel_nm`` pixels
over the localizations' bounding box, multiplied by a Tukey window (α = 0.25; no leakage from the
edges) and Fourier transformed (numpy). For rings of spatial frequency q (width one frequency step
1/(N·pixel)):

    FRC(q) = Σ_ring Re(F₁ F₂*) / √(Σ_ring |F₁|² · Σ_ring |F₂|²)

smoothed with a moving average over ``smoothing`` rings. The resolution is 1/q where the smoothed curve
first falls below 1/7 (linear between rings); None when it never does below Nyquist (the pixel is too
coarse) or there are too few localizations. The ``frc``/``pyfrc`` packages on the index were not used:
``frc`` pins numpy < 2 (this project runs numpy 2), ``pyfrc`` is an unrelated robotics tool.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dstorm3d.analysis.localizations import Localizations
from dstorm3d.utils.validate import flag, integer, number

THRESHOLD = 1.0 / 7.0
TUKEY_ALPHA = 0.25
MIN_LOCALIZATIONS = 50  # per half: fewer give no resolution


@dataclass(frozen=True)
class FRCSettings:
    """``frc.*`` of ``configs/analyze.yaml``.

    Attributes:
        enabled: run the step.
        pixel_nm: histogram pixel (nm); coarsened when the grid would exceed ``max_pixels`` per side.
        block_frames: frames per block of the two halves.
        smoothing: rings in the moving average of the curve.
        max_pixels: largest grid side.
    """

    enabled: bool = True
    pixel_nm: float = 5.0
    block_frames: int = 100
    smoothing: int = 7
    max_pixels: int = 4096

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> FRCSettings:
        return cls(
            enabled=flag("frc.enabled", config.get("enabled")),
            pixel_nm=number("frc.pixel_nm", config.get("pixel_nm"), above=0.0, example=5),
            block_frames=integer("frc.block_frames", config.get("block_frames"), minimum=1, example=100),
            smoothing=integer("frc.smoothing", config.get("smoothing"), minimum=1, example=7),
            max_pixels=integer("frc.max_pixels", config.get("max_pixels"), minimum=64, example=4096),
        )


@dataclass
class FRCResult:
    """An FRC curve and its resolution.

    Attributes:
        q_per_nm: ``(R,)`` ring spatial frequency (1/nm), from 0 to Nyquist.
        frc: ``(R,)`` the raw curve; ``smoothed`` the moving average.
        resolution_nm: 1/q at the 1/7 crossing, or None.
        pixel_nm: the histogram pixel used (nm).
        halves: localizations in each half.
        reason: why there is no resolution (None when there is one).
    """

    q_per_nm: np.ndarray
    frc: np.ndarray
    smoothed: np.ndarray
    resolution_nm: float | None
    pixel_nm: float
    halves: tuple[int, int]
    reason: str | None = None

    def record(self) -> dict[str, Any]:
        return {
            "resolution_nm": self.resolution_nm,
            "threshold": "1/7",
            "pixel_nm": self.pixel_nm,
            "halves": list(self.halves),
            "reason": self.reason,
        }


def split_halves(frame: np.ndarray, block_frames: int) -> np.ndarray:
    """``(N,)`` bool: in the first half (even blocks of ``block_frames`` frames, frames from 1)."""
    return ((frame - 1) // block_frames) % 2 == 0


def histogram_pair(
    xy_nm: np.ndarray, first: np.ndarray, pixel_nm: float, size: int, origin_nm: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Two ``(size, size)`` histograms (localizations per pixel) of the halves ``first`` / ``~first``."""
    index = np.floor((xy_nm - origin_nm) / pixel_nm).astype(np.int64)
    inside = ((index >= 0) & (index < size)).all(axis=1)
    flat = index[:, 1] * size + index[:, 0]
    images = [
        np.bincount(flat[inside & half], minlength=size * size).reshape(size, size).astype(np.float64)
        for half in (first, ~first)
    ]
    return images[0], images[1]


def frc_curve(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The FRC of two ``(N, N)`` images: ``(rings,)`` ring index (frequency in steps of 1/N per pixel)
    and the correlation per ring, rings 0..N/2."""
    from scipy.signal.windows import tukey

    size = a.shape[0]
    window = np.outer(tukey(size, TUKEY_ALPHA), tukey(size, TUKEY_ALPHA))
    fa, fb = np.fft.rfft2(a * window), np.fft.rfft2(b * window)
    ky = np.fft.fftfreq(size) * size
    kx = np.fft.rfftfreq(size) * size
    ring = np.round(np.hypot(ky[:, None], kx[None, :])).astype(np.int64).ravel()
    rings = size // 2 + 1
    keep = ring < rings
    ring = ring[keep]
    cross = np.bincount(ring, (fa * fb.conj()).real.ravel()[keep], rings)
    power_a = np.bincount(ring, (np.abs(fa) ** 2).ravel()[keep], rings)
    power_b = np.bincount(ring, (np.abs(fb) ** 2).ravel()[keep], rings)
    with np.errstate(invalid="ignore", divide="ignore"):
        correlation = cross / np.sqrt(power_a * power_b)
    return np.arange(rings), np.nan_to_num(correlation, nan=0.0)


def smooth(curve: np.ndarray, width: int) -> np.ndarray:
    """Moving average over ``width`` rings (shorter at the ends)."""
    if width <= 1:
        return curve.copy()
    kernel = np.ones(width)
    return np.convolve(curve, kernel, "same") / np.convolve(np.ones_like(curve), kernel, "same")


def crossing(q: np.ndarray, curve: np.ndarray, threshold: float = THRESHOLD) -> float | None:
    """The first q > 0 where ``curve`` falls below ``threshold`` (linear between rings), or None."""
    below = np.flatnonzero((curve < threshold) & (np.arange(len(curve)) > 0))
    if not len(below) or below[0] == 0:
        return None
    i = int(below[0])
    c0, c1 = curve[i - 1], curve[i]
    t = (c0 - threshold) / (c0 - c1) if c0 != c1 else 0.0
    return float(q[i - 1] + t * (q[i] - q[i - 1]))


def frc_resolution(locs: Localizations, settings: FRCSettings) -> FRCResult:
    """The FRC resolution of ``locs`` (lateral; see the module docstring)."""
    first = split_halves(locs.frame, settings.block_frames)
    halves = (int(first.sum()), int((~first).sum()))
    empty = np.zeros(0)
    if min(halves) < MIN_LOCALIZATIONS:
        reason = (
            f"the halves hold {halves[0]} and {halves[1]} localizations (blocks of {settings.block_frames} "
            f"frames); FRC needs at least {MIN_LOCALIZATIONS} in each"
        )
        return FRCResult(empty, empty, empty, None, settings.pixel_nm, halves, reason)
    xy = locs.xyz_nm[:, :2]
    origin = xy.min(axis=0)
    extent = float((xy.max(axis=0) - origin).max())
    pixel = max(settings.pixel_nm, extent / (settings.max_pixels - 1))
    size = max(64, 2 * math.ceil((extent / pixel + 1) / 2))
    a, b = histogram_pair(xy, first, pixel, size, origin)
    rings, curve = frc_curve(a, b)
    q = rings / (size * pixel)
    smoothed = smooth(curve, settings.smoothing)
    q_cross = crossing(q, smoothed)
    reason = (
        None if q_cross else f"the FRC stays above 1/7 up to Nyquist ({2 * pixel:g} nm): lower frc.pixel_nm"
    )
    return FRCResult(q, curve, smoothed, 1.0 / q_cross if q_cross else None, pixel, halves, reason)


# ---------------------------------------------------------------------------------------- outputs
def write_frc_csv(result: FRCResult, path: Path) -> None:
    """frc.csv: spatial frequency (1/nm), the raw and the smoothed FRC per ring."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["q [1/nm]", "frc", "frc_smoothed"])
        for row in zip(result.q_per_nm, result.frc, result.smoothed):
            writer.writerow([f"{v:.6g}" for v in row])


def frc_figure(result: FRCResult) -> Any:
    """The FRC curve (raw and smoothed) against spatial frequency (1/µm), the 1/7 threshold and the
    resolution."""
    from dstorm3d.visualization import new_figure

    figure = new_figure(6.5, 4.2)
    ax = figure.subplots()
    if len(result.q_per_nm):
        q_um = result.q_per_nm * 1e3
        ax.plot(q_um, result.frc, color="lightgrey", lw=1, label="FRC per ring")
        ax.plot(q_um, result.smoothed, color="tab:blue", lw=1.8, label=f"smoothed ({len(result.frc)} rings)")
        ax.set_xlim(0, q_um[-1])
    ax.axhline(THRESHOLD, color="tab:red", ls="--", lw=1, label="threshold 1/7")
    if result.resolution_nm:
        ax.axvline(1e3 / result.resolution_nm, color="black", lw=1)
        ax.set_title(
            f"FRC resolution {result.resolution_nm:.1f} nm (halves {result.halves[0]} / "
            f"{result.halves[1]} localizations)",
            fontsize=10,
        )
    else:
        ax.set_title("FRC: no resolution", fontsize=10)
        ax.text(
            0.5,
            0.5,
            result.reason or "",
            transform=ax.transAxes,
            ha="center",
            fontsize=8,
            color="grey",
            wrap=True,
        )
    ax.set_xlabel("spatial frequency (1/µm)")
    ax.set_ylabel("Fourier ring correlation")
    ax.set_ylim(-0.2, 1.05)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    return figure
