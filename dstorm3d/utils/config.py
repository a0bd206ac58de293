"""Turning Hydra/OmegaConf objects into plain data (numbers, strings, lists, dicts)."""

from __future__ import annotations

from typing import Any


def plain(value: Any) -> Any:
    """Recursively convert OmegaConf containers, tuples and numpy scalars to plain Python data, so that
    checkpoints load with ``torch.load(weights_only=True)``."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(value, (DictConfig, ListConfig)):
            value = OmegaConf.to_container(value, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        return value.item()
    return value
