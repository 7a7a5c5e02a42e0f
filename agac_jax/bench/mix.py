"""Part `mix` of the scoring benchmark: the inputs users bring.

A user's folder: `BenchConfig.mix_clips` clips whose lengths are drawn once from `mix_seed` in
`mix_seconds_range` (unequal counts per bucket), scored in one `Scorer.score` call on the whole list
(what `launch.score` does), with the default buckets and with the coarser ones used before (`BenchConfig.bucket_seconds`),
against the PyTorch reference scoring each clip unpadded (its natural path: `torch_scores.score_clip`
on the clip's own prompt and answer); plus three mixed clips (3.7, 7.0, 11.3 s) in one call. Warm wall times
(the first call's compile reported apart: compilations and seconds), torch / JAX, the largest score
differences and whether the kept frames are the same where the k-th and (k+1)-th frame scores differ
by more than the two sides' frame scores do.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from agac_jax.audio import features as feats
from agac_jax.audio.grids import SAMPLE_RATE
from agac_jax.bench.context import BenchContext, ModelEntry, make_clips_of, median, mix_lengths_seconds, score_timed
from agac_jax.bench.program_cost import kernel_rates, reference_clip_flops
from agac_jax.bench.timing import check_answers, reference_timed, relative_differences
from agac_jax.eval.flops import analytic_program_flops
from agac_jax.reference.selection import keep_count, reference_keep, token_scores_to_frames
from agac_jax.scoring.scorer import ClipScores, Scorer, ScoringConfig

KEEP_NOISE_FLOOR = 1e-6  # frame scores are min-max fused in [0, 1]: float32 noise is ~1e-7


def bench_mix(ctx: BenchContext) -> dict[str, Any]:
    c = ctx.config
    lengths = mix_lengths_seconds(c.mix_clips, c.mix_seconds_range, c.mix_seed)
    bucket_sets = {"default": tuple(ScoringConfig().buckets_seconds), "coarse": tuple(c.bucket_seconds)}
    models: dict[str, Any] = {}
    head = dict(clip_seconds=lengths, issue_clip_seconds=list(c.issue_clip_seconds), bucket_sets=bucket_sets,
                batch_size=c.mix_batch_size, keep=c.mix_keep, models=models)
    for role in c.mix_models:
        entry = ctx.model(role)
        estimators: dict[str, Any] = {}
        models[role] = dict(description=entry.description, shipped=entry.shipped, estimators=estimators)
        for est in c.estimators:
            estimators[est] = mix_case(ctx, entry, est, lengths, bucket_sets)
            ctx.report_partial(head)
    return dict(clip_seconds=lengths, issue_clip_seconds=list(c.issue_clip_seconds), bucket_sets=bucket_sets,
                batch_size=c.mix_batch_size, keep=c.mix_keep, models=models,
                reference=c.references[0],
                note="jax: one Scorer.score call on the whole list (log-mel, prompts, greedy answer, program), "
                     "warm; compile = the first call's compilations; torch: log-mel + torch_scores.score_clip "
                     "per clip, unpadded prompt, the JAX answer ids (no generation), in the first mode of "
                     "config.references (torch_s; every mode: torch_s_by_reference); keep: the program's fused "
                     "keep masks against reference_keep on the first mode's fused scores")


def mix_case(ctx: BenchContext, entry: ModelEntry, estimator: str, lengths: list[float],
             bucket_sets: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    """One model and estimator: the mix through each bucket set and the reference, alternating repeats;
    then three mixed clips in one call (`issue_clip_seconds`) through the default-bucket Scorer and the reference."""
    c = ctx.config
    repeats = c.repeats if entry.role == "tiny" else c.slow_repeats
    clips, questions = make_clips_of([round(s * SAMPLE_RATE) for s in lengths], c.mix_seed)
    scorers, firsts, compiles = {}, {}, {}
    for name, buckets in bucket_sets.items():
        ctx.log(f"mix: {entry.role} {estimator}: {name} buckets {list(buckets)}: compiling")
        scorer = ctx.shared_scorer(entry, estimator=estimator, batch_size=c.mix_batch_size, buckets_seconds=buckets,
                                   keep=c.mix_keep, occlusion_chunk=c.jax_occlusion_chunk)
        before = len(scorer.executables)
        wall, _, first = score_timed(scorer, clips, questions)
        check_answers(first)
        scorers[name], firsts[name] = scorer, first
        compiles[name] = dict(compilations=len(scorer.executables) - before, traces=scorer.traces,
                              compile_s=sum(s.seconds["compile"] for s in first), first_call_s=wall)
        ctx.log(f"mix: {entry.role} {estimator}: {name}: {compiles[name]['compilations']} programs, "
                f"{compiles[name]['compile_s']:.1f} s compiling")
    hf = entry.torch_model()
    chunk = torch_chunk(ctx, entry, estimator, scorers["default"])
    modes = c.references
    steps = [f"torch:{mode}" for mode in modes] + list(scorers)
    walls: dict[str, list[float]] = {step: [] for step in steps}
    runs: dict[str, list[float]] = {step: [] for step in scorers}  # the executables' share of the JAX walls
    refs: list[Any] = []
    for r in range(repeats):
        for step in steps if r % 2 == 0 else steps[::-1]:
            if step.startswith("torch:"):
                mode = step.split(":", 1)[1]
                wall, mode_refs = reference_timed(hf, clips, firsts["default"], estimator, scorers["default"].config,
                                                  chunk, mode)
                refs = mode_refs if mode == modes[0] else refs
            else:
                wall, run, _ = score_timed(scorers[step], clips, questions)
                runs[step].append(run)
            walls[step].append(wall)
        ctx.log(f"mix: {entry.role} {estimator}: repeat {r + 1}/{repeats}: " +
                ", ".join(f"{step} {walls[step][-1]:.2f} s" for step in steps))
    torch_by_mode = {mode: median(walls[f"torch:{mode}"]) for mode in modes}
    torch_s = torch_by_mode[modes[0]]
    sets = {}
    for name, scorer in scorers.items():
        jax_s = median(walls[name])
        sets[name] = dict(compiles[name], buckets=list(bucket_sets[name]), jax_s=jax_s,
                          jax_program_s=median(runs[name]), torch_over_jax=torch_s / jax_s,
                          torch_over_jax_by_reference={mode: t / jax_s for mode, t in torch_by_mode.items()},
                          work=slot_work(scorer, clips),
                          max_relative_difference=relative_differences(firsts[name], refs),
                          keep=keep_agreement(firsts[name], refs, clips, scorer.config.rates, c.mix_keep))
        sets[name]["bound"] = work_bound(scorer, clips, questions, firsts[name], torch_s, median(runs[name]))
    if estimator == "occlusion":
        longest = max(scorers["default"].bucket_frames(len(x)) for x in clips)
        sets["default"]["bound"]["kernels"] = kernel_rates(scorers["default"], longest, 5 * repeats)
    issue = issue_case(ctx, entry, estimator, scorers["default"], hf, chunk, repeats)
    return dict(clips=len(clips), repeats=repeats, torch_chunk=chunk, jax_occlusion_chunk=
                scorers["default"].config.occlusion_chunk, reference=modes[0], torch_s=torch_s,
                torch_s_by_reference=torch_by_mode,
                answer_tokens=[len(s.answer_ids) for s in firsts["default"]],
                bucket_sets=sets, issue_case=issue)


def torch_chunk(ctx: BenchContext, entry: ModelEntry, estimator: str, scorer: Scorer) -> int:
    """The reference's chunk: its fastest in the `whole` part when that ran, else 32 gates (occlusion)
    or every integrated-gradients step in one batch."""
    if estimator == "integrated_gradients":
        return scorer.config.ig_steps
    return ctx.torch_chunks.get((entry.role, estimator), 32)


def issue_case(ctx: BenchContext, entry: ModelEntry, estimator: str, scorer: Scorer, hf: Any, chunk: int,
               repeats: int) -> dict[str, Any]:
    """Three mixed clips (3.7, 7.0 and 11.3 s) in one call on the default buckets' Scorer (compiling only
    the programs the mix did not: one clip per bucket, one slot each) against the reference."""
    c = ctx.config
    clips, questions = make_clips_of([round(s * SAMPLE_RATE) for s in c.issue_clip_seconds], c.mix_seed + 1)
    before = len(scorer.executables)
    wall, _, first = score_timed(scorer, clips, questions)
    check_answers(first)
    modes = c.references
    jax_walls, refs = [], []
    mode_walls: dict[str, list[float]] = {mode: [] for mode in modes}
    for r in range(repeats):
        for step in ("jax", *modes) if r % 2 == 0 else (*modes[::-1], "jax"):
            if step == "jax":
                jax_walls.append(score_timed(scorer, clips, questions)[0])
            else:
                t, mode_refs = reference_timed(hf, clips, first, estimator, scorer.config, chunk, step)
                mode_walls[step].append(t)
                refs = mode_refs if step == modes[0] else refs
    jax_s = median(jax_walls)
    torch_by_mode = {mode: median(w) for mode, w in mode_walls.items()}
    torch_s = torch_by_mode[modes[0]]
    ctx.log(f"mix: {entry.role} {estimator}: issue clips {list(c.issue_clip_seconds)}: jax {jax_s:.2f} s, " +
            ", ".join(f"torch {mode} {t:.2f} s" for mode, t in torch_by_mode.items()))
    return dict(clip_seconds=list(c.issue_clip_seconds), jax_s=jax_s, reference=modes[0], torch_s=torch_s,
                torch_over_jax=torch_s / jax_s, torch_s_by_reference=torch_by_mode,
                torch_over_jax_by_reference={mode: t / jax_s for mode, t in torch_by_mode.items()},
                jax_s_per_clip=[s.seconds["run"] for s in first], new_compilations=len(scorer.executables) - before,
                compile_s=sum(s.seconds["compile"] for s in first), first_call_s=wall,
                buckets_frames=[scorer.bucket_frames(len(x)) for x in clips],
                max_relative_difference=relative_differences(first, refs),
                keep=keep_agreement(first, refs, clips, scorer.config.rates, c.mix_keep))


def work_bound(scorer: Scorer, clips: list[np.ndarray], questions: list[str], scores: list[ClipScores],
               torch_s: float, jax_s: float) -> dict[str, Any]:
    """What the ratio is made of: the FLOPs each side runs on these clips (the program's at its padded
    shapes, the chunks it skips left out: `analytic_program_flops`; the reference's unpadded:
    `reference_clip_flops`) and the rates that gives each side's time (`jax_s`: the executables'),
    so that torch_s / jax_s = work_ratio x rate_ratio."""
    jax_flops = 0.0
    for frames, idx in scorer.batches(clips):
        batch, _ = scorer.make_batch(frames, [clips[i] for i in idx], [questions[i] for i in idx],
                                     [list(scores[i].answer_ids) for i in idx])
        prompt = int(batch["prompt_ids"].shape[-1])
        jax_flops += sum(analytic_program_flops(scorer, frames, prompt, valid_tokens=scores[i].num_tokens)
                         for i in idx)
    torch_flops = float(sum(reference_clip_flops(scorer, s) for s in scores))
    jax_rate, torch_rate = jax_flops / jax_s / 1e9, torch_flops / torch_s / 1e9
    return dict(jax_flops=jax_flops, torch_flops=torch_flops, work_ratio=torch_flops / jax_flops,
                jax_gflops=jax_rate, torch_gflops=torch_rate, rate_ratio=jax_rate / torch_rate)


def slot_work(scorer: Scorer, clips: list[np.ndarray]) -> dict[str, Any]:
    """Audio token slots the Scorer's batches carry (bucket slots x batch slots) against the clips'
    valid tokens, and the buckets and batch slots it uses."""
    by_bucket: dict[int, int] = {}
    for clip in clips:
        frames = scorer.bucket_frames(len(clip))
        by_bucket[frames] = by_bucket.get(frames, 0) + 1
    slots = 0
    batches = []
    bs = scorer.config.batch_size
    for frames, n in sorted(by_bucket.items()):
        for start in range(0, n, bs):
            real = min(bs, n - start)
            batch_slots = scorer.batch_slots(real)
            slots += batch_slots * (frames // 4)
            batches.append(dict(bucket_s=frames / feats.FRAMES_PER_SECOND, clips=real, slots=batch_slots))
    valid = int(sum(feats.audio_token_count(feats.num_valid_frames(len(x))) for x in clips))
    return dict(token_slots=slots, valid_tokens=valid, valid_fraction=valid / slots, batches=batches)


def keep_agreement(scores: list[ClipScores], refs: list[Any], clips: list[np.ndarray], rates: tuple[int, ...],
                   keep: float | str) -> dict[str, Any]:
    """Whether the program's kept frames equal `reference_keep` on the reference's fused scores, per clip
    and rate; decisive where the k-th and (k+1)-th reference frame scores differ by more than the
    largest JAX - reference frame-score difference of that clip (and float noise)."""
    pairs = decisive = decisive_same = same = 0
    mismatched = []
    for i, (s, ref, clip) in enumerate(zip(scores, refs, clips)):
        for rate in rates:
            frames = token_scores_to_frames(ref.fused, len(clip), rate)
            k = keep_count(frames.size, keep)
            ordered = np.sort(frames)[::-1]
            gap = float(ordered[k - 1] - ordered[k]) if k < frames.size else float("inf")
            noise = float(np.abs(np.asarray(s.frames[rate], np.float64) - frames).max())
            equal = bool(np.array_equal(s.keep[rate], reference_keep(ref.fused, len(clip), rate, keep)))
            is_decisive = gap > max(noise, KEEP_NOISE_FLOOR)
            pairs += 1
            same += equal
            decisive += is_decisive
            decisive_same += is_decisive and equal
            if not equal:
                mismatched.append(dict(clip=i, rate=rate, gap=gap, frame_score_difference=noise,
                                       decisive=is_decisive))
    return dict(pairs=pairs, same=same, decisive=decisive, decisive_same=decisive_same,
                all_decisive_same=decisive == decisive_same, mismatched=mismatched)
