"""Compiled scoring programs kept on disk, so a later process runs them without tracing or lowering.

JAX's persistent compilation cache (`cli/compile_cache.py`) skips XLA's compile, but a process still
traces the Flax model and lowers it to StableHLO to find its entry: seconds per scoring program, most
of a second `launch.score` on three clips. This store keeps the compiled executable itself
(`jax.experimental.serialize_executable`) next to that cache, under `executables/`, keyed by a SHA-256
of everything the program is made from:

- the program's static spec (`program.ProgramSpec`), the family and its model config, the compiler
  options;
- the abstract parameters and batch (every leaf's path, shape, dtype and sharding) and the mesh
  (shape, axis names, device platform and kind);
- the versions of jax, jaxlib and flax, `XLA_FLAGS`, the backend's platform version, the host key
  (the CPU's model and feature flags) and a digest of this package's source files, so any change to
  the code that builds the program makes a new key.

A miss compiles as before and writes the entry (atomically); an entry that fails to load is removed
and compiled again. It is on where the launch tools turn the persistent cache on
(`compile_cache.enable_from_flags` calls `enable`), in the same private directory, and off for library
use (tests, notebooks), which trace every program. Loading an entry runs what it holds, as JAX's own
cache does, so the directory must be the user's own: `compile_cache` refuses one that is not.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
from pathlib import Path
from typing import Any

import jax

_log = logging.getLogger(__name__)
SUBDIRECTORY = "executables"
_directory: Path | None = None
_source_digest: str | None = None


def enable(cache_dir: str | os.PathLike) -> Path:
    """Keeps compiled scoring programs under `cache_dir`/executables (the persistent cache's directory)."""
    global _directory
    _directory = Path(cache_dir) / SUBDIRECTORY
    _directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    return _directory


def disable() -> None:
    global _directory
    _directory = None


def directory() -> Path | None:
    """Where entries are kept; None when the store is off."""
    return _directory


def source_digest() -> str:
    """SHA-256 of every .py file of the agac_jax package, by relative path (computed once a process)."""
    global _source_digest
    if _source_digest is None:
        root = Path(__file__).resolve().parents[1]
        digest = hashlib.sha256()
        for path in sorted(root.rglob("*.py")):
            digest.update(str(path.relative_to(root)).encode())
            digest.update(path.read_bytes())
        _source_digest = digest.hexdigest()
    return _source_digest


def _leaf(x: Any) -> list[Any]:
    sharding = getattr(x, "sharding", None)
    spec = getattr(sharding, "spec", None)
    return [list(getattr(x, "shape", ())), str(getattr(x, "dtype", type(x).__name__)),
            None if spec is None else str(tuple(spec))]


def abstract(tree: Any) -> list[Any]:
    """[[path, shape, dtype, sharding spec], ...] of a pytree's leaves."""
    return [[jax.tree_util.keystr(path)] + _leaf(leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(tree)]


def program_key(**parts: Any) -> str:
    """The entry's key: `parts` (JSON-able, or their repr) with the versions, flags, host and source."""
    from agac_jax.cli.compile_cache import host_key

    import flax
    import jaxlib

    backend = jax.devices()[0].client
    everything = dict(parts, jax=jax.__version__, jaxlib=jaxlib.__version__, flax=flax.__version__,
                      xla_flags=os.environ.get("XLA_FLAGS", ""), platform_version=backend.platform_version,
                      host=host_key(), source=source_digest())
    text = json.dumps(everything, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()


def load(key: str, in_tree: Any, devices: list[Any]) -> Any | None:
    """The stored executable of `key` for arguments of structure `in_tree` on `devices`, or None."""
    from jax.experimental import serialize_executable

    if _directory is None:
        return None
    path = _directory / f"{key}.bin"
    if not path.is_file():
        return None
    try:
        payload, out_tree = pickle.loads(path.read_bytes())
        out = jax.tree_util.PyTreeDef.deserialize_using_proto(jax.tree_util.default_registry, out_tree)
        return serialize_executable.deserialize_and_load(payload, in_tree, out, execution_devices=devices)
    except Exception as error:  # noqa: BLE001 - a stale or broken entry: compile again
        _log.warning("removing the stored program %s, which did not load (%s: %s)", path.name,
                     type(error).__name__, error)
        path.unlink(missing_ok=True)
        return None


def save(key: str, compiled: Any, in_tree: Any) -> Path | None:
    """Writes `compiled` under `key` (atomically); None when the store is off or the program cannot be
    kept (its argument structure is not `in_tree`, or JAX cannot serialize it)."""
    from jax.experimental import serialize_executable

    if _directory is None:
        return None
    try:
        payload, stored_in_tree, out_tree = serialize_executable.serialize(compiled)
    except (ValueError, NotImplementedError) as error:
        _log.info("not storing a program JAX cannot serialize: %s", error)
        return None
    if stored_in_tree != in_tree:
        return None
    path = _directory / f"{key}.bin"
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_bytes(pickle.dumps((payload, out_tree.serialize_using_proto())))
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path
