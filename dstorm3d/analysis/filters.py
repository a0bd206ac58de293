"""Filtering localizations by confidence, photons, z and predicted uncertainty (``filters.*``; null = off).

A localization is kept when it passes every threshold that is set: confidence ≥ ``min_confidence``,
``min_photons`` ≤ photons ≤ ``max_photons``, z inside ``z_range_nm`` (nm above the coverslip), lateral
uncertainty (the larger of x and y) ≤ ``max_lateral_uncertainty_nm`` and axial uncertainty ≤
``max_axial_uncertainty_nm``. The thresholds that need a column (confidence, intensity, uncertainty) are
refused, before the table is read, for a table without it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from dstorm3d.analysis.localizations import LATERAL_UNCERTAINTY, PRECISION_COLUMNS, Localizations
from dstorm3d.errors import UserInputError
from dstorm3d.utils.validate import flag, number, pair

INTENSITY_COLUMN = "intensity [photon]"


@dataclass(frozen=True)
class FilterSettings:
    """``filters.*`` of ``configs/analyze.yaml`` (None: that filter is off)."""

    enabled: bool = True
    min_confidence: float | None = None
    min_photons: float | None = None
    max_photons: float | None = None
    z_range_nm: tuple[float, float] | None = None
    max_lateral_uncertainty_nm: float | None = None
    max_axial_uncertainty_nm: float | None = None

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> FilterSettings:
        def optional(key: str, **bounds: Any) -> float | None:
            return number(f"filters.{key}", config.get(key), allow_none=True, **bounds)

        z_range = config.get("z_range_nm")
        settings = cls(
            enabled=flag("filters.enabled", config.get("enabled")),
            min_confidence=optional("min_confidence", minimum=0.0, maximum=1.0, example=0.5),
            min_photons=optional("min_photons", minimum=0.0, example=1000),
            max_photons=optional("max_photons", above=0.0, example=50000),
            z_range_nm=None if z_range is None else pair("filters.z_range_nm", z_range),
            max_lateral_uncertainty_nm=optional("max_lateral_uncertainty_nm", above=0.0, example=30),
            max_axial_uncertainty_nm=optional("max_axial_uncertainty_nm", above=0.0, example=60),
        )
        low, high = settings.min_photons, settings.max_photons
        if low is not None and high is not None and low > high:
            raise UserInputError(
                f"filters.min_photons={low:g} is above filters.max_photons={high:g}: nothing could pass"
            )
        return settings

    def needed_columns(self) -> dict[str, tuple[str, ...]]:
        """The columns the thresholds that are set need: setting → columns that would do (any one)."""
        if not self.enabled:
            return {}
        needs: dict[str, tuple[str, ...]] = {}
        if self.min_confidence is not None:
            needs["filters.min_confidence"] = ("confidence",)
        for key in ("min_photons", "max_photons"):
            if getattr(self, key) is not None:
                needs[f"filters.{key}"] = (INTENSITY_COLUMN,)
        if self.max_lateral_uncertainty_nm is not None:
            needs["filters.max_lateral_uncertainty_nm"] = (PRECISION_COLUMNS["x"][0], *LATERAL_UNCERTAINTY)
        if self.max_axial_uncertainty_nm is not None:
            needs["filters.max_axial_uncertainty_nm"] = PRECISION_COLUMNS["z"]
        return needs

    def active(self) -> dict[str, Any]:
        """The thresholds that are set."""
        names = (
            "min_confidence",
            "min_photons",
            "max_photons",
            "z_range_nm",
            "max_lateral_uncertainty_nm",
            "max_axial_uncertainty_nm",
        )
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}


def criteria(locs: Localizations, settings: FilterSettings) -> dict[str, np.ndarray]:
    """``(N,)`` bool per threshold that is set: the localizations that pass it."""
    passed: dict[str, np.ndarray] = {}
    if settings.min_confidence is not None:
        passed["min_confidence"] = locs.confidence >= settings.min_confidence
    if settings.min_photons is not None:
        passed["min_photons"] = locs.photons >= settings.min_photons
    if settings.max_photons is not None:
        passed["max_photons"] = locs.photons <= settings.max_photons
    if settings.z_range_nm is not None:
        z = locs.xyz_nm[:, 2]
        passed["z_range_nm"] = (z >= settings.z_range_nm[0]) & (z <= settings.z_range_nm[1])
    if settings.max_lateral_uncertainty_nm is not None:
        lateral = locs.precision_nm[:, :2].max(axis=1)
        passed["max_lateral_uncertainty_nm"] = lateral <= settings.max_lateral_uncertainty_nm
    if settings.max_axial_uncertainty_nm is not None:
        passed["max_axial_uncertainty_nm"] = locs.precision_nm[:, 2] <= settings.max_axial_uncertainty_nm
    return passed


def apply_filters(locs: Localizations, settings: FilterSettings) -> tuple[Localizations, dict[str, Any]]:
    """The localizations that pass every threshold, and summary.json's ``filtering`` block (counts before
    and after, and how many each threshold alone removes)."""
    passed = criteria(locs, settings)
    keep = np.ones(len(locs), dtype=bool)
    for mask in passed.values():
        keep &= mask
    record = {
        "before": len(locs),
        "after": int(keep.sum()),
        "thresholds": settings.active(),
        "removed_by": {name: int((~mask).sum()) for name, mask in passed.items()},
    }
    return locs.subset(keep), record
