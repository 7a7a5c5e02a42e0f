"""Codec sidecar: kept frames -> joined waveform -> codec tokens -> decoded waveform (DESIGN.md 3, 6).

Importing this package pulls in numpy only. The codecs themselves (torch) live in the sidecar
process, ``python -m agac_jax.codec.sidecar``; the harness talks to it through ``CodecClient``.
"""

from agac_jax.codec.backends import BACKEND_NAMES, check_backend, make_codec
from agac_jax.codec.base import (
    SAMPLE_RATE,
    SUPPORTED_TOKEN_RATES,
    TOKENS_PER_FRAME,
    BackendUnavailableError,
    Codec,
    UnsupportedTokenRateError,
    frame_samples,
    frame_seconds,
    num_frames,
)
from agac_jax.codec.client import CodecClient, SidecarError
from agac_jax.codec.frames import DEFAULT_CROSSFADE_MS, join_frames, validate_kept_frames
from agac_jax.codec.protocol import CodecFailure, CodecReply, CodecRequest

__all__ = [
    "BACKEND_NAMES",
    "DEFAULT_CROSSFADE_MS",
    "SAMPLE_RATE",
    "SUPPORTED_TOKEN_RATES",
    "TOKENS_PER_FRAME",
    "BackendUnavailableError",
    "Codec",
    "CodecClient",
    "CodecFailure",
    "CodecReply",
    "CodecRequest",
    "SidecarError",
    "UnsupportedTokenRateError",
    "check_backend",
    "frame_samples",
    "frame_seconds",
    "join_frames",
    "make_codec",
    "num_frames",
    "validate_kept_frames",
]
