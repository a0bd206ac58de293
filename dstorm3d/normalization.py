"""How camera frames become network input; stored in every checkpoint and applied again at inference.

* ``scale``: ``(frame − offset) / divisor`` (the paper's STORM networks: counts / 250).
* ``minmax``: each frame mapped to [0, 1] by its own minimum and maximum (the paper's PSF learning).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from torch import Tensor


@dataclass(frozen=True)
class FrameNormalization:
    """Frames ``(B, H, W)`` in camera counts → network input ``(B, H, W)``."""

    kind: Literal["scale", "minmax"] = "scale"
    offset: float = 0.0
    divisor: float = 250.0

    def __post_init__(self) -> None:
        if self.kind not in ("scale", "minmax"):
            raise ValueError(f"normalization.kind must be 'scale' or 'minmax', got {self.kind!r}")
        if self.kind == "scale" and not self.divisor > 0:
            raise ValueError(f"normalization.divisor must be > 0, got {self.divisor}")

    def __call__(self, frames: Tensor) -> Tensor:
        if self.kind == "scale":
            return (frames - self.offset) / self.divisor
        flat = frames.flatten(-2)
        lo = flat.amin(dim=-1, keepdim=True).unsqueeze(-1)
        hi = flat.amax(dim=-1, keepdim=True).unsqueeze(-1)
        return (frames - lo) / (hi - lo).clamp_min(torch.finfo(frames.dtype).eps)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> FrameNormalization:
        data = dict(data or {})
        unknown = set(data) - {"kind", "offset", "divisor"}
        if unknown:
            raise ValueError(f"unknown normalization key(s) {sorted(unknown)}; known: kind, offset, divisor")
        return cls(**data)
