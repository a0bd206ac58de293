"""Fixed fluorophore structures for simulated recordings: smooth 3D filaments, ellipsoid surfaces and
uniform random positions inside the imaged volume (positions in µm; x, y from the frame's top-left
corner, z above the coverslip)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dstorm3d.errors import UserInputError
from dstorm3d.simulation.sampling import ellipsoid_surface
from dstorm3d.utils.validate import integer, mapping, number, pair

STRUCTURES = ("filaments", "ellipsoids", "random")


@dataclass(frozen=True)
class FilamentSettings:
    """Smooth random 3D curves across the frame with emitters along them (``filaments.*``)."""

    count: int
    control_points: int
    wiggle_um: float
    tube_radius_um: float

    @classmethod
    def from_config(cls, config: Any) -> FilamentSettings:
        c = mapping("filaments", config, [f for f in cls.__dataclass_fields__])
        return cls(
            count=integer("filaments.count", c.get("count"), minimum=1),
            control_points=integer("filaments.control_points", c.get("control_points"), minimum=2),
            wiggle_um=number("filaments.wiggle_um", c.get("wiggle_um"), minimum=0),
            tube_radius_um=number("filaments.tube_radius_um", c.get("tube_radius_um"), minimum=0),
        )


@dataclass(frozen=True)
class EllipsoidSettings:
    """Ellipsoid surfaces inside the volume (``ellipsoids.*``)."""

    count: int
    lateral_radius_um: tuple[float, float]
    axial_fraction: tuple[float, float]

    @classmethod
    def from_config(cls, config: Any) -> EllipsoidSettings:
        c = mapping("ellipsoids", config, [f for f in cls.__dataclass_fields__])
        lateral = pair("ellipsoids.lateral_radius_um", c.get("lateral_radius_um"), minimum=0)
        axial = pair("ellipsoids.axial_fraction", c.get("axial_fraction"), minimum=0)
        if lateral[0] <= 0 or axial[0] <= 0 or axial[1] > 1:
            raise UserInputError(
                "ellipsoids need lateral_radius_um > 0 and axial_fraction in (0, 1], got "
                f"{list(lateral)} and {list(axial)}"
            )
        return cls(
            count=integer("ellipsoids.count", c.get("count"), minimum=1),
            lateral_radius_um=lateral,
            axial_fraction=axial,
        )


@dataclass(frozen=True)
class Volume:
    """The imaged volume (µm): x ∈ [0, width), y ∈ [0, height) from the top-left corner and
    z ∈ [z_min, z_max]."""

    width_um: float
    height_um: float
    z_range_um: tuple[float, float]

    @property
    def z_span_um(self) -> float:
        return self.z_range_um[1] - self.z_range_um[0]

    @property
    def area_um2(self) -> float:
        return self.width_um * self.height_um

    def contains(self, xyz: np.ndarray) -> np.ndarray:
        x, y, z = xyz[:, 0], xyz[:, 1], xyz[:, 2]
        return (
            (x >= 0)
            & (x < self.width_um)
            & (y >= 0)
            & (y < self.height_um)
            & (z >= self.z_range_um[0])
            & (z <= self.z_range_um[1])
        )


def fill_volume(
    draw: Callable[[np.random.Generator, int], np.ndarray],
    n: int,
    volume: Volume,
    rng: np.random.Generator,
    structure: str,
) -> np.ndarray:
    """``(n, 3)`` points from ``draw(rng, count)`` that lie inside ``volume``, in the order drawn."""
    kept: list[np.ndarray] = []
    found = drawn = 0
    for _ in range(200):
        if found >= n:
            break
        acceptance = max(found / drawn, 0.01) if drawn else 0.5
        batch = min(int(math.ceil((n - found) / acceptance * 1.2)) + 16, 2_000_000)
        points = draw(rng, batch)
        inside = points[volume.contains(points)]
        kept.append(inside)
        found, drawn = found + len(inside), drawn + batch
        if drawn >= 1000 and found == 0:
            break
    if found < n:
        raise UserInputError(
            f"structure={structure} leaves (almost) nothing inside the "
            f"{volume.width_um:.2f}×{volume.height_um:.2f} µm frame and z range "
            f"{list(volume.z_range_um)}: change its settings or use structure=random"
        )
    return np.concatenate(kept)[:n]


def random_structure(rng: np.random.Generator, n: int, volume: Volume) -> tuple[np.ndarray, dict[str, Any]]:
    """Uniform in the volume."""

    def draw(generator: np.random.Generator, count: int) -> np.ndarray:
        low = [0.0, 0.0, volume.z_range_um[0]]
        high = [volume.width_um, volume.height_um, volume.z_range_um[1]]
        return generator.uniform(low, high, size=(count, 3))

    return fill_volume(draw, n, volume, rng, "random"), {"kind": "random"}


def ellipsoid_area(radii: Sequence[float]) -> float:
    """Surface area of an ellipsoid (Knud Thomsen's approximation, ≤ 1.1 % error)."""
    p = 1.6075
    a, b, c = (float(r) ** p for r in radii)
    return 4 * math.pi * ((a * b + a * c + b * c) / 3) ** (1 / p)


def _require_depth(volume: Volume, structure: str) -> None:
    if volume.z_span_um <= 0:
        raise UserInputError(
            f"structure={structure} needs a z range of positive length, got "
            f"{list(volume.z_range_um)}: widen z_range_um or use structure=random"
        )


def ellipsoid_structure(
    rng: np.random.Generator, n: int, volume: Volume, settings: EllipsoidSettings
) -> tuple[np.ndarray, dict[str, Any]]:
    """Emitters uniform by area on ellipsoid surfaces, each rotated about z by a random angle.

    The frame is divided into a near-square grid of at least ``count`` cells; each ellipsoid is centred
    in the middle half of a different random cell (so they spread over the frame) and at a depth that
    keeps it inside the z range.
    """
    _require_depth(volume, "ellipsoids")
    z0, z1 = volume.z_range_um
    columns = math.ceil(math.sqrt(settings.count * volume.width_um / volume.height_um))
    rows = math.ceil(settings.count / columns)
    cells = rng.choice(rows * columns, size=settings.count, replace=False)
    shapes = []
    for cell in cells:
        lateral = rng.uniform(*settings.lateral_radius_um, size=2)
        axial = rng.uniform(*settings.axial_fraction) * volume.z_span_um / 2
        row, column = divmod(int(cell), columns)
        centre = [
            (column + rng.uniform(0.25, 0.75)) * volume.width_um / columns,
            (row + rng.uniform(0.25, 0.75)) * volume.height_um / rows,
            rng.uniform(z0 + axial, z1 - axial),
        ]
        shapes.append(
            {
                "centre_um": [float(v) for v in centre],
                "radii_um": [float(lateral[0]), float(lateral[1]), float(axial)],
                "angle_deg": float(rng.uniform(0.0, 180.0)),
            }
        )
    areas = np.array([ellipsoid_area(s["radii_um"]) for s in shapes])

    def draw(generator: np.random.Generator, count: int) -> np.ndarray:
        counts = generator.multinomial(count, areas / areas.sum())
        parts = []
        for shape, k in zip(shapes, counts):
            local = ellipsoid_surface(generator, int(k), (0.0, 0.0, 0.0), shape["radii_um"])
            angle = math.radians(shape["angle_deg"])
            rotation = np.array(
                [
                    [math.cos(angle), -math.sin(angle), 0.0],
                    [math.sin(angle), math.cos(angle), 0.0],
                    [0.0, 0.0, 1.0],
                ]
            )
            parts.append(np.asarray(shape["centre_um"]) + local @ rotation.T)
        points = np.concatenate(parts)
        return points[generator.permutation(len(points))]

    return fill_volume(draw, n, volume, rng, "ellipsoids"), {"kind": "ellipsoids", "ellipsoids": shapes}


@dataclass(frozen=True)
class Filament:
    """A smooth curve sampled densely: ``points (S, 3)`` µm and their cumulative arc length ``(S,)``."""

    points: np.ndarray
    arc_um: np.ndarray

    @property
    def length_um(self) -> float:
        return float(self.arc_um[-1])

    def at(self, arc_um: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Positions and unit tangents at arc lengths ``(m,)``, linear between the dense samples."""
        index = np.clip(np.searchsorted(self.arc_um, arc_um, side="right") - 1, 0, len(self.arc_um) - 2)
        step = self.arc_um[index + 1] - self.arc_um[index]
        frac = np.divide(arc_um - self.arc_um[index], step, out=np.zeros_like(arc_um), where=step > 0)
        tangent = self.points[index + 1] - self.points[index]
        position = self.points[index] + frac[:, None] * tangent
        norm = np.linalg.norm(tangent, axis=1, keepdims=True)
        return position, np.divide(tangent, norm, out=np.zeros_like(tangent), where=norm > 0)


def filament_structure(
    rng: np.random.Generator, n: int, volume: Volume, settings: FilamentSettings
) -> tuple[np.ndarray, dict[str, Any]]:
    """Emitters uniform by length along smooth random 3D curves that cross the whole frame, optionally on a
    tube surface around them.

    Each filament is a natural cubic spline through ``control_points`` knots spaced evenly along a line in
    a random direction through the middle of the frame, offset sideways by N(0, wiggle²) and at depths
    uniform in the z range (kept one tube radius inside it when it is deep enough).
    """
    from scipy.interpolate import CubicSpline

    _require_depth(volume, "filaments")
    z0, z1 = volume.z_range_um
    radius = settings.tube_radius_um
    z_lo, z_hi = (z0 + radius, z1 - radius) if volume.z_span_um > 2 * radius else (z0, z1)
    half_length = 0.5 * math.hypot(volume.width_um, volume.height_um) + 2 * settings.wiggle_um
    filaments: list[Filament] = []
    knots_out: list[list[list[float]]] = []
    for _ in range(settings.count):
        centre = np.array([rng.uniform(0.2, 0.8) * volume.width_um, rng.uniform(0.2, 0.8) * volume.height_um])
        angle = rng.uniform(0.0, math.pi)
        along = np.array([math.cos(angle), math.sin(angle)])
        across = np.array([-along[1], along[0]])
        t = np.linspace(-half_length, half_length, settings.control_points)
        offset = (
            rng.normal(0.0, settings.wiggle_um, size=settings.control_points)
            if settings.wiggle_um
            else np.zeros_like(t)
        )
        xy = centre + t[:, None] * along + offset[:, None] * across
        z = rng.uniform(z_lo, z_hi, size=settings.control_points)
        knots = np.column_stack([xy, z])
        dense = CubicSpline(t, knots, axis=0, bc_type="natural")(np.linspace(t[0], t[-1], 4096))
        arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(dense, axis=0), axis=1))])
        filaments.append(Filament(dense, arc))
        knots_out.append(knots.round(6).tolist())
    lengths = np.array([f.length_um for f in filaments])

    def draw(generator: np.random.Generator, count: int) -> np.ndarray:
        counts = generator.multinomial(count, lengths / lengths.sum())
        parts = []
        for filament, k in zip(filaments, counts):
            position, tangent = filament.at(generator.uniform(0.0, filament.length_um, size=int(k)))
            if radius > 0:
                normal = generator.standard_normal((int(k), 3))
                normal -= np.sum(normal * tangent, axis=1, keepdims=True) * tangent
                normal /= np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-12)
                position = position + radius * normal
            parts.append(position)
        points = np.concatenate(parts)
        return points[generator.permutation(len(points))]

    geometry = {"kind": "filaments", "lengths_um": lengths.round(4).tolist(), "knots_um": knots_out}
    return fill_volume(draw, n, volume, rng, "filaments"), geometry
