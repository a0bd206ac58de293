"""Locations of the repository, its Hydra configs and the shared data."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO_ROOT / "configs"


def register_root() -> Path:
    """Export ``DSTORM3D_ROOT`` (read by ``configs/paths``) unless the user set it; return the root."""
    os.environ.setdefault("DSTORM3D_ROOT", str(REPO_ROOT))
    return Path(os.environ["DSTORM3D_ROOT"])


def shared_data_dir() -> Path:
    """``../shared/data`` beside the checkout, or ``$DSTORM3D_SHARED_DATA``."""
    return Path(os.environ.get("DSTORM3D_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
