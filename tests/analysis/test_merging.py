"""Merging: hand-built chains with exact results, the axial radius, the gap, and a simulated recording
whose true ON events are known."""

from __future__ import annotations

import numpy as np
import pytest

from dstorm3d.analysis.merging import MergeSettings, link, merge
from dstorm3d.errors import UserInputError

SETTINGS = MergeSettings(radius_nm=50.0, axial_radius_nm=100.0, max_gap_frames=1)


def test_hand_built_chains_merge_exactly(sim):
    rows = [  # frame, x, y, z, photons
        (1, 1000, 1000, 500, 1000),  # A
        (1, 3000, 3000, 500, 500),  # B
        (1, 5000, 5000, 500, 100),  # C
        (2, 1010, 1000, 520, 2000),  # A: 10 nm away
        (2, 1080, 1000, 500, 100),  # D: 80 nm from A (beyond 50 nm): its own
        (3, 1020, 1000, 490, 3000),  # A
        (3, 3010, 3000, 500, 600),  # B after a one-frame gap: linked
        (4, 5000, 5000, 500, 100),  # C after a two-frame gap: not linked
    ]
    merged = merge(sim.table(rows), SETTINGS)
    assert len(merged) == 5
    np.testing.assert_array_equal(merged.frame, [1, 1, 1, 2, 4])
    np.testing.assert_array_equal(merged.last_frame, [3, 3, 1, 2, 4])
    np.testing.assert_array_equal(merged.detections, [3, 2, 1, 1, 1])
    # A: equal precisions → plain mean; precision 10/√3 laterally, 25/√3 axially; photons summed.
    np.testing.assert_allclose(merged.xyz_nm[0], [1010.0, 1000.0, 1510.0 / 3])
    np.testing.assert_allclose(merged.precision_nm[0], np.array([10.0, 10.0, 25.0]) / np.sqrt(3))
    assert merged.photons[0] == 6000.0 and merged.photons[1] == 1100.0
    np.testing.assert_allclose(merged.xyz_nm[3], [1080.0, 1000.0, 500.0])


def test_positions_are_weighted_by_precision(sim):
    locs = sim.table([(1, 0, 0, 0, 1), (2, 30, 0, 0, 1)])
    locs.precision_nm[1] = [20.0, 20.0, 50.0]  # the second is half as precise: a quarter of the weight
    merged = merge(locs, SETTINGS)
    assert len(merged) == 1
    assert merged.xyz_nm[0, 0] == pytest.approx(30 * 0.25 / 1.25)
    assert merged.precision_nm[0, 0] == pytest.approx(1 / np.sqrt(1 / 100 + 1 / 400))


def test_the_axial_radius_separates_emitters_above_each_other(sim):
    rows = [(1, 0, 0, 500, 1), (2, 0, 0, 580, 1), (3, 0, 0, 730, 1)]  # Δz 80 (linked), then 150 (not)
    assert list(link(sim.table(rows), SETTINGS)) == [0, 0, 1]


def test_two_emitters_in_one_frame_never_merge(sim):
    rows = [(1, 0, 0, 500, 1), (1, 20, 0, 500, 1), (2, 2, 0, 500, 1), (2, 22, 0, 500, 1)]
    chains = link(sim.table(rows), SETTINGS)
    assert list(chains) == [0, 1, 0, 1]  # closest pairs first, each chain and localization once


def test_merging_a_simulated_recording_finds_its_on_events(sim):
    recording = sim.simulate(seed=0, frames=1000, drift_amplitude_nm=0.0)
    locs = sim.as_localizations(recording)
    merged = merge(locs, SETTINGS)
    # True events: runs of one emitter's localizations with gaps of at most one frame.
    order = np.lexsort((recording.frame, recording.emitter))
    emitter, frame = recording.emitter[order], recording.frame[order]
    events = int(np.sum(np.r_[True, (emitter[1:] != emitter[:-1]) | (np.diff(frame) > 2)]))
    # Measured: 14,768 localizations → 7,460 merged for 7,414 true events (+0.6 %: a few noisy pairs
    # farther than 50 nm apart stay split).
    assert len(locs) == 14768 and events == 7414
    assert 0 <= len(merged) - events <= 0.02 * events
    assert merged.detections.sum() == len(locs)


def test_bad_merge_settings_are_refused():
    base = {"enabled": True, "radius_nm": 50.0, "axial_radius_nm": 100.0, "max_gap_frames": 1}
    with pytest.raises(UserInputError, match=r"merging.max_gap_frames=-1: must be a whole number ≥ 0"):
        MergeSettings.from_config({**base, "max_gap_frames": -1})
    with pytest.raises(UserInputError, match=r"merging.radius_nm=0: must be a number > 0"):
        MergeSettings.from_config({**base, "radius_nm": 0})
