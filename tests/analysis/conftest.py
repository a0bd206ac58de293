"""Simulated localization tables for the analysis tests: emitters on smooth 3D filaments
(:mod:`dstorm3d.simulation.structures`), blinking as a two-state Markov chain
(:mod:`dstorm3d.simulation.blinking`), Gaussian localization noise and a known smooth 3D drift."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from dstorm3d.simulation.blinking import Blinking
from dstorm3d.simulation.structures import FilamentSettings, Volume, filament_structure

HEADER = ("id", "frame", "x [nm]", "y [nm]", "z [nm]", "intensity [photon]", "confidence")
UNCERTAINTY_HEADER = ("uncertainty_x [nm]", "uncertainty_y [nm]", "uncertainty_z [nm]")


@dataclass
class Recording:
    """A simulated localization table.

    Attributes:
        frame: ``(N,)`` frames from 1; ``emitter`` ``(N,)`` which emitter each localization is.
        xyz_nm: ``(N, 3)`` localizations (truth + drift of the frame + noise), nm.
        emitters_nm: ``(E, 3)`` true emitter positions, nm.
        drift_nm: ``(F, 3)`` the drift of frames 1..F (row f − 1), nm.
        precision_nm: ``(3,)`` the noise's standard deviations x, y, z, nm.
        photons, confidence: ``(N,)``.
    """

    frame: np.ndarray
    emitter: np.ndarray
    xyz_nm: np.ndarray
    emitters_nm: np.ndarray
    drift_nm: np.ndarray
    precision_nm: np.ndarray
    photons: np.ndarray
    confidence: np.ndarray

    def write(self, path: Path, uncertainties: bool = True) -> Path:
        """A ThunderSTORM table as ``infer`` writes it (with its uncertainty columns when asked)."""
        header = HEADER + (UNCERTAINTY_HEADER if uncertainties else ())
        lines = [",".join(f'"{name}"' for name in header)]
        for k in range(len(self.frame)):
            row = [k + 1, int(self.frame[k]), *(f"{v:.3f}" for v in self.xyz_nm[k])]
            row += [f"{self.photons[k]:.1f}", f"{self.confidence[k]:.4f}"]
            row += [f"{v:.3f}" for v in self.precision_nm] if uncertainties else []
            lines.append(",".join(str(v) for v in row))
        path.write_text("\n".join(lines) + "\n")
        return path


def smooth_drift(frames: int, amplitude_nm: float) -> np.ndarray:
    """``(frames, 3)`` a smooth 3D drift, zero at frame 1: x a sine, y a parabola, z a cosine."""
    t = np.arange(frames) / max(frames - 1, 1)
    drift = np.stack(
        [
            amplitude_nm * np.sin(2 * math.pi * 0.7 * t),
            amplitude_nm * (t**2 - 0.5 * t),
            0.8 * amplitude_nm * np.cos(math.pi * t),
        ],
        axis=1,
    )
    return drift - drift[0]


def simulate(
    seed: int = 0,
    frames: int = 2000,
    emitters: int = 1500,
    active: float = 15.0,
    mean_on_frames: float = 2.0,
    precision_nm: tuple[float, float, float] = (10.0, 10.0, 25.0),
    drift_amplitude_nm: float = 150.0,
    field_um: float = 20.0,
    filaments: int = 8,
) -> Recording:
    """Emitters on ``filaments`` smooth 3D curves across a ``field_um`` square, z 200–1000 nm; ``active``
    emitters on per frame on average (Markov blinking, ``mean_on_frames`` frames per ON period)."""
    rng = np.random.default_rng(seed)
    volume = Volume(field_um, field_um, (0.2, 1.0))
    settings = FilamentSettings(count=filaments, control_points=5, wiggle_um=1.0, tube_radius_um=0.0)
    positions_um, _ = filament_structure(rng, emitters, volume, settings)
    duty = active / emitters
    p_off = 1.0 / mean_on_frames
    blinking = Blinking("markov", duty, duty * p_off / (1 - duty), p_off)
    frame_list, who_list = [], []
    for index, on in enumerate(blinking.states(rng, emitters, frames)):
        who = np.flatnonzero(on)
        frame_list.append(np.full(len(who), index + 1))
        who_list.append(who)
    frame, who = np.concatenate(frame_list), np.concatenate(who_list)
    drift = smooth_drift(frames, drift_amplitude_nm)
    sigma = np.asarray(precision_nm, dtype=np.float64)
    truth = positions_um * 1e3
    xyz = truth[who] + drift[frame - 1] + rng.normal(size=(len(frame), 3)) * sigma
    return Recording(
        frame=frame,
        emitter=who,
        xyz_nm=xyz,
        emitters_nm=truth,
        drift_nm=drift,
        precision_nm=sigma,
        photons=rng.uniform(2000, 8000, len(frame)),
        confidence=rng.uniform(0.2, 1.0, len(frame)),
    )


def as_localizations(recording: Recording):
    """The recording as :class:`~dstorm3d.analysis.localizations.Localizations` (its precision per row)."""
    from dstorm3d.analysis.localizations import Localizations

    n = len(recording.frame)
    frame = recording.frame.astype(np.int64)
    return Localizations(
        frame=frame,
        last_frame=frame.copy(),
        xyz_nm=recording.xyz_nm.copy(),
        precision_nm=np.tile(recording.precision_nm, (n, 1)),
        photons=recording.photons.copy(),
        confidence=recording.confidence.copy(),
        detections=np.ones(n, dtype=np.int64),
        intensity_column="intensity [photon]",
        precision_from_table=(True, True, True),
    )


def table(rows: list[tuple], precision: tuple[float, float, float] = (10.0, 10.0, 25.0)):
    """Hand-built :class:`Localizations` from rows ``(frame, x, y, z, photons)`` (nm, photons)."""
    from dstorm3d.analysis.localizations import Localizations

    values = np.array(rows, dtype=np.float64).reshape(-1, 5)
    n = len(values)
    frame = values[:, 0].astype(np.int64)
    return Localizations(
        frame=frame,
        last_frame=frame.copy(),
        xyz_nm=values[:, 1:4].copy(),
        precision_nm=np.tile(np.asarray(precision, dtype=np.float64), (n, 1)),
        photons=values[:, 4].copy(),
        confidence=np.full(n, 0.9),
        detections=np.ones(n, dtype=np.int64),
        intensity_column="intensity [photon]",
    )


@pytest.fixture
def sim() -> type:
    """The helpers of this file, for tests to call with their own settings."""

    class Helpers:
        simulate = staticmethod(simulate)
        smooth_drift = staticmethod(smooth_drift)
        as_localizations = staticmethod(as_localizations)
        table = staticmethod(table)

    return Helpers
