"""One tiny run of the scoring benchmark: the output schema, the JSON file, the table and the scaling plot (no
timing checks)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from agac_jax.bench import report, scoring_bench
from agac_jax.bench.context import BenchConfig


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    config = BenchConfig.quick(whole_models=("tiny",), estimators=("occlusion",),
                                             whole_clips={"tiny": 1, "mid": 1}, layer_memory_check=False)
    return scoring_bench.run_benchmark(config, ("whole", "mix", "scaling", "flops", "memory", "gpu"),
                                       workdir=tmp_path_factory.mktemp("bench"), log=lambda line: None)


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_machine_and_parts(results):
    assert results["schema"] == scoring_bench.SCHEMA
    machine = results["machine"]
    for key in ("platform", "cpu_count", "jax", "torch", "device_kind", "jax_backend"):
        assert machine[key], key
    assert set(results["parts"]) == {"whole", "mix", "scaling", "flops", "memory", "gpu"}
    assert results["config"]["label"] == "quick"
    if Path("/proc/cpuinfo").exists():  # the CPU is named, with the vector extensions it has
        assert machine["cpu_model"]
        assert set(machine["cpu_features"]) <= set(scoring_bench.CPU_FEATURES)
        assert report.format_table(results).splitlines()[1].startswith(f"CPU: {machine['cpu_model']}")


def test_whole_scoring_schema(results):
    whole = results["parts"]["whole"]
    assert whole["clip_seconds"] == pytest.approx(4.98)
    model = whole["models"]["tiny"]
    assert model["shipped"] is False and model["parameters"] > 0
    case = model["estimators"]["occlusion"]
    for key in ("jax_s_per_clip", "jax_program_s_per_clip", "torch_s_per_clip", "torch_over_jax", "compile_s"):
        assert _positive(case[key]), key
    assert case["bucket_frames"] == 500
    assert case["max_relative_difference"]["local"] < 1e-3  # same clips, answers and estimator
    assert case["reference"] == "strong" and set(case["by_reference"]) == {"strong", "eager"}
    assert case["by_reference"]["strong"]["torch_s_per_clip"] == case["torch_s_per_clip"]
    work = case["work"]
    assert work["torch_over_jax"] > 1  # the reference encodes 30 s and shares no prefix
    assert work["jax_gflops_per_s"] == pytest.approx(work["jax_flops_per_clip"] / case["jax_s_per_clip"] / 1e9)


def test_mix_schema(results):
    mix = results["parts"]["mix"]
    assert len(mix["clip_seconds"]) == 4 and all(2.0 <= s <= 4.8 for s in mix["clip_seconds"])
    case = mix["models"]["tiny"]["estimators"]["occlusion"]
    assert set(case["bucket_sets"]) == {"default", "coarse"}
    for name, b in case["bucket_sets"].items():
        assert b["compilations"] >= 1 and _positive(b["compile_s"]) and _positive(b["torch_over_jax"]), name
        assert b["max_relative_difference"]["local"] < 1e-3, name  # same clips, answers and estimator
        assert b["keep"]["pairs"] == 4 * 3 and b["keep"]["all_decisive_same"], b["keep"]
        work = b["work"]
        assert work["valid_tokens"] <= work["token_slots"] == sum(
            x["slots"] * int(x["bucket_s"] * 25) for x in work["batches"])
        bound = b["bound"]  # the ratio is the work ratio times the rate ratio, by construction of the rates
        assert _positive(bound["jax_flops"]) and _positive(bound["torch_flops"])
        assert bound["work_ratio"] * bound["rate_ratio"] == pytest.approx(case["torch_s"] / b["jax_program_s"],
                                                                          rel=1e-9)
    kernels = case["bucket_sets"]["default"]["bound"]["kernels"]
    for name in ("matmuls", "attention"):
        assert _positive(kernels[name]["jax_gflops"]) and _positive(kernels[name]["torch_gflops"]), name
    assert kernels["gates"] == 64 and kernels["rows"] < kernels["keys"]
    assert case["reference"] == "strong" and set(case["torch_s_by_reference"]) == {"strong", "eager"}
    assert case["torch_s"] == case["torch_s_by_reference"]["strong"]
    issue = case["issue_case"]
    assert issue["reference"] == "strong" and _positive(issue["torch_s_by_reference"]["eager"])
    assert issue["clip_seconds"] == [3.7, 4.1, 4.5] and len(issue["jax_s_per_clip"]) == 3
    assert issue["max_relative_difference"]["local"] < 1e-3 and issue["keep"]["all_decisive_same"]


def test_scaling_schema_and_plot(results, tmp_path):
    scaling = results["parts"]["scaling"]
    occ = scaling["estimators"]["occlusion"]
    # both in the 5 s bucket, one slot; the 2 s clip's prompt is a shorter step of it
    assert set(occ["lengths"]) == {"2", "5"} and occ["new_compilations"] == 2
    assert occ["checks"]["5"]["over_predicted"] == pytest.approx(1.0)  # the full clip is its own prediction
    two = occ["checks"]["2"]
    assert two["token_fraction"] == pytest.approx(occ["lengths"]["2"]["tokens"] / occ["lengths"]["5"]["tokens"])
    assert isinstance(two["within"], bool) and _positive(occ["lengths"]["2"]["torch_s"])
    path = report.plot_scaling(results, tmp_path / "scaling.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_memory_schema(results):
    memory = results["parts"]["memory"]
    assert memory["bucket_frames"] == 500 and memory["bucket_slots"] == 125
    assert [c["chunk"] for c in memory["chunks"].values()] == [64, 125]  # 64: the scaling part's program
    temps = [c["temp_bytes"] for c in memory["chunks"].values()]
    assert all(t > 0 for t in temps) and temps[0] < temps[-1]  # half the bucket's gates need less than all


def test_flops_and_memory_schema(results):
    flops = results["parts"]["flops"]
    assert _positive(flops["ceiling"]["jax_gflops"]) and _positive(flops["ceiling"]["torch_gflops"])
    (program,) = flops["programs"]
    for key in ("xla_flops", "analytic_flops", "analytic_gflops_per_s", "device_s_per_batch"):
        assert _positive(program[key]), key
    assert program["memory"]["peak_bytes"] == sum(program["memory"][k] for k in
                                                  ("temp_bytes", "argument_bytes", "output_bytes"))
    assert program["doubled_layers"] is None  # the compile for twice the layers is left out here
    assert program["attention_maps"]["sequence"] == 125 + 32 + 2  # T slots + max_text_tokens + max_new_tokens


def test_gpu_note_json_and_table(results, tmp_path):
    gpu = results["parts"]["gpu"]
    if gpu["platform"] != "gpu":
        assert gpu["status"] == scoring_bench.GPU_NOT_MEASURED
    path = report.write_results(results, tmp_path / "out" / "bench.json")
    assert json.loads(path.read_text())["parts"].keys() == results["parts"].keys()
    table = report.format_table(results)
    for row in ("1 whole", "2 mix", "3 scaling", "5 flops", "6 memory", "8 gpu"):
        assert row in table, row
    assert table.splitlines()[-1].startswith("total")


def test_bad_parts_and_config_are_refused():
    with pytest.raises(ValueError, match="unknown parts"):
        scoring_bench.run_benchmark(BenchConfig.quick(), ("whole", "nope"))
    with pytest.raises(ValueError, match="references"):
        BenchConfig.quick(references=("sdpa",))
    with pytest.raises(ValueError, match="estimator"):
        BenchConfig(estimators=("gradients",))
    with pytest.raises(ValueError, match="local_score='poster'"):
        BenchConfig(local_score="poster")


def test_the_bench_pins_the_recorded_local_score_unless_asked_for_the_default(tmp_path):
    from agac_jax.bench.context import BENCH_LOCAL_SCORE, BenchContext, ModelEntry, SHIPPED_TINY
    from agac_jax.scoring.scorer import ScoringConfig

    entry = ModelEntry("tiny", SHIPPED_TINY, "shipped", True)
    for local_score, expected in (("bench", BENCH_LOCAL_SCORE), ("default", {
            f: getattr(ScoringConfig(), f) for f in BENCH_LOCAL_SCORE})):
        ctx = BenchContext(BenchConfig.quick(local_score=local_score), tmp_path, log=lambda line: None)
        config = ctx.scorer(entry, estimator="integrated_gradients").config
        assert {f: getattr(config, f) for f in BENCH_LOCAL_SCORE} == expected


def test_the_wide_spec_has_the_7b_widths_with_two_layers():
    """`--mid_spec=wide_random` (achieved FLOP/s on an accelerator) is the released 7B per layer."""
    from agac_jax.bench.context import MODEL_SPECS, REPO_ROOT

    released = json.loads((REPO_ROOT / "configs" / "qwen2_audio_7b_instruct.json").read_text())
    wide = MODEL_SPECS["wide_random"]
    for section in ("audio_config", "text_config"):
        for key, value in wide[section].items():
            if key in ("encoder_layers", "num_hidden_layers"):
                assert value == 2
            elif key in released[section]:
                assert released[section][key] == value, (section, key)
    assert BenchConfig(mid_spec="wide_random").mid_spec == "wide_random"
