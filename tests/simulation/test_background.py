"""Background models: ranges, non-uniformity, smoothness, reproducibility, configs."""

from __future__ import annotations

import pytest
import torch

from dstorm3d.simulation.background import (
    background_from_config,
    cell_like_background,
    super_gaussian_background,
    uniform_background,
    zero_background,
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def frame_spans(frames: torch.Tensor) -> torch.Tensor:
    return frames.amax(dim=(1, 2)) - frames.amin(dim=(1, 2))


def roughness(frames: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of neighbouring pixels, relative to each frame's span, ``(B,)``."""
    dy = (frames[:, 1:, :] - frames[:, :-1, :]).abs().mean(dim=(1, 2))
    dx = (frames[:, :, 1:] - frames[:, :, :-1]).abs().mean(dim=(1, 2))
    return 0.5 * (dx + dy) / frame_spans(frames)


def test_uniform_background_fixed_level_and_per_frame_range():
    flat = uniform_background(3, (5, 7), 42.0, gen())
    assert flat.shape == (3, 5, 7) and flat.dtype == torch.float32 and torch.all(flat == 42.0)
    frames = uniform_background(64, (5, 7), (10.0, 20.0), gen(1))
    per_frame = frames[:, 0, 0]
    assert torch.all(frames == per_frame.view(-1, 1, 1))
    assert per_frame.min() >= 10 and per_frame.max() <= 20 and per_frame.std() > 1.5  # U(10, 20): std 2.9


def test_zero_background():
    assert torch.equal(zero_background(2, (3, 4)), torch.zeros(2, 3, 4))


def test_super_gaussian_stays_in_range_and_is_non_uniform():
    frames = super_gaussian_background(32, (48, 40), (20.0, 150.0), generator=gen(2))
    assert frames.shape == (32, 48, 40)
    assert frames.min() >= 20 - 1e-4 and frames.max() <= 150 + 1e-4
    assert torch.all(frame_spans(frames) > 0)
    assert frame_spans(frames).std() > 5  # each frame spans its own random sub-range
    assert roughness(frames).max() < 0.06  # one smooth blob, not noise


def test_super_gaussian_order_flattens_the_top():
    """Same draws (same seed), order 4 vs 1: a flat-topped blob has more pixels near its maximum."""

    def near_top_fraction(frames):
        lo = frames.amin(dim=(1, 2), keepdim=True)
        hi = frames.amax(dim=(1, 2), keepdim=True)
        return ((frames - lo) > 0.9 * (hi - lo)).float().mean().item()

    kwargs = dict(batch=16, shape=(40, 40), width_fraction=0.4)
    gaussian = super_gaussian_background(order=1.0, generator=gen(3), **kwargs)
    flat_top = super_gaussian_background(order=4.0, generator=gen(3), **kwargs)
    assert near_top_fraction(flat_top) > 2 * near_top_fraction(gaussian)


def test_cell_like_background_in_range_smooth_and_non_uniform():
    frames = cell_like_background(16, (48, 48), (20.0, 150.0), correlation_px=6.0, generator=gen(4))
    assert frames.min() >= 20 - 1e-4 and frames.max() <= 150 + 1e-4
    assert torch.all(frame_spans(frames) > 0)
    assert roughness(frames).max() < 0.05
    white = cell_like_background(4, (48, 48), correlation_px=0.0, cell_count=0, generator=gen(4))
    assert roughness(white).min() > 0.12  # the smoothness above comes from the low-pass filter


def test_cell_like_background_adds_cells():
    without = cell_like_background(4, (48, 48), cell_count=0, generator=gen(5))
    with_cells = cell_like_background(
        4, (48, 48), cell_count=(2, 2), cell_contrast=3.0, edge_px=1.0, generator=gen(5)
    )
    assert not torch.allclose(without, with_cells)


@pytest.mark.parametrize(
    "make",
    [
        lambda g: uniform_background(4, (9, 9), (0.0, 10.0), g),
        lambda g: super_gaussian_background(4, (9, 9), generator=g),
        lambda g: cell_like_background(4, (9, 9), generator=g),
    ],
    ids=["uniform", "super_gaussian", "cell_like"],
)
def test_same_seed_same_background(make):
    assert torch.equal(make(gen(7)), make(gen(7)))
    assert not torch.equal(make(gen(7)), make(gen(8)))


@pytest.mark.parametrize(
    "config",
    [
        {"kind": "none"},
        {"kind": "uniform", "level": [50, 150]},
        {"kind": "super_gaussian", "level_range": [20, 150], "order": 3},
        {"kind": "cell_like", "correlation_px": 4.0, "cell_count": [1, 2]},
    ],
)
def test_background_from_config(config):
    model = background_from_config(config)
    frames = model(3, (12, 10), gen(9))
    assert frames.shape == (3, 12, 10)
    assert torch.equal(background_from_config(model.to_dict())(3, (12, 10), gen(9)), frames)


@pytest.mark.parametrize(
    "config, match",
    [
        ({"kind": "gradient"}, "background.kind must be one of"),
        ({"kind": "uniform"}, "needs the key 'level'"),
        ({"kind": "uniform", "level": 10, "sigma": 2}, "unknown background key 'sigma'"),
        ({"kind": "uniform", "level": -5}, "level must be ≥ 0"),
        ({"kind": "super_gaussian", "level_range": [150, 20]}, "lo ≤ hi"),
        ({"kind": "super_gaussian", "aspect": [0.5, 2.0]}, "aspect must be ≤ 1"),
        ({"kind": "super_gaussian", "width_fraction": 0}, "width_fraction must be > 0"),
        ({"kind": "cell_like", "cell_count": [0.5, 2]}, "integers"),
        ({"kind": "cell_like", "correlation_px": -1.0}, "correlation_px"),
        ({"kind": "cell_like", "level_range": [1, 2, 3]}, "lo, hi"),
    ],
)
def test_bad_background_configs_raise(config, match):
    with pytest.raises(ValueError, match=match) as info:
        background_from_config(config)
    assert "\n" not in str(info.value)


def test_bad_frame_shapes_raise():
    with pytest.raises(ValueError, match="shape"):
        uniform_background(2, (0, 4), 1.0)
    with pytest.raises(ValueError, match="batch"):
        uniform_background(-1, (4, 4), 1.0)
