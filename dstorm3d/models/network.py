"""The localization network (trunk + head) and a builder from plain hyperparameters."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from dstorm3d.models.heads import build_head
from dstorm3d.models.trunk import Trunk, UNetTrunk


class LocalizationNet(nn.Module):
    """``head(trunk(frames))``.

    Input: normalised frames ``(B, 1, H, W)`` (or ``(B, H, W)``, given a channel axis here). Output: the
    head's, i.e. a ``(B, D, f·H, f·W)`` volume (:class:`~dstorm3d.models.heads.VolumeHead`) or a dict of
    ``(B, H, W)`` maps (:class:`~dstorm3d.models.heads.OffsetsHead`).
    """

    def __init__(self, trunk: Trunk, head: nn.Module) -> None:
        super().__init__()
        self.trunk = trunk
        self.head = head

    def receptive_radius_px(self) -> int:
        """How far (camera pixels) an output location sees into the input, rounded up: the context a tile
        needs around its core for tiled inference to equal whole-frame inference."""
        if hasattr(self.trunk, "receptive_radius_px"):
            radius = float(self.trunk.receptive_radius_px())
        else:
            radius = float(sum(self.trunk.dilations))  # 3×3 convs: dilation d reaches d pixels
        return int(math.ceil(radius + self._head_radius()))

    def head_receptive_radius_px(self) -> int:
        """How far (camera pixels) the head alone sees into the trunk's features, rounded up: the context a
        tile of features needs for the head's output on its core to equal the whole frame's."""
        return int(math.ceil(self._head_radius()))

    def _head_radius(self) -> float:
        from dstorm3d.models.heads import OffsetsHead, VolumeHead

        radius = 0.0
        if isinstance(self.head, VolumeHead):
            factor = 1
            for _ in self.head.upsample_blocks:
                factor *= 2
                radius += 1.0 / factor + 1.0 / factor  # nearest upsampling + the block's conv
            radius += (1 + len(self.head.residual_blocks)) / factor
        elif isinstance(self.head, OffsetsHead):
            radius += len(self.head.blocks)
        return radius

    def forward(self, frames: Tensor) -> Tensor | dict[str, Tensor]:
        if frames.ndim == 3:
            frames = frames.unsqueeze(1)
        if frames.ndim != 4 or frames.shape[1] != 1:
            raise ValueError(f"frames must have shape (B, 1, H, W) or (B, H, W), got {tuple(frames.shape)}")
        return self.head(self.trunk(frames))


def build_localization_net(
    channels: int = 64,
    dilations: Sequence[int] = (1, 1, 2, 4, 8, 16),
    head: str = "volume",
    depth_slices: int = 121,
    upsampling: int = 2,
    output_scale: float = 800.0,
    activation: str = "hardtanh",
    trunk: str = "paper",
    levels: int = 3,
    **head_kwargs: Any,
) -> LocalizationNet:
    """Build a :class:`LocalizationNet` from plain data (numbers, strings, lists), e.g. checkpoint
    hyperparameters. The defaults are the paper's STORM network (612,703 parameters).

    ``trunk``: ``"paper"`` (dilated blocks, ``dilations``) or ``"unet"`` (:class:`UNetTrunk` with ``levels``).
    ``depth_slices``, ``upsampling``, ``output_scale`` and ``activation`` apply to ``head="volume"`` and
    are ignored for ``head="offsets"``; ``head_kwargs`` go to the head's constructor (e.g.
    ``residual_blocks`` or ``offset_range``).
    """
    if trunk == "paper":
        features: nn.Module = Trunk(channels=int(channels), dilations=[int(d) for d in dilations])
    elif trunk == "unet":
        features = UNetTrunk(channels=int(channels), levels=int(levels))
    else:
        raise ValueError(f"model.network.trunk must be 'paper' or 'unet', got {trunk!r}")
    kwargs: dict[str, Any] = {"in_channels": features.out_channels, "channels": int(channels)}
    if head == "volume":
        kwargs |= {
            "depth_slices": int(depth_slices),
            "upsampling": int(upsampling),
            "output_scale": float(output_scale),
            "activation": str(activation),
        }
    return LocalizationNet(features, build_head(head, **(kwargs | dict(head_kwargs))))
