"""The sample interface shared by every data set, and WAV loading at 16 kHz.

Every loader (synthetic, ClothoAQA, AVHBench) yields `AudioQASample`s: a yes/no question about one
clip, its reference answer, a lazily loaded mono float32 16 kHz waveform, and, where the data set
knows it, the time intervals (seconds) of the audio that decides the answer.

`evidence` is `None` when the data set does not record evidence (ClothoAQA, AVHBench) and an empty
tuple when the answer rests on no localised stretch of audio (a synthetic "no" existence question).

Paths a data set's rows name (a CSV's file name, a parquet row's audio path, an AVHBench video id)
go through `resolve_inside`: resolved with symlinks followed, they must lie inside the data set's
root, else the row is skipped with a reason beginning `OUTSIDE_ROOT`. A loader's input errors (a
file it cannot parse, a missing column, several candidate annotation files) raise `DatasetError`,
which the launch scripts print as one `error:` line naming the file.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import soundfile

from agac_jax.cli import errors
from agac_jax.audio.grids import SAMPLE_RATE

YES = "yes"
NO = "no"
ANSWERS = (YES, NO)

Interval = tuple[float, float]

OUTSIDE_ROOT = "outside the data set root"
# Phrases that open or mark a loader's skip reasons, for counting skips by kind (`skip_kind`).
SKIP_KINDS = (
    OUTSIDE_ROOT,
    "missing audio file",
    "unreadable audio file",
    "empty audio file",
    "no audio",
    "tied vote",
    "missing video",
    "unreadable JSON",
    "neither yes nor no",
    "empty caption",
    "lacks keys",
    "names video",
    "not an object",
)

logger = logging.getLogger(__name__)


class DatasetError(errors.UserError, ValueError):
    """A data set's files cannot be read as that data set (the message names the file and what is wrong)."""


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
    """One yes/no question about one clip, or one free-text request (a caption) with its reference text.

    Attributes:
      sample_id: unique within the data set and split.
      clip_id: identifies the clip; several samples may share one clip.
      question: the question text given to the model (with `prompt_suffix` at its end).
      answer: the reference answer, "yes" or "no"; "" for a free-text sample.
      audio: produces the clip's waveform on demand.
      evidence: intervals (start_s, end_s) of the audio that decides the answer, sorted by start;
        None when unknown, () when the answer rests on no localised stretch of audio.
      prompt_suffix: the text appended to the data set's question (`with_prompt_suffix`), "" for none.
      reference: None for a yes/no question; for a free-text sample (AVHBench's captioning) the
        reference text the reply is scored against (`eval.cider`), never empty.
    """

    sample_id: str
    clip_id: str
    question: str
    answer: str
    audio: AudioSource
    evidence: tuple[Interval, ...] | None = None
    prompt_suffix: str = ""
    reference: str | None = None

    def __post_init__(self) -> None:
        if self.reference is not None:
            if not self.reference.strip() or self.answer:
                raise ValueError(f"free-text sample {self.sample_id!r} needs a non-empty reference and answer ''")
        elif self.answer not in ANSWERS:
            raise ValueError(f"answer of sample {self.sample_id!r} must be 'yes' or 'no', got {self.answer!r}")
        if self.evidence is not None:
            validate_intervals(self.evidence, name=f"evidence of sample {self.sample_id!r}")

    def load_waveform(self) -> np.ndarray:
        """Returns the clip as mono float32 at 16 kHz, shape [num_samples]."""
        return self.audio.load()

    def with_prompt_suffix(self, suffix: str) -> "AudioQASample":
        """This sample asked with `suffix` appended to its question (and recorded in `prompt_suffix`)."""
        if not suffix:
            return self
        return dataclasses.replace(self, question=self.question + suffix, prompt_suffix=self.prompt_suffix + suffix)


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


def resolve_inside(base: Path, name: str) -> tuple[Path | None, str | None]:
    """The file `name` (relative to `base`) resolved, symlinks followed, if it lies inside `base`.

    `base` itself may be a symlink: containment is checked against its resolved target. Returns
    (resolved path, None), or (None, reason) when the path is absolute and elsewhere, climbs out
    with "..", or is a symlink (or lies below one) whose target is outside; the reason begins with
    OUTSIDE_ROOT.
    """
    inside = base.resolve()
    resolved = (base / name).resolve()
    if resolved == inside or resolved.is_relative_to(inside):
        return resolved, None
    if Path(name).is_absolute():
        how = f"absolute path {name!r}"
    elif ".." in Path(name).parts:
        how = f"path {name!r} climbs out with '..'"
    else:
        how = f"{base / name} links to {resolved}"
    return None, f"{OUTSIDE_ROOT} {base}: {how}"


def skip_kind(reason: str) -> str:
    """The kind of a skip reason: the first phrase of SKIP_KINDS it contains, else "other"."""
    return next((kind for kind in SKIP_KINDS if kind in reason), "other")


def skip_counts(reasons: list[str]) -> dict[str, int]:
    """How many skip reasons there are of each kind, most frequent first."""
    counts: dict[str, int] = {}
    for reason in reasons:
        kind = skip_kind(reason)
        counts[kind] = counts.get(kind, 0) + 1
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def normalize_answer(text: str) -> str:
    """Lower-cases, strips spaces and a final '.' or '!': ' Yes.' -> 'yes'."""
    return text.strip().lower().rstrip(".!").strip()


def record_skip(skipped: list[SkippedItem], item: str, reason: str) -> None:
    """Appends a SkippedItem and logs it as a warning."""
    skipped.append(SkippedItem(item=item, reason=reason))
    logger.warning("skipping %s: %s", item, reason)
