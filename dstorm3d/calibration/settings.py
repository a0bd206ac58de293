"""The settings of ``python -m dstorm3d.calibrate`` (``configs/calibrate.yaml``), checked before any data is
read: each problem is one :class:`~dstorm3d.errors.UserInputError` line naming the key and the fix."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dstorm3d.errors import UserInputError
from dstorm3d.utils.validate import existing_file, flag, integer, mapping, number, pair

from .fit import FitSettings

#: Keys of ``configs/calibrate.yaml`` that the command reads (besides Hydra's, ``paths`` and ``optics``).
SETTING_KEYS = (
    "beads",
    "out",
    "overwrite",
    "psf_file",
    "threads",
    "camera",
    "z_step_nm",
    "focus_slice",
    "slices",
    "slice_stride",
    "saturation_adu",
    "excess_noise",
    "window_px",
    "min_snr",
    "min_separation_px",
    "max_beads",
    "reference_positions",
    "align_to_reference",
    "fit",
    "step_scale_range",
    "crlb",
    "montage_slices",
)
FIT_KEYS = (
    "max_noll",
    "amplitude_terms",
    "pixelwise",
    "smoothness",
    "iterations",
    "fit_step_scale",
    "initial_blur_px",
    "slice_photons",
    "slice_background",
)
CRLB_KEYS = ("photons", "background", "z_nm")
#: Highest Noll index offered (n = 10).
MAX_NOLL = 66
TIFF_SUFFIXES = (".tif", ".tiff")


@dataclass(frozen=True)
class CalibrationSettings:
    """Everything but the optics and the camera (which their own readers check).

    Distances in the names' units; slices are 1-based as the user counts them, ``None`` where the setting
    is taken from the data (``z_step_nm`` from the TIFF, ``focus_slice`` fitted, ``saturation_adu`` from
    the file's integer type, ``excess_noise`` from the camera kind).
    """

    beads: Path
    psf_file: str
    overwrite: bool
    z_step_nm: float | None
    focus_slice: float | None
    slices: tuple[int, int] | None
    slice_stride: int
    saturation_adu: float | None
    excess_noise: float | None
    window_px: int
    min_snr: float
    min_separation_px: float
    max_beads: int | None
    reference_positions: Path | None
    align_to_reference: bool
    fit: FitSettings
    step_scale_range: tuple[float, float]
    crlb_photons: float
    crlb_background: float
    crlb_z_nm: tuple[float, float]
    montage_slices: int

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> CalibrationSettings:
        beads = existing_file("beads", config.get("beads"), TIFF_SUFFIXES, example="beads_zstack.tif")
        psf_file = config.get("psf_file")
        if not isinstance(psf_file, str) or not psf_file.endswith(".npz") or "/" in psf_file:
            raise UserInputError(
                f"psf_file={psf_file!r}: must be a file name ending in .npz (e.g. psf_file=psf.npz)"
            )
        z_step = number("z_step_nm", config.get("z_step_nm"), allow_none=True, example=10)
        if z_step == 0:
            raise UserInputError(
                "z_step_nm=0: must be the stage step between slices in nm, ≠ 0 (e.g. z_step_nm=10)"
            )
        slices = config.get("slices")
        if slices is not None:
            first, last = pair("slices", slices, minimum=1)
            if first != int(first) or last != int(last) or last - first < 2:
                raise UserInputError(
                    f"slices={slices!r}: must be [first, last], whole "
                    "1-based slice numbers spanning at least 3 "
                    "slices (e.g. slices=[1,151]), or null"
                )
            slices = (int(first), int(last))
        window = integer("window_px", config.get("window_px"), minimum=7, example=25)
        separation = number("min_separation_px", config.get("min_separation_px"), above=0, allow_none=True)
        references = existing_file(
            "reference_positions", config.get("reference_positions"), (".csv",), allow_none=True
        )
        crlb = mapping("crlb", config.get("crlb"), known=CRLB_KEYS)
        return cls(
            beads=beads,
            psf_file=psf_file,
            overwrite=flag("overwrite", config.get("overwrite")),
            z_step_nm=z_step,
            focus_slice=number(
                "focus_slice", config.get("focus_slice"), minimum=1, allow_none=True, example=76
            ),
            slices=slices,
            slice_stride=integer("slice_stride", config.get("slice_stride"), minimum=1),
            saturation_adu=number("saturation_adu", config.get("saturation_adu"), above=0, allow_none=True),
            excess_noise=number(
                "excess_noise", config.get("excess_noise"), minimum=1, allow_none=True, example=2
            ),
            window_px=window,
            min_snr=number("min_snr", config.get("min_snr"), above=0, example=10),
            min_separation_px=float(window) if separation is None else separation,
            max_beads=integer("max_beads", config.get("max_beads"), minimum=1, allow_none=True),
            reference_positions=references,
            align_to_reference=_alignment(config.get("align_to_reference"), references),
            fit=fit_settings(config.get("fit"), focus_fixed=config.get("focus_slice") is not None),
            step_scale_range=_step_scale_range(config.get("step_scale_range")),
            crlb_photons=number("crlb.photons", crlb.get("photons"), above=0, example=5000),
            crlb_background=number("crlb.background", crlb.get("background"), minimum=0, example=100),
            crlb_z_nm=pair("crlb.z_nm", crlb.get("z_nm")),
            montage_slices=integer("montage_slices", config.get("montage_slices"), minimum=2, maximum=30),
        )


def fit_settings(value: Any, focus_fixed: bool, excess_noise: float = 1.0) -> FitSettings:
    """The ``fit`` block as :class:`FitSettings` (``excess_noise`` is filled in once the camera is known)."""
    fit = mapping("fit", value, known=FIT_KEYS)
    lowest = 4 if focus_fixed else 5
    return FitSettings(
        max_noll=integer("fit.max_noll", fit.get("max_noll"), minimum=lowest, maximum=MAX_NOLL, example=21),
        amplitude_terms=integer("fit.amplitude_terms", fit.get("amplitude_terms"), minimum=0, maximum=6),
        pixelwise=flag("fit.pixelwise", fit.get("pixelwise")),
        smoothness=number("fit.smoothness", fit.get("smoothness"), minimum=0),
        iterations=integer("fit.iterations", fit.get("iterations"), minimum=1, example=150),
        excess_noise=excess_noise,
        fit_focus=not focus_fixed,
        fit_step_scale=flag("fit.fit_step_scale", fit.get("fit_step_scale")),
        initial_blur_px=number("fit.initial_blur_px", fit.get("initial_blur_px"), minimum=0, example=1),
        slice_photons=flag("fit.slice_photons", fit.get("slice_photons")),
        slice_background=flag("fit.slice_background", fit.get("slice_background")),
    )


def _alignment(value: Any, references: Path | None) -> bool:
    align = flag("align_to_reference", value)
    if align and references is None:
        raise UserInputError(
            "align_to_reference=true needs reference_positions=<csv of the beads' x_nm, y_nm>"
        )
    return align


def _step_scale_range(value: Any) -> tuple[float, float]:
    lo, hi = pair("step_scale_range", value, minimum=0)
    if not 0 < lo <= 1 <= hi:
        raise UserInputError(
            f"step_scale_range={value!r}: must be [lo, hi] with "
            "0 < lo ≤ 1 ≤ hi (e.g. step_scale_range=[0.5,2])"
        )
    return lo, hi
