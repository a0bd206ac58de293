"""Export the learned phase mask at the end of PSF design, and check it is identical on every rank."""

from __future__ import annotations

import json
from pathlib import Path

import pytorch_lightning as pl

from dstorm3d.optics.masks import save_phase_mask
from dstorm3d.optics.psf_model import save_psf
from dstorm3d.utils.files import atomic_write


class LearnedMaskExport(pl.Callback):
    """Writes ``learned_mask.npy/.tif/.mat`` (float64 rad, with the optical setup), ``learned_mask.npz``
    (the whole learned PSF model: setup, learned phase, pupil amplitude, blur; for ``optics.pupil=``) and
    ``learned_mask.json`` (setup, mask settings, steps, and the largest difference between the ranks'
    masks, which DDP must keep at 0) into ``output_dir``."""

    def __init__(self, output_dir: str | Path, name: str = "learned_mask") -> None:
        self.output_dir = Path(output_dir)
        self.name = name

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        mask = pl_module.phase_mask().detach().float()
        difference = 0.0
        if trainer.world_size > 1:  # every rank takes part in the gather
            gathered = trainer.strategy.all_gather(mask)
            difference = float((gathered - gathered[0:1]).abs().max())
        if not trainer.is_global_zero:
            return
        setup = pl_module.optical_setup
        learned = pl_module.phase_mask().detach().double().cpu().numpy()
        for suffix in (".npy", ".tif", ".mat"):
            save_phase_mask(learned, self.output_dir / f"{self.name}{suffix}", setup=setup, overwrite=True)
        save_psf(
            self.output_dir / f"{self.name}.npz",
            pl_module.psf_model(),
            metadata={"source": "PSF design (LearnedMaskExport)", "global_step": trainer.global_step},
            overwrite=True,
        )
        record = {
            "optical_setup": setup.to_dict(),
            "mask_learning": dict(pl_module.hparams.get("mask_learning", {})),
            "initial_mask": pl_module.hparams.get("mask_source"),
            "global_step": trainer.global_step,
            "world_size": trainer.world_size,
            "ranks_max_abs_difference_rad": difference,
            "files": [f"{self.name}{s}" for s in (".npy", ".tif", ".mat", ".npz")],
        }
        atomic_write(
            self.output_dir / f"{self.name}.json",
            lambda p: p.write_text(json.dumps(record, indent=2)),
            overwrite=True,
        )
