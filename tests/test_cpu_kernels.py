"""The XLA:CPU choices of the scoring programs: without YNNPACK's fusions (`ScoringConfig.cpu_ynnpack`) and
with occlusion gates in blocks (`occlusion_gate_batch`) they give the same scores (to float32 rounding), and
their long reductions stay whole (`CPU_SCORING_OPTIONS`)."""

from __future__ import annotations

import re

import jax
import numpy as np
import pytest

from agac_jax.scoring.scorer import CPU_SCORING_OPTIONS, Scorer, ScoringConfig
from tests.tiny_models import make_scoring_checkpoint

QUESTIONS = ["is there a tone ?", "is there a chirp ?"]


@pytest.fixture(scope="module")
def directory(tmp_path_factory):
    return make_scoring_checkpoint(tmp_path_factory.mktemp("cpu_kernels"), seed=2)


def clips() -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    t = np.arange(40_000) / 16_000
    tone = 0.3 * np.sin(2 * np.pi * 440 * t) * (t > 1.0) + 0.05 * rng.standard_normal(t.size)
    return [tone.astype(np.float32), (0.1 * rng.standard_normal(30_000)).astype(np.float32)]


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="an XLA:CPU option")
@pytest.mark.parametrize("estimator", ["integrated_gradients"])
def test_scores_without_ynnpack_equal_the_default(directory, estimator):
    results, texts = {}, {}
    for ynnpack in (True, False):
        scorer = Scorer.from_directory(directory, ScoringConfig(estimator=estimator, batch_size=2, max_new_tokens=3,
                                                                ig_steps=4, occlusion_chunk=64,
                                                                cpu_ynnpack=ynnpack))
        results[ynnpack] = scorer.score(clips(), QUESTIONS)
        texts[ynnpack] = "".join(executable.as_text() for executable in scorer.executables.values())
    assert "__ynn_fusion" in texts[True] and "__ynn_fusion" not in texts[False]
    for ours, default in zip(results[False], results[True]):
        np.testing.assert_array_equal(ours.answer_ids, default.answer_ids)
        scale = max(abs(default.logp_full), abs(default.logp_silence))
        assert ours.logp_full == pytest.approx(default.logp_full, abs=1e-5 * scale)
        np.testing.assert_allclose(ours.local, default.local, rtol=0, atol=1e-5 * scale)
        np.testing.assert_allclose(ours.global_, default.global_, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(ours.fastv, default.fastv, rtol=1e-5, atol=1e-7)


TREE_REDUCTION = re.compile(r"reduce-window\([^\n]*stride=")  # the rewrite's strided partial reductions


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU options")
def test_the_scoring_options_keep_long_reductions_whole():
    """XLA:CPU splits a softmax over 330 keys into a strided reduce-window pass of its own; under
    CPU_SCORING_OPTIONS it does not, and the softmax is as accurate."""
    x = np.random.default_rng(0).standard_normal((4, 330)).astype(np.float32) * 4
    softmax = jax.jit(lambda v: jax.nn.softmax(v, axis=-1)).lower(x)
    default, ours = softmax.compile(), softmax.compile(compiler_options=CPU_SCORING_OPTIONS)
    assert TREE_REDUCTION.search(default.as_text()) and not TREE_REDUCTION.search(ours.as_text())
    exact = np.exp(x.astype(np.float64) - x.max(-1, keepdims=True))
    exact /= exact.sum(-1, keepdims=True)
    np.testing.assert_allclose(np.asarray(ours(x)), exact, rtol=2e-6, atol=1e-9)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU options")
def test_occlusion_gates_in_blocks_score_as_the_whole_chunk(directory):
    """`occlusion_gate_batch` 2 (a loop over blocks of two gates) gives the scores of the whole chunk
    of 16 vmapped at once, and no scoring program carries the tree-reduction rewrite."""
    results, texts = {}, {}
    for block in (2, 16):
        scorer = Scorer.from_directory(directory, ScoringConfig(estimator="occlusion", batch_size=2, max_new_tokens=3,
                                                                occlusion_chunk=16, occlusion_gate_batch=block))
        results[block] = scorer.score(clips(), QUESTIONS)
        texts[block] = "".join(executable.as_text() for executable in scorer.executables.values())
    assert texts[2].count(" while(") > texts[16].count(" while(")
    assert not any(TREE_REDUCTION.search(text) for text in texts.values())
    for blocked, whole in zip(results[2], results[16]):
        np.testing.assert_array_equal(blocked.answer_ids, whole.answer_ids)
        scale = max(abs(whole.logp_full), abs(whole.logp_silence))
        np.testing.assert_allclose(blocked.local, whole.local, rtol=0, atol=1e-5 * scale)
        np.testing.assert_array_equal(blocked.global_, whole.global_)
