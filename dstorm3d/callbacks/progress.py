"""Progress in the run's log file while training runs (the progress bar only reaches the terminal)."""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import pytorch_lightning as pl

log = logging.getLogger(__name__)


class ProgressLog(pl.Callback):
    """Every ``every_n_steps`` optimizer steps: the step, the training loss, steps per second and the time
    left in the epoch; after every validation: the epoch's validation scores. Written through Python's
    logging, which Hydra sends to ``<run>/<task>.log`` (rank 0 only)."""

    def __init__(self, every_n_steps: int = 100) -> None:
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be ≥ 1, got {every_n_steps}")
        self.every_n_steps = int(every_n_steps)
        self._started = 0.0
        self._epoch_started = 0.0
        self._epoch_step0 = 0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._started = time.perf_counter()

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_started = time.perf_counter()
        self._epoch_step0 = trainer.global_step

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if not trainer.is_global_zero or step == 0 or step % self.every_n_steps:
            return
        done = step - self._epoch_step0
        rate = done / max(time.perf_counter() - self._epoch_started, 1e-9)
        per_epoch = trainer.num_training_batches
        left = (per_epoch - batch_idx - 1) / rate if math.isfinite(per_epoch) and rate > 0 else math.nan
        loss = trainer.callback_metrics.get("train/loss_step")
        log.info(
            "epoch %d/%d, step %d: train loss %s, %.2f steps/s, %.1f min left in this epoch",
            trainer.current_epoch + 1,
            trainer.max_epochs,
            step,
            "n/a" if loss is None else f"{float(loss):.4f}",
            rate,
            left / 60,
        )

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        scores = ", ".join(
            f"{key} {float(value):.4g}"
            for key, value in sorted(trainer.callback_metrics.items())
            if key.startswith("val/")
        )
        elapsed = (time.perf_counter() - self._started) / 60
        log.info(
            "epoch %d/%d validated after %.1f min: %s",
            trainer.current_epoch + 1,
            trainer.max_epochs,
            elapsed,
            scores,
        )
