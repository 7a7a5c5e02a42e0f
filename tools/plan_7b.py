"""The planner's figures for the released Qwen2-Audio-7B-Instruct config (bench/results/plan_7b.json).

    .venv/bin/python tools/plan_7b.py [--only=NAME,...] [--timeout_s=1800]

Each run is one `launch.plan` request (30 s bucket, batch 1, bf16) compiled in its own child process
(`agac_jax.scoring.plan.run`); its record is written into the JSON file as soon as it is back, under its name,
beside the runs already there, so a run that is stopped loses only the request in flight. Run it on an
otherwise idle machine: compile seconds are this machine's.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agac_jax.scoring import plan  # noqa: E402

CONFIG = str(ROOT / "configs" / "qwen2_audio_7b_instruct.json")
OUT = ROOT / "bench" / "results" / "plan_7b.json"


def requests() -> dict[str, plan.PlanRequest]:
    """name -> request: remat and the occlusion loops side by side, then the (1, 8) mesh, then the
    default estimator on (2, 4) and on (8, 1) with and without FSDP (a batch of one clip per data
    device)."""
    base = dict(config_json=CONFIG, param_dtype="bfloat16", bucket_seconds=30, batch_size=1, scan_layers=True)
    ig = dict(base, estimator="integrated_gradients")
    occ = dict(base, estimator="occlusion")
    return {
        "integrated_gradients_1x1_scanfalse_scoring": plan.PlanRequest(**dict(ig, scan_layers=False),
                                                                        programs=("scoring",)),
        "integrated_gradients_1x1_scantrue_scoring": plan.PlanRequest(**ig, programs=("scoring",)),
        "integrated_gradients_1x1_scantrue_remat_scoring": plan.PlanRequest(**ig, remat_layers=True,
                                                                             programs=("scoring",)),
        "occlusion_1x1_scantrue_segments4_scoring": plan.PlanRequest(**occ, occlusion_segments=4,
                                                                      programs=("scoring",)),
        "occlusion_1x1_scantrue_segments0_scoring": plan.PlanRequest(**occ, programs=("scoring",)),
        "integrated_gradients_1x1_scantrue_remat": plan.PlanRequest(**ig, remat_layers=True),
        "occlusion_1x1_scantrue_segments4": plan.PlanRequest(**occ, occlusion_segments=4),
        "integrated_gradients_1x8_scantrue_remat": plan.PlanRequest(**ig, mesh=(1, 8), remat_layers=True),
        "integrated_gradients_1x8_scantrue": plan.PlanRequest(**ig, mesh=(1, 8)),
        "occlusion_1x8_scantrue_segments4": plan.PlanRequest(**occ, mesh=(1, 8), occlusion_segments=4),
        "occlusion_1x8_scantrue_segments0": plan.PlanRequest(**occ, mesh=(1, 8)),
        "integrated_gradients_2x4_scantrue_remat": plan.PlanRequest(**dict(ig, batch_size=2), mesh=(2, 4),
                                                                     remat_layers=True),
        "integrated_gradients_8x1_scantrue_remat_fsdp": plan.PlanRequest(**dict(ig, batch_size=8), mesh=(8, 1),
                                                                          remat_layers=True, fsdp=True),
        "integrated_gradients_8x1_scantrue_remat": plan.PlanRequest(**dict(ig, batch_size=8), mesh=(8, 1),
                                                                     remat_layers=True),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated run names (default: all)")
    parser.add_argument("--timeout_s", type=float, default=1800.0, help="per run")
    args = parser.parse_args()
    todo = requests()
    if args.only:
        unknown = set(args.only.split(",")) - set(todo)
        if unknown:
            parser.error(f"unknown runs {sorted(unknown)}; choose from {sorted(todo)}")
        todo = {name: todo[name] for name in args.only.split(",")}
    results = json.loads(OUT.read_text()) if OUT.exists() else {"runs": {}}
    for name, request in todo.items():
        load = os.getloadavg()
        print(f"{name}: compiling ...", flush=True)
        try:
            record = plan.run(request, timeout_s=args.timeout_s)
            record["machine"] = dict(platform=platform.platform(), cpu_count=os.cpu_count(), load_average=load,
                                     load_average_end=os.getloadavg())
            record["measured"] = datetime.datetime.now().isoformat(timespec="seconds")
        except Exception as error:  # noqa: BLE001 - recorded, the next run goes on
            record = {"request": dataclasses.asdict(request), "status": f"failed: {type(error).__name__}",
                      "stderr_tail": str(error)[-2000:]}
        results["runs"][name] = record
        OUT.write_text(json.dumps(results, indent=2) + "\n")
        print(f"{name}: " + (record.get("status") or
                             f"compile {record['compile_seconds']} s, params {record['params_bytes_per_device'] / 1e9:.2f} GB, "
                             f"temps {record['temp_bytes_per_device'] / 1e9:.2f} GB "
                             f"(accel. {record['temp_bytes_per_device_accelerator'] / 1e9:.2f} GB)"), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
