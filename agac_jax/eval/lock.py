"""One writer per results file: `results.jsonl.lock` (`results.{i}.jsonl.lock`) beside it.

Design (works on a local disk and on a shared filesystem such as NFS):

- Acquiring writes the holder's description (host, pid, the pid's start time, the host's boot id,
  start time, a random token) to a unique temporary file in the workdir and hard-links it to the
  lock's name. `link` is atomic on local filesystems and on NFS (unlike `O_EXCL` on old NFS), so
  exactly one of two writers wins, and the lock is never seen half-written.
- While the lock is held a daemon thread touches it every `heartbeat_s` (30 s); its mtime is the
  heartbeat. The thread also checks that the file still holds this writer's token; if another
  process took it over (this one looked dead: see below), `check()` raises `LockLostError` and the
  writer stops before its next append.
- A lock is stale, and is taken over with a warning, when
  - its host is this host (same hostname) and its boot id differs: the host rebooted;
  - its host is this host, same boot, and its pid is gone, or is now another process (its start
    time in /proc differs): the writer was killed (kill -9, OOM);
  - its host is another host and its heartbeat is older than `stale_after_s` (180 s). Ages are
    measured on the filesystem's own clock (the mtime of a file this process just created there
    against the lock's mtime), so clocks of different hosts need not agree.
  Otherwise it is held, and `LockHeldError` names the holder and what to do. Hosts sharing a
  workdir must have distinct hostnames: the hostname is what tells a local holder from a remote one.
- Taking over is serialised by a second lock, `<lock>.takeover`, created the same way; under it the
  lock is read again and replaced only if it is still the stale one that was judged.
- Releasing removes the lock if it still holds this writer's token.

`merge` checks every lock of a workdir (`held_locks`) and refuses while a live writer holds one.
"""

from __future__ import annotations

import dataclasses
import datetime
import errno
import json
import logging
import os
import socket
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from agac_jax.cli.errors import UserError

logger = logging.getLogger(__name__)

LOCK_SUFFIX = ".lock"
TAKEOVER_SUFFIX = ".takeover"
HEARTBEAT_S = 30.0
STALE_AFTER_S = 180.0
BOOT_ID_PATH = Path("/proc/sys/kernel/random/boot_id")

_HELD: dict[Path, "RunLock"] = {}  # lock path -> the RunLock this process holds
_HELD_GUARD = threading.Lock()


class LockHeldError(UserError):
    """Another live process writes this results file."""


class LockLostError(UserError):
    """This process's lock was taken over by another (it had looked dead to it)."""


@dataclasses.dataclass(frozen=True)
class Holder:
    """Who holds a lock, as written in the lock file."""

    host: str
    pid: int
    pid_start: str | None  # the pid's start time (field 22 of /proc/<pid>/stat), to detect pid reuse
    boot_id: str | None
    started: str  # ISO time the lock was taken
    token: str
    command: str = ""

    def describe(self) -> str:
        return f"host {self.host}, pid {self.pid}, since {self.started}"

    @classmethod
    def current(cls) -> "Holder":
        return cls(host=socket.gethostname(), pid=os.getpid(), pid_start=process_start(os.getpid()),
                   boot_id=boot_id(), started=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                   token=uuid.uuid4().hex, command=" ".join(sys.argv)[:500])


def boot_id() -> str | None:
    """This host's boot id (changes at every boot); None where /proc does not provide it."""
    try:
        return BOOT_ID_PATH.read_text().strip() or None
    except OSError:
        return None


def process_start(pid: int) -> str | None:
    """The start time of process `pid` in clock ticks since boot; None if unknown or not running."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()[19]  # field 22; the name in parentheses may hold spaces


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    return True


def lock_path(results_file: Path | str) -> Path:
    return Path(str(results_file) + LOCK_SUFFIX)


def read_holder(path: Path) -> Holder | None:
    """The holder written in a lock file; None if there is none. An unreadable file (not written by
    this module) is reported as a holder on an unknown host, which only its heartbeat can expire."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        data = json.loads(text)
        return Holder(**{field.name: data[field.name] for field in dataclasses.fields(Holder) if field.name in data})
    except (json.JSONDecodeError, TypeError):
        return Holder(host="(unreadable lock file)", pid=-1, pid_start=None, boot_id=None, started="?", token="?")


def _filesystem_age(path: Path, probe: Path | None) -> float | None:
    """Seconds since `path` was last touched, on the filesystem's clock (`probe` was just written
    there; without one, on this host's clock)."""
    try:
        now = probe.stat().st_mtime if probe is not None else time.time()
        return now - path.stat().st_mtime
    except FileNotFoundError:
        return None


def staleness(holder: Holder, path: Path, probe: Path | None, stale_after_s: float) -> str | None:
    """Why the lock of `holder` is stale, or None when its writer may be alive."""
    if holder.token in {lock.holder.token for lock in _HELD.values()}:
        return None  # held by this very process
    same_host = holder.host == socket.gethostname()
    if same_host and holder.boot_id and boot_id() and holder.boot_id != boot_id():
        return f"its host {holder.host} has rebooted since (boot id {holder.boot_id[:8]} is now {boot_id()[:8]})"
    if same_host and holder.pid > 0:
        if not pid_alive(holder.pid):
            return f"its process {holder.pid} is gone"
        start = process_start(holder.pid)
        if holder.pid_start and start and start != holder.pid_start:
            return f"its process {holder.pid} is gone (the pid now belongs to another process)"
        return None
    age = _filesystem_age(path, probe)
    if age is not None and age > stale_after_s:
        return f"its heartbeat is {age:.0f} s old (stale after {stale_after_s:.0f} s)"
    return None


def _write_probe(directory: Path, holder: Holder) -> Path:
    probe = directory / f".lock.{holder.token}.{os.getpid()}.tmp"
    with probe.open("w", encoding="utf-8") as handle:
        handle.write(json.dumps(dataclasses.asdict(holder), indent=1) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    return probe


def _link(source: Path, target: Path) -> bool:
    """Creates `target` with the content of `source` unless it exists; True when this call created it."""
    try:
        os.link(source, target)
        return True
    except FileExistsError:
        return False
    except OSError as error:
        if error.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
            raise
    # A filesystem without hard links: O_EXCL instead (a reader may briefly see the file empty, which
    # `read_holder` reports as a holder on an unknown host, held until its heartbeat expires).
    try:
        descriptor = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(source.read_bytes())
        handle.flush()
        os.fsync(handle.fileno())
    return True


class RunLock:
    """The lock of one results file, held from construction until `release` (or the `with` block's end).

    Raises (from the constructor):
      LockHeldError: a live process holds it; the message names it (host, pid, start time).
    """

    def __init__(self, results_file: Path | str, *, heartbeat_s: float = HEARTBEAT_S,
                 stale_after_s: float = STALE_AFTER_S):
        self.results_file = Path(results_file)
        self.path = lock_path(self.results_file)
        self.stale_after_s = stale_after_s
        self.holder = Holder.current()
        self.lost: str | None = None
        self._stop = threading.Event()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        probe = _write_probe(self.path.parent, self.holder)
        try:
            self._acquire(probe)
        finally:
            probe.unlink(missing_ok=True)
        with _HELD_GUARD:
            _HELD[self.path.absolute()] = self
        self._thread = threading.Thread(target=self._beat, args=(heartbeat_s,), daemon=True,
                                        name=f"lock-heartbeat {self.path.name}")
        self._thread.start()

    def _acquire(self, probe: Path) -> None:
        for _ in range(3):  # a lock released or taken over between our attempts: try again
            if _link(probe, self.path):
                return
            holder = read_holder(self.path)
            if holder is None:
                continue
            reason = staleness(holder, self.path, probe, self.stale_after_s)
            if reason is None:
                raise LockHeldError(held_message(self.results_file, holder))
            if self._take_over(probe, holder, reason):
                return
        holder = read_holder(self.path)
        raise LockHeldError(held_message(self.results_file, holder) if holder else
                            f"could not lock {self.results_file}: the lock {self.path} keeps changing hands")

    def _take_over(self, probe: Path, stale: Holder, reason: str) -> bool:
        guard = Path(str(self.path) + TAKEOVER_SUFFIX)
        if not _link(probe, guard):
            age = _filesystem_age(guard, probe)
            if age is None or age <= 60.0:
                raise LockHeldError(f"another process is taking over the stale lock {self.path} right now; "
                                    "retry in a minute")
            guard.unlink(missing_ok=True)  # left by a process killed while taking over
            if not _link(probe, guard):
                return False
        try:
            current = read_holder(self.path)
            if current is not None and current.token != stale.token:
                return False  # replaced meanwhile: judge the new holder
            self.path.unlink(missing_ok=True)
            if not _link(probe, self.path):
                return False
        finally:
            guard.unlink(missing_ok=True)
        logger.warning("%s: took over the lock of %s (%s), left by a writer that stopped without releasing it; "
                       "its records up to its last complete line are kept", self.path, stale.describe(), reason)
        return True

    def _beat(self, interval: float) -> None:
        while not self._stop.wait(interval):
            holder = read_holder(self.path)
            if holder is None or holder.token != self.holder.token:
                self.lost = (f"the lock {self.path} was taken over by "
                             f"{holder.describe() if holder else 'nobody (it was removed)'}")
                logger.error("%s; this process stops writing %s", self.lost, self.results_file)
                return
            try:
                os.utime(self.path)
            except OSError as error:
                logger.warning("%s: heartbeat failed (%s)", self.path, error)

    def check(self) -> None:
        """Raises LockLostError when another process has taken this lock over."""
        if self.lost:
            raise LockLostError(f"{self.lost}: another writer now owns {self.results_file}; this run stops "
                                "(its records so far are kept). Check that only one run uses this workdir.")

    def release(self) -> None:
        self._stop.set()
        with _HELD_GUARD:
            _HELD.pop(self.path.absolute(), None)
        holder = read_holder(self.path)
        if holder is not None and holder.token == self.holder.token:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def held_message(results_file: Path, holder: Holder) -> str:
    return (f"{results_file} is being written by another run ({holder.describe()}); refusing to start a "
            f"second writer. Wait for it to finish, or stop it; if that process is gone, its lock "
            f"{lock_path(results_file).name} is taken over automatically (after {STALE_AFTER_S:.0f} s "
            "without a heartbeat when it ran on another host)")


def held_by_this_process(results_file: Path | str) -> RunLock | None:
    """The RunLock this process holds on `results_file`, if any."""
    return _HELD.get(lock_path(results_file).absolute())


def held_locks(workdir: Path | str, *, stale_after_s: float = STALE_AFTER_S) -> list[tuple[Path, Holder]]:
    """(lock, holder) of every results lock of the workdir held by a live writer other than this process."""
    workdir = Path(workdir)
    found = []
    paths = sorted(workdir.glob("results*.jsonl" + LOCK_SUFFIX))
    if not paths:
        return []
    try:
        probe = _write_probe(workdir, Holder.current())
    except OSError:  # a read-only copy of a workdir: fall back to this host's clock
        probe = None
    try:
        for path in paths:
            holder = read_holder(path)
            if holder is None or path.absolute() in _HELD:
                continue
            reason = staleness(holder, path, probe, stale_after_s)
            if reason is None:
                found.append((path, holder))
            else:
                logger.warning("%s: a stale lock (%s); its writer is not running", path, reason)
    finally:
        if probe is not None:
            probe.unlink(missing_ok=True)
    return found


def describe_holders(locks: list[tuple[Path, Any]]) -> str:
    return "; ".join(f"{path.name[: -len(LOCK_SUFFIX)]} by {holder.describe()}" for path, holder in locks)
