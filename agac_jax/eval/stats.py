"""Paired statistics of a sweep's rows: bootstrap intervals, exact McNemar tests, Holm, power, the paradox.

Every row of a sweep answers the same samples, so rows are compared sample by sample:

- **Resampling unit**: the sample (one clip-question pair). A bootstrap replicate draws N samples with
  replacement (multinomial counts, `BOOTSTRAP_RESAMPLES` replicates from `BOOTSTRAP_SEED`) and keeps
  every seed's record of each drawn sample, so seeds are nested inside samples: the interval holds
  the sampling error over the data set and the seed variation together. A metric of a replicate is
  the mean over seeds of that seed's metric on the drawn samples. All rows of a table share the same
  draws, so a difference of two rows is computed replicate by replicate (paired).
- **Intervals**: percentile intervals at `CONFIDENCE` (95%).
- **Tests**: the exact McNemar test of two rows on a per-sample binary outcome (the answer is correct;
  the answer equals the original one): with one seed, the exact binomial test on the discordant pairs;
  with several, the same sign test on each sample's seed-averaged outcome (samples whose average
  differs between the rows are the discordant ones). Holm's step-down correction across the rows of a
  table holds the family-wise error at 5%.
- **Power**: the smallest paired difference the exact McNemar test detects at 80% power for a planned
  number of samples and a discordance rate (Connor's normal approximation).
- **The consistency paradox**: A.C. split by whether the original answer was right; the share of
  samples that keep a wrong answer; the flips; Cohen's kappa; and, on the wrongly answered samples,
  the agreement beyond what the answer balance alone gives, whose interval decides whether repeated
  wrong answers are systematic or what a skewed answer distribution produces anyway.

A 2490-sample, 3-seed, 20-row table resamples in well under a second (a replicate is one matrix
product of the multinomial counts with the per-sample outcomes).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence

import numpy as np

BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
CONFIDENCE = 0.95
ALPHA = 0.05
POWER = 0.8
ANSWERS = ("yes", "no", "unknown")


@dataclasses.dataclass(frozen=True)
class Outcomes:
    """One row's per-sample outcomes on a shared sample order, [S seeds, N samples] each.

    Attributes:
        present: the record exists and did not fail.
        correct: the compressed answer equals the label.
        agree: the compressed answer equals the original answer.
        original_correct: the original answer equals the label.
        tp, fp, fn: the compressed answer against the label, "yes" the positive class.
        original, compressed: the parsed answers as indices of ANSWERS (-1 where absent).
    """

    present: np.ndarray
    correct: np.ndarray
    agree: np.ndarray
    original_correct: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    original: np.ndarray
    compressed: np.ndarray

    @property
    def num_samples(self) -> int:
        return int(self.present.shape[1])


def _answer_index(answer: str | None) -> int:
    return ANSWERS.index(answer) if answer in ANSWERS else -1


def outcomes(records: Iterable, sample_ids: Sequence[str], seeds: Sequence[int]) -> Outcomes:
    """The per-sample outcomes of one row's records (`results.ResultRecord`: label, parsed answers,
    `ok`) on the given sample order and seeds; samples or seeds without a successful record are absent."""
    column = {sample_id: n for n, sample_id in enumerate(sample_ids)}
    row = {seed: s for s, seed in enumerate(seeds)}
    shape = (len(seeds), len(sample_ids))
    present = np.zeros(shape, bool)
    original = np.full(shape, -1, np.int8)
    compressed = np.full(shape, -1, np.int8)
    label = np.full(shape, -1, np.int8)
    for record in records:
        s, n = row.get(record.seed), column.get(record.sample_id)
        if s is None or n is None or not record.ok:
            continue
        present[s, n] = True
        original[s, n] = _answer_index(record.parsed_original)
        compressed[s, n] = _answer_index(record.parsed_compressed)
        label[s, n] = _answer_index(record.label)
    yes, no = ANSWERS.index("yes"), ANSWERS.index("no")
    return Outcomes(
        present=present,
        correct=present & (compressed == label),
        agree=present & (compressed == original),
        original_correct=present & (original == label),
        tp=present & (compressed == yes) & (label == yes),
        fp=present & (compressed == yes) & (label == no),
        fn=present & (compressed != yes) & (label == yes),
        original=original,
        compressed=compressed,
    )


def bootstrap_counts(num_samples: int, resamples: int = BOOTSTRAP_RESAMPLES,
                     seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """How often each sample is drawn in each replicate: float64 [resamples, N], rows summing to N."""
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    rng = np.random.default_rng(seed)
    return rng.multinomial(num_samples, np.full(num_samples, 1.0 / num_samples), size=resamples).astype(np.float64)


def _seed_mean(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """[..., S] ratios averaged over the seeds whose denominator is positive (NaN where none is)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1), np.nan)
    valid = denominator > 0
    count = valid.sum(-1)
    total = np.where(valid, ratio, 0).sum(-1)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def metric_values(o: Outcomes, counts: np.ndarray) -> dict[str, np.ndarray]:
    """Accuracy, F1 and A.C. under sample weights `counts` [B, N]: {name: [B]}, each the mean over seeds
    of the seed's metric on the weighted samples."""
    weighted = lambda x: counts @ x.T.astype(np.float64)  # [B, S]
    n = weighted(o.present)
    tp, fp, fn = weighted(o.tp), weighted(o.fp), weighted(o.fn)
    return {
        "accuracy": _seed_mean(weighted(o.correct), n),
        "f1": _seed_mean(2 * tp, 2 * tp + fp + fn),
        "answer_consistency": _seed_mean(weighted(o.agree), n),
        "original_accuracy": _seed_mean(weighted(o.original_correct), n),
    }


@dataclasses.dataclass(frozen=True)
class Estimate:
    """A point estimate with its percentile interval."""

    value: float
    low: float
    high: float

    def holds_above(self, threshold: float) -> bool:
        return self.low > threshold

    def holds_below(self, threshold: float) -> bool:
        return self.high < threshold


def percentile_interval(replicates: np.ndarray, value: float, confidence: float = CONFIDENCE) -> Estimate:
    """`value` with the central `confidence` interval of its finite bootstrap replicates."""
    finite = replicates[np.isfinite(replicates)]
    if not finite.size or not math.isfinite(value):
        return Estimate(value, math.nan, math.nan)
    tail = 50 * (1 - confidence)
    low, high = np.percentile(finite, [tail, 100 - tail])
    return Estimate(float(value), float(low), float(high))


def estimates(o: Outcomes, counts: np.ndarray) -> dict[str, Estimate]:
    """Each metric of `metric_values` on all samples, with its interval over the replicates `counts`."""
    point = metric_values(o, np.ones((1, o.num_samples)))
    replicates = metric_values(o, counts)
    return {name: percentile_interval(replicates[name], float(point[name][0])) for name in point}


def paired_difference(a: Outcomes, b: Outcomes, counts: np.ndarray, metric: str) -> Estimate:
    """metric(a) - metric(b) on the same samples, its interval from the same replicates."""
    ones = np.ones((1, a.num_samples))
    value = float(metric_values(a, ones)[metric][0] - metric_values(b, ones)[metric][0])
    return percentile_interval(metric_values(a, counts)[metric] - metric_values(b, counts)[metric], value)


def binomial_two_sided(k: int, n: int) -> float:
    """Exact two-sided p of k successes in n fair trials: 2 P(X <= min(k, n - k)), at most 1."""
    if n == 0:
        return 1.0
    low = min(k, n - k)
    log_terms = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) - n * math.log(2)
                 for i in range(low + 1)]
    top = max(log_terms)
    tail = math.exp(top) * sum(math.exp(t - top) for t in log_terms)
    return min(1.0, 2 * tail)


@dataclasses.dataclass(frozen=True)
class McNemar:
    """An exact McNemar test: samples where only the first row's outcome holds (b), only the second's (c)."""

    b: int
    c: int
    p: float


def mcnemar_exact(b: int, c: int) -> McNemar:
    """The exact McNemar test on b and c discordant pairs (two-sided binomial, p = 0.5)."""
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0, got {b}, {c}")
    return McNemar(int(b), int(c), binomial_two_sided(int(b), int(b) + int(c)))


def paired_test(a: Outcomes, b: Outcomes, outcome: str) -> McNemar:
    """The exact McNemar (sign) test of a per-sample binary outcome ("correct" or "agree") between two
    rows, on each sample's mean over the seeds where both rows have it (module docstring)."""
    both = a.present & b.present
    x = np.where(both, getattr(a, outcome), 0).sum(0)
    y = np.where(both, getattr(b, outcome), 0).sum(0)
    return mcnemar_exact(int((x > y).sum()), int((x < y).sum()))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (NaN entries stay NaN and do not count)."""
    indexed = [(p, i) for i, p in enumerate(p_values) if math.isfinite(p)]
    indexed.sort()
    adjusted = [math.nan] * len(p_values)
    running, m = 0.0, len(indexed)
    for rank, (p, i) in enumerate(indexed):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted


def _normal_quantile(q: float) -> float:
    """The standard normal quantile (Acklam's rational approximation, |error| < 1.2e-9)."""
    if not 0 < q < 1:
        raise ValueError(f"q must lie in (0, 1), got {q}")
    a = (-3.969683028665376e01, 2.209460984245205e02, -2.759285104469687e02, 1.383577518672690e02,
         -3.066479806614716e01, 2.506628277459239e00)
    b = (-5.447609879822406e01, 1.615858368580409e02, -1.556989798598866e02, 6.680131188771972e01,
         -1.328068155288572e01)
    c = (-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e00, -2.549732539343734e00,
         4.374664141464968e00, 2.938163982698783e00)
    d = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e00, 3.754408661907416e00)
    if q < 0.02425 or q > 1 - 0.02425:
        t = math.sqrt(-2 * math.log(min(q, 1 - q)))
        x = (((((c[0] * t + c[1]) * t + c[2]) * t + c[3]) * t + c[4]) * t + c[5]) / \
            ((((d[0] * t + d[1]) * t + d[2]) * t + d[3]) * t + 1)
        return x if q < 0.5 else -x
    t = q - 0.5
    r = t * t
    return (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * t / \
        (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1)


def mcnemar_samples_needed(difference: float, discordance: float, alpha: float = ALPHA,
                           power: float = POWER) -> float:
    """Samples McNemar's test needs to detect a paired difference (Connor 1987): discordance is the
    share of samples whose outcome differs between the rows, at least |difference|."""
    delta = abs(difference)
    if not 0 < delta <= discordance <= 1:
        raise ValueError(f"need 0 < |difference| <= discordance <= 1, got {difference}, {discordance}")
    za, zb = _normal_quantile(1 - alpha / 2), _normal_quantile(power)
    return (za * math.sqrt(discordance) + zb * math.sqrt(discordance - delta ** 2)) ** 2 / delta ** 2


def detectable_difference(num_samples: int, discordance: float, alpha: float = ALPHA,
                          power: float = POWER) -> float:
    """The smallest paired difference (a fraction) McNemar's test detects at `power` with `num_samples`
    samples and a discordance rate; NaN when even a difference equal to the discordance is not enough."""
    if num_samples < 1 or not 0 < discordance <= 1:
        raise ValueError(f"need num_samples >= 1 and discordance in (0, 1], got {num_samples}, {discordance}")
    if mcnemar_samples_needed(discordance, discordance, alpha, power) > num_samples:
        return math.nan
    low, high = 1e-9, discordance
    for _ in range(100):
        mid = (low + high) / 2
        low, high = (mid, high) if mcnemar_samples_needed(mid, discordance, alpha, power) > num_samples else (low, mid)
    return high


@dataclasses.dataclass(frozen=True)
class Paradox:
    """How a row's answers relate to the original ones, over the samples and seeds it answered.

    Attributes:
        consistency_right, consistency_wrong: A.C. over the samples whose original answer is right / wrong.
        same_wrong: the share of all samples whose compressed answer repeats a wrong original answer.
        flips: {(original, compressed): share of all samples} for each pair of different answers.
        kappa: Cohen's kappa of original and compressed answers over all samples, with its interval.
        excess_wrong: A.C. on the wrongly answered samples minus the agreement the answer balance alone
            gives there (sum over answers k of P(original = k | wrong) P(compressed = k)), with its
            interval: above 0, the compressed answers repeat the wrong ones more than chance would.
    """

    consistency_right: float
    consistency_wrong: float
    same_wrong: float
    flips: dict[tuple[str, str], float]
    kappa: Estimate
    excess_wrong: Estimate

    @property
    def verdict(self) -> str:
        """'systematic' (excess_wrong's interval above 0), 'balance' (below or about 0: the answer balance
        explains the repeated wrong answers) or 'cannot tell' (no wrong answers, or the interval spans 0)."""
        if not math.isfinite(self.excess_wrong.low):
            return "cannot tell"
        if self.excess_wrong.low > 0:
            return "systematic"
        return "balance" if self.excess_wrong.high <= 0 else "cannot tell"


def _cells(o: Outcomes, counts: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Weighted (original, compressed) answer counts over the samples in mask, pooled over seeds: [B, K, K]."""
    k = len(ANSWERS)
    joint = np.zeros((counts.shape[0], k, k))
    for i in range(k):
        for j in range(k):
            joint[:, i, j] = counts @ (mask & (o.original == i) & (o.compressed == j)).sum(0)
    return joint


def _kappa_and_excess(o: Outcomes, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cohen's kappa over all samples and excess_wrong (`Paradox`), per replicate [B] each."""
    every = _cells(o, counts, o.present)
    wrong = _cells(o, counts, o.present & ~o.original_correct)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = every / every.sum((1, 2))[:, None, None]
        observed = np.trace(p, axis1=1, axis2=2)
        chance = (p.sum(2) * p.sum(1)).sum(1)
        kappa = np.where(chance < 1, (observed - chance) / (1 - chance), np.nan)
        w = wrong / wrong.sum((1, 2))[:, None, None]
        excess = np.trace(w, axis1=1, axis2=2) - (w.sum(2) * p.sum(1)).sum(1)
    return kappa, excess


def paradox(o: Outcomes, counts: np.ndarray) -> Paradox:
    """The consistency paradox measured on one row (`Paradox`)."""
    right, wrong = o.present & o.original_correct, o.present & ~o.original_correct
    share = lambda mask, of: float(mask.sum() / of.sum()) if of.sum() else math.nan
    flips = {(first, second): share(o.present & (o.original == i) & (o.compressed == j), o.present)
             for i, first in enumerate(ANSWERS) for j, second in enumerate(ANSWERS) if i != j}
    kappa, excess = _kappa_and_excess(o, counts)
    kappa_point, excess_point = _kappa_and_excess(o, np.ones((1, o.num_samples)))
    return Paradox(
        consistency_right=share(right & o.agree, right),
        consistency_wrong=share(wrong & o.agree, wrong),
        same_wrong=share(wrong & o.agree, o.present),
        flips=flips,
        kappa=percentile_interval(kappa, float(kappa_point[0])),
        excess_wrong=percentile_interval(excess, float(excess_point[0])),
    )
