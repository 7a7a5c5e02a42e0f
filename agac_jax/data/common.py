"""The sample interface shared by every data set, and WAV loading at 16 kHz.

Every loader (synthetic, ClothoAQA, AVHBench) yields `AudioQASample`s: a yes/no question about one
clip, its reference answer, a lazily loaded mono float32 16 kHz waveform, and, where the data set
knows it, the time intervals (seconds) of the audio that decides the answer.

`evidence` is `None` when the data set does not record evidence (ClothoAQA, AVHBench) and an empty
tuple when the answer rests on no localised stretch of audio (a synthetic "no" existence question).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import soundfile

from agac_jax.audio.grids import SAMPLE_RATE

YES = "yes"
NO = "no"
ANSWERS = (YES, NO)

Interval = tuple[float, float]

logger = logging.getLogger(__name__)


@runtime_checkable
class AudioSource(Protocol):
    """Anything that can produce a clip's waveform on demand."""

    def load(self) -> np.ndarray:
        """Returns the clip as mono float32 at 16 kHz, shape [num_samples]."""
        ...


@dataclasses.dataclass(frozen=True)
class WavFile:
    """A clip stored as an audio file readable by libsndfile (WAV, FLAC, ...)."""

    path: Path

    def load(self) -> np.ndarray:
        """Returns the file as mono float32 at 16 kHz, shape [num_samples]."""
        return load_audio_file(self.path)


@dataclasses.dataclass(frozen=True, kw_only=True)
class AudioQASample:
    """One yes/no question about one clip.

    Attributes:
      sample_id: unique within the data set and split.
      clip_id: identifies the clip; several samples may share one clip.
      question: the question text given to the model.
      answer: the reference answer, "yes" or "no".
      audio: produces the clip's waveform on demand.
      evidence: intervals (start_s, end_s) of the audio that decides the answer, sorted by start;
        None when unknown, () when the answer rests on no localised stretch of audio.
    """

    sample_id: str
    clip_id: str
    question: str
    answer: str
    audio: AudioSource
    evidence: tuple[Interval, ...] | None = None

    def __post_init__(self) -> None:
        if self.answer not in ANSWERS:
            raise ValueError(f"answer of sample {self.sample_id!r} must be 'yes' or 'no', got {self.answer!r}")
        if self.evidence is not None:
            validate_intervals(self.evidence, name=f"evidence of sample {self.sample_id!r}")

    def load_waveform(self) -> np.ndarray:
        """Returns the clip as mono float32 at 16 kHz, shape [num_samples]."""
        return self.audio.load()


@dataclasses.dataclass(frozen=True)
class SkippedItem:
    """An item a loader left out, and why (missing clip, unreadable file, tied vote, ...)."""

    item: str
    reason: str


@dataclasses.dataclass(frozen=True)
class LoadedDataset:
    """What a loader returns: the usable samples and the items it had to skip."""

    samples: list[AudioQASample]
    skipped: list[SkippedItem]


def validate_intervals(intervals: tuple[Interval, ...], *, name: str) -> None:
    """Raises ValueError unless every interval is (start, end) with 0 <= start < end, finite."""
    for interval in intervals:
        if len(interval) != 2:
            raise ValueError(f"{name}: each interval must be (start_s, end_s), got {interval!r}")
        start, end = interval
        if not (np.isfinite(start) and np.isfinite(end) and 0.0 <= start < end):
            raise ValueError(f"{name}: interval {interval!r} must satisfy 0 <= start < end")


def to_mono_16k(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """Mixes channels down and resamples to 16 kHz.

    Args:
      audio: [num_samples] or [num_samples, channels], any float dtype.
      sample_rate: rate of `audio` in Hz.
    Returns:
      float32 [num_samples * 16000 / sample_rate (rounded up)].
    """
    if audio.ndim == 2:
        audio = audio.mean(axis=1)
    elif audio.ndim != 1:
        raise ValueError(f"audio must be [samples] or [samples, channels], got shape {audio.shape}")
    audio = np.asarray(audio, dtype=np.float32)
    if sample_rate != SAMPLE_RATE:
        import librosa  # deferred: librosa's import is slow and only needed for resampling

        audio = librosa.resample(audio, orig_sr=sample_rate, target_sr=SAMPLE_RATE, res_type="soxr_hq")
    return np.ascontiguousarray(audio, dtype=np.float32)


def load_audio_file(path: Path | str) -> np.ndarray:
    """Reads an audio file as mono float32 at 16 kHz, shape [num_samples].

    Raises FileNotFoundError when the file is missing and RuntimeError (libsndfile's) when it is
    not readable audio.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"audio file not found: {path}")
    audio, sample_rate = soundfile.read(path, dtype="float32", always_2d=True)
    return to_mono_16k(audio, sample_rate)


def audio_file_problem(path: Path) -> str | None:
    """Returns why `path` cannot serve as a clip (missing, unreadable, empty), or None if it can."""
    if not path.is_file():
        return f"missing audio file {path}"
    try:
        info = soundfile.info(path)
    except (RuntimeError, soundfile.LibsndfileError) as error:
        return f"unreadable audio file {path}: {error}"
    if info.frames == 0:
        return f"empty audio file {path}"
    return None


def normalize_answer(text: str) -> str:
    """Lower-cases, strips spaces and a final '.' or '!': ' Yes.' -> 'yes'."""
    return text.strip().lower().rstrip(".!").strip()


def record_skip(skipped: list[SkippedItem], item: str, reason: str) -> None:
    """Appends a SkippedItem and logs it as a warning."""
    skipped.append(SkippedItem(item=item, reason=reason))
    logger.warning("skipping %s: %s", item, reason)
