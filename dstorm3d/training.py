"""``train(cfg)``: seed, instantiate, fit, test — the body of ``train.py``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

from dstorm3d.utils.instantiate import instantiate_callbacks, instantiate_loggers
from dstorm3d.utils.wandb_mode import choose_wandb_mode

log = logging.getLogger(__name__)


def resolve_ckpt_path(ckpt_path: str | None, output_dir: str) -> str | None:
    """``"last"`` means this run folder's ``checkpoints/last.ckpt``; other paths must exist."""
    if ckpt_path in (None, ""):
        return None
    path = Path(output_dir) / "checkpoints" / "last.ckpt" if ckpt_path == "last" else Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint to resume from not found: {path} (give ckpt_path=<file>)")
    return str(path)


def keep_previous_csv_logs(logger_cfg: DictConfig | None) -> None:
    """Lightning's CSVLogger deletes an existing ``metrics.csv`` in its folder. When a run folder is reused
    (resuming with ``ckpt_path=``), log into a fresh sub-folder ``resumed_N`` instead, keeping the old file."""
    if not logger_cfg:
        return
    for node in logger_cfg.values():
        if not (OmegaConf.is_dict(node) and str(node.get("_target_", "")).endswith("CSVLogger")):
            continue
        folder = Path(str(node.save_dir)) / str(node.get("name") or "lightning_logs") / str(node.get("version") or "")
        if not (folder / "metrics.csv").is_file():
            continue
        n = 1
        while (folder / f"resumed_{n}").exists():
            n += 1
        version = f"{node.get('version') or ''}/resumed_{n}".lstrip("/")
        log.info("Keeping the earlier %s; this run's CSV logs go to %s", folder / "metrics.csv", folder / f"resumed_{n}")
        node.version = version


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train (and test) a model as configured; returns the logged metrics (floats)."""
    if cfg.get("seed") is not None:
        pl.seed_everything(int(cfg.seed), workers=True)
    if cfg.get("logger") and "wandb" in cfg.logger:
        choose_wandb_mode()

    log.info("Instantiating datamodule <%s>", cfg.data._target_)
    datamodule: pl.LightningDataModule = hydra.utils.instantiate(cfg.data, _convert_="all")
    log.info("Instantiating model <%s>", cfg.model._target_)
    model: pl.LightningModule = hydra.utils.instantiate(cfg.model, _convert_="all")
    callbacks = instantiate_callbacks(cfg.get("callbacks"))
    keep_previous_csv_logs(cfg.get("logger"))
    loggers = instantiate_loggers(cfg.get("logger"))
    trainer: pl.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False,
                                                  _convert_="all")
    config = {k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
              for k, v in cfg.items() if k != "hydra"}  # Hydra's own node holds sweep-only values
    for logger in loggers:
        logger.log_hyperparams({"config": config})

    if cfg.get("train", True):
        ckpt = resolve_ckpt_path(cfg.get("ckpt_path"), cfg.paths.output_dir)
        trainer.fit(model=model, datamodule=datamodule, ckpt_path=ckpt)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}

    if cfg.get("test", False):
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        if not best or cfg.trainer.get("fast_dev_run"):
            log.warning("No best checkpoint: testing the current weights.")
            best = None
        trainer.test(model=model, datamodule=datamodule, ckpt_path=best, weights_only=True)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})

    for logger in loggers:
        if hasattr(logger, "experiment") and type(logger).__name__ == "WandbLogger":
            import wandb

            wandb.finish()
    return metrics
