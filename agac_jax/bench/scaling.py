"""Part `scaling` of the scoring benchmark: seconds per clip against clip length.

One clip per `Scorer.score` call (one slot) in its bucket of the coarse buckets
(`BenchConfig.bucket_seconds`: 5 to 10 s apart, so most lengths leave much of their bucket
padded and the check below is the stringent one; the Scorer is shared with the `mix` part, so only
programs it did not compile are compiled here), for every length of `BenchConfig.scaling_seconds`
("n s" clips, two mel frames short of n s) and both estimators, beside the PyTorch reference on the
same clip unpadded. The check of each length: its time per clip within `scaling_tolerance` x (its
valid tokens / the valid tokens of the clip that fills its bucket) x the time of that full clip, the
bucket's full cost (measured when a length of `scaling_seconds` fills the bucket: 5, 10, 20, 30).
`report.plot_scaling` draws the result.
"""

from __future__ import annotations

from typing import Any

from agac_jax.audio import features as feats
from agac_jax.audio.grids import SAMPLE_RATE
from agac_jax.bench.context import BenchContext, make_clips, median, score_timed
from agac_jax.bench.mix import torch_chunk
from agac_jax.bench.timing import check_answers, reference_timed, relative_differences
from agac_jax.scoring.scorer import ProgramKey


def bench_scaling(ctx: BenchContext) -> dict[str, Any]:
    c = ctx.config
    entry = ctx.model("tiny")
    buckets = tuple(c.bucket_seconds)
    estimators = {}
    for estimator in c.estimators:
        scorer = ctx.shared_scorer(entry, estimator=estimator, batch_size=c.mix_batch_size, buckets_seconds=buckets,
                                   keep=c.mix_keep, occlusion_chunk=c.jax_occlusion_chunk)
        before = len(scorer.executables)
        hf = entry.torch_model()
        chunk = torch_chunk(ctx, entry, estimator, scorer)
        lengths = {}
        for seconds in c.scaling_seconds:
            clips, questions = make_clips(1, seconds, c.seed + seconds)
            frames = scorer.bucket_frames(len(clips[0]))
            key = ProgramKey.of(frames, True, scorer.make_batch(frames, clips, questions, None)[0])
            compiled = key in scorer.executables
            wall, _, first = score_timed(scorer, clips, questions)
            first_wall = 0.0 if compiled else wall
            check_answers(first)
            repeats = c.repeats if seconds <= 10 else c.slow_repeats
            torch_repeats = c.repeats if seconds <= 10 else c.long_torch_repeats
            jax_walls, torch_walls, refs = [], [], []
            for r in range(max(repeats, torch_repeats)):
                for step in ("jax", "torch") if r % 2 == 0 else ("torch", "jax"):
                    if step == "jax" and r < repeats:
                        jax_walls.append(score_timed(scorer, clips, questions)[0])
                    elif step == "torch" and r < torch_repeats:
                        t, refs = reference_timed(hf, clips, first, estimator, scorer.config, chunk,
                                                  c.references[0])
                        torch_walls.append(t)
            ctx.temp_bytes[(frames, estimator, scorer.config.occlusion_chunk)] = scorer.program_memory[key]
            tokens = int(feats.audio_token_count(feats.num_valid_frames(len(clips[0]))))
            lengths[str(seconds)] = dict(
                clip_s=len(clips[0]) / SAMPLE_RATE, tokens=tokens, bucket_frames=frames, bucket_slots=frames // 4,
                jax_s=median(jax_walls), torch_s=median(torch_walls),
                torch_over_jax=median(torch_walls) / median(jax_walls), repeats=len(jax_walls),
                torch_repeats=len(torch_walls), first_call_s=first_wall, temp_bytes=scorer.program_memory[key],
                max_relative_difference=relative_differences(first, refs))
            ctx.log(f"scaling: {estimator} {seconds} s (bucket {frames // feats.FRAMES_PER_SECOND} s): jax "
                    f"{median(jax_walls):.3f} s, torch {median(torch_walls):.3f} s")
        estimators[estimator] = dict(lengths=lengths, torch_chunk=chunk,
                                     jax_occlusion_chunk=scorer.config.occlusion_chunk,
                                     new_compilations=len(scorer.executables) - before, checks=scaling_checks(lengths,
                                                                                                c.scaling_tolerance))
    return dict(model=entry.description, batch_size=1, buckets=list(buckets), tolerance=c.scaling_tolerance,
                estimators=estimators, reference=c.references[0],
                note="jax: Scorer.score wall time of one clip (warm, one slot); torch: log-mel + score_clip on "
                     "the unpadded clip with the JAX answer; check: jax_s <= tolerance x tokens / full_tokens "
                     "x full_s, full = the measured clip that fills the same bucket")


def scaling_checks(lengths: dict[str, dict[str, Any]], tolerance: float) -> dict[str, dict[str, Any]]:
    """Per length: the bucket's full clip (the longest measured in the same bucket, when it fills it to
    within a second), the proportional prediction and whether the time is within `tolerance` of it."""
    checks = {}
    for name, row in lengths.items():
        same = [r for r in lengths.values() if r["bucket_frames"] == row["bucket_frames"]]
        full = max(same, key=lambda r: r["tokens"])
        if full["bucket_slots"] - full["tokens"] > feats.FRAMES_PER_SECOND // 4:
            checks[name] = dict(full=None, within=None, reason="no measured clip fills this bucket")
            continue
        predicted = full["jax_s"] * row["tokens"] / full["tokens"]
        ratio = row["jax_s"] / predicted
        checks[name] = dict(full_clip_s=full["clip_s"], full_s=full["jax_s"],
                            token_fraction=row["tokens"] / full["tokens"], predicted_s=predicted,
                            over_predicted=ratio, within=bool(ratio <= tolerance))
    return checks
