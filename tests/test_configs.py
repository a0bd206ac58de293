"""Every experiment config composes, instantiates and survives a fast_dev_run (one batch each stage)."""

from __future__ import annotations

import math

import hydra
import pytest
import pytorch_lightning as pl
import torch
from conftest import shared_path
from helpers_hydra import EXPERIMENTS, composed
from torch.utils.data import DataLoader, TensorDataset

from dstorm3d.training import train

# keep CPU smoke tests small: frames, batch and (for the paper-size decoders) the volume
SMALL = [
    "data.batch_size=2",
    "data.num_workers=0",
    "trainer.accelerator=cpu",
    "trainer.precision=32-true",
    "simulation.frame_shape=[24,24]",
    "logger=csv",
]


# experiments that need a file from an earlier run get a stand-in
REQUIRED = {"learned_psf_localizer": ["optics.mask=clear"]}
# experiments that read ../shared/data (the printed Tetrapod of the mito data, the paper's learned mask)
SHARED = {
    "storm_offsets": ("masks", "mask_tetrapod_printed.mat"),
    "learned_psf_offsets": ("masks", "mask_learned.mat"),
}


def needs(experiment: str) -> None:
    if experiment in SHARED:
        shared_path(*SHARED[experiment])


def test_experiment_list_is_not_empty():
    assert {
        "tetrapod_dense",
        "quickstart",
        "psf_design",
        "psf_design_cpu",
        "learned_psf_localizer",
        "storm_offsets",
        "learned_psf_offsets",
    } <= set(EXPERIMENTS)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_config_instantiates(experiment, tmp_path):
    needs(experiment)
    with composed("train.yaml", [f"experiment={experiment}", *REQUIRED.get(experiment, [])], tmp_path) as cfg:
        assert cfg.data and cfg.model and cfg.trainer
        hydra.utils.instantiate(cfg.data, _convert_="all")
        hydra.utils.instantiate(cfg.model, _convert_="all")


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_fast_dev_run(experiment, tmp_path):
    needs(experiment)
    with composed(
        "train.yaml",
        [f"experiment={experiment}", "debug=fdr", *SMALL, *REQUIRED.get(experiment, [])],
        tmp_path,
    ) as cfg:
        metrics = train(cfg)
    assert "test/loss" in metrics


@pytest.mark.parametrize("head", ["volume", "offsets"])
def test_both_heads_train_with_the_default_config(head, tmp_path):
    sizes = ["model.head.depth_slices=21"] if head == "volume" else []
    with composed(
        "train.yaml",
        ["debug=default", f"model/head={head}", "model.network.channels=16", *sizes, *SMALL],
        tmp_path,
    ) as cfg:
        metrics = train(cfg)
    assert math.isfinite(metrics["test/loss"]) and 0.0 <= metrics["test/jaccard"] <= 1.0  # NaN fails both
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()


class _ScoreFallsEveryEpoch(pl.LightningModule):
    """A tiny module whose logged validation Jaccard only gets worse, as a diverging run's would."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).square().mean()

    def validation_step(self, batch, batch_idx):
        self.log("val/jaccard", 1.0 - 0.1 * self.current_epoch)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_last_checkpoint_is_the_latest_state_when_the_score_stops_improving(tmp_path):
    """The default callbacks: epoch_NNN.ckpt holds the best epoch, last.ckpt the latest one (Lightning ≥ 2.6
    alone would leave last.ckpt a copy of the best checkpoint, and resuming from it would go back in time)."""
    with composed("train.yaml", [], tmp_path) as cfg:
        names = ("model_checkpoint", "last_checkpoint")
        callbacks = [hydra.utils.instantiate(cfg.callbacks[name]) for name in names]
    loader = DataLoader(TensorDataset(torch.randn(4, 2)), batch_size=2)
    trainer = pl.Trainer(
        max_epochs=3,
        callbacks=callbacks,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(_ScoreFallsEveryEpoch(), loader, loader)
    folder = tmp_path / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["epoch_000.ckpt", "last.ckpt"]
    best = torch.load(folder / "epoch_000.ckpt", map_location="cpu", weights_only=True)
    last = torch.load(folder / "last.ckpt", map_location="cpu", weights_only=True)
    assert best["global_step"] == 2 and last["global_step"] == 6
    assert trainer.checkpoint_callback is callbacks[0]  # train.py tests the best checkpoint
