"""Gaussian-mixture loss of the offsets head (the DECODE likelihood, Speiser et al., Nat. Methods 2021).

Every camera pixel ``k`` of a frame is one mixture component: detection probability ``p_k = σ(logit_k)``,
mean ``μ_k = (col_k + ½ + x_offset_k, row_k + ½ + y_offset_k, z_k, photons_k)`` and diagonal standard
deviations ``σ_k`` (the head's four ``*_sigma`` maps), in the head's units: camera pixels for x and y,
``[0, 1]`` of the axial range for z, ``photons / photon_scale`` for photons. Per frame

* count: ``−log N(n | Σp, Σp(1−p))``, the Gaussian approximation of the Poisson-binomial law of the number
  of detections, with ``n`` the number of labelled emitters (variance floored, ``count_variance_floor``,
  so that a confident output cannot drive the loss to −∞);
* localization: for each labelled emitter ``e`` with ``u_e = (x/Δx, y/Δx, (z − z_min)/(z_max − z_min),
  photons/photon_scale)``: ``−log Σ_k (p_k/Σp) N(u_e | μ_k, diag σ_k²)``, averaged over all labelled
  emitters of the batch (frames without emitters contribute only the count term). Emitters with unknown
  (NaN) photons are scored on x, y, z only.

``loss = count_weight · mean_frames(count) + localization_weight · localization``. Everything is in log
space (log-sigmoid, logsumexp) in float32, vectorised over frames, emitters (padded) and pixels.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dstorm3d.emitters import Emitters

_LOG_2PI = math.log(2.0 * math.pi)


def normalised_targets(
    emitters: Emitters, pixel_size_um: float, z_range_um: tuple[float, float], photon_scale: float
) -> Tensor:
    """``(B, M, 4)`` emitter coordinates in the head's units: x, y in camera pixels from the frame's corner,
    z in ``[0, 1]`` of the axial range, photons / ``photon_scale``."""
    z_min, z_max = z_range_um
    x, y, z = emitters.xyz.float().unbind(dim=-1)
    return torch.stack(
        [
            x / pixel_size_um,
            y / pixel_size_um,
            (z - z_min) / (z_max - z_min),
            emitters.photons.float() / photon_scale,
        ],
        dim=-1,
    )


def mixture_components(out: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """``(mean, sigma)``, each ``(B, H·W, 4)``, of the per-pixel Gaussians in the head's units."""
    x_offset = out["x_offset"].float()
    _, height, width = x_offset.shape
    rows = torch.arange(height, device=x_offset.device, dtype=torch.float32).view(1, height, 1) + 0.5
    cols = torch.arange(width, device=x_offset.device, dtype=torch.float32).view(1, 1, width) + 0.5
    mean = torch.stack(
        [cols + x_offset, rows + out["y_offset"].float(), out["z"].float(), out["photons"].float()], dim=-1
    )
    sigma = torch.stack([out[k].float() for k in ("x_sigma", "y_sigma", "z_sigma", "photons_sigma")], dim=-1)
    return mean.flatten(1, 2), sigma.flatten(1, 2)


class GaussianMixtureLoss(nn.Module):
    """Count + Gaussian-mixture localization likelihood of the offsets head (see the module docstring).

    ``forward(out, target) -> {"loss", "count", "localization"}``: ``out`` is :class:`OffsetsHead`'s dict of
    ``(B, H, W)`` maps, ``target`` the frames' :class:`Emitters` (µm, photons); scalars.
    """

    def __init__(
        self,
        pixel_size_um: float,
        z_range_um: tuple[float, float],
        photon_scale: float,
        count_weight: float = 1.0,
        localization_weight: float = 1.0,
        count_variance_floor: float = 1e-2,
    ) -> None:
        super().__init__()
        self.pixel_size_um = float(pixel_size_um)
        self.z_range_um = (float(z_range_um[0]), float(z_range_um[1]))
        self.photon_scale = float(photon_scale)
        self.count_weight = float(count_weight)
        self.localization_weight = float(localization_weight)
        self.count_variance_floor = float(count_variance_floor)

    def forward(self, out: dict[str, Tensor], target: Emitters) -> dict[str, Tensor]:
        logit = out["logit"].float()
        if logit.ndim != 3:
            raise ValueError(f"out['logit'] must be (B, H, W), got {tuple(logit.shape)}")
        if target.batch_size != logit.shape[0]:
            raise ValueError(f"output has {logit.shape[0]} frames, the target {target.batch_size}")
        target = target.to(device=logit.device)
        log_p = F.logsigmoid(logit).flatten(1)  # (B, K)
        p = log_p.exp()

        # count: Gaussian approximation of the Poisson-binomial number of detections
        n_true = target.counts(labelled_only=True).float()  # (B,)
        mean_count = p.sum(dim=1)
        var_count = (p * (1.0 - p)).sum(dim=1).clamp_min(self.count_variance_floor)
        count = 0.5 * (_LOG_2PI + var_count.log() + (n_true - mean_count).square() / var_count)

        # localization: mixture over the frame's pixels, weights p_k / Σp
        mean, sigma = mixture_components(out)  # (B, K, 4)
        log_weight = log_p - torch.logsumexp(log_p, dim=1, keepdim=True)  # (B, K)
        goal = normalised_targets(target, self.pixel_size_um, self.z_range_um, self.photon_scale)  # (B, M, 4)
        labelled = target.labelled  # (B, M)
        used = torch.isfinite(goal) & labelled.unsqueeze(-1)  # (B, M, 4)
        goal = torch.where(used, goal, torch.zeros_like(goal))
        log_density = log_weight.unsqueeze(1)  # (B, 1, K) → (B, M, K)
        for d in range(4):
            z_score = (goal[:, :, d, None] - mean[:, None, :, d]) / sigma[:, None, :, d]
            term = -0.5 * (z_score.square() + _LOG_2PI) - sigma[:, None, :, d].log()
            log_density = log_density + term * used[:, :, d, None]
        nll = -torch.logsumexp(log_density, dim=2) * labelled  # (B, M)
        localization = nll.sum() / labelled.sum().clamp_min(1)

        count = count.mean()
        loss = self.count_weight * count + self.localization_weight * localization
        return {"loss": loss, "count": count, "localization": localization}
