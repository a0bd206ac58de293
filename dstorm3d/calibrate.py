"""Calibrate a PSF model from a bead z-stack.

    python -m dstorm3d.calibrate beads=beads_AS_zstack.tif
    python -m dstorm3d.calibrate beads=stack.tif optics=storm camera=ideal z_step_nm=50 out=cal

Settings are in ``configs/calibrate.yaml`` (the microscope in its ``optics`` group, default
``configs/optics/smlm2016_as.yaml``); the model, the likelihood and the fit are described in
:mod:`dstorm3d.calibration.fit`, the statistics in :mod:`dstorm3d.calibration.report`. Writes into ``out``
(default: the Hydra run folder):

* ``psf.npz`` (``psf_file``): the calibrated PSF model (setup, pupil phase, pupil amplitude, blur) with the
  fit's statistics, Zernike coefficients, focus slice, z-step scale and bead table as metadata — the file
  that ``optics.pupil=<file>`` takes in train, infer, evaluate and show;
* ``report.md`` / ``report.json``: deviance and Pearson χ² per degree of freedom, per-slice correlation of
  data and model (with its noise ceiling), the bead table, the Zernike coefficients, the CRLB;
* ``montage.png`` (data vs model z-stack), ``residuals.png``, ``zernike.png``, ``crlb.png``.

Every setting, the optics, the camera and ``out`` are checked before the stack is read; a stack without a
usable bead, a saturated bead, a missing z step or a focus slice outside the stack is refused before the fit,
and a fit whose z-step scale or focus says the z step is wrong after it: one line ``error: ...`` on stderr,
exit code 2, nothing written. Files are written atomically; existing ones are kept unless ``overwrite=true``.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

import hydra
from omegaconf import Container, DictConfig, OmegaConf

from dstorm3d.utils.cli import UserInputError, exit_on_bad_overrides, run_or_exit, set_threads
from dstorm3d.utils.paths import CONFIG_DIR, register_root
from dstorm3d.utils.validate import writable_folder


def command_line() -> str:
    """``python -m dstorm3d.calibrate <overrides>`` as typed (from Hydra when it runs, else ``sys.argv``)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        overrides = list(HydraConfig.get().overrides.task)
    except (ValueError, AttributeError):
        overrides = sys.argv[1:]
    return " ".join(["python", "-m", "dstorm3d.calibrate", *(shlex.quote(str(o)) for o in overrides)])


def plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, Container) else value


def calibrate(cfg: DictConfig) -> dict[str, Any]:
    """Check everything (before the stack is read), calibrate, write the outputs and print a summary.
    Returns the content of report.json."""
    from dstorm3d.calibration.report import existing_outputs
    from dstorm3d.calibration.settings import SETTING_KEYS, CalibrationSettings

    if OmegaConf.is_missing(cfg, "beads"):
        raise UserInputError("beads is required: python -m dstorm3d.calibrate beads=<bead z-stack .tif>")
    config = {key: plain(cfg.get(key)) for key in SETTING_KEYS}
    settings = CalibrationSettings.from_config(config)
    set_threads(config.get("threads"))
    out = config.get("out")
    if not isinstance(out, str) or not out:
        raise UserInputError(f"out={out!r}: must be a folder path (e.g. out=calibration)")
    folder = Path(out).expanduser().resolve()
    existing = existing_outputs(folder, settings.psf_file)
    if existing and not settings.overwrite:
        raise UserInputError(f"{existing[0]} exists: pass overwrite=true or choose another out=<folder>")
    start, camera = optics_and_camera(cfg, settings.window_px)
    writable_folder("out", folder)

    from dstorm3d.calibration.run import calibrate_stack, write_outputs

    calibration = calibrate_stack(settings, start, camera, command_line())
    write_outputs(calibration, settings, folder)
    record = calibration.record
    print("\n".join(summary_lines(record, folder / settings.psf_file)))
    return record


def optics_and_camera(cfg: DictConfig, window_px: int) -> tuple[Any, Any]:
    """The starting PSF model of ``optics`` (its setup, and its mask or pupil file as the fit's start) and
    the camera of ``camera``; both refused with one line when wrong."""
    from dstorm3d.optics.config import psf_from_config
    from dstorm3d.optics.psf_model import ScalarPupilPSF
    from dstorm3d.simulation.camera import camera_from_config

    start = psf_from_config(plain(cfg.optics), window_px)
    if not isinstance(start, ScalarPupilPSF):
        raise UserInputError(f"optics: calibrate fits a scalar pupil model, got a {start.kind!r} model")
    try:
        camera = camera_from_config(plain(cfg.camera))
    except ValueError as exc:
        raise UserInputError(str(exc)) from None
    return start, camera


def summary_lines(record: dict[str, Any], psf_path: Path) -> list[str]:
    stats, model, corr = record["statistics"], record["model"], record["correlation"]
    within = (
        f"min correlation within ±{corr['z_limit_nm']:.0f} nm {corr['min_correlation_within']:.4f}"
        if "min_correlation_within" in corr
        else f"min correlation {corr['min_correlation_all']:.4f}"
    )
    return [
        f"{len(record['beads_table'])} beads × {record['slices_used']} slices: deviance/dof "
        f"{stats['deviance_per_dof']:.3f}, {within}, blur σ {model['blur_sigma_px']:.3f} px, Zernike RMS "
        f"{model['zernike_rms_rad']:.3f} rad, focus slice "
        f"{model['focus_slice']:.2f}, step scale {model['step_scale']:.4f}",
        f"wrote {psf_path} and the report beside it",
    ]


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="calibrate")
def main(cfg: DictConfig) -> None:
    """Hydra entry point: a bad setting or input ends with one line on stderr and exit code 2."""
    run_or_exit(calibrate, cfg)


if __name__ == "__main__":
    register_root()
    exit_on_bad_overrides("calibrate")
    main()
