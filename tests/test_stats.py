"""The paired statistics against known cases: textbook tests, bootstrap coverage, power by simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from agac_jax.eval import stats


def _outcomes(original, compressed, label) -> stats.Outcomes:
    """Outcomes of one seed from answer-index arrays [N] (0 yes, 1 no, 2 unknown)."""
    o, c, y = (np.asarray(x, np.int8)[None] for x in (original, compressed, label))
    present = np.ones_like(o, bool)
    return stats.Outcomes(present=present, correct=c == y, agree=c == o, original_correct=o == y,
                          tp=(c == 0) & (y == 0), fp=(c == 0) & (y == 1), fn=(c != 0) & (y == 0),
                          original=o, compressed=c)


def test_exact_mcnemar_on_textbook_tables() -> None:
    assert stats.mcnemar_exact(1, 9).p == pytest.approx(22 / 1024, rel=1e-12)  # 2 P(X <= 1), X ~ B(10, 1/2)
    assert stats.mcnemar_exact(5, 5).p == 1.0 and stats.mcnemar_exact(0, 0).p == 1.0
    # Agresti, Categorical Data Analysis, table 10.1 (presidential approval): b = 150, c = 86.
    agresti = stats.mcnemar_exact(150, 86)
    assert agresti.p == pytest.approx(scipy_stats.binomtest(86, 236, 0.5).pvalue, rel=1e-9)
    assert agresti.p < 1e-4
    with pytest.raises(ValueError):
        stats.mcnemar_exact(-1, 3)


def test_holm_step_down() -> None:
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    adjusted = stats.holm([0.2, math.nan, 0.01])
    assert adjusted[0] == pytest.approx(0.2) and math.isnan(adjusted[1]) and adjusted[2] == pytest.approx(0.02)


def test_paired_test_counts_discordant_samples() -> None:
    label = [0] * 10
    a = _outcomes(label, [0] * 9 + [1], label)  # 9 right
    b = _outcomes(label, [0] * 5 + [1] * 5, label)  # 5 right, the same first 5
    test = stats.paired_test(a, b, "correct")
    assert (test.b, test.c) == (4, 0) and test.p == pytest.approx(2 / 16)


def test_bootstrap_interval_covers_the_true_paired_difference() -> None:
    rng = np.random.default_rng(7)
    n, simulations, covered = 300, 200, 0
    counts = stats.bootstrap_counts(n, resamples=400, seed=1)
    for _ in range(simulations):
        label = rng.integers(0, 2, n)
        base = rng.random(n) < 0.75  # first row right on 75%
        flip = rng.random(n) < 0.10  # the second changes 10% of answers
        first = np.where(base, label, 1 - label)
        second = np.where(flip, 1 - first, first)
        a, b = _outcomes(first, first, label), _outcomes(first, second, label)
        diff = stats.paired_difference(b, a, counts, "accuracy")
        true = 0.10 * (0.25 - 0.75)  # flips turn right into wrong and wrong into right
        covered += diff.low <= true <= diff.high
    assert 0.90 <= covered / simulations <= 0.99, covered


def test_estimates_nest_seeds_and_skip_missing_records() -> None:
    o = _outcomes([0, 1, 0, 1], [0, 1, 1, 1], [0, 1, 0, 0])
    two = stats.Outcomes(**{f: np.concatenate([getattr(o, f)] * 2) for f in
                            ("present", "correct", "agree", "original_correct", "tp", "fp", "fn", "original",
                             "compressed")})
    present = two.present.copy()
    present[1, 0] = False
    two = stats.Outcomes(**{**two.__dict__, "present": present, "correct": two.correct & present,
                            "agree": two.agree & present})
    values = stats.estimates(two, stats.bootstrap_counts(4, 50))
    # seed 0: accuracy 2/4, A.C. 3/4; seed 1 without sample 0: accuracy 1/3, A.C. 2/3
    assert values["accuracy"].value == pytest.approx((2 / 4 + 1 / 3) / 2)
    assert values["answer_consistency"].value == pytest.approx((3 / 4 + 2 / 3) / 2)
    assert values["accuracy"].low <= values["accuracy"].value <= values["accuracy"].high


def test_detectable_difference_has_the_stated_power() -> None:
    n, discordance = 400, 0.12
    delta = stats.detectable_difference(n, discordance)
    assert stats.mcnemar_samples_needed(delta, discordance) == pytest.approx(n, rel=1e-6)
    rng = np.random.default_rng(3)
    b_share, c_share = (discordance + delta) / 2, (discordance - delta) / 2
    draws = rng.multinomial(n, [b_share, c_share, 1 - discordance], size=600)
    power = np.mean([stats.mcnemar_exact(b, c).p < 0.05 for b, c, _ in draws])
    assert 0.72 <= power <= 0.88, power
    assert math.isnan(stats.detectable_difference(10, 0.05))
    assert stats.detectable_difference(5816, 0.05) < stats.detectable_difference(1000, 0.05)


def test_paradox_tells_balance_from_systematic_repetition() -> None:
    rng = np.random.default_rng(0)
    n = 400
    label = np.where(rng.random(n) < 0.2, 0, 1)
    always_no = np.ones(n, int)  # the model says "no" whatever it hears: 80% right, wrong ones repeat by balance
    balance = stats.paradox(_outcomes(always_no, always_no, label), stats.bootstrap_counts(n, 300))
    assert balance.consistency_wrong == 1.0 and balance.verdict == "balance"
    varied = np.where(rng.random(n) < 0.6, label, 1 - label)  # 60% right, answers vary
    copied = stats.paradox(_outcomes(varied, varied, label), stats.bootstrap_counts(n, 300))
    assert copied.excess_wrong.low > 0 and copied.verdict == "systematic"
    assert copied.same_wrong == pytest.approx(np.mean(varied != label))
    assert copied.kappa.value == pytest.approx(1.0)
    assert all(v == 0 for v in copied.flips.values())


def _records(n: int = 60, seeds=(0, 1)):
    """original, codec (r 50) and fused (r 50, rho 0.5) rows: fused flips the first 15 samples' answers."""
    from agac_jax.eval.results import ResultRecord

    out = []
    for seed in seeds:
        for i in range(n):
            label = "yes" if i % 2 else "no"
            original = label if i % 5 else ("no" if label == "yes" else "yes")  # 80% right
            rows = [("original", None, 1.0, original), ("codec", 50, 1.0, original),
                    ("fused", 50, 0.5, ("no" if original == "yes" else "yes") if i < 15 else original)]
            for method, rate, rho, answer in rows:
                out.append(ResultRecord(dataset="toy", sample_id=f"s{i}", clip_id=f"c{i}", question="q?",
                                        label=label, method=method, rate=rate, rho=rho, seed=seed,
                                        answer_original=original, answer_compressed=answer,
                                        parsed_original=original, parsed_compressed=answer))
    return out


def test_paired_rows_compare_with_codec_and_original(tmp_path) -> None:
    from agac_jax.eval import paired

    rows = {row.key[1]: row for row in paired.row_stats(_records(), resamples=300)}
    fused = rows["fused"]
    assert set(fused.comparisons) == {"acc_vs_codec", "ac_vs_codec", "acc_vs_original"}
    ac = fused.comparisons["ac_vs_codec"]
    assert (ac.test.b, ac.test.c) == (0, 15) and ac.difference.value == pytest.approx(-0.25)
    assert ac.difference.high < 0 and ac.holds
    assert "ac_vs_codec" not in rows["codec"].comparisons and rows["original"].comparisons == {}
    assert fused.estimates["answer_consistency"].value == pytest.approx(0.75)
    # 15 flips: samples 0, 5, 10 were wrong and become right, the other 12 right and become wrong
    assert fused.comparisons["acc_vs_original"].test.b == 3 and fused.comparisons["acc_vs_original"].test.c == 12
    text = paired.markdown(list(rows.values()), "toy")
    for heading in ("Paired statistics: toy", "The consistency paradox: toy", "The poster's claims: toy"):
        assert heading in text
    assert "**holds**" in text
    path = paired.write_csv(list(rows.values()), tmp_path / "paired.csv")
    header = path.read_text().splitlines()[0].split(",")
    assert header[:6] == ["dataset", "method", "rate", "rho", "num_samples", "num_seeds"] and "ac_vs_codec_p_holm" in header


def test_planning_lines_shrink_with_more_samples() -> None:
    from agac_jax.eval import paired

    small, large = paired.planning_lines(12, 3), paired.planning_lines(2490, 3)
    assert "none (too few samples)" in small[1]
    assert large[0].startswith("planned: 2490 samples x 3 seed(s)") and "points" in large[2]
