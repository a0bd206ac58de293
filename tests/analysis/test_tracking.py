"""3D tracking (dstorm3d.analysis.tracking) on telomere-like movies: emitters diffusing with the simulator's
motion model (:mod:`dstorm3d.simulation.motion`), localized as the true positions plus Gaussian noise
(15 nm lateral, 30 nm axial) with 5 % of the localizations missed, no CNN.

The paper's Fig. 6 tracks 48 telomeres in a live cell at 10 Hz over 50 s (500 frames); the field here is the
paper's 121 × 121 px of 110 nm (13.3 µm) over its telomere z range 2–6 µm. The paper gives no D; telomeres
move with D of the order of 10⁻³–10⁻² µm²/s at sub-second lags, so the movies use D = 0.005 µm²/s (3D step
RMS 55 nm per frame, about the localization error) and a 10× faster one.
"""

from __future__ import annotations

import functools
import json

import numpy as np
import pandas as pd
import pytest
from helpers_tracking import FRAME_INTERVAL_S, MISSED, TELOMERE_D, TELOMERES, diffusing_truth, localize

from dstorm3d.analysis.tracking import (
    MSD_FILE,
    OUTPUT_FILES,
    SUMMARY_FILE,
    TRACKS_FILE,
    TrackingSettings,
    diffusion_coefficient,
    linking_score,
    msd,
    run_tracking,
    table_from_arrays,
    track,
)
from dstorm3d.errors import UserInputError


@functools.cache
def movie(diffusion_um2_per_s: float, frames: int, emitters: int = TELOMERES, max_distance_nm: float = 500.0):
    """``(truth, tracks)`` of a seed-0 movie, tracked with gaps ≤ 2 frames and tracks ≥ 10 localizations."""
    truth = diffusing_truth(0, emitters, frames, diffusion_um2_per_s)
    return truth, track(localize(truth, 0), max_distance_nm, max_gap_frames=2, min_length=10)


# ---------------------------------------------------------------------------------------- the musts
def test_diffusion_coefficient_of_telomere_like_emitters_is_found_within_10_percent():
    _, tracks = movie(TELOMERE_D, 500)
    curves = msd(tracks, FRAME_INTERVAL_S, max_lag=20)
    fit = diffusion_coefficient(curves.ensemble, fit_lags=4)
    # measured: D = 0.00487 µm²/s (−2.6 %; seeds 0–9: −2.6 … +1.8 %, the reflecting walls lower it ~1 %)
    assert fit.diffusion_um2_per_s == pytest.approx(TELOMERE_D, rel=0.10)
    # the offset is the localization error: 2·(15² + 15² + 30²) = 2700 nm², √(2700/6) = 21.2 nm per axis;
    # measured 2783 nm², 21.5 nm
    assert fit.offset_um2 * 1e6 == pytest.approx(2700.0, rel=0.15)
    assert fit.localization_error_nm == pytest.approx(21.2, rel=0.1)
    # 48 telomeres: a track breaks only where 3 frames in a row are missed (measured 53 tracks)
    assert TELOMERES <= tracks["track_id"].nunique() <= 60


@pytest.mark.parametrize(("diffusion_um2_per_s", "frames"), [(TELOMERE_D, 500), (10 * TELOMERE_D, 200)])
def test_linking_accuracy_at_the_papers_telomere_density(diffusion_um2_per_s, frames):
    truth, tracks = movie(diffusion_um2_per_s, frames)
    score = linking_score(tracks, truth)
    # measured accuracy 1.0000 (0 wrong of 22,709 steps) and 0.9998 (2 wrong of 9,059); must be ≥ 0.95
    assert score.accuracy >= 0.95, score
    assert score.steps > 0.9 * TELOMERES * (frames - 1) * (1 - MISSED)
    assert score.unmatched == 0  # every localization lies within 150 nm of its emitter
    # each missed localization removes two true steps: completeness ≈ 1 − 2·5 % (measured 0.900, 0.903)
    assert score.completeness == pytest.approx(1 - 2 * MISSED, abs=0.02)


def test_linking_accuracy_falls_when_emitters_are_too_dense_and_fast_to_link():
    """400 emitters per field moving 550 nm per frame (D = 0.5 µm²/s): the score sees the wrong links."""
    truth = diffusing_truth(1, 400, 30, 0.5)
    tracks = track(localize(truth, 1), 1500.0, max_gap_frames=2, min_length=5)
    score = linking_score(tracks, truth)
    assert score.accuracy < 0.9 and score.wrong > 0.1 * score.steps, score  # measured 0.742, 2,805 wrong


# ---------------------------------------------------------------------------------------- the pieces
def straight_track(frames: np.ndarray, velocity_nm: tuple[float, float, float]) -> pd.DataFrame:
    """One emitter moving at a constant ``velocity_nm`` per frame, seen in ``frames``."""
    xyz = np.asarray(velocity_nm)[None, :] * frames[:, None] + np.array([5000.0, 5000.0, 3000.0])
    return table_from_arrays(frames, xyz, emitter_id=np.ones(len(frames), dtype=np.int64))


def test_gaps_up_to_max_gap_frames_are_closed_and_short_tracks_dropped():
    frames = np.array([1, 2, 3, 4, 7, 8, 9, 10])  # frames 5 and 6 missed
    locs = straight_track(frames, (40.0, -30.0, 20.0))
    assert track(locs, 500.0, max_gap_frames=2, min_length=2)["track_id"].tolist() == [1] * 8
    split = track(locs, 500.0, max_gap_frames=1, min_length=2)
    assert split["track_id"].tolist() == [1, 1, 1, 1, 2, 2, 2, 2]
    assert len(track(locs, 500.0, max_gap_frames=1, min_length=5)) == 0
    # a link longer than max_distance_nm is refused (a step here is 54 nm, 3 frames 162 nm)
    assert track(locs, 100.0, max_gap_frames=2, min_length=2)["track_id"].nunique() == 2


def test_msd_of_a_straight_track_is_the_squared_lag_times_speed_and_gaps_drop_pairs():
    frames = np.array([1, 2, 3, 5, 6])  # pairs at lag 1: (1,2) (2,3) (5,6); lag 2: (1,3) (3,5); lag 3: (2,5)…
    tracks = straight_track(frames, (30.0, 40.0, 0.0)).assign(track_id=1)  # 50 nm per frame
    curves = msd(tracks, FRAME_INTERVAL_S, max_lag=6)
    ensemble = curves.ensemble
    np.testing.assert_array_equal(ensemble["lag [frames]"], [1, 2, 3, 4, 5])
    np.testing.assert_array_equal(ensemble["pairs"], [3, 2, 2, 2, 1])
    np.testing.assert_allclose(ensemble["msd [µm²]"], (0.05 * ensemble["lag [frames]"]) ** 2)
    np.testing.assert_allclose(ensemble["lag [s]"], ensemble["lag [frames]"] * FRAME_INTERVAL_S)


def test_the_ensemble_pools_pairs_and_the_fit_returns_d_and_the_offset():
    two = pd.concat(
        [
            straight_track(np.arange(1, 11), (10.0, 0.0, 0.0)).assign(track_id=1),
            straight_track(np.arange(1, 4), (20.0, 0.0, 0.0)).assign(track_id=2),
        ]
    )
    ensemble = msd(two, FRAME_INTERVAL_S, max_lag=3).ensemble
    # lag 1: 9 pairs of 100 nm² and 2 of 400 nm²; lag 2: 8 of 400 and 1 of 1600
    np.testing.assert_allclose(ensemble["msd [µm²]"][:2] * 1e6, [(900 + 800) / 11, (3200 + 1600) / 9])
    assert ensemble["tracks"].tolist() == [2, 2, 1]
    lag_s = np.arange(1, 6) * FRAME_INTERVAL_S
    curve = pd.DataFrame(
        {"lag [frames]": np.arange(1, 6), "lag [s]": lag_s, "msd [µm²]": 6 * 0.02 * lag_s + 0.003}
    )
    fit = diffusion_coefficient(curve, fit_lags=4)
    assert fit.diffusion_um2_per_s == pytest.approx(0.02) and fit.offset_um2 == pytest.approx(0.003)
    assert fit.localization_error_nm == pytest.approx(np.sqrt(0.003 / 6) * 1e3)
    assert np.isnan(diffusion_coefficient(curve.iloc[:1], fit_lags=4).diffusion_um2_per_s)


def test_linking_score_counts_a_swap_and_an_unmatched_localization():
    """Two emitters 2 µm apart over 6 frames; the tracker's track 1 jumps to emitter 2 at frame 4 (and
    track 2 the other way): 2 of 10 steps wrong; a localization 1 µm off its emitter makes 2 steps
    unmatched."""
    frames = np.arange(1, 7)
    first = straight_track(frames, (10.0, 0.0, 0.0))
    second = straight_track(frames, (10.0, 0.0, 0.0)).assign(**{"y [nm]": lambda t: t["y [nm]"] + 2000.0})
    truth = pd.concat([first, second.assign(emitter_id=2)], ignore_index=True)
    swapped = pd.concat([first.iloc[:3], second.iloc[3:]]).assign(track_id=1)
    other = pd.concat([second.iloc[:3], first.iloc[3:]]).assign(track_id=2)
    score = linking_score(pd.concat([swapped, other], ignore_index=True), truth)
    assert (score.steps, score.correct, score.wrong, score.unmatched) == (10, 8, 2, 0)
    assert score.accuracy == pytest.approx(0.8)
    assert (score.true_steps, score.true_steps_linked) == (10, 8)
    off = first.assign(track_id=1)
    off.loc[2, "x [nm]"] += 1000.0
    score = linking_score(off, truth)
    assert (score.steps, score.correct, score.wrong, score.unmatched) == (5, 3, 0, 2)


@pytest.mark.parametrize(
    "setting",
    [
        {"max_distance_nm": 0},
        {"max_gap_frames": -1},
        {"min_length": 1},
        {"frame_interval_s": "fast"},
        {"max_lag": 3, "fit_lags": 4},
        {"no_such_key": 1},
    ],
)
def test_bad_settings_are_user_errors(setting):
    with pytest.raises(UserInputError, match="tracking"):
        TrackingSettings.from_config(setting)


def test_settings_default_and_a_table_without_positions_is_refused():
    assert TrackingSettings.from_config(None) == TrackingSettings()
    assert TrackingSettings.from_config({"max_gap_frames": 0}).max_gap_frames == 0
    with pytest.raises(UserInputError, match="z \\[nm\\]"):
        track(pd.DataFrame({"frame": [1], "x [nm]": [0.0], "y [nm]": [0.0]}), 500.0, 2, 2)


def test_run_tracking_writes_its_files_and_keeps_existing_ones(tmp_path):
    truth = diffusing_truth(2, 10, 60, 0.05, field_um=5.0)
    settings = TrackingSettings(min_length=20, max_lag=10)
    result = run_tracking(localize(truth, 2), settings, tmp_path / "out")
    folder = tmp_path / "out"
    assert sorted(p.name for p in folder.iterdir()) == sorted(OUTPUT_FILES)  # no temporary files left
    summary = json.loads((folder / SUMMARY_FILE).read_text())
    assert summary["counts"]["tracks"] == result.tracks["track_id"].nunique() >= 10
    assert summary["diffusion"]["diffusion_um2_per_s"] == pytest.approx(result.fit.diffusion_um2_per_s)
    assert 0.02 < result.fit.diffusion_um2_per_s < 0.1  # 10 short tracks of D = 0.05: a loose check
    tracks = pd.read_csv(folder / TRACKS_FILE)
    assert list(tracks.columns[:3]) == ["track_id", "frame", "time [s]"] and len(tracks) == len(result.tracks)
    curves = pd.read_csv(folder / MSD_FILE)
    assert (curves["curve"] == "ensemble").sum() == 10 and set(curves["track_id"]) > {0}
    for figure in ("tracks_3d.png", "msd.png"):
        assert (folder / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    with pytest.raises(FileExistsError, match="overwrite=true"):
        run_tracking(localize(truth, 3), settings, folder)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    run_tracking(localize(truth, 3), settings, folder, overwrite=True)
    assert (folder / TRACKS_FILE).read_bytes() != before[TRACKS_FILE]
