"""Emitter motion over a simulated recording: Brownian diffusion in 3D with a diffusion coefficient D, inside
the imaged volume (reflecting walls at its faces), or immobile emitters.

Positions in µm (x, y from the frame's top-left corner, z above the coverslip), time in s, D in µm²/s. Between
two frames ``frame_interval_s`` = Δt apart a mobile emitter moves by a Gaussian step of σ = √(2·D·Δt) per
axis, so its mean squared 3D step is 6·D·Δt. Positions are instantaneous (sampled at the frame times: no
motion blur within an exposure).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from dstorm3d.utils.validate import mapping, number

MOTION_KEYS = ("diffusion_um2_per_s", "immobile_fraction", "frame_interval_s")


@dataclass(frozen=True)
class MotionSettings:
    """How emitters move (``motion.*``): D of the mobile ones (µm²/s; 0 keeps every emitter fixed), the
    fraction of emitters that stay put, and the time between frames (s)."""

    diffusion_um2_per_s: float = 0.0
    immobile_fraction: float = 0.0
    frame_interval_s: float = 0.1

    @classmethod
    def from_config(cls, config: Any) -> MotionSettings:
        """Validate ``motion`` (``None``: fixed emitters, the defaults)."""
        if config is None:
            return cls()
        c = mapping("motion", config, MOTION_KEYS)
        defaults = cls()
        return cls(
            diffusion_um2_per_s=number(
                "motion.diffusion_um2_per_s",
                c.get("diffusion_um2_per_s", defaults.diffusion_um2_per_s),
                minimum=0,
                example=0.005,
            ),
            immobile_fraction=number(
                "motion.immobile_fraction",
                c.get("immobile_fraction", defaults.immobile_fraction),
                minimum=0,
                maximum=1,
                example=0.2,
            ),
            frame_interval_s=number(
                "motion.frame_interval_s",
                c.get("frame_interval_s", defaults.frame_interval_s),
                above=0,
                example=0.1,
            ),
        )

    @property
    def moves(self) -> bool:
        """Whether any emitter moves."""
        return self.diffusion_um2_per_s > 0 and self.immobile_fraction < 1

    @property
    def step_sigma_um(self) -> float:
        """σ of one frame's step along each axis, √(2·D·Δt) (µm)."""
        return math.sqrt(2.0 * self.diffusion_um2_per_s * self.frame_interval_s)

    def immobile_count(self, emitters: int) -> int:
        """How many of ``emitters`` stay put (the fraction, rounded)."""
        return round(self.immobile_fraction * emitters) if self.moves else emitters

    def to_dict(self) -> dict[str, float]:
        return {key: getattr(self, key) for key in MOTION_KEYS}

    def record(self, emitters: int) -> dict[str, Any]:
        """The settings and what follows from them for ``emitters`` emitters (for simulation.json)."""
        moves = self.moves
        return {
            **self.to_dict(),
            "mobile_emitters": emitters - self.immobile_count(emitters),
            "step_sigma_nm_per_axis": self.step_sigma_um * 1e3 if moves else 0.0,
            "mean_squared_step_nm2": 6e6 * self.diffusion_um2_per_s * self.frame_interval_s if moves else 0.0,
            "walls": "reflecting at the frame's edges and the z range",
        }


def reflect_into(values: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Fold ``values`` ``(N, 3)`` into ``[low, high]`` per column by mirror reflection at the walls (any
    number of crossings); a column with ``low == high`` is pinned there."""
    span = high - low
    folded = np.mod(values - low, np.where(span > 0, 2 * span, 1.0))
    folded = np.where(folded > span, 2 * span - folded, folded)
    return low + np.where(span > 0, folded, 0.0)


def mobile_emitters(rng: np.random.Generator, emitters: int, settings: MotionSettings) -> np.ndarray:
    """``(emitters,)`` bool: which emitters move (``immobile_count`` chosen at random stay put)."""
    mobile = np.ones(emitters, dtype=bool)
    mobile[rng.permutation(emitters)[: settings.immobile_count(emitters)]] = False
    return mobile


def emitter_trajectories(
    rng: np.random.Generator,
    start_um: np.ndarray,
    frames: int,
    settings: MotionSettings,
    low_um: np.ndarray,
    high_um: np.ndarray,
) -> Iterator[np.ndarray]:
    """``(N, 3)`` positions (µm) of every emitter in each of ``frames`` frames, one array per frame.

    Frame 0 is ``start_um``; each later frame adds a Gaussian step (σ = √(2·D·Δt) per axis) to the mobile
    emitters and reflects them into the box ``[low_um, high_um]`` (``(3,)`` each). Without motion every
    frame is ``start_um`` itself and ``rng`` is not used.
    """
    positions = np.array(start_um, dtype=np.float64)
    if not settings.moves:
        for _ in range(frames):
            yield positions
        return
    mobile = mobile_emitters(rng, len(positions), settings)
    sigma = settings.step_sigma_um
    low, high = np.asarray(low_um, dtype=np.float64), np.asarray(high_um, dtype=np.float64)
    for frame in range(frames):
        if frame:
            steps = rng.normal(0.0, sigma, size=(int(mobile.sum()), 3))
            positions = positions.copy()
            positions[mobile] = reflect_into(positions[mobile] + steps, low, high)
        yield positions
