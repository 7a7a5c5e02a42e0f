"""The planner: what a scoring run needs per device, before renting one (`python -m launch.plan`).

For a model `config.json` (no weights), a mesh (data, model), a parameter dtype, one clip-length bucket,
an estimator and a batch size, it compiles with abstract parameters (`jax.eval_shape`, then
`jax.ShapeDtypeStruct`s carrying their `NamedSharding`s) the two programs a sweep runs:

- `scoring`: `scoring.program.score_batch` with the answers given (the sweep generates each answer
  once and scores those ids), jitted by `scorer.jit_scoring` exactly as `Scorer` does;
- `generation`: the greedy generator as `Scorer.answers` runs it (`scorer.jit_generation`);

on forced host CPU devices (`XLA_FLAGS=--xla_force_host_platform_device_count=N`, set before JAX starts:
`run` re-executes itself in a subprocess), and reports per device: the parameters' bytes (from their
shardings), XLA's temporaries of each program (`memory_analysis().temp_size_in_bytes`; XLA:CPU's buffer
assignment, an estimate of a GPU's or TPU's, which fuse and schedule differently), the analytic FLOPs
of one clip (`bench.program_cost.analytic_program_flops`: generation, both encoder passes, every
decoder pass of the estimator with its loops counted) and the seconds per clip at a stated fraction of
a named accelerator's bf16 peak (`ACCELERATORS`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any, Sequence

# name -> (dense bf16 peak FLOP/s per chip, memory bytes per chip, source). Dense: without 2:4 sparsity.
ACCELERATORS: dict[str, tuple[float, float, str]] = {
    "H100": (989e12, 80e9, "NVIDIA H100 Tensor Core GPU datasheet (SXM5): BF16 1,979 TFLOPS with sparsity, "
             "989 dense; 80 GB HBM3 (nvidia.com/en-us/data-center/h100)"),
    "H200": (989e12, 141e9, "NVIDIA H200 Tensor Core GPU datasheet (SXM): BF16 1,979 TFLOPS with sparsity, "
             "989 dense; 141 GB HBM3e (nvidia.com/en-us/data-center/h200)"),
    "A100": (312e12, 80e9, "NVIDIA A100 Tensor Core GPU datasheet: BF16 312 TFLOPS dense (624 sparse); "
             "40 or 80 GB HBM2e (nvidia.com/en-us/data-center/a100)"),
    "TPU v4": (275e12, 32 * 2**30, "Google Cloud TPU v4 documentation: 275 bf16 TFLOPS and 32 GiB HBM2 per chip "
               "(cloud.google.com/tpu/docs/v4)"),
    "TPU v5e": (197e12, 16 * 2**30, "Google Cloud TPU v5e documentation: 197 bf16 TFLOPS and 16 GiB HBM2 per chip "
                "(cloud.google.com/tpu/docs/v5e)"),
    "TPU v5p": (459e12, 95 * 2**30, "Google Cloud TPU v5p documentation: 459 bf16 TFLOPS and 95 GiB HBM2e per "
                "chip (cloud.google.com/tpu/docs/v5p)"),
}
DEFAULT_FRACTION = 0.4  # of the peak: a good dense-transformer MFU; the estimate scales as 1 / fraction
# Where the first audio placeholder sits in the Qwen2-Audio chat template's prompt (system turn,
# "<|im_start|>user\nAudio 1: <|audio_bos|>"): shared-prefix work only; the real value comes from the
# tokenizer when scoring.
DEFAULT_AUDIO_OFFSET = 20
CHILD_ENV = "AGAC_PLAN_CHILD"


@dataclasses.dataclass(frozen=True)
class PlanRequest:
    """What to plan. Fields as the `launch.plan` flags."""

    config_json: str  # the family's config json (Qwen2-Audio's config.json, PandaGPT's pandagpt_config.json)
    kind: str = ""  # the family (`models.MODELS`); "": told by the json's keys
    mesh: tuple[int, int] = (1, 1)
    devices: int = 0  # forced host devices; 0: data x model
    param_dtype: str = "bfloat16"
    dtype: str = ""  # compute dtype; "": param_dtype
    bucket_seconds: int = 30
    estimator: str = "occlusion"
    batch_size: int = 1
    max_new_tokens: int = 8
    max_text_tokens: int = 64
    occlusion_chunk: int = 16
    ig_steps: int = 16
    scan_layers: bool = False
    remat_layers: bool = False
    occlusion_segments: int = 0
    fsdp: bool = False  # also split the weights over 'data' (`scorer.fsdp_axis_rules`)
    programs: tuple[str, ...] = ("scoring", "generation")
    accelerator: str = "H100"
    fraction: float = DEFAULT_FRACTION
    audio_offset: int = DEFAULT_AUDIO_OFFSET

    def __post_init__(self):
        if self.accelerator not in ACCELERATORS:
            raise ValueError(f"accelerator {self.accelerator!r}; choose one of {tuple(ACCELERATORS)}")
        if not 0 < self.fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {self.fraction}")
        if set(self.programs) - {"scoring", "generation"} or not self.programs:
            raise ValueError(f"programs {self.programs}: choose from scoring, generation")
        if self.devices and self.devices < self.mesh[0] * self.mesh[1]:
            raise ValueError(f"mesh {self.mesh} needs {self.mesh[0] * self.mesh[1]} devices; --devices={self.devices}")

    @property
    def n_devices(self) -> int:
        return self.devices or self.mesh[0] * self.mesh[1]


def run(request: PlanRequest, timeout_s: float | None = None) -> dict[str, Any]:
    """The plan, computed in a child process that forces `request.n_devices` host devices (XLA reads the
    flag once, when JAX starts). Returns the JSON record (see `plan`)."""
    env = dict(os.environ)
    flag = f"--xla_force_host_platform_device_count={request.n_devices}"
    # The lean scheduler: XLA:CPU's default one runs independent passes side by side and reports their
    # temporaries at once (scorer.CPU_LEAN_SCHEDULER_FLAG), far from what a GPU or TPU schedules.
    kept = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")
            and not f.startswith("--xla_cpu_enable_concurrency_optimized_scheduler")]
    env["XLA_FLAGS"] = " ".join(kept + [flag, "--xla_cpu_enable_concurrency_optimized_scheduler=false"])
    env["JAX_PLATFORMS"] = "cpu"
    env[CHILD_ENV] = "1"
    root = Path(__file__).resolve().parents[2]
    code = ("import json, sys; from agac_jax.scoring import plan; "
            "r = plan.PlanRequest(**json.loads(sys.argv[1])); print(plan.PLAN_PREFIX + json.dumps(plan.plan(r)))")
    args = json.dumps(dataclasses.asdict(request))
    proc = subprocess.run([sys.executable, "-c", code, args], env=env, cwd=root, capture_output=True, text=True,
                          timeout=timeout_s)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(PLAN_PREFIX)]
    if proc.returncode or not lines:
        raise RuntimeError(f"the planner's child process failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1][len(PLAN_PREFIX):])


PLAN_PREFIX = "PLAN_JSON "


def plan(request: PlanRequest) -> dict[str, Any]:
    """Compiles the request's programs on this process's devices with abstract parameters.

    Returns one JSON-able record: the request, `params_bytes_per_device`, `temp_bytes_per_device`
    (the larger program's, as XLA:CPU compiles it: an upper bound for GPUs and TPUs),
    `temp_bytes_per_device_accelerator` (the same less the float32 copies of bf16 weights that only
    XLA:CPU makes, clamped at 0: a lower bound), `flops_per_clip`, `compile_seconds` (all programs), `seconds_per_clip`
    (flops_per_clip / (fraction x peak) at the named accelerator, the batch's devices sharing one
    clip's work: a clip's FLOPs over data x model chips), `fits` per accelerator (params + the upper bound of
    the temps <= its memory) and per program its own figures.
    """
    import jax
    import jax.numpy as jnp
    import numpy as np

    from agac_jax import models
    from agac_jax.audio import features as feats
    from agac_jax.eval.flops import analytic_program_flops
    from agac_jax.scoring.program import ProgramSpec, score_batch
    from agac_jax.scoring.scorer import ScoringConfig, axis_rules, jit_generation, jit_scoring, make_mesh

    r = request
    kind = r.kind or models.model_kind(r.config_json)
    adapter = models.entry(kind).adapter_class().abstract(r.config_json, param_dtype=r.param_dtype, dtype=r.dtype,
                                                          scan_layers=r.scan_layers, remat_layers=r.remat_layers)
    config = adapter.config
    if len(jax.devices()) < r.mesh[0] * r.mesh[1]:
        raise RuntimeError(f"mesh {r.mesh} needs {r.mesh[0] * r.mesh[1]} devices; this process has "
                           f"{len(jax.devices())} (use plan.run, which forces them)")
    scoring = ScoringConfig(estimator=r.estimator, batch_size=r.batch_size, max_new_tokens=r.max_new_tokens,
                            max_text_tokens=r.max_text_tokens, occlusion_chunk=r.occlusion_chunk,
                            occlusion_segments=r.occlusion_segments,
                            ig_steps=r.ig_steps, buckets_seconds=(r.bucket_seconds,), mesh_shape=r.mesh,
                            fsdp=r.fsdp)
    mesh = make_mesh(r.mesh)
    shardings = adapter.param_shardings(mesh, axis_rules(scoring))
    abstract = abstract_params(adapter, shardings)
    params_bytes = sum(_shard_bytes(leaf) for leaf in jax.tree_util.tree_leaves(abstract))
    model = adapter.model
    frames = min(r.bucket_seconds * feats.FRAMES_PER_SECOND, adapter.max_samples((r.bucket_seconds,)) // feats.HOP_LENGTH)
    generation = adapter.generation_settings(r.max_new_tokens)
    b = r.batch_size
    inputs = adapter.abstract_inputs(b, frames)
    t_slots = adapter.audio_slots(frames)
    s_slots = t_slots + r.max_text_tokens
    sds = jax.ShapeDtypeStruct
    programs: dict[str, dict[str, Any]] = {}
    if "scoring" in r.programs:
        spec = ProgramSpec.from_config(scoring, max_samples=frames * feats.HOP_LENGTH, generate=False,
                                       audio_offset=r.audio_offset, generation=generation)
        batch = dict(**inputs, prompt_ids=sds((b, s_slots), jnp.int32),
                     prompt_lengths=sds((b,), jnp.int32), answer_ids=sds((b, r.max_new_tokens), jnp.int32),
                     answer_lengths=sds((b,), jnp.int32), n_samples=sds((b,), jnp.int32),
                     alpha=sds((), jnp.float32), keep_num=sds((), jnp.int32), keep_den=sds((), jnp.int32))
        fn = jit_scoring(lambda p, x: score_batch(model, spec, p, x), shardings, mesh, batch)
        programs["scoring"] = _compile(fn, abstract, batch)
    if "generation" in r.programs:
        fn = jit_generation(model, generation, shardings, mesh)
        args = (sds((b, s_slots), jnp.int32), sds((b, s_slots), jnp.int32), inputs["features"],
                inputs["mel_lengths"], sds((b,), jnp.bool_), None)
        programs["generation"] = _compile(fn, abstract, *args)
    if hasattr(config, "audio"):  # the FLOP model covers the Whisper-encoder families (`eval.flops`)
        flops = analytic_program_flops(
            types.SimpleNamespace(config=scoring, model_config=config, audio_offset=r.audio_offset), frames) / b
    else:
        flops = float("nan")
    peak, _, source = ACCELERATORS[r.accelerator]
    temp = max(p["temp_bytes_per_device"] for p in programs.values())
    # XLA:CPU has no bf16 matmul: it converts every bf16 weight to a float32 copy (hoisted out of the
    # loops, so all at once: the 7B's generation program holds 32.5 GB of temporaries, about the f32 size
    # of its weights). GPUs and TPUs multiply bf16 natively. So XLA:CPU's temporaries bound theirs from
    # above, and the same less the f32 size of the weights (clamped at 0) from below; `fits` uses the
    # upper bound.
    upcast = 0 if r.param_dtype == "float32" else 2 * params_bytes
    for p in programs.values():
        p["temp_bytes_per_device_accelerator"] = max(0, p["temp_bytes_per_device"] - upcast)
    temp_accel = max(p["temp_bytes_per_device_accelerator"] for p in programs.values())
    chips = r.mesh[0] * r.mesh[1]
    need = params_bytes + temp
    return dict(
        request=dataclasses.asdict(r),
        model=dict(params=int(sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(abstract))),
                   param_dtype=r.param_dtype, frames=frames, audio_tokens=t_slots, sequence=s_slots + r.max_new_tokens),
        params_bytes_per_device=int(params_bytes),
        temp_bytes_per_device=int(temp),
        temp_bytes_per_device_accelerator=int(temp_accel),
        weight_upcast_bytes_per_device=int(upcast),
        flops_per_clip=float(flops),
        compile_seconds=round(sum(p["compile_seconds"] for p in programs.values()), 2),
        accelerator=r.accelerator,
        accelerator_peak_flops=peak,
        accelerator_source=source,
        fraction_of_peak=r.fraction,
        seconds_per_clip=flops / (r.fraction * peak * chips),  # NaN where no FLOP model covers the family
        fits={name: bool(need <= memory) for name, (_, memory, _) in ACCELERATORS.items()},
        programs=programs,
        backend=jax.default_backend(),
        jax_version=jax.__version__,
    )


def abstract_params(adapter: Any, shardings: Any) -> Any:
    """The parameter tree as `jax.ShapeDtypeStruct`s in the config's parameter dtype with their shardings
    (no weights)."""
    import jax

    shapes = jax.eval_shape(lambda: adapter.init_params(jax.random.key(0)))
    return jax.tree_util.tree_map(lambda leaf, sh: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sh),
                                  shapes, shardings)


def _shard_bytes(leaf: Any) -> int:
    import numpy as np

    return int(np.prod(leaf.sharding.shard_shape(leaf.shape))) * np.dtype(leaf.dtype).itemsize


def _compile(fn: Any, *args: Any) -> dict[str, Any]:
    start = time.perf_counter()
    lowered = fn.lower(*args)
    lower_seconds = time.perf_counter() - start
    compiled = lowered.compile()
    seconds = time.perf_counter() - start
    memory = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return dict(
        compile_seconds=round(seconds, 2),
        lower_seconds=round(lower_seconds, 2),
        temp_bytes_per_device=int(memory.temp_size_in_bytes) if memory is not None else 0,
        argument_bytes_per_device=int(memory.argument_size_in_bytes) if memory is not None else 0,
        output_bytes_per_device=int(memory.output_size_in_bytes) if memory is not None else 0,
        xla_flops_per_device=float((cost or {}).get("flops", 0.0)),  # loop bodies counted once
    )


def table(record: dict[str, Any]) -> str:
    """A terminal table of the record."""
    r = record["request"]
    gb = lambda x: f"{x / 1e9:.2f} GB"
    lines = [f"plan: {r['config_json']} mesh (data, model) = {tuple(r['mesh'])}, {r['param_dtype']} weights, "
             f"{r['bucket_seconds']} s bucket, {r['estimator']}, batch {r['batch_size']}, "
             f"scan_layers={r['scan_layers']}, remat_layers={r['remat_layers']}, "
             f"occlusion_segments={r['occlusion_segments']}, fsdp={r.get('fsdp', False)}",
             f"  parameters: {record['model']['params'] / 1e9:.2f} B, {gb(record['params_bytes_per_device'])} per device"]
    lines.append(f"  {'program':<12}{'compile s':>10}{'temps (CPU)':>14}{'temps (low)':>16}"
                 f"{'XLA flops/device':>20}")
    for name, p in record["programs"].items():
        lines.append(f"  {name:<12}{p['compile_seconds']:>10.1f}{gb(p['temp_bytes_per_device']):>14}"
                     f"{gb(p['temp_bytes_per_device_accelerator']):>16}{p['xla_flops_per_device'] / 1e12:>17.1f} TF")
    if record["flops_per_clip"] != record["flops_per_clip"]:  # NaN: no FLOP model for this family
        lines.append("  analytic FLOPs per clip: no FLOP model for this family (agac_jax/eval/flops.py)")
    else:
        lines.append(f"  analytic FLOPs per clip: {record['flops_per_clip'] / 1e12:.1f} TFLOP; at "
                     f"{record['fraction_of_peak']:.0%} of {record['accelerator']} bf16 peak "
                     f"({record['accelerator_peak_flops'] / 1e12:.0f} TFLOP/s x {r['mesh'][0] * r['mesh'][1]} chips): "
                     f"{record['seconds_per_clip']:.2f} s per clip")
    need = record["params_bytes_per_device"] + record["temp_bytes_per_device"]
    fits = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in record["fits"].items())
    lines.append(f"  per device: params + temps (CPU, an upper bound) = {gb(need)}; fits: {fits}")
    return "\n".join(lines)


def parse_mesh(text: str) -> tuple[int, int]:
    """'DATA,MODEL' -> (data, model)."""
    try:
        data, model = (int(x) for x in text.split(","))
    except ValueError as error:
        raise ValueError(f"--mesh must be DATA,MODEL (two integers), got {text!r}") from error
    if data < 1 or model < 1:
        raise ValueError(f"--mesh sizes must be positive, got {text!r}")
    return data, model


def main_lines(request: PlanRequest, timeout_s: float | None = None) -> Sequence[str]:
    """The table's lines and the one JSON line that `launch.plan` prints."""
    record = plan(request) if os.environ.get(CHILD_ENV) == "1" else run(request, timeout_s)
    return [table(record), json.dumps(record)]
