"""LightningDataModule that simulates a fresh training set every epoch (no pre-generated data).

Samples are emitter lists (see :mod:`dstorm3d.simulation.simulator`): sample ``i`` of epoch ``e`` is drawn
from ``default_rng([seed, stream, e, i])``. The training loader is rebuilt every epoch (the trainer must
run with ``reload_dataloaders_every_n_epochs=1``, set by ``configs/trainer``), so every epoch sees new
data; validation and test sets are fixed (epoch 0 of their own streams). Under DDP Lightning gives each
rank a disjoint slice of the indices (``DistributedSampler``), so ranks and workers never repeat each
other's samples. The global batch is ``batch_size × devices × num_nodes``. Frames are rendered from
these lists on the training device by the LightningModule.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytorch_lightning as pl
from torch.utils.data import DataLoader

from dstorm3d.optics.config import setup_from_config
from dstorm3d.simulation.simulator import (
    EmitterDataset,
    check_simulation_config,
    collate_samples,
    simulation_parts,
)
from dstorm3d.utils.config import plain


class SimulatedDataModule(pl.LightningDataModule):
    """Simulated SMLM frames for training, validation and test.

    Args:
        optics: the ``optics`` config (the setup's pixel size and axial range shape the samples).
        simulation: the ``simulation`` config (frame shape, emitters, background, camera, blur).
        batch_size: frames per batch on each device.
        train_samples: training frames per epoch (over all devices).
        val_samples, test_samples: sizes of the fixed validation and test sets. Keep them divisible by
            ``batch_size × devices`` so no rank pads with repeated samples.
        num_workers: DataLoader worker processes (emitter sampling and backgrounds run there).
        seed: seed of all three streams.
    """

    def __init__(
        self,
        optics: Mapping[str, Any],
        simulation: Mapping[str, Any],
        batch_size: int = 16,
        train_samples: int = 9000,
        val_samples: int = 256,
        test_samples: int = 256,
        num_workers: int = 0,
        seed: int = 0,
        pin_memory: bool = False,
    ) -> None:
        super().__init__()
        self.optics = plain(optics)
        self.simulation = check_simulation_config(plain(simulation))
        self.batch_size = int(batch_size)
        self.sizes = {"train": int(train_samples), "val": int(val_samples), "test": int(test_samples)}
        self.num_workers, self.seed, self.pin_memory = int(num_workers), int(seed), bool(pin_memory)
        self.setup_ = setup_from_config(self.optics)
        self.sampler, self.background = simulation_parts(self.simulation, self.setup_)
        self._fixed: dict[str, EmitterDataset] = {}

    def dataset(self, stream: str, epoch: int = 0) -> EmitterDataset:
        """The data set of a stream (``train`` at a given epoch, or the fixed ``val``/``test``)."""
        return EmitterDataset(
            self.sampler,
            self.background,
            self.sizes[stream],
            self.seed,
            stream=stream,
            epoch=epoch,
            blur_sigma_px=self.simulation.get("blur_sigma_px"),
        )

    def _loader(self, dataset: EmitterDataset) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            collate_fn=collate_samples,
            pin_memory=self.pin_memory,
            persistent_workers=False,
            drop_last=False,
        )

    def train_dataloader(self) -> DataLoader:
        epoch = self.trainer.current_epoch if self.trainer is not None else 0
        return self._loader(self.dataset("train", epoch))

    def val_dataloader(self) -> DataLoader:
        return self._loader(self._fixed.setdefault("val", self.dataset("val")))

    def test_dataloader(self) -> DataLoader:
        return self._loader(self._fixed.setdefault("test", self.dataset("test")))
