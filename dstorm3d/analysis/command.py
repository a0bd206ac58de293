"""The library behind ``python -m dstorm3d.analyze``: settings, checks and the pipeline.

Order: drift → merging → filtering → tracking → render and FRC → exports; each step is
switched on or off in ``configs/analyze.yaml``. Every setting, the input's columns and the output folder
are checked before the table is read (:func:`prepare`); :func:`analyze_table` runs the steps and
:func:`write_outputs` writes the files atomically, ``summary.json`` last.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dstorm3d.analysis import drift as drift_step
from dstorm3d.analysis import tracking as tracking_step
from dstorm3d.analysis.drift import DriftSettings
from dstorm3d.analysis.exports import ExportSettings, export_writers
from dstorm3d.analysis.filters import FilterSettings, apply_filters
from dstorm3d.analysis.frc import FRCSettings, frc_figure, frc_resolution, write_frc_csv
from dstorm3d.analysis.localizations import (
    OPTIONAL_COLUMNS,
    Localizations,
    PrecisionSettings,
    RecordingInfo,
    field_of_view_nm,
    frame_count,
    from_table,
    precision_columns,
    recording_info,
    require_columns,
)
from dstorm3d.analysis.merging import MergeSettings, merge
from dstorm3d.analysis.render import (
    MAX_RENDER_PIXELS,
    RenderSettings,
    grid_shape,
    render_localizations,
    render_png_figure,
    render_tiffs,
)
from dstorm3d.errors import UserInputError
from dstorm3d.evaluation.report import json_safe
from dstorm3d.evaluation.score import input_file, read_table, require_positions, table_header
from dstorm3d.utils.validate import flag, mapping, number, writable_folder

SUMMARY_FILE = "summary.json"
DRIFT_FILES = ("drift.csv", "drift.png")
RENDER_FILES = ("render.png", "render.tif", "render_density_zmean.tif")
FRC_FILES = ("frc.png", "frc.csv")
SECTIONS = ("precision", "drift", "merging", "filters", "render", "frc", "exports")


@dataclass(frozen=True)
class AnalyzeSettings:
    """Every validated setting of ``configs/analyze.yaml`` (besides ``locs``, ``out`` and ``overwrite``).

    ``camera_pixel_nm``: the camera pixel at the sample for the Picasso export (None: from ``infer``'s
    summary.json beside the table).
    """

    precision: PrecisionSettings
    drift: DriftSettings
    merging: MergeSettings
    filters: FilterSettings
    render: RenderSettings
    frc: FRCSettings
    exports: ExportSettings
    camera_pixel_nm: float | None = None
    tracking: tracking_step.TrackingSettings | None = None  # None: no tracking

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> AnalyzeSettings:
        def section(name: str, kind: Any) -> Any:
            known = list(kind.__dataclass_fields__)
            return kind.from_config(mapping(name, config.get(name), known))

        return cls(
            precision=section("precision", PrecisionSettings),
            drift=section("drift", DriftSettings),
            merging=section("merging", MergeSettings),
            filters=section("filters", FilterSettings),
            render=section("render", RenderSettings),
            frc=section("frc", FRCSettings),
            exports=section("exports", ExportSettings),
            camera_pixel_nm=number(
                "camera_pixel_nm", config.get("camera_pixel_nm"), above=0.0, allow_none=True, example=110
            ),
            tracking=tracking_settings(config.get("tracking"), flag("merging.enabled", merging_on(config))),
        )

    def output_files(self) -> list[str]:
        """Every file this run may write (summary.json last)."""
        names = list(DRIFT_FILES) if self.drift.enabled else []
        names += list(RENDER_FILES) if self.render.enabled else []
        names += list(FRC_FILES) if self.frc.enabled else []
        names += list(tracking_step.OUTPUT_FILES) if self.tracking is not None else []
        return [*names, *self.exports.files(), SUMMARY_FILE]

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return {name: asdict(getattr(self, name)) for name in SECTIONS} | {
            "camera_pixel_nm": self.camera_pixel_nm,
            "tracking": None if self.tracking is None else self.tracking.to_dict(),
        }


@dataclass(frozen=True)
class Prepared:
    """What :func:`prepare` checked: the settings, the input, the recording and the output folder."""

    settings: AnalyzeSettings
    locs_path: Path
    header: list[str]
    recording: RecordingInfo
    camera_pixel_nm: float | None
    folder: Path
    overwrite: bool


def merging_on(config: Mapping[str, Any]) -> Any:
    """The raw ``merging.enabled`` setting (checked by :class:`MergeSettings`)."""
    merging = config.get("merging")
    return merging.get("enabled", True) if isinstance(merging, Mapping) else True


def tracking_settings(value: Any, merging: bool) -> tracking_step.TrackingSettings | None:
    """``tracking``: ``{enabled, frame_interval_s, ...}`` (:class:`~dstorm3d.analysis.tracking.
    TrackingSettings`' keys) → its settings, or None when off. The frame interval has no default (a wrong
    one scales D silently), and merging must be off (it would fold a moving emitter's track into one
    localization)."""
    if value is None:
        return None
    known = ["enabled", *tracking_step.TrackingSettings.__dataclass_fields__]
    given = dict(mapping("tracking", value, known))
    if not flag("tracking.enabled", given.pop("enabled", False)):
        return None
    if given.get("frame_interval_s") is None:
        raise UserInputError(
            "tracking.frame_interval_s is required with tracking.enabled=true: the time between frames "
            "in s (e.g. tracking.frame_interval_s=0.1 at 10 Hz)"
        )
    if merging:
        raise UserInputError(
            "tracking.enabled=true with merging.enabled=true would merge each moving emitter's "
            "consecutive localizations before linking them: pass merging.enabled=false"
        )
    return tracking_step.TrackingSettings.from_config(given)


def prepare(config: Mapping[str, Any]) -> Prepared:
    """Check everything before any data is read: the settings, ``locs`` (an existing file whose header
    has the columns the settings need), the Picasso pixel size, ``out`` (writable, and holding none of
    this run's files unless ``overwrite``). Raises :class:`UserInputError` with one line."""
    overwrite = flag("overwrite", config.get("overwrite"))
    settings = AnalyzeSettings.from_config(config)
    locs_path = input_file("locs", config.get("locs"), "a localization table (infer's localizations.csv)")
    header = table_header(locs_path, "locs")
    require_positions(locs_path, "locs", header)
    if settings.filters.enabled:
        require_columns(header, settings.filters.needed_columns(), locs_path)
    recording = recording_info(locs_path)
    camera_pixel = settings.camera_pixel_nm or recording.pixel_nm
    if settings.exports.picasso and camera_pixel is None:
        raise UserInputError(
            f"exports.picasso needs the camera pixel size (Picasso's x, y are in camera pixels) and there "
            f"is no infer summary.json beside locs={locs_path}: pass camera_pixel_nm=<nm> or "
            "exports.picasso=false"
        )
    out = config.get("out")
    if not isinstance(out, str) or not out:
        raise UserInputError(f"out={out!r}: must be a folder path (e.g. out=analysis)")
    folder = Path(out).expanduser().resolve()
    existing = [folder / name for name in settings.output_files() if (folder / name).exists()]
    if existing and not overwrite:
        raise UserInputError(f"{existing[0]} exists: pass overwrite=true or choose another out=<folder>")
    writable_folder("out", folder)
    return Prepared(settings, locs_path, header, recording, camera_pixel, folder, overwrite)


# ---------------------------------------------------------------------------------------- the pipeline
@dataclass
class Analysis:
    """The results of :func:`analyze_table`.

    Attributes:
        locs: the analysed localizations (drift-corrected, merged, filtered).
        record: summary.json (without the outputs list).
        writers: ``{file name: write(path)}`` of every output but summary.json.
    """

    locs: Localizations
    record: dict[str, Any]
    writers: dict[str, Callable[[Path], None]]


def _figure_writer(figure: Any) -> Callable[[Path], None]:
    return lambda path: figure.savefig(path, format="png")


def analyze_table(prepared: Prepared, command: str = "") -> Analysis:
    """Read the table and run every switched-on step; nothing is written here."""
    settings = prepared.settings
    table = read_table(prepared.locs_path, "locs", optional_columns=OPTIONAL_COLUMNS)
    locs = from_table(table, settings.precision)
    frames = frame_count(locs, prepared.recording)
    field_nm = field_of_view_nm(locs, prepared.recording)
    writers: dict[str, Callable[[Path], None]] = {}
    columns = precision_columns(prepared.header)
    steps: dict[str, Any] = {
        "input": {"localizations": len(locs), "frames": frames, "field_nm": list(field_nm)},
    }

    if settings.drift.enabled:
        drift = drift_step.estimate_drift(locs, frames, settings.drift)
        locs = drift_step.correct(locs, drift)
        steps["drift"] = drift_step.drift_summary(drift)
        writers["drift.csv"] = lambda p: drift_step.write_drift_csv(drift, p)
        writers["drift.png"] = _figure_writer(drift_step.drift_figure(drift, drift_step.drift_title(drift)))

    merged = False
    if settings.merging.enabled:
        before = len(locs)
        locs, merged = merge(locs, settings.merging), True
        steps["merging"] = {
            "before": before,
            "after": len(locs),
            "mean_detections": float(locs.detections.mean()) if len(locs) else None,
        }

    if settings.filters.enabled:
        locs, steps["filtering"] = apply_filters(locs, settings.filters)

    tracked = None
    if settings.tracking is not None:
        table = tracking_step.table_from_arrays(
            locs.frame, locs.xyz_nm, **{"intensity [photon]": locs.photons, "confidence": locs.confidence}
        )
        tracked = tracking_step.analyse_tracks(table, settings.tracking)
        writers.update(tracking_step.tracking_writers(tracked, settings.tracking))
        steps["tracking"] = tracked.summary["counts"]

    if settings.render.enabled:
        shape = grid_shape(field_nm, settings.render.pixel_nm)
        if max(shape) > MAX_RENDER_PIXELS:
            raise UserInputError(
                f"render.pixel_nm={settings.render.pixel_nm:g} gives a {shape[1]}×{shape[0]} px render of "
                f"the {field_nm[0] / 1e3:.1f}×{field_nm[1] / 1e3:.1f} µm field (at most "
                f"{MAX_RENDER_PIXELS} px a side): raise render.pixel_nm"
            )
        render = render_localizations(locs, field_nm, settings.render)
        info = {"locs": str(prepared.locs_path), "localizations": len(locs)}
        writers.update(render_tiffs(render, info))
        title = f"{len(locs)} localizations, Gaussian render (σ = precision), {render.pixel_nm:g} nm pixels"
        writers["render.png"] = _figure_writer(render_png_figure(render, title))
        steps["render"] = render.record()

    if settings.frc.enabled:
        frc = frc_resolution(locs, settings.frc)
        steps["frc"] = frc.record()
        writers["frc.csv"] = lambda p: write_frc_csv(frc, p)
        writers["frc.png"] = _figure_writer(frc_figure(frc))

    writers.update(export_writers(locs, settings.exports, merged, prepared.camera_pixel_nm, frames, field_nm))
    steps["exports"] = [name for name in writers if name.startswith("localizations")]
    record = {
        "locs": str(prepared.locs_path.resolve()),
        "localizations": len(locs),
        "frc_resolution_nm": steps.get("frc", {}).get("resolution_nm"),
        "steps": steps,
        "precision": {
            "columns": columns,
            "fallback_nm": {"lateral": settings.precision.lateral_nm, "axial": settings.precision.axial_nm},
        },
        "recording": {
            "summary": prepared.recording.source,
            "frames": frames,
            "camera_pixel_nm": prepared.camera_pixel_nm,
        },
        "tracking": None
        if tracked is None
        else {"diffusion": tracked.summary["diffusion"], **steps["tracking"]},
        "settings": settings.to_dict(),
        "units": "positions, precisions, drift, resolution: nm; frames from 1",
        "command": command,
    }
    return Analysis(locs, record, writers)


def write_outputs(folder: Path, analysis: Analysis, overwrite: bool) -> dict[str, Any]:
    """Write every output atomically, then summary.json (a folder with summary.json holds a whole
    result); returns summary.json's content."""
    from dstorm3d.utils.files import atomic_write

    for name, write in analysis.writers.items():
        atomic_write(folder / name, write, overwrite=overwrite)
    record = json_safe({**analysis.record, "outputs": [*analysis.writers, SUMMARY_FILE]})
    atomic_write(
        folder / SUMMARY_FILE,
        lambda p: p.write_text(json.dumps(record, indent=2) + "\n"),
        overwrite=overwrite,
    )
    return record


def summary_line(record: Mapping[str, Any], folder: Path) -> list[str]:
    """What the command prints: counts per step, the FRC resolution and where the files went."""
    steps = record["steps"]
    parts = [f"{steps['input']['localizations']} localizations in {steps['input']['frames']} frames"]
    if "drift" in steps:
        d = steps["drift"]
        parts.append(
            f"drift {'corrected' if d['applied'] else 'not corrected'}"
            + (
                f" (range {d['range_x_nm']:.0f}/{d['range_y_nm']:.0f}/{d['range_z_nm']:.0f} nm x/y/z)"
                if d["applied"]
                else ""
            )
        )
    if "merging" in steps:
        parts.append(f"merged to {steps['merging']['after']}")
    if "filtering" in steps:
        parts.append(f"{steps['filtering']['after']} after filtering")
    if "tracking" in steps:
        d = record["tracking"]["diffusion"]
        parts.append(
            f"{steps['tracking']['tracks']} tracks, D = {d['diffusion_um2_per_s']:.4g} µm²/s"
            if steps["tracking"]["tracks"]
            else "no tracks"
        )
    if "frc" in steps:
        value = steps["frc"]["resolution_nm"]
        parts.append(f"FRC resolution {value:.1f} nm" if value else "FRC: no resolution")
    return ["; ".join(parts), f"wrote {', '.join(record['outputs'])} to {folder}"]
