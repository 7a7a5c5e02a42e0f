"""The client of the codec sidecar, for the evaluation harness (numpy only; no torch, no jax).

    with CodecClient(backend="rvq_mel") as client:
        for reply in client.compress(requests):      # CodecRequest in, CodecReply out
            if reply.ok: ...                         # reply.tokens [k, 2], reply.waveform [m]
            else: ...                                # reply.failure.error_type / .message

Behaviour:
- Pipelining: up to ``max_in_flight`` requests are sent ahead; the sidecar answers them in order.
  Replies come back in completion order (``results()``, ``compress()``).
- Timeouts: if the request at the head of the line gets no reply within ``timeout_s`` of becoming
  the head, the sidecar is taken as hung. The first request for a token rate includes loading that
  rate's codec.
- Recovery: when the sidecar dies or hangs it is killed and a new one started (a warning names the
  old pid, the cause and the restart count); the head request
  (the one being served) is charged one attempt and every request in flight is sent again. A
  request charged ``max_attempts`` times (2) is given up: its reply carries a ``SidecarCrashed`` or
  ``Timeout`` failure, it is listed in ``failures``, and the run goes on.
- Bad requests come back as replies with a failure (``InvalidRequest``, ...) and are not retried.
- Shutdown: ``close()`` (also on leaving the ``with`` block, on garbage collection and at exit)
  asks the sidecar to exit, then terminates and finally kills it; requests still in flight are
  abandoned. If this process dies outright, the sidecar sees its stdin close and exits. The sidecar
  runs in its own process group, so a Ctrl-C at the terminal reaches only this process, which stops it.
- Interpreter: ``python`` runs the sidecar under another Python environment (``codec.python``;
  default this one), e.g. ``.venv-codec/bin/python`` made by ``tools/setup_codec_env.sh`` for
  SemantiCodec. A relative path is taken from the repository root when it exists there. The child
  gets this project on PYTHONPATH and needs only numpy, soundfile, soxr, torch and the backend's
  package; it never imports jax.
- One thread at a time: the client is not thread-safe.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
import queue
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path
from typing import IO, Any, Hashable, Iterable, Iterator, Mapping

from agac_jax.codec.backends import check_options
from agac_jax.codec.base import BackendUnavailableError
from agac_jax.codec.frames import DEFAULT_CROSSFADE_MS
from agac_jax.codec.protocol import (
    CodecFailure,
    CodecReply,
    CodecRequest,
    Shutdown,
    SidecarReady,
    read_message,
    write_message,
)

PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])
logger = logging.getLogger(__name__)


def resolve_python(python: str | os.PathLike | None) -> str:
    """The sidecar's interpreter: None or "" is this one; a relative path is looked up from the
    repository root, then from the working directory; a bare name on PATH. ValueError if missing."""
    if python is None or not str(python).strip():
        return sys.executable
    python = str(python)
    if os.sep not in python and "/" not in python:
        import shutil

        found = shutil.which(python)
        if found:
            return found
    else:
        for candidate in (Path(python),) if os.path.isabs(python) else (Path(PACKAGE_ROOT) / python, Path(python)):
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
    raise ValueError(
        f"codec.python {python!r} is not an executable Python interpreter (looked in {PACKAGE_ROOT} and "
        f"{os.getcwd()}). For the semanticodec backend create it with `bash tools/setup_codec_env.sh` "
        "(it makes .venv-codec/bin/python), or leave codec.python empty to use this interpreter."
    )


class SidecarError(RuntimeError):
    """The sidecar cannot be started (repeatedly), so no request can be served."""


@dataclasses.dataclass(frozen=True)
class _Closed:
    """Event: the sidecar's output ended (it exited or broke the protocol)."""

    reason: str


@dataclasses.dataclass
class _Pending:
    request: CodecRequest
    attempts: int = 0
    reasons: list[str] = dataclasses.field(default_factory=list)


class _SidecarProcess:
    """One sidecar child with a reader and a writer thread; events go to a shared queue."""

    def __init__(
        self, command: list[str], env: dict[str, str], stderr: IO | None, events: queue.Queue, generation: int
    ):
        self.generation = generation
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, env=env, close_fds=True,
            process_group=0,
        )
        self._events = events
        self._outbox: queue.Queue = queue.Queue()
        self._reader = threading.Thread(target=self._read_loop, name=f"codec-reader-{generation}", daemon=True)
        self._writer = threading.Thread(target=self._write_loop, name=f"codec-writer-{generation}", daemon=True)
        self._reader.start()
        self._writer.start()

    @property
    def pid(self) -> int:
        return self.process.pid

    def _read_loop(self) -> None:
        try:
            while (message := read_message(self.process.stdout)) is not None:
                self._events.put((self.generation, message))
            reason = "its output closed"
        except Exception as error:  # noqa: BLE001 - any read failure means this sidecar is unusable
            reason = f"reading its output failed: {type(error).__name__}: {error}"
        code = self.process.poll()
        if code is None:
            try:
                code = self.process.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                code = None
        exit_text = "still running" if code is None else f"exit code {code}"
        self._events.put((self.generation, _Closed(f"sidecar pid {self.pid} stopped: {reason} ({exit_text})")))

    def _write_loop(self) -> None:
        stdin = self.process.stdin
        try:
            while (message := self._outbox.get()) is not None:
                write_message(stdin, message)
        except (OSError, ValueError):
            return
        finally:
            try:
                stdin.close()
            except OSError:
                pass

    def send(self, message: object) -> None:
        self._outbox.put(message)

    def stop(self, grace_s: float) -> None:
        """Shutdown, then end of input; terminate and kill if it does not exit within the grace."""
        self.send(Shutdown())
        self.send(None)
        try:
            self.process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            self.process.terminate()
            try:
                self.process.wait(timeout=2.0)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._join()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self.send(None)
        self._join()

    def _join(self) -> None:
        self._writer.join(timeout=2.0)
        self._reader.join(timeout=2.0)
        if self.process.stdout is not None:
            self.process.stdout.close()


def _shutdown_holder(holder: list[_SidecarProcess | None], grace_s: float) -> None:
    """Finalizer: stops the holder's current sidecar (used by close, GC and atexit)."""
    sidecar, holder[0] = holder[0], None
    if sidecar is not None:
        sidecar.stop(grace_s)


class CodecClient:
    """Runs a codec sidecar and sends it requests; see the module docstring."""

    def __init__(
        self,
        backend: str = "rvq_mel",
        backend_options: Mapping[str, Any] | None = None,
        *,
        max_in_flight: int = 4,
        timeout_s: float = 300.0,
        startup_timeout_s: float = 120.0,
        max_attempts: int = 2,
        max_start_failures: int = 3,
        num_threads: int = 1,
        crossfade_ms: float = DEFAULT_CROSSFADE_MS,
        python: str | None = None,
        max_loaded_rates: int = 0,
        stderr: IO | None = None,
    ):
        """Starts the sidecar and waits until it is ready.

        Args:
          backend: ``rvq_mel`` or ``semanticodec``.
          backend_options: the backend's options (see ``agac_jax.codec.backends``).
          max_in_flight: requests sent ahead of their replies (>= 1).
          timeout_s: seconds the head request may wait for its reply.
          startup_timeout_s: seconds a new sidecar may take to report ready.
          max_attempts: sidecar processes a request may be given before it is recorded as failed.
          max_start_failures: consecutive failed starts before SidecarError.
          num_threads: torch threads in the sidecar (0: torch's default).
          crossfade_ms: total crossfade at each cut when joining kept frames (see frames.py).
          python: interpreter for the sidecar (see ``resolve_python``); default this one.
          max_loaded_rates: codecs (one per rate) the sidecar holds at once; 0: no limit.
          stderr: where the sidecar's stderr goes; default inherited.

        Raises:
          ValueError: unknown backend, options or bad limits.
          BackendUnavailableError: the backend cannot run (the message says what to install).
          SidecarError: the sidecar could not be started.
        """
        self.backend = backend
        self.backend_options = check_options(backend, backend_options)
        counts = {
            "max_in_flight": max_in_flight, "max_attempts": max_attempts, "max_start_failures": max_start_failures
        }
        for name, value in counts.items():
            if value < 1:
                raise ValueError(f"{name} must be >= 1; got {value}.")
        for name, value in (("timeout_s", timeout_s), ("startup_timeout_s", startup_timeout_s)):
            if not value > 0:
                raise ValueError(f"{name} must be > 0; got {value}.")
        if not isinstance(max_loaded_rates, int) or max_loaded_rates < 0:
            raise ValueError(f"max_loaded_rates must be an int >= 0; got {max_loaded_rates!r}.")
        if not 0 <= crossfade_ms < float("inf"):
            raise ValueError(f"crossfade_ms must be finite and >= 0; got {crossfade_ms}.")
        self.max_in_flight = max_in_flight
        self.timeout_s = timeout_s
        self.startup_timeout_s = startup_timeout_s
        self.max_attempts = max_attempts
        self.max_start_failures = max_start_failures
        self.python = resolve_python(python)
        self._command = [
            self.python, "-m", "agac_jax.codec.sidecar", f"--backend={backend}",
            f"--options={json.dumps(self.backend_options)}", f"--num_threads={num_threads}",
            f"--crossfade_ms={crossfade_ms}", f"--max_loaded_rates={max_loaded_rates}",
        ]
        self._stderr = stderr
        self._events: queue.Queue = queue.Queue()
        self._generation = 0
        self._pending: collections.OrderedDict[Hashable, _Pending] = collections.OrderedDict()
        self._done: collections.deque[CodecReply] = collections.deque()
        self._head_since = time.monotonic()
        self._holder: list[_SidecarProcess | None] = [None]
        self._finalizer = weakref.finalize(self, _shutdown_holder, self._holder, 5.0)
        self.restarts = 0
        self.failures: list[CodecReply] = []
        self._closed = False
        self._holder[0] = self._start_once()

    @property
    def sidecar_pid(self) -> int | None:
        """The pid of the current sidecar process (None once closed)."""
        sidecar = self._holder[0]
        return None if sidecar is None else sidecar.pid

    @property
    def in_flight(self) -> int:
        """Requests sent and not yet answered."""
        return len(self._pending)

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
        env.setdefault("HF_HUB_OFFLINE", "1")
        return env

    def _start_once(self) -> _SidecarProcess:
        """A new sidecar that has reported ready; SidecarError or BackendUnavailableError otherwise."""
        self._generation += 1
        sidecar = _SidecarProcess(self._command, self._environment(), self._stderr, self._events, self._generation)
        deadline = time.monotonic() + self.startup_timeout_s
        while True:
            try:
                generation, message = self._events.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                sidecar.kill()
                message = f"the codec sidecar did not report ready within {self.startup_timeout_s} s."
                raise SidecarError(message) from None
            if generation != sidecar.generation:
                continue
            if isinstance(message, SidecarReady) and message.failure is None:
                return sidecar
            sidecar.kill()
            if isinstance(message, SidecarReady) and message.failure.error_type == "BackendUnavailable":
                raise BackendUnavailableError(message.failure.message)
            if isinstance(message, SidecarReady):
                raise ValueError(message.failure.message)
            raise SidecarError(f"the codec sidecar failed to start: {getattr(message, 'reason', message)!r}")

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this CodecClient is closed.")

    def submit(self, request: CodecRequest) -> Hashable:
        """Sends a request (waiting while ``max_in_flight`` are out); returns its id."""
        self._check_open()
        if not isinstance(request, CodecRequest):
            raise TypeError(f"request must be a CodecRequest; got {type(request).__name__}.")
        if request.request_id in self._pending:
            raise ValueError(f"request_id {request.request_id!r} is already in flight.")
        while len(self._pending) >= self.max_in_flight:
            self._pump()
        if not self._pending:
            self._head_since = time.monotonic()
        self._pending[request.request_id] = _Pending(request)
        self._holder[0].send(request)
        return request.request_id

    def results(self) -> Iterator[CodecReply]:
        """Replies of everything submitted, in completion order, until none is left in flight."""
        while self._pending or self._done:
            while self._done:
                yield self._done.popleft()
            if self._pending:
                self._pump()

    def compress(self, requests: Iterable[CodecRequest]) -> Iterator[CodecReply]:
        """Submits ``requests`` with pipelining and yields every reply in completion order."""
        for request in requests:
            self.submit(request)
            while self._done:
                yield self._done.popleft()
        yield from self.results()

    def poll(self, max_wait_s: float) -> list[CodecReply]:
        """Handles sidecar events for at most ``max_wait_s`` (less once a reply arrives) and returns
        the replies completed so far, without blocking on the rest. Timeouts and restarts apply as
        in ``results()``."""
        self._check_open()
        if self._pending and not self._done:
            self._pump(max_wait_s)
        replies = list(self._done)
        self._done.clear()
        return replies

    def _pump(self, max_wait_s: float | None = None) -> None:
        """Handles one event (a reply or a sidecar stop) or the head request's timeout; with
        ``max_wait_s``, returns after that long if neither came."""
        remaining = self._head_since + self.timeout_s - time.monotonic()
        wait = remaining if max_wait_s is None else min(remaining, max_wait_s)
        try:
            generation, message = self._events.get(timeout=max(0.0, wait))
        except queue.Empty:
            if wait >= remaining:
                self._recover("Timeout", f"no reply within {self.timeout_s} s")
            return
        if generation != self._generation:
            return
        if isinstance(message, _Closed):
            self._recover("SidecarCrashed", message.reason)
        elif isinstance(message, CodecReply) and message.request_id in self._pending:
            pending = self._pending.pop(message.request_id)
            self._done.append(dataclasses.replace(message, attempts=pending.attempts + 1))
            self._head_since = time.monotonic()

    def _charge_head(self, error_type: str, reason: str) -> None:
        """Counts a failed attempt against the head request; gives it up at max_attempts."""
        if not self._pending:
            return
        request_id, pending = next(iter(self._pending.items()))
        pending.attempts += 1
        pending.reasons.append(reason)
        if pending.attempts >= self.max_attempts:
            del self._pending[request_id]
            message = f"failed on {pending.attempts} sidecar processes: " + " | ".join(pending.reasons)
            failure = CodecFailure(error_type, message)
            reply = CodecReply(request_id, None, None, {}, failure, attempts=pending.attempts)
            self.failures.append(reply)
            self._done.append(reply)

    def _recover(self, error_type: str, reason: str) -> None:
        """Kills the current sidecar, charges the head request, starts a new one and resends."""
        old, self._holder[0] = self._holder[0], None
        logger.warning("codec sidecar pid %s: %s: %s; starting a new one (restart %d of this client) and resending "
                       "%d request(s)", None if old is None else old.pid, error_type, reason, self.restarts + 1,
                       len(self._pending))
        if old is not None:
            old.kill()
        self._charge_head(error_type, reason)
        for failures in range(1, self.max_start_failures + 1):
            try:
                self._holder[0] = self._start_once()
                break
            except SidecarError as error:
                self._charge_head("SidecarCrashed", str(error))
                if failures == self.max_start_failures:
                    message = f"the codec sidecar failed to start {failures} times in a row: {error}"
                    raise SidecarError(message) from error
        self.restarts += 1
        self._head_since = time.monotonic()
        for pending in self._pending.values():
            self._holder[0].send(pending.request)

    def close(self, grace_s: float = 5.0) -> None:
        """Stops the sidecar (requests in flight are abandoned). Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._pending.clear()
        self._finalizer.detach()
        _shutdown_holder(self._holder, grace_s)

    def __enter__(self) -> "CodecClient":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
