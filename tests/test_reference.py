"""The PyTorch reference scorer against direct computations on transformers' Qwen2-Audio (eager)."""

from __future__ import annotations

import copy
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from agac_jax.audio.features import log_mel
from agac_jax.reference.torch_scores import (
    ReferenceClip,
    attention_implementation,
    encoder_output_lengths,
    fuse_scores,
    keep_count,
    minmax_normalize,
    occlusion_gates,
    reference_keep,
    score_clip,
    score_clips,
    token_scores_to_frames,
)
from tests.tiny_models import load_hf_eager, make_hf_checkpoint

ANSWER = (7, 9, 11)
PREFIX, SUFFIX = (1, 2), (3, 4, 5)


@pytest.fixture(scope="module", params=["mha_mel128_tied", "gqa3_mel80"])
def any_model(request, tmp_path_factory):
    return load_hf_eager(make_hf_checkpoint(tmp_path_factory.mktemp(request.param), request.param))


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """Three decoder layers, so FastV reads layer 2."""
    return load_hf_eager(make_hf_checkpoint(tmp_path_factory.mktemp("mha"), "mha_mel128_tied"))


def make_clip(model, n_samples: int, seed: int = 0, clip_id: str = "clip") -> ReferenceClip:
    """A tone that starts halfway over weak noise, prompt PREFIX + placeholders + SUFFIX."""
    rng = np.random.default_rng(seed)
    t = np.arange(n_samples) / 16_000
    wave = 0.3 * np.sin(2 * np.pi * 440 * t) * (t > t[-1] / 2) + 0.05 * rng.standard_normal(n_samples)
    n_mels = model.config.audio_config.num_mel_bins
    features, valid = log_mel(wave.astype(np.float32), n_mels, pad_to_samples=480_000)
    silence, _ = log_mel(np.zeros(n_samples, np.float32), n_mels, pad_to_samples=480_000)
    n_tokens = encoder_output_lengths(valid)[1]
    ids = np.array([*PREFIX, *[model.config.audio_token_id] * n_tokens, *SUFFIX], np.int64)
    mask = (np.arange(3000) < valid).astype(np.int64)
    return ReferenceClip(ids, features, mask, silence, np.array(ANSWER), clip_id)


def hf_outputs(model, clip: ReferenceClip, features, **kwargs):
    """transformers' own forward over prompt + answer, splicing the audio itself."""
    ids = torch.tensor(np.concatenate([clip.input_ids, clip.answer_ids]))[None]
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=torch.ones_like(ids), input_features=torch.tensor(features)[None],
                     feature_attention_mask=torch.tensor(clip.feature_mask)[None], **kwargs)


def answer_logp_from_logits(logits: torch.Tensor, prompt_length: int, answer) -> float:
    logp = torch.log_softmax(logits.double(), dim=-1)
    return sum(float(logp[prompt_length - 1 + j, y]) for j, y in enumerate(answer))


def projected_audio(model, clip: ReferenceClip, features) -> torch.Tensor:
    """The projector's output inside transformers' forward, for the valid tokens: [T, d]."""
    captured = []
    handle = model.model.multi_modal_projector.register_forward_hook(lambda m, i, o: captured.append(o))
    try:
        hf_outputs(model, clip, features)
    finally:
        handle.remove()
    n_tokens = int((clip.input_ids == model.config.audio_token_id).sum())
    return captured[0][0, :n_tokens]


def logp_with_audio(model, clip: ReferenceClip, audio: torch.Tensor) -> float:
    """logp of the answer with the placeholder rows replaced by audio [T, d]; full logits, default positions."""
    ids = torch.tensor(np.concatenate([clip.input_ids, clip.answer_ids]))
    with torch.no_grad():
        embeds = model.get_input_embeddings()(ids).clone()
        embeds[ids == model.config.audio_token_id] = audio
        logits = model(inputs_embeds=embeds[None]).logits[0]
    return answer_logp_from_logits(logits, len(clip.input_ids), clip.answer_ids)


def score(model, clip: ReferenceClip, **kwargs):
    return score_clip(model, clip.input_ids, clip.features, clip.feature_mask, clip.silence_features,
                      answer_ids=clip.answer_ids, clip_id=clip.clip_id, **kwargs)


# ----------------------------------------------------------------------------------------------
# Against transformers
# ----------------------------------------------------------------------------------------------


def test_logp_full_and_silence_equal_transformers_forward(model):
    clip = make_clip(model, 24_000)
    result = score(model, clip, chunk=16)
    prompt_length = len(clip.input_ids)
    full = answer_logp_from_logits(hf_outputs(model, clip, clip.features).logits[0], prompt_length, ANSWER)
    silent = answer_logp_from_logits(hf_outputs(model, clip, clip.silence_features).logits[0], prompt_length, ANSWER)
    assert result.logp_full == pytest.approx(full, abs=1e-4)
    assert result.logp_silence == pytest.approx(silent, abs=1e-4)
    assert abs(result.audio_evidence) > 0.05
    np.testing.assert_array_equal(result.answer_ids, ANSWER)
    np.testing.assert_allclose(result.fused, fuse_scores(result.local, result.global_, 0.5))
    assert {"encode", "answer", "attention", "silence", "local", "fusion", "total"} <= set(result.seconds)


def test_batched_occlusion_equals_one_gate_at_a_time(model):
    clip = make_clip(model, 24_000, seed=1)
    audio = projected_audio(model, clip, clip.features)
    silence = projected_audio(model, clip, clip.silence_features)
    n_tokens = audio.shape[0]
    for window in (1, 4):
        result = score(model, clip, window=window, chunk=16)
        assert n_tokens == 37 and result.local.shape == (n_tokens,)
        expected = np.empty(n_tokens)
        for t in range(n_tokens):
            lo, hi = max(t - (window - 1) // 2, 0), min(t - (window - 1) // 2 + window, n_tokens)
            gate = torch.ones(n_tokens, 1)
            gate[lo:hi] = 0
            expected[t] = result.logp_full - logp_with_audio(model, clip, gate * audio + (1 - gate) * silence)
        np.testing.assert_allclose(result.local, expected, atol=2e-5, err_msg=f"window {window}")
        assert np.abs(expected).max() > 1e-3


def test_occlusion_gate_windows():
    expected = np.array([
        [0, 0, 0, 1, 1],
        [0, 0, 0, 0, 1],
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0],
    ], float)
    np.testing.assert_array_equal(occlusion_gates(5, 4), expected)
    np.testing.assert_array_equal(occlusion_gates(3, 1), 1 - np.eye(3))
    with pytest.raises(ValueError, match="window"):
        occlusion_gates(3, 0)


def test_integrated_gradients_completeness(model):
    clip = make_clip(model, 32_000, seed=2)
    result = score(model, clip, estimator="integrated_gradients", ig_steps=64, chunk=32)
    evidence = result.audio_evidence
    assert abs(evidence) > 0.05, "the test needs audio evidence well above rounding"
    assert abs(result.local.sum() - evidence) <= 0.02 * abs(evidence)
    assert np.abs(result.local).max() < abs(evidence) * result.local.size


def test_integrated_gradients_chunking_does_not_change_the_result(model):
    clip = make_clip(model, 16_000, seed=3)
    whole = score(model, clip, estimator="integrated_gradients", ig_steps=6, chunk=6)
    pieces = score(model, clip, estimator="integrated_gradients", ig_steps=6, chunk=4)
    np.testing.assert_allclose(pieces.local, whole.local, rtol=1e-4, atol=1e-7)


def test_global_and_fastv_equal_direct_sums_over_attentions(any_model):
    clip = make_clip(any_model, 20_000, seed=4)
    result = score(any_model, clip, chunk=64)
    attentions = [a[0].numpy() for a in hf_outputs(any_model, clip, clip.features, output_attentions=True).attentions]
    s = len(clip.input_ids)
    positions = np.flatnonzero(clip.input_ids == any_model.config.audio_token_id)
    rows = [s - 1 + j for j in range(len(ANSWER))]
    expected_global = np.zeros(len(positions))
    for layer in attentions:
        for head in layer:
            for row in rows:
                expected_global += head[row, positions]
    k = min(2, len(attentions) - 1)
    expected_fastv = np.array([attentions[k][:, :s, p].mean() for p in positions])
    np.testing.assert_allclose(result.global_, expected_global, rtol=1e-5)
    np.testing.assert_allclose(result.fastv, expected_fastv, rtol=1e-5, atol=1e-9)
    assert expected_global.min() > 0 and expected_fastv.max() > 0


# ----------------------------------------------------------------------------------------------
# The answer
# ----------------------------------------------------------------------------------------------


@pytest.fixture
def audio_loving_model(model):
    """A copy whose LM head prefers the audio placeholder above every other token."""
    loving = copy.deepcopy(model)
    boost = torch.zeros(model.config.text_config.vocab_size)
    boost[model.config.audio_token_id] = 100.0
    loving.lm_head.register_forward_hook(lambda module, inputs, logits: logits + boost)
    return loving


def test_greedy_answer_never_emits_the_placeholder_and_stops_before_eos(audio_loving_model):
    model = audio_loving_model
    clip = make_clip(model, 16_000, seed=5)
    clip = ReferenceClip(clip.input_ids, clip.features, clip.feature_mask, clip.silence_features, None, "clip-7")
    ids = torch.tensor(clip.input_ids)[None]
    with torch.no_grad():
        unsuppressed = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                      input_features=torch.tensor(clip.features)[None],
                                      feature_attention_mask=torch.tensor(clip.feature_mask)[None],
                                      do_sample=False, max_new_tokens=3)[0, ids.shape[1]:]
    assert int(unsuppressed[0]) == model.config.audio_token_id

    free = score(model, clip, max_new_tokens=6).answer_ids
    assert len(free) == 6 and model.config.audio_token_id not in free
    new = [j for j in range(1, 6) if free[j] not in free[:j]]
    assert new, f"the free answer {free} repeats one token; pick another seed"
    model.generation_config.eos_token_id = [int(free[new[0]]), model.config.audio_token_id]
    stopped = score(model, clip, max_new_tokens=6).answer_ids
    np.testing.assert_array_equal(stopped, free[: new[0]])

    model.generation_config.eos_token_id = int(free[0])
    with pytest.raises(ValueError, match="clip-7.*empty"):
        score(model, clip, max_new_tokens=6)


# ----------------------------------------------------------------------------------------------
# The strong mode (SDPA wherever no attention map is read)
# ----------------------------------------------------------------------------------------------


def attention_implementations(model) -> tuple[str, str, str]:
    return (model.config._attn_implementation, model.model.language_model.config._attn_implementation,
            model.model.audio_tower.config._attn_implementation)


@pytest.mark.parametrize("estimator,target,local_sign,local_smooth", [
    ("occlusion", "logp", "signed", 1), ("integrated_gradients", "logp", "signed", 1),
    ("occlusion", "log_odds", "magnitude", 3), ("integrated_gradients", "log_odds", "magnitude", 5)])
def test_strong_mode_equals_eager_mode(any_model, estimator, target, local_sign, local_smooth):
    clip = make_clip(any_model, 20_000, seed=4)
    options = dict(estimator=estimator, target=target, local_sign=local_sign, local_smooth=local_smooth, ig_steps=6,
                   chunk=8)
    eager = score(any_model, clip, mode="eager", **options)
    strong = score(any_model, clip, mode="strong", **options)
    assert attention_implementations(any_model) == ("eager", "eager", "eager")
    np.testing.assert_array_equal(strong.answer_ids, eager.answer_ids)
    scale = max(abs(eager.logp_full), abs(eager.logp_silence))
    assert abs(strong.logp_full - eager.logp_full) <= 1e-6 * scale
    assert abs(strong.logp_silence - eager.logp_silence) <= 1e-6 * scale
    np.testing.assert_allclose(strong.local, eager.local, rtol=0, atol=1e-6 * scale)
    np.testing.assert_allclose(strong.global_, eager.global_, rtol=1e-6)
    np.testing.assert_allclose(strong.fastv, eager.fastv, rtol=1e-6)
    normalised_noise = np.abs(strong.local - eager.local).max() / np.ptp(eager.local)  # min-max scales the noise
    np.testing.assert_allclose(strong.fused, eager.fused, rtol=0, atol=2 * normalised_noise + 1e-6)


def test_strong_mode_runs_sdpa_on_the_passes_without_maps(model):
    clip = make_clip(model, 12_000, seed=2)
    seen: list[str] = []
    handle = model.model.language_model.layers[0].self_attn.register_forward_pre_hook(
        lambda module, args: seen.append(module.config._attn_implementation))
    try:
        score(model, clip, mode="strong", estimator="occlusion", chunk=64)
    finally:
        handle.remove()
    assert seen == ["eager", "sdpa", "sdpa"]  # the attention pass, silence, one occlusion batch


def test_strong_mode_takes_a_model_loaded_with_sdpa(tmp_path):
    from transformers import Qwen2AudioForConditionalGeneration

    directory = make_hf_checkpoint(tmp_path, "gqa3_mel80")
    eager = load_hf_eager(directory)
    sdpa = Qwen2AudioForConditionalGeneration.from_pretrained(directory, attn_implementation="sdpa").eval()
    clip = make_clip(eager, 16_000, seed=1)
    ours = score(sdpa, clip, mode="strong", chunk=16)
    theirs = score(eager, clip, mode="eager", chunk=16)
    np.testing.assert_allclose(ours.global_, theirs.global_, rtol=1e-6)
    np.testing.assert_allclose(ours.local, theirs.local, rtol=0, atol=1e-6 * abs(theirs.logp_full))
    assert attention_implementations(sdpa) == ("sdpa", "sdpa", "sdpa")
    with pytest.raises(ValueError, match="attn_implementation='eager'"):
        score(sdpa, clip, mode="eager")
    with pytest.raises(ValueError, match="mode must be one of"):
        score(eager, clip, mode="fast")


def test_attention_implementation_restores_each_sub_model(model):
    model.model.audio_tower.config._attn_implementation = "sdpa"
    try:
        with attention_implementation(model, "sdpa"):
            assert attention_implementations(model) == ("sdpa", "sdpa", "sdpa")
        assert attention_implementations(model) == ("eager", "eager", "sdpa")
        with attention_implementation(model, None):
            assert attention_implementations(model) == ("eager", "eager", "sdpa")
    finally:
        model.model.audio_tower.config._attn_implementation = "eager"


# ----------------------------------------------------------------------------------------------
# Many clips and bad inputs
# ----------------------------------------------------------------------------------------------


def test_score_clips_equals_score_clip_per_clip(model):
    clips = [make_clip(model, 12_000, seed=6, clip_id="a"), make_clip(model, 20_000, seed=7, clip_id="b")]
    seen = []
    results = score_clips(model, clips, chunk=8, progress=lambda i, r: seen.append(i))
    assert seen == [0, 1]
    for clip, result in zip(clips, results):
        assert result.local.shape == (int((clip.input_ids == model.config.audio_token_id).sum()),)
    single = score(model, clips[1], chunk=64)
    np.testing.assert_allclose(results[1].local, single.local, atol=2e-5)
    np.testing.assert_allclose(results[1].global_, single.global_, rtol=1e-6)


def test_bad_inputs_are_named(model):
    clip = make_clip(model, 8_000, clip_id="clip-3")
    with pytest.raises(ValueError, match="clip-3.*placeholders"):
        score_clip(model, clip.input_ids[1:-3][:-1], clip.features, clip.feature_mask, clip.silence_features,
                   answer_ids=ANSWER, clip_id="clip-3")
    with pytest.raises(ValueError, match="clip-3: features must have shape"):
        score_clip(model, clip.input_ids, clip.features[:, :1000], clip.feature_mask, clip.silence_features,
                   answer_ids=ANSWER, clip_id="clip-3")
    with pytest.raises(ValueError, match="estimator"):
        score(model, clip, estimator="gradient")
    model.train()
    try:
        with pytest.raises(ValueError, match="training mode"):
            score(model, clip)
    finally:
        model.eval()


def test_reference_does_not_import_jax():
    code = "import sys, agac_jax.reference; assert not any(m.split('.')[0] in ('jax', 'flax') for m in sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# ----------------------------------------------------------------------------------------------
# Fusion, frames and keep on hand-made arrays
# ----------------------------------------------------------------------------------------------


def test_minmax_and_fusion():
    np.testing.assert_allclose(minmax_normalize(np.array([2.0, 4.0, 6.0, 3.0])), [0, 0.5, 1, 0.25])
    np.testing.assert_array_equal(minmax_normalize(np.full(4, 3.5)), np.zeros(4))
    local, global_ = np.array([0.0, 1.0, 2.0]), np.array([10.0, 30.0, 20.0])
    np.testing.assert_allclose(fuse_scores(local, global_, 1.0), [0, 0.5, 1])
    np.testing.assert_allclose(fuse_scores(local, global_, 0.0), [0, 1, 0.5])
    np.testing.assert_allclose(fuse_scores(local, global_, 0.5), [0, 0.75, 0.75])
    np.testing.assert_allclose(fuse_scores(local, np.ones(3), 0.25), [0, 0.125, 0.25])
    with pytest.raises(ValueError, match="alpha"):
        fuse_scores(local, global_, 1.5)


def test_token_scores_to_frames_on_each_rate():
    scores = np.array([1.0, 3.0, 5.0, 7.0])
    np.testing.assert_allclose(token_scores_to_frames(scores, 2560, 50), scores)
    np.testing.assert_allclose(token_scores_to_frames(scores, 2560, 25), [2.0, 6.0])
    np.testing.assert_allclose(token_scores_to_frames(scores, 2560, 100), np.repeat(scores, 2))
    # Frame 1 at rate 25 is clipped to [1280, 1980): 640 samples of token 2 and 60 of token 3.
    np.testing.assert_allclose(token_scores_to_frames(scores, 1980, 25), [2.0, (640 * 5 + 60 * 7) / 700])
    # Samples past the last token: the frame [2560, 2600) at rate 100 takes the last token's score.
    np.testing.assert_allclose(token_scores_to_frames(scores, 2600, 100), [*np.repeat(scores, 2), 7.0])
    with pytest.raises(ValueError, match="rate"):
        token_scores_to_frames(scores, 2560, 30)


def test_keep_counts_are_exact_for_decimal_rho():
    assert keep_count(100, 0.7) == 70 and keep_count(100, 0.07) == 7 and np.ceil(0.07 * 100) == 8
    assert keep_count(10, "0.35") == 4 and keep_count(3, "1/3") == 1 and keep_count(7, 1) == 7
    kept = reference_keep(np.arange(100.0)[::-1], 64_000, 50, 0.7)
    np.testing.assert_array_equal(kept, np.arange(70))
    for rho in (0, 1.5, -0.2, "x", True):
        with pytest.raises(ValueError, match="rho"):
            keep_count(10, rho)


def test_keep_ties_go_to_the_earlier_frame():
    np.testing.assert_array_equal(reference_keep(np.ones(10), 6_400, 50, 0.3), [0, 1, 2])
    np.testing.assert_array_equal(reference_keep(np.array([1.0, 5, 5, 3, 5]), 3_200, 50, 0.4), [1, 2])
    np.testing.assert_array_equal(reference_keep(np.array([2.0, 1, 1, 2]), 2_560, 25, 0.5), [0])


@settings(max_examples=60, deadline=None)
@given(
    scores=st.lists(st.integers(0, 5).map(float), min_size=1, max_size=40),
    extra=st.integers(0, 639),
    rate=st.sampled_from([25, 50, 100]),
    percent=st.integers(1, 100),
)
def test_kept_frames_are_the_k_best_in_time_order(scores, extra, rate, percent):
    scores = np.array(scores)
    n_samples = 640 * (len(scores) - 1) + 1 + extra
    frames = token_scores_to_frames(scores, n_samples, rate)
    rho = percent / 100
    kept = reference_keep(scores, n_samples, rate, rho)
    assert len(kept) == int(np.ceil(Fraction(str(rho)) * len(frames)))
    assert np.all(np.diff(kept) > 0)
    dropped = np.setdiff1d(np.arange(len(frames)), kept)
    if len(dropped):
        assert frames[kept].min() >= frames[dropped].max()
        tied = frames[dropped] == frames[kept].min()
        assert np.all(dropped[tied] > kept[frames[kept] == frames[kept].min()].max())


def test_the_reference_command_scores_files_without_jax(tmp_path):
    import json

    import soundfile

    from tests.tiny_models import make_scoring_checkpoint

    directory = make_scoring_checkpoint(tmp_path / "model")
    files = []
    for i, n in enumerate((20_000, 36_000)):
        t = np.arange(n) / 16_000
        files.append(tmp_path / f"clip{i}.wav")
        soundfile.write(files[-1], (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 16_000, subtype="FLOAT")
    out = tmp_path / "ref.json"
    check = ("import sys, runpy\nsys.argv = sys.argv[1:]\ntry:\n    runpy.run_module('agac_jax.reference.score_files', "
             "run_name='__main__')\nexcept SystemExit as e:\n    assert e.code == 0\n"
             "assert not any(m.split('.')[0] in ('jax', 'flax') for m in sys.modules)")
    args = ["score_files", f"--checkpoint={directory}", *[f"--audio={f}" for f in files], "--question=is there a tone ?",
            "--max_new_tokens=3", f"--output={out}"]
    subprocess.run([sys.executable, "-c", check, *args], check=True, timeout=300)
    records = json.loads(out.read_text())
    assert [r["file"] for r in records] == [str(f) for f in files]
    for record, n in zip(records, (20_000, 36_000)):
        tokens = encoder_output_lengths(-(-n // 160))[1]
        assert 1 <= len(record["answer_ids"]) <= 3
        assert len(record["local"]) == len(record["global_"]) == len(record["fused"]) == tokens
        assert 0.0 <= min(record["fused"]) and max(record["fused"]) <= 1.0 + 1e-9
