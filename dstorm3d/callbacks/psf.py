"""Log the phase mask and the PSF z-stack it makes: to W&B and as PNG/TIFF/GIF files in the run folder.

A fixed mask (the localizer) is logged once at the start of training; a learnable mask (PSF design) also
every ``every_n_steps`` optimizer steps and at the end, so its evolution can be watched.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_only

from dstorm3d.callbacks.media import log_animation, log_images
from dstorm3d.optics.psf_model import blur_images
from dstorm3d.utils.tiff import write_psf_zstack
from dstorm3d.visualization import (
    figure_rgb,
    phase_mask_figure,
    psf_frame_rgb,
    psf_montage_figure,
    save_gif,
    save_png,
)


class PhaseMaskLogger(pl.Callback):
    """Draws ``module.phase_mask()`` and ``module.simulator.pupil.psf_zstack`` over the axial range."""

    def __init__(
        self, every_n_steps: int = 200, z_slices: int = 9, window: int = 64, output_dir: str | None = None
    ) -> None:
        self.every_n_steps = max(1, int(every_n_steps))
        self.z_slices, self.window = int(z_slices), int(window)
        self.output_dir = Path(output_dir) if output_dir else None

    def _learnable(self, module: pl.LightningModule) -> bool:
        return bool(getattr(module, "learnable_mask", False))

    @rank_zero_only
    def on_train_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self.log_mask(trainer, module)

    @rank_zero_only
    def on_train_batch_end(
        self, trainer: pl.Trainer, module: pl.LightningModule, outputs, batch, batch_idx
    ) -> None:
        step = trainer.global_step
        if self._learnable(module) and step > 0 and step % self.every_n_steps == 0:
            self.log_mask(trainer, module)

    @rank_zero_only
    def on_train_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if self._learnable(module):
            self.log_mask(trainer, module)

    def log_mask(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        setup = module.optical_setup
        pupil = module.simulator.pupil
        step = trainer.global_step
        mask = module.phase_mask().detach().double().cpu().numpy()
        z = np.linspace(*setup.z_range_um, self.z_slices)
        window = min(self.window, setup.pupil_grid)
        with torch.no_grad():  # the PSF model's own blur applied, as in the simulator
            stack = pupil.psf_zstack(z, window, phase_mask=module.phase_mask())
            stack = blur_images(stack, module.psf.blur_sigma_px).float().cpu().numpy()
        mask_rgb = figure_rgb(phase_mask_figure(mask, setup, title=f"phase mask, step {step}"))
        montage = figure_rgb(
            psf_montage_figure(stack, z, setup.pixel_size_um, title=f"PSF z-stack per photon, step {step}")
        )
        gif_frames = [psf_frame_rgb(s, zi, setup.pixel_size_um) for s, zi in zip(stack, z)]
        if self.output_dir is not None:
            tag = f"step{step:07d}"
            save_png(mask_rgb, self.output_dir / f"phase_mask_{tag}.png")
            save_png(montage, self.output_dir / f"psf_montage_{tag}.png")
            gif = save_gif(gif_frames, self.output_dir / f"psf_zstack_{tag}.gif")
            info = {"optical_setup": setup.to_dict(), "global_step": step}
            write_psf_zstack(self.output_dir / f"psf_zstack_{tag}.tif", stack, z, setup.pixel_size_um, info)
            np.save(self.output_dir / f"phase_mask_{tag}.npy", mask)
        else:
            gif = None
        # captions given explicitly: WandbLogger.log_image takes len() of every keyword, caption=None raises
        log_images(trainer, "psf/phase_mask", [mask_rgb], step=step, captions=[f"phase mask, step {step}"])
        log_images(
            trainer, "psf/zstack_montage", [montage], step=step, captions=[f"PSF z-stack, step {step}"]
        )
        if gif is not None:
            log_animation(trainer, "psf/zstack_animation", gif, step=step)
