"""Score checkpoints on the paper's density benchmark: ``python evaluate.py ckpt=<checkpoint>`` or
``python evaluate.py ckpts=[a.ckpt,b.ckpt] labels=[Tetrapod,learned]`` (configs/evaluate.yaml)."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from dstorm3d.utils.cli import exit_on_bad_overrides, run_or_exit
from dstorm3d.utils.paths import register_root

register_root()


@hydra.main(version_base="1.3", config_path="configs", config_name="evaluate.yaml")
def main(cfg: DictConfig) -> None:
    from dstorm3d.evaluation.command import evaluate

    run_or_exit(evaluate, cfg)


if __name__ == "__main__":
    exit_on_bad_overrides("evaluate.yaml")
    main()
