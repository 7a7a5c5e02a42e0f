"""The tables of caption data sets (AVHBench's captioning): CIDEr-D where the yes/no tables have accuracy.

A caption record (`ResultRecord.is_caption`) carries the reference caption in `reference`; its label is
"" and its parsed answers are the replies' caption tokens (`cider.normalize`). The yes/no tables,
their statistics and plots never see these records; `sweep.merge` hands them here.

Per seed, over the records of one (data set, method, r, rho, seed) that did not fail:
- CIDEr: the mean CIDEr-D (`eval.cider`) of the compressed captions against the references, with
  the document frequencies of the data set's references (every sample once, whatever failed, so
  every row uses the same idf);
- Δ CIDEr: that minus the mean CIDEr-D of the original captions of the same records (paired, as
  Δ Acc);
- C-cons. (the caption analogue of A.C., graded): the mean CIDEr-D of the compressed caption against
  the sample's original caption as the one reference, with the document frequencies of the data
  set's original captions. The `original` row shows its ceiling: 10 x the share of n-gram orders
  1-4 a caption has (7.5 for three words), so compare rows with it, not with 10;
- Same (A.C. proper): the share of compressed captions equal to the original one token for token;
- tokens kept (codec tokens kept / all, as in the yes/no tables); empty: compressed captions with no
  token; failures.
Across seeds: mean and sample standard deviation (`metrics.summarize_seeds`). CIDEr-D needs several
samples: with one, every n-gram's idf is log(1) - log(1) = 0 and every score 0.

Paired statistics (`caption_statistics`), with the yes/no tables' conventions (`eval.stats`): each row's
per-sample scores as [S seeds, N samples] arrays (`CaptionScores`: CIDEr-D against the reference, that
of the record's original caption, C-cons., Same; NaN where the record is absent or failed, so such
records count nowhere, not as 0), on one sample order per data set and the same idf as above, so the
point estimates are the table's means. The resampling unit is the sample: `stats.bootstrap_counts`
draws (`BOOTSTRAP_RESAMPLES` from `BOOTSTRAP_SEED`, shared by every row of a data set), seeds nested in
samples, a replicate's metric the mean over seeds of that seed's weighted mean; 95% percentile
intervals for CIDEr, C-cons. and Same, and for Δ CIDEr (compressed minus original caption of the same
record, replicate by replicate). Whether Δ CIDEr differs from 0: a paired sign-flip permutation test
on each sample's seed-averaged difference (statistic: their sum; exact over all 2^m sign vectors of the
m non-zero differences when 2^m <= PERMUTATIONS, else PERMUTATIONS random ones from BOOTSTRAP_SEED,
p = (1 + hits) / (1 + PERMUTATIONS)). It is the graded analogue of the McNemar sign test the yes/no
tables use (McNemar needs a binary outcome; CIDEr-D is graded): exact at any N under the null that
each sample's difference is symmetric about 0 (its compressed and original captions exchangeable), and
p = 1 when no sample differs, where a p read off the bootstrap replicates is only approximate (and
undefined when every replicate is 0). Holm's correction runs across
the compressed rows of a data set (every row but `original`); **holds**: corrected p < 0.05.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from agac_jax.eval import atomic, cider, metrics, stats
from agac_jax.eval.results import ResultRecord
from agac_jax.eval.tables import GroupKey, format_rho, group_records, ratio_of_sums, row_order, summarize_metric

CAPTION_METRICS = ("cider", "delta_cider", "cider_vs_original", "same_caption", "codec_tokens_kept")
INTERVAL_METRICS = ("cider", "delta_cider", "cider_vs_original", "same_caption")  # with a bootstrap interval
PERMUTATIONS = 10000  # random sign vectors of the sign-flip test when exact enumeration is larger


def split_records(records: Iterable[ResultRecord]) -> tuple[list[ResultRecord], list[ResultRecord]]:
    """(yes/no records, caption records), each in the given order."""
    yes_no, caption = [], []
    for record in records:
        (caption if record.is_caption else yes_no).append(record)
    return yes_no, caption


@dataclasses.dataclass(frozen=True)
class CaptionScorers:
    """One caption data set's CIDEr-D scorers: against the references and against the original captions."""

    references: dict[str, str]  # sample id -> reference caption
    originals: dict[str, str]  # sample id -> original caption (samples whose original answer exists)
    against_reference: cider.CiderD
    against_original: cider.CiderD | None  # None when no original caption exists
    cache: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)  # (kind, sample, caption) -> score

    @classmethod
    def of(cls, records: Sequence[ResultRecord]) -> "CaptionScorers":
        """The scorers of one data set's caption records (each sample counted once)."""
        references = {r.sample_id: r.reference for r in records}
        originals = {r.sample_id: r.answer_original for r in records if r.answer_original is not None}
        return cls(references=references, originals=originals,
                   against_reference=cider.CiderD([[c] for c in references.values()]),
                   against_original=cider.CiderD([[c] for c in originals.values()]) if originals else None)

    def reference_score(self, record: ResultRecord, caption: str) -> float:
        key = ("reference", record.sample_id, caption)
        if key not in self.cache:
            self.cache[key] = self.against_reference.score(caption, [self.references[record.sample_id]])
        return self.cache[key]

    def original_score(self, record: ResultRecord) -> float:
        caption = record.answer_compressed or ""
        key = ("original", record.sample_id, caption)
        if key not in self.cache:
            self.cache[key] = self.against_original.score(caption, [self.originals[record.sample_id]])
        return self.cache[key]


def dataset_scorers(records: Iterable[ResultRecord]) -> dict[str, CaptionScorers]:
    """Each caption data set's scorers, from all its caption records."""
    by_dataset: dict[str, list[ResultRecord]] = collections.defaultdict(list)
    for record in records:
        if record.is_caption:
            by_dataset[record.dataset].append(record)
    return {name: CaptionScorers.of(members) for name, members in by_dataset.items()}


@dataclasses.dataclass(frozen=True)
class CaptionSeedMetrics:
    """The caption metrics of one (data set, method, r, rho, seed); CIDEr-D in coco-caption's scale."""

    dataset: str
    method: str
    rate: int | None
    rho: float
    seed: int
    num_samples: int
    failures: int
    empty: int
    cider: float
    cider_original: float
    delta_cider: float
    cider_vs_original: float
    same_caption: float
    codec_tokens_kept: float


def compute_caption_seed_metrics(key: GroupKey, seed: int, records: Sequence[ResultRecord],
                                 scorers: CaptionScorers) -> CaptionSeedMetrics:
    """The caption metrics of the records of one (data set, method, r, rho) and seed."""
    ok = [r for r in records if r.ok]
    mean = lambda values: float(np.mean(values)) if values else math.nan  # noqa: E731
    compressed = [scorers.reference_score(r, r.answer_compressed or "") for r in ok]
    original = [scorers.reference_score(r, r.answer_original or "") for r in ok]
    return CaptionSeedMetrics(
        dataset=key[0], method=key[1], rate=key[2], rho=key[3], seed=seed,
        num_samples=len(ok), failures=len(records) - len(ok),
        empty=sum(not r.parsed_compressed for r in ok),
        cider=mean(compressed),
        cider_original=mean(original),
        delta_cider=mean([c - o for c, o in zip(compressed, original)]),
        cider_vs_original=mean([scorers.original_score(r) for r in ok]),
        same_caption=mean([float(r.parsed_compressed == r.parsed_original) for r in ok]),
        codec_tokens_kept=ratio_of_sums([r.codec_tokens_after for r in ok], [r.codec_tokens_before for r in ok]),
    )


def caption_seed_metrics(records: Iterable[ResultRecord],
                         scorers: dict[str, CaptionScorers] | None = None) -> list[CaptionSeedMetrics]:
    """CaptionSeedMetrics of every (data set, method, r, rho, seed) of the caption records, in table order
    (`scorers`: `dataset_scorers` of these records, built here if not given)."""
    records = [r for r in records if r.is_caption]
    scorers = dataset_scorers(records) if scorers is None else scorers
    groups = group_records(records)
    return [compute_caption_seed_metrics(key, seed, groups[key][seed], scorers[key[0]])
            for key in sorted(groups, key=row_order) for seed in sorted(groups[key])]


# --- paired statistics ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CaptionScores:
    """One caption row's per-sample scores on a shared sample order, [S seeds, N samples] float64 each,
    NaN where the record is absent or failed.

    Attributes:
        cider: CiderD of the compressed caption against the reference.
        cider_original: CiderD of the record's original caption against the reference.
        cider_vs_original: C-cons., CiderD of the compressed caption against the original one.
        same_caption: 1.0 where the compressed caption equals the original one token for token, else 0.0.
    """

    cider: np.ndarray
    cider_original: np.ndarray
    cider_vs_original: np.ndarray
    same_caption: np.ndarray

    @property
    def present(self) -> np.ndarray:
        return np.isfinite(self.cider)

    @property
    def delta_cider(self) -> np.ndarray:
        return self.cider - self.cider_original

    @property
    def num_samples(self) -> int:
        return int(self.cider.shape[1])


def caption_scores(records: Iterable[ResultRecord], sample_ids: Sequence[str], seeds: Sequence[int],
                   scorers: CaptionScorers) -> CaptionScores:
    """The per-sample scores of one row's records on the given sample order and seeds (the idf of
    `scorers`, as the table's); samples or seeds without a successful record stay NaN."""
    column = {sample_id: n for n, sample_id in enumerate(sample_ids)}
    row = {seed: s for s, seed in enumerate(seeds)}
    arrays = {name: np.full((len(seeds), len(sample_ids)), np.nan) for name in
              ("cider", "cider_original", "cider_vs_original", "same_caption")}
    for record in records:
        s, n = row.get(record.seed), column.get(record.sample_id)
        if s is None or n is None or not record.ok:
            continue
        arrays["cider"][s, n] = scorers.reference_score(record, record.answer_compressed or "")
        arrays["cider_original"][s, n] = scorers.reference_score(record, record.answer_original or "")
        arrays["cider_vs_original"][s, n] = scorers.original_score(record)
        arrays["same_caption"][s, n] = float(record.parsed_compressed == record.parsed_original)
    return CaptionScores(**arrays)


def weighted_means(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """[B]: per replicate (sample weights `weights` [B, N]), the mean over seeds of each seed's weighted
    mean of `values` [S, N] over its finite entries; seeds with no weight on a finite entry do not count."""
    finite = np.isfinite(values)
    total = weights @ np.where(finite, values, 0.0).T  # [B, S]
    count = weights @ finite.T.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_seed = np.where(count > 0, total / np.where(count > 0, count, 1.0), np.nan)
    used = np.isfinite(per_seed)
    seeds = used.sum(-1)
    return np.where(seeds > 0, np.where(used, per_seed, 0.0).sum(-1) / np.maximum(seeds, 1), np.nan)


def caption_estimates(scores: CaptionScores, counts: np.ndarray) -> dict[str, stats.Estimate]:
    """INTERVAL_METRICS on all samples (the table's means) with their percentile intervals over `counts`."""
    ones = np.ones((1, scores.num_samples))
    out = {}
    for name in INTERVAL_METRICS:
        values = getattr(scores, name)
        out[name] = stats.percentile_interval(weighted_means(values, counts), float(weighted_means(values, ones)[0]))
    return out


def sign_flip_p(differences: np.ndarray, permutations: int = PERMUTATIONS, seed: int = stats.BOOTSTRAP_SEED) -> float:
    """Two-sided p of the paired sign-flip permutation test that per-sample differences `differences` [N]
    (NaN: absent) are symmetric about 0, statistic |sum|; exact when 2^m <= permutations (m the non-zero
    differences; zeros are unchanged by a flip), else Monte Carlo (module docstring). 1.0 when m = 0."""
    d = differences[np.isfinite(differences)]
    d = d[d != 0]
    if not d.size:
        return 1.0
    observed = abs(float(d.sum()))
    tolerance = 1e-9 * float(np.abs(d).sum())
    if 2 ** d.size <= permutations:
        signs = 1 - 2 * ((np.arange(2 ** d.size)[:, None] >> np.arange(d.size)) & 1)
        return float(np.mean(np.abs(signs @ d) >= observed - tolerance))
    rng = np.random.default_rng(seed)
    hits, done = 0, 0
    while done < permutations:
        chunk = min(1000, permutations - done)
        signs = rng.integers(0, 2, size=(chunk, d.size)) * 2 - 1
        hits += int((np.abs(signs @ d) >= observed - tolerance).sum())
        done += chunk
    return (1 + hits) / (1 + permutations)


def sample_differences(scores: CaptionScores) -> np.ndarray:
    """[N]: each sample's Δ CIDEr averaged over the seeds that have it (NaN where none does)."""
    delta = scores.delta_cider
    finite = np.isfinite(delta)
    count = finite.sum(0)
    return np.where(count > 0, np.where(finite, delta, 0.0).sum(0) / np.maximum(count, 1), np.nan)


@dataclasses.dataclass(frozen=True)
class CaptionRowStats:
    """One caption row's paired statistics: intervals of INTERVAL_METRICS (`delta_cider` against the
    row's own original captions), the sign-flip p of Δ CIDEr = 0 and its Holm-corrected value (NaN for
    the `original` row)."""

    key: GroupKey
    num_samples: int  # samples with at least one successful record
    num_seeds: int
    estimates: dict[str, stats.Estimate]
    p: float = math.nan
    p_holm: float = math.nan

    @property
    def holds(self) -> bool:
        return self.p_holm < stats.ALPHA


def dataset_caption_statistics(rows: dict[GroupKey, list[ResultRecord]], scorers: CaptionScorers,
                               resamples: int = stats.BOOTSTRAP_RESAMPLES) -> list[CaptionRowStats]:
    """Every caption row of one data set with its statistics, one sample order and one set of draws
    for all, Holm across the compressed rows; in table order."""
    sample_ids = sorted({r.sample_id for records in rows.values() for r in records})
    seeds = sorted({r.seed for records in rows.values() for r in records})
    counts = stats.bootstrap_counts(len(sample_ids), resamples)
    built = []
    for key in sorted(rows, key=row_order):
        scores = caption_scores(rows[key], sample_ids, seeds, scorers)
        p = math.nan if key[1] == "original" else sign_flip_p(sample_differences(scores))
        built.append(CaptionRowStats(key, int(scores.present.any(0).sum()), len(seeds),
                                     caption_estimates(scores, counts), p))
    compressed = [i for i, row in enumerate(built) if row.key[1] != "original"]
    for i, p_holm in zip(compressed, stats.holm([built[i].p for i in compressed])):
        built[i] = dataclasses.replace(built[i], p_holm=p_holm)
    return built


def caption_statistics(records: Iterable[ResultRecord], scorers: dict[str, CaptionScorers] | None = None,
                       resamples: int = stats.BOOTSTRAP_RESAMPLES) -> list[CaptionRowStats]:
    """`dataset_caption_statistics` of every caption data set in the records."""
    records = [r for r in records if r.is_caption]
    scorers = dataset_scorers(records) if scorers is None else scorers
    by_dataset: dict[str, dict[GroupKey, list[ResultRecord]]] = {}
    for record in records:
        key = (record.dataset, record.method, record.rate, float(record.rho))
        by_dataset.setdefault(record.dataset, {}).setdefault(key, []).append(record)
    return [row for name, rows in by_dataset.items()
            for row in dataset_caption_statistics(rows, scorers[name], resamples)]


# --- rows, CSV, tables ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CaptionRow:
    """One caption table row: a (data set, method, r, rho) summarised over its seeds."""

    dataset: str
    method: str
    rate: int | None
    rho: float
    seeds: tuple[int, ...]
    samples_per_seed: float
    summaries: dict[str, metrics.SeedSummary]
    empty: int
    failures: int
    statistics: CaptionRowStats | None = None  # the paired statistics (`caption_rows`), if computed


def summarize_caption_rows(per_seed: Sequence[CaptionSeedMetrics]) -> list[CaptionRow]:
    """One CaptionRow per (data set, method, r, rho), in the order of `per_seed`."""
    grouped: dict[GroupKey, list[CaptionSeedMetrics]] = {}
    for item in per_seed:
        grouped.setdefault((item.dataset, item.method, item.rate, item.rho), []).append(item)
    rows = []
    for (dataset, method, rate, rho), items in grouped.items():
        scored = [item for item in items if item.num_samples > 0]
        rows.append(CaptionRow(
            dataset=dataset, method=method, rate=rate, rho=rho, seeds=tuple(item.seed for item in items),
            samples_per_seed=float(np.mean([item.num_samples for item in items])),
            summaries={name: summarize_metric([getattr(item, name) for item in scored]) for name in CAPTION_METRICS},
            empty=sum(item.empty for item in items), failures=sum(item.failures for item in items),
        ))
    return rows


def caption_rows(records: Iterable[ResultRecord],
                 resamples: int = stats.BOOTSTRAP_RESAMPLES) -> list[CaptionRow]:
    """The caption table rows of the records' caption data sets, with their paired statistics."""
    records = [r for r in records if r.is_caption]
    scorers = dataset_scorers(records)
    rows = summarize_caption_rows(caption_seed_metrics(records, scorers))
    by_key = {row.key: row for row in caption_statistics(records, scorers, resamples)}
    return [dataclasses.replace(row, statistics=by_key.get((row.dataset, row.method, row.rate, row.rho)))
            for row in rows]


def write_captions_csv(rows: Sequence[CaptionRow], path: Path | str) -> Path:
    """captions.csv (written atomically): one line per row, `{metric}_mean` and `{metric}_std`; CIDEr-D in
    coco-caption's scale, same_caption and codec_tokens_kept as fractions; then the paired statistics
    (`caption_rows`): `{metric}_lo` and `{metric}_hi` (95% bootstrap interval) of INTERVAL_METRICS,
    `delta_cider_p` (sign-flip test of Δ CIDEr = 0) and `delta_cider_p_holm`; empty = undefined (or not
    computed)."""
    path = Path(path)
    header = ["dataset", "method", "rate", "rho", "num_seeds", "samples_per_seed"]
    header += [f"{name}_{part}" for name in CAPTION_METRICS for part in ("mean", "std")] + ["empty", "failures"]
    header += [f"{name}_{part}" for name in INTERVAL_METRICS for part in ("lo", "hi")]
    header += ["delta_cider_p", "delta_cider_p_holm"]
    blank = lambda v: "" if v is None or (isinstance(v, float) and math.isnan(v)) else v  # noqa: E731
    with atomic.atomic_open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for row in rows:
            values = [row.dataset, row.method, row.rate, row.rho, len(row.seeds), row.samples_per_seed]
            for name in CAPTION_METRICS:
                values += [row.summaries[name].mean, row.summaries[name].std]
            values += [row.empty, row.failures]
            st = row.statistics
            for name in INTERVAL_METRICS:
                values += [st.estimates[name].low, st.estimates[name].high] if st else [None, None]
            values += [st.p, st.p_holm] if st else [None, None]
            writer.writerow([blank(v) for v in values])
    return path


def format_cider(summary: metrics.SeedSummary, *, signed: bool = False) -> str:
    """'0.512 ± 0.013' (CIDEr-D, 3 decimals); the mean alone for one seed; '—' if undefined."""
    if math.isnan(summary.mean):
        return "—"
    mean = f"{summary.mean:+.3f}" if signed else f"{summary.mean:.3f}"
    return mean if math.isnan(summary.std) else f"{mean} ± {summary.std:.3f}"


def _percent(summary: metrics.SeedSummary) -> str:
    if math.isnan(summary.mean):
        return "—"
    mean = f"{100 * summary.mean:.1f}"
    return mean if math.isnan(summary.std) else f"{mean} ± {100 * summary.std:.2f}"


CAPTION_COLUMNS = ("Method", "r", "ρ", "CIDEr", "Δ CIDEr", "C-cons.", "Same", "Tokens kept", "Empty", "Failures")


def _cells(row: CaptionRow) -> list[str]:
    s = row.summaries
    return [row.method, "—" if row.rate is None else str(row.rate), format_rho(row.rho), format_cider(s["cider"]),
            "—" if row.method == "original" else format_cider(s["delta_cider"], signed=True),
            format_cider(s["cider_vs_original"]), _percent(s["same_caption"]), _percent(s["codec_tokens_kept"]),
            str(row.empty), str(row.failures)]


def caption_table(dataset: str, rows: Sequence[CaptionRow], codec_backend: str | None = None) -> str:
    """The Markdown table of one caption data set, with its caption."""
    seeds = sorted({seed for row in rows for seed in row.seeds})
    original = [row for row in rows if row.method == "original"]
    samples = original[0].samples_per_seed if original else max(row.samples_per_seed for row in rows)
    codec = f" (backend `{codec_backend}`)" if codec_backend else ""
    caption = (
        f"N = {samples:g} captions per seed, mean ± std over {len(seeds)} seeds {seeds} (ddof 1). CIDEr: "
        "CIDEr-D (coco-caption's definition and scale, computed offline, `agac_jax/eval/cider.py`) of the "
        "compressed caption against the reference, idf over the data set's references; Δ CIDEr: minus that "
        "of the original captions of the same samples; C-cons.: CIDEr-D against the original caption "
        "(idf over the original captions; the `original` row is its ceiling, not 10); Same: compressed "
        f"caption equal to the original one, in %. `codec`: ρ = 1 through the codec{codec}. Tokens kept: "
        "codec tokens kept / all, in %. Empty: compressed captions without a token; Empty and Failures: "
        "totals over seeds."
    )
    lines = [f"## {dataset} (captions)", "", caption, "", "| " + " | ".join(CAPTION_COLUMNS) + " |",
             "|" + "---|" * len(CAPTION_COLUMNS)]
    lines += ["| " + " | ".join([f"`{row.method}`"] + _cells(row)[1:]) + " |" for row in rows]
    with_statistics = [row for row in rows if row.statistics is not None]
    if with_statistics:
        lines += ["", statistics_section(dataset, with_statistics)]
    return "\n".join(lines) + "\n"


def _cider_interval(e: stats.Estimate, *, signed: bool = False, scale: float = 1.0, digits: int = 3) -> str:
    """'0.512 [0.401, 0.630]' (signed: '+0.012 [-0.030, +0.050]'); the value alone without an interval."""
    if not math.isfinite(e.value):
        return "—"
    spec = f"{'+' if signed else ''}.{digits}f"
    text = format(scale * e.value, spec)
    if not math.isfinite(e.low):
        return text
    return f"{text} [{format(scale * e.low, spec)}, {format(scale * e.high, spec)}]"


STATISTICS_COLUMNS = ("Method", "r", "ρ", "N", "CIDEr [95% CI]", "Δ CIDEr vs original [95% CI]", "p (Holm)",
                      "C-cons. [95% CI]", "Same [95% CI]")


def _p_cell(statistics: CaptionRowStats) -> str:
    if not math.isfinite(statistics.p_holm):
        return "—"
    return f"{statistics.p_holm:.2g}" + (" **holds**" if statistics.holds else "")


def statistics_section(dataset: str, rows: Sequence[CaptionRow]) -> str:
    """The paired statistics of one caption data set's rows (those with `statistics`), as in `eval.paired`."""
    seeds = max(row.statistics.num_seeds for row in rows)
    lines = [
        f"### Paired statistics: {dataset} (captions)", "",
        f"95% intervals: paired bootstrap over samples ({stats.BOOTSTRAP_RESAMPLES} replicates, seed "
        f"{stats.BOOTSTRAP_SEED}; each replicate keeps all {seeds} seed(s) of a drawn sample). Δ CIDEr: the "
        "row's captions minus the original captions of the same records; p: paired sign-flip permutation test "
        "of Δ CIDEr = 0 on each sample's seed-averaged difference (exact, or "
        f"{PERMUTATIONS} random sign vectors), Holm-corrected across the compressed rows; **holds**: p < 0.05. "
        "Same in %.", "",
        "| " + " | ".join(STATISTICS_COLUMNS) + " |", "|" + "---|" * len(STATISTICS_COLUMNS)]
    for row in rows:
        st = row.statistics
        e = st.estimates
        is_original = row.method == "original"
        cells = [f"`{row.method}`", "—" if row.rate is None else str(row.rate), format_rho(row.rho),
                 str(st.num_samples), _cider_interval(e["cider"]),
                 "—" if is_original else _cider_interval(e["delta_cider"], signed=True),
                 "—" if is_original else _p_cell(st), _cider_interval(e["cider_vs_original"]),
                 _cider_interval(e["same_caption"], scale=100.0, digits=1)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown(rows: Sequence[CaptionRow], codec_backend: str | None = None) -> list[str]:
    """One caption table per data set ([] without caption rows)."""
    by_dataset: dict[str, list[CaptionRow]] = {}
    for row in rows:
        by_dataset.setdefault(row.dataset, []).append(row)
    return [caption_table(name, members, codec_backend) for name, members in by_dataset.items()]


TERMINAL_WIDTHS = (14, 4, 4, 15, 15, 15, 12, 12, 6, 7)


def terminal_table(rows: Sequence[CaptionRow]) -> str:
    """The caption rows as fixed-width text, per data set (tables.md holds the same with its caption)."""
    by_dataset: dict[str, list[CaptionRow]] = {}
    for row in rows:
        by_dataset.setdefault(row.dataset, []).append(row)
    out = []
    for dataset, members in by_dataset.items():
        seeds = sorted({seed for row in members for seed in row.seeds})
        out += [f"{dataset}: CIDEr-D (coco-caption scale) mean ± std over seeds {seeds}; Same and Tokens in %",
                " ".join(f"{name:>{w}s}" for name, w in zip(CAPTION_COLUMNS, TERMINAL_WIDTHS))]
        out += [" ".join(f"{cell:>{w}s}" for cell, w in zip(_cells(row), TERMINAL_WIDTHS)) for row in members]
        out.append("")
    return "\n".join(out)
