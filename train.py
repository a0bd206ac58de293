"""Train a dstorm3d model: ``python train.py experiment=tetrapod_dense`` (configs/train.yaml)."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from dstorm3d.utils.cli import exit_on_bad_overrides, run_or_exit
from dstorm3d.utils.paths import register_root

register_root()


@hydra.main(version_base="1.3", config_path="configs", config_name="train.yaml")
def main(cfg: DictConfig) -> float | None:
    from dstorm3d.training import train

    metrics = run_or_exit(train, cfg)
    return metrics.get(cfg.get("optimized_metric"))


if __name__ == "__main__":
    exit_on_bad_overrides("train.yaml")
    main()
