"""The evaluation sweep: score each clip once, compress it every way the config asks, ask again, record.

This module holds the config checks, the plan, the entry points (`run_sweep`, `merge`); the stages
of a batch are in `agac_jax.eval.stages`. For each batch of samples (`runtime.batch_samples`):
1. load the clips (a clip that fails to load, or is longer than 30 s, fails all its records);
2. answer every original clip (`Scorer.answers`) and, when a frame-selecting method is asked for,
   score them with those answers (one `Scorer.score` call for the batch);
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
  A restarted run skips every recorded key but those that failed for a transient cause (a codec
  sidecar that crashed or timed out: `results.Failure.transient`), which it retries; with
  `runtime.retry_failed` it redoes every failed one. Scores that are not finite fail the clip's
  compressed records at stage `score` (`ClipScores.non_finite`).
- A workdir whose config.json no record was written with (its run stopped before the first) takes
  a new config (`store_config`); one holding records refuses another config.
- Several JAX processes: process i takes the samples whose id hashes to i modulo n
  (`distributed.shard_of`: order-independent), writes `results.{i}.jsonl` and its manifest
  `shard.{i}-of-{n}.json`; `merge` builds the outputs from every shard and refuses while one is
  missing or incomplete. A resume with another process count re-shards by key (every recorded key
  is skipped, whoever wrote it). A single process merges at the end by itself.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
from absl import logging

from agac_jax.cli import compile_cache
from agac_jax.codec import SUPPORTED_TOKEN_RATES, CodecClient
from agac_jax.data import DATASETS, load_dataset
from agac_jax.data.common import AudioQASample
from agac_jax.eval import (atomic, captions, distributed, flops, lock, paired, plots, results, stages, sweep_curves,
                           tables)
from agac_jax.eval.progress import Progress
from agac_jax.eval.results import METHODS, SELECTING_METHODS, TaskKey
from agac_jax.eval.stages import selection_seed  # noqa: F401 - part of the sweep's API (tests, tools)
from agac_jax.models import MODEL_KINDS
from agac_jax.scoring.settings import MESH_AXES, fields_of, keep_ratio_fraction


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
    curves = sweep_curves.CurveSettings.of_config(config)
    if curves is not None:
        curves.validate(config)
    validate_model_and_codec(config)
    if config.dataset.name == "synthetic" and not config.dataset.root and config.dataset.num_clips < 1:
        raise ValueError(f"config.dataset.num_clips must be >= 1 (clips of the generated synthetic split), "
                         f"got {config.dataset.num_clips}")


def validate_model_and_codec(config: Any) -> None:
    """The model's prompt format and kind, the codec backend and its options, and the scoring section: a
    bad override is refused here, before any model is loaded or any clip is scored."""
    from agac_jax.codec.backends import BACKEND_NAMES, check_options
    from agac_jax.models.qwen2_audio.prompts import PROMPT_FORMATS

    prompt_format = config.model.get("prompt_format", "chat")
    if prompt_format not in PROMPT_FORMATS:
        raise ValueError(f"config.model.prompt_format must be one of {PROMPT_FORMATS}, got {prompt_format!r}")
    kind = config.model.get("kind", "")
    if kind and kind not in MODEL_KINDS:
        raise ValueError(f"config.model.kind must be one of {MODEL_KINDS} or \"\" (told by the directory), got {kind!r}")
    if config.model.get("random_init", "") and not kind:
        raise ValueError("config.model.random_init needs config.model.kind: the family of the random model")
    if config.codec.backend not in BACKEND_NAMES:
        raise ValueError(f"config.codec.backend must be one of {BACKEND_NAMES}, got {config.codec.backend!r}")
    try:
        check_options(config.codec.backend, config_to_dict(config.codec.options))
    except ValueError as error:
        raise ValueError(f"config.codec.options: {error} (set --config.codec.options to the backend's options "
                         "when changing config.codec.backend)") from error
    try:
        scoring_config(config)
    except TypeError as error:
        raise ValueError(f"config.scoring: {error}") from error


def scoring_config(config: Any) -> Any:
    """The `ScoringConfig` of a sweep config: the fields of its scoring section and its mesh. No rates:
    the sweep and the study select every method's frames themselves (`methods.select_batch`, at each
    task's rate and rho), so the program's own fused keep masks (`ClipScores.keep`) would go unread."""
    from agac_jax.scoring.settings import ScoringConfig

    return ScoringConfig(**fields_of(config.scoring), rates=(), mesh_shape=tuple(config.mesh.shape),
                         axis_rules=tuple(tuple(rule) for rule in config.mesh.logical_axis_rules),
                         fsdp=bool(config.mesh.get("fsdp", False)))


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


def batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


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
    retryable: int = 0  # this shard's records a rerun redoes: failures with a transient cause (`Failure.transient`)


@dataclasses.dataclass(frozen=True)
class MergeOutputs:
    """The files `merge` wrote."""

    summary_csv: Path
    per_seed_csv: Path
    tables_md: Path
    plots: tuple[Path, ...]
    num_records: int
    rows: tuple[Any, ...] = ()  # the tables' rows (`tables.RowSummary`)
    caption_rows: tuple[Any, ...] = ()  # the caption tables' rows (`captions.CaptionRow`)
    captions_csv: Path | None = None  # written when there are caption records


def statistics_markdown(statistics: Sequence[Any]) -> str:
    """tables.md's statistics: the paired sections (`eval.paired`) of every data set."""
    by_dataset: dict[str, list] = {}
    for row in statistics:
        by_dataset.setdefault(row.key[0], []).append(row)
    parts = ["## Statistics", ""] + [paired.markdown(rows, name) for name, rows in by_dataset.items()]
    return "\n".join(parts)


def plan_lines(config: Any) -> list[str]:
    """What a run of `config` would do, before any model is loaded: its samples and records, and the
    smallest paired differences it can detect (`eval.paired.planning_lines`)."""
    from agac_jax.data import load_dataset

    name, loaded = load_dataset(config.dataset)
    samples = loaded.samples
    records = sum(len(plan_tasks(s.sample_id, config.methods, config.rates, config.rhos, config.seeds))
                  for s in samples)
    lines = [f"{name}: {len(samples)} samples; {len(config.methods)} methods, rates {tuple(config.rates)}, "
             f"rhos {tuple(config.rhos)}, seeds {tuple(config.seeds)}: {records} records"]
    return lines + paired.planning_lines(len(samples), len(config.seeds))


MODEL_LOCATION = ("kind", "checkpoint_dir", "random_init", "seed")  # config.model fields that say where the
#                                                                   model is; the others are its options


def model_directory(model: Any) -> str:
    """The checkpoint directory of a config's model section: `checkpoint_dir`, or a random tiny model of
    `random_init` (a config json of the family `kind`, seed `seed`) written to a temporary directory."""
    from agac_jax import models

    if model.get("random_init", ""):
        write = models.resolve(models.entry(model.kind).random_init)
        return str(write(model.random_init, int(model.get("seed", 0))))
    if not model.checkpoint_dir:
        raise ValueError("config.model.checkpoint_dir is empty: set it to a model directory (a Hugging Face "
                         "Qwen2-Audio directory as downloaded, a converted PandaGPT directory), or set "
                         "config.model.random_init with config.model.kind")
    return model.checkpoint_dir


def make_scorer(config: Any) -> Any:
    """The Scorer of the config's model: its family `model.kind` ("": told by the directory), its
    directory (`model_directory`) and the family's options (the model section's other fields)."""
    from agac_jax.scoring.scorer import Scorer

    model = config.model
    options = {name: value for name, value in config_to_dict(model).items() if name not in MODEL_LOCATION}
    return Scorer.from_directory(model_directory(model), scoring_config(config), kind=model.get("kind", ""), **options)


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
    path = results.results_path(workdir, process_index, process_count)
    with lock.RunLock(path):  # a second writer of this results file refuses here, before any work
        store_config(workdir, config_to_dict(config))
        return _run_locked(config, workdir, path, scorer, process_index, process_count)


def store_config(workdir: Path, config: dict[str, Any]) -> None:
    """Stores the config in the workdir, or checks it against the stored one
    (`results.ensure_workdir_config`). A workdir without any record (its run stopped before the first:
    a wrong checkpoint path, a missing package) takes the new config in place of the stored one.

    Raises:
      results.ConfigMismatchError: the workdir holds records of another config.
    """
    try:
        results.ensure_workdir_config(workdir, config)
    except results.ConfigMismatchError:
        if results.read_workdir(workdir) or sweep_curves.read_records(workdir):
            raise
        differences = results.config_differences(results.read_workdir_config(workdir), config)
        logging.warning("%s holds no record yet: its config.json is replaced by this run's (stored -> current: %s)",
                        workdir, "; ".join(differences) or "(unknown)")
        (workdir / results.CONFIG_NAME).unlink()
        results.ensure_workdir_config(workdir, config)


def _run_locked(config: Any, workdir: Path, path: Path, scorer: Any, process_index: int,
                process_count: int) -> SweepOutcome:
    """`run_sweep` under the lock of its results file `path`."""
    dataset_name, loaded = load_dataset(config.dataset)
    if process_index == 0:
        results.write_skipped(workdir, [(s.item, s.reason) for s in loaded.skipped])
    done = results.done_keys(workdir, retry_failed=config.runtime.retry_failed)
    curves = sweep_curves.CurveSettings.of_config(config)
    curves_done = set() if curves is None else sweep_curves.done_keys(workdir, retry_failed=config.runtime.retry_failed)
    pending = []
    planned: list[TaskKey] = []
    shard = shard_samples(loaded.samples, process_index, process_count)
    for sample in shard:
        keys = plan_tasks(sample.sample_id, config.methods, config.rates, config.rhos, config.seeds)
        planned += keys
        todo = [key for key in keys if key not in done]
        curve_methods = [] if curves is None else [
            m for m in curves.methods if curves.key(sample.sample_id, m) not in curves_done]
        if todo or curve_methods:
            pending.append(stages.Sample(sample=sample, tasks=todo, curve_methods=curve_methods))
    total = sum(len(item.tasks) for item in pending)
    logging.info("process %d/%d: %d samples in its shard, %d records to do (%d samples)", process_index,
                 process_count, len(shard), total, len(pending))
    manifest = _start_shard(workdir, process_index, process_count, len(planned), total)
    written = failed = 0
    timing: dict[str, float] = {}
    if pending:
        written, failed, timing = _run_pending(config, dataset_name, pending, path, scorer, process_index, total,
                                               sweep_curves.curves_path(workdir, process_index, process_count))
    distributed.write_manifest(workdir, dataclasses.replace(manifest, complete=True, written=written, failed=failed))
    merged = merge(workdir) if process_count == 1 else None
    left = set(planned) - results.done_keys(workdir)
    if left:
        logging.warning("%d records of this shard failed for a transient cause (a codec sidecar that crashed or "
                        "timed out); rerun the same command to retry them", len(left))
    return SweepOutcome(written=written, failed=failed, pending_before=total, results_file=path, merged=merged,
                        timing=timing, retryable=len(left))


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


def _run_pending(config: Any, dataset_name: str, pending: list[stages.Sample], path: Path, scorer: Any,
                 process_index: int, total: int, curves_file: Path) -> tuple[int, int, dict[str, float]]:
    """Runs the pending samples (their curves to `curves_file`); returns (records written, failed, timing).

    timing: `wall` seconds of the loop (the scorer already loaded), `codec_wait` seconds this thread
    was blocked on codec replies, `codec` the sidecar's own seconds summed over the replies; so
    `wall - codec_wait` is this thread's busy time (loading, scoring, selecting, answering); and
    `compile_*`, the XLA programs the loop made (`compile_cache.CompileTally.as_dict`): how many, how
    many of them the persistent cache held, and the seconds compiling, tracing and lowering.
    """
    from agac_jax.scoring.methods import SelectionBatch

    scorer = make_scorer(config) if scorer is None else scorer
    for item in pending:
        item.text_tokens = scorer.text_tokens(item.sample.question)
    curves = sweep_curves.CurveSettings.of_config(config)
    with results.ResultsWriter(path) as writer, (results.ResultsWriter(curves_file) if curves else contextlib.nullcontext()) as curve_writer, Progress(
        total, f"sweep p{process_index}", log_every_s=config.runtime.progress_log_every_s
    ) as progress:
        ctx = stages.Context(
            dataset_name=dataset_name, scorer=scorer, selection_batch=SelectionBatch,
            decoder_shape=flops.DecoderShape.from_text_config(scorer.model_config.text),
            writer=writer, progress=progress,
            codec_factory=_codec_factory(config), deterministic_codec=config.codec.deterministic,
            process_index=process_index, answer_batch=config.scoring.batch_size,
            pipelined=config.runtime.pipeline_codec, max_backlog=config.runtime.codec_max_backlog,
            curves=curves, curve_writer=curve_writer, kind_weights=tuple(config.get("kind_weights", ())),
        )
        started = time.perf_counter()
        compiles = compile_cache.tally().start()
        try:
            for batch in batches(pending, config.runtime.batch_samples):
                stages.run_batch(ctx, batch)
            stages.collect(ctx, 0)
        finally:
            if ctx.codec is not None:
                ctx.codec_wait_seconds = ctx.codec.wait_seconds
                ctx.codec.close()
        timing = {"wall": time.perf_counter() - started, "codec_wait": ctx.codec_wait_seconds,
                  "codec": ctx.codec_seconds, **{f"compile_{k}": v for k, v in compiles.as_dict().items()}}
        logging.info("the sweep made %s", compiles.summary())
        return writer.written, ctx.failed, timing


def merge(workdir: Path | str, *, allow_partial: bool = False) -> MergeOutputs:
    """Builds summary.csv, per_seed.csv, tables.md and plots/ from every results file of a workdir, and
    captions.csv and the caption tables with their paired statistics (`eval.captions`) from its caption
    records, if any.

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
    yes_no, caption_records = captions.split_records(records)
    per_seed = tables.seed_metrics(yes_no)
    rows = tables.summarize_rows(per_seed)
    summary_csv = tables.write_summary_csv(rows, workdir / "summary.csv")
    per_seed_csv = tables.write_per_seed_csv(per_seed, workdir / "per_seed.csv")
    backend = stored.get("codec", {}).get("backend")
    caption_rows = captions.caption_rows(caption_records)
    captions_csv = captions.write_captions_csv(caption_rows, workdir / "captions.csv") if caption_rows else None
    markdown = tables.render_markdown(rows, records, results.read_skipped(workdir), codec_backend=backend,
                                      caption_tables=captions.markdown(caption_rows, backend))
    statistics = paired.row_stats(yes_no)
    if statistics or not caption_rows:
        markdown = markdown.rstrip("\n") + "\n\n" + statistics_markdown(statistics)
    paired.write_csv(statistics, workdir / "paired.csv")
    curves_md, curve_files = sweep_curves.merge_outputs(workdir, SELECTING_METHODS)
    if curves_md:
        markdown = markdown.rstrip("\n") + "\n\n" + curves_md
    tables_md = atomic.write_text(workdir / "tables.md", markdown)
    intervals = {row.key: row.estimates for row in statistics}
    written_plots = (plots.write_plots(rows, workdir / "plots", intervals)
                     + [p for p in curve_files if p.suffix == ".png"])
    logging.info("merged %d records from %d files into %s", len(records), len(results.results_files(workdir)), workdir)
    return MergeOutputs(summary_csv=summary_csv, per_seed_csv=per_seed_csv, tables_md=tables_md,
                        plots=tuple(written_plots), num_records=len(records), rows=tuple(rows),
                        caption_rows=tuple(caption_rows), captions_csv=captions_csv)
