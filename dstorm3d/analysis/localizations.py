"""The localization table the analysis steps pass along, and what is known about its recording.

A table is read by :func:`dstorm3d.evaluation.score.read_table` (the one reader of user tables: it
validates every value) with the optional columns of :data:`OPTIONAL_COLUMNS`; :func:`from_table` turns
it into :class:`Localizations`: positions in nm (x, y from the frame's top-left corner, z above the
coverslip), frames from 1, and a precision (standard deviation, nm) per localization and axis — from the
table's uncertainty columns where it has them, else the configured fallback.

Uncertainty columns read (the first one present per axis wins):

* x: ``"uncertainty_x [nm]"`` (``infer``), ``"uncertainty_xy [nm]"`` (ThunderSTORM 3D, Picasso's
  ThunderSTORM export), ``"uncertainty [nm]"`` (ThunderSTORM 2D: the lateral precision);
* y: ``"uncertainty_y [nm]"``, then the same two lateral ones;
* z: ``"uncertainty_z [nm]"``.

A value that is NaN or ≤ 0 falls back to the configured precision for that localization.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dstorm3d.errors import UserInputError
from dstorm3d.utils.validate import number

if TYPE_CHECKING:
    from dstorm3d.evaluation.score import Table

LATERAL_UNCERTAINTY = ("uncertainty_xy [nm]", "uncertainty [nm]")
PRECISION_COLUMNS: dict[str, tuple[str, ...]] = {
    "x": ("uncertainty_x [nm]", *LATERAL_UNCERTAINTY),
    "y": ("uncertainty_y [nm]", *LATERAL_UNCERTAINTY),
    "z": ("uncertainty_z [nm]",),
}
CONFIDENCE_COLUMN = "confidence"
#: ThunderSTORM's column for the number of localizations merged into one (written by the exports).
DETECTIONS_COLUMN = "detections"
OPTIONAL_COLUMNS = (
    *dict.fromkeys(name for names in PRECISION_COLUMNS.values() for name in names),
    CONFIDENCE_COLUMN,
    DETECTIONS_COLUMN,
)
#: What ``infer`` writes beside its ``localizations.csv``.
INFER_SUMMARY = "summary.json"


@dataclass(frozen=True)
class PrecisionSettings:
    """The precision (standard deviation, nm) of a localization whose table gives none (``precision.*``)."""

    lateral_nm: float = 20.0
    axial_nm: float = 40.0

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> PrecisionSettings:
        return cls(
            lateral_nm=number("precision.lateral_nm", config.get("lateral_nm"), above=0.0, example=20),
            axial_nm=number("precision.axial_nm", config.get("axial_nm"), above=0.0, example=40),
        )


@dataclass(frozen=True)
class Localizations:
    """Localizations sorted by frame (stable), all arrays over the same ``N`` rows.

    Attributes:
        frame: ``(N,)`` int64 frame from 1 (a merged localization: its first frame).
        last_frame: ``(N,)`` int64 last frame (``frame`` unless merged).
        xyz_nm: ``(N, 3)`` float64 positions in nm.
        precision_nm: ``(N, 3)`` float64 standard deviations of x, y, z in nm.
        photons: ``(N,)`` float64 signal (the intensity column; NaN without one).
        confidence: ``(N,)`` float64 detection confidence (NaN without the column).
        detections: ``(N,)`` int64 localizations merged into each (1 unless merged).
        intensity_column: the table's ``intensity [...]`` column name, or None.
        precision_from_table: ``(3,)`` bool: whether x, y, z precisions came from the table's columns.
    """

    frame: np.ndarray
    last_frame: np.ndarray
    xyz_nm: np.ndarray
    precision_nm: np.ndarray
    photons: np.ndarray
    confidence: np.ndarray
    detections: np.ndarray
    intensity_column: str | None = None
    precision_from_table: tuple[bool, bool, bool] = (False, False, False)

    def __len__(self) -> int:
        return len(self.frame)

    @property
    def has_confidence(self) -> bool:
        return bool(len(self)) and not bool(np.isnan(self.confidence).all())

    def subset(self, rows: np.ndarray) -> Localizations:
        """The rows selected by ``rows`` (a boolean mask or indices), in their order."""
        return replace(
            self,
            frame=self.frame[rows],
            last_frame=self.last_frame[rows],
            xyz_nm=self.xyz_nm[rows],
            precision_nm=self.precision_nm[rows],
            photons=self.photons[rows],
            confidence=self.confidence[rows],
            detections=self.detections[rows],
        )

    def with_positions(self, xyz_nm: np.ndarray) -> Localizations:
        return replace(self, xyz_nm=np.asarray(xyz_nm, dtype=np.float64))


def precision_columns(header: Sequence[str]) -> dict[str, str | None]:
    """The column giving each axis's precision in a table with ``header`` (None: the fallback)."""
    return {axis: next((c for c in names if c in header), None) for axis, names in PRECISION_COLUMNS.items()}


def from_table(table: Table, fallback: PrecisionSettings) -> Localizations:
    """A :class:`Localizations` from a table read with ``optional_columns=OPTIONAL_COLUMNS``."""
    n = len(table)
    optional = table.optional
    chosen = precision_columns(list(optional))
    precision = np.empty((n, 3))
    defaults = (fallback.lateral_nm, fallback.lateral_nm, fallback.axial_nm)
    for k, axis in enumerate("xyz"):
        column = chosen[axis]
        values = optional[column] if column else np.full(n, np.nan)
        precision[:, k] = np.where(np.isfinite(values) & (values > 0), values, defaults[k])
    detections = optional.get(DETECTIONS_COLUMN)
    return Localizations(
        frame=table.frame.copy(),
        last_frame=table.frame.copy(),
        xyz_nm=table.xyz_nm.copy(),
        precision_nm=precision,
        photons=table.intensity.copy() if table.intensity is not None else np.full(n, np.nan),
        confidence=optional.get(CONFIDENCE_COLUMN, np.full(n, np.nan)).copy(),
        detections=(
            np.maximum(np.nan_to_num(detections, nan=1.0), 1).astype(np.int64)
            if detections is not None
            else np.ones(n, dtype=np.int64)
        ),
        intensity_column=table.intensity_column,
        precision_from_table=tuple(chosen[a] is not None for a in "xyz"),  # type: ignore[arg-type]
    )


# ---------------------------------------------------------------------------------------- the recording
@dataclass(frozen=True)
class RecordingInfo:
    """What ``infer``'s ``summary.json`` beside a table says about its recording (all optional).

    Attributes:
        frames: frames in the recording.
        height_px, width_px: frame size in camera pixels.
        pixel_nm: camera pixel at the sample (nm).
        z_range_nm: the checkpoint's z range (nm above the coverslip).
        source: the file it came from.
    """

    frames: int | None = None
    height_px: int | None = None
    width_px: int | None = None
    pixel_nm: float | None = None
    z_range_nm: tuple[float, float] | None = None
    source: str | None = None

    @property
    def field_nm(self) -> tuple[float, float] | None:
        """``(width, height)`` of the frames in nm, when known."""
        if self.width_px and self.height_px and self.pixel_nm:
            return self.width_px * self.pixel_nm, self.height_px * self.pixel_nm
        return None


def _positive(value: Any) -> float | None:
    try:
        result = float(value)
    except (TypeError, ValueError):
        return None
    return result if np.isfinite(result) and result > 0 else None


def recording_info(locs_path: str | Path) -> RecordingInfo:
    """The recording described by ``infer``'s ``summary.json`` beside ``locs_path`` (empty when there is
    none or it cannot be read: the analysis then works from the table alone)."""
    path = Path(locs_path).with_name(INFER_SUMMARY)
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError):
        return RecordingInfo()
    if not isinstance(summary, dict):
        return RecordingInfo()
    optics = summary.get("optical_setup") if isinstance(summary.get("optical_setup"), dict) else {}
    camera_um, magnification = (
        _positive(optics.get("camera_pixel_um")),
        _positive(optics.get("magnification")),
    )
    shape = summary.get("frame_shape")
    height, width = (
        (int(shape[0]), int(shape[1]))
        if isinstance(shape, list) and len(shape) == 2 and all(_positive(v) for v in shape)
        else (None, None)
    )
    z_range = optics.get("z_range_um")
    frames = _positive(summary.get("frames"))
    return RecordingInfo(
        frames=int(frames) if frames else None,
        height_px=height,
        width_px=width,
        pixel_nm=camera_um / magnification * 1e3 if camera_um and magnification else None,
        z_range_nm=(
            (float(z_range[0]) * 1e3, float(z_range[1]) * 1e3)
            if isinstance(z_range, list) and len(z_range) == 2 and z_range[0] < z_range[1]
            else None
        ),
        source=str(path),
    )


def frame_count(locs: Localizations, info: RecordingInfo) -> int:
    """Frames in the recording: the summary's count, at least the table's last frame."""
    last = int(locs.last_frame.max()) if len(locs) else 0
    return max(info.frames or 0, last, 1)


def field_of_view_nm(locs: Localizations, info: RecordingInfo) -> tuple[float, float]:
    """``(width, height)`` in nm from the image's top-left corner: the recording's frames when known,
    widened to hold every localization."""
    known = info.field_nm or (0.0, 0.0)
    if not len(locs):
        return max(known[0], 1.0), max(known[1], 1.0)
    top = locs.xyz_nm[:, :2].max(axis=0)
    return max(known[0], float(top[0]) + 1.0), max(known[1], float(top[1]) + 1.0)


def require_columns(header: Sequence[str], needs: Mapping[str, Sequence[str]], path: Path) -> None:
    """Refuse a table without a column a setting needs: ``needs`` maps a setting to the columns that
    would do (any one)."""
    for setting, columns in needs.items():
        if not any(c in header for c in columns):
            names = " or ".join(f'"{c}"' for c in columns)
            raise UserInputError(
                f"{setting} needs a column {names} in locs={path}, which has none: set {setting}=null "
                "or give a table with it"
            )
