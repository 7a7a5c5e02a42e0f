"""Adaptive keep ratio against fixed rho at equal tokens: the study's paired comparison, table and plot.

The estimator study (`config.selectors`) measures each adaptive selector like `fused` on the same
scores, all of a benchmark's questions selected in one call (one budget pool: the split). Its rows
then carry each question's outcomes (`per_question`): frames kept and evidence recall at every
recall ratio, and whether the answer survives the insertion clip and the joined frames. Here each
selector is compared with fused, question by question:

- frames kept: the share of the split's codec frames kept (a ratio of sums: the budget, equal for
  fused and the adaptive selectors by construction) and the mean and range of the clips' own ratios;
- evidence recall: the mean over questions with evidence, the paired difference with a bootstrap
  interval (`stats.bootstrap_counts`: 2000 replicates, seed 0) and the exact sign test on the
  questions whose recall differs (`stats.mcnemar_exact`);
- A.C. of the insertion clip and of the joined frames: the paired difference and the exact
  McNemar test on the discordant questions.

p-values are Holm-corrected over a benchmark's tests (`stats.holm`). Outputs: `adaptive.md`,
`adaptive.csv` and `ac_vs_tokens.png` (A.C. against the share of frames kept, fixed against
adaptive) in the study's workdir.

`adaptive_kind` weighs each clip by its question kind (`kind_weights`, calibrated on a validation
split by `calibrate_kind_weights`): per kind, the mean over its questions with evidence of the
smallest keep ratio (on the grid CALIBRATION_RHOS) at which fused keeps all of the question's evidence
frames, divided by that mean over every kind's questions. A kind whose evidence is one event (existence)
needs fewer frames than one whose answer counts every occurrence. The weight is the kind's alone: the
answer is not known when the clip is compressed.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agac_jax.eval import atomic, stats

PER_QUESTION = "per_question"
CALIBRATION_RHOS = tuple(round(0.05 * i, 2) for i in range(1, 21))  # 0.05, 0.1, ..., 1.0
KIND_WEIGHTS_NAME = "kind_weights.json"
REFERENCE = "fused"
MEASURES = ("recall", "insertion", "joined")


def per_question(outcomes: Mapping[float, tuple[np.ndarray, np.ndarray]], curves: Any,
                 joined: Mapping[float, np.ndarray], frames: Sequence[int],
                 groups: Sequence[str] | None) -> dict[str, Any]:
    """A study row's per-question fields.

    Args:
      outcomes: per recall ratio rho, (evidence recall float [N] NaN without evidence, frames kept int [N]).
      curves: the selector's `faithfulness.Curves` (insertion consistency at its ratios).
      joined: per rho, bool [N]: the answer survives the joined frames.
      frames: [N] each question's clip's codec frames.
      groups: [N] "{kind} {answer}" or None.
    Returns:
      {PER_QUESTION: {"frames": [N], "groups": [N] or None, f"kept_{rho}", f"recall_{rho}" (None without
      evidence), f"joined_{rho}", f"insertion_{rho}" (where rho is a curve ratio): [N]}}.
    """
    out: dict[str, Any] = {"frames": [int(f) for f in frames], "groups": list(groups) if groups else None}
    for rho, (recall, kept) in outcomes.items():
        out[f"kept_{rho:g}"] = [int(k) for k in kept]
        out[f"recall_{rho:g}"] = [None if math.isnan(r) else float(r) for r in recall]
        out[f"joined_{rho:g}"] = [int(bool(j)) for j in joined[rho]]
        if rho in curves.rhos:
            column = list(curves.rhos).index(rho)
            out[f"insertion_{rho:g}"] = [int(bool(c)) for c in curves.consistent_insertion[:, column]]
    return {PER_QUESTION: out}


def evidence_shares(recalls: Mapping[float, np.ndarray]) -> np.ndarray:
    """float64 [N]: per question, the smallest ratio rho of `recalls` ({rho: recall [N], NaN without
    evidence}) at which the recall is 1; NaN without evidence (or, off the grid, never reached)."""
    rhos = sorted(recalls)
    first = np.full(len(recalls[rhos[0]]), np.nan)
    for rho in reversed(rhos):
        first = np.where(np.asarray(recalls[rho]) >= 1.0, rho, first)
    return first


def calibrate_kind_weights(kinds: Sequence[str], shares: np.ndarray) -> dict[str, dict[str, float]]:
    """{kind: {"weight", "mean_share", "questions"}}: each kind's mean evidence share (`evidence_shares`)
    over its questions that have one, over the mean of all of them; kinds sorted. A kind without such
    a question weighs 1."""
    kinds = np.asarray(kinds)
    shares = np.asarray(shares, np.float64)
    known = np.isfinite(shares)
    if not known.any():
        raise ValueError("no question has evidence that fused reaches: nothing to calibrate the kinds on")
    overall = float(shares[known].mean())
    out = {}
    for kind in sorted(set(kinds.tolist())):
        mine = known & (kinds == kind)
        mean = float(shares[mine].mean()) if mine.any() else math.nan
        out[kind] = dict(weight=mean / overall if mine.any() else 1.0, mean_share=mean, questions=int(mine.sum()))
    return out


def sample_weights(kinds: Sequence[str | None], weights: Sequence[Sequence[Any]]) -> list[float]:
    """Each sample's `adaptive_kind` weight from `weights` ((kind, weight) pairs, a config's
    `kind_weights`); a sample whose kind is not listed, or that has none, weighs 1."""
    table = {str(kind): float(weight) for kind, weight in weights}
    bad = {kind: w for kind, w in table.items() if not (math.isfinite(w) and w > 0)}
    if bad:
        raise ValueError(f"kind_weights must be finite and > 0; got {bad}")
    return [table.get(kind, 1.0) if kind else 1.0 for kind in kinds]


def _values(row: Mapping[str, Any], measure: str, rho: float) -> np.ndarray:
    """float64 [N] of a row's per-question measure at rho (NaN where absent)."""
    values = row[PER_QUESTION].get(f"{measure}_{rho:g}")
    if values is None:
        return np.full(len(row[PER_QUESTION]["frames"]), np.nan)
    return np.asarray([np.nan if v is None else v for v in values], np.float64)


def paired(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """a - b over the questions where both are defined: the mean difference (points of percent) with
    its bootstrap interval, the sign test's discordant counts (a higher, b higher) and p."""
    both = ~(np.isnan(a) | np.isnan(b))
    d = 100 * (a[both] - b[both])
    if not d.size:
        return dict(diff=math.nan, low=math.nan, high=math.nan, better=0, worse=0, p=math.nan)
    counts = stats.bootstrap_counts(d.size)
    low, high = np.percentile(counts @ d / d.size, [2.5, 97.5])
    test = stats.mcnemar_exact(int(np.sum(d > 0)), int(np.sum(d < 0)))
    return dict(diff=float(d.mean()), low=float(low), high=float(high), better=test.b, worse=test.c, p=test.p)


def comparisons(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One line per (benchmark, selector, rho) of the rows with per-question outcomes: frames kept,
    each measure and, for a selector other than fused, its paired difference from fused (the row of
    the same benchmark, setting and alpha); p Holm-corrected per benchmark."""
    measured = [row for row in rows if PER_QUESTION in row]
    lines = []
    for row in measured:
        reference = next((r for r in measured if r["selector"] == REFERENCE and r["benchmark"] == row["benchmark"]
                          and r["setting"] == row["setting"] and r["alpha"] == row["alpha"]), None)
        frames = np.asarray(row[PER_QUESTION]["frames"], np.float64)
        rhos = sorted(float(key.split("_")[1]) for key in row[PER_QUESTION] if key.startswith("kept_"))
        for rho in rhos:
            kept = _values(row, "kept", rho)
            ratio = kept / frames
            line: dict[str, Any] = dict(benchmark=row["benchmark"], selector=row["selector"], setting=row["setting"],
                                        alpha=row["alpha"], rho=rho, questions=len(frames),
                                        frames_kept=100 * kept.sum() / frames.sum(), ratio_mean=100 * ratio.mean(),
                                        ratio_min=100 * ratio.min(), ratio_max=100 * ratio.max())
            for measure in MEASURES:
                values = _values(row, measure, rho)
                line[measure] = 100 * float(np.nanmean(values)) if np.isfinite(values).any() else math.nan
                if reference is not None and row is not reference:
                    diff = paired(values, _values(reference, measure, rho))
                    line.update({f"{measure}_{key}": value for key, value in diff.items()})
            lines.append(line)
    for bench in dict.fromkeys(line["benchmark"] for line in lines):
        keys = [(line, f"{m}_p") for line in lines if line["benchmark"] == bench for m in MEASURES
                if f"{m}_p" in line]
        for (line, key), adjusted in zip(keys, stats.holm([line[key] for line, key in keys])):
            line[key.replace("_p", "_p_holm")] = adjusted
    return lines


def ratio_by_group(row: Mapping[str, Any], rho: float) -> dict[str, float]:
    """The mean of the clips' own keep ratios (%) per question group at rho ({} without groups)."""
    groups = row[PER_QUESTION].get("groups")
    if not groups:
        return {}
    ratio = _values(row, "kept", rho) / np.asarray(row[PER_QUESTION]["frames"], np.float64)
    groups = np.asarray(groups)
    return {g: 100 * float(ratio[groups == g].mean()) for g in sorted(set(groups.tolist()))}


def _num(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.{digits}f}"


def _p(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.2g}"


def _delta(line: Mapping[str, Any], measure: str) -> str:
    if f"{measure}_diff" not in line:
        return ""
    return (f"{line[f'{measure}_diff']:+.1f} [{_num(line[f'{measure}_low'])}, {_num(line[f'{measure}_high'])}] "
            f"{line[f'{measure}_better']}/{line[f'{measure}_worse']} p {_p(line[f'{measure}_p_holm'])}")


def markdown(lines: Sequence[Mapping[str, Any]], rows: Sequence[Mapping[str, Any]]) -> str:
    """adaptive.md: per benchmark, one table of every selector at every rho-bar, then the clips' keep
    ratios per question group."""
    out = ["# Adaptive keep ratio against fixed rho, at equal frames", "",
           "Every selector keeps the same share of the benchmark's codec frames at each rho-bar (`frames %`: "
           "kept / all, the budget; adaptive selectors pool all of the split's questions); `clip %`: the mean "
           "of the clips' own ratios, min-max. Recall: evidence recall (%); insertion / joined: A.C. (%) of the "
           "insertion clip (the rest silent) and of the kept frames joined. Δ: the adaptive selector minus fused "
           "on the same questions (points), [95% bootstrap interval], questions better/worse, exact sign "
           "(McNemar) test p, Holm-corrected over the benchmark's tests.", ""]
    for bench in dict.fromkeys(line["benchmark"] for line in lines):
        subset = sorted((line for line in lines if line["benchmark"] == bench),
                        key=lambda x: (x["rho"], x["selector"] != REFERENCE, x["selector"]))
        first = subset[0]
        out += [f"## {bench} ({first['questions']} questions; {first['setting']}, alpha {first['alpha']:g})", "",
                "| selector | rho-bar | frames % | clip % (min-max) | recall | Δ recall | insertion | Δ insertion "
                "| joined | Δ joined |", "|" + "---|" * 10]
        for line in subset:
            out.append(f"| {line['selector']} | {line['rho']:g} | {_num(line['frames_kept'])} | "
                       f"{_num(line['ratio_mean'])} ({_num(line['ratio_min'], 0)}-{_num(line['ratio_max'], 0)}) | "
                       f"{_num(line['recall'])} | {_delta(line, 'recall')} | {_num(line['insertion'])} | "
                       f"{_delta(line, 'insertion')} | {_num(line['joined'])} | {_delta(line, 'joined')} |")
        out.append("")
        grouped = [(row, rho) for row in rows if PER_QUESTION in row and row["benchmark"] == bench
                   for rho in sorted({line["rho"] for line in subset}) if ratio_by_group(row, rho)]
        if grouped:
            names = list(ratio_by_group(*grouped[0]))
            out += [f"### {bench}: the clips' mean keep ratio (%) per question kind and true answer", "",
                    "| selector | rho-bar | " + " | ".join(names) + " |", "|" + "---|" * (2 + len(names))]
            for row, rho in sorted(grouped, key=lambda x: (x[1], x[0]["selector"] != REFERENCE)):
                ratios = ratio_by_group(row, rho)
                out.append(f"| {row['selector']} | {rho:g} | " + " | ".join(_num(ratios.get(n)) for n in names) + " |")
            out.append("")
    return "\n".join(out)


def plot(workdir: Path, lines: Sequence[Mapping[str, Any]]) -> Path:
    """ac_vs_tokens.png: A.C. (insertion solid, joined dashed) against the frames kept, one line per
    selector, one panel per benchmark."""
    from agac_jax.eval.plots import plt, save_figure

    benches = list(dict.fromkeys(line["benchmark"] for line in lines))
    figure, axes = plt.subplots(1, len(benches), figsize=(6 * len(benches), 4.5), squeeze=False)
    for ax, bench in zip(axes[0], benches):
        subset = [line for line in lines if line["benchmark"] == bench]
        for index, selector in enumerate(dict.fromkeys(line["selector"] for line in subset)):
            points = sorted((line for line in subset if line["selector"] == selector), key=lambda x: x["frames_kept"])
            x = [p["frames_kept"] for p in points]
            colour = f"C{index}"
            label = f"{selector} (fixed rho)" if selector == REFERENCE else selector
            ax.plot(x, [p["insertion"] for p in points], "o-", color=colour, label=f"{label}, insertion")
            ax.plot(x, [p["joined"] for p in points], "s--", color=colour, label=f"{label}, joined")
        ax.set_xlabel("codec frames kept (% of the split's, = tokens)")
        ax.set_ylabel("A.C. (%)")
        ax.set_title(bench)
        ax.legend(fontsize=7)
    figure.tight_layout()
    path = workdir / "ac_vs_tokens.png"
    save_figure(figure, path)
    plt.close(figure)
    return path


def write_outputs(workdir: Path, rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """adaptive.md, adaptive.csv and ac_vs_tokens.png from the study's rows; returns the lines."""
    lines = comparisons(rows)
    buffer = io.StringIO()
    fields = list(dict.fromkeys(key for line in lines for key in line))
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    writer.writerows(lines)
    atomic.write_text(workdir / "adaptive.csv", buffer.getvalue())
    atomic.write_text(workdir / "adaptive.md", markdown(lines, rows))
    plot(workdir, lines)
    return lines
