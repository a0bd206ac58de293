"""Measure, and calibrate, an offsets checkpoint's predicted uncertainties.

    python -m dstorm3d.uncertainty ckpt=models/storm_tetrapod.ckpt                   # measure only
    python -m dstorm3d.uncertainty ckpt=run.ckpt out=run_calibrated.ckpt figure=calibration.png

Settings are in ``configs/uncertainty.yaml``; the method is :mod:`dstorm3d.evaluation.uncertainty`. Prints,
per axis (x, y, z, photons), the z-score standard deviation on held-out simulated frames with the raw σ and
with the fitted factors, and the factors. ``out``: a copy of the checkpoint with the factors (the weights
unchanged), which ``infer.py`` then applies to the ``uncertainty_*`` columns of ``localizations.csv``;
``figure``: the z-score histograms against N(0, 1).

Every setting is checked before the model loads; a problem ends the run with one line ``error: ...`` on
stderr and exit code 2. Files are written atomically; existing ones are kept unless ``overwrite=true``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from dstorm3d.utils.cli import UserInputError, exit_on_bad_overrides, run_or_exit, set_threads
from dstorm3d.utils.paths import CONFIG_DIR, register_root
from dstorm3d.utils.validate import flag, integer, writable_folder


def output_file(key: str, value: Any, suffix: str, overwrite: bool) -> Path | None:
    """An optional output path (``None`` when not asked for); refused when it exists without
    ``overwrite=true`` or its folder cannot be written."""
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise UserInputError(f"{key}={value!r}: must be a file path ending in {suffix} or null")
    path = Path(value).expanduser()
    if path.suffix.lower() != suffix:
        raise UserInputError(f"{key}={value}: must end in {suffix} (e.g. {key}=calibrated{suffix})")
    if path.exists() and not overwrite:
        raise UserInputError(f"{path} exists: pass overwrite=true or choose another {key}=<file>")
    writable_folder(key, path.parent if str(path.parent) else Path("."))
    return path


def summary_lines(calibration: Any) -> list[str]:
    """The table printed at the end: z-score std per axis before/after, and the factors."""
    from dstorm3d.evaluation.uncertainty import AXIS_UNITS

    test, validation = calibration.test_before, calibration.validation
    before, after = test.summary, calibration.test_after.summary
    lines = [
        f"z-score std on {test.frames} held-out frames (seed {test.seed}, {before['x']['pairs']} matched "
        f"localizations); factors fitted on {validation.frames} other frames (seed {validation.seed}, "
        f"{validation.summary['x']['pairs']} matched)",
        f"{'axis':<8} {'raw σ':>7} {'calibrated':>10} {'factor':>8}",
    ]
    for axis in AXIS_UNITS:
        lines.append(
            f"{axis:<8} {before[axis]['std']:>7.3f} {after[axis]['std']:>10.3f} "
            f"{calibration.scale[axis]:>8.4f}"
        )
    return lines


def run(cfg: DictConfig) -> dict[str, Any]:
    """Check the settings, load the checkpoint, calibrate, write what was asked; returns the record."""
    from dstorm3d.evaluation.uncertainty import calibrate, calibrated_checkpoint, calibration_figure
    from dstorm3d.modules.checkpoints import load_module, read_checkpoint_kind
    from dstorm3d.visualization import save_figure

    if OmegaConf.is_missing(cfg, "ckpt"):
        raise UserInputError("ckpt is required: python -m dstorm3d.uncertainty ckpt=<offsets checkpoint>")
    overwrite = flag("overwrite", cfg.overwrite)
    frames = integer("frames", cfg.frames, minimum=16, example=1024)
    batch_size = integer("batch_size", cfg.batch_size, minimum=1, example=32)
    validation_seed = integer("validation_seed", cfg.validation_seed, minimum=0)
    test_seed = integer("test_seed", cfg.test_seed, minimum=0)
    if validation_seed == test_seed:
        raise UserInputError(
            f"validation_seed and test_seed are both {test_seed}: the test frames must not be the ones "
            "the factors are fitted on"
        )
    out = output_file("out", cfg.out, ".ckpt", overwrite)
    figure = output_file("figure", cfg.figure, ".png", overwrite)
    set_threads(cfg.get("threads"))
    read_checkpoint_kind(cfg.ckpt)
    module = load_module(cfg.ckpt)
    if module.hparams.head.get("kind") != "offsets":
        raise UserInputError(
            f"{cfg.ckpt} has a {module.hparams.head.get('kind')} head, which predicts no uncertainties: "
            "give an offsets-head checkpoint (model/head=offsets)"
        )
    calibration = calibrate(module, frames, batch_size, validation_seed, test_seed)
    print("\n".join(summary_lines(calibration)))
    if figure is not None:
        measurements = {"raw σ": calibration.test_before, "calibrated": calibration.test_after}
        title = f"{Path(cfg.ckpt).name}: held-out simulated frames (seed {test_seed})"
        save_figure(calibration_figure({"": measurements}, title), figure, overwrite=overwrite)
        print(f"wrote {figure}")
    if out is not None:
        calibrated_checkpoint(cfg.ckpt, out, calibration, overwrite=overwrite)
        print(f"wrote {out} (uncertainty_scale {calibration.scale})")
    return calibration.record()


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="uncertainty")
def main(cfg: DictConfig) -> None:
    """Hydra entry point: a bad setting ends with one line on stderr and exit code 2."""
    run_or_exit(run, cfg)


if __name__ == "__main__":
    register_root()
    exit_on_bad_overrides("uncertainty")
    main()
