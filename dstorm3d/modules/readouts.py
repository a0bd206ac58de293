"""Readouts: what a head's output means — its training loss and its decoding into localizations.

Both heads share the trunk, the data, the metrics and the checkpoints; a readout is the only part that
differs. ``build_readout`` takes the ``head`` config (plain data) and splits off its ``loss`` and
``postprocess`` sub-configs; the rest goes to the network builder.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from dstorm3d.emitters import Emitters
from dstorm3d.geometry import VolumeGrid
from dstorm3d.losses.offsets import GaussianMixtureLoss
from dstorm3d.losses.volume import KDELoss
from dstorm3d.optics.setup import OpticalSetup
from dstorm3d.postprocess.offsets import decode_offsets
from dstorm3d.postprocess.volume import decode_volume

READOUT_KEYS = ("loss", "postprocess")


def network_kwargs(head: Mapping[str, Any]) -> dict[str, Any]:
    """The head config without its readout sub-configs, as keyword arguments of the network builder."""
    kwargs = {k: v for k, v in head.items() if k not in READOUT_KEYS and k != "kind"}
    return {"head": head["kind"], **kwargs}


class VolumeReadout(nn.Module):
    """The paper's volumetric output: KDE loss against Gaussian targets; local maxima + refinement."""

    def __init__(self, setup: OpticalSetup, head: Mapping[str, Any]) -> None:
        super().__init__()
        loss = dict(head.get("loss") or {})
        post = dict(head.get("postprocess") or {})
        self.output_scale = float(head.get("output_scale", 800.0))
        self.grid = VolumeGrid(
            pixel_size_um=setup.pixel_size_um,
            voxels_per_pixel=2 ** int(head.get("upsampling", 2)),
            z_range_um=setup.z_range_um,
            depth_slices=int(head.get("depth_slices", 121)),
            lateral_offset_voxels=float(post.pop("lateral_offset_voxels", 0.0)),
            z_offset_voxels=float(post.pop("z_offset_voxels", 0.0)),
        )
        self.loss_fn = KDELoss(self.grid, self.output_scale, **loss)
        relative = post.pop("thresholds", [0.01, 0.02, 0.03, 0.05, 0.08, 0.12, 0.2, 0.3])
        self.candidate_thresholds = [float(t) * self.output_scale for t in relative]
        self.default_threshold = float(post.pop("threshold", 0.05)) * self.output_scale
        self.decode_kwargs = post

    def loss(self, output: Tensor, target: Emitters) -> dict[str, Tensor]:
        return self.loss_fn(output, target)

    def decode(self, output: Tensor, threshold: float) -> Emitters:
        return decode_volume(output, self.grid, threshold=threshold, **self.decode_kwargs)


class OffsetsReadout(nn.Module):
    """The continuous per-pixel head: Gaussian-mixture likelihood; detections from probability maps."""

    def __init__(self, setup: OpticalSetup, head: Mapping[str, Any]) -> None:
        super().__init__()
        loss = dict(head.get("loss") or {})
        post = dict(head.get("postprocess") or {})
        self.photon_scale = float(loss.pop("photon_scale", 30000.0))
        self.pixel_size_um, self.z_range_um = setup.pixel_size_um, setup.z_range_um
        self.loss_fn = GaussianMixtureLoss(setup.pixel_size_um, setup.z_range_um, self.photon_scale, **loss)
        self.candidate_thresholds = [
            float(t) for t in post.pop("thresholds", [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
        ]
        self.default_threshold = float(post.pop("threshold", 0.5))
        self.decode_kwargs = post

    def loss(self, output: dict[str, Tensor], target: Emitters) -> dict[str, Tensor]:
        return self.loss_fn(output, target)

    def decode(self, output: dict[str, Tensor], threshold: float) -> Emitters:
        decoded = decode_offsets(
            output,
            self.pixel_size_um,
            self.z_range_um,
            self.photon_scale,
            threshold=threshold,
            **self.decode_kwargs,
        )
        return decoded[0] if isinstance(decoded, tuple) else decoded


READOUTS = {"volume": VolumeReadout, "offsets": OffsetsReadout}


def build_readout(setup: OpticalSetup, head: Mapping[str, Any]) -> VolumeReadout | OffsetsReadout:
    kind = head.get("kind")
    if kind not in READOUTS:
        raise ValueError(f"model.head.kind must be one of {sorted(READOUTS)}, got {kind!r}")
    return READOUTS[kind](setup, head)


def keep_above(predictions: Emitters, threshold: float) -> Emitters:
    """Predictions whose score is at least ``threshold``."""
    assert predictions.score is not None
    return predictions.with_valid(predictions.valid & (predictions.score >= threshold))


def detach_output(output: Tensor | dict[str, Tensor]) -> Tensor | dict[str, Tensor]:
    if isinstance(output, dict):
        return {k: v.detach() for k, v in output.items()}
    return output.detach()
