"""Noise and camera models: moments, gradients, inverses, reproducibility, configs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch

from dstorm3d.simulation.camera import (
    EMCCD,
    SCMOS,
    IdealCamera,
    ReadoutCamera,
    camera_from_config,
    sample_gamma,
    shot_noise,
    smooth_random_map,
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def assert_within(value: float, expected: float, standard_error: float, what: str, n_se: float = 5.0) -> None:
    """|value − expected| ≤ n_se standard errors (fixed seeds make this deterministic)."""
    assert abs(value - expected) <= n_se * standard_error, (
        f"{what}: got {value:.6g}, expected {expected:.6g} ± {n_se}×{standard_error:.3g}"
    )


# ---------------------------------------------------------------------------------------------- shot noise
def test_poisson_mean_equals_variance():
    mu, n = 6.5, 200_000
    x = shot_noise(torch.full((n,), mu, dtype=torch.float64), gen(1)).numpy()
    assert np.all(x >= 0) and np.all(x == np.round(x))
    assert_within(x.mean(), mu, math.sqrt(mu / n), "Poisson mean")
    # Var(s²) ≈ (μ4 − σ⁴)/n with μ4 = μ + 3μ² for a Poisson variable
    assert_within(x.var(ddof=1), mu, math.sqrt((mu + 2 * mu**2) / n), "Poisson variance")


def test_poisson_counts_round_off_negatives_as_zero():
    out = shot_noise(torch.tensor([-1e-7, 0.0, 0.0]), gen())
    assert torch.equal(out, torch.zeros(3))


def test_differentiable_shot_noise_moments():
    mu, n = 40.0, 200_000
    x = shot_noise(torch.full((n,), mu, dtype=torch.float64), gen(2), differentiable=True).numpy()
    assert_within(x.mean(), mu, math.sqrt(mu / n), "reparameterised mean")
    assert_within(x.var(ddof=1), mu, mu * math.sqrt(2 / n), "reparameterised variance")


def test_differentiable_shot_noise_gradients_are_finite_and_exact():
    mu = torch.tensor([0.0, 0.0, 1e-3, 0.5, 7.0, 300.0], dtype=torch.float64, requires_grad=True)
    out = shot_noise(mu, gen(3), differentiable=True)
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert torch.isfinite(mu.grad).all()
    assert torch.equal(mu.grad[:2], torch.ones(2, dtype=torch.float64))  # sqrt clamped at μ = 0
    m = mu.detach()[2:]
    eps = (out.detach()[2:] - m) / torch.sqrt(m)
    torch.testing.assert_close(mu.grad[2:], 1 + eps / (2 * torch.sqrt(m)))


@pytest.mark.parametrize(
    "camera",
    [IdealCamera(), ReadoutCamera(), EMCCD(), EMCCD(read_noise_e=0.0), SCMOS(read_var_adu2=0.0)],
    ids=lambda c: repr(c)[:40],
)
def test_every_camera_has_finite_gradients_in_differentiable_mode(camera):
    mu = torch.cat([torch.zeros(1, 8, 8), torch.full((1, 8, 8), 30.0)]).requires_grad_()
    out = camera.sample(mu, gen(4), differentiable=True)
    assert out.shape == mu.shape and torch.isfinite(out).all()
    (out**2).mean().backward()
    assert torch.isfinite(mu.grad).all() and mu.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------- gamma
@pytest.mark.parametrize("alpha", [0.1, 0.5, 1.0, 4.5, 60.0])
def test_gamma_sampler_moments_and_distribution(alpha):
    scale, n = 2.5, 40_000
    x = sample_gamma(torch.full((n,), alpha), scale, gen(5)).double().numpy()
    assert np.all(x >= 0)
    mean, var = alpha * scale, alpha * scale**2
    assert_within(x.mean(), mean, math.sqrt(var / n), f"Gamma({alpha}) mean")
    # Var(s²) ≈ σ⁴(2 + excess kurtosis)/n, excess kurtosis 6/α
    assert_within(x.var(ddof=1), var, var * math.sqrt((2 + 6 / alpha) / n), f"Gamma({alpha}) variance")
    assert scipy.stats.kstest(x, scipy.stats.gamma(alpha, scale=scale).cdf).pvalue > 1e-3


def test_gamma_sampler_shape_zero_is_zero_and_shapes_broadcast():
    alpha = torch.tensor([[0.0, 3.0], [0.0, 0.2]])
    x = sample_gamma(alpha, torch.tensor([1.0, 10.0]), gen())
    assert x.shape == (2, 2) and x[0, 0] == 0 and x[1, 0] == 0 and x[0, 1] > 0
    with pytest.raises(ValueError, match="gamma shape"):
        sample_gamma(torch.tensor([-1.0]))


def test_gamma_sampler_uses_the_generator():
    alpha = torch.full((1000,), 2.0)
    assert torch.equal(sample_gamma(alpha, 1.0, gen(9)), sample_gamma(alpha, 1.0, gen(9)))
    assert not torch.equal(sample_gamma(alpha, 1.0, gen(9)), sample_gamma(alpha, 1.0, gen(10)))


# ---------------------------------------------------------------------------------------------- EMCCD
def test_emccd_excess_noise_factor_is_two():
    camera = EMCCD()
    mu, n = 20.0, 100_000
    lam = camera.qe * mu
    frames = torch.full((n,), mu)
    electrons = camera.amplified_electrons(frames, gen(6)).double().numpy()
    f2 = electrons.var(ddof=1) / (camera.em_gain**2 * lam)
    assert abs(f2 - 2) < 0.1, f"F² from the EM register = {f2:.3f}"
    assert abs(electrons.mean() / (camera.em_gain * lam) - 1) < 0.02
    adu = camera.sample(frames, gen(7)).double().numpy()
    assert np.all(adu == np.round(adu))
    k = camera.e_per_adu
    electron_var = adu.var(ddof=1) * k**2 - camera.read_noise_e**2 - k**2 / 12  # minus read and ADC
    f2_adu = electron_var / (camera.em_gain**2 * lam)
    assert abs(f2_adu - 2) < 0.1, f"F² from the ADU output = {f2_adu:.3f}"


@pytest.mark.parametrize("camera", [EMCCD(), EMCCD(em_gain=300.0, spurious_charge_e=0.5, baseline_adu=500.0)])
def test_emccd_to_photons_recovers_the_mean(camera):
    mu, n = 20.0, 100_000
    photons = camera.to_photons(camera.sample(torch.full((n,), mu), gen(8))).double().numpy()
    assert_within(photons.mean(), mu, photons.std() / math.sqrt(n), "EMCCD to_photons mean")


def test_emccd_zero_light_gives_zero_electrons():
    electrons = EMCCD().amplified_electrons(torch.zeros(1000), gen())
    assert torch.equal(electrons, torch.zeros(1000))


def test_emccd_differentiable_mode_matches_mean_and_variance():
    camera = EMCCD()
    mu, n = 20.0, 100_000
    lam = camera.qe * mu
    adu = camera.sample(torch.full((n,), mu, dtype=torch.float64), gen(11), differentiable=True).numpy()
    assert np.all(adu == np.round(adu))  # straight-through floor keeps the ADC's integer output
    var_e = 2 * camera.em_gain**2 * lam + camera.read_noise_e**2
    expected_mean = camera.em_gain * lam / camera.e_per_adu - 0.5 + camera.baseline_adu
    expected_var = var_e / camera.e_per_adu**2 + 1 / 12
    assert_within(adu.mean(), expected_mean, math.sqrt(expected_var / n), "differentiable EMCCD mean")
    assert_within(
        adu.var(ddof=1), expected_var, expected_var * math.sqrt(2 / n), "differentiable EMCCD variance"
    )


# ------------------------------------------------------------------------------------------ readout camera
def test_readout_camera_fixed_parameters_statistics():
    camera = ReadoutCamera(baseline=30.0, read_noise=10.0)
    mu, n = 50.0, 200_000
    x = camera.sample(torch.full((n,), mu, dtype=torch.float64), gen(12)).numpy()
    var = mu + 100.0
    assert_within(x.mean(), mu + 30.0, math.sqrt(var / n), "readout mean")
    assert_within(x.var(ddof=1), var, var * math.sqrt(2.2 / n), "readout variance")
    assert abs(camera.to_photons(torch.tensor(x)).mean().item() - mu) < 5 * math.sqrt(var / n)


def test_readout_camera_draws_baseline_per_frame_and_a_smooth_sigma_map():
    camera = ReadoutCamera(baseline=(20.0, 40.0), read_noise=(8.0, 12.0), read_noise_correlation_px=6.0)
    mu = torch.zeros(16, 32, 32)
    baseline, sigma = camera.draw_parameters(mu, gen(13))
    assert baseline.shape == (16, 1, 1) and sigma.shape == (16, 32, 32)
    assert baseline.min() >= 20 and baseline.max() <= 40 and baseline.std() > 1
    torch.testing.assert_close(sigma.amin(dim=(1, 2)), torch.full((16,), 8.0))
    torch.testing.assert_close(sigma.amax(dim=(1, 2)), torch.full((16,), 12.0))
    frames = camera.sample(mu, gen(13))
    # with μ = 0 each frame's mean is its baseline (± σ/√(H·W))
    torch.testing.assert_close(frames.mean(dim=(1, 2)), baseline.view(16), atol=5 * 12 / 32, rtol=0)
    torch.testing.assert_close(camera.to_photons(frames).mean(), frames.mean() - 30.0)


def test_readout_camera_accepts_maps_and_per_frame_tensors():
    sigma_map = torch.linspace(0, 20, 8 * 8).view(8, 8)
    baseline = torch.tensor([10.0, 50.0]).view(2, 1, 1)
    camera = ReadoutCamera(baseline=baseline, read_noise=sigma_map)
    x = camera.sample(torch.zeros(2, 8, 8), gen())
    assert x[:, 0, 0].tolist() == [10.0, 50.0]  # σ = 0 there, and Poisson(0) = 0
    torch.testing.assert_close(camera.to_photons(x), x - baseline)
    with pytest.raises(ValueError, match="does not broadcast"):
        camera.sample(torch.zeros(2, 4, 4), gen())


def test_smooth_random_map_spans_range_and_smoothness_follows_correlation():
    def roughness(field):
        return (field[..., 1:, :] - field[..., :-1, :]).abs().mean().item()

    fine = smooth_random_map((4, 48, 48), 8.0, 12.0, 1.0, gen(14))
    coarse = smooth_random_map((4, 48, 48), 8.0, 12.0, 8.0, gen(14))
    for field in (fine, coarse):
        torch.testing.assert_close(field.amin(dim=(1, 2)), torch.full((4,), 8.0))
        torch.testing.assert_close(field.amax(dim=(1, 2)), torch.full((4,), 12.0))
    assert roughness(coarse) < 0.3 * roughness(fine)


# ---------------------------------------------------------------------------------------------- sCMOS
def test_scmos_per_pixel_statistics_match_the_maps():
    camera = SCMOS.random((6, 5), np.random.default_rng(3), qe=0.7, gain_std=0.3, read_var_mean=9.0)
    n = 6000
    mu_map = torch.linspace(5.0, 60.0, 30).view(6, 5)
    x = camera.sample(mu_map.expand(n, 6, 5).double(), gen(15)).numpy()
    gain, offset, read_var = (
        t.double().numpy() for t in (camera.gain_adu_per_e, camera.offset_adu, camera.read_var_adu2)
    )
    electrons = camera.qe * mu_map.double().numpy()
    mean = gain * electrons + offset
    var = gain**2 * electrons + read_var
    assert np.all(np.abs(x.mean(0) - mean) <= 5 * np.sqrt(var / n))
    assert np.all(np.abs(x.var(0, ddof=1) - var) <= 5 * var * np.sqrt(2.5 / n))
    photons = camera.to_photons(torch.tensor(x)).mean(0).numpy()
    assert np.all(np.abs(photons - mu_map.numpy()) <= 5 * np.sqrt(var / n) / gain / camera.qe)


def test_scmos_random_maps_are_reproducible_and_checked():
    a = SCMOS.random((4, 4), np.random.default_rng(1))
    b = SCMOS.random((4, 4), np.random.default_rng(1))
    assert torch.equal(a.read_var_adu2, b.read_var_adu2) and torch.equal(a.gain_adu_per_e, b.gain_adu_per_e)
    c = SCMOS.random((4, 4), gen(1))
    assert c.frame_shape == (4, 4) and (c.gain_adu_per_e > 0).all() and (c.read_var_adu2 >= 0).all()
    with pytest.raises(ValueError, match="do not match"):
        a.sample(torch.zeros(2, 5, 5))
    with pytest.raises(ValueError, match="share one"):
        SCMOS(offset_adu=torch.zeros(4, 4), gain_adu_per_e=torch.ones(3, 3))


# ----------------------------------------------------------------------------------------- reproducibility
@pytest.mark.parametrize(
    "camera",
    [
        IdealCamera(),
        ReadoutCamera(),
        EMCCD(spurious_charge_e=0.01),
        SCMOS.random((16, 16), np.random.default_rng(0)),
    ],
    ids=lambda c: c.kind,
)
@pytest.mark.parametrize("differentiable", [False, True])
def test_same_seed_same_frames(camera, differentiable):
    mu = torch.rand(3, 16, 16, generator=gen(99)) * 100
    a = camera.sample(mu, gen(21), differentiable)
    b = camera.sample(mu, gen(21), differentiable)
    c = camera.sample(mu, gen(22), differentiable)
    assert torch.equal(a, b) and not torch.equal(a, c)


# ---------------------------------------------------------------------------------------------- configs
@pytest.mark.parametrize(
    "camera",
    [
        IdealCamera(),
        ReadoutCamera(baseline=25.0, read_noise=(8.0, 12.0), read_noise_correlation_px=None),
        ReadoutCamera(baseline=torch.arange(4.0).view(2, 2), read_noise=torch.ones(3, 1, 1)),
        EMCCD(em_gain=250.0, spurious_charge_e=0.002),
        SCMOS.random((3, 2), np.random.default_rng(0)),
    ],
    ids=lambda c: c.kind,
)
def test_to_dict_from_config_round_trip(camera):
    data = camera.to_dict()
    rebuilt = camera_from_config(data)
    assert type(rebuilt) is type(camera) and rebuilt.to_dict() == data
    mu = torch.full((3, 2, 2) if camera.kind != "scmos" else (3, 3, 2), 10.0)
    assert torch.equal(camera.sample(mu, gen(5)), rebuilt.sample(mu, gen(5)))


def test_scmos_config_can_draw_maps_from_a_seed():
    config = {"kind": "scmos", "shape": [5, 4], "seed": 7, "gain_mean": 1.5, "qe": 0.9}
    a, b = camera_from_config(config), camera_from_config(config)
    assert a.frame_shape == (5, 4) and torch.equal(a.offset_adu, b.offset_adu)
    assert abs(float(a.gain_adu_per_e.mean()) - 1.5) < 0.2


@pytest.mark.parametrize(
    "config, match",
    [
        ({"kind": "ccd"}, "camera.kind must be one of"),
        ({"em_gain": 100}, "camera.kind must be one of"),
        ({"kind": "emccd", "gain": 100}, "unknown camera key 'gain'"),
        ({"kind": "emccd", "qe": 1.5}, "qe must be at most 1"),
        ({"kind": "emccd", "em_gain": 0.5}, "em_gain must be ≥ 1"),
        ({"kind": "emccd", "read_noise_e": -1}, "read_noise_e"),
        ({"kind": "readout", "baseline": [40, 20]}, "lo ≤ hi"),
        ({"kind": "readout", "read_noise": -2.0}, "read_noise"),
        ({"kind": "readout", "read_noise": "high"}, "read_noise"),
        ({"kind": "scmos", "gain_adu_per_e": 0.0}, "gain_adu_per_e"),
        ({"kind": "scmos", "seed": 3}, "need 'shape'"),
        ({"kind": "scmos", "shape": [4, 4], "offset_adu": 100.0}, "cannot be combined"),
    ],
)
def test_bad_camera_configs_raise_one_line_errors(config, match):
    with pytest.raises(ValueError, match=match) as info:
        camera_from_config(config)
    assert "\n" not in str(info.value)


def test_camera_config_must_be_a_mapping():
    with pytest.raises(ValueError, match="mapping"):
        camera_from_config(["emccd"])  # type: ignore[arg-type]
