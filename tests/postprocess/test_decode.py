"""Grid geometry and the decoders: volume → localizations (round trips) and offsets maps → localizations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dstorm3d.emitters import Emitters
from dstorm3d.geometry import VolumeGrid
from dstorm3d.losses.volume import volume_target
from dstorm3d.postprocess.offsets import decode_offsets
from dstorm3d.postprocess.volume import decode_volume, local_maxima_3d, max_filter_3d

GRID = VolumeGrid(
    pixel_size_um=0.11, voxels_per_pixel=4, z_range_um=(0.5, 2.5), depth_slices=21, frame_shape=(16, 16)
)
SCALE = 800.0
RADIUS = 4


# ---------------------------------------------------------------- geometry
def test_paper_grid_voxel_size():
    grid = VolumeGrid(pixel_size_um=0.11, voxels_per_pixel=4, z_range_um=(0.0, 4.0), depth_slices=121)
    assert np.allclose(np.array(grid.voxel_size_um) * 1e3, [27.5, 27.5, 33.0579], atol=1e-3)
    assert grid.volume_shape((30, 40)) == (121, 120, 160)


def test_voxel_centres_and_round_trip():
    centre = GRID.voxel_to_um(torch.tensor([0.0, 0.0, 0.0], dtype=torch.float64))
    dxy, _, dz = GRID.voxel_size_um
    assert torch.allclose(centre, torch.tensor([dxy / 2, dxy / 2, 0.5 + dz / 2], dtype=torch.float64))
    xyz = torch.rand(5, 3, dtype=torch.float64) * 2
    assert torch.allclose(GRID.voxel_to_um(GRID.um_to_voxel(xyz)), xyz)
    # camera pixel j covers voxels u·j … u·j + u − 1: the pixel's left edge is voxel u·j's left edge
    assert GRID.um_to_voxel(torch.tensor([0.11 * 3, 0.0, 0.5], dtype=torch.float64))[0] == pytest.approx(11.5)
    shifted = VolumeGrid(0.11, 4, (0.5, 2.5), 21, lateral_offset_voxels=2.0, z_offset_voxels=-0.5)
    assert torch.allclose(
        shifted.voxel_to_um(torch.zeros(3, dtype=torch.float64)),
        torch.tensor([2.5 * dxy, 2.5 * dxy, 0.5], dtype=torch.float64),
    )


def test_grid_plain_data_round_trip():
    data = GRID.to_dict()
    assert data["z_range_um"] == [0.5, 2.5] and data["frame_shape"] == [16, 16]
    assert VolumeGrid.from_dict(data) == GRID


# ---------------------------------------------------------------- local maxima
def test_max_filter_equals_dense_max_pool():
    volume = torch.rand(2, 11, 13, 9)
    dense = F.max_pool3d(volume.unsqueeze(1), 2 * RADIUS + 1, stride=1, padding=RADIUS).squeeze(1)
    assert torch.equal(max_filter_3d(volume, RADIUS), dense)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sparse_and_dense_maxima_agree(seed):
    """Gathering windows at the above-threshold voxels finds exactly the maxima of the dense max filter,
    ties (quantised values, a plateau) and borders included."""
    g = torch.Generator().manual_seed(seed)
    volume = torch.round(8 * torch.rand(2, 11, 17, 13, generator=g)) / 8  # many exact ties
    volume[1, 2:4, 5:8, 0:2] = 2.0  # a plateau on the border
    for threshold in (0.5, 0.9):
        dense = local_maxima_3d(volume, threshold, RADIUS, sparse=False)
        sparse = local_maxima_3d(volume, threshold, RADIUS, sparse=True)
        assert dense.shape[0] > 2 and torch.equal(dense, sparse)
    assert torch.equal(
        local_maxima_3d(volume, 0.9, 1, sparse=True), local_maxima_3d(volume, 0.9, 1, sparse=False)
    )


def test_plateau_gives_one_maximum():
    volume = torch.zeros(1, 9, 20, 20)
    volume[0, 3:5, 6:9, 10:12] = SCALE  # a saturated block: 12 tied voxels
    volume[0, 4, 15, 2] = 0.5 * SCALE
    peaks = local_maxima_3d(volume, 0.1 * SCALE, RADIUS)
    assert peaks.tolist() == [[0, 3, 6, 10], [0, 4, 15, 2]]
    decoded = decode_volume(volume, VolumeGrid(0.11, 4, (0.0, 0.9), 9), 0.1 * SCALE, RADIUS)
    centre = VolumeGrid(0.11, 4, (0.0, 0.9), 9).voxel_to_um(torch.tensor([10.5, 7.0, 3.5]))
    assert torch.allclose(decoded.xyz[0, 0], centre, atol=1e-6)


# ---------------------------------------------------------------- round trips
def separated_voxels(rng: np.random.Generator, count: int, min_gap: float = 2 * RADIUS + 1.0) -> np.ndarray:
    """``(n, 3)`` continuous voxel positions (c, r, k) filling the volume, a pair of emitters within a
    fraction of a voxel of each of its six faces plus two corners, all more than ``min_gap`` voxels apart
    along at least one axis (Chebyshev distance)."""
    d, h, w = GRID.volume_shape()
    size = np.array([w, h, d], dtype=float)
    low, high = np.full(3, -0.5 + 0.03), size - 0.5 - 0.03  # a few hundredths of a voxel inside the faces
    forced = [low.copy(), high.copy()]
    for axis in range(3):
        for edge in (low, high):
            point = rng.uniform(-0.5, size - 0.5)
            point[axis] = edge[axis]
            forced.append(point)
    accepted: list[np.ndarray] = []
    for point in forced + [rng.uniform(-0.5, size - 0.5) for _ in range(400)]:
        if all(np.abs(point - other).max() > min_gap for other in accepted):
            accepted.append(point)
        if len(accepted) == count:
            break
    return np.array(accepted)


def to_emitters(frames: list[np.ndarray]) -> Emitters:
    return Emitters.from_lists([GRID.voxel_to_um(torch.from_numpy(v)).numpy() for v in frames])


def match_errors_in_voxels(decoded: Emitters, frames: list[np.ndarray]) -> np.ndarray:
    """``(n, 3)`` |decoded − truth| in voxels along (x, y, z), truth matched to its nearest detection."""
    errors = []
    for found, truth in zip(decoded.per_frame(), frames):
        assert len(found) == len(truth)
        found_voxels = GRID.um_to_voxel(torch.from_numpy(found)).numpy()
        for point in truth:
            nearest = found_voxels[np.argmin(np.abs(found_voxels - point).max(axis=1))]
            errors.append(np.abs(nearest - point))
    return np.array(errors)


def test_gaussian_round_trip_continuous_target():
    rng = np.random.default_rng(7)
    frames = [separated_voxels(rng, 14), separated_voxels(rng, 9)]
    assert len(frames[0]) >= 10
    target = volume_target(to_emitters(frames), GRID, SCALE)  # continuous, already blurred
    decoded = decode_volume(target, GRID, 0.3 * SCALE, RADIUS, method="gaussian", blurred=True)
    errors = match_errors_in_voxels(decoded, frames)
    assert errors.max() < 0.25  # the requirement: a quarter voxel per axis
    assert errors.max() < 1e-3  # in fact exact up to float32 rounding, borders included
    assert torch.isnan(decoded.photons[decoded.valid]).all()
    assert (decoded.score[decoded.valid] > 0.3 * SCALE).all()


def test_centroid_round_trip_quantized_target():
    rng = np.random.default_rng(3)
    frames = [separated_voxels(rng, 12), separated_voxels(rng, 6)]
    target = volume_target(to_emitters(frames), GRID, SCALE, quantize=True)
    decoded = decode_volume(target, GRID, 0.3 * SCALE, RADIUS, method="centroid")
    voxel_centres = [np.floor(v + 0.5) for v in frames]
    errors = match_errors_in_voxels(decoded, voxel_centres)
    # the paper's clipped centroid is pulled inward at the faces (by ≈ half a voxel in a corner)
    assert errors.max() <= 0.6
    d, h, w = GRID.volume_shape()
    size = np.array([w, h, d])
    centres = np.concatenate(voxel_centres)
    interior = ((centres >= 3) & (centres <= size - 4)).all(axis=1)
    assert interior.any() and errors[interior].max() < 1e-3  # symmetric neighbourhood: exactly the centre


def test_gaussian_decodes_ideal_spikes_after_blurring():
    d, h, w = GRID.volume_shape()
    spikes = torch.zeros(1, d, h, w)
    spikes[0, 0, 5, 60] = SCALE
    spikes[0, 10, 30, 30] = SCALE
    decoded = decode_volume(spikes, GRID, 0.3 * SCALE, RADIUS, method="gaussian")
    voxels = GRID.um_to_voxel(decoded.xyz[0]).double()
    assert torch.allclose(
        voxels, torch.tensor([[60.0, 5.0, 0.0], [30.0, 30.0, 10.0]], dtype=torch.float64), atol=1e-3
    )


def numpy_blob(centre_ckr: tuple[float, float, float], sigma: float = 1.0) -> torch.Tensor:
    """A ``(1, D, uH, uW)`` volume holding one Gaussian blob (σ in voxels, peak ``SCALE``) at a continuous
    voxel position (column, row, slice), written directly in numpy: independent of ``volume_target``."""
    d, h, w = GRID.volume_shape()
    k, r, c = np.meshgrid(np.arange(d), np.arange(h), np.arange(w), indexing="ij")
    cc, rr, kk = centre_ckr
    blob = SCALE * np.exp(-((c - cc) ** 2 + (r - rr) ** 2 + (k - kk) ** 2) / (2 * sigma**2))
    return torch.from_numpy(blob[None].astype(np.float32))


@pytest.mark.parametrize("centre", [(30.3, 20.7, 9.45), (11.8, 40.25, 5.6), (50.5, 12.0, 14.9)])
def test_gaussian_decodes_an_independently_built_blob(centre):
    """A blob at a sub-voxel position, built without the package's encoder: the decoded position (µm) is
    the blob's centre mapped through the grid's documented voxel→µm convention (voxel i's centre at
    (i + ½)·voxel for x, y; slice k at z_min + (k + ½)·Δz), to 10⁻⁴ voxel (measured ≤ 4·10⁻⁶: float32
    rounding; the Gaussian fit is exact for a Gaussian blob)."""
    decoded = decode_volume(numpy_blob(centre), GRID, 0.3 * SCALE, RADIUS, method="gaussian", blurred=True)
    assert decoded.counts().tolist() == [1]
    dxy = GRID.lateral_voxel_um
    dz = (GRID.z_range_um[1] - GRID.z_range_um[0]) / GRID.depth_slices
    c, r, k = centre
    expected = [(c + 0.5) * dxy, (r + 0.5) * dxy, GRID.z_range_um[0] + (k + 0.5) * dz]
    error_voxels = (decoded.xyz[0, 0].double().numpy() - np.array(expected)) / np.array([dxy, dxy, dz])
    assert np.abs(error_voxels).max() < 1e-4, error_voxels


@pytest.mark.parametrize("method,quantize", [("centroid", True), ("gaussian", False)])
def test_one_voxel_in_x_moves_x_by_one_voxel(method, quantize):
    base = np.array([[20.2, 31.0, 9.6], [50.0, 10.3, 3.0]])
    moved = base + np.array([1.0, 0.0, 0.0])
    decoded = [
        decode_volume(
            volume_target(to_emitters([v]), GRID, SCALE, quantize=quantize),
            GRID,
            0.3 * SCALE,
            RADIUS,
            method=method,
            blurred=True,
        )
        for v in (base, moved)
    ]
    step = decoded[1].xyz[0] - decoded[0].xyz[0]
    dxy = GRID.lateral_voxel_um
    assert torch.allclose(step, torch.tensor([[dxy, 0.0, 0.0]] * 2), atol=1e-5)


def test_empty_and_batched_decode():
    volume = torch.zeros(3, *GRID.volume_shape())
    empty = decode_volume(volume, GRID, 0.1 * SCALE)
    assert empty.batch_size == 3 and empty.max_count == 0
    volume[1, 4, 8, 8] = SCALE
    decoded = decode_volume(volume, GRID, 0.1 * SCALE)
    assert decoded.counts().tolist() == [0, 1, 0]


# ---------------------------------------------------------------- offsets
def offsets_output(batch: int, height: int, width: int) -> dict[str, torch.Tensor]:
    out = {key: torch.zeros(batch, height, width) for key in ("x_offset", "y_offset", "z", "photons")}
    out["logit"] = torch.full((batch, height, width), -10.0)
    for key in ("x_sigma", "y_sigma", "z_sigma", "photons_sigma"):
        out[key] = torch.full((batch, height, width), 0.1)
    return out


def test_decode_offsets_hand_built():
    px, z_range, photon_scale = 0.1, (0.0, 4.0), 10_000.0
    out = offsets_output(2, 8, 10)
    # frame 0: one emitter whose probability is split over two pixels, one clean emitter
    out["logit"][0, 2, 3] = math.log(0.6 / 0.4)
    out["logit"][0, 2, 4] = math.log(0.3 / 0.7)
    out["x_offset"][0, 2, 3], out["y_offset"][0, 2, 3] = 0.4, -0.2
    out["z"][0, 2, 3], out["photons"][0, 2, 3] = 0.25, 0.5
    out["logit"][0, 6, 8] = 5.0
    out["logit"][0, 7, 8] = 0.0  # its 3×3 sum exceeds 1
    out["x_offset"][0, 6, 8], out["y_offset"][0, 6, 8], out["z"][0, 6, 8] = -0.5, 0.3, 0.75
    out["x_sigma"][0, 6, 8] = 0.2
    # frame 1: a weak pixel below the threshold and two tied neighbours (one detection)
    out["logit"][1, 0, 0] = math.log(0.3 / 0.7)
    out["logit"][1, 5, 5] = out["logit"][1, 5, 6] = 0.0
    decoded, sigma = decode_offsets(out, px, z_range, photon_scale, threshold=0.5, return_sigma=True)
    assert decoded.counts().tolist() == [2, 1]
    expected = torch.tensor(
        [[(3 + 0.5 + 0.4) * px, (2 + 0.5 - 0.2) * px, 1.0], [(8 + 0.5 - 0.5) * px, (6 + 0.5 + 0.3) * px, 3.0]]
    )
    assert torch.allclose(decoded.xyz[0], expected, atol=1e-5)
    assert torch.allclose(decoded.xyz[1, 0], torch.tensor([5.5 * px, 5.5 * px, 0.0]), atol=1e-5)
    assert decoded.photons[0, 0] == pytest.approx(5000.0)
    assert decoded.score[0, 0] == pytest.approx(0.9, abs=1e-3)  # 0.6 + 0.3 (+ ~0 elsewhere)
    assert decoded.score[0, 1] == pytest.approx(1.0)  # clipped
    assert sigma.shape == (2, 2, 4)
    assert torch.allclose(sigma[0, 1], torch.tensor([0.2 * px, 0.1 * px, 0.4, 1000.0]))
    assert (sigma[1, 1] == 0).all()
    assert isinstance(decode_offsets(out, px, z_range, photon_scale), Emitters)
