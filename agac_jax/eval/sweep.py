"""The evaluation sweep: score each clip once, compress it every way the config asks, ask again, record.

For each batch of samples (`runtime.batch_samples`):
1. load the clips (a clip that fails to load, or is longer than 30 s, fails all its records);
2. answer every original clip (`Scorer.answer`) and, when a frame-selecting method is asked for,
   score them (one `Scorer.score` call for the batch);
3. for every pending (method, r, rho, seed) choose the kept frames of the batch's samples in one
   call (`methods.select_batch`); `codec` keeps
   every frame; `original` needs no codec and its record is written at once;
4. queue each distinct compressed clip for the codec sidecar (`CodecPipeline`, a `CodecClient` on a
   background thread) and go on with the next batch: the sidecar compresses while the scoring
   program runs; decoded waveforms are answered in full batches (`Scorer.answer`) as they come
   back, and their records appended. At the end, the rest are awaited and answered
   (`runtime.pipeline_codec = False` waits for each batch's clips before the next batch instead).

Decisions:
- rho = 1 keeps every frame whatever the method, so it is run once per (r, seed) and recorded under
  `codec` only; the tables and plots use that row as every method's rho = 1 point.
- Seeds: the data set split is fixed; a seed changes the `random` baseline (its frames are drawn
  with `selection_seed(seed, sample_id)`, so they do not depend on sharding or order) and, for a
  stochastic codec, gives an independent codec pass. Everything else is deterministic, so the other
  methods' std over seeds is 0 with a deterministic codec, which is the honest answer.
- With `codec.deterministic` (true for the offline backend) a compressed clip is a function of
  (sample, r, kept frames), so identical ones (another seed of a deterministic method, a method that
  picks the same frames) are sent and answered once and the other records copy the answer
  (`reused: true`, codec and answer seconds 0).
- The original answer comes from `Scorer.answers` on the original clip, the same generation path as
  the compressed answers, so A.C. compares like with like; it is generated once, and its tokens are
  what the scoring program scores (`Scorer.score(..., answer_ids=...)`).
- Failures (load, score, select, codec, answer) become records with a `failure`; the sweep goes on.
  A restarted run skips every recorded key; with `runtime.retry_failed` it redoes the failed ones.
- Several JAX processes: process i takes the samples whose id hashes to i modulo n
  (`distributed.shard_of`: order-independent), writes `results.{i}.jsonl` and its manifest
  `shard.{i}-of-{n}.json`; `merge` builds the outputs from every shard and refuses while one is
  missing or incomplete. A resume with another process count re-shards by key (every recorded key
  is skipped, whoever wrote it). A single process merges at the end by itself.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from absl import logging

from agac_jax.audio.io import validate_waveform
from agac_jax.codec import SUPPORTED_TOKEN_RATES, CodecClient, CodecReply, CodecRequest, num_frames
from agac_jax.codec.pipeline import CodecPipeline
from agac_jax.data import DATASETS, load_dataset
from agac_jax.data.common import AudioQASample
from agac_jax.eval import distributed, flops, metrics, plots, results, tables
from agac_jax.eval import atomic, lock
from agac_jax.eval.progress import Progress
from agac_jax.eval.results import METHODS, SELECTING_METHODS, Failure, ResultRecord, TaskKey
from agac_jax.prompts import render_prompt
from agac_jax.scoring.scorer import MESH_AXES
from agac_jax.scoring.selection import keep_ratio_fraction



# --- config --------------------------------------------------------------------------------------


def config_to_dict(config: Any) -> dict[str, Any]:
    """A plain dict of a ConfigDict (or a mapping)."""
    return config.to_dict() if hasattr(config, "to_dict") else dict(config)


def validate_config(config: Any) -> None:
    """Raises ValueError naming the first bad field of a sweep config."""
    if config.dataset.name not in DATASETS:
        raise ValueError(f"config.dataset.name must be one of {tuple(DATASETS)}, got {config.dataset.name!r}")
    unknown = [method for method in config.methods if method not in METHODS]
    if unknown or not config.methods:
        raise ValueError(f"config.methods must be a non-empty subset of {METHODS}; unknown: {unknown}")
    if len(set(config.methods)) != len(config.methods):
        raise ValueError(f"config.methods has duplicates: {list(config.methods)}")
    bad_rates = [rate for rate in config.rates if rate not in SUPPORTED_TOKEN_RATES]
    if bad_rates or not config.rates:
        raise ValueError(f"config.rates must be a non-empty subset of {SUPPORTED_TOKEN_RATES}; bad: {bad_rates}")
    for rho in config.rhos:
        keep_ratio_fraction(rho)
    if len({float(rho) for rho in config.rhos}) != len(config.rhos) or not config.rhos:
        raise ValueError(f"config.rhos must be non-empty and distinct, got {list(config.rhos)}")
    if not config.seeds or len(set(config.seeds)) != len(config.seeds):
        raise ValueError(f"config.seeds must be non-empty and distinct, got {list(config.seeds)}")
    if any(not isinstance(seed, int) or seed < 0 for seed in config.seeds):
        raise ValueError(f"config.seeds must be non-negative integers, got {list(config.seeds)}")
    if tuple(config.mesh.axes) != MESH_AXES:
        raise ValueError(f"config.mesh.axes must be {MESH_AXES}, got {tuple(config.mesh.axes)}")
    if config.runtime.batch_samples < 1:
        raise ValueError(f"config.runtime.batch_samples must be >= 1, got {config.runtime.batch_samples}")
    if config.dataset.name == "synthetic" and not config.dataset.root and config.dataset.num_clips < 1:
        raise ValueError(f"config.dataset.num_clips must be >= 1 (clips of the generated synthetic split), "
                         f"got {config.dataset.num_clips}")


def scoring_config(config: Any) -> Any:
    """The `ScoringConfig` of a sweep config: its scoring section, rates, mesh shape and axis rules."""
    from agac_jax.scoring.scorer import ScoringConfig

    fields = dict(config_to_dict(config.scoring))
    fields["buckets_seconds"] = tuple(fields["buckets_seconds"])
    return ScoringConfig(
        **fields,
        rates=tuple(config.rates),
        mesh_shape=tuple(config.mesh.shape),
        axis_rules=tuple(tuple(rule) for rule in config.mesh.logical_axis_rules),
    )


# --- data ----------------------------------------------------------------------------------------


def shard_samples(samples: Sequence[AudioQASample], process_index: int, process_count: int) -> list[AudioQASample]:
    """The samples of process `process_index`'s shard, in data set order: those whose id hashes to it
    (`distributed.shard_of`), so the data set's order never moves a sample to another shard."""
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} must lie in [0, process_count={process_count})")
    return [sample for sample in samples if distributed.shard_of(sample.sample_id, process_count) == process_index]


# --- tasks ---------------------------------------------------------------------------------------


def plan_tasks(sample_id: str, methods: Sequence[str], rates: Sequence[int], rhos: Sequence[float],
               seeds: Sequence[int]) -> list[TaskKey]:
    """Every key of one sample: `original` per seed; per (r, seed) `codec` (also standing for every
    selecting method's rho = 1) and each selecting method at each rho < 1."""
    selecting = [method for method in methods if method in SELECTING_METHODS]
    with_codec = "codec" in methods or (selecting and any(float(rho) == 1.0 for rho in rhos))
    keys = []
    for seed in seeds:
        if "original" in methods:
            keys.append(TaskKey(sample_id, "original", None, 1.0, seed))
        for rate in rates:
            if with_codec:
                keys.append(TaskKey(sample_id, "codec", rate, 1.0, seed))
            keys += [TaskKey(sample_id, method, rate, float(rho), seed)
                     for method in selecting for rho in rhos if float(rho) != 1.0]
    return keys


def selection_seed(seed: int, sample_id: str) -> int:
    """The `random` baseline's seed for one sample: a hash of (seed, sample_id) in [0, 2**31)."""
    digest = hashlib.sha256(f"{seed}:{sample_id}".encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") >> 1


def batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


# --- per-sample state ----------------------------------------------------------------------------


@dataclasses.dataclass
class _Sample:
    """A sample of the current batch and what is known about it so far."""

    sample: AudioQASample
    tasks: list[TaskKey]
    waveform: np.ndarray | None = None
    scores: Any = None
    answer_original: str | None = None
    answer_ids: np.ndarray | None = None  # the original answer's tokens, scored as they are
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)
    text_tokens: int = 0

    @property
    def parsed_original(self) -> str | None:
        return None if self.answer_original is None else metrics.parse_answer(self.answer_original)


@dataclasses.dataclass
class _Job:
    """One distinct compressed clip and the tasks that share it."""

    item: _Sample
    rate: int
    kept: np.ndarray
    tasks: list[tuple[TaskKey, float]]  # (key, seconds spent selecting)


@dataclasses.dataclass
class _Context:
    """What every stage of a sweep needs, and the compressed clips in flight."""

    dataset_name: str
    scorer: Any
    select_batch: Callable[..., list[np.ndarray]]
    decoder_shape: flops.DecoderShape
    writer: results.ResultsWriter
    progress: Progress
    codec_factory: Callable[[], CodecClient]
    deterministic_codec: bool
    process_index: int
    answer_batch: int
    pipelined: bool = True
    max_backlog: int = 256
    codec: CodecPipeline | None = None
    failed: int = 0
    jobs: dict[int, _Job] = dataclasses.field(default_factory=dict)  # request id -> job, in the codec
    ready: list[tuple[_Job, CodecReply]] = dataclasses.field(default_factory=list)  # decoded, not answered
    next_request: int = 0
    codec_seconds: float = 0.0  # sidecar time of the replies (its own timing)
    codec_wait_seconds: float = 0.0  # time this thread was blocked waiting for replies

    def codec_pipeline(self) -> CodecPipeline:
        if self.codec is None:
            self.codec = CodecPipeline(self.codec_factory, self.max_backlog)
        return self.codec


def _record(ctx: _Context, item: _Sample, key: TaskKey, **fields: Any) -> ResultRecord:
    sample = item.sample
    return ResultRecord(
        dataset=ctx.dataset_name, sample_id=sample.sample_id, clip_id=sample.clip_id, question=sample.question,
        label=sample.answer, method=key.method, rate=key.rate, rho=key.rho, seed=key.seed,
        answer_original=item.answer_original, parsed_original=item.parsed_original,
        num_samples=None if item.waveform is None else int(item.waveform.size),
        process_index=ctx.process_index, **fields,
    )


def _write(ctx: _Context, records: Sequence[ResultRecord]) -> None:
    ctx.writer.append(records)
    ctx.progress.update(len(records))


def _fail(ctx: _Context, item: _Sample, keys: Sequence[TaskKey], stage: str, error: BaseException | str,
          error_type: str | None = None) -> None:
    """Writes failure records for `keys`; error_type defaults to the exception's class name."""
    error_type = error_type or type(error).__name__
    failure = Failure(stage=stage, error_type=error_type, message=str(error))
    logging.warning("sample %s: %s failed for %d records: %s: %s", item.sample.sample_id, stage, len(keys),
                    error_type, error)
    ctx.failed += len(keys)
    _write(ctx, [_record(ctx, item, key, failure=failure, seconds=dict(item.seconds)) for key in keys])


def _prefill_flops(ctx: _Context, item: _Sample, audio_tokens: int) -> int:
    return flops.decoder_prefill_flops(ctx.decoder_shape, item.text_tokens + audio_tokens)


# --- stages --------------------------------------------------------------------------------------


def _load(ctx: _Context, items: Sequence[_Sample]) -> list[_Sample]:
    """Loads each clip (once per clip id); returns the samples that loaded, failing the others."""
    cache: dict[str, np.ndarray | BaseException] = {}
    loaded = []
    for item in items:
        start = time.perf_counter()
        clip_id = item.sample.clip_id
        if clip_id not in cache:
            try:
                cache[clip_id] = validate_waveform(item.sample.load_waveform(), f"clip {clip_id}").astype(np.float32)
            except Exception as error:  # noqa: BLE001 - a bad clip is recorded and the sweep goes on
                cache[clip_id] = error
        item.seconds["load"] = time.perf_counter() - start
        if isinstance(cache[clip_id], BaseException):
            _fail(ctx, item, item.tasks, "load", cache[clip_id])
        else:
            item.waveform = cache[clip_id]
            loaded.append(item)
    return loaded


def _per_item(ctx: _Context, items: Sequence[_Sample], stage: str, run: Callable[[Sequence[_Sample]], list[Any]],
              keys_of: Callable[[_Sample], list[TaskKey]]) -> list[tuple[_Sample, Any]]:
    """run(items) for the whole batch; if it raises, item by item, failing keys_of(item) of the items
    that raise."""
    start = time.perf_counter()
    try:
        outputs = run(items)
        share = (time.perf_counter() - start) / max(len(items), 1)
        for item in items:
            item.seconds[stage] = share
        return list(zip(items, outputs))
    except Exception as error:  # noqa: BLE001 - isolate the failing sample
        logging.warning("%s failed for a batch of %d samples (%s); retrying one by one", stage, len(items), error)
    done = []
    for item in items:
        start = time.perf_counter()
        try:
            output = run([item])[0]
        except Exception as error:  # noqa: BLE001
            item.seconds[stage] = time.perf_counter() - start
            _fail(ctx, item, keys_of(item), stage, error)
            continue
        item.seconds[stage] = time.perf_counter() - start
        done.append((item, output))
    return done


def _needs_scores(item: _Sample) -> bool:
    return any(key.method in SELECTING_METHODS for key in item.tasks)


def _answer_original(ctx: _Context, items: Sequence[_Sample]) -> list[_Sample]:
    """The original answer of each item; returns the items that have one."""
    answered = _per_item(ctx, items, "answer_original",
                         lambda batch: ctx.scorer.answers([i.waveform for i in batch], [i.sample.question for i in batch]),
                         keys_of=lambda item: item.tasks)
    for item, (text, ids) in answered:
        item.answer_original, item.answer_ids = text, ids
    return [item for item, _ in answered]


def _score(ctx: _Context, items: Sequence[_Sample]) -> list[_Sample]:
    """Scores the items that have a selecting task; returns those needing none or scored, failing
    the compressed records of the others."""
    scored = _per_item(ctx, [item for item in items if _needs_scores(item)], "score",
                       lambda batch: ctx.scorer.score([i.waveform for i in batch], [i.sample.question for i in batch],
                                                      answer_ids=[i.answer_ids for i in batch]),
                       keys_of=lambda item: [key for key in item.tasks if key.method != "original"])
    for item, scores in scored:
        item.scores = scores
    scored_ids = {id(item) for item, _ in scored}
    return [item for item in items if id(item) in scored_ids or not _needs_scores(item)]


def _write_originals(ctx: _Context, item: _Sample) -> None:
    keys = [key for key in item.tasks if key.method == "original"]
    if not keys:
        return
    audio_tokens = metrics.qwen2_audio_token_count(item.waveform.size)
    flops = _prefill_flops(ctx, item, audio_tokens)
    seconds = {name: item.seconds[name] for name in ("load", "answer_original") if name in item.seconds}
    _write(ctx, [
        _record(ctx, item, key, answer_compressed=item.answer_original, parsed_compressed=item.parsed_original,
                audio_tokens_before=audio_tokens, audio_tokens_after=audio_tokens,
                prefill_flops_before=flops, prefill_flops_after=flops, seconds=seconds)
        for key in keys
    ])


def _select(ctx: _Context, members: Sequence[tuple[_Sample, TaskKey]]) -> list[np.ndarray]:
    """Kept frames of one (method, rate, rho, seed) for several samples, in one batched call."""
    method, rate, rho, seed = members[0][1].method, members[0][1].rate, members[0][1].rho, members[0][1].seed
    if method == "codec":
        return [np.arange(num_frames(item.waveform.size, rate), dtype=np.int64) for item, _ in members]
    kept = ctx.select_batch([item.scores for item, _ in members], [item.waveform for item, _ in members], method,
                            rate, rho, [selection_seed(seed, item.sample.sample_id) for item, _ in members])
    return [np.asarray(k, dtype=np.int64) for k in kept]


def _kept_frames(ctx: _Context, items: Sequence[_Sample]) -> dict[tuple[int, TaskKey], tuple[np.ndarray, float]]:
    """(kept frames, seconds) of every compressed task of the batch, keyed by (id(item), key); a
    (method, rate, rho, seed) is selected for all samples at once, and sample by sample if that
    fails, recording the samples whose selection fails."""
    groups: dict[tuple, list[tuple[_Sample, TaskKey]]] = {}
    for item in items:
        for key in item.tasks:
            if key.method != "original":
                groups.setdefault((key.method, key.rate, key.rho, key.seed), []).append((item, key))
    kept: dict[tuple[int, TaskKey], tuple[np.ndarray, float]] = {}
    for members in groups.values():
        start = time.perf_counter()
        try:
            frames = _select(ctx, members)
        except Exception as error:  # noqa: BLE001 - isolate the failing sample
            logging.warning("selection failed for %d samples (%s); retrying one by one", len(members), error)
        else:
            share = (time.perf_counter() - start) / len(members)
            kept.update({(id(item), key): (f, share) for (item, key), f in zip(members, frames)})
            continue
        for item, key in members:
            start = time.perf_counter()
            try:
                kept[(id(item), key)] = (_select(ctx, [(item, key)])[0], time.perf_counter() - start)
            except Exception as error:  # noqa: BLE001
                _fail(ctx, item, [key], "select", error)
    return kept


def _plan_jobs(ctx: _Context, items: Sequence[_Sample]) -> list[_Job]:
    """The distinct compressed clips of the batch, in sample and task order; selection failures are
    recorded."""
    kept = _kept_frames(ctx, items)
    jobs: dict[tuple, _Job] = {}
    for item in items:
        for key in item.tasks:
            if (id(item), key) not in kept:
                continue
            frames, spent = kept[(id(item), key)]
            identity = (id(item), key.rate, frames.tobytes()) if ctx.deterministic_codec else (id(item), key)
            job = jobs.setdefault(identity, _Job(item=item, rate=key.rate, kept=frames, tasks=[]))
            job.tasks.append((key, spent))
    return list(jobs.values())


def _compressed_records(ctx: _Context, job: _Job, reply: CodecReply, answer: str, answer_seconds: float
                        ) -> list[ResultRecord]:
    item, n = job.item, int(job.item.waveform.size)
    total_frames = num_frames(n, job.rate)
    mask = metrics.keep_mask_from_indices(job.kept, total_frames)
    counts = metrics.token_counts(n, mask, job.rate)
    evidence = item.sample.evidence
    recall = None if evidence is None else metrics.evidence_recall(mask, evidence, n, job.rate)
    records = []
    for index, (key, select_seconds) in enumerate(job.tasks):
        reused = index > 0
        seconds = {
            "load": item.seconds.get("load", 0.0), "score": item.seconds.get("score", 0.0),
            "select": select_seconds, "codec": 0.0 if reused else float(reply.seconds.get("total", 0.0)),
            "answer": 0.0 if reused else answer_seconds,
        }
        records.append(_record(
            ctx, item, key, answer_compressed=answer, parsed_compressed=metrics.parse_answer(answer),
            num_frames=total_frames, kept_frames=int(job.kept.size),
            audio_tokens_before=counts.audio_tokens_before, audio_tokens_after=counts.audio_tokens_after,
            # what the codec really spends (SemantiCodec: whole AudioMAE patches; rvq_mel: the frames)
            codec_tokens_before=reply.clip_tokens or counts.codec_tokens_before,
            codec_tokens_after=int(reply.tokens.size) if reply.tokens is not None else counts.codec_tokens_after,
            prefill_flops_before=_prefill_flops(ctx, item, counts.audio_tokens_before),
            prefill_flops_after=_prefill_flops(ctx, item, counts.audio_tokens_after),
            evidence_recall=recall, seconds=seconds, reused=reused,
        ))
    return records


def _answer_compressed(ctx: _Context, ready: list[tuple[_Job, CodecReply]]) -> None:
    """Answers a batch of decoded clips and writes their records (one by one if the batch fails)."""
    if not ready:
        return
    start = time.perf_counter()
    try:
        answers = ctx.scorer.answer([reply.waveform for _, reply in ready], [job.item.sample.question for job, _ in ready])
        share = (time.perf_counter() - start) / len(ready)
        _write(ctx, [record for (job, reply), answer in zip(ready, answers)
                     for record in _compressed_records(ctx, job, reply, answer, share)])
        return
    except (results.DiskFullError, lock.LockLostError):
        raise  # the records cannot be written: stop the run (retrying the clips would not help)
    except Exception as error:  # noqa: BLE001
        logging.warning("answering %d compressed clips failed (%s); retrying one by one", len(ready), error)
    for job, reply in ready:
        start = time.perf_counter()
        try:
            answer = ctx.scorer.answer([reply.waveform], [job.item.sample.question])[0]
        except Exception as error:  # noqa: BLE001
            _fail(ctx, job.item, [key for key, _ in job.tasks], "answer", error)
            continue
        _write(ctx, _compressed_records(ctx, job, reply, answer, time.perf_counter() - start))


def _submit(ctx: _Context, jobs: Sequence[_Job]) -> None:
    """Queues the jobs for the codec sidecar (returns at once; see `CodecPipeline`)."""
    if not jobs:
        return
    pipeline = ctx.codec_pipeline()
    for job in jobs:
        request_id, ctx.next_request = ctx.next_request, ctx.next_request + 1
        ctx.jobs[request_id] = job
        pipeline.submit(CodecRequest(request_id=request_id, waveform=job.item.waveform, token_rate=job.rate,
                                     kept_frames=job.kept, seed=job.tasks[0][0].seed))


def _collect(ctx: _Context, max_pending: int) -> None:
    """Answers decoded clips in full batches as they come back, waiting while more than `max_pending`
    codec requests are out; with `max_pending` 0 it returns only when all are back and answered."""
    if ctx.codec is None:
        return
    while True:
        must_wait = ctx.codec.pending > max_pending
        for reply in ctx.codec.replies(block=must_wait):
            job = ctx.jobs.pop(reply.request_id)
            ctx.codec_seconds += float(reply.seconds.get("total", 0.0)) if reply.seconds else 0.0
            if reply.ok:
                ctx.ready.append((job, reply))
            else:
                _fail(ctx, job.item, [key for key, _ in job.tasks], "codec", reply.failure.message,
                      error_type=reply.failure.error_type)
        while len(ctx.ready) >= ctx.answer_batch:
            batch, ctx.ready = ctx.ready[: ctx.answer_batch], ctx.ready[ctx.answer_batch :]
            _answer_compressed(ctx, batch)
        if not must_wait:
            break
    if max_pending == 0 and ctx.ready:
        batch, ctx.ready = ctx.ready, []
        _answer_compressed(ctx, batch)


def _run_batch(ctx: _Context, items: Sequence[_Sample]) -> None:
    """Loads, answers and scores a batch and queues its compressed clips. Pipelined, the codec works
    on them while the next batch is scored, and decoded clips are answered as full batches form;
    otherwise the batch's clips are all compressed and answered before this returns."""
    items = _answer_original(ctx, _load(ctx, items))
    for item in items:
        _write_originals(ctx, item)
    _submit(ctx, _plan_jobs(ctx, _score(ctx, items)))
    _collect(ctx, ctx.max_backlog if ctx.pipelined else 0)


# --- entry points --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SweepOutcome:
    """What one process did: records written (failed ones among them) and the merged outputs, if any."""

    written: int
    failed: int
    pending_before: int
    results_file: Path
    merged: "MergeOutputs | None"
    timing: dict[str, float] = dataclasses.field(default_factory=dict)  # see `_run_pending`


@dataclasses.dataclass(frozen=True)
class MergeOutputs:
    """The files `merge` wrote."""

    summary_csv: Path
    per_seed_csv: Path
    tables_md: Path
    plots: tuple[Path, ...]
    num_records: int
    rows: tuple[Any, ...] = ()  # the tables' rows (`tables.RowSummary`)


def text_token_count(tokenizer: Any, question: str) -> int:
    """Prompt tokens of a question besides the audio: the rendered prompt minus its one placeholder."""
    return len(tokenizer(render_prompt(tokenizer, question), add_special_tokens=False)["input_ids"]) - 1


def make_scorer(config: Any) -> Any:
    """The real Scorer of the config's checkpoint."""
    from agac_jax.scoring.scorer import Scorer

    if not config.model.checkpoint_dir:
        raise ValueError("config.model.checkpoint_dir is empty: set it to a Hugging Face Qwen2-Audio directory")
    model = config.model
    return Scorer.from_directory(model.checkpoint_dir, scoring_config(config),
                                 param_dtype=model.get("param_dtype", "float32"), dtype=model.get("dtype", "float32"),
                                 scan_layers=bool(model.get("scan_layers", False)))


def _codec_factory(config: Any) -> Callable[[], CodecClient]:
    def start() -> CodecClient:
        return CodecClient(
            backend=config.codec.backend, backend_options=config_to_dict(config.codec.options),
            crossfade_ms=config.codec.crossfade_ms, max_in_flight=config.runtime.codec_max_in_flight,
            timeout_s=config.runtime.codec_timeout_s, num_threads=config.runtime.codec_num_threads,
            python=config.codec.get("python") or None,
        )

    return start


def run_sweep(config: Any, workdir: Path | str, *, scorer: Any = None, process_index: int | None = None,
              process_count: int | None = None) -> SweepOutcome:
    """Runs (or resumes) this process's shard of the sweep in `workdir`; merges when it is the only one.

    Args:
      config: a sweep config (see `configs/synthetic_tiny.py`).
      workdir: where config.json and the results go.
      scorer: a ready Scorer for the config's checkpoint (default: loaded from it).
      process_index, process_count: this process's shard (default: JAX's).
    Raises:
      results.ConfigMismatchError: the workdir holds results of another config.
      lock.LockHeldError: another live process writes this shard's results file (see `lock.RunLock`).
    """
    validate_config(config)
    workdir = Path(workdir)
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    results.ensure_workdir_config(workdir, config_to_dict(config))
    path = results.results_path(workdir, process_index, process_count)
    with lock.RunLock(path):  # a second writer of this results file refuses here, before any work
        return _run_locked(config, workdir, path, scorer, process_index, process_count)


def _run_locked(config: Any, workdir: Path, path: Path, scorer: Any, process_index: int,
                process_count: int) -> SweepOutcome:
    """`run_sweep` under the lock of its results file `path`."""
    dataset_name, loaded = load_dataset(config.dataset)
    if process_index == 0:
        results.write_skipped(workdir, [(s.item, s.reason) for s in loaded.skipped])
    done = results.done_keys(workdir, retry_failed=config.runtime.retry_failed)
    pending = []
    planned = 0
    shard = shard_samples(loaded.samples, process_index, process_count)
    for sample in shard:
        keys = plan_tasks(sample.sample_id, config.methods, config.rates, config.rhos, config.seeds)
        planned += len(keys)
        todo = [key for key in keys if key not in done]
        if todo:
            pending.append(_Sample(sample=sample, tasks=todo))
    total = sum(len(item.tasks) for item in pending)
    logging.info("process %d/%d: %d samples in its shard, %d records to do (%d samples)", process_index,
                 process_count, len(shard), total, len(pending))
    manifest = _start_shard(workdir, process_index, process_count, planned, total)
    written = failed = 0
    timing: dict[str, float] = {}
    if pending:
        written, failed, timing = _run_pending(config, dataset_name, pending, path, scorer, process_index, total)
    distributed.write_manifest(workdir, dataclasses.replace(manifest, complete=True, written=written, failed=failed))
    merged = merge(workdir) if process_count == 1 else None
    return SweepOutcome(written=written, failed=failed, pending_before=total, results_file=path, merged=merged,
                        timing=timing)


def _start_shard(workdir: Path, process_index: int, process_count: int, planned: int, pending: int
                 ) -> distributed.ShardManifest:
    """Writes this process's manifest, incomplete until its shard is done; process 0 first removes the
    manifests of an earlier run with another process count (a resume re-shards by key)."""
    if process_index == 0:
        stale = distributed.remove_stale_manifests(workdir, process_count)
        if stale:
            logging.warning("re-sharding %s by key over %d processes (it was run with %s): every recorded key is "
                            "kept and skipped; removed %s", workdir, process_count,
                            sorted({m.process_count for m in stale}), ", ".join(m.name for m in stale))
    manifest = distributed.ShardManifest(process_index=process_index, process_count=process_count, planned=planned,
                                         pending_before=pending, complete=False)
    distributed.write_manifest(workdir, manifest)
    return manifest


def _run_pending(config: Any, dataset_name: str, pending: list[_Sample], path: Path, scorer: Any,
                 process_index: int, total: int) -> tuple[int, int, dict[str, float]]:
    """Runs the pending samples; returns (records written, failed, timing).

    timing: `wall` seconds of the loop (the scorer already loaded), `codec_wait` seconds this thread
    was blocked on codec replies, `codec` the sidecar's own seconds summed over the replies; so
    `wall - codec_wait` is this thread's busy time (loading, scoring, selecting, answering).
    """
    from agac_jax.scoring.methods import select_batch

    scorer = make_scorer(config) if scorer is None else scorer
    for item in pending:
        item.text_tokens = text_token_count(scorer.tokenizer, item.sample.question)
    with results.ResultsWriter(path) as writer, Progress(
        total, f"sweep p{process_index}", log_every_s=config.runtime.progress_log_every_s
    ) as progress:
        ctx = _Context(
            dataset_name=dataset_name, scorer=scorer, select_batch=select_batch,
            decoder_shape=flops.DecoderShape.from_text_config(scorer.model_config.text),
            writer=writer, progress=progress,
            codec_factory=_codec_factory(config), deterministic_codec=config.codec.deterministic,
            process_index=process_index, answer_batch=config.scoring.batch_size,
            pipelined=config.runtime.pipeline_codec, max_backlog=config.runtime.codec_max_backlog,
        )
        started = time.perf_counter()
        try:
            for batch in batches(pending, config.runtime.batch_samples):
                _run_batch(ctx, batch)
            _collect(ctx, 0)
        finally:
            if ctx.codec is not None:
                ctx.codec_wait_seconds = ctx.codec.wait_seconds
                ctx.codec.close()
        timing = {"wall": time.perf_counter() - started, "codec_wait": ctx.codec_wait_seconds,
                  "codec": ctx.codec_seconds}
        return writer.written, ctx.failed, timing


def merge(workdir: Path | str, *, allow_partial: bool = False) -> MergeOutputs:
    """Builds summary.csv, per_seed.csv, tables.md and plots/ from every results file of a workdir.

    Each output is replaced atomically (`atomic`): a kill leaves the previous file or the new one.

    Args:
      allow_partial: merge the records that are there even while a run still writes a shard (its
        lock is held by a live process; this process's own lock does not count), or while a shard
        is missing or incomplete (`distributed.shard_problems`; then logged).
    Raises:
      lock.LockHeldError: a live writer holds a shard of the workdir and allow_partial is False.
      distributed.IncompleteShardsError: a shard's manifest is missing or not complete, or its records
        are not all here, and allow_partial is False; the message names each such shard.
    """
    workdir = Path(workdir)
    if not allow_partial:
        writers = lock.held_locks(workdir)
        if writers:
            raise lock.LockHeldError(
                f"cannot merge {workdir} yet: a run is still writing {lock.describe_holders(writers)}. Wait for "
                "it to finish, or pass --allow_partial to build the tables from the records written so far")
    stored = results.read_workdir_config(workdir)
    # In key order, so the tables' float sums do not depend on how the records were split over shards.
    records = sorted(results.read_workdir(workdir), key=lambda r: (r.sample_id, r.method, r.rate or 0, r.rho, r.seed))
    distributed.check_shards(workdir, [record.sample_id for record in records], allow_partial=allow_partial)
    per_seed = tables.seed_metrics(records)
    rows = tables.summarize_rows(per_seed)
    summary_csv = tables.write_summary_csv(rows, workdir / "summary.csv")
    per_seed_csv = tables.write_per_seed_csv(per_seed, workdir / "per_seed.csv")
    markdown = tables.render_markdown(rows, records, results.read_skipped(workdir),
                                      codec_backend=stored.get("codec", {}).get("backend"))
    tables_md = atomic.write_text(workdir / "tables.md", markdown)
    written_plots = plots.write_plots(rows, workdir / "plots")
    logging.info("merged %d records from %d files into %s", len(records), len(results.results_files(workdir)), workdir)
    return MergeOutputs(summary_csv=summary_csv, per_seed_csv=per_seed_csv, tables_md=tables_md,
                        plots=tuple(written_plots), num_records=len(records), rows=tuple(rows))
