"""ClothoAQA, the yes/no subset, in its released layout or as the parquet export lmms-eval reads.

Released layout (Zenodo):

    {root}/audio_files/{file_name}
    {root}/clotho_aqa_{train,val,test}.csv   columns: file_name, QuestionText, answer, confidence

Each row is one annotator's answer; a question (same file_name and QuestionText) has three.

Parquet layout (the Hugging Face export lmms-eval's `clotho_aqa` task reads, `lmms-lab/ClothoAQA`,
config `clotho_aqa`, as `datasets` or `huggingface-cli download` leave it):

    {root}/**/clotho_aqa_{split}*.parquet    columns: audio {bytes, path}, question, answer
                                             (lmms-eval's splits: clotho_aqa_{val,test}_filtered)

Each row is one question with one answer and its clip embedded as the bytes of an audio file.

- The layout is found by content: the split's CSV at the root is the released layout; parquet files
  anywhere under the root are the export (shards of the split read in name order). Both at once is
  an error naming them, as is an export without the asked split (lmms-eval's has val and test).
- Answers are compared lower-cased, stripped of surrounding spaces and of a final "." or "!".
- CSV: a question is in the yes/no subset when more than half of its rows answer "yes" or "no";
  its label is the majority of its "yes"/"no" rows (other answers cast no vote). The confidence
  column ("yes"/"maybe"/"no" in the release) only breaks ties, weighted yes = 1, maybe = 0.5,
  no = 0 (anything else: 0); a tie that survives is skipped with the reason "tied vote".
  Parquet: a row whose answer is "yes" or "no" is in the subset with that label.
- Questions outside the subset are open-ended and left out silently (they are not errors).
- Paths stay inside the root (`common.resolve_inside`): a CSV file name is resolved, symlinks
  followed, and must lie inside {root}/audio_files; a parquet row without embedded bytes names its
  file by `audio.path`, resolved likewise inside {root}. A row pointing outside (an absolute path,
  "..", or a symlink whose target is elsewhere) is skipped with a reason beginning "outside the data
  set root", counted and logged. The root and audio_files/ may themselves be symlinks (a data set
  on another disk linked into place): containment is checked against their resolved targets. The
  parquet shards, found by listing the root rather than named by a row, are read wherever their
  links point (the Hugging Face cache links a snapshot's files to blobs outside it).
- A clip that is missing, unreadable or empty is skipped with its reason, each of its questions
  once, and logged; loading goes on.
- Input errors raise `common.DatasetError` naming the file (one `error:` line from the launch
  scripts): a CSV that is not UTF-8, lacks a column or has no rows (0 samples); a parquet file that
  is unreadable or lacks a column.

`LMMS_EVAL_PROMPT_SUFFIX` is what lmms-eval appends to every ClothoAQA question (its `post_prompt`);
the data set section's `prompt_suffix` defaults to it for ClothoAQA (`agac_jax.data.load_dataset`).

Audio is loaded on demand as mono float32 at 16 kHz. The data set records no evidence intervals.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import io
import threading
from pathlib import Path
from typing import Any

import numpy as np
import soundfile

from agac_jax.data.common import (
    NO,
    YES,
    AudioQASample,
    DatasetError,
    LoadedDataset,
    SkippedItem,
    WavFile,
    audio_file_problem,
    normalize_answer,
    record_skip,
    resolve_inside,
    to_mono_16k,
)

SPLITS = ("train", "val", "test")
REQUIRED_COLUMNS = ("file_name", "QuestionText", "answer", "confidence")
PARQUET_COLUMNS = ("audio", "question", "answer")
AUDIO_FIELDS = ("bytes", "path")
AUDIO_DIRECTORY = "audio_files"
CONFIDENCE_WEIGHTS = {"yes": 1.0, "maybe": 0.5, "no": 0.0}
LMMS_EVAL_PROMPT_SUFFIX = "\nAnswer the question using a single word only. "


def csv_path(root: Path | str, split: str) -> Path:
    """The annotation file of one split: {root}/clotho_aqa_{split}.csv."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return Path(root) / f"clotho_aqa_{split}.csv"


def parquet_files(root: Path | str) -> list[Path]:
    """Every parquet file under `root`, sorted."""
    root = Path(root)
    return sorted(root.rglob("*.parquet")) if root.is_dir() else []


def split_parquet_files(root: Path | str, split: str) -> list[Path]:
    """The parquet shards of one split under `root` (named clotho_aqa_{split}*.parquet), sorted."""
    return [path for path in parquet_files(root) if path.name.startswith(f"clotho_aqa_{split}")]


def find_layout(root: Path | str, split: str) -> str:
    """"csv" or "parquet": which layout holds `split` under `root` (module docstring).

    Raises FileNotFoundError when neither is there and DatasetError when both are, or when the
    parquet export lacks the split.
    """
    csv_file = csv_path(root, split)
    shards = split_parquet_files(root, split)
    if csv_file.is_file() and shards:
        raise DatasetError(
            f"ClothoAQA {split}: both {csv_file} and parquet files ({shards[0]}, ...) under {root}; "
            "point dataset.root at a directory holding one layout"
        )
    if csv_file.is_file():
        return "csv"
    if shards:
        return "parquet"
    others = parquet_files(root)
    if others:
        raise DatasetError(
            f"ClothoAQA: no parquet file of split {split!r} (clotho_aqa_{split}*.parquet) under {root}; found "
            f"{[str(p) for p in others[:5]]}{' ...' if len(others) > 5 else ''} (lmms-eval's export has val and test)"
        )
    raise FileNotFoundError(f"ClothoAQA annotations not found: {csv_file} (nor a parquet export under {root})")


def _read_rows(path: Path) -> list[dict[str, str]]:
    """The rows of one split's CSV; DatasetError (naming the file) for what cannot be read."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            if reader.fieldnames is None:
                raise DatasetError(f"{path}: empty file, 0 samples (expected columns {list(REQUIRED_COLUMNS)})")
            columns = [name.strip() for name in reader.fieldnames]
            missing = [name for name in REQUIRED_COLUMNS if name not in columns]
            if missing:
                raise DatasetError(f"{path}: missing columns {missing}; found {columns}")
            rows = [{key.strip(): (value or "") for key, value in row.items() if key is not None} for row in reader]
    except UnicodeDecodeError as error:
        raise DatasetError(f"{path}: not UTF-8 text ({error}); ClothoAQA's CSV files are UTF-8") from error
    except csv.Error as error:
        raise DatasetError(f"{path}: not a readable CSV file ({error})") from error
    if not rows:
        raise DatasetError(f"{path}: 0 samples: the file has a header but no rows")
    return rows


def majority_answer(answers: list[str], confidences: list[str]) -> str | None:
    """The yes/no label of one question from its annotators' rows, or None for a tie.

    Args:
      answers: normalised answers, one per annotator; entries other than yes/no cast no vote.
      confidences: the matching confidence column values.
    """
    votes = collections.Counter(answer for answer in answers if answer in (YES, NO))
    if votes[YES] != votes[NO]:
        return YES if votes[YES] > votes[NO] else NO
    weight = collections.Counter()
    for answer, confidence in zip(answers, confidences):
        if answer in (YES, NO):
            weight[answer] += CONFIDENCE_WEIGHTS.get(confidence.strip().lower(), 0.0)
    if weight[YES] == weight[NO]:
        return None
    return YES if weight[YES] > weight[NO] else NO


def _group_questions(rows: list[dict[str, str]]) -> dict[tuple[str, str], list[dict[str, str]]]:
    """Rows grouped by (file_name, question text), in order of first appearance."""
    groups: dict[tuple[str, str], list[dict[str, str]]] = {}
    for row in rows:
        key = (row["file_name"].strip(), " ".join(row["QuestionText"].split()))
        groups.setdefault(key, []).append(row)
    return groups


def _clip_file(audio_directory: Path, file_name: str) -> tuple[Path | None, str | None]:
    """(the clip's resolved file, None), or (None, why it cannot serve: outside the root, missing, ...)."""
    path, problem = resolve_inside(audio_directory, file_name)
    if problem is None:
        problem = audio_file_problem(path)
    return (path, None) if problem is None else (None, problem)


def load_clotho_aqa(root: Path | str, split: str) -> LoadedDataset:
    """Loads the yes/no subset of one ClothoAQA split from either layout (module docstring).

    Args:
      root: the directory holding audio_files/ and the CSV files, or the parquet export.
      split: "train", "val" or "test".
    Returns:
      The samples (sample_id "{split}/{clip}/{question number within the clip}", clip_id the clip's
      file name, evidence None) and the skipped items with their reasons.
    Raises:
      FileNotFoundError if neither layout is found; DatasetError for a file that cannot be read as
      ClothoAQA (see the module docstring).
    """
    layout = find_layout(root, split)
    if layout == "parquet":
        return _load_parquet(Path(root), split)
    return _load_csv(Path(root), split)


def _load_csv(root: Path, split: str) -> LoadedDataset:
    """The yes/no subset of one split in the released layout."""
    rows = _read_rows(csv_path(root, split))
    samples: list[AudioQASample] = []
    skipped: list[SkippedItem] = []
    clips: dict[str, tuple[Path | None, str | None]] = {}
    question_numbers: collections.Counter[str] = collections.Counter()
    for (file_name, question), group in _group_questions(rows).items():
        answers = [normalize_answer(row["answer"]) for row in group]
        question_numbers[file_name] += 1
        sample_id = f"{split}/{file_name}/{question_numbers[file_name] - 1}"
        if 2 * sum(answer in (YES, NO) for answer in answers) <= len(answers):
            continue
        label = majority_answer(answers, [row["confidence"] for row in group])
        if label is None:
            record_skip(skipped, sample_id, f"tied vote {answers}")
            continue
        if file_name not in clips:
            clips[file_name] = _clip_file(root / AUDIO_DIRECTORY, file_name)
        path, problem = clips[file_name]
        if problem is not None:
            record_skip(skipped, sample_id, problem)
            continue
        samples.append(
            AudioQASample(sample_id=sample_id, clip_id=file_name, question=question, answer=label, audio=WavFile(path))
        )
    return LoadedDataset(samples=samples, skipped=skipped)


# --- the parquet export --------------------------------------------------------------------------


class _RowGroupCache:
    """The audio column of the last row group read, shared by the samples of one load: samples are
    loaded in file order, so each row group is read once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: tuple[Path, int] | None = None
        self._values: list[Any] = []

    def audio(self, path: Path, row_group: int) -> list[Any]:
        """The {"bytes", "path"} values of one row group's audio column."""
        with self._lock:
            if self._key != (path, row_group):
                import pyarrow.parquet as pq

                table = pq.ParquetFile(path).read_row_group(row_group, columns=["audio"])
                self._values, self._key = table.column("audio").to_pylist(), (path, row_group)
            return self._values


@dataclasses.dataclass(frozen=True)
class ParquetAudio:
    """A clip embedded as audio-file bytes in one row of a parquet file, read when loaded."""

    file: Path
    row_group: int
    row: int
    cache: _RowGroupCache = dataclasses.field(default_factory=_RowGroupCache, compare=False, repr=False)

    def load(self) -> np.ndarray:
        """Returns the clip as mono float32 at 16 kHz, shape [num_samples]."""
        data = (self.cache.audio(self.file, self.row_group)[self.row] or {}).get("bytes")
        if not data:
            raise ValueError(f"no audio bytes in {self.file}, row group {self.row_group}, row {self.row}")
        audio, sample_rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
        return to_mono_16k(audio, sample_rate)


def _embedded_problem(data: bytes, where: str) -> str | None:
    """Why embedded audio bytes cannot serve as a clip (unreadable, empty), or None."""
    try:
        info = soundfile.info(io.BytesIO(data))
    except (RuntimeError, soundfile.LibsndfileError) as error:
        return f"unreadable audio file embedded in {where}: {error}"
    return f"empty audio file embedded in {where}" if info.frames == 0 else None


def _open_parquet(path: Path) -> Any:
    """The ParquetFile of one shard, its columns checked; DatasetError naming the file otherwise."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        handle = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as error:
        raise DatasetError(f"{path}: not a readable parquet file ({error})") from error
    schema = handle.schema_arrow
    missing = [name for name in PARQUET_COLUMNS if name not in schema.names]
    if missing:
        raise DatasetError(f"{path}: missing columns {missing}; found {schema.names} (lmms-eval's ClothoAQA export "
                           f"has {list(PARQUET_COLUMNS)})")
    audio = schema.field("audio").type
    if not pa.types.is_struct(audio) or any(audio.get_field_index(name) < 0 for name in AUDIO_FIELDS):
        raise DatasetError(f"{path}: column 'audio' is {audio}, not a struct with fields {list(AUDIO_FIELDS)}")
    return handle


def _read_row_group(handle: Any, path: Path, row_group: int) -> dict[str, list]:
    """One row group's columns as Python lists; DatasetError naming the file when it cannot be read."""
    import pyarrow as pa

    try:
        return handle.read_row_group(row_group, columns=list(PARQUET_COLUMNS)).to_pydict()
    except (pa.ArrowException, OSError) as error:
        raise DatasetError(f"{path}: row group {row_group} cannot be read ({error})") from error


def _parquet_clip_id(path: Path, row_group: int, row: int, audio: dict | None) -> str:
    """A row's clip id: the file name in its audio path, else its place in the shard."""
    name = str((audio or {}).get("path") or "")
    return Path(name).name if name else f"{path.stem}:{row_group}:{row}"


def _parquet_source(root: Path, path: Path, row_group: int, row: int, audio: dict | None,
                    cache: _RowGroupCache) -> tuple[Any, str | None]:
    """(audio source, None) of one row, its embedded bytes or else the file its path names inside
    the root; (None, why) when it has none that can serve."""
    audio = audio or {}
    name = str(audio.get("path") or "")
    where = f"{path}, row group {row_group}, row {row}"
    if audio.get("bytes"):
        problem = _embedded_problem(audio["bytes"], where)
        return (None, problem) if problem else (ParquetAudio(path, row_group, row, cache), None)
    if not name:
        return None, f"no audio in {where}: neither bytes nor a path"
    file, problem = _clip_file(root, name)
    return (None, problem) if problem else (WavFile(file), None)


def _load_parquet(root: Path, split: str) -> LoadedDataset:
    """The yes/no rows of one split's parquet shards (module docstring)."""
    samples: list[AudioQASample] = []
    skipped: list[SkippedItem] = []
    question_numbers: collections.Counter[str] = collections.Counter()
    cache = _RowGroupCache()
    for path in split_parquet_files(root, split):
        handle = _open_parquet(path)
        for row_group in range(handle.num_row_groups):
            table = _read_row_group(handle, path, row_group)
            for row, (question, answer, audio) in enumerate(zip(table["question"], table["answer"], table["audio"])):
                clip_id = _parquet_clip_id(path, row_group, row, audio)
                question_numbers[clip_id] += 1
                label = normalize_answer(str(answer or ""))
                if label not in (YES, NO):
                    continue
                sample_id = f"{split}/{clip_id}/{question_numbers[clip_id] - 1}"
                source, problem = _parquet_source(root, path, row_group, row, audio, cache)
                if problem is not None:
                    record_skip(skipped, sample_id, problem)
                    continue
                samples.append(AudioQASample(sample_id=sample_id, clip_id=clip_id,
                                             question=" ".join(str(question or "").split()), answer=label, audio=source))
    return LoadedDataset(samples=samples, skipped=skipped)
