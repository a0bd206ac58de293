"""The SMLM Challenge 2016 study end to end on a reduced budget (studies/smlm2016.py as a user runs it):
the committed calibration → the conditions estimate → a short training of the challenge localizer → infer
→ the challenge's scoring of the CNN and of the classical fitter on the 64 MT0.N1.LD frames.

The full-budget figures are in studies/results/smlm2016/report.md; here the training is cut to
REDUCED_STEPS steps, so the CNN's floor is that of a short training, not the study's result."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest
from conftest import shared_path

from dstorm3d.utils.paths import REPO_ROOT

EPOCHS, TRAIN_SAMPLES = 3, 512  # 3 × 32 steps of batch 16
REDUCED_STEPS = EPOCHS * TRAIN_SAMPLES // 16


@pytest.mark.data
@pytest.mark.slow
def test_the_challenge_study_runs_end_to_end_and_scores_both_methods(tmp_path):
    shared_path("external", "smlm2016", "mt0_n1_ld_as", "frames_0001-0064.tif")
    shared_path("external", "smlm2016", "mt0_n1_ld_as", "ground_truth_0001-0064.csv")
    out = tmp_path / "smlm2016"
    command = [
        sys.executable,
        str(REPO_ROOT / "studies" / "smlm2016.py"),
        "--out",
        str(out),
        "--epochs",
        str(EPOCHS),
        "--train-samples",
        str(TRAIN_SAMPLES),
        "--train-args",
        "data.val_samples=64",
        "test=false",
        "trainer.num_sanity_val_steps=0",
    ]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    scores = {row["method"]: row for row in report["scores"]}
    assert report["truth_rows"] == 67 and report["truth_shift_nm"] == 0.0
    # the classical fitter on the calibrated PSF (not trained; the same as the full study): measured
    # Jaccard 0.821 (55 of 67 found, no false one), RMSE 31.9 / 45.5 nm
    fitter = scores["fitter"]
    assert fitter["jaccard"] >= 0.78 and fitter["fp"] <= 2
    assert fitter["rmse_lat_nm"] <= 40 and fitter["rmse_ax_nm"] <= 55
    # the ground truth's lateral origin is the calibrated model's (aligned to the beads' positions file):
    # the fitter's matched pairs are off by (+3.9, +2.5) nm in the calibration check; measured here
    # (+4.9, +8.5) nm
    origin = report["origin"]["fitter"]
    assert abs(origin["bias_x_nm"]) <= 15 and abs(origin["bias_y_nm"]) <= 15
    # the CNN after REDUCED_STEPS = 96 steps: measured Jaccard 0.686 (48 found, 3 false; RMSE 68 / 119 nm)
    # with torch on 2 threads, 0.507 on 1 thread (pytest -n 2): so short a training depends on the
    # arithmetic's order; an untrained network finds nothing (the full study's 12,500 steps: 0.821)
    cnn = scores["cnn"]
    assert cnn["jaccard"] >= 0.45 and cnn["rmse_lat_nm"] <= 90
    assert (out / "report.md").read_text().startswith("# SMLM Challenge 2016")


@pytest.mark.data
@pytest.mark.slow
def test_the_shipped_challenge_model_scores_its_measured_jaccard(tmp_path):
    """models/smlm2016_as.ckpt (the full study's CNN) on the 64 frames, scored with the challenge's rules."""
    frames = shared_path("external", "smlm2016", "mt0_n1_ld_as", "frames_0001-0064.tif")
    truth = shared_path("external", "smlm2016", "mt0_n1_ld_as", "ground_truth_0001-0064.csv")
    out = tmp_path / "cnn"
    command = [
        sys.executable,
        str(REPO_ROOT / "infer.py"),
        f"ckpt={REPO_ROOT / 'models' / 'smlm2016_as.ckpt'}",
        f"data={frames}",
        "axes=TYX",
        f"out={out}",
        "overlay_frames=0",
        f"hydra.run.dir={tmp_path / 'hydra'}",
    ]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]

    spec = importlib.util.spec_from_file_location("smlm2016", REPO_ROOT / "studies" / "smlm2016.py")
    study = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study)
    study.convert_truth(truth, tmp_path / "truth.csv", 0.0, study.nfp_of(study.COMMITTED_PSF))
    record = study.score(
        out / "localizations.csv", tmp_path / "truth.csv", tmp_path / "score", tmp_path / "log"
    )
    row = study.summary_row("cnn", record)
    # measured: Jaccard 0.821 (55 / 0 / 12), RMSE 32.4 / 51.3 nm (studies/results/smlm2016/report.md; the
    # fitter's is 0.821 too); the floor allows one emitter less (54 / 67 = 0.806)
    assert row["jaccard"] >= 0.80 and row["fp"] <= 1
    assert row["rmse_lat_nm"] <= 37 and row["rmse_ax_nm"] <= 56
