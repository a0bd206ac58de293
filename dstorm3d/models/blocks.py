"""Small building blocks of the localization networks: the paper's conv block and the output clamp."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

OUTPUT_ACTIVATIONS = ("hardtanh", "clamp_inward", "clamp_st", "clamp_leaky", "softplus")
"""Names accepted by :class:`ScaledClamp` (see there)."""


class ConvBlock(nn.Module):
    """3×3 conv (dilation ``d``, padding ``d``) → LeakyReLU(0.2) → BatchNorm2d, in the paper's order.

    ``(B, in_channels, H, W) → (B, out_channels, H, W)``. The conv keeps its bias (redundant before the
    BatchNorm's shift, but part of the authors' weights and of the paper's parameter count).
    """

    def __init__(
        self, in_channels: int, out_channels: int, dilation: int = 1, negative_slope: float = 0.2
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=dilation, dilation=dilation)
        self.act = nn.LeakyReLU(negative_slope)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.act(self.conv(x)))


class _UnitClampFunction(torch.autograd.Function):
    """``clamp(a, 0, 1)`` in the forward pass; the backward pass multiplies the incoming gradient by 1
    inside ``(0, 1)`` and by ``outside_slope`` elsewhere (0: Hardtanh, 1: straight-through)."""

    @staticmethod
    def forward(ctx: Any, a: Tensor, outside_slope: float) -> Tensor:
        inside = (a > 0) & (a < 1)
        ctx.save_for_backward(inside)
        ctx.outside_slope = outside_slope
        return a.clamp(0.0, 1.0)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor, None]:
        (inside,) = ctx.saved_tensors
        slope = ctx.outside_slope
        if slope == 1.0:
            return grad_output, None
        return grad_output * (inside.to(grad_output.dtype) * (1.0 - slope) + slope), None


class _InwardClampFunction(torch.autograd.Function):
    """``clamp(a, 0, 1)`` whose gradient outside ``[0, 1]`` passes only when a descent step moves ``a``
    back towards the range (below 0: a negative incoming gradient; above 1: a positive one)."""

    @staticmethod
    def forward(ctx: Any, a: Tensor) -> Tensor:
        ctx.save_for_backward(a)
        return a.clamp(0.0, 1.0)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> Tensor:
        (a,) = ctx.saved_tensors
        blocked = ((a < 0) & (grad_output > 0)) | ((a > 1) & (grad_output < 0))
        return grad_output.masked_fill(blocked, 0.0)


def unit_clamp(
    a: Tensor, activation: str = "hardtanh", leaky_slope: float = 0.1, softplus_beta: float = 10.0
) -> Tensor:
    """Map a pre-activation ``a`` to ``[0, 1]``; the forward value of every mode except ``softplus`` is
    exactly ``clamp(a, 0, 1)``, and the modes differ only in their gradient outside ``(0, 1)``:

    * ``hardtanh``: zero (the paper's ``Hardtanh``; a voxel pushed below 0 stops learning, and once every
      voxel is there the whole output is dead: the all-zero plateau of the original);
    * ``clamp_inward``: passes only gradients whose descent step points back into ``[0, 1]``: a voxel
      below 0 that should light up still learns, but nothing drifts further out (no dead start, no drift);
    * ``clamp_st``: one (straight-through: the gradient passes as if there were no clamp);
    * ``clamp_leaky``: ``leaky_slope``;
    * ``softplus``: smooth ``min(softplus(β·a)/β, 1)``, β = ``softplus_beta`` (forward differs from the
      clamp by at most ``log 2/β`` near 0; the gradient ``sigmoid(β·a)`` decays below 0 instead of
      vanishing).
    """
    if activation == "hardtanh":
        return F.hardtanh(a, 0.0, 1.0)
    if activation == "clamp_inward":
        return _InwardClampFunction.apply(a)
    if activation == "clamp_st":
        return _UnitClampFunction.apply(a, 1.0)
    if activation == "clamp_leaky":
        return _UnitClampFunction.apply(a, float(leaky_slope))
    if activation == "softplus":
        return F.softplus(a, beta=softplus_beta).clamp(max=1.0)
    raise ValueError(f"unknown output activation {activation!r}; expected one of {OUTPUT_ACTIVATIONS}")


class ScaledClamp(nn.Module):
    """``out = scale · act(a)`` with ``act`` one of :data:`OUTPUT_ACTIVATIONS` (see :func:`unit_clamp`).

    With ``activation="hardtanh"`` this equals the paper's ``Hardtanh(0, scale)`` applied to ``scale · a``.
    The gain is a fixed constant, not a parameter, so the layer that produces ``a`` works at O(1): Adam's
    step is invariant to the gradient's scale (≈ lr per step per weight), so a conv that had to produce
    values of ~800 from O(1) features itself would need ~10⁴ steps just to grow its weights.
    """

    def __init__(self, scale: float, activation: str = "hardtanh") -> None:
        super().__init__()
        if activation not in OUTPUT_ACTIVATIONS:
            raise ValueError(
                f"unknown output activation {activation!r}; expected one of {OUTPUT_ACTIVATIONS}"
            )
        if scale <= 0:
            raise ValueError(f"output scale must be positive, got {scale}")
        self.scale = float(scale)
        self.activation = activation

    def forward(self, a: Tensor) -> Tensor:
        return self.scale * unit_clamp(a, self.activation)

    def extra_repr(self) -> str:
        return f"scale={self.scale}, activation={self.activation!r}"
