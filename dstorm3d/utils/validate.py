"""The validation kit of every command and config reader: typed, ranged settings, each refused with one line
that names the key, the value, what is allowed and how to fix it.

    batch = integer("batch_size", cfg.batch_size, minimum=1)              # infer.py batch_size=0 →
    # error: batch_size=0: must be a whole number ≥ 1 (e.g. batch_size=4)
    lr = number("model.optimizer.lr", cfg.model.optimizer.lr, above=0.0)

Errors are :class:`~dstorm3d.utils.cli.UserInputError` (a ``ValueError``), so library code that raised
``ValueError`` before raises the same kind of error now.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dstorm3d.utils.cli import UserInputError

#: Free space an output folder must have before a command starts writing (bytes).
MIN_FREE_BYTES = 64 * 1024 * 1024


def is_number(value: Any) -> bool:
    """A real number (Python or numpy), not a bool."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, (bool, np.bool_)
    )


def is_finite_number(value: Any) -> bool:
    return is_number(value) and math.isfinite(float(value))


def _bounds(minimum: float | None, maximum: float | None, above: float | None) -> str:
    parts = []
    if above is not None:
        parts.append(f"> {above:g}")
    if minimum is not None:
        parts.append(f"≥ {minimum:g}")
    if maximum is not None:
        parts.append(f"≤ {maximum:g}")
    return " and ".join(parts)


def number(
    key: str,
    value: Any,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    above: float | None = None,
    allow_none: bool = False,
    example: Any = None,
) -> float | None:
    """A finite number within the bounds (``above``: strictly greater), or ``None`` when allowed."""
    if value is None and allow_none:
        return None
    ok = is_finite_number(value)
    if ok:
        v = float(value)
        ok = (
            (minimum is None or v >= minimum)
            and (maximum is None or v <= maximum)
            and (above is None or v > above)
        )
    if not ok:
        raise UserInputError(
            _message(
                key,
                value,
                f"a number {_bounds(minimum, maximum, above)}".rstrip(),
                allow_none,
                example if example is not None else (minimum or above or 1),
            )
        )
    return float(value)


def integer(
    key: str,
    value: Any,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    allow_none: bool = False,
    example: Any = None,
) -> int | None:
    """A whole number within the bounds, or ``None`` when allowed."""
    if value is None and allow_none:
        return None
    ok = is_number(value) and math.isfinite(float(value)) and float(value) == int(value)
    if ok:
        v = int(value)
        ok = (minimum is None or v >= minimum) and (maximum is None or v <= maximum)
    if not ok:
        bounds = _bounds(minimum, maximum, None)
        raise UserInputError(
            _message(
                key,
                value,
                f"a whole number {bounds}".rstrip(),
                allow_none,
                example if example is not None else max(minimum or 1, 1),
            )
        )
    return int(value)


def choice(key: str, value: Any, options: Sequence[Any]) -> Any:
    if value not in options:
        raise UserInputError(f"{key}={value!r}: must be one of {', '.join(map(str, options))}")
    return value


def pair(key: str, value: Any, *, minimum: float | None = None) -> tuple[float, float]:
    """A ``[lo, hi]`` range with lo ≤ hi (a single number means ``[v, v]``)."""
    both = [value, value] if is_finite_number(value) else value
    if not (
        isinstance(both, (list, tuple))
        and len(both) == 2
        and all(is_finite_number(v) for v in both)
        and both[0] <= both[1]
        and (minimum is None or both[0] >= minimum)
    ):
        floor = f"{minimum:g} ≤ " if minimum is not None else ""
        raise UserInputError(
            f"{key}={value!r}: must be a number or [lo, hi] with {floor}lo ≤ hi "
            f"(e.g. {key}=[{minimum or 0:g},1])"
        )
    return float(both[0]), float(both[1])


def flag(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise UserInputError(f"{key}={value!r}: must be true or false")
    return value


def mapping(key: str, value: Any, known: Sequence[str] | None = None) -> dict[str, Any]:
    """A mapping, whose keys (when ``known`` is given) are all known."""
    if not isinstance(value, Mapping):
        raise UserInputError(f"{key}={value!r}: must be a mapping (e.g. {key}={{...}})")
    if known is not None:
        unknown = sorted(set(value) - set(known))
        if unknown:
            raise UserInputError(f"{key}: unknown key(s) {unknown}; known: {list(known)}")
    return dict(value)


def existing_file(
    key: str, value: Any, suffixes: Sequence[str] = (), *, allow_none: bool = False, example: str = "<file>"
) -> Path | None:
    """The path of an existing file whose name ends in one of ``suffixes`` (any name when empty), or
    ``None`` when allowed."""
    if value is None and allow_none:
        return None
    kinds = "/".join(suffixes) + " " if suffixes else ""
    if not isinstance(value, (str, Path)) or not str(value):
        raise UserInputError(_message(key, value, f"the path of a {kinds}file", allow_none, example))
    path = Path(value).expanduser()
    if suffixes and not path.name.lower().endswith(tuple(s.lower() for s in suffixes)):
        raise UserInputError(f"{key}={value}: must be a {kinds}file (e.g. {key}={example})")
    if not path.is_file():
        raise UserInputError(f"{key}={value}: no such file (e.g. {key}={example})")
    return path


def _message(key: str, value: Any, allowed: str, allow_none: bool, example: Any) -> str:
    tail = " or null" if allow_none else ""
    return f"{key}={value!r}: must be {allowed}{tail} (e.g. {key}={example})"


def writable_folder(key: str, folder: str | Path, min_free_bytes: int = MIN_FREE_BYTES) -> Path:
    """Check, before any work, that ``folder`` can be created and written and has ``min_free_bytes`` free;
    creates it (an empty folder is all it leaves behind)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".dstorm3d-write-check-"):
            pass
    except OSError as exc:
        raise UserInputError(
            f"{key}={folder}: cannot write there ({exc.strerror or exc}): choose another {key}=<folder>"
        ) from None
    free = shutil.disk_usage(folder).free
    if free < min_free_bytes:
        raise UserInputError(
            f"{key}={folder}: only {free / 1e6:.0f} MB free on its disk (need "
            f"{min_free_bytes / 1e6:.0f} MB): free some space or choose another {key}=<folder>"
        )
    return folder
