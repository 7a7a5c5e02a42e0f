"""From result records to the poster's tables: per-seed metrics, summaries over seeds, CSV and Markdown.

Per seed, over the records of one (data set, method, r, rho, seed) that did not fail:
- accuracy, precision, recall, F1 of the compressed answers against the labels ("yes" positive);
- A.C., the share of samples whose compressed answer equals the original one;
- delta accuracy, accuracy of the compressed answers minus that of the original answers of the
  same records (so failed samples drop out of both sides);
- evidence recall, the mean over the records whose sample has evidence (NaN if none has);
- codec tokens kept (kept / all codec frames' tokens), audio tokens kept and prefill FLOPs kept
  (compressed / original), each a ratio of sums over the records; keep ratio mean, the mean over
  the records of kept / all codec frames (an adaptive method meets its budget rho-bar in the codec
  frames' sum, so its clips' own ratios spread around it);
- exact match, lmms-eval's metric (`metrics.exact_match`) of the whole compressed reply against the
  label, where accuracy uses the parsed yes/no answer;
- unknown, the compressed answers that parse to neither "yes" nor "no"; failures, the records
  that failed.
Across seeds: mean and sample standard deviation (ddof = 1, `metrics.summarize_seeds`) of each
metric over the seeds that have at least one successful record; unknown and failures are totals.
Fractions stay fractions in the CSV files; the Markdown shows percentages. A data set whose
records carry a prompt suffix (lmms-eval's ClothoAQA protocol) gets the suffix in its caption and an
EM column beside Acc in tables.md; the CSV files always have exact match.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from agac_jax.data.common import skip_counts
from agac_jax.eval import atomic, metrics
from agac_jax.eval.results import METHODS, ResultRecord

GroupKey = tuple[str, str, "int | None", float]

RATIO_METRICS = (
    "accuracy",
    "f1",
    "answer_consistency",
    "precision",
    "recall",
    "delta_accuracy",
    "evidence_recall",
    "codec_tokens_kept",
    "audio_tokens_kept",
    "prefill_flops_kept",
    "exact_match",
    "keep_ratio_mean",
)
MAX_LISTED_PROBLEMS = 25


@dataclasses.dataclass(frozen=True)
class SeedMetrics:
    """The metrics of one (data set, method, r, rho, seed); fractions, NaN where undefined."""

    dataset: str
    method: str
    rate: int | None
    rho: float
    seed: int
    num_samples: int
    failures: int
    unknown: int
    accuracy: float
    precision: float
    recall: float
    f1: float
    answer_consistency: float
    delta_accuracy: float
    exact_match: float
    evidence_recall: float
    evidence_scored: int
    codec_tokens_kept: float
    audio_tokens_kept: float
    prefill_flops_kept: float
    seconds_per_record: float
    keep_ratio_mean: float = math.nan


@dataclasses.dataclass(frozen=True)
class RowSummary:
    """One table row: a (data set, method, r, rho) summarised over its seeds."""

    dataset: str
    method: str
    rate: int | None
    rho: float
    seeds: tuple[int, ...]
    samples_per_seed: float
    summaries: dict[str, metrics.SeedSummary]
    unknown: int
    failures: int


def ratio_of_sums(numerators: Sequence[int | None], denominators: Sequence[int | None]) -> float:
    """sum(numerators) / sum(denominators) over the pairs where both are known; NaN when nothing is."""
    pairs = [(n, d) for n, d in zip(numerators, denominators) if n is not None and d is not None]
    total = sum(d for _, d in pairs)
    return sum(n for n, _ in pairs) / total if total else math.nan


def _mean_ratio(numerators: Sequence[int | None], denominators: Sequence[int | None]) -> float:
    ratios = [n / d for n, d in zip(numerators, denominators) if n is not None and d]
    return float(np.mean(ratios)) if ratios else math.nan


def _nan_scores() -> dict[str, float]:
    return dict(accuracy=math.nan, precision=math.nan, recall=math.nan, f1=math.nan,
                answer_consistency=math.nan, delta_accuracy=math.nan, exact_match=math.nan)


def _answer_scores(ok: Sequence[ResultRecord]) -> dict[str, float]:
    if not ok:
        return _nan_scores()
    labels = [record.label for record in ok]
    compressed = [record.parsed_compressed for record in ok]
    original = [record.parsed_original for record in ok]
    scores = metrics.binary_scores(compressed, labels)
    return dict(
        accuracy=scores.accuracy,
        precision=scores.precision,
        recall=scores.recall,
        f1=scores.f1,
        answer_consistency=metrics.answer_consistency(original, compressed),
        delta_accuracy=scores.accuracy - metrics.accuracy(original, labels),
        exact_match=metrics.exact_match_accuracy([record.answer_compressed or "" for record in ok], labels),
    )


def compute_seed_metrics(dataset: str, method: str, rate: int | None, rho: float, seed: int,
                         records: Sequence[ResultRecord]) -> SeedMetrics:
    """The metrics of the records of one (data set, method, r, rho, seed)."""
    ok = [record for record in records if record.ok]
    recall = metrics.summarize_evidence_recall(
        [math.nan if r.evidence_recall is None else r.evidence_recall for r in ok]
    )
    seconds = [sum(record.seconds.values()) for record in records]
    return SeedMetrics(
        dataset=dataset,
        method=method,
        rate=rate,
        rho=rho,
        seed=seed,
        num_samples=len(ok),
        failures=len(records) - len(ok),
        unknown=metrics.count_unknown([record.parsed_compressed for record in ok]),
        **_answer_scores(ok),
        evidence_recall=recall.mean,
        evidence_scored=recall.num_scored,
        codec_tokens_kept=ratio_of_sums([r.codec_tokens_after for r in ok], [r.codec_tokens_before for r in ok]),
        audio_tokens_kept=ratio_of_sums([r.audio_tokens_after for r in ok], [r.audio_tokens_before for r in ok]),
        prefill_flops_kept=ratio_of_sums([r.prefill_flops_after for r in ok], [r.prefill_flops_before for r in ok]),
        seconds_per_record=float(np.mean(seconds)) if seconds else math.nan,
        keep_ratio_mean=_mean_ratio([r.kept_frames for r in ok], [r.num_frames for r in ok]),
    )


def _method_rank(method: str) -> tuple[int, str]:
    return (METHODS.index(method), "") if method in METHODS else (len(METHODS), method)


def row_order(key: GroupKey) -> tuple:
    """Sort key of a table row: data set; `original` first; then by r, `codec` first, methods in
    METHODS order, rho from high to low."""
    dataset, method, rate, rho = key
    return (dataset, method != "original", rate or 0, _method_rank(method), -rho)


def group_records(records: Iterable[ResultRecord]) -> dict[GroupKey, dict[int, list[ResultRecord]]]:
    """Records by (data set, method, r, rho), then by seed."""
    groups: dict[GroupKey, dict[int, list[ResultRecord]]] = collections.defaultdict(lambda: collections.defaultdict(list))
    for record in records:
        groups[(record.dataset, record.method, record.rate, float(record.rho))][record.seed].append(record)
    return groups


def seed_metrics(records: Iterable[ResultRecord]) -> list[SeedMetrics]:
    """SeedMetrics of every (data set, method, r, rho, seed), in table order then by seed."""
    groups = group_records(records)
    return [
        compute_seed_metrics(*key, seed, groups[key][seed])
        for key in sorted(groups, key=row_order)
        for seed in sorted(groups[key])
    ]


def summarize_metric(values: Sequence[float]) -> metrics.SeedSummary:
    """Mean and std over the seeds whose value is defined (NaN and 0 seeds when none is)."""
    finite = [value for value in values if not math.isnan(value)]
    if not finite:
        return metrics.SeedSummary(mean=math.nan, std=math.nan, num_seeds=0)
    return metrics.summarize_seeds(finite)


def summarize_rows(per_seed: Sequence[SeedMetrics]) -> list[RowSummary]:
    """One RowSummary per (data set, method, r, rho), in the order of `per_seed`."""
    grouped: dict[GroupKey, list[SeedMetrics]] = {}
    for item in per_seed:
        grouped.setdefault((item.dataset, item.method, item.rate, item.rho), []).append(item)
    rows = []
    for (dataset, method, rate, rho), items in grouped.items():
        scored = [item for item in items if item.num_samples > 0]
        summaries = {name: summarize_metric([getattr(item, name) for item in scored]) for name in RATIO_METRICS}
        rows.append(RowSummary(
            dataset=dataset,
            method=method,
            rate=rate,
            rho=rho,
            seeds=tuple(item.seed for item in items),
            samples_per_seed=float(np.mean([item.num_samples for item in items])),
            summaries=summaries,
            unknown=sum(item.unknown for item in items),
            failures=sum(item.failures for item in items),
        ))
    return rows


# --- CSV -----------------------------------------------------------------------------------------


def _csv_value(value: object) -> object:
    if value is None:
        return ""
    if isinstance(value, float) and math.isnan(value):
        return ""
    return value


def write_summary_csv(rows: Sequence[RowSummary], path: Path | str) -> Path:
    """summary.csv (written atomically): one line per row; `{metric}_mean`, `{metric}_std` as fractions;
    empty = undefined."""
    path = Path(path)
    header = ["dataset", "method", "rate", "rho", "num_seeds", "samples_per_seed"]
    header += [f"{name}_{part}" for name in RATIO_METRICS for part in ("mean", "std")]
    header += ["unknown", "failures"]
    with atomic.atomic_open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for row in rows:
            values = [row.dataset, row.method, row.rate, row.rho, len(row.seeds), row.samples_per_seed]
            for name in RATIO_METRICS:
                values += [row.summaries[name].mean, row.summaries[name].std]
            values += [row.unknown, row.failures]
            writer.writerow([_csv_value(value) for value in values])
    return path


def write_per_seed_csv(per_seed: Sequence[SeedMetrics], path: Path | str) -> Path:
    """per_seed.csv (written atomically): every SeedMetrics field, fractions; empty = undefined."""
    path = Path(path)
    names = [field.name for field in dataclasses.fields(SeedMetrics)]
    with atomic.atomic_open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(names)
        for item in per_seed:
            writer.writerow([_csv_value(getattr(item, name)) for name in names])
    return path


def read_summary_csv(path: Path | str) -> list[dict[str, str]]:
    """The rows of a summary.csv as dicts of strings."""
    with Path(path).open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


# --- Markdown ------------------------------------------------------------------------------------


def format_percent(summary: metrics.SeedSummary, *, signed: bool = False) -> str:
    """'73.1 ± 1.30' (mean with 1 decimal, std with 2, in %); the mean alone for one seed; '—' if undefined."""
    if math.isnan(summary.mean):
        return "—"
    mean = f"{100 * summary.mean:+.1f}" if signed else f"{100 * summary.mean:.1f}"
    if math.isnan(summary.std):
        return mean
    return f"{mean} ± {100 * summary.std:.2f}"


def format_rho(rho: float) -> str:
    """The keep ratio as written: 1.0, 0.9, 0.75."""
    return repr(float(rho))


TABLE_COLUMNS = ("Method", "r", "ρ", "Acc", "F1", "A.C.", "Precision", "Recall", "Δ Acc", "Evidence recall",
                 "Tokens kept", "Unknown", "Failures")
EXACT_MATCH_COLUMN = "EM"  # after Acc, for data sets asked with a prompt suffix


def table_columns(exact_match: bool) -> tuple[str, ...]:
    """The Markdown table's columns; with `exact_match`, EM follows Acc."""
    if not exact_match:
        return TABLE_COLUMNS
    at = TABLE_COLUMNS.index("Acc") + 1
    return TABLE_COLUMNS[:at] + (EXACT_MATCH_COLUMN,) + TABLE_COLUMNS[at:]


def _table_line(row: RowSummary, exact_match: bool = False) -> str:
    s = row.summaries
    cells = [
        f"`{row.method}`",
        "—" if row.rate is None else str(row.rate),
        format_rho(row.rho),
        format_percent(s["accuracy"]),
        *([format_percent(s["exact_match"])] if exact_match else []),
        format_percent(s["f1"]),
        format_percent(s["answer_consistency"]),
        format_percent(s["precision"]),
        format_percent(s["recall"]),
        "—" if row.method == "original" else format_percent(s["delta_accuracy"], signed=True),
        format_percent(s["evidence_recall"]),
        format_percent(s["codec_tokens_kept"]),
        str(row.unknown),
        str(row.failures),
    ]
    return "| " + " | ".join(cells) + " |"


def _prompt_caption(suffixes: Sequence[str]) -> str:
    """The caption's sentence on the prompt suffix and exact match ('' without a suffix)."""
    if not suffixes:
        return ""
    shown = " or ".join(f"`{json.dumps(suffix)}`" for suffix in suffixes)
    return (f" Prompt: each question followed by {shown} (`dataset.prompt_suffix`; for ClothoAQA lmms-eval's "
            "protocol). EM: lmms-eval's exact match of the whole reply (stripped, lower-cased, punctuation "
            "removed) against the label; Acc, F1 and A.C. use the parsed yes/no answer.")


def dataset_table(dataset: str, rows: Sequence[RowSummary], codec_backend: str | None = None,
                  prompt_suffixes: Sequence[str] = ()) -> str:
    """The Markdown table of one data set, with its caption; `prompt_suffixes`, the non-empty suffixes
    its records were asked with, add a sentence to the caption and the EM column."""
    seeds = sorted({seed for row in rows for seed in row.seeds})
    original = [row for row in rows if row.method == "original"]
    samples = original[0].samples_per_seed if original else max(row.samples_per_seed for row in rows)
    codec = f" (backend `{codec_backend}`)" if codec_backend else ""
    caption = (
        f"N = {samples:g} samples per seed, mean ± std over {len(seeds)} seeds {seeds} (ddof 1). All metrics "
        f"in %. r: codec token rate (tokens/s); ρ: keep ratio. `original` is the poster's Baseline, "
        f"`codec` (ρ = 1 through the codec{codec}) its SemantiCodec row, `fused` its Attention. "
        "Δ Acc: accuracy minus that of the original answers of the same samples, paired by seed (points). "
        "Evidence recall: over samples with evidence. Tokens kept: codec tokens kept / all. "
        "Unknown and Failures: totals over seeds."
    ) + _prompt_caption(prompt_suffixes)
    columns = table_columns(bool(prompt_suffixes))
    lines = [f"## {dataset}", "", caption, "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += [_table_line(row, bool(prompt_suffixes)) for row in rows]
    return "\n".join(lines) + "\n"


TERMINAL_COLUMNS = (("Method", 14), ("r", 4), ("rho", 4), ("Acc", 12), ("F1", 12), ("A.C.", 12), ("dAcc", 12),
                    ("Ev.recall", 12), ("Tokens", 12), ("Failed", 7))


def terminal_table(rows: Sequence[RowSummary]) -> str:
    """The poster's table as fixed-width text for a terminal: per data set, one line per (method, r, rho)
    with accuracy, F1, answer consistency, accuracy change, evidence recall and codec tokens kept, in %
    (mean ± std over seeds), and the failed records (all seeds; left out of the other columns).
    tables.md holds every column and lists the failures."""
    by_dataset: dict[str, list[RowSummary]] = {}
    for row in rows:
        by_dataset.setdefault(row.dataset, []).append(row)
    out = []
    for dataset, members in by_dataset.items():
        seeds = sorted({seed for row in members for seed in row.seeds})
        out += [f"{dataset}: % mean ± std over seeds {seeds}; rho = 1 of every selecting method is the codec row",
                " ".join(f"{name:>{width}s}" for name, width in TERMINAL_COLUMNS)]
        for row in members:
            s = row.summaries
            cells = (row.method, "-" if row.rate is None else str(row.rate), format_rho(row.rho),
                     format_percent(s["accuracy"]), format_percent(s["f1"]), format_percent(s["answer_consistency"]),
                     "-" if row.method == "original" else format_percent(s["delta_accuracy"], signed=True),
                     format_percent(s["evidence_recall"]), format_percent(s["codec_tokens_kept"]), str(row.failures))
            out.append(" ".join(f"{cell:>{width}s}" for cell, (_, width) in zip(cells, TERMINAL_COLUMNS)))
        out.append("")
    return "\n".join(out)


def _failure_lines(records: Sequence[ResultRecord]) -> list[str]:
    failed = [record for record in records if not record.ok]
    if not failed:
        return ["No failures."]
    counts = collections.Counter((r.failure.stage, r.failure.error_type) for r in failed)
    lines = [f"{len(failed)} failed records:", ""]
    lines += [f"- {count} × stage `{stage}`, `{kind}`" for (stage, kind), count in sorted(counts.items())]
    lines += ["", "| Sample | Method | r | ρ | Seed | Stage | Reason |", "|---|---|---|---|---|---|---|"]
    for r in sorted(failed, key=lambda r: (r.sample_id, r.method, r.rate or 0, r.rho, r.seed))[:MAX_LISTED_PROBLEMS]:
        reason = " ".join(r.failure.message.split())[:160].replace("|", "/")
        lines.append(f"| {r.sample_id} | {r.method} | {r.rate or '—'} | {format_rho(r.rho)} | {r.seed} | "
                     f"{r.failure.stage} | {r.failure.error_type}: {reason} |")
    if len(failed) > MAX_LISTED_PROBLEMS:
        lines.append(f"\n(first {MAX_LISTED_PROBLEMS} of {len(failed)}; all are in the results files)")
    return lines


def _unknown_lines(records: Sequence[ResultRecord]) -> list[str]:
    ok = [record for record in records if record.ok and not record.is_caption]
    original_unknown = sorted({r.sample_id for r in ok if r.parsed_original == metrics.UNKNOWN})
    compressed = collections.Counter(r.method for r in ok if r.parsed_compressed == metrics.UNKNOWN)
    if not original_unknown and not compressed:
        return ["No unparseable answers."]
    lines = [f"Samples whose original answer parses to neither yes nor no: {len(original_unknown)}"]
    if original_unknown:
        shown = ", ".join(original_unknown[:MAX_LISTED_PROBLEMS])
        more = f" (and {len(original_unknown) - MAX_LISTED_PROBLEMS} more)" if len(original_unknown) > MAX_LISTED_PROBLEMS else ""
        lines.append(f"{shown}{more}")
    if compressed:
        lines += ["", "Unparseable compressed answers by method (records, all seeds): "
                  + ", ".join(f"`{m}` {n}" for m, n in sorted(compressed.items(), key=lambda x: _method_rank(x[0])))]
    return lines


def problems_section(records: Sequence[ResultRecord], skipped: Sequence[tuple[str, str]]) -> str:
    """Markdown listing what the loader skipped, the failed records and the unparseable answers."""
    lines = ["## Problems", "", "### Skipped by the data set loader", ""]
    if skipped:
        counts = skip_counts([reason for _, reason in skipped])
        lines += [f"{len(skipped)} skipped: " + ", ".join(f"{n} {kind}" for kind, n in counts.items()) + ".", ""]
        lines += [f"- {item}: {reason}" for item, reason in skipped[:MAX_LISTED_PROBLEMS]]
        if len(skipped) > MAX_LISTED_PROBLEMS:
            lines.append(f"- ... {len(skipped) - MAX_LISTED_PROBLEMS} more, see skipped.json")
    else:
        lines.append("Nothing skipped.")
    lines += ["", "### Failures", "", *_failure_lines(records), "", "### Unparseable answers", "",
              *_unknown_lines(records)]
    return "\n".join(lines) + "\n"


def prompt_suffixes(records: Iterable[ResultRecord]) -> dict[str, tuple[str, ...]]:
    """The non-empty prompt suffixes each data set's records were asked with, sorted."""
    found: dict[str, set[str]] = collections.defaultdict(set)
    for record in records:
        if record.prompt_suffix:
            found[record.dataset].add(record.prompt_suffix)
    return {dataset: tuple(sorted(suffixes)) for dataset, suffixes in found.items()}


def render_markdown(rows: Sequence[RowSummary], records: Sequence[ResultRecord],
                    skipped: Sequence[tuple[str, str]] = (), codec_backend: str | None = None,
                    caption_tables: Sequence[str] = ()) -> str:
    """tables.md: one table per data set, the caption data sets' tables (`eval.captions`), then the
    problems section (failures of every record; unparseable answers of the yes/no ones)."""
    by_dataset: dict[str, list[RowSummary]] = {}
    for row in rows:
        by_dataset.setdefault(row.dataset, []).append(row)
    suffixes = prompt_suffixes(records)
    parts = ["# Results", ""]
    parts += [dataset_table(name, dataset_rows, codec_backend, suffixes.get(name, ()))
              for name, dataset_rows in by_dataset.items()]
    parts += list(caption_tables)
    if not by_dataset and not caption_tables:
        parts.append("No results yet.\n")
    parts.append(problems_section(records, skipped))
    return "\n".join(parts)
