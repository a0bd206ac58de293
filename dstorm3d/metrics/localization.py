"""torchmetrics metrics for 3D localization: Jaccard index, RMSE, bias and SMLM-challenge efficiency.

Matching is done per frame inside ``update()`` (see :mod:`dstorm3d.metrics.matching`) and only scalar
sums are kept as states, all reduced with ``"sum"``: results synced across DDP ranks are exactly those of
one process seeing all frames (up to float summation order).

Inputs are :class:`~dstorm3d.emitters.Emitters` with positions in µm; all reported errors are in nm.
Predictions are the ``pred.valid`` entries; ground truth is the ``target.labelled`` entries.

Conventions for degenerate cases (documented here once):

* ``jaccard`` = TP / (TP + FP + FN) is **NaN** when TP + FP + FN = 0 (nothing predicted, nothing to find:
  undefined rather than 0, which would read as a failure). Likewise ``precision`` is NaN without
  predictions and ``recall`` NaN without ground truth.
* RMSEs, biases and efficiencies are NaN when there is no true positive.
* ``jaccard``, ``precision`` and ``recall`` are fractions in [0, 1]; the efficiencies are in percent
  (the SMLM-challenge scale, 100 = perfect; computed from 100·jaccard).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric

from dstorm3d.emitters import Emitters
from dstorm3d.metrics.matching import (
    ALPHA_AXIAL,
    ALPHA_LATERAL,
    Match,
    _check_thresholds,
    efficiency,
    match_frame,
)

#: SMLM Challenge 2016 matching tolerances (nm).
SMLM_LATERAL_THRESHOLD_NM = 250.0
SMLM_AXIAL_THRESHOLD_NM = 500.0


def match_batch(
    pred: Emitters,
    target: Emitters,
    threshold_nm: float,
    lateral_threshold_nm: float | None,
    axial_threshold_nm: float | None,
    ignore_unlabelled: bool,
) -> list[Match]:
    """Match every frame of a batch: ``pred.valid`` entries against ``target.labelled`` entries."""
    if pred.batch_size != target.batch_size:
        raise ValueError(f"pred has {pred.batch_size} frames but target has {target.batch_size}")
    preds = pred.per_frame(labelled_only=False)
    gts = target.per_frame(labelled_only=True)
    dims: list[np.ndarray | None] = [None] * target.batch_size
    if ignore_unlabelled:
        dim_mask = (target.valid & ~target.labelled).cpu()
        if bool(dim_mask.any()):
            xyz = target.xyz.detach().cpu().double()
            dims = [xyz[i][dim_mask[i]].numpy() for i in range(target.batch_size)]
    return [
        match_frame(
            p,
            g,
            threshold_nm=threshold_nm,
            lateral_threshold_nm=lateral_threshold_nm,
            axial_threshold_nm=axial_threshold_nm,
            unlabelled_xyz_um=d if d is not None and len(d) else None,
        )
        for p, g, d in zip(preds, gts, dims)
    ]


class JaccardRMSE(Metric):
    """Jaccard index, RMSE (lateral, axial, 3D), bias and SMLM-challenge efficiencies over a set of frames.

    Args:
        threshold_nm: a pair matches when its 3D distance is below this (paper: 150 nm).
        lateral_threshold_nm, axial_threshold_nm: if given (both), replace the 3D rule by
            lateral < lateral_threshold_nm and |Δz| < axial_threshold_nm (SMLM challenge: 250 / 500 nm).
        ignore_unlabelled: if True, predictions that match no ground truth but lie within the matching
            threshold of a valid-but-unlabelled target entry (a dim emitter that was rendered but is not
            ground truth) are not counted as false positives. The pairing with dim emitters is one-to-one
            (Hungarian, same rule), so duplicates on one dim emitter still count as FP. Such predictions
            are counted in the ``ignored`` state. If False, they are ordinary false positives.
        **kwargs: passed to :class:`torchmetrics.Metric` (e.g. ``sync_on_compute``).

    ``update(pred, target)`` takes two :class:`Emitters` batches with the same number of frames.
    ``compute()`` returns a dict of float64 scalar tensors: ``jaccard``, ``precision``, ``recall``,
    ``rmse_lat_nm``, ``rmse_ax_nm``, ``rmse_3d_nm``, ``bias_x_nm``, ``bias_y_nm``, ``bias_z_nm``
    (mean prediction − ground truth over TPs), ``efficiency_lat``, ``efficiency_ax``, ``efficiency_3d``
    (percent; α = 1 nm⁻¹ lateral, 0.5 nm⁻¹ axial), ``tp``, ``fp``, ``fn``. See the module docstring for
    NaN conventions. The efficiencies follow the challenge's formula whatever the matching rule; they are
    comparable with published challenge numbers only with :class:`SMLMChallengeMetric`.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    tp: Tensor
    fp: Tensor
    fn: Tensor
    ignored: Tensor
    n_frames: Tensor
    sum_sq_lat: Tensor
    sum_sq_ax: Tensor
    sum_dx: Tensor
    sum_dy: Tensor
    sum_dz: Tensor

    _COUNT_STATES = ("tp", "fp", "fn", "ignored", "n_frames")
    _SUM_STATES = ("sum_sq_lat", "sum_sq_ax", "sum_dx", "sum_dy", "sum_dz")

    def __init__(
        self,
        threshold_nm: float = 150.0,
        lateral_threshold_nm: float | None = None,
        axial_threshold_nm: float | None = None,
        ignore_unlabelled: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        _check_thresholds(threshold_nm, lateral_threshold_nm, axial_threshold_nm)
        self.threshold_nm = float(threshold_nm)
        self.lateral_threshold_nm = None if lateral_threshold_nm is None else float(lateral_threshold_nm)
        self.axial_threshold_nm = None if axial_threshold_nm is None else float(axial_threshold_nm)
        self.ignore_unlabelled = bool(ignore_unlabelled)
        for name in self._COUNT_STATES:
            self.add_state(name, default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")
        for name in self._SUM_STATES:
            # float64: sums of squared nm errors over many frames stay exact to well below 1e-6 relative.
            self.add_state(name, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, pred: Emitters, target: Emitters) -> None:  # type: ignore[override]
        """Match each frame and accumulate counts and error sums (pred.valid vs target.labelled)."""
        matches = match_batch(
            pred,
            target,
            self.threshold_nm,
            self.lateral_threshold_nm,
            self.axial_threshold_nm,
            self.ignore_unlabelled,
        )
        tp = fp = fn = ignored = 0
        sq_lat = sq_ax = sdx = sdy = sdz = 0.0
        for m in matches:
            tp += m.tp
            fp += m.fp
            fn += m.fn
            ignored += m.ignored
            sq_lat += float(np.sum(m.dx_nm**2 + m.dy_nm**2))
            sq_ax += float(np.sum(m.dz_nm**2))
            sdx += float(np.sum(m.dx_nm))
            sdy += float(np.sum(m.dy_nm))
            sdz += float(np.sum(m.dz_nm))
        self.tp += tp
        self.fp += fp
        self.fn += fn
        self.ignored += ignored
        self.n_frames += len(matches)
        self.sum_sq_lat += sq_lat
        self.sum_sq_ax += sq_ax
        self.sum_dx += sdx
        self.sum_dy += sdy
        self.sum_dz += sdz

    def compute(self) -> dict[str, Tensor]:
        """Jaccard, precision, recall (fractions), RMSEs and biases (nm), efficiencies (%), counts."""
        tp = self.tp.double()
        fp = self.fp.double()
        fn = self.fn.double()
        nan = torch.full_like(tp, float("nan"))

        def ratio(num: Tensor, den: Tensor) -> Tensor:
            return torch.where(den > 0, num / den.clamp_min(1), nan)

        jaccard = ratio(tp, tp + fp + fn)
        rmse_lat = ratio(self.sum_sq_lat, tp).sqrt()
        rmse_ax = ratio(self.sum_sq_ax, tp).sqrt()
        rmse_3d = ratio(self.sum_sq_lat + self.sum_sq_ax, tp).sqrt()
        e_lat = efficiency(100.0 * jaccard, rmse_lat, ALPHA_LATERAL)
        e_ax = efficiency(100.0 * jaccard, rmse_ax, ALPHA_AXIAL)
        return {
            "jaccard": jaccard,
            "precision": ratio(tp, tp + fp),
            "recall": ratio(tp, tp + fn),
            "rmse_lat_nm": rmse_lat,
            "rmse_ax_nm": rmse_ax,
            "rmse_3d_nm": rmse_3d,
            "bias_x_nm": ratio(self.sum_dx, tp),
            "bias_y_nm": ratio(self.sum_dy, tp),
            "bias_z_nm": ratio(self.sum_dz, tp),
            "efficiency_lat": e_lat,
            "efficiency_ax": e_ax,
            "efficiency_3d": 0.5 * (e_lat + e_ax),
            "tp": tp,
            "fp": fp,
            "fn": fn,
        }


class SMLMChallengeMetric(JaccardRMSE):
    """:class:`JaccardRMSE` with the SMLM Challenge 2016 rule: lateral < 250 nm and |Δz| < 500 nm."""

    def __init__(self, ignore_unlabelled: bool = True, **kwargs: Any) -> None:
        super().__init__(
            lateral_threshold_nm=SMLM_LATERAL_THRESHOLD_NM,
            axial_threshold_nm=SMLM_AXIAL_THRESHOLD_NM,
            ignore_unlabelled=ignore_unlabelled,
            **kwargs,
        )


@dataclass
class FrameScores:
    """Per-frame results of :func:`per_frame_scores` (numpy; errors in nm).

    Per frame, shape ``(B,)``: ``tp``, ``fp``, ``fn``, ``ignored`` (int64); ``jaccard`` (fraction, NaN for
    a frame with no predictions and no ground truth); ``rmse_lat_nm``, ``rmse_ax_nm``, ``rmse_3d_nm``
    (NaN for a frame without TP). Per matched pair, shape ``(K,)``: ``pair_frame`` (frame index, int64),
    ``dx_nm``, ``dy_nm``, ``dz_nm`` (prediction − ground truth).
    """

    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    ignored: np.ndarray
    jaccard: np.ndarray
    rmse_lat_nm: np.ndarray
    rmse_ax_nm: np.ndarray
    rmse_3d_nm: np.ndarray
    pair_frame: np.ndarray
    dx_nm: np.ndarray
    dy_nm: np.ndarray
    dz_nm: np.ndarray


def per_frame_scores(
    pred: Emitters,
    target: Emitters,
    threshold_nm: float = 150.0,
    lateral_threshold_nm: float | None = None,
    axial_threshold_nm: float | None = None,
    ignore_unlabelled: bool = True,
) -> FrameScores:
    """Per-frame Jaccard, RMSEs and per-pair errors, with the same matching as :class:`JaccardRMSE`.

    Use e.g. ``np.nanstd(scores.jaccard)`` for the spread over frames.
    """
    _check_thresholds(threshold_nm, lateral_threshold_nm, axial_threshold_nm)
    matches = match_batch(
        pred, target, threshold_nm, lateral_threshold_nm, axial_threshold_nm, ignore_unlabelled
    )
    tp = np.array([m.tp for m in matches], dtype=np.int64)

    def per_frame_rmse(values: list[np.ndarray]) -> np.ndarray:
        out = np.full(len(values), np.nan)
        for i, v in enumerate(values):
            if len(v):
                out[i] = float(np.sqrt(np.mean(v)))
        return out

    sq_lat = [m.dx_nm**2 + m.dy_nm**2 for m in matches]
    sq_ax = [m.dz_nm**2 for m in matches]

    def cat(arrays: list[np.ndarray], dtype: type = np.float64) -> np.ndarray:
        return np.concatenate(arrays).astype(dtype) if arrays else np.zeros(0, dtype=dtype)

    return FrameScores(
        tp=tp,
        fp=np.array([m.fp for m in matches], dtype=np.int64),
        fn=np.array([m.fn for m in matches], dtype=np.int64),
        ignored=np.array([m.ignored for m in matches], dtype=np.int64),
        jaccard=np.array([m.jaccard for m in matches], dtype=np.float64),
        rmse_lat_nm=per_frame_rmse(sq_lat),
        rmse_ax_nm=per_frame_rmse(sq_ax),
        rmse_3d_nm=per_frame_rmse([a + b for a, b in zip(sq_lat, sq_ax)]),
        pair_frame=cat([np.full(m.tp, i, dtype=np.int64) for i, m in enumerate(matches)], np.int64),
        dx_nm=cat([m.dx_nm for m in matches]),
        dy_nm=cat([m.dy_nm for m in matches]),
        dz_nm=cat([m.dz_nm for m in matches]),
    )
