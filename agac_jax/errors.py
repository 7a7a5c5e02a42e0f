"""Errors a user can fix end a command with one `error: ...` line; programming errors keep their traceback.

A launch script runs `app.run(errors.main(main))`. When `main` raises, `user_error_message` decides:

- a `UserError` (bad config value, a workdir held by another writer, a results file that is not
  one, ...): its message;
- `OSError` for a full disk or quota (ENOSPC, EDQUOT) or a read-only filesystem (EROFS): the file,
  the free space on its filesystem and what to do;
- `FileNotFoundError`, `PermissionError`, `IsADirectoryError`, `NotADirectoryError`: a missing or
  unreadable input (the message names the path);
- the project's own input errors, by class name so nothing heavy is imported here:
  `USER_ERROR_CLASSES` (a checkpoint that does not fit the model, a codec backend or ffmpeg that is
  not installed, a token rate the codec lacks, a bad `launch.score` request);
- `ModuleNotFoundError` of an optional package (`OPTIONAL_PACKAGES`).

Everything else (a `ValueError` or `TypeError` from inside the code, an `AssertionError`, a missing
required package) is a bug or a broken installation and keeps its traceback. `--verbose` (defined
here) or `AGAC_TRACEBACK=1` in the environment shows the traceback of a user error too.
"""

from __future__ import annotations

import errno
import functools
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from absl import flags

TRACEBACK_ENV = "AGAC_TRACEBACK"
EXIT_USER_ERROR = 2  # as launch.score's bad request; 1 stays "the check failed" (parity, failed clips)

USER_ERROR_CLASSES = frozenset({
    "agac_jax.checkpoints.CheckpointError",
    "agac_jax.codec.base.BackendUnavailableError",
    "agac_jax.codec.base.UnsupportedTokenRateError",
    "agac_jax.data.avhbench.FfmpegNotFoundError",
    "agac_jax.data.avhbench.AudioExtractionError",
    "agac_jax.scoring.report.RequestError",
})
OPTIONAL_PACKAGES = frozenset({"semanticodec"})
_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}
_INPUT_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)

if "verbose" not in flags.FLAGS:
    flags.DEFINE_bool("verbose", False, f"Show the traceback of user errors too (or set {TRACEBACK_ENV}=1).")


class UserError(Exception):
    """Something the user can fix (config, inputs, environment); the message says what and how."""

    exit_code = EXIT_USER_ERROR


class ConfigError(UserError, ValueError):
    """A config value that is refused."""


def format_bytes(count: float) -> str:
    """'512 B', '3.2 MiB', '1.5 GiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if count < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def free_space(path: Path | str) -> str:
    """Free bytes on the filesystem of `path` (or of its nearest existing parent), formatted."""
    path = Path(path).absolute()
    for candidate in (path, *path.parents):
        try:
            return format_bytes(shutil.disk_usage(candidate).free)
        except OSError:
            continue
    return "unknown space"


def disk_full_message(path: Path | str | None, what: str = "writing") -> str:
    """The sentence for a full disk: the file, the free space left, and what to do."""
    where = f" {what} {path}" if path else ""
    left = f" ({free_space(path)} free on its filesystem)" if path else ""
    return (f"no space left on the device{where}{left}; free some space (or point --workdir elsewhere) "
            "and rerun the same command: it resumes where it stopped")


def is_disk_full(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)


def _class_names(error: BaseException) -> set[str]:
    return {f"{cls.__module__}.{cls.__qualname__}" for cls in type(error).__mro__}


def user_error_message(error: BaseException) -> str | None:
    """The one-line message of a user error, or None for an error that keeps its traceback."""
    if isinstance(error, UserError) or _class_names(error) & USER_ERROR_CLASSES:
        message = str(error)
    elif isinstance(error, OSError) and error.errno in _DISK_ERRNOS:
        if error.errno == errno.EROFS:
            message = f"read-only filesystem: cannot write {error.filename}"
        else:
            message = disk_full_message(error.filename)
    elif isinstance(error, _INPUT_ERRORS):
        message = str(error)
    elif isinstance(error, ModuleNotFoundError) and (error.name or "").split(".")[0] in OPTIONAL_PACKAGES:
        message = f"the optional package {error.name!r} is not installed ({error}); see the README"
    else:
        return None
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    return " ".join(lines) or type(error).__name__


def show_traceback() -> bool:
    if os.environ.get(TRACEBACK_ENV, "").strip().lower() not in ("", "0", "false", "no"):
        return True
    return flags.FLAGS.is_parsed() and bool(flags.FLAGS["verbose"].value)


def main(function: Callable[[list[str]], Any]) -> Callable[[list[str]], Any]:
    """Wraps an absl `main`: a user error prints `error: <message>` on stderr and exits non-zero."""

    @functools.wraps(function)
    def wrapped(argv: list[str]) -> Any:
        try:
            return function(argv)
        except Exception as error:  # noqa: BLE001 - sorted below; the rest is re-raised untouched
            message = user_error_message(error)
            if message is None or show_traceback():
                raise
            sys.stderr.write(f"error: {message}\n")
            sys.stderr.flush()
            sys.exit(getattr(error, "exit_code", EXIT_USER_ERROR))

    return wrapped
