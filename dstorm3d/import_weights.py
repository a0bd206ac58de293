"""Turn one of the authors' trained DeepSTORM3D networks into a dstorm3d checkpoint that ``infer.py`` accepts.

    python -m dstorm3d.import_weights                                   # preset=storm: the STORM network
    python -m dstorm3d.import_weights preset=telomere_learned           # the learned-PSF telomere network
    python -m dstorm3d.import_weights weights=<file.pkl> head.depth_slices=61 ... reference=null

Every DeepSTORM3D localization network has the paper's layout (reference.md §5): a trunk of six blocks
(``network.dilations``), ``head.upsampling`` ×2 stages, D = ``head.depth_slices`` output slices scaled by
``head.output_scale``; what differs between released networks is D, the dilations, the input
normalisation (counts / 250 for STORM, per-image min–max for the telomere demo), the detection threshold
and the optical setup with its mask. Presets (``configs/preset/``) hold the authors' two released networks.
Shapes that do not fit give a one-line error naming the option; dilations and normalisation leave the
shapes alone, so with a ``reference`` (a real input and the authors' own localizations of it) the imported
network is run on it and the import is refused unless it reproduces them.

The authors decoded with 9×9×9 local maxima and value-weighted centroids; their decoder places voxel ``c``
at ``(c + 2.5)·Δx/4`` laterally (a 2-voxel shift against dstorm3d's voxel centres, stored as
``lateral_offset_voxels``) and slice ``k`` at ``z_min + (k + ½)·Δz`` — the same as ours.
"""

from __future__ import annotations

import csv
import logging
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf

from dstorm3d.utils.cli import UserInputError, exit_on_bad_overrides, run_or_exit
from dstorm3d.utils.files import atomic_write
from dstorm3d.utils.paths import CONFIG_DIR, register_root

log = logging.getLogger(__name__)

AUTHORS_STORM_NETWORK: dict[str, Any] = {"channels": 64, "dilations": [1, 1, 2, 4, 8, 16]}
AUTHORS_HEAD_OPTIONS: dict[str, Any] = {
    "depth_slices": 121,
    "upsampling": 2,
    "output_scale": 800.0,
    "threshold": 40.0,
}
AUTHORS_STORM_NORMALIZATION: dict[str, Any] = {"kind": "scale", "offset": 0.0, "divisor": 250.0}
NETWORK_OPTIONS = ("channels", "dilations")
NORMALIZATION_OPTIONS = ("kind", "offset", "divisor")


def authors_head(
    depth_slices: int = 121, upsampling: int = 2, output_scale: float = 800.0, threshold: float = 40.0
) -> dict[str, Any]:
    """The head config of an authors' network: their volume head and decoder with these options
    (``threshold`` in output units, e.g. 40 = 0.05·s for the STORM network)."""
    return {
        "kind": "volume",
        "depth_slices": int(depth_slices),
        "upsampling": int(upsampling),
        "output_scale": float(output_scale),
        "activation": "hardtanh",
        "residual_blocks": 2,
        "loss": {"sigma_voxels": 1.0, "radius": 3, "overlap_weight": 1.0, "quantize": True},
        "postprocess": {
            "method": "centroid",
            "radius": 4,
            "threshold": float(threshold) / float(output_scale),
            "lateral_offset_voxels": 2.0,
            "z_offset_voxels": 0.0,
            "thresholds": [0.02, 0.03, 0.05, 0.08, 0.12, 0.2],
        },
    }


AUTHORS_STORM_HEAD: dict[str, Any] = authors_head()


def _options(
    group: str, given: Mapping[str, Any] | None, allowed: tuple[str, ...], defaults: Mapping[str, Any]
) -> dict[str, Any]:
    """``given`` over ``defaults``; an unknown key is a one-line error (no option is silently ignored)."""
    given = dict(given or {})
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise UserInputError(f"{group}: unknown option(s) {unknown}; the options are {list(allowed)}")
    return {**defaults, **given}


def _positive_int(name: str, value: Any, minimum: int = 1) -> int:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or int(value) != value
        or value < minimum
    ):
        raise UserInputError(f"{name} must be an integer ≥ {minimum}, got {value!r}")
    return int(value)


def _positive_float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) or value <= 0:
        raise UserInputError(f"{name} must be a positive number, got {value!r}")
    return float(value)


def network_options(
    network: Mapping[str, Any] | None, head: Mapping[str, Any] | None, normalization: Mapping[str, Any] | None
) -> tuple[dict, dict, dict]:
    """Validated ``(network, head, normalization)`` configs of an authors' network from the options."""
    network = _options("network", network, NETWORK_OPTIONS, AUTHORS_STORM_NETWORK)
    dilations = network["dilations"]
    if not isinstance(dilations, (list, tuple)) or not dilations:
        raise UserInputError(
            f"network.dilations must be a list with one dilation per trunk block, got {dilations!r}"
        )
    network = {
        "channels": _positive_int("network.channels", network["channels"]),
        "dilations": [_positive_int("network.dilations[]", d) for d in dilations],
    }
    options = _options("head", head, tuple(AUTHORS_HEAD_OPTIONS), AUTHORS_HEAD_OPTIONS)
    head_config = authors_head(
        _positive_int("head.depth_slices", options["depth_slices"]),
        _positive_int("head.upsampling", options["upsampling"], minimum=0),
        _positive_float("head.output_scale", options["output_scale"]),
        _positive_float("head.threshold", options["threshold"]),
    )
    given = dict(normalization or {})
    defaults = AUTHORS_STORM_NORMALIZATION if given.get("kind", "scale") == "scale" else {}
    normalization = _options("normalization", given, NORMALIZATION_OPTIONS, defaults)
    if normalization.get("kind") not in ("scale", "minmax"):
        raise UserInputError(f"normalization.kind must be scale or minmax, got {normalization.get('kind')!r}")
    if normalization["kind"] == "minmax":
        extra = sorted(set(normalization) - {"kind"})
        if extra:
            raise UserInputError(
                f"normalization: {extra} apply to kind=scale only (minmax maps each image to [0, 1])"
            )
    else:
        normalization["divisor"] = _positive_float("normalization.divisor", normalization["divisor"])
        normalization["offset"] = float(normalization["offset"])
    return network, head_config, normalization


def _option_for(message: str) -> str:
    """The option to change for a load error of :func:`load_authors_weights`."""
    if "z slices" in message:
        return "head.depth_slices"
    if "deconv" in message or "upsample" in message:
        return "head.upsampling"
    if "layer" in message and "has no place" in message:
        return "network.dilations (one entry per trunk block)"
    if "shape" in message:
        return "network.channels or head.depth_slices"
    return "the network options"


def build_authors_checkpoint(
    weights: str | Path,
    optics: dict[str, Any],
    simulation: dict[str, Any],
    network: Mapping[str, Any] | None = None,
    head: Mapping[str, Any] | None = None,
    normalization: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A Lightning checkpoint dict of a :class:`LocalizerModule` carrying the authors' weights (the options
    default to the STORM network's)."""
    from dstorm3d.models.pretrained import load_authors_weights
    from dstorm3d.modules.localizer import LocalizerModule

    weights = Path(weights)
    if not weights.is_file():
        raise UserInputError(f"authors' weights not found: {weights} (give weights=<.pkl state dict>)")
    network, head_config, normalization = network_options(network, head, normalization)
    module = LocalizerModule(
        optics=optics,
        simulation=simulation,
        network=network,
        head=head_config,
        normalization=normalization,
        metrics={"threshold_nm": 150.0},
    )
    try:
        load_authors_weights(module.net, weights)
    except (ValueError, RuntimeError) as exc:
        first = str(exc).splitlines()[0]
        raise UserInputError(f"{weights}: {first}: set {_option_for(first)} to match the weights") from None
    module.threshold.fill_(head_config["postprocess"]["threshold"] * head_config["output_scale"])
    checkpoint = {
        "state_dict": module.state_dict(),
        "hyper_parameters": dict(module.hparams),
        "pytorch-lightning_version": pl.__version__,
        "epoch": 0,
        "global_step": 0,
    }
    module.on_save_checkpoint(checkpoint)
    checkpoint["dstorm3d"]["source"] = f"authors' weights {weights.name}"
    return checkpoint


def read_reference(path: Path, frame: int) -> np.ndarray:
    """The authors' localizations ``(n, 3)`` nm of one frame from their CSV (frame, x_nm, y_nm, z_nm,
    conf)."""
    with open(path, newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if int(float(r["frame"])) == int(frame)]
    return np.array([[float(r["x_nm"]), float(r["y_nm"]), float(r["z_nm"])] for r in rows]).reshape(-1, 3)


def check_against_reference(
    checkpoint: dict[str, Any],
    reference: Mapping[str, Any],
    tolerance_nm: float,
    min_fraction: float,
    max_extra: float,
) -> dict[str, Any]:
    """Run the imported network on the reference input; refuse (one line) unless it reproduces at least
    ``min_fraction`` of the authors' localizations within ``tolerance_nm`` with at most ``max_extra`` of
    ours extra. Returns the agreement, recorded in the checkpoint."""
    import tifffile

    from dstorm3d.metrics.matching import tolerance_agreement
    from dstorm3d.models.tiling import localize_frames
    from dstorm3d.modules.checkpoints import load_module

    frames, table = Path(str(reference["frames"])), Path(str(reference["localizations"]))
    for path in (frames, table):
        if not path.is_file():
            raise UserInputError(
                f"reference file not found: {path} (pass reference=null to import without a check)"
            )
    with tempfile.TemporaryDirectory() as folder:  # loaded as infer.py will load it
        torch.save(checkpoint, Path(folder) / "imported.ckpt")
        module = load_module(Path(folder) / "imported.ckpt")
    image = tifffile.imread(frames).astype(np.float32)
    image = image[0] if image.ndim == 3 else image
    crop = reference.get("crop")
    if crop is not None:
        r0, r1, c0, c1 = (int(v) for v in crop)
        image = image[r0:r1, c0:c1]
    with torch.inference_mode():
        found = localize_frames(module, torch.as_tensor(np.ascontiguousarray(image))[None], head_tile=64)
    ours = found.xyz[0][found.valid[0]].double().numpy() * 1e3
    theirs = read_reference(table, int(reference.get("frame", 1)))
    reproduced, extra = tolerance_agreement(ours, theirs, tolerance_nm)
    result = {
        "frames": str(frames),
        "localizations": str(table),
        "authors": len(theirs),
        "ours": len(ours),
        "reproduced": reproduced,
        "extra": extra,
        "tolerance_nm": float(tolerance_nm),
    }
    if len(theirs) == 0 or reproduced < min_fraction * len(theirs) or extra > max_extra * max(len(theirs), 1):
        raise UserInputError(
            f"the imported network reproduces {reproduced} of the authors' {len(theirs)} localizations of "
            f"{frames.name} within {tolerance_nm:g} nm (it found {len(ours)}, {extra} of them extra): its "
            "options do not match the weights; check network.dilations, normalization.kind, head.threshold "
            "and the optics (or pass reference=null to import unchecked)"
        )
    return result


def import_weights(cfg: DictConfig) -> Path:
    """The body of ``python -m dstorm3d.import_weights``: build, check against the reference, write."""
    out = Path(str(cfg.out))
    if out.exists() and not bool(cfg.overwrite):
        raise UserInputError(f"{out} exists: pass overwrite=true or choose another out=<file.ckpt>")
    plain = {
        key: OmegaConf.to_container(cfg[key], resolve=True) if cfg.get(key) is not None else None
        for key in ("optics", "simulation", "network", "head", "normalization", "reference")
    }
    checkpoint = build_authors_checkpoint(
        cfg.weights,
        plain["optics"],
        plain["simulation"],
        plain["network"],
        plain["head"],
        plain["normalization"],
    )
    if plain["reference"]:
        check = check_against_reference(
            checkpoint,
            plain["reference"],
            float(cfg.reference_tolerance_nm),
            float(cfg.reference_min_fraction),
            float(cfg.reference_max_extra),
        )
        checkpoint["dstorm3d"]["reference_check"] = check
        log.info(
            "reference check: %d of the authors' %d localizations reproduced within %g nm, %d extra",
            check["reproduced"],
            check["authors"],
            check["tolerance_nm"],
            check["extra"],
        )
    else:
        log.warning(
            "no reference input: the imported network is unchecked (wrong dilations or normalisation "
            "would go unnoticed)"
        )
    atomic_write(out, lambda p: torch.save(checkpoint, p), overwrite=bool(cfg.overwrite))
    log.info("wrote %s", out)
    print(f"wrote {out}")
    return out


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="import_weights.yaml")
def main(cfg: DictConfig) -> None:
    run_or_exit(import_weights, cfg)


if __name__ == "__main__":
    register_root()
    exit_on_bad_overrides("import_weights.yaml")
    main()
