"""Is a recording like the frames a checkpoint was trained on? Two statistics per frame, computed the same
way on the recording (after infer.py's preprocessing) and on frames simulated from the checkpoint's own
training distribution: the level (the frame's median, background plus camera baseline, in counts) and the
signal (the 99.9th percentile above the median: the brightest PSF pixels, in counts). A recording whose
typical values lie far outside the training frames' range is localized by a network that never saw such
frames; infer.py warns (it does not refuse: the user may know better)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

#: Percentile of a frame's pixels that stands for its brightest PSF pixels.
SIGNAL_PERCENTILE = 99.9
#: How far outside the training range the recording's median may lie: the level by this fraction of the
#: training range's width (plus LEVEL_SLACK_COUNTS), the signal by this factor.
LEVEL_MARGIN = 0.5
LEVEL_SLACK_COUNTS = 10.0
SIGNAL_FACTOR = 3.0


def frame_statistics(frames: Tensor | np.ndarray) -> np.ndarray:
    """``(B, 2)`` level and signal (counts) of frames ``(B, H, W)``."""
    flat = torch.as_tensor(frames).detach().double().reshape(len(frames), -1)
    level = flat.median(dim=1).values
    top = torch.quantile(flat, SIGNAL_PERCENTILE / 100.0, dim=1)
    return torch.stack([level, top - level], dim=1).numpy()


def training_statistics(module: Any, frames: int = 64, seed: int = 0) -> np.ndarray:
    """:func:`frame_statistics` of ``frames`` frames from the checkpoint's training distribution (its
    optics, emitters, background and camera; fixed seed), rendered by the module's own simulator."""
    from dstorm3d.data.simulated import SimulatedDataModule
    from dstorm3d.simulation.simulator import batch_generator

    data = SimulatedDataModule(
        module.hparams.optics, module.hparams.simulation, batch_size=16, test_samples=frames, seed=seed
    )
    device = next(module.parameters()).device
    stats = []
    with torch.no_grad():
        for batch in data.test_dataloader():
            batch = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()}
            generator = batch_generator(device, seed, "range check", int(batch["index"][0]))
            stats.append(frame_statistics(module.simulate(batch, generator).cpu()))
    return np.concatenate(stats)


@dataclass(frozen=True)
class RangeCheck:
    """The recording's median statistics beside the training frames' range (1st–99th percentile)."""

    level: float
    signal: float
    level_range: tuple[float, float]
    signal_range: tuple[float, float]

    def warnings(self) -> list[str]:
        """One line per statistic far outside the training range (empty when the recording is alike)."""
        out = []
        lo, hi = self.level_range
        margin = LEVEL_MARGIN * (hi - lo) + LEVEL_SLACK_COUNTS
        if not lo - margin <= self.level <= hi + margin:
            out.append(
                f"the recording's background level (median {self.level:.0f} counts after preprocessing) is "
                f"far outside the checkpoint's training frames ({lo:.0f}–{hi:.0f}): check "
                "preprocessing.baseline and adu_per_photon, or train for this camera and background"
            )
        lo, hi = self.signal_range
        if not lo / SIGNAL_FACTOR <= self.signal <= hi * SIGNAL_FACTOR:
            out.append(
                f"the recording's brightest PSF pixels ({self.signal:.0f} counts above the background, the "
                f"{SIGNAL_PERCENTILE:g}th percentile) are far outside the checkpoint's training frames "
                f"({lo:.0f}–{hi:.0f}): check preprocessing.adu_per_photon, or train for these photon counts"
            )
        return out


def compare_with_training(recording: np.ndarray, training: np.ndarray) -> RangeCheck:
    """Recording statistics ``(n, 2)`` against training statistics ``(m, 2)`` (:func:`frame_statistics`)."""
    level = np.percentile(training[:, 0], [1, 99])
    signal = np.percentile(training[:, 1], [1, 99])
    median = np.median(recording, axis=0)
    return RangeCheck(
        float(median[0]),
        float(median[1]),
        (float(level[0]), float(level[1])),
        (float(signal[0]), float(signal[1])),
    )
