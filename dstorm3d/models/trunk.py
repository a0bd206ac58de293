"""The paper's multi-scale feature extractor (dilated residual conv blocks at camera resolution)."""

from __future__ import annotations

from collections.abc import Sequence

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


class UNetTrunk(nn.Module):
    """A small U-Net feature extractor (DECODE-style), an alternative to the paper's dilated trunk.

    Input BatchNorm; ``levels`` encoder stages of two :class:`ConvBlock` s, each stage after the first
    at half the resolution of the previous one with twice the channels (``channels·2^level``); a
    decoder that upsamples (nearest, back to the skip's exact size, so any frame size works),
    concatenates the skip and applies two blocks. Multi-scale context comes from downsampling rather
    than dilation, which suits large PSFs (far-defocused Tetrapods) on small frames.

    Input ``(B, 1, H, W)``; output ``(B, channels + 1, H, W)`` = ``cat([features, image])`` like
    :class:`Trunk`.
    """

    def __init__(self, channels: int = 32, levels: int = 3) -> None:
        super().__init__()
        if levels < 1:
            raise ValueError(f"a U-Net trunk needs at least one level, got {levels}")
        self.channels = int(channels)
        self.dilations: tuple[int, ...] = ()
        self.input_norm = nn.BatchNorm2d(1)
        widths = [self.channels * 2**i for i in range(levels)]
        self.encoders = nn.ModuleList()
        previous = 1
        for width in widths:
            self.encoders.append(nn.Sequential(ConvBlock(previous, width), ConvBlock(width, width)))
            previous = width
        self.decoders = nn.ModuleList(
            nn.Sequential(ConvBlock(widths[i + 1] + widths[i], widths[i]), ConvBlock(widths[i], widths[i]))
            for i in reversed(range(levels - 1))
        )

    @property
    def out_channels(self) -> int:
        return self.channels + 1

    @property
    def alignment_px(self) -> int:
        """Shifts of the input by multiples of this shift the output alike (pooling grid)."""
        return 2 ** (len(self.encoders) - 1)

    def receptive_radius_px(self) -> int:
        """Reach of an output pixel into the input (camera pixels), an upper bound: two 3×3 convs per
        stage (2·2^i), pooling into and upsampling out of stage i (2^i each)."""
        levels = len(self.encoders)
        return int(sum(2 * 2**i + 2 * 2**i for i in range(levels)))

    def forward(self, frames: Tensor) -> Tensor:
        image = self.input_norm(frames)
        skips = []
        x = image
        for i, encoder in enumerate(self.encoders):
            if i:
                x = nn.functional.max_pool2d(x, 2, ceil_mode=True)
            x = encoder(x)
            skips.append(x)
        for decoder, skip in zip(self.decoders, reversed(skips[:-1])):
            x = nn.functional.interpolate(x, size=skip.shape[-2:], mode="nearest")
            x = decoder(torch.cat([x, skip], dim=1))
        return torch.cat([x, image], dim=1)
