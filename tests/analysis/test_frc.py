"""FRC resolution: the crossing of a known curve, identical and independent halves, and simulated
structures whose localization precision is known: the resolution grows in proportion to σ."""

from __future__ import annotations

import numpy as np
import pytest

from dstorm3d.analysis.frc import FRCSettings, crossing, frc_curve, frc_figure, frc_resolution, split_halves


def test_the_crossing_is_interpolated_between_rings():
    q = np.array([0.0, 0.1, 0.2, 0.3])
    assert crossing(q, np.array([1.0, 0.5, 0.1, 0.0]), threshold=0.3) == pytest.approx(0.15)
    assert crossing(q, np.array([1.0, 0.9, 0.8, 0.7]), threshold=0.3) is None


def test_identical_halves_correlate_fully_and_independent_noise_not_at_all():
    rng = np.random.default_rng(0)
    image = rng.poisson(2.0, (128, 128)).astype(float)
    _, same = frc_curve(image, image)
    np.testing.assert_allclose(same[1:], 1.0, atol=1e-9)
    _, independent = frc_curve(image, rng.poisson(2.0, (128, 128)).astype(float))
    # Rings 0–6 carry the window's shape (the mean level × the Tukey window is common to both); beyond them
    # the correlation is noise about 0. Measured (seeds 0–3): mean −0.008..0.024, RMS 0.073..0.083.
    assert abs(independent[10:].mean()) < 0.04 and np.sqrt((independent[10:] ** 2).mean()) < 0.12


def test_halves_alternate_by_blocks_of_frames():
    first = split_halves(np.array([1, 100, 101, 200, 201]), 100)
    assert list(first) == [True, True, False, False, True]


def test_too_few_localizations_give_no_resolution_and_say_why(sim):
    locs = sim.table([(k, 10 * k, 0, 0, 1) for k in range(1, 60)])
    result = frc_resolution(locs, FRCSettings())
    assert result.resolution_nm is None and "at least 50 in each" in result.reason
    frc_figure(result)  # draws the reason instead of a curve


def test_the_resolution_grows_in_proportion_to_the_localization_precision(sim):
    resolution = {}
    for sigma in (5.0, 10.0, 20.0):
        recording = sim.simulate(
            seed=0,
            frames=1000,
            emitters=3000,
            active=30,
            drift_amplitude_nm=0.0,
            precision_nm=(sigma, sigma, 2.5 * sigma),
        )
        result = frc_resolution(sim.as_localizations(recording), FRCSettings())
        resolution[sigma] = result.resolution_nm
    # Measured (seeds 0, 1): 18.3, 17.8 nm at σ = 5 nm; 34.3, 34.4 at 10; 65.3, 65.9 at 20 (40: 127, 129):
    # 3.3–3.7 σ (≈ 2.35 σ · √2, the FWHM of the difference of two localizations, plus the structure).
    for sigma, value in resolution.items():
        assert 3.0 * sigma < value < 4.0 * sigma, resolution
    assert resolution[5.0] < resolution[10.0] < resolution[20.0]
