"""LightningModule for the localization CNN, trained on frames simulated on the training device.

A batch from :class:`~dstorm3d.data.simulated.SimulatedDataModule` holds emitter lists; the module renders
them through its :class:`~dstorm3d.simulation.simulator.FrameSimulator` (optics + camera), normalises the
frames, runs the network and scores it with its head's readout. Validation picks the detection
threshold that maximises the Jaccard index on the fixed validation set and stores it in the checkpoint.

Checkpoints are self-contained: the optical setup, simulation, normalisation, network and head settings
are plain hyperparameters; the phase mask and the threshold are tensors in the state dict (the mask
spec is rewritten to ``"checkpoint"`` on save). The PSF model (:mod:`dstorm3d.optics.psf_model`: setup,
pupil phase — the current, learned one —, pupil amplitude, blur) is the hyperparameter ``psf``, plain
data (``PSFModel.to_dict()``), and ``optics`` holds its resolved setup.
``LocalizerModule.load_from_checkpoint(path)`` alone rebuilds a model that can localize. Checkpoints
written before the PSF model (no ``psf``) load as the scalar pupil of their setup with the state dict's
mask.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from dstorm3d.emitters import Emitters
from dstorm3d.metrics.localization import JaccardRMSE, SMLMChallengeMetric
from dstorm3d.models.network import build_localization_net
from dstorm3d.models.tiling import localize_frames
from dstorm3d.modules.readouts import build_readout, detach_output, keep_above, network_kwargs
from dstorm3d.normalization import FrameNormalization
from dstorm3d.optics.config import psf_from_config, setup_from_config
from dstorm3d.optics.psf_model import PSFModel, ScalarPupilPSF, psf_from_dict
from dstorm3d.simulation.simulator import FrameSimulator, batch_emitters, batch_generator
from dstorm3d.utils.config import plain

CHECKPOINT_MASK = "checkpoint"  # optics.mask value meaning "the mask is in the state dict"
METRIC_KEYS = ("jaccard", "rmse_lat_nm", "rmse_ax_nm", "efficiency_3d", "precision", "recall")


class SimulatedLocalizationModule(pl.LightningModule):
    """Shared machinery of the localizer and the PSF-design module (see module docstring).

    Args:
        optics: ``optics`` config (setup fields + mask spec).
        simulation: ``simulation`` config (see :mod:`dstorm3d.simulation.simulator`).
        network: trunk settings (``channels``, ``dilations``).
        head: head settings with its ``loss`` and ``postprocess`` sub-configs (``kind``: volume | offsets).
        normalization: :class:`~dstorm3d.normalization.FrameNormalization` fields.
        optimizer: ``{"lr": ..., "weight_decay": ...}`` (Adam).
        scheduler: ``{"kind": "plateau", "factor", "patience", "monitor"}`` or ``{"kind": "none"}``.
        metrics: ``{"threshold_nm": 150}`` matching threshold for Jaccard/RMSE.
        seed: seed of the camera noise streams.
        train_metrics_every_n_steps: decode and score a training batch this often (0 = never).
        example_frames: validation frames kept for the example-image callback.
        mask_source: where the mask came from (kept for the record when the mask moves into checkpoints).
        psf: the PSF model as plain data (``PSFModel.to_dict()``, written into checkpoints); ``None``
            builds it from ``optics`` (:func:`~dstorm3d.optics.config.psf_from_config`).
    """

    learnable_mask = False

    def __init__(
        self,
        optics: Mapping[str, Any],
        simulation: Mapping[str, Any],
        network: Mapping[str, Any],
        head: Mapping[str, Any],
        normalization: Mapping[str, Any] | None = None,
        optimizer: Mapping[str, Any] | None = None,
        scheduler: Mapping[str, Any] | None = None,
        metrics: Mapping[str, Any] | None = None,
        seed: int = 0,
        train_metrics_every_n_steps: int = 50,
        example_frames: int = 4,
        mask_source: str | None = None,
        psf: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        optics = plain(optics)
        self.save_hyperparameters(
            plain(
                dict(
                    optics=optics,
                    simulation=simulation,
                    network=network,
                    head=head,
                    normalization=normalization or {},
                    optimizer=optimizer or {},
                    scheduler=scheduler or {},
                    metrics=metrics or {},
                    seed=seed,
                    train_metrics_every_n_steps=train_metrics_every_n_steps,
                    example_frames=example_frames,
                    mask_source=mask_source or _pupil_source(optics),
                )
            )
        )
        hp = self.hparams
        self.psf = module_psf(hp.optics, hp.simulation, psf, hp.mask_source)
        self.optical_setup = self.psf.setup
        self.simulator = FrameSimulator(self.psf, hp.simulation, learnable_mask=self.learnable_mask)
        self.normalization = FrameNormalization.from_dict(hp.normalization)
        self.net = build_localization_net(**dict(hp.network), **network_kwargs(hp.head))
        self.readout = build_readout(self.optical_setup, hp.head)
        self.register_buffer("threshold", torch.tensor(float(self.readout.default_threshold)))
        threshold_nm = float(hp.metrics.get("threshold_nm", 150.0))
        self.candidates = list(self.readout.candidate_thresholds)
        self.val_metrics = nn.ModuleList(JaccardRMSE(threshold_nm=threshold_nm) for _ in self.candidates)
        self.val_challenge = nn.ModuleList(SMLMChallengeMetric() for _ in self.candidates)
        self.train_metric = JaccardRMSE(threshold_nm=threshold_nm)
        self.test_metric = JaccardRMSE(threshold_nm=threshold_nm)
        self.test_challenge = SMLMChallengeMetric()
        self.examples: dict[str, Any] | None = None

    # ------------------------------------------------------------------ simulation and forward
    def phase_mask(self) -> Tensor:
        """The ``(N, N)`` phase mask (rad) the frames are rendered with."""
        return self.simulator.pupil.phase_mask

    def psf_model(self) -> PSFModel:
        """The PSF model the frames are rendered with: its pupil phase the current :meth:`phase_mask`
        (learned, or an old checkpoint's state dict), else the model as given (full float64 precision)."""
        current = self.phase_mask().detach().cpu()
        if torch.equal(current, torch.as_tensor(self.psf.phase, dtype=current.dtype)):
            return self.psf
        return self.psf.replace(phase=current.double().numpy())

    def simulate(self, batch: Mapping[str, Tensor], generator: torch.Generator) -> Tensor:
        """Camera frames ``(B, H, W)`` (counts) of a batch of emitter lists."""
        return self.simulator(batch, generator=generator)

    def forward(self, frames: Tensor) -> Tensor | dict[str, Tensor]:
        """Network output for camera frames ``(B, H, W)`` in counts (normalised here)."""
        return self.net(self.normalization(frames))

    def localize(
        self,
        frames: Tensor,
        threshold: float | None = None,
        tile: int | None = None,
        head_tile: int | None = None,
    ) -> Emitters:
        """Localizations (µm, score) in frames ``(B, H, W)`` of camera counts, through tiles of at most
        ``tile`` pixels, and the head through tiles of ``head_tile`` pixels, when given (same results as
        whole frames; see :mod:`dstorm3d.models.tiling`)."""
        return localize_frames(self, frames, tile=tile, threshold=threshold, head_tile=head_tile)

    def _noise(self, stage: str, batch: Mapping[str, Tensor]) -> torch.Generator:
        first = int(batch["index"][0])
        epoch = self.current_epoch if stage == "train" else 0
        return batch_generator(self.device, int(self.hparams.seed), stage, epoch, first)

    # ------------------------------------------------------------------ training
    def training_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> Tensor:
        frames = self.simulate(batch, self._noise("train", batch))
        target = batch_emitters(batch)
        output = self(frames)
        losses = self.readout.loss(output, target)
        b = frames.shape[0]
        for name, value in losses.items():
            self.log(
                f"train/{name}",
                value,
                on_step=True,
                on_epoch=True,
                prog_bar=name == "loss",
                batch_size=b,
                sync_dist=False,
            )
        every = int(self.hparams.train_metrics_every_n_steps)
        if every and self.global_step % every == 0:
            with torch.no_grad():
                predictions = self.readout.decode(detach_output(output), float(self.threshold))
                self.train_metric.update(predictions, target)
        return losses["loss"]

    def on_train_epoch_end(self) -> None:
        if int(self.train_metric.n_frames) > 0:
            self._log_scores("train", self.train_metric.compute())
        self.train_metric.reset()

    # ------------------------------------------------------------------ validation
    def validation_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> None:
        frames = self.simulate(batch, self._noise("val", batch))
        target = batch_emitters(batch)
        output = self(frames)
        losses = self.readout.loss(output, target)
        for name, value in losses.items():
            self.log(
                f"val/{name}",
                value,
                on_epoch=True,
                prog_bar=name == "loss",
                batch_size=frames.shape[0],
                sync_dist=True,
            )
        predictions = self.readout.decode(detach_output(output), min(self.candidates))
        for t, metric, challenge in zip(self.candidates, self.val_metrics, self.val_challenge):
            kept = keep_above(predictions, t)
            metric.update(kept, target)
            challenge.update(kept, target)
        if batch_idx == 0:
            k = min(int(self.hparams.example_frames), frames.shape[0])
            self.examples = {
                "frames": frames[:k].detach().cpu(),
                "target": target.select_frames(slice(0, k)).to("cpu"),
                "predictions": keep_above(predictions, float(self.threshold))
                .select_frames(slice(0, k))
                .to("cpu"),
                "pixel_size_um": self.optical_setup.pixel_size_um,
            }

    def on_validation_epoch_end(self) -> None:
        results = [m.compute() for m in self.val_metrics]
        challenges = [m.compute() for m in self.val_challenge]
        jaccards = np.array([float(r["jaccard"]) for r in results])
        best = int(np.nanargmax(jaccards)) if np.isfinite(jaccards).any() else 0
        if not self.trainer.sanity_checking:
            self.threshold.fill_(self.candidates[best])
        self._log_scores("val", results[best])
        self.log("val/threshold", float(self.candidates[best]), sync_dist=False)
        self.log("val/challenge_jaccard", challenges[best]["jaccard"], sync_dist=False)
        self.log("val/challenge_efficiency_3d", challenges[best]["efficiency_3d"], sync_dist=False)
        for metric in [*self.val_metrics, *self.val_challenge]:
            metric.reset()

    # ------------------------------------------------------------------ test
    def test_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> None:
        frames = self.simulate(batch, self._noise("test", batch))
        target = batch_emitters(batch)
        output = self(frames)
        losses = self.readout.loss(output, target)
        self.log("test/loss", losses["loss"], on_epoch=True, batch_size=frames.shape[0], sync_dist=True)
        predictions = self.readout.decode(detach_output(output), float(self.threshold))
        self.test_metric.update(predictions, target)
        self.test_challenge.update(predictions, target)

    def on_test_epoch_end(self) -> None:
        self._log_scores("test", self.test_metric.compute())
        challenge = self.test_challenge.compute()
        self.log("test/challenge_jaccard", challenge["jaccard"], sync_dist=False)
        self.log("test/challenge_efficiency_3d", challenge["efficiency_3d"], sync_dist=False)
        self.test_metric.reset()
        self.test_challenge.reset()

    def _log_scores(self, stage: str, scores: Mapping[str, Tensor]) -> None:
        for key in METRIC_KEYS:
            value = scores[key]
            if key in ("jaccard", "precision", "recall"):
                value = torch.nan_to_num(value, nan=0.0)  # nothing to find and nothing found: no credit
            self.log(
                f"{stage}/{key}", value.float(), sync_dist=False, prog_bar=key == "jaccard" and stage == "val"
            )

    # ------------------------------------------------------------------ prediction (inference)
    predict_settings: dict[str, Any] = {}
    """``tile``, ``margin``, ``threshold`` for :meth:`predict_step` (set by ``infer.py``)."""

    def predict_step(self, batch: Any, batch_idx: int) -> dict[str, Any]:
        """``batch``: ``{"frames": (B, H, W) camera counts, "index": (B,)}`` → localizations per frame."""
        frames = batch["frames"] if isinstance(batch, Mapping) else batch
        index = batch["index"] if isinstance(batch, Mapping) else torch.arange(frames.shape[0])
        found = localize_frames(self, frames.float(), **self.predict_settings)
        return {"index": index, "localizations": found}

    # ------------------------------------------------------------------ optimisation
    def parameter_groups(self) -> list[dict[str, Any]]:
        opt = self.hparams.optimizer
        return [{"params": self.net.parameters(), "lr": float(opt.get("lr", 5e-4)), "name": "network"}]

    def build_optimizer(self) -> torch.optim.Optimizer:
        """Adam over :meth:`parameter_groups` (without a schedule, which needs the trainer)."""
        weight_decay = float(self.hparams.optimizer.get("weight_decay", 0.0))
        return torch.optim.Adam(self.parameter_groups(), weight_decay=weight_decay)

    def configure_optimizers(self) -> Any:
        optimizer = self.build_optimizer()
        sched = dict(self.hparams.scheduler)
        kind = sched.get("kind", "plateau")
        if kind == "none":
            return optimizer
        if kind == "cosine":
            total = max(1, int(self.trainer.estimated_stepping_batches))
            warmup = int(float(sched.get("warmup_fraction", 0.03)) * total)
            floor = float(sched.get("final_fraction", 0.01))
            scheduler = torch.optim.lr_scheduler.LambdaLR(
                optimizer, lambda step: cosine_factor(step, total, warmup, floor)
            )
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
        if kind != "plateau":
            raise ValueError(f"model.scheduler.kind must be plateau, cosine or none, got {kind!r}")
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer,
            mode="min",
            factor=float(sched.get("factor", 0.1)),
            patience=int(sched.get("patience", 5)),
            min_lr=float(sched.get("min_lr", 1e-7)),
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {
                "scheduler": scheduler,
                "monitor": sched.get("monitor", "val/loss"),
                "interval": "epoch",
                "frequency": 1,
            },
        }

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        hparams = copy.deepcopy(dict(checkpoint.get("hyper_parameters", self.hparams)))
        psf = self.psf_model()
        hparams["optics"] = {**psf.setup.to_dict(), "mask": CHECKPOINT_MASK}
        hparams["psf"] = psf.to_dict()
        checkpoint["hyper_parameters"] = plain(hparams)
        checkpoint["dstorm3d"] = {
            "kind": type(self).__name__,
            "head": self.hparams.head["kind"],
            "frame_shape": list(self.simulator.frame_shape),
        }


def render_window_px(simulation: Mapping[str, Any]) -> int | None:
    """The largest pixel grid a simulation renders in one piece: its render window, or its whole frame
    plus the filter margins (8 px a side)."""
    window = simulation.get("render_window")
    if window is not None:
        return int(window)
    frame = simulation.get("frame_shape")  # (its absence is FrameSimulator's error to report)
    return None if not frame else max(int(v) for v in frame) + 16


def module_psf(
    optics: Mapping[str, Any],
    simulation: Mapping[str, Any],
    psf: Mapping[str, Any] | None,
    mask_source: str | None,
) -> PSFModel:
    """A module's PSF model: from its ``psf`` hyperparameter (checkpoints), else from ``optics``; a
    checkpoint written before the PSF model (``optics.mask == "checkpoint"``, no ``psf``) gets the scalar
    pupil of its setup, whose mask the state dict then fills in."""
    if psf is not None:
        return psf_from_dict(dict(psf))
    if optics.get("mask") == CHECKPOINT_MASK:
        return ScalarPupilPSF(setup_from_config(optics), label=str(mask_source or CHECKPOINT_MASK))
    return psf_from_config(optics, render_window_px(simulation))


def _pupil_source(optics: Mapping[str, Any]) -> str:
    """Where an ``optics`` config's pupil comes from, for the record: its pupil file or its mask."""
    return str(optics.get("pupil") or optics.get("mask"))


def cosine_factor(step: int, total: int, warmup: int, floor: float) -> float:
    """Learning-rate factor: linear warm-up over ``warmup`` steps, then cosine decay to ``floor``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


class LocalizerModule(SimulatedLocalizationModule):
    """Localization CNN with a fixed phase mask (Tetrapod or any mask file)."""
