"""Whole-file writes that a kill cannot leave half done: a temporary file in the same directory,
fsynced, then `os.replace`d over the target (and the directory fsynced), so readers see the previous
file or the new one. A kill leaves at most a hidden `.{name}.*.tmp` file, which the next write of
the same name removes when its writer is dead.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

_UMASK = os.umask(0o022)  # read once at import: the mode new files get (mkstemp's is 0600)
os.umask(_UMASK)


def _fsync_directory(directory: Path) -> None:
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # not possible on every platform; the rename itself is still atomic
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def _remove_leftovers(path: Path) -> None:
    """Removes `.{name}.{pid}.*.tmp` files of this name whose writing process is gone."""
    for leftover in path.parent.glob(f".{path.name}.*.tmp"):
        parts = leftover.name[len(path.name) + 2:].split(".")
        if parts and parts[0].isdigit() and int(parts[0]) != os.getpid():
            try:
                os.kill(int(parts[0]), 0)
            except ProcessLookupError:
                leftover.unlink(missing_ok=True)
            except OSError:
                pass


@contextlib.contextmanager
def atomic_open(path: Path | str, mode: str = "w", **kwargs) -> Iterator[IO]:
    """`open(path, mode)` whose content replaces `path` only when the block ends without an error."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files: mode 'w' or 'wb', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(path)
    descriptor, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    temporary = Path(name)
    try:
        with os.fdopen(descriptor, mode, **kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o666 & ~_UMASK)
        os.replace(temporary, path)
    except BaseException as error:
        temporary.unlink(missing_ok=True)
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT) and not error.filename:
            raise OSError(error.errno, error.strerror, str(path)) from error  # name the file being written
        raise
    _fsync_directory(path.parent)


def write_text(path: Path | str, text: str) -> Path:
    """Writes `text` (UTF-8) to `path` atomically; returns the path."""
    with atomic_open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    return Path(path)


def write_bytes(path: Path | str, data: bytes) -> Path:
    with atomic_open(path, "wb") as handle:
        handle.write(data)
    return Path(path)
