"""`ScoringConfig.cpu_ynnpack`: the scoring programs without XLA:CPU's YNNPACK fusions give the same scores
(to float32 rounding) and carry no YNNPACK fusion."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from agac_jax.scoring.scorer import Scorer, ScoringConfig
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
