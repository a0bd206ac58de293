"""Camera preprocessing: order of operations, minimum subtraction, ADU conversion, clipping, config."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dstorm3d.inference.preprocess import Preprocessing
from dstorm3d.simulation.camera import EMCCD


def counts() -> np.ndarray:
    """Two ``(2, 3)`` frames in counts, with different minima (100 and 90)."""
    return np.array([[[100, 110, 130], [160, 100, 120]], [[90, 95, 300], [90, 120, 90]]], dtype=np.uint16)


def test_defaults_only_clip_negatives():
    frames = np.array([[-3.0, 0.0], [2.5, 250.0]], np.float32)
    np.testing.assert_array_equal(Preprocessing()(frames), [[0.0, 0.0], [2.5, 250.0]])
    np.testing.assert_array_equal(Preprocessing(clip_negative=False)(frames), frames)


def test_order_baseline_then_minimum_then_gain_then_clip():
    frames = counts()
    steps = Preprocessing(baseline=95.0, adu_per_photon=2.0, em_gain=5.0, clip_negative=False)
    expected = (frames.astype(np.float32) - 95) / 10
    np.testing.assert_allclose(steps(frames), expected)  # baseline before gain: (90 − 95)/10, not 90/10 − 95
    assert steps(frames)[1, 0, 0] == pytest.approx(-0.5)
    np.testing.assert_array_equal(
        Preprocessing(baseline=95.0, adu_per_photon=2.0, em_gain=5.0)(frames), np.maximum(expected, 0)
    )  # clipping comes last


def test_minimum_subtraction_per_frame():
    frames = counts()
    photons = Preprocessing(baseline=40.0, subtract_minimum=True, adu_per_photon=2.0)(frames)
    expected = (frames - frames.min(axis=(1, 2), keepdims=True)).astype(np.float32) / 2  # baseline cancels
    np.testing.assert_allclose(photons, expected)
    assert photons.min(axis=(1, 2)).tolist() == [0.0, 0.0]
    np.testing.assert_allclose(Preprocessing(subtract_minimum=True)(frames[1]), frames[1] - 90.0)  # (H, W)


def test_adu_conversion_inverts_the_emccd_expectation():
    camera = EMCCD(qe=0.9, em_gain=150.0, e_per_adu=45.0, baseline_adu=100.0)
    preprocessing = Preprocessing(
        baseline=camera.baseline_adu - 0.5,  # the ADC floor's mean is −½ count
        adu_per_photon=camera.qe / camera.e_per_adu,
        em_gain=camera.em_gain,
        clip_negative=False,
    )
    adu = torch.tensor([[[100.0, 160.0], [400.0, 1000.0]]])
    torch.testing.assert_close(preprocessing(adu), camera.to_photons(adu))
    assert preprocessing.counts_per_photon == pytest.approx(0.9 / 45 * 150)


def test_types_devices_and_input_untouched():
    frames = counts()
    original = frames.copy()
    photons = Preprocessing(baseline=10.0)(frames)
    assert isinstance(photons, np.ndarray) and photons.dtype == np.float32
    np.testing.assert_array_equal(frames, original)
    as_float64 = Preprocessing(baseline=10.0)(frames.astype(np.float64))
    assert as_float64.dtype == np.float64
    tensor = torch.from_numpy(frames.astype(np.int32))
    photons_tensor = Preprocessing(baseline=10.0)(tensor)
    assert photons_tensor.dtype == torch.float32 and photons_tensor.device == tensor.device
    np.testing.assert_allclose(photons_tensor.numpy(), photons)
    float_tensor = torch.from_numpy(frames.astype(np.float32))
    Preprocessing(baseline=10.0, subtract_minimum=True)(float_tensor)
    np.testing.assert_array_equal(float_tensor.numpy(), original)
    with pytest.raises(ValueError, match=r"\(H, W\) or \(B, H, W\)"):
        Preprocessing()(np.zeros(5, np.float32))


def test_to_dict_round_trip_and_validation():
    preprocessing = Preprocessing(
        baseline=100, adu_per_photon=0.02, em_gain=150, subtract_minimum=True, clip_negative=False
    )
    data = preprocessing.to_dict()
    assert data == {
        "baseline": 100.0,
        "adu_per_photon": 0.02,
        "em_gain": 150.0,
        "subtract_minimum": True,
        "clip_negative": False,
    }
    assert all(type(value) in (float, bool) for value in data.values())
    assert Preprocessing.from_dict(data) == preprocessing
    assert Preprocessing.from_dict(None) == Preprocessing()
    with pytest.raises(ValueError, match=r"unknown preprocessing key\(s\) \['gain'\]"):
        Preprocessing.from_dict({"gain": 2})
    with pytest.raises(ValueError, match="baseline must be a number of counts"):
        Preprocessing(baseline="auto")
    with pytest.raises(ValueError, match="adu_per_photon must be > 0"):
        Preprocessing(adu_per_photon=0)
    with pytest.raises(ValueError, match="em_gain must be ≥ 1"):
        Preprocessing(em_gain=0.5)
    with pytest.raises(ValueError, match="finite number"):
        Preprocessing(baseline=float("nan"))
    with pytest.raises(ValueError, match="subtract_minimum must be true or false"):
        Preprocessing(subtract_minimum="yes")
