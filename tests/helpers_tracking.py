"""Telomere-like movies for the tracking tests: emitters diffusing with the simulator's motion model
(:mod:`dstorm3d.simulation.motion`), localized as the true positions plus Gaussian noise, some missed."""

from __future__ import annotations

import numpy as np
import pandas as pd

from dstorm3d.analysis.tracking import XYZ, table_from_arrays
from dstorm3d.simulation.motion import MotionSettings, emitter_trajectories

TELOMERES, FRAME_INTERVAL_S, FIELD_UM, Z_RANGE_UM = 48, 0.1, 121 * 0.110, (2.0, 6.0)
TELOMERE_D = 0.005  # µm²/s
NOISE_NM = (15.0, 15.0, 30.0)
MISSED = 0.05


def diffusing_truth(
    seed: int, emitters: int, frames: int, diffusion_um2_per_s: float, field_um: float = FIELD_UM
) -> pd.DataFrame:
    """Ground truth (frame, x/y/z [nm], emitter_id) of emitters uniform in the field, then diffusing
    (reflected at the field's edges and the z range)."""
    rng = np.random.default_rng(seed)
    low, high = np.array([0.0, 0.0, Z_RANGE_UM[0]]), np.array([field_um, field_um, Z_RANGE_UM[1]])
    start = rng.uniform(low, high, size=(emitters, 3))
    motion = MotionSettings(diffusion_um2_per_s, 0.0, FRAME_INTERVAL_S)
    positions_um = np.stack(list(emitter_trajectories(rng, start, frames, motion, low, high)))  # (T, E, 3)
    return table_from_arrays(
        np.repeat(np.arange(1, frames + 1), emitters),
        positions_um.reshape(-1, 3) * 1e3,
        emitter_id=np.tile(np.arange(1, emitters + 1), frames),
    )


def localize(truth: pd.DataFrame, seed: int) -> pd.DataFrame:
    """The truth plus Gaussian noise (:data:`NOISE_NM` per axis), :data:`MISSED` of the rows dropped."""
    rng = np.random.default_rng(seed + 1000)
    locs = truth.copy()
    for column, sigma in zip(XYZ, NOISE_NM):
        locs[column] = locs[column] + rng.normal(0.0, sigma, len(locs))
    return locs[rng.random(len(locs)) >= MISSED].reset_index(drop=True)
