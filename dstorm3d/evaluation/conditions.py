"""A recording's imaging conditions, estimated from its frames: what to train a localizer on.

Train on the conditions of the data: background level, emitters per µm², photons per emitter and their
depths. :func:`estimate_conditions` localizes a recording's frames with the classical fitter
(:func:`dstorm3d.evaluation.fitting.matching_pursuit`, Poisson maximum likelihood on the given PSF) and
summarises what it found; :meth:`ImagingConditions.simulation_overrides` turns that into the ``simulation``
settings of a training run (the ``emitters`` photons and density, the ``background`` level).

EMCCD frames: the EM register doubles the shot noise's variance (excess-noise factor F² = 2), which a
Poisson likelihood does not expect. With ``excess_noise = 2`` the frames are divided by 2 before fitting
(then Poisson-like: variance = mean) and the fitted photons multiplied back; positions are unaffected.

Units: photons; µm for positions (z above the coverslip); emitters per µm² for densities.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from dstorm3d.emitters import Emitters
from dstorm3d.optics.psf_model import PSFModel


@dataclass(frozen=True)
class ImagingConditions:
    """What the classical fit saw in a recording.

    Attributes:
        frames: number of frames analysed.
        frame_area_um2: area of one frame (µm²).
        background_photons: per-frame background (median pixel, photons) — 5th, 50th, 95th percentiles.
        emitters_per_frame: detections per frame — mean, 95th percentile and maximum.
        photons: detected emitters' photons — 5th, 50th and 95th percentiles, mean and standard deviation.
        z_um: detected emitters' depths (µm above the coverslip) — 2nd and 98th percentiles.
        detections: total number of detections.
    """

    frames: int
    frame_area_um2: float
    background_photons: tuple[float, float, float]
    emitters_per_frame: tuple[float, float, float]
    photons: tuple[float, float, float, float, float]
    z_um: tuple[float, float]
    detections: int

    def simulation_overrides(
        self, density_factor: float = 3.0, photon_margin: float = 0.5, background_margin: float = 0.2
    ) -> dict[str, Any]:
        """``simulation`` settings that cover these conditions with room to spare.

        * density: 0 up to ``density_factor`` × the busiest frame's detections per µm² (the fit misses
          dim and overlapping emitters, and a network that has seen denser frames is not hurt);
        * photons: a Gamma distribution with the detections' mean and variance (method of moments),
          its variance widened by ``(1 + photon_margin)²`` so the dim tail the fit misses is covered;
        * background: a uniform level from ``(1 − background_margin)`` × the 5th to
          ``(1 + background_margin)`` × the 95th percentile of the frames' background.
        """
        busiest = max(self.emitters_per_frame[2], 1.0)
        density_hi = density_factor * busiest / self.frame_area_um2
        mean, std = self.photons[3], self.photons[4]
        std = max(std, 0.25 * mean) * (1.0 + photon_margin)
        shape = (mean / std) ** 2
        bg_lo, _, bg_hi = self.background_photons
        return {
            "emitters": {
                "count_range": None,
                "density_per_um2": [0.0, round(density_hi, 6)],
                "photons": {"kind": "gamma", "shape": round(shape, 4), "scale": round(mean / shape, 3)},
            },
            "background": {
                "kind": "uniform",
                "level": [
                    round((1 - background_margin) * bg_lo, 3),
                    round((1 + background_margin) * bg_hi, 3),
                ],
            },
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()
        }


def fit_recording(
    psf: PSFModel,
    frames_photons: Tensor | np.ndarray,
    max_emitters: int = 10,
    window: int | None = None,
    excess_noise: float = 1.0,
    min_log_likelihood_ratio: float | None = None,
    batch: int = 16,
) -> Emitters:
    """Classical localization of frames ``(B, H, W)`` (photons per pixel) with ``psf``: matching pursuit
    (greedy NCC detection + Poisson maximum-likelihood fit, joint refits), each frame's background fixed
    at its median pixel. Returns :class:`Emitters` ``(B, max_emitters)``, photons in photons."""
    from dstorm3d.evaluation.fitting import DEFAULT_MIN_LOG_LIKELIHOOD_RATIO, matching_pursuit

    if excess_noise < 1:
        raise ValueError(f"excess_noise must be ≥ 1 (2 for an EMCCD), got {excess_noise}")
    data = torch.as_tensor(np.asarray(frames_photons), dtype=torch.float64)
    if data.ndim == 2:
        data = data.unsqueeze(0)
    data = data.clamp_min(0.0) / excess_noise
    pupil = psf.pupil_model(torch.float64)
    height, width = data.shape[-2:]
    if window is None:
        window = min(31, pupil.setup.pupil_grid, height, width) // 2 * 2 + 1
    threshold = (
        DEFAULT_MIN_LOG_LIKELIHOOD_RATIO if min_log_likelihood_ratio is None else min_log_likelihood_ratio
    )
    blur = psf.blur_sigma_px if psf.blur_sigma_px > 0 else None
    results = []
    for start in range(0, data.shape[0], batch):
        chunk = data[start : start + batch]
        background = chunk.flatten(1).median(dim=1).values
        found = matching_pursuit(
            pupil,
            chunk,
            max_emitters,
            window=window,
            min_log_likelihood_ratio=threshold,
            background=background,
            blur_sigma_px=blur,
        )
        results.append(found.pad_to(max_emitters) if found.max_count < max_emitters else found)
    emitters = Emitters.cat(results)
    return Emitters(emitters.xyz, emitters.photons * excess_noise, emitters.valid, score=emitters.score)


def summarise(frames_photons: np.ndarray, found: Emitters, pixel_size_um: float) -> ImagingConditions:
    """:class:`ImagingConditions` of frames ``(B, H, W)`` (photons) and the emitters fitted in them."""
    frames_photons = np.asarray(frames_photons, dtype=np.float64)
    count, height, width = frames_photons.shape
    background = np.median(frames_photons.reshape(count, -1), axis=1)
    valid = found.valid.cpu().numpy()
    per_frame = valid.sum(axis=1)
    photons = found.photons.cpu().numpy()[valid]
    z = found.xyz[..., 2].cpu().numpy()[valid]
    if photons.size == 0:
        raise ValueError("the fit found no emitter in these frames: nothing to estimate conditions from")
    return ImagingConditions(
        frames=int(count),
        frame_area_um2=float(height * width * pixel_size_um**2),
        background_photons=tuple(float(v) for v in np.percentile(background, [5, 50, 95])),
        emitters_per_frame=(
            float(per_frame.mean()),
            float(np.percentile(per_frame, 95)),
            float(per_frame.max()),
        ),
        photons=(
            *(float(v) for v in np.percentile(photons, [5, 50, 95])),
            float(photons.mean()),
            float(photons.std()) if photons.size > 1 else 0.0,
        ),
        z_um=tuple(float(v) for v in np.percentile(z, [2, 98])),
        detections=int(photons.size),
    )


def estimate_conditions(
    psf: PSFModel,
    frames_photons: np.ndarray,
    excess_noise: float = 1.0,
    max_emitters: int = 10,
    min_log_likelihood_ratio: float | None = None,
) -> tuple[ImagingConditions, Emitters]:
    """Fit the frames (:func:`fit_recording`) and summarise them (:func:`summarise`)."""
    found = fit_recording(
        psf,
        frames_photons,
        max_emitters=max_emitters,
        excess_noise=excess_noise,
        min_log_likelihood_ratio=min_log_likelihood_ratio,
    )
    return summarise(frames_photons, found, psf.setup.pixel_size_um), found
