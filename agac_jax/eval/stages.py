"""The stages of one sweep batch: load, answer the originals, score, select, compress, answer again.

`run_batch(ctx, items)` takes a batch of `Sample`s through every stage and writes their records;
`collect(ctx, n)` answers the decoded clips that came back from the codec sidecar. `Context` holds
what every stage needs (the scorer, the results writer, the codec pipeline) and the clips in flight.
The sweep's entry points (`agac_jax.eval.sweep`) build the context and call these; the decisions
they implement are in sweep.py's module docstring.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from absl import logging

from agac_jax.audio.io import validate_waveform
from agac_jax.codec import CodecClient, CodecReply, CodecRequest, num_frames
from agac_jax.codec.pipeline import CodecPipeline
from agac_jax.data.common import AudioQASample
from agac_jax.eval import adaptive, cider, flops, lock, metrics, results
from agac_jax.eval.progress import Progress
from agac_jax.eval.results import SELECTING_METHODS, Failure, ResultRecord, TaskKey

if TYPE_CHECKING:
    from agac_jax.scoring.methods import SelectionBatch


def parse_reply(sample: AudioQASample, reply: str) -> str:
    """A reply as its metric reads it: "yes", "no" or "unknown" (`metrics.parse_answer`), or for a
    free-text sample (a caption) its tokens joined by spaces (`cider.normalize`)."""
    return cider.normalize(reply) if sample.reference is not None else metrics.parse_answer(reply)


def selection_seed(seed: int, sample_id: str) -> int:
    """The `random` baseline's seed for one sample: a hash of (seed, sample_id) in [0, 2**31)."""
    digest = hashlib.sha256(f"{seed}:{sample_id}".encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") >> 1


# --- per-sample state ----------------------------------------------------------------------------


@dataclasses.dataclass
class Sample:
    """A sample of the current batch and what is known about it so far."""

    sample: AudioQASample
    tasks: list[TaskKey]
    waveform: np.ndarray | None = None
    scores: Any = None
    answer_original: str | None = None
    answer_ids: np.ndarray | None = None  # the original answer's tokens, scored as they are
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)
    text_tokens: int = 0
    curve_methods: list[str] = dataclasses.field(default_factory=list)  # methods whose curves are to do

    @property
    def parsed_original(self) -> str | None:
        return None if self.answer_original is None else parse_reply(self.sample, self.answer_original)


@dataclasses.dataclass
class Job:
    """One distinct compressed clip and the tasks that share it."""

    item: Sample
    rate: int
    keep: np.ndarray  # bool [frames at `rate`]: the frames the codec keeps
    tasks: list[tuple[TaskKey, float]]  # (key, seconds spent selecting)


class SweepScorer(Protocol):
    """What the stages use of a `scoring.Scorer` (tests wrap one to inject faults or count calls)."""

    uses_video: bool  # the model also sees each sample's video: the stages hand its file

    def audio_token_count(self, n_samples: int) -> int: ...
    def answers(self, clips: Sequence[np.ndarray], questions: Sequence[str],
                videos: Sequence[Any] | None = None) -> list[tuple[str, np.ndarray]]: ...
    def answer(self, clips: Sequence[np.ndarray], questions: Sequence[str],
               videos: Sequence[Any] | None = None) -> list[str]: ...
    def score(self, clips: Sequence[np.ndarray], questions: Sequence[str], answer_ids: Any = None,
              videos: Sequence[Any] | None = None) -> list[Any]: ...


@dataclasses.dataclass
class Context:
    """What every stage of a sweep needs, and the compressed clips in flight."""

    dataset_name: str
    scorer: SweepScorer
    selection_batch: Callable[..., SelectionBatch]  # `methods.SelectionBatch`: scores on the device
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
    jobs: dict[int, Job] = dataclasses.field(default_factory=dict)  # request id -> job, in the codec
    ready: list[tuple[Job, CodecReply]] = dataclasses.field(default_factory=list)  # decoded, not answered
    next_request: int = 0
    codec_seconds: float = 0.0  # sidecar time of the replies (its own timing)
    codec_wait_seconds: float = 0.0  # time this thread was blocked waiting for replies
    curves: Any = None  # sweep_curves.CurveSettings, or None: no curves
    curve_writer: results.ResultsWriter | None = None  # appends sweep_curves.CurveRecord lines
    kind_weights: Sequence[Sequence[Any]] = ()  # adaptive_kind's (question kind, weight) pairs

    def codec_pipeline(self) -> CodecPipeline:
        if self.codec is None:
            self.codec = CodecPipeline(self.codec_factory, self.max_backlog)
        return self.codec


def _record(ctx: Context, item: Sample, key: TaskKey, **fields: Any) -> ResultRecord:
    sample = item.sample
    return ResultRecord(
        dataset=ctx.dataset_name, sample_id=sample.sample_id, clip_id=sample.clip_id, question=sample.question,
        label=sample.answer, method=key.method, rate=key.rate, rho=key.rho, seed=key.seed,
        answer_original=item.answer_original, parsed_original=item.parsed_original,
        num_samples=None if item.waveform is None else int(item.waveform.size),
        process_index=ctx.process_index, prompt_suffix=sample.prompt_suffix, reference=sample.reference, **fields,
    )


def _write(ctx: Context, records: Sequence[ResultRecord]) -> None:
    ctx.writer.append(records)
    ctx.progress.update(len(records))


def _fail(ctx: Context, item: Sample, keys: Sequence[TaskKey], stage: str, error: BaseException | str,
          error_type: str | None = None) -> None:
    """Writes failure records for `keys`; error_type defaults to the exception's class name."""
    error_type = error_type or type(error).__name__
    failure = Failure(stage=stage, error_type=error_type, message=str(error))
    logging.warning("sample %s: %s failed for %d records: %s: %s", item.sample.sample_id, stage, len(keys),
                    error_type, error)
    ctx.failed += len(keys)
    _write(ctx, [_record(ctx, item, key, failure=failure, seconds=dict(item.seconds)) for key in keys])


def _prefill_flops(ctx: Context, item: Sample, audio_tokens: int) -> int:
    return flops.decoder_prefill_flops(ctx.decoder_shape, item.text_tokens + audio_tokens)


# --- stages --------------------------------------------------------------------------------------


def _load(ctx: Context, items: Sequence[Sample]) -> list[Sample]:
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


FATAL = (results.DiskFullError, lock.LockLostError)  # no retry helps: the records cannot be written


def isolate(items: Sequence[Any], run: Callable[[Sequence[Any]], list[Any]], what: str
            ) -> list[tuple[Any, Any, float, BaseException | None]]:
    """(item, output, seconds, error) of each item, in order: run(items) once for the whole batch, and
    if that raises, run([item]) for each item alone, so that a bad item fails alone (its error given,
    its output None). `seconds`: the item's share of the batch's time, or its own; `what` names the
    work in the log. `FATAL` errors are raised."""
    start = time.perf_counter()
    try:
        outputs = run(items)
    except FATAL:
        raise
    except Exception as error:  # noqa: BLE001 - isolate the failing item
        logging.warning("%s failed for a batch of %d (%s); retrying one by one", what, len(items), error)
    else:
        share = (time.perf_counter() - start) / max(len(items), 1)
        return [(item, output, share, None) for item, output in zip(items, outputs)]
    done = []
    for item in items:
        start = time.perf_counter()
        try:
            output, error = run([item])[0], None
        except FATAL:
            raise
        except Exception as one_error:  # noqa: BLE001
            output, error = None, one_error
        done.append((item, output, time.perf_counter() - start, error))
    return done


def _per_item(ctx: Context, items: Sequence[Sample], stage: str, run: Callable[[Sequence[Sample]], list[Any]],
              keys_of: Callable[[Sample], list[TaskKey]], failure_stage: str | None = None
              ) -> list[tuple[Sample, Any]]:
    """`isolate` for a stage of the samples: each sample's seconds recorded under `stage`, keys_of(item)
    failed for the samples that raise (at `failure_stage`, default `stage`: one of
    results.FAILURE_STAGES); returns (item, output) of the others."""
    done = []
    for item, output, seconds, error in isolate(items, run, stage):
        item.seconds[stage] = seconds
        if error is None:
            done.append((item, output))
        else:
            _fail(ctx, item, keys_of(item), failure_stage or stage, error)
    return done


def _videos(ctx: Context, samples: Sequence[AudioQASample]) -> dict[str, Any]:
    """{"videos": each sample's video file} for a scorer that sees the video too (PandaGPT on AVHBench:
    `uses_video`), else {}."""
    if not ctx.scorer.uses_video:
        return {}
    return {"videos": [getattr(s.audio, "path", None) for s in samples]}


def _needs_scores(item: Sample) -> bool:
    return bool(item.curve_methods) or any(key.method in SELECTING_METHODS for key in item.tasks)


def _answer_original(ctx: Context, items: Sequence[Sample]) -> list[Sample]:
    """The original answer of each item; returns the items that have one."""
    answered = _per_item(ctx, items, "answer_original",
                         lambda batch: ctx.scorer.answers([i.waveform for i in batch], [i.sample.question for i in batch],
                                                          **_videos(ctx, [i.sample for i in batch])),
                         keys_of=lambda item: item.tasks, failure_stage="answer")
    for item, (text, ids) in answered:
        item.answer_original, item.answer_ids = text, ids
    return [item for item, _ in answered]


def _score(ctx: Context, items: Sequence[Sample]) -> list[Sample]:
    """Scores the items that have a selecting task; returns those needing none or scored, failing
    the compressed records of the others."""
    wanted = [item for item in items if _needs_scores(item)]
    if not wanted:
        return list(items)
    scored = _per_item(ctx, wanted, "score",
                       lambda batch: ctx.scorer.score([i.waveform for i in batch], [i.sample.question for i in batch],
                                                      answer_ids=[i.answer_ids for i in batch],
                                                      **_videos(ctx, [i.sample for i in batch])),
                       keys_of=lambda item: [key for key in item.tasks if key.method != "original"])
    for item, scores in scored:
        problem = scores.non_finite()
        if problem is None:
            item.scores = scores
        else:
            _fail(ctx, item, [key for key in item.tasks if key.method != "original"], "score", problem,
                  error_type="NonFiniteScores")
    scored = [(item, scores) for item, scores in scored if item.scores is not None]
    scored_ids = {id(item) for item, _ in scored}
    return [item for item in items if id(item) in scored_ids or not _needs_scores(item)]


def _curves(ctx: Context, items: Sequence[Sample]) -> None:
    """Deletion and insertion curves (`sweep_curves`) of the scored items, per method in one batched
    call; a method whose call fails is retried sample by sample and the failures are recorded."""
    from agac_jax.eval import faithfulness, sweep_curves

    items = [item for item in items if item.curve_methods and item.scores is not None]
    if not items:
        return
    settings = ctx.curves
    seed_of = lambda group: [selection_seed(0, i.sample.sample_id) for i in group]  # noqa: E731 - `random`
    ends_of: dict[tuple[int, ...], faithfulness.CurveEnds] = {}  # shared by the methods of one group

    def run(group: Sequence[Sample], method: str) -> list[Any]:
        start = time.perf_counter()
        args = ([i.scores for i in group], [i.waveform for i in group], [i.sample.question for i in group])
        key = tuple(id(i) for i in group)
        if key not in ends_of:
            ends_of[key] = faithfulness.curve_ends(ctx.scorer, *args)
        curves = faithfulness.selector_curves(ctx.scorer, method, *args, rate=settings.rate, rhos=settings.rhos,
                                              seeds=seed_of(group), ends=ends_of[key])
        share = (time.perf_counter() - start) / len(group)
        return sweep_curves.from_curves(ctx.dataset_name, [i.sample.sample_id for i in group], curves,
                                        settings.rate, share)

    for method in settings.methods:
        group = [item for item in items if method in item.curve_methods]
        if not group:
            continue
        records = []
        for item, record, _, error in isolate(group, lambda batch: run(batch, method), f"curves of {method}"):
            if error is not None:
                logging.warning("sample %s: curves of %s failed: %s", item.sample.sample_id, method, error)
                record = sweep_curves.CurveRecord(
                    dataset=ctx.dataset_name, sample_id=item.sample.sample_id, method=method, rate=settings.rate,
                    rhos=settings.rhos, failure=f"{type(error).__name__}: {error}")
            records.append(record)
        ctx.curve_writer.append(records)
        logging.info("curves of %s: %d samples at %d ratios in %.1f s", method, len(group), len(settings.rhos),
                     sum(r.seconds for r in records))


def _write_originals(ctx: Context, item: Sample) -> None:
    keys = [key for key in item.tasks if key.method == "original"]
    if not keys:
        return
    audio_tokens = ctx.scorer.audio_token_count(item.waveform.size)
    flops = _prefill_flops(ctx, item, audio_tokens)
    seconds = {name: item.seconds[name] for name in ("load", "answer_original") if name in item.seconds}
    _write(ctx, [
        _record(ctx, item, key, answer_compressed=item.answer_original, parsed_compressed=item.parsed_original,
                audio_tokens_before=audio_tokens, audio_tokens_after=audio_tokens,
                prefill_flops_before=flops, prefill_flops_after=flops, seconds=seconds)
        for key in keys
    ])


def _select(ctx: Context, batch: SelectionBatch, members: Sequence[tuple[Sample, TaskKey, int]]) -> list[np.ndarray]:
    """Keep masks of one (method, rate, rho, seed) for several samples (their rows of `batch`), in one
    batched call."""
    method, rate, rho, seed = members[0][1].method, members[0][1].rate, members[0][1].rho, members[0][1].seed
    if method == "codec":
        return [np.ones(num_frames(item.waveform.size, rate), bool) for item, _, _ in members]
    weights = None
    if ctx.kind_weights:  # methods that read no weights ignore them (`methods.Method.weighted`)
        weights = adaptive.sample_weights([getattr(item.sample, "kind", None) for item, _, _ in members],
                                          ctx.kind_weights)
    return batch.masks(method, rate, rho, [selection_seed(seed, item.sample.sample_id) for item, _, _ in members],
                       weights, rows=[row for _, _, row in members])


def _kept_frames(ctx: Context, items: Sequence[Sample]) -> dict[tuple[int, TaskKey], tuple[np.ndarray, float]]:
    """(keep mask, seconds) of every compressed task of the batch, keyed by (id(item), key). The
    scored samples are put on the device once (`SelectionBatch`); a (method, rate, rho, seed) is
    selected for all its samples at once, and sample by sample if that fails, recording the samples
    whose selection fails."""
    scored = [item for item in items if item.scores is not None]
    batch = ctx.selection_batch([item.scores for item in scored], [item.waveform for item in scored], strict=False)
    rows = {id(item): row for row, item in enumerate(scored)}
    groups: dict[tuple, list[tuple[Sample, TaskKey, int]]] = {}
    for item in items:
        wanted = [key for key in item.tasks if key.method != "original"]
        problem = batch.problems[rows[id(item)]] if id(item) in rows else None
        if wanted and problem is not None:
            _fail(ctx, item, wanted, "select", ValueError(problem))
            continue
        for key in wanted:
            groups.setdefault((key.method, key.rate, key.rho, key.seed), []).append((item, key, rows.get(id(item), -1)))
    kept: dict[tuple[int, TaskKey], tuple[np.ndarray, float]] = {}
    for members in groups.values():
        for (item, key, _), frames, seconds, error in isolate(members, lambda group: _select(ctx, batch, group),
                                                              "selection"):
            if error is None:
                kept[(id(item), key)] = (frames, seconds)
            else:
                _fail(ctx, item, [key], "select", error)
    return kept


def _plan_jobs(ctx: Context, items: Sequence[Sample]) -> list[Job]:
    """The distinct compressed clips of the batch, in sample and task order; selection failures are
    recorded."""
    kept = _kept_frames(ctx, items)
    jobs: dict[tuple, Job] = {}
    for item in items:
        for key in item.tasks:
            if (id(item), key) not in kept:
                continue
            mask, spent = kept[(id(item), key)]
            identity = (id(item), key.rate, mask.tobytes()) if ctx.deterministic_codec else (id(item), key)
            job = jobs.setdefault(identity, Job(item=item, rate=key.rate, keep=mask, tasks=[]))
            job.tasks.append((key, spent))
    return list(jobs.values())


def _compressed_records(ctx: Context, job: Job, reply: CodecReply, answer: str, answer_seconds: float
                        ) -> list[ResultRecord]:
    item, n = job.item, int(job.item.waveform.size)
    total_frames = num_frames(n, job.rate)
    mask = job.keep
    counts = metrics.token_counts(n, mask, job.rate, ctx.scorer.audio_token_count)
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
            ctx, item, key, answer_compressed=answer, parsed_compressed=parse_reply(item.sample, answer),
            num_frames=total_frames, kept_frames=int(mask.sum()),
            audio_tokens_before=counts.audio_tokens_before, audio_tokens_after=counts.audio_tokens_after,
            # what the codec really spends (SemantiCodec: whole AudioMAE patches; rvq_mel: the frames)
            codec_tokens_before=reply.clip_tokens or counts.codec_tokens_before,
            codec_tokens_after=int(reply.tokens.size) if reply.tokens is not None else counts.codec_tokens_after,
            prefill_flops_before=_prefill_flops(ctx, item, counts.audio_tokens_before),
            prefill_flops_after=_prefill_flops(ctx, item, counts.audio_tokens_after),
            evidence_recall=recall, seconds=seconds, reused=reused,
        ))
    return records


def _answer_compressed(ctx: Context, ready: list[tuple[Job, CodecReply]]) -> None:
    """Answers a batch of decoded clips and writes their records (one by one if the batch fails)."""
    if not ready:
        return

    def answer(batch: Sequence[tuple[Job, CodecReply]]) -> list[str]:
        return ctx.scorer.answer([reply.waveform for _, reply in batch], [job.item.sample.question for job, _ in batch],
                                 **_videos(ctx, [job.item.sample for job, _ in batch]))

    records = []
    for (job, reply), text, seconds, error in isolate(ready, answer, "answering compressed clips"):
        if error is None:
            records += _compressed_records(ctx, job, reply, text, seconds)
        else:
            if records:
                _write(ctx, records)
            records = []
            _fail(ctx, job.item, [key for key, _ in job.tasks], "answer", error)
    if records:
        _write(ctx, records)


def _submit(ctx: Context, jobs: Sequence[Job]) -> None:
    """Queues the jobs for the codec sidecar (returns at once; see `CodecPipeline`)."""
    if not jobs:
        return
    pipeline = ctx.codec_pipeline()
    for job in jobs:
        request_id, ctx.next_request = ctx.next_request, ctx.next_request + 1
        ctx.jobs[request_id] = job
        pipeline.submit(CodecRequest(request_id=request_id, waveform=job.item.waveform, token_rate=job.rate,
                                     kept_frames=np.flatnonzero(job.keep), seed=job.tasks[0][0].seed))


def collect(ctx: Context, max_pending: int) -> None:
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


def run_batch(ctx: Context, items: Sequence[Sample]) -> None:
    """Loads, answers and scores a batch and queues its compressed clips. Pipelined, the codec works
    on them while the next batch is scored, and decoded clips are answered as full batches form;
    otherwise the batch's clips are all compressed and answered before this returns."""
    items = _answer_original(ctx, _load(ctx, items))
    for item in items:
        _write_originals(ctx, item)
    scored = _score(ctx, items)
    if ctx.curves is not None:
        _curves(ctx, scored)
    _submit(ctx, _plan_jobs(ctx, scored))
    collect(ctx, ctx.max_backlog if ctx.pipelined else 0)
