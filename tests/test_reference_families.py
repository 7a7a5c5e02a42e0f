"""The whole method across frameworks for Audio Flamingo 3 and Voxtral: the JAX Scorer against the PyTorch
reference (`agac_jax.reference.torch_scores`) on transformers' own models, as test_scoring_vs_reference.py
does for Qwen2-Audio, with its tolerances.

One tiny random directory per family (the released layout), two short clips of one bucket (one compiled
program), the poster's local score (occlusion of one token, logp, signed), float32. The reference reads the
JAX side's prompt ids and answer ids (`ClipScores`) and features (`adapter.inputs`, in whole 30 s windows as
the processor gives them) and must give the same logp(1), logp(0), local, global, FastV and fused scores and
the same kept frames. Voxtral: only the tokens that read the clip are gated and scored (the rest of the
window's 375 are zero on the JAX side). A cheap test per family checks the reference's two-window encoding
(clips over 30 s) against the Flax port's `encode_audio`.
"""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import pytest
import torch

from agac_jax.models.audio_flamingo3 import parity as af3_parity
from agac_jax.models.voxtral import parity as voxtral_parity
from agac_jax.reference import torch_scores
from agac_jax.scoring.scorer import POSTER_LOCAL_SCORE, Scorer, ScoringConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
RATES = (25, 50, 100)  # test_scoring_vs_reference's
WINDOW = 3000  # mel frames of a 30 s encoder window
QUESTIONS = ["What is in the audio?", "Is there a dog barking?"]
SECONDS = (1.9, 1.3)  # one bucket: one compiled program per family
TOLERANCE = 1e-3  # test_scoring_vs_reference's
KEEP = 0.7


def make_clips(seconds, seed=5):
    rng = np.random.default_rng(seed)
    clips = []
    for k, s in enumerate(seconds):
        t = np.arange(int(s * 16_000)) / 16_000
        tone = 0.3 * np.sin(2 * np.pi * (440 + 220 * k) * t) * (t > s / 3)
        clips.append((tone + 0.05 * rng.standard_normal(t.size)).astype(np.float32))
    return clips


def hf_model(family, directory):
    from transformers import AudioFlamingo3ForConditionalGeneration, VoxtralForConditionalGeneration

    cls = AudioFlamingo3ForConditionalGeneration if family == "audio_flamingo3" else VoxtralForConditionalGeneration
    return cls.from_pretrained(str(directory), attn_implementation="eager", dtype=torch.float32).eval()


@pytest.fixture(scope="module", params=["audio_flamingo3", "voxtral"])
def family(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    if request.param == "audio_flamingo3":
        directory = af3_parity.random_init_directory(CONFIGS / "tiny_audio_flamingo3_random.json", seed=1,
                                                     out=root / "model")
    else:
        directory = voxtral_parity.random_init_directory(CONFIGS / "tiny_voxtral_random.json", seed=0,
                                                         directory=root / "model")
    return request.param, directory, hf_model(request.param, directory)


@pytest.fixture(scope="module")
def scored(family):
    """The JAX Scorer's greedy answers and scores of both clips (one batch)."""
    _, directory, _ = family
    config = ScoringConfig(**POSTER_LOCAL_SCORE, alpha=0.5, batch_size=2, max_new_tokens=3, keep=KEEP, rates=RATES,
                           occlusion_chunk=25, occlusion_segments=1)
    scorer = Scorer.from_directory(directory, config)
    clips = make_clips(SECONDS)
    assert len({scorer.bucket_frames(len(c)) for c in clips}) == 1
    return scorer, clips, scorer.score(clips, QUESTIONS)


def reference_inputs(scorer, scores, clip):
    """The clip's features, valid-frame mask and silence in whole 30 s windows, side by side
    [n_mels, W x 3000] (the JAX adapter's layout; the processor's windows)."""
    windows = -(-len(clip) // (WINDOW * 160))
    inputs = scorer.adapter.inputs([clip], [scores.question], windows * WINDOW, padding_side="right", silence=True)
    np.testing.assert_array_equal(inputs.input_ids[0, :len(scores.input_ids)], scores.input_ids)
    mask = (np.arange(windows * WINDOW) < inputs.mel_lengths[0]).astype(np.int64)
    return inputs.features[0], mask, inputs.silence_features[0]


def test_jax_scores_equal_the_pytorch_reference(family, scored):
    """Both clips in eager mode, the first also in strong mode (SDPA wherever no attention map is read)."""
    name, _, hf = family
    scorer, clips, out = scored
    for i, (scores, clip) in enumerate(zip(out, clips)):
        features, mask, silence = reference_inputs(scorer, scores, clip)
        gated = scorer.audio_token_count(len(clip)) if name == "audio_flamingo3" else -(-len(clip) // 1280)
        for mode in torch_scores.MODES if i == 0 else ("eager",):
            with torch.no_grad():
                ref = torch_scores.score_clip(hf, scores.input_ids, features, mask, silence, estimator="occlusion",
                                              window=1, target="logp", alpha=0.5, answer_ids=scores.answer_ids,
                                              mode=mode)
            assert len(ref.local) == gated and ref.token_samples == (640 if name == "audio_flamingo3" else 1280)
            assert scores.logp_full == pytest.approx(ref.logp_full, rel=TOLERANCE)
            assert scores.logp_silence == pytest.approx(ref.logp_silence, rel=TOLERANCE)
            for field, ours, theirs in (("local", scores.local, ref.local), ("global", scores.global_, ref.global_),
                                        ("fastv", scores.fastv, ref.fastv), ("fused", scores.fused, ref.fused)):
                scale = abs(ref.logp_full) if field == "local" else np.abs(theirs).max()
                err = np.abs(ours[:gated] - theirs).max() / scale
                print(f"{name} clip {i} {mode} {field}: {err:.2e} relative")
                assert err <= TOLERANCE, f"{name} clip {i} {mode} {field}: {err:.2e} relative"
                assert np.all(ours[gated:] == 0), f"{field}: a token that reads no audio has a score"
            for rate in RATES:
                kept = torch_scores.grid_keep(ref.fused, scores.n_samples, rate, KEEP, ref.token_samples)
                np.testing.assert_array_equal(scores.keep[rate], kept, err_msg=f"{name} {mode} rate {rate}")


def test_the_reference_greedy_answer_is_the_jax_one(family, scored):
    """The family's audio inputs reach transformers' `generate`: the same greedy answer as the JAX Scorer's."""
    _, _, hf = family
    scorer, clips, out = scored
    scores, clip = out[1], clips[1]
    features, mask, silence = reference_inputs(scorer, scores, clip)
    layout = torch_scores.audio_family(hf).inputs(hf, features, mask, silence, "clip", torch.float32,
                                                  torch.device("cpu"))
    with torch.no_grad():
        answer = torch_scores.greedy_answer(hf, torch.as_tensor(scores.input_ids).long(), layout[0], layout[1],
                                            max_new_tokens=3, clip_id="clip")
    np.testing.assert_array_equal(answer.numpy(), scores.answer_ids)


def test_two_windows_encode_as_the_flax_port(family, scored):
    """A clip over 30 s (two windows): the reference's clip and silence embeddings and gated tokens against
    the Flax port's `encode_audio`, the features in the processor's layout [W, n_mels, 3000] (the scoring
    test gives them side by side)."""
    name, _, hf = family
    scorer = scored[0]
    clip = make_clips((31.3,))[0]
    inputs = scorer.adapter.inputs([clip], ["What is in the audio?"], 2 * WINDOW, padding_side="right", silence=True)
    model, variables = scorer.model, {"params": scorer.params}
    encode = jax.jit(lambda f, n: model.apply(variables, f, n, method=model.encode_audio))
    audio, n_tokens = encode(inputs.features, inputs.mel_lengths)
    quiet, _ = encode(inputs.silence_features, inputs.mel_lengths)
    n_tokens = int(n_tokens[0])
    mask = (np.arange(2 * WINDOW) < inputs.mel_lengths[0]).astype(np.int64)
    family_of = torch_scores.audio_family(hf)
    windows = lambda x: np.ascontiguousarray(x.reshape(x.shape[0], 2, WINDOW).transpose(1, 0, 2))
    tensors = family_of.inputs(hf, windows(inputs.features[0]), mask.reshape(2, WINDOW),
                               windows(inputs.silence_features[0]), "clip", torch.float32, torch.device("cpu"))
    with torch.no_grad():
        ref_audio, ref_silence, gated = family_of.encode(hf, *tensors)
    assert ref_audio.shape[0] == n_tokens == int(np.sum(inputs.input_ids[0] == hf.config.audio_token_id))
    heard = n_tokens if name == "audio_flamingo3" else -(-len(clip) // 1280)
    assert heard == (n_tokens if gated is None else int(gated.sum())) and (gated is None or gated[:heard].all())
    for ours, theirs in ((audio[0, :n_tokens], ref_audio), (quiet[0, :n_tokens], ref_silence)):
        err = np.abs(np.asarray(ours) - theirs.numpy()).max() / np.abs(theirs.numpy()).max()
        print(f"{name} two windows: {err:.2e} relative")
        assert err <= 1e-4, f"{name}: {err:.2e} relative"
