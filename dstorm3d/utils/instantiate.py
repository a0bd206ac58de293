"""Instantiate Lightning callbacks and loggers from Hydra config groups."""

from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig
from pytorch_lightning import Callback
from pytorch_lightning.loggers import Logger

log = logging.getLogger(__name__)


def instantiate_group(config: DictConfig | None, kind: str) -> list:
    """Every ``_target_`` entry of a config group (a dict of named entries)."""
    objects: list = []
    if not config:
        return objects
    if not isinstance(config, DictConfig):
        raise TypeError(f"the {kind} config must be a mapping of named entries")
    for _name, entry in config.items():
        if isinstance(entry, DictConfig) and "_target_" in entry:
            log.info("Instantiating %s <%s>", kind, entry._target_)
            objects.append(hydra.utils.instantiate(entry, _convert_="all"))
    return objects


def instantiate_callbacks(config: DictConfig | None) -> list[Callback]:
    return instantiate_group(config, "callback")


def instantiate_loggers(config: DictConfig | None) -> list[Logger]:
    loggers = instantiate_group(config, "logger")
    for logger in loggers:
        # Lightning's WandbLogger always passes ``anonymous`` to wandb.init (None when unset), and W&B
        # then prints "The anonymous setting has no effect" on every run: leave the setting out.
        init = getattr(logger, "_wandb_init", None)
        if isinstance(init, dict) and init.get("anonymous") is None:
            init.pop("anonymous", None)
    return loggers
