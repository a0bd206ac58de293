"""The paper's multi-scale feature extractor (dilated residual conv blocks at camera resolution)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from dstorm3d.models.blocks import ConvBlock


class Trunk(nn.Module):
    """Input BatchNorm, then ``K = len(dilations)`` :class:`ConvBlock` s at camera resolution.

    Block 1 maps the normalised image (1 channel) to ``channels``; every later block ``k`` takes
    ``cat([features, image])`` (``channels + 1``) and adds its output to ``features`` (residual).
    Paper: ``channels = 64``, dilations ``(1, 1, 2, 4, 8, 16)``; PSF learning: nine blocks split as six
    here with dilation 1 everywhere and three in the head.

    ``image`` is the BatchNorm-normalised input, not the raw frame: that is what the authors' network
    concatenates (with the raw frame their trained weights do not reproduce their published
    localizations of the mito frames; with the normalised one they do, to 0.1 of 800).

    Input ``(B, 1, H, W)`` frames; output ``(B, channels + 1, H, W)`` = ``cat([features, image])``.
    """

    def __init__(self, channels: int = 64, dilations: Sequence[int] = (1, 1, 2, 4, 8, 16)) -> None:
        super().__init__()
        dilations = tuple(int(d) for d in dilations)
        if not dilations:
            raise ValueError("the trunk needs at least one block (dilations is empty)")
        self.channels = int(channels)
        self.dilations = dilations
        self.input_norm = nn.BatchNorm2d(1)
        self.blocks = nn.ModuleList(
            [ConvBlock(1, self.channels, dilations[0])]
            + [ConvBlock(self.channels + 1, self.channels, d) for d in dilations[1:]]
        )

    @property
    def out_channels(self) -> int:
        """Channels of the output: features plus the concatenated image."""
        return self.channels + 1

    def forward(self, frames: Tensor) -> Tensor:
        normalised = self.input_norm(frames)
        image = normalised  # the image concatenated to every block's input (authors: the normalised one)
        features = self.blocks[0](normalised)
        for block in self.blocks[1:]:
            features = block(torch.cat([features, image], dim=1)) + features
        return torch.cat([features, image], dim=1)
