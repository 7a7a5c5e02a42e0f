"""Part `flops` of the scoring benchmark: the 2048 x 2048 fp32 matmul ceiling and, for every program
a part measured, XLA's FLOP count and the analytic one (`agac_jax.eval.flops`), the achieved rate,
and the memory the executable needs; plus the analytic work of each side of the `whole` part.
Part `memory` (`bench_memory`): the long bucket's temporaries against one occlusion chunk's.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from agac_jax.audio import features as feats
from agac_jax.bench.context import BenchContext, ModelEntry, ProgramRecord, make_clips, median, score_timed, timed
from agac_jax.eval.flops import DecoderShape, analytic_program_flops, decoder_flops, encoder_flops
from agac_jax.models.qwen2_audio.adapter import Qwen2AudioAdapter
from agac_jax.models.qwen2_audio.model import init_params
from agac_jax.scoring.program import ig_steps_per_chunk
from agac_jax.scoring.scorer import ClipScores, ProgramKey, Scorer


def matmul_ceiling(size: int, repeats: int) -> dict[str, Any]:
    """Median GFLOP/s of a size x size fp32 matmul in JAX and in torch, alternating."""
    import torch

    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((size, size)).astype(np.float32) for _ in range(2))
    ja, jb = jax.device_put(a), jax.device_put(b)
    product = jax.jit(lambda x, y: x @ y)
    jax.block_until_ready(product(ja, jb))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    ta, tb = torch.from_numpy(a).to(device), torch.from_numpy(b).to(device)

    def torch_mm() -> None:
        torch.mm(ta, tb)
        if device == "cuda":
            torch.cuda.synchronize()

    torch_mm()
    jax_times, torch_times = [], []
    for _ in range(repeats):
        jax_times.append(timed(lambda: jax.block_until_ready(product(ja, jb)))[0])
        torch_times.append(timed(torch_mm)[0])
    flops = 2.0 * size ** 3
    return dict(size=size, repeats=repeats, flops=flops, jax_gflops=flops / median(jax_times) / 1e9,
                torch_gflops=flops / median(torch_times) / 1e9)


def reference_clip_flops(scorer: Scorer, clip: ClipScores) -> float:
    """FLOPs of `torch_scores.score_clip` on one clip given its answer: the encoder on audio and silence
    padded to 30 s, the attention and silence passes and the estimator's passes over the unpadded
    prompt + answer (every layer on every row), as the reference runs them."""
    c, model = scorer.config, scorer.model_config
    text = DecoderShape.from_text_config(model.text)
    a = len(clip.answer_ids)
    seq = len(clip.input_ids) + a
    full = decoder_flops(text, seq, seq, a)
    flops = 2 * encoder_flops(model.audio, feats.MAX_FRAMES, model.text.hidden_size) + 2 * full
    if c.estimator == "integrated_gradients":
        return flops + c.ig_steps * (full + decoder_flops(text, seq, seq, a, backward=True))
    return flops + clip.num_tokens * full


def kernel_rates(scorer: Scorer, frames: int, repeats: int) -> dict[str, Any]:
    """GFLOP/s of the two kernels one occlusion chunk of a `frames` bucket spends its time in, on each
    side: the decoder's matmuls (projections and MLP) and its attention (the project's
    `grouped_attention`, compiled with the Scorer's options, against torch's SDPA with grouped query
    heads), on `occlusion_chunk` gate passes of half the sequence's rows against all its keys (a
    suffix pass of the chunk's mean start), alternating, the median of `repeats`."""
    import jax.numpy as jnp
    import torch

    from agac_jax.models.decoder import grouped_attention

    c, text = scorer.config, scorer.model_config.text
    length = frames // 4 + c.max_text_tokens + c.max_new_tokens
    b, rows, d, inter = c.occlusion_chunk, length // 2, text.hidden_size, text.intermediate_size
    heads, kv, hd = text.num_attention_heads, text.num_key_value_heads, text.attention_head_dim
    rng = np.random.default_rng(0)
    normal = lambda *shape: (0.1 * rng.standard_normal(shape)).astype(np.float32)  # noqa: E731
    x, wq, wkv, wo = normal(b * rows, d), normal(d, heads * hd), normal(d, 2 * kv * hd), normal(heads * hd, d)
    w_in, w_out = normal(d, 2 * inter), normal(inter, d)
    q, k, v = normal(b, rows, heads, hd), normal(b, length, kv, hd), normal(b, length, kv, hd)
    mask = np.arange(length)[None, :] <= np.arange(length - rows, length)[:, None]  # [rows, keys] causal

    def jax_matmuls(x):
        h = x @ w_in
        return (x @ wq) @ wo + (jax.nn.silu(h[:, :inter]) * h[:, inter:]) @ w_out, x @ wkv

    def jax_attention(q, k, v, m):
        return grouped_attention(q, k, v, m, heads // kv, jnp.float32)[0]

    options = scorer.compiler_options()
    inputs = {"matmuls": (x,), "attention": (q, k, v, np.broadcast_to(mask, (b, rows, length)))}
    programs = {name: jax.jit(fn).lower(*inputs[name]).compile(compiler_options=options)
                for name, fn in (("matmuls", jax_matmuls), ("attention", jax_attention))}
    on_device = {name: jax.device_put(args) for name, args in inputs.items()}
    t = {name: torch.from_numpy(np.ascontiguousarray(a)) for name, a in
         dict(x=x, wq=wq, wkv=wkv, wo=wo, w_in=w_in, w_out=w_out, q=q.transpose(0, 2, 1, 3),
              k=k.transpose(0, 2, 1, 3), v=v.transpose(0, 2, 1, 3), mask=mask).items()}

    def torch_matmuls():
        h = t["x"] @ t["w_in"]
        return (t["x"] @ t["wq"]) @ t["wo"] + torch.nn.functional.silu(h[:, :inter]) * h[:, inter:] @ t["w_out"], \
            t["x"] @ t["wkv"]

    def torch_attention():
        return torch.nn.functional.scaled_dot_product_attention(t["q"], t["k"], t["v"], attn_mask=t["mask"],
                                                                enable_gqa=True)

    flops = {"matmuls": 2 * b * rows * d * (2 * heads * hd + 2 * kv * hd + 3 * inter),
             "attention": 4 * b * rows * length * heads * hd}
    sides = {"matmuls": (lambda: jax.block_until_ready(programs["matmuls"](*on_device["matmuls"])), torch_matmuls),
             "attention": (lambda: jax.block_until_ready(programs["attention"](*on_device["attention"])),
                           torch_attention)}
    out: dict[str, Any] = dict(gates=b, rows=rows, keys=length, hidden=d, heads=heads, kv_heads=kv, head_dim=hd)
    with torch.inference_mode():
        for name, (jax_fn, torch_fn) in sides.items():
            jax_fn(), torch_fn()
            jax_s, torch_s = [], []
            for _ in range(repeats):
                jax_s.append(timed(jax_fn)[0])
                torch_s.append(timed(torch_fn)[0])
            out[name] = dict(flops=flops[name], jax_gflops=flops[name] / median(jax_s) / 1e9,
                             torch_gflops=flops[name] / median(torch_s) / 1e9)
            out[name]["jax_over_torch_rate"] = out[name]["jax_gflops"] / out[name]["torch_gflops"]
    return out


def attention_map_bytes(scorer: Scorer, frames: int) -> dict[str, float]:
    """Bytes of fp32 attention maps of the program's sequence: all layers for the batch (L H S^2 4 B),
    and all layers for one occlusion chunk of gate vectors per clip."""
    c, text = scorer.config, scorer.model_config.text
    seq = frames // 4 + c.max_text_tokens + c.max_new_tokens
    all_layers = float(text.num_hidden_layers * text.num_attention_heads * seq ** 2 * 4 * c.batch_size)
    chunk = (min(c.occlusion_chunk, frames // 4) if c.estimator == "occlusion"
             else ig_steps_per_chunk(c.ig_steps, scorer.ig_chunk))
    return dict(sequence=seq, all_layers_batch=all_layers, all_layers_batch_times_chunk=all_layers * chunk,
                one_layer_batch_times_chunk=all_layers * chunk / text.num_hidden_layers)


def program_cost(record: ProgramRecord, ceiling_gflops: float, clip_seconds: int,
                 layer_memory_check: bool) -> dict[str, Any]:
    key, executable = next((k, e) for k, e in record.scorer.executables.items()
                           if k.frames == record.frames and k.generate)
    cost = executable.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    xla_flops = float(cost.get("flops", float("nan")))
    analytic = analytic_program_flops(record.scorer, record.frames, key.prompt_slots)
    memory = executable.memory_analysis()
    peak = memory.temp_size_in_bytes + memory.argument_size_in_bytes + memory.output_size_in_bytes
    maps = attention_map_bytes(record.scorer, record.frames)
    xla_rate = xla_flops / record.device_seconds / 1e9
    analytic_rate = analytic / record.device_seconds / 1e9
    deeper = doubled_layers_memory(record, clip_seconds) if layer_memory_check else None
    return dict(label=record.label, batch_size=record.batch_size, bucket_frames=record.frames,
                device_s_per_batch=record.device_seconds, xla_flops=xla_flops, analytic_flops=analytic,
                xla_over_analytic=xla_flops / analytic, xla_gflops_per_s=xla_rate,
                analytic_gflops_per_s=analytic_rate, fraction_of_ceiling=analytic_rate / ceiling_gflops,
                memory=dict(temp_bytes=memory.temp_size_in_bytes, argument_bytes=memory.argument_size_in_bytes,
                            output_bytes=memory.output_size_in_bytes, peak_bytes=peak),
                attention_maps=maps, doubled_layers=deeper,
                temp_growth_over_added_layer_maps=None if deeper is None else
                (deeper["temp_bytes"] - memory.temp_size_in_bytes) / max(maps["all_layers_batch_times_chunk"], 1.0))


def doubled_layers_memory(record: ProgramRecord, clip_seconds: int) -> dict[str, Any]:
    """Memory of the same program for the model with twice the decoder layers (random weights, compiled,
    not run): a program that held every layer's attention maps would grow its temporaries by the
    added layers' maps."""
    loaded = record.entry.loaded()
    text = dataclasses.replace(loaded.config.text, num_hidden_layers=2 * loaded.config.text.num_hidden_layers)
    config = dataclasses.replace(loaded.config, text=text)
    params = nn.meta.unbox(init_params(config, jax.random.key(0)))
    deeper = Scorer(Qwen2AudioAdapter(config, record.scorer.tokenizer, loaded.generation_config), params,
                    record.scorer.config)
    clips, questions = make_clips(record.batch_size, clip_seconds, 0)
    batch, _ = deeper.make_batch(record.frames, clips, questions, None)
    executable, compile_seconds = deeper.program(record.frames, True, batch)
    memory = executable.memory_analysis()
    return dict(layers=text.num_hidden_layers, temp_bytes=memory.temp_size_in_bytes,
                argument_bytes=memory.argument_size_in_bytes, compile_s=compile_seconds)


def bench_flops(ctx: BenchContext) -> dict[str, Any]:
    c = ctx.config
    ceiling = matmul_ceiling(c.matmul_size, c.matmul_repeats)
    ctx.log(f"flops: matmul ceiling jax {ceiling['jax_gflops']:.1f} GFLOP/s, torch {ceiling['torch_gflops']:.1f}")
    if not ctx.programs:
        ctx.programs.append(measure_program(ctx, ctx.model("tiny"), "occlusion"))
    programs = [program_cost(record, ceiling["jax_gflops"], c.clip_seconds, c.layer_memory_check)
                for record in ctx.programs]
    return dict(ceiling=ceiling, programs=programs,
                note="xla_flops: executable.cost_analysis() (a while loop of unknown trip count, e.g. greedy "
                     "generation, counts once); analytic_flops: matmuls and attention at the program's padded "
                     "shapes; rates use the median warm executable time of the `whole` part")


def measure_program(ctx: BenchContext, entry: ModelEntry, estimator: str) -> ProgramRecord:
    """A warm executable time on its own, for a `flops` part run without `whole`."""
    c = ctx.config
    n = c.whole_clips.get(entry.role, 2)
    clips, questions = make_clips(n, c.clip_seconds, c.seed)
    scorer = ctx.scorer(entry, estimator=estimator, batch_size=n)
    scorer.score(clips, questions)
    runs = [score_timed(scorer, clips, questions)[1] for _ in range(c.repeats)]
    return ProgramRecord(f"{entry.role} {estimator}", entry, scorer, scorer.bucket_frames(len(clips[0])), n,
                         median(runs))



def bench_memory(ctx: BenchContext) -> dict[str, Any]:
    """Part `memory`: the temporaries of the occlusion program for one clip filling the
    `memory_seconds` bucket, per occlusion chunk (`memory_chunks`, 0: every gate of the bucket in one
    chunk, its gates vmapped together: `gate_batch`), compiled and not run, against the attention
    scores of one chunk and of the whole bucket: chunks run one after another, so the temporaries
    follow the chunk, not the bucket. The `scaling` part's program, when measured, is added with
    `gate_batch` None: the Scorer's default (blocks of CPU_OCCLUSION_GATE_BATCH gates on CPU), which
    bounds the temporaries further."""
    c = ctx.config
    entry = ctx.model("tiny")
    clips, questions = make_clips(1, c.memory_seconds, c.seed)
    heads = entry.loaded().config.text.num_attention_heads
    chunks = {}
    frames = t_slots = seq = offset = 0
    for chunk in c.memory_chunks:
        frames = feats.encoder_bucket_frames(len(clips[0]), (c.memory_seconds,),
                                             entry.loaded().config.audio.max_mel_frames)
        t_slots = frames // 4
        gates = chunk or t_slots
        scorer = ctx.scorer(entry, estimator="occlusion", batch_size=1, occlusion_chunk=gates,
                            occlusion_gate_batch=gates, buckets_seconds=(c.memory_seconds,))
        seq = t_slots + c.max_text_tokens + c.max_new_tokens
        offset = max(min(scorer.audio_offset, seq - c.max_new_tokens - 1), 0)
        batch, _ = scorer.make_batch(frames, clips, questions, None)
        ctx.log(f"memory: {c.memory_seconds} s bucket, occlusion chunk {gates}: compiling")
        refused = None
        try:
            compile_s, _ = timed(lambda: scorer.program(frames, True, batch))
        except MemoryError as error:  # larger than the host: the Scorer measured it, then refused it
            compile_s, refused = float("nan"), str(error)
        temp = scorer.program_memory[ProgramKey.of(frames, True, batch)]
        scores = one_chunk_scores_bytes(gates, heads, seq, offset)
        chunks[str(gates)] = dict(chunk=gates, gate_batch=gates, temp_bytes=temp, one_chunk_scores_bytes=scores,
                                  temp_over_one_chunk_scores=temp / scores, compile_s=compile_s, refused=refused)
        ctx.log(f"memory: chunk {gates}: temporaries {temp / 2**20:.0f} MiB (one chunk's attention scores "
                f"{scores / 2**20:.0f} MiB)")
    default_chunk = c.jax_occlusion_chunk
    measured = ctx.temp_bytes.get((frames, "occlusion", default_chunk))
    if measured is not None and str(default_chunk) not in chunks:
        scores = one_chunk_scores_bytes(default_chunk, heads, seq, offset)
        chunks[str(default_chunk)] = dict(chunk=default_chunk, gate_batch=None, temp_bytes=measured,
                                          one_chunk_scores_bytes=scores,
                                          temp_over_one_chunk_scores=measured / scores, compile_s=None,
                                          refused=None, from_part="scaling")
    return dict(model=entry.description, bucket_frames=frames, bucket_slots=t_slots, sequence=seq, batch_size=1,
                heads=heads, whole_bucket_scores_bytes=one_chunk_scores_bytes(t_slots, heads, seq, offset),
                chunks=dict(sorted(chunks.items(), key=lambda kv: kv[1]["chunk"])),
                xla_flags=os.environ.get("XLA_FLAGS", ""),
                note="temp_bytes: executable.memory_analysis() on XLA:CPU (Scorer.program_memory) of one clip in "
                     "one slot; one_chunk_scores_bytes: fp32 attention scores of one layer for the chunk's gates "
                     "over the first chunk's recomputed rows (chunk x heads x (sequence - audio offset) x "
                     "sequence x 4)")


def one_chunk_scores_bytes(gates: int, heads: int, seq: int, offset: int) -> int:
    """fp32 attention scores of one decoder layer for `gates` occlusion passes recomputing positions
    from `offset` on over a sequence of `seq` keys."""
    return int(gates * heads * (seq - offset) * seq * 4)
