"""Benchmark of the jitted scoring program (`agac_jax.scoring`) against the PyTorch reference.

Parts (`PARTS`), each a function of a `context.BenchContext` returning a JSON-ready dict:

- `whole`, `batch` (`timing`): the best case (full batches of clips filling the 5 s bucket) against
  `torch_scores.score_clip`; batch scaling and traces.
- `mix` (`mix`): the realistic case: a user's folder of mixed lengths in one `Scorer.score` call, with
  the default buckets and the coarser ones used before (compilations and compile seconds), against the reference scoring
  each clip unpadded; three mixed clips of 3.7, 7.0 and 11.3 s.
- `scaling` (`scaling`): seconds per clip against clip length, JAX and the reference, with the check
  against the bucket's full cost (plotted by `report.plot_scaling`).
- `flops` (`program_cost`): the matmul ceiling, XLA's and the analytic FLOP count of every program
  measured, the achieved rate, and the memory the executable needs.
- `memory` (`program_cost`): the long bucket's temporaries per occlusion chunk.
- `sharding` (`sharding`): the program on meshes of 8 forced host devices against 1 device, in a
  subprocess.
- `gpu`: the accelerator the run used, or `GPU_NOT_MEASURED`.

`run_benchmark` runs the asked parts in `PARTS` order with the machine's description;
`report.write_results` and `report.format_table` write the JSON and print the table.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import numpy as np

from agac_jax.bench.context import BenchConfig, BenchContext
from agac_jax.bench.mix import bench_mix
from agac_jax.bench.program_cost import bench_flops, bench_memory
from agac_jax.bench.scaling import bench_scaling
from agac_jax.bench.sharding import bench_sharding
from agac_jax.bench.timing import bench_batch, bench_whole

PARTS = ("whole", "scaling", "flops", "memory", "mix", "batch", "sharding", "gpu")  # run in this order
SCHEMA = "agac_jax.bench.scoring/2"
GPU_NOT_MEASURED = "not measured: no GPU in this session"


def bench_gpu(ctx: BenchContext) -> dict[str, Any]:
    """Part `gpu`: the accelerator every part ran on, or `GPU_NOT_MEASURED` on a host without one."""
    device = jax.devices()[0]
    if device.platform == "gpu":
        return dict(status=f"measured: every part ran on {device.device_kind}", device_kind=device.device_kind,
                    platform=device.platform)
    return dict(status=GPU_NOT_MEASURED, device_kind=device.device_kind, platform=device.platform)


CPU_FEATURES = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile")  # the ones XLA and oneDNN use


def cpu_description() -> dict[str, Any]:
    """The host CPU's model name and which of CPU_FEATURES it has (Linux /proc/cpuinfo; empty elsewhere).

    Two VMs that reported the same platform differed by 2x in matmul rate, so a figure is comparable
    only with those measured on the same CPU.
    """
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return {}
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    fields = {key.strip(): value.strip() for key, value in fields.items()}
    flags = set(fields.get("flags", "").split())
    return dict(cpu_model=fields.get("model name", ""), cpu_features=[f for f in CPU_FEATURES if f in flags])


def machine_info() -> dict[str, Any]:
    """The host, the library versions and the device the results were measured on."""
    import flax
    import jaxlib
    import torch
    import transformers

    device = jax.devices()[0]
    try:
        usable_cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        usable_cpus = os.cpu_count()
    return dict(platform=platform.platform(), processor=platform.processor() or platform.machine(),
                python=platform.python_version(), cpu_count=os.cpu_count(), usable_cpus=usable_cpus,
                load_average=list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
                jax=jax.__version__, jaxlib=jaxlib.__version__, flax=flax.__version__, torch=torch.__version__,
                transformers=transformers.__version__, numpy=np.__version__, jax_backend=jax.default_backend(),
                device_kind=device.device_kind, device_count=jax.device_count(),
                torch_threads=torch.get_num_threads(),
                torch_device="cuda" if torch.cuda.is_available() else "cpu",
                matmul_precision=str(jax.config.jax_default_matmul_precision), **cpu_description())


def source_info() -> dict[str, Any]:
    """The checkout the run measured: its commit and the files that differed from it (None outside git)."""
    import subprocess

    root = Path(__file__).resolve().parents[2]

    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return None

    status = git("status", "--porcelain", "--untracked-files=no")
    return dict(commit=git("rev-parse", "HEAD"),
                modified=None if status is None else [line[3:] for line in status.splitlines()])


PART_FUNCTIONS: dict[str, Callable[[BenchContext], dict[str, Any]]] = dict(
    whole=bench_whole, mix=bench_mix, scaling=bench_scaling, batch=bench_batch, flops=bench_flops,
    memory=bench_memory, sharding=bench_sharding, gpu=bench_gpu)


def run_benchmark(config: BenchConfig, parts: Sequence[str] = PARTS, workdir: Path | None = None,
                  log: Callable[[str], None] = print,
                  checkpoint: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Runs `parts` in `PARTS` order; returns the JSON-ready results with the machine's description.
    `checkpoint(results)` is called after each part and with a part's partial results (marked
    `partial: true`) when it reports some, so a run stopped early keeps what it measured."""
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise ValueError(f"unknown parts {unknown}; expected a subset of {PARTS}")
    start = time.perf_counter()
    results: dict[str, Any] = dict(schema=SCHEMA, created=datetime.datetime.now().isoformat(timespec="seconds"),
                                   machine=machine_info(), source=source_info(),
                                   config=dataclasses.asdict(config), parts={})
    with tempfile.TemporaryDirectory(prefix="agac_bench_") as tmp:
        ctx = BenchContext(config, Path(workdir or tmp), log)
        for part in PARTS:
            if part in parts:
                part_start = time.perf_counter()

                def partial(values: dict[str, Any], part: str = part, part_start: float = part_start) -> None:
                    results["parts"][part] = dict(values, partial=True, seconds=time.perf_counter() - part_start)
                    if checkpoint is not None:
                        checkpoint(results)

                ctx.report_partial = partial
                results["parts"][part] = dict(PART_FUNCTIONS[part](ctx), seconds=time.perf_counter() - part_start)
                if checkpoint is not None:
                    checkpoint(results)
    results["machine"]["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    results["total_seconds"] = time.perf_counter() - start
    return results

