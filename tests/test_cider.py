"""CIDEr-D (`eval.cider`) against values computed by hand on tiny corpora (L = log 2 below)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from agac_jax.eval import cider


def test_tokenize_lowercases_splits_clitics_and_drops_punctuation() -> None:
    assert cider.tokenize("A man's dog doesn't bark -- it's (well-known) 3.5 times!") == [
        "a", "man", "'s", "dog", "does", "n't", "bark", "it", "'s", "well-known", "3.5", "times"]
    assert cider.normalize("  Dogs,  barking... ") == "dogs barking"
    assert cider.tokenize("") == []


def test_ngram_counts_cover_orders_one_to_four() -> None:
    counts = cider.ngram_counts(["a", "b", "a", "b", "a"])
    assert counts[("a",)] == 3 and counts[("a", "b")] == 2 and counts[("a", "b", "a")] == 2
    assert counts[("a", "b", "a", "b")] == 1 and sum(counts.values()) == 5 + 4 + 3 + 2


def test_two_sample_corpus_by_hand() -> None:
    """refs "a dog barks" / "a cat sleeps": idf("a") = 0, every other n-gram L.
    Identical 3-word caption: orders 1-3 have cosine 1, order 4 has no vector: 10 x 3/4 = 7.5.
    "a dog sleeps" vs "a cat sleeps": unigrams L^2 / (sqrt2 L)^2 = 0.5, no shared bigram: 10 x 0.5/4."""
    mean, per_sample = cider.corpus_cider_d(["a dog barks", "a dog sleeps"], [["a dog barks"], ["a cat sleeps"]])
    np.testing.assert_allclose(per_sample, [7.5, 1.25], rtol=1e-12)
    assert mean == pytest.approx(4.375, rel=1e-12)


def test_clipping_and_the_length_penalty() -> None:
    """"dog dog" vs "a dog barks": unigram dot min(2L, L) L = L^2 (unclipped: 2 L^2), norms 2L and sqrt2 L;
    lengths 1 and 2 bigrams: penalty exp(-1/72)."""
    scorer = cider.CiderD([["a dog barks"], ["a cat sleeps"]])
    expected = 10 * (1 / (2 * math.sqrt(2))) * math.exp(-1 / 72) / 4
    assert scorer.score("dog dog", ["a dog barks"]) == pytest.approx(expected, rel=1e-12)
    assert scorer.score("", ["a dog barks"]) == 0.0


def test_several_references_are_averaged() -> None:
    """Sample 1 refs "a dog barks", "a dog runs": against the first [1, 1, 1, 0], against the second
    [0.5, 0.5, 0, 0]; mean over orders 4/4 = 1, over 2 references 0.5, x 10 = 5."""
    references = [["a dog barks", "a dog runs"], ["a cat sleeps"]]
    assert cider.CiderD(references).score("a dog barks", references[0]) == pytest.approx(5.0, rel=1e-12)


def test_errors() -> None:
    with pytest.raises(ValueError, match="at least one"):
        cider.CiderD([])
    with pytest.raises(ValueError, match="2 candidates but 1"):
        cider.CiderD([["a"]]).scores(["a", "b"], [["a"]])
