"""A figure of localizations over their recording: the mean frame in grey, every localization as a dot
coloured by z, axes in µm, a colour bar. For README figures of short recordings, where a super-resolved
histogram render of a few frames is mostly empty.

    .venv/bin/python studies/localizations_figure.py logs/mito/localizations.csv \\
        ../shared/data/experimental/mito_tetrapod docs/figures/mito_localizations.png --pixel-nm 110

``--compare other.csv --labels a b`` draws a second table's localizations as open circles (e.g. another
model's on the same frames).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def mean_frame(recording: Path) -> np.ndarray:
    from dstorm3d.inference.recording import open_recording

    frames = open_recording(str(recording))
    total = np.zeros(frames.shape, dtype=np.float64)
    for index in range(len(frames)):
        total += frames[index]
    return total / len(frames)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("locs", type=Path, help="localizations.csv from infer.py")
    parser.add_argument("recording", type=Path, help="the TIFF or folder the localizations came from")
    parser.add_argument("out", type=Path, help="the PNG to write")
    parser.add_argument("--pixel-nm", type=float, default=110.0, help="camera pixel at the sample (nm)")
    parser.add_argument("--compare", type=Path, default=None, help="a second localizations.csv")
    parser.add_argument("--labels", nargs="+", default=None, help="legend names of the tables")
    parser.add_argument("--title", default="")
    args = parser.parse_args(argv)
    for path in (args.locs, args.recording, *([args.compare] if args.compare else [])):
        if not path.exists():
            print(f"error: {path} not found", file=sys.stderr)
            return 2

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dstorm3d.inference.outputs import read_localizations

    image = mean_frame(args.recording)
    height, width = image.shape
    extent_um = (0, width * args.pixel_nm / 1e3, height * args.pixel_nm / 1e3, 0)
    tables = [read_localizations(args.locs)] + ([read_localizations(args.compare)] if args.compare else [])
    labels = args.labels or [args.locs.parent.name] + ([args.compare.parent.name] if args.compare else [])
    z_all = np.concatenate([t["z"] for t in tables]) / 1e3
    z_range = (float(z_all.min()), float(z_all.max())) if len(z_all) else (0.0, 1.0)
    fig, ax = plt.subplots(figsize=(10, 10 * height / width))
    low, high = np.percentile(image, [1, 99.7])
    ax.imshow(image, cmap="gray", vmin=low, vmax=high, extent=extent_um)
    scatter = None
    for index, (table, label) in enumerate(zip(tables, labels)):
        x, y, z = table["x"] / 1e3, table["y"] / 1e3, table["z"] / 1e3
        if index == 0:
            scatter = ax.scatter(
                x,
                y,
                c=z,
                s=14,
                cmap="turbo",
                vmin=z_range[0],
                vmax=z_range[1],
                edgecolors="none",
                label=f"{label} ({len(x)})",
            )
        else:
            ax.scatter(
                x, y, s=60, facecolors="none", edgecolors="w", linewidths=0.8, label=f"{label} ({len(x)})"
            )
    if scatter is not None:
        bar = fig.colorbar(scatter, ax=ax, fraction=0.035, pad=0.02)
        bar.set_label("z above the coverslip (µm)")
    ax.set(xlabel="x (µm)", ylabel="y (µm)", title=args.title or f"{len(tables[0]['x'])} localizations")
    ax.legend(loc="lower right", fontsize=9, framealpha=0.6)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=100, bbox_inches="tight")
    plt.close(fig)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
