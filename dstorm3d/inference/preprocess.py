"""Camera preprocessing for inference: a recording's counts → the counts the network was trained on.

One description of a camera serves training and inference (:mod:`dstorm3d.simulation.camera`, the
``configs/camera`` group): the network learns on frames from the checkpoint's training camera. A recording
from that same camera goes in as it is. A recording from another camera (``camera=<name>`` in infer.py)
is brought to photons with *its* camera's expectation inverse (``to_photons``) and then to the counts the
training camera would have recorded for those photons (``expected_counts``). No hand-set baseline or gain.

The network's own input normalisation (e.g. counts / 250) is *not* here: it is stored in the checkpoint
(:mod:`dstorm3d.normalization`) and applied by the model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, TypeVar

import numpy as np
import torch
from torch import Tensor

from dstorm3d.errors import UserInputError
from dstorm3d.simulation.camera import Camera, camera_from_config

Frames = TypeVar("Frames", np.ndarray, Tensor)

#: ``camera`` value meaning: the recording comes from the camera the checkpoint was trained for.
CHECKPOINT_CAMERA = "checkpoint"
#: Settings replaced by the camera description, with what to use instead.
RETIRED_KEYS = {
    "baseline": "the recording's camera: camera=<name> (configs/camera/) or "
    "'camera={kind:readout,baseline:100}'",
    "adu_per_photon": "the recording's camera: 'camera={kind:scmos,offset_adu:100,gain_adu_per_e:2,qe:1}' "
    "or camera=<name> (configs/camera/)",
    "em_gain": "the recording's camera: 'camera={kind:emccd,em_gain:300,...}' or camera=<name>",
}


def recording_camera(config: Mapping[str, Any] | str | None) -> Camera | None:
    """The ``camera`` setting of infer.py: ``None`` for the checkpoint's own camera (``kind: checkpoint``),
    else the camera model it describes. Raises :class:`UserInputError` with a one-line reason."""
    if config is None or config == CHECKPOINT_CAMERA:
        return None
    if not isinstance(config, Mapping):
        raise UserInputError(
            f"camera must be a camera description (configs/camera/) or 'checkpoint', got {config!r}"
        )
    if config.get("kind") == CHECKPOINT_CAMERA:
        extra = sorted(set(config) - {"kind"})
        if extra:
            raise UserInputError(f"camera.kind=checkpoint takes no other keys, got {extra}")
        return None
    try:
        return camera_from_config(dict(config))
    except (ValueError, TypeError) as exc:
        raise UserInputError(f"camera: {exc}") from None


@dataclass(frozen=True)
class Preprocessing:
    """A recording's counts → the training camera's counts, for frames ``(H, W)`` or ``(B, H, W)``.

    Order of operations (each frame on its own):

    1. with a recording ``camera``: counts → photons by its expectation inverse;
    2. if ``subtract_minimum``: subtract the frame's own minimum (the paper's preprocessing of the mito
       frames; any constant offset cancels);
    3. if ``clip_negative``: set values below 0 to 0 (read noise around the baseline) — in photons when
       a ``camera`` is given, else in the recording's counts;
    4. with a recording ``camera`` and a ``target`` (the training camera): photons → the target's mean
       counts.

    Attributes:
        camera: the recording's camera; ``None`` = the training camera itself (steps 1 and 4 skipped).
        target: the camera the network was trained on (from the checkpoint); ``None`` = photons.
        subtract_minimum: subtract each frame's minimum.
        clip_negative: clip negative values to 0.
    """

    camera: Camera | None = None
    target: Camera | None = None
    subtract_minimum: bool = False
    clip_negative: bool = True

    def __post_init__(self) -> None:
        for name in ("subtract_minimum", "clip_negative"):
            if not isinstance(getattr(self, name), bool):
                raise UserInputError(
                    f"preprocessing.{name} must be true or false, got {getattr(self, name)!r}"
                )

    def with_target(self, target: Camera | None) -> Preprocessing:
        """The same steps ending in ``target``'s counts (the checkpoint's training camera)."""
        return Preprocessing(self.camera, target, self.subtract_minimum, self.clip_negative)

    @property
    def identity_camera(self) -> bool:
        """Whether frames stay in the recording's own counts (no camera conversion)."""
        return self.camera is None

    def __call__(self, frames: Frames) -> Frames:
        """Frames ``(H, W)`` or ``(B, H, W)`` → same shape in the training camera's counts.

        Returns the input's kind (numpy array or tensor, same device); integer input becomes float32,
        floating input keeps its dtype. The input is never modified.
        """
        if frames.ndim not in (2, 3):
            raise ValueError(f"frames must be (H, W) or (B, H, W), got shape {tuple(frames.shape)}")
        if isinstance(frames, Tensor):
            return self._convert(frames if frames.is_floating_point() else frames.to(torch.float32))
        frames = np.asarray(frames)
        dtype = frames.dtype if np.issubdtype(frames.dtype, np.floating) else np.dtype(np.float32)
        return self._convert(torch.from_numpy(frames.astype(dtype, copy=True))).numpy()

    def _convert(self, values: Tensor) -> Tensor:
        """The four steps on a floating tensor (a new tensor; the input is not modified)."""
        dtype = values.dtype
        if self.camera is not None:
            values = self.camera.to_photons(values).to(dtype)
        if self.subtract_minimum:
            values = values - values.amin(dim=(-2, -1), keepdim=True)
        if self.clip_negative:
            values = values.clamp_min(0.0)
        if self.camera is not None and self.target is not None:
            values = self.target.expected_counts(values).to(dtype)
        return values

    def to_dict(self) -> dict[str, Any]:
        """Plain data, for run records: the two cameras as their configs."""
        return {
            "camera": None if self.camera is None else self.camera.to_dict(),
            "target": None if self.target is None else self.target.to_dict(),
            "subtract_minimum": self.subtract_minimum,
            "clip_negative": self.clip_negative,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> Preprocessing:
        """From the ``preprocessing`` settings (``subtract_minimum``, ``clip_negative``) plus optional
        ``camera`` / ``target`` camera configs; the retired hand-set keys are an error naming the camera."""
        data = dict(data or {})
        for key, instead in RETIRED_KEYS.items():
            if key in data:
                raise UserInputError(f"preprocessing.{key} is gone: describe {instead}")
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise UserInputError(f"unknown preprocessing key(s) {unknown}; known: {', '.join(known)}")
        camera = recording_camera(data.pop("camera", None))
        target_config = data.pop("target", None)
        target = None if target_config is None else camera_from_config(target_config)
        return cls(camera=camera, target=target, **data)
