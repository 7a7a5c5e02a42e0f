"""Achieved FLOP/s and MFU of the scoring program on the accelerator at hand (`tools/gpu_check.sh`).

    python -m agac_jax.bench.gpu_mfu --out=/tmp/mfu.json [--spec=wide_random --seconds=30]

A random Qwen2-Audio at Qwen2-Audio-7B's widths with 2 decoder and 2 encoder layers
(`context.MODEL_SPECS["wide_random"]`: the 7B's per-layer work), bf16 weights and compute, layers
scanned, scores `batch_size` clips of one bucket per estimator: once to compile, then `repeats`
timed calls. Achieved FLOP/s = the program's analytic FLOPs (`program_cost.analytic_program_flops`:
generation, both encoder passes, every decoder pass at the program's padded shapes) over the median
executable seconds; MFU = that over the device's dense bf16 peak (`plan.ACCELERATORS`, matched on
the device kind; None where the device is not listed, e.g. a CPU).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

ESTIMATORS = ("integrated_gradients", "occlusion")


def accelerator_of(device_kind: str) -> str | None:
    """The `plan.ACCELERATORS` name a JAX device kind ('NVIDIA H100 80GB HBM3', 'TPU v5 lite', ...) names."""
    from agac_jax.scoring.plan import ACCELERATORS

    kind = device_kind.lower().replace(" lite", "e")
    for name in sorted(ACCELERATORS, key=len, reverse=True):
        if name.lower() in kind:
            return name
    return None


def measure_estimator(directory: Path, estimator: str, seconds: int, batch_size: int, repeats: int,
                      dtype: str, occlusion_segments: int) -> dict[str, Any]:
    """One estimator's program on `batch_size` clips of the `seconds` bucket: compile and run seconds,
    analytic and XLA FLOPs, achieved FLOP/s (analytic / median run)."""
    import jax
    import numpy as np

    from agac_jax.bench.context import make_clips, median, score_timed
    from agac_jax.eval.flops import analytic_program_flops
    from agac_jax.scoring.scorer import Scorer, ScoringConfig

    config = ScoringConfig(estimator=estimator, buckets_seconds=(seconds,), batch_size=batch_size,
                           max_new_tokens=8, max_text_tokens=32, occlusion_segments=occlusion_segments)
    scorer = Scorer.from_directory(directory, config, param_dtype=dtype, dtype=dtype, scan_layers=True)
    clips, questions = make_clips(batch_size, seconds, 0)
    first_wall, _, first = score_timed(scorer, clips, questions)
    runs = [score_timed(scorer, clips, questions)[1] for _ in range(repeats)]
    key, executable = next((k, e) for k, e in scorer.executables.items() if k.generate)
    cost = executable.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    analytic = analytic_program_flops(scorer, key.frames, key.prompt_slots)
    run = median(runs)
    return dict(estimator=estimator, batch_size=batch_size, bucket_frames=key.frames, prompt_slots=key.prompt_slots,
                first_call_s=first_wall, compile_s=sum(r.seconds["compile"] for r in first), run_s=runs,
                median_run_s=run, analytic_flops=analytic, xla_flops=float((cost or {}).get("flops", float("nan"))),
                achieved_flops_per_s=analytic / run, answers=[r.answer_text for r in first],
                finite=bool(all(np.isfinite(r.fused).all() and np.isfinite(r.logp_full) for r in first)),
                device_kind=jax.devices()[0].device_kind)


def measure(workdir: Path, spec: str = "wide_random", seconds: int = 30, estimators: Sequence[str] = ESTIMATORS,
            batch_size: int = 1, repeats: int = 3, dtype: str = "bfloat16", occlusion_segments: int = 4,
            log: Callable[[str], None] = print,
            checkpoint: Callable[[dict[str, Any]], None] = lambda record: None) -> dict[str, Any]:
    """The record `tools/gpu_check.sh` keeps: the device, the model and one entry per estimator (an
    estimator that fails is recorded with its error, the others still run), handed to `checkpoint`
    after each estimator."""
    import jax

    from agac_jax.bench.context import MODEL_SPECS, make_random_checkpoint
    from agac_jax.scoring.plan import ACCELERATORS

    device = jax.devices()[0]
    accelerator = accelerator_of(device.device_kind) if device.platform != "cpu" else None
    peak = ACCELERATORS[accelerator][0] if accelerator else None
    start = time.perf_counter()
    directory = make_random_checkpoint(Path(workdir) / spec, spec)
    log(f"gpu_mfu: random {spec} checkpoint in {time.perf_counter() - start:.1f} s")
    record: dict[str, Any] = dict(
        device=dict(platform=device.platform, device_kind=device.device_kind, count=len(jax.devices())),
        jax_version=jax.__version__, accelerator=accelerator, peak_bf16_flops_per_s=peak,
        model=dict(spec=spec, **MODEL_SPECS[spec]), seconds=seconds, dtype=dtype,
        occlusion_segments=occlusion_segments, estimators={})
    checkpoint(record)
    for estimator in estimators:
        try:
            result = measure_estimator(directory, estimator, seconds, batch_size, repeats, dtype, occlusion_segments)
            result["mfu"] = result["achieved_flops_per_s"] / peak if peak else None
            log(f"gpu_mfu: {estimator}: {result['median_run_s']:.3f} s per call, "
                f"{result['achieved_flops_per_s'] / 1e12:.1f} TFLOP/s"
                + (f", MFU {result['mfu']:.1%}" if peak else " (no listed peak for this device)"))
        except Exception as error:  # noqa: BLE001 - recorded; the next estimator still runs
            result = dict(estimator=estimator, error=f"{type(error).__name__}: {error}"[:2000])
            log(f"gpu_mfu: {estimator} failed: {result['error']}")
        record["estimators"][estimator] = result
        checkpoint(record)
    return record


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--spec", default="wide_random", help="a bench.context.MODEL_SPECS name")
    parser.add_argument("--seconds", type=int, default=30, help="bucket (clip) seconds")
    parser.add_argument("--estimators", default=",".join(ESTIMATORS))
    parser.add_argument("--batch_size", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    parser.add_argument("--occlusion_segments", type=int, default=4, help="occlusion loops (compile time)")
    parser.add_argument("--workdir", default="", help="where the random checkpoint goes (default: a temp dir)")
    args = parser.parse_args(argv)
    write = PartialWriter(Path(args.out))
    try:
        with tempfile.TemporaryDirectory(prefix="agac_gpu_mfu_") as scratch:
            record = measure(Path(args.workdir or scratch), args.spec, args.seconds, args.estimators.split(","),
                             args.batch_size, args.repeats, args.dtype, args.occlusion_segments, checkpoint=write)
    except KeyboardInterrupt:
        write.interrupted()
        return 130
    print(f"wrote {args.out}")
    return 0 if all("error" not in e for e in record["estimators"].values()) else 1


class PartialWriter:
    """Writes each record handed to it as JSON to `path` (so a run stopped part-way keeps what it
    measured); `interrupted()` marks the last one so."""

    def __init__(self, path: Path):
        self.path = path
        self.last: dict[str, Any] = {}
        path.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, record: dict[str, Any]) -> None:
        self.last = record
        self.path.write_text(json.dumps(record, indent=2, default=str) + "\n")

    def interrupted(self) -> None:
        self({**self.last, "interrupted": "stopped at its time limit (SIGINT) before the end"})

if __name__ == "__main__":
    sys.exit(main())
