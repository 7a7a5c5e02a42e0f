"""How much of the codec's time the sweep's pipelining hides behind the scoring program.

The same sweep runs twice on one loaded Scorer, after a warm-up that compiles its programs:
`sequential` (`runtime.pipeline_codec = False`: each batch's compressed clips are encoded, decoded
and answered before the next batch is scored) and `pipelined` (the default: the codec sidecar
works through a batch's clips while the next batch is scored and answered). From their timings
(`SweepOutcome.timing`):

- harness stage: the sequential run's wall time minus its waits for the codec (loading, answering,
  scoring, selecting, answering again: everything on the JAX side);
- codec stage: the sidecar's own seconds summed over its replies;
- hidden share: 1 - (pipelined wait for the codec) / (sequential wait for the codec);
- pipelined wall / slowest stage: 1.0 is perfect overlap (the target is at most 1.15).

Both stages share the machine's cores when they overlap, so on a small CPU the ratio also measures
contention, not only the pipeline.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agac_jax.eval import sweep

TARGET_RATIO = 1.15


def warmup_config(config: Any) -> Any:
    """The sweep restricted to one seed and the extreme keep ratios: it compiles every program the
    full sweep uses (scoring and answering buckets) for a fraction of its work."""
    warm = config.copy_and_resolve_references()
    rhos = sorted({float(r) for r in config.rhos})
    warm.seeds = (config.seeds[0],)
    warm.rhos = tuple(dict.fromkeys((rhos[0], rhos[-1])))
    return warm


def run_mode(config: Any, scorer: Any, workdir: Path, pipelined: bool) -> dict[str, float]:
    """One fresh sweep in `workdir`; its timing plus the records written."""
    if workdir.exists():
        shutil.rmtree(workdir)
    chosen = config.copy_and_resolve_references()
    chosen.runtime.pipeline_codec = pipelined
    outcome = sweep.run_sweep(chosen, workdir, scorer=scorer)
    if outcome.failed:
        raise RuntimeError(f"{outcome.failed} records failed in {workdir}; see its tables.md")
    timing = dict(outcome.timing)
    timing["harness"] = timing["wall"] - timing["codec_wait"]
    timing["records"] = float(outcome.written)
    return timing


def measure(config: Any, workroot: str | Path, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Warm-up, sequential and pipelined runs of the sweep `config`; see the module docstring."""
    workroot = Path(workroot)
    scorer = sweep.make_scorer(config)
    log("warm-up run (compiles the scoring and answering programs)")
    run_mode(warmup_config(config), scorer, workroot / "warmup", pipelined=True)
    runs = {}
    for name, pipelined in (("sequential", False), ("pipelined", True)):
        log(f"{name} run")
        runs[name] = run_mode(config, scorer, workroot / name, pipelined)
        log(f"  {name}: " + ", ".join(f"{k} {v:.1f}" for k, v in runs[name].items()))
    sequential, pipelined = runs["sequential"], runs["pipelined"]
    slowest = max(sequential["harness"], sequential["codec"])
    summary = {
        "harness_stage_s": sequential["harness"],
        "codec_stage_s": sequential["codec"],
        "slowest_stage": "harness" if sequential["harness"] >= sequential["codec"] else "codec",
        "sequential_wall_s": sequential["wall"],
        "pipelined_wall_s": pipelined["wall"],
        "codec_hidden_share": 1.0 - pipelined["codec_wait"] / max(sequential["codec_wait"], 1e-9),
        "pipelined_over_slowest_stage": pipelined["wall"] / slowest,
        "target_ratio": TARGET_RATIO,
        "speedup": sequential["wall"] / pipelined["wall"],
    }
    return {"runs": runs, "summary": summary}


def format_summary(result: dict[str, Any]) -> str:
    s = result["summary"]
    return "\n".join([
        f"{'stage / run':30s} {'seconds':>9s}",
        f"{'harness stage (JAX side)':30s} {s['harness_stage_s']:9.1f}",
        f"{'codec stage (sidecar)':30s} {s['codec_stage_s']:9.1f}",
        f"{'sequential sweep':30s} {s['sequential_wall_s']:9.1f}",
        f"{'pipelined sweep':30s} {s['pipelined_wall_s']:9.1f}",
        f"codec time hidden: {100 * s['codec_hidden_share']:.0f}%; pipelined / slowest stage "
        f"({s['slowest_stage']}): {s['pipelined_over_slowest_stage']:.2f} (target <= {s['target_ratio']})",
    ])
