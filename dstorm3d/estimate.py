"""Estimate a recording's imaging conditions (density, photons, background) for training a localizer.

    python -m dstorm3d.estimate data=frames.tif optics=smlm2016_as optics.pupil=psf.npz camera=smlm2016_emccd

Settings are in ``configs/estimate.yaml``; the method is :mod:`dstorm3d.evaluation.conditions`. Writes
into ``out``: ``conditions.json``, ``simulation_overrides.yaml`` (train.py overrides, one per line) and
``localizations.csv`` (the classical fitter's localizations). A bad setting or input ends with one line
``error: ...`` and exit code 2 before any frame is read; existing outputs are kept unless
``overwrite=true``.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from omegaconf import DictConfig, OmegaConf

from dstorm3d.utils.cli import UserInputError, exit_on_bad_overrides, recording_argument, run_or_exit
from dstorm3d.utils.files import atomic_write
from dstorm3d.utils.paths import CONFIG_DIR, register_root
from dstorm3d.utils.validate import flag, integer, number, writable_folder

OUTPUT_FILES = ("conditions.json", "simulation_overrides.yaml", "localizations.csv")


def override_lines(overrides: dict[str, Any], prefix: str = "simulation") -> list[str]:
    """Nested settings as Hydra overrides ``simulation.emitters.photons={kind:gamma,...}`` (one per leaf,
    mappings of numbers/strings written inline)."""
    lines = []
    for key, value in overrides.items():
        path = f"{prefix}.{key}"
        if isinstance(value, dict) and key != "photons" and key != "background":
            lines += override_lines(value, path)
        elif isinstance(value, dict):
            inner = ",".join(f"{k}:{_plain(v)}" for k, v in value.items())
            lines.append(f"{path}={{{inner}}}")
        else:
            lines.append(f"{path}={_plain(value)}")
    return lines


def _plain(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_plain(v) for v in value) + "]"
    return str(value)


def write_localizations(path: Path, frames_index: np.ndarray, found: Any, overwrite: bool) -> int:
    """The fitter's emitters as a ThunderSTORM table (frames from 1, nm, photons, log-likelihood ratio)."""
    from dstorm3d.inference.outputs import localization_header

    valid = found.valid.cpu().numpy()
    xyz_nm = found.xyz.cpu().numpy() * 1e3
    photons = found.photons.cpu().numpy()
    score = found.score.cpu().numpy() if found.score is not None else np.zeros_like(photons)
    rows = []
    for b, m in zip(*np.nonzero(valid)):
        rows.append(
            [int(frames_index[b]) + 1, *xyz_nm[b, m].tolist(), float(photons[b, m]), float(score[b, m])]
        )

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as handle:
            csv.writer(handle, quoting=csv.QUOTE_NONNUMERIC).writerow(localization_header("photon"))
            plain = csv.writer(handle)
            for number_, row in enumerate(rows, start=1):
                plain.writerow([number_, *row])

    atomic_write(path, write, overwrite=overwrite)
    return len(rows)


def estimate(cfg: DictConfig) -> dict[str, Any]:
    """Check the settings, then fit, summarise and write; returns the content of ``conditions.json``."""
    if OmegaConf.is_missing(cfg, "recording"):
        raise UserInputError("data=<recording> is required: python -m dstorm3d.estimate data=frames.tif ...")
    frames = integer("frames", cfg.frames, minimum=1, example=64)
    max_emitters = integer("max_emitters", cfg.max_emitters, minimum=1, example=10)
    threshold = number("min_log_likelihood_ratio", cfg.min_log_likelihood_ratio, above=0.0, example=20)
    factors = {key: number(key, cfg[key], above=0.0) for key in ("density_factor",)}
    margins = {key: number(key, cfg[key], minimum=0.0) for key in ("photon_margin", "background_margin")}
    overwrite = flag("overwrite", cfg.overwrite)
    from dstorm3d.inference.preprocess import recording_camera

    camera = recording_camera(OmegaConf.to_container(cfg.camera, resolve=True))
    if camera is None:
        raise UserInputError(
            "camera=checkpoint has no meaning here: name the recording's camera (configs/camera/)"
        )
    excess = cfg.excess_noise
    if str(excess).lower() == "auto":
        excess = 2.0 if camera.kind == "emccd" else 1.0
    excess = number("excess_noise", excess, minimum=1.0, example=2)
    from dstorm3d.optics.config import psf_from_config

    psf = psf_from_config(OmegaConf.to_container(cfg.optics, resolve=True))
    out = Path(str(cfg.out)).expanduser().resolve()
    existing = [out / name for name in OUTPUT_FILES if (out / name).exists()]
    if existing and not overwrite:
        raise UserInputError(f"{existing[0]} exists: pass overwrite=true or choose another out=<folder>")
    writable_folder("out", out)

    import torch

    from dstorm3d.evaluation.conditions import estimate_conditions
    from dstorm3d.inference.recording import RecordingError, open_recording, recording_options

    try:
        recording = open_recording(str(cfg.recording), **recording_options(cfg))
    except RecordingError as exc:
        raise UserInputError(str(exc)) from None
    count = min(frames, len(recording))
    counts = np.stack([recording[i].astype(np.float64) for i in range(count)])
    photons = camera.to_photons(torch.from_numpy(counts)).numpy()
    conditions, found = estimate_conditions(
        psf, photons, excess_noise=excess, max_emitters=max_emitters, min_log_likelihood_ratio=threshold
    )
    overrides = conditions.simulation_overrides(
        factors["density_factor"], margins["photon_margin"], margins["background_margin"]
    )
    record = {
        "recording": str(cfg.recording),
        "frames": count,
        "excess_noise": excess,
        "max_emitters": max_emitters,
        "min_log_likelihood_ratio": threshold,
        "conditions": conditions.to_dict(),
        "simulation_overrides": overrides,
    }
    atomic_write(out / "conditions.json", lambda p: p.write_text(json.dumps(record, indent=2)), overwrite)
    lines = override_lines(overrides)
    atomic_write(
        out / "simulation_overrides.yaml", lambda p: p.write_text("\n".join(lines) + "\n"), overwrite
    )
    n = write_localizations(out / "localizations.csv", np.arange(count), found, overwrite)
    print(
        f"{n} emitters in {count} frames; background {conditions.background_photons[1]:.1f} photons/px, "
        f"photons {conditions.photons[1]:.0f} (median); train with: {' '.join(lines)}"
    )
    return record


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="estimate")
def main(cfg: DictConfig) -> None:
    """Hydra entry point: a bad setting or input ends with one line on stderr and exit code 2."""
    run_or_exit(estimate, cfg)


if __name__ == "__main__":
    sys.argv = recording_argument(sys.argv)
    register_root()
    exit_on_bad_overrides("estimate")
    main()
