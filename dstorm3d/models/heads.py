"""Heads that turn the trunk's ``(B, C + 1, H, W)`` features into localization maps.

* :class:`VolumeHead`: the paper's volumetric output, z slices as channels on an upsampled grid.
* :class:`OffsetsHead`: a DECODE-style (Speiser et al., Nat. Methods 2021) per-camera-pixel head with
  a detection logit, continuous sub-pixel x/y, z, photons and their uncertainties.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dstorm3d.models.blocks import ConvBlock, ScaledClamp

OFFSETS_OUTPUTS = (
    "logit",
    "x_offset",
    "y_offset",
    "z",
    "photons",
    "x_sigma",
    "y_sigma",
    "z_sigma",
    "photons_sigma",
)
"""Keys of :class:`OffsetsHead`'s output dict, in the order of the 1×1 conv's output channels."""


class VolumeHead(nn.Module):
    """The paper's volumetric decoder.

    ``upsampling`` stages of ×2 nearest upsampling, each followed by a :class:`ConvBlock`
    (``in_channels → channels`` for the first, ``channels → channels`` after), then a block to
    ``depth_slices`` channels, ``residual_blocks`` residual blocks ``D → D``, a 1×1 conv ``D → D`` giving
    the pre-activation ``a``, and ``out = output_scale · act(a)`` (:class:`ScaledClamp`).

    With ``activation="hardtanh"`` this is the paper's ``Hardtanh(0, s)`` on a 1×1 conv whose weight and
    bias are ``s`` times ours. The gain sits outside the conv because Adam's step is scale-invariant
    (≈ lr per weight per step): a conv that must itself output ~800 from O(1) features needs ~10⁴ steps to
    grow its weights; with ``s`` fixed outside it works at O(1). ``output_init_gain`` scales the 1×1
    conv's default initialisation so that the untrained net predicts ≈ 0 (±~1 % of ``s``) rather than
    ±50 % of ``s`` everywhere, about where the paper's net starts in absolute units.

    Input ``(B, in_channels, H, W)``; output ``(B, D, f·H, f·W)`` with ``f = 2**upsampling``, z slices as
    channels (slice 0 at the bottom of the axial range), values in ``[0, output_scale]`` in the paper's
    units (a unit emitter spike blurred by the target's Gaussian peaks at ``s``). Paper: ``upsampling=2``,
    ``D = 121``, ``s = 800`` (STORM); PSF learning: ``upsampling=0``, ``D = 51``, ``s = 100``.
    """

    def __init__(
        self,
        in_channels: int = 65,
        channels: int = 64,
        depth_slices: int = 121,
        upsampling: int = 2,
        output_scale: float = 800.0,
        activation: str = "hardtanh",
        residual_blocks: int = 2,
        output_init_gain: float = 0.01,
    ) -> None:
        super().__init__()
        if upsampling < 0:
            raise ValueError(f"upsampling must be >= 0, got {upsampling}")
        self.depth_slices = int(depth_slices)
        self.upsampling = int(upsampling)
        self.upsample_blocks = nn.ModuleList(
            ConvBlock(in_channels if i == 0 else channels, channels) for i in range(self.upsampling)
        )
        self.depth_block = ConvBlock(channels if self.upsampling else in_channels, self.depth_slices)
        self.residual_blocks = nn.ModuleList(
            ConvBlock(self.depth_slices, self.depth_slices) for _ in range(residual_blocks)
        )
        self.output_conv = nn.Conv2d(self.depth_slices, self.depth_slices, kernel_size=1)
        with torch.no_grad():
            self.output_conv.weight.mul_(output_init_gain)
            self.output_conv.bias.mul_(output_init_gain)
        self.output_activation = ScaledClamp(output_scale, activation)

    @property
    def output_scale(self) -> float:
        """``s``: the largest output value."""
        return self.output_activation.scale

    @property
    def upsampling_factor(self) -> int:
        """Output pixels per camera pixel along x and y (``2**upsampling``)."""
        return 2**self.upsampling

    def forward(self, features: Tensor) -> Tensor:
        x = features
        for block in self.upsample_blocks:
            x = block(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        x = self.depth_block(x)
        for block in self.residual_blocks:
            x = block(x) + x
        return self.output_activation(self.output_conv(x))


class OffsetsHead(nn.Module):
    """DECODE-style continuous head at camera resolution.

    ``blocks`` :class:`ConvBlock` s (``in_channels → channels``, then ``channels → channels``) and one
    1×1 conv to the nine maps below, returned as a dict of ``(B, H, W)`` tensors (:data:`OFFSETS_OUTPUTS`):

    ===================  ============================================  ==========================
    key                  meaning, unit                                 range (activation)
    ===================  ============================================  ==========================
    ``logit``            detection logit; p = sigmoid(logit) is the    ℝ (none)
                         probability of an emitter in this pixel
    ``x_offset``         x of the emitter relative to the pixel        [−r, r] px, r =
                         centre, camera pixels: x = (col + ½ + off)·Δx  ``offset_range`` (r·tanh)
    ``y_offset``         same along rows                               [−r, r] px (r·tanh)
    ``z``                depth, normalised: z_min + z·(z_max − z_min)  [0, 1] (sigmoid)
    ``photons``          photons / photon scale (set by the loss)      [0, 1] (sigmoid)
    ``x_sigma``,         standard deviations of the four estimates,    [σ_floor, σ_max] in the
    ``y_sigma``,         in the same units as the estimate (px, px,    estimate's unit
    ``z_sigma``,         normalised z, normalised photons)             (σ_floor + (σ_max −
    ``photons_sigma``                                                  σ_floor)·sigmoid)
    ===================  ============================================  ==========================

    Ranges are closed because the activations saturate in float32. The floor keeps the Gaussian-mixture
    likelihood bounded. The logit's bias starts at ``log(p/(1−p))``, ``p = detection_prior``, so the
    untrained head predicts sparse detections (as for focal-loss detectors).
    """

    def __init__(
        self,
        in_channels: int = 65,
        channels: int = 64,
        blocks: int = 2,
        offset_range: float = 1.0,
        sigma_floor: float = 0.01,
        sigma_max: float = 1.0,
        detection_prior: float = 0.01,
    ) -> None:
        super().__init__()
        if not 0.0 < sigma_floor < sigma_max:
            raise ValueError(f"need 0 < sigma_floor < sigma_max, got {sigma_floor} and {sigma_max}")
        if not 0.0 < detection_prior < 1.0:
            raise ValueError(f"detection_prior must lie in (0, 1), got {detection_prior}")
        self.offset_range = float(offset_range)
        self.sigma_floor = float(sigma_floor)
        self.sigma_max = float(sigma_max)
        self.blocks = nn.Sequential(
            *(ConvBlock(in_channels if i == 0 else channels, channels) for i in range(blocks))
        )
        self.output_conv = nn.Conv2d(channels if blocks else in_channels, len(OFFSETS_OUTPUTS), kernel_size=1)
        with torch.no_grad():
            self.output_conv.bias[0] = math.log(detection_prior / (1.0 - detection_prior))

    def forward(self, features: Tensor) -> dict[str, Tensor]:
        raw = self.output_conv(self.blocks(features))
        logit, x_off, y_off, z, photons, *sigmas = raw.unbind(dim=1)
        sigma_span = self.sigma_max - self.sigma_floor
        out = {
            "logit": logit,
            "x_offset": self.offset_range * torch.tanh(x_off),
            "y_offset": self.offset_range * torch.tanh(y_off),
            "z": torch.sigmoid(z),
            "photons": torch.sigmoid(photons),
        }
        for name, value in zip(OFFSETS_OUTPUTS[5:], sigmas):
            out[name] = self.sigma_floor + sigma_span * torch.sigmoid(value)
        return out


HEADS: dict[str, type[nn.Module]] = {"volume": VolumeHead, "offsets": OffsetsHead}


def build_head(kind: str, **kwargs: Any) -> nn.Module:
    """A head by name: ``"volume"`` (:class:`VolumeHead`) or ``"offsets"`` (:class:`OffsetsHead`)."""
    if kind not in HEADS:
        raise ValueError(f"unknown head kind {kind!r}; expected one of {tuple(HEADS)}")
    return HEADS[kind](**kwargs)
