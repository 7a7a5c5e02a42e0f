"""Part `sharding` of the scoring benchmark: the program on ('data', 'model') meshes of forced host
devices against 1 device, in a subprocess (XLA_FLAGS must be set before jax is imported):
`bench_sharding` writes a request JSON, runs `worker_main` in a fresh interpreter, reads its result.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import jax
import numpy as np

from agac_jax.audio.grids import SAMPLE_RATE
from agac_jax.bench.context import REPO_ROOT, BenchContext, ModelEntry, make_clips, median, score_timed
from agac_jax.bench.report import json_default
from agac_jax.scoring.scorer import POSTER_LOCAL_SCORE, ScoringConfig

WORKER_COMMAND = "import sys; from agac_jax.bench.sharding import worker_main; worker_main(sys.argv[1:])"


def bench_sharding(ctx: BenchContext) -> dict[str, Any]:
    c = ctx.config
    entry = ctx.model("tiny")
    request = dict(directory=str(entry.directory), meshes=[list(m) for m in c.sharding_meshes],
                   batch_size=c.sharding_devices,
                   clip_seconds=c.clip_seconds, repeats=c.repeats, seed=c.seed, max_new_tokens=c.max_new_tokens)
    request_path = ctx.workdir / "sharding_request.json"
    result_path = ctx.workdir / "sharding_result.json"
    request_path.write_text(json.dumps(request))
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join([str(REPO_ROOT)] + [
        p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
    env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={c.sharding_devices}"])
    ctx.log(f"sharding: subprocess with {c.sharding_devices} forced host devices")
    command = [sys.executable, "-c", WORKER_COMMAND, str(request_path), str(result_path)]
    proc = subprocess.run(command, env=env, cwd=REPO_ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"sharding worker failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    result = json.loads(result_path.read_text())
    return dict(model=entry.description, **result)


def sharding_worker(request: dict[str, Any]) -> dict[str, Any]:
    """In a process with forced host devices: the same batch on a 1-device mesh and on each mesh."""
    devices = jax.devices()
    entry = ModelEntry("tiny", Path(request["directory"]), "", False)
    clips, questions = make_clips(request["batch_size"], request["clip_seconds"], request["seed"])
    meshes = [(1, 1)] + [tuple(m) for m in request["meshes"]]
    scorers = {}
    for mesh in meshes:
        config = ScoringConfig(batch_size=request["batch_size"], mesh_shape=mesh,
                               max_new_tokens=request["max_new_tokens"], **POSTER_LOCAL_SCORE)
        scorers[mesh] = entry.scorer(config)
    first = {mesh: score_timed(s, clips, questions) for mesh, s in scorers.items()}
    walls: dict[tuple[int, int], list[float]] = {mesh: [] for mesh in meshes}
    for r in range(request["repeats"]):
        order = meshes if r % 2 == 0 else meshes[::-1]
        for mesh in order:
            walls[mesh].append(score_timed(scorers[mesh], clips, questions)[0])
    n = len(clips)
    base = median(walls[(1, 1)]) / n
    results = {}
    for mesh in meshes:
        scores = first[mesh][2]
        diffs = {name: max(float(np.abs(getattr(a, name) - getattr(b, name)).max())
                           for a, b in zip(scores, first[(1, 1)][2])) for name in ("local", "global_", "fused")}
        s_per_clip = median(walls[mesh]) / n
        results["x".join(map(str, mesh))] = dict(
            devices=mesh[0] * mesh[1], s_per_clip=s_per_clip, over_one_device=s_per_clip / base,
            compile_s=sum(s.seconds["compile"] for s in scores), max_abs_difference=diffs,
            same_answers=all(np.array_equal(a.answer_ids, b.answer_ids) for a, b in zip(scores, first[(1, 1)][2])),
            same_keep=all(np.array_equal(a.keep[r], b.keep[r]) for a, b in zip(scores, first[(1, 1)][2])
                          for r in a.keep))
    return dict(forced_devices=len(devices), device_kind=devices[0].device_kind, batch_size=n,
                clip_s=len(clips[0]) / SAMPLE_RATE, repeats=request["repeats"], meshes=results)


def worker_main(argv: list[str]) -> None:
    """The sharding subprocess: reads the request JSON at argv[0], writes the result JSON to argv[1]."""
    request_path, result_path = argv
    result = sharding_worker(json.loads(Path(request_path).read_text()))
    Path(result_path).write_text(json.dumps(result, indent=2, default=json_default))
