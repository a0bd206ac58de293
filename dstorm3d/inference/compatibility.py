"""Is a recording like the frames a checkpoint was trained on?

* What the recording's file says (:func:`metadata_warnings`): its pixel size (ImageJ calibration) and the
  optical setup recorded by ``python -m dstorm3d.simulate``, against the checkpoint's optics.
* What its frames look like (:func:`compare_with_training`): two statistics per frame, computed the same
way on the recording (after infer.py's preprocessing) and on frames simulated from the checkpoint's own
training distribution: the level (the frame's median, background plus camera baseline) and the signal (the
99.9th percentile above the median: the brightest PSF pixels), both as the network sees the frames (camera
counts, or fractions of each frame's range for a network that min–max normalises). A recording whose
typical values lie far outside the training frames' range is localized by a network that never saw such
frames.

infer.py warns on either (it does not refuse: the user may know better) and lists the warnings in
summary.json."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
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
#: The same slack for networks that min–max normalise each frame (statistics in units of that range).
LEVEL_SLACK_MINMAX = 0.02
SIGNAL_FACTOR = 3.0


def _min_max(module: Any) -> bool:
    """Whether the network min–max normalises each frame (its checkpoint's ``normalization.kind``)."""
    return getattr(getattr(module, "normalization", None), "kind", "scale") == "minmax"


def network_view(module: Any, frames: Tensor) -> Tensor:
    """Frames as far as the network can tell them apart: camera counts for a fixed scale normalisation
    (a constant factor changes nothing), each frame mapped to [0, 1] for a per-frame min–max one (a camera
    offset or gain is then invisible to the network and must not be warned about)."""
    return module.normalization(frames.float()) if _min_max(module) else frames


def units(module: Any) -> tuple[str, float]:
    """The unit of :func:`network_view` and the level slack in it."""
    if _min_max(module):
        return "of the frame's min–max range", LEVEL_SLACK_MINMAX
    return "counts", LEVEL_SLACK_COUNTS


def frame_statistics(frames: Tensor | np.ndarray) -> np.ndarray:
    """``(B, 2)`` level and signal of frames ``(B, H, W)``, in the frames' units."""
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
            stats.append(frame_statistics(network_view(module, module.simulate(batch, generator)).cpu()))
    return np.concatenate(stats)


@dataclass(frozen=True)
class RangeCheck:
    """The recording's median statistics beside the training frames' range (1st–99th percentile)."""

    level: float
    signal: float
    level_range: tuple[float, float]
    signal_range: tuple[float, float]
    unit: str = "counts"
    slack: float = LEVEL_SLACK_COUNTS

    def warnings(self) -> list[str]:
        """One line per statistic far outside the training range (empty when the recording is alike)."""
        out = []
        lo, hi = self.level_range
        margin = LEVEL_MARGIN * (hi - lo) + self.slack
        if not lo - margin <= self.level <= hi + margin:
            out.append(
                f"the recording's background level (median {self.level:.3g} {self.unit} after preprocessing) "
                f"is far outside the checkpoint's training frames ({lo:.3g}–{hi:.3g}): check the "
                "recording's camera (camera=<name>, configs/camera/), or train for this camera and background"
            )
        lo, hi = self.signal_range
        if not lo / SIGNAL_FACTOR <= self.signal <= hi * SIGNAL_FACTOR:
            out.append(
                f"the recording's brightest PSF pixels ({self.signal:.3g} {self.unit} above the background, "
                f"the {SIGNAL_PERCENTILE:g}th percentile) are far outside the checkpoint's training frames "
                f"({lo:.3g}–{hi:.3g}): check the recording's camera (camera=<name>), or train for these "
                "photon counts"
            )
        return out


def compare_with_training(
    recording: np.ndarray, training: np.ndarray, unit: str = "counts", slack: float = LEVEL_SLACK_COUNTS
) -> RangeCheck:
    """Recording statistics ``(n, 2)`` against training statistics ``(m, 2)`` (:func:`frame_statistics`)."""
    level = np.percentile(training[:, 0], [1, 99])
    signal = np.percentile(training[:, 1], [1, 99])
    median = np.median(recording, axis=0)
    return RangeCheck(
        float(median[0]),
        float(median[1]),
        (float(level[0]), float(level[1])),
        (float(signal[0]), float(signal[1])),
        unit=unit,
        slack=slack,
    )


#: Relative difference in pixel size, wavelength or NA above which the recording's optics differ.
OPTICS_TOLERANCE = 0.01


def metadata_warnings(module: Any, files: Sequence[Path], frame_shape: tuple[int, int]) -> list[str]:
    """Warnings where the recording's own metadata (first file) contradicts the checkpoint's optics, or its
    frames are smaller than the training frames."""
    from dstorm3d.utils.tiff import read_tiff_calibration, read_tiff_info

    setup = module.optical_setup
    out = []
    trained = module.hparams.simulation.get("frame_shape")
    if trained and (frame_shape[0] < trained[0] or frame_shape[1] < trained[1]):
        out.append(
            f"frames of {frame_shape[0]}×{frame_shape[1]} px are smaller than the checkpoint's training "
            f"frames ({trained[0]}×{trained[1]} px): emitters near the edges lose more of their PSF than in "
            "training and are found less often"
        )
    if not files:
        return out
    try:
        calibration = read_tiff_calibration(files[0])
        info = read_tiff_info(files[0])
    except Exception:  # noqa: BLE001 - metadata is optional: unreadable metadata is no metadata
        return out
    if calibration.unit in ("micron", "µm", "um") and calibration.pixel_size > 0:
        pixel = calibration.pixel_size
        if abs(pixel - setup.pixel_size_um) > OPTICS_TOLERANCE * setup.pixel_size_um:
            out.append(
                f"the recording's pixel size is {pixel * 1e3:.1f} nm (its TIFF calibration) but the "
                f"checkpoint was trained for {setup.pixel_size_um * 1e3:.1f} nm: positions and PSF shapes "
                "will not match; use a checkpoint trained for this microscope"
            )
    recorded = info.get("optical_setup") if isinstance(info, dict) else None
    if isinstance(recorded, dict):
        for key, name in (("wavelength_um", "wavelength"), ("na", "NA"), ("nfp_um", "focal plane")):
            theirs, ours = recorded.get(key), getattr(setup, key, None)
            if (
                isinstance(theirs, (int, float))
                and ours
                and abs(theirs - ours) > OPTICS_TOLERANCE * abs(ours)
            ):
                out.append(
                    f"the recording was made with {name} {theirs:g} (its metadata) but the checkpoint "
                    f"with {ours:g}: use a checkpoint trained for these optics"
                )
    return out


def recording_statistics(module: Any, dataset: Any, frames: int = 16) -> np.ndarray:
    """:func:`frame_statistics` of up to ``frames`` frames spread evenly over a recording data set (each
    item ``{"frames": (H, W)}`` after preprocessing), as the network sees them (:func:`network_view`)."""
    picks = np.unique(np.linspace(0, len(dataset) - 1, min(frames, len(dataset))).round().astype(int))
    stack = torch.stack([dataset[int(i)]["frames"] for i in picks])
    return frame_statistics(network_view(module, stack))
