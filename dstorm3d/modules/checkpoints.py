"""Loading any dstorm3d checkpoint (localizer or PSF design) with a clear error for anything else."""

from __future__ import annotations

from pathlib import Path

import torch

from dstorm3d.utils.cli import UserInputError


def module_classes() -> dict[str, type]:
    from dstorm3d.modules.localizer import LocalizerModule
    from dstorm3d.modules.psf_design import PSFDesignModule

    return {"LocalizerModule": LocalizerModule, "PSFDesignModule": PSFDesignModule}


def read_checkpoint_kind(path: str | Path) -> str:
    """The module class name stored in a dstorm3d checkpoint, or a one-line :class:`UserInputError`."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(
            f"checkpoint not found: {path} (give ckpt=<file.ckpt> from a dstorm3d training run)"
        )
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any loader failure is one line for the user
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserInputError(f"{path} is not a readable PyTorch checkpoint ({first[:200]})") from None
    info = raw.get("dstorm3d") if isinstance(raw, dict) else None
    if not isinstance(info, dict) or info.get("kind") not in module_classes():
        raise UserInputError(
            f"{path} is not a dstorm3d localization checkpoint (no 'dstorm3d' record): use a checkpoint "
            "written by train.py or by `python -m dstorm3d.import_weights`"
        )
    missing = [key for key in ("state_dict", "hyper_parameters") if not raw.get(key)]
    if missing:
        raise UserInputError(
            f"{path} is an incomplete dstorm3d checkpoint (no {' or '.join(missing)}): use the "
            "file as train.py or `python -m dstorm3d.import_weights` wrote it"
        )
    return str(info["kind"])


def load_module(path: str | Path, map_location: str | torch.device = "cpu"):
    """A trained module, in eval mode, from a dstorm3d checkpoint alone; a damaged one (missing or
    mismatched tensors, unusable settings) is a one-line :class:`UserInputError`."""
    cls = module_classes()[read_checkpoint_kind(path)]
    try:
        module = cls.load_from_checkpoint(str(path), map_location=map_location, weights_only=True)
    except (RuntimeError, KeyError, TypeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserInputError(
            f"{path} cannot be loaded as a {cls.__name__} ({first[:200]}): the file is "
            "damaged or was edited; use the file as train.py wrote it"
        ) from None
    return module.eval()


#: What an inference-only copy of a checkpoint keeps (the rest is training state: optimizer moments,
#: schedulers, loops, callbacks).
INFERENCE_KEYS = (
    "state_dict",
    "hyper_parameters",
    "dstorm3d",
    "pytorch-lightning_version",
    "epoch",
    "global_step",
)


def export_for_inference(source: str | Path, destination: str | Path, overwrite: bool = False) -> Path:
    """Write a copy of a dstorm3d checkpoint without its training state (``INFERENCE_KEYS`` only): it
    loads with :func:`load_module` alike, about a third of the size for Adam-trained models, and cannot
    resume training. Returns the written path."""
    from dstorm3d.utils.files import atomic_write

    read_checkpoint_kind(source)
    raw = torch.load(Path(source), map_location="cpu", weights_only=True)
    kept = {key: raw[key] for key in INFERENCE_KEYS if key in raw}
    return atomic_write(Path(destination), lambda tmp: torch.save(kept, tmp), overwrite=overwrite)
