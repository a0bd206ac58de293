"""Emitter sampling: counts, positions, labels, spacing, ellipsoids, padding, validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.integrate import quad

from dstorm3d.optics.setup import storm_setup
from dstorm3d.simulation.sampling import EmitterSampler, ellipsoid_surface, to_emitters


def rng(*seed: int) -> np.random.Generator:
    return np.random.default_rng(list(seed))


def sampler(**overrides) -> EmitterSampler:
    params = dict(frame_shape=(50, 40), pixel_size_um=0.1, z_range_um=(0.5, 3.5), density_per_um2=(0.8, 0.8))
    params.update(overrides)
    return EmitterSampler(**params)


def draw(s: EmitterSampler, n_frames: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    return [s.sample(rng(seed, i)) for i in range(n_frames)]


# ---------------------------------------------------------------------------------------------- counts
def test_count_follows_a_fixed_density():
    s = sampler()
    counts = np.array([len(f["xyz"]) for f in draw(s, 1500)])
    expected = 0.8 * s.frame_area_um2  # 0.8/µm² × 4 µm × 5 µm = 16
    assert s.frame_area_um2 == pytest.approx(20.0)
    assert abs(counts.mean() - expected) < 5 * math.sqrt(expected / len(counts))
    assert abs(counts.var(ddof=1) / expected - 1) < 0.2  # Poisson


def test_count_follows_a_density_range():
    s = sampler(density_per_um2=(0.2, 1.0))
    counts = np.array([len(f["xyz"]) for f in draw(s, 1500, seed=1)])
    expected = 0.6 * s.frame_area_um2
    assert abs(counts.mean() - expected) < 5 * counts.std() / math.sqrt(len(counts))
    # Var = E[ρ]A + Var(ρ)A² for a Poisson mixture: well above the Poisson variance
    assert counts.var() > 2 * expected


def test_count_range_draws_uniform_integers():
    counts = np.array([len(f["xyz"]) for f in draw(sampler(density_per_um2=None, count_range=(2, 6)), 500)])
    assert set(counts.tolist()) == {2, 3, 4, 5, 6}


def test_max_emitters_caps_the_count():
    frames = draw(sampler(density_per_um2=None, count_range=(30, 30), margin_px=5, max_emitters=12), 10)
    assert all(len(f["xyz"]) == 12 for f in frames)
    assert all(f["labelled"].all() for f in frames)  # in-frame emitters are kept first


# ---------------------------------------------------------------------------------------------- positions
def test_positions_lie_in_the_frame_and_z_range():
    s = sampler(frame_shape=(7, 9))
    xyz = np.concatenate([f["xyz"] for f in draw(s, 300)])
    assert xyz.dtype == np.float64 and xyz.shape[1] == 3
    width, height = s.frame_size_um
    assert width == pytest.approx(0.9) and height == pytest.approx(0.7)
    assert np.all((xyz[:, 0] >= 0) & (xyz[:, 0] < width) & (xyz[:, 1] >= 0) & (xyz[:, 1] < height))
    assert np.all((xyz[:, 2] >= 0.5) & (xyz[:, 2] <= 3.5))
    # uniform: the mean is the centre (x along columns, y along rows)
    n = len(xyz)
    assert abs(xyz[:, 0].mean() - width / 2) < 5 * width / math.sqrt(12 * n)
    assert abs(xyz[:, 1].mean() - height / 2) < 5 * height / math.sqrt(12 * n)


def test_margin_emitters_are_rendered_but_never_labelled():
    s = sampler(margin_px=6, density_per_um2=(0.5, 0.5))
    frames = draw(s, 800, seed=2)
    xyz = np.concatenate([f["xyz"] for f in frames])
    labelled = np.concatenate([f["labelled"] for f in frames])
    inside = s.inside_frame(xyz)
    m = s.margin_um
    width, height = s.frame_size_um
    assert np.all((xyz[:, 0] >= -m) & (xyz[:, 0] < width + m) & (xyz[:, 1] >= -m) & (xyz[:, 1] < height + m))
    assert (~inside).sum() > 0 and not labelled[~inside].any()
    assert np.array_equal(labelled, inside)  # label_min_photons = 0: every in-frame emitter counts
    # same areal density inside and in the border
    n_in = np.array([s.inside_frame(f["xyz"]).sum() for f in frames])
    n_out = np.array([(~s.inside_frame(f["xyz"])).sum() for f in frames])
    for counts, area in ((n_in, s.frame_area_um2), (n_out, s.margin_area_um2)):
        assert abs(counts.mean() - 0.5 * area) < 5 * math.sqrt(0.5 * area / len(frames))


def test_margin_emitters_are_uniform_over_the_border():
    """Each of the border's 8 cells (4 corners, 4 edges) gets its share of the border's area."""
    s = sampler(frame_shape=(30, 20), margin_px=10, density_per_um2=(1.0, 1.0))
    xyz = np.concatenate([f["xyz"] for f in draw(s, 300, seed=3)])
    outside = xyz[~s.inside_frame(xyz)]
    width, height = s.frame_size_um
    m = s.margin_um
    column = np.digitize(outside[:, 0], [0.0, width])  # 0: left, 1: frame columns, 2: right
    row = np.digitize(outside[:, 1], [0.0, height])
    spans_x, spans_y = [m, width, m], [m, height, m]
    n = len(outside)
    for i in range(3):
        for j in range(3):
            if i == j == 1:
                continue
            p = spans_x[i] * spans_y[j] / s.margin_area_um2
            frac = np.mean((column == i) & (row == j))
            assert abs(frac - p) < 5 * math.sqrt(p * (1 - p) / n), (i, j, frac, p)


def test_dim_emitters_are_unlabelled():
    s = sampler(label_min_photons=6000.0)  # default photons: Gamma(3, 3000)
    frames = draw(s, 200)
    photons = np.concatenate([f["photons"] for f in frames])
    labelled = np.concatenate([f["labelled"] for f in frames])
    assert np.array_equal(labelled, photons > 6000)
    # P(Gamma(3, 3000) ≤ 6000) = P(Gamma(3, 1) ≤ 2) = 1 − 5e⁻² ≈ 0.323
    p = 1 - 5 * math.exp(-2)
    assert abs((~labelled).mean() - p) < 5 * math.sqrt(p * (1 - p) / len(photons))
    assert abs(photons.mean() - 9000) < 5 * math.sqrt(3) * 3000 / math.sqrt(len(photons))


def test_uniform_and_fixed_photons():
    uniform = np.concatenate(
        [f["photons"] for f in draw(sampler(photons={"kind": "uniform", "low": 10000, "high": 60000}), 50)]
    )
    assert uniform.min() >= 10000 and uniform.max() <= 60000 and uniform.std() > 10000
    fixed_sampler = sampler(photons={"kind": "fixed", "value": 30000})
    fixed = np.concatenate([f["photons"] for f in draw(fixed_sampler, 5)])
    assert np.all(fixed == 30000.0)


def test_min_distance_is_respected():
    s = sampler(
        frame_shape=(20, 20),
        z_range_um=(0.0, 1.0),
        density_per_um2=None,
        count_range=(40, 40),
        min_distance_um=0.25,
        margin_px=2,
    )
    for frame in draw(s, 10):
        xyz = frame["xyz"]
        d = np.linalg.norm(xyz[:, None] - xyz[None], axis=-1)
        np.fill_diagonal(d, np.inf)
        assert d.min() >= 0.25
        assert s.inside_frame(xyz).sum() >= 38  # crowded but not full: nearly all find a place
    # without the constraint the same setting has close pairs
    loose = sampler(frame_shape=(20, 20), z_range_um=(0.0, 1.0), density_per_um2=None, count_range=(40, 40))
    xyz = loose.sample(rng(0))["xyz"]
    d = np.linalg.norm(xyz[:, None] - xyz[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    assert d.min() < 0.25


def test_same_generator_same_emitters():
    s = sampler(margin_px=3, min_distance_um=0.1)
    a, b, c = s.sample(rng(5, 0, 7)), s.sample(rng(5, 0, 7)), s.sample(rng(5, 0, 8))
    for key in ("xyz", "photons", "labelled"):
        assert np.array_equal(a[key], b[key])
    assert not np.array_equal(a["xyz"], c["xyz"]) or len(a["xyz"]) == 0


# ---------------------------------------------------------------------------------------------- ellipsoids
def test_ellipsoid_points_lie_on_the_surface():
    centre, radii = np.array([3.0, 4.0, 2.0]), np.array([1.5, 0.7, 1.1])
    p = ellipsoid_surface(rng(0), 2000, centre, radii)
    assert p.shape == (2000, 3)
    np.testing.assert_allclose((((p - centre) / radii) ** 2).sum(axis=1), 1.0, atol=1e-12)
    assert ellipsoid_surface(rng(0), 0, centre, radii).shape == (0, 3)


def test_sphere_points_are_uniform_in_area():
    """Archimedes: a zone |z| > 0.8R covers 20 % of a sphere (uniform-in-angle sampling gives 41 %)."""
    n = 20_000
    p = ellipsoid_surface(rng(1), n, (0, 0, 0), (2.0, 2.0, 2.0))
    frac = (np.abs(p[:, 2]) > 1.6).mean()
    assert abs(frac - 0.2) < 5 * math.sqrt(0.2 * 0.8 / n)


@pytest.mark.parametrize("a, c", [(1.0, 3.0), (2.0, 0.5)], ids=["prolate", "oblate"])
def test_spheroid_points_are_uniform_in_area(a, c):
    """Fraction of points with |z| > c/2 against the exact area fraction of that zone."""

    def zone_area(z0, z1):  # dA/dz = 2π·a·sqrt(1 − z²(c² − a²)/c⁴) for a spheroid of radii (a, a, c)
        return quad(lambda z: 2 * math.pi * a * math.sqrt(1 - z * z * (c * c - a * a) / c**4), z0, z1)[0]

    exact = 2 * zone_area(c / 2, c) / (2 * zone_area(0, c))
    n = 20_000
    p = ellipsoid_surface(rng(2), n, (0, 0, 0), (a, a, c))
    frac = (np.abs(p[:, 2]) > c / 2).mean()
    assert abs(frac - exact) < 5 * math.sqrt(exact * (1 - exact) / n)


# ---------------------------------------------------------------------------------------------- conversion
def test_to_emitters_pads_frames():
    s = sampler(label_min_photons=6000.0, margin_px=3)
    samples = [s.sample(rng(0, i)) for i in range(3)] + [
        {"xyz": np.zeros((0, 3)), "photons": np.zeros(0), "labelled": np.zeros(0, bool)}
    ]
    em = to_emitters(samples)
    counts = [len(x["xyz"]) for x in samples]
    assert em.batch_size == 4 and em.max_count == max(counts)
    assert em.counts().tolist() == counts
    assert em.counts(labelled_only=True).tolist() == [int(x["labelled"].sum()) for x in samples]
    assert em.xyz.dtype == torch.float32
    for i, x in enumerate(samples):
        np.testing.assert_allclose(em.per_frame()[i], x["xyz"], atol=1e-6)
        np.testing.assert_allclose(em.photons[i, : counts[i]].numpy(), x["photons"], rtol=1e-6)


# ----------------------------------------------------------------------------------------- setup & configs
def test_from_setup_takes_pixel_size_and_z_range():
    s = EmitterSampler.from_setup(storm_setup(), (64, 64), density_per_um2=(0.1, 0.2))
    assert s.pixel_size_um == pytest.approx(0.11) and s.z_range_um == (0.0, 4.0)
    EmitterSampler.from_setup(storm_setup(), (64, 64), count_range=(1, 5), z_range_um=(1.0, 3.0))
    with pytest.raises(ValueError, match="outside the optical setup"):
        EmitterSampler.from_setup(storm_setup(), (64, 64), count_range=(1, 5), z_range_um=(3.0, 5.0))
    with pytest.raises(ValueError, match="pixel_size_um"):
        sampler().check_setup(storm_setup())


def test_to_dict_round_trip():
    s = sampler(margin_px=2, min_distance_um=0.1, photons={"kind": "uniform", "low": 1, "high": 2})
    data = s.to_dict()
    assert isinstance(data["frame_shape"], list)
    assert EmitterSampler.from_dict(data) == s
    with pytest.raises(ValueError, match="unknown sampler key 'density'"):
        EmitterSampler.from_dict({**data, "density": 1})


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(density_per_um2=(-0.1, 0.2)), "density_per_um2 must be ≥ 0"),
        (dict(density_per_um2=(0.3, 0.2)), "lo ≤ hi"),
        (dict(count_range=(1, 5)), "exactly one of"),
        (dict(density_per_um2=None), "exactly one of"),
        (dict(density_per_um2=None, count_range=(1.5, 3)), "integers"),
        (dict(z_range_um=(3.0, 1.0)), "z_range_um must have lo ≤ hi"),
        (dict(z_range_um=(-1.0, 1.0)), "z_range_um must be ≥ 0"),
        (dict(frame_shape=(0, 10)), "frame_shape"),
        (dict(pixel_size_um=0.0), "pixel_size_um"),
        (dict(photons={"kind": "poisson", "lam": 3}), "photons.kind must be one of"),
        (dict(photons={"kind": "gamma", "shape": 3}), "missing \\['scale'\\]"),
        (dict(photons={"kind": "uniform", "low": 5, "high": 1}), "low ≤ high"),
        (dict(label_min_photons=-1), "label_min_photons"),
        (dict(margin_px=-2), "margin_px"),
        (dict(min_distance_um=-0.1), "min_distance_um"),
        (dict(max_emitters=-1), "max_emitters"),
    ],
)
def test_bad_sampler_settings_raise(overrides, match):
    with pytest.raises(ValueError, match=match) as info:
        sampler(**overrides)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("n, radii", [(-1, (1, 1, 1)), (2.5, (1, 1, 1)), (5, (1, 0, 1)), (5, (1, 1))])
def test_bad_ellipsoids_raise(n, radii):
    with pytest.raises(ValueError, match="ellipsoid"):
        ellipsoid_surface(rng(0), n, (0, 0, 0), radii)
