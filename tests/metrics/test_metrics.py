"""Tests of dstorm3d.metrics.localization: JaccardRMSE, SMLMChallengeMetric, per_frame_scores, DDP sync."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dstorm3d.emitters import Emitters
from dstorm3d.metrics.localization import JaccardRMSE, SMLMChallengeMetric, per_frame_scores
from dstorm3d.metrics.matching import efficiency

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
WORKER = HERE / "ddp_metric_worker.py"
KEYS = {
    "jaccard",
    "precision",
    "recall",
    "rmse_lat_nm",
    "rmse_ax_nm",
    "rmse_3d_nm",
    "bias_x_nm",
    "bias_y_nm",
    "bias_z_nm",
    "efficiency_lat",
    "efficiency_ax",
    "efficiency_3d",
    "tp",
    "fp",
    "fn",
}
F32_NM = 1e-3  # positions are float32 µm: errors in nm are exact to ~1e-4 nm


def load_worker():
    spec = importlib.util.spec_from_file_location("ddp_metric_worker", WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def emitters(
    frames: list[list[tuple[float, float, float]]], labelled: list[list[bool]] | None = None
) -> Emitters:
    arrays = [np.array(f, dtype=np.float64).reshape(-1, 3) for f in frames]
    return Emitters.from_lists(arrays, photons=[np.ones(len(a)) for a in arrays], labelled=labelled)


def as_floats(result: dict[str, torch.Tensor]) -> dict[str, float]:
    return {k: float(v) for k, v in result.items()}


def same(a: float, b: float, rel: float = 1e-9, abs_: float = 1e-9) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return math.isclose(a, b, rel_tol=rel, abs_tol=abs_)


# ----------------------------------------------------------------------------- hand-built numbers
def hand_built() -> tuple[Emitters, Emitters]:
    """Frame 0: 2 TPs with errors (30, 40, 0) and (0, 0, -100) nm; frame 1: 1 FN; frame 2: 1 FP;
    frame 3: empty."""
    target = emitters([[(1.0, 1.0, 0.0), (3.0, 3.0, 0.5)], [(2.0, 2.0, 0.0)], [], []])
    pred = emitters([[(3.0, 3.0, 0.4), (1.03, 1.04, 0.0)], [], [(4.0, 4.0, 0.0)], []])
    return pred, target


def test_hand_built_numbers():
    pred, target = hand_built()
    metric = JaccardRMSE()
    metric.update(pred, target)
    r = as_floats(metric.compute())
    assert set(r) == KEYS
    assert (r["tp"], r["fp"], r["fn"]) == (2.0, 1.0, 1.0)
    assert int(metric.n_frames) == 4
    assert r["jaccard"] == pytest.approx(0.5)
    assert r["precision"] == pytest.approx(2 / 3)
    assert r["recall"] == pytest.approx(2 / 3)
    assert r["rmse_lat_nm"] == pytest.approx(math.sqrt((50.0**2 + 0.0) / 2), abs=F32_NM)
    assert r["rmse_ax_nm"] == pytest.approx(math.sqrt(100.0**2 / 2), abs=F32_NM)
    assert r["rmse_3d_nm"] == pytest.approx(math.sqrt((2500.0 + 10000.0) / 2), abs=F32_NM)
    assert r["bias_x_nm"] == pytest.approx(15.0, abs=F32_NM)
    assert r["bias_y_nm"] == pytest.approx(20.0, abs=F32_NM)
    assert r["bias_z_nm"] == pytest.approx(-50.0, abs=F32_NM)
    assert r["efficiency_lat"] == pytest.approx(efficiency(50.0, r["rmse_lat_nm"], 1.0), abs=1e-9)
    assert r["efficiency_ax"] == pytest.approx(efficiency(50.0, r["rmse_ax_nm"], 0.5), abs=1e-9)
    assert r["efficiency_3d"] == pytest.approx((r["efficiency_lat"] + r["efficiency_ax"]) / 2, abs=1e-9)


def test_padded_entries_are_ignored():
    pred, target = hand_built()
    # Put garbage in padding slots: right on top of ground truth, but valid=False.
    pad_pred = pred.pad_to(5)
    pad_tgt = target.pad_to(5)
    pad_pred.xyz[1, :] = torch.tensor([2.0, 2.0, 0.0])
    pad_pred.xyz[0, 2:] = torch.tensor([1.0, 1.0, 0.0])
    pad_tgt.xyz[2, 1:] = torch.tensor([4.0, 4.0, 0.0])
    a, b = JaccardRMSE(), JaccardRMSE()
    a.update(pred, target)
    b.update(pad_pred, pad_tgt)
    ra, rb = as_floats(a.compute()), as_floats(b.compute())
    assert all(same(ra[k], rb[k]) for k in KEYS)


def test_nothing_at_all_gives_nan_and_no_tp_gives_nan_rmse():
    metric = JaccardRMSE()
    metric.update(Emitters.empty(3), Emitters.empty(3))
    r = as_floats(metric.compute())
    assert (r["tp"], r["fp"], r["fn"]) == (0.0, 0.0, 0.0)
    for k in (
        "jaccard",
        "precision",
        "recall",
        "rmse_lat_nm",
        "rmse_ax_nm",
        "rmse_3d_nm",
        "bias_x_nm",
        "efficiency_3d",
    ):
        assert math.isnan(r[k]), k

    metric = JaccardRMSE()
    metric.update(emitters([[(0.0, 0.0, 0.0)]]), emitters([[(1.0, 0.0, 0.0)]]))
    r = as_floats(metric.compute())
    assert (r["tp"], r["fp"], r["fn"]) == (0.0, 1.0, 1.0)
    assert r["jaccard"] == 0.0 and r["precision"] == 0.0 and r["recall"] == 0.0
    assert math.isnan(r["rmse_lat_nm"]) and math.isnan(r["rmse_ax_nm"])


def test_empty_predictions_and_empty_ground_truth():
    target = emitters([[(0.0, 0.0, 0.0), (1.0, 0.0, 0.0)]])
    metric = JaccardRMSE()
    metric.update(Emitters.empty(1), target)
    r = as_floats(metric.compute())
    assert (r["tp"], r["fp"], r["fn"], r["jaccard"]) == (0.0, 0.0, 2.0, 0.0)
    assert math.isnan(r["precision"]) and r["recall"] == 0.0

    metric = JaccardRMSE()
    metric.update(target, Emitters.empty(1))
    r = as_floats(metric.compute())
    assert (r["tp"], r["fp"], r["fn"], r["jaccard"]) == (0.0, 2.0, 0.0, 0.0)
    assert r["precision"] == 0.0 and math.isnan(r["recall"])


def test_unlabelled_dim_emitters():
    # GT frame: one labelled emitter and one dim (valid, unlabelled) emitter; predictions on both.
    target = emitters([[(0.0, 0.0, 0.0), (2.0, 2.0, 0.0)]], labelled=[[True, False]])
    pred = emitters([[(0.02, 0.0, 0.0), (2.0, 2.05, 0.0)]])
    on = JaccardRMSE(ignore_unlabelled=True)
    on.update(pred, target)
    r = as_floats(on.compute())
    assert (r["tp"], r["fp"], r["fn"]) == (1.0, 0.0, 0.0)  # dim emitter is neither FN nor a source of FP
    assert int(on.ignored) == 1
    assert r["jaccard"] == 1.0
    assert r["rmse_lat_nm"] == pytest.approx(20.0, abs=F32_NM)

    off = JaccardRMSE(ignore_unlabelled=False)
    off.update(pred, target)
    r = as_floats(off.compute())
    assert (r["tp"], r["fp"], r["fn"]) == (1.0, 1.0, 0.0)
    assert int(off.ignored) == 0
    assert r["jaccard"] == pytest.approx(0.5)


def test_unlabelled_far_prediction_still_false_positive():
    target = emitters([[(0.0, 0.0, 0.0), (2.0, 2.0, 0.0)]], labelled=[[True, False]])
    pred = emitters([[(0.0, 0.0, 0.0), (2.0, 2.3, 0.0)]])  # 300 nm from the dim emitter
    metric = JaccardRMSE(ignore_unlabelled=True)
    metric.update(pred, target)
    r = as_floats(metric.compute())
    assert (r["tp"], r["fp"], r["fn"]) == (1.0, 1.0, 0.0)


def test_smlm_variant_accepts_200_lateral_400_axial():
    target = emitters([[(1.0, 1.0, 0.0)]])
    pred = emitters([[(1.12, 1.16, 0.4)]])
    paper, smlm = JaccardRMSE(), SMLMChallengeMetric()
    paper.update(pred, target)
    smlm.update(pred, target)
    rp, rs = as_floats(paper.compute()), as_floats(smlm.compute())
    assert (rp["tp"], rp["fp"], rp["fn"]) == (0.0, 1.0, 1.0)
    assert (rs["tp"], rs["fp"], rs["fn"]) == (1.0, 0.0, 0.0)
    assert rs["rmse_lat_nm"] == pytest.approx(200.0, abs=F32_NM)
    assert rs["rmse_ax_nm"] == pytest.approx(400.0, abs=F32_NM)
    assert rs["efficiency_lat"] == pytest.approx(100.0 - 200.0, abs=1e-3)
    assert smlm.lateral_threshold_nm == 250.0 and smlm.axial_threshold_nm == 500.0


def test_batch_size_mismatch_raises():
    with pytest.raises(ValueError):
        JaccardRMSE().update(Emitters.empty(2), Emitters.empty(3))


def test_metric_state_definition():
    metric = JaccardRMSE()
    assert metric.full_state_update is False
    for name in ("tp", "fp", "fn", "n_frames", "sum_sq_lat", "sum_sq_ax", "sum_dx", "sum_dy", "sum_dz"):
        assert metric._reductions[name] is not None
        assert getattr(metric, name).ndim == 0
    metric.update(*hand_built())
    metric.reset()
    assert int(metric.tp) == 0 and float(metric.sum_sq_lat) == 0.0


# ----------------------------------------------------------------------------- accumulation
@pytest.mark.parametrize("cls_kwargs", [{}, {"ignore_unlabelled": False}, {"smlm": True}])
def test_accumulating_updates_equals_one_update(cls_kwargs):
    pred, target = load_worker().make_frames(seed=99, n_frames=11)

    def make():
        if cls_kwargs.get("smlm"):
            return SMLMChallengeMetric()
        return JaccardRMSE(**cls_kwargs)

    whole, parts = make(), make()
    whole.update(pred, target)
    for idx in ([0, 1, 2], [3], [4, 5, 6, 7], [8, 9, 10]):
        parts.update(pred.select_frames(idx), target.select_frames(idx))
    rw, rp = as_floats(whole.compute()), as_floats(parts.compute())
    assert rw["tp"] > 0 and rw["fp"] > 0 and rw["fn"] > 0
    assert all(same(rw[k], rp[k]) for k in KEYS), (rw, rp)


def test_forward_returns_batch_values_and_accumulates():
    pred, target = load_worker().make_frames(seed=3, n_frames=6)
    metric, reference = JaccardRMSE(), JaccardRMSE()
    first = as_floats(metric(pred.select_frames([0, 1, 2]), target.select_frames([0, 1, 2])))
    reference.update(pred.select_frames([0, 1, 2]), target.select_frames([0, 1, 2]))
    assert all(same(first[k], float(v)) for k, v in reference.compute().items())
    metric(pred.select_frames([3, 4, 5]), target.select_frames([3, 4, 5]))
    whole = JaccardRMSE()
    whole.update(pred, target)
    total, expected = as_floats(metric.compute()), as_floats(whole.compute())
    assert all(same(total[k], expected[k]) for k in KEYS)


def test_per_frame_scores_consistent_with_metric():
    pred, target = load_worker().make_frames(seed=5, n_frames=8)
    metric = JaccardRMSE()
    metric.update(pred, target)
    r = as_floats(metric.compute())
    s = per_frame_scores(pred, target)
    assert s.tp.shape == (8,) and s.jaccard.shape == (8,)
    assert (s.tp.sum(), s.fp.sum(), s.fn.sum()) == (r["tp"], r["fp"], r["fn"])
    assert len(s.dx_nm) == s.tp.sum() == len(s.pair_frame)
    assert np.sqrt(np.mean(s.dx_nm**2 + s.dy_nm**2)) == pytest.approx(r["rmse_lat_nm"], rel=1e-9)
    assert np.sqrt(np.mean(s.dz_nm**2)) == pytest.approx(r["rmse_ax_nm"], rel=1e-9)
    with np.errstate(invalid="ignore"):
        expected_j = s.tp / (s.tp + s.fp + s.fn)
    np.testing.assert_allclose(s.jaccard, expected_j)
    for i in range(8):
        sel = s.pair_frame == i
        if s.tp[i]:
            assert s.rmse_ax_nm[i] == pytest.approx(np.sqrt(np.mean(s.dz_nm[sel] ** 2)))
        else:
            assert np.isnan(s.rmse_lat_nm[i])


def test_per_frame_scores_hand_built():
    pred, target = hand_built()
    s = per_frame_scores(pred, target)
    assert s.tp.tolist() == [2, 0, 0, 0]
    assert s.fp.tolist() == [0, 0, 1, 0]
    assert s.fn.tolist() == [0, 1, 0, 0]
    assert s.jaccard[:3].tolist() == [1.0, 0.0, 0.0] and np.isnan(s.jaccard[3])
    assert s.pair_frame.tolist() == [0, 0]


# ----------------------------------------------------------------------------- DDP exactness
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow  # ~10 s: three interpreters import torch
def test_ddp_two_processes_equal_single_process(tmp_path):
    worker = load_worker()
    out = tmp_path / "ddp_result.json"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("OMP_NUM_THREADS", "1")
    proc = subprocess.run(
        [sys.executable, str(WORKER), str(out), str(_free_port())],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    payload = json.loads(out.read_text())

    pred, target = worker.make_frames()
    for name, metric in worker.make_metrics().items():
        metric.update(pred, target)
        single = as_floats(metric.compute())
        synced = payload["results"][name]
        assert set(synced) == KEYS
        assert single["tp"] > 0 and single["fp"] > 0 and single["fn"] > 0
        # rank 0 alone saw only part of the data: the synced result really combines both ranks
        assert payload["rank0_local_tp"][name] < single["tp"]
        for k in KEYS:
            assert same(single[k], synced[k], rel=1e-9, abs_=1e-9), (name, k, single[k], synced[k])
