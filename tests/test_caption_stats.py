"""The caption tables' paired statistics (`eval.captions`): per-sample CIDEr-D arrays, bootstrap
intervals, the sign-flip test of Δ CIDEr and Holm, on hand-made records whose answers are known."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest

from agac_jax.eval import captions, cider, stats
from agac_jax.eval.results import Failure, ResultRecord

DATASET = "avhbench-captioning"
N = 30
# Every reference has its own words, so their idf is log(N) and CIDEr-D is positive.
REFERENCES = {f"s{i:02d}": f"a loud item{i} rings near the tone{i} box" for i in range(N)}
FAILURE = Failure(stage="codec", error_type="Timeout", message="slow")


def record(sample: str, method: str, rate: int | None, rho: float, seed: int, compressed: str | None,
           failure: Failure | None = None, original: str | None = None) -> ResultRecord:
    original = REFERENCES[sample] if original is None else original
    return ResultRecord(
        dataset=DATASET, sample_id=sample, clip_id=sample, question="Describe the clip.", label="", method=method,
        rate=rate, rho=rho, seed=seed, answer_original=original, parsed_original=cider.normalize(original),
        answer_compressed=compressed, parsed_compressed=None if compressed is None else cider.normalize(compressed),
        codec_tokens_before=100 if rate else None, codec_tokens_after=(100 if rho == 1.0 else 50) if rate else None,
        failure=failure, reference=REFERENCES[sample])


def worse(sample: str, seed: int) -> str:
    """A caption that keeps a part of the reference's words: below the original caption's CIDEr-D."""
    i = int(sample[1:])
    return f"a loud item{i} rings" if seed == 0 else f"the tone{i} box"


def records() -> list[ResultRecord]:
    """Two seeds. The original captions equal the references, except s00's (so Δ CIDEr is not trivial).
    codec: the original captions (Δ = 0); fused: worse captions everywhere; random: seed 0's first five
    samples failed, seed 1's absent, the rest worse captions."""
    out = []
    for seed in (0, 1):
        for sample in REFERENCES:
            original = "a loud dog" if sample == "s00" else None
            out.append(record(sample, "original", None, 1.0, seed, original or REFERENCES[sample], original=original))
            out.append(record(sample, "codec", 100, 1.0, seed, original or REFERENCES[sample], original=original))
            out.append(record(sample, "fused", 100, 0.5, seed, worse(sample, seed), original=original))
            index = int(sample[1:])
            if index < 5 and seed == 1:
                continue
            failed = index < 5
            out.append(record(sample, "random", 100, 0.5, seed, None if failed else worse(sample, seed),
                              failure=FAILURE if failed else None, original=original))
    return out


@pytest.fixture(scope="module")
def rows() -> dict[str, captions.CaptionRow]:
    return {row.method: row for row in captions.caption_rows(records())}


def test_identical_captions_have_zero_delta_a_degenerate_interval_and_p_one(rows) -> None:
    codec = rows["codec"].statistics
    assert codec.estimates["delta_cider"] == stats.Estimate(0.0, 0.0, 0.0)
    assert codec.p == 1.0 and codec.p_holm == 1.0 and not codec.holds
    assert codec.estimates["same_caption"] == stats.Estimate(1.0, 1.0, 1.0)
    assert captions.sign_flip_p(np.array([0.0, 0.0, np.nan])) == 1.0


def test_worse_captions_give_a_negative_delta_excluding_zero_and_a_small_p(rows) -> None:
    fused = rows["fused"].statistics
    delta = fused.estimates["delta_cider"]
    assert delta.value < 0 and delta.low <= delta.value <= delta.high < 0
    # No random sign vector of the 29 negative differences and s00's positive one reaches |sum|:
    # p = 1 / (1 + PERMUTATIONS); Holm over the three compressed rows (random's p is as small, codec's is 1)
    # multiplies it by 3.
    assert fused.p == pytest.approx(1 / (1 + captions.PERMUTATIONS))
    assert fused.p_holm == pytest.approx(3 / (1 + captions.PERMUTATIONS)) and fused.holds
    assert math.isnan(rows["original"].statistics.p_holm)  # the original row is not tested
    # Three differences of one sign: exact, 2 of the 8 sign vectors reach |sum| = 6.
    assert captions.sign_flip_p(np.array([-1.0, -2.0, -3.0])) == pytest.approx(0.25)
    assert captions.sign_flip_p(np.array([-1.0, 1.0])) == pytest.approx(1.0)


def test_point_estimates_equal_the_table_means(rows) -> None:
    for row in rows.values():
        for name in captions.INTERVAL_METRICS:
            assert row.statistics.estimates[name].value == pytest.approx(row.summaries[name].mean, abs=1e-12), \
                (row.method, name)
    # One seed: the seed's own table mean, and the intervals still bracket it.
    one_seed = [r for r in records() if r.seed == 0]
    for row in captions.caption_rows(one_seed):
        for name in captions.INTERVAL_METRICS:
            e = row.statistics.estimates[name]
            assert e.value == pytest.approx(row.summaries[name].mean, abs=1e-12)
            assert e.low <= e.value + 1e-12 and e.value <= e.high + 1e-12
    fused = rows["fused"].statistics.estimates
    assert fused["delta_cider"].value < 0 < fused["cider"].value


def test_absent_and_failed_records_are_excluded_not_zero(rows) -> None:
    random = rows["random"].statistics
    assert random.num_samples == N - 5 and random.num_seeds == 2
    scorers = captions.dataset_scorers(records())[DATASET]
    ok = [r for r in records() if r.method == "random" and r.ok]
    expected = np.mean([np.mean([scorers.reference_score(r, r.answer_compressed) for r in ok if r.seed == seed])
                        for seed in (0, 1)])  # each seed's mean over its successful records
    assert random.estimates["cider"].value == pytest.approx(expected)
    # Counted as 0 the failed samples would pull the mean down by a sixth.
    assert random.estimates["cider"].value > 1.1 * expected * (N - 5) / N
    scores = captions.caption_scores([r for r in records() if r.method == "random"], sorted(REFERENCES), [0, 1],
                                     scorers)
    assert np.isnan(scores.cider[:, :5]).all() and np.isfinite(scores.cider[:, 5:]).all()
    assert np.isnan(scores.same_caption[:, :5]).all() and (scores.same_caption[:, 5:] == 0).all()


def test_the_table_and_the_csv_show_the_intervals(rows, tmp_path) -> None:
    table = "\n".join(captions.markdown(list(rows.values())))
    assert "### Paired statistics: avhbench-captioning (captions)" in table
    assert f"| `codec` | 100 | 1.0 | {N} |" in table and "| +0.000 [+0.000, +0.000] | 1 |" in table
    fused_line = next(line for line in table.splitlines() if line.startswith(f"| `fused` | 100 | 0.5 | {N} |"))
    assert "**holds**" in fused_line
    path = captions.write_captions_csv(list(rows.values()), tmp_path / "captions.csv")
    by_method = {line["method"]: line for line in csv.DictReader(path.open(encoding="utf-8"))}
    assert float(by_method["fused"]["delta_cider_hi"]) < 0 and float(by_method["codec"]["delta_cider_lo"]) == 0
    assert float(by_method["codec"]["delta_cider_p_holm"]) == 1.0 and by_method["original"]["delta_cider_p_holm"] == ""
    assert math.isclose(float(by_method["fused"]["cider_mean"]), rows["fused"].statistics.estimates["cider"].value)
    # Rows built without statistics keep the table and leave the new columns empty.
    plain = captions.summarize_caption_rows(captions.caption_seed_metrics(records()))
    assert "Paired statistics" not in "\n".join(captions.markdown(plain))
    path = captions.write_captions_csv(plain, tmp_path / "plain.csv")
    assert all(line["cider_lo"] == "" for line in csv.DictReader(path.open(encoding="utf-8")))
