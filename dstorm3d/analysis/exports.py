"""The analysed localizations for other SMLM software: ThunderSTORM, Picasso and SMAP.

* ``localizations_analyzed.csv`` (ThunderSTORM; SMAP and Fiji import it too): ``infer``'s columns
  ``"id","frame","x [nm]","y [nm]","z [nm]","intensity [photon]","confidence"`` (the intensity column as
  named in the input, left out without one; confidence without the column), then the precisions as
  ``infer`` names them, ``"uncertainty_x [nm]","uncertainty_y [nm]","uncertainty_z [nm]"``, and, after
  merging, ThunderSTORM's ``"detections"`` (localizations merged into each). Frames from 1.
* ``localizations_picasso.hdf5`` + ``localizations_picasso.yaml`` (Picasso's ``io.save_locs`` layout):
  the dataset ``locs``, a structured array with Picasso's column names and dtypes — ``frame`` (uint32,
  from 0), ``x``, ``y`` (float32, camera pixels), ``photons``, ``sx``, ``sy`` (PSF width in camera pixels:
  0, a learned PSF has no Gaussian width), ``bg`` (0: not estimated), ``lpx``, ``lpy`` (camera pixels),
  ``z`` and ``lpz`` (nm, Picasso's 3D convention: z in nm while x, y are in pixels) and, after merging,
  ``len`` (frames from first to last) and ``n`` (localizations merged); the YAML sidecar is one document
  with ``Width``, ``Height`` (camera pixels), ``Frames`` and ``Pixelsize`` (nm), as Picasso writes it.
  Picasso drops localizations outside ``0 < x < Width``, ``0 < y < Height``: Width and Height cover them.
* ``localizations_smap.csv``: SMAP's own field names — ``frame`` (from 1), ``xnm``, ``ynm``, ``znm``,
  ``phot``, ``xnmerr``, ``ynmerr``, ``znmerr``, ``locprecnm`` (lateral), ``locprecznm`` and, after
  merging, ``numberInGroup``.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dstorm3d.analysis.localizations import CONFIDENCE_COLUMN, DETECTIONS_COLUMN, Localizations
from dstorm3d.utils.validate import flag

THUNDERSTORM_FILE = "localizations_analyzed.csv"
PICASSO_FILE = "localizations_picasso.hdf5"
PICASSO_INFO_FILE = "localizations_picasso.yaml"
SMAP_FILE = "localizations_smap.csv"
UNCERTAINTY_NAMES = ("uncertainty_x [nm]", "uncertainty_y [nm]", "uncertainty_z [nm]")
PICASSO_FIELDS = (
    ("frame", np.uint32),
    ("x", np.float32),
    ("y", np.float32),
    ("photons", np.float32),
    ("sx", np.float32),
    ("sy", np.float32),
    ("bg", np.float32),
    ("lpx", np.float32),
    ("lpy", np.float32),
    ("z", np.float32),
    ("lpz", np.float32),
)
PICASSO_MERGED_FIELDS = (("len", np.int32), ("n", np.int32))


@dataclass(frozen=True)
class ExportSettings:
    """``exports.*`` of ``configs/analyze.yaml``: which formats to write."""

    thunderstorm: bool = True
    picasso: bool = True
    smap: bool = True

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ExportSettings:
        return cls(
            **{
                name: flag(f"exports.{name}", config.get(name))
                for name in ("thunderstorm", "picasso", "smap")
            }
        )

    def files(self) -> list[str]:
        names = [THUNDERSTORM_FILE] if self.thunderstorm else []
        names += [PICASSO_FILE, PICASSO_INFO_FILE] if self.picasso else []
        return names + ([SMAP_FILE] if self.smap else [])


def _number(value: float, digits: str = ".3f") -> str:
    return "nan" if math.isnan(value) else format(value, digits)


# ---------------------------------------------------------------------------------------- ThunderSTORM
def thunderstorm_header(locs: Localizations, merged: bool) -> list[str]:
    header = ["id", "frame", "x [nm]", "y [nm]", "z [nm]"]
    header += [locs.intensity_column] if locs.intensity_column else []
    header += [CONFIDENCE_COLUMN] if locs.has_confidence else []
    return header + list(UNCERTAINTY_NAMES) + ([DETECTIONS_COLUMN] if merged else [])


def write_thunderstorm(locs: Localizations, merged: bool, path: Path) -> None:
    """The ThunderSTORM CSV (header quoted as ``infer`` writes it, values plain)."""
    with open(path, "w", newline="") as handle:
        csv.writer(handle, quoting=csv.QUOTE_NONNUMERIC).writerow(thunderstorm_header(locs, merged))
        writer = csv.writer(handle)
        for k in range(len(locs)):
            row = [k + 1, int(locs.frame[k]), *(f"{v:.3f}" for v in locs.xyz_nm[k])]
            row += [_number(locs.photons[k], ".6g")] if locs.intensity_column else []
            row += [_number(locs.confidence[k], ".6g")] if locs.has_confidence else []
            row += [f"{v:.3f}" for v in locs.precision_nm[k]]
            row += [int(locs.detections[k])] if merged else []
            writer.writerow(row)


# ---------------------------------------------------------------------------------------- Picasso
def picasso_records(locs: Localizations, pixel_nm: float, merged: bool) -> np.ndarray:
    """``(N,)`` structured array of Picasso's columns (see the module docstring)."""
    fields = PICASSO_FIELDS + (PICASSO_MERGED_FIELDS if merged else ())
    records = np.zeros(len(locs), dtype=[(name, dtype) for name, dtype in fields])
    records["frame"] = locs.frame - 1
    records["x"] = locs.xyz_nm[:, 0] / pixel_nm
    records["y"] = locs.xyz_nm[:, 1] / pixel_nm
    records["photons"] = np.nan_to_num(locs.photons, nan=0.0)
    records["lpx"] = locs.precision_nm[:, 0] / pixel_nm
    records["lpy"] = locs.precision_nm[:, 1] / pixel_nm
    records["z"] = locs.xyz_nm[:, 2]
    records["lpz"] = locs.precision_nm[:, 2]
    if merged:
        records["len"] = locs.last_frame - locs.frame + 1
        records["n"] = locs.detections
    return records


def picasso_info(
    locs: Localizations, pixel_nm: float, frames: int, field_nm: tuple[float, float]
) -> dict[str, Any]:
    """The YAML document: Width, Height (camera pixels, holding every localization), Frames and
    Pixelsize (nm)."""
    return {
        "Generated by": "dstorm3d analyze",
        "Width": int(math.ceil(field_nm[0] / pixel_nm)) + 1,
        "Height": int(math.ceil(field_nm[1] / pixel_nm)) + 1,
        "Frames": int(frames),
        "Pixelsize": float(pixel_nm),
        "z unit": "nm (above the coverslip); x, y in camera pixels",
    }


def picasso_writers(
    locs: Localizations, merged: bool, pixel_nm: float, frames: int, field_nm: tuple[float, float]
) -> dict[str, Callable[[Path], None]]:
    """``{file name: write(path)}`` for the Picasso HDF5 and its YAML sidecar."""
    import h5py
    import yaml

    records = picasso_records(locs, pixel_nm, merged)
    info = picasso_info(locs, pixel_nm, frames, field_nm)

    def write_hdf5(path: Path) -> None:
        with h5py.File(path, "w") as handle:
            handle.create_dataset("locs", data=records)

    def write_yaml(path: Path) -> None:
        with open(path, "w") as handle:
            yaml.dump_all([info], handle, default_flow_style=False)

    return {PICASSO_FILE: write_hdf5, PICASSO_INFO_FILE: write_yaml}


# ---------------------------------------------------------------------------------------- SMAP
def write_smap(locs: Localizations, merged: bool, path: Path) -> None:
    """SMAP's CSV (see the module docstring)."""
    header = ["frame", "xnm", "ynm", "znm", "phot", "xnmerr", "ynmerr", "znmerr", "locprecnm", "locprecznm"]
    header += ["numberInGroup"] if merged else []
    lateral = locs.precision_nm[:, :2].mean(axis=1)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for k in range(len(locs)):
            row = [int(locs.frame[k]), *(f"{v:.3f}" for v in locs.xyz_nm[k]), _number(locs.photons[k], ".6g")]
            row += [f"{v:.3f}" for v in locs.precision_nm[k]]
            row += [f"{lateral[k]:.3f}", f"{locs.precision_nm[k, 2]:.3f}"]
            row += [int(locs.detections[k])] if merged else []
            writer.writerow(row)


def export_writers(
    locs: Localizations,
    settings: ExportSettings,
    merged: bool,
    camera_pixel_nm: float | None,
    frames: int,
    field_nm: tuple[float, float],
) -> dict[str, Callable[[Path], None]]:
    """``{file name: write(path)}`` of every export that is switched on (Picasso: with
    ``camera_pixel_nm``)."""
    writers: dict[str, Callable[[Path], None]] = {}
    if settings.thunderstorm:
        writers[THUNDERSTORM_FILE] = lambda p: write_thunderstorm(locs, merged, p)
    if settings.picasso and camera_pixel_nm:
        writers.update(picasso_writers(locs, merged, camera_pixel_nm, frames, field_nm))
    if settings.smap:
        writers[SMAP_FILE] = lambda p: write_smap(locs, merged, p)
    return writers
