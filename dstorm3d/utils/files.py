"""Writing files safely: readers never see half a file, and a user's file is never overwritten silently."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: str | Path, write: Callable[[Path], None], overwrite: bool = False) -> Path:
    """Call ``write(tmp)`` on a temporary file in the same folder, then rename it to ``path``.

    Raises ``FileExistsError`` when ``path`` exists and ``overwrite`` is false. The file gets the usual
    permissions (umask), not the private ones of a temporary file.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(
            f"{path} exists; refusing to overwrite it (pass overwrite=true or choose another name)"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()
    return path


LOCK_NAME = ".dstorm3d.lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


class FolderLock:
    """An exclusive claim on an output folder for one run: ``<folder>/.dstorm3d.lock`` holds the owner's
    PID. A second run on the same folder is refused at once (:class:`~dstorm3d.errors.UserInputError`); a
    lock left by a process that no longer exists (killed) is taken over. Released on exit, errors included."""

    def __init__(self, folder: str | Path, key: str = "out") -> None:
        self.folder, self.key = Path(folder), key
        self.path = self.folder / LOCK_NAME
        self.held = False

    def acquire(self) -> FolderLock:
        from dstorm3d.errors import UserInputError

        self.folder.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    owner = int(self.path.read_text().strip() or 0)
                except (OSError, ValueError):
                    owner = 0
                if owner and owner != os.getpid() and _alive(owner):
                    raise UserInputError(
                        f"{self.key}={self.folder} is in use by another run (process {owner}, "
                        f"lock {self.path}): wait for it to finish or choose another "
                        f"{self.key}=<folder>"
                    ) from None
                self.path.unlink(missing_ok=True)  # stale: its process is gone
                continue
            with os.fdopen(fd, "w") as handle:
                handle.write(str(os.getpid()))
            self.held = True
            return self
        raise UserInputError(f"{self.key}={self.folder}: could not take the lock {self.path}")

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
