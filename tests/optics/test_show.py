"""The ``python -m dstorm3d.optics.show`` CLI, run for real in a subprocess (small windows, few depths)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from matplotlib.image import imread

from dstorm3d.optics.masks import save_phase_mask, tetrapod_mask
from dstorm3d.optics.setup import storm_setup
from dstorm3d.optics.show import CRLB_COLUMNS, OUTPUT_FILES
from dstorm3d.utils.cli import EXIT_USAGE

REPO_ROOT = Path(__file__).resolve().parents[2]
QUICK = ["show.z_slices=5", "show.window_px=24", "show.crlb_z_points=5", "show.crlb_window_px=64"]


def run_show(run_dir: Path, *overrides: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MPLBACKEND": "Agg", "MPLCONFIGDIR": str(run_dir.parent / "mplconfig")}
    command = [sys.executable, "-m", "dstorm3d.optics.show", *overrides, f"hydra.run.dir={run_dir}"]
    return subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_show_writes_sane_files(tmp_path):
    run_dir = tmp_path / "run"
    result = run_show(run_dir, "optics=storm", *QUICK)
    assert result.returncode == 0, result.stderr
    assert str(run_dir) in result.stdout
    for name in OUTPUT_FILES:
        assert (run_dir / name).is_file(), name

    with tifffile.TiffFile(run_dir / "psf_zstack.tif") as tif:
        stack = tif.asarray()
        description = json.loads(tif.imagej_metadata["Info"])
        assert tif.series[0].axes == "ZYX" and tif.imagej_metadata["spacing"] == pytest.approx(1.0)
    assert stack.shape == (5, 24, 24) and stack.dtype == np.float32
    np.testing.assert_allclose(description["z_um"], np.linspace(0.0, 4.0, 5))
    fractions = stack.sum(axis=(1, 2))
    assert np.all(stack >= 0) and np.all((fractions > 0.1) & (fractions <= 1.0 + 1e-5))

    for name in ("psf_montage.png", "phase_mask.png", "crlb.png"):
        image = imread(run_dir / name)
        assert image.ndim == 3 and min(image.shape[:2]) > 100 and image.std() > 0, name

    with open(run_dir / "crlb.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == CRLB_COLUMNS and len(rows) == 5
    bounds = np.array([[float(row[key]) for key in ("x_nm", "y_nm", "z_nm")] for row in rows])
    assert np.all(np.isfinite(bounds)) and np.all(bounds > 0) and np.all(bounds < 100)

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["setup"]["name"] == "storm" and summary["setup"]["pupil_grid"] == 203
    assert summary["mask"] == {"kind": "built-in", "name": "tetrapod"}
    assert summary["crlb"]["photons"] == 30000 and summary["crlb"]["background"] == 150
    means = [summary["crlb"]["mean_nm"][axis] for axis in ("x", "y", "z")]
    np.testing.assert_allclose(means, bounds.mean(axis=0), rtol=1e-4)


def test_show_reads_a_mask_file_and_applies_emccd(tmp_path):
    setup = storm_setup()
    mask_path = save_phase_mask(tetrapod_mask(setup), tmp_path / "tetrapod.npy")
    run_dir = tmp_path / "run"
    result = run_show(
        run_dir,
        "optics=storm",
        f"optics.mask={mask_path}",
        "show.emccd=true",
        "show.shared_colour_scale=false",
        *QUICK,
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["mask"]["kind"] == "file" and summary["mask"]["path"] == str(mask_path.resolve())
    assert summary["crlb"]["emccd"] is True and summary["psf"]["colour_scale"] == "per slice"


@pytest.mark.parametrize(
    "override, phrase",
    [
        ("optics.na=1.6", "optics.na"),
        ("optics.mask=/no/such/mask.npy", "not found"),
        ("show.window_px=400", "window"),
    ],
)
def test_bad_input_ends_with_one_line_and_no_files(tmp_path, override, phrase):
    run_dir = tmp_path / "run"
    result = run_show(run_dir, "optics=storm", *QUICK, override)  # the override comes last: it wins
    assert result.returncode == EXIT_USAGE
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and phrase in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    for name in OUTPUT_FILES:
        assert not (run_dir / name).exists(), name
