"""Per-frame matching of localizations to ground truth, and the SMLM-challenge efficiency.

Pure numpy/scipy functions (no torch state). Positions come in **µm**; every distance, error and
threshold returned or accepted here is in **nm**.

Admissibility of a (prediction, ground truth) pair:

* default (DeepSTORM3D paper): 3D distance ``< threshold_nm`` (150 nm);
* SMLM Challenge 2016 (Sage et al. 2019): lateral distance ``< lateral_threshold_nm`` (250 nm) **and**
  ``|Δz| < axial_threshold_nm`` (500 nm). Both thresholds must then be given; ``threshold_nm`` is ignored.

Among admissible pairs the one-to-one assignment maximises the number of matches first and, among
assignments with that many matches, minimises the summed 3D distance.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Union

import numpy as np
from scipy.optimize import linear_sum_assignment

if TYPE_CHECKING:
    import torch

#: Scalars, numpy arrays or torch tensors (the efficiency formulas work element-wise on all three).
Numeric = Union[float, np.ndarray, "torch.Tensor"]

UM_TO_NM = 1000.0

#: SMLM Challenge 2016 efficiency weights (nm⁻¹).
ALPHA_LATERAL = 1.0
ALPHA_AXIAL = 0.5


def _empty_int() -> np.ndarray:
    return np.zeros(0, dtype=np.int64)


def _empty_float() -> np.ndarray:
    return np.zeros(0, dtype=np.float64)


@dataclass
class Match:
    """Result of matching one frame.

    Attributes:
        pred_idx: ``(K,)`` indices (into the prediction array) of the matched predictions.
        gt_idx: ``(K,)`` indices (into the ground-truth array) of their ground-truth partners.
        dx_nm, dy_nm, dz_nm: ``(K,)`` errors prediction − ground truth, in nm.
        tp: matched pairs (``K``).
        fp: predictions neither matched nor ignored.
        fn: ground-truth emitters left unmatched.
        ignored_pred_idx: predictions that matched no ground truth but were paired with an unlabelled
            (dim, rendered but not ground-truth) emitter; they count neither as TP nor as FP.
    """

    pred_idx: np.ndarray = field(default_factory=_empty_int)
    gt_idx: np.ndarray = field(default_factory=_empty_int)
    dx_nm: np.ndarray = field(default_factory=_empty_float)
    dy_nm: np.ndarray = field(default_factory=_empty_float)
    dz_nm: np.ndarray = field(default_factory=_empty_float)
    tp: int = 0
    fp: int = 0
    fn: int = 0
    ignored_pred_idx: np.ndarray = field(default_factory=_empty_int)

    @property
    def ignored(self) -> int:
        """Number of ignored predictions."""
        return int(len(self.ignored_pred_idx))

    @property
    def jaccard(self) -> float:
        """TP / (TP + FP + FN) as a fraction; NaN for a frame with no predictions and no ground truth."""
        denom = self.tp + self.fp + self.fn
        return self.tp / denom if denom > 0 else float("nan")


def _as_xyz(a: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(a, dtype=np.float64)
    if arr.size == 0:
        return arr.reshape(0, 3)
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise ValueError(f"{name} must have shape (N, 3), got {arr.shape}")
    return arr


def _check_thresholds(
    threshold_nm: float, lateral_threshold_nm: float | None, axial_threshold_nm: float | None
) -> bool:
    """Validate thresholds; return True for the lateral/axial (SMLM challenge) rule."""
    if (lateral_threshold_nm is None) != (axial_threshold_nm is None):
        raise ValueError("give both lateral_threshold_nm and axial_threshold_nm, or neither")
    if lateral_threshold_nm is not None:
        if lateral_threshold_nm <= 0 or axial_threshold_nm <= 0:  # type: ignore[operator]
            raise ValueError("lateral/axial thresholds must be positive")
        return True
    if threshold_nm <= 0:
        raise ValueError("threshold_nm must be positive")
    return False


def _assign(
    pred_nm: np.ndarray,
    gt_nm: np.ndarray,
    threshold_nm: float,
    lateral_threshold_nm: float | None,
    axial_threshold_nm: float | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Maximum-cardinality, minimum-total-3D-distance assignment among admissible pairs.

    Returns matched ``(pred_idx, gt_idx)``. Positions in nm.
    """
    if len(pred_nm) == 0 or len(gt_nm) == 0:
        return _empty_int(), _empty_int()
    diff = pred_nm[:, None, :] - gt_nm[None, :, :]  # (P, G, 3)
    lateral = np.hypot(diff[..., 0], diff[..., 1])
    dist = np.sqrt(lateral**2 + diff[..., 2] ** 2)
    if lateral_threshold_nm is not None:
        admissible = (lateral < lateral_threshold_nm) & (np.abs(diff[..., 2]) < axial_threshold_nm)
    else:
        admissible = dist < threshold_nm

    # Only rows/columns with at least one admissible partner can take part in a match.
    rows = np.flatnonzero(admissible.any(axis=1))
    cols = np.flatnonzero(admissible.any(axis=0))
    if len(rows) == 0:
        return _empty_int(), _empty_int()
    adm = admissible[np.ix_(rows, cols)]
    d = dist[np.ix_(rows, cols)]

    # Why a big finite penalty gives "most matches first, then least distance":
    # linear_sum_assignment on a rectangular (r × c) matrix always assigns exactly m = min(r, c) pairs.
    # With cost = distance for admissible pairs and BIG otherwise, an assignment with k admissible pairs
    # costs (m − k)·BIG + S_k, where 0 ≤ S_k ≤ k·d_max (d_max = largest admissible distance). Choosing
    # BIG = (m + 1)·(d_max + 1) > (k + 1)·d_max makes every assignment with k + 1 admissible pairs cheaper
    # than every assignment with k, so the optimum has the maximum number of admissible pairs and, among
    # those, the least summed distance. A penalty merely equal to the threshold would not do this (two
    # matches at 145 nm would lose against one at 10 nm plus one 150 nm penalty). Pairs carrying BIG are
    # dropped afterwards: inadmissible pairs are never reported as matches.
    d_max = float(d[adm].max())
    m = min(adm.shape)
    big = (m + 1) * (d_max + 1.0)
    cost = np.where(adm, d, big)
    r, c = linear_sum_assignment(cost)
    keep = adm[r, c]
    return rows[r[keep]].astype(np.int64), cols[c[keep]].astype(np.int64)


def match_frame(
    pred_xyz_um: np.ndarray,
    gt_xyz_um: np.ndarray,
    threshold_nm: float = 150.0,
    lateral_threshold_nm: float | None = None,
    axial_threshold_nm: float | None = None,
    unlabelled_xyz_um: np.ndarray | None = None,
) -> Match:
    """Match one frame's predictions ``(P, 3)`` to its ground truth ``(G, 3)`` (both in µm).

    Hungarian assignment (:func:`scipy.optimize.linear_sum_assignment`) over admissible pairs only; see
    the module docstring for the admissibility rules and the optimality criterion. Strict inequalities:
    a pair exactly at a threshold is rejected.

    ``unlabelled_xyz_um`` (optional, ``(U, 3)`` µm): valid-but-unlabelled emitters (dim emitters that were
    rendered but are not ground truth). Predictions left unmatched by the ground-truth matching are then
    matched one-to-one, with the same rule, to these emitters; those that find a partner are listed in
    ``ignored_pred_idx`` and are not counted as false positives. One-to-one means a second prediction on
    the same dim emitter is still a false positive (a duplicate).

    Errors are prediction − ground truth in nm.
    """
    _check_thresholds(threshold_nm, lateral_threshold_nm, axial_threshold_nm)
    pred_nm = _as_xyz(pred_xyz_um, "pred_xyz_um") * UM_TO_NM
    gt_nm = _as_xyz(gt_xyz_um, "gt_xyz_um") * UM_TO_NM

    pi, gi = _assign(pred_nm, gt_nm, threshold_nm, lateral_threshold_nm, axial_threshold_nm)
    order = np.argsort(pi, kind="stable")
    pi, gi = pi[order], gi[order]
    err = pred_nm[pi] - gt_nm[gi] if len(pi) else np.zeros((0, 3))

    ignored = _empty_int()
    if unlabelled_xyz_um is not None and len(pi) < len(pred_nm):
        dim_nm = _as_xyz(unlabelled_xyz_um, "unlabelled_xyz_um") * UM_TO_NM
        unmatched = np.setdiff1d(np.arange(len(pred_nm)), pi)
        ui, _ = _assign(pred_nm[unmatched], dim_nm, threshold_nm, lateral_threshold_nm, axial_threshold_nm)
        ignored = np.sort(unmatched[ui]).astype(np.int64)

    tp = int(len(pi))
    return Match(
        pred_idx=pi,
        gt_idx=gi,
        dx_nm=err[:, 0].copy(),
        dy_nm=err[:, 1].copy(),
        dz_nm=err[:, 2].copy(),
        tp=tp,
        fp=int(len(pred_nm) - tp - len(ignored)),
        fn=int(len(gt_nm) - tp),
        ignored_pred_idx=ignored,
    )


def efficiency(jaccard_percent: Numeric, rmse_nm: Numeric, alpha: float) -> Numeric:
    """SMLM Challenge 2016 efficiency ``E = 100 − √((100 − J%)² + (α·RMSE)²)``.

    Args:
        jaccard_percent: Jaccard index in percent (0–100).
        rmse_nm: RMSE in nm.
        alpha: weight in nm⁻¹ (:data:`ALPHA_LATERAL` = 1 for lateral, :data:`ALPHA_AXIAL` = 0.5 axial).

    Works element-wise on floats, numpy arrays and torch tensors. Result in percent (can be negative).
    """
    return 100.0 - ((100.0 - jaccard_percent) ** 2 + (alpha * rmse_nm) ** 2) ** 0.5


def efficiency_3d(jaccard_percent: Numeric, rmse_lat_nm: Numeric, rmse_ax_nm: Numeric) -> Numeric:
    """``E_3D = (E_lat + E_ax) / 2`` with the challenge weights (α = 1 nm⁻¹ lateral, 0.5 nm⁻¹ axial)."""
    return 0.5 * (
        efficiency(jaccard_percent, rmse_lat_nm, ALPHA_LATERAL)
        + efficiency(jaccard_percent, rmse_ax_nm, ALPHA_AXIAL)
    )


def tolerance_agreement(ours_nm: np.ndarray, theirs_nm: np.ndarray, tolerance_nm: float) -> tuple[int, int]:
    """How closely two localizers agree on one frame, for reproducing a reference implementation:
    ``(theirs reproduced, ours extra)`` = how many of ``theirs`` ``(T, 3)`` have one of ``ours`` ``(O, 3)``
    within ``tolerance_nm`` (3D, nm), and how many of ours have none of theirs that close."""
    from scipy.spatial import cKDTree

    ours_nm, theirs_nm = (
        np.asarray(ours_nm, float).reshape(-1, 3),
        np.asarray(theirs_nm, float).reshape(-1, 3),
    )
    if len(ours_nm) == 0 or len(theirs_nm) == 0:
        return 0, len(ours_nm)
    d_theirs, _ = cKDTree(ours_nm).query(theirs_nm)
    d_ours, _ = cKDTree(theirs_nm).query(ours_nm)
    return int((d_theirs <= tolerance_nm).sum()), int((d_ours > tolerance_nm).sum())
