"""Offsets-head output → localizations.

A pixel is a detection when the 3×3 sum of ``p = σ(logit)`` around it is ``≥ threshold`` (the probability
of one emitter spreads over neighbouring pixels) and its own ``p`` is the maximum of its 3×3 neighbourhood;
exact ties between neighbouring maxima keep the first in raster order. Its position is the pixel centre
plus the predicted offsets, ``z = z_min + z·(z_max − z_min)``, photons = ``photons · photon_scale``, and
its score ``min(1, 3×3 sum of p)``.

The predicted standard deviations come in the head's units (pixels, pixels, fraction of the axial range,
fraction of ``photon_scale``) and leave in µm, µm, µm and photons, times the checkpoint's post-hoc
calibration factors ``uncertainty_scale`` (``{"x", "y", "z", "photons"}``, 1 where absent; fitted on
simulated data by :mod:`dstorm3d.evaluation.uncertainty`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import Tensor

from dstorm3d.emitters import Emitters
from dstorm3d.postprocess.volume import pack_detections

_EARLIER_NEIGHBOURS = ((-1, -1), (-1, 0), (-1, 1), (0, -1))
"""3×3 neighbours that precede a pixel in raster order, as (row, column) offsets."""
SIGMA_AXES = ("x", "y", "z", "photons")
"""The estimates whose standard deviations the head predicts, in the order of ``Emitters.sigma``."""
SIGMA_KEYS = ("x_sigma", "y_sigma", "z_sigma", "photons_sigma")


def scale_factors(uncertainty_scale: Mapping[str, float] | None) -> tuple[float, ...]:
    """The calibration factors of :data:`SIGMA_AXES` (1 for an axis ``uncertainty_scale`` leaves out)."""
    scale = dict(uncertainty_scale or {})
    unknown = set(scale) - set(SIGMA_AXES)
    if unknown:
        raise ValueError(f"unknown uncertainty_scale axis {sorted(unknown)}; known: {list(SIGMA_AXES)}")
    factors = tuple(float(scale.get(axis, 1.0)) for axis in SIGMA_AXES)
    if not all(f > 0 for f in factors):
        raise ValueError(f"uncertainty_scale factors must be > 0, got {scale}")
    return factors


def detection_mask(logit: Tensor, threshold: float = 0.5) -> tuple[Tensor, Tensor]:
    """``(detected, local_sum)``, both ``(B, H, W)``: the detection mask and the 3×3 sum of ``p``."""
    p = torch.sigmoid(logit.float()).unsqueeze(1)  # (B, 1, H, W)
    local_sum = F.avg_pool2d(p, 3, stride=1, padding=1, count_include_pad=True) * 9.0
    local_max = F.max_pool2d(p, 3, stride=1, padding=1)
    candidate = ((p == local_max) & (local_sum >= threshold)).squeeze(1)
    # Two candidates within each other's 3×3 window are equal; keep only the first in raster order.
    padded = F.pad(candidate, (1, 1, 1, 1))
    height, width = candidate.shape[-2:]
    earlier = torch.zeros_like(candidate)
    for dr, dc in _EARLIER_NEIGHBOURS:
        earlier |= padded[:, 1 + dr : 1 + dr + height, 1 + dc : 1 + dc + width]
    return candidate & ~earlier, local_sum.squeeze(1)


@torch.no_grad()
def decode_offsets(
    out: dict[str, Tensor],
    pixel_size_um: float,
    z_range_um: tuple[float, float],
    photon_scale: float,
    threshold: float = 0.5,
    return_sigma: bool = False,
    uncertainty_scale: Mapping[str, float] | None = None,
) -> Emitters | tuple[Emitters, Tensor]:
    """Localizations from :class:`~dstorm3d.models.heads.OffsetsHead`'s dict of ``(B, H, W)`` maps.

    Returns :class:`Emitters` (xyz in µm, photons, score in ``[0, 1]``, ``sigma (B, M, 4)``: predicted
    standard deviations of ``(x, y, z, photons)`` in µm, µm, µm and photons, times ``uncertainty_scale``,
    0 at padding), in raster order per frame; with ``return_sigma=True`` also that ``sigma`` alone.
    """
    factors = scale_factors(uncertainty_scale)
    logit = out["logit"]
    detected, local_sum = detection_mask(logit, threshold)
    b, r, c = detected.nonzero(as_tuple=True)
    z_min, z_max = z_range_um

    def at(key: str) -> Tensor:
        return out[key].detach().float()[b, r, c]

    xyz = torch.stack(
        [
            (c.float() + 0.5 + at("x_offset")) * pixel_size_um,
            (r.float() + 0.5 + at("y_offset")) * pixel_size_um,
            z_min + at("z") * (z_max - z_min),
        ],
        dim=-1,
    )
    photons = at("photons") * photon_scale
    score = local_sum[b, r, c].clamp_max(1.0)
    emitters = pack_detections(logit.shape[0], b, xyz, photons, score)
    units = (pixel_size_um, pixel_size_um, z_max - z_min, photon_scale)
    scale = torch.tensor([u * f for u, f in zip(units, factors)], device=xyz.device)
    sigma = torch.stack([at(k) for k in SIGMA_KEYS], dim=-1) * scale
    padded = torch.zeros(emitters.batch_size, emitters.max_count, 4, device=xyz.device)
    padded[emitters.valid] = sigma  # pack_detections keeps the raster order within each frame
    emitters = replace(emitters, sigma=padded)
    return (emitters, padded) if return_sigma else emitters
