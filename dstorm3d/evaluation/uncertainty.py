"""Are an offsets head's predicted uncertainties calibrated? Measure it, and fix it post hoc.

The offsets head predicts a standard deviation for each of x, y, z and photons
(:class:`~dstorm3d.models.heads.OffsetsHead`). They are calibrated when the z-scores
``(estimate − truth) / σ`` of matched localizations have a standard deviation of 1 on every axis.

* :func:`simulated_set` draws fixed-seed frames from a checkpoint's own training distribution (its
  simulation config, optics, phase mask and camera: :class:`~dstorm3d.simulation.simulator.EmitterDataset`
  rendered by the module's :class:`~dstorm3d.simulation.simulator.FrameSimulator`, as in training), on
  seeds that training never used: :data:`VALIDATION_SEED` for fitting, :data:`TEST_SEED` for checking.
* :func:`z_scores` localizes them and matches every frame as the metrics do
  (:func:`~dstorm3d.metrics.matching.match_frame`, 3D distance below the checkpoint's matching radius,
  dim unlabelled emitters ignored); z-scores of the matched pairs, per axis.
* :func:`fit_uncertainty_scale`: one factor per axis, the RMS of the validation z-scores (the
  maximum-likelihood common scale of ``N(0, (s·σ)²)`` errors), multiplied into the factors already in use.
* :func:`calibrated_checkpoint` writes a copy of a checkpoint with the factors in
  ``hyper_parameters.head.postprocess.uncertainty_scale`` (``{"x", "y", "z", "photons"}``, plain floats;
  the weights untouched) and the measurement under the checkpoint key :data:`RECORD_KEY`. Decoding
  (:func:`~dstorm3d.postprocess.offsets.decode_offsets`) applies them wherever the checkpoint localizes:
  ``infer.py``'s ``uncertainty_*`` columns, ``evaluate.py``, the studies.

``python -m dstorm3d.uncertainty ckpt=<file> [out=<calibrated.ckpt>]`` runs this
(:mod:`dstorm3d.uncertainty`).
Matching within a radius leaves out the largest position errors, so the z-scores describe the localizations
that found their emitter; a localization's σ says nothing about whether it is a false positive.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from dstorm3d.emitters import Emitters
from dstorm3d.metrics.matching import match_frame
from dstorm3d.postprocess.offsets import SIGMA_AXES
from dstorm3d.simulation.simulator import (
    EmitterDataset,
    batch_emitters,
    batch_generator,
    collate_samples,
    simulation_parts,
)

VALIDATION_SEED = 20260  # fits the factors (training seeds are small integers: 14 and 5 for models/)
TEST_SEED = 20261  # checks them; never used for fitting
RECORD_KEY = "uncertainty_calibration"
CALIBRATED_RANGE = (0.9, 1.1)  # the z-score standard deviation of a calibrated axis
AXIS_UNITS = {"x": "nm", "y": "nm", "z": "nm", "photons": "photons"}


# ---------------------------------------------------------------------------------------------- frames
@dataclass
class SimulatedSet:
    """Frames ``(n, H, W)`` in camera counts (CPU) and their ground truth (µm, photons)."""

    frames: Tensor
    truth: Emitters
    seed: int


def simulated_set(module: Any, frames: int, seed: int, batch_size: int = 32) -> SimulatedSet:
    """``frames`` frames of ``module``'s own training distribution (frame shape, emitters, photons, blur,
    background, camera, phase mask); frame ``i`` depends only on ``(seed, i)``."""
    hparams = module.hparams
    simulation = dict(hparams.simulation)
    sampler, background = simulation_parts(simulation, module.optical_setup)
    dataset = EmitterDataset(
        sampler, background, frames, seed, stream="test", blur_sigma_px=simulation.get("blur_sigma_px")
    )
    rendered, truths = [], []
    with torch.no_grad():
        for start in range(0, frames, batch_size):
            batch = collate_samples([dataset[i] for i in range(start, min(frames, start + batch_size))])
            batch = {k: v.to(module.device) for k, v in batch.items()}
            noise = batch_generator(module.device, seed, "uncertainty", start)
            rendered.append(module.simulate(batch, noise).cpu())
            truths.append(batch_emitters(batch).to("cpu"))
    return SimulatedSet(torch.cat(rendered), Emitters.cat(truths), seed)


# ---------------------------------------------------------------------------------------------- z-scores
def localize(module: Any, frames: Tensor, batch_size: int = 32) -> Emitters:
    """The module's localizations (CPU, with ``sigma``) in ``frames (n, H, W)`` of camera counts."""
    from dstorm3d.models.tiling import localize_frames

    found = []
    with torch.inference_mode():
        for start in range(0, frames.shape[0], batch_size):
            batch = frames[start : start + batch_size].to(module.device)
            found.append(localize_frames(module, batch).to("cpu"))
    return Emitters.cat(found)


def z_scores(pred: Emitters, truth: Emitters, threshold_nm: float = 150.0) -> dict[str, np.ndarray]:
    """Per axis of :data:`~dstorm3d.postprocess.offsets.SIGMA_AXES`, ``(K,)`` z-scores
    ``(estimate − truth) / σ`` over the ``K`` localizations matched to labelled ground truth (see the module
    docstring); ``pred.sigma`` must be set (a head that predicts uncertainties)."""
    if pred.sigma is None:
        raise ValueError("these localizations carry no predicted uncertainties (not an offsets head)")
    scores: dict[str, list[np.ndarray]] = {axis: [] for axis in SIGMA_AXES}
    pred_xyz, truth_xyz = pred.per_frame(), truth.per_frame(labelled_only=True)
    for b in range(pred.batch_size):
        valid, labelled = pred.valid[b], truth.labelled[b]
        dim = (truth.valid[b] & ~labelled).cpu()
        match = match_frame(
            pred_xyz[b],
            truth_xyz[b],
            threshold_nm=threshold_nm,
            unlabelled_xyz_um=truth.xyz[b][dim].double().numpy(),
        )
        if match.tp == 0:
            continue
        sigma = pred.sigma[b][valid].double().numpy()[match.pred_idx]  # (K, 4): µm, µm, µm, photons
        photons_error = (
            pred.photons[b][valid].double().numpy()[match.pred_idx]
            - truth.photons[b][labelled].double().numpy()[match.gt_idx]
        )
        errors = np.stack([match.dx_nm, match.dy_nm, match.dz_nm, photons_error], axis=1)
        errors[:, :3] /= 1e3  # nm → µm, the unit of sigma
        for d, axis in enumerate(SIGMA_AXES):
            scores[axis].append(errors[:, d] / sigma[:, d])
    return {axis: np.concatenate(parts) if parts else np.zeros(0) for axis, parts in scores.items()}


def z_score_summary(scores: Mapping[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Per axis: ``pairs``, ``std`` (the calibration criterion), ``rms`` and ``mean`` of the z-scores."""
    summary = {}
    for axis, values in scores.items():
        finite = values[np.isfinite(values)]
        summary[axis] = {
            "pairs": int(len(finite)),
            "std": float(np.std(finite, ddof=1)) if len(finite) > 1 else float("nan"),
            "rms": float(np.sqrt(np.mean(finite**2))) if len(finite) else float("nan"),
            "mean": float(np.mean(finite)) if len(finite) else float("nan"),
        }
    return summary


def is_calibrated(summary: Mapping[str, Mapping[str, float]]) -> bool:
    """Every axis' z-score standard deviation inside :data:`CALIBRATED_RANGE`."""
    lo, hi = CALIBRATED_RANGE
    return all(lo <= s["std"] <= hi for s in summary.values())


# ---------------------------------------------------------------------------------------------- factors
def uncertainty_scale(module: Any) -> dict[str, float]:
    """The calibration factors the module decodes with (1 on every axis when it has none)."""
    post = dict(module.hparams.head.get("postprocess") or {})
    scale = dict(post.get("uncertainty_scale") or {})
    return {axis: float(scale.get(axis, 1.0)) for axis in SIGMA_AXES}


def set_uncertainty_scale(module: Any, scale: Mapping[str, float] | None) -> None:
    """Decode with these factors from now on (``None``: the raw predictions); hyperparameters included,
    so a checkpoint saved afterwards keeps them."""
    if module.hparams.head.get("kind") != "offsets":
        raise ValueError("only an offsets head predicts uncertainties")
    plain = None if scale is None else {axis: float(scale[axis]) for axis in SIGMA_AXES}
    post = module.hparams.head.setdefault("postprocess", {})
    if plain is None:
        post.pop("uncertainty_scale", None)
        module.readout.decode_kwargs.pop("uncertainty_scale", None)
    else:
        post["uncertainty_scale"] = plain
        module.readout.decode_kwargs["uncertainty_scale"] = plain


@dataclass
class Measurement:
    """z-scores of one simulated set under given factors."""

    seed: int
    frames: int
    scale: dict[str, float]
    scores: dict[str, np.ndarray]

    @property
    def summary(self) -> dict[str, dict[str, float]]:
        return z_score_summary(self.scores)

    def to_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "frames": self.frames, "scale": self.scale, "z_scores": self.summary}


def measure(
    module: Any, data: SimulatedSet, scale: Mapping[str, float] | None, batch_size: int = 32
) -> Measurement:
    """z-scores of ``data`` when the module decodes with ``scale`` (``None``: raw σ); the module's own
    factors are restored afterwards."""
    kept = uncertainty_scale(module)
    had = "uncertainty_scale" in (module.hparams.head.get("postprocess") or {})
    set_uncertainty_scale(module, scale)
    try:
        found = localize(module, data.frames, batch_size)
    finally:
        set_uncertainty_scale(module, kept if had else None)
    threshold_nm = float(module.hparams.get("metrics", {}).get("threshold_nm", 150.0))
    used = {axis: float((scale or {}).get(axis, 1.0)) for axis in SIGMA_AXES}
    return Measurement(data.seed, int(data.frames.shape[0]), used, z_scores(found, data.truth, threshold_nm))


def fit_uncertainty_scale(raw: Measurement) -> dict[str, float]:
    """Factors that make the z-scores' RMS 1 on every axis, from z-scores measured with ``raw.scale``."""
    summary = raw.summary
    return {axis: float(raw.scale[axis] * summary[axis]["rms"]) for axis in SIGMA_AXES}


@dataclass
class Calibration:
    """The fitted factors and the before/after measurements on the validation and the test set."""

    scale: dict[str, float]
    validation: Measurement
    test_before: Measurement
    test_after: Measurement

    def record(self) -> dict[str, Any]:
        """Plain data for the checkpoint (:data:`RECORD_KEY`)."""
        return {
            "scale": self.scale,
            "method": "RMS of validation z-scores (matched localizations), per axis",
            "validation": self.validation.to_dict(),
            "test_before": self.test_before.to_dict(),
            "test_after": self.test_after.to_dict(),
        }


def calibrate(
    module: Any,
    frames: int = 256,
    batch_size: int = 32,
    validation_seed: int = VALIDATION_SEED,
    test_seed: int = TEST_SEED,
) -> Calibration:
    """Fit per-axis factors on ``frames`` simulated validation frames (raw σ) and measure the test set
    (``frames`` other frames) with scale 1 and with the factors."""
    validation = measure(module, simulated_set(module, frames, validation_seed, batch_size), None, batch_size)
    scale = fit_uncertainty_scale(validation)
    test = simulated_set(module, frames, test_seed, batch_size)
    before = measure(module, test, None, batch_size)
    after = measure(module, test, scale, batch_size)
    return Calibration(scale, validation, before, after)


def calibrated_checkpoint(
    source: str | Path, destination: str | Path, calibration: Calibration, overwrite: bool = False
) -> Path:
    """Copy ``source`` to ``destination`` with the factors in the hyperparameters and the measurement under
    :data:`RECORD_KEY`; everything else, the weights included, unchanged. Returns ``destination``."""
    from dstorm3d.utils.files import atomic_write

    raw = torch.load(Path(source), map_location="cpu", weights_only=True)
    result = dict(raw)
    hparams = copy.deepcopy(dict(raw["hyper_parameters"]))
    head = dict(hparams["head"])
    head["postprocess"] = {
        **dict(head.get("postprocess") or {}),
        "uncertainty_scale": dict(calibration.scale),
    }
    hparams["head"] = head
    result["hyper_parameters"] = hparams
    result[RECORD_KEY] = calibration.record()
    return atomic_write(Path(destination), lambda tmp: torch.save(result, tmp), overwrite=overwrite)


# ---------------------------------------------------------------------------------------------- figure
def unscaled(measurement: Measurement) -> Measurement:
    """The same localizations' z-scores with the raw σ (factors 1): σ is linear in the factor."""
    scores = {axis: z * measurement.scale[axis] for axis, z in measurement.scores.items()}
    return Measurement(measurement.seed, measurement.frames, dict.fromkeys(SIGMA_AXES, 1.0), scores)


def calibration_figure(rows: Mapping[str, Mapping[str, Measurement]], title: str = "") -> Any:
    """Histograms of the z-scores, one panel per axis and one row per entry of ``rows`` (e.g. a checkpoint),
    against the standard normal density; one curve per measurement of the row (e.g. ``{"raw σ": ...,
    "calibrated": ...}``), each labelled with its standard deviation."""
    from dstorm3d.visualization import new_figure

    figure = new_figure(4 * 3.2, 3.0 * len(rows) + 0.3)
    axes = np.atleast_2d(figure.subplots(len(rows), 4, squeeze=False))
    edges = np.linspace(-5, 5, 51)
    grid = np.linspace(-5, 5, 201)
    for row_axes, (row, measurements) in zip(axes, rows.items()):
        for ax, axis in zip(row_axes, SIGMA_AXES):
            for name, measurement in measurements.items():
                values = measurement.scores[axis]
                std = z_score_summary({axis: values})[axis]["std"]
                ax.hist(
                    np.clip(values, edges[0], edges[-1]),
                    bins=edges,
                    density=True,
                    histtype="step",
                    linewidth=1.4,
                    label=f"{name}: std {std:.2f} (n={len(values)})",
                )
            ax.plot(grid, np.exp(-0.5 * grid**2) / np.sqrt(2 * np.pi), "k--", linewidth=1.0, label="N(0, 1)")
            ax.set_xlabel(f"z-score of {axis} (error / predicted σ)")
            ax.set_ylabel("density")
            ax.set_xlim(edges[0], edges[-1])
            ax.legend(fontsize=6, loc="upper left")
            if len(rows) > 1:
                ax.set_title(row, fontsize=9)
    if title:
        figure.suptitle(title, fontsize=10)
    return figure
