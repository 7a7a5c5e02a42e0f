"""ClothoAQA, the yes/no subset, in its released layout.

    {root}/audio_files/{file_name}
    {root}/clotho_aqa_{train,val,test}.csv   columns: file_name, QuestionText, answer, confidence

Each row is one annotator's answer; a question (same file_name and QuestionText) has three.

- Answers are compared lower-cased, stripped of surrounding spaces and of a final "." or "!".
- A question is in the yes/no subset when more than half of its rows answer "yes" or "no"; the
  other questions are open-ended and left out silently (they are not errors).
- Its label is the majority of its "yes"/"no" rows (other answers cast no vote). The confidence
  column ("yes"/"maybe"/"no" in the release) only breaks ties, weighted yes = 1, maybe = 0.5,
  no = 0 (anything else: 0); a tie that survives is skipped with the reason "tied vote".
- A clip that is missing, unreadable or empty is skipped with its reason, each of its questions
  once, and logged; loading goes on.

Audio is loaded on demand as mono float32 at 16 kHz. The data set records no evidence intervals.
"""

from __future__ import annotations

import collections
import csv
from pathlib import Path

from agac_jax.data.common import (
    NO,
    YES,
    AudioQASample,
    LoadedDataset,
    SkippedItem,
    WavFile,
    audio_file_problem,
    normalize_answer,
    record_skip,
)

SPLITS = ("train", "val", "test")
REQUIRED_COLUMNS = ("file_name", "QuestionText", "answer", "confidence")
AUDIO_DIRECTORY = "audio_files"
CONFIDENCE_WEIGHTS = {"yes": 1.0, "maybe": 0.5, "no": 0.0}


def csv_path(root: Path | str, split: str) -> Path:
    """The annotation file of one split: {root}/clotho_aqa_{split}.csv."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return Path(root) / f"clotho_aqa_{split}.csv"


def _read_rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        raise FileNotFoundError(f"ClothoAQA annotations not found: {path}")
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = [name.strip() for name in reader.fieldnames or []]
        missing = [name for name in REQUIRED_COLUMNS if name not in columns]
        if missing:
            raise ValueError(f"{path}: missing columns {missing}; found {columns}")
        return [{key.strip(): (value or "") for key, value in row.items() if key is not None} for row in reader]


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


def load_clotho_aqa(root: Path | str, split: str) -> LoadedDataset:
    """Loads the yes/no subset of one ClothoAQA split.

    Args:
      root: the directory holding audio_files/ and the CSV files.
      split: "train", "val" or "test".
    Returns:
      The samples (sample_id "{split}/{file_name}/{question number within the clip}", clip_id the
      file name, evidence None) and the skipped items with their reasons.
    Raises:
      FileNotFoundError if the split's CSV is missing; ValueError if it lacks a required column.
    """
    root = Path(root)
    rows = _read_rows(csv_path(root, split))
    samples: list[AudioQASample] = []
    skipped: list[SkippedItem] = []
    clip_problems: dict[str, str | None] = {}
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
        path = root / AUDIO_DIRECTORY / file_name
        if file_name not in clip_problems:
            clip_problems[file_name] = audio_file_problem(path)
        if clip_problems[file_name] is not None:
            record_skip(skipped, sample_id, clip_problems[file_name])
            continue
        samples.append(
            AudioQASample(sample_id=sample_id, clip_id=file_name, question=question, answer=label, audio=WavFile(path))
        )
    return LoadedDataset(samples=samples, skipped=skipped)
