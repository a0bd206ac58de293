"""The study scripts on tiny untrained checkpoints: fixed_sets.py and compare_models.py (tables, reports,
determinism, caching, bad input)."""

from __future__ import annotations

import csv
import importlib.util
import json
import sys

import numpy as np
import pytest
from helpers_checkpoints import save_tiny_checkpoint

from dstorm3d.utils.paths import REPO_ROOT


def fixed_sets_module():
    spec = importlib.util.spec_from_file_location("fixed_sets", REPO_ROOT / "studies" / "fixed_sets.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fixed_sets")
    return save_tiny_checkpoint(folder / "tiny.ckpt", ["model/head=offsets"], folder)


def test_scores_are_written_and_repeat_exactly(checkpoint, tmp_path, capsys):
    fixed_sets = fixed_sets_module()
    args = [str(checkpoint), "--sets", "1-3", "5", "--frames", "8", "--batch-size", "4", "--threads", "1"]
    assert fixed_sets.main([*args, "--out", str(tmp_path / "a.json")]) == 0
    assert "| 1-3 |" in capsys.readouterr().out
    fixed_sets.main([*args, "--blur", "0.5", "1.0", "--out", str(tmp_path / "b.json")])
    fixed_sets.main([*args, "--out", str(tmp_path / "c.json")])
    first, blurred, again = (json.loads((tmp_path / f"{n}.json").read_text()) for n in "abc")
    assert set(first["sets"]) == {"1-3", "5"}
    assert first["sets"] == again["sets"]  # the same frames and noise every run
    assert blurred["blur_sigma_px"] == [0.5, 1.0]
    assert blurred["sets"]["1-3"]["loss"] != first["sets"]["1-3"]["loss"]  # other frames, other loss
    for scores in first["sets"].values():
        assert 0.0 <= scores["jaccard"] <= 1.0 and 0.0 <= scores["recall"] <= 1.0


def test_existing_output_and_bad_blur_are_refused(checkpoint, tmp_path):
    fixed_sets = fixed_sets_module()
    out = tmp_path / "scores.json"
    out.write_text("keep")
    with pytest.raises(SystemExit, match="exists; pass --overwrite"):
        fixed_sets.main([str(checkpoint), "--frames", "4", "--out", str(out)])
    assert out.read_text() == "keep"
    with pytest.raises(SystemExit, match="--blur takes"):
        fixed_sets.main([str(checkpoint), "--frames", "4", "--blur", "wide"])
    with pytest.raises(SystemExit, match="checkpoint not found"):
        fixed_sets.main([str(tmp_path / "missing.ckpt")])


# --------------------------------------------------------------------------------------------- compare_models
def compare_models_module():
    spec = importlib.util.spec_from_file_location(
        "compare_models", REPO_ROOT / "studies" / "compare_models.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_poisson_fit_recovers_photons_and_background_and_deviance_is_zero_at_the_data():
    compare = compare_models_module()
    rng = np.random.default_rng(0)
    design = np.stack(
        [np.exp(-0.5 * ((np.arange(400) - c) / 6.0) ** 2) for c in (100, 130, 300)] + [np.ones(400)], axis=1
    )
    truth = np.array([500.0, 300.0, 800.0, 20.0])
    data = rng.poisson(design @ truth).astype(float)
    weights = compare.poisson_fit(design, data)
    np.testing.assert_allclose(weights, truth, rtol=0.15)  # Poisson noise on ~20 counts/px
    assert compare.poisson_deviance(data, data) == pytest.approx(0.0, abs=1e-9)
    fitted = compare.poisson_deviance(data, design @ weights)
    assert fitted < compare.poisson_deviance(data, design @ (truth * [1.5, 1, 1, 1]))  # ML beats a wrong fit
    assert 0.5 * len(data) < fitted < 1.5 * len(data)  # ~1 per pixel for a correct model


def test_compare_models_writes_one_report_and_reuses_its_cache(checkpoint, tmp_path, capsys):
    import tifffile

    compare = compare_models_module()
    frames = tmp_path / "real.tif"
    tifffile.imwrite(frames, (np.random.default_rng(1).poisson(30.0, (1, 40, 40))).astype(np.uint16))
    other = tmp_path / "other.ckpt"
    other.write_bytes(checkpoint.read_bytes())
    out = tmp_path / "compare"
    args = [
        "--ckpts",
        str(checkpoint),
        str(other),
        "--labels",
        "a",
        "b",
        "--out",
        str(out),
        "--frames",
        "2",
        "--isolated-frames",
        "2",
        "--parts",
        "storm",
        "common",
        "isolated",
        "real",
        "--real",
        str(frames),
        "--threads",
        "1",
    ]
    assert compare.main(args) == 0
    for name in (
        "report.md",
        "comparison.png",
        "comparison.csv",
        "real_frames.csv",
        "rmse_vs_z.csv",
        "storm/results.csv",
        "isolated/rmse_vs_z.csv",
    ):
        assert (out / name).is_file(), name
    report = (out / "report.md").read_text()
    assert "| Jaccard, a |" in report and "RMSE / CRLB, median over z" in report and "agreement" in report
    with open(out / "comparison.csv") as handle:
        rows = list(csv.DictReader(handle))
    storm = [r for r in rows if r["part"] == "storm"]
    assert len(storm) == 2 * 7  # two checkpoints × seven densities
    a = {r["count_per_field"]: r["jaccard"] for r in storm if r["label"] == "a"}
    b = {r["count_per_field"]: r["jaccard"] for r in storm if r["label"] == "b"}
    assert a == b  # identical weights on identical frames
    with open(out / "common_set.csv") as handle:
        common = list(csv.DictReader(handle))
    assert [int(r["count_per_field"]) for r in common] == [1, 5, 10, 20, 35]
    for row in common:  # the same localizations: every match is common, with equal errors
        assert row["only_a"] == row["only_b"] == "0"
        assert row["both_a_lat_nm"] == row["both_b_lat_nm"] and row["both_a_ax_nm"] == row["both_b_ax_nm"]
    assert "Precision on the same emitters" in report
    capsys.readouterr()
    assert compare.main(args) == 0  # the second run reuses every cached part and the real localizations
    printed = capsys.readouterr().out
    assert printed.count("cached") == 5 and printed.count("reused") == 2


def test_compare_models_refuses_bad_input_before_any_work(checkpoint, tmp_path, capsys):
    compare = compare_models_module()
    base = ["--ckpts", str(checkpoint), "--out", str(tmp_path / "o")]
    assert compare.main([*base, "--frames", "1"]) == 2
    assert compare.main([*base, "--real", str(tmp_path / "missing.tif")]) == 2
    assert (
        compare.main(
            ["--ckpts", str(tmp_path / "missing.ckpt"), "--out", str(tmp_path / "o"), "--parts", "storm"]
        )
        == 2
    )
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 3 and all(line.startswith("error: ") for line in errors)
    assert not (tmp_path / "o").exists()
