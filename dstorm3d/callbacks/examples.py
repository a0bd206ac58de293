"""Validation frames with ground truth and predictions overlaid, to W&B and as PNG files."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_only

from dstorm3d.callbacks.media import log_images
from dstorm3d.visualization import examples_figure, figure_rgb, save_png


class PredictionExamples(pl.Callback):
    """After validation, draw the module's kept example frames (``module.examples``): one figure with the
    frames side by side (camera counts), ground truth (green circles) and predictions (red ×), a legend, a
    colour bar and scale bars in µm."""

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
        frames = examples["frames"].numpy()
        titles = [
            f"epoch {trainer.current_epoch}: {len(truth[i])} true, {len(predictions[i])} found"
            for i in range(len(frames))
        ]
        figure = examples_figure(
            frames,
            [t[:, :2] / pixel for t in truth[: len(frames)]],
            [p[:, :2] / pixel for p in predictions[: len(frames)]],
            pixel,
            titles,
        )
        grid = figure_rgb(figure)
        if self.output_dir is not None:
            save_png(grid, self.output_dir / f"examples_epoch{trainer.current_epoch:03d}.png")
        log_images(trainer, "val/examples", [grid], step=trainer.global_step)
