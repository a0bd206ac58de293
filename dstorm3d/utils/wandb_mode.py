"""Run W&B online when it can, offline when it cannot — never prompt for a login."""

from __future__ import annotations

import logging
import netrc
import os
import socket
from pathlib import Path

log = logging.getLogger(__name__)


def has_wandb_credentials() -> bool:
    """An API key in ``WANDB_API_KEY`` or in ``~/.netrc`` for api.wandb.ai."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        path = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
        return path.is_file() and netrc.netrc(path).authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def wandb_reachable(host: str = "api.wandb.ai", port: int = 443, timeout_s: float = 1.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def choose_wandb_mode() -> str:
    """Set ``WANDB_MODE`` to ``offline`` unless the user chose a mode or W&B is usable; return the mode."""
    os.environ.setdefault("WANDB_SILENT", "true")
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if not has_wandb_credentials():
        reason = "no W&B API key (WANDB_API_KEY or `wandb login`)"
    elif not wandb_reachable():
        reason = "W&B is not reachable"
    else:
        return "online"
    os.environ["WANDB_MODE"] = "offline"
    log.info(
        "W&B runs offline: %s. The run's folder and its `wandb sync` command are printed at the end.", reason
    )
    return "offline"
