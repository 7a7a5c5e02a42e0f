"""The timed parts of the scoring benchmark.

- `whole`: seconds per clip of the whole scoring of a batch (both encoder passes, the answer, the AAD
  estimator, the attention reduction, fusion, keep masks) by `Scorer.score` (warm; the compile apart)
  against `torch_scores.score_clip` per clip on the same clips with the JAX answer ids, medians over
  repeats that alternate the two; each side's occlusion at its fastest chunk of
  `BenchConfig.occlusion_chunks`; the ratio split into work (`program_cost`) times rate.
- `batch`: batch scaling of the warm program and the number of traces over a sweep of buckets.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from agac_jax.audio import features as feats
from agac_jax.audio.grids import SAMPLE_RATE
from agac_jax.bench.context import (BenchContext, ModelEntry, ProgramRecord, clip_samples, make_clips, median,
                                    score_timed, timed)
from agac_jax.bench.program_cost import reference_clip_flops
from agac_jax.eval.flops import analytic_program_flops
from agac_jax.reference import torch_scores
from agac_jax.scoring.scorer import ClipScores, Scorer, ScoringConfig


def reference_inputs(hf: Any, clip: np.ndarray) -> dict[str, np.ndarray]:
    """The reference's inputs of one clip: 30 s padded features and mask, as the processor gives them."""
    n_mels = hf.config.audio_config.num_mel_bins
    features, _ = feats.log_mel(clip, n_mels, pad_to_samples=feats.MAX_SAMPLES)
    silence, _ = feats.log_mel(np.zeros_like(clip), n_mels, pad_to_samples=feats.MAX_SAMPLES)
    mask = (np.arange(feats.MAX_FRAMES) < feats.num_valid_frames(len(clip))).astype(np.int64)
    return dict(features=features, feature_mask=mask, silence_features=silence)


def reference_timed(hf: Any, clips: list[np.ndarray], scores: list[ClipScores], estimator: str,
                    config: ScoringConfig, chunk: int, mode: str = "strong") -> tuple[float, list[Any]]:
    """(wall seconds, ReferenceScores) of the PyTorch reference in `mode` (`torch_scores.MODES`) on each
    clip with the JAX answer ids, the log-mel features included as in `Scorer.score`."""

    def run() -> list[Any]:
        return [torch_scores.score_clip(hf, s.input_ids, **reference_inputs(hf, clip), estimator=estimator,
                                        window=config.window, ig_steps=config.ig_steps, alpha=config.alpha,
                                        target=config.target, local_sign=config.local_sign,
                                        local_smooth=config.local_smooth,
                                        answer_ids=s.answer_ids, chunk=chunk,
                                        clip_id=f"clip {i}", mode=mode)
                for i, (clip, s) in enumerate(zip(clips, scores))]

    return timed(run)


def relative_differences(scores: list[ClipScores], refs: list[Any]) -> dict[str, float]:
    """Largest JAX - reference differences: local in nats (`local_abs`) and relative to the clip's
    log-probability scale max(|logp(1)|, |logp(0)|) (a confident model's local scores are differences
    of log-probabilities near 0, where float32 leaves ~1e-7 nats of noise), global and FastV relative
    to their max; `local_agree`: every clip's local difference within 1e-3 of its scale or float32 noise."""
    local_abs = max(float(np.abs(s.local - r.local).max()) for s, r in zip(scores, refs))
    local = max(float(np.abs(s.local - r.local).max() / max(abs(r.logp_full), abs(r.logp_silence), 1e-9))
                for s, r in zip(scores, refs))
    glob = max(float(np.abs(s.global_ - r.global_).max() / max(np.abs(r.global_).max(), 1e-9))
               for s, r in zip(scores, refs))
    fastv = max(float(np.abs(s.fastv - r.fastv).max() / max(np.abs(r.fastv).max(), 1e-9))
                for s, r in zip(scores, refs))
    noise = max(len(s.answer_ids) for s in scores) * LOGP_NOISE_NATS
    agree = all(float(np.abs(s.local - r.local).max()) <= max(LOCAL_TOLERANCE * max(abs(r.logp_full), abs(r.logp_silence)),
                                                            noise) for s, r in zip(scores, refs))
    return dict(local=local, local_abs=local_abs, global_=glob, fastv=fastv, local_agree=agree)


LOCAL_TOLERANCE = 1e-3  # local scores agree within this share of the clip's |logp| scale (WORKSPACE.md)...
LOGP_NOISE_NATS = 1e-6  # ...or within float32 noise per answer token (a confident model's logp is ~1e-4 nats)


def check_answers(scores: list[ClipScores]) -> None:
    empty = [i for i, s in enumerate(scores) if len(s.answer_ids) == 0]
    if empty:
        raise RuntimeError(f"clips {empty}: the model's greedy answer is empty (first token EOS); the reference "
                           "cannot score an empty answer; change the random models' weights (launch/bench.py --seed)")


def bench_whole(ctx: BenchContext) -> dict[str, Any]:
    c = ctx.config
    models = {}
    for role in c.whole_models:
        entry = ctx.model(role)
        estimators = {est: whole_case(ctx, entry, est, c.whole_clips[role]) for est in c.estimators}
        models[role] = dict(entry.summary(), estimators=estimators)
    return dict(clip_seconds=clip_samples(c.clip_seconds) / SAMPLE_RATE, models=models, reference=c.references[0],
                note="jax: Scorer.score wall time (log-mel, prompts, greedy answer, program) per clip; torch: "
                     f"log-mel + torch_scores.score_clip per clip given the JAX answer ids (no generation), mode "
                     f"{c.references[0]!r}; by_reference: every mode of {list(c.references)}")


def whole_case(ctx: BenchContext, entry: ModelEntry, estimator: str, n_clips: int) -> dict[str, Any]:
    """One model and estimator: alternating JAX / torch repeats on the same batch of clips."""
    c = ctx.config
    repeats = c.repeats if entry.role == "tiny" else c.slow_repeats
    clips, questions = make_clips(n_clips, c.clip_seconds, c.seed)
    chunks = c.occlusion_chunks if estimator == "occlusion" else (c.occlusion_chunks[0],)
    tuning: dict[str, dict[int, float]] = {"jax": {}, "torch": {}}
    candidates = {}
    for chunk in chunks:
        ctx.log(f"whole: {entry.role} {estimator}: compiling (chunk {chunk})")
        candidate = ctx.scorer(entry, estimator=estimator, batch_size=n_clips, occlusion_chunk=chunk)
        first_wall, _, first = score_timed(candidate, clips, questions)
        tuning["jax"][chunk] = score_timed(candidate, clips, questions)[0]
        candidates[chunk] = (candidate, first_wall, first)
    jax_chunk = min(tuning["jax"], key=tuning["jax"].get)
    scorer, first_wall, first = candidates[jax_chunk]
    check_answers(first)
    compile_seconds = sum(s.seconds["compile"] for s in first)
    hf = entry.torch_model()
    modes = c.references
    for chunk in chunks if estimator == "occlusion" else (scorer.config.ig_steps,):  # IG: every step in one batch
        tuning["torch"][chunk] = reference_timed(hf, clips, first, estimator, scorer.config, chunk, modes[0])[0]
    torch_chunk = min(tuning["torch"], key=tuning["torch"].get)
    ctx.torch_chunks[(entry.role, estimator)] = torch_chunk
    ctx.log(f"whole: {entry.role} {estimator}: chunk {jax_chunk} (jax), {torch_chunk} (torch), the fastest of "
            f"{list(chunks)}")
    jax_walls, jax_runs, refs = [], [], []
    mode_walls: dict[str, list[float]] = {mode: [] for mode in modes}
    for r in range(repeats):
        steps = ("jax", *modes) if r % 2 == 0 else (*modes[::-1], "jax")
        for step in steps:
            if step == "jax":
                wall, run, scores = score_timed(scorer, clips, questions)
                jax_walls.append(wall)
                jax_runs.append(run)
            else:
                wall, mode_refs = reference_timed(hf, clips, first, estimator, scorer.config, torch_chunk, step)
                mode_walls[step].append(wall)
                refs = mode_refs if step == modes[0] else refs
        ctx.log(f"whole: {entry.role} {estimator}: repeat {r + 1}/{repeats}: jax {jax_walls[-1]:.2f} s, " +
                ", ".join(f"torch {mode} {mode_walls[mode][-1]:.2f} s" for mode in modes))
    torch_walls = mode_walls[modes[0]]
    frames = scorer.bucket_frames(len(clips[0]))
    ctx.programs.append(ProgramRecord(f"{entry.role} {estimator}", entry, scorer, frames, n_clips, median(jax_runs)))
    jax_s, torch_s = median(jax_walls) / n_clips, median(torch_walls) / n_clips
    prompt_slots = next(k.prompt_slots for k in scorer.executables if k.frames == frames and k.generate)
    jax_flops = analytic_program_flops(scorer, frames, prompt_slots) / n_clips
    torch_flops = float(np.mean([reference_clip_flops(scorer, s) for s in first]))
    work = dict(jax_flops_per_clip=jax_flops, torch_flops_per_clip=torch_flops, torch_over_jax=torch_flops / jax_flops,
                jax_gflops_per_s=jax_flops / jax_s / 1e9, torch_gflops_per_s=torch_flops / torch_s / 1e9)
    by_reference = {mode: dict(torch_s_per_clip=median(w) / n_clips, torch_over_jax=median(w) / n_clips / jax_s)
                    for mode, w in mode_walls.items()}
    return dict(clips=n_clips, repeats=repeats, jax_chunk=jax_chunk, torch_chunk=torch_chunk,
                reference=modes[0], by_reference=by_reference,
                chunk_tuning_s={side: {str(k): v for k, v in times.items()} for side, times in tuning.items()},
                jax_s_per_clip=jax_s,
                jax_program_s_per_clip=median(jax_runs) / n_clips, torch_s_per_clip=torch_s,
                torch_over_jax=torch_s / jax_s, compile_s=compile_seconds, first_call_s=first_wall,
                bucket_frames=frames, answer_tokens=[len(s.answer_ids) for s in first],
                torch_stage_s_per_clip={k: float(np.mean([r.seconds[k] for r in refs])) for k in refs[0].seconds},
                max_relative_difference=relative_differences(first, refs), work=work)


def bench_batch(ctx: BenchContext) -> dict[str, Any]:
    c = ctx.config
    entry = ctx.model("tiny")
    sizes: dict[str, Any] = {}
    capped = None
    last_scorer = None
    for size in c.batch_sizes:
        if sizes:
            prev = sizes[str(max(int(k) for k in sizes))]
            predicted = prev["compile_s"] + prev["s_per_clip"] * size * (c.repeats + 1)
            if predicted > c.batch_budget_seconds:
                reason = f"batch {size} predicted {predicted:.0f} s > budget {c.batch_budget_seconds:.0f} s"
                capped = dict(at=size, predicted_s=predicted, budget_s=c.batch_budget_seconds, reason=reason)
                ctx.log(f"batch: capped: {capped['reason']}")
                break
        last_scorer = ctx.scorer(entry, estimator="occlusion", batch_size=size)
        sizes[str(size)] = batch_case(ctx, last_scorer, size)
    sweep = trace_sweep(ctx, entry)
    return dict(model=entry.description, estimator="occlusion", clip_s=clip_samples(c.clip_seconds) / SAMPLE_RATE,
                sizes=sizes, capped=capped, sweep=sweep)


def batch_case(ctx: BenchContext, scorer: Scorer, size: int) -> dict[str, Any]:
    c = ctx.config
    clips, questions = make_clips(size, c.clip_seconds, c.seed)
    first_wall, _, first = score_timed(scorer, clips, questions)
    walls = [score_timed(scorer, clips, questions)[0] for _ in range(c.repeats)]
    ctx.log(f"batch: {size}: {median(walls) / size:.3f} s per clip")
    return dict(s_per_batch=median(walls), s_per_clip=median(walls) / size,
                compile_s=sum(s.seconds["compile"] for s in first), first_call_s=first_wall, traces=scorer.traces)


def trace_sweep(ctx: BenchContext, entry: ModelEntry) -> dict[str, Any]:
    """Clips of every bucket length, scored twice through one Scorer: one trace per bucket."""
    c = ctx.config
    lengths = tuple(s for s in c.bucket_seconds if s <= 10) or c.bucket_seconds[:1]
    scorer = ctx.scorer(entry, estimator="occlusion", batch_size=2)
    clips, questions = [], []
    for i, seconds in enumerate(lengths * 3):
        clip, question = make_clips(1, seconds, c.seed + i)
        clips += clip
        questions += question
    scorer.score(clips, questions)
    after_first = scorer.traces
    scorer.score(clips, questions)
    buckets = len({scorer.bucket_frames(len(x)) for x in clips})
    return dict(clip_lengths_s=[len(x) / SAMPLE_RATE for x in clips], batch_size=2, buckets=buckets,
                traces_after_first_sweep=after_first, traces_after_second_sweep=scorer.traces,
                one_trace_per_bucket=bool(after_first == scorer.traces == buckets))

