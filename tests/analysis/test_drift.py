"""Drift correction with COMET: a simulated recording with a known smooth 3D drift is recovered, a short
recording is skipped with its reason, and the drift is subtracted per frame.

The recording: 1500 emitters on 8 smooth 3D filaments in a 20 µm square (z 200–1000 nm), 15 ON per frame
(Markov blinking, 2 frames per ON period), 1000 frames (~15,000 localizations), noise 10 nm laterally and
25 nm axially, drift x = 150 sin(2π·0.7t), y = 150 (t² − t/2), z = 120 cos(πt) nm (t from 0 to 1): ranges
288 / 87 / 240 nm.
"""

from __future__ import annotations

import numpy as np
import pytest

from dstorm3d.analysis.drift import (
    DriftResult,
    DriftSettings,
    correct,
    drift_figure,
    drift_summary,
    estimate_drift,
    read_drift_csv,
    write_drift_csv,
)
from dstorm3d.errors import UserInputError


def drift_error(estimated: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """RMS lateral and axial error (nm) over the frames, after removing the unobservable constant offset."""
    error = estimated - truth
    error -= error.mean(axis=0)
    return float(np.sqrt((error[:, :2] ** 2).sum(1).mean())), float(np.sqrt((error[:, 2] ** 2).mean()))


def test_comet_recovers_a_known_3d_drift(sim):
    recording = sim.simulate(seed=0, frames=1000)
    locs = sim.as_localizations(recording)
    drift = estimate_drift(locs, 1000, DriftSettings())
    assert drift.applied and drift.drift_nm.shape == (1000, 3)
    np.testing.assert_array_equal(drift.drift_nm[0], 0.0)  # relative to frame 1
    lateral, axial = drift_error(drift.drift_nm, recording.drift_nm)
    # Measured (seeds 0, 1, 2): lateral 1.63, 1.42, 1.69 nm; axial 2.55, 1.91, 2.61 nm RMS (the issue asks
    # for ≤ 10 and ≤ 20 nm).
    assert lateral < 3.0 and axial < 4.0, (lateral, axial)
    assert drift.record["axial_scale"] == pytest.approx(0.4)  # median 10 nm lateral / 25 nm axial
    corrected = correct(locs, drift)
    before = locs.xyz_nm - recording.emitters_nm[recording.emitter]
    after = corrected.xyz_nm - recording.emitters_nm[recording.emitter]
    # Spread of localization − emitter: drift plus noise before (measured ~95 nm laterally), the noise
    # (10 nm per axis) plus the constant offset after.
    assert np.std(after[:, 0]) < 11.0 < 50.0 < np.std(before[:, 0])


@pytest.mark.slow
def test_scaling_z_for_comets_isotropic_kernel_lowers_the_axial_error(sim):
    recording = sim.simulate(seed=0, frames=1000)
    locs = sim.as_localizations(recording)
    auto = drift_error(estimate_drift(locs, 1000, DriftSettings()).drift_nm, recording.drift_nm)
    unscaled = drift_error(
        estimate_drift(locs, 1000, DriftSettings(axial_scale=1.0)).drift_nm, recording.drift_nm
    )
    # Measured: axial 2.55 nm (z × 0.4) vs 4.1 nm (z as is); 2000 frames: 1.26 vs 4.04 nm.
    assert auto[1] < 0.8 * unscaled[1], (auto, unscaled)


def test_a_short_recording_is_skipped_with_the_reason(sim):
    recording = sim.simulate(seed=1, frames=120)
    locs = sim.as_localizations(recording)
    drift = estimate_drift(locs, 120, DriftSettings(frames_per_window=50))
    assert not drift.applied and "drift.min_windows=4" in drift.reason and "3 window(s)" in drift.reason
    np.testing.assert_array_equal(drift.drift_nm, 0.0)
    assert correct(locs, drift) is locs
    assert drift_summary(drift)["applied"] is False


def test_the_drift_of_each_frame_is_subtracted(sim, tmp_path):
    locs = sim.table([(1, 100, 100, 500, 1), (2, 100, 100, 500, 1), (3, 100, 100, 500, 1)])
    known = np.array([[0.0, 0.0, 0.0], [10.0, -5.0, 20.0], [30.0, 0.0, -40.0]])
    corrected = correct(locs, DriftResult(known, True))
    np.testing.assert_allclose(corrected.xyz_nm, [[100, 100, 500], [90, 105, 480], [70, 100, 540]])
    result = DriftResult(known, True, record={"windows": 3, "axial_scale": 1.0})
    write_drift_csv(result, tmp_path / "drift.csv")
    assert (tmp_path / "drift.csv").read_text().splitlines()[0] == "frame,dx [nm],dy [nm],dz [nm]"
    np.testing.assert_allclose(read_drift_csv(tmp_path / "drift.csv"), np.column_stack([[1, 2, 3], known]))
    drift_figure(result, "known drift").savefig(tmp_path / "drift.png")
    assert (tmp_path / "drift.png").read_bytes()[:4] == b"\x89PNG"


def test_bad_drift_settings_are_one_line_errors():
    base = {
        "enabled": True,
        "frames_per_window": 50,
        "min_windows": 4,
        "max_drift_nm": 300.0,
        "target_sigma_nm": 5.0,
        "axial_scale": "auto",
        "backend": "auto",
    }
    assert DriftSettings.from_config(base).axial_scale is None
    for key, value, expected in [
        ("frames_per_window", 0, "drift.frames_per_window=0: must be a whole number ≥ 1"),
        ("max_drift_nm", -5, "drift.max_drift_nm=-5: must be a number > 0"),
        ("axial_scale", "big", "drift.axial_scale='big': must be a number > 0"),
        ("backend", "gpu", "drift.backend='gpu': must be one of auto, cpu, torch, cuda"),
    ]:
        with pytest.raises(UserInputError) as error:
            DriftSettings.from_config({**base, key: value})
        assert str(error.value).startswith(expected)
