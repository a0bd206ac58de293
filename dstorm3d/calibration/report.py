"""Statistics, figures and the report of a bead calibration.

Goodness of fit, with F² the camera's excess-noise factor (2 for an EMCCD) and μ the fitted expectation:

* **deviance per degree of freedom**: the scaled Poisson deviance Σ 2[d⁺ log(d⁺/μ) − (d − μ)]/F² over all
  fitted pixels, divided by (pixels − fitted parameters). About 1 for a model that explains the data down
  to the noise, when μ is not tiny (at a few photons per pixel the Poisson deviance's expectation falls
  below 1, and an EMCCD's Gamma register is only approximately a scaled Poisson variable);
* **Pearson χ² per degree of freedom**: Σ (d − μ)²/(F²μ) / dof, whose expectation is 1 at any μ;
* **per-slice correlation**: Pearson's r between the data and the model of the bead-summed window of each
  slice (all beads' windows added pixel by pixel), with its *noise ceiling*: r between the model and one
  noise draw of it (F²·Poisson(μ/F²)), the most a perfect model could reach at that slice's photons.

Positions in the bead table are in nm from the frame's top-left *corner* (pixel (0, 0) spans 0–100 nm at
100 nm pixels), as every dstorm3d table.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dstorm3d.evaluation.report import json_safe
from dstorm3d.utils.files import atomic_write

from .fit import poisson_deviance

REPORT_JSON, REPORT_MD = "report.json", "report.md"
FIGURES = ("montage.png", "residuals.png", "zernike.png", "crlb.png")
#: Largest |z| (nm) of the summary's correlation floor.
CORRELATION_Z_NM = 600.0


# ---------------------------------------------------------------------------------------- statistics
def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson's r of two arrays' values."""
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def slice_statistics(
    data: np.ndarray, mu: np.ndarray, excess_noise: float, z_nm: np.ndarray, seed: int = 0
) -> dict[str, np.ndarray]:
    """Per-slice statistics of windows ``data``, ``mu`` ``(B, Z, P, P)`` (photons): ``z_nm``, the
    bead-summed ``correlation`` and its ``noise_ceiling``, the ``correlation_per_bead_min`` (the worst
    bead's own r) and the ``deviance_per_pixel``; each ``(Z,)``."""
    rng = np.random.default_rng(seed)
    noisy = excess_noise * rng.poisson(mu / excess_noise)
    summed_data, summed_mu, summed_noisy = data.sum(0), mu.sum(0), noisy.sum(0)
    slices = range(data.shape[1])
    deviance = poisson_deviance(data, mu, excess_noise)
    return {
        "z_nm": np.asarray(z_nm, dtype=np.float64),
        "correlation": np.array([correlation(summed_data[s], summed_mu[s]) for s in slices]),
        "noise_ceiling": np.array([correlation(summed_noisy[s], summed_mu[s]) for s in slices]),
        "correlation_per_bead_min": np.array(
            [min(correlation(data[b, s], mu[b, s]) for b in range(data.shape[0])) for s in slices]
        ),
        "deviance_per_pixel": deviance.mean(axis=(0, 2, 3)),
    }


def fit_statistics(data: np.ndarray, mu: np.ndarray, excess_noise: float, parameters: int) -> dict[str, Any]:
    """Deviance and Pearson χ² per degree of freedom of the whole fit (module docstring)."""
    pixels = int(data.size)
    dof = max(pixels - parameters, 1)
    deviance = float(poisson_deviance(data, mu, excess_noise).sum())
    pearson = float(np.sum((data - mu) ** 2 / (excess_noise * mu)))
    return {
        "pixels": pixels,
        "parameters": int(parameters),
        "dof": dof,
        "deviance": deviance,
        "deviance_per_dof": deviance / dof,
        "pearson_chi2_per_dof": pearson / dof,
    }


def correlation_summary(
    stats: Mapping[str, np.ndarray], z_limit_nm: float = CORRELATION_Z_NM
) -> dict[str, Any]:
    """The worst bead-summed correlation (and its ceiling) within ±``z_limit_nm`` and over the stack."""
    z = stats["z_nm"]
    inside = np.abs(z) <= z_limit_nm
    summary: dict[str, Any] = {
        "z_limit_nm": z_limit_nm,
        "min_correlation_all": float(stats["correlation"].min()),
        "median_correlation": float(np.median(stats["correlation"])),
    }
    if inside.any():
        worst = int(np.argmin(np.where(inside, stats["correlation"], np.inf)))
        summary.update(
            min_correlation_within=float(stats["correlation"][worst]),
            min_correlation_z_nm=float(z[worst]),
            noise_ceiling_there=float(stats["noise_ceiling"][worst]),
        )
    return summary


# ---------------------------------------------------------------------------------------- bead positions
def compare_positions(
    beads: Sequence[Mapping[str, Any]], reference_csv: Path, pixel_nm: float
) -> dict[str, Any]:
    """Match each fitted bead to the nearest reference position (CSV with ``x_nm``, ``y_nm`` columns) and
    say which origin convention the reference uses: the pixel *corner* (dstorm3d's: pixel (0, 0) spans
    0 … pixel_nm) or the pixel *centre* (pixel (0, 0)'s centre at 0). Returns the mean offset (reference −
    fitted) under each, their spread and the verdict."""
    import csv

    with open(reference_csv, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or not {"x_nm", "y_nm"} <= set(rows[0]):
        raise ValueError(f"{reference_csv}: needs columns x_nm and y_nm")
    reference = np.array([[float(r["x_nm"]), float(r["y_nm"])] for r in rows])
    fitted = np.array([[b["x_nm"], b["y_nm"]] for b in beads])
    nearest = np.argmin(np.linalg.norm(reference[None] - fitted[:, None], axis=-1), axis=1)
    offset_corner = reference[nearest] - fitted  # (B, 2)
    offset_centre = offset_corner + pixel_nm / 2  # centre convention: fitted position − pixel/2
    mean_corner, mean_centre = offset_corner.mean(0), offset_centre.mean(0)
    verdict = "corner" if np.linalg.norm(mean_corner) < np.linalg.norm(mean_centre) else "centre"
    return {
        "reference": str(reference_csv),
        "matched_reference_rows": [int(i) + 1 for i in nearest],
        "mean_offset_nm_if_corner": mean_corner.tolist(),
        "mean_offset_nm_if_centre": mean_centre.tolist(),
        "offset_spread_nm": offset_corner.std(0).tolist(),
        "convention": verdict,
        "note": (
            "offset = reference − fitted, averaged over the "
            "beads; the convention is the one with the smaller "
            "mean offset. The fitted position is the pupil model's (no tip or tilt): a remaining offset is "
            "the reference's own definition of a PSF's centre (e.g. of a measured PSF's array), to be added "
            "to localizations made with this model before comparing them with that reference's tables."
        ),
    }


# ---------------------------------------------------------------------------------------- figures
def montage_figure(
    data: np.ndarray, mu: np.ndarray, z_nm: np.ndarray, pick: Sequence[int], pixel_um: float
) -> Any:
    """Bead-summed data (top) and model (bottom) windows at the slices ``pick``; one colour scale per
    column (photons per pixel), colour bar and scale bar."""
    from dstorm3d.visualization import add_scale_bar, new_figure

    summed_data, summed_mu = data.sum(0), mu.sum(0)
    columns = len(pick)
    figure = new_figure(1.45 * columns + 0.9, 3.6)
    axes = figure.subplots(2, columns, squeeze=False)
    image = None
    for column, s in enumerate(pick):
        top = max(float(summed_data[s].max()), float(summed_mu[s].max()))
        for row, (stack, name) in enumerate(((summed_data, "data"), (summed_mu, "model"))):
            ax = axes[row, column]
            image = ax.imshow(stack[s] / top, cmap="magma", vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if column == 0:
                ax.set_ylabel(name)
        axes[0, column].set_title(f"z {z_nm[s]:+.0f} nm\npeak {top:.0f}", fontsize=8)
    add_scale_bar(axes[1, 0], pixel_um, data.shape[-1])
    bar = figure.colorbar(image, ax=axes, shrink=0.8)
    bar.set_label("photons per pixel / column peak")
    figure.suptitle(f"bead-summed windows ({data.shape[0]} beads): data vs calibrated model", fontsize=10)
    return figure


def residual_figure(
    data: np.ndarray,
    mu: np.ndarray,
    excess_noise: float,
    stats: Mapping[str, np.ndarray],
    pick: Sequence[int],
    pixel_um: float,
) -> Any:
    """Top: Pearson residuals (d − μ)/√(F²μ) of the bead-summed windows at ``pick``; bottom: per-slice
    correlation (with the noise ceiling) and deviance per pixel against z."""
    from dstorm3d.visualization import add_scale_bar, new_figure

    summed_data, summed_mu = data.sum(0), mu.sum(0)
    residual = (summed_data - summed_mu) / np.sqrt(excess_noise * np.clip(summed_mu, 1e-9, None))
    columns = len(pick)
    figure = new_figure(1.45 * columns + 0.9, 5.6)
    grid = figure.add_gridspec(2, columns, height_ratios=(1, 1.5))
    image = None
    axes = []
    for column, s in enumerate(pick):
        ax = figure.add_subplot(grid[0, column])
        image = ax.imshow(residual[s], cmap="RdBu_r", vmin=-4, vmax=4, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"z {stats['z_nm'][s]:+.0f} nm", fontsize=8)
        axes.append(ax)
    add_scale_bar(axes[0], pixel_um, data.shape[-1], colour="black")
    bar = figure.colorbar(image, ax=axes, shrink=0.8)
    bar.set_label("(data − model)/√(F²·model)")
    curves = figure.add_subplot(grid[1, :])
    z = stats["z_nm"]
    curves.plot(z, stats["correlation"], color="C0", label="correlation, bead-summed data vs model")
    curves.plot(
        z, stats["noise_ceiling"], color="C0", linestyle=":", label="noise ceiling (model vs its noise)"
    )
    curves.plot(z, stats["correlation_per_bead_min"], color="C2", linewidth=0.8, label="worst single bead")
    curves.set_xlabel("z relative to focus (nm)")
    curves.set_ylabel("Pearson r")
    curves.legend(loc="lower center", fontsize=7)
    deviance = curves.twinx()
    deviance.plot(z, stats["deviance_per_pixel"], color="C3", linewidth=0.8)
    deviance.set_ylabel("deviance per pixel", color="C3")
    return figure


def zernike_figure(coefficients: Mapping[int, float], title: str) -> Any:
    """Bar chart of Noll Zernike coefficients (rad)."""
    from dstorm3d.optics.zernike import noll_to_nm
    from dstorm3d.visualization import new_figure

    noll = sorted(coefficients)
    figure = new_figure(max(5.0, 0.32 * len(noll) + 1.5), 3.4)
    ax = figure.subplots()
    values = [coefficients[j] for j in noll]
    ax.bar(range(len(noll)), values, color=["C3" if v < 0 else "C0" for v in values])
    ax.set_xticks(range(len(noll)))
    ax.set_xticklabels([f"{j}\n{noll_to_nm(j)[0]},{noll_to_nm(j)[1]}" for j in noll], fontsize=6)
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_xlabel("Noll index j (n, m)")
    ax.set_ylabel("coefficient (rad, orthonormal Zernike)")
    ax.set_title(title, fontsize=9)
    return figure


def crlb_figure(
    z_nm: np.ndarray, bounds: Mapping[str, np.ndarray], photons: float, background: float, emccd: bool
) -> Any:
    """CRLB of x, y and z (nm) against z relative to focus."""
    from dstorm3d.visualization import new_figure

    figure = new_figure(5.2, 3.6)
    ax = figure.subplots()
    for key, label in (("x_nm", "x"), ("y_nm", "y"), ("z_nm", "z")):
        ax.plot(z_nm, bounds[key], label=f"σ_{label}")
    ax.set_xlabel("z relative to focus (nm)")
    ax.set_ylabel("Cramér–Rao bound (nm)")
    noise = "EMCCD (excess noise ×2)" if emccd else "Poisson"
    ax.set_title(
        f"calibrated PSF: {photons:g} photons, {background:g} photons/px background, {noise}", fontsize=8
    )
    ax.set_ylim(bottom=0)
    ax.legend()
    return figure


# ---------------------------------------------------------------------------------------- report
def markdown_report(record: Mapping[str, Any]) -> str:
    """report.md: the headline numbers, the bead table and the per-slice statistics (every 5th slice)."""
    fit, stats, model = record["statistics"], record["correlation"], record["model"]
    lines = [
        f"# PSF calibration: {Path(record['beads']).name}",
        "",
        f"Command: `{record['command']}`",
        "",
        "| quantity | value |",
        "|---|---|",
        f"| beads used | {len(record['beads_table'])} (rejected: {len(record['rejected'])}) |",
        f"| slices used | {record['slices_used']} of {record['slices_total']} |",
        f"| deviance per dof | {fit['deviance_per_dof']:.3f} "
        f"(dof {fit['dof']}, {fit['parameters']} parameters) |",
        f"| Pearson χ² per dof | {fit['pearson_chi2_per_dof']:.3f} |",
        f"| excess-noise factor F² | {record['excess_noise']:g} |",
    ]
    if "min_correlation_within" in stats:
        lines.append(
            f"| min. per-slice correlation within ±{stats['z_limit_nm']:.0f} nm | "
            f"{stats['min_correlation_within']:.4f} at z {stats['min_correlation_z_nm']:+.0f} nm "
            f"(noise ceiling there {stats['noise_ceiling_there']:.4f}) |"
        )
    lines += [
        f"| min. per-slice correlation, whole stack | {stats['min_correlation_all']:.4f} |",
        f"| blur σ | {model['blur_sigma_px']:.3f} px "
        f"({model['blur_sigma_px'] * record['pixel_nm']:.0f} nm) |",
        f"| Zernike RMS (j ≥ 5) | {model['zernike_rms_rad']:.3f} rad |",
        f"| focus slice (1-based) | {model['focus_slice']:.2f} "
        f"({'fitted' if model['focus_fitted'] else 'given'}) |",
        f"| z step (nominal) × scale | {model['z_step_nm']:g} nm × {model['step_scale']:.4f}"
        f" ({'fitted' if model['step_scale_fitted'] else 'fixed'}) |",
        f"| z offset of the nominal focus slice | {model['z_offset_nm']:+.1f} nm |",
        "",
        f"z convention: {model['z_convention']}",
        "",
        "## Beads (x, y in nm from the frame's top-left corner)",
        "",
        "| bead | x (nm) | y (nm) | photons (mean per slice) | "
        "background (photons/px, mean) | deviance per pixel |",
        "|---|---|---|---|---|---|",
    ]
    for bead in record["beads_table"]:
        lines.append(
            f"| {bead['bead']} | {bead['x_nm']:.1f} | {bead['y_nm']:.1f} | {bead['photons']:.0f} | "
            f"{bead['background']:.2f} | {bead['deviance_per_pixel']:.3f} |"
        )
    if record["rejected"]:
        lines += ["", "Rejected: " + "; ".join(record["rejected"])]
    if record.get("reference_positions"):
        ref = record["reference_positions"]
        lines += [
            "",
            f"## Reference positions ({Path(ref['reference']).name})",
            "",
            f"Origin convention: **pixel {ref['convention']}**. Mean offset reference − fitted: "
            f"({ref['mean_offset_nm_if_corner'][0]:+.1f}, "
            f"{ref['mean_offset_nm_if_corner'][1]:+.1f}) nm read as "
            f"corner, ({ref['mean_offset_nm_if_centre'][0]:+.1f}, "
            f"{ref['mean_offset_nm_if_centre'][1]:+.1f}) nm "
            f"read as centre; spread over the beads ({ref['offset_spread_nm'][0]:.1f}, "
            f"{ref['offset_spread_nm'][1]:.1f}) nm. {ref['note']}",
        ]
        if ref.get("aligned"):
            lines += ["", f"Aligned: {ref['alignment']}."]
    lines += ["", "## Zernike coefficients (rad)", "", "| Noll j | coefficient |", "|---|---|"]
    lines += [f"| {j} | {value:+.4f} |" for j, value in model["zernike_rad"].items()]
    crlb = record["crlb"]
    lines += [
        "",
        f"## CRLB ({crlb['photons']:g} photons, {crlb['background']:g} photons/px)",
        "",
        f"Mean over z: σx {np.mean(crlb['x_nm']):.1f} nm, σy {np.mean(crlb['y_nm']):.1f} nm, "
        f"σz {np.mean(crlb['z_nm']):.1f} nm (crlb.png).",
        "",
        "## Per slice (every 5th)",
        "",
        "| z (nm) | correlation | noise ceiling | worst bead | deviance per pixel |",
        "|---|---|---|---|---|",
    ]
    per_slice = record["per_slice"]
    for i in range(0, len(per_slice["z_nm"]), 5):
        lines.append(
            f"| {per_slice['z_nm'][i]:+.0f} | {per_slice['correlation'][i]:.4f} | "
            f"{per_slice['noise_ceiling'][i]:.4f} | {per_slice['correlation_per_bead_min'][i]:.4f} | "
            f"{per_slice['deviance_per_pixel'][i]:.3f} |"
        )
    lines += ["", "Statistics: see dstorm3d/calibration/report.py.", ""]
    return "\n".join(lines)


def existing_outputs(folder: Path, psf_file: str) -> list[Path]:
    """The output files of a calibration that already exist in ``folder``."""
    return [
        folder / name for name in (*FIGURES, REPORT_JSON, REPORT_MD, psf_file) if (folder / name).exists()
    ]


def write_report(
    folder: Path, figures: Mapping[str, Any], record: Mapping[str, Any], overwrite: bool
) -> list[Path]:
    """Write the figures, report.md and report.json (atomically; existing ones only with ``overwrite``)."""
    written = [
        atomic_write(
            folder / name, lambda p, f=figure: f.savefig(p, format="png", dpi=110), overwrite=overwrite
        )
        for name, figure in figures.items()
    ]
    written.append(
        atomic_write(folder / REPORT_MD, lambda p: p.write_text(markdown_report(record)), overwrite=overwrite)
    )
    text = json.dumps(json_safe(record), indent=2) + "\n"
    written.append(atomic_write(folder / REPORT_JSON, lambda p: p.write_text(text), overwrite=overwrite))
    return written


def pick_slices(count: int, wanted: int) -> list[int]:
    """``wanted`` evenly spaced indices of ``count`` slices (ends included)."""
    return sorted({int(round(v)) for v in np.linspace(0, count - 1, min(wanted, count))})


def rms(values: Sequence[float]) -> float:
    return math.sqrt(float(np.sum(np.square(values))))
