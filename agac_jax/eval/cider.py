"""CIDEr-D (Vedantam et al. 2015) as coco-caption computes it, in numpy: no download, no JVM.

Definition, for a candidate caption c and the reference captions R of its sample:
- Tokens: `tokenize` (below), standing in for coco-caption's PTBTokenizer, which needs Java.
- n-grams of n = 1..4; a caption's vector for n holds, per n-gram, its count in the caption times
  idf = log(N) - log(max(1, df)): N the number of samples (reference sets) of the corpus and df the
  number of samples whose references hold the n-gram. An n-gram no reference holds gets idf log(N).
- For each reference r and each n: the clipped cosine sum_g min(c_g, r_g) r_g / (|c| |r|) (0 when
  either vector is zero), times the Gaussian length penalty exp(-delta^2 / (2 sigma^2)), sigma = 6,
  delta the difference of the captions' lengths. As in coco-caption, a caption's length is its
  number of bigrams (one less than its words, 0 for a one-word or empty caption).
- The sample's score: the mean over n, then the mean over its references, times 10. The corpus
  score is the mean over samples. An empty candidate scores 0.

So a candidate equal to its only reference scores 10 x (the share of n = 1..4 whose vector is not
zero): 7.5 for a three-word caption, which has no 4-gram.

Tokenization: lower-cased; the clitics n't, 's, 're, 've, 'll, 'd, 'm split off as PTB does; words
keep inner hyphens and dots ("well-known", "3.5"); the punctuation tokens coco-caption removes after
PTBTokenizer (. , ? ! : ; - -- ... quotes and brackets) are dropped; other symbols stay tokens.
Scores can differ from coco-caption's where PTB tokenizes otherwise (abbreviations, odd symbols).
"""

from __future__ import annotations

import collections
import math
import re
from collections.abc import Sequence

import numpy as np

MAX_N = 4
SIGMA = 6.0
SCALE = 10.0

_CLITIC = re.compile(r"(?<=[a-z0-9])(n't|'s|'re|'ve|'ll|'d|'m)\b")
_TOKEN = re.compile(r"n't|'[a-z]+|[a-z0-9]+(?:[-.'][a-z0-9]+)*|\S")
_DROPPED = frozenset(".,?!:;-'\"`()[]{}")

Ngrams = collections.Counter


def tokenize(text: str) -> list[str]:
    """The caption's tokens as the metric reads them (module docstring)."""
    text = _CLITIC.sub(r" \1", text.lower())
    return [token for token in _TOKEN.findall(text) if token not in _DROPPED]


def normalize(text: str) -> str:
    """The caption's tokens joined by single spaces: two captions the metric cannot tell apart are equal."""
    return " ".join(tokenize(text))


def ngram_counts(tokens: Sequence[str], max_n: int = MAX_N) -> Ngrams:
    """Counts of every n-gram (as a tuple of tokens) for n = 1..max_n."""
    counts: Ngrams = collections.Counter()
    for n in range(1, max_n + 1):
        counts.update(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
    return counts


class CiderD:
    """CIDEr-D with the document frequencies of one corpus of reference sets (one set per sample)."""

    def __init__(self, references: Sequence[Sequence[str]], max_n: int = MAX_N, sigma: float = SIGMA):
        """`references`: each sample's reference captions; their n-grams give the idf."""
        if not references:
            raise ValueError("CIDEr-D needs at least one sample's references")
        self.max_n = max_n
        self.sigma = sigma
        self.log_samples = math.log(len(references))
        self.document_frequency: Ngrams = collections.Counter()
        for captions in references:
            self.document_frequency.update(set().union(*(ngram_counts(tokenize(c), max_n) for c in captions)))

    def _vectors(self, counts: Ngrams) -> tuple[list[dict[tuple, float]], np.ndarray, int]:
        """Per n, the tf-idf vector; the vectors' norms [max_n]; the caption's length (its bigrams)."""
        vectors: list[dict[tuple, float]] = [{} for _ in range(self.max_n)]
        for gram, count in counts.items():
            idf = self.log_samples - math.log(max(1.0, self.document_frequency[gram]))
            vectors[len(gram) - 1][gram] = count * idf
        norms = np.asarray([math.sqrt(sum(v * v for v in vector.values())) for vector in vectors])
        length = sum(count for gram, count in counts.items() if len(gram) == 2)
        return vectors, norms, length

    def _similarity(self, candidate, reference) -> np.ndarray:
        """[max_n]: the clipped cosine of each order, times the length penalty."""
        (c_vectors, c_norms, c_length), (r_vectors, r_norms, r_length) = candidate, reference
        values = np.zeros(self.max_n)
        for n in range(self.max_n):
            if c_norms[n] > 0 and r_norms[n] > 0:
                dot = sum(min(value, r_vectors[n].get(gram, 0.0)) * r_vectors[n].get(gram, 0.0)
                          for gram, value in c_vectors[n].items())
                values[n] = dot / (c_norms[n] * r_norms[n])
        delta = float(c_length - r_length)
        return values * math.exp(-(delta**2) / (2 * self.sigma**2))

    def score(self, candidate: str, references: Sequence[str]) -> float:
        """CIDEr-D of one candidate against its sample's references."""
        if not references:
            raise ValueError("a candidate needs at least one reference")
        c = self._vectors(ngram_counts(tokenize(candidate), self.max_n))
        total = sum(self._similarity(c, self._vectors(ngram_counts(tokenize(r), self.max_n))) for r in references)
        return float(SCALE * np.mean(total) / len(references))

    def scores(self, candidates: Sequence[str], references: Sequence[Sequence[str]]) -> np.ndarray:
        """[len(candidates)]: each candidate's CIDEr-D against its own references."""
        if len(candidates) != len(references):
            raise ValueError(f"{len(candidates)} candidates but {len(references)} reference sets")
        return np.asarray([self.score(c, r) for c, r in zip(candidates, references)], np.float64)


def corpus_cider_d(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> tuple[float, np.ndarray]:
    """(corpus score, per-sample scores) with the idf of `references` itself, as coco-caption's Cider."""
    per_sample = CiderD(references).scores(candidates, references)
    return float(per_sample.mean()), per_sample
