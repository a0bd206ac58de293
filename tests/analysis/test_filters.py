"""Filters: each threshold removes exactly the rows it should, the counts are recorded, and nonsense
thresholds or thresholds on a missing column are refused with one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dstorm3d.analysis.filters import FilterSettings, apply_filters
from dstorm3d.analysis.localizations import require_columns
from dstorm3d.errors import UserInputError

OFF = {
    "enabled": True,
    "min_confidence": None,
    "min_photons": None,
    "max_photons": None,
    "z_range_nm": None,
    "max_lateral_uncertainty_nm": None,
    "max_axial_uncertainty_nm": None,
}


@pytest.fixture
def five(sim):
    """Five localizations: photons 100..500, z 100..500 nm, confidence 0.1..0.9, precisions 10..50 nm."""
    locs = sim.table([(k + 1, 0, 0, 100 * (k + 1), 100 * (k + 1)) for k in range(5)])
    locs.confidence[:] = [0.1, 0.3, 0.5, 0.7, 0.9]
    locs.precision_nm[:] = np.array([10.0, 20.0, 30.0, 40.0, 50.0])[:, None] * [1.0, 0.5, 2.0]
    return locs


@pytest.mark.parametrize(
    "thresholds, kept_z",
    [
        ({}, [100, 200, 300, 400, 500]),
        ({"min_confidence": 0.5}, [300, 400, 500]),
        ({"min_photons": 200, "max_photons": 400}, [200, 300, 400]),
        ({"z_range_nm": [150, 350]}, [200, 300]),
        ({"max_lateral_uncertainty_nm": 30}, [100, 200, 300]),  # the larger of x and y
        ({"max_axial_uncertainty_nm": 60}, [100, 200, 300]),
        ({"min_confidence": 0.3, "max_axial_uncertainty_nm": 60}, [200, 300]),
    ],
)
def test_each_threshold_keeps_the_right_rows(five, thresholds, kept_z):
    kept, record = apply_filters(five, FilterSettings.from_config({**OFF, **thresholds}))
    np.testing.assert_array_equal(kept.xyz_nm[:, 2], kept_z)
    assert record["before"] == 5 and record["after"] == len(kept_z)
    assert set(record["removed_by"]) == set(thresholds)


def test_the_record_counts_what_each_threshold_removes_alone(five):
    _, record = apply_filters(
        five, FilterSettings.from_config({**OFF, "min_confidence": 0.5, "min_photons": 400})
    )
    assert record["removed_by"] == {"min_confidence": 2, "min_photons": 3}
    assert record["thresholds"] == {"min_confidence": 0.5, "min_photons": 400.0}


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("min_confidence", 2, "filters.min_confidence=2: must be a number ≥ 0 and ≤ 1 or null"),
        ("min_photons", -3, "filters.min_photons=-3: must be a number ≥ 0 or null"),
        ("z_range_nm", [500, 100], "filters.z_range_nm=[500, 100]: must be a number or [lo, hi]"),
        ("max_lateral_uncertainty_nm", 0, "filters.max_lateral_uncertainty_nm=0: must be a number > 0"),
        ("enabled", "yes", "filters.enabled='yes': must be true or false"),
    ],
)
def test_nonsense_thresholds_are_refused(key, value, expected):
    with pytest.raises(UserInputError) as error:
        FilterSettings.from_config({**OFF, key: value})
    assert str(error.value).startswith(expected)


def test_min_photons_above_max_photons_is_refused():
    with pytest.raises(UserInputError, match="filters.min_photons=500 is above filters.max_photons=100"):
        FilterSettings.from_config({**OFF, "min_photons": 500, "max_photons": 100})


def test_a_threshold_on_a_missing_column_is_refused():
    settings = FilterSettings.from_config({**OFF, "min_confidence": 0.5, "max_axial_uncertainty_nm": 50})
    header = ["id", "frame", "x [nm]", "y [nm]", "z [nm]", "confidence"]
    with pytest.raises(UserInputError) as error:
        require_columns(header, settings.needed_columns(), Path("t.csv"))
    assert str(error.value).startswith(
        'filters.max_axial_uncertainty_nm needs a column "uncertainty_z [nm]" in locs=t.csv'
    )
    require_columns([*header, "uncertainty_z [nm]"], settings.needed_columns(), Path("t.csv"))
