"""The PSF model of a plain config mapping (Hydra ``optics`` group): :func:`psf_from_config`.

An ``optics`` config holds the fields of :class:`~dstorm3d.optics.setup.OpticalSetup` (``pixel_size_um``
may stand for ``camera_pixel_um`` and ``magnification``) and says where the pupil comes from, one of:

* ``mask``: the phase mask of the setup's scalar pupil — ``tetrapod``, ``clear`` or a mask file
  (``mask_variable``, ``resample_mask``: how to read it); no pupil amplitude, no blur;
* ``pupil``: a PSF calibration file (``.npz``, :func:`~dstorm3d.optics.psf_model.save_psf`) holding a
  whole PSF model: its setup, pupil phase, pupil amplitude and blur.

With ``pupil``, the file's setup is the microscope: every optical field of the config that is null is
taken from the file, and one that is given must agree with the file's (within a relative 1e-6; the pixel
size is compared at the sample) — a disagreement is an error naming the fields, never silently one or the
other. Only ``name`` and ``z_range_um`` (a label and the sample's axial range, not properties of the PSF)
may differ; the config's then apply. ``configs/optics/calibrated.yaml`` has every optical field null.
A mask file together with a pupil file is an error (both would give the pupil phase); a built-in mask name
(the presets' default, e.g. ``storm``'s ``tetrapod``) is not used when a pupil file is given.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from dstorm3d.utils.validate import existing_file, flag, mapping

from .masks import BUILTIN_MASKS, load_phase_mask
from .psf_model import PSF_FILE_SUFFIX, PSFFileError, PSFModel, ScalarPupilPSF, load_psf
from .setup import OpticalSetup, SetupError, automatic_pupil_grid

log = logging.getLogger(__name__)

#: Keys of an ``optics`` config that say where the pupil comes from (not setup fields).
MASK_KEYS = ("mask", "mask_variable", "resample_mask", "pupil")
#: Setup fields a config may set apart from a pupil file's: a label and the sample's axial range.
FREE_FIELDS = ("name", "z_range_um")
#: Relative difference above which a config's number disagrees with a pupil file's.
AGREEMENT_TOLERANCE = 1e-6


def setup_keys() -> tuple[str, ...]:
    """The setup keys of an ``optics`` config: the :class:`OpticalSetup` fields and ``pixel_size_um``."""
    return (*OpticalSetup.__dataclass_fields__, "pixel_size_um")


def check_optics(config: Mapping[str, Any], require_pupil_source: bool = True) -> dict[str, Any]:
    """The ``optics`` config as a plain dict, its keys and pupil source checked before anything is read
    (one-line :class:`~dstorm3d.errors.UserInputError`s): known keys only; ``pupil`` null or an existing
    ``.npz`` file; without ``pupil`` a ``mask`` (unless ``require_pupil_source`` is false: the setup
    alone is wanted); with ``pupil``, no mask file and no mask-reading options. (The setup's numbers are
    checked by :class:`OpticalSetup`, a mask file when it is read.)"""
    optics = mapping("optics", config, known=(*setup_keys(), *MASK_KEYS))
    pupil = existing_file(
        "optics.pupil", optics.get("pupil"), (PSF_FILE_SUFFIX,), allow_none=True, example="calibration.npz"
    )
    flag("optics.resample_mask", optics.get("resample_mask", False))
    mask = optics.get("mask")
    if pupil is None:
        if require_pupil_source and (not isinstance(mask, str) or not mask):
            raise SetupError(
                f"optics.mask={mask!r}: give tetrapod, clear or a mask file path, or a PSF calibration "
                "file optics.pupil=<file.npz>"
            )
        return optics
    if mask is not None and mask not in BUILTIN_MASKS:
        raise SetupError(
            f"optics.mask={mask} and optics.pupil={optics['pupil']} both give the pupil phase: keep one "
            "(optics.mask=null to use the pupil file)"
        )
    if optics.get("mask_variable") is not None or optics.get("resample_mask"):
        raise SetupError(
            "optics.mask_variable and optics.resample_mask read a mask file; with optics.pupil=<file.npz> "
            "leave them null and false"
        )
    return optics


def setup_from_config(config: Mapping[str, Any], window_px: int | None = None) -> OpticalSetup:
    """The :class:`OpticalSetup` of an ``optics`` config (with ``pupil``: the file's, see the module
    docstring). ``window_px``: the largest pixel grid the caller renders in one piece, which an automatic
    pupil grid (no 4f system, ``pupil_grid`` null) must hold (:func:`automatic_pupil_grid`)."""
    optics = check_optics(config, require_pupil_source=False)
    if optics.get("pupil") is not None:
        return psf_from_config(optics, window_px).setup
    fields = {k: v for k, v in optics.items() if k not in MASK_KEYS}
    if fields.get("z_range_um") is not None:
        fields["z_range_um"] = tuple(float(v) for v in fields["z_range_um"])
    setup = OpticalSetup.from_dict(fields)
    if window_px is not None and fields.get("pupil_grid") is None and not setup.has_4f:
        grid = automatic_pupil_grid(setup.wavelength_um, setup.aperture_na, setup.pixel_size_um, window_px)
        if grid != setup.pupil_grid:
            setup = setup.replace(pupil_grid=grid)
    return setup


def mask_from_config(config: Mapping[str, Any], setup: OpticalSetup) -> np.ndarray:
    """The ``(N, N)`` phase mask (rad) named by ``optics.mask`` for ``setup``."""
    spec = config.get("mask", "clear")
    if spec is None:
        raise SetupError("optics.mask is empty: give tetrapod, clear or a mask file path")
    return load_phase_mask(
        str(spec),
        setup,
        resample=bool(config.get("resample_mask", False)),
        variable=config.get("mask_variable"),
    )


def psf_from_config(config: Mapping[str, Any], window_px: int | None = None) -> PSFModel:
    """The PSF model an ``optics`` config describes: the scalar pupil of its setup and ``mask``, or the
    model in its ``pupil`` file (module docstring). ``window_px`` as for :func:`setup_from_config`."""
    optics = check_optics(config)
    pupil = optics.get("pupil")
    if pupil is None:
        setup = setup_from_config(optics, window_px)
        spec = str(optics["mask"])
        label = spec if spec in BUILTIN_MASKS else Path(spec).name
        return ScalarPupilPSF(setup, mask_from_config(optics, setup), label=label)
    model, _ = load_psf(Path(pupil).expanduser())
    setup = reconciled_setup(optics, model.setup, str(pupil))
    if optics.get("mask") is not None:
        log.info("optics.pupil=%s gives the pupil phase; optics.mask=%s is not used", pupil, optics["mask"])
    return model.replace(setup=setup, label=model.label or Path(pupil).name)


def reconciled_setup(optics: Mapping[str, Any], file_setup: OpticalSetup, source: str) -> OpticalSetup:
    """A pupil file's setup with the config's :data:`FREE_FIELDS`; raises a :class:`PSFFileError` naming
    every other given field that disagrees with the file."""
    given = {k: v for k, v in optics.items() if k not in MASK_KEYS and v is not None}
    disagree = []
    for key, value in given.items():
        if key in (*FREE_FIELDS, "camera_pixel_um", "magnification", "pixel_size_um"):
            continue
        if not _agrees(value, getattr(file_setup, key)):
            disagree.append((key, getattr(file_setup, key), value))
    pixel = _config_pixel_size(given)
    if pixel is not None and not _agrees(pixel, file_setup.pixel_size_um):
        disagree.append(("pixel size at the sample (µm)", file_setup.pixel_size_um, pixel))
    if disagree:
        theirs = ", ".join(f"{key} = {_text(file)}" for key, file, _ in disagree)
        ours = ", ".join(f"{key} = {_text(config)}" for key, _, config in disagree)
        raise PSFFileError(
            f"optics.pupil={source} was calibrated with {theirs}, but the optics config says {ours}: set "
            "those fields to the file's values or to null, or use optics=calibrated (every optical field "
            "from the file)"
        )
    changes: dict[str, Any] = {}
    if "name" in given:
        changes["name"] = str(given["name"])
    if "z_range_um" in given:
        changes["z_range_um"] = tuple(float(v) for v in given["z_range_um"])
    return file_setup.replace(**changes) if changes else file_setup


def _config_pixel_size(given: Mapping[str, Any]) -> float | None:
    """The pixel size at the sample (µm) the given config fields state, or ``None`` when they state none."""
    if "pixel_size_um" in given:
        return float(given["pixel_size_um"])
    if "camera_pixel_um" in given and "magnification" in given:
        return float(given["camera_pixel_um"]) / float(given["magnification"])
    return None


def _agrees(config_value: Any, file_value: Any) -> bool:
    if isinstance(config_value, (list, tuple)) and isinstance(file_value, (list, tuple)):
        return len(config_value) == len(file_value) and all(map(_agrees, config_value, file_value))
    numbers = (int, float)
    if isinstance(config_value, numbers) and isinstance(file_value, numbers):
        return math.isclose(float(config_value), float(file_value), rel_tol=AGREEMENT_TOLERANCE)
    return config_value == file_value


def _text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(list(value) if isinstance(value, tuple) else value)
