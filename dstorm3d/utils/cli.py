"""Command-line error handling: bad input ends with one line and a non-zero exit, not a traceback."""

from __future__ import annotations

import logging
import sys
from typing import Any, Callable, TypeVar

from omegaconf.errors import OmegaConfBaseException

log = logging.getLogger(__name__)
T = TypeVar("T")

EXIT_USAGE = 2


class UserInputError(ValueError):
    """A problem with what the user asked for (file, setting); its message names the fix."""


def user_errors() -> tuple[type[BaseException], ...]:
    from dstorm3d.optics.masks import MaskError
    from dstorm3d.optics.setup import SetupError

    return (UserInputError, SetupError, MaskError, FileNotFoundError, FileExistsError, OmegaConfBaseException)


def run_or_exit(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call ``function``; on a user-input error print ``error: <message>`` and exit with status 2."""
    try:
        return function(*args, **kwargs)
    except user_errors() as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        log.error(message)
        print(f"error: {message}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
