"""The results store: JSONL records, crash-truncated lines, keys, config fingerprints."""

from __future__ import annotations

import json
import logging
import math

import pytest

from agac_jax.eval import results
from agac_jax.eval.results import (
    ConfigMismatchError,
    CorruptResultsError,
    Failure,
    ResultRecord,
    ResultsWriter,
    TaskKey,
)


def make_record(sample_id: str = "s0", method: str = "fused", rate: int | None = 25, rho: float = 0.9,
                seed: int = 0, failure: Failure | None = None, **fields) -> ResultRecord:
    answers = {} if failure else dict(answer_original="Yes.", answer_compressed="No", parsed_original="yes",
                                      parsed_compressed="no")
    base = dict(dataset="synthetic-test", sample_id=sample_id, clip_id=f"clip-{sample_id}",
                question="is there a siren ?", label="yes", method=method, rate=rate, rho=rho, seed=seed,
                failure=failure)
    return ResultRecord(**{**base, **answers, **fields})


CODEC_FAILURE = Failure(stage="codec", error_type="SidecarCrashed", message="failed on 2 sidecar processes")


def test_records_round_trip_through_the_file(tmp_path):
    path = tmp_path / "results.jsonl"
    written = [make_record(f"s{i}", seed=i, evidence_recall=0.25 * i, seconds={"codec": 0.5}) for i in range(3)]
    written.append(make_record("s9", failure=CODEC_FAILURE))
    with ResultsWriter(path) as writer:
        writer.append(written[:2])
        writer.append(written[2:])
        assert writer.written == 4
    assert results.read_records(path) == written
    assert path.read_text().count("\n") == 4


def test_nan_evidence_recall_is_stored_as_null():
    record = make_record(evidence_recall=math.nan)
    assert record.evidence_recall is None
    assert json.loads(record.to_json())["evidence_recall"] is None


def test_record_validation_names_the_problem():
    with pytest.raises(ValueError, match="label"):
        make_record(label="maybe")
    with pytest.raises(ValueError, match="parsed answers"):
        ResultRecord(dataset="d", sample_id="s", clip_id="c", question="q", label="no", method="codec", rate=25,
                     rho=1.0, seed=0)
    with pytest.raises(ValueError, match="stage"):
        Failure(stage="decode", error_type="X", message="m")
    data = json.loads(make_record().to_json())
    with pytest.raises(ValueError, match="schema"):
        ResultRecord.from_dict({**data, "schema": 99})
    with pytest.raises(ValueError, match="unknown fields"):
        ResultRecord.from_dict({**data, "extra": 1})


def test_truncated_last_line_is_dropped_with_a_warning_and_cut_before_appending(tmp_path, caplog):
    path = tmp_path / "results.jsonl"
    records = [make_record(f"s{i}") for i in range(3)]
    with ResultsWriter(path) as writer:
        writer.append(records)
    partial = make_record("s3").to_json()[:40]
    with path.open("a") as handle:
        handle.write(partial)
    with caplog.at_level(logging.WARNING, logger="agac_jax.eval.results"):
        assert results.read_records(path) == records
    assert "truncated last line" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="agac_jax.eval.results"), ResultsWriter(path) as writer:
        writer.append([make_record("s3")])
    assert "cut a truncated last line (40 bytes)" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="agac_jax.eval.results"):
        assert [r.sample_id for r in results.read_records(path)] == ["s0", "s1", "s2", "s3"]
    assert "truncated" not in caplog.text


def test_malformed_middle_line_is_an_error_naming_file_and_line(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text(make_record("s0").to_json() + "\n{not json}\n" + make_record("s1").to_json() + "\n")
    with pytest.raises(CorruptResultsError, match=r"results.jsonl, line 2"):
        results.read_records(path)


def test_latest_by_key_prefers_a_success_over_a_failure_and_later_over_earlier():
    failed = make_record("s0", failure=CODEC_FAILURE)
    success = make_record("s0", answer_compressed="Yes", parsed_compressed="yes")
    later_failure = make_record("s0", failure=CODEC_FAILURE)
    other = make_record("s1", seed=1)
    chosen = results.latest_by_key([failed, success, later_failure, other])
    assert chosen[TaskKey("s0", "fused", 25, 0.9, 0)] == success
    assert chosen[other.key] == other
    assert len(chosen) == 2


def test_done_keys_across_shards_retry_transient_failures_always_and_input_failures_on_request(tmp_path):
    load_failure = Failure(stage="load", error_type="FileNotFoundError", message="no such file: clip-s3.wav")
    timeout = Failure(stage="codec", error_type="Timeout", message="failed on 2 sidecar processes: no reply")
    with ResultsWriter(results.results_path(tmp_path, 0, 2)) as writer:
        writer.append([make_record("s0"), make_record("s2", failure=CODEC_FAILURE),
                       make_record("s3", failure=load_failure), make_record("s4", failure=timeout)])
    with ResultsWriter(results.results_path(tmp_path, 1, 2)) as writer:
        writer.append([make_record("s1", method="original", rate=None, rho=1.0)])
    assert [p.name for p in results.results_files(tmp_path)] == ["results.0.jsonl", "results.1.jsonl"]
    assert CODEC_FAILURE.transient and timeout.transient and not load_failure.transient
    successes = {TaskKey("s0", "fused", 25, 0.9, 0), TaskKey("s1", "original", None, 1.0, 0)}
    assert results.done_keys(tmp_path) == successes | {TaskKey("s3", "fused", 25, 0.9, 0)}
    assert results.done_keys(tmp_path, retry_failed=True) == successes
    assert len(results.read_workdir(tmp_path)) == 5


def test_results_path_names():
    assert results.results_path("w", 0, 1).name == "results.jsonl"
    assert results.results_path("w", 3, 4).name == "results.3.jsonl"
    with pytest.raises(ValueError, match="process_index 4"):
        results.results_path("w", 4, 4)


CONFIG = {
    "dataset": {"name": "synthetic", "num_clips": 12},
    "rhos": (1.0, 0.9, 0.7),
    "seeds": (0, 1, 2),
    "runtime": {"progress_log_every_s": 30.0},
}


def test_config_is_stored_and_runtime_changes_are_accepted(tmp_path):
    fingerprint = results.ensure_workdir_config(tmp_path, CONFIG)
    stored = json.loads((tmp_path / "config.json").read_text())
    assert stored["fingerprint"] == fingerprint
    assert results.read_workdir_config(tmp_path)["rhos"] == [1.0, 0.9, 0.7]
    faster_logs = {**CONFIG, "runtime": {"progress_log_every_s": 1.0}}
    assert results.ensure_workdir_config(tmp_path, faster_logs) == fingerprint


def test_a_different_config_is_refused_with_the_differences(tmp_path):
    results.ensure_workdir_config(tmp_path, CONFIG)
    changed = {**CONFIG, "rhos": (1.0, 0.5), "dataset": {"name": "synthetic", "num_clips": 20}}
    with pytest.raises(ConfigMismatchError) as error:
        results.ensure_workdir_config(tmp_path, changed)
    message = str(error.value)
    assert "rhos: [1.0, 0.9, 0.7] -> [1.0, 0.5]" in message
    assert "dataset.num_clips: 12 -> 20" in message
    assert "seeds" not in message


def test_fingerprint_ignores_tuple_versus_list_and_key_order():
    reordered = {"seeds": [0, 1, 2], "runtime": {}, "rhos": [1.0, 0.9, 0.7],
                 "dataset": {"num_clips": 12, "name": "synthetic"}}
    assert results.config_fingerprint(reordered) == results.config_fingerprint(CONFIG)
    assert results.config_fingerprint({**CONFIG, "seeds": (0, 1)}) != results.config_fingerprint(CONFIG)


def test_skipped_items_round_trip(tmp_path):
    assert results.read_skipped(tmp_path) == []
    results.write_skipped(tmp_path, [("clip_7.wav", "missing audio file"), ("q12", "tied vote")])
    assert results.read_skipped(tmp_path) == [("clip_7.wav", "missing audio file"), ("q12", "tied vote")]
