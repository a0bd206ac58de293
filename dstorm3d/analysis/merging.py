"""Merging: the localizations of one emitter in consecutive frames become one.

Frame by frame, each localization is linked to the nearest open *chain* (the localizations merged so
far) whose last localization lies within ``radius_nm`` laterally and ``axial_radius_nm`` axially (an
ellipsoid: z is scaled by ``radius_nm / axial_radius_nm`` and the neighbours found by
:class:`scipy.spatial.cKDTree`) and was seen at most ``max_gap_frames`` frames before; pairs are taken
closest first, each chain and localization at most once. A chain not continued for more than
``max_gap_frames`` frames is closed.

A chain becomes one localization: the precision-weighted mean position (weights 1/σ² per axis), its
precision 1/√Σ(1/σ²), the summed photons, the highest confidence, the first and the last frame and the
number of localizations merged (``detections``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from dstorm3d.analysis.localizations import Localizations
from dstorm3d.utils.validate import flag, integer, number


@dataclass(frozen=True)
class MergeSettings:
    """``merging.*`` of ``configs/analyze.yaml`` (distances in nm, gap in frames)."""

    enabled: bool = True
    radius_nm: float = 50.0
    axial_radius_nm: float = 100.0
    max_gap_frames: int = 1

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> MergeSettings:
        return cls(
            enabled=flag("merging.enabled", config.get("enabled")),
            radius_nm=number("merging.radius_nm", config.get("radius_nm"), above=0.0, example=50),
            axial_radius_nm=number(
                "merging.axial_radius_nm", config.get("axial_radius_nm"), above=0.0, example=100
            ),
            max_gap_frames=integer(
                "merging.max_gap_frames", config.get("max_gap_frames"), minimum=0, example=1
            ),
        )


def _closest_pairs(distances: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> list[tuple[int, int]]:
    """Greedy one-to-one pairs, closest first, from candidate pairs ``(rows[k], cols[k])``."""
    pairs, used_rows, used_cols = [], set(), set()
    for k in np.argsort(distances, kind="stable"):
        r, c = int(rows[k]), int(cols[k])
        if r not in used_rows and c not in used_cols:
            used_rows.add(r)
            used_cols.add(c)
            pairs.append((r, c))
    return pairs


def link(locs: Localizations, settings: MergeSettings) -> np.ndarray:
    """``(N,)`` int64 chain index of every localization (0..chains−1, in order of each chain's first
    localization); ``locs`` must be sorted by frame."""
    from scipy.spatial import cKDTree

    n = len(locs)
    chain = np.empty(n, dtype=np.int64)
    if not n:
        return chain
    scaled = locs.xyz_nm * np.array([1.0, 1.0, settings.radius_nm / settings.axial_radius_nm])
    starts = np.flatnonzero(np.r_[True, np.diff(locs.frame) != 0])
    stops = np.r_[starts[1:], n]
    open_ids = np.zeros(0, dtype=np.int64)  # chains that may still be continued
    open_pos = np.zeros((0, 3))
    open_frame = np.zeros(0, dtype=np.int64)
    chains = 0
    for start, stop in zip(starts, stops):
        frame = int(locs.frame[start])
        alive = open_frame >= frame - 1 - settings.max_gap_frames
        open_ids, open_pos, open_frame = open_ids[alive], open_pos[alive], open_frame[alive]
        here = scaled[start:stop]
        assigned = np.full(stop - start, -1, dtype=np.int64)
        if len(open_ids):
            matrix = cKDTree(open_pos).sparse_distance_matrix(
                cKDTree(here), settings.radius_nm, output_type="ndarray"
            )
            for r, c in _closest_pairs(matrix["v"], matrix["i"], matrix["j"]):
                assigned[c] = open_ids[r]
                open_pos[r] = here[c]
                open_frame[r] = frame
        fresh = assigned < 0
        assigned[fresh] = np.arange(chains, chains + int(fresh.sum()))
        chains += int(fresh.sum())
        chain[start:stop] = assigned
        open_ids = np.r_[open_ids, assigned[fresh]]
        open_pos = np.vstack([open_pos, here[fresh]])
        open_frame = np.r_[open_frame, np.full(int(fresh.sum()), frame)]
    return chain


def combine(locs: Localizations, chain: np.ndarray) -> Localizations:
    """One localization per chain index (see the module docstring), sorted by first frame."""
    if not len(chain):
        return locs
    chains = int(chain.max()) + 1
    weight = 1.0 / locs.precision_nm**2
    total = np.stack([np.bincount(chain, weight[:, k], chains) for k in range(3)], axis=1)
    mean = np.stack([np.bincount(chain, weight[:, k] * locs.xyz_nm[:, k], chains) for k in range(3)], 1)
    known = ~np.isnan(locs.photons)
    photons = np.bincount(chain, np.where(known, locs.photons, 0.0), chains)
    photons[np.bincount(chain, known, chains) == 0] = np.nan
    confidence = np.full(chains, -np.inf)
    np.maximum.at(confidence, chain, np.nan_to_num(locs.confidence, nan=-np.inf))
    first = np.full(chains, np.iinfo(np.int64).max)
    np.minimum.at(first, chain, locs.frame)
    last = np.zeros(chains, dtype=np.int64)
    np.maximum.at(last, chain, locs.last_frame)
    order = np.argsort(first, kind="stable")
    return replace(
        locs,
        frame=first[order],
        last_frame=last[order],
        xyz_nm=(mean / total)[order],
        precision_nm=(1.0 / np.sqrt(total))[order],
        photons=photons[order],
        confidence=np.where(np.isfinite(confidence), confidence, np.nan)[order],
        detections=np.bincount(chain, locs.detections, chains).astype(np.int64)[order],
    )


def merge(locs: Localizations, settings: MergeSettings) -> Localizations:
    """``locs`` with each emitter's localizations in consecutive frames merged into one."""
    return combine(locs, link(locs, settings))
