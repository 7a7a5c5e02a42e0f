"""What the sidecar does with one request: validate, join kept frames, encode, decode, time it.

``CodecService.handle`` never raises for a bad request: every problem becomes a ``CodecReply``
with a ``CodecFailure``, so one bad request cannot take the sidecar down.
"""

from __future__ import annotations

import collections
import gc
import resource
import sys
import time
import traceback
from typing import Any, Mapping

import numpy as np

from agac_jax.codec.backends import check_options, make_codec
from agac_jax.codec.base import (
    BackendUnavailableError,
    Codec,
    UnsupportedTokenRateError,
    check_token_rate,
    num_frames,
    validate_waveform,
)
from agac_jax.codec.frames import DEFAULT_CROSSFADE_MS, join_frames, validate_kept_frames
from agac_jax.codec.protocol import CodecFailure, CodecReply, CodecRequest


def failure_reply(request_id: object, error_type: str, message: str) -> CodecReply:
    """A reply carrying only a failure."""
    return CodecReply(request_id, None, None, {}, CodecFailure(error_type, message))


def classify(error: BaseException) -> str:
    """The CodecFailure.error_type of an exception raised while serving a request."""
    if isinstance(error, UnsupportedTokenRateError):
        return "UnsupportedTokenRate"
    if isinstance(error, BackendUnavailableError):
        return "BackendUnavailable"
    if isinstance(error, (TypeError, ValueError)):
        return "InvalidRequest"
    return "CodecFailure"


def peak_rss_bytes() -> int:
    """This process's peak resident memory (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


class CodecService:
    """One backend, one codec per token rate, loaded when a request first needs it.

    ``max_loaded_rates`` (0: no limit) bounds the rates held at once: loading another drops the one
    used least recently (SemantiCodec's models are GBs each, see semanticodec_backend).
    """

    def __init__(
        self,
        backend: str,
        options: Mapping[str, Any] | None = None,
        crossfade_ms: float = DEFAULT_CROSSFADE_MS,
        max_loaded_rates: int = 0,
    ):
        self.backend = backend
        self.options = check_options(backend, options)
        if not np.isfinite(crossfade_ms) or crossfade_ms < 0:
            raise ValueError(f"crossfade_ms must be finite and >= 0; got {crossfade_ms}.")
        if not isinstance(max_loaded_rates, int) or max_loaded_rates < 0:
            raise ValueError(f"max_loaded_rates must be an int >= 0 (0: no limit); got {max_loaded_rates!r}.")
        self.crossfade_ms = crossfade_ms
        self.max_loaded_rates = max_loaded_rates
        self._codecs: collections.OrderedDict[int, Codec] = collections.OrderedDict()

    @property
    def loaded_rates(self) -> tuple[int, ...]:
        """The rates whose codecs are held, least recently used first."""
        return tuple(self._codecs)

    def codec(self, token_rate: int) -> Codec:
        """The codec for ``token_rate``, loading it (and dropping the least recent) if needed."""
        if token_rate in self._codecs:
            self._codecs.move_to_end(token_rate)
            return self._codecs[token_rate]
        while self.max_loaded_rates and len(self._codecs) >= self.max_loaded_rates:
            self._codecs.popitem(last=False)
            gc.collect()
        self._codecs[token_rate] = make_codec(self.backend, token_rate, self.options)
        return self._codecs[token_rate]

    def handle(self, request: object) -> CodecReply:
        """Serves one request; failures come back as replies, never as exceptions."""
        if not isinstance(request, CodecRequest):
            return failure_reply(None, "InvalidRequest", f"expected a CodecRequest; got {type(request).__name__}.")
        try:
            return self._serve(request)
        except Exception as error:  # noqa: BLE001 - every failure becomes a structured reply
            message = str(error)
            if classify(error) == "CodecFailure":
                message = f"{type(error).__name__}: {error}\n{traceback.format_exc(limit=6)}"
            return failure_reply(request.request_id, classify(error), message)

    def _serve(self, request: CodecRequest) -> CodecReply:
        start = time.perf_counter()
        token_rate = check_token_rate(request.token_rate)
        waveform = validate_waveform(request.waveform, "waveform", max_seconds=float("inf"))
        n_frames = num_frames(waveform.size, token_rate)
        seed = request.seed
        if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
            raise TypeError(f"seed must be an int; got {seed!r}.")
        kept = request.kept_frames
        kept = np.arange(n_frames) if kept is None else validate_kept_frames(kept, n_frames, "kept_frames")
        joined = join_frames(waveform, kept, token_rate, self.crossfade_ms)
        seconds = {"assemble": time.perf_counter() - start}
        if token_rate not in self._codecs:
            mark = time.perf_counter()
            self.codec(token_rate)
            seconds["load"] = time.perf_counter() - mark
        codec = self.codec(token_rate)
        mark = time.perf_counter()
        tokens = codec.encode(joined)
        seconds["encode"] = time.perf_counter() - mark
        spent = codec.spent_frames(joined.size)
        if tokens.shape != (spent, 2):
            raise RuntimeError(
                f"{self.backend} encoded {kept.size} kept frames ({joined.size} samples) to tokens of shape "
                f"{tokens.shape}; it spends [{spent}, 2] on that many samples."
            )
        mark = time.perf_counter()
        decoded = codec.decode(tokens, seed=int(seed))[: joined.size]
        seconds["decode"] = time.perf_counter() - mark
        seconds["total"] = time.perf_counter() - start
        return CodecReply(
            request.request_id, tokens, decoded.astype(np.float32), seconds, n_frames=n_frames,
            clip_tokens=2 * codec.spent_frames(waveform.size), peak_rss_bytes=peak_rss_bytes(),
        )
