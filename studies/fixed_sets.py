"""Score a checkpoint on fixed held-out sets of frames with exactly known emitter counts.

The sets reproduce the conditions of the CPU prototype the quickstart is compared with (issue 3,
reference.md §6): the checkpoint's own frames (size, photons, background, camera), 1–3, 5 and 8 emitters
per frame, 2,048 frames each (about 4,000 emitters in the 1–3 set: a Jaccard near 0.8 is then known to
about ±0.007), seed 2024, 150 nm matching. What can be changed is what the prototype's
description leaves open, the per-emitter blur (σ in camera pixels); the phase mask is the checkpoint's
(train with ``optics=storm_printed`` for the printed Tetrapod):

    CKPT=$(ls -t logs/quickstart/runs/*/checkpoints/epoch_*.ckpt | head -1)   # a run's best checkpoint
    .venv/bin/python studies/fixed_sets.py $CKPT                      # its own blur
    .venv/bin/python studies/fixed_sets.py $CKPT --blur none          # frames without the blur
    .venv/bin/python studies/fixed_sets.py $CKPT --blur 0.9 1.1       # σ uniform in [0.9, 1.1] px

Prints one table row per set (Jaccard, RMSE lateral / axial, precision, recall) and, with ``--out``,
writes them as JSON. The frames depend on the seed, the set and the batch size (the module draws the
camera noise per batch), never on the checkpoint: two checkpoints trained for the same frames are scored
on identical data.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from dstorm3d.data.simulated import SimulatedDataModule
from dstorm3d.modules.checkpoints import load_module
from dstorm3d.utils.files import atomic_write

SETS = {"1-3": (1, 3), "5": (5, 5), "8": (8, 8)}
KEYS = ("jaccard", "rmse_lat_nm", "rmse_ax_nm", "precision", "recall", "loss")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("ckpt", type=Path, help="a dstorm3d checkpoint (either head)")
    parser.add_argument(
        "--sets", nargs="+", default=list(SETS), choices=list(SETS), help="emitters per frame"
    )
    parser.add_argument("--frames", type=int, default=2048, help="frames per set")
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument(
        "--blur",
        nargs="+",
        default=["checkpoint"],
        help="'checkpoint' (its training blur), 'none', σ, or lo hi (pixels)",
    )
    parser.add_argument("--batch-size", type=int, default=16, help="frames per batch (changes the noise)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=None, help="also write the scores here (JSON)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    return parser.parse_args(argv)


def blur_setting(words: list[str], trained: Any) -> Any:
    """The simulation's ``blur_sigma_px`` for the ``--blur`` words."""
    if words == ["checkpoint"]:
        return trained
    if words == ["none"]:
        return None
    try:
        values = [float(w) for w in words]
    except ValueError:
        raise SystemExit(
            f"--blur takes 'checkpoint', 'none', σ or lo hi in pixels, got {' '.join(words)}"
        ) from None
    if len(values) > 2 or min(values) < 0:
        raise SystemExit(f"--blur takes one σ ≥ 0 or a range lo hi, got {' '.join(words)}")
    return values[0] if len(values) == 1 else values


def score_set(
    module: pl.LightningModule, simulation: dict[str, Any], counts: tuple[int, int], args: argparse.Namespace
) -> dict[str, float]:
    """Test scores of ``module`` on ``args.frames`` frames of ``counts`` emitters each."""
    simulation = {**simulation, "emitters": {**simulation["emitters"], "count_range": list(counts)}}
    data = SimulatedDataModule(
        module.hparams["optics"],
        simulation,
        batch_size=args.batch_size,
        test_samples=args.frames,
        seed=args.seed,
    )
    trainer = pl.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    scores = trainer.test(module, datamodule=data, verbose=False)[0]
    values = {key: float(scores[f"test/{key}"]) for key in KEYS}
    # no matched pair gives no RMSE (NaN), written as null
    return {key: value if math.isfinite(value) else None for key, value in values.items()}


def _nm(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.out is not None and args.out.exists() and not args.overwrite:
        raise SystemExit(f"{args.out} exists; pass --overwrite to replace it or choose another --out")
    if not args.ckpt.is_file():
        raise SystemExit(f"checkpoint not found: {args.ckpt} (pass the path of a .ckpt written by train.py)")
    blur_setting(args.blur, None)  # a bad --blur fails before the checkpoint is loaded
    if args.threads:
        torch.set_num_threads(args.threads)
    module = load_module(args.ckpt)
    simulation = dict(module.hparams["simulation"])
    simulation["blur_sigma_px"] = blur_setting(args.blur, simulation.get("blur_sigma_px"))
    results = {name: score_set(module, simulation, SETS[name], args) for name in args.sets}
    print(
        f"checkpoint {args.ckpt}; blur {simulation['blur_sigma_px']}; {args.frames} frames per set, "
        f"seed {args.seed}"
    )
    print("| emitters per frame | Jaccard | RMSE lateral (nm) | RMSE axial (nm) | precision | recall |")
    print("|---|---|---|---|---|---|")
    for name, s in results.items():
        print(
            f"| {name} | {s['jaccard']:.3f} | {_nm(s['rmse_lat_nm'])} | {_nm(s['rmse_ax_nm'])} | "
            f"{s['precision']:.2f} | {s['recall']:.2f} |"
        )
    if args.out is not None:
        report = {
            "checkpoint": str(args.ckpt),
            "blur_sigma_px": simulation["blur_sigma_px"],
            "frames": args.frames,
            "seed": args.seed,
            "sets": results,
        }
        text = json.dumps(report, indent=1) + "\n"
        try:
            atomic_write(args.out, lambda tmp: tmp.write_text(text), overwrite=args.overwrite)
        except FileExistsError as error:
            raise SystemExit(f"{error} (or pass --overwrite)") from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
