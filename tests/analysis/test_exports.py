"""Exports: the Picasso HDF5 read back with h5py (Picasso's column names, dtypes and values), its YAML
sidecar, the ThunderSTORM CSV read back by the project's reader, and SMAP's column names."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import yaml

from dstorm3d.analysis.exports import (
    PICASSO_FILE,
    PICASSO_INFO_FILE,
    SMAP_FILE,
    THUNDERSTORM_FILE,
    UNCERTAINTY_NAMES,
    ExportSettings,
    export_writers,
)
from dstorm3d.analysis.localizations import OPTIONAL_COLUMNS, PrecisionSettings, from_table
from dstorm3d.analysis.merging import MergeSettings, merge
from dstorm3d.evaluation.score import read_table
from dstorm3d.utils.files import atomic_write

PIXEL_NM = 110.0


@pytest.fixture
def merged(sim):
    """Four localizations of three emitters; the first two merge (detections 2, frames 1–2)."""
    rows = [
        (1, 1000, 2000, 500, 1000),
        (2, 1010, 2000, 520, 3000),
        (2, 5000, 300, 1500, 800),
        (4, 200, 900, 50, 600),
    ]
    locs = sim.table(rows, precision=(12.0, 14.0, 30.0))
    return merge(locs, MergeSettings())


def write_all(locs, folder, merged: bool = True) -> None:
    writers = export_writers(locs, ExportSettings(), merged, PIXEL_NM, frames=10, field_nm=(6000.0, 3000.0))
    for name, write in writers.items():
        atomic_write(folder / name, write)


def test_picasso_hdf5_reads_back_with_picassos_columns(merged, tmp_path):
    write_all(merged, tmp_path)
    with h5py.File(tmp_path / PICASSO_FILE, "r") as handle:
        assert list(handle) == ["locs"]
        locs = handle["locs"][...]
    names = ["frame", "x", "y", "photons", "sx", "sy", "bg", "lpx", "lpy", "z", "lpz", "len", "n"]
    assert list(locs.dtype.names) == names
    assert locs.dtype["frame"] == np.uint32 and all(locs.dtype[n] == np.float32 for n in names[1:11])
    np.testing.assert_array_equal(locs["frame"], merged.frame - 1)  # Picasso counts frames from 0
    np.testing.assert_allclose(locs["x"], merged.xyz_nm[:, 0] / PIXEL_NM, rtol=1e-6)
    np.testing.assert_allclose(locs["y"], merged.xyz_nm[:, 1] / PIXEL_NM, rtol=1e-6)
    np.testing.assert_allclose(locs["z"], merged.xyz_nm[:, 2], rtol=1e-6)  # nm
    np.testing.assert_allclose(locs["lpx"], merged.precision_nm[:, 0] / PIXEL_NM, rtol=1e-6)
    np.testing.assert_allclose(locs["lpy"], merged.precision_nm[:, 1] / PIXEL_NM, rtol=1e-6)
    np.testing.assert_allclose(locs["lpz"], merged.precision_nm[:, 2], rtol=1e-6)
    np.testing.assert_allclose(locs["photons"], [4000, 800, 600])
    np.testing.assert_array_equal(locs["len"], [2, 1, 1])
    np.testing.assert_array_equal(locs["n"], [2, 1, 1])
    info = list(yaml.safe_load_all((tmp_path / PICASSO_INFO_FILE).read_text()))
    assert len(info) == 1 and info[0]["Pixelsize"] == PIXEL_NM and info[0]["Frames"] == 10
    # Picasso keeps 0 < x < Width and 0 < y < Height only: every localization must be inside.
    assert (locs["x"] < info[0]["Width"]).all() and (locs["y"] < info[0]["Height"]).all()
    assert info[0]["Width"] == 56 and info[0]["Height"] == 29  # ceil(6000 / 110) + 1, ceil(3000 / 110) + 1


def test_the_thunderstorm_csv_reads_back_with_the_same_values(merged, tmp_path):
    write_all(merged, tmp_path)
    lines = (tmp_path / THUNDERSTORM_FILE).read_text().splitlines()
    assert lines[0] == (
        '"id","frame","x [nm]","y [nm]","z [nm]","intensity [photon]","confidence",'
        '"uncertainty_x [nm]","uncertainty_y [nm]","uncertainty_z [nm]","detections"'
    )
    table = read_table(tmp_path / THUNDERSTORM_FILE, "locs", optional_columns=OPTIONAL_COLUMNS)
    back = from_table(table, PrecisionSettings())
    np.testing.assert_allclose(back.xyz_nm, merged.xyz_nm, atol=5e-4)
    np.testing.assert_allclose(back.precision_nm, merged.precision_nm, atol=5e-4)
    np.testing.assert_array_equal(back.detections, [2, 1, 1])
    assert back.precision_from_table == (True, True, True)


def test_without_merging_or_intensity_the_columns_are_left_out(merged, tmp_path):
    from dataclasses import replace

    bare = replace(merged, intensity_column=None, confidence=np.full(len(merged), np.nan))
    write_all(bare, tmp_path, merged=False)
    header = (tmp_path / THUNDERSTORM_FILE).read_text().splitlines()[0]
    assert header == ",".join(
        f'"{c}"' for c in ("id", "frame", "x [nm]", "y [nm]", "z [nm]", *UNCERTAINTY_NAMES)
    )
    with h5py.File(tmp_path / PICASSO_FILE, "r") as handle:
        assert "len" not in handle["locs"].dtype.names


def test_smap_csv_uses_smaps_field_names(merged, tmp_path):
    write_all(merged, tmp_path)
    lines = (tmp_path / SMAP_FILE).read_text().splitlines()
    assert lines[0] == "frame,xnm,ynm,znm,phot,xnmerr,ynmerr,znmerr,locprecnm,locprecznm,numberInGroup"
    first = [float(v) for v in lines[1].split(",")]
    assert first[0] == 1 and first[4] == 4000 and first[-1] == 2
    assert first[8] == pytest.approx(np.mean(merged.precision_nm[0, :2]), abs=1e-3)
