"""The STORM model shipped in models/: plain data, small, and still as good as when it was trained.

A regression guard: the shipped checkpoint scores a fixed simulated STORM set (121×121 px frames of the
training distribution, 10 emitters per 13.3 × 13.3 µm² field) above a floor that an untrained network of
the same architecture falls far below, and on the real mito frame 01 it finds most of what the authors'
network found (their own localizations, ../shared/data/reference).
"""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from conftest import shared_path
from omegaconf import OmegaConf

from dstorm3d.evaluation.sweep import (
    build_test_set,
    checkpoint_physics,
    localize_with_network,
    score_point,
    settings_from_config,
)
from dstorm3d.metrics.matching import match_frame
from dstorm3d.modules.checkpoints import load_module
from dstorm3d.utils.paths import REPO_ROOT

SHIPPED = REPO_ROOT / "models" / "storm_tetrapod.ckpt"
STORM_CAMERA = {
    "kind": "readout",
    "baseline": [20.0, 40.0],
    "read_noise": [8.0, 12.0],
    "read_noise_correlation_px": 16.0,
}
# Measured on these 12 frames (seed 7, 10 per field, 83 labelled emitters) with the shipped checkpoint:
# Jaccard 0.812 (69 TP, 2 FP, 14 FN), RMSE 23.2 / 37.2 nm; an untrained network of the same architecture:
# Jaccard 0.000. Floors leave room for arithmetic drift (about one tenth).
JACCARD_FLOOR = 0.72
RMSE_LAT_CEILING_NM = 30.0
RMSE_AX_CEILING_NM = 47.0


def fixed_set_scores(module) -> dict[str, float]:
    """Scores on 12 fixed-seed 121×121 frames of the STORM training distribution (10 per field)."""
    config = OmegaConf.create(
        {
            "counts": [10],
            "frames": 12,
            "seed": 7,
            "reference_field_px": 121,
            "frame_shape": [121, 121],
            "conditions": [
                {
                    "name": "storm",
                    "photons": {"kind": "gamma", "shape": 3.0, "scale": 3000.0},
                    "background": {"kind": "none"},
                    "camera": STORM_CAMERA,
                }
            ],
            "camera": {"kind": "ideal"},
            "emitters": {"label_min_photons": 6000.0, "margin_px": 8},
            "blur_sigma_px": "checkpoint",
            "optics": {},
            "matching_nm": 150.0,
            "z_bins": 8,
            "batch_size": 4,
            "tile": None,
            "threshold": None,
            "device": "cpu",
            "crlb_window": None,
            "baseline": False,
            "mp": {},
        }
    )
    settings = settings_from_config(config)
    test_set = build_test_set(checkpoint_physics(module, settings), settings.conditions[0], 10, settings)
    pred = localize_with_network(module, test_set.frames, 4, torch.device("cpu"))
    return score_point(pred, test_set.truth, 150.0)


@pytest.fixture(scope="module")
def shipped():
    return load_module(SHIPPED)


def test_shipped_checkpoint_is_small_plain_data():
    assert SHIPPED.stat().st_size <= 5 * 1024 * 1024
    raw = torch.load(SHIPPED, map_location="cpu", weights_only=True)  # plain data only
    assert (
        "optimizer_states" not in raw
    )  # an inference copy (dstorm3d.modules.checkpoints.export_for_inference)
    assert raw["hyper_parameters"]["head"]["kind"] == "offsets"
    assert raw["hyper_parameters"]["optics"]["name"] == "storm_printed"


def test_shipped_model_scores_the_fixed_storm_set_above_its_floor(shipped):
    scores = fixed_set_scores(shipped)
    assert scores["jaccard"] >= JACCARD_FLOOR, scores
    assert scores["rmse_lat_nm"] <= RMSE_LAT_CEILING_NM, scores
    assert scores["rmse_ax_nm"] <= RMSE_AX_CEILING_NM, scores


def test_an_untrained_network_fails_the_same_floor(shipped):
    torch.manual_seed(0)
    untrained = type(shipped)(**shipped.hparams).eval()  # same architecture and threshold, fresh weights
    untrained.threshold = shipped.threshold
    assert fixed_set_scores(untrained)["jaccard"] < 0.5 * JACCARD_FLOOR


def test_shipped_model_finds_what_the_authors_network_found_on_real_frame_01(shipped):
    import tifffile

    from dstorm3d.models.tiling import localize_frames

    frame = tifffile.imread(shared_path("experimental", "mito_tetrapod", "01.tif")).astype(np.float32)
    with torch.inference_mode():
        found = localize_frames(shipped, torch.as_tensor(frame)[None])
    ours = found.xyz[0][found.valid[0]].numpy()
    with open(shared_path("reference", "mito_frames01-03.csv")) as handle:
        rows = [r for r in csv.DictReader(handle) if float(r["frame"]) == 1]
    theirs = np.array([[float(r["x_nm"]), float(r["y_nm"]), float(r["z_nm"])] for r in rows]) / 1e3
    match = match_frame(ours, theirs, threshold_nm=150.0)
    # measured: 37 of the authors' 47 localizations matched within 150 nm (79 %); ours: 54 in all
    assert len(theirs) == 47
    assert match.tp >= 0.65 * len(theirs), (match.tp, len(theirs), len(ours))
