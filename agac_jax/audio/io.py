"""Reading and checking clips: float32 mono 16 kHz, at most 30 s unless split into windows."""

from __future__ import annotations

import os
from typing import Literal, overload

import numpy as np
import soundfile
import soxr

from agac_jax.audio.grids import MAX_SECONDS, SAMPLE_RATE


def validate_waveform(x: np.ndarray, name: str, max_seconds: float = MAX_SECONDS, min_samples: int = 1) -> np.ndarray:
    """Check that x is a usable clip and return it as contiguous float32 [n].

    Args:
        x: mono waveform [n] at 16 kHz, float32 or float64, values nominally in [-1, 1].
        name: what the error messages call x (a file path, a data set id, ...).
        max_seconds: longest accepted clip (float("inf"): no limit).
        min_samples: shortest accepted clip (a model's one audio token: `Scorer.min_samples`).

    Raises:
        TypeError: x is not a numpy array or not floating point.
        ValueError: x is not 1-D, is empty or shorter than min_samples, holds NaN or inf, or is longer
            than max_seconds.
    """
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name}: expected a numpy array, got {type(x).__name__}")
    if not np.issubdtype(x.dtype, np.floating):
        hint = " (integer PCM: divide by the format's full scale, e.g. 32768 for int16)"
        raise TypeError(
            f"{name}: expected a float32 or float64 waveform, got dtype {x.dtype}"
            f"{hint if np.issubdtype(x.dtype, np.integer) else ''}"
        )
    if x.ndim != 1:
        raise ValueError(f"{name}: expected a mono waveform of shape [samples], got shape {x.shape}")
    if x.size == 0:
        raise ValueError(f"{name}: the waveform is empty")
    if x.size < min_samples:
        raise ValueError(f"{name}: the clip is too short: {x.size} samples ({1000 * x.size / SAMPLE_RATE:.3g} ms at "
                         f"{SAMPLE_RATE} Hz); the model needs at least {min_samples} samples "
                         f"({1000 * min_samples / SAMPLE_RATE:.3g} ms) for one audio token")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name}: the waveform contains NaN or inf")
    if x.size > max_seconds * SAMPLE_RATE:
        raise ValueError(
            f"{name}: the clip is {x.size / SAMPLE_RATE:.2f} s long ({x.size} samples at {SAMPLE_RATE} Hz), "
            f"longer than {max_seconds:g} s; it is never truncated: split it into {max_seconds:g} s windows "
            f"with split_windows=True (load_audio) or agac_jax.audio.io.split_windows"
        )
    return np.ascontiguousarray(x, dtype=np.float32)


def split_windows(x: np.ndarray, seconds: float = MAX_SECONDS, name: str = "waveform") -> list[np.ndarray]:
    """Cut a clip into consecutive windows of `seconds`; the last one holds the remainder.

    Args:
        x: mono float waveform [n] at 16 kHz, any length.
        seconds: window length (> 0, at most 30 s).
        name: what the error messages call x.

    Returns:
        ceil(n / window) float32 arrays; joined in order they give back x, sample for sample.
    """
    if not 0 < seconds <= MAX_SECONDS:
        raise ValueError(f"seconds must be in (0, {MAX_SECONDS}], got {seconds!r}")
    window = int(round(seconds * SAMPLE_RATE))
    x = validate_waveform(x, name, max_seconds=float("inf"))
    return [x[start : start + window] for start in range(0, x.size, window)]


# load_audio's keyword argument `split_windows` shadows the function inside load_audio.
_split_into_windows = split_windows


def _to_mono(data: np.ndarray) -> np.ndarray:
    """Average the channels of data [samples, channels] -> [samples]."""
    return data.mean(axis=1, dtype=np.float64).astype(np.float32) if data.shape[1] > 1 else data[:, 0]


def _resample(x: np.ndarray, rate: int) -> np.ndarray:
    """Resample float32 [n] from `rate` Hz to 16 kHz.

    soxr at quality "soxr_hq" is what ``librosa.resample`` (and ``librosa.load(sr=16000)``) runs by
    default, sample for sample; calling it directly avoids librosa's seconds-long first import.
    """
    return soxr.resample(x, rate, SAMPLE_RATE, quality="soxr_hq").astype(np.float32)


@overload
def load_audio(path: str | os.PathLike, *, split_windows: Literal[False] = False) -> np.ndarray: ...


@overload
def load_audio(path: str | os.PathLike, *, split_windows: Literal[True]) -> list[np.ndarray]: ...


def load_audio(path: str | os.PathLike, *, split_windows: bool = False) -> np.ndarray | list[np.ndarray]:
    """Read an audio file as float32 mono 16 kHz.

    Channels are averaged; other sample rates are resampled as librosa does by default (soxr_hq).

    Args:
        path: any format soundfile reads (wav, flac, ogg, ...).
        split_windows: False: the clip [n], an error if longer than 30 s.
            True: the list of its 30 s windows (see :func:`split_windows`), also for short clips.

    Raises:
        FileNotFoundError: no such file. ValueError: unreadable, empty, NaN/inf, or too long; every
        message names the file.
    """
    name = os.fspath(path)
    if not os.path.isfile(name):
        raise FileNotFoundError(f"{name}: no such audio file")
    try:
        data, rate = soundfile.read(name, dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError) as error:
        raise ValueError(f"{name}: cannot read audio: {error}") from error
    if data.shape[0] == 0:
        raise ValueError(f"{name}: the file holds no samples")
    x = _to_mono(data)
    if rate != SAMPLE_RATE:
        x = _resample(x, rate)
    if split_windows:
        return _split_into_windows(x, name=name)
    return validate_waveform(x, name)
