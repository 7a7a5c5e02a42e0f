"""Multi-host evaluation: starting JAX's distributed runtime, the shard rule, and shard manifests.

Every host of a pod runs the same `launch.evaluate` command with `--config.runtime.distributed=True`;
each scores its own shard on its local devices (`scorer.make_mesh`), writes `results.{i}.jsonl` and
`shard.{i}-of-{n}.json` in the shared workdir, and `--merge` builds the tables once every shard is complete.

Decisions:
- Coordinator. `runtime.coordinator_address`, `runtime.num_processes`, `runtime.process_id` ("" / -1:
  unset) are passed to `jax.distributed.initialize` only when set: on a TPU pod (and under SLURM or
  Open MPI) JAX finds them in the environment; on other GPU clusters they are given explicitly.
- Bind address. JAX's coordination service has no authentication, and JAX's default makes process 0
  listen on every interface (`[::]:PORT`). Here it listens on the coordinator address itself
  (`bind_address_of`; found with JAX's cluster detection when the environment gives it), so a
  loopback coordinator stays on loopback; a wider bind is `runtime.coordinator_bind_address` (or
  JAX_COORDINATOR_BIND_ADDRESS), never a default. A host name that resolves on process 0's host to
  loopback only is refused (`check_bind_host`): the others could not connect.
- A lost process. The runtime is started recoverable (`jax_enable_recoverability`), so when a process
  other than 0 dies the coordination service does not end the others: each finishes its shard.
  Process 0 then waits for every other process to leave or be declared dead (`finish`; JAX's
  recoverable shutdown does not wait, and the others need the coordinator until they leave) and
  returns the incomplete shards, which `launch.evaluate` prints as one line (exit code 1). A process
  restarted while process 0 runs joins again. When process 0 dies, JAX ends every other process
  (its error poll is fatal, in C++): nothing here can keep them. The restart is always the same:
  every process again, with the same ids. A process that cannot reach the coordinator within the
  initialization timeout ends with one line (`wait_for_coordinator`) instead of JAX's C++ abort.
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
import ipaddress
import json
import os
import socket
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from absl import logging

from agac_jax.cli.errors import ConfigError, UserError

MANIFEST_GLOB = "shard.*-of-*.json"
BIND_ENV = "JAX_COORDINATOR_BIND_ADDRESS"  # JAX's own setting of the bind address, honoured as explicit
SHARD_RULE = "sha256(sample_id) mod process_count"


class IncompleteShardsError(UserError, ValueError):
    """A merge was asked for while a shard is missing or incomplete; the message names each one."""


# --- start-up ------------------------------------------------------------------------------------


class CoordinatorUnreachableError(UserError, ConnectionError):
    """A process other than 0 could not reach the coordinator (process 0) in time."""


def split_address(address: str, field: str) -> tuple[str, int]:
    """(host, port) of `host:port` (an IPv6 host in brackets); ConfigError naming `field` otherwise."""
    host, separator, port = address.rpartition(":")
    if not separator or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"config.runtime.{field} must be host:port (an IPv6 host in brackets), got {address!r}")
    return host, int(port)


def _is_ip_literal(host: str) -> bool:
    """Whether `host` is an IPv4 or IPv6 address (brackets and a zone allowed), not a name."""
    try:
        ipaddress.ip_address(host.strip("[]").split("%")[0])
    except ValueError:
        return False
    return True


def check_bind_host(coordinator_address: str) -> None:
    """Refuses a default bind that would shut the other hosts out: a host name (not `localhost`) that
    resolves here to loopback addresses only (Debian's /etc/hosts maps the host's own name to
    127.0.1.1), where the coordinator would listen on an address no other host reaches."""
    host, port = split_address(coordinator_address, "coordinator_address")
    if host == "localhost" or _is_ip_literal(host):
        return
    try:
        found = {info[4][0] for info in socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)}
    except socket.gaierror as error:
        raise ConfigError(f"config.runtime.coordinator_address {coordinator_address!r}: {host} does not resolve on "
                          f"this host ({error})") from error
    if found and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in found):
        raise ConfigError(
            f"config.runtime.coordinator_address {coordinator_address!r}: {host} resolves to {sorted(found)} on this "
            "host, loopback addresses that processes on other hosts cannot reach, so the coordinator would listen "
            "where they cannot connect. Give process 0's network address (IP:PORT; 127.0.0.1:PORT when every "
            "process runs on this host), or set config.runtime.coordinator_bind_address to an address of this host "
            "(0.0.0.0:PORT listens on every interface)")


def coordinator_arguments(runtime: Any) -> dict[str, Any] | None:
    """The keyword arguments of `jax.distributed.initialize` from a config's runtime section, or None
    when `runtime.distributed` is off. Unset fields ("" / -1) are left for JAX to find in the
    environment (TPU pods, SLURM, Open MPI). Process 0's coordinator listens on
    `runtime.coordinator_bind_address`, else on the coordinator address itself (`bind_address_of`).

    Raises:
      ConfigError: a coordinator field is set while `distributed` is off, or the values contradict.
    """
    address = str(runtime.get("coordinator_address", "") or "")
    bind_address = str(runtime.get("coordinator_bind_address", "") or "")
    num_processes = int(runtime.get("num_processes", -1))
    process_id = int(runtime.get("process_id", -1))
    timeout = int(runtime.get("initialization_timeout_s", 300))
    heartbeat = int(runtime.get("heartbeat_timeout_s", 100))
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
    if timeout < 1 or heartbeat < 1:
        raise ConfigError(f"config.runtime.initialization_timeout_s and heartbeat_timeout_s must be >= 1, got "
                          f"{timeout} and {heartbeat}")
    for field in ("coordinator_address", "coordinator_bind_address"):
        if field in explicit:
            split_address(explicit[field], field)
    if address and not bind_address:
        explicit["coordinator_bind_address"] = bind_address_of(address)
    return {**explicit, "initialization_timeout": timeout, "heartbeat_timeout_seconds": heartbeat}


def bind_address_of(coordinator_address: str) -> str:
    """Where process 0's coordinator listens when `runtime.coordinator_bind_address` is unset: the
    environment's JAX_COORDINATOR_BIND_ADDRESS, else the coordinator address itself, so a loopback
    coordinator stays on loopback and a cluster's listens on the interface the others reach it by.
    (JAX's own default, `[::]:PORT`, listens on every interface: an unauthenticated service open to
    the network.)"""
    return os.environ.get(BIND_ENV, "") or coordinator_address


def detect_coordinator(arguments: dict[str, Any]) -> dict[str, Any]:
    """`arguments` with the coordinator address, process count and id JAX finds in the environment
    (JAX_COORDINATOR_ADDRESS, a TPU pod, SLURM, Open MPI) filled in, and the bind address derived from
    the address, when they were not given; unchanged where JAX's cluster detection is not available."""
    if {"coordinator_address", "num_processes", "process_id"} <= set(arguments):
        return arguments
    try:
        from jax._src import clusters

        address, count, index, _ = clusters.ClusterEnv.auto_detect_unset_distributed_params(
            arguments.get("coordinator_address") or os.environ.get("JAX_COORDINATOR_ADDRESS"),
            arguments.get("num_processes"), arguments.get("process_id"), None, None,
            arguments["initialization_timeout"])
    except (ImportError, AttributeError, TypeError) as error:
        logging.warning("cannot find the coordinator in the environment with this jax (%s); JAX's default applies: "
                        "process 0's coordinator listens on every interface unless "
                        "config.runtime.coordinator_bind_address is set", error)
        return arguments
    found = {name: value for name, value in (("coordinator_address", address), ("num_processes", count),
                                              ("process_id", index)) if value is not None}
    detected = {**found, **arguments}
    if "coordinator_address" in detected and "coordinator_bind_address" not in detected:
        detected["coordinator_bind_address"] = bind_address_of(detected["coordinator_address"])
    return detected


def wait_for_coordinator(address: str, timeout_s: float, process_id: int, poll_s: float = 1.0) -> None:
    """Waits until the coordinator at `address` accepts connections (process 0 runs it); raises
    CoordinatorUnreachableError after `timeout_s`. JAX itself would end the process after its
    initialization timeout with a C++ stack."""
    host, port = split_address(address, "coordinator_address")
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host.strip("[]"), port), timeout=poll_s):
                return
        except OSError as error:
            if time.monotonic() >= deadline:
                raise CoordinatorUnreachableError(
                    f"process {process_id} could not reach the coordinator at {address} within {timeout_s:.0f} s "
                    f"({error}): process 0 runs it, and it is not running (not started yet, or stopped or finished "
                    "already). The processes of a run start together: rerun every process with the same ids "
                    "(config.runtime.initialization_timeout_s is how long each waits for the others)") from error
            time.sleep(poll_s)


def initialize(runtime: Any) -> tuple[int, int]:
    """Starts JAX's distributed runtime when the config asks for it; returns (process index, count).

    The runtime is started recoverable (`jax_enable_recoverability`): when a process other than 0
    dies, the others go on with their shards (`finish` then names it) and a process restarted with
    its id joins again while process 0 runs."""
    import jax

    arguments = coordinator_arguments(runtime)
    if arguments is not None:
        arguments = detect_coordinator(arguments)
        derived = "coordinator_address" in arguments and not (runtime.get("coordinator_bind_address", "")
                                                             or os.environ.get(BIND_ENV, ""))
        if arguments.get("process_id") == 0 and derived:
            check_bind_host(arguments["coordinator_address"])
        if arguments.get("process_id", 0) != 0 and "coordinator_address" in arguments:
            wait_for_coordinator(arguments["coordinator_address"], arguments["initialization_timeout"],
                                 arguments["process_id"])
        shown = {key: value for key, value in arguments.items()
                 if key not in ("initialization_timeout", "heartbeat_timeout_seconds")}
        logging.info("jax.distributed.initialize(%s)", ", ".join(f"{k}={v!r}" for k, v in shown.items())
                     or "from the environment")
        jax.config.update("jax_enable_recoverability", True)
        try:
            jax.distributed.initialize(**arguments)
        except ValueError as error:  # what JAX could not find or refuses among the arguments
            raise ConfigError(f"cannot start the multi-process run: {error} Set config.runtime.coordinator_address, "
                              "num_processes and process_id where JAX finds no TPU pod, SLURM or Open MPI job in "
                              "the environment") from error
    logging.info("JAX process %d of %d, %d local devices (%s)", jax.process_index(), jax.process_count(),
                 jax.local_device_count(), jax.default_backend())
    return jax.process_index(), jax.process_count()


def finish(workdir: Path | str, process_index: int, process_count: int) -> list[str]:
    """Ends this process's part of a multi-process run once its shard is done; returns what a rerun
    has left: one message per other shard that is incomplete (its process stopped), as seen by
    process 0, which waits until every other process has finished or stopped (its coordinator must
    outlive them); the others leave the runtime and return []."""
    import jax
    from jax._src import distributed as jax_distributed

    client = jax_distributed.global_state.client
    if client is None or process_count == 1:
        return []
    if process_index != 0:
        jax.distributed.shutdown()
        return []
    wait_for_the_others(client, process_count)
    return lost_shards(workdir, process_count)


def lost_shards(workdir: Path | str, process_count: int) -> list[str]:
    """One message per shard of processes 1..n-1 that is not complete, by its manifest."""
    from agac_jax.eval import results

    manifests = {m.process_index: m for m in read_manifests(workdir) if m.process_count == process_count}
    recorded = [0] * process_count
    for record in results.read_workdir(workdir):
        recorded[shard_of(record.sample_id, process_count)] += 1
    lost = []
    for index in range(1, process_count):
        manifest = manifests.get(index)
        if manifest is None:
            lost.append(f"process {index} of {process_count} never started its shard (no "
                        f"{manifest_path(workdir, index, process_count).name})")
        elif not manifest.complete:
            lost.append(f"process {index} of {process_count} (host {manifest.host}, pid {manifest.pid}) stopped "
                        f"before finishing its shard: {recorded[index]} of its {manifest.planned} records are written")
    return lost


def wait_for_the_others(client: Any, process_count: int, log_every_s: float = 300.0) -> None:
    """Process 0: waits until every other process has left the runtime (`jax.distributed.shutdown`)
    or died (missed its heartbeats). The coordination service's `get_live_nodes` blocks until then;
    it runs on a thread, so this one stays interruptible (Ctrl-C) and logs while it waits."""
    done = threading.Event()

    def wait() -> None:
        try:
            client.get_live_nodes(list(range(process_count)))
        finally:
            done.set()

    threading.Thread(target=wait, name="wait-for-processes", daemon=True).start()
    started = time.monotonic()
    while not done.wait(log_every_s):
        logging.info("process 0 waits for the other processes to finish their shards (%.0f s so far); its "
                     "coordinator must outlive them", time.monotonic() - started)


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
