"""Sending images and animations to whichever loggers can show them (W&B)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytorch_lightning as pl


def _wandb_loggers(trainer: pl.Trainer) -> list:
    from pytorch_lightning.loggers import WandbLogger

    return [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]


def log_images(
    trainer: pl.Trainer,
    key: str,
    images: list[np.ndarray],
    step: int | None = None,
    captions: list[str] | None = None,
) -> None:
    """Log RGB arrays under ``key`` to every W&B logger (no-op without one)."""
    extra = {} if captions is None else {"caption": list(captions)}  # log_image takes len() of every kwarg
    for logger in _wandb_loggers(trainer):
        logger.log_image(key=key, images=list(images), step=step, **extra)


def log_animation(trainer: pl.Trainer, key: str, gif_path: Path, step: int | None = None) -> None:
    """Log a GIF file as a W&B video (W&B copies the file; no video encoder needed)."""
    loggers = _wandb_loggers(trainer)
    if not loggers:
        return
    import wandb

    for logger in loggers:
        logger.experiment.log({key: wandb.Video(str(gif_path), format="gif"), "trainer/global_step": step})
