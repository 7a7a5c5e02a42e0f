"""AVHBench, one task (by default the audio-driven video hallucination task), in either released layout.

Tasks (`TASKS`, the `task` strings of the released QA json): "Audio-driven Video Hallucination"
("Is the X visible in the video?"), "Video-driven Audio Hallucination" ("Is the X making sound in the
audio?"), "AV Matching" ("Are the contexts of audio and visual content matching?"), all yes/no, and
"AV Captioning" ("Describe what you see and hear in a single sentence.", whose label is the reference
caption). Each entry's `text` is the prompt as it is: the benchmark's own fine-tuning code asks it
verbatim, with no instruction added. A captioning entry becomes a free-text sample: `answer` "",
`reference` the caption (an empty caption is skipped).

v0 (one annotation file per video):

    {root}/json/{video_id}.json    a list of {"video_id", "task", "text", "label"}
    {root}/video/{video_id}.mp4

2025-03 (the release as downloaded today: one QA file with every entry of every video, the four tasks
mixed, and a folder of videos):

    {root}/**/{any name}.json      a list of {"video_id", "task", "text", "label"} naming many videos
    {root}/**/{video_id}.mp4       (.mkv, .webm, .mov and .avi are found too)

- The layout is found by content: a JSON list of entries with those four keys that names several
  videos (or, outside {root}/json, any such list) is a QA file; without one, {root}/json is read as
  v0. Several QA files are an error naming them (pass the one to use as `root`: a QA file given
  directly is read with the videos found under its directory). Without either, a JSON object
  (a dict, not a list of entries) under the root is named in the error as the likely QA file.
- Entries are selected by task, compared case-insensitively with runs of spaces collapsed
  (default "Audio-driven Video Hallucination"). If none match, the tasks that were found are logged.
- Labels of the yes/no tasks are normalised like answers ("Yes", "yes.", " NO " -> yes/no); any other
  label is skipped.
- A missing video, an unreadable JSON file, an entry lacking a key or naming another video than its
  file, and an unknown label are skipped with the reason and logged; loading goes on. The number of
  videos the asked task names but the release lacks is logged once as a summary.
- Paths stay inside the root (`common.resolve_inside`): the video an entry names is resolved,
  symlinks followed, and must lie inside the root (the QA file's directory when the file is given);
  an entry whose video lies outside (a symlinked video or folder pointing elsewhere, a video id that
  is a path climbing out) is skipped with a reason beginning "outside the data set root", counted
  and logged. The root itself may be a symlink: containment is checked against its target. The QA
  file, found by listing the root rather than named by an entry, is read wherever it links.
- Input errors raise `common.DatasetError` naming the file (one `error:` line from the launch
  scripts): several QA files, a QA file given as root that is not a JSON list, a JSON object where
  the QA list was expected.
- Sample ids are "{video_id}/{k}", k the entry's index among that video's entries (every task) in
  file order, so both layouts give the same ids to the same entries.
- The audio is the video's soundtrack, extracted on demand with ffmpeg (mono, 16 kHz, float32).
  Loading the annotations needs no ffmpeg; extracting does, and says so clearly when it is absent.
  `export_soundtracks` extracts once to WAV files, skipping videos ffmpeg cannot read.

The data set records no evidence intervals.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
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
    DatasetError,
    LoadedDataset,
    SkippedItem,
    WavFile,
    normalize_answer,
    record_skip,
    resolve_inside,
)

DEFAULT_TASK = "Audio-driven Video Hallucination"
CAPTION_TASK = "AV Captioning"
# task -> short name (data set names in the tables, config variants); the first is the default task
TASKS = {
    DEFAULT_TASK: "a2v",
    "Video-driven Audio Hallucination": "v2a",
    "AV Matching": "matching",
    CAPTION_TASK: "captioning",
}
MATCHING_QUESTION = "Are the contexts of audio and visual content matching?"  # every AV Matching entry's text
CAPTION_REQUEST = "Describe what you see and hear in a single sentence."  # every AV Captioning entry's text
REQUIRED_KEYS = ("video_id", "task", "text", "label")
VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".mov", ".avi")  # in order of preference for one id

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


def is_caption_task(task: str) -> bool:
    """Whether `task` names the captioning task (free-text answers with a reference caption)."""
    return _task_key(task) == _task_key(CAPTION_TASK)


def task_slug(task: str) -> str:
    """The short name of a task ("v2a", "captioning", ...; another string: lower-cased, non-alphanumeric
    runs as '_')."""
    for name, slug in TASKS.items():
        if _task_key(name) == _task_key(task):
            return slug
    return "_".join("".join(c if c.isalnum() else " " for c in task.lower()).split())


def _read_entries(path: Path) -> list:
    """The entries of one annotation file; raises ValueError when it is not a JSON list."""
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"unreadable JSON: {error}") from error
    if not isinstance(entries, list):
        raise ValueError(f"expected a JSON list of entries, got {type(entries).__name__}")
    return entries


def _entry_problem(entry: object, video_id: str, free_text: bool = False) -> str | None:
    """Why an annotation entry cannot become a sample, or None (`free_text`: its label is a caption)."""
    if not isinstance(entry, dict):
        return f"entry is not an object: {entry!r}"
    missing = [key for key in REQUIRED_KEYS if key not in entry]
    if missing:
        return f"entry lacks keys {missing}"
    if str(entry["video_id"]) != video_id:
        return f"entry names video {entry['video_id']!r} inside {video_id}.json"
    if free_text:
        return None if str(entry["label"]).strip() else "empty caption"
    if normalize_answer(str(entry["label"])) not in ANSWERS:
        return f"label {entry['label']!r} is neither yes nor no"
    return None


def _qa_video_ids(entries: object) -> set[str] | None:
    """The video ids a QA list names, or None when `entries` is not a list of AVHBench entries."""
    if not isinstance(entries, list):
        return None
    ids = {str(e["video_id"]) for e in entries if isinstance(e, dict) and all(k in e for k in REQUIRED_KEYS)}
    return ids or None


@dataclasses.dataclass(frozen=True)
class JsonScan:
    """The JSON files under a root by what they hold: QA lists, objects (dicts), unreadable files."""

    qa_files: list[Path]
    objects: list[tuple[Path, list[str]]]  # (file, its first keys)
    unreadable: list[Path]


def scan_json(root: Path) -> JsonScan:
    """Sorts the JSON files under `root` into QA files (module docstring), objects and unreadable ones."""
    qa_files, objects, unreadable = [], [], []
    per_video_directory = root / "json"
    for path in sorted(root.rglob("*.json")):
        try:
            content = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            unreadable.append(path)
            continue
        if isinstance(content, dict):
            objects.append((path, [str(key) for key in list(content)[:5]]))
            continue
        ids = _qa_video_ids(content)
        if ids is None:
            continue
        if path.parent == per_video_directory and len(ids) < 2:
            continue  # a v0 per-video file
        qa_files.append(path)
    return JsonScan(qa_files=qa_files, objects=objects, unreadable=unreadable)


def find_qa_files(root: Path) -> list[Path]:
    """The 2025-03 QA files under `root`, found by content (see the module docstring), sorted."""
    return scan_json(root).qa_files


def _not_found(root: Path, scan: JsonScan) -> Exception:
    """The error for a root holding neither layout: a JSON object is named as the likely QA file."""
    expected = f"a JSON list of entries with keys {list(REQUIRED_KEYS)}"
    if scan.objects:
        path, keys = scan.objects[0]
        return DatasetError(f"{path}: AVHBench QA file is a JSON object (keys {keys}), expected {expected}; "
                            f"no QA json under {root}")
    unreadable = f"; unreadable JSON: {[str(p) for p in scan.unreadable[:3]]}" if scan.unreadable else ""
    return FileNotFoundError(
        f"AVHBench annotations not found: no QA json under {root} and {root / 'json'} is not a directory{unreadable}"
    )


def find_videos(root: Path) -> dict[str, Path]:
    """video id (the file's stem) -> video file, for every video file under `root`.

    One id found in several files takes the preferred suffix (VIDEO_SUFFIXES order), then the first
    path in sorted order; the others are logged.
    """
    by_id: dict[str, list[Path]] = {}
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() in VIDEO_SUFFIXES and path.is_file():
            by_id.setdefault(path.stem, []).append(path)
    videos = {}
    for video_id, paths in by_id.items():
        paths.sort(key=lambda p: (VIDEO_SUFFIXES.index(p.suffix.lower()), str(p)))
        videos[video_id] = paths[0]
        if len(paths) > 1:
            logger.warning("AVHBench video %s found %d times; using %s", video_id, len(paths), paths[0])
    return videos


def _annotation_groups(root: Path, skipped: list[SkippedItem]) -> tuple[list[tuple[str | None, list]], dict[str, Path]]:
    """[(video id the entries must name or None, entries in file order)] and the video files."""
    if root.is_file():
        try:
            entries = _read_entries(root)
        except ValueError as error:
            raise DatasetError(f"{root}: not an AVHBench QA file: {error}") from error
        return [(None, entries)], find_videos(root.parent)
    scan = scan_json(root)
    qa_files = scan.qa_files
    if len(qa_files) > 1:
        raise DatasetError(
            f"several AVHBench QA files under {root}: {[str(p) for p in qa_files]}; pass the one to use as root"
        )
    if qa_files:
        logger.info("AVHBench 2025-03 layout: QA file %s", qa_files[0])
        return [(None, _read_entries(qa_files[0]))], find_videos(root)
    json_directory = root / "json"
    if not json_directory.is_dir():
        raise _not_found(root, scan)
    groups: list[tuple[str | None, list]] = []
    for json_path in sorted(json_directory.glob("*.json")):
        try:
            groups.append((json_path.stem, _read_entries(json_path)))
        except ValueError as error:
            record_skip(skipped, str(json_path), str(error))
    video_directory = root / "video"
    videos = {p.stem: p for p in sorted(video_directory.glob("*.mp4"))} if video_directory.is_dir() else {}
    return groups, videos


def _video_file(base: Path, video: Path | None, video_id: str) -> tuple[Path | None, str | None]:
    """(the video of `video_id` resolved inside `base`, or None when there is none, None), or
    (None, why it lies outside the root)."""
    if video is None:
        _, outside = resolve_inside(base, f"{video_id}.mp4")
        return None, outside
    return resolve_inside(base, str(video.relative_to(base)))


def load_avhbench(root: Path | str, task: str = DEFAULT_TASK, ffmpeg: str | None = None) -> LoadedDataset:
    """Loads the entries of one AVHBench task from either released layout (module docstring).

    Args:
      root: the AVHBench directory (v0: holding json/ and video/; 2025-03: holding the QA json and the
        video folder anywhere below it), or the 2025-03 QA json file itself.
      task: the task string to select (case and repeated spaces ignored).
      ffmpeg: the ffmpeg executable the samples will use to extract audio (default: on PATH).
    Returns:
      The samples (sample_id "{video_id}/{k}", clip_id the video id, question the entry's text,
      evidence None; for the captioning task answer "" and reference the caption) and the skipped
      items with their reasons.
    Raises:
      FileNotFoundError if neither layout is found; DatasetError (a ValueError) for several QA files,
      a QA file given as root that is not a JSON list, or a JSON object where a QA list was expected.
    """
    root = Path(root)
    base = root.parent if root.is_file() else root
    video_files: dict[str, tuple[Path | None, str | None]] = {}
    wanted = _task_key(task)
    free_text = is_caption_task(task)
    samples: list[AudioQASample] = []
    skipped: list[SkippedItem] = []
    tasks_seen: set[str] = set()
    missing_videos: set[str] = set()
    groups, videos = _annotation_groups(root, skipped)
    for file_video_id, entries in groups:
        counts: dict[str, int] = {}
        for position, entry in enumerate(entries):
            named = str(entry["video_id"]) if isinstance(entry, dict) and "video_id" in entry else None
            video_id = file_video_id if file_video_id is not None else named
            if video_id is None:
                record_skip(skipped, f"QA entry {position}", f"entry lacks keys {['video_id']}")
                continue
            index = counts.get(video_id, 0)
            counts[video_id] = index + 1
            if isinstance(entry, dict) and "task" in entry:
                tasks_seen.add(str(entry["task"]))
                if _task_key(str(entry["task"])) != wanted:
                    continue
            sample_id = f"{video_id}/{index}"
            problem = _entry_problem(entry, video_id, free_text)
            if problem is None:
                if video_id not in video_files:
                    video_files[video_id] = _video_file(base, videos.get(video_id), video_id)
                video, problem = video_files[video_id]
            if problem is None and video is None:
                expected = root / "video" / f"{video_id}.mp4" if file_video_id is not None else f"{video_id}.mp4"
                problem = f"missing video {expected}"
                missing_videos.add(video_id)
            if problem is not None:
                record_skip(skipped, sample_id, problem)
                continue
            label = str(entry["label"])
            samples.append(
                AudioQASample(
                    sample_id=sample_id,
                    clip_id=video_id,
                    question=str(entry["text"]).strip(),
                    answer="" if free_text else normalize_answer(label),
                    audio=VideoSoundtrack(video, ffmpeg),
                    reference=" ".join(label.split()) if free_text else None,
                )
            )
    if missing_videos:
        logger.warning(
            "AVHBench: %d videos named by task %r are missing (%d found); their entries are skipped",
            len(missing_videos), task, len(videos),
        )  # fmt: skip
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


GENERATED_SOUNDS = ((440.0, "a dog barking"), (880.0, "a car horn"), (0.0, "music"))  # (tone Hz, what is asked)


def _generated_entries(video_id: str, index: int, thing: str, audible: bool) -> list[dict]:
    """The QA entries of one generated video, one or more per task (the default task's first)."""
    yes_no = lambda flag: "Yes" if flag else "No"  # noqa: E731
    caption = (f"A colour test pattern moves while {thing} is heard three times." if audible
               else "A colour test pattern moves in silence.")
    return [
        {"video_id": video_id, "task": DEFAULT_TASK, "text": f"Is {thing} visible in the video ?",
         "label": yes_no(index % 2 == 0)},
        {"video_id": video_id, "task": "Video-driven Audio Hallucination",
         "text": f"Is {thing} making sound in the audio?", "label": yes_no(audible)},
        {"video_id": video_id, "task": "AV Matching", "text": MATCHING_QUESTION, "label": yes_no(index % 2 == 1)},
        {"video_id": video_id, "task": CAPTION_TASK, "text": CAPTION_REQUEST, "label": caption},
    ]


def _complete_tree(qa: Path, num_videos: int) -> bool:
    """Whether a generated QA file exists and holds every task for `num_videos` videos."""
    try:
        entries = json.loads(qa.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    tasks = {_task_key(str(e.get("task", ""))) for e in entries if isinstance(e, dict)}
    videos = {str(e.get("video_id")) for e in entries if isinstance(e, dict)}
    return tasks >= {_task_key(t) for t in TASKS} and len(videos) == num_videos


def write_generated(root: Path | str, num_videos: int = 4, seconds: float = 9.5, ffmpeg: str | None = None) -> Path:
    """A small AVHBench tree in the 2025-03 layout, made with ffmpeg (for runs without the release):
    `num_videos` mp4s of a moving test pattern (160 x 120, 4 fps) whose soundtrack is a tone (or
    silence) for the first 2 s, 4-6 s and 8-9.5 s, and one QA file with every task per video: whether
    the sounding object is visible (labels alternate yes/no) and whether it makes sound, whether audio
    and video match, and a reference caption (the model's answers are what is measured). Written once:
    a tree holding every task is reused; an older one (the first task only) gets the new QA file."""
    root = Path(root)
    qa = root / "AVHBench_QA" / "QA.json"
    if _complete_tree(qa, num_videos):
        return root
    exe = find_ffmpeg(ffmpeg)
    (root / "videos").mkdir(parents=True, exist_ok=True)
    entries = []
    for i in range(num_videos):
        hz, thing = GENERATED_SOUNDS[i % len(GENERATED_SOUNDS)]
        video_id = f"gen{i:02d}"
        video = root / "videos" / f"{video_id}.mp4"
        if not video.is_file():
            on = "between(t,0,2)+between(t,4,6)+between(t,8,10)"
            sound = (f"aevalsrc='0.3*sin(2*PI*{hz}*t)*({on})':s=16000:d={seconds}" if hz
                     else f"anullsrc=r=16000:cl=mono:d={seconds}")
            partial = video.with_name(f"{video.name}.{os.getpid()}.partial")
            subprocess.run([exe, "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i",
                            f"testsrc=size=160x120:rate=4:duration={seconds}", "-f", "lavfi", "-i", sound, "-shortest",
                            "-c:v", "mpeg4", "-pix_fmt", "yuv420p", "-c:a", "aac", "-f", "mp4", str(partial)],
                           check=True)
            partial.replace(video)
        entries += _generated_entries(video_id, i, thing, audible=bool(hz))
    qa.parent.mkdir(parents=True, exist_ok=True)
    tmp = qa.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(entries, indent=1))
    tmp.replace(qa)
    return root
