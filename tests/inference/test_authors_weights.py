"""The authors' trained network, imported into dstorm3d, reproduces the authors' own localizations."""

from __future__ import annotations

import csv
import subprocess
import sys

import numpy as np
import pytest
import tifffile
import torch
from conftest import shared_path

from dstorm3d.import_weights import build_authors_checkpoint
from dstorm3d.inference.outputs import read_localizations
from dstorm3d.metrics.matching import tolerance_agreement
from dstorm3d.modules.checkpoints import load_module
from dstorm3d.utils.paths import REPO_ROOT

CROP = (slice(100, 228), slice(200, 328))  # rows, columns of the reference crop


def authors_checkpoint(tmp_path) -> str:
    from helpers_hydra import composed
    from omegaconf import OmegaConf

    with composed("import_weights.yaml", [], tmp_path) as cfg:
        optics = OmegaConf.to_container(cfg.optics, resolve=True)
        simulation = OmegaConf.to_container(cfg.simulation, resolve=True)
    checkpoint = build_authors_checkpoint(
        shared_path("pretrained", "deepstorm3d_tetrapod_storm_weights.pkl"), optics, simulation
    )
    path = tmp_path / "authors.ckpt"
    torch.save(checkpoint, path)
    return str(path)


def reference(name: str) -> dict[int, np.ndarray]:
    with open(shared_path("reference", name)) as fh:
        rows = list(csv.DictReader(fh))
    out: dict[int, list] = {}
    for r in rows:
        out.setdefault(int(float(r["frame"])), []).append(
            [float(r["x_nm"]), float(r["y_nm"]), float(r["z_nm"])]
        )
    return {k: np.array(v) for k, v in out.items()}


def test_imported_network_matches_the_authors_on_the_reference_crop(tmp_path):
    module = load_module(authors_checkpoint(tmp_path))
    assert module.hparams.optics["mask"] == "checkpoint" and float(module.threshold) == 40.0
    expected = reference("mito_frames01-03_crop.csv")
    matched = extra = total = 0
    for frame_number in (1, 2, 3):
        frame = tifffile.imread(shared_path("experimental", "mito_tetrapod", f"{frame_number:02d}.tif"))
        crop = torch.from_numpy(frame[CROP].astype(np.float32))[None]
        with torch.no_grad():
            found = module.localize(crop)
        ours = found.per_frame()[0] * 1e3
        m, e = tolerance_agreement(ours, expected[frame_number], 2.0)
        matched, extra, total = matched + m, extra + e, total + len(expected[frame_number])
    assert total == 23
    assert matched >= 0.98 * total and extra <= 0.02 * total


@pytest.mark.slow
@pytest.mark.parametrize(
    "frames",
    [
        pytest.param((1,), id="frame1"),
        pytest.param((1, 2, 3), id="frames1-3", marks=pytest.mark.long),
    ],
)
def test_infer_cli_with_the_authors_network_matches_their_full_frames(tmp_path, frames):
    """Whole 492 × 332 frames through infer.py (one tile each: the network takes ~45 s per frame on 2
    CPU cores; tiling is checked against whole frames in test_tiling.py). CI runs frame 1; ``-m long``
    all three."""
    ckpt = authors_checkpoint(tmp_path)
    data = tmp_path / "frames"
    data.mkdir()
    for n in frames:
        (data / f"{n:02d}.tif").symlink_to(shared_path("experimental", "mito_tetrapod", f"{n:02d}.tif"))
    out = tmp_path / "out"
    result = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "infer.py"),
            f"ckpt={ckpt}",
            f"data={data}",
            f"out={out}",
            "tile=512",
            "batch_size=1",
            "num_workers=0",
            "overlay_frames=1",
            f"hydra.run.dir={out}",
        ],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    table = read_localizations(out / "localizations.csv")
    expected = reference("mito_frames01-03.csv")
    matched = extra = total = 0
    for n in frames:
        here = table["frame"] == n
        ours = np.stack([table["x"][here], table["y"][here], table["z"][here]], axis=1)
        m, e = tolerance_agreement(ours, expected[n], 2.0)
        matched, extra, total = matched + m, extra + e, total + len(expected[n])
    print(f"authors' localizations matched within 2 nm: {matched}/{total}, extra: {extra}")
    assert total >= 40 * len(frames)  # the reference has 47 on frame 1
    assert matched >= 0.98 * total and extra <= 0.02 * total
    for name in ("render.png", "render.tif", "summary.json", "overlay_frame0001.png"):
        assert (out / name).is_file()
