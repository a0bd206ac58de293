"""Turn the authors' trained DeepSTORM3D network into a dstorm3d checkpoint that ``infer.py`` accepts.

    python -m dstorm3d.import_weights                       # the paper's STORM network, printed Tetrapod
    python -m dstorm3d.import_weights out=authors_storm.ckpt weights=<file.pkl> optics=storm_printed

The authors' STORM network (reference.md §5; D = 121, s = 800) reads frames as counts / 250 and was
decoded with a threshold of 40 (0.05·s), 9×9×9 local maxima and value-weighted centroids; their decoder
places voxel ``c`` at ``(c + 2.5)·27.5 nm`` laterally (a 2-voxel shift against dstorm3d's voxel centres,
stored as ``lateral_offset_voxels``) and slice ``k`` at ``(k + ½)·4000/121 nm`` — the same as ours. With
these settings dstorm3d reproduces their published localizations of the mito frames (tests/inference).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf

from dstorm3d.utils.cli import UserInputError, run_or_exit
from dstorm3d.utils.files import atomic_write
from dstorm3d.utils.paths import CONFIG_DIR, register_root

log = logging.getLogger(__name__)

AUTHORS_STORM_NETWORK: dict[str, Any] = {"channels": 64, "dilations": [1, 1, 2, 4, 8, 16]}
AUTHORS_STORM_HEAD: dict[str, Any] = {
    "kind": "volume", "depth_slices": 121, "upsampling": 2, "output_scale": 800.0, "activation": "hardtanh",
    "residual_blocks": 2,
    "loss": {"sigma_voxels": 1.0, "radius": 3, "overlap_weight": 1.0, "quantize": True},
    "postprocess": {"method": "centroid", "radius": 4, "threshold": 0.05, "lateral_offset_voxels": 2.0,
                    "z_offset_voxels": 0.0, "thresholds": [0.02, 0.03, 0.05, 0.08, 0.12, 0.2]},
}
AUTHORS_STORM_NORMALIZATION: dict[str, Any] = {"kind": "scale", "offset": 0.0, "divisor": 250.0}


def build_authors_checkpoint(weights: str | Path, optics: dict[str, Any], simulation: dict[str, Any]) -> dict[str, Any]:
    """A Lightning checkpoint dict of a :class:`LocalizerModule` carrying the authors' weights."""
    from dstorm3d.models.pretrained import load_authors_weights
    from dstorm3d.modules.localizer import LocalizerModule

    weights = Path(weights)
    if not weights.is_file():
        raise UserInputError(f"authors' weights not found: {weights} (give weights=<.pkl state dict>)")
    module = LocalizerModule(optics=optics, simulation=simulation, network=AUTHORS_STORM_NETWORK,
                             head=AUTHORS_STORM_HEAD, normalization=AUTHORS_STORM_NORMALIZATION,
                             metrics={"threshold_nm": 150.0})
    try:
        load_authors_weights(module.net, weights)
    except (ValueError, RuntimeError) as exc:
        raise UserInputError(f"{weights}: {str(exc).splitlines()[0]}") from None
    module.threshold.fill_(AUTHORS_STORM_HEAD["postprocess"]["threshold"] * AUTHORS_STORM_HEAD["output_scale"])
    checkpoint = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                  "pytorch-lightning_version": pl.__version__, "epoch": 0, "global_step": 0}
    module.on_save_checkpoint(checkpoint)
    checkpoint["dstorm3d"]["source"] = f"authors' weights {weights.name}"
    return checkpoint


def import_weights(cfg: DictConfig) -> Path:
    optics = OmegaConf.to_container(cfg.optics, resolve=True)
    simulation = OmegaConf.to_container(cfg.simulation, resolve=True)
    checkpoint = build_authors_checkpoint(cfg.weights, optics, simulation)
    out = Path(cfg.out)
    atomic_write(out, lambda p: torch.save(checkpoint, p), overwrite=bool(cfg.overwrite))
    log.info("wrote %s", out)
    print(f"wrote {out}")
    return out


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="import_weights.yaml")
def main(cfg: DictConfig) -> None:
    run_or_exit(import_weights, cfg)


if __name__ == "__main__":
    register_root()
    main()
