"""The whole method across frameworks: the JAX program against the PyTorch reference on transformers."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from agac_jax.audio.features import log_mel
from agac_jax.reference import torch_scores
from agac_jax.scoring.scorer import Scorer, ScoringConfig
from tests.tiny_models import load_hf_eager, make_scoring_checkpoint

QUESTIONS = ["is there a tone ?", "is there a chirp ?"]
RATES = (25, 50, 100)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    directory = make_scoring_checkpoint(tmp_path_factory.mktemp("xframework"), name="mha_mel128_tied", seed=3)
    rng = np.random.default_rng(5)
    t = np.arange(56_000) / 16_000
    clips = [(0.3 * np.sin(2 * np.pi * 440 * t) * (t > 1.2) + 0.05 * rng.standard_normal(t.size)).astype(np.float32),
             (0.1 * rng.standard_normal(38_400)).astype(np.float32)]
    return directory, load_hf_eager(directory), clips


def reference_scores(hf, scores, clip, estimator, ig_steps, local_sign="signed", local_smooth=1, target="logp",
                     alpha=0.5, mode="eager"):
    n_mels = hf.config.audio_config.num_mel_bins
    features, _ = log_mel(clip, n_mels, pad_to_samples=480_000)
    silence, _ = log_mel(np.zeros_like(clip), n_mels, pad_to_samples=480_000)
    mask = (np.arange(3000) < -(-len(clip) // 160)).astype(np.int64)
    with torch.no_grad():
        return torch_scores.score_clip(hf, torch.tensor(scores.input_ids), torch.tensor(features), torch.tensor(mask),
                                       torch.tensor(silence), estimator=estimator, ig_steps=ig_steps,
                                       local_sign=local_sign, local_smooth=local_smooth, target=target, alpha=alpha,
                                       answer_ids=torch.tensor(scores.answer_ids), mode=mode)


@pytest.mark.parametrize("estimator,target,local_sign,local_smooth", [
    ("occlusion", "logp", "signed", 1), ("integrated_gradients", "log_odds", "magnitude", 9)])
def test_jax_scores_equal_the_pytorch_reference(setup, estimator, target, local_sign, local_smooth):
    directory, hf, clips = setup
    config = ScoringConfig(batch_size=2, max_new_tokens=4, estimator=estimator, ig_steps=8, keep=0.7, rates=RATES,
                           target=target, local_sign=local_sign, local_smooth=local_smooth)
    for (scores, clip), mode in itertools.product(zip(Scorer.from_directory(directory, config).score(clips, QUESTIONS),
                                                      clips), torch_scores.MODES):
        ref = reference_scores(hf, scores, clip, estimator, 8, local_sign, local_smooth, target, config.alpha, mode)
        assert scores.logp_full == pytest.approx(ref.logp_full, rel=1e-3)
        assert scores.logp_silence == pytest.approx(ref.logp_silence, rel=1e-3)
        for name, ours, theirs in (("local", scores.local, ref.local), ("global", scores.global_, ref.global_),
                                   ("fastv", scores.fastv, ref.fastv)):
            scale = abs(ref.logp_full) if name == "local" and target == "logp" else np.abs(theirs).max()
            err = np.abs(ours - theirs).max() / scale
            assert err <= 1e-3, f"{name}: {err:.2e} relative"
        for rate in RATES:
            kept = torch_scores.reference_keep(ref.fused, scores.n_samples, rate, 0.7)
            np.testing.assert_array_equal(scores.keep[rate], kept, err_msg=f"rate {rate}")
