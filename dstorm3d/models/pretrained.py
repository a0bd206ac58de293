"""Load the DeepSTORM3D authors' trained weights into a :class:`LocalizationNet` with a volume head."""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
from torch import Tensor

from dstorm3d.models.heads import VolumeHead
from dstorm3d.models.network import LocalizationNet


def authors_key_map(net: LocalizationNet) -> dict[str, str]:
    """Authors' module names → ours, for a net with ``K`` trunk blocks, ``U`` upsampling stages and ``R``
    residual blocks (paper: K = 6, U = 2, R = 2):

    ``norm`` → ``trunk.input_norm``; ``layer1..K`` → ``trunk.blocks.0..K-1``; ``deconv1..U`` →
    ``head.upsample_blocks.0..U-1``; ``layer{K+1}`` → ``head.depth_block``; ``layer{K+2..K+1+R}`` →
    ``head.residual_blocks.0..R-1``; ``layer{K+R+2}`` → ``head.output_conv``. Inside a block both use
    ``conv.*`` and ``bn.*``.
    """
    head = net.head
    if not isinstance(head, VolumeHead):
        raise TypeError(f"the authors' weights need a VolumeHead, got {type(head).__name__}")
    n_trunk = len(net.trunk.blocks)
    mapping = {"norm": "trunk.input_norm"}
    mapping |= {f"layer{i + 1}": f"trunk.blocks.{i}" for i in range(n_trunk)}
    mapping |= {f"deconv{i + 1}": f"head.upsample_blocks.{i}" for i in range(len(head.upsample_blocks))}
    mapping[f"layer{n_trunk + 1}"] = "head.depth_block"
    n_res = len(head.residual_blocks)
    mapping |= {f"layer{n_trunk + 2 + i}": f"head.residual_blocks.{i}" for i in range(n_res)}
    mapping[f"layer{n_trunk + n_res + 2}"] = "head.output_conv"
    return mapping


def load_authors_weights(
    net: LocalizationNet, state_dict_or_path: Mapping[str, Tensor] | str | os.PathLike
) -> LocalizationNet:
    """Copy the authors' state_dict into ``net`` (in place; returns ``net``).

    The output 1×1 conv's weight and bias are divided by ``s = net.head.output_scale`` because our head
    computes ``s · clamp(a, 0, 1)`` where theirs computes ``Hardtanh(0, s)(a_theirs)``; forward outputs then
    equal the authors' (to float32 rounding). Raises ``ValueError`` (one line, naming both sides) when the
    file's D, keys or shapes do not fit the built net.
    """
    if isinstance(state_dict_or_path, (str, os.PathLike)):
        source = torch.load(state_dict_or_path, map_location="cpu", weights_only=True)
    else:
        source = state_dict_or_path
    source = {k.removeprefix("module."): v for k, v in source.items()}  # saved from DataParallel
    mapping = authors_key_map(net)
    head: VolumeHead = net.head  # checked by authors_key_map
    target = net.state_dict()

    output_name = next(a for a, o in mapping.items() if o == "head.output_conv")
    if f"{output_name}.weight" in source:
        file_depth = int(source[f"{output_name}.weight"].shape[0])
        if file_depth != head.depth_slices:
            raise ValueError(
                f"the weights have D = {file_depth} z slices but the built net has D = {head.depth_slices}"
            )

    converted: dict[str, Tensor] = {}
    for key, value in source.items():
        module, _, rest = key.partition(".")
        if module not in mapping:
            raise ValueError(
                f"weights tensor {key!r} {tuple(value.shape)} has no place in the built net "
                f"(its modules: {', '.join(mapping)})"
            )
        ours = f"{mapping[module]}.{rest}"
        if ours not in target:
            raise ValueError(f"weights tensor {key!r} maps to {ours!r}, which the built net lacks")
        if tuple(value.shape) != tuple(target[ours].shape):
            raise ValueError(
                f"weights tensor {key!r} has shape {tuple(value.shape)} but the built net's "
                f"{ours!r} has {tuple(target[ours].shape)}"
            )
        converted[ours] = value
    missing = [k for k in target if k not in converted]
    if missing:
        raise ValueError(f"the weights lack {len(missing)} tensors of the built net, e.g. {missing[:3]}")

    scale = head.output_scale
    for name in ("head.output_conv.weight", "head.output_conv.bias"):
        converted[name] = (converted[name].double() / scale).to(converted[name].dtype)
    net.load_state_dict(converted, strict=True)
    return net
