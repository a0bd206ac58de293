"""Compare localization checkpoints side by side on the paper's STORM setting and on real frames.

    .venv/bin/python studies/compare_models.py \\
        --ckpts models/storm_tetrapod.ckpt authors_storm.ckpt --labels dstorm3d authors --out logs/compare

Parts (each on the same frames for every checkpoint whose physics — setup, mask, blur — agree):

* ``storm``: fixed-seed 121×121 test sets from the STORM training distribution (reference.md §2: Gamma(3,
  3000) photons, dimmer than 6,000 rendered but not ground truth, no uniform background, the readout
  camera's baseline 20–40 and read noise 8–12 counts, the checkpoint's per-emitter blur, emitters also in
  an 8-px border) at 1–35 emitters per 13.3 × 13.3 µm² field, and 50 and 75 (extrapolation);
* ``telomere`` (on request): the same for the telomere / learned-PSF training distribution (uniform 10k–60k
  photons, super-Gaussian background 20–150 photons/px, Poisson noise) at 1–40 emitters per field and 60;
* ``fig2``: the paper's Fig. 2 conditions (30,000 photons, 150 background photons/px, Poisson noise);
* ``isolated``: one emitter per frame at a STORM photon level (``--isolated-photons``, default 10,000)
  with the STORM camera: RMSE vs z beside the CRLB (read noise counted as extra Poisson background);
* ``real``: the real frames of ``--real`` (default: the 25 mito frames), localized by ``infer.py``'s
  code path; each model's localizations re-rendered with the physical model, photons and one
  background level fitted per frame by Poisson maximum likelihood; the Poisson deviance and the
  correlation of model and frame, and the agreement of the first two models' localizations.

Writes into ``--out``: ``report.md``, ``comparison.png``, ``comparison.csv`` (every density row of every
part), ``real_frames.csv``, ``rmse_vs_z.csv``, and each sweep part's full evaluate.py outputs in
``<part>/``. Per checkpoint and part, results are cached under ``cache/`` keyed by the checkpoint's
content and the part's settings, so a rerun with one new checkpoint scores only that one.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
STORM_COUNTS = (1, 5, 10, 20, 35, 50, 75)
TELOMERE_COUNTS = (1, 5, 10, 20, 40, 60)  # 1–40 per field in the authors' learned-PSF training
FIG2_COUNTS = (1, 10, 20, 35, 50, 75)
TRAINING_RANGE = (1, 35)  # emitters per field in the STORM training distribution
STORM_CAMERA = {
    "kind": "readout",
    "baseline": [20.0, 40.0],
    "read_noise": [8.0, 12.0],
    "read_noise_correlation_px": 16.0,
}
# The Fig. 2 frames with 120 counts subtracted (infer.py's preprocessing.baseline=120): their 150 photons/px
# of Poisson background then look like the STORM camera's baseline and read noise (σ ≈ 12 counts).
FIG2_OFFSET = {
    "name": "high_snr_minus_120",
    "photons": 30000.0,
    "background": 150.0,
    "camera": {"kind": "readout", "baseline": -120.0, "read_noise": 0.0, "read_noise_correlation_px": None},
}
REAL_DEFAULT = ROOT.parent / "shared" / "data" / "experimental" / "mito_tetrapod"
MATCHING_NM = 150.0


# ---------------------------------------------------------------------------------------------- the parts
@dataclass(frozen=True)
class SweepPart:
    """One simulated comparison: evaluate.py settings (as a config mapping) and what it shows."""

    name: str
    title: str
    config: dict[str, Any]


def sweep_parts(
    frames: int, fig2_frames: int, isolated_frames: int, isolated_photons: float, seed: int
) -> list[SweepPart]:
    """The three simulated parts (see the module docstring), as evaluate.yaml-style configs."""
    common = {
        "seed": seed,
        "reference_field_px": 121,
        "frame_shape": [121, 121],
        "blur_sigma_px": "checkpoint",
        "optics": {},
        "matching_nm": MATCHING_NM,
        "z_bins": 8,
        "batch_size": 4,
        "tile": None,
        "threshold": None,
        "device": "cpu",
        "crlb_window": None,
        "baseline": False,
        "mp": {},
        "camera": {"kind": "ideal"},
    }
    storm = {
        "name": "storm",
        "photons": {"kind": "gamma", "shape": 3.0, "scale": 3000.0},
        "background": {"kind": "none"},
        "camera": STORM_CAMERA,
    }
    telomere = {
        "name": "telomere",
        "photons": {"kind": "uniform", "low": 10000.0, "high": 60000.0},
        "background": {"kind": "super_gaussian", "level_range": [20.0, 150.0]},
        "camera": {"kind": "ideal"},
    }
    return [
        SweepPart(
            "telomere",
            "telomere (learned-PSF) training distribution (121×121 px)",
            {
                **common,
                "counts": list(TELOMERE_COUNTS),
                "frames": frames,
                "conditions": [telomere],
                "emitters": {"label_min_photons": 0.0, "margin_px": 8},
            },
        ),
        SweepPart(
            "storm",
            "STORM training distribution (121×121 px)",
            {
                **common,
                "counts": list(STORM_COUNTS),
                "frames": frames,
                "conditions": [storm],
                "emitters": {"label_min_photons": 6000.0, "margin_px": 8},
            },
        ),
        SweepPart(
            "fig2",
            "the paper's Fig. 2 conditions (30,000 photons, 150 background)",
            {
                **common,
                "counts": list(FIG2_COUNTS),
                "frames": fig2_frames,
                "conditions": [{"name": "high_snr", "photons": 30000.0, "background": 150.0}, FIG2_OFFSET],
                "emitters": {},
            },
        ),
        SweepPart(
            "isolated",
            f"isolated emitters, {isolated_photons:,.0f} photons, STORM camera",
            {
                **common,
                "counts": [1],
                "frames": isolated_frames,
                "conditions": [
                    {
                        "name": "isolated",
                        "photons": float(isolated_photons),
                        "background": {"kind": "none"},
                        "camera": STORM_CAMERA,
                    }
                ],
                "emitters": {"label_min_photons": 0.0, "margin_px": 0},
            },
        ),
    ]


# ---------------------------------------------------------------------------------------------- caching
def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def cache_path(out: Path, part: str, label: str, key: dict[str, Any]) -> Path:
    token = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in label)
    return out / "cache" / f"{part}_{safe}_{token}.json"


def write_json(path: Path, data: Any) -> None:
    from dstorm3d.evaluation.report import json_safe
    from dstorm3d.utils.files import atomic_write

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda p: p.write_text(json.dumps(json_safe(data), indent=1)), overwrite=True)


def restore_nan(value: Any) -> Any:
    """JSON's ``null`` back to NaN in cached results (``json_safe`` wrote NaN as ``null``)."""
    if isinstance(value, dict):
        return {k: restore_nan(v) for k, v in value.items()}
    if isinstance(value, list):
        return [restore_nan(v) for v in value]
    return math.nan if value is None else value


# ---------------------------------------------------------------------------------------------- sweeps
def run_part(part: SweepPart, models: list[dict[str, Any]], out: Path) -> tuple[Any, Any]:
    """Score every model on one part (cached per model); write the part's evaluate.py outputs into
    ``out/<part>``; returns the settings and the merged results."""
    from omegaconf import OmegaConf

    from dstorm3d.evaluation import report
    from dstorm3d.evaluation.sweep import (
        Evaluated,
        SweepResults,
        checkpoint_physics,
        run_sweep,
        settings_from_config,
    )

    settings = settings_from_config(OmegaConf.create(part.config))
    merged = SweepResults()
    evaluated = []
    for model in models:
        physics = checkpoint_physics(model["module"], settings)
        item = Evaluated(model["label"], model["path"], model["module"], physics)
        evaluated.append(item)
        key = {"checkpoint": model["digest"], "settings": part.config, "physics": physics.key}
        path = cache_path(out, part.name, model["label"], key)
        if path.exists():
            cached = restore_nan(json.loads(path.read_text()))
            print(f"  {part.name} / {model['label']}: cached ({path.name})", flush=True)
        else:
            started = time.perf_counter()
            results = run_sweep([item], settings)
            cached = asdict(results)
            write_json(path, cached)
            print(f"  {part.name} / {model['label']}: {time.perf_counter() - started:.0f} s", flush=True)
        for name in ("rows", "depth_rows", "crlb", "skipped", "timing"):
            getattr(merged, name).extend(cached[name])
    # rows of every model in checkpoint order (run_sweep sorts within one model)
    report.write_outputs(
        out / part.name, evaluated, settings, merged, command=report.command_line(), overwrite=True
    )
    return settings, merged


# ---------------------------------------------------------------------------------------------- common set
COMMON_COUNTS = (1, 5, 10, 20, 35)


def _sq_errors(match: Any) -> tuple[np.ndarray, np.ndarray]:
    return match.dx_nm**2 + match.dy_nm**2, match.dz_nm**2


def _rms(parts: list[np.ndarray], column: int) -> float:
    """Root mean of column ``column`` of stacked ``(n, 2)`` squared errors (NaN when empty)."""
    joined = np.concatenate(parts)
    return float(np.sqrt(joined[:, column].mean())) if len(joined) else math.nan


def _median(parts: list[np.ndarray]) -> float:
    joined = np.concatenate(parts)
    return float(np.median(joined)) if joined.size else math.nan


def common_set(models: list[dict[str, Any]], out: Path) -> list[dict[str, Any]]:
    """On the STORM sets (training range), the RMSE of the first two models over the ground-truth
    emitters **both** found, and over those only one of them found (with those emitters' median photons):
    separates precision from recall. Cached under ``cache/``."""
    from omegaconf import OmegaConf

    from dstorm3d.evaluation.sweep import (
        build_test_set,
        checkpoint_physics,
        localize_with_network,
        settings_from_config,
    )
    from dstorm3d.metrics.matching import match_frame

    part = next(p for p in PARTS if p.name == "storm")
    settings = settings_from_config(OmegaConf.create(part.config))
    first, second = models[0], models[1]
    physics = checkpoint_physics(first["module"], settings)
    if checkpoint_physics(second["module"], settings).key != physics.key:
        raise SystemExit("error: the common-set part needs two checkpoints with the same physics")
    key = {
        "checkpoints": [first["digest"], second["digest"]],
        "settings": part.config,
        "counts": COMMON_COUNTS,
    }
    path = cache_path(out, "common", f"{first['label']}-{second['label']}", key)
    if path.exists():
        print(f"  common: cached ({path.name})", flush=True)
        return restore_nan(json.loads(path.read_text()))
    rows = []
    for count in COMMON_COUNTS:
        test_set = build_test_set(physics, settings.conditions[0], count, settings)
        preds = [
            localize_with_network(m["module"], test_set.frames, settings.batch_size, torch.device("cpu"))
            for m in (first, second)
        ]
        # per group: (n, 2) squared lateral and axial errors (nm²) and the truth's photons
        groups = ("both_a", "both_b", "only_a", "only_b")
        squares: dict[str, list[np.ndarray]] = {g: [] for g in groups}
        photons: dict[str, list[np.ndarray]] = {g: [] for g in ("both", "only_a", "only_b")}
        truth = test_set.truth
        for frame in range(truth.batch_size):
            valid = truth.valid[frame].numpy()
            labelled = truth.labelled[frame].numpy()
            gt = truth.xyz[frame].numpy()[labelled]
            gt_photons = truth.photons[frame].numpy()[labelled]
            dim = truth.xyz[frame].numpy()[valid & ~labelled]
            errors = []  # per model: {ground-truth index: (lateral², axial²)}
            for pred in preds:
                found = pred.xyz[frame].numpy()[pred.valid[frame].numpy()]
                match = match_frame(found, gt, MATCHING_NM, unlabelled_xyz_um=dim)
                lat, ax = _sq_errors(match)
                errors.append(dict(zip(match.gt_idx.tolist(), zip(lat, ax))))
            a, b = errors
            both, only_a, only_b = sorted(set(a) & set(b)), sorted(set(a) - set(b)), sorted(set(b) - set(a))
            for group, source, keys in (
                ("both_a", a, both),
                ("both_b", b, both),
                ("only_a", a, only_a),
                ("only_b", b, only_b),
            ):
                squares[group].append(np.array([source[g] for g in keys], dtype=float).reshape(-1, 2))
            for group, keys in (("both", both), ("only_a", only_a), ("only_b", only_b)):
                photons[group].append(gt_photons[keys])

        rows.append(
            {
                "count_per_field": count,
                **{g: int(sum(len(v) for v in photons[g])) for g in ("both", "only_a", "only_b")},
                **{
                    f"{g}_{axis}_nm": _rms(squares[g], k)
                    for g in groups
                    for k, axis in enumerate(("lat", "ax"))
                },
                **{f"photons_{g}": _median(photons[g]) for g in ("both", "only_a", "only_b")},
            }
        )
        print(f"  common / {count} per field: {rows[-1]['both']} found by both", flush=True)
    write_json(path, rows)
    return rows


def common_section(labels: list[str], rows: list[dict[str, Any]]) -> list[str]:
    a, b = labels[0], labels[1]
    lines = [
        f"## Precision on the same emitters (STORM sets, {a} vs {b})",
        "",
        "RMSE over the ground-truth emitters both models found, and over those only one found (their "
        "median photons beside): whether an RMSE gap comes from precision or from the harder emitters "
        "that only one model finds.",
        "",
        f"| emitters per field | found by both | {a} RMSE lat / ax on them (nm) | {b} RMSE lat / ax on them "
        f"(nm) | only {a}: n, RMSE lat / ax, median photons | only {b}: n, RMSE lat / ax, median photons | "
        "median photons, both |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['count_per_field']} | {r['both']} | "
            f"{fmt(r['both_a_lat_nm'])} / {fmt(r['both_a_ax_nm'])} | "
            f"{fmt(r['both_b_lat_nm'])} / {fmt(r['both_b_ax_nm'])} | {r['only_a']}, "
            f"{fmt(r['only_a_lat_nm'])} / {fmt(r['only_a_ax_nm'])}, {fmt(r['photons_only_a'], 0)} | "
            f"{r['only_b']}, {fmt(r['only_b_lat_nm'])} / {fmt(r['only_b_ax_nm'])}, "
            f"{fmt(r['photons_only_b'], 0)} | {fmt(r['photons_both'], 0)} |"
        )
    return [*lines, ""]


# ---------------------------------------------------------------------------------------------- real frames
def poisson_fit(design: np.ndarray, data: np.ndarray, iterations: int = 200) -> np.ndarray:
    """Non-negative weights maximising the Poisson likelihood of ``data`` (P,) under ``design @ w``
    (design (P, K), non-negative): least squares (NNLS) as the start, then multiplicative EM updates
    (each keeps w ≥ 0 and never lowers the likelihood)."""
    from scipy.optimize import nnls

    weights, _ = nnls(design, data, maxiter=20 * design.shape[1])
    weights = np.maximum(weights, 1e-3 * max(float(weights.max()), 1.0))
    column_sums = design.sum(axis=0)
    for _ in range(iterations):
        mu = np.maximum(design @ weights, 1e-9)
        weights *= (design.T @ (data / mu)) / column_sums
    return weights


def poisson_deviance(data: np.ndarray, mu: np.ndarray) -> float:
    """2 Σ [d log(d/μ) − (d − μ)] (d log d = 0 at d = 0)."""
    mu = np.maximum(mu, 1e-9)
    ratio = np.where(data > 0, data / mu, 1.0)
    return float(2.0 * np.sum(np.where(data > 0, data * np.log(ratio), 0.0) - (data - mu)))


def explain_frame(
    pupil: Any, frame: np.ndarray, xyz_um: np.ndarray, blur_sigma_px: float | None
) -> dict[str, Any]:
    """Re-render one frame from its localizations (unit-photon PSFs + a constant background, fitted by
    Poisson maximum likelihood): deviance, deviance per pixel, Pearson correlation, fitted background."""
    from dstorm3d.optics.render import render_frames

    columns = []
    window = min(pupil.setup.pupil_grid, 96)
    with torch.no_grad():
        for i in range(xyz_um.shape[0]):
            psf = render_frames(
                pupil,
                torch.as_tensor(xyz_um[i : i + 1], dtype=torch.float32),
                torch.ones(1),
                torch.zeros(1, dtype=torch.long),
                1,
                frame.shape,
                window=window,
                blur_sigma_px=blur_sigma_px,
            )
            columns.append(psf[0].double().numpy().ravel())
    design = np.stack([*columns, np.ones(frame.size)], axis=1)
    data = frame.astype(np.float64).ravel()
    weights = poisson_fit(design, data)
    mu = design @ weights
    deviance = poisson_deviance(data, mu)
    return {
        "localizations": int(xyz_um.shape[0]),
        "deviance": deviance,
        "deviance_per_px": deviance / data.size,
        "aic": deviance + 2 * 4 * xyz_um.shape[0],  # x, y, z, photons per localization
        "correlation": float(np.corrcoef(data, mu)[0, 1]),
        "background": float(weights[-1]),
        "median_photons": float(np.median(weights[:-1])) if len(weights) > 1 else float("nan"),
    }


def localize_real(model: dict[str, Any], real: Path, out: Path) -> Path:
    """``infer.py``'s code path on the real frames, into ``out/real/<label>`` (reused when it holds a
    finished run of this checkpoint on this data); returns the localizations file."""
    from omegaconf import OmegaConf

    from dstorm3d.inference.run import infer

    folder = out / "real" / model["label"]
    summary = folder / "summary.json"
    if summary.exists():
        done = json.loads(summary.read_text())
        if (
            Path(done["checkpoint"]).resolve() == Path(model["path"]).resolve()
            and Path(done["data"]).resolve() == real.resolve()
        ):
            print(f"  real / {model['label']}: reused {folder}", flush=True)
            return folder / "localizations.csv"
    config = OmegaConf.load(ROOT / "configs" / "infer.yaml")
    config.pop("defaults", None)
    config.merge_with(
        {
            "ckpt": model["path"],
            "recording": str(real),
            "out": str(folder),
            "overwrite": True,
            "overlay_frames": 0,
            "num_workers": 0,
            "trainer": {"accelerator": "cpu"},
        }
    )
    started = time.perf_counter()
    infer(config)
    print(f"  real / {model['label']}: {time.perf_counter() - started:.0f} s", flush=True)
    return folder / "localizations.csv"


def compare_real(models: list[dict[str, Any]], real: Path, out: Path) -> list[dict[str, Any]]:
    """One row per model and frame: how well its localizations explain the frame; and the agreement of
    the first two models (matched within 150 nm in 3D, Hungarian)."""
    from dstorm3d.inference.outputs import read_localizations
    from dstorm3d.inference.preprocess import Preprocessing
    from dstorm3d.inference.recording import open_recording
    from dstorm3d.metrics.matching import match_frame
    from dstorm3d.optics.psf_model import total_blur_px

    recording = open_recording(str(real))
    preprocessing = Preprocessing()
    tables = [read_localizations(localize_real(model, real, out)) for model in models]
    rows = []
    for index in range(len(recording)):
        frame = preprocessing(recording[index].astype(np.float32)).astype(np.float64)
        xyz = []
        for model, table in zip(models, tables):
            here = table["frame"] == index + 1
            xyz_um = np.stack([table["x"][here], table["y"][here], table["z"][here]], axis=1) / 1e3
            xyz.append(xyz_um)
            blur = model["module"].hparams.simulation.get("blur_sigma_px")
            blur = None if blur is None else float(np.mean(blur))
            blur = total_blur_px(model["module"].psf.blur_sigma_px, blur)  # with the PSF model's own
            pupil = model["module"].simulator.pupil.cpu()
            rows.append(
                {"frame": index + 1, "label": model["label"], **explain_frame(pupil, frame, xyz_um, blur)}
            )
        if len(models) >= 2:
            match = match_frame(xyz[0], xyz[1], threshold_nm=MATCHING_NM)
            lateral = np.hypot(match.dx_nm, match.dy_nm)
            rows.append(
                {
                    "frame": index + 1,
                    "label": f"agreement {models[0]['label']} vs {models[1]['label']}",
                    "matched": match.tp,
                    f"only_{models[0]['label']}": match.fp,
                    f"only_{models[1]['label']}": match.fn,
                    "jaccard": match.jaccard,
                    "rmse_lat_nm": float(np.sqrt(np.mean(lateral**2))) if match.tp else float("nan"),
                    "rmse_ax_nm": float(np.sqrt(np.mean(match.dz_nm**2))) if match.tp else float("nan"),
                }
            )
    return rows


# ---------------------------------------------------------------------------------------------- the report
def depth_ratios(depth_rows: list[dict[str, Any]], label: str) -> dict[str, Any]:
    rows = [r for r in depth_rows if r["label"] == label and r["method"] == "network"]
    lat = np.array([r["rmse_lat_nm"] / r["crlb_lat_nm"] for r in rows], dtype=float)
    ax = np.array([r["rmse_ax_nm"] / r["crlb_ax_nm"] for r in rows], dtype=float)

    def median(values: np.ndarray) -> float:
        return float(np.median(values[np.isfinite(values)])) if np.isfinite(values).any() else math.nan

    return {"rows": rows, "lat": lat, "ax": ax, "median_lat": median(lat), "median_ax": median(ax)}


def fmt(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return f"{value:.{digits}f}"


def density_table(
    rows: list[dict[str, Any]], labels: list[str], counts: tuple[int, ...], condition: str
) -> list[str]:
    rows = [r for r in rows if r["condition"] == condition]
    lines = [
        "| emitters per field | " + " | ".join(str(c) for c in counts) + " |",
        "|---|" + "---|" * len(counts),
    ]
    for score, name, digits in (
        ("jaccard", "Jaccard", 3),
        ("rmse_lat_nm", "RMSE lateral (nm)", 1),
        ("rmse_ax_nm", "RMSE axial (nm)", 1),
        ("efficiency_3d", "efficiency 3D (%)", 1),
    ):
        for label in labels:
            cells = []
            for count in counts:
                row = next((r for r in rows if r["label"] == label and r["count_per_field"] == count), None)
                cells.append(
                    "—" if row is None else f"{fmt(row[score], digits)} ± {fmt(row[score + '_std'], digits)}"
                )
            lines.append(f"| {name}, {label} | " + " | ".join(cells) + " |")
    return lines


def verdicts(storm_rows: list[dict[str, Any]], labels: list[str]) -> list[str]:
    """The first model against the second on the training range: Jaccard ≥ and RMSE ≤ at every density."""
    if len(labels) < 2:
        return []
    mine, theirs = labels[0], labels[1]
    lines = []
    for count in STORM_COUNTS:
        if not TRAINING_RANGE[0] <= count <= TRAINING_RANGE[1]:
            continue
        a = next(r for r in storm_rows if r["label"] == mine and r["count_per_field"] == count)
        b = next(r for r in storm_rows if r["label"] == theirs and r["count_per_field"] == count)
        checks = [
            ("Jaccard", a["jaccard"] >= b["jaccard"], a["jaccard"], b["jaccard"]),
            ("RMSE lateral", a["rmse_lat_nm"] <= b["rmse_lat_nm"], a["rmse_lat_nm"], b["rmse_lat_nm"]),
            ("RMSE axial", a["rmse_ax_nm"] <= b["rmse_ax_nm"], a["rmse_ax_nm"], b["rmse_ax_nm"]),
        ]
        text = "; ".join(f"{name} {va:.3g} vs {vb:.3g} {'✓' if ok else '✗'}" for name, ok, va, vb in checks)
        lines.append(f"- {count} per field: {text}")
    return lines


def write_report(
    out: Path,
    labels: list[str],
    parts: dict[str, Any],
    real_rows: list[dict[str, Any]],
    models: list[dict[str, Any]],
    command: str,
    common_rows: list[dict[str, Any]] | None = None,
) -> None:
    from dstorm3d.evaluation.report import _write_csv
    from dstorm3d.evaluation.sweep import ROW_COLUMNS, Z_COLUMNS
    from dstorm3d.utils.files import atomic_write

    all_rows = [{**row, "part": name} for name, (_, results) in parts.items() for row in results.rows]
    atomic_write(out / "comparison.csv", _write_csv(all_rows, ("part", *ROW_COLUMNS)), overwrite=True)
    depth = [{**row, "part": name} for name, (_, results) in parts.items() for row in results.depth_rows]
    atomic_write(out / "rmse_vs_z.csv", _write_csv(depth, ("part", *Z_COLUMNS)), overwrite=True)
    if real_rows:
        columns = list(dict.fromkeys(key for row in real_rows for key in row))
        atomic_write(out / "real_frames.csv", _write_csv(real_rows, columns), overwrite=True)
    plot(out / "comparison.png", labels, parts, real_rows)

    lines = [f"# Checkpoints compared: {', '.join(labels)}", "", "```", command, "```", ""]
    for model in models:
        hp = model["module"].hparams
        lines.append(
            f"- **{model['label']}**: `{model['path']}` (sha256 {model['digest']}…), "
            f"{hp.head['kind']} head, {hp.network.get('trunk', 'paper')} trunk, "
            f"{sum(p.numel() for p in model['module'].net.parameters()):,} parameters"
        )
    lines += [
        "",
        "Every score pooled over the frames of a point, ± the standard deviation over frames; 150 nm "
        "matching (3D). Efficiency as the SMLM Challenge 2016 (reference.md §8).",
        "",
    ]
    for name, (settings, results) in parts.items():
        counts = tuple(settings.counts)
        lines += [
            f"## {next(p.title for p in PARTS if p.name == name)}",
            "",
            f"{settings.frames} frames per point, seed {settings.seed}; details in `{name}/report.md`.",
            "",
        ]
        if name != "isolated":
            for condition in settings.conditions:
                if len(settings.conditions) > 1:
                    lines += [f"Condition `{condition.name}`:", ""]
                lines += density_table(results.rows, labels, counts, condition.name) + [""]
        if name == "storm":
            lines += (
                [f"{labels[0]} against {labels[1]} within the training range (1–35 per field):", ""]
                + verdicts(results.rows, labels)
                + [""]
                if len(labels) >= 2
                else []
            )
        if name == "isolated":
            lines += [
                "| z (µm) | CRLB lat / ax (nm) | "
                + " | ".join(f"{lb} RMSE lat / ax (nm) | {lb} RMSE/CRLB lat / ax" for lb in labels)
                + " |",
                "|---|---|" + "---|---|" * len(labels),
            ]
            ratios = {label: depth_ratios(results.depth_rows, label) for label in labels}
            for k, row in enumerate(ratios[labels[0]]["rows"]):
                cells = [f"{row['z_um']:.2f}", f"{fmt(row['crlb_lat_nm'])} / {fmt(row['crlb_ax_nm'])}"]
                for label in labels:
                    r = ratios[label]["rows"][k]
                    cells += [
                        f"{fmt(r['rmse_lat_nm'])} / {fmt(r['rmse_ax_nm'])}",
                        f"{fmt(ratios[label]['lat'][k], 2)} / {fmt(ratios[label]['ax'][k], 2)}",
                    ]
                lines.append("| " + " | ".join(cells) + " |")
            lines += (
                [""]
                + [
                    f"- {label}: RMSE / CRLB, median over z: {fmt(r['median_lat'], 2)} lateral, "
                    f"{fmt(r['median_ax'], 2)} axial"
                    for label, r in ratios.items()
                ]
                + [""]
            )
    if common_rows:
        lines += common_section(labels, common_rows)
        columns = list(common_rows[0])
        atomic_write(out / "common_set.csv", _write_csv(common_rows, columns), overwrite=True)
    if real_rows:
        lines += real_section(labels, real_rows)
    lines += ["![comparison](comparison.png)", ""]
    atomic_write(out / "report.md", lambda p: p.write_text("\n".join(lines)), overwrite=True)


def real_section(labels: list[str], rows: list[dict[str, Any]]) -> list[str]:
    frames = sorted({r["frame"] for r in rows})
    by = {(r["frame"], r["label"]): r for r in rows}
    lines = [
        "## Real frames: how well the localizations explain them",
        "",
        "Each model's localizations re-rendered with the physical model (the checkpoint's pupil and blur), "
        "photons per localization and one background level fitted by Poisson maximum likelihood. Lower "
        "deviance = better explained; more localizations can only lower it, so the counts and an AIC "
        "(deviance + 8 per localization) stand beside it. No ground truth exists for these frames.",
        "",
        "| frame | "
        + " | ".join(f"{lb}: locs / deviance / corr" for lb in labels[:2])
        + (" | agreement: matched / only each / RMSE lat, ax (nm)" if len(labels) >= 2 else "")
        + " |",
        "|---|" + "---|" * (min(len(labels), 2) + (1 if len(labels) >= 2 else 0)),
    ]
    for frame in frames:
        cells = [str(frame)]
        for label in labels[:2]:
            r = by[(frame, label)]
            cells.append(f"{r['localizations']} / {r['deviance']:,.0f} / {r['correlation']:.4f}")
        if len(labels) >= 2:
            a = by[(frame, f"agreement {labels[0]} vs {labels[1]}")]
            cells.append(
                f"{a['matched']} / {a[f'only_{labels[0]}']}, {a[f'only_{labels[1]}']} / "
                f"{fmt(a['rmse_lat_nm'])}, {fmt(a['rmse_ax_nm'])}"
            )
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if len(labels) >= 2:
        a, b = labels[0], labels[1]
        better = sum(by[(f, a)]["deviance"] <= by[(f, b)]["deviance"] for f in frames)
        better_aic = sum(by[(f, a)]["aic"] <= by[(f, b)]["aic"] for f in frames)
        corr = sum(by[(f, a)]["correlation"] >= by[(f, b)]["correlation"] for f in frames)
        total = {lb: sum(by[(f, lb)]["localizations"] for f in frames) for lb in (a, b)}
        agree = [by[(f, f"agreement {a} vs {b}")] for f in frames]
        matched = sum(r["matched"] for r in agree)
        lines += [
            f"- {a} explains the frame at least as well as {b} (deviance) on **{better} of {len(frames)}** "
            f"frames; by AIC on {better_aic}; correlation ≥ on {corr}.",
            f"- localizations: {a} {total[a]}, {b} {total[b]}; {matched} matched between them "
            f"({matched / max(total[a], 1):.0%} of {a}'s, {matched / max(total[b], 1):.0%} of {b}'s).",
            "",
        ]
    return lines


def plot(path: Path, labels: list[str], parts: dict[str, Any], real_rows: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = dict(zip(labels, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    fig, axes = plt.subplots(2, 3, figsize=(15, 8.5))
    density, setting = (
        ("telomere", "telomere distribution") if "telomere" in parts else ("storm", "STORM distribution")
    )
    panels = [
        (density, "jaccard", "Jaccard", setting),
        (density, "rmse_lat_nm", "lateral RMSE (nm)", setting),
        (density, "rmse_ax_nm", "axial RMSE (nm)", setting),
        ("fig2", "jaccard", "Jaccard", "Fig. 2 (30k photons, 150 bg)"),
    ]
    for ax, (part, score, ylabel, title) in zip(axes.flat, panels):
        if part not in parts:
            ax.set_visible(False)
            continue
        rows = parts[part][1].rows
        conditions = list(dict.fromkeys(r["condition"] for r in rows))
        for label in labels:
            for condition, style in zip(conditions, ("-", "--", ":")):
                mine = sorted(
                    (r for r in rows if r["label"] == label and r["condition"] == condition),
                    key=lambda r: r["count_per_field"],
                )
                name = label if len(conditions) == 1 else f"{label}, {condition}"
                ax.errorbar(
                    [r["count_per_field"] for r in mine],
                    [r[score] for r in mine],
                    yerr=[r[score + "_std"] for r in mine],
                    marker="o",
                    capsize=3,
                    label=name,
                    color=colours[label],
                    ls=style,
                )
        if part == "storm":
            ax.axvspan(TRAINING_RANGE[1], max(STORM_COUNTS), color="0.92", zorder=0, label="beyond training")
        ax.set(xlabel="emitters per 13.3 × 13.3 µm² field", ylabel=ylabel, title=title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax = axes.flat[4]
    if "isolated" in parts:
        depth = parts["isolated"][1].depth_rows
        for label in labels:
            r = depth_ratios(depth, label)
            z = [row["z_um"] for row in r["rows"]]
            ax.plot(z, r["lat"], "o-", color=colours[label], label=f"{label} lateral")
            ax.plot(z, r["ax"], "s--", color=colours[label], label=f"{label} axial")
        ax.axhline(1.0, color="k", lw=0.8)
        ax.axhline(1.5, color="k", lw=0.8, ls=":", label="1.5 × CRLB")
        ax.set(
            xlabel="z above the coverslip (µm)", ylabel="RMSE / CRLB", title="isolated emitters", yscale="log"
        )
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    else:
        ax.set_visible(False)
    ax = axes.flat[5]
    if real_rows and len(labels) >= 2:
        frames = sorted({r["frame"] for r in real_rows if r["label"] == labels[0]})
        by = {(r["frame"], r["label"]): r for r in real_rows}
        diff = [by[(f, labels[1])]["deviance"] - by[(f, labels[0])]["deviance"] for f in frames]
        ax.bar(frames, diff, color=[colours[labels[0]] if d >= 0 else colours[labels[1]] for d in diff])
        ax.axhline(0, color="k", lw=0.8)
        ax.set(
            xlabel="real frame",
            ylabel=f"deviance({labels[1]}) − deviance({labels[0]})",
            title=f"real frames: > 0 where {labels[0]} explains better",
        )
        ax.grid(alpha=0.3)
    else:
        ax.set_visible(False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


PARTS: list[SweepPart] = []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--ckpts", nargs="+", required=True, help="checkpoints (the first is compared with the second)"
    )
    parser.add_argument("--labels", nargs="+", help="names in tables and legends (default: file stems)")
    parser.add_argument(
        "--out", required=True, help="output folder (reports are replaced, the cache is kept)"
    )
    parser.add_argument("--frames", type=int, default=20, help="frames per density point (STORM sets)")
    parser.add_argument("--fig2-frames", type=int, default=10, help="frames per density point (Fig. 2 sets)")
    parser.add_argument(
        "--isolated-frames", type=int, default=120, help="frames of one emitter for RMSE vs z"
    )
    parser.add_argument("--isolated-photons", type=float, default=10000.0)
    parser.add_argument("--seed", type=int, default=2020)
    parser.add_argument(
        "--parts",
        nargs="+",
        default=["storm", "common", "fig2", "isolated", "real"],
        choices=["storm", "common", "fig2", "isolated", "real", "telomere"],
    )
    parser.add_argument("--real", default=str(REAL_DEFAULT), help="a TIFF or folder of real frames")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args(argv)

    from dstorm3d.modules.checkpoints import load_module, read_checkpoint_kind

    labels = args.labels or [Path(p).stem for p in args.ckpts]
    if len(labels) != len(args.ckpts) or len(set(labels)) != len(labels):
        print("error: give one distinct label per checkpoint (--labels)", file=sys.stderr)
        return 2
    for value, name in (
        (args.frames, "--frames"),
        (args.fig2_frames, "--fig2-frames"),
        (args.isolated_frames, "--isolated-frames"),
    ):
        if value < 2:
            print(f"error: {name} must be ≥ 2 (standard deviations need two frames)", file=sys.stderr)
            return 2
    real = Path(args.real)
    if "real" in args.parts and not real.exists():
        print(
            f"error: real frames not found: {real} (pass --real <tif or folder>, or leave out the real part)",
            file=sys.stderr,
        )
        return 2
    for path in args.ckpts:
        try:
            read_checkpoint_kind(path)
        except Exception as exc:  # the loader's one-line message
            print(f"error: {exc}", file=sys.stderr)
            return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    models = [
        {
            "label": label,
            "path": str(path),
            "digest": file_digest(Path(path)),
            "module": load_module(path).eval(),
        }
        for path, label in zip(args.ckpts, labels)
    ]
    PARTS[:] = sweep_parts(
        args.frames, args.fig2_frames, args.isolated_frames, args.isolated_photons, args.seed
    )
    parts = {}
    for part in PARTS:
        if part.name in args.parts:
            print(f"{part.name}: {part.title}", flush=True)
            parts[part.name] = run_part(part, models, out)
    common_rows = []
    if "common" in args.parts and len(models) >= 2:
        print("common: the same emitters, both models", flush=True)
        common_rows = common_set(models, out)
    real_rows = compare_real(models, real, out) if "real" in args.parts else []
    command = " ".join(["python", "studies/compare_models.py", *(argv if argv is not None else sys.argv[1:])])
    write_report(out, labels, parts, real_rows, models, command, common_rows)
    print(f"report: {out / 'report.md'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
