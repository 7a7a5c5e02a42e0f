"""The results store of a sweep: one JSON line per (sample, method, r, rho, seed), and the workdir's config.

Layout of a workdir:

    config.json              the sweep's config and its fingerprint (written by the first run)
    results.jsonl            per-sample records of a single-process run, or
    results.{i}.jsonl        those of JAX process i when there are several
    skipped.json             the items the data set loader left out, and why

Durability: records are appended with unbuffered writes and fsynced as they finish. A crash can
leave at most a truncated last line; reading drops it with a warning, and reopening the file for
appending cuts it off first, so the next line starts clean. A malformed line anywhere else is not a
crash artefact and raises `CorruptResultsError` naming the file and line. A full disk (ENOSPC,
EDQUOT) during an append cuts the file back to its last complete record at once and raises
`DiskFullError` naming the file and the free space; the run is resumed by rerunning it.

One writer per results file: `agac_jax.eval.lock.RunLock` (taken by `sweep.run_sweep`);
`ResultsWriter.append` stops when that lock has been taken over by another process.

Keys: a record is identified by (sample_id, method, rate, rho, seed). When a key occurs more than
once (a failed record retried by a later run), the last successful record wins, else the last one.
A rerun redoes the failures whose cause was transient (a codec sidecar that crashed or timed out:
`Failure.transient`); the failures of the input itself stay recorded unless `runtime.retry_failed`.

Fingerprint: the SHA-256 of the canonical JSON of the config without its `runtime` section (progress
display, timeouts, pipelining depth: settings that cannot change a result). A run whose fingerprint
differs from the workdir's refuses to start, naming the fields that differ.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import logging
import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from agac_jax.cli import errors
from agac_jax.eval import atomic, lock

from agac_jax.scoring.settings import POOLED_METHODS, SELECTION_METHODS

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
CONFIG_NAME = "config.json"
SKIPPED_NAME = "skipped.json"
SINGLE_RESULTS_NAME = "results.jsonl"
RESULTS_GLOB = "results*.jsonl"
RUNTIME_SECTION = "runtime"
UNFINGERPRINTED = (RUNTIME_SECTION, "curves")  # cannot change a result record (curve records carry their settings)
FAILURE_STAGES = ("load", "score", "select", "codec", "answer")
# Codec failures whose cause was the sidecar, not the clip (agac_jax/codec/client.py): a rerun redoes them.
TRANSIENT_CODEC_ERRORS = frozenset({"SidecarCrashed", "Timeout"})

# The methods of DESIGN.md section 4 and the adaptive ones, in table order; all but the first two select frames.
METHODS = ("original", "codec") + SELECTION_METHODS  # `original`: no codec; `codec`: rho = 1
SELECTING_METHODS = METHODS[2:]
DEFAULT_SWEEP_METHODS = tuple(m for m in METHODS if m not in POOLED_METHODS)  # a sweep asks for the adaptive ones


class CorruptResultsError(errors.UserError, ValueError):
    """A results file holds a malformed line that is not a crash's truncated last line."""


class ConfigMismatchError(errors.UserError, ValueError):
    """The workdir holds results of a different config."""


class NotAWorkdirError(errors.UserError, FileNotFoundError):
    """The directory has no config.json: it is not the workdir of a sweep."""


class DiskFullError(errors.UserError, OSError):
    """The disk filled up while records were appended; the file was cut back to its last full record."""

    def __str__(self) -> str:
        return str(self.strerror)


class TaskKey(NamedTuple):
    """What identifies one result: rate is None for `original`; rho is 1.0 for `original` and `codec`."""

    sample_id: str
    method: str
    rate: int | None
    rho: float
    seed: int


@dataclasses.dataclass(frozen=True)
class Failure:
    """Why a record has no compressed answer: the stage (one of FAILURE_STAGES), a type, a message."""

    stage: str
    error_type: str
    message: str

    def __post_init__(self) -> None:
        if self.stage not in FAILURE_STAGES:
            raise ValueError(f"Failure.stage must be one of {FAILURE_STAGES}, got {self.stage!r}")

    @property
    def transient(self) -> bool:
        """Whether the cause has passed: the codec sidecar crashed or hung on it (not the clip's fault)."""
        return self.stage == "codec" and self.error_type in TRANSIENT_CODEC_ERRORS


@dataclasses.dataclass(frozen=True, kw_only=True)
class ResultRecord:
    """One (sample, method, r, rho, seed) of a sweep.

    Attributes:
      dataset: the data set's name, e.g. "synthetic-test".
      sample_id, clip_id, question, label: the sample; label is "yes" or "no", or "" for a caption
        record (`reference` set); question is the text the model was given, `prompt_suffix` included.
      method: one of the sweep's methods (`original`, `codec`, `fused`, ...).
      rate: codec token rate r (tokens/s), None for `original`.
      rho: keep ratio; 1.0 for `original` and `codec`.
      seed: the sweep seed.
      answer_original, answer_compressed: the model's replies on the original and compressed clip
        (None where a failure prevented them).
      parsed_original, parsed_compressed: those replies parsed to "yes", "no" or "unknown"; for a
        caption record, the reply as the caption metric reads it (`eval.cider.normalize`).
      num_samples: the clip's length at 16 kHz.
      num_frames, kept_frames: the clip's codec frames at `rate` and how many were kept.
      audio_tokens_before, audio_tokens_after: Qwen2-Audio audio tokens of the original and the
        compressed clip.
      codec_tokens_before, codec_tokens_after: codec tokens of all frames and of the kept frames.
      prefill_flops_before, prefill_flops_after: decoder prefill FLOPs of the prompt with the
        original and with the compressed clip.
      evidence_recall: share of the sample's evidence frames kept; None without evidence.
      seconds: wall seconds per stage ("load", "score", "select", "codec", "answer"); each batched
        stage's time is shared equally among the records of its batch.
      reused: True when the compressed clip equals one already produced in this run for the same
        sample and rate (identical kept frames, deterministic codec), so its answer was copied.
      failure: None, or why the compressed answer is missing.
      process_index: the JAX process that wrote the record.
      prompt_suffix: the text appended to the data set's question (`config.dataset.prompt_suffix`,
        e.g. lmms-eval's ClothoAQA instruction), "" for none.
      reference: None for a yes/no record; a caption record's reference caption (AVHBench's
        captioning). Left out of the JSON line when None, so yes/no records read and write as before.
    """

    dataset: str
    sample_id: str
    clip_id: str
    question: str
    label: str
    method: str
    rate: int | None
    rho: float
    seed: int
    answer_original: str | None = None
    answer_compressed: str | None = None
    parsed_original: str | None = None
    parsed_compressed: str | None = None
    num_samples: int | None = None
    num_frames: int | None = None
    kept_frames: int | None = None
    audio_tokens_before: int | None = None
    audio_tokens_after: int | None = None
    codec_tokens_before: int | None = None
    codec_tokens_after: int | None = None
    prefill_flops_before: int | None = None
    prefill_flops_after: int | None = None
    evidence_recall: float | None = None
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)
    reused: bool = False
    failure: Failure | None = None
    process_index: int = 0
    prompt_suffix: str = ""
    reference: str | None = None

    def __post_init__(self) -> None:
        if self.reference is not None:
            if self.label != "" or not self.reference.strip():
                raise ValueError(f"caption record {self.key} needs label '' and a non-empty reference")
        elif self.label not in ("yes", "no"):
            raise ValueError(f"label of record {self.key} must be 'yes' or 'no', got {self.label!r}")
        if self.failure is None and (self.parsed_original is None or self.parsed_compressed is None):
            raise ValueError(f"record {self.key} has no failure, so it needs both parsed answers")
        if self.evidence_recall is not None and math.isnan(self.evidence_recall):
            object.__setattr__(self, "evidence_recall", None)

    @property
    def key(self) -> TaskKey:
        return TaskKey(self.sample_id, self.method, self.rate, float(self.rho), int(self.seed))

    @property
    def ok(self) -> bool:
        return self.failure is None

    @property
    def is_caption(self) -> bool:
        """Whether the record answers a free-text request scored against `reference` (a caption)."""
        return self.reference is not None

    def to_json(self) -> str:
        """One line of JSON (no newline); NaN never appears."""
        data = dataclasses.asdict(self)
        if data["reference"] is None:
            del data["reference"]
        data["schema"] = SCHEMA_VERSION
        return json.dumps(data, sort_keys=True, allow_nan=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ResultRecord":
        """The record of a parsed JSON line; ValueError for another schema or missing fields."""
        data = dict(data)
        schema = data.pop("schema", None)
        if schema != SCHEMA_VERSION:
            raise ValueError(f"record schema {schema!r} is not {SCHEMA_VERSION}")
        names = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"record has unknown fields {unknown}")
        failure = data.pop("failure", None)
        if failure is not None:
            data["failure"] = Failure(**failure)
        return cls(**data)


# --- reading -------------------------------------------------------------------------------------


def _parse_lines(path: Path, text: str) -> Iterator[ResultRecord]:
    lines = text.split("\n")
    complete, tail = lines[:-1], lines[-1]
    for number, line in enumerate(complete, start=1):
        if not line.strip():
            continue
        try:
            yield ResultRecord.from_dict(json.loads(line))
        except (json.JSONDecodeError, TypeError, ValueError) as error:
            raise CorruptResultsError(
                f"{path}, line {number}: malformed result record ({error}); this is not a line cut by an "
                "interrupted run (only the last line can be): the file was edited or mixed with another file. "
                "Move it away, or remove that line, and rerun"
            ) from error
    if tail.strip():
        logger.warning(
            "%s: dropping a truncated last line (%d bytes), left by an interrupted run", path, len(tail.encode())
        )


def read_records(path: Path | str) -> list[ResultRecord]:
    """The records of one results file, in file order; a truncated last line is dropped with a warning."""
    path = Path(path)
    if not path.is_file():
        return []
    return list(_parse_lines(path, path.read_text(encoding="utf-8")))


def results_files(workdir: Path | str) -> list[Path]:
    """Every results file of a workdir (`results.jsonl`, `results.{i}.jsonl`), sorted by name."""
    return sorted(Path(workdir).glob(RESULTS_GLOB))


def latest_by_key(records: Iterable[ResultRecord]) -> dict[TaskKey, ResultRecord]:
    """One record per key: the last successful one, else the last one."""
    chosen: dict[TaskKey, ResultRecord] = {}
    for record in records:
        previous = chosen.get(record.key)
        if previous is None or record.ok or not previous.ok:
            chosen[record.key] = record
    return chosen


def read_workdir(workdir: Path | str) -> list[ResultRecord]:
    """All records of all results files of a workdir, one per key (see `latest_by_key`)."""
    records: list[ResultRecord] = []
    for path in results_files(workdir):
        records.extend(read_records(path))
    return list(latest_by_key(records).values())


def done_keys(workdir: Path | str, *, retry_failed: bool = False) -> set[TaskKey]:
    """Keys that need no more work: the successful ones and the failures of the input itself (all
    failures are redone with `retry_failed`). A failure with a transient cause (`Failure.transient`)
    is never done: a rerun retries it."""
    return {key for key, record in latest_by_key(_all_records(workdir)).items()
            if record.ok or not (retry_failed or record.failure.transient)}


def _all_records(workdir: Path | str) -> Iterator[ResultRecord]:
    for path in results_files(workdir):
        yield from read_records(path)


# --- writing -------------------------------------------------------------------------------------


def results_path(workdir: Path | str, process_index: int, process_count: int) -> Path:
    """`results.jsonl` for a single process, `results.{process_index}.jsonl` for several."""
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} must lie in [0, process_count={process_count})")
    name = SINGLE_RESULTS_NAME if process_count == 1 else f"results.{process_index}.jsonl"
    return Path(workdir) / name


def cut_truncated_tail(path: Path) -> int:
    """Removes a last line that lacks its newline (a crash's partial write); returns bytes removed."""
    if not path.is_file():
        return 0
    with path.open("rb+") as handle:
        size = handle.seek(0, os.SEEK_END)
        if size == 0:
            return 0
        handle.seek(size - 1)
        if handle.read(1) == b"\n":
            return 0
        handle.seek(0)
        data = handle.read()
        keep = data.rfind(b"\n") + 1
        handle.truncate(keep)
        handle.flush()
        os.fsync(handle.fileno())
    removed = size - keep
    logger.warning("%s: cut a truncated last line (%d bytes) left by an interrupted run", path, removed)
    return removed


class ResultsWriter:
    """Appends records to one results file, fsynced after every `append`.

    Writes go straight to the file descriptor (no Python buffer that could flush a piece of a line
    later). When the disk fills up mid-append, the file is cut back to its size before the append
    and `DiskFullError` names the file and the free space; if even that fails, the next writer's
    `cut_truncated_tail` removes the partial line.
    """

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        cut_truncated_tail(self.path)
        self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        self.written = 0

    def append(self, records: Sequence[ResultRecord]) -> None:
        """Writes the records as one line each, then fsyncs once.

        Raises:
          DiskFullError: no space left (the file holds only the complete records written before).
          lock.LockLostError: another process took over this file's lock (see `agac_jax.eval.lock`).
        """
        if self._fd is None:
            raise RuntimeError(f"ResultsWriter for {self.path} is closed")
        run_lock = lock.held_by_this_process(self.path)
        if run_lock is not None:
            run_lock.check()
        if not records:
            return
        data = "".join(record.to_json() + "\n" for record in records).encode("utf-8")
        before = os.fstat(self._fd).st_size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view):]
            os.fsync(self._fd)
        except OSError as error:
            if error.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            self._cut_back(before)
            raise DiskFullError(
                error.errno,
                f"{errors.disk_full_message(self.path, 'appending records to')}; the {self.written} records "
                f"written by this run and all before them are kept, the {len(records)} being written are not",
                str(self.path),
            ) from error
        self.written += len(records)

    def _cut_back(self, size: int) -> None:
        try:
            os.ftruncate(self._fd, size)
            os.fsync(self._fd)
        except OSError as error:  # the next run's cut_truncated_tail removes the partial line
            logger.warning("%s: could not cut a partial record after a full disk (%s)", self.path, error)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "ResultsWriter":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# --- config fingerprint --------------------------------------------------------------------------


def _canonical(value: Any) -> Any:
    """JSON-ready form of a config value: tuples as lists, mappings with sorted keys."""
    if isinstance(value, Mapping):
        return {str(key): _canonical(value[key]) for key in sorted(value, key=str)}
    if isinstance(value, (list, tuple)):
        return [_canonical(item) for item in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value)


def fingerprinted_part(config: Mapping[str, Any]) -> dict[str, Any]:
    """The config without its `runtime` and `curves` sections (`UNFINGERPRINTED`), in canonical form."""
    return {key: value for key, value in _canonical(config).items() if key not in UNFINGERPRINTED}


def config_fingerprint(config: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of the canonical JSON of `fingerprinted_part(config)`."""
    text = json.dumps(fingerprinted_part(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping):
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}{key}."))
        return flat
    return {prefix.rstrip("."): value}


def config_differences(stored: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """Lines 'field: stored -> current' for every fingerprinted field that differs."""
    old, new = _flatten(fingerprinted_part(stored)), _flatten(fingerprinted_part(current))
    lines = []
    for name in sorted(set(old) | set(new)):
        before, after = _describe(old, name), _describe(new, name)
        if before != after:
            lines.append(f"{name}: {before} -> {after}")
    return lines


def _describe(flat: Mapping[str, Any], name: str) -> str:
    return json.dumps(flat[name]) if name in flat else "(absent)"


def ensure_workdir_config(workdir: Path | str, config: Mapping[str, Any]) -> str:
    """Stores the config in a new workdir, or checks it against the stored one; returns the fingerprint.

    Raises:
      ConfigMismatchError: the workdir's config.json has another fingerprint; the message lists the
        fields that differ and what to do.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / CONFIG_NAME
    fingerprint = config_fingerprint(config)
    if path.is_file():
        stored = json.loads(path.read_text(encoding="utf-8"))
        if stored.get("fingerprint") != fingerprint:
            differences = config_differences(stored.get("config", {}), config)
            raise ConfigMismatchError(
                f"the workdir {workdir} holds results of a different config (fingerprint "
                f"{str(stored.get('fingerprint'))[:12]} vs {fingerprint[:12]}); refusing to mix them. "
                "Differences (stored -> current): " + "; ".join(differences or ["(unknown)"]) +
                ". Use a new --workdir, or rerun with the stored config."
            )
        return fingerprint
    payload = {"fingerprint": fingerprint, "config": _canonical(config)}
    atomic.write_text(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")
    return fingerprint


def read_workdir_config(workdir: Path | str) -> dict[str, Any]:
    """The config stored in a workdir's config.json (FileNotFoundError when there is none)."""
    path = Path(workdir) / CONFIG_NAME
    if not path.is_file():
        raise NotAWorkdirError(f"{path} not found: {workdir} is not the workdir of a sweep")
    return json.loads(path.read_text(encoding="utf-8"))["config"]


def write_skipped(workdir: Path | str, skipped: Sequence[tuple[str, str]]) -> Path:
    """Writes the loader's skipped (item, reason) pairs to skipped.json, atomically."""
    path = Path(workdir) / SKIPPED_NAME
    items = [{"item": item, "reason": reason} for item, reason in skipped]
    return atomic.write_text(path, json.dumps(items, indent=1) + "\n")


def read_skipped(workdir: Path | str) -> list[tuple[str, str]]:
    """The (item, reason) pairs of skipped.json; empty when there is none."""
    path = Path(workdir) / SKIPPED_NAME
    if not path.is_file():
        return []
    return [(entry["item"], entry["reason"]) for entry in json.loads(path.read_text(encoding="utf-8"))]
