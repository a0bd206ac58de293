"""Gaussian-mixture (DECODE) loss of the offsets head."""

from __future__ import annotations

import math

import numpy as np
import torch

from dstorm3d.emitters import Emitters
from dstorm3d.losses.offsets import GaussianMixtureLoss
from dstorm3d.models.heads import OFFSETS_OUTPUTS, OffsetsHead
from dstorm3d.postprocess.offsets import decode_offsets

PIXEL_UM, Z_RANGE, PHOTON_SCALE = 0.11, (0.0, 4.0), 10_000.0
SIGMA_FLOOR, SIGMA_MAX = 0.01, 1.0


def loss_fn(**kwargs) -> GaussianMixtureLoss:
    return GaussianMixtureLoss(PIXEL_UM, Z_RANGE, PHOTON_SCALE, **kwargs)


def activate(raw: torch.Tensor) -> dict[str, torch.Tensor]:
    """Free parameters ``(B, 9, H, W)`` → the head's output dict, with the head's activations."""
    logit, x, y, z, photons, *sigmas = raw.unbind(dim=1)
    out = {
        "logit": logit,
        "x_offset": torch.tanh(x),
        "y_offset": torch.tanh(y),
        "z": torch.sigmoid(z),
        "photons": torch.sigmoid(photons),
    }
    for key, value in zip(OFFSETS_OUTPUTS[5:], sigmas):
        out[key] = SIGMA_FLOOR + (SIGMA_MAX - SIGMA_FLOOR) * torch.sigmoid(value)
    return out


def ideal_output(
    emitters: Emitters, height: int, width: int, x_shift_px: float = 0.0
) -> dict[str, torch.Tensor]:
    """Confident maps with each labelled emitter in its pixel, optionally shifted along x."""
    b = emitters.batch_size
    out = {key: torch.zeros(b, height, width) for key in OFFSETS_OUTPUTS}
    out["logit"].fill_(-8.0)
    for key in OFFSETS_OUTPUTS[5:]:
        out[key].fill_(0.05)
    xyz, photons, frame = emitters.flat(labelled_only=True)
    col, row = (xyz[:, 0] / PIXEL_UM).floor().long(), (xyz[:, 1] / PIXEL_UM).floor().long()
    out["logit"][frame, row, col] = 8.0
    out["x_offset"][frame, row, col] = xyz[:, 0] / PIXEL_UM - col - 0.5 + x_shift_px
    out["y_offset"][frame, row, col] = xyz[:, 1] / PIXEL_UM - row - 0.5
    out["z"][frame, row, col] = (xyz[:, 2] - Z_RANGE[0]) / (Z_RANGE[1] - Z_RANGE[0])
    out["photons"][frame, row, col] = photons / PHOTON_SCALE
    return out


def batch_with_empty_frame() -> Emitters:
    return Emitters.from_lists(
        [
            np.array([[0.25, 0.40, 1.0], [0.61, 0.13, 2.5], [0.35, 0.70, 3.0]]),
            np.zeros((0, 3)),
            np.array([[0.52, 0.52, 0.4]]),
        ],
        photons=[np.array([3000.0, 5000.0, 800.0]), np.zeros(0), np.array([9000.0])],
        labelled=[np.array([True, True, False]), np.zeros(0, bool), np.array([True])],
    )


def test_finite_loss_and_gradients_including_empty_frames():
    head = OffsetsHead(in_channels=3, channels=8, blocks=1)
    out = head(torch.randn(3, 3, 8, 8))
    losses = loss_fn()(out, batch_with_empty_frame())
    assert set(losses) == {"loss", "count", "localization"}
    losses["loss"].backward()
    assert all(torch.isfinite(v) for v in losses.values())
    assert all(torch.isfinite(p.grad).all() for p in head.parameters() if p.grad is not None)

    raw = torch.randn(2, 9, 8, 8, requires_grad=True)
    empty = loss_fn()(activate(raw), Emitters.empty(2))
    empty["loss"].backward()
    assert empty["localization"] == 0 and torch.isfinite(empty["loss"]) and torch.isfinite(raw.grad).all()


def test_extreme_logits_stay_finite():
    emitters = batch_with_empty_frame()
    out = ideal_output(emitters, 8, 8)
    out["logit"] = (out["logit"] * 20).requires_grad_()  # p saturates to exactly 0 and 1 in float32
    losses = loss_fn()(out, emitters)
    losses["loss"].backward()
    assert torch.isfinite(losses["loss"]) and torch.isfinite(out["logit"].grad).all()


def test_correct_output_beats_shifted_and_unknown_photons_are_skipped():
    emitters = batch_with_empty_frame()
    loss = loss_fn()
    good = loss(ideal_output(emitters, 8, 8), emitters)
    shifted = loss(ideal_output(emitters, 8, 8, x_shift_px=0.3), emitters)
    assert good["localization"] < shifted["localization"] and good["loss"] < shifted["loss"]
    assert torch.isclose(good["count"], shifted["count"])
    no_photons = Emitters(
        emitters.xyz, torch.full_like(emitters.photons, float("nan")), emitters.valid, emitters.labelled
    )
    assert torch.isfinite(loss(ideal_output(emitters, 8, 8), no_photons)["loss"])


def test_count_term_prefers_the_true_count():
    emitters = batch_with_empty_frame()
    out = ideal_output(emitters, 8, 8)
    extra = {k: v.clone() for k, v in out.items()}
    extra["logit"][0, 7, 7] = 8.0  # a confident false positive
    assert loss_fn()(out, emitters)["count"] < loss_fn()(extra, emitters)["count"]


def test_adam_fits_free_outputs_to_one_frame():
    truth = np.array([[0.23, 0.35, 1.2], [0.71, 0.52, 2.9]])
    emitters = Emitters.from_lists([truth], photons=[np.array([4000.0, 7000.0])])
    raw = torch.zeros(1, 9, 8, 8)
    raw[:, 0] = math.log(0.01 / 0.99)
    raw.requires_grad_()
    loss = loss_fn()
    optimiser = torch.optim.Adam([raw], lr=0.05)
    first = None
    for _ in range(200):
        optimiser.zero_grad()
        value = loss(activate(raw), emitters)["loss"]
        first = value.item() if first is None else first
        value.backward()
        optimiser.step()
    assert value.item() < first - 10.0
    decoded = decode_offsets(activate(raw.detach()), PIXEL_UM, Z_RANGE, PHOTON_SCALE)
    assert decoded.counts().tolist() == [2]
    found = decoded.per_frame()[0]
    found = found[np.argsort(found[:, 0])]
    assert np.abs(found[:, :2] - truth[:, :2]).max() < 0.005  # µm, i.e. < 5 nm
    assert np.abs(found[:, 2] - truth[:, 2]).max() < 0.02
    assert np.allclose(np.sort(decoded.photons[0].numpy()), [4000.0, 7000.0], rtol=0.02)
