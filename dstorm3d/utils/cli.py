"""Command-line error handling: bad input ends with one line and a non-zero exit, not a traceback."""

from __future__ import annotations

import logging
import sys
from typing import Any, Callable, TypeVar

from omegaconf.errors import OmegaConfBaseException

from dstorm3d.errors import UserInputError

log = logging.getLogger(__name__)
T = TypeVar("T")

EXIT_USAGE = 2


def user_errors() -> tuple[type[BaseException], ...]:
    """Errors that end a command with one line and exit code 2 (every dstorm3d user error is a
    :class:`UserInputError`; missing or existing files and config errors come from Python and OmegaConf)."""
    return (UserInputError, FileNotFoundError, FileExistsError, OmegaConfBaseException)


def set_threads(threads: Any) -> None:
    """``threads``: torch's CPU threads (``None``: its default, all cores)."""
    if threads is None:
        return
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise UserInputError(f"threads must be a whole number ≥ 1 or null (all cores), got {threads!r}")
    import torch

    torch.set_num_threads(threads)


class _DropAdvertisements(logging.Filter):
    """Lightning's "💡 Tip: ... try installing litlogger" line, printed by every Trainer."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith("💡 Tip")


def quiet_third_party_noise() -> None:
    """Silence lines every command printed that tell the user nothing about their run: Lightning's
    advertisement and a deprecation warning inside Lightning's own code (``_pytree``'s ``LeafSpec``)."""
    import warnings

    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    for name in ("pytorch_lightning.utilities.rank_zero", "lightning.pytorch.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropAdvertisements) for f in logger.filters):
            logger.addFilter(_DropAdvertisements())


def one_line(exc: BaseException) -> str:
    """The message of an error in one line. An error re-raised from a DataLoader worker ("Caught X in
    DataLoader worker process N. Original Traceback ...") gives the original message, not the wrapper's."""
    text = str(exc).strip()
    if not text:
        return type(exc).__name__
    lines = [line for line in text.splitlines() if line.strip()]
    if lines[0].startswith("Caught ") and "DataLoader worker" in lines[0] and len(lines) > 1:
        prefix = f"{type(exc).__name__}: "
        last = lines[-1].strip()
        return last[len(prefix):] if last.startswith(prefix) else last
    return lines[0]


def run_or_exit(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call ``function``; on a user-input error print ``error: <message>`` and exit with status 2."""
    quiet_third_party_noise()
    try:
        return function(*args, **kwargs)
    except user_errors() as exc:
        message = one_line(exc)
        log.error(message)
        print(f"error: {message}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
