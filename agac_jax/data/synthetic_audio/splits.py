"""The splits of a generated benchmark: their seeds, and writing and reading a generated split.

Seeds: a split is a function of (split, num_clips, seed) and a benchmark's own salt; the three
splits (and the benchmarks) derive different seed sequences, so they share no clip. From the
split's sequence come one `BalancedSchedule` per question kind and one Generator per clip
(`split_streams`); clips are planned in order, so a split of n clips is the first n clips of any
longer split with the same seed.

Files (`write_split`): each clip once as `audio/{clip_id}.wav` (float32, 16 kHz) and one JSON line
per sample in `manifest.jsonl` (`sample_record`: ids, question, answer, evidence, the clip's
events, plus what a benchmark adds); `read_split` gives samples that load their audio from the WAVs.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import soundfile

from agac_jax.data.common import SAMPLE_RATE, WavFile
from agac_jax.data.synthetic_audio.events import Event, EventSample
from agac_jax.data.synthetic_audio.questions import BalancedSchedule

SPLITS = ("train", "validation", "test")
MANIFEST_NAME = "manifest.jsonl"

SPLIT_CODES = {name: code for code, name in enumerate(SPLITS)}

S = TypeVar("S", bound=EventSample)


def split_streams(split: str, num_clips: int, seed: int, kinds: Sequence[str],
                  salt: Sequence[int] = ()) -> tuple[dict[str, BalancedSchedule], Iterator[np.random.Generator]]:
    """The random streams of a split: a `BalancedSchedule` per question kind of `kinds`, and a
    Generator per clip (num_clips of them, in clip order).

    Args:
      split: "train", "validation" or "test"; each derives its own seeds, so splits share no clip.
      num_clips: number of clips (>= 1).
      seed: non-negative; the same arguments always give the same streams.
      kinds: the benchmark's question kinds, in a fixed order.
      salt: integers a benchmark adds to the seed, so no two benchmarks share a clip.
    """
    if split not in SPLIT_CODES:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if not isinstance(num_clips, int) or num_clips < 1:
        raise ValueError(f"num_clips must be a positive integer, got {num_clips!r}")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    split_seed = np.random.SeedSequence([seed, SPLIT_CODES[split], *salt])
    schedule_seed, clips_seed = split_seed.spawn(2)
    schedules = {kind: BalancedSchedule(np.random.default_rng(s))
                 for kind, s in zip(kinds, schedule_seed.spawn(len(kinds)))}
    return schedules, (np.random.default_rng(s) for s in clips_seed.spawn(num_clips))


def sample_record(sample: EventSample, audio_path: str) -> dict[str, Any]:
    """The manifest line of a sample (before a benchmark's own fields), its clip at `audio_path`."""
    return {
        "sample_id": sample.sample_id,
        "clip_id": sample.clip_id,
        "audio": audio_path,
        "num_samples": sample.num_samples,
        "kind": sample.kind,
        "question": sample.question,
        "answer": sample.answer,
        "evidence": [list(interval) for interval in sample.evidence or ()],
        "events": [dataclasses.asdict(event) for event in sample.events],
    }


def sample_fields(record: dict[str, Any], directory: Path) -> dict[str, Any]:
    """The `EventSample` fields of a manifest line (what `sample_record` wrote), audio from the WAV."""
    return dict(
        sample_id=record["sample_id"],
        clip_id=record["clip_id"],
        question=record["question"],
        answer=record["answer"],
        audio=WavFile(directory / record["audio"]),
        evidence=tuple((float(start), float(end)) for start, end in record["evidence"]),
        kind=record["kind"],
        events=tuple(Event(**event) for event in record["events"]),
        num_samples=int(record["num_samples"]),
    )


def write_split(directory: Path | str, samples: Sequence[S],
                to_record: Callable[[S, str], dict[str, Any]] = sample_record) -> Path:
    """Writes each clip once as `audio/{clip_id}.wav` (float32) and one JSONL line per sample
    (`to_record(sample, relative audio path)`).

    Returns the manifest's path, `{directory}/manifest.jsonl`.
    """
    directory = Path(directory)
    (directory / "audio").mkdir(parents=True, exist_ok=True)
    written: set[str] = set()
    manifest = directory / MANIFEST_NAME
    with manifest.open("w", encoding="utf-8") as out:
        for sample in samples:
            relative = f"audio/{sample.clip_id}.wav"
            if sample.clip_id not in written:
                soundfile.write(directory / relative, sample.load_waveform(), SAMPLE_RATE, subtype="FLOAT")
                written.add(sample.clip_id)
            out.write(json.dumps(to_record(sample, relative)) + "\n")
    return manifest


def read_split(directory: Path | str, from_record: Callable[[dict[str, Any], Path], S], benchmark: str) -> list[S]:
    """Reads what `write_split` wrote, each line through `from_record(record, directory)`.

    Raises FileNotFoundError without a manifest (naming `benchmark`), ValueError naming the line
    of a malformed record.
    """
    directory = Path(directory)
    manifest = directory / MANIFEST_NAME
    if not manifest.is_file():
        raise FileNotFoundError(f"no {benchmark} split at {directory}: {MANIFEST_NAME} is missing")
    samples = []
    with manifest.open(encoding="utf-8") as lines:
        for line_number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                samples.append(from_record(json.loads(line), directory))
            except (KeyError, TypeError, ValueError) as error:
                raise ValueError(f"{manifest}, line {line_number}: malformed sample record ({error})") from error
    return samples
