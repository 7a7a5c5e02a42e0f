"""The log-odds target, the deletion and insertion curves and the estimator study, on the shipped model."""

from __future__ import annotations

import dataclasses
import json
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agac_jax.models.qwen2_audio import checkpoints
from agac_jax.data.synthetic_audio import synthetic
from agac_jax.eval import faithfulness, study
from agac_jax.scoring.program import answer_target
from agac_jax.models.qwen2_audio.adapter import Qwen2AudioAdapter
from agac_jax.scoring.scorer import Scorer, ScoringConfig

SHIPPED = Path(__file__).resolve().parents[1] / "assets" / "tiny_qwen2audio"
CONFIG = ScoringConfig(max_new_tokens=4, max_text_tokens=32, buckets_seconds=(5, 10, 15), rates=(50,),
                       estimator="integrated_gradients", ig_steps=2, batch_size=4,
                       target="logp", local_sign="signed", local_smooth=1)  # the poster's target and reading


def test_log_odds_target_is_logp_against_the_rest_in_float64():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((3, 11)) * 4
    logits[1, 5] = 40.0  # a saturated token: 1 - p underflows in float32 but not its log-sum-exp
    ids = np.array([2, 5, 7])
    logp = logits[np.arange(3), ids] - np.log(np.exp(logits).sum(-1))
    rest = np.where(np.arange(11)[None] == ids[:, None], -np.inf, logits)
    others = np.log(np.exp(rest).sum(-1))
    expected = logits[np.arange(3), ids] - others
    got = np.asarray(answer_target(jnp.asarray(logits, jnp.float32), jnp.asarray(ids), "log_odds"))
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(answer_target(jnp.asarray(logits, jnp.float32), jnp.asarray(ids), "logp")),
                               logp, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def scorer():
    loaded = checkpoints.load_hf_directory(SHIPPED)
    from transformers import AutoTokenizer

    return Scorer(Qwen2AudioAdapter.of(loaded, AutoTokenizer.from_pretrained(str(SHIPPED))), loaded.params, CONFIG)


@pytest.fixture(scope="module")
def samples():
    return synthetic.generate_split("test", 3, 0)[:3]


@pytest.fixture(scope="module")
def scored(scorer, samples):
    waves = [s.load_waveform() for s in samples]
    questions = [s.question for s in samples]
    answers = scorer.answers(waves, questions)
    return waves, questions, scorer.score(waves, questions, answer_ids=[ids for _, ids in answers])


def test_by_kind_splits_answer_consistency_per_question_group():
    groups = ["count yes", "exist no", "count yes", "exist no", "exist no"]
    insertion = np.array([True, False, False, True, True])
    joined = np.array([True, True, True, False, True])
    kinds = study.by_kind(groups, insertion, joined)
    assert list(kinds) == ["count yes", "exist no"]
    assert kinds["count yes"] == dict(questions=2, insertion=50.0, joined=100.0)
    assert kinds["exist no"]["questions"] == 3 and kinds["exist no"]["insertion"] == pytest.approx(200 / 3)
    assert study.question_groups([types.SimpleNamespace(answer="yes")]) is None  # no kind: no groups


def test_audio_dependent_clips_are_those_the_silent_clip_changes():
    consistent = np.array([[True, True, True], [False, True, True], [False, False, True]])
    zeros = np.zeros((3, 3))
    curves = faithfulness.Curves("fused", (0.0, 0.5, 1.0), zeros, zeros, consistent, consistent[:, ::-1])
    np.testing.assert_array_equal(curves.audio_dependent(), [False, True, True])
    assert study._percent(curves.consistent_insertion[curves.audio_dependent(), 1]) == 50.0
    assert np.isnan(study._percent(np.zeros(0, bool)))
    with pytest.raises(ValueError, match="silent clip"):
        faithfulness.Curves("fused", (0.1, 1.0), zeros[:, :2], zeros[:, :2], consistent[:, :2],
                            consistent[:, :2]).audio_dependent()


def test_answer_targets_equal_the_scoring_passes_and_the_log_odds_identity(scorer, scored):
    waves, questions, scores = scored
    targets = scorer.answer_targets(waves, questions, [s.answer_ids for s in scores])
    np.testing.assert_allclose(targets["logp"], [s.logp_full for s in scores], rtol=1e-5, atol=1e-6)
    single = [i for i, s in enumerate(scores) if len(s.answer_ids) == 1]
    assert single
    logp = targets["logp"][single]
    np.testing.assert_allclose(targets["log_odds"][single], logp - np.log(-np.expm1(logp)), rtol=1e-3)
    log_odds_scorer = Scorer.__new__(Scorer)
    log_odds_scorer.__dict__.update(scorer.__dict__, config=dataclasses.replace(CONFIG, target="log_odds"),
                                    executables={}, program_memory={})
    with_log_odds = log_odds_scorer.score(waves, questions, answer_ids=[s.answer_ids for s in scores])
    np.testing.assert_allclose([s.logp_full for s in with_log_odds], targets["log_odds"], rtol=1e-4)
    assert not np.allclose(with_log_odds[0].local, scores[0].local)


def test_curves_have_shared_ends_and_altered_clips_split_the_clip(scorer, scored):
    waves, questions, scores = scored
    inserted, deleted = faithfulness.altered_clips(waves[0], np.array([0, 3, 4]), 50)
    np.testing.assert_array_equal(inserted + deleted, waves[0])
    assert np.count_nonzero(inserted) <= 3 * 640 and np.all(inserted[640:1920] == 0)  # a frame at r 50: 40 ms
    curves = faithfulness.selector_curves(scorer, "fused", scores, waves, questions, rate=50, rhos=(0.0, 0.5, 1.0))
    np.testing.assert_array_equal(curves.log_odds_insertion[:, 0], curves.log_odds_deletion[:, -1])
    np.testing.assert_array_equal(curves.log_odds_insertion[:, -1], curves.log_odds_deletion[:, 0])
    full = scorer.answer_targets(waves, questions, [s.answer_ids for s in scores])["log_odds"]
    np.testing.assert_allclose(curves.log_odds_insertion[:, -1], full, rtol=1e-6)
    assert curves.consistent_insertion[:, -1].all() and curves.consistent_deletion[:, 0].all()
    areas = curves.areas()
    assert set(areas) >= {"log_odds_gap", "ac_gap"} and all(np.isfinite(v) for v in areas.values())
    with pytest.raises(ValueError, match="from 0 to 1"):
        faithfulness.selector_curves(scorer, "fused", scores, waves, questions, rate=50, rhos=(0.1, 1.0))
    # the ends, computed once and given (as the study does for its selectors), change nothing
    ends = faithfulness.curve_ends(scorer, scores, waves, questions)
    given = faithfulness.selector_curves(scorer, "fused", scores, waves, questions, rate=50, rhos=(0.0, 0.5, 1.0),
                                         ends=ends)
    for name in ("log_odds_insertion", "log_odds_deletion", "consistent_insertion", "consistent_deletion"):
        np.testing.assert_array_equal(getattr(given, name), getattr(curves, name), err_msg=name)
    with pytest.raises(ValueError, match="ends are of 2 clips, the scores of 3"):
        faithfulness.selector_curves(scorer, "fused", scores, waves, questions, rate=50,
                                     ends=faithfulness.CurveEnds(*(x[:2] for x in dataclasses.astuple(ends))))


def test_mean_curves_average_random_draws():
    rhos = (0.0, 0.5, 1.0)
    silent_changed = np.array([[False, True, True], [True, True, True]])  # question 0 needs its audio
    one = faithfulness.Curves("random", rhos, np.array([[0.0, 1.0, 2.0], [1.0, 1.0, 1.5]]), np.zeros((2, 3)),
                              silent_changed, silent_changed)
    other = faithfulness.Curves("random", rhos, np.array([[0.0, 0.0, 2.0], [1.0, 1.5, 1.5]]), np.ones((2, 3)),
                                np.array([[False, False, True], [True, False, True]]), silent_changed)
    mean = faithfulness.mean_curves([one, other])
    np.testing.assert_array_equal(mean.consistent_insertion, [[0, 0.5, 1], [1, 0.5, 1]])
    np.testing.assert_array_equal(mean.log_odds_insertion, [[0, 0.5, 2], [1, 1.25, 1.5]])
    np.testing.assert_array_equal(mean.audio_dependent(), one.audio_dependent())
    np.testing.assert_array_equal(one.audio_dependent(), [True, False])
    for key, value in mean.areas().items():  # the curves' ends agree, so every area is the draws' mean
        np.testing.assert_allclose(value, (one.areas()[key] + other.areas()[key]) / 2, err_msg=key)
    with pytest.raises(ValueError, match="same ratios"):
        faithfulness.mean_curves([one, dataclasses.replace(other, rhos=(0.0, 0.7, 1.0))])


def test_study_writes_its_table_and_resumes(tmp_path):
    from configs.estimator_study import get_config

    config = get_config("local")
    config.benchmarks = config.benchmarks[:1]
    config.benchmarks[0].dataset.num_clips = 2
    read = "integrated_gradients/2/log_odds/magnitude/smooth9"
    config.settings = ("integrated_gradients/2/log_odds", read)
    rows = study.run_study(config, tmp_path)
    selectors = [(row["selector"], row["setting"]) for row in rows]
    assert selectors == [("fused", "integrated_gradients/2/log_odds"), ("aad", "integrated_gradients/2/log_odds"),
                         ("fused", read), ("aad", read), ("energy", ""), ("random", ""), ("attention", "")]
    assert all(0 <= row["recall_0.5"] <= 100 for row in rows)
    assert rows[0]["flops_per_clip"] > 0 and rows[0]["seconds_per_clip"] > 0
    assert all(0 <= row["ac_joined_0.5"] <= 100 for row in rows if row["selector"] != "aad")
    assert "ac_joined_0.5" not in rows[1]  # AAD alone: recall only
    assert [row.get("draws") for row in rows[4:]] == [1, config.random_draws, 1] and config.random_draws == 2
    measured = [row for row in rows if row["selector"] != "aad"]
    assert len({row["audio_questions"] for row in measured}) == 1  # one silent clip per question
    assert all(0 <= row["audio_questions"] <= 2 for row in measured)
    for row in measured:  # right and wrong answers split the insertion A.C. of all questions
        n, r = sum(row["ac_by_kind_0.5"][g]["questions"] for g in row["ac_by_kind_0.5"]), row["right_answers"]
        parts = [row[f"ac_{part}_insertion_0.5"] * size for part, size in (("right", r), ("wrong", n - r)) if size]
        assert row["right_answers"] == measured[0]["right_answers"] and 0 <= r <= n
        np.testing.assert_allclose(sum(parts), row["ac_insertion_0.5"] * n)
    # the reading shares the raw setting's one scoring run, and so its cost
    assert (rows[2]["flops_per_clip"], rows[2]["seconds_per_clip"]) == (rows[0]["flops_per_clip"],
                                                                        rows[0]["seconds_per_clip"])
    table = (tmp_path / "study.md").read_text()
    assert table.count("| fused |") == 4  # the main table and the by-kind one
    sizes = {group: kind["questions"] for group, kind in measured[0]["ac_by_kind_0.5"].items()}
    for row in measured:  # per question kind and true answer, the same groups, all questions between them
        kinds = row["ac_by_kind_0.5"]
        assert {group: kind["questions"] for group, kind in kinds.items()} == sizes
        assert all(0 <= k["insertion"] <= 100 and 0 <= k["joined"] <= 100 for k in kinds.values())
    assert all(group.split(" ")[0] in (synthetic.EXISTENCE, synthetic.ORDER) and group.split(" ")[1] in ("yes", "no")
               for group in sizes)
    from agac_jax.data import load_dataset

    questions = load_dataset(config.benchmarks[0].dataset)[1].samples
    assert sum(sizes.values()) == len(questions)
    assert sizes == {g: study.question_groups(questions).count(g) for g in sizes}
    assert all(f"{group} ({size})" in table for group, size in sizes.items())
    assert (tmp_path / "recall_vs_cost.png").stat().st_size > 1000
    again = study.run_study(config, tmp_path)  # every row is there: nothing is scored again
    assert len(again) == len(rows)
    assert len((tmp_path / "rows.jsonl").read_text().splitlines()) == len(rows)
    with pytest.raises(ValueError, match="estimator/window-or-steps/target"):
        study.Setting.parse("occlusion/one/logp")
    with pytest.raises(ValueError, match="unknown option 'smooth0'"):
        study.Setting.parse("occlusion/1/logp/smooth0")
    assert study.Setting.parse(read).name == read and study.Setting.parse(read).raw.name == config.settings[0]
    json.dumps(rows)


def test_a_reading_of_the_raw_local_score_equals_scoring_with_it(scorer, scored):
    """`study.read_local` on the signed scores equals the program's own magnitude-and-smoothing reading."""
    waves, questions, scores = scored
    setting = study.Setting.parse("integrated_gradients/2/logp/magnitude/smooth5")
    reading = Scorer.__new__(Scorer)
    reading.__dict__.update(scorer.__dict__, config=dataclasses.replace(CONFIG, **setting.scoring_fields()),
                            executables={}, program_memory={})
    direct = reading.score(waves, questions, answer_ids=[s.answer_ids for s in scores])
    for raw, ours in zip(scores, direct):
        read = study.read_local(raw, setting)
        np.testing.assert_allclose(read.local, ours.local, rtol=1e-5, atol=1e-6 * np.abs(ours.local).max())
        assert not np.allclose(read.local, raw.local)
        np.testing.assert_allclose(study._with_alpha(read, CONFIG.alpha).fused, ours.fused, rtol=1e-5, atol=1e-6)


def test_input_domain_gates_equal_encoding_the_mixed_log_mel(scorer, scored):
    """Occlusion with gates on the log-mel frames: each token's score is logp(clip) - logp(the clip whose
    4 frames of that token are silence's, encoded again), computed here one gate at a time."""
    from agac_jax.scoring.program import ClipInputs, clip_passes

    waves, questions, scores = scored
    waves = [waves[0][:16_000]]  # 1 s: 25 gates, each encoded again
    # log-odds: the shipped model is saturated, so log p differences (~1e-4) sit at float32's noise
    config = dataclasses.replace(CONFIG, estimator="occlusion", gate_domain="input", occlusion_chunk=128,
                                 target="log_odds")
    input_scorer = Scorer.__new__(Scorer)
    input_scorer.__dict__.update(scorer.__dict__, config=config, executables={}, program_memory={})
    got = input_scorer.score(waves[:1], questions[:1], answer_ids=[scores[0].answer_ids])[0]
    batch, _ = scorer.make_batch(scorer.bucket_frames(len(waves[0])), waves[:1], questions[:1], [scores[0].answer_ids])
    model, params = scorer.model, scorer.params
    audio, n_tok = model.apply({"params": params}, batch["features"][:1], batch["mel_lengths"][:1],
                               method=model.encode_audio)
    clip = ClipInputs(audio=audio[0], silence=audio[0], n_tokens=n_tok[0], prompt_ids=jnp.asarray(batch["prompt_ids"][0]),
                      prompt_length=int(batch["prompt_lengths"][0]), answer_ids=jnp.asarray(batch["answer_ids"][0]),
                      answer_length=int(batch["answer_lengths"][0]), n_samples=len(waves[0]))
    # jitted: one compilation each instead of one per primitive of the eager passes
    log_odds_of = jax.jit(lambda encoded: clip_passes(model, params, clip._replace(audio=encoded), "log_odds").logp_of(
        jnp.ones(encoded.shape[0])))
    encode = jax.jit(lambda mel: model.apply({"params": params}, mel, batch["mel_lengths"][:1],
                                             method=model.encode_audio)[0][0])
    full = float(log_odds_of(audio[0]))
    assert got.num_tokens == 25
    for t in (0, 7, got.num_tokens - 1):
        mel = np.array(batch["features"][0])
        mel[:, 4 * t:4 * t + 4] = batch["silence_features"][0][:, 4 * t:4 * t + 4]
        logp = float(log_odds_of(encode(mel[None])))
        np.testing.assert_allclose(got.local[t], full - logp, rtol=1e-4, atol=1e-5 * abs(full))
    with pytest.raises(ValueError, match="gate_domain"):
        ScoringConfig(gate_domain="waveform")


def test_joined_consistency_asks_the_joined_frames(scorer, scored, monkeypatch):
    """At rho 1 the joined clip is the clip (every answer stays); below, the scorer hears exactly the
    kept frames joined by `join_frames`."""
    from agac_jax.codec.frames import join_frames
    from agac_jax.scoring import methods

    waves, questions, scores = scored
    assert faithfulness.joined_consistency(scorer, "fused", scores, waves, questions, rate=50, rho=1.0).all()
    heard = []
    answer = scorer.answer
    monkeypatch.setattr(scorer, "answer", lambda clips, asked: heard.extend(clips) or answer(clips, asked))
    same = faithfulness.joined_consistency(scorer, "energy", scores, waves, questions, rate=50, rho=0.3)
    kept = methods.select_batch(scores, waves, "energy", 50, 0.3, [0] * len(scores))
    for clip, wave, keep in zip(heard, waves, kept):
        np.testing.assert_array_equal(clip, join_frames(np.asarray(wave, np.float32), keep, 50))
        assert len(clip) < 0.35 * len(wave)
    from agac_jax.eval import metrics

    expected = [metrics.answers_agree(metrics.parse_answer(s.answer_text), metrics.parse_answer(reply))
                for s, reply in zip(scores, answer(heard, questions))]
    assert same.tolist() == expected
