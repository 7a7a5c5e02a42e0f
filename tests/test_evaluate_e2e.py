"""The sweep end to end: a random-init tiny Qwen2-Audio (HF directory with tokenizer), the real Scorer
and the offline codec sidecar, on four short synthetic samples.

The model and the scoring settings are tests/test_multiprocess.py's (one 5 s bucket, two clips a
call), so the suite's compilation cache (tests/conftest.py) serves one file the other's programs.

The full run writes every output; a run resumed from a crash-truncated copy of its results, two
shards merged, and a changed config are checked against it.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import flax.linen as nn
import jax
import pytest

from agac_jax.models.qwen2_audio import checkpoints
from agac_jax.data.synthetic_audio import synthetic
from agac_jax.eval import results, sweep, tables
from configs import common
from agac_jax.eval.results import TaskKey
from agac_jax.models.qwen2_audio.model import init_params
from agac_jax.training import model as train_model

REPO_ROOT = Path(__file__).resolve().parents[1]
MAX_CLIP_SECONDS = 5.0
OUTPUTS = ("config.json", "results.jsonl", "skipped.json", "summary.csv", "per_seed.csv", "tables.md",
           "paired.csv")
PLOTS = ("synthetic-test_accuracy_ac_vs_rho.png", "synthetic-test_tokens_vs_ac.png",
         "synthetic-test_evidence_recall_vs_rho.png")


def load_config_file(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A random-init tiny model saved as a Hugging Face directory with its tokenizer."""
    directory = tmp_path_factory.mktemp("tiny_model")
    cfg = load_config_file("train_tiny").get_config()
    cfg.model.audio_d_model, cfg.model.audio_layers, cfg.model.audio_heads, cfg.model.audio_ffn = 32, 1, 2, 64
    cfg.model.hidden_size, cfg.model.layers, cfg.model.heads, cfg.model.kv_heads = 32, 2, 2, 1
    cfg.model.intermediate_size = 64
    tokenizer = train_model.build_processor(directory, cfg.num_mel_bins)
    config = train_model.model_config(cfg, tokenizer)
    params = nn.meta.unbox(jax.jit(lambda key: init_params(config, key))(jax.random.key(0)))
    checkpoints.save_hf_directory(directory, config, params, train_model.generation_config(config, 3))
    return directory


@pytest.fixture(scope="module")
def split_dir(tmp_path_factory) -> Path:
    """Four samples of the synthetic test split on clips of at most 5 s, written to disk: batches of
    two samples, so every call of the scorer fills its two slots."""
    short = [s for s in synthetic.generate_split("test", 40, 0) if s.num_samples <= MAX_CLIP_SECONDS * 16_000]
    assert len(short) >= 4
    directory = tmp_path_factory.mktemp("split")
    synthetic.write_split(directory, short[:4])
    return directory


@pytest.fixture(scope="module")
def config(model_dir, split_dir):
    config = common.base_config()
    config.dataset.root = str(split_dir)
    config.model.checkpoint_dir = str(model_dir)
    config.scoring.max_new_tokens = 3
    config.scoring.max_text_tokens = 32
    config.scoring.batch_size = 2
    config.scoring.occlusion_chunk = 128
    config.scoring.buckets_seconds = (5,)
    config.methods = ("original", "fused", "random")
    config.rates = (50,)
    config.rhos = (1.0, 0.5)
    config.seeds = (0, 1)
    config.runtime.batch_samples = 2
    return config


@pytest.fixture(scope="module")
def scorer(config):
    return sweep.make_scorer(config)


@pytest.fixture(scope="module")
def full_run(config, scorer, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("full")
    outcome = sweep.run_sweep(config, workdir, scorer=scorer)
    return workdir, outcome


def comparable(records: list[results.ResultRecord]) -> dict[TaskKey, dict]:
    """Records by key without what legitimately differs between runs: timings and answer sharing."""
    out = {}
    for record in records:
        data = json.loads(record.to_json())
        for name in ("seconds", "reused", "process_index"):
            data.pop(name)
        out[record.key] = data
    return out


def test_plan_covers_the_grid_once_with_rho_1_as_codec():
    keys = sweep.plan_tasks("s", ("original", "fused", "random"), (25, 50), (1.0, 0.5), (0, 1))
    assert len(keys) == len(set(keys)) == 2 * (1 + 2 * (1 + 2))
    assert TaskKey("s", "codec", 25, 1.0, 1) in keys
    assert not any(key.method in ("fused", "random") and key.rho == 1.0 for key in keys)
    assert sweep.plan_tasks("s", ("original",), (25,), (1.0,), (0,)) == [TaskKey("s", "original", None, 1.0, 0)]


def test_random_seed_depends_on_seed_and_sample_only():
    assert sweep.selection_seed(0, "a") == sweep.selection_seed(0, "a")
    assert len({sweep.selection_seed(seed, sample) for seed in (0, 1) for sample in ("a", "b")}) == 4
    assert all(0 <= sweep.selection_seed(seed, "a") < 2**31 for seed in range(20))


def test_shipped_configs_are_valid():
    for name in ("synthetic_tiny", "clothoqa_qwen2audio", "avhbench"):
        module = load_config_file(name)
        for variant in module.VARIANTS:
            sweep.validate_config(module.get_config(variant))
        with pytest.raises(ValueError, match="unknown variant"):
            module.get_config("huge")


def test_full_run_writes_every_output(full_run, config, split_dir):
    workdir, outcome = full_run
    for name in OUTPUTS:
        assert (workdir / name).is_file(), name
    for name in PLOTS:
        assert (workdir / "plots" / name).read_bytes()[:4] == b"\x89PNG"
    samples = synthetic.read_split(split_dir)
    expected = {key for s in samples for key in sweep.plan_tasks(s.sample_id, config.methods, config.rates,
                                                                 config.rhos, config.seeds)}
    records = results.read_records(workdir / "results.jsonl")
    assert {r.key for r in records} == expected and len(records) == len(expected) == outcome.written
    assert outcome.failed == 0 and all(r.ok for r in records)
    timing = outcome.timing  # the scoring, generation and selection programs the loop made
    assert timing["compile_programs"] >= 3 and 0 <= timing["compile_loaded"] <= timing["compile_programs"]
    assert timing["compile_compile_s"] > 0 and timing["compile_trace_s"] > 0 and timing["compile_lower_s"] > 0
    for r in records:
        if r.method == "original":
            assert r.answer_compressed == r.answer_original and r.kept_frames is None
        else:
            assert r.kept_frames == (r.num_frames if r.method == "codec" else -(-r.num_frames // 2))
            assert r.codec_tokens_after == 2 * r.kept_frames
            assert r.prefill_flops_after <= r.prefill_flops_before
    table = (workdir / "tables.md").read_text()
    for method, rate, rho in (("original", "—", "1.0"), ("codec", "50", "1.0"), ("fused", "50", "0.5"),
                              ("random", "50", "0.5")):
        assert f"| `{method}` | {rate} | {rho} |" in table
    assert "No failures." in table


def test_resume_after_a_crash_matches_the_uninterrupted_run(full_run, config, scorer, tmp_path, caplog):
    workdir, first = full_run
    lines = (workdir / "results.jsonl").read_text().splitlines(keepends=True)
    keep = len(lines) // 2
    shutil.copy(workdir / "config.json", tmp_path / "config.json")
    (tmp_path / "results.jsonl").write_text("".join(lines[:keep]) + lines[keep][: len(lines[keep]) // 2])
    outcome = sweep.run_sweep(config, tmp_path, scorer=scorer)
    assert "cut a truncated last line" in caplog.text
    assert outcome.pending_before == outcome.written == len(lines) - keep
    resumed = results.read_records(tmp_path / "results.jsonl")
    assert len(resumed) == len(lines)
    assert comparable(resumed) == comparable(results.read_records(workdir / "results.jsonl"))
    assert (tmp_path / "summary.csv").read_text() == (workdir / "summary.csv").read_text()
    again = sweep.run_sweep(config, tmp_path, scorer=scorer)
    assert again.pending_before == 0 and again.written == 0


def test_waiting_for_each_batch_records_what_the_pipelined_run_records(full_run, config, scorer, tmp_path):
    """The default run queues a batch's compressed clips and scores the next batch meanwhile; waiting
    for each batch instead must give the same records (order and timings aside)."""
    workdir, pipelined = full_run
    sequential = config.copy_and_resolve_references()
    sequential.runtime.pipeline_codec = False
    outcome = sweep.run_sweep(sequential, tmp_path, scorer=scorer)
    assert comparable(results.read_records(tmp_path / "results.jsonl")) == comparable(
        results.read_records(workdir / "results.jsonl"))
    for timing in (pipelined.timing, outcome.timing):
        assert timing["codec"] > 0 and 0 <= timing["codec_wait"] < timing["wall"]


def test_a_changed_config_is_refused(full_run, config):
    workdir, _ = full_run
    changed = config.copy_and_resolve_references()
    changed.rhos = (1.0, 0.7)
    with pytest.raises(results.ConfigMismatchError, match=r"rhos: \[1.0, 0.5\] -> \[1.0, 0.7\]"):
        sweep.run_sweep(changed, workdir)
    runtime_only = config.copy_and_resolve_references()
    runtime_only.runtime.progress_log_every_s = 1.0
    assert sweep.run_sweep(runtime_only, workdir).pending_before == 0


def test_two_shards_merge_to_the_single_process_tables(full_run, config, scorer, tmp_path):
    workdir, _ = full_run
    for index in (0, 1):
        outcome = sweep.run_sweep(config, tmp_path, scorer=scorer, process_index=index, process_count=2)
        assert outcome.merged is None and outcome.results_file.name == f"results.{index}.jsonl"
    shard_ids = [{r.sample_id for r in results.read_records(tmp_path / f"results.{i}.jsonl")} for i in (0, 1)]
    assert shard_ids[0] and shard_ids[1] and not shard_ids[0] & shard_ids[1]
    merged = subprocess.run([sys.executable, "-m", "launch.evaluate", "--merge", f"--workdir={tmp_path}"],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert merged.returncode == 0, merged.stderr[-2000:]
    assert (tmp_path / "summary.csv").read_text() == (workdir / "summary.csv").read_text()
    assert comparable(results.read_workdir(tmp_path)) == comparable(results.read_records(workdir / "results.jsonl"))
    for name in PLOTS:
        assert (tmp_path / "plots" / name).is_file()


def test_a_clip_that_fails_to_load_is_recorded_and_the_sweep_goes_on(config, scorer, split_dir, tmp_path):
    broken = tmp_path / "split"
    shutil.copytree(split_dir, broken)
    samples = synthetic.read_split(broken)
    (broken / "audio" / f"{samples[0].clip_id}.wav").unlink()
    broken_config = config.copy_and_resolve_references()
    broken_config.dataset.root = str(broken)
    outcome = sweep.run_sweep(broken_config, tmp_path / "work", scorer=scorer)
    records = results.read_records(outcome.results_file)
    failed = [r for r in records if not r.ok]
    lost = [s.sample_id for s in samples if s.clip_id == samples[0].clip_id]
    assert {r.sample_id for r in failed} == set(lost)
    assert all(r.failure.stage == "load" and r.failure.error_type == "FileNotFoundError" for r in failed)
    assert outcome.failed == len(failed) > 0
    assert {r.sample_id for r in records if r.ok} == {s.sample_id for s in samples} - set(lost)
    table = (tmp_path / "work" / "tables.md").read_text()
    assert f"{len(failed)} failed records" in table and "stage `load`, `FileNotFoundError`" in table


class _CountingScorer:
    """The real scorer, with a record of how the sweep calls it."""

    def __init__(self, scorer):
        self._scorer = scorer
        self.answered: dict[str, list[str]] = {}
        self.scored: list[tuple[str, str]] = []  # (question, scored answer text)

    def __getattr__(self, name):
        return getattr(self._scorer, name)

    def answers(self, clips, questions):
        out = self._scorer.answers(clips, questions)
        for question, (text, _) in zip(questions, out):
            self.answered.setdefault(question, []).append(text)
        return out

    def score(self, clips, questions, answer_ids=None):
        assert answer_ids is not None, "the sweep must score the answer it generated, not generate it again"
        out = self._scorer.score(clips, questions, answer_ids=answer_ids)
        self.scored += [(q, s.answer_text) for q, s in zip(questions, out)]
        return out


def test_each_original_answer_is_generated_once_and_scored_as_it_is(config, scorer, tmp_path):
    counting = _CountingScorer(scorer)
    outcome = sweep.run_sweep(config, tmp_path, scorer=counting)
    assert outcome.failed == 0 and counting.scored
    originals = {r.question: r.answer_original for r in results.read_workdir(tmp_path) if r.method == "original"}
    for question, text in counting.scored:
        assert text == originals[question]
        assert counting.answered[question][0] == text  # the first answer of a question is the original's


def test_curves_switched_on_for_a_finished_sweep_are_computed_alone_and_tabled(full_run, config, scorer, tmp_path):
    """`config.curves` is not fingerprinted: on a finished sweep the resume runs the curves and nothing
    else; every point is the original answer's log-odds on the clip the method's frames make."""
    import numpy as np

    from agac_jax.eval import faithfulness, sweep_curves
    from agac_jax.scoring import methods

    workdir, _ = full_run
    shutil.copytree(workdir, tmp_path, dirs_exist_ok=True)
    with_curves = config.copy_and_resolve_references()
    with_curves.curves.enabled = True
    with_curves.curves.methods = ("fused", "random")
    with_curves.curves.rhos = (0.0, 0.5, 1.0)
    before = (tmp_path / "results.jsonl").read_bytes()
    outcome = sweep.run_sweep(with_curves, tmp_path, scorer=scorer)
    assert outcome.pending_before == 0 and (tmp_path / "results.jsonl").read_bytes() == before
    records = sweep_curves.read_records(tmp_path)
    assert len(records) == 4 * 2 and all(r.failure is None and r.rate == 50 for r in records)
    for r in records:  # the shared ends: the silent clip and the clip itself
        assert r.log_odds_insertion[0] == r.log_odds_deletion[-1] and r.log_odds_insertion[-1] == r.log_odds_deletion[0]
        assert r.consistent_insertion[-1] == r.consistent_deletion[0]  # (the random model's answers parse to none)

    from agac_jax.data import load_dataset

    sample = load_dataset(config.dataset)[1].samples[0]
    (fused,) = [r for r in records if r.sample_id == sample.sample_id and r.method == "fused"]
    wave = np.asarray(sample.load_waveform(), np.float32)
    (answer,) = scorer.answers([wave], [sample.question])
    (scores,) = scorer.score([wave], [sample.question], answer_ids=[answer[1]])
    (kept,) = methods.select_batch([scores], [wave], "fused", 50, 0.5, [0])
    inserted, deleted = faithfulness.altered_clips(wave, kept, 50)
    direct = scorer.answer_targets([inserted, deleted], [sample.question] * 2, [answer[1]] * 2)["log_odds"]
    np.testing.assert_allclose([fused.log_odds_insertion[1], fused.log_odds_deletion[1]], direct, rtol=1e-6, atol=1e-6)

    table = (tmp_path / "tables.md").read_text()
    assert "## Faithfulness: deletion and insertion curves" in table and "| fused | 4 |" in table
    assert (tmp_path / "curves.csv").read_text().count("\n") == 3
    assert (tmp_path / "plots" / "synthetic-test_r50_deletion_insertion.png").is_file()
    size = (tmp_path / "curves.jsonl").stat().st_size
    sweep.run_sweep(with_curves, tmp_path, scorer=scorer)
    assert (tmp_path / "curves.jsonl").stat().st_size == size  # done curves are not redone


class _NaNScorer:
    """The real scorer, whose local scores of one question are NaN (as with non-finite weights)."""

    def __init__(self, scorer, question: str):
        self._scorer, self.question = scorer, question

    def __getattr__(self, name):
        return getattr(self._scorer, name)

    def score(self, clips, questions, answer_ids=None):
        import dataclasses

        import numpy as np

        out = self._scorer.score(clips, questions, answer_ids=answer_ids)
        return [dataclasses.replace(s, local=np.full_like(s.local, np.nan)) if q == self.question else s
                for q, s in zip(questions, out)]


def _strict_json_lines(path: Path) -> list[dict]:
    def refuse(constant):
        raise ValueError(f"{path} holds {constant}")

    return [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines()]


def test_non_finite_scores_fail_the_clip_with_a_reason(config, scorer, split_dir, tmp_path):
    small = config.copy_and_resolve_references()
    small.methods, small.rhos, small.seeds, small.dataset.max_samples = ("original", "fused"), (0.5,), (0,), 2
    poisoned = synthetic.read_split(split_dir)[0]
    outcome = sweep.run_sweep(small, tmp_path, scorer=_NaNScorer(scorer, poisoned.question))
    lines = _strict_json_lines(outcome.results_file)
    failed = [line for line in lines if line["failure"] is not None]
    assert [(line["sample_id"], line["method"]) for line in failed] == [(poisoned.sample_id, "fused")]
    assert failed[0]["failure"]["stage"] == "score" and failed[0]["failure"]["error_type"] == "NonFiniteScores"
    assert "local hold NaN or inf" in failed[0]["failure"]["message"]
    assert outcome.failed == 1 and len(lines) == 4 and outcome.retryable == 0


class _MiscountedScorer(_NaNScorer):
    """The real scorer, whose scores of one question claim more audio tokens than its clip has."""

    def score(self, clips, questions, answer_ids=None):
        import dataclasses

        out = self._scorer.score(clips, questions, answer_ids=answer_ids)
        return [dataclasses.replace(s, num_tokens=10 * s.num_tokens) if q == self.question else s
                for q, s in zip(questions, out)]


def test_a_clip_that_cannot_be_selected_fails_alone_at_selection(config, scorer, split_dir, tmp_path):
    small = config.copy_and_resolve_references()
    small.methods, small.rhos, small.seeds, small.dataset.max_samples = ("original", "fused", "random"), (0.5,), (0,), 2
    bad = synthetic.read_split(split_dir)[0]
    outcome = sweep.run_sweep(small, tmp_path, scorer=_MiscountedScorer(scorer, bad.question))
    lines = _strict_json_lines(outcome.results_file)
    failed = [line for line in lines if line["failure"] is not None]
    assert sorted((line["sample_id"], line["method"]) for line in failed) == [(bad.sample_id, "fused"),
                                                                             (bad.sample_id, "random")]
    assert all(line["failure"]["stage"] == "select" and "num_tokens must lie in" in line["failure"]["message"]
               for line in failed)
    assert len(lines) == 6 and outcome.failed == 2


def test_a_rerun_retries_codec_failures_of_a_transient_cause(config, scorer, tmp_path, caplog):
    """Every codec request times out (the sidecar hangs: `runtime.codec_timeout_s`, not fingerprinted);
    each restart is logged with its cause, the table counts the failure, and a plain rerun redoes it."""
    hung = config.copy_and_resolve_references()
    hung.methods, hung.rhos, hung.seeds, hung.dataset.max_samples = ("codec",), (1.0,), (0,), 1
    hung.runtime.codec_timeout_s = 0.01
    with caplog.at_level(logging.WARNING, logger="agac_jax.codec.client"):
        first = sweep.run_sweep(hung, tmp_path, scorer=scorer)
    restarts = [r.getMessage() for r in caplog.records if r.name == "agac_jax.codec.client"]
    assert len(restarts) == 2 and all("Timeout: no reply within 0.01 s; starting a new one" in m for m in restarts)
    assert first.failed == first.retryable == 1
    assert tables.terminal_table(first.merged.rows).splitlines()[2].split()[-1] == "1"  # the Failed column
    hung.runtime.codec_timeout_s = 300.0
    rerun = sweep.run_sweep(hung, tmp_path, scorer=scorer)
    assert rerun.pending_before == rerun.written == 1 and rerun.failed == rerun.retryable == 0
    assert all(record.ok for record in results.read_workdir(tmp_path))


def test_a_workdir_without_records_takes_a_corrected_config(config, tmp_path):
    wrong = sweep.config_to_dict(config)
    wrong["model"] = {**wrong["model"], "checkpoint_dir": "/no/such/model"}
    results.ensure_workdir_config(tmp_path, wrong)  # as left by a run that stopped before its first record
    sweep.store_config(tmp_path, sweep.config_to_dict(config))
    assert results.read_workdir_config(tmp_path)["model"]["checkpoint_dir"] == config.model.checkpoint_dir
    with results.ResultsWriter(tmp_path / "results.jsonl") as writer:
        writer.append([results.ResultRecord(dataset="d", sample_id="s", clip_id="c", question="q", label="yes",
                                            method="original", rate=None, rho=1.0, seed=0, parsed_original="yes",
                                            parsed_compressed="yes")])
    with pytest.raises(results.ConfigMismatchError, match="model.checkpoint_dir"):
        sweep.store_config(tmp_path, wrong)


def test_adaptive_methods_keep_fused_frames_per_batch(config, scorer, tmp_path):
    """The adaptive methods in a sweep: each batch of `runtime.batch_samples` samples keeps as many
    frames as fused at the same rho (at least one a clip), and the tables carry their rows and the
    clips' mean keep ratio."""
    import csv

    from agac_jax.data import load_dataset

    adaptive = config.copy_and_resolve_references()
    adaptive.methods = ("original", "fused", "adaptive_mass", "adaptive_pool", "adaptive_kind")
    adaptive.kind_weights = (("order", 2.0), ("existence", 0.5))
    adaptive.seeds = (0,)
    outcome = sweep.run_sweep(adaptive, tmp_path, scorer=scorer)
    assert outcome.failed == 0
    kept = {(r.sample_id, r.method): r.kept_frames for r in results.read_records(tmp_path / "results.jsonl")
            if r.rho == 0.5}
    order = [s.sample_id for s in load_dataset(adaptive.dataset)[1].samples]
    size = adaptive.runtime.batch_samples
    for start in range(0, len(order), size):
        batch = order[start:start + size]
        fused = sum(kept[(s, "fused")] for s in batch)
        for method in ("adaptive_mass", "adaptive_pool", "adaptive_kind"):
            assert sum(kept[(s, method)] for s in batch) == fused and min(kept[(s, method)] for s in batch) >= 1
    kinds = {s.sample_id: s.kind for s in load_dataset(adaptive.dataset)[1].samples}
    ordering = [s for s in order if kinds[s] == "order"]
    existence = [s for s in order if kinds[s] == "existence"]
    assert ordering and existence  # the weights move frames from existence to order questions
    assert sum(kept[(s, "adaptive_kind")] for s in ordering) >= sum(kept[(s, "fused")] for s in ordering)
    assert sum(kept[(s, "adaptive_kind")] for s in existence) <= sum(kept[(s, "fused")] for s in existence)
    rows = {row["method"]: row for row in csv.DictReader((tmp_path / "summary.csv").open()) if row["rho"] == "0.5"}
    assert set(rows) == {"fused", "adaptive_mass", "adaptive_pool", "adaptive_kind"}
    assert all(0 < float(row["keep_ratio_mean_mean"]) <= 1 for row in rows.values())
    assert "| `adaptive_pool` | 50 | 0.5 |" in (tmp_path / "tables.md").read_text()
