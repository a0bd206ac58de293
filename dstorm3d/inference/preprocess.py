"""Camera preprocessing for inference: recorded camera counts → photons, configurable and recorded.

The network's own input normalisation (e.g. counts / 250) is *not* here: it is stored in the checkpoint
(:mod:`dstorm3d.normalization`) and applied by the model. This module only undoes the camera, so that
frames from a camera other than the paper's (baseline, ADC gain, EM gain) reach the model in the units it
was trained on: photons, which are counts for the paper's readout camera (reference.md §4).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, TypeVar

import numpy as np
import torch
from torch import Tensor

from dstorm3d.errors import UserInputError

Frames = TypeVar("Frames", np.ndarray, Tensor)


@dataclass(frozen=True)
class Preprocessing:
    """Camera counts → photons for frames ``(H, W)`` or ``(B, H, W)``.

    Order of operations (each frame on its own):

    1. subtract ``baseline`` (counts);
    2. if ``subtract_minimum``: subtract the frame's own minimum (the paper's preprocessing of the mito
       frames; it makes step 1 irrelevant, since any constant offset cancels);
    3. divide by ``adu_per_photon · em_gain`` (counts → photons);
    4. if ``clip_negative``: set values below 0 to 0 (read noise around the baseline).

    Attributes:
        baseline: camera offset in counts (ADU), subtracted first.
        adu_per_photon: counts per detected photon at EM gain 1, i.e. QE / (e⁻ per ADU) for the EMCCD of
            :class:`dstorm3d.simulation.camera.EMCCD`; 1 for the paper's readout camera.
        em_gain: EM gain (≥ 1; 1 for sCMOS and readout cameras).
        subtract_minimum: subtract each frame's minimum after the baseline.
        clip_negative: clip negative photons to 0 at the end.

    The defaults change nothing except clipping negatives: the shipped mito frames are already
    minimum-subtracted counts of the paper's camera.
    """

    baseline: float = 0.0
    adu_per_photon: float = 1.0
    em_gain: float = 1.0
    subtract_minimum: bool = False
    clip_negative: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.baseline, str):
            raise UserInputError(
                f"preprocessing.baseline must be a number of counts, got {self.baseline!r} "
                "(for a per-frame estimate use subtract_minimum=true)"
            )
        for name in ("baseline", "adu_per_photon", "em_gain"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise UserInputError(f"preprocessing.{name} must be a finite number, got {value!r}")
            object.__setattr__(self, name, float(value))
        if self.adu_per_photon <= 0:
            raise UserInputError(f"preprocessing.adu_per_photon must be > 0, got {self.adu_per_photon}")
        if self.em_gain < 1:
            raise UserInputError(f"preprocessing.em_gain must be ≥ 1, got {self.em_gain}")
        for name in ("subtract_minimum", "clip_negative"):
            if not isinstance(getattr(self, name), bool):
                raise UserInputError(
                    f"preprocessing.{name} must be true or false, got {getattr(self, name)!r}"
                )

    @property
    def counts_per_photon(self) -> float:
        """Total conversion factor ``adu_per_photon · em_gain`` (counts per photon)."""
        return self.adu_per_photon * self.em_gain

    def __call__(self, frames: Frames) -> Frames:
        """Frames ``(H, W)`` or ``(B, H, W)`` in counts → same shape in photons.

        Returns the input's kind (numpy array or tensor, same device); integer input becomes float32,
        floating input keeps its dtype. The input is never modified.
        """
        if frames.ndim not in (2, 3):
            raise ValueError(f"frames must be (H, W) or (B, H, W), got shape {tuple(frames.shape)}")
        if isinstance(frames, Tensor):
            photons = frames if frames.is_floating_point() else frames.to(torch.float32)
            photons = photons - self.baseline
            if self.subtract_minimum:
                photons = photons - photons.amin(dim=(-2, -1), keepdim=True)
            photons = photons / self.counts_per_photon
            return photons.clamp_min(0.0) if self.clip_negative else photons
        frames = np.asarray(frames)
        dtype = frames.dtype if np.issubdtype(frames.dtype, np.floating) else np.dtype(np.float32)
        photons = frames.astype(dtype) - dtype.type(self.baseline)
        if self.subtract_minimum:
            photons -= photons.min(axis=(-2, -1), keepdims=True)
        photons /= dtype.type(self.counts_per_photon)
        if self.clip_negative:
            np.maximum(photons, dtype.type(0), out=photons)
        return photons

    def to_dict(self) -> dict[str, Any]:
        """Plain data (numbers and booleans), for configs, checkpoints and run records."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> Preprocessing:
        """Inverse of :meth:`to_dict`; missing keys take their defaults, unknown keys are an error."""
        data = dict(data or {})
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise UserInputError(f"unknown preprocessing key(s) {unknown}; known: {', '.join(known)}")
        return cls(**data)
