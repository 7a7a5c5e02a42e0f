"""The planner (agac_jax/scoring/plan.py, launch/plan.py) on a tiny config: its figures and its CLI."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from agac_jax.scoring import plan
from agac_jax.eval.flops import analytic_program_flops

ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "model_type": "qwen2_audio", "audio_token_index": 95,
    "audio_config": {"num_mel_bins": 16, "encoder_layers": 1, "encoder_attention_heads": 2, "encoder_ffn_dim": 32,
                     "d_model": 16, "max_source_positions": 100},
    "text_config": {"model_type": "qwen2", "vocab_size": 96, "hidden_size": 32, "intermediate_size": 64,
                    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                    "tie_word_embeddings": False},
}


@pytest.fixture(scope="module")
def config_json(tmp_path_factory):
    path = tmp_path_factory.mktemp("plan") / "config.json"
    path.write_text(json.dumps(TINY))
    return str(path)


def test_plan_reports_sharded_params_temps_flops_and_time(config_json):
    request = plan.PlanRequest(config_json=config_json, mesh=(2, 2), param_dtype="bfloat16", bucket_seconds=2,
                               estimator="integrated_gradients", ig_steps=2, batch_size=2, max_text_tokens=8,
                               max_new_tokens=3, scan_layers=True, remat_layers=True, accelerator="TPU v5e",
                               fraction=0.5)
    record = plan.plan(request)
    assert record["request"]["remat_layers"] is True
    assert set(record["programs"]) == {"scoring", "generation"}
    # parameters: bf16, every matrix halved over 'model' (vocab 96, mlp 64, heads 4, kv heads 2 divide
    # by 2); norms and biases whole
    full = record["model"]["params"] * 2
    assert record["params_bytes_per_device"] < full
    assert record["params_bytes_per_device"] > full / 2
    for p in record["programs"].values():
        assert p["temp_bytes_per_device"] > 0 and p["compile_seconds"] > 0
    assert record["temp_bytes_per_device"] == max(p["temp_bytes_per_device"] for p in record["programs"].values())
    assert record["temp_bytes_per_device_accelerator"] == max(
        0, record["temp_bytes_per_device"] - 2 * record["params_bytes_per_device"])
    assert record["model"]["frames"] == 200 and record["model"]["audio_tokens"] == 50
    peak = plan.ACCELERATORS["TPU v5e"][0]
    np.testing.assert_allclose(record["seconds_per_clip"], record["flops_per_clip"] / (0.5 * peak * 4))
    assert record["flops_per_clip"] > record["programs"]["generation"]["xla_flops_per_device"]


def test_fsdp_plan_also_splits_the_weights_over_the_data_axis(config_json):
    base = dict(config_json=config_json, mesh=(2, 2), param_dtype="bfloat16", bucket_seconds=1, batch_size=2,
                max_text_tokens=4, max_new_tokens=2, programs=("generation",))
    plain, fsdp = (plan.plan(plan.PlanRequest(**base, fsdp=f)) for f in (False, True))
    assert fsdp["request"]["fsdp"] is True and "fsdp=True" in plan.table(fsdp)
    full = fsdp["model"]["params"] * 2
    assert fsdp["params_bytes_per_device"] < 0.6 * plain["params_bytes_per_device"]
    assert full / 4 <= fsdp["params_bytes_per_device"] < 0.3 * full


def test_plan_flops_count_every_loop_iteration(config_json):
    """The analytic count grows with the IG steps (the loop XLA's cost analysis counts once)."""
    from types import SimpleNamespace

    from agac_jax.models.config import Qwen2AudioConfig
    from agac_jax.scoring.scorer import ScoringConfig

    config = Qwen2AudioConfig.from_json_file(config_json)
    flops = [analytic_program_flops(SimpleNamespace(config=ScoringConfig(estimator="integrated_gradients", ig_steps=n,
                                                                         batch_size=1),
                                                    model_config=config, audio_offset=20), 200) for n in (2, 4)]
    assert flops[1] > flops[0]


def test_launch_plan_prints_a_table_and_one_json_line(config_json):
    proc = subprocess.run([sys.executable, "-m", "launch.plan", f"--config_json={config_json}", "--mesh=1,2",
                           "--devices=3", "--param_dtype=float32", "--bucket_seconds=1", "--programs=generation",
                           "--max_text_tokens=4", "--max_new_tokens=2", "--remat_layers", "--occlusion_segments=2",
                           "--fsdp"], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    record = json.loads(lines[-1])
    for key in ("params_bytes_per_device", "temp_bytes_per_device", "flops_per_clip", "compile_seconds",
                "seconds_per_clip"):
        assert key in record
    assert record["weight_upcast_bytes_per_device"] == 0  # float32 weights: nothing to subtract
    assert record["request"]["remat_layers"] is True and record["request"]["occlusion_segments"] == 2
    assert record["request"]["fsdp"] is True
    assert "remat_layers=True, occlusion_segments=2, fsdp=True" in proc.stdout
    assert "plan:" in proc.stdout and "generation" in proc.stdout


def test_bad_mesh_is_refused_naming_the_format(config_json):
    proc = subprocess.run([sys.executable, "-m", "launch.plan", f"--config_json={config_json}", "--mesh=2"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "DATA,MODEL" in proc.stderr


def test_a_pandagpt_config_is_planned_through_its_adapter():
    """The planner takes any family's config json: PandaGPT's compiles both programs on its inputs (one
    AV token, 612 fbank gate slots) and has no FLOP model, which the table says."""
    request = plan.PlanRequest(config_json=str(Path(__file__).parents[1] / "configs" / "tiny_pandagpt.json"),
                               param_dtype="float32", bucket_seconds=4, estimator="integrated_gradients",
                               ig_steps=2, max_new_tokens=2, max_text_tokens=16)
    record = plan.plan(request)
    assert set(record["programs"]) == {"scoring", "generation"}
    assert record["model"]["audio_tokens"] == 1 and record["params_bytes_per_device"] > 0
    assert "no FLOP model for this family" in plan.table(record)
    with pytest.raises(ValueError, match="float32 and unrolled"):
        plan.plan(dataclasses.replace(request, param_dtype="bfloat16"))
