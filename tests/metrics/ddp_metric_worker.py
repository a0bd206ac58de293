"""Standalone 2-process DDP (gloo, CPU) run of the localization metrics; used by test_metrics.py.

Not a test module. Usage: ``python ddp_metric_worker.py OUT_JSON PORT``. Each rank updates the metrics
with its half of a fixed set of frames (in several ``update`` calls); both ranks call ``compute()`` (which
syncs the states), and rank 0 writes the synced results, plus its rank-local TP count, to ``OUT_JSON``.
``make_frames`` is also imported by the tests to compute the single-process reference.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from dstorm3d.emitters import Emitters  # noqa: E402
from dstorm3d.metrics.localization import JaccardRMSE, SMLMChallengeMetric  # noqa: E402

N_FRAMES = 9
WORLD_SIZE = 2


def make_frames(seed: int = 1234, n_frames: int = N_FRAMES) -> tuple[Emitters, Emitters]:
    """Random frames: ground truth (some emitters dim = unlabelled), and noisy, incomplete predictions
    with spurious entries. Positions in µm."""
    rng = np.random.default_rng(seed)
    gt_xyz, gt_lab, pr_xyz = [], [], []
    for _ in range(n_frames):
        n = int(rng.integers(0, 12))
        xyz = np.column_stack([rng.uniform(0, 6.4, n), rng.uniform(0, 6.4, n), rng.uniform(-1.0, 1.0, n)])
        labelled = rng.random(n) > 0.15
        keep = rng.random(n) > 0.2
        noise = rng.normal(0, 1, (n, 3)) * np.array([0.04, 0.04, 0.09])
        pred = (xyz + noise)[keep]
        n_spurious = int(rng.integers(0, 3))
        spurious = np.column_stack(
            [rng.uniform(0, 6.4, n_spurious), rng.uniform(0, 6.4, n_spurious), rng.uniform(-1, 1, n_spurious)]
        )
        pred = np.concatenate([pred, spurious])[rng.permutation(len(pred) + n_spurious)]
        gt_xyz.append(xyz)
        gt_lab.append(labelled)
        pr_xyz.append(pred)
    target = Emitters.from_lists(gt_xyz, photons=[np.ones(len(x)) for x in gt_xyz], labelled=gt_lab)
    pred = Emitters.from_lists(pr_xyz, score=[np.ones(len(x)) for x in pr_xyz])
    return pred, target


def make_metrics() -> dict[str, JaccardRMSE]:
    return {
        "paper": JaccardRMSE(threshold_nm=150.0),
        "paper_no_ignore": JaccardRMSE(threshold_nm=150.0, ignore_unlabelled=False),
        "smlm": SMLMChallengeMetric(),
    }


def _to_jsonable(result: dict[str, torch.Tensor]) -> dict[str, float]:
    return {k: float(v) for k, v in result.items()}


def _run(rank: int, out_path: str, port: int) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE)
    try:
        pred, target = make_frames()
        split = (N_FRAMES + 1) // 2  # uneven halves: rank 0 gets 5 frames, rank 1 gets 4
        mine = list(range(0, split)) if rank == 0 else list(range(split, N_FRAMES))
        metrics = make_metrics()
        for start in range(0, len(mine), 2):  # several update() calls per rank
            idx = mine[start : start + 2]
            p, t = pred.select_frames(idx), target.select_frames(idx)
            for metric in metrics.values():
                metric.update(p, t)
        results = {name: _to_jsonable(metric.compute()) for name, metric in metrics.items()}
        local_tp = {name: int(metric.tp) for name, metric in metrics.items()}  # unsynced after compute
        if rank == 0:
            payload = {"results": results, "rank0_local_tp": local_tp}
            Path(out_path).write_text(json.dumps(payload, allow_nan=True))
        torch.distributed.barrier()
    finally:
        torch.distributed.destroy_process_group()


def main() -> None:
    out_path, port = sys.argv[1], int(sys.argv[2])
    torch.multiprocessing.spawn(_run, args=(out_path, port), nprocs=WORLD_SIZE, join=True)


if __name__ == "__main__":
    main()
