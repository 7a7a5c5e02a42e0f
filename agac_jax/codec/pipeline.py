"""A codec client on a background thread, so the sidecar encodes while the caller computes.

    with CodecPipeline(lambda: CodecClient("rvq_mel"), max_backlog=256) as pipeline:
        pipeline.submit(request)              # returns at once
        ...                                   # score the next batch meanwhile
        for reply in pipeline.replies(block=True): ...

`CodecClient` sends at most `max_in_flight` requests ahead and only while someone pumps its
replies; called from the harness's thread, the sidecar would therefore idle whenever the harness runs
the scoring program. Here one thread owns the client (which is not thread-safe): it feeds it from an
unbounded inbox, pumps its replies into an outbox, and never touches JAX, so the sidecar works
through the backlog while the caller's thread is inside a jitted call (which releases the GIL).
`max_backlog` is the caller's bound (see `over_backlog`): requests hold references to their
waveforms until answered.

Errors of the client itself (`SidecarError`: the sidecar cannot be started at all) end the thread
and are raised from the caller's next call. Individual request failures are replies, as with the client.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Hashable

from agac_jax.codec.client import CodecClient
from agac_jax.codec.protocol import CodecReply, CodecRequest

_POLL_S = 0.05
_NO_REQUEST = object()


class CodecPipeline:
    """Runs `make_client()` on a thread; `submit` never blocks, `replies` collects what came back."""

    def __init__(self, make_client: Callable[[], CodecClient], max_backlog: int = 256):
        """Starts the client (in this thread, so start-up errors raise here) and the worker thread.

        Args:
          make_client: builds the CodecClient (it starts the sidecar).
          max_backlog: how many requests may be submitted and not yet returned before
            `over_backlog` says the caller should wait (>= 1).
        """
        if max_backlog < 1:
            raise ValueError(f"max_backlog must be >= 1; got {max_backlog}.")
        self.max_backlog = max_backlog
        self.client = make_client()
        self._inbox: queue.Queue[CodecRequest | None] = queue.Queue()
        self._outbox: queue.Queue[CodecReply] = queue.Queue()
        self._error: BaseException | None = None
        self._submitted = 0
        self._returned = 0
        self.wait_seconds = 0.0  # time the caller spent blocked in `replies(block=True)`
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="codec-pipeline", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        """Requests submitted whose replies the caller has not taken yet."""
        return self._submitted - self._returned

    @property
    def over_backlog(self) -> bool:
        return self.pending > self.max_backlog

    def _run(self) -> None:
        """Feeds the client while it has room (waiting briefly for work only when it is idle), else
        pumps its replies into the outbox. A None in the inbox stops the thread."""
        client = self.client
        try:
            while not self._stop.is_set():
                if client.in_flight < client.max_in_flight:
                    try:
                        request = self._inbox.get(timeout=_POLL_S) if not client.in_flight else self._inbox.get_nowait()
                    except queue.Empty:
                        request = _NO_REQUEST
                    if request is None:
                        return
                    if request is not _NO_REQUEST:
                        client.submit(request)
                        continue
                for reply in client.poll(_POLL_S):
                    self._outbox.put(reply)
        except BaseException as error:  # noqa: BLE001 - handed to the caller's thread
            self._error = error

    def _check(self) -> None:
        if self._error is not None:
            raise self._error
        if not self._thread.is_alive() and self.pending:
            raise RuntimeError("the codec pipeline thread stopped with requests pending")

    def submit(self, request: CodecRequest) -> Hashable:
        """Queues a request for the sidecar; returns its id at once."""
        self._check()
        if not isinstance(request, CodecRequest):
            raise TypeError(f"request must be a CodecRequest; got {type(request).__name__}.")
        self._inbox.put(request)
        self._submitted += 1
        return request.request_id

    def replies(self, block: bool = False) -> list[CodecReply]:
        """The replies that have come back (in completion order). With `block`, waits until at
        least one has, unless nothing is pending."""
        out: list[CodecReply] = []
        started = time.perf_counter()
        while True:
            try:
                while True:
                    out.append(self._outbox.get_nowait())
            except queue.Empty:
                pass
            if out or not block or self.pending == 0:
                break
            self._check()
            try:
                out.append(self._outbox.get(timeout=_POLL_S))
            except queue.Empty:
                continue
        if block:
            self.wait_seconds += time.perf_counter() - started
        self._returned += len(out)
        return out

    def close(self) -> None:
        """Stops the thread (abandoning what is pending) and the sidecar. Safe to call twice."""
        self._stop.set()
        self._inbox.put(None)
        self._thread.join(timeout=10.0)
        self.client.close()

    def __enter__(self) -> "CodecPipeline":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
