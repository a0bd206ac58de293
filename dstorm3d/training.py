"""``train(cfg)``: seed, instantiate, fit, test — the body of ``train.py``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

from dstorm3d.optics.config import check_optics
from dstorm3d.utils.cli import UserInputError, set_threads
from dstorm3d.utils.instantiate import instantiate_callbacks, instantiate_loggers
from dstorm3d.utils.validate import integer, number
from dstorm3d.utils.wandb_mode import choose_wandb_mode

log = logging.getLogger(__name__)


def resolve_ckpt_path(ckpt_path: str | None, output_dir: str) -> str | None:
    """``"last"`` means this run folder's ``checkpoints/last.ckpt``; other paths must exist."""
    if ckpt_path in (None, ""):
        return None
    path = Path(output_dir) / "checkpoints" / "last.ckpt" if ckpt_path == "last" else Path(ckpt_path)
    if not path.is_file():
        raise UserInputError(
            f"ckpt_path={ckpt_path}: checkpoint to resume from not found at {path} "
            "(give ckpt_path=<file.ckpt> or ckpt_path=last)"
        )
    return str(path)


def keep_previous_csv_logs(logger_cfg: DictConfig | None) -> None:
    """Lightning's CSVLogger deletes an existing ``metrics.csv`` in its folder. When a run folder is
    reused (resuming with ``ckpt_path=``), log into a fresh sub-folder ``resumed_N`` instead, keeping the
    old file."""
    if not logger_cfg:
        return
    for node in logger_cfg.values():
        if not (OmegaConf.is_dict(node) and str(node.get("_target_", "")).endswith("CSVLogger")):
            continue
        folder = (
            Path(str(node.save_dir))
            / str(node.get("name") or "lightning_logs")
            / str(node.get("version") or "")
        )
        if not (folder / "metrics.csv").is_file():
            continue
        n = 1
        while (folder / f"resumed_{n}").exists():
            n += 1
        version = f"{node.get('version') or ''}/resumed_{n}".lstrip("/")
        log.info(
            "Keeping the earlier %s; this run's CSV logs go to %s",
            folder / "metrics.csv",
            folder / f"resumed_{n}",
        )
        node.version = version


def check_settings(cfg: DictConfig) -> None:
    """The data and optimizer settings every training reads, checked before anything is built (one line
    each, naming the key)."""
    data, optimizer = cfg.get("data") or {}, (cfg.get("model") or {}).get("optimizer") or {}
    for key in ("batch_size", "train_samples", "val_samples", "test_samples"):
        if key in data:
            integer(f"data.{key}", data[key], minimum=1, example=16)
    if "num_workers" in data:
        integer("data.num_workers", data.num_workers, minimum=0, example=4)
    if "lr" in optimizer:
        number("model.optimizer.lr", optimizer.lr, above=0.0, example=0.0005)
    if "weight_decay" in optimizer:
        number("model.optimizer.weight_decay", optimizer.weight_decay, minimum=0.0, example=0)
    if cfg.get("optics") is not None:  # the pupil source (mask or pupil file) before anything loads
        check_optics(OmegaConf.to_container(cfg.optics, resolve=True))
    set_threads(cfg.get("threads"))


def link_best_checkpoint(best: str | None, folder: Path) -> Path | None:
    """``<folder>/best.ckpt``: a relative link to the best checkpoint (a copy where links are refused), so
    commands can name the best checkpoint of a run without knowing its epoch."""
    if not best or not Path(best).is_file():
        return None
    link = folder / "best.ckpt"
    tmp = folder / ".best.ckpt.tmp"
    tmp.unlink(missing_ok=True)
    try:
        tmp.symlink_to(
            Path(best).name if Path(best).parent.resolve() == folder.resolve() else Path(best).resolve()
        )
    except OSError:
        import shutil

        shutil.copyfile(best, tmp)
    tmp.replace(link)
    return link


def wandb_offline_run(trainer: pl.Trainer) -> Path | None:
    """The folder of this run's offline W&B run (``.../wandb/offline-run-<date>-<id>``), if it has one."""
    for logger in trainer.loggers:
        if type(logger).__name__ == "WandbLogger":
            folder = Path(logger.experiment.dir).parent  # the run's files/ folder sits inside it
            if folder.name.startswith("offline-run-"):
                return folder
    return None


def report_locations(trainer: pl.Trainer, output_dir: str) -> dict[str, str]:
    """Print (and log) where the run's results are: the run folder, the best and the last checkpoint."""
    folder = Path(output_dir) / "checkpoints"
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    link = link_best_checkpoint(best, folder) if trainer.is_global_zero else None
    where = {"run folder": str(output_dir)}
    if link is not None:
        where["best checkpoint"] = f"{link} -> {Path(best).name}"
    if (folder / "last.ckpt").is_file():
        where["last checkpoint"] = str(folder / "last.ckpt")
    offline = wandb_offline_run(trainer)
    if offline is not None:
        where["W&B offline run"] = str(offline)
        where["upload it with"] = f"wandb sync {offline}"
    if trainer.is_global_zero:
        for key, value in where.items():
            log.info("%s: %s", key, value)
            print(f"{key}: {value}", flush=True)
    return where


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train (and test) a model as configured; returns the logged metrics (floats)."""
    log.info("run folder: %s", cfg.paths.output_dir)
    check_settings(cfg)
    ckpt = resolve_ckpt_path(cfg.get("ckpt_path"), cfg.paths.output_dir) if cfg.get("train", True) else None
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
    trainer: pl.Trainer = hydra.utils.instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False, _convert_="all"
    )
    config = {
        k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
        for k, v in cfg.items()
        if k != "hydra"
    }  # Hydra's own node holds sweep-only values
    for logger in loggers:
        logger.log_hyperparams({"config": config})

    if cfg.get("train", True):
        trainer.fit(model=model, datamodule=datamodule, ckpt_path=ckpt)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}

    if cfg.get("test", False):
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        if not best or cfg.trainer.get("fast_dev_run"):
            log.warning("No best checkpoint: testing the current weights.")
            best = None
        trainer.test(model=model, datamodule=datamodule, ckpt_path=best, weights_only=True)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})

    if cfg.get("train", True):
        report_locations(trainer, str(cfg.paths.output_dir))
    for logger in loggers:
        if hasattr(logger, "experiment") and type(logger).__name__ == "WandbLogger":
            import wandb

            wandb.finish()
    return metrics
