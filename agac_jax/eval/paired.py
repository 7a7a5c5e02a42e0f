"""The sweep's rows with their paired statistics: intervals, tests against the codec and the original,
the consistency paradox and the poster's claims, as tables.md sections and `paired.csv`.

The statistics are `agac_jax.eval.stats`'s (resampling unit, replicates, tests: see there). Per data set:
one sample order and one set of bootstrap draws for every row, so every comparison is paired. Each
compressed row is compared with the `codec` row at its rate (what selecting frames costs on top of the
codec) and with the original answers of its own records (what the whole compression costs); the p
values of each kind of comparison are Holm-corrected across the table's rows, and a difference "holds"
when its corrected p is below 5%.
"""

from __future__ import annotations

import csv
import dataclasses
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

from agac_jax.eval import atomic, stats
from agac_jax.eval.tables import row_order

METRICS = ("accuracy", "f1", "answer_consistency")
LABELS = {"accuracy": "Acc", "f1": "F1", "answer_consistency": "A.C."}
# (name, outcome, metric): the paired comparisons of a compressed row.
COMPARISONS = (
    ("acc_vs_codec", "correct", "accuracy"),
    ("ac_vs_codec", "agree", "answer_consistency"),
    ("acc_vs_original", "correct", "accuracy"),
)
# The poster's thresholds (shared/seed/poster.md).
POSTER_AC_AT_09 = 0.988  # "At rho = 0.9 ... maintaining 98.8% answer consistency" (r = 25)
POSTER_ACC_COST = -0.028  # "rho < 0.7 causes >= 2.8% accuracy degradation" (measured at rho = 0.7)
PLANNING_DISCORDANCE = (0.02, 0.05, 0.10, 0.20)

RowKey = tuple[str, str, "int | None", float]


@dataclasses.dataclass(frozen=True)
class Comparison:
    """A paired difference (row minus reference), its exact test and the Holm-corrected p value."""

    difference: stats.Estimate
    test: stats.McNemar
    p_holm: float = math.nan

    @property
    def holds(self) -> bool:
        return self.p_holm < stats.ALPHA


@dataclasses.dataclass(frozen=True)
class RowStats:
    """One row (data set, method, r, rho): its samples, intervals, comparisons and paradox."""

    key: RowKey
    num_samples: int
    num_seeds: int
    estimates: dict[str, stats.Estimate]
    comparisons: dict[str, Comparison]
    paradox: stats.Paradox

    @property
    def label(self) -> str:
        dataset, method, rate, rho = self.key
        return f"{method} r={rate if rate is not None else '-'} rho={rho:g}"


def _group(records: Iterable) -> dict[str, dict[RowKey, list]]:
    by_dataset: dict[str, dict[RowKey, list]] = {}
    for record in records:
        key = (record.dataset, record.method, record.rate, float(record.rho))
        by_dataset.setdefault(record.dataset, {}).setdefault(key, []).append(record)
    return by_dataset


def _compare(row: stats.Outcomes, reference: stats.Outcomes, outcome: str, metric: str, counts) -> Comparison:
    return Comparison(stats.paired_difference(row, reference, counts, metric), stats.paired_test(row, reference, outcome))


def _original_side(row: stats.Outcomes) -> stats.Outcomes:
    """The row's own original answers as a row: correct where the original answer was."""
    return dataclasses.replace(row, correct=row.original_correct, agree=row.present)


def dataset_stats(rows: dict[RowKey, list], resamples: int = stats.BOOTSTRAP_RESAMPLES) -> list[RowStats]:
    """Every row of one data set with its statistics (module docstring), Holm across the rows."""
    sample_ids = sorted({r.sample_id for records in rows.values() for r in records})
    seeds = sorted({r.seed for records in rows.values() for r in records})
    counts = stats.bootstrap_counts(len(sample_ids), resamples)
    outcomes = {key: stats.outcomes(records, sample_ids, seeds) for key, records in rows.items()}
    codec = {key[2]: o for key, o in outcomes.items() if key[1] == "codec"}
    built = []
    for key, o in sorted(outcomes.items(), key=lambda item: row_order(item[0])):
        comparisons = {}
        if key[1] not in ("original", "codec") and key[2] in codec:
            for name, outcome, metric in COMPARISONS[:2]:
                comparisons[name] = _compare(o, codec[key[2]], outcome, metric, counts)
        if key[1] != "original":
            name, outcome, metric = COMPARISONS[2]
            comparisons[name] = _compare(o, _original_side(o), outcome, metric, counts)
        built.append(RowStats(key, int(o.present.any(0).sum()), len(seeds), stats.estimates(o, counts), comparisons,
                              stats.paradox(o, counts)))
    for name, _, _ in COMPARISONS:
        having = [row for row in built if name in row.comparisons]
        for row, p in zip(having, stats.holm([row.comparisons[name].test.p for row in having])):
            row.comparisons[name] = dataclasses.replace(row.comparisons[name], p_holm=p)
    return built


def row_stats(records: Iterable, resamples: int = stats.BOOTSTRAP_RESAMPLES) -> list[RowStats]:
    """`dataset_stats` of every data set in the records."""
    return [row for rows in _group(records).values() for row in dataset_stats(rows, resamples)]


# --- rendering -----------------------------------------------------------------------------------


def _pct(x: float) -> str:
    return "-" if not math.isfinite(x) else f"{100 * x:.1f}"


def _interval(e: stats.Estimate) -> str:
    if not math.isfinite(e.low):
        return _pct(e.value)
    return f"{_pct(e.value)} [{_pct(e.low)}, {_pct(e.high)}]"


def _signed(e: stats.Estimate) -> str:
    if not math.isfinite(e.value):
        return "-"
    text = f"{100 * e.value:+.1f}"
    return text if not math.isfinite(e.low) else f"{text} [{100 * e.low:+.1f}, {100 * e.high:+.1f}]"


def _comparison_cell(comparison: Comparison | None) -> str:
    if comparison is None:
        return "-"
    p = comparison.p_holm
    mark = " **holds**" if comparison.holds else ""
    return f"{_signed(comparison.difference)}, p={p:.2g}{mark}" if math.isfinite(p) else _signed(comparison.difference)


def intervals_table(rows: Sequence[RowStats]) -> str:
    """Acc, F1, A.C. with 95% intervals and the paired comparisons, one line per row."""
    header = ("| Method | r | ρ | N | Acc [95% CI] | F1 [95% CI] | A.C. [95% CI] | ΔAcc vs codec | ΔA.C. vs codec "
              "| ΔAcc vs original |")
    lines = [header, "|" + "---|" * 10]
    for row in rows:
        _, method, rate, rho = row.key
        cells = [method, "-" if rate is None else str(rate), f"{rho:g}", str(row.num_samples)]
        cells += [_interval(row.estimates[m]) for m in METRICS]
        cells += [_comparison_cell(row.comparisons.get(name)) for name, _, _ in COMPARISONS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paradox_table(rows: Sequence[RowStats]) -> str:
    """Per compressed row: A.C. by right/wrong originals, repeated wrong answers, flips, kappa, verdict."""
    lines = ["| Method | r | ρ | A.C. right | A.C. wrong | same wrong | yes→no | no→yes | →unknown | κ [95% CI] "
             "| wrong-answer agreement beyond balance [95% CI] | reading |", "|" + "---|" * 12]
    for row in rows:
        _, method, rate, rho = row.key
        if method == "original":
            continue
        p = row.paradox
        to_unknown = p.flips[("yes", "unknown")] + p.flips[("no", "unknown")]
        kappa = "-" if not math.isfinite(p.kappa.value) else (
            f"{p.kappa.value:.2f}" + (f" [{p.kappa.low:.2f}, {p.kappa.high:.2f}]" if math.isfinite(p.kappa.low) else ""))
        cells = [method, "-" if rate is None else str(rate), f"{rho:g}", _pct(p.consistency_right),
                 _pct(p.consistency_wrong), _pct(p.same_wrong), _pct(p.flips[("yes", "no")]),
                 _pct(p.flips[("no", "yes")]), _pct(to_unknown), kappa, _signed(p.excess_wrong), p.verdict]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class Claim:
    """One of the poster's claims restated on this run: the figure, its interval, and the verdict."""

    claim: str
    measured: str
    verdict: str  # holds | does not hold | cannot tell at this N | not in this run


def _verdict(estimate: stats.Estimate, threshold: float, above: bool) -> str:
    if not math.isfinite(estimate.low):
        return "cannot tell at this N"
    if (estimate.low >= threshold) if above else (estimate.high <= threshold):
        return "holds"
    if (estimate.high < threshold) if above else (estimate.low > threshold):
        return "does not hold"
    return "cannot tell at this N"


def _selecting(rows: Sequence[RowStats]) -> list[RowStats]:
    return [row for row in rows if row.key[1] not in ("original", "codec")]


def claims(rows: Sequence[RowStats]) -> list[Claim]:
    """The poster's headline claims checked on the rows of one data set (the selecting method with the
    most rows stands for the poster's "Attention")."""
    selecting = _selecting(rows)
    methods = sorted({row.key[1] for row in selecting}, key=lambda m: (-sum(r.key[1] == m for r in selecting), m))
    method = "fused" if "fused" in methods else (methods[0] if methods else None)
    mine = [row for row in selecting if row.key[1] == method]
    out = []
    at_09 = [row for row in mine if math.isclose(row.key[3], 0.9)]
    if at_09:
        for row in at_09:
            e = row.estimates["answer_consistency"]
            out.append(Claim(f"A.C. >= 98.8% at ρ = 0.9 ({method}, r = {row.key[2]})", _interval(e),
                             _verdict(e, POSTER_AC_AT_09, above=True)))
    else:
        out.append(Claim("A.C. >= 98.8% at ρ = 0.9", "-", "not in this run"))
    low = [row for row in mine if row.key[3] <= 0.7 + 1e-9]
    if low:
        for row in low:
            c = row.comparisons["acc_vs_original"]
            out.append(Claim(f"ρ <= 0.7 costs >= 2.8 accuracy points ({method}, r = {row.key[2]}, ρ = {row.key[3]:g})",
                             _signed(c.difference), _verdict(c.difference, POSTER_ACC_COST, above=False)))
    else:
        out.append(Claim("ρ <= 0.7 costs >= 2.8 accuracy points", "-", "not in this run"))
    if mine:
        worst = min(mine, key=lambda row: row.estimates["accuracy"].value)
        p = worst.paradox
        verdict = {"systematic": "holds", "balance": "does not hold"}.get(p.verdict, "cannot tell at this N")
        wrong = ("no original answer was wrong" if not math.isfinite(p.consistency_wrong)
                 else f"A.C. on wrong originals {_pct(p.consistency_wrong)}%")
        out.append(Claim(f"the lowest-accuracy row repeats wrong answers systematically ({worst.label}: {wrong})",
                         f"beyond balance {_signed(p.excess_wrong)}", verdict))
        gains = [row for row in mine if row.key[3] <= 0.5 + 1e-9]
        if gains:
            best = max(gains, key=lambda row: row.comparisons["acc_vs_original"].difference.value)
            c = best.comparisons["acc_vs_original"]
            out.append(Claim(f"aggressive compression (ρ <= 0.5) raises accuracy ({best.label})", _signed(c.difference),
                             _verdict(c.difference, 0.0, above=True)))
    return out


def claims_section(rows: Sequence[RowStats]) -> str:
    lines = ["| Poster's claim | This run | Verdict |", "|---|---|---|"]
    lines += [f"| {c.claim} | {c.measured} | {c.verdict} |" for c in claims(rows)]
    return "\n".join(lines)


def resolvable_difference(rows: Sequence[RowStats]) -> str:
    """What this N can resolve: the smallest paired difference detectable at 80% power for the observed
    discordance of the compressed rows against the codec (their median)."""
    discordances = []
    for row in _selecting(rows):
        c = row.comparisons.get("ac_vs_codec")
        if c is not None and row.num_samples:
            discordances.append((c.test.b + c.test.c) / row.num_samples)
    n = max((row.num_samples for row in rows), default=0)
    if not discordances or not n:
        return ""
    discordance = max(sorted(discordances)[len(discordances) // 2], 1.0 / n)
    delta = stats.detectable_difference(n, min(discordance, 1.0))
    detect = "no difference" if math.isnan(delta) else f"differences of {100 * delta:.1f} points or more"
    return (f"With N = {n} samples and {100 * discordance:.1f}% of them answered differently by a row and its codec "
            f"row (the median), the exact McNemar test detects {detect} at 80% power (α = 0.05).")


def markdown(rows: Sequence[RowStats], dataset: str) -> str:
    """The statistics sections of one data set for tables.md."""
    if not rows:
        return ""
    seeds = rows[0].num_seeds
    parts = [
        f"### Paired statistics: {dataset}",
        "",
        f"95% intervals: paired bootstrap over samples ({stats.BOOTSTRAP_RESAMPLES} replicates, seed "
        f"{stats.BOOTSTRAP_SEED}; each replicate keeps all {seeds} seed(s) of a drawn sample). Differences are "
        "row minus reference in points, with the exact McNemar test on the per-sample outcome (correct, or equal "
        "to the original answer), Holm-corrected across the rows; **holds**: p < 0.05.",
        "",
        intervals_table(rows),
        "",
        f"### The consistency paradox: {dataset}",
        "",
        "A.C. over the samples the original answered right / wrong; same wrong: the share of samples whose "
        "compressed answer repeats a wrong original; flips as shares of all samples; κ: Cohen's kappa of "
        "original and compressed answers; the last figure: agreement on the wrongly answered samples minus "
        "what the answer balance alone gives there. Reading: systematic (above 0), balance (at or below 0), "
        "cannot tell.",
        "",
        paradox_table(rows),
        "",
        f"### The poster's claims: {dataset}",
        "",
        claims_section(rows),
    ]
    note = resolvable_difference(rows)
    if note:
        parts += ["", note]
    return "\n".join(parts) + "\n"


def write_csv(rows: Sequence[RowStats], path: Path | str) -> Path:
    """paired.csv: per row the intervals, the comparisons (difference, interval, p, Holm p) and the paradox."""
    fields = ["dataset", "method", "rate", "rho", "num_samples", "num_seeds"]
    fields += [f"{m}{s}" for m in METRICS for s in ("", "_low", "_high")]
    fields += [f"{c}{s}" for c, _, _ in COMPARISONS for s in ("", "_low", "_high", "_b", "_c", "_p", "_p_holm")]
    fields += ["ac_right", "ac_wrong", "same_wrong", "kappa", "kappa_low", "kappa_high", "excess_wrong",
               "excess_wrong_low", "excess_wrong_high", "paradox"]
    lines = []
    for row in rows:
        dataset, method, rate, rho = row.key
        values = [dataset, method, "" if rate is None else rate, rho, row.num_samples, row.num_seeds]
        for m in METRICS:
            e = row.estimates[m]
            values += [e.value, e.low, e.high]
        for name, _, _ in COMPARISONS:
            c = row.comparisons.get(name)
            values += ([c.difference.value, c.difference.low, c.difference.high, c.test.b, c.test.c, c.test.p, c.p_holm]
                       if c else [""] * 7)
        p = row.paradox
        values += [p.consistency_right, p.consistency_wrong, p.same_wrong, p.kappa.value, p.kappa.low, p.kappa.high,
                   p.excess_wrong.value, p.excess_wrong.low, p.excess_wrong.high, p.verdict]
        lines.append(["" if isinstance(v, float) and math.isnan(v) else v for v in values])

    with atomic.atomic_open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(fields)
        writer.writerows(lines)
    return Path(path)


def planning_lines(num_samples: int, num_seeds: int) -> list[str]:
    """What a planned run can resolve: the smallest paired difference the exact McNemar test detects at 80%
    power (α = 0.05) for a range of discordance rates between two rows."""
    lines = [f"planned: {num_samples} samples x {num_seeds} seed(s); smallest paired A.C. or accuracy difference "
             "detectable at 80% power (exact McNemar, α = 0.05):"]
    for discordance in PLANNING_DISCORDANCE:
        delta = stats.detectable_difference(num_samples, discordance)
        shown = "none (too few samples)" if math.isnan(delta) else f"{100 * delta:.1f} points"
        lines.append(f"  {100 * discordance:4.0f}% of samples answered differently by the two rows: {shown}")
    return lines
