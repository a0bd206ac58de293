"""Random emitters for one frame at a time (numpy), and their conversion to padded ``Emitters``.

Geometry (see ``dstorm3d/emitters.py``): x along columns, y along rows, both in µm from the frame's
top-left corner; pixel ``c`` spans ``[c, c+1)·Δx``; z in µm above the coverslip. The data set calls
:meth:`EmitterSampler.sample` with ``numpy.random.default_rng([seed, epoch, index])``, so a frame's
emitters depend only on that generator.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from dstorm3d.emitters import Emitters
from dstorm3d.utils.validate import is_number

if TYPE_CHECKING:
    from dstorm3d.optics.setup import OpticalSetup

Sample = dict[str, np.ndarray]

#: Photon distributions and their keys.
PHOTON_KINDS: dict[str, tuple[str, ...]] = {
    "gamma": ("shape", "scale"),
    "uniform": ("low", "high"),
    "fixed": ("value",),
}


def _pair(name: str, value: Any, integer: bool = False) -> tuple[float, float] | tuple[int, int]:
    """A number (→ (v, v)) or a (lo, hi) pair with 0 ≤ lo ≤ hi, as floats (or ints)."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) != 2:
            raise ValueError(f"sampler.{name} must be a number or a (lo, hi) pair, got {list(value)}")
        lo, hi = value
    else:
        lo = hi = value
    if not (is_number(lo) and is_number(hi)) or not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"sampler.{name} must be finite numbers, got {value!r}")
    if integer and (int(lo) != lo or int(hi) != hi):
        raise ValueError(f"sampler.{name} must be integers, got {value!r}")
    if lo < 0:
        raise ValueError(f"sampler.{name} must be ≥ 0, got {value!r}")
    if lo > hi:
        raise ValueError(f"sampler.{name} must have lo ≤ hi, got {value!r}")
    return (int(lo), int(hi)) if integer else (float(lo), float(hi))


def _check_photons(spec: Any) -> dict[str, Any]:
    """Validate a photon-distribution dict; returns a copy with float values."""
    if not isinstance(spec, Mapping):
        raise ValueError(f"sampler.photons must be a mapping with a 'kind' key, got {spec!r}")
    kind = spec.get("kind")
    if kind not in PHOTON_KINDS:
        raise ValueError(f"sampler.photons.kind must be one of {sorted(PHOTON_KINDS)}, got {kind!r}")
    keys = PHOTON_KINDS[kind]
    extra = sorted(set(spec) - set(keys) - {"kind"})
    missing = [k for k in keys if k not in spec]
    if extra or missing:
        raise ValueError(
            f"sampler.photons of kind {kind!r} takes exactly the keys {list(keys)}; "
            f"unknown {extra}, missing {missing}"
        )
    out: dict[str, Any] = {"kind": kind}
    for key in keys:
        value = spec[key]
        if not is_number(value) or not math.isfinite(value) or value < 0:
            raise ValueError(f"sampler.photons.{key} must be a number ≥ 0, got {value!r}")
        out[key] = float(value)
    if kind == "gamma" and (out["shape"] <= 0 or out["scale"] <= 0):
        raise ValueError(f"sampler.photons gamma shape and scale must be > 0, got {out}")
    if kind == "uniform" and out["low"] > out["high"]:
        raise ValueError(f"sampler.photons uniform needs low ≤ high, got {out}")
    return out


@dataclass(frozen=True)
class EmitterSampler:
    """Random emitters for one frame.

    Exactly one of ``density_per_um2`` and ``count_range`` sets how many emitters fall inside the frame:
    ``density_per_um2 = (ρ_min, ρ_max)`` (emitters/µm², the paper's unit) draws ρ ~ U(ρ_min, ρ_max) and
    then Poisson(ρ·frame area); ``count_range = (n_min, n_max)`` draws a uniform integer. Emitters are
    uniform in x, y over the frame and in z over ``z_range_um``. With ``margin_px > 0`` further emitters
    fill a border ``margin_px`` wide around the frame at the same areal density (Poisson), so that PSFs
    of emitters just outside spill in realistically; they are rendered but never labelled.

    Attributes:
        frame_shape: (H, W) in pixels.
        pixel_size_um: camera pixel at the sample, Δx (µm).
        z_range_um: (z_min, z_max) in µm above the coverslip.
        density_per_um2: (ρ_min, ρ_max) emitters/µm², or ``None``.
        count_range: (n_min, n_max) emitters in the frame, or ``None``.
        photons: ``{"kind": "gamma", "shape": k, "scale": θ}``, ``{"kind": "uniform", "low": a, "high": b}``
            or ``{"kind": "fixed", "value": N}`` signal photons per emitter.
        label_min_photons: emitters with at most this many photons are rendered but not labelled
            (paper: 6000).
        min_distance_um: if set, no two emitters (inside or outside the frame) are closer than this in 3D;
            an emitter that finds no free place in ``max_tries`` draws is dropped.
        margin_px: width of the border around the frame that also receives emitters (pixels).
        max_emitters: cap on the number of emitters per frame (in-frame emitters are kept first).
        max_tries: draws per emitter when enforcing ``min_distance_um``.
    """

    frame_shape: tuple[int, int]
    pixel_size_um: float
    z_range_um: tuple[float, float]
    density_per_um2: tuple[float, float] | None = None
    count_range: tuple[int, int] | None = None
    photons: Mapping[str, Any] = field(
        default_factory=lambda: {"kind": "gamma", "shape": 3.0, "scale": 3000.0}
    )
    label_min_photons: float = 0.0
    min_distance_um: float | None = None
    margin_px: float = 0.0
    max_emitters: int | None = None
    max_tries: int = 100

    def __post_init__(self) -> None:
        shape = self.frame_shape
        if not (
            isinstance(shape, Sequence)
            and len(shape) == 2
            and all(is_number(s) and int(s) == s and s >= 1 for s in shape)
        ):
            raise ValueError(f"sampler.frame_shape must be (H, W) with positive integers, got {shape!r}")
        object.__setattr__(self, "frame_shape", (int(shape[0]), int(shape[1])))
        dx = self.pixel_size_um
        if not is_number(dx) or not math.isfinite(dx) or dx <= 0:
            raise ValueError(f"sampler.pixel_size_um must be a positive number, got {dx!r}")
        object.__setattr__(self, "pixel_size_um", float(dx))
        object.__setattr__(self, "z_range_um", _pair("z_range_um", self.z_range_um))
        if (self.density_per_um2 is None) == (self.count_range is None):
            raise ValueError("sampler needs exactly one of density_per_um2 and count_range")
        if self.density_per_um2 is not None:
            object.__setattr__(self, "density_per_um2", _pair("density_per_um2", self.density_per_um2))
        else:
            object.__setattr__(self, "count_range", _pair("count_range", self.count_range, integer=True))
        object.__setattr__(self, "photons", _check_photons(self.photons))
        for name in ("label_min_photons", "margin_px"):
            value = getattr(self, name)
            if not is_number(value) or not math.isfinite(value) or value < 0:
                raise ValueError(f"sampler.{name} must be a number ≥ 0, got {value!r}")
            object.__setattr__(self, name, float(value))
        if self.min_distance_um is not None:
            d = self.min_distance_um
            if not is_number(d) or not math.isfinite(d) or d < 0:
                raise ValueError(f"sampler.min_distance_um must be a number ≥ 0 or None, got {d!r}")
            object.__setattr__(self, "min_distance_um", float(d))
        for name, minimum in (("max_emitters", 0), ("max_tries", 1)):
            value = getattr(self, name)
            if value is None and name == "max_emitters":
                continue
            if not is_number(value) or int(value) != value or value < minimum:
                raise ValueError(f"sampler.{name} must be an integer ≥ {minimum}, got {value!r}")
            object.__setattr__(self, name, int(value))

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_setup(cls, setup: OpticalSetup, frame_shape: Sequence[int], **kwargs: Any) -> EmitterSampler:
        """A sampler with the setup's pixel size and (by default) z range; a given z range must lie
        inside the setup's."""
        kwargs.setdefault("z_range_um", setup.z_range_um)
        sampler = cls(frame_shape=tuple(frame_shape), pixel_size_um=setup.pixel_size_um, **kwargs)
        sampler.check_setup(setup)
        return sampler

    def check_setup(self, setup: OpticalSetup) -> None:
        """Raise when the pixel size differs from the setup's or the z range leaves the setup's."""
        if not math.isclose(self.pixel_size_um, setup.pixel_size_um, rel_tol=1e-9):
            raise ValueError(
                f"sampler.pixel_size_um = {self.pixel_size_um} µm differs from the optical "
                f"setup's {setup.pixel_size_um} µm"
            )
        (z0, z1), (s0, s1) = self.z_range_um, setup.z_range_um
        if z0 < s0 - 1e-12 or z1 > s1 + 1e-12:
            raise ValueError(
                f"sampler.z_range_um = {list(self.z_range_um)} lies outside the optical setup's "
                f"z range {list(setup.z_range_um)}"
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain data (lists instead of tuples)."""
        return {
            k: (list(v) if isinstance(v, tuple) else dict(v) if isinstance(v, Mapping) else v)
            for k, v in asdict(self).items()
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EmitterSampler:
        known = sorted(cls.__dataclass_fields__)
        for key in data:
            if key not in known:
                raise ValueError(f"unknown sampler key {key!r}; allowed keys: {known}")
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items()})

    # ------------------------------------------------------------------ geometry
    @property
    def frame_size_um(self) -> tuple[float, float]:
        """(width, height) of the frame in µm."""
        h, w = self.frame_shape
        return w * self.pixel_size_um, h * self.pixel_size_um

    @property
    def frame_area_um2(self) -> float:
        width, height = self.frame_size_um
        return width * height

    @property
    def margin_um(self) -> float:
        return self.margin_px * self.pixel_size_um

    @property
    def margin_area_um2(self) -> float:
        """Area of the border around the frame (µm²)."""
        width, height = self.frame_size_um
        m = self.margin_um
        return (width + 2 * m) * (height + 2 * m) - width * height

    def inside_frame(self, xyz: np.ndarray) -> np.ndarray:
        """``(n,)`` bool: x, y inside ``[0, W·Δx) × [0, H·Δx)``."""
        width, height = self.frame_size_um
        x, y = xyz[:, 0], xyz[:, 1]
        return (x >= 0) & (x < width) & (y >= 0) & (y < height)

    # ------------------------------------------------------------------ sampling
    def _draw_in_frame(self, rng: np.random.Generator, n: int) -> np.ndarray:
        width, height = self.frame_size_um
        xy = rng.uniform(0.0, 1.0, size=(n, 2)) * np.array([width, height])
        # rounding can put u·width exactly on the far edge; keep the half-open convention
        return np.minimum(xy, np.nextafter(np.array([width, height]), 0.0))

    def _draw_in_margin(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """Uniform on the border: pick a strip by area (top/bottom with corners, left/right), then a point."""
        if n == 0:
            return np.zeros((0, 2))
        width, height = self.frame_size_um
        m = self.margin_um
        full_width = width + 2 * m
        areas = np.array([full_width * m, full_width * m, m * height, m * height])
        strip = rng.choice(4, size=n, p=areas / areas.sum())
        u = rng.uniform(0.0, 1.0, size=(n, 2))
        x = np.where(
            strip < 2, -m + u[:, 0] * full_width, np.where(strip == 2, -m + u[:, 0] * m, width + u[:, 0] * m)
        )
        y = np.where(
            strip == 0, -m + u[:, 1] * m, np.where(strip == 1, height + u[:, 1] * m, u[:, 1] * height)
        )
        return np.stack([x, y], axis=1)

    def _draw_positions(self, rng: np.random.Generator, in_frame: np.ndarray) -> np.ndarray:
        """``(n, 3)`` positions for emitters flagged in-frame (True) or in the margin (False)."""
        n = len(in_frame)
        xy = np.empty((n, 2))
        xy[in_frame] = self._draw_in_frame(rng, int(in_frame.sum()))
        xy[~in_frame] = self._draw_in_margin(rng, int((~in_frame).sum()))
        z = rng.uniform(*self.z_range_um, size=n)
        return np.column_stack([xy, z])

    def _spread_out(self, rng: np.random.Generator, xyz: np.ndarray, in_frame: np.ndarray) -> np.ndarray:
        """Keep positions at least ``min_distance_um`` apart: emitters are placed one by one; one that is too
        close to an already placed one is redrawn in its region, up to ``max_tries`` draws in all, else
        dropped.
        Returns the ``(k, 3)`` placed positions (in order)."""
        d2 = self.min_distance_um**2
        placed: list[np.ndarray] = []
        for i in range(len(xyz)):
            candidate = xyz[i]
            for attempt in range(self.max_tries):
                if attempt:
                    candidate = self._draw_positions(rng, in_frame[i : i + 1])[0]
                if not placed or np.min(np.sum((np.asarray(placed) - candidate) ** 2, axis=1)) >= d2:
                    placed.append(candidate)
                    break
        return np.asarray(placed, dtype=np.float64).reshape(-1, 3)

    def _draw_photons(self, rng: np.random.Generator, n: int) -> np.ndarray:
        spec = self.photons
        if spec["kind"] == "gamma":
            return rng.gamma(spec["shape"], spec["scale"], size=n)
        if spec["kind"] == "uniform":
            return rng.uniform(spec["low"], spec["high"], size=n)
        return np.full(n, spec["value"])

    def sample(self, rng: np.random.Generator) -> Sample:
        """Emitters of one frame: ``xyz (n, 3)`` float64 µm, ``photons (n,)`` float64, ``labelled (n,)`` bool.

        ``labelled`` is True for emitters inside the frame with more than ``label_min_photons`` photons.
        """
        if self.density_per_um2 is not None:
            density = rng.uniform(*self.density_per_um2)
            n_in = int(rng.poisson(density * self.frame_area_um2))
        else:
            lo, hi = self.count_range  # type: ignore[misc]
            n_in = int(rng.integers(lo, hi + 1))
            density = n_in / self.frame_area_um2
        n_out = int(rng.poisson(density * self.margin_area_um2)) if self.margin_px > 0 else 0
        if self.max_emitters is not None:
            n_in = min(n_in, self.max_emitters)
            n_out = min(n_out, self.max_emitters - n_in)
        in_frame = np.arange(n_in + n_out) < n_in
        xyz = self._draw_positions(rng, in_frame)
        if self.min_distance_um:
            xyz = self._spread_out(rng, xyz, in_frame)
        photons = self._draw_photons(rng, len(xyz)).astype(np.float64)
        labelled = self.inside_frame(xyz) & (photons > self.label_min_photons)
        return {"xyz": xyz, "photons": photons, "labelled": labelled}


def ellipsoid_surface(
    rng: np.random.Generator, n: int, centre_um: Sequence[float], radii_um: Sequence[float]
) -> np.ndarray:
    """``(n, 3)`` points distributed uniformly by area on the surface of an axis-aligned ellipsoid (µm).

    A uniform direction u on the unit sphere maps to ``centre + radii·u``; that map stretches area by
    ``abc·|u/radii|``, so each point is kept with probability ``min(radii)·|u/radii|`` (≤ 1), which makes
    the kept points uniform in area (uniform-in-angle points would crowd the poles and narrow ends).
    """
    if isinstance(n, bool) or not is_number(n) or int(n) != n or n < 0:
        raise ValueError(f"ellipsoid_surface needs an integer n ≥ 0, got {n!r}")
    centre = np.asarray(centre_um, dtype=np.float64)
    radii = np.asarray(radii_um, dtype=np.float64)
    if centre.shape != (3,) or radii.shape != (3,):
        raise ValueError(f"ellipsoid centre and radii need 3 values each, got {centre_um!r}, {radii_um!r}")
    if not (np.all(np.isfinite(radii)) and np.all(radii > 0) and np.all(np.isfinite(centre))):
        raise ValueError(f"ellipsoid radii must be positive and finite, got {radii_um!r}")
    kept: list[np.ndarray] = []
    remaining = int(n)
    while remaining > 0:
        batch = max(2 * remaining, 64)
        u = rng.standard_normal((batch, 3))
        u /= np.linalg.norm(u, axis=1, keepdims=True)
        accept_prob = radii.min() * np.linalg.norm(u / radii, axis=1)
        u = u[rng.uniform(size=batch) < accept_prob][:remaining]
        kept.append(u)
        remaining -= len(u)
    directions = np.concatenate(kept) if kept else np.zeros((0, 3))
    return centre + directions * radii


def to_emitters(
    samples: Sequence[Mapping[str, np.ndarray]],
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Emitters:
    """Pad per-frame sample dicts (``xyz``, ``photons``, ``labelled``) into one ``Emitters`` batch
    (``B = len(samples)``, ``M`` = the largest count)."""
    return Emitters.from_lists(
        xyz=[np.asarray(s["xyz"], dtype=np.float64).reshape(-1, 3) for s in samples],
        photons=[s["photons"] for s in samples],
        labelled=[s["labelled"] for s in samples],
        device=device,
        dtype=dtype,
    )
