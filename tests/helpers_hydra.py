"""Composing the Hydra configs in-process, as train.py would, for tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from dstorm3d.utils.paths import CONFIG_DIR, register_root

EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))


@contextmanager
def composed(config_name: str, overrides: list[str], output_dir: Path) -> Iterator[DictConfig]:
    """The composed config with ``paths.output_dir`` pointing at ``output_dir``."""
    register_root()
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
        HydraConfig().set_config(cfg)
        with open_dict(cfg):
            cfg.paths.output_dir = str(output_dir)
            cfg.paths.log_dir = str(output_dir)
        try:
            yield cfg
        finally:
            GlobalHydra.instance().clear()
