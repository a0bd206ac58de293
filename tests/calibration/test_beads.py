"""Finding beads: peaks on the mean projection, rejection near the edge and near another bead."""

from __future__ import annotations

import numpy as np

from dstorm3d.calibration import beads as bead_tools


def gaussian_spots(shape: tuple[int, int], centres: list[tuple[float, float]], height: float) -> np.ndarray:
    rows, cols = np.mgrid[: shape[0], : shape[1]].astype(np.float64)
    image = np.zeros(shape)
    for row, col in centres:
        image += height * np.exp(-((rows - row) ** 2 + (cols - col) ** 2) / (2 * 1.5**2))
    return image


def test_beads_near_an_edge_or_each_other_are_rejected_with_the_reason():
    centres = [(40, 40), (5, 60), (80, 20), (80, 30)]  # kept, at the edge, a pair 10 px apart
    rng = np.random.default_rng(0)
    stack = rng.poisson(5.0 + gaussian_spots((100, 100), centres, 200.0), size=(11, 100, 100)).astype(float)
    projection = bead_tools.smoothed_projection(stack, 2.0)
    peaks = bead_tools.find_peaks(projection, min_snr=10.0, min_separation_px=5)
    assert sorted(map(tuple, peaks.tolist())) == sorted(centres)
    kept, rejected = bead_tools.select_beads(peaks, (100, 100), window_px=17, min_separation_px=17)
    assert kept.tolist() == [[40, 40]]
    assert sum("leaves the frame" in reason for reason in rejected) == 1
    assert sum("another bead 10.0 px away" in reason for reason in rejected) == 2


def test_noise_alone_has_no_bead_and_the_focus_guess_finds_the_sharpest_slice():
    rng = np.random.default_rng(1)
    noise = rng.poisson(5.0, size=(11, 64, 64)).astype(float)
    assert len(bead_tools.find_peaks(bead_tools.smoothed_projection(noise, 2.0), 10.0, 17)) == 0
    widths = np.abs(np.arange(11) - 7) + 1.0  # sharpest at slice 7
    rows, cols = np.mgrid[:17, :17] - 8.0
    windows = np.stack([np.exp(-(rows**2 + cols**2) / (2 * w**2)) for w in widths])[None] * 100
    assert bead_tools.focus_guess(windows) == 7
