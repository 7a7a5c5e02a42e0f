"""Messages between the codec client and the sidecar, and their framing on a pipe (numpy only).

Framing: each message is an 8-byte big-endian unsigned length followed by that many bytes of a
pickle (protocol 5) of one of the dataclasses below. The pipe joins a parent and the child it
started, so both ends are the same program; nothing else ever writes to it.

Conversation: the sidecar first sends ``SidecarReady``; then, for every ``CodecRequest`` in
order, one ``CodecReply``; ``Shutdown`` or end of input makes it exit.
"""

from __future__ import annotations

import dataclasses
import pickle
import struct
from typing import BinaryIO, Hashable

import numpy as np

HEADER = struct.Struct(">Q")
MAX_MESSAGE_BYTES = 1 << 31


class ProtocolError(RuntimeError):
    """A truncated or oversized frame on the pipe."""


@dataclasses.dataclass(frozen=True)
class CodecRequest:
    """One clip to compress.

    Attributes:
      request_id: any hashable, picklable id, unique among the client's requests in flight.
      waveform: float32 [n], 16 kHz mono.
      token_rate: codec token rate r in {25, 50, 100}.
      kept_frames: int [k] strictly increasing frame indices in [0, ceil(n / (32000 / r))), or
        None for every frame (the ``codec`` baseline, rho = 1).
      seed: seeds a stochastic decoder (SemantiCodec's diffusion sampler) before this request's
        decode, so one seed's pass is reproducible; a deterministic codec ignores it.
    """

    request_id: Hashable
    waveform: np.ndarray
    token_rate: int
    kept_frames: np.ndarray | None = None
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class CodecFailure:
    """Why a request failed.

    ``error_type`` is one of: ``InvalidRequest`` (bad waveform or indices), ``UnsupportedTokenRate``,
    ``BackendUnavailable`` (package or weights missing), ``CodecFailure`` (the codec raised),
    ``SidecarCrashed`` or ``Timeout`` (the sidecar died or hung on every attempt).
    """

    error_type: str
    message: str


@dataclasses.dataclass(frozen=True)
class CodecReply:
    """The result of one request: tokens and decoded audio, or a failure.

    Attributes:
      request_id: the request's id.
      tokens: int64 [s, 2] the tokens the codec spent on the joined kept frames (None on failure):
        s = k for rvq_mel; SemantiCodec rounds up to whole AudioMAE patches (s >= k).
      waveform: float32 [m] decoded joined waveform, m = the kept frames' total length (None on failure).
      seconds: wall seconds per stage in the sidecar: ``assemble``, ``load`` (only when this request
        loaded the codec for its rate), ``encode``, ``decode``, ``total``.
      failure: None on success.
      attempts: how many sidecar processes were given the request (1 unless one died).
      n_frames: N, the frame count of the original clip.
      clip_tokens: the tokens the codec spends on the whole original clip (2 * N for rvq_mel).
      peak_rss_bytes: the sidecar's peak resident memory so far (the codecs it holds included).
    """

    request_id: Hashable
    tokens: np.ndarray | None
    waveform: np.ndarray | None
    seconds: dict[str, float]
    failure: CodecFailure | None = None
    attempts: int = 1
    n_frames: int = 0
    clip_tokens: int = 0
    peak_rss_bytes: int = 0

    @property
    def ok(self) -> bool:
        return self.failure is None


@dataclasses.dataclass(frozen=True)
class SidecarReady:
    """The sidecar's first message: its pid, and a failure if the backend cannot run at all."""

    pid: int
    backend: str
    failure: CodecFailure | None = None


@dataclasses.dataclass(frozen=True)
class Shutdown:
    """Asks the sidecar to exit after the requests before it."""


def write_message(stream: BinaryIO, message: object) -> None:
    """Writes one framed message and flushes."""
    payload = pickle.dumps(message, protocol=5)
    if len(payload) > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"message of {len(payload)} bytes exceeds the {MAX_MESSAGE_BYTES}-byte limit.")
    stream.write(HEADER.pack(len(payload)))
    stream.write(payload)
    stream.flush()


def _read_exact(stream: BinaryIO, size: int) -> bytes:
    chunks, remaining = [], size
    while remaining:
        chunk = stream.read(remaining)
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def read_message(stream: BinaryIO) -> object | None:
    """Reads one framed message; None at a clean end of stream (between messages)."""
    header = _read_exact(stream, HEADER.size)
    if not header:
        return None
    if len(header) < HEADER.size:
        raise ProtocolError("stream ended inside a message header.")
    (size,) = HEADER.unpack(header)
    if size > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"message header announces {size} bytes, over the {MAX_MESSAGE_BYTES}-byte limit.")
    payload = _read_exact(stream, size)
    if len(payload) < size:
        raise ProtocolError(f"stream ended inside a message ({len(payload)} of {size} bytes).")
    return pickle.loads(payload)
