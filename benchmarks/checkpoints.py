"""Inference speed of trained checkpoints side by side, on the real 492 × 332 mito frames, in one process.

    python benchmarks/checkpoints.py --ckpts models/storm_tetrapod.ckpt authors_storm.ckpt \\
        --labels dstorm3d authors --threads 2 --out benchmarks/results/checkpoints_cpu.md

Each checkpoint localizes the same frames through the product's ``localize_frames`` with the settings
``infer.py`` picks on this device (``tile``/``head_tile`` auto, channels-last on CPUs), after one untimed
warm-up pass; the frames are read and preprocessed once, outside the timing. The last checkpoint listed is
the baseline of the ratio column (list the slower reference last).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import default_report_path, machine_info, markdown_table, print_results, time_call, write_report  # noqa: E402

BENCHMARK = "checkpoints"
FRAMES_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "experimental" / "mito_tetrapod"


def load_frames(folder: Path, count: int) -> torch.Tensor:
    import tifffile

    files = sorted(folder.glob("*.tif"))[:count]
    if not files:
        raise SystemExit(f"error: no TIFF frames in {folder} (pass --frames-dir)")
    return torch.as_tensor(np.stack([tifffile.imread(f).astype(np.float32) for f in files]))


def main() -> None:
    from dstorm3d.inference.run import AUTO_HEAD_TILE, AUTO_TILE
    from dstorm3d.models.tiling import localize_frames
    from dstorm3d.modules.checkpoints import load_module

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ckpts", nargs="+", required=True, type=Path)
    parser.add_argument("--labels", nargs="+", default=None)
    parser.add_argument("--frames-dir", type=Path, default=FRAMES_DIR)
    parser.add_argument("--frames", type=int, default=2, help="frames per timed pass")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per checkpoint")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads; None keeps torch's")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", nargs="?", const=default_report_path(BENCHMARK), default=None, type=Path)
    args = parser.parse_args()
    labels = args.labels or [p.stem for p in args.ckpts]
    if len(labels) != len(args.ckpts):
        raise SystemExit("error: give one label per checkpoint (--labels)")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    on_cpu = device.type == "cpu"
    frames = load_frames(args.frames_dir, args.frames).to(device)
    rows, results = [], []
    for path, label in zip(args.ckpts, labels):
        module = load_module(path).to(device).eval()
        if on_cpu:
            module.net.to(memory_format=torch.channels_last)
        tile, head_tile = AUTO_TILE[on_cpu], AUTO_HEAD_TILE[on_cpu]
        if module.hparams.head["kind"] != "volume":
            head_tile = None  # head tiles exist for the volumetric head's 4× grid
        found = []

        def call(found=found, module=module, tile=tile, head_tile=head_tile) -> None:
            with torch.inference_mode():
                found.append(localize_frames(module, frames, tile=tile, head_tile=head_tile))

        timing = time_call(call, device, warmup=1, repeats=args.repeats)
        per_frame = timing.median / frames.shape[0]
        count = int(found[-1].valid.sum())
        parameters = sum(p.numel() for p in module.net.parameters())
        results.append(per_frame)
        rows.append(
            [
                label,
                module.hparams.head["kind"],
                f"{parameters:,}",
                f"{per_frame:.3f}",
                timing.rate_text(frames.shape[0]),
                f"{count / frames.shape[0]:.1f}",
            ]
        )
    baseline = results[-1]
    for row, seconds in zip(rows, results):
        row.append(f"{baseline / seconds:.1f}×")
    headers = [
        "checkpoint",
        "head",
        "parameters",
        "s per frame",
        "frames/s",
        "localizations per frame",
        f"speed vs {labels[-1]}",
    ]
    table = markdown_table(headers, rows, [False, False, True, True, True, True, True])
    machine = machine_info()
    notes = [
        f"{frames.shape[0]} frames of {frames.shape[1]}×{frames.shape[2]} px per pass; median of "
        f"{args.repeats} timed passes after one warm-up; device {device}"
    ]
    print_results([table], machine, notes)
    if args.out:
        settings = {
            "checkpoints": ", ".join(f"{lb}: {p}" for lb, p in zip(labels, args.ckpts)),
            "frames": f"{args.frames_dir} (first {frames.shape[0]})",
            "repeats": args.repeats,
            "tile / head_tile": "infer.py's auto for this device",
        }
        written = write_report(
            args.out, "Checkpoint inference speed", {"Speed": table}, machine, settings, notes
        )
        print(f"wrote {written}")


if __name__ == "__main__":
    main()
