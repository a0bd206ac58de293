"""Separable blur, volume targets and the KDE loss of the volumetric head."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dstorm3d.emitters import Emitters
from dstorm3d.geometry import VolumeGrid
from dstorm3d.losses.blur import gaussian_blur_3d, gaussian_kernel_1d
from dstorm3d.losses.volume import KDELoss, soft_dice_loss, volume_target

GRID = VolumeGrid(
    pixel_size_um=0.11, voxels_per_pixel=4, z_range_um=(0.5, 2.5), depth_slices=21, frame_shape=(16, 16)
)
SCALE = 800.0


def dense_blur(volume: torch.Tensor, sigma: float = 1.0, radius: int = 3) -> torch.Tensor:
    g = gaussian_kernel_1d(sigma, radius, dtype=volume.dtype)
    kernel = g[:, None, None] * g[None, :, None] * g[None, None, :]
    return F.conv3d(volume.unsqueeze(1), kernel[None, None], padding=radius).squeeze(1)


def emitters_at_voxels(
    voxels: list[list[tuple[float, float, float]]], grid: VolumeGrid = GRID, **kwargs
) -> Emitters:
    """Emitters per frame from continuous voxel coordinates (c, r, k)."""
    xyz = [grid.voxel_to_um(torch.tensor(v, dtype=torch.float64).reshape(-1, 3)).numpy() for v in voxels]
    return Emitters.from_lists(xyz, **kwargs)


# ---------------------------------------------------------------- blur
def test_kernel_peak_one_seven_taps():
    g = gaussian_kernel_1d(1.0, 3)
    assert g.shape == (7,) and g[3] == 1.0
    assert torch.allclose(g, torch.exp(-(torch.arange(-3.0, 4.0) ** 2) / 2))


@pytest.mark.parametrize("shape", [(2, 9, 12, 10), (1, 2, 5, 17), (1, 1, 1, 4)])
def test_blur_equals_dense_conv3d_with_full_padding(shape):
    volume = torch.rand(shape)
    assert torch.allclose(gaussian_blur_3d(volume), dense_blur(volume), atol=1e-5, rtol=1e-5)
    assert torch.allclose(gaussian_blur_3d(volume, 1.7, 2), dense_blur(volume, 1.7, 2), atol=1e-5, rtol=1e-5)


def test_blur_keeps_lateral_borders():
    volume = torch.zeros(1, 7, 8, 8)
    volume[0, 3, 0, 0] = 1.0  # a spike in the corner voxel is not cropped away
    out = gaussian_blur_3d(volume)
    assert out.shape == volume.shape and out[0, 3, 0, 0] == 1.0


def test_blur_gradient_is_the_adjoint():
    volume = torch.rand(1, 4, 5, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(gaussian_blur_3d, (volume,))
    weights = torch.rand(1, 4, 5, 6, dtype=torch.float64)
    (grad,) = torch.autograd.grad((gaussian_blur_3d(volume) * weights).sum(), volume)
    (grad_dense,) = torch.autograd.grad((dense_blur(volume) * weights).sum(), volume)
    assert torch.allclose(grad, grad_dense)


# ---------------------------------------------------------------- targets
def test_continuous_target_matches_dense_evaluation():
    rng = np.random.default_rng(1)
    d, h, w = GRID.volume_shape()
    voxels = [[tuple(rng.uniform(-0.5, n - 0.5) for n in (w, h, d)) for _ in range(6)] for _ in range(2)]
    target = volume_target(emitters_at_voxels(voxels), GRID, SCALE)
    assert target.shape == (2, d, h, w)
    kk, rr, cc = np.meshgrid(np.arange(d), np.arange(h), np.arange(w), indexing="ij")
    expected = np.zeros((2, d, h, w))
    for b, frame in enumerate(voxels):
        for c, r, k in frame:
            near = np.floor(np.array([c, r, k]) + 0.5)
            box = (np.abs(cc - near[0]) <= 3) & (np.abs(rr - near[1]) <= 3) & (np.abs(kk - near[2]) <= 3)
            expected[b] += SCALE * box * np.exp(-((cc - c) ** 2 + (rr - r) ** 2 + (kk - k) ** 2) / 2)
    assert np.allclose(target.numpy(), expected, atol=1e-3)


def test_quantized_target_is_blurred_spikes():
    voxels = [[(10.2, 20.4, 5.1), (10.4, 19.6, 4.8), (0.3, 63.4, 20.4)], [(33.0, 7.0, 0.0)]]
    target = volume_target(emitters_at_voxels(voxels), GRID, SCALE, quantize=True)
    spikes = torch.zeros_like(target)
    spikes[0, 5, 20, 10] = 2.0  # two emitters in one voxel
    spikes[0, 20, 63, 0] = 1.0
    spikes[1, 0, 7, 33] = 1.0
    assert torch.allclose(target, SCALE * dense_blur(spikes), atol=1e-3)
    assert target[0, 5, 20, 10] == pytest.approx(2 * SCALE)


def test_target_ignores_unlabelled_and_outside_emitters():
    d, h, w = GRID.volume_shape()
    voxels = [[(5.0, 5.0, 5.0), (40.0, 40.0, 10.0), (-0.6, 30.0, 10.0), (30.0, 30.0, d - 0.4)]]
    emitters = emitters_at_voxels(voxels, labelled=[np.array([True, False, True, True])])
    target = volume_target(emitters, GRID, SCALE)
    assert target[0, 5, 5, 5] == pytest.approx(SCALE)
    assert target[0, :, 40, 40].max() == 0.0  # unlabelled
    assert target[0, :, :, 0].max() == 0.0  # just left of the frame: dropped
    assert target[0, -1].max() == 0.0  # beyond z_max: dropped
    assert target.sum() == pytest.approx(SCALE * gaussian_kernel_1d(1.0, 3).sum().item() ** 3)  # one blob


def test_target_of_empty_batch():
    target = volume_target(Emitters.empty(3), GRID, SCALE)
    assert target.shape == (3, *GRID.volume_shape()) and target.abs().sum() == 0


# ---------------------------------------------------------------- KDE loss
def ideal_spikes(voxels: list[list[tuple[float, float, float]]]) -> torch.Tensor:
    d, h, w = GRID.volume_shape()
    pred = torch.zeros(len(voxels), d, h, w)
    for b, frame in enumerate(voxels):
        for c, r, k in frame:
            pred[b, int(math.floor(k + 0.5)), int(math.floor(r + 0.5)), int(math.floor(c + 0.5))] += SCALE
    return pred


BORDER_VOXELS = [[(0.1, 0.2, 0.3), (63.3, 31.0, 20.4), (30.0, 63.4, 10.0)], [(12.4, 40.0, 2.0)], []]


def test_kde_loss_zero_for_ideal_spikes_quantized():
    loss = KDELoss(GRID, SCALE, quantize=True)(ideal_spikes(BORDER_VOXELS), emitters_at_voxels(BORDER_VOXELS))
    assert loss["mse"] < 1e-10 and loss["overlap"] < 1e-6 and loss["loss"] < 1e-6


def test_dice_grows_with_a_false_positive():
    goal = volume_target(emitters_at_voxels(BORDER_VOXELS), GRID, SCALE) / SCALE
    fp = volume_target(emitters_at_voxels([[(40.0, 10.0, 8.0)], [], []]), GRID, SCALE) / SCALE
    perfect = soft_dice_loss(goal, goal)
    assert perfect < 1e-6
    assert soft_dice_loss(goal + fp, goal) > perfect + 0.05
    assert soft_dice_loss(goal + 2 * fp, goal) > soft_dice_loss(goal + fp, goal)
    kde = KDELoss(GRID, SCALE, quantize=True)
    target = emitters_at_voxels(BORDER_VOXELS)
    pred = ideal_spikes(BORDER_VOXELS)
    with_fp = pred + ideal_spikes([[(40.0, 10.0, 8.0)], [], []])
    assert kde(with_fp, target)["overlap"] > kde(pred, target)["overlap"]


def test_kde_loss_gradients_finite_with_empty_frames():
    kde = KDELoss(GRID, SCALE)
    pred = (torch.rand(3, *GRID.volume_shape()) * SCALE * 0.01).requires_grad_()
    out = kde(pred, emitters_at_voxels(BORDER_VOXELS))
    assert set(out) == {"loss", "mse", "overlap"}
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0
    zero = torch.zeros(2, *GRID.volume_shape(), requires_grad=True)
    out = kde(zero, Emitters.empty(2))
    out["loss"].backward()
    assert out["loss"] < 1e-6 and torch.isfinite(zero.grad).all()
