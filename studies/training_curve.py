r"""Plot a training run's curves from its CSV log: training loss, validation Jaccard and RMSE, learning rate.

    .venv/bin/python studies/training_curve.py \
        logs/storm_offsets/runs/<run>/csv/metrics.csv models/storm_tetrapod_training.png

One PNG with three panels against the optimizer step: the training loss (per logged step and its running
median), validation Jaccard (and precision/recall), validation lateral/axial RMSE (nm), with the learning
rate on a second axis of the first panel. The best validation Jaccard is marked.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np


def read_metrics(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{column: (steps, values)}`` for every metric column of a Lightning CSV log (empty cells dropped)."""
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    series: dict[str, tuple[list[float], list[float]]] = {}
    for row in rows:
        step = row.get("step")
        if not step:
            continue
        for key, value in row.items():
            if key in ("epoch", "step") or value in ("", None):
                continue
            steps, values = series.setdefault(key, ([], []))
            steps.append(float(step))
            values.append(float(value))
    return {k: (np.asarray(s), np.asarray(v)) for k, (s, v) in series.items()}


def running_median(values: np.ndarray, width: int = 21) -> np.ndarray:
    half = width // 2
    return np.array([np.median(values[max(0, i - half) : i + half + 1]) for i in range(len(values))])


def plot(metrics: dict[str, tuple[np.ndarray, np.ndarray]], out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    ax = axes[0]
    if "train/loss_step" in metrics:
        steps, loss = metrics["train/loss_step"]
        ax.plot(steps, loss, color="0.75", lw=0.6, label="training loss (logged steps)")
        ax.plot(steps, running_median(loss), color="C0", label="running median")
    ax.set(xlabel="optimizer step", ylabel="loss (Gaussian-mixture NLL + count)", title="training")
    ax.grid(alpha=0.3)
    lr_key = next((k for k in metrics if k.startswith("lr-")), None)
    if lr_key:
        twin = ax.twinx()
        twin.plot(*metrics[lr_key], color="C3", lw=1, label="learning rate")
        twin.set_ylabel("learning rate", color="C3")
    ax.legend(fontsize=8, loc="upper right")
    ax = axes[1]
    for key, name in (("val/jaccard", "Jaccard"), ("val/precision", "precision"), ("val/recall", "recall")):
        if key in metrics:
            ax.plot(*metrics[key], marker="o" if key == "val/jaccard" else None, ms=3, label=name)
    if "val/jaccard" in metrics:
        steps, jaccard = metrics["val/jaccard"]
        best = int(np.argmax(jaccard))
        ax.axvline(steps[best], color="k", ls=":", lw=0.8)
        ax.annotate(
            f"best {jaccard[best]:.3f}",
            (steps[best], jaccard[best]),
            textcoords="offset points",
            xytext=(-60, -18),
            fontsize=8,
        )
    ax.set(
        xlabel="optimizer step",
        ylabel="fraction",
        title="validation (fixed set, 150 nm matching)",
        ylim=(0, 1),
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax = axes[2]
    for key, name in (("val/rmse_lat_nm", "lateral"), ("val/rmse_ax_nm", "axial")):
        if key in metrics:
            ax.plot(*metrics[key], marker="o", ms=3, label=name)
    ax.set(xlabel="optimizer step", ylabel="RMSE of matched pairs (nm)", title="validation RMSE")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("metrics", type=Path, help="a run's csv/metrics.csv")
    parser.add_argument("out", type=Path, help="the PNG to write")
    parser.add_argument("--title", default=None)
    args = parser.parse_args(argv)
    if not args.metrics.is_file():
        print(f"error: {args.metrics} not found (a training run's csv/metrics.csv)", file=sys.stderr)
        return 2
    metrics = read_metrics(args.metrics)
    if "val/jaccard" not in metrics:
        print(
            f"error: {args.metrics} has no val/jaccard column (not a localizer's training log?)",
            file=sys.stderr,
        )
        return 2
    plot(metrics, args.out, args.title or str(args.metrics.parent.parent.name))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
