"""The persistent XLA compilation cache of the launch tools and the sweep.

Every `launch.*` tool that compiles (score, evaluate and so the sweep, study, train, parity) calls
`enable_from_flags()` first, so a second run of the same programs loads them from disk instead of
compiling them again (a second `launch.score` on the same buckets, a resumed sweep).

Where it lives, first that applies:

1. `--compilation_cache_dir=PATH` or `AGAC_JAX_CACHE_DIR=PATH`;
2. JAX's own setting (`JAX_COMPILATION_CACHE_DIR`, or `jax_compilation_cache_dir` set before), kept as is;
3. `$XDG_CACHE_HOME/agac_jax/jax_cache/<host key>` (`~/.cache/...` without XDG_CACHE_HOME).

Opt out with `--nocompilation_cache` or `AGAC_JAX_COMPILATION_CACHE=0`.

Beside JAX's entries, `executables/` keeps the compiled scoring programs themselves
(`agac_jax.scoring.executables`), so a second run skips tracing and lowering them too.

Keys. JAX keys each entry by the program's HLO, the compile options, the jaxlib version, the
backend's platform version, the devices and the XLA flags. XLA:CPU compiles for the host's own
vector extensions, so the default directory adds `host_key()`: the machine, the CPU model and a
hash of its feature flags, so a home directory shared by machines with different CPUs never hands
one of them code for instructions it lacks. JAX runs what it finds in the cache, so a directory that
another user owns or may write to is refused (the cache is left off, with a warning on stderr) and
a directory made here is private to the user (mode 0700).

Entries are written for every compilation (`jax_persistent_cache_min_compile_time_secs` 0, unless
the environment sets JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS): the small generation programs
compile in under a second each, and a second run should compile none of them.
"""

from __future__ import annotations

import hashlib
import os
import platform
import stat
import sys
from pathlib import Path

from absl import flags

ENABLE_ENV = "AGAC_JAX_COMPILATION_CACHE"  # "0", "false", "no" or "off": no persistent cache
DIR_ENV = "AGAC_JAX_CACHE_DIR"
JAX_DIR_ENV = "JAX_COMPILATION_CACHE_DIR"
MIN_TIME_ENV = "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"
_OFF = ("0", "false", "no", "off")

if "compilation_cache" not in flags.FLAGS:
    flags.DEFINE_bool("compilation_cache", True, "Keep compiled XLA programs on disk for the next run "
                      f"(agac_jax/cli/compile_cache.py; {ENABLE_ENV}=0 also turns it off).")
if "compilation_cache_dir" not in flags.FLAGS:
    flags.DEFINE_string("compilation_cache_dir", None, "Directory of the persistent compilation cache (default: "
                        f"${DIR_ENV}, else $XDG_CACHE_HOME/agac_jax/jax_cache/<host key>).")


def host_key() -> str:
    """`<machine>-<12 hex digits>`: the CPU's architecture, and a hash of its model name and feature flags
    (Linux /proc/cpuinfo; the processor string elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        fields = {}
        for line in text.splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
        description = f"{fields.get('model name', '')}|{' '.join(sorted(fields.get('flags', '').split()))}"
    except OSError:
        description = platform.processor()
    digest = hashlib.sha256(description.encode("utf-8")).hexdigest()[:12]
    return f"{platform.machine() or 'unknown'}-{digest}"


def default_directory() -> Path:
    """$XDG_CACHE_HOME/agac_jax/jax_cache/<host key> (XDG_CACHE_HOME defaults to ~/.cache)."""
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "agac_jax" / "jax_cache" / host_key()


def unsafe_reason(directory: Path) -> str | None:
    """Why JAX must not load programs from `directory` (owned by another user, or writable by others), or
    None when it is safe. A missing directory is safe (it is made private)."""
    try:
        info = directory.stat()
    except FileNotFoundError:
        return None
    if not stat.S_ISDIR(info.st_mode):
        return f"{directory} is not a directory"
    if hasattr(os, "getuid") and info.st_uid != os.getuid():
        return f"{directory} belongs to another user"
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not info.st_mode & stat.S_ISVTX:
        return f"{directory} may be written by other users"
    return None


def requested(flag_enabled: bool = True, flag_directory: str | None = None,
              jax_directory: str | None = None) -> tuple[bool, Path | None]:
    """(whether the cache is wanted, the directory to set or None to keep JAX's own) from the flag values,
    JAX's current `jax_compilation_cache_dir` and the environment (module docstring)."""
    if not flag_enabled or os.environ.get(ENABLE_ENV, "").strip().lower() in _OFF:
        return False, None
    explicit = flag_directory or os.environ.get(DIR_ENV)
    if explicit:
        return True, Path(explicit).expanduser()
    if jax_directory or os.environ.get(JAX_DIR_ENV):
        return True, None
    return True, default_directory()


def enable(enabled: bool = True, directory: Path | str | None = None) -> Path | None:
    """Turns the persistent compilation cache on (or, with `enabled` False, off) for this process.

    Args:
        enabled: False turns JAX's persistent cache off, whatever sets it.
        directory: the cache directory; None: `requested`'s choice (JAX's own setting, else the default).

    Returns:
        The directory in use, or None when the cache is off.
    """
    import jax
    from jax.experimental.compilation_cache import compilation_cache

    from agac_jax.scoring import executables

    wanted, chosen = requested(enabled, str(directory) if directory is not None else None,
                               jax.config.jax_compilation_cache_dir)
    executables.disable()
    if not wanted:
        jax.config.update("jax_enable_compilation_cache", False)
        compilation_cache.reset_cache()
        return None
    if chosen is not None:
        reason = unsafe_reason(chosen)
        if reason is not None:
            print(f"warning: persistent compilation cache off: {reason}", file=sys.stderr)
            jax.config.update("jax_enable_compilation_cache", False)
            compilation_cache.reset_cache()
            return None
        chosen.mkdir(parents=True, exist_ok=True, mode=0o700)
        jax.config.update("jax_compilation_cache_dir", str(chosen))
    if MIN_TIME_ENV not in os.environ:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_enable_compilation_cache", True)
    compilation_cache.reset_cache()  # a compilation before this call may have settled "no cache" already
    in_use = Path(jax.config.jax_compilation_cache_dir)
    if unsafe_reason(in_use) is None:  # the compiled scoring programs themselves, beside JAX's entries
        executables.enable(in_use)
    return in_use


def enable_from_flags() -> Path | None:
    """`enable` from `--compilation_cache`, `--compilation_cache_dir` and the environment; what a launch
    tool's main calls first."""
    return enable(flags.FLAGS.compilation_cache, flags.FLAGS.compilation_cache_dir)


class CompileTally:
    """What this process has spent making XLA programs since `start()`, from JAX's monitoring events:
    `programs` compiled or loaded (`backend_compile_duration`: XLA's compile, or the persistent cache's
    load, of every jitted function; the scoring and generation programs and the small selection and
    helper ones alike), `loaded` of them from the persistent cache, and the seconds of each step
    (`compile_s` includes the loads; `trace_s` and `lower_s` are the Python tracing and the lowering to
    StableHLO, which a cache hit still pays). One tally per process (`tally()`): JAX's listeners cannot
    be removed, so they are registered once."""

    def __init__(self) -> None:
        self.programs = self.loaded = 0
        self.compile_s = self.trace_s = self.lower_s = 0.0

    def start(self) -> "CompileTally":
        self.__init__()
        return self

    def on_duration(self, event: str, seconds: float, **_: object) -> None:
        from jax._src import dispatch  # the event names (JAX has no public constants for them)

        if event == dispatch.BACKEND_COMPILE_EVENT:
            self.programs += 1
            self.compile_s += seconds
        elif event == dispatch.JAXPR_TRACE_EVENT:
            self.trace_s += seconds
        elif event == dispatch.JAXPR_TO_MLIR_MODULE_EVENT:
            self.lower_s += seconds

    def on_event(self, event: str, **_: object) -> None:
        if event == "/jax/compilation_cache/cache_hits":
            self.loaded += 1

    def as_dict(self) -> dict[str, float]:
        return dict(programs=self.programs, loaded=self.loaded, compile_s=round(self.compile_s, 2),
                    trace_s=round(self.trace_s, 2), lower_s=round(self.lower_s, 2))

    def summary(self) -> str:
        return (f"{self.programs} XLA programs ({self.loaded} loaded from the persistent cache): "
                f"{self.compile_s:.1f} s compiling or loading them, {self.trace_s + self.lower_s:.1f} s tracing "
                "and lowering")


_TALLY: CompileTally | None = None


def tally() -> CompileTally:
    """The process's `CompileTally`, its JAX listeners registered on first use."""
    global _TALLY
    if _TALLY is None:
        import jax

        _TALLY = CompileTally()
        jax.monitoring.register_event_duration_secs_listener(_TALLY.on_duration)
        jax.monitoring.register_event_listener(_TALLY.on_event)
    return _TALLY
