"""Rendering frames: windows vs whole frames, large frames, filters, gradients, float32 stability."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dstorm3d.optics.masks import tetrapod_mask
from dstorm3d.optics.pupil import PupilModel, Workspace
from dstorm3d.optics.render import render_frames
from dstorm3d.optics.setup import storm_setup

SETUP = storm_setup()
DX = SETUP.pixel_size_um


def random_emitters(
    n_frames: int, shape: tuple[int, int], per_frame: int, seed: int = 0, dtype: torch.dtype = torch.float64
):
    rng = np.random.default_rng(seed)
    n = n_frames * per_frame
    xyz = np.c_[rng.uniform(0, shape[1] * DX, n), rng.uniform(0, shape[0] * DX, n), rng.uniform(0, 4, n)]
    photons = rng.uniform(1e3, 1e4, n)
    frames = np.repeat(np.arange(n_frames), per_frame)
    return (torch.tensor(xyz, dtype=dtype), torch.tensor(photons, dtype=dtype), torch.tensor(frames))


@pytest.fixture(scope="module")
def pupil64() -> PupilModel:
    return PupilModel(SETUP, tetrapod_mask(SETUP), dtype=torch.float64)


def test_windows_equal_whole_frame_evaluation_when_they_cover_the_frame(pupil64):
    shape = (40, 48)
    xyz, photons, frames = random_emitters(3, shape, 4)
    whole = render_frames(pupil64, xyz, photons, frames, 3, shape)
    windowed = render_frames(pupil64, xyz, photons, frames, 3, shape, window=97)  # ±48 px around each emitter
    torch.testing.assert_close(windowed, whole, rtol=1e-9, atol=1e-9 * float(whole.max()))


def test_frames_larger_than_the_dft_period_render_through_windows(pupil64):
    shape = (332, 492)  # the mito frames; N = 203
    xyz, photons, frames = random_emitters(1, shape, 6, seed=1)
    xyz[:, 0] = xyz[:, 0] * (shape[1] - 64) / shape[1] + 32 * DX  # windows inside the frame
    xyz[:, 1] = xyz[:, 1] * (shape[0] - 64) / shape[0] + 32 * DX
    with pytest.raises(ValueError, match="wrap around"):
        render_frames(pupil64, xyz, photons, frames, 1, shape)
    frame = render_frames(pupil64, xyz, photons, frames, 1, shape, window=64)
    # each emitter's window lands where it belongs: the sum equals rendering them one by one
    singles = sum(
        render_frames(pupil64, xyz[i : i + 1], photons[i : i + 1], frames[:1], 1, shape, window=64)
        for i in range(6)
    )
    torch.testing.assert_close(frame, singles)
    inside = pupil64.psf_on_grid(xyz, pupil64.window_corner(xyz, 64), (64, 64)).sum(dim=(-2, -1))
    assert float(frame.sum()) == pytest.approx(float((inside * photons).sum()), rel=1e-9)


def test_emitters_outside_the_frame_spill_in_and_far_ones_vanish(pupil64):
    shape = (32, 32)
    xyz = torch.tensor([[-0.3, 1.7, 2.0], [50.0, 50.0, 2.0]], dtype=torch.float64)
    photons = torch.tensor([1e4, 1e4], dtype=torch.float64)
    frame = render_frames(pupil64, xyz, photons, torch.tensor([0, 0]), 1, shape, window=48)
    near_only = render_frames(pupil64, xyz[:1], photons[:1], torch.tensor([0]), 1, shape, window=48)
    assert float(frame[0, :, 0].sum()) > 0.01 * float(photons[0])  # light from an emitter left of the frame
    torch.testing.assert_close(frame, near_only)


@pytest.mark.parametrize("window", [None, 64])
def test_blur_and_pixel_integration_keep_photons_and_widen_the_psf(pupil64, window):
    shape = (64, 64)
    xyz = torch.tensor([[32.5 * DX, 32.5 * DX, 1.0]], dtype=torch.float64)
    photons, frames = torch.tensor([1e4], dtype=torch.float64), torch.tensor([0])
    sharp = render_frames(pupil64, xyz, photons, frames, 1, shape, window=window)
    blurred = render_frames(pupil64, xyz, photons, frames, 1, shape, window=window, blur_sigma_px=1.0)
    integrated = render_frames(pupil64, xyz, photons, frames, 1, shape, window=window, pixel_integration=True)
    for image in (blurred, integrated):
        assert float(image.sum()) == pytest.approx(float(sharp.sum()), rel=2e-3)
        assert float(image.max()) < float(sharp.max())
        assert float(image.min()) > -1e-6 * float(sharp.max())


def test_per_emitter_blur(pupil64):
    shape = (48, 48)
    xyz = torch.tensor([[12.5 * DX, 24.5 * DX, 1.0], [36.5 * DX, 24.5 * DX, 1.0]], dtype=torch.float64)
    photons, frames = torch.tensor([1e4, 1e4], dtype=torch.float64), torch.tensor([0, 0])
    frame = render_frames(
        pupil64,
        xyz,
        photons,
        frames,
        1,
        shape,
        window=24,
        blur_sigma_px=torch.tensor([0.0, 2.0], dtype=torch.float64),
    )
    assert float(frame[0, :, :24].max()) > 1.5 * float(frame[0, :, 24:].max())


def test_gradients_match_finite_differences():
    """gradcheck in float64 on a small grid, for the mask and the positions."""
    setup = storm_setup(pupil_grid=31)
    pupil = PupilModel(setup, tetrapod_mask(setup), dtype=torch.float64)
    mask = pupil.phase_mask.clone().requires_grad_(True)
    xyz = torch.tensor(
        [[5.23 * DX, 4.71 * DX, 1.3], [2.9 * DX, 6.2 * DX, 2.6]], dtype=torch.float64, requires_grad=True
    )
    photons, frames = torch.tensor([100.0, 80.0], dtype=torch.float64), torch.tensor([0, 0])

    def frame_of(xyz_: torch.Tensor, mask_: torch.Tensor) -> torch.Tensor:
        return render_frames(
            pupil,
            xyz_,
            photons,
            frames,
            1,
            (9, 10),
            window=12,
            blur_sigma_px=0.8,
            pixel_integration=True,
            phase_mask=mask_,
        )

    assert torch.autograd.gradcheck(frame_of, (xyz, mask), eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True)
    assert torch.autograd.gradcheck(
        lambda p: frame_of(p, mask.detach()), (xyz,), eps=1e-6, atol=1e-6, rtol=1e-4
    )


def test_float32_is_finite_and_close_to_float64_with_finite_gradients():
    shape = (121, 121)
    xyz, photons, frames = random_emitters(4, shape, 30, seed=3, dtype=torch.float32)
    photons = photons * 10
    xyz[0, 2] = 0.0  # the ends of the axial range
    xyz[1, 2] = 4.0
    p32 = PupilModel(SETUP, tetrapod_mask(SETUP), learnable=True)
    p64 = PupilModel(SETUP, tetrapod_mask(SETUP), dtype=torch.float64)
    xyz.requires_grad_(True)
    f32 = render_frames(p32, xyz, photons, frames, 4, shape, blur_sigma_px=1.0)
    f64 = render_frames(p64, xyz.detach().double(), photons.double(), frames, 4, shape, blur_sigma_px=1.0)
    assert torch.isfinite(f32).all()
    assert float((f32.detach().double() - f64).abs().max()) < 1e-4 * float(f64.max())
    (f32.square().sum() / 1e6).backward()
    assert torch.isfinite(xyz.grad).all() and torch.isfinite(p32.phase_mask.grad).all()
    assert float(p32.phase_mask.grad.abs().sum()) > 0


def test_rendering_runs_on_the_pupils_device_and_dtype():
    pupil = PupilModel(SETUP, tetrapod_mask(SETUP)).to(torch.device("cpu"))
    xyz, photons, frames = random_emitters(2, (32, 32), 3, dtype=torch.float32)
    out = render_frames(pupil, xyz, photons, frames, 2, (32, 32))
    assert out.dtype == torch.float32 and out.shape == (2, 32, 32)
    empty = render_frames(pupil, xyz[:0], photons[:0], frames[:0], 2, (32, 32), window=32)
    assert empty.shape == (2, 32, 32) and not empty.any()


@pytest.mark.parametrize("chunk", [None, 6])
def test_rendering_with_and_without_autograd_is_identical(pupil64, chunk):
    """The no-gradient path writes its intermediate planes in place, into scratch tensors that every chunk
    reuses (chunks of 6, 6, 6, 2 emitters); the values must not change."""
    torch.manual_seed(3)
    dtype = pupil64.kappa.dtype
    xyz = torch.stack([torch.rand(20) * 3.5, torch.rand(20) * 3.5, torch.rand(20) * 4.0], dim=1).to(dtype)
    photons = torch.full((20,), 5000.0, dtype=dtype)
    frames = torch.arange(20) % 2
    with torch.no_grad():
        plain = render_frames(pupil64, xyz, photons, frames, 2, (32, 32), chunk=chunk)
    tracked = render_frames(
        pupil64, xyz.clone().requires_grad_(True), photons, frames, 2, (32, 32), chunk=chunk
    )
    assert tracked.requires_grad
    torch.testing.assert_close(tracked.detach(), plain, rtol=0, atol=0)


def test_objective_aperture_rendering_with_and_without_autograd_agrees():
    """Beyond the critical angle the pupil amplitude decays with depth; the in-place path applies it too."""
    pupil = PupilModel(storm_setup(aperture="objective"), tetrapod_mask(SETUP), dtype=torch.float64)
    assert pupil.has_decay
    xyz, photons, frames = random_emitters(2, (32, 32), 5, seed=4)
    with torch.no_grad():
        plain = render_frames(pupil, xyz, photons, frames, 2, (32, 32), chunk=3)
    tracked = render_frames(pupil, xyz.clone().requires_grad_(True), photons, frames, 2, (32, 32), chunk=3)
    torch.testing.assert_close(tracked.detach(), plain, rtol=1e-12, atol=1e-12 * float(plain.max()))


def test_workspace_reuses_a_tensor_only_for_the_same_shape_dtype_and_device():
    workspace = Workspace()
    like = torch.zeros(1)
    first = workspace.take("planes", (2, 3), like)
    assert workspace.take("planes", (2, 3), like) is first
    assert workspace.take("planes", (2, 4), like).shape == (2, 4)
    assert workspace.take("planes", (2, 4), like.double()).dtype == torch.float64
    assert workspace.take("other", (2, 4), like) is not workspace.take("planes", (2, 4), like)


def test_rendering_ignores_mixed_precision_autocast():
    """Training steps run under bf16 autocast; the optics must still render in float32."""
    pupil = PupilModel(SETUP, tetrapod_mask(SETUP))
    xyz = torch.tensor([[1.2, 1.7, 0.8], [2.1, 0.9, 3.1]])
    photons = torch.tensor([5000.0, 8000.0])
    frames = torch.tensor([0, 0])
    plain = render_frames(pupil, xyz, photons, frames, 1, (32, 32))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = render_frames(pupil, xyz, photons, frames, 1, (32, 32))
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, plain, rtol=0, atol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_rendering_equals_cpu_rendering():
    """The GPU path (all emitters at once, no chunks) gives the CPU's frames, also under bf16 autocast."""
    pupil = PupilModel(SETUP, tetrapod_mask(SETUP))
    torch.manual_seed(5)
    xyz = torch.stack([torch.rand(40) * 13.0, torch.rand(40) * 13.0, torch.rand(40) * 4.0], dim=1)
    photons = torch.full((40,), 5000.0)
    frames = torch.arange(40) % 4
    cpu = render_frames(pupil, xyz, photons, frames, 4, (121, 121))
    gpu = pupil.to("cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        cuda = render_frames(gpu, xyz.cuda(), photons.cuda(), frames.cuda(), 4, (121, 121))
    assert cuda.dtype == torch.float32
    torch.testing.assert_close(cuda.cpu(), cpu, rtol=1e-4, atol=1e-3 * float(cpu.max()))
