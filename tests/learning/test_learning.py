"""Learning tests: small models trained from scratch on CPU must reach scores only a network that learned
can reach, on a fixed held-out set of frames (budgets in steps, not wall time: 2 shared cores vary).

Thresholds are set well above what an untrained network or a trivial predictor scores (Jaccard ≈ 0)
and below the measured values, which are recorded in the issue notes and the README.
"""

from __future__ import annotations

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from helpers_hydra import composed

from dstorm3d.data.simulated import SimulatedDataModule
from dstorm3d.metrics.localization import JaccardRMSE
from dstorm3d.modules.readouts import keep_above
from dstorm3d.simulation.simulator import batch_emitters, batch_generator

pytestmark = [pytest.mark.slow, pytest.mark.learning]


def train_and_score(overrides: list[str], steps: int, tmp_path, held_out: int = 128) -> dict[str, float]:
    """Train ``steps`` optimizer steps (validation calibrates the threshold), then score a held-out set."""
    with composed("train.yaml", ["experiment=quickstart", "logger=none", "callbacks=none", *overrides],
                  tmp_path) as cfg:
        import hydra

        pl.seed_everything(0, workers=True)
        datamodule = hydra.utils.instantiate(cfg.data, _convert_="all")
        model = hydra.utils.instantiate(cfg.model, _convert_="all")
    trainer = pl.Trainer(max_steps=steps, max_epochs=10_000, accelerator="cpu", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, reload_dataloaders_every_n_epochs=1, deterministic=False)
    trainer.fit(model, datamodule=datamodule)
    model.eval()
    test = SimulatedDataModule(datamodule.optics, datamodule.simulation, batch_size=32, test_samples=held_out,
                               seed=2024)
    metric = JaccardRMSE(threshold_nm=150.0)
    with torch.no_grad():
        for batch in test.test_dataloader():
            frames = model.simulate(batch, batch_generator(torch.device("cpu"), 2024, "held-out", int(batch["index"][0])))
            found = model.readout.decode(model(frames), float(model.threshold))
            metric.update(found, batch_emitters(batch))
    scores = {k: float(v) for k, v in metric.compute().items()}
    print("held-out scores", {k: round(scores[k], 3) for k in ("jaccard", "rmse_lat_nm", "rmse_ax_nm")})
    return scores


def test_offsets_head_learns_from_scratch(tmp_path):
    scores = train_and_score(["model/head=offsets", "data.train_samples=4000", "data.val_samples=128"],
                             steps=750, tmp_path=tmp_path)
    assert scores["jaccard"] >= 0.25
    assert scores["rmse_lat_nm"] <= 60.0 and scores["rmse_ax_nm"] <= 90.0


def test_volume_head_learns_from_scratch(tmp_path):
    scores = train_and_score(["model/head=volume", "model.head.depth_slices=41", "data.batch_size=4",
                              "data.train_samples=4000", "data.val_samples=64", "model.network.channels=32",
                              "model.head.output_scale=800.0"], steps=2000, tmp_path=tmp_path)
    assert scores["jaccard"] >= 0.15
    assert np.isfinite(scores["rmse_lat_nm"]) and scores["rmse_lat_nm"] <= 70.0
