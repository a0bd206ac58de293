"""Tests of dstorm3d.metrics.matching: per-frame Hungarian matching and the SMLM efficiency."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from dstorm3d.metrics.matching import Match, efficiency, efficiency_3d, match_frame


def xyz(*points: tuple[float, float, float]) -> np.ndarray:
    """Points in µm as an (N, 3) array (empty → (0, 3))."""
    return np.array(points, dtype=np.float64).reshape(-1, 3)


def greedy_nearest(pred: np.ndarray, gt: np.ndarray, threshold_nm: float) -> int:
    """Number of matches of globally-greedy nearest-pair matching (the baseline Hungarian must beat)."""
    d = np.linalg.norm(pred[:, None] - gt[None], axis=-1) * 1000
    pairs = sorted(
        (d[i, j], i, j) for i in range(len(pred)) for j in range(len(gt)) if d[i, j] < threshold_nm
    )
    used_p, used_g, n = set(), set(), 0
    for _, i, j in pairs:
        if i not in used_p and j not in used_g:
            used_p.add(i)
            used_g.add(j)
            n += 1
    return n


# ----------------------------------------------------------------------------- basic cases
def test_single_pair_errors_are_pred_minus_gt_in_nm():
    m = match_frame(xyz((1.0, 2.0, 0.3)), xyz((0.95, 2.03, 0.25)))
    assert (m.tp, m.fp, m.fn) == (1, 0, 0)
    assert m.pred_idx.tolist() == [0] and m.gt_idx.tolist() == [0]
    assert m.dx_nm[0] == pytest.approx(50.0, abs=1e-9)
    assert m.dy_nm[0] == pytest.approx(-30.0, abs=1e-9)
    assert m.dz_nm[0] == pytest.approx(50.0, abs=1e-9)
    assert m.jaccard == 1.0


def test_indices_point_to_the_right_partners():
    gt = xyz((0.0, 0.0, 0.0), (5.0, 0.0, 0.0), (10.0, 0.0, 0.0))
    pred = xyz((10.02, 0.0, 0.0), (20.0, 0.0, 0.0), (0.0, 0.01, 0.0))
    m = match_frame(pred, gt)
    assert (m.tp, m.fp, m.fn) == (2, 1, 1)
    assert dict(zip(m.pred_idx.tolist(), m.gt_idx.tolist())) == {0: 2, 2: 0}
    assert m.dx_nm == pytest.approx([20.0, 0.0], abs=1e-9)
    assert m.dy_nm == pytest.approx([0.0, 10.0], abs=1e-9)
    assert m.jaccard == pytest.approx(2 / 4)


def test_prediction_equidistant_to_two_ground_truths():
    m = match_frame(xyz((1.0, 1.0, 0.0)), xyz((0.9, 1.0, 0.0), (1.1, 1.0, 0.0)))
    assert (m.tp, m.fp, m.fn) == (1, 0, 1)
    assert abs(m.dx_nm[0]) == pytest.approx(100.0, abs=1e-9)
    assert m.dy_nm[0] == 0.0 and m.dz_nm[0] == 0.0


def test_two_predictions_equidistant_to_one_ground_truth():
    m = match_frame(xyz((0.9, 1.0, 0.0), (1.1, 1.0, 0.0)), xyz((1.0, 1.0, 0.0)))
    assert (m.tp, m.fp, m.fn) == (1, 1, 0)


def test_chain_hungarian_beats_greedy_nearest_neighbour():
    # g1 —120— p1 —100— g2 —120— p2 (x in µm). Greedy takes p1–g2 (100 nm) and strands g1 and p2.
    gt = xyz((0.0, 0.0, 0.0), (0.22, 0.0, 0.0))
    pred = xyz((0.12, 0.0, 0.0), (0.34, 0.0, 0.0))
    assert greedy_nearest(pred, gt, 150.0) == 1
    m = match_frame(pred, gt)
    assert (m.tp, m.fp, m.fn) == (2, 0, 0)
    assert dict(zip(m.pred_idx.tolist(), m.gt_idx.tolist())) == {0: 0, 1: 1}
    assert m.dx_nm == pytest.approx([120.0, 120.0], abs=1e-9)


def test_more_matches_win_over_smaller_total_distance():
    # One match at 10 nm vs two at 145 nm: a penalty equal to the threshold (150) would prefer the
    # single match (10 + 150 < 290); maximum cardinality must come first.
    gt = xyz((0.0, 0.0, 0.0), (0.155, 0.0, 0.0))
    pred = xyz((0.145, 0.0, 0.0), (0.300, 0.0, 0.0))
    m = match_frame(pred, gt)
    assert (m.tp, m.fp, m.fn) == (2, 0, 0)
    assert m.dx_nm == pytest.approx([145.0, 145.0], abs=1e-9)


def test_minimum_distance_among_maximum_matchings():
    # Both assignments match everything; the one with the smaller total distance must be chosen.
    gt = xyz((0.0, 0.0, 0.0), (0.1, 0.0, 0.0))
    pred = xyz((0.01, 0.0, 0.0), (0.12, 0.0, 0.0))
    m = match_frame(pred, gt)
    assert dict(zip(m.pred_idx.tolist(), m.gt_idx.tolist())) == {0: 0, 1: 1}
    assert m.dx_nm == pytest.approx([10.0, 20.0], abs=1e-9)


def test_inadmissible_pairs_never_matched():
    # Hungarian must assign min(P, G) = 2 pairs internally; the far pair must be dropped.
    gt = xyz((0.0, 0.0, 0.0), (3.0, 0.0, 0.0))
    pred = xyz((0.05, 0.0, 0.0), (1.0, 0.0, 0.0))
    m = match_frame(pred, gt)
    assert (m.tp, m.fp, m.fn) == (1, 1, 1)
    assert m.pred_idx.tolist() == [0] and m.gt_idx.tolist() == [0]


# ----------------------------------------------------------------------------- thresholds
def test_threshold_is_strict():
    gt = xyz((0.0, 0.0, 0.0))
    pred = xyz((0.125, 0.0, 0.0))  # exactly 125 nm (binary-exact)
    assert match_frame(pred, gt, threshold_nm=125.0).tp == 0
    assert match_frame(pred, gt, threshold_nm=125.0 + 1e-6).tp == 1


def test_threshold_applies_to_3d_distance():
    gt = xyz((0.0, 0.0, 0.0))
    # 90 nm lateral, 120 nm axial → 150 nm in 3D: rejected at 150 nm, accepted at 151 nm.
    pred = xyz((0.09, 0.0, 0.12))
    assert match_frame(pred, gt, threshold_nm=150.0).tp == 0
    assert match_frame(pred, gt, threshold_nm=151.0).tp == 1
    assert match_frame(xyz((0.0, 0.0, 0.149)), gt).tp == 1


def test_smlm_rule_accepts_pair_the_150nm_rule_rejects():
    gt = xyz((1.0, 1.0, 0.0))
    pred = xyz((1.12, 1.16, 0.4))  # 200 nm lateral, 400 nm axial
    assert match_frame(pred, gt, threshold_nm=150.0).tp == 0
    m = match_frame(pred, gt, lateral_threshold_nm=250.0, axial_threshold_nm=500.0)
    assert (m.tp, m.fp, m.fn) == (1, 0, 0)
    assert math.hypot(m.dx_nm[0], m.dy_nm[0]) == pytest.approx(200.0, abs=1e-6)
    assert m.dz_nm[0] == pytest.approx(400.0, abs=1e-6)


def test_smlm_rule_boundaries_are_strict():
    gt = xyz((0.0, 0.0, 0.0))
    kw = dict(lateral_threshold_nm=250.0, axial_threshold_nm=500.0)
    assert match_frame(xyz((0.25, 0.0, 0.0)), gt, **kw).tp == 0  # lateral exactly 250 nm
    assert match_frame(xyz((0.0, 0.0, 0.5)), gt, **kw).tp == 0  # axial exactly 500 nm
    assert match_frame(xyz((0.0, 0.0, -0.5)), gt, **kw).tp == 0
    assert match_frame(xyz((0.0, 0.249, -0.499)), gt, **kw).tp == 1
    # Lateral and axial separately: a 3D distance of 520 nm can match, a lateral 260 nm cannot.
    assert match_frame(xyz((0.0, 0.26, 0.0)), gt, **kw).tp == 0


def test_lateral_without_axial_threshold_raises():
    with pytest.raises(ValueError):
        match_frame(xyz((0, 0, 0)), xyz((0, 0, 0)), lateral_threshold_nm=250.0)
    with pytest.raises(ValueError):
        match_frame(xyz((0, 0, 0)), xyz((0, 0, 0)), threshold_nm=0.0)


# ----------------------------------------------------------------------------- empty inputs
def test_empty_predictions():
    m = match_frame(xyz(), xyz((0, 0, 0), (1, 1, 0)))
    assert (m.tp, m.fp, m.fn) == (0, 0, 2)
    assert m.dx_nm.shape == (0,) and m.pred_idx.shape == (0,)
    assert m.jaccard == 0.0


def test_empty_ground_truth():
    m = match_frame(xyz((0, 0, 0), (1, 1, 0), (2, 2, 0)), xyz())
    assert (m.tp, m.fp, m.fn) == (0, 3, 0)
    assert m.jaccard == 0.0


def test_both_empty_gives_nan_jaccard():
    m = match_frame(np.zeros((0, 3)), np.zeros((0, 3)))
    assert (m.tp, m.fp, m.fn) == (0, 0, 0)
    assert math.isnan(m.jaccard)
    assert isinstance(m, Match)


# ----------------------------------------------------------------------------- unlabelled emitters
def test_unlabelled_emitter_absorbs_one_unmatched_prediction():
    gt = xyz((0.0, 0.0, 0.0))
    dim = xyz((2.0, 0.0, 0.0))
    pred = xyz((0.01, 0.0, 0.0), (2.05, 0.0, 0.0), (2.0, 0.06, 0.0), (5.0, 0.0, 0.0))
    plain = match_frame(pred, gt)
    assert (plain.tp, plain.fp, plain.fn, plain.ignored) == (1, 3, 0, 0)
    m = match_frame(pred, gt, unlabelled_xyz_um=dim)
    # one of the two predictions on the dim emitter is ignored (the nearer), the other is a duplicate (FP)
    assert (m.tp, m.fp, m.fn, m.ignored) == (1, 2, 0, 1)
    assert m.ignored_pred_idx.tolist() == [1]


def test_labelled_ground_truth_has_priority_over_unlabelled():
    gt = xyz((0.0, 0.0, 0.0))
    dim = xyz((0.05, 0.0, 0.0))
    m = match_frame(xyz((0.03, 0.0, 0.0)), gt, unlabelled_xyz_um=dim)
    assert (m.tp, m.fp, m.fn, m.ignored) == (1, 0, 0, 0)


# ----------------------------------------------------------------------------- brute force
def _brute_force(pred: np.ndarray, gt: np.ndarray, thr: float) -> tuple[int, float]:
    """(max matches, min total distance among those) by enumerating all partial injections."""
    d = np.linalg.norm(pred[:, None] - gt[None], axis=-1) * 1000
    best = (0, 0.0)
    p, g = len(pred), len(gt)
    for k in range(1, min(p, g) + 1):
        for rows in itertools.combinations(range(p), k):
            for cols in itertools.permutations(range(g), k):
                ds = [d[r, c] for r, c in zip(rows, cols)]
                if all(x < thr for x in ds):
                    total = float(sum(ds))
                    if k > best[0] or (k == best[0] and total < best[1]):
                        best = (k, total)
    return best


def test_matches_brute_force_on_random_small_frames():
    rng = np.random.default_rng(7)
    for _ in range(150):
        p, g = int(rng.integers(0, 5)), int(rng.integers(0, 5))
        pred = rng.uniform(0, 0.4, (p, 3))
        gt = rng.uniform(0, 0.4, (g, 3))
        m = match_frame(pred, gt, threshold_nm=150.0)
        k, total = _brute_force(pred, gt, 150.0)
        assert m.tp == k
        dist = np.sqrt(m.dx_nm**2 + m.dy_nm**2 + m.dz_nm**2)
        assert float(dist.sum()) == pytest.approx(total, abs=1e-6)
        assert np.all(dist < 150.0)
        assert len(set(m.pred_idx.tolist())) == m.tp and len(set(m.gt_idx.tolist())) == m.tp
        assert m.fp == p - k and m.fn == g - k


# ----------------------------------------------------------------------------- efficiency
def test_efficiency_check_vector():
    j, rl, ra = 98.161, 19.739, 25.024
    e_lat = efficiency(j, rl, 1.0)
    e_ax = efficiency(j, ra, 0.5)
    assert e_lat == pytest.approx(80.175, abs=1e-3)
    assert e_ax == pytest.approx(87.354, abs=1e-3)
    assert efficiency_3d(j, rl, ra) == pytest.approx(83.764, abs=1e-3)
    assert efficiency_3d(j, rl, ra) == pytest.approx((e_lat + e_ax) / 2, abs=1e-12)


def test_efficiency_perfect_and_array_inputs():
    assert efficiency(100.0, 0.0, 1.0) == 100.0
    arr = efficiency(np.array([98.161, 100.0]), np.array([19.739, 0.0]), 1.0)
    assert arr == pytest.approx([80.1755, 100.0], abs=1e-3)
    ten = efficiency_3d(torch.tensor([98.161]), torch.tensor([19.739]), torch.tensor([25.024]))
    assert float(ten[0]) == pytest.approx(83.764, abs=1e-3)
