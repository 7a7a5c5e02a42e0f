"""AVHBench, one task (by default the audio-driven video hallucination task), in its layout.

    {root}/json/{video_id}.json    a list of {"video_id", "task", "text", "label"}
    {root}/video/{video_id}.mp4

- Entries are selected by task, compared case-insensitively with runs of spaces collapsed
  (default "Audio-driven Video Hallucination"). If none match, the tasks that were found are logged.
- Labels are normalised like answers ("Yes", "yes.", " NO " -> yes/no); any other label is skipped.
- A missing video, an unreadable JSON file, an entry lacking a key or naming another video than its
  file, and an unknown label are skipped with the reason and logged; loading goes on.
- The audio is the video's soundtrack, extracted on demand with ffmpeg (mono, 16 kHz, float32).
  Loading the annotations needs no ffmpeg; extracting does, and says so clearly when it is absent.
  `export_soundtracks` extracts once to WAV files, skipping videos ffmpeg cannot read.

The data set records no evidence intervals.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile

from agac_jax.data.common import (
    ANSWERS,
    SAMPLE_RATE,
    AudioQASample,
    LoadedDataset,
    SkippedItem,
    WavFile,
    normalize_answer,
    record_skip,
)

DEFAULT_TASK = "Audio-driven Video Hallucination"
REQUIRED_KEYS = ("video_id", "task", "text", "label")

logger = logging.getLogger(__name__)


class FfmpegNotFoundError(RuntimeError):
    """ffmpeg is needed to take the audio out of a video and was not found."""


class AudioExtractionError(RuntimeError):
    """ffmpeg ran but gave no audio (unreadable video, no audio stream, ...)."""


def find_ffmpeg(ffmpeg: str | None = None) -> str:
    """The ffmpeg executable to use: `ffmpeg` if given, else the one on PATH, else the static build of
    the `imageio-ffmpeg` package (pinned in requirements.txt, so a fresh set-up always has one).

    Raises FfmpegNotFoundError, saying how to install it, when there is none.
    """
    found = shutil.which(ffmpeg or "ffmpeg")
    if found is None and ffmpeg is None:
        try:
            import imageio_ffmpeg

            found = imageio_ffmpeg.get_ffmpeg_exe()
        except (ImportError, RuntimeError):
            found = None
    if found is None:
        raise FfmpegNotFoundError(
            f"ffmpeg executable {ffmpeg or 'ffmpeg'!r} not found: AVHBench audio is the soundtrack of its "
            "mp4 videos and ffmpeg extracts it. Install ffmpeg (e.g. `apt-get install ffmpeg` or "
            "`conda install -c conda-forge ffmpeg`) or pass the executable's path as `ffmpeg`."
        )
    return found


def extract_audio(video: Path | str, ffmpeg: str | None = None) -> np.ndarray:
    """The soundtrack of a video as mono float32 at 16 kHz, shape [num_samples].

    Raises FileNotFoundError for a missing video, FfmpegNotFoundError without ffmpeg and
    AudioExtractionError when ffmpeg fails or finds no audio.
    """
    video = Path(video)
    if not video.is_file():
        raise FileNotFoundError(f"video not found: {video}")
    command = [
        find_ffmpeg(ffmpeg), "-nostdin", "-v", "error", "-i", str(video),
        "-vn", "-ac", "1", "-ar", str(SAMPLE_RATE), "-f", "f32le", "-acodec", "pcm_f32le", "pipe:1",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, check=False)
    if result.returncode != 0:
        message = result.stderr.decode(errors="replace").strip()
        raise AudioExtractionError(f"ffmpeg could not extract audio from {video}: {message}")
    audio = np.frombuffer(result.stdout, dtype="<f4").astype(np.float32)
    if audio.size == 0:
        raise AudioExtractionError(f"ffmpeg found no audio in {video}")
    return audio


@dataclasses.dataclass(frozen=True)
class VideoSoundtrack:
    """A clip that is the soundtrack of a video file, extracted with ffmpeg when loaded."""

    path: Path
    ffmpeg: str | None = None

    def load(self) -> np.ndarray:
        """Returns the soundtrack as mono float32 at 16 kHz, shape [num_samples]."""
        return extract_audio(self.path, self.ffmpeg)


def _task_key(task: str) -> str:
    return " ".join(task.split()).lower()


def _read_entries(path: Path) -> list:
    """The entries of one annotation file; raises ValueError when it is not a JSON list."""
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"unreadable JSON: {error}") from error
    if not isinstance(entries, list):
        raise ValueError(f"expected a JSON list of entries, got {type(entries).__name__}")
    return entries


def _entry_problem(entry: object, video_id: str) -> str | None:
    """Why an annotation entry cannot become a sample, or None."""
    if not isinstance(entry, dict):
        return f"entry is not an object: {entry!r}"
    missing = [key for key in REQUIRED_KEYS if key not in entry]
    if missing:
        return f"entry lacks keys {missing}"
    if str(entry["video_id"]) != video_id:
        return f"entry names video {entry['video_id']!r} inside {video_id}.json"
    if normalize_answer(str(entry["label"])) not in ANSWERS:
        return f"label {entry['label']!r} is neither yes nor no"
    return None


def load_avhbench(root: Path | str, task: str = DEFAULT_TASK, ffmpeg: str | None = None) -> LoadedDataset:
    """Loads the entries of one AVHBench task.

    Args:
      root: the directory holding json/ and video/.
      task: the task string to select (case and repeated spaces ignored).
      ffmpeg: the ffmpeg executable the samples will use to extract audio (default: on PATH).
    Returns:
      The samples (sample_id "{video_id}/{entry index in its file}", clip_id the video id,
      question the entry's text, evidence None) and the skipped items with their reasons.
    Raises:
      FileNotFoundError if {root}/json is not a directory.
    """
    root = Path(root)
    json_directory = root / "json"
    if not json_directory.is_dir():
        raise FileNotFoundError(f"AVHBench annotations not found: {json_directory} is not a directory")
    wanted = _task_key(task)
    samples: list[AudioQASample] = []
    skipped: list[SkippedItem] = []
    tasks_seen: set[str] = set()
    for json_path in sorted(json_directory.glob("*.json")):
        video_id = json_path.stem
        try:
            entries = _read_entries(json_path)
        except ValueError as error:
            record_skip(skipped, str(json_path), str(error))
            continue
        video = root / "video" / f"{video_id}.mp4"
        for index, entry in enumerate(entries):
            if isinstance(entry, dict) and "task" in entry:
                tasks_seen.add(str(entry["task"]))
                if _task_key(str(entry["task"])) != wanted:
                    continue
            sample_id = f"{video_id}/{index}"
            problem = _entry_problem(entry, video_id)
            if problem is None and not video.is_file():
                problem = f"missing video {video}"
            if problem is not None:
                record_skip(skipped, sample_id, problem)
                continue
            samples.append(
                AudioQASample(
                    sample_id=sample_id,
                    clip_id=video_id,
                    question=str(entry["text"]).strip(),
                    answer=normalize_answer(str(entry["label"])),
                    audio=VideoSoundtrack(video, ffmpeg),
                )
            )
    if not samples and tasks_seen:
        logger.warning("no AVHBench entry has task %r; tasks found: %s", task, sorted(tasks_seen))
    return LoadedDataset(samples=samples, skipped=skipped)


def export_soundtracks(
    samples: Sequence[AudioQASample], directory: Path | str, ffmpeg: str | None = None
) -> LoadedDataset:
    """Extracts each clip's soundtrack once to `{directory}/{clip_id}.wav` (float32, 16 kHz).

    Returns the samples re-pointed at the WAV files, and the samples whose video ffmpeg could not
    read, as skipped items. Raises FfmpegNotFoundError up front when ffmpeg is absent.
    """
    find_ffmpeg(ffmpeg)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    problems: dict[str, str | None] = {}
    exported: list[AudioQASample] = []
    skipped: list[SkippedItem] = []
    for sample in samples:
        wav = directory / f"{sample.clip_id}.wav"
        if sample.clip_id not in problems:
            problems[sample.clip_id] = _export_one(sample, wav)
        if problems[sample.clip_id] is not None:
            record_skip(skipped, sample.sample_id, problems[sample.clip_id])
            continue
        exported.append(dataclasses.replace(sample, audio=WavFile(wav)))
    return LoadedDataset(samples=exported, skipped=skipped)


def _export_one(sample: AudioQASample, wav: Path) -> str | None:
    """Writes one soundtrack; returns why it failed, or None."""
    try:
        audio = sample.load_waveform()
    except (FileNotFoundError, AudioExtractionError) as error:
        return str(error)
    soundfile.write(wav, audio, SAMPLE_RATE, subtype="FLOAT")
    return None
