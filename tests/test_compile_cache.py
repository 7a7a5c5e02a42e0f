"""The persistent compilation cache of the launch tools: where it lives, when it is off, and a second
`launch.score` process that compiles nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

from agac_jax.cli import compile_cache
from agac_jax.scoring import executables
from tests.tiny_models import make_scoring_checkpoint

REPO = Path(__file__).resolve().parents[1]

# Runs launch.score in-process with a listener on JAX's compilation-cache events; prints their counts.
SCORE_AND_COUNT = """
import collections, json, sys
import jax.monitoring
counts = collections.Counter()
jax.monitoring.register_event_listener(lambda event, **kw: counts.update([event.rsplit("/", 1)[-1]]))
from launch import score
code = score.run(["score"] + sys.argv[1:])
print("COUNTS " + json.dumps(dict(code=code, **counts)))
"""


def _clean_env(**extra: str) -> dict[str, str]:
    """The test environment without JAX's or our cache settings, plus `extra`."""
    env = {k: v for k, v in os.environ.items()
           if k not in (compile_cache.JAX_DIR_ENV, compile_cache.DIR_ENV, compile_cache.ENABLE_ENV,
                        compile_cache.MIN_TIME_ENV)}
    return dict(env, **extra)


def _score_counts(argv: list[str], env: dict[str, str]) -> dict[str, int]:
    result = subprocess.run([sys.executable, "-c", SCORE_AND_COUNT, *argv], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=600)
    lines = [line for line in result.stdout.splitlines() if line.startswith("COUNTS ")]
    assert lines, result.stderr[-3000:]
    return json.loads(lines[-1][len("COUNTS "):])


@pytest.fixture(scope="module")
def score_argv(tmp_path_factory) -> list[str]:
    root = tmp_path_factory.mktemp("cache_score")
    model = make_scoring_checkpoint(root / "model")
    wav = root / "clip.wav"
    t = np.arange(30_000) / 16_000
    soundfile.write(wav, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 16_000, subtype="FLOAT")
    return [f"--checkpoint={model}", f"--audio={wav}", "--question=is there a tone ?", "--max_new_tokens=2",
            f"--output={root / 'scores.json'}"]


def test_a_second_launch_score_process_compiles_nothing(score_argv, tmp_path):
    env = _clean_env(**{compile_cache.DIR_ENV: str(tmp_path / "cache")})
    first = _score_counts(score_argv, env)
    second = _score_counts(score_argv, env)
    assert first["code"] == second["code"] == 0
    assert first.get("cache_misses", 0) >= 2 and first.get("cache_hits", 0) == 0  # generation and scoring at least
    assert second.get("cache_misses", 0) == 0
    stored = list((tmp_path / "cache" / executables.SUBDIRECTORY).glob("*.bin"))  # the scoring programs
    assert len(stored) >= 1  # run without tracing or lowering, so JAX's cache is not even asked for them
    assert second.get("cache_hits", 0) + len(stored) == first["cache_misses"]


def test_the_opt_out_writes_and_reads_nothing(score_argv, tmp_path):
    env = _clean_env(**{compile_cache.DIR_ENV: str(tmp_path / "cache"), compile_cache.ENABLE_ENV: "0"})
    counts = _score_counts(score_argv, env)
    assert counts["code"] == 0
    assert counts.get("cache_hits", 0) == counts.get("cache_misses", 0) == 0
    assert not (tmp_path / "cache").exists()
    flagged = _score_counts(score_argv + ["--nocompilation_cache"], _clean_env(**{compile_cache.DIR_ENV: str(tmp_path)}))
    assert flagged.get("cache_hits", 0) == flagged.get("cache_misses", 0) == 0


def test_the_default_directory_is_the_users_cache_keyed_by_host(monkeypatch, tmp_path):
    for name in (compile_cache.DIR_ENV, compile_cache.ENABLE_ENV, compile_cache.JAX_DIR_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    wanted, directory = compile_cache.requested()
    assert wanted and directory == tmp_path / "agac_jax" / "jax_cache" / compile_cache.host_key()
    machine, digest = compile_cache.host_key().rsplit("-", 1)
    assert machine and len(digest) == 12 and int(digest, 16) >= 0


def test_explicit_settings_and_the_opt_outs(monkeypatch, tmp_path):
    monkeypatch.delenv(compile_cache.ENABLE_ENV, raising=False)
    monkeypatch.setenv(compile_cache.DIR_ENV, str(tmp_path / "env"))
    assert compile_cache.requested() == (True, tmp_path / "env")
    assert compile_cache.requested(True, str(tmp_path / "flag")) == (True, tmp_path / "flag")
    assert compile_cache.requested(False, str(tmp_path / "flag")) == (False, None)
    for off in ("0", "false", "OFF"):
        monkeypatch.setenv(compile_cache.ENABLE_ENV, off)
        assert compile_cache.requested(True, str(tmp_path / "flag")) == (False, None)
    monkeypatch.delenv(compile_cache.ENABLE_ENV)
    monkeypatch.delenv(compile_cache.DIR_ENV)
    monkeypatch.setenv(compile_cache.JAX_DIR_ENV, str(tmp_path / "jax"))
    assert compile_cache.requested() == (True, None)  # JAX's own setting is kept
    monkeypatch.delenv(compile_cache.JAX_DIR_ENV)
    assert compile_cache.requested(jax_directory=str(tmp_path / "jax")) == (True, None)


def test_a_directory_others_may_write_is_refused(tmp_path):
    assert compile_cache.unsafe_reason(tmp_path / "missing") is None
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    assert compile_cache.unsafe_reason(private) is None
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    assert "other users" in compile_cache.unsafe_reason(shared)
    file = tmp_path / "file"
    file.write_text("x")
    assert "not a directory" in compile_cache.unsafe_reason(file)


def test_the_tally_counts_each_program_made_and_the_steps_seconds():
    import jax
    import jax.numpy as jnp

    tally = compile_cache.tally().start()
    assert compile_cache.tally() is tally and tally.programs == 0
    f = jax.jit(lambda x: jnp.sin(x) * 3.0 + x.sum())
    f(np.ones(7, np.float32))
    f(np.ones(7, np.float32))  # held in memory: nothing more
    assert tally.programs == 1 and tally.trace_s > 0 and tally.lower_s > 0 and tally.compile_s > 0
    f(np.ones(9, np.float32))
    assert tally.programs == 2
    assert tally.as_dict()["programs"] == 2 and tally.summary().startswith("2 XLA programs (")


def test_a_stored_scoring_program_runs_without_tracing_and_a_broken_entry_is_compiled_again(tmp_path, caplog):
    from agac_jax.scoring.scorer import Scorer, ScoringConfig

    model = make_scoring_checkpoint(tmp_path / "model")
    rng = np.random.default_rng(0)
    clips = [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in (30_000, 41_000)]
    questions = ["is there a tone ?", "is there a chirp ?"]
    config = ScoringConfig(buckets_seconds=(5,), batch_size=2, max_new_tokens=2)
    assert executables.directory() is None  # library use: off
    executables.enable(tmp_path / "cache")
    try:
        first = Scorer.from_directory(model, config)
        expected = first.score(clips, questions)
        assert first.traces == 1
        (entry,) = (tmp_path / "cache" / executables.SUBDIRECTORY).glob("*.bin")
        again = Scorer.from_directory(model, config)  # as a second process would
        for a, b in zip(again.score(clips, questions), expected):
            np.testing.assert_array_equal(a.local, b.local)
            np.testing.assert_array_equal(a.answer_ids, b.answer_ids)
        assert again.traces == 0
        entry.write_bytes(b"not a program")
        broken = Scorer.from_directory(model, config)
        np.testing.assert_array_equal(broken.score(clips, questions)[0].fused, expected[0].fused)
        assert broken.traces == 1 and "did not load" in caplog.text and entry.read_bytes() != b"not a program"
        probed = Scorer.from_directory(model, config)
        probed.probe = lambda name, value: None  # Python the key cannot see: never stored nor loaded
        probed.score(clips, questions)
        assert probed.traces == 1
        key = executables.program_key(program="scoring", spec="s")
        executables._source_digest = "another source"
        assert executables.program_key(program="scoring", spec="s") != key
    finally:
        executables._source_digest = None
        executables.disable()
