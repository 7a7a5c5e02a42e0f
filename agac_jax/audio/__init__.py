"""Audio input: reading clips (io) and Whisper log-mel features on the Qwen2-Audio grids (features)."""

from agac_jax.audio.features import (
    audio_token_count,
    batch_log_mel,
    bucket_frames,
    bucket_seconds,
    feat_extract_output_lengths,
    log_mel,
    num_valid_frames,
)
from agac_jax.audio.grids import (
    FRAMES_PER_SECOND,
    HOP_LENGTH,
    MAX_FRAMES,
    MAX_SAMPLES,
    MAX_SECONDS,
    SAMPLE_RATE,
    SAMPLES_PER_AUDIO_TOKEN,
)
from agac_jax.audio.io import load_audio, split_windows, validate_waveform

__all__ = [
    "FRAMES_PER_SECOND",
    "HOP_LENGTH",
    "MAX_FRAMES",
    "MAX_SAMPLES",
    "MAX_SECONDS",
    "SAMPLE_RATE",
    "SAMPLES_PER_AUDIO_TOKEN",
    "audio_token_count",
    "batch_log_mel",
    "bucket_frames",
    "bucket_seconds",
    "feat_extract_output_lengths",
    "log_mel",
    "load_audio",
    "num_valid_frames",
    "split_windows",
    "validate_waveform",
]
