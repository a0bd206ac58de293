"""The SMLM Challenge 2016 astigmatic bead stack (../shared/data/external/smlm2016/beads_as): the calibrated
scalar pupil model explains the measured PSF, and the beads' positions file uses dstorm3d's pixel-corner
origin. Skipped with the reason when the shared data is absent."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import shared_path
from helpers_hydra import composed

from dstorm3d.calibrate import calibrate


@pytest.mark.slow
def test_the_calibrated_model_explains_the_challenge_beads(tmp_path):
    """Every 3rd slice (51 of 151) of the 6 beads, 25-px windows, pupil grid 96, Zernike up to Noll 28,
    3 amplitude terms, focus at slice 76 (z = 0 of the challenge), step scale 1, EMCCD F² = 2; 85 s on one
    core. The whole stack (studies/results/smlm2016_calibration) gives the same numbers within 0.01."""
    torch.set_num_threads(2)
    folder = shared_path("external", "smlm2016", "beads_as")
    args = [
        f"beads={folder / 'beads_AS_zstack.tif'}",
        f"reference_positions={folder / 'beads_AS_positions.csv'}",
        "focus_slice=76",
        "slice_stride=3",
        "fit.fit_step_scale=false",
        f"out={tmp_path / 'cal'}",
    ]
    with composed("calibrate.yaml", args, tmp_path) as cfg:
        record = calibrate(cfg)
    per_slice = {key: np.asarray(value) for key, value in record["per_slice"].items()}
    inside = np.abs(per_slice["z_nm"]) <= 600
    # measured (every 3rd slice): deviance/dof 1.381, Pearson χ²/dof 1.381, bead-summed per-slice
    # correlation ≥ 0.9906 within ±600 nm (noise ceiling there ≥ 0.9965), blur σ 1.262 px
    assert record["statistics"]["deviance_per_dof"] < 1.42
    assert per_slice["correlation"][inside].min() >= 0.988
    assert len(record["beads_table"]) == 6 and not record["rejected"]
    assert record["model"]["blur_sigma_px"] == pytest.approx(1.26, abs=0.03)
    # the positions file: pixel-corner origin, offset (−17.4, +47.7) nm from the model's origin, the same
    # for every bead within 1 nm (measured spread 0.2, 0.3 nm)
    reference = record["reference_positions"]
    assert reference["convention"] == "corner"
    assert np.allclose(reference["mean_offset_nm_if_corner"], [-17, 48], atol=5)
    assert max(reference["offset_spread_nm"]) < 1.0
