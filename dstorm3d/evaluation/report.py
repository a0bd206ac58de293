"""Outputs of ``evaluate.py``: results tables (JSON, CSV), figures (PNG) and a markdown report.

Files written into the run folder (see :data:`OUTPUT_FILES`):

* ``results.json`` — the command, the checkpoints, the settings, one row per checkpoint (or baseline) ×
  condition × density with every score and its standard deviation over frames, RMSE by depth beside the
  CRLB, skipped baseline points and timings (NaN is written as ``null``);
* ``results.csv`` — the rows (columns :data:`~dstorm3d.evaluation.sweep.ROW_COLUMNS`; NaN as ``nan``);
* ``rmse_vs_z.csv`` — RMSE and recall per depth bin with the CRLB
  (:data:`~dstorm3d.evaluation.sweep.Z_COLUMNS`);
* ``jaccard_vs_density.png``, ``rmse_lateral_vs_density.png``, ``rmse_axial_vs_density.png`` — every
  checkpoint and the baseline on the same axes, one panel per condition, error bars = s.d. over frames;
* ``rmse_vs_z.png`` — lateral and axial RMSE against the true depth at one density, with the CRLB;
* ``uncertainty_calibration.png`` — for checkpoints whose head predicts uncertainties (offsets): histograms
  of the z-scores (error / predicted σ) of x, y, z and photons against N(0, 1), with the raw σ and as the
  checkpoint decodes them (its ``uncertainty_scale``), on :data:`CALIBRATION_FRAMES` frames of its own
  training distribution (:mod:`dstorm3d.evaluation.uncertainty`; the held-out seed);
* ``report.md`` — a table per condition and the command that made it.
"""

from __future__ import annotations

import csv
import json
import math
import shlex
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dstorm3d.evaluation.sweep import (
    BASELINE,
    NETWORK,
    ROW_COLUMNS,
    Z_COLUMNS,
    Evaluated,
    SweepResults,
    SweepSettings,
)
from dstorm3d.utils.files import atomic_write

DENSITY_PLOTS = {  # file → (score, y label)
    "jaccard_vs_density.png": ("jaccard", "Jaccard index"),
    "rmse_lateral_vs_density.png": ("rmse_lat_nm", "lateral RMSE (nm)"),
    "rmse_axial_vs_density.png": ("rmse_ax_nm", "axial RMSE (nm)"),
}
DEPTH_PLOT = "rmse_vs_z.png"
CALIBRATION_PLOT = "uncertainty_calibration.png"
CALIBRATION_FRAMES = 256  # frames of each offsets checkpoint's own distribution for its calibration plot
OUTPUT_FILES = (
    "results.json",
    "results.csv",
    "rmse_vs_z.csv",
    *DENSITY_PLOTS,
    DEPTH_PLOT,
    CALIBRATION_PLOT,
    "report.md",
)


# ---------------------------------------------------------------------------------------------- helpers
def command_line() -> str:
    """``python evaluate.py <overrides>`` as typed (from Hydra when it runs, else ``sys.argv``)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        overrides = list(HydraConfig.get().overrides.task)
    except (ValueError, AttributeError):
        overrides = sys.argv[1:]
    return " ".join(["python", "evaluate.py", *(shlex.quote(str(o)) for o in overrides)])


def json_safe(value: Any) -> Any:
    """Plain JSON data: NaN and infinities become ``None``, numpy scalars Python numbers."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def csv_cell(value: Any) -> str:
    """One CSV cell: shortest round-trip repr for floats, ``nan`` for NaN, empty for ``None``."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(value)
    return str(value)


def _write_csv(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        with open(path, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(columns)
            for row in rows:
                writer.writerow([csv_cell(row.get(column)) for column in columns])

    return write


def _series(
    rows: Sequence[Mapping[str, Any]], condition: str
) -> dict[tuple[str, str], list[Mapping[str, Any]]]:
    """Rows of one condition grouped by (label, method), in row order."""
    grouped: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for row in rows:
        if row["condition"] == condition:
            grouped.setdefault((row["label"], row["method"]), []).append(row)
    return grouped


def _colours(checkpoints: Sequence[Evaluated]) -> dict[str, Any]:
    """One colour per checkpoint label; an MP series takes the colour of its test set's first checkpoint."""
    from matplotlib import colormaps

    palette = colormaps["tab10"]
    colours: dict[str, Any] = {}
    first_of_set: dict[str, Any] = {}
    for index, item in enumerate(checkpoints):
        colours[item.label] = palette(index % 10)
        first_of_set.setdefault(item.physics.key, colours[item.label])
    for item in checkpoints:
        colours[f"MP ({item.physics.key})"] = first_of_set[item.physics.key]
    return colours


def _colour(colours: Mapping[str, Any], label: str, method: str, rows: Sequence[Mapping[str, Any]]) -> Any:
    if method == NETWORK:
        return colours.get(label, "black")
    return colours.get(f"MP ({rows[0]['test_set']})", "black")


def _figure(rows: int, columns: int, width: float = 4.6, height: float = 3.6) -> Any:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width * columns, height * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False)
    return figure, axes


def _save(figure: Any, path: Path, overwrite: bool) -> None:
    atomic_write(path, lambda p: figure.savefig(p, format="png", dpi=110), overwrite=overwrite)


# ---------------------------------------------------------------------------------------------- figures
def plot_against_density(
    rows: Sequence[Mapping[str, Any]],
    checkpoints: Sequence[Evaluated],
    settings: SweepSettings,
    score: str,
    ylabel: str,
    path: Path,
    overwrite: bool,
) -> None:
    """``score`` ± s.d. over frames against density, one panel per condition; networks solid, MP dashed."""
    colours = _colours(checkpoints)
    conditions = settings.conditions
    figure, axes = _figure(1, len(conditions))
    pixel_um = checkpoints[0].physics.setup.pixel_size_um
    field_um2 = (settings.reference_field_px * pixel_um) ** 2
    for ax, condition in zip(axes[0], conditions):
        for (label, method), series in _series(rows, condition.name).items():
            x = np.array([r["density_per_um2"] for r in series])
            y = np.array([r[score] for r in series], dtype=np.float64)
            error = np.nan_to_num(np.array([r[f"{score}_std"] for r in series], dtype=np.float64))
            baseline = method == BASELINE
            ax.errorbar(
                x,
                y,
                yerr=error,
                label=label,
                color=_colour(colours, label, method, series),
                linestyle="--" if baseline else "-",
                marker="s" if baseline else "o",
                markerfacecolor="none" if baseline else None,
                capsize=3,
                linewidth=1.4,
                markersize=4,
            )
        ax.set_title(
            f"{condition.name}: {condition.mean_photons:g} photons, "
            f"{_background_text(condition.mean_background)} bg"
        )
        ax.set_xlabel("density (emitters / µm²)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if score == "jaccard":
            ax.set_ylim(-0.02, 1.02)
        top = ax.secondary_xaxis("top", functions=(lambda d: d * field_um2, lambda n: n / field_um2))
        top.set_xlabel(f"emitters per {settings.reference_field_px}×{settings.reference_field_px} px field")
        ax.legend(fontsize=7)
    _save(figure, path, overwrite)


def plot_against_depth(
    depth_rows: Sequence[Mapping[str, Any]],
    checkpoints: Sequence[Evaluated],
    settings: SweepSettings,
    count: int,
    path: Path,
    overwrite: bool,
) -> None:
    """Lateral (top) and axial (bottom) RMSE per depth bin at ``count`` emitters per field, with the CRLB
    of each test set (dotted)."""
    colours = _colours(checkpoints)
    conditions = settings.conditions
    figure, axes = _figure(2, len(conditions))
    rows = [r for r in depth_rows if r["count_per_field"] == count]
    for column, condition in enumerate(conditions):
        bounds_drawn: set[str] = set()
        for (label, method), series in _series(rows, condition.name).items():
            z = np.array([r["z_um"] for r in series])
            colour = _colour(colours, label, method, series)
            baseline = method == BASELINE
            test_set = series[0]["test_set"]
            for row_index, (key, bound) in enumerate(
                (("rmse_lat_nm", "crlb_lat_nm"), ("rmse_ax_nm", "crlb_ax_nm"))
            ):
                ax = axes[row_index, column]
                ax.plot(
                    z,
                    [r[key] for r in series],
                    color=colour,
                    linestyle="--" if baseline else "-",
                    marker="s" if baseline else "o",
                    markerfacecolor="none" if baseline else None,
                    markersize=4,
                    label=label,
                )
                if test_set not in bounds_drawn:
                    ax.plot(
                        z,
                        [r[bound] for r in series],
                        color=colour,
                        linestyle=":",
                        linewidth=2,
                        label=f"CRLB (test set {test_set[:6]})",
                    )
            bounds_drawn.add(test_set)
        for row_index, name in enumerate(("lateral", "axial")):
            ax = axes[row_index, column]
            ax.set_title(f"{condition.name}, {count} per field: {name} RMSE")
            ax.set_xlabel("true z (µm above the coverslip)")
            ax.set_ylabel(f"{name} RMSE (nm)")
            _plain_log_axis(ax)
            ax.legend(fontsize=7)
    _save(figure, path, overwrite)


def _plain_log_axis(ax: Any) -> None:
    """Logarithmic y axis labelled 2, 5, 10, 20, … (not 2×10⁰)."""
    from matplotlib.ticker import FuncFormatter

    def label(value: float, _: Any, minor: bool) -> str:
        if value <= 0:
            return ""
        leading = round(value / 10 ** math.floor(math.log10(value)))
        return f"{value:g}" if not minor or leading in (2, 5) else ""

    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, p: label(v, p, False)))
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, p: label(v, p, True)))
    ax.grid(alpha=0.3, which="both")


def photon_range(spec: Mapping[str, Any]) -> tuple[float, float]:
    """The central range of a photon distribution: its 5th–95th percentiles (gamma), its bounds (uniform) or
    its value (fixed)."""
    kind = spec.get("kind")
    if kind == "gamma":
        from scipy.stats import gamma

        lo, hi = gamma.ppf([0.05, 0.95], float(spec["shape"]), scale=float(spec["scale"]))
        return float(lo), float(hi)
    if kind == "uniform":
        return float(spec["low"]), float(spec["high"])
    return float(spec["value"]), float(spec["value"])


def background_range(spec: Mapping[str, Any]) -> tuple[float, float] | None:
    """The range of a background config's level (photons/px), or ``None`` for kinds without one."""
    kind = spec.get("kind")
    if kind == "none":
        return 0.0, 0.0
    level = spec.get("level", spec.get("level_range")) if kind in ("uniform", "super_gaussian") else None
    if level is None:
        return None
    values = [float(v) for v in (level if isinstance(level, (list, tuple)) else [level, level])]
    return min(values), max(values)


def training_range_notes(checkpoints: Sequence[Evaluated], condition: Any) -> list[str]:
    """One line per checkpoint whose training simulation never saw this condition's photons or background:
    its scores here measure extrapolation, not the model at its task."""
    notes = []
    for item in checkpoints:
        simulation = item.module.hparams.simulation
        emitters = simulation.get("emitters") or {}
        if not emitters.get("photons"):
            continue
        lo, hi = photon_range(emitters["photons"])
        lo = max(lo, float(emitters.get("label_min_photons") or 0.0))
        trained_bg = background_range(simulation.get("background") or {"kind": "none"})
        outside = []
        if not lo <= condition.mean_photons <= hi:
            outside.append(f"{condition.mean_photons:,.0f} photons (trained: {lo:,.0f}–{hi:,.0f})")
        background = condition.mean_background
        if trained_bg is not None and background is not None:
            b_lo, b_hi = trained_bg
            if not 0.5 * b_lo <= background <= 1.5 * b_hi + 10.0:
                outside.append(f"{background:g} background photons/px (trained: {b_lo:g}–{b_hi:g})")
        if outside:
            notes.append(
                f"* **{item.label} was not trained for this condition**: {'; '.join(outside)}. Its scores "
                "here measure how it extrapolates, not how well it does what it was trained for."
            )
    return notes


def _background_text(background: float | None) -> str:
    return "non-uniform" if background is None else f"{background:g} photons/px"


# ---------------------------------------------------------------------------------------------- markdown
def _pm(value: Any, spread: Any, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    text = f"{value:.{digits}f}"
    if spread is not None and not (isinstance(spread, float) and math.isnan(spread)):
        text += f" ± {spread:.{digits}f}"
    return text


def markdown_report(
    command: str,
    checkpoints: Sequence[Evaluated],
    settings: SweepSettings,
    results: SweepResults,
    depth_count: int,
    calibration: Mapping[str, Mapping[str, Any]] | None = None,
) -> str:
    """The report: checkpoints, test sets, a table per condition, CRLB, skipped points, figures
    (``calibration``: :func:`uncertainty_calibration`'s measurements, for the uncertainty section)."""
    pixel_nm = checkpoints[0].physics.setup.pixel_size_um * 1e3
    field_um = settings.reference_field_px * pixel_nm / 1e3
    lines = [
        "# Density benchmark (DeepSTORM3D Fig. 2, Fig. 4d–f)",
        "",
        "Made by:",
        "",
        f"    {command}",
        "",
        "## Checkpoints",
        "",
        "| label | checkpoint | module | head | mask | test frames (px) | test set | threshold |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for item in checkpoints:
        info = item.describe(settings.threshold)
        height, width = item.physics.frame_shape
        lines.append(
            f"| {item.label} | `{item.path}` | {info['kind']} | {info['head']} | {info['mask']} | "
            f"{height}×{width} | `{item.physics.key}` | {info['threshold']:.4g} |"
        )
    camera = {c.camera.get("kind") for c in settings.conditions}
    lines += [
        "",
        "## Test sets",
        "",
        f"* {settings.frames} frames per point, seed {settings.seed}; densities are given as emitters per "
        f"{settings.reference_field_px}×{settings.reference_field_px} px field "
        f"({field_um:.2f}×{field_um:.2f} µm² at {pixel_nm:.0f} nm): counts {list(settings.counts)}.",
        "* Frames of another size keep the densities: a frame expects count × (its area / the field's area) "
        "emitters, and holds the integer below or above that at random so that the mean is exact "
        "(`emitters per frame` below is the realised mean).",
        "* Emitters uniform in x, y over the frame and in z over the axial range; the same emitters "
        "(and noise streams) for every checkpoint with the same frame size and axial range, and the very "
        "same frames for checkpoints with the same test set.",
        f"* Camera: {', '.join(sorted(camera))}; matching: Hungarian, 3D distance "
        f"< {settings.matching_nm:g} nm; efficiencies by the SMLM-challenge formula (α = 1 nm⁻¹ lateral, "
        "0.5 nm⁻¹ axial) at this matching.",
        "* Scores are pooled over the frames of a point; ± is the standard deviation of the per-frame "
        "values.",
        "",
    ]
    for condition in settings.conditions:
        lines += [
            f"## {condition.name}: {condition.mean_photons:g} signal photons, "
            f"{_background_text(condition.mean_background)} background",
            "",
            *(notes + [""] if (notes := training_range_notes(checkpoints, condition)) else []),
            "| density (µm⁻²) | per field | per frame | method | frames | Jaccard | precision | recall | "
            "RMSE xy (nm) | RMSE z (nm) | E3D (%) |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row in (r for r in results.rows if r["condition"] == condition.name):
            lines.append(
                f"| {row['density_per_um2']:.4f} | {row['count_per_field']} | "
                f"{row['emitters_per_frame']:.2f} | "
                f"{row['label']} | {row['frames']} | {_pm(row['jaccard'], row['jaccard_std'], 3)} | "
                f"{_pm(row['precision'], row['precision_std'], 3)} | "
                f"{_pm(row['recall'], row['recall_std'], 3)} | "
                f"{_pm(row['rmse_lat_nm'], row['rmse_lat_nm_std'], 1)} | "
                f"{_pm(row['rmse_ax_nm'], row['rmse_ax_nm_std'], 1)} | "
                f"{_pm(row['efficiency_3d'], row['efficiency_3d_std'], 1)} |"
            )
        for bound in (b for b in results.crlb if b["condition"] == condition.name):
            if "lat_nm" in bound:
                lines += [
                    "",
                    f"CRLB of test set `{bound['test_set']}` ({', '.join(bound['labels'])}), mean over "
                    f"{len(bound['z_um'])} depths: lateral {np.mean(bound['lat_nm']):.1f} nm "
                    f"(x {np.mean(bound['x_nm']):.1f}, y {np.mean(bound['y_nm']):.1f}), "
                    f"axial {np.mean(bound['ax_nm']):.1f} nm.",
                ]
            else:
                lines += ["", f"No CRLB for test set `{bound['test_set']}`: the background is not uniform."]
        lines.append("")
    if results.skipped:
        lines += ["## Skipped", ""]
        lines += [
            f"* {s['label']}, {s['condition']}, {s['count_per_field']} per field: {s['reason']}"
            for s in results.skipped
        ]
        lines.append("")
    lines += ["## Figures", ""]
    for name, (_, title) in DENSITY_PLOTS.items():
        lines += [f"![{title} against density]({name})", ""]
    lines += [
        f"![RMSE against depth at {depth_count} per field, with the CRLB]({DEPTH_PLOT})",
        "",
        *calibration_lines(calibration or {}),
        "## Time",
        "",
    ]
    for timing in results.timing:
        lines.append(
            f"* {timing['label']}, {timing['condition']}, {timing['count_per_field']} per field: "
            f"{timing['seconds'] / max(1, timing['frames']):.3f} s per frame ({timing['frames']} frames)"
        )
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- uncertainties
def uncertainty_calibration(
    checkpoints: Sequence[Evaluated], frames: int = CALIBRATION_FRAMES
) -> dict[str, Any]:
    """Per offsets checkpoint (by label): ``{"raw σ": Measurement, "as decoded": Measurement}``, the z-scores
    of ``frames`` frames of its own training distribution (the held-out seed
    :data:`~dstorm3d.evaluation.uncertainty.TEST_SEED`) with the head's raw σ and with the checkpoint's
    factors."""
    from dstorm3d.evaluation.uncertainty import TEST_SEED, measure, simulated_set, uncertainty_scale, unscaled

    found: dict[str, Any] = {}
    for item in checkpoints:
        if item.module.hparams.head.get("kind") != "offsets" or frames < 1:
            continue
        decoded = measure(
            item.module, simulated_set(item.module, frames, TEST_SEED), uncertainty_scale(item.module)
        )
        found[item.label] = {"raw σ": unscaled(decoded), "as decoded": decoded}
    return found


def calibration_lines(calibration: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The report's uncertainty section: z-score standard deviations per axis, and the figure."""
    if not calibration:
        return []
    lines = [
        "## Predicted uncertainties",
        "",
        "Standard deviation of the z-scores (error / predicted σ) of matched localizations on frames of each "
        "checkpoint's own training distribution (1 = calibrated; `python -m dstorm3d.uncertainty` fits the "
        "factors):",
        "",
        "| checkpoint | σ | pairs | x | y | z | photons | factors x / y / z / photons |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, measurements in calibration.items():
        for name, measurement in measurements.items():
            summary = measurement.summary
            stds = " | ".join(f"{summary[a]['std']:.3f}" for a in ("x", "y", "z", "photons"))
            factors = " / ".join(f"{measurement.scale[a]:.3f}" for a in ("x", "y", "z", "photons"))
            lines.append(f"| {label} | {name} | {summary['x']['pairs']} | {stds} | {factors} |")
    return [*lines, "", f"![z-scores against N(0, 1)]({CALIBRATION_PLOT})", ""]


def plot_calibration(calibration: Mapping[str, Mapping[str, Any]], path: Path, overwrite: bool) -> None:
    """The z-score histograms (:func:`~dstorm3d.evaluation.uncertainty.calibration_figure`), or a note that
    no checkpoint predicts uncertainties."""
    from dstorm3d.evaluation.uncertainty import calibration_figure

    if calibration:
        title = (
            f"predicted uncertainties on each checkpoint's own simulated frames ({CALIBRATION_FRAMES} each)"
        )
        figure = calibration_figure(calibration, title)
    else:
        figure, axes = _figure(1, 1, width=5.0, height=1.2)
        ax = axes[0, 0]
        ax.set_axis_off()
        ax.text(0.5, 0.5, "no checkpoint predicts uncertainties (volume heads)", ha="center", va="center")
    _save(figure, path, overwrite)


# ---------------------------------------------------------------------------------------------- all outputs
def depth_plot_count(settings: SweepSettings, requested: int | None = None) -> int:
    """The density of the RMSE-vs-z figure: ``requested`` if it is one of the counts, else the lowest
    non-zero count."""
    if requested is not None and requested in settings.counts:
        return requested
    non_zero = [c for c in settings.counts if c > 0]
    return min(non_zero) if non_zero else settings.counts[0]


def write_outputs(
    out: Path,
    checkpoints: Sequence[Evaluated],
    settings: SweepSettings,
    results: SweepResults,
    command: str,
    overwrite: bool = False,
    depth_count: int | None = None,
) -> dict[str, Any]:
    """Write every file of :data:`OUTPUT_FILES` into ``out``; returns the content of ``results.json``."""
    out.mkdir(parents=True, exist_ok=True)
    depth_count = depth_plot_count(settings, depth_count)
    summary = json_safe(
        {
            "command": command,
            "checkpoints": [item.describe(settings.threshold) for item in checkpoints],
            "settings": settings.to_dict(),
            "columns": list(ROW_COLUMNS),
            "rows": results.rows,
            "rmse_vs_z": results.depth_rows,
            "crlb": results.crlb,
            "skipped": results.skipped,
            "timing": results.timing,
        }
    )
    atomic_write(
        out / "results.json", lambda p: p.write_text(json.dumps(summary, indent=1)), overwrite=overwrite
    )
    atomic_write(out / "results.csv", _write_csv(results.rows, ROW_COLUMNS), overwrite=overwrite)
    atomic_write(out / "rmse_vs_z.csv", _write_csv(results.depth_rows, Z_COLUMNS), overwrite=overwrite)
    for name, (score, ylabel) in DENSITY_PLOTS.items():
        plot_against_density(results.rows, checkpoints, settings, score, ylabel, out / name, overwrite)
    plot_against_depth(results.depth_rows, checkpoints, settings, depth_count, out / DEPTH_PLOT, overwrite)
    calibration = uncertainty_calibration(checkpoints)
    plot_calibration(calibration, out / CALIBRATION_PLOT, overwrite)
    text = markdown_report(command, checkpoints, settings, results, depth_count, calibration)
    atomic_write(out / "report.md", lambda p: p.write_text(text), overwrite=overwrite)
    return summary
