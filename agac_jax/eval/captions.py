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
samples: with one, every n-gram's idf is log(1) - log(1) = 0 and every score 0. No bootstrap
intervals or tests here (the yes/no tables have them).
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from agac_jax.eval import atomic, cider, metrics
from agac_jax.eval.results import ResultRecord
from agac_jax.eval.tables import GroupKey, format_rho, group_records, ratio_of_sums, row_order, summarize_metric

CAPTION_METRICS = ("cider", "delta_cider", "cider_vs_original", "same_caption", "codec_tokens_kept")


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

    @classmethod
    def of(cls, records: Sequence[ResultRecord]) -> "CaptionScorers":
        """The scorers of one data set's caption records (each sample counted once)."""
        references = {r.sample_id: r.reference for r in records}
        originals = {r.sample_id: r.answer_original for r in records if r.answer_original is not None}
        return cls(references=references, originals=originals,
                   against_reference=cider.CiderD([[c] for c in references.values()]),
                   against_original=cider.CiderD([[c] for c in originals.values()]) if originals else None)

    def reference_score(self, record: ResultRecord, caption: str) -> float:
        return self.against_reference.score(caption, [self.references[record.sample_id]])

    def original_score(self, record: ResultRecord) -> float:
        return self.against_original.score(record.answer_compressed or "", [self.originals[record.sample_id]])


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


def caption_seed_metrics(records: Iterable[ResultRecord]) -> list[CaptionSeedMetrics]:
    """CaptionSeedMetrics of every (data set, method, r, rho, seed) of the caption records, in table order."""
    records = [r for r in records if r.is_caption]
    by_dataset: dict[str, list[ResultRecord]] = collections.defaultdict(list)
    for record in records:
        by_dataset[record.dataset].append(record)
    scorers = {name: CaptionScorers.of(members) for name, members in by_dataset.items()}
    groups = group_records(records)
    return [compute_caption_seed_metrics(key, seed, groups[key][seed], scorers[key[0]])
            for key in sorted(groups, key=row_order) for seed in sorted(groups[key])]


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


def write_captions_csv(rows: Sequence[CaptionRow], path: Path | str) -> Path:
    """captions.csv (written atomically): one line per row, `{metric}_mean` and `{metric}_std`; CIDEr-D in
    coco-caption's scale, same_caption and codec_tokens_kept as fractions; empty = undefined."""
    path = Path(path)
    header = ["dataset", "method", "rate", "rho", "num_seeds", "samples_per_seed"]
    header += [f"{name}_{part}" for name in CAPTION_METRICS for part in ("mean", "std")] + ["empty", "failures"]
    blank = lambda v: "" if v is None or (isinstance(v, float) and math.isnan(v)) else v  # noqa: E731
    with atomic.atomic_open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for row in rows:
            values = [row.dataset, row.method, row.rate, row.rho, len(row.seeds), row.samples_per_seed]
            for name in CAPTION_METRICS:
                values += [row.summaries[name].mean, row.summaries[name].std]
            writer.writerow([blank(v) for v in values + [row.empty, row.failures]])
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
    return "\n".join(lines) + "\n"


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
