"""Lightning prediction writer: localizations of each batch go straight to disk (bounded memory)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
from pytorch_lightning.callbacks import BasePredictionWriter

from dstorm3d.inference.outputs import PartWriter
from dstorm3d.utils.rates import rate_text

log = logging.getLogger(__name__)


def sigma_in_output_units(sigma: np.ndarray) -> np.ndarray:
    """``Emitters.sigma (..., 4)`` (x, y, z in µm, photons) → the CSV's units (x, y, z in nm, photons)."""
    return sigma * np.array([1e3, 1e3, 1e3, 1.0], dtype=sigma.dtype)


class LocalizationWriter(BasePredictionWriter):
    """Writes every predicted batch to this rank's part file; reports frames/s and localizations.

    ``module.predict_step`` returns ``{"index": (B,) frame indices, "localizations": Emitters}``. Under
    DDP each rank writes its own part; :func:`dstorm3d.inference.outputs.merge_parts` merges them in
    frame order once every rank is done.
    """

    def __init__(self, folder: str | Path, report_every_s: float = 10.0) -> None:
        super().__init__(write_interval="batch")
        self.folder = Path(folder)
        self.report_every_s = float(report_every_s)
        self.writer: PartWriter | None = None
        self.frames = 0
        self.localizations = 0
        self.intensity_known = False
        self._start = self._last_report = 0.0

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.writer = PartWriter(self.folder, trainer.global_rank)
        self._start = self._last_report = time.perf_counter()

    def write_on_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        prediction: Any,
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        assert self.writer is not None
        found = prediction["localizations"]
        indices = prediction["index"].cpu().numpy()
        xyz_nm = found.xyz.detach().float().cpu().numpy() * 1e3
        valid = found.valid.cpu().numpy()
        photons = found.photons.detach().float().cpu().numpy()
        score = found.score.detach().float().cpu().numpy()
        sigma = (
            None if found.sigma is None else sigma_in_output_units(found.sigma.detach().float().cpu().numpy())
        )
        for b, frame in enumerate(indices):
            keep = valid[b]
            known = np.isfinite(photons[b][keep])
            self.intensity_known |= bool(known.any())
            intensity = np.where(np.isfinite(photons[b][keep]), photons[b][keep], score[b][keep])
            frame_sigma = None if sigma is None else sigma[b][keep]
            self.writer.write(int(frame), xyz_nm[b][keep], intensity, score[b][keep], frame_sigma)
            self.localizations += int(keep.sum())
        self.frames += len(indices)
        now = time.perf_counter()
        if now - self._last_report >= self.report_every_s:
            self._last_report = now
            log.info(
                "rank %d: %d frames, %s, %d localizations",
                trainer.global_rank,
                self.frames,
                rate_text(self.frames, now - self._start),
                self.localizations,
            )

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.writer is not None:
            self.writer.close()

    @property
    def elapsed_s(self) -> float:
        return time.perf_counter() - self._start
