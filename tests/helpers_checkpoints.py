"""Tiny untrained checkpoints, built as train.py builds its model, for tests of the scoring tools."""

from __future__ import annotations

from pathlib import Path

import hydra
import pytorch_lightning as pl
import torch
from helpers_hydra import composed

FRAME_PX = 24
TINY_MODEL = [
    "experiment=quickstart",
    "model.network.trunk=paper",
    "optics.pupil_grid=96",
    "optics.z_range_um=[1.0,2.0]",
    f"simulation.frame_shape=[{FRAME_PX},{FRAME_PX}]",
    "model.network.channels=8",
    "model.network.dilations=[1,2]",
]
"""The quickstart experiment shrunk: 24 × 24 px frames, a 96-sample pupil, z 1–2 µm, an 8-channel trunk."""


def save_tiny_checkpoint(path: Path, overrides: list[str], workdir: Path) -> Path:
    """A freshly initialised LocalizerModule (as train.py instantiates it), saved as Lightning would."""
    torch.manual_seed(0)
    with composed("train.yaml", [*TINY_MODEL, *overrides], workdir) as cfg:
        module = hydra.utils.instantiate(cfg.model, _convert_="all")
    checkpoint = {
        "state_dict": module.state_dict(),
        "hyper_parameters": dict(module.hparams),
        "pytorch-lightning_version": pl.__version__,
        "epoch": 0,
        "global_step": 0,
    }
    module.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, path)
    return path
