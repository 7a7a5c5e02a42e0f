"""tools/gpu_check.sh at CPU sizes (`--cpu-dry-run`): every step of the GPU check runs here under .venv
(the wheels, where .whl/ holds them, checked to install for the GPU image's Python 3.12; a test of
each kind; the MFU bench on a micro model; the codec sidecar on the offline codec) and the one JSON
comes out with every step's result and the device named."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agac_jax.bench.gpu_mfu import accelerator_of

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_cpu_dry_run_writes_one_json_of_every_step(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    env["PYTHON"] = sys.executable
    proc = subprocess.run(["bash", "tools/gpu_check.sh", "--cpu-dry-run", "--out", str(tmp_path)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1200)
    log = (tmp_path / "gpu_check.log").read_text() if (tmp_path / "gpu_check.log").exists() else ""
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:] + log[-6000:]
    record = json.loads((tmp_path / "gpu_check.json").read_text())
    assert record["mode"] == "dry" and record["ok"]
    assert set(record["steps"]) == {"setup", "environment", "imports", "tests", "sharding", "mfu", "codec"}
    assert record["device"] == "cpu"
    assert record["environment"]["versions"]["jax"]
    assert record["imports"]["failed"] == {} and record["imports"]["modules"] > 50
    for suite in ("tests", "sharding_tests"):
        assert record[suite]["passed"] >= 1 and record[suite]["failed"] == [], suite
    mfu = record["mfu"]["estimators"]["integrated_gradients"]
    assert mfu["achieved_flops_per_s"] > 0 and mfu["finite"] and mfu["mfu"] is None  # no peak listed for a CPU
    assert record["codec"]["rates"]["100"]["requests_per_s"] > 0


@pytest.mark.parametrize("kind, name", [("NVIDIA H100 80GB HBM3", "H100"), ("NVIDIA H200", "H200"),
                                        ("NVIDIA A100-SXM4-80GB", "A100"), ("TPU v5 lite", "TPU v5e"),
                                        ("TPU v5p", "TPU v5p"), ("cpu", None)])
def test_device_kinds_name_their_listed_peak(kind, name):
    assert accelerator_of(kind) == name
