"""The codec interface and the frame grid that every backend shares (DESIGN.md sections 3 and 6).

A codec at token rate r emits r tokens per second from two codebooks, so a frame lasts 2 / r s
(``frame_samples(r) = 32000 / r`` samples at 16 kHz) and carries 2 tokens. A waveform of n samples
has N = ceil(n / frame_samples) frames; the last one is clipped to the waveform's end. A backend
encodes n samples to ``spent_frames(n)`` frames: N for ``rvq_mel``, N rounded up to whole AudioMAE
patches for SemantiCodec; that count is what the codec really spends.

This module is numpy-only: the sidecar (torch) and the evaluation harness (jax) both import it.
"""

from __future__ import annotations

import abc
import math

import numpy as np

from agac_jax.audio.grids import CODEC_TOKEN_RATES as SUPPORTED_TOKEN_RATES
from agac_jax.audio.grids import CODEC_TOKENS_PER_FRAME as TOKENS_PER_FRAME
from agac_jax.audio.grids import SAMPLE_RATE
from agac_jax.audio.io import validate_waveform  # the one definition; re-exported for the backends


class UnsupportedTokenRateError(ValueError):
    """A token rate that the codec grid or a backend does not provide."""


class BackendUnavailableError(RuntimeError):
    """A backend whose package or weights are missing; the message says what to install and where."""


def check_token_rate(token_rate: object) -> int:
    """``token_rate`` as an int, or UnsupportedTokenRateError naming the supported rates."""
    if isinstance(token_rate, (bool, np.bool_)) or not isinstance(token_rate, (int, np.integer)):
        raise UnsupportedTokenRateError(
            f"token_rate must be an int in {SUPPORTED_TOKEN_RATES}; got {token_rate!r} "
            f"({type(token_rate).__name__})."
        )
    if int(token_rate) not in SUPPORTED_TOKEN_RATES:
        raise UnsupportedTokenRateError(
            f"token_rate {int(token_rate)} is not supported; supported rates: {SUPPORTED_TOKEN_RATES} "
            "tokens per second."
        )
    return int(token_rate)


def frame_samples(token_rate: int) -> int:
    """Samples per codec frame at 16 kHz: 1280, 640, 320 for r = 25, 50, 100."""
    return SAMPLE_RATE * TOKENS_PER_FRAME // check_token_rate(token_rate)


def frame_seconds(token_rate: int) -> float:
    """Seconds per codec frame, 2 / r."""
    return TOKENS_PER_FRAME / check_token_rate(token_rate)


def num_frames(num_samples: int, token_rate: int) -> int:
    """N = ceil(num_samples / frame_samples(token_rate)); the last frame may be clipped."""
    if num_samples < 0:
        raise ValueError(f"num_samples must be >= 0; got {num_samples}.")
    return math.ceil(num_samples / frame_samples(token_rate))


def validate_tokens(tokens: object, name: str = "tokens") -> np.ndarray:
    """Integer tokens of shape [N, 2] with N >= 1, as int64."""
    if not isinstance(tokens, np.ndarray):
        raise TypeError(f"{name} must be a numpy array; got {type(tokens).__name__}.")
    if not np.issubdtype(tokens.dtype, np.integer):
        raise TypeError(f"{name} must have an integer dtype; got {tokens.dtype}.")
    if tokens.ndim != 2 or tokens.shape[1] != TOKENS_PER_FRAME or tokens.shape[0] == 0:
        raise ValueError(f"{name} must have shape [N >= 1, {TOKENS_PER_FRAME}]; got {tokens.shape}.")
    return tokens.astype(np.int64, copy=False)


class Codec(abc.ABC):
    """A 16 kHz audio codec with two tokens per frame at ``token_rate`` tokens per second."""

    token_rate: int

    @property
    def frame_seconds(self) -> float:
        """Seconds per frame, 2 / token_rate."""
        return frame_seconds(self.token_rate)

    @property
    def frame_samples(self) -> int:
        """Samples per frame, 32000 / token_rate."""
        return frame_samples(self.token_rate)

    def spent_frames(self, num_samples: int) -> int:
        """Frames (token pairs) the codec spends on ``num_samples`` samples: ceil(n / frame_samples)
        unless the codec works in larger units (SemantiCodec: whole AudioMAE patches)."""
        return num_frames(num_samples, self.token_rate)

    @abc.abstractmethod
    def encode(self, waveform: np.ndarray) -> np.ndarray:
        """Waveform float32 [n] -> tokens int64 [spent_frames(n), 2]."""

    @abc.abstractmethod
    def decode(self, tokens: np.ndarray, seed: int | None = None) -> np.ndarray:
        """Tokens int [N, 2] -> waveform float32 [N * frame_samples]. A stochastic decoder seeds its
        draw from ``seed`` (None: leave the generator as it is); a deterministic one ignores it."""
