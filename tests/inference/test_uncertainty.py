"""Predicted uncertainties: decoded in physical units, calibrated on held-out simulated frames, written by
infer.py as the ``uncertainty_*`` columns of localizations.csv (offsets heads only), read back by
``read_localizations``, and fitted into a checkpoint by ``python -m dstorm3d.uncertainty``."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from helpers_checkpoints import FRAME_PX, save_tiny_checkpoint
from helpers_hydra import composed
from omegaconf import open_dict

from dstorm3d.emitters import Emitters
from dstorm3d.evaluation.uncertainty import (
    CALIBRATED_RANGE,
    RECORD_KEY,
    TEST_SEED,
    Measurement,
    calibrated_checkpoint,
    fit_uncertainty_scale,
    is_calibrated,
    measure,
    simulated_set,
    uncertainty_scale,
    z_score_summary,
    z_scores,
)
from dstorm3d.inference.outputs import UNCERTAINTY_COLUMNS, UNCERTAINTY_KEYS, read_localizations
from dstorm3d.models.tiling import localize_frames
from dstorm3d.modules.checkpoints import load_module
from dstorm3d.postprocess.offsets import decode_offsets

REPO = Path(__file__).resolve().parents[2]
STORM = REPO / "models" / "storm_tetrapod.ckpt"
BASE_COLUMNS = ["id", "frame", "x [nm]", "y [nm]", "z [nm]"]


@pytest.fixture(scope="module")
def storm():
    return load_module(STORM)


def header(path: Path) -> list[str]:
    with open(path, newline="") as handle:
        return next(csv.reader(handle))


# ---------------------------------------------------------------------------------------------- calibration
def test_the_shipped_storm_model_is_calibrated_on_held_out_simulated_frames(storm):
    """512 fixed-seed 64×64 crops of the model's own training distribution (seed 20261, never used for
    fitting), 1,391 matched localizations. Measured z-score std x / y / z / photons: 1.000 / 1.029 / 1.022 /
    0.965 with the checkpoint's factors; 1.086 / 1.143 / 0.960 / 0.986 with the raw σ (y outside 0.9–1.1).
    Tolerance: the issue's 0.9–1.1 band."""
    scale = uncertainty_scale(storm)
    assert all(v != 1.0 for v in scale.values())  # the shipped file carries fitted factors
    data = simulated_set(storm, 512, TEST_SEED)
    measured = measure(storm, data, scale)  # as the checkpoint decodes: with its factors
    calibrated = measured.summary
    # σ is linear in the factor, so the raw head's z-scores are these times it (one network pass, not two)
    raw = z_score_summary({axis: z * scale[axis] for axis, z in measured.scores.items()})
    assert calibrated["x"]["pairs"] > 1000
    lo, hi = CALIBRATED_RANGE
    for axis, values in calibrated.items():
        assert lo <= values["std"] <= hi, (axis, calibrated)
    assert is_calibrated(calibrated)
    assert not is_calibrated(raw) and raw["y"]["std"] > hi, raw  # the uncalibrated head fails on y


def test_fitted_factors_make_the_z_score_rms_one():
    rng = np.random.default_rng(0)
    spread = {"x": 2.0, "y": 0.5, "z": 1.0, "photons": 1.5}
    scores = {axis: rng.normal(0.0, s, 20_000) for axis, s in spread.items()}
    raw = Measurement(seed=0, frames=1, scale={a: 1.0 for a in spread}, scores=scores)
    factors = fit_uncertainty_scale(raw)
    for axis, s in spread.items():
        assert factors[axis] == pytest.approx(s, rel=0.02)  # sampling error of 20,000 draws: ~0.5 %
    # measured under factors already in use, the fit multiplies into them
    twice = Measurement(0, 1, {a: 2.0 for a in spread}, {a: z / 2.0 for a, z in scores.items()})
    assert fit_uncertainty_scale(twice) == pytest.approx(factors)
    calibrated = z_score_summary({a: z / factors[a] for a, z in scores.items()})
    assert all(v["rms"] == pytest.approx(1.0, abs=1e-9) for v in calibrated.values())


def test_z_scores_divide_matched_errors_by_the_predicted_sigma_and_skip_dim_emitters():
    truth = Emitters(
        xyz=torch.tensor([[[1.0, 1.0, 1.0], [3.0, 3.0, 2.0], [5.0, 5.0, 1.0]]]),
        photons=torch.tensor([[8000.0, 9000.0, 3000.0]]),
        valid=torch.tensor([[True, True, True]]),
        labelled=torch.tensor([[True, True, False]]),  # the third is dim: rendered, not ground truth
    )
    sigma = torch.tensor([[[0.01, 0.02, 0.04, 500.0], [0.02, 0.02, 0.05, 100.0], [0.01, 0.01, 0.01, 1.0]]])
    pred = Emitters(
        xyz=torch.tensor([[[1.01, 0.98, 1.02], [3.0, 3.0, 1.95], [5.0, 5.0, 1.0]]]),
        photons=torch.tensor([[9000.0, 8900.0, 3000.0]]),
        valid=torch.ones(1, 3, dtype=torch.bool),
        score=torch.ones(1, 3),
        sigma=sigma,
    )
    scores = z_scores(pred, truth)
    assert np.allclose(scores["x"], [1.0, 0.0], atol=1e-4)
    assert np.allclose(scores["y"], [-1.0, 0.0], atol=1e-4)
    assert np.allclose(scores["z"], [0.5, -1.0], atol=1e-4)
    assert np.allclose(scores["photons"], [2.0, -1.0], atol=1e-6)
    with pytest.raises(ValueError, match="no predicted uncertainties"):
        z_scores(Emitters(pred.xyz, pred.photons, pred.valid), truth)


def test_decoding_applies_the_factors_in_physical_units():
    out = {key: torch.zeros(1, 6, 6) for key in ("x_offset", "y_offset", "z", "photons")}
    out["logit"] = torch.full((1, 6, 6), -10.0)
    out["logit"][0, 2, 3] = 5.0
    for key in ("x_sigma", "y_sigma", "z_sigma", "photons_sigma"):
        out[key] = torch.full((1, 6, 6), 0.1)
    px, z_range, photon_scale = 0.11, (0.0, 4.0), 30_000.0
    raw = decode_offsets(out, px, z_range, photon_scale)
    assert torch.allclose(raw.sigma[0, 0], torch.tensor([0.011, 0.011, 0.4, 3000.0]))
    scaled = decode_offsets(out, px, z_range, photon_scale, uncertainty_scale={"y": 2.0, "photons": 0.5})
    assert torch.allclose(scaled.sigma[0, 0], torch.tensor([0.011, 0.022, 0.4, 1500.0]))
    with pytest.raises(ValueError, match="unknown uncertainty_scale axis"):
        decode_offsets(out, px, z_range, photon_scale, uncertainty_scale={"w": 2.0})
    with pytest.raises(ValueError, match="> 0"):
        decode_offsets(out, px, z_range, photon_scale, uncertainty_scale={"x": 0.0})


def test_calibrated_checkpoint_keeps_the_weights_and_stores_plain_numbers(storm, tmp_path):
    from dstorm3d.evaluation.uncertainty import Calibration

    axes = ("x", "y", "z", "photons")
    empty = Measurement(1, 16, {a: 1.0 for a in axes}, {a: np.array([0.5, -1.5]) for a in axes})
    calibration = Calibration({"x": 1.5, "y": 2.0, "z": 0.5, "photons": 1.25}, empty, empty, empty)
    out = calibrated_checkpoint(STORM, tmp_path / "c.ckpt", calibration)
    raw = torch.load(out, map_location="cpu", weights_only=True)  # plain data
    before = torch.load(STORM, map_location="cpu", weights_only=True)
    assert all(torch.equal(raw["state_dict"][k], v) for k, v in before["state_dict"].items())
    assert raw["hyper_parameters"]["head"]["postprocess"]["uncertainty_scale"] == calibration.scale
    assert raw[RECORD_KEY]["scale"] == calibration.scale
    assert uncertainty_scale(load_module(out)) == calibration.scale
    with pytest.raises(FileExistsError):
        calibrated_checkpoint(STORM, out, calibration)


# ---------------------------------------------------------------------------------------------- infer.py
def run_infer(ckpt: Path, recording: Path, out: Path, workdir: Path, *extra: str) -> dict:
    from dstorm3d.inference.run import infer

    overrides = [
        f"ckpt={ckpt}",
        f"recording={recording}",
        f"out={out}",
        "num_workers=0",
        "overlay_frames=0",
        "trainer.accelerator=cpu",
        *extra,
    ]
    with composed("infer.yaml", overrides, workdir) as cfg:
        with open_dict(cfg):
            cfg.pop("hydra")
        return infer(cfg)


def test_infer_writes_calibrated_uncertainty_columns_for_an_offsets_head(storm, tmp_path):
    data = simulated_set(storm, 3, TEST_SEED)
    frames = np.clip(np.round(data.frames.numpy()), 0, 65535).astype(np.uint16)
    tifffile.imwrite(tmp_path / "rec.tif", frames, photometric="minisblack")
    # 32-px tiles: the σ of every localization is stitched from the tile whose core holds it
    summary = run_infer(STORM, tmp_path / "rec.tif", tmp_path / "out", tmp_path, "tile=32")
    csv_path = tmp_path / "out" / "localizations.csv"
    assert header(csv_path) == [*BASE_COLUMNS, "intensity [photon]", "confidence", *UNCERTAINTY_COLUMNS]
    assert summary["uncertainty_scale"] == uncertainty_scale(storm)
    table = read_localizations(csv_path)
    with torch.no_grad():
        expected = localize_frames(storm, torch.from_numpy(frames.astype(np.float32)))
    assert len(table["x"]) == int(expected.counts().sum()) > 5
    # tiles list a frame's localizations tile by tile: compare both tables sorted by frame, x, y
    frame_index = torch.arange(3).unsqueeze(1).expand_as(expected.valid)[expected.valid].numpy() + 1
    xyz = expected.xyz[expected.valid].double().numpy() * 1e3
    sigma = expected.sigma[expected.valid].double().numpy()
    sigma[:, :3] *= 1e3  # µm → nm
    ours = np.lexsort((xyz[:, 1], xyz[:, 0], frame_index))
    theirs = np.lexsort((table["y"], table["x"], table["frame"]))
    assert np.allclose(table["x"][theirs], xyz[ours, 0], atol=2e-3)
    sigma = sigma[ours]
    got = np.stack([table[key] for key in UNCERTAINTY_KEYS], axis=1)[theirs]
    assert np.allclose(got[:, :3], sigma[:, :3], atol=2e-3)  # written with 3 decimals (nm)
    assert np.allclose(got[:, 3], sigma[:, 3], rtol=1e-5)  # 6 significant digits (photons)
    # tens of nm laterally, larger axially, as the model's RMSE on such crops (34 / 46 nm at validation)
    assert 5 < np.median(got[:, 0]) < 80 and 5 < np.median(got[:, 2]) < 150


def test_a_volume_head_writes_the_table_as_before(tmp_path):
    ckpt = save_tiny_checkpoint(tmp_path / "volume.ckpt", ["model/head=volume"], tmp_path)
    frames = np.random.default_rng(1).poisson(40.0, (2, FRAME_PX, FRAME_PX)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "rec.tif", frames, photometric="minisblack")
    summary = run_infer(ckpt, tmp_path / "rec.tif", tmp_path / "out", tmp_path)
    csv_path = tmp_path / "out" / "localizations.csv"
    assert header(csv_path) == [*BASE_COLUMNS, "intensity [au]", "confidence"]
    assert summary["uncertainty_scale"] is None
    table = read_localizations(csv_path)
    assert set(table) == {"frame", "x", "y", "z", "confidence", "intensity"}


def test_read_localizations_reads_both_forms(tmp_path):
    plain = tmp_path / "plain.csv"
    plain.write_text(
        '"id","frame","x [nm]","y [nm]","z [nm]","intensity [photon]","confidence"\n1,1,5,6,7,100,0.9\n'
    )
    table = read_localizations(plain)
    assert table["x"].tolist() == [5.0] and not set(UNCERTAINTY_KEYS) & set(table)
    full = tmp_path / "full.csv"
    columns = ",".join(f'"{c}"' for c in UNCERTAINTY_COLUMNS)
    full.write_text(
        f'"id","frame","x [nm]","y [nm]","z [nm]","intensity [photon]","confidence",{columns}\n'
        "1,2,5,6,7,100,0.9,11.5,12.5,30.25,400\n"
    )
    table = read_localizations(full)
    assert [table[k][0] for k in UNCERTAINTY_KEYS] == [11.5, 12.5, 30.25, 400.0]
    assert table["frame"].tolist() == [2.0]


# ---------------------------------------------------------------------------------------------- the command
def test_the_command_writes_a_calibrated_copy_and_refuses_a_volume_head(tmp_path, capsys):
    from dstorm3d.uncertainty import run
    from dstorm3d.utils.cli import UserInputError

    out = tmp_path / "calibrated.ckpt"
    overrides = [f"ckpt={STORM}", f"out={out}", f"figure={tmp_path / 'z.png'}", "frames=16", "threads=1"]
    with composed("uncertainty.yaml", overrides, tmp_path) as cfg:
        record = run(cfg)
    printed = capsys.readouterr().out
    assert "raw σ" in printed and "calibrated" in printed and (tmp_path / "z.png").stat().st_size > 10_000
    saved = torch.load(out, map_location="cpu", weights_only=True)
    assert saved["hyper_parameters"]["head"]["postprocess"]["uncertainty_scale"] == record["scale"]
    assert json.loads(json.dumps(saved[RECORD_KEY]))["test_after"]["frames"] == 16  # plain data
    with (
        composed("uncertainty.yaml", overrides, tmp_path) as cfg,
        pytest.raises(UserInputError, match="exists"),
    ):
        run(cfg)
    volume = save_tiny_checkpoint(tmp_path / "volume.ckpt", ["model/head=volume"], tmp_path)
    with (
        composed("uncertainty.yaml", [f"ckpt={volume}", "frames=16"], tmp_path) as cfg,
        pytest.raises(UserInputError, match="predicts no uncertainties"),
    ):
        run(cfg)
