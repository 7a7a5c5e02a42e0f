"""Errors a user can fix end a command with one `error: ...` line; programming errors keep their traceback.

A launch script runs `errors.run(main)`: absl's `app.run` with `main` wrapped by `errors.main` and
flags parsed by `parse_flags`. A flag that does not parse, and an `app.UsageError` raised by `main`
(a bad flag value), end with one `error:` line and exit code 2 (absl would print its whole usage
text first); Ctrl-C ends with one `error: interrupted` line and exit code 130 (128 + SIGINT). When
`main` raises anything else, `user_error_message` decides:

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

from absl import app, flags

TRACEBACK_ENV = "AGAC_TRACEBACK"
EXIT_USER_ERROR = 2  # as launch.score's bad request; 1 stays "the check failed" (parity, failed clips)
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a command stopped by Ctrl-C
HELP_HINT = "see --helpshort"

USER_ERROR_CLASSES = frozenset({
    "agac_jax.models.hf_checkpoints.CheckpointError",
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


def _exit_with(message: str, code: int) -> None:
    """Writes `error: <message>` as one line on stderr and exits with `code`."""
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()
    sys.exit(code)


def _one_line(text: str) -> str:
    """The non-blank lines of `text`, stripped and joined by spaces."""
    return " ".join(line.strip() for line in str(text).splitlines() if line.strip())


def main(function: Callable[[list[str]], Any], interrupt_hint: str = "") -> Callable[[list[str]], Any]:
    """Wraps an absl `main`: a user error prints `error: <message>` on stderr and exits non-zero; a
    usage error prints one line and exits 2; Ctrl-C prints `error: interrupted<interrupt_hint>` and
    exits 130."""

    @functools.wraps(function)
    def wrapped(argv: list[str]) -> Any:
        try:
            return function(argv)
        except KeyboardInterrupt:
            if show_traceback():
                raise
            _exit_with(f"interrupted{interrupt_hint}", EXIT_INTERRUPTED)
        except app.UsageError as error:
            if show_traceback():
                raise
            _exit_with(f"{_one_line(error) or 'bad command line'} ({HELP_HINT})", EXIT_USER_ERROR)
        except Exception as error:  # noqa: BLE001 - sorted below; the rest is re-raised untouched
            message = user_error_message(error)
            if message is None or show_traceback():
                raise
            _exit_with(message, getattr(error, "exit_code", EXIT_USER_ERROR))

    return wrapped


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing for `app.run`, but a flag that does not parse ends with one `error:` line
    and exit code 2 (absl's own parser exits with 1 after two lines)."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as error:
        _exit_with(f"{_one_line(error)} ({HELP_HINT})", EXIT_USER_ERROR)


def run(function: Callable[[list[str]], Any], interrupt_hint: str = "") -> None:
    """`app.run` of `main(function, interrupt_hint)` with `parse_flags`: how every launch script starts."""
    app.run(main(function, interrupt_hint), flags_parser=parse_flags)
