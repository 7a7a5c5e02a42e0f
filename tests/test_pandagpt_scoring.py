"""PandaGPT on the scoring program (DESIGN.md section 9): the gate over ImageBind's fbank slots, the
model's own global score, frames through the slots' sample ranges, unheard frames ranked last.

Tiny random PandaGPT; the program's scores are checked against direct evaluations of the model."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agac_jax.models.pandagpt.imagebind import ImageBindConfig
from agac_jax.models.llama import LlamaConfig
from agac_jax.models.pandagpt.model import UNHEARD, PandaGPT, PandaGPTConfig, init_params
from agac_jax.scoring import methods, selection
from agac_jax.models.pandagpt.adapter import PandaGPTAdapter
from agac_jax.scoring.scorer import POSTER_LOCAL_SCORE, Scorer, ScoringConfig
from agac_jax.models.qwen2_audio.tokenizer import build_word_tokenizer

IB = ImageBindConfig(out_embed_dim=24, audio_embed_dim=32, audio_num_blocks=2, audio_num_heads=4,
                     vision_embed_dim=32, vision_num_blocks=1, vision_num_heads=4)
LLAMA = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=4, max_position_embeddings=128)
CONFIG = PandaGPTConfig(imagebind=IB, llama=LLAMA, audio_token_id=63)
WORDS = "### Human : < Img > / Assistant is there a dog in the video yes no ?".split()


def test_slot_frames_unheard_and_heard_first_keep():
    # two slots reading [0, 400) and [800, 1200) of a 1600-sample clip; rate 100: frames of 320 samples
    ranges = jnp.array([[0, 400], [800, 1200], [0, 0]])
    scores, valid, unheard = selection.slots_to_frames(jnp.array([1.0, 0.5, 9.0]), ranges,
                                                       jnp.array([True, True, False]), 1600, 100, 6)
    np.testing.assert_allclose(scores, [1.0, 1.0, 0.5, 0.5, UNHEARD, 0.0])  # frame 1 shares 80 samples with slot 0
    assert valid.tolist() == [True] * 5 + [False] and unheard.tolist() == [False] * 4 + [True, False]
    # heard frames first, then the unheard ones evenly spaced (not the earliest)
    frame_scores = jnp.array([0.2, UNHEARD, UNHEARD, 0.9, UNHEARD, UNHEARD, UNHEARD, 0.1])
    gap = frame_scores == UNHEARD
    ones = jnp.ones(8, bool)
    assert np.flatnonzero(selection.topk_keep_heard_first(frame_scores, ones, gap, 2)).tolist() == [0, 3]
    assert np.flatnonzero(selection.topk_keep_heard_first(frame_scores, ones, gap, 4)).tolist() == [0, 3, 4, 7]
    assert np.flatnonzero(selection.topk_keep_heard_first(frame_scores, ones, gap, 5)).tolist() == [0, 2, 3, 5, 7]
    assert selection.topk_keep_heard_first(frame_scores, ones, gap, 8).all()


@pytest.fixture(scope="module")
def scorer(tmp_path_factory):
    tokenizer = build_word_tokenizer(sorted(set(WORDS)), tmp_path_factory.mktemp("tok"))
    params = jax.jit(lambda k: init_params(CONFIG, k))(jax.random.key(0))
    config = ScoringConfig(occlusion_chunk=306, max_text_tokens=24, max_new_tokens=3, buckets_seconds=(10,),
                           rates=(100,), keep=0.5, batch_size=1, **POSTER_LOCAL_SCORE)
    return Scorer(PandaGPTAdapter(CONFIG, tokenizer), params, config)


def _direct_logp(scorer, inputs, gate, prompt, answer, video=None):
    """logp of `answer` with the AV token of the gated fbank (and the video's vector), without the program."""
    return _direct(scorer.model, scorer.params, jnp.asarray(inputs["features"]).T, jnp.asarray(inputs["silence"]).T,
                   jnp.asarray(gate, jnp.float32), tuple(int(i) for i in prompt), tuple(int(i) for i in answer),
                   None if video is None else jnp.asarray(video))


def _direct(model, params, state, silence, gate, prompt, answer, video):
    return jnp.sum(_direct_tokens(model, params, state, silence, gate, prompt, answer, video))


@functools.partial(jax.jit, static_argnums=(0, 5, 6))
def _direct_tokens(model, params, state, silence, gate, prompt, answer, video):
    """[len(answer)]: log p of each answer token, the AV token of the gated fbank at the placeholder."""
    v = {"params": params}
    mixed = gate[:, None] * state + (1 - gate[:, None]) * silence
    audio = model.apply(v, model.apply(v, mixed, method=lambda m, x: m._clips(x)), method=model.audio_embedding)
    vector = None if video is None else model.apply(v, video, method=model.video_embedding)
    token = model.apply(v, audio, vector, method=model.av_token)[None]  # W(a + v) + 2b
    seq = jnp.asarray(prompt + answer)
    embeds = model.apply(v, seq[None], method=model.embed_tokens)[0]
    embeds = jnp.where((seq == CONFIG.audio_token_id)[:, None], token, embeds)
    n = len(seq)
    hidden, _ = model.apply(v, embeds[None], positions=jnp.arange(n)[None], mask=jnp.tril(jnp.ones((n, n), bool))[None],
                            method=model.decode)
    logp = jax.nn.log_softmax(model.apply(v, hidden[0], method=model.logits), -1)
    rows = np.arange(len(prompt) - 1, n - 1)
    return logp[rows, np.asarray(answer)]


def test_answer_targets_equal_the_direct_evaluation(scorer):
    rng = np.random.default_rng(4)
    clips = [rng.standard_normal(n).astype(np.float32) * 0.1 for n in (3 * 16000, 7 * 16000)]
    questions = ["is there a dog ?", "is there a dog in the video ?"]
    answers = [[20, 21], [22]]
    targets = scorer.answer_targets(clips, questions, answers)
    assert sorted(targets) == ["log_odds", "logp"]
    for clip, question, answer, logp, log_odds in zip(clips, questions, answers, targets["logp"], targets["log_odds"]):
        inputs = scorer.adapter.clip_inputs(clip)
        tokens = np.asarray(_direct_tokens(scorer.model, scorer.params, jnp.asarray(inputs["features"]).T,
                                           jnp.asarray(inputs["silence"]).T,
                                           jnp.asarray(inputs["slot_valid"], jnp.float32),
                                           tuple(scorer.adapter.prompt(question)), tuple(answer), None), np.float64)
        assert abs(logp - tokens.sum()) <= 1e-5 * abs(tokens.sum())
        expected_odds = np.sum(tokens - np.log1p(-np.exp(tokens)))
        assert abs(log_odds - expected_odds) <= 1e-5 * abs(expected_odds)


def test_program_scores_pandagpt_exactly(scorer, tmp_path):
    from agac_jax.models.pandagpt.video import load_video_inputs
    from tests.test_pandagpt_video import make_video

    clip = np.random.default_rng(0).standard_normal(10 * 16000).astype(np.float32) * 0.1
    video = load_video_inputs(make_video(tmp_path / "v.mp4", seconds=10, rate=4), size=IB.image_size)
    question = "is there a dog in the video ?"
    [(_, answer)] = scorer.answers([clip], [question], videos=[video])
    assert len(answer) >= 1
    answer = answer[:2]
    [out] = scorer.score([clip], [question], [answer], videos=[video])
    inputs = scorer.adapter.clip_inputs(clip)
    valid = inputs["slot_valid"]
    assert out.num_tokens == 612 and valid.sum() == 3 * 198  # 6 padding frames inside each sub-clip
    prompt = list(out.input_ids)
    ones = jnp.asarray(valid, jnp.float32)
    full = _direct_logp(scorer, inputs, ones, prompt, answer, video)
    assert abs(out.logp_full - full) <= 1e-5 * abs(full)
    audio_only = _direct_logp(scorer, inputs, ones, prompt, answer)
    assert abs(full - audio_only) > 1e-3  # the video reaches the token
    assert abs(out.logp_silence - _direct_logp(scorer, inputs, jnp.zeros(612), prompt, answer, video)) <= 1e-5 * abs(full)
    for t in (0, 300, 611 - 6):  # occlusion of one slot, in both chunks of 306 gates
        expected = full - _direct_logp(scorer, inputs, ones.at[t].set(0.0), prompt, answer, video)
        assert abs(out.local[t] - expected) <= 2e-5 * abs(full), t
    assert np.all(out.local[~valid] == 0) and np.all(out.global_[~valid] == 0)
    model_global = jax.jit(lambda p, x: scorer.model.apply({"params": p}, x, method=scorer.model.global_scores))(
        scorer.params, jnp.asarray(inputs["features"])[None])[0]
    np.testing.assert_allclose(out.global_, np.where(valid, model_global, 0.0), rtol=1e-5, atol=1e-8)
    # frames: 2-4 s and 6-8 s are unheard (-1), every kept frame (rho 0.5 < 6 s heard of 10 s) is heard
    frames = out.frames[100]
    seconds = np.arange(frames.size) * 0.02
    gap = ((seconds >= 2) & (seconds < 4)) | ((seconds >= 6) & (seconds < 8))
    assert np.all(frames[gap] == UNHEARD) and np.all(frames[~gap] >= 0)
    assert len(out.keep[100]) == 250 and not gap[out.keep[100]].any()
    kept = methods.select_batch([out], [clip], "fused", 100, 0.5, [0])[0]
    np.testing.assert_array_equal(kept, out.keep[100])  # the host selection path agrees with the program's
    more = methods.select_batch([out], [clip], "fused", 100, 0.8, [0])[0]
    assert (~gap[more]).sum() == 300 and gap[more].sum() == 100  # all heard, then 100 of 200 unheard frames
    assert np.all(np.diff(np.flatnonzero(gap)[np.isin(np.flatnonzero(gap), more)][:50]) == 2)  # evenly spaced


def test_integrated_gradients_through_imagebind(scorer):
    import dataclasses

    ig = Scorer(scorer.adapter, scorer.params,
                dataclasses.replace(scorer.config, estimator="integrated_gradients", ig_steps=2))
    clip = np.random.default_rng(1).standard_normal(3 * 16000).astype(np.float32) * 0.1
    [out] = ig.score([clip], ["is there a dog ?"], [[20, 21]])
    inputs = ig.adapter.clip_inputs(clip)
    ones = jnp.asarray(inputs["slot_valid"], jnp.float32)
    logp = lambda g: _direct_logp(ig, inputs, g, list(out.input_ids), [20, 21])
    expected = (jax.grad(logp)(0.25 * ones) + jax.grad(logp)(0.75 * ones)) / 2
    np.testing.assert_allclose(out.local, np.where(inputs["slot_valid"], expected, 0.0), rtol=1e-3,
                               atol=1e-4 * float(np.abs(expected).max()))
    assert np.all(out.frames[100] >= 0)  # a 3 s clip: the sub-clips overlap and cover it, nothing unheard


def test_model_options_the_pandagpt_port_lacks_are_refused():
    import ml_collections

    from agac_jax.eval import sweep
    from configs.avhbench_pandagpt import get_config

    config = get_config("local")
    config.model.remat_layers = True
    config.model.param_dtype = "bfloat16"
    with pytest.raises(ValueError, match="float32 and unrolled with its own prompt; got param_dtype='bfloat16', "
                                         "remat_layers=True"):
        sweep.make_scorer(config)


def test_launch_score_loads_a_pandagpt_directory_by_its_files(tmp_path):
    """`launch.score` takes a PandaGPT directory as it takes a Qwen2-Audio one: its loader
    (`report.load_scorer`, the family told by the directory) builds the same Scorer over the PandaGPT
    adapter, whose programs the tests above check; its records then count the AV token's gate slots."""
    from pathlib import Path

    from agac_jax.models.pandagpt.parity import random_init_directory
    from agac_jax.scoring import report

    directory = random_init_directory(Path(__file__).parents[1] / "configs" / "tiny_pandagpt.json", 0, tmp_path / "m")
    request = report.ScoreRequest(checkpoint=str(directory), audio=("clip.wav",), question="is there a dog ?")
    scorer = report.load_scorer(str(directory), report.scoring_config(request, 1))
    assert scorer.kind == "pandagpt" and scorer.uses_video  # videos are optional: without, the AV token is audio's
    assert scorer.audio_token_count(32_000) == 1 and scorer.bucket_frames(32_000) == 200
    assert report.expected_prompt(scorer, request.question, np.zeros(32_000, np.float32)).tolist() == \
        scorer.adapter.prompt(request.question)
