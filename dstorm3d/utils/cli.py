"""Command-line error handling: bad input ends with one line and a non-zero exit, not a traceback."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from omegaconf.errors import OmegaConfBaseException

from dstorm3d.errors import UserInputError

log = logging.getLogger(__name__)
T = TypeVar("T")

EXIT_USAGE = 2


def recording_argument(argv: list[str]) -> list[str]:
    """``data=<path>`` → ``recording=<path>``: Hydra would read ``data=`` as choosing the training data
    config group (configs/data), so a command's recording travels under its own key."""
    return [f"recording={a[len('data=') :]}" if a.startswith("data=") else a for a in argv]


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
        return last[len(prefix) :] if last.startswith(prefix) else last
    return lines[0]


def log_to_files(message: str) -> None:
    """Record an error in the run's log file(s) only: the console gets the one ``error:`` line."""
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def run_or_exit(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call ``function``; on a user-input error print ``error: <message>`` and exit with status 2."""
    quiet_third_party_noise()
    try:
        return function(*args, **kwargs)
    except user_errors() as exc:
        message = one_line(exc)
        log_to_files(message)
        print(f"error: {message}", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def composition_message(exc: BaseException) -> str:
    """Hydra's composition error (several lines: the problem, then hints or the available options) as one
    line: its lines joined, the option lists comma-separated."""
    text = str(exc).split("Config search path:")[0]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    head, rest = lines[0], lines[1:]
    if rest and rest[0].endswith(":"):  # "Available options in 'experiment':" + one option per line
        return f"{head}; {rest[0]} {', '.join(rest[1:])}"
    return " ".join([head, *rest])


def exit_on_bad_overrides(config_name: str, argv: list[str] | None = None) -> None:
    """Compose ``configs/<config_name>`` with the command line's overrides before Hydra does, so that an
    unknown key, a missing config group option or a malformed override ends like every other user error:
    ``error: <one line>`` and exit code 2 (Hydra itself prints several lines and exits 1). Command lines
    with Hydra flags (``--cfg``, ``-m``, ``--help``…) are left to Hydra."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    from dstorm3d.utils.paths import CONFIG_DIR

    overrides = list(sys.argv[1:] if argv is None else argv)
    if any(arg.startswith("-") for arg in overrides):
        return
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            compose(
                config_name=config_name.removesuffix(".yaml"), overrides=overrides, return_hydra_config=True
            )
    except (HydraException, OmegaConfBaseException) as exc:
        print(f"error: {composition_message(exc)}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
