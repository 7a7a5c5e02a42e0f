"""python -m launch.score on a tiny random model: records, given answers and prompts, failing files, the plot."""

from __future__ import annotations

import json
import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import soundfile
from absl import app

from agac_jax.audio import features
from agac_jax.scoring import report, selection
from agac_jax.scoring.scorer import POSTER_ALPHA, ScoringConfig
from launch import score
from tests.tiny_models import make_scoring_checkpoint

QUESTION = "is there a tone ?"
RATE = 50
KEEP = "0.7"
GOOD_SAMPLES = (32_000, 52_800)  # 2.0 s and 3.3 s: one 5 s bucket, so one compiled program per answer mode
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _tone(n: int, hz: float) -> np.ndarray:
    t = np.arange(n) / 16_000
    return (0.3 * np.sin(2 * np.pi * hz * t) + 0.02 * np.random.default_rng(n).standard_normal(n)).astype(np.float32)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return make_scoring_checkpoint(tmp_path_factory.mktemp("score_cli_model"))


@pytest.fixture(scope="module")
def wavs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("score_cli_audio")
    paths = {name: root / f"{name}.wav" for name in ("good_a", "good_b", "empty", "nan", "long")}
    soundfile.write(paths["good_a"], _tone(GOOD_SAMPLES[0], 440.0), 16_000, subtype="FLOAT")
    soundfile.write(paths["good_b"], _tone(GOOD_SAMPLES[1], 880.0), 16_000, subtype="FLOAT")
    soundfile.write(paths["empty"], np.zeros(0, np.float32), 16_000, subtype="FLOAT")
    with_nan = _tone(24_000, 300.0)
    with_nan[1000] = np.nan
    soundfile.write(paths["nan"], with_nan, 16_000, subtype="FLOAT")
    soundfile.write(paths["long"], np.zeros(31 * 16_000, np.int16), 16_000, subtype="PCM_16")
    return paths


@pytest.fixture(scope="module")
def word_ids(model_dir) -> dict[str, int]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    return {word: tokenizer.convert_tokens_to_ids(word) for word in ("yes", "no")}


def _argv(model_dir: Path, files, *extra: str) -> list[str]:
    return (["score", f"--checkpoint={model_dir}", f"--question={QUESTION}", f"--rate={RATE}", f"--keep={KEEP}",
             "--max_new_tokens=4"] + [f"--audio={f}" for f in files] + list(extra))


@pytest.fixture(scope="module")
def mixed_run(model_dir, wavs, tmp_path_factory):
    """Two good clips among three bad ones, to a JSON file and a PNG; greedy answers."""
    out = tmp_path_factory.mktemp("score_cli_out")
    files = [wavs[k] for k in ("good_a", "empty", "nan", "long", "good_b")]
    code = score.run(_argv(model_dir, files, f"--output={out / 'scores.json'}", f"--plot={out / 'scores.png'}"))
    records = json.loads((out / "scores.json").read_text())
    return code, records, out / "scores.png"


def _expected_keep(n_samples: int) -> int:
    n_frames = math.ceil(n_samples / selection.frame_samples(RATE))
    return math.ceil(Fraction(KEEP) * n_frames)


def test_records_have_the_schema_and_lengths(mixed_run, wavs, model_dir):
    code, records, _ = mixed_run
    audio_id = json.loads((model_dir / "config.json").read_text())["audio_token_index"]
    assert code == report.EXIT_CLIP_FAILED
    assert [r["file"] for r in records] == [str(wavs[k]) for k in ("good_a", "empty", "nan", "long", "good_b")]
    for record, n in zip((records[0], records[4]), GOOD_SAMPLES):
        assert "error" not in record
        t = record["audio_tokens"]
        assert t == features.audio_token_count(features.num_valid_frames(n))
        assert len(record["local"]) == len(record["global"]) == len(record["fused"]) == t
        assert record["input_ids"].count(audio_id) == t
        assert 1 <= len(record["answer_ids"]) <= 4
        assert isinstance(record["answer_text"], str)
        frames = record["frames"]
        assert frames["rate"] == RATE and frames["method"] == "fused" and frames["rho"] == KEEP
        assert len(frames["scores"]) == math.ceil(n / selection.frame_samples(RATE))
        assert len(frames["keep"]) == _expected_keep(n)
        assert frames["keep"] == sorted(set(frames["keep"]))
        assert set(record["seconds"]) == {"compile", "run"}
        assert record["local_score"] == dict(estimator="integrated_gradients", ig_steps=8, target="log_odds",
                                             gate_domain="embedding", local_sign="magnitude", local_smooth=9)
        assert min(record["local"]) >= 0  # the default reads the local score's magnitude


def _minmax(x: np.ndarray) -> np.ndarray:
    return (x - x.min()) / (x.max() - x.min()) if x.max() > x.min() else np.zeros_like(x)


def test_fused_is_the_alpha_mix_and_keep_is_its_top_k(mixed_run):
    _, records, _ = mixed_run
    for record in (records[0], records[4]):
        local, global_ = np.asarray(record["local"]), np.asarray(record["global"])
        assert record["alpha"] == ScoringConfig.alpha == 0.75  # the estimator study's default
        np.testing.assert_allclose(record["fused"], 0.75 * _minmax(local) + 0.25 * _minmax(global_), atol=1e-5)
        scores = np.asarray(record["frames"]["scores"])
        order = np.argsort(-scores, kind="stable")
        assert record["frames"]["keep"] == sorted(order[: len(record["frames"]["keep"])].tolist())


def test_alpha_defaults_to_the_study_s_and_to_the_poster_s_with_its_local_score():
    """--alpha unset: 0.75 with the default local score, POSTER_ALPHA (0.5) with --local_score=poster;
    a given --alpha wins over both."""
    request = lambda **kw: report.ScoreRequest(checkpoint="x", audio=("a.wav",), question="q", **kw)  # noqa: E731
    assert report.scoring_config(request(), 1).alpha == 0.75
    poster = report.scoring_config(request(local_score="poster"), 1)
    assert poster.alpha == POSTER_ALPHA == 0.5 and poster.estimator == "occlusion" and poster.local_smooth == 1
    assert report.scoring_config(request(local_score="poster", alpha=0.25), 1).alpha == 0.25
    assert report.scoring_config(request(alpha=1.0), 1).alpha == 1.0


def test_bad_files_get_error_records_naming_them(mixed_run, wavs):
    _, records, _ = mixed_run
    errors = {k: records[i] for i, k in ((1, "empty"), (2, "nan"), (3, "long"))}
    for name, record in errors.items():
        assert set(record) == {"file", "error"}
        assert str(wavs[name]) in record["error"]
    assert "no samples" in errors["empty"]["error"]
    assert "NaN" in errors["nan"]["error"]
    assert "30 s" in errors["long"]["error"]


def test_plot_is_a_png_with_one_row_per_scored_clip(mixed_run):
    import matplotlib.image

    _, _, png = mixed_run
    assert png.read_bytes()[:8] == PNG_SIGNATURE
    height, width = matplotlib.image.imread(png).shape[:2]
    assert width == 1000 and height == 2 * 420


def test_stdout_json_lines_and_exit_zero(model_dir, wavs, mixed_run, capsys):
    _, records, _ = mixed_run
    code = score.run(_argv(model_dir, [wavs["good_a"], wavs["good_b"]]))
    lines = capsys.readouterr().out.strip().splitlines()
    assert code == 0
    again = [json.loads(line) for line in lines]
    assert [r["file"] for r in again] == [str(wavs["good_a"]), str(wavs["good_b"])]
    for new, old in zip(again, (records[0], records[4])):
        assert new["answer_ids"] == old["answer_ids"] and new["input_ids"] == old["input_ids"]
        np.testing.assert_allclose(new["fused"], old["fused"], atol=1e-6)
        assert new["frames"]["keep"] == old["frames"]["keep"]
        assert new["seconds"]["compile"] == 0.0


def test_given_answers_and_prompts_are_used_exactly(model_dir, wavs, mixed_run, word_ids, tmp_path):
    _, records, _ = mixed_run
    answers = [[word_ids["yes"], word_ids["no"]], [word_ids["no"]]]
    prompts = [records[0]["input_ids"], records[4]["input_ids"]]
    out = tmp_path / "given.json"
    code = score.run(_argv(model_dir, [wavs["good_a"], wavs["good_b"]], f"--answer_ids={json.dumps(answers)}",
                           f"--input_ids={json.dumps(prompts)}", f"--output={out}"))
    given = json.loads(out.read_text())
    assert code == 0
    assert [r["answer_ids"] for r in given] == answers
    assert [r["input_ids"] for r in given] == prompts


def test_a_prompt_that_differs_fails_only_its_clip(model_dir, wavs, mixed_run, word_ids, tmp_path, capsys):
    _, records, _ = mixed_run
    wrong = list(records[4]["input_ids"])
    wrong[3] += 1
    out = tmp_path / "prompt.json"
    prompts = [records[0]["input_ids"], records[4]["input_ids"], wrong]  # two clips left: the program above
    code = score.run(_argv(model_dir, [wavs["good_a"], wavs["good_b"], wavs["good_b"]],
                           f"--answer_ids=[{word_ids['yes']}]", f"--input_ids={json.dumps(prompts)}",
                           f"--output={out}"))
    result = json.loads(out.read_text())
    assert code == report.EXIT_CLIP_FAILED
    assert [r["answer_ids"] for r in result[:2]] == [[word_ids["yes"]]] * 2
    assert set(result[2]) == {"file", "error"}
    assert "position 3" in result[2]["error"] and str(wavs["good_b"]) in result[2]["error"]
    assert str(wavs["good_b"]) in capsys.readouterr().err


@pytest.mark.parametrize("extra", [
    ("--rate=40",),
    ("--keep=0",),
    ("--keep=1.5",),
    ("--alpha=2",),
    ("--estimator=gradients",),
    ("--local_score=poster", "--estimator=integrated_gradients"),
    ("--answer_ids=[[1], [2], [3]]",),
    ("--input_ids=not json",),
    ("--answer_ids=[1, 2, 3, 4, 5]",),
])
def test_bad_flags_exit_two_and_write_nothing(model_dir, wavs, tmp_path, extra):
    out = tmp_path / "bad.json"
    code = score.run(_argv(model_dir, [wavs["good_a"], wavs["good_b"]], f"--output={out}", *extra))
    assert code == report.EXIT_BAD_REQUEST
    assert not out.exists()


def test_missing_flags_and_unparsable_flags_exit_two(model_dir, wavs):
    assert score.run(["score", f"--checkpoint={model_dir}", f"--audio={wavs['good_a']}"]) == report.EXIT_BAD_REQUEST
    score.FLAGS.unparse_flags()
    with pytest.raises(SystemExit) as exited:
        score.parse_flags(["score", "--rate=fifty"])
    assert exited.value.code == report.EXIT_BAD_REQUEST
    score.FLAGS.unparse_flags()
    score.FLAGS(["score", f"--checkpoint={model_dir}", f"--audio={wavs['good_a']}"])
    with pytest.raises(app.UsageError, match="--question") as usage:
        score.main(["score"])
    assert usage.value.exitcode == report.EXIT_BAD_REQUEST


def _strict_json(text: str):
    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_non_finite_scores_are_a_clip_error_and_the_json_stays_valid(model_dir, wavs, mixed_run, monkeypatch,
                                                                      tmp_path, capsys):
    """As with NaN weights: no NaN in the JSON, no 'kept' frames 0..k-1, exit code 1."""
    import dataclasses

    real = report.Scorer.score

    def nan_local(self, clips, questions, answer_ids=None):
        return [dataclasses.replace(s, local=np.full_like(s.local, np.nan)) for s in real(self, clips, questions,
                                                                                           answer_ids)]

    monkeypatch.setattr(report.Scorer, "score", nan_local)
    out = tmp_path / "nan.json"
    assert score.run(_argv(model_dir, [wavs["good_a"], wavs["good_b"]], f"--output={out}")) == report.EXIT_CLIP_FAILED
    records = _strict_json(out.read_text())
    assert [set(r) for r in records] == [{"file", "error"}] * 2
    assert all("non-finite scores: local hold NaN or inf" in r["error"] for r in records)
    assert "2 of 2 clips failed" in capsys.readouterr().err


def test_a_clip_too_short_for_one_audio_token_says_so(model_dir, tmp_path):
    one = tmp_path / "one_sample.wav"
    soundfile.write(one, np.full(1, 0.1, np.float32), 16_000, subtype="FLOAT")
    out = tmp_path / "short.json"
    assert score.run(_argv(model_dir, [one], f"--output={out}")) == report.EXIT_CLIP_FAILED
    [record] = _strict_json(out.read_text())
    assert "the clip is too short: 1 samples" in record["error"] and "at least 321 samples" in record["error"]
    assert "template" not in record["error"]
