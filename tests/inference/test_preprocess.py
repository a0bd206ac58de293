"""Camera preprocessing: the recording's camera inverse, the training camera's expectation, order, config."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dstorm3d.errors import UserInputError
from dstorm3d.inference.preprocess import Preprocessing, recording_camera
from dstorm3d.simulation.camera import EMCCD, SCMOS, IdealCamera, ReadoutCamera, camera_from_config

CHALLENGE_EMCCD = {
    "kind": "emccd",
    "qe": 0.9,
    "em_gain": 300.0,
    "read_noise_e": 74.4,
    "e_per_adu": 45.0,
    "baseline_adu": 100.0,
    "spurious_charge_e": 0.002,
}


def counts() -> np.ndarray:
    """Two ``(2, 3)`` frames in counts, with different minima (100 and 90)."""
    return np.array([[[100, 110, 130], [160, 100, 120]], [[90, 95, 300], [90, 120, 90]]], dtype=np.uint16)


@pytest.mark.parametrize(
    "camera",
    [
        IdealCamera(),
        ReadoutCamera(baseline=(20.0, 40.0)),
        EMCCD(**{k: v for k, v in CHALLENGE_EMCCD.items() if k != "kind"}),
        SCMOS(offset_adu=100.0, gain_adu_per_e=2.2, qe=0.8),
    ],
    ids=lambda c: c.kind,
)
def test_expected_counts_inverts_to_photons(camera):
    photons = torch.tensor([[0.0, 1.0, 37.5], [100.0, 2500.0, 1e5]], dtype=torch.float64)
    torch.testing.assert_close(camera.to_photons(camera.expected_counts(photons)), photons)


def test_expected_counts_is_the_mean_reading_of_the_emccd():
    """The forward expectation against the camera's own noisy samples (200k pixels at 50 photons)."""
    camera = camera_from_config(CHALLENGE_EMCCD)
    generator = torch.Generator().manual_seed(0)
    mu = torch.full((200_000,), 50.0, dtype=torch.float64)
    mean = camera.sample(mu, generator).mean()
    # measured: 337.5 vs 337.8 expected; the standard error of the mean is ~0.2 ADU (σ ≈ 94 ADU)
    assert float(mean) == pytest.approx(float(camera.expected_counts(torch.tensor(50.0))), abs=1.0)


def test_checkpoint_camera_passes_frames_through():
    frames = counts()
    np.testing.assert_array_equal(Preprocessing()(frames), frames.astype(np.float32))
    negative = np.array([[-3.0, 0.0], [2.5, 250.0]], np.float32)
    np.testing.assert_array_equal(Preprocessing()(negative), [[0.0, 0.0], [2.5, 250.0]])
    np.testing.assert_array_equal(Preprocessing(clip_negative=False)(negative), negative)


def test_other_camera_goes_through_photons_into_the_training_cameras_counts():
    """An sCMOS recording (offset 95, 2 ADU/e⁻, QE 1) for a network trained on the challenge's EMCCD."""
    recording = SCMOS(offset_adu=95.0, gain_adu_per_e=2.0, read_var_adu2=0.0, qe=1.0)
    target = camera_from_config(CHALLENGE_EMCCD)
    steps = Preprocessing(camera=recording, target=target, clip_negative=False)
    frames = counts()
    photons = (frames.astype(np.float64) - 95.0) / 2.0
    expected = target.expected_counts(torch.from_numpy(photons)).numpy()
    np.testing.assert_allclose(steps(frames), expected, rtol=1e-6)
    assert steps(frames)[1, 0, 0] == pytest.approx((0.9 * -2.5 + 0.002) * 300 / 45 + 99.5, rel=1e-6)
    clipped = Preprocessing(camera=recording, target=target)(frames)  # clipping in photons, before the target
    assert clipped[1, 0, 0] == pytest.approx(0.002 * 300 / 45 + 99.5, rel=1e-6)


def test_minimum_subtraction_per_frame_in_photons():
    frames = counts()
    steps = Preprocessing(camera=ReadoutCamera(baseline=40.0), subtract_minimum=True)
    expected = (frames - frames.min(axis=(1, 2), keepdims=True)).astype(np.float32)  # baseline cancels
    np.testing.assert_allclose(steps(frames), expected)
    np.testing.assert_allclose(Preprocessing(subtract_minimum=True)(frames[1]), frames[1] - 90.0)  # (H, W)


def test_types_devices_and_input_untouched():
    frames = counts()
    original = frames.copy()
    steps = Preprocessing(camera=ReadoutCamera(baseline=10.0))
    photons = steps(frames)
    assert isinstance(photons, np.ndarray) and photons.dtype == np.float32
    np.testing.assert_array_equal(frames, original)
    assert steps(frames.astype(np.float64)).dtype == np.float64
    tensor = torch.from_numpy(frames.astype(np.int32))
    photons_tensor = steps(tensor)
    assert photons_tensor.dtype == torch.float32 and photons_tensor.device == tensor.device
    np.testing.assert_allclose(photons_tensor.numpy(), photons)
    float_tensor = torch.from_numpy(frames.astype(np.float32))
    Preprocessing(camera=ReadoutCamera(baseline=10.0), subtract_minimum=True)(float_tensor)
    np.testing.assert_array_equal(float_tensor.numpy(), original)
    with pytest.raises(ValueError, match=r"\(H, W\) or \(B, H, W\)"):
        Preprocessing()(np.zeros(5, np.float32))


def test_config_round_trip_and_errors():
    steps = Preprocessing.from_dict({"camera": CHALLENGE_EMCCD, "subtract_minimum": True})
    assert isinstance(steps.camera, EMCCD) and steps.camera.em_gain == 300.0 and steps.target is None
    steps = steps.with_target(ReadoutCamera(baseline=30.0, read_noise=10.0))
    data = steps.to_dict()
    assert data["camera"] == CHALLENGE_EMCCD and data["target"]["kind"] == "readout"
    again = Preprocessing.from_dict(data)
    frames = counts()
    np.testing.assert_array_equal(again(frames), steps(frames))
    assert recording_camera("checkpoint") is None and recording_camera({"kind": "checkpoint"}) is None
    for key in ("baseline", "adu_per_photon", "em_gain"):  # the retired hand-set path names the camera
        with pytest.raises(UserInputError, match=rf"preprocessing.{key} is gone: describe .*camera"):
            Preprocessing.from_dict({key: 1.0})
    with pytest.raises(UserInputError, match=r"unknown preprocessing key\(s\) \['gain'\]"):
        Preprocessing.from_dict({"gain": 2})
    with pytest.raises(UserInputError, match="camera: camera.kind must be one of"):
        Preprocessing.from_dict({"camera": {"kind": "ccd"}})
    with pytest.raises(UserInputError, match="checkpoint takes no other keys"):
        recording_camera({"kind": "checkpoint", "em_gain": 3})
    with pytest.raises(UserInputError, match="subtract_minimum must be true or false"):
        Preprocessing(subtract_minimum="yes")
