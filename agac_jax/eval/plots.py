"""Figures of a sweep (matplotlib, Agg backend, PNG), one set per data set.

- `{dataset}_accuracy_ac_vs_rho.png`: accuracy (top) and A.C. (bottom) against rho, one column per
  codec rate r, one line per method with error bars (the 95% paired-bootstrap interval of
  `eval.paired` when given, else the std over seeds); every method's line ends at
  rho = 1 with the `codec` row (rho = 1 is the codec for every method); `original` is a dashed line.
- `{dataset}_tokens_vs_ac.png`: A.C. against the share of codec tokens kept, colour per method,
  marker per rate, error bars on both axes (A.C.: its 95% interval when given; tokens: std over seeds).
- `{dataset}_evidence_recall_vs_rho.png`: evidence recall against rho, one column per rate, one line
  per method; only for data sets with evidence.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from agac_jax.eval import atomic  # noqa: E402
from agac_jax.eval.tables import RowSummary  # noqa: E402

# (data set, method, r, rho) -> {metric: estimate with .value, .low, .high} (`eval.paired.RowStats.estimates`)
Intervals = dict[tuple, dict]

MARKERS = ("o", "s", "^", "D", "v", "P", "X")


def save_figure(figure: plt.Figure, path: Path) -> None:
    """The PNG replaces `path` atomically (a kill leaves the previous figure or the new one)."""
    with atomic.atomic_open(path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=100)


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _point(row: RowSummary, metric: str, intervals: Intervals | None) -> tuple[float, float, float] | None:
    """(value, lower error, upper error) in percent: the row's interval where given, else mean and std."""
    estimate = (intervals or {}).get((row.dataset, row.method, row.rate, float(row.rho)), {}).get(metric)
    if estimate is not None and math.isfinite(estimate.value) and math.isfinite(estimate.low):
        return 100 * estimate.value, 100 * (estimate.value - estimate.low), 100 * (estimate.high - estimate.value)
    summary = row.summaries[metric]
    if math.isnan(summary.mean):
        return None
    std = 0.0 if math.isnan(summary.std) else 100 * summary.std
    return 100 * summary.mean, std, std


def _curve(rows: Sequence[RowSummary], method: str, rate: int, metric: str,
           intervals: Intervals | None = None) -> tuple[list[float], list[float], list[list[float]]]:
    """(rho, value, [lower errors, upper errors]) of one method at one rate, with the codec row at rho = 1,
    sorted by rho."""
    points = {}
    for row in rows:
        if row.rate == rate and (row.method == method or (row.method == "codec" and row.rho == 1.0)):
            point = _point(row, metric, intervals)
            if point is not None:
                points[row.rho] = point
    rhos = sorted(points)
    return rhos, [points[rho][0] for rho in rhos], [[points[rho][1] for rho in rhos], [points[rho][2] for rho in rhos]]


def _selecting_methods(rows: Sequence[RowSummary]) -> list[str]:
    methods = []
    for row in rows:
        if row.method not in ("original", "codec") and row.method not in methods:
            methods.append(row.method)
    return methods


def _rates(rows: Sequence[RowSummary]) -> list[int]:
    return sorted({row.rate for row in rows if row.rate is not None})


def _original_line(axis: plt.Axes, rows: Sequence[RowSummary], metric: str) -> None:
    for row in rows:
        if row.method == "original" and not math.isnan(row.summaries[metric].mean):
            axis.axhline(100 * row.summaries[metric].mean, color="black", linestyle="--", linewidth=1, label="original")


def _rho_panels(rows: Sequence[RowSummary], metrics_and_labels: Sequence[tuple[str, str]], title: str,
                path: Path, with_original: bool, intervals: Intervals | None = None) -> Path:
    rates, methods = _rates(rows), _selecting_methods(rows) or ["codec"]
    figure, axes = plt.subplots(len(metrics_and_labels), max(len(rates), 1), squeeze=False,
                                figsize=(4.2 * max(len(rates), 1), 3.2 * len(metrics_and_labels)))
    for column, rate in enumerate(rates):
        for line, (metric, label) in enumerate(metrics_and_labels):
            axis = axes[line][column]
            for method in methods:
                rhos, means, errors = _curve(rows, method, rate, metric, intervals)
                if rhos:
                    axis.errorbar(rhos, means, yerr=errors, marker="o", markersize=3, capsize=3, label=method)
            if with_original:
                _original_line(axis, rows, metric)
            axis.set_title(f"r = {rate}")
            axis.set_xlabel("keep ratio ρ")
            axis.set_ylabel(f"{label} (%)")
            axis.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        figure.legend(handles, labels, loc="lower center", ncol=min(len(labels), 6), fontsize="small")
    figure.suptitle(title)
    figure.tight_layout(rect=(0, 0.08, 1, 1))
    save_figure(figure, path)
    plt.close(figure)
    return path


def plot_accuracy_ac(rows: Sequence[RowSummary], dataset: str, out_dir: Path,
                     intervals: Intervals | None = None) -> Path:
    """Accuracy and A.C. against rho per rate; returns the PNG's path."""
    path = out_dir / f"{safe_name(dataset)}_accuracy_ac_vs_rho.png"
    error = "95% CI" if intervals else "std over seeds"
    return _rho_panels(rows, [("accuracy", "accuracy"), ("answer_consistency", "A.C.")],
                       f"{dataset}: accuracy and answer consistency (bars: {error})", path, with_original=True,
                       intervals=intervals)


def plot_evidence_recall(rows: Sequence[RowSummary], dataset: str, out_dir: Path) -> Path | None:
    """Evidence recall against rho per rate and method; None when no row has evidence recall."""
    if all(math.isnan(row.summaries["evidence_recall"].mean) for row in rows):
        return None
    path = out_dir / f"{safe_name(dataset)}_evidence_recall_vs_rho.png"
    return _rho_panels(rows, [("evidence_recall", "evidence recall")], f"{dataset}: evidence recall", path,
                       with_original=False)


def plot_tokens_vs_ac(rows: Sequence[RowSummary], dataset: str, out_dir: Path,
                      intervals: Intervals | None = None) -> Path:
    """A.C. against codec tokens kept (%), one colour per method and one marker per rate."""
    path = out_dir / f"{safe_name(dataset)}_tokens_vs_ac.png"
    figure, axis = plt.subplots(figsize=(6.5, 4.5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    methods = ["codec", *_selecting_methods(rows)]
    rates = _rates(rows)
    for row in rows:
        tokens, ac = row.summaries["codec_tokens_kept"], _point(row, "answer_consistency", intervals)
        if row.method not in methods or math.isnan(tokens.mean) or ac is None:
            continue
        axis.errorbar(
            100 * tokens.mean, ac[0],
            xerr=0.0 if math.isnan(tokens.std) else 100 * tokens.std,
            yerr=[[ac[1]], [ac[2]]],
            color=colours[methods.index(row.method) % len(colours)],
            marker=MARKERS[rates.index(row.rate) % len(MARKERS)], capsize=2, linestyle="none",
        )
    for index, method in enumerate(methods):
        axis.plot([], [], color=colours[index % len(colours)], marker="o", linestyle="none", label=method)
    for index, rate in enumerate(rates):
        axis.plot([], [], color="gray", marker=MARKERS[index % len(MARKERS)], linestyle="none", label=f"r = {rate}")
    axis.set_xlabel("codec tokens kept (%)")
    axis.set_ylabel("A.C. (%)")
    axis.set_title(f"{dataset}: answer consistency against tokens kept")
    axis.grid(alpha=0.3)
    axis.legend(fontsize="small", ncol=2)
    figure.tight_layout()
    save_figure(figure, path)
    plt.close(figure)
    return path


def write_plots(rows: Sequence[RowSummary], out_dir: Path | str, intervals: Intervals | None = None) -> list[Path]:
    """Every figure of every data set into out_dir (created); returns the written paths. `intervals`:
    the rows' 95% intervals (`eval.paired`), drawn as the accuracy and A.C. error bars."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    datasets: dict[str, list[RowSummary]] = {}
    for row in rows:
        datasets.setdefault(row.dataset, []).append(row)
    written = []
    for dataset, dataset_rows in datasets.items():
        written.append(plot_accuracy_ac(dataset_rows, dataset, out_dir, intervals))
        written.append(plot_tokens_vs_ac(dataset_rows, dataset, out_dir, intervals))
        evidence = plot_evidence_recall(dataset_rows, dataset, out_dir)
        if evidence is not None:
            written.append(evidence)
    return written
