"""Validation frames with ground truth and predictions overlaid, to W&B and as PNG files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_only

from dstorm3d.callbacks.media import log_images
from dstorm3d.visualization import overlay_rgb, save_png


class PredictionExamples(pl.Callback):
    """After validation, draw the module's kept example frames (``module.examples``)."""

    def __init__(self, every_n_epochs: int = 1, output_dir: str | None = None) -> None:
        self.every_n_epochs = max(1, int(every_n_epochs))
        self.output_dir = Path(output_dir) if output_dir else None

    @rank_zero_only
    def on_validation_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        examples = getattr(module, "examples", None)
        if trainer.sanity_checking or not examples or trainer.current_epoch % self.every_n_epochs:
            return
        pixel = examples["pixel_size_um"]
        truth = examples["target"].per_frame(labelled_only=True)
        predictions = examples["predictions"].per_frame()
        images = []
        for i, frame in enumerate(examples["frames"].numpy()):
            title = f"epoch {trainer.current_epoch}: {len(truth[i])} true, {len(predictions[i])} found"
            images.append(overlay_rgb(frame, truth[i][:, :2] / pixel, predictions[i][:, :2] / pixel, title))
        grid = np.concatenate(images, axis=1)
        if self.output_dir is not None:
            save_png(grid, self.output_dir / f"examples_epoch{trainer.current_epoch:03d}.png")
        log_images(trainer, "val/examples", [grid], step=trainer.global_step)
