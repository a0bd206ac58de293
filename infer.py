"""Localize a recording: ``python infer.py ckpt=<checkpoint> data=<tif or folder>`` (configs/infer.yaml)."""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from dstorm3d.utils.cli import exit_on_bad_overrides, recording_argument, run_or_exit
from dstorm3d.utils.paths import register_root

register_root()


@hydra.main(version_base="1.3", config_path="configs", config_name="infer.yaml")
def main(cfg: DictConfig) -> None:
    from dstorm3d.inference.run import infer

    run_or_exit(infer, cfg)


if __name__ == "__main__":
    sys.argv = recording_argument(sys.argv)
    exit_on_bad_overrides("infer.yaml")
    main()
