"""``evaluate(cfg)``: the body of ``evaluate.py`` — check inputs and outputs, run the sweep
(:mod:`dstorm3d.evaluation.sweep`), write the report (:mod:`dstorm3d.evaluation.report`). Kept apart from
both so that the report depends on the sweep and never the other way round."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from dstorm3d.evaluation import report
from dstorm3d.evaluation.sweep import (
    Evaluated,
    _optional_int,
    checkpoint_paths,
    checkpoint_physics,
    run_sweep,
    settings_from_config,
)
from dstorm3d.modules.checkpoints import load_module, read_checkpoint_kind
from dstorm3d.optics.setup import SetupError
from dstorm3d.utils.cli import UserInputError, set_threads

log = logging.getLogger(__name__)


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """The body of ``evaluate.py``: check inputs and outputs, run the sweep, write the report; returns the
    content of ``results.json``."""
    out = Path(str(cfg.out))
    overwrite = bool(cfg.get("overwrite", False))
    existing = [out / name for name in report.OUTPUT_FILES if (out / name).exists()]
    if existing and not overwrite:
        raise UserInputError(f"{existing[0]} exists: pass overwrite=true or choose another out=<folder>")
    paths, labels = checkpoint_paths(cfg)
    settings = settings_from_config(cfg)
    for path in paths:
        read_checkpoint_kind(path)  # one line for a missing or foreign file, before any work
    set_threads(cfg.get("threads"))
    checkpoints = []
    for path, label in zip(paths, labels):
        module = load_module(path).to(settings.device)
        try:
            physics = checkpoint_physics(module, settings)
        except SetupError as exc:
            raise UserInputError(f"{path}: {exc}") from None
        checkpoints.append(Evaluated(label, path, module, physics))
        log.info(
            "%s: %s (%s head), test frames %s, test set %s",
            label,
            path,
            module.hparams.head["kind"],
            physics.frame_shape,
            physics.key,
        )
    started = time.perf_counter()
    results = run_sweep(checkpoints, settings)
    summary = report.write_outputs(
        out,
        checkpoints,
        settings,
        results,
        command=report.command_line(),
        overwrite=overwrite,
        depth_count=_optional_int(cfg, "z_plot_count", minimum=0),
    )
    log.info(
        "evaluated %d checkpoint(s) in %.1f s; results in %s",
        len(checkpoints),
        time.perf_counter() - started,
        out,
    )
    return summary
