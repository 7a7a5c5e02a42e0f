"""Whisper log-mel features for Qwen2-Audio, for clips of any length up to 30 s.

The reference is transformers' ``WhisperFeatureExtractor`` called the way ``Qwen2AudioProcessor``
calls it: every clip is zero-padded to 30 s (480 000 samples), a centred STFT (n_fft 400, hop 160,
periodic Hann window, reflect padding of 200 samples at both ends of the padded signal) gives 3001
frames of which the last is dropped, the power spectrum goes through a Slaney mel filter bank, and
``log10`` is clamped from below at ``max - 8`` (the maximum over the whole 30 s padded clip) and
rescaled by ``(x + 4) / 4``.

Here the same numbers are computed for the first ``F`` frames only (``F`` a bucket, e.g. 500 frames
for a 5 s bucket). The frames of the 30 s version that lie beyond the clip by more than half a window
see only zeros, so they can neither raise the maximum nor differ from frame to frame; computing the
frames that touch the clip reproduces the maximum exactly, and every returned frame, valid or
padded, equals the 30 s reference at that index. Internally float64; output float32.

Grids: 16 kHz samples, 100 mel frames per second (hop 160), 25 audio tokens per second after the
encoder's stride-2 convolution and stride-2 average pooling.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import math
import threading
from collections.abc import Sequence

import numpy as np

from agac_jax.audio.grids import (
    FRAMES_PER_SECOND,
    encoder_output_lengths,
    HOP_LENGTH,
    MAX_FRAMES,
    MAX_SAMPLES,
    MAX_SECONDS,
    N_FFT,
    SAMPLE_RATE,
)
from agac_jax.audio.io import validate_waveform

FRAME_BUCKET_QUANTUM = FRAMES_PER_SECOND
DEFAULT_BUCKETS_SECONDS = (2, 4, 6, 8, 10, 12, 15, 20, 25, 30)  # 2-5 s apart: padding follows the clip
SUPPORTED_MEL_BINS = (80, 128)
LOG_RANGE = 8.0


# Slaney mel scale: 3 mels per 200 Hz below 1 kHz, then a constant ratio of 6.4 ** (1 / 27) per mel.
_SLANEY_HZ_PER_MEL = 200.0 / 3.0
_SLANEY_MIN_LOG_HZ = 1000.0
_SLANEY_MIN_LOG_MEL = _SLANEY_MIN_LOG_HZ / _SLANEY_HZ_PER_MEL
_SLANEY_LOG_STEP = math.log(6.4) / 27.0


def _hz_to_slaney_mel(hz: np.ndarray) -> np.ndarray:
    """Frequencies in Hz -> Slaney mels, elementwise, float64."""
    hz = np.asarray(hz, dtype=np.float64)
    linear = hz / _SLANEY_HZ_PER_MEL
    log_ratio = np.log(np.maximum(hz, _SLANEY_MIN_LOG_HZ) / _SLANEY_MIN_LOG_HZ)
    logarithmic = _SLANEY_MIN_LOG_MEL + log_ratio / _SLANEY_LOG_STEP
    return np.where(hz >= _SLANEY_MIN_LOG_HZ, logarithmic, linear)


def _slaney_mel_to_hz(mel: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_hz_to_slaney_mel`."""
    mel = np.asarray(mel, dtype=np.float64)
    linear = mel * _SLANEY_HZ_PER_MEL
    logarithmic = _SLANEY_MIN_LOG_HZ * np.exp(_SLANEY_LOG_STEP * (mel - _SLANEY_MIN_LOG_MEL))
    return np.where(mel >= _SLANEY_MIN_LOG_MEL, logarithmic, linear)


@functools.lru_cache(maxsize=4)
def mel_filter_bank(num_mel_bins: int) -> np.ndarray:
    """Triangular Slaney-scale, Slaney-normalised mel filters for 0..8 kHz.

    Returns:
        float64 array [n_fft // 2 + 1, num_mel_bins] (201 frequency bins); read-only, cached.
    """
    _check_mel_bins(num_mel_bins)
    fft_freqs = np.linspace(0.0, SAMPLE_RATE / 2, N_FFT // 2 + 1)
    mel_edges = np.linspace(
        _hz_to_slaney_mel(np.array(0.0)), _hz_to_slaney_mel(np.array(SAMPLE_RATE / 2)), num_mel_bins + 2
    )
    hz_edges = _slaney_mel_to_hz(mel_edges)
    widths = np.diff(hz_edges)
    slopes = hz_edges[np.newaxis, :] - fft_freqs[:, np.newaxis]
    rising = -slopes[:, :-2] / widths[:-1]
    falling = slopes[:, 2:] / widths[1:]
    filters = np.maximum(0.0, np.minimum(rising, falling))
    filters *= 2.0 / (hz_edges[2:] - hz_edges[:-2])
    filters.setflags(write=False)
    return filters


@functools.lru_cache(maxsize=1)
def _hann_window() -> np.ndarray:
    """Periodic Hann window of N_FFT samples (torch.hann_window's default), float64 [400]."""
    n = np.arange(N_FFT, dtype=np.float64)
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * n / N_FFT)
    window.setflags(write=False)
    return window


def _check_mel_bins(num_mel_bins: int) -> None:
    if num_mel_bins not in SUPPORTED_MEL_BINS:
        raise ValueError(f"num_mel_bins must be one of {SUPPORTED_MEL_BINS}, got {num_mel_bins!r}")


def _check_clip(waveform: np.ndarray, name: str, max_frames: int = MAX_FRAMES) -> np.ndarray:
    """Validate the clip (see validate_waveform) and return it as float64 [n] of float32 values.

    The reference casts to float32 before anything else.
    """
    return validate_waveform(waveform, name, max_seconds=max_frames / FRAMES_PER_SECOND).astype(np.float64)


def num_valid_frames(n_samples: int, max_frames: int = MAX_FRAMES) -> int:
    """Mel frames the feature attention mask marks valid for a clip of n_samples (at most the encoder's
    window of `max_frames`, 3000 = 30 s for the released model).

    Equal to ``ceil(n_samples / 160)``: the sample mask sampled every 160 samples.
    """
    if n_samples < 1 or n_samples > max_frames * HOP_LENGTH:
        raise ValueError(f"n_samples must be in [1, {max_frames * HOP_LENGTH}] (the encoder's window of "
                         f"{max_frames} mel frames), got {n_samples}")
    return -(-n_samples // HOP_LENGTH)


def _frames_touching_clip(n_samples: int, max_frames: int) -> int:
    """Frames whose window [160 i - 200, 160 i + 200) overlaps samples [0, n_samples)."""
    return min(max_frames, -(-(n_samples + N_FFT // 2) // HOP_LENGTH))


def _log_mel_frames(clip: np.ndarray, num_mel_bins: int, num_frames: int, max_frames: int) -> np.ndarray:
    """First num_frames frames of the reference's clamped log10 mel power over a window of
    `max_frames` frames (the feature extractor's chunk), float64 [mels, frames].

    ``clip`` is float64 [n], n <= 160 max_frames. The global maximum is taken over every frame that
    touches the clip, which is the maximum over all frames of the reference's window.
    """
    computed = max(num_frames, _frames_touching_clip(clip.size, max_frames))
    padded_length = (computed - 1) * HOP_LENGTH + N_FFT
    # Only the last frame of the full window reaches the right-hand reflect padding.
    signal_length = min(max_frames * HOP_LENGTH, padded_length - N_FFT // 2)
    signal = np.zeros(signal_length, dtype=np.float64)
    signal[: clip.size] = clip
    padded = np.pad(signal, N_FFT // 2, mode="reflect")[:padded_length]
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP_LENGTH]
    spectrum = np.fft.rfft(frames * _hann_window(), axis=-1)
    power = spectrum.real**2 + spectrum.imag**2
    mel = (power @ mel_filter_bank(num_mel_bins)).T
    log_spec = np.log10(np.maximum(mel, 1e-10))
    log_spec = np.maximum(log_spec, log_spec.max() - LOG_RANGE)
    return log_spec[:, :num_frames]


def log_mel(
    waveform: np.ndarray,
    num_mel_bins: int = 128,
    pad_to_samples: int | None = None,
    *,
    name: str = "waveform",
    max_frames: int = MAX_FRAMES,
) -> tuple[np.ndarray, int]:
    """Whisper log-mel features of one 16 kHz mono clip, equal to the 30 s reference frame by frame.

    Args:
        waveform: float array [n], n <= 480 000 (30 s).
        num_mel_bins: 80 or 128 (Qwen2-Audio uses 128).
        pad_to_samples: length the clip is treated as padded to; the result has
            ``pad_to_samples // 160`` frames. None: just the valid frames, ``ceil(n / 160)``.
            Must be at least n and at most 160 max_frames.
        name: what error messages call the waveform.
        max_frames: the encoder's window in mel frames (2 x max_source_positions; 3000 = 30 s).

    Returns:
        (features float32 [num_mel_bins, frames], number of valid frames ``ceil(n / 160)``).
        Frames past the valid ones hold the reference's values for the zero padding.
    """
    _check_mel_bins(num_mel_bins)
    clip = _check_clip(waveform, name, max_frames)
    valid = num_valid_frames(clip.size, max_frames)
    max_samples = max_frames * HOP_LENGTH
    if pad_to_samples is None:
        num_frames = valid
    else:
        if not isinstance(pad_to_samples, (int, np.integer)) or not clip.size <= pad_to_samples <= max_samples:
            raise ValueError(
                f"pad_to_samples must be an int in [{clip.size} (the length of {name}), {max_samples}], "
                f"got {pad_to_samples!r}"
            )
        num_frames = int(pad_to_samples) // HOP_LENGTH
        if num_frames < valid:
            raise ValueError(
                f"pad_to_samples={pad_to_samples} gives {num_frames} frames, fewer than the {valid} valid "
                f"frames of {name}; use a multiple of {HOP_LENGTH} samples"
            )
    log_spec = _log_mel_frames(clip, num_mel_bins, num_frames, max_frames)
    return ((log_spec + 4.0) / 4.0).astype(np.float32), valid


def check_pad_to_frames(pad_to_frames: int, max_frames: int = MAX_FRAMES) -> int:
    """Validate a frame bucket: a positive multiple of 100 frames (1 s) up to the encoder's window of
    `max_frames`, or the window itself."""
    if (
        not isinstance(pad_to_frames, (int, np.integer))
        or pad_to_frames <= 0
        or pad_to_frames > max_frames
        or (pad_to_frames % FRAME_BUCKET_QUANTUM and pad_to_frames != max_frames)
    ):
        raise ValueError(
            f"pad_to_frames must be a positive multiple of {FRAME_BUCKET_QUANTUM} frames (1 s), "
            f"at most the encoder's window of {max_frames} frames, or that window; got {pad_to_frames!r}"
        )
    return int(pad_to_frames)


SILENCE_LOG_MEL = -1.5  # every frame of zeros: log10 clamps to -10 everywhere, (x + 4) / 4 = -1.5


def silence_log_mel(batch: int, num_mel_bins: int, pad_to_frames: int, max_frames: int = MAX_FRAMES) -> np.ndarray:
    """float32 [batch, num_mel_bins, pad_to_frames]: the log-mel of zeros (any length), without the STFT.

    Equal to `batch_log_mel` of all-zero clips (tested): with no energy anywhere, the clamp to the
    maximum minus 8 leaves the constant log10 floor, which Whisper's scaling maps to -1.5.
    """
    return np.full((batch, num_mel_bins, check_pad_to_frames(pad_to_frames, max_frames)), SILENCE_LOG_MEL,
                   np.float32)


def batch_log_mel(
    waveforms: Sequence[np.ndarray],
    num_mel_bins: int = 128,
    pad_to_frames: int = MAX_FRAMES,
    max_frames: int = MAX_FRAMES,
) -> tuple[np.ndarray, np.ndarray]:
    """Log-mel features of a batch of clips, each padded to the same frame bucket.

    Args:
        waveforms: B float arrays [n_b], each at most as long as the bucket (n_b <= 160 * pad_to_frames).
        num_mel_bins: 80 or 128.
        pad_to_frames: the bucket, a multiple of 100 frames up to max_frames (the processor's window).
        max_frames: the encoder's window in mel frames (3000 = 30 s for the released model).

    Returns:
        features float32 [B, num_mel_bins, pad_to_frames] and feature_attention_mask int32
        [B, pad_to_frames] (1 on each clip's ``ceil(n_b / 160)`` valid frames), both equal to
        WhisperFeatureExtractor's on the first pad_to_frames frames.
    """
    pad_to_frames = check_pad_to_frames(pad_to_frames, max_frames)
    if len(waveforms) == 0:
        raise ValueError("waveforms is empty: pass at least one clip")
    features = np.empty((len(waveforms), num_mel_bins, pad_to_frames), dtype=np.float32)
    mask = np.zeros((len(waveforms), pad_to_frames), dtype=np.int32)
    for index, waveform in enumerate(waveforms):
        name = f"waveforms[{index}]"
        n_samples = np.asarray(waveform).size
        if n_samples > pad_to_frames * HOP_LENGTH:
            raise ValueError(
                f"{name} has {n_samples} samples, longer than the bucket of {pad_to_frames} frames "
                f"({pad_to_frames * HOP_LENGTH} samples); pick a larger bucket (see bucket_seconds)"
            )
        features[index], valid = _recent_log_mel(waveform, num_mel_bins, pad_to_frames, max_frames, name)
        mask[index, :valid] = 1
    return features, mask


RECENT_LOG_MELS = 64  # clips whose features `batch_log_mel` keeps (a sweep batch's, several times over)
_recent: collections.OrderedDict[tuple, tuple[np.ndarray, int]] = collections.OrderedDict()
_recent_lock = threading.Lock()


def _recent_log_mel(waveform: np.ndarray, num_mel_bins: int, pad_to_frames: int, max_frames: int,
                    name: str) -> tuple[np.ndarray, int]:
    """`log_mel` of a clip padded to the bucket, computed once for the last RECENT_LOG_MELS distinct
    (clip, bucket)s: a sweep answers a clip, then scores it with the same features. Keyed by the clip's
    bytes (a 16-byte BLAKE2 digest, 0.7 ms for 10 s against 15 ms for its log-mel), so equal input is
    the only hit."""
    clip = np.asarray(waveform)
    key = (hashlib.blake2b(clip.tobytes(), digest_size=16).digest(), clip.dtype.str, clip.shape,
           num_mel_bins, pad_to_frames, max_frames)
    with _recent_lock:
        hit = _recent.get(key)
        if hit is not None:
            _recent.move_to_end(key)
            return hit
    features, valid = log_mel(clip, num_mel_bins, pad_to_frames * HOP_LENGTH, name=name, max_frames=max_frames)
    features.flags.writeable = False
    with _recent_lock:
        _recent[key] = (features, valid)
        while len(_recent) > RECENT_LOG_MELS:
            _recent.popitem(last=False)
    return features, valid


feat_extract_output_lengths = encoder_output_lengths  # transformers' `_get_feat_extract_output_lengths`


def audio_token_count(num_valid_mel_frames: int | np.ndarray) -> int | np.ndarray:
    """Number of ``<|AUDIO|>`` tokens (LLM audio grid, 40 ms each) for a clip's valid mel frames."""
    if np.any(np.asarray(num_valid_mel_frames) < 1):
        raise ValueError(f"num_valid_mel_frames must be >= 1, got {num_valid_mel_frames!r}")
    return feat_extract_output_lengths(num_valid_mel_frames)[1]


def bucket_seconds(n_samples: int, buckets: Sequence[int] = DEFAULT_BUCKETS_SECONDS) -> int:
    """The smallest bucket (in whole seconds) that holds a clip of n_samples at 16 kHz."""
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    if not buckets or any(b <= 0 or b > MAX_SECONDS or int(b) != b for b in buckets):
        raise ValueError(f"buckets must be whole seconds in [1, {MAX_SECONDS}], got {tuple(buckets)!r}")
    for seconds in sorted(buckets):
        if n_samples <= seconds * SAMPLE_RATE:
            return int(seconds)
    raise ValueError(
        f"a clip of {n_samples} samples ({n_samples / SAMPLE_RATE:.2f} s) is longer than the largest "
        f"bucket, {max(buckets)} s; split it with agac_jax.audio.io.split_windows"
    )


def bucket_frames(n_samples: int, buckets: Sequence[int] = DEFAULT_BUCKETS_SECONDS) -> int:
    """The frame bucket (pad_to_frames) for a clip of n_samples: ``100 * bucket_seconds``.

    It holds the clip's samples, not always the frames the encoder reads past them: training uses it
    (its buckets are its own); inference uses `encoder_bucket_frames`, which equals transformers.
    """
    return bucket_seconds(n_samples, buckets) * FRAMES_PER_SECOND


def encoder_frames_needed(num_valid: int) -> int:
    """Mel frames the audio encoder reads to compute the valid positions of a clip of `num_valid` frames.

    conv1 (kernel 3, stride 1, padding 1) and conv2 (kernel 3, stride 2, padding 1) leave
    P = (V - 1) // 2 + 1 valid positions; the last reads conv1 outputs up to 2P - 1, which read frames
    up to 2P. So 2P + 1 frames: one past the valid end for even V, two for odd V. With fewer, the
    convolutions' zero padding stands in for the padding frames of transformers' 30 s input and the
    last audio token differs.
    """
    return 2 * ((num_valid - 1) // 2 + 1) + 1


def encoder_bucket_frames(n_samples: int, buckets: Sequence[int] = DEFAULT_BUCKETS_SECONDS,
                          max_frames: int = MAX_FRAMES) -> int:
    """The smallest bucket (in frames) whose features give the encoder exactly transformers' full-window
    result on every valid position of a clip of n_samples (`encoder_frames_needed`); the whole window
    of `max_frames` when no bucket of `buckets` shorter than it does (the window is the reference)."""
    valid = num_valid_frames(n_samples, max_frames)
    needed = encoder_frames_needed(valid)
    for seconds in sorted(buckets):
        if needed <= seconds * FRAMES_PER_SECOND < max_frames:
            return int(seconds) * FRAMES_PER_SECOND
    return max_frames
