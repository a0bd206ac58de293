"""Every experiment config composes, instantiates and survives a fast_dev_run (one batch each stage)."""

from __future__ import annotations

import hydra
import pytest
from helpers_hydra import EXPERIMENTS, composed

from dstorm3d.training import train

# keep CPU smoke tests small: frames, batch and (for the paper-size decoders) the volume
SMALL = ["data.batch_size=2", "data.num_workers=0", "trainer.accelerator=cpu", "trainer.precision=32-true",
         "simulation.frame_shape=[24,24]", "logger=csv"]


# experiments that need a file from an earlier run get a stand-in
REQUIRED = {"learned_psf_localizer": ["optics.mask=clear"]}


def test_experiment_list_is_not_empty():
    assert {"tetrapod_dense", "quickstart", "psf_design", "psf_design_cpu", "learned_psf_localizer"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_config_instantiates(experiment, tmp_path):
    with composed("train.yaml", [f"experiment={experiment}", *REQUIRED.get(experiment, [])], tmp_path) as cfg:
        assert cfg.data and cfg.model and cfg.trainer
        hydra.utils.instantiate(cfg.data, _convert_="all")
        hydra.utils.instantiate(cfg.model, _convert_="all")


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_fast_dev_run(experiment, tmp_path):
    with composed("train.yaml", [f"experiment={experiment}", "debug=fdr", *SMALL, *REQUIRED.get(experiment, [])],
                  tmp_path) as cfg:
        metrics = train(cfg)
    assert "test/loss" in metrics


@pytest.mark.parametrize("head", ["volume", "offsets"])
def test_both_heads_train_with_the_default_config(head, tmp_path):
    sizes = ["model.head.depth_slices=21"] if head == "volume" else []
    with composed("train.yaml", ["debug=default", f"model/head={head}", "model.network.channels=16", *sizes,
                                 *SMALL], tmp_path) as cfg:
        metrics = train(cfg)
    assert metrics["test/jaccard"] >= 0.0
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
