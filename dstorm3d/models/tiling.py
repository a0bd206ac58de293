"""Localizing frames of any size through overlapping tiles, with results identical to whole frames.

A tile's core is a rectangle of the frame; the network sees the core plus ``margin`` pixels of real
context on every side (clipped at the frame's edges, where whole-frame inference sees the same zero
padding). With ``margin`` at least the network's receptive radius plus the post-processing's reach, the
network output and the decoded localizations inside every core equal those of the whole frame; each
localization is kept by the one tile whose core contains it.

Inside each frame or tile, the head can run on tiles of its own (``head_tile``): the trunk computes its
features (at camera resolution, cheap) on the whole crop, and the head (the paper's volumetric head does
~97 % of the arithmetic, on a 4× finer grid with 121 channels) runs on tiles of those features with only
the head's own, small reach as context. Same results again; on CPUs the smaller activations stay in cache
(benchmarks/inference.py measures the gain).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from dstorm3d.emitters import Emitters

POSTPROCESS_REACH_PX = 2  # local maxima and centroids look ≤ 1 camera pixel away; one more for safety


@dataclass(frozen=True)
class Tile:
    """Core rows/columns ``[r0, r1) × [c0, c1)`` and the input crop ``[ir0, ir1) × [ic0, ic1)``."""

    r0: int
    r1: int
    c0: int
    c1: int
    ir0: int
    ir1: int
    ic0: int
    ic1: int


def tiles(shape: tuple[int, int], tile: int, margin: int, alignment: int = 1) -> Iterator[Tile]:
    """Cores of at most ``tile`` × ``tile`` pixels covering the frame, each with its context crop; crops
    start on multiples of ``alignment`` (a network that pools sees the same grid as on the whole frame)."""
    height, width = shape

    def start(core: int) -> int:
        return max(0, (core - margin) // alignment * alignment)

    for r0 in range(0, height, tile):
        for c0 in range(0, width, tile):
            r1, c1 = min(r0 + tile, height), min(c0 + tile, width)
            yield Tile(
                r0, r1, c0, c1, start(r0), min(height, r1 + margin), start(c0), min(width, c1 + margin)
            )


def required_margin(net: torch.nn.Module) -> int:
    """Context (pixels) a tile needs so that tiling does not change results."""
    return int(net.receptive_radius_px()) + POSTPROCESS_REACH_PX


def required_head_margin(net: torch.nn.Module) -> int:
    """Context (pixels) a tile of trunk features needs so that head tiling does not change results."""
    return int(net.head_receptive_radius_px()) + POSTPROCESS_REACH_PX


def whole(shape: tuple[int, int]) -> Tile:
    """The tile that is the whole frame."""
    return Tile(0, shape[0], 0, shape[1], 0, shape[0], 0, shape[1])


def localize_crop(
    module, crop: Tensor, threshold: float, head_tile: int | None = None
) -> Iterator[tuple[Emitters, Tile]]:
    """Decoded localizations of normalised frames ``crop (B, h, w)``, with the (crop-relative) tile whose
    core they belong to: the whole crop at once, or, with ``head_tile``, the trunk on the whole crop and
    the head on tiles of its features."""
    height, width = crop.shape[-2:]
    net = module.net
    if head_tile is None or (height <= head_tile and width <= head_tile):
        yield module.readout.decode(_float(net(crop)), threshold), whole((height, width))
        return
    features = net.trunk(crop.unsqueeze(1))
    for t in tiles((height, width), head_tile, required_head_margin(net)):
        output = net.head(features[..., t.ir0 : t.ir1, t.ic0 : t.ic1])
        yield module.readout.decode(_float(output), threshold), t


def _float(output: Tensor | dict[str, Tensor]) -> Tensor | dict[str, Tensor]:
    """Post-process in float32 and contiguous memory, whatever precision and memory format the network
    ran in."""
    if isinstance(output, dict):
        return {k: v.float().contiguous() for k, v in output.items()}
    return output.float().contiguous()


def localize_frames(
    module,
    frames: Tensor,
    tile: int | None = None,
    margin: int | None = None,
    threshold: float | None = None,
    head_tile: int | None = None,
) -> Emitters:
    """Localizations ``Emitters`` (µm from each frame's corner) in camera-count frames ``(B, H, W)``.

    ``module`` is a trained :class:`~dstorm3d.modules.localizer.SimulatedLocalizationModule`. Frames are
    normalised whole (so per-frame normalisations do not depend on the tiling), then run through the
    network tile by tile when they are larger than ``tile``, the head on tiles of ``head_tile`` pixels
    when given (:func:`localize_crop`).
    """
    threshold = float(module.threshold) if threshold is None else float(threshold)
    normalised = module.normalization(frames)
    height, width = normalised.shape[-2:]
    if tile is None or (height <= tile and width <= tile):
        outer = [whole((height, width))]
    else:
        margin = required_margin(module.net) if margin is None else int(margin)
        outer = list(tiles((height, width), tile, margin, int(getattr(module.net.trunk, "alignment_px", 1))))
    pixel = module.optical_setup.pixel_size_um
    per_frame: list[list[Tensor]] = [[] for _ in range(frames.shape[0])]
    scores: list[list[Tensor]] = [[] for _ in range(frames.shape[0])]
    photons: list[list[Tensor]] = [[] for _ in range(frames.shape[0])]
    sigmas: list[list[Tensor]] = [[] for _ in range(frames.shape[0])]  # a head's predicted σ, if any
    for t in outer:
        crop = normalised[:, t.ir0 : t.ir1, t.ic0 : t.ic1]
        for found, inner in localize_crop(module, crop, threshold, head_tile):
            if len(outer) == 1 and inner == whole(crop.shape[-2:]):
                return found  # the whole frame in one piece: nothing to stitch
            r0, c0 = t.ir0 + inner.ir0, t.ic0 + inner.ic0  # the decoded crop's origin in the frame
            origin = torch.tensor(
                [c0 * pixel, r0 * pixel, 0.0], dtype=found.xyz.dtype, device=found.xyz.device
            )
            xyz = found.xyz + origin
            col, row = xyz[..., 0] / pixel, xyz[..., 1] / pixel
            inside = (
                found.valid
                & (col >= max(t.c0, t.ic0 + inner.c0))
                & (col < min(t.c1, t.ic0 + inner.c1))
                & (row >= max(t.r0, t.ir0 + inner.r0))
                & (row < min(t.r1, t.ir0 + inner.r1))
            )
            for b in range(frames.shape[0]):
                keep = inside[b]
                per_frame[b].append(xyz[b][keep])
                scores[b].append(found.score[b][keep])
                photons[b].append(found.photons[b][keep])
                if found.sigma is not None:
                    sigmas[b].append(found.sigma[b][keep])
    return Emitters.from_lists(
        [torch.cat(x).cpu() for x in per_frame],
        photons=[torch.cat(x).cpu() for x in photons],
        score=[torch.cat(x).cpu() for x in scores],
        sigma=[torch.cat(x).cpu() for x in sigmas] if any(sigmas) else None,
    ).to(frames.device)
