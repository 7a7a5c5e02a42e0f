"""Multi-host evaluation: starting JAX's distributed runtime, the shard rule, and shard manifests.

Every host of a pod runs the same `launch.evaluate` command with `--config.runtime.distributed=True`;
each scores its own shard on its local devices (`scorer.make_mesh`), writes `results.{i}.jsonl` and
`shard.{i}-of-{n}.json` in the shared workdir, and `--merge` builds the tables once every shard is complete.

Decisions:
- Coordinator. `runtime.coordinator_address`, `runtime.num_processes`, `runtime.process_id` ("" / -1:
  unset) are passed to `jax.distributed.initialize` only when set: on a TPU pod (and under SLURM or
  Open MPI) JAX finds them in the environment; on other GPU clusters they are given explicitly.
- Shard rule. Sample s belongs to process `sha256(s.sample_id) mod n` (`shard_of`): a function of the
  sample's own key, so neither the loader's order (a directory listing can differ between hosts)
  nor other samples appearing or vanishing moves it; the price is that shards differ in size by
  chance (about sqrt(N / n) samples), which is small next to the spread of clip lengths.
- A different host count on resume re-shards by key, and is allowed: every process skips every key
  recorded in any results file of the workdir (`results.done_keys` reads them all), so nothing done
  is lost or redone whichever process wrote it. Process 0 removes the manifests of other counts when
  it starts (named by count, so it never touches one of the new run's), and the merge judges the
  layout of process 0's manifest. Refusing instead would strand a run whose slice changed
  size (a preempted v4-32 resumed on a v4-16) for no gain in safety.
- Manifests. Each process writes `shard.{i}-of-{n}.json` (its index, the process count, the records its
  shard plans, how many were pending at its start, complete or not) atomically when it starts and
  again, complete, when it finishes. `shard_problems` turns a missing shard, an incomplete one, a
  manifest of another process count, or a complete shard whose records are not all in the results
  files (a workdir that is not one shared directory) into messages naming the shard; `sweep.merge`
  refuses while there are any, unless asked to merge what there is.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import socket
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from absl import logging

from agac_jax.errors import ConfigError, UserError

MANIFEST_GLOB = "shard.*-of-*.json"
SHARD_RULE = "sha256(sample_id) mod process_count"


class IncompleteShardsError(UserError, ValueError):
    """A merge was asked for while a shard is missing or incomplete; the message names each one."""


# --- start-up ------------------------------------------------------------------------------------


def coordinator_arguments(runtime: Any) -> dict[str, Any] | None:
    """The keyword arguments of `jax.distributed.initialize` from a config's runtime section, or None
    when `runtime.distributed` is off. Unset fields ("" / -1) are left for JAX to find in the
    environment (TPU pods, SLURM, Open MPI).

    Raises:
      ConfigError: a coordinator field is set while `distributed` is off, or the values contradict.
    """
    address = str(runtime.get("coordinator_address", "") or "")
    bind_address = str(runtime.get("coordinator_bind_address", "") or "")
    num_processes = int(runtime.get("num_processes", -1))
    process_id = int(runtime.get("process_id", -1))
    timeout = int(runtime.get("initialization_timeout_s", 300))
    explicit = {name: value for name, value in (
        ("coordinator_address", address), ("coordinator_bind_address", bind_address),
        ("num_processes", num_processes), ("process_id", process_id)) if value not in ("", -1)}
    if not runtime.get("distributed", False):
        if explicit:
            raise ConfigError(f"config.runtime sets {sorted(explicit)} but runtime.distributed is False; set "
                             "--config.runtime.distributed=True to start a multi-process run")
        return None
    if num_processes != -1 and num_processes < 1:
        raise ConfigError(f"config.runtime.num_processes must be >= 1 (or -1: from the environment), got {num_processes}")
    if process_id < -1 or (num_processes != -1 and process_id >= num_processes):
        raise ConfigError(f"config.runtime.process_id must lie in [0, num_processes={num_processes}) "
                         f"(or -1: from the environment), got {process_id}")
    if timeout < 1:
        raise ConfigError(f"config.runtime.initialization_timeout_s must be >= 1, got {timeout}")
    return {**explicit, "initialization_timeout": timeout}


def initialize(runtime: Any) -> tuple[int, int]:
    """Starts JAX's distributed runtime when the config asks for it; returns (process index, count)."""
    import jax

    arguments = coordinator_arguments(runtime)
    if arguments is not None:
        shown = {key: value for key, value in arguments.items() if key != "initialization_timeout"}
        logging.info("jax.distributed.initialize(%s)", ", ".join(f"{k}={v!r}" for k, v in shown.items())
                     or "from the environment")
        jax.distributed.initialize(**arguments)
    logging.info("JAX process %d of %d, %d local devices (%s)", jax.process_index(), jax.process_count(),
                 jax.local_device_count(), jax.default_backend())
    return jax.process_index(), jax.process_count()


# --- the shard rule ------------------------------------------------------------------------------


def shard_of(sample_id: str, process_count: int) -> int:
    """The process whose shard holds `sample_id`: sha256 of the id, modulo the process count."""
    if process_count < 1:
        raise ValueError(f"process_count must be >= 1, got {process_count}")
    digest = hashlib.sha256(sample_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % process_count


# --- manifests -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ShardManifest:
    """What one process knows about its shard (`shard.{process_index}-of-{process_count}.json`).

    planned: records of every sample of the shard (done ones included); pending_before: those not
    yet recorded when this process started; written, failed: records this process wrote (failed ones
    among them); complete: the process went through its whole shard.
    """

    process_index: int
    process_count: int
    planned: int
    pending_before: int
    complete: bool
    written: int = 0
    failed: int = 0
    host: str = ""
    pid: int = 0
    updated: float = 0.0
    rule: str = SHARD_RULE

    @property
    def name(self) -> str:
        return manifest_path(".", self.process_index, self.process_count).name


def manifest_path(workdir: Path | str, process_index: int, process_count: int) -> Path:
    return Path(workdir) / f"shard.{process_index}-of-{process_count}.json"


def write_manifest(workdir: Path | str, manifest: ShardManifest) -> Path:
    """Writes `shard.{i}-of-{n}.json` atomically (a temporary file named by host and pid, then a rename)."""
    manifest = dataclasses.replace(manifest, host=manifest.host or socket.gethostname(),
                                   pid=manifest.pid or os.getpid(), updated=time.time())
    path = manifest_path(workdir, manifest.process_index, manifest.process_count)
    temporary = path.with_name(f".{path.name}.{manifest.host}.{manifest.pid}.tmp")
    with temporary.open("w", encoding="utf-8") as handle:
        handle.write(json.dumps(dataclasses.asdict(manifest), indent=1, sort_keys=True) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    return path


def read_manifests(workdir: Path | str) -> list[ShardManifest]:
    """The workdir's manifests, by name (ValueError for an unreadable one, naming it)."""
    manifests = []
    for path in sorted(Path(workdir).glob(MANIFEST_GLOB)):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            manifest = ShardManifest(**data)
        except (json.JSONDecodeError, TypeError) as error:
            raise ValueError(f"{path}: not a shard manifest ({error})") from error
        if path.name != manifest.name:
            raise ValueError(f"{path} holds the manifest {manifest.name}")
        manifests.append(manifest)
    return manifests


def remove_stale_manifests(workdir: Path | str, process_count: int) -> list[int]:
    """Removes the manifests written by a run with another process count (a re-sharded resume);
    returns them. A manifest of this count is never touched (the name holds the count)."""
    stale = [manifest for manifest in read_manifests(workdir) if manifest.process_count != process_count]
    for manifest in stale:
        manifest_path(workdir, manifest.process_index, manifest.process_count).unlink(missing_ok=True)
    return stale


def shard_problems(workdir: Path | str, sample_ids: Iterable[str]) -> list[str]:
    """Why the workdir's results are not yet the whole run, one message per shard; empty when every
    shard is complete. `sample_ids`: the sample of each merged record (one per key).

    A workdir without any manifest (written before manifests existed) cannot be checked: a warning,
    no problems.
    """
    found = read_manifests(workdir)
    if not found:
        logging.warning("%s has no shard manifests (%s): cannot tell whether every shard is complete",
                        workdir, MANIFEST_GLOB)
        return []
    first = [m for m in found if m.process_index == 0] or found
    count = max(first, key=lambda m: m.updated).process_count  # process 0 removed the others when it started
    manifests = {m.process_index: m for m in found if m.process_count == count}
    recorded = [0] * count
    for sample_id in sample_ids:
        recorded[shard_of(sample_id, count)] += 1
    problems = []
    for index in range(count):
        manifest = manifests.get(index)
        where = f"shard {index} of {count}"
        if manifest is None:
            problems.append(f"{where} is missing (no {manifest_path(workdir, index, count).name}: process {index} "
                            "has not started, or its workdir is not this shared directory)")
        elif manifest.rule != SHARD_RULE:
            problems.append(f"{where}: {manifest.name} uses the shard rule {manifest.rule!r}, not {SHARD_RULE!r}")
        elif not manifest.complete:
            problems.append(f"{where} is incomplete: {recorded[index]} of its {manifest.planned} records are written "
                            f"(process {index} on host {manifest.host} has not finished, or was stopped; rerun it "
                            "with the same process id to resume)")
        elif recorded[index] < manifest.planned:
            problems.append(f"{where} is marked complete by host {manifest.host} but only {recorded[index]} of its "
                            f"{manifest.planned} records are in the results files here (is the workdir one shared "
                            "directory on every host?)")
    problems += [f"{m.name} is from a {m.process_count}-process run while this one has {count} processes (still "
                 f"running on host {m.host}? else rerun process 0 of the {count}-process run, which removes it)"
                 for m in found if m.process_count != count]
    return problems


def check_shards(workdir: Path | str, sample_ids: Sequence[str], *, allow_partial: bool = False) -> list[str]:
    """`shard_problems`, raised as `IncompleteShardsError` unless `allow_partial` (then logged)."""
    problems = shard_problems(workdir, sample_ids)
    if problems and not allow_partial:
        raise IncompleteShardsError(
            f"cannot merge {workdir}: " + "; ".join(problems) +
            ". Merge once every process has finished, or pass --allow_partial to build the tables from what is "
            "there.")
    for problem in problems:
        logging.warning("merging a partial run: %s", problem)
    return problems
