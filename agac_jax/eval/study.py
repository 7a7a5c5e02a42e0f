"""The estimator study (launch/study.py): which local-score estimator keeps what the answer rests on.

For each benchmark of the config (a data set section and the model that answers it) and each scoring
setting (estimator with its window or steps, target, gate domain, reading of the local score): the
clips are scored once with the original answers, and for each fusion weight alpha the fused
selection's evidence recall at the config's ratios; at the config's default alpha, its deletion and
insertion curves and the A.C. of its joined top-rho frames at the recall ratios
(`agac_jax.eval.faithfulness`); and the setting's cost per clip (analytic FLOPs of the program as it
runs, padded shapes included, and measured seconds without compilation). Settings that differ only in
how the local score is read (sign, smoothing) share one scoring run and its cost (`read_local`). The
question-blind and model-only baselines (energy, random, attention) are measured once per benchmark;
random as the mean of `random_draws` draws, since one draw moves its A.C. by a point or more.
`config.selectors` (optional) names more selectors of the registry measured like fused at the curve
alpha on the same scores (the adaptive methods); their rows and the fused row then carry each
question's outcomes (`adaptive.per_question`), and `adaptive.md` compares them with fused, paired.
`adaptive_kind` weighs each question by its kind (`config.kind_weights`); `config.calibrate_kinds`
writes those weights, measured on the benchmark's split at the curve alpha, to `kind_weights.json`.

Rows go to `rows.jsonl` in the workdir as each (benchmark, setting) finishes, so a rerun skips them;
`study.md`, `study.csv` and `recall_vs_cost.png` are written from all rows at the end.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agac_jax.eval import adaptive, atomic, faithfulness, metrics
from agac_jax.scoring import methods, selection

_log = logging.getLogger(__name__)
BASELINES = ("energy", "random", "attention")


@dataclasses.dataclass(frozen=True)
class Setting:
    """One local-score setting: estimator, its window (occlusion) or midpoint steps (IG), the target,
    the gate domain, what fusion reads of the local score (sign, smoothing width in tokens)."""

    estimator: str
    steps: int
    target: str
    gate_domain: str = "embedding"
    local_sign: str = "signed"
    local_smooth: int = 1

    @classmethod
    def parse(cls, text: str) -> "Setting":
        """'estimator/window-or-steps/target[/option...]', options 'input' (gates on the log-mel),
        'magnitude' (|local|) and 'smooth{k}' (a k-token box filter): 'occlusion/1/logp',
        'integrated_gradients/8/log_odds/magnitude/smooth9'."""
        parts = text.split("/")
        if len(parts) < 3 or not parts[1].isdigit():
            raise ValueError(f"a study setting is 'estimator/window-or-steps/target[/option...]', got {text!r}")
        fields: dict[str, Any] = {}
        for option in parts[3:]:
            if option == "input":
                fields["gate_domain"] = option
            elif option == "magnitude":
                fields["local_sign"] = option
            elif option.startswith("smooth") and option[6:].isdigit() and int(option[6:]) >= 1:
                fields["local_smooth"] = int(option[6:])
            else:
                raise ValueError(f"unknown option {option!r} in study setting {text!r}: "
                                 "expected 'input', 'magnitude' or 'smooth<k>'")
        return cls(parts[0], int(parts[1]), parts[2], **fields)

    @property
    def name(self) -> str:
        options = [self.gate_domain] if self.gate_domain != "embedding" else []
        options += [self.local_sign] if self.local_sign != "signed" else []
        options += [f"smooth{self.local_smooth}"] if self.local_smooth != 1 else []
        return "/".join([self.estimator, str(self.steps), self.target, *options])

    @property
    def raw(self) -> "Setting":
        """The setting that scores the same raw local score (signed, unsmoothed): its readings need no
        scoring of their own (`read_local`)."""
        return dataclasses.replace(self, local_sign="signed", local_smooth=1)

    def scoring_fields(self) -> dict[str, Any]:
        key = "window" if self.estimator == "occlusion" else "ig_steps"
        return {"estimator": self.estimator, key: self.steps, "target": self.target, "gate_domain": self.gate_domain,
                "local_sign": self.local_sign, "local_smooth": self.local_smooth}


def read_local(score: Any, setting: Setting) -> Any:
    """A copy of `ClipScores` scored at `setting.raw` whose local score is read as `setting` reads it
    (`program.local_evidence`, the function the program applies), so each reading of one raw score
    is measured without scoring again. Its fused score, frames and keep masks are not recomputed
    (the study fuses with `_with_alpha`)."""
    import jax.numpy as jnp

    from agac_jax.scoring.program import local_evidence

    local = jnp.asarray(score.local)
    valid = jnp.ones(local.shape, bool) if score.slot_valid is None else jnp.asarray(score.slot_valid, bool)
    read = local_evidence(local, valid, sign=setting.local_sign, smooth=setting.local_smooth)
    return dataclasses.replace(score, local=np.asarray(read))


def _with_alpha(score: Any, alpha: float) -> Any:
    """A copy of `ClipScores` whose fused score is at `alpha`."""
    valid = np.ones(len(score.local), bool)
    fused = np.asarray(selection.fuse(score.local, score.global_, valid, alpha))
    return dataclasses.replace(score, fused=fused)


def selection_outcomes(scores: Sequence[Any], waveforms: Sequence[np.ndarray], evidence: Sequence[Any],
                       selector: str, rate: int, rho: float, seeds: Sequence[int] | None = None,
                       weights: Sequence[float] | None = None, batch: methods.SelectionBatch | None = None
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Per sample, the evidence recall of `selector`'s frames at `rho` (float64 [N], NaN without
    evidence) and how many frames it keeps (int64 [N]), all samples selected in one call (the pool of
    an adaptive selector); `seeds`: the `random` selector's seed per sample (default: its index);
    `weights`: per sample, its `adaptive_kind` weight; `batch`: these scores and waveforms already on
    the device (`methods.SelectionBatch`), for many selections over them."""
    seeds = list(range(len(scores))) if seeds is None else list(seeds)
    batch = methods.SelectionBatch(scores, waveforms) if batch is None else batch
    kept = [selection.kept_indices(mask) for mask in batch.masks(selector, rate, rho, seeds, weights)]
    recalls = np.full(len(kept), np.nan)
    for i, (keep, wave, intervals) in enumerate(zip(kept, waveforms, evidence)):
        if intervals:
            mask = metrics.keep_mask_from_indices(keep, selection.static_num_frames(len(wave), rate))
            recalls[i] = metrics.evidence_recall(mask, intervals, len(wave), rate)
    return recalls, np.asarray([len(k) for k in kept], np.int64)


def evidence_recalls(scores: Sequence[Any], waveforms: Sequence[np.ndarray], evidence: Sequence[Any],
                     selector: str, rate: int, rho: float, seeds: Sequence[int] | None = None,
                     weights: Sequence[float] | None = None, batch: methods.SelectionBatch | None = None) -> float:
    """Mean evidence recall of `selector` at `rho` over the samples with evidence (percent); `seeds`:
    the `random` selector's seed per sample (default: its index); `weights`: `adaptive_kind`'s;
    `batch`: as `selection_outcomes`."""
    recalls, _ = selection_outcomes(scores, waveforms, evidence, selector, rate, rho, seeds, weights, batch)
    return 100 * metrics.summarize_evidence_recall(recalls).mean


def clip_flops(scorer: Any, waveforms: Sequence[np.ndarray]) -> float | None:
    """Mean analytic FLOPs per clip of the scoring program at each clip's bucket; None for a family the
    FLOP model does not cover (`eval.flops`: the Whisper-encoder ones)."""
    from agac_jax.eval.flops import analytic_program_flops

    if not hasattr(scorer.model_config, "audio"):
        return None
    per_bucket = {}
    total = 0.0
    for wave in waveforms:
        frames = scorer.bucket_frames(len(wave))
        if frames not in per_bucket:
            per_bucket[frames] = analytic_program_flops(scorer, frames) / scorer.config.batch_size
        total += per_bucket[frames]
    return total / len(waveforms)


def _percent(same: np.ndarray) -> float:
    """A.C. (%) of bool answers-unchanged; nan for none."""
    return 100 * float(np.mean(same)) if len(same) else float("nan")


def question_groups(samples: Sequence[Any]) -> list[str] | None:
    """Each sample's "{kind} {answer}" (e.g. "count yes"), the groups of `by_kind`; None when the samples
    carry no question kind (ClothoAQA, AVHBench)."""
    if not all(getattr(s, "kind", None) for s in samples):
        return None
    return [f"{s.kind} {s.answer}" for s in samples]


def by_kind(groups: Sequence[str], insertion: np.ndarray, joined: np.ndarray) -> dict[str, dict[str, Any]]:
    """A.C. (%) of the insertion clip and of the joined frames per question group, with its size:
    {group: {"questions", "insertion", "joined"}}, groups sorted. insertion, joined: bool [N]."""
    groups = np.asarray(groups)
    return {group: dict(questions=int(np.sum(groups == group)), insertion=_percent(insertion[groups == group]),
                        joined=_percent(joined[groups == group])) for group in sorted(set(groups.tolist()))}


def _row(benchmark: str, selector: str, setting: Setting | None, alpha: float | None, recalls: dict[float, float],
         measured: tuple[faithfulness.Curves, dict[float, np.ndarray]] | None, flops: float | None,
         seconds: float | None, groups: Sequence[str] | None = None, right: np.ndarray | None = None) -> dict[str, Any]:
    row: dict[str, Any] = dict(benchmark=benchmark, selector=selector,
                               setting=setting.name if setting else "", alpha=alpha)
    row.update({f"recall_{rho:g}": value for rho, value in recalls.items()})
    if measured is not None:
        curves, joined = measured
        dependent = curves.audio_dependent()
        row.update({f"ac_joined_{rho:g}": _percent(same) for rho, same in joined.items()})
        row.update(curves.areas())
        half = list(curves.rhos).index(0.5) if 0.5 in curves.rhos else None
        if half is not None:
            row["ac_insertion_0.5"] = _percent(curves.consistent_insertion[:, half])
            row["ac_audio_insertion_0.5"] = _percent(curves.consistent_insertion[dependent, half])
        if 0.5 in joined:
            row["ac_audio_joined_0.5"] = _percent(joined[0.5][dependent])
        if groups is not None and half is not None and 0.5 in joined:
            row["ac_by_kind_0.5"] = by_kind(groups, curves.consistent_insertion[:, half], joined[0.5])
        if right is not None and half is not None:  # A.C. of the answers the model got right, and wrong
            row["ac_right_insertion_0.5"] = _percent(curves.consistent_insertion[right, half])
            row["ac_wrong_insertion_0.5"] = _percent(curves.consistent_insertion[~right, half])
            row["right_answers"] = int(right.sum())
        row["audio_questions"] = int(dependent.sum())
    row.update(flops_per_clip=flops, seconds_per_clip=seconds)
    return row


def run_benchmark(config: Any, bench: Any, workdir: Path, done: set[tuple[str, str]]) -> list[dict[str, Any]]:
    """Every setting and baseline of one benchmark; rows of (benchmark, setting) in `done` are skipped."""
    from agac_jax.data import load_dataset
    from agac_jax.eval.sweep import scoring_config

    name, loaded = load_dataset(bench.dataset)
    samples = loaded.samples
    waveforms = [np.asarray(s.load_waveform(), np.float32) for s in samples]
    questions = [s.question for s in samples]
    evidence = [s.evidence for s in samples]
    groups = question_groups(samples)
    kinds = [getattr(s, "kind", None) for s in samples]
    weights = adaptive.sample_weights(kinds, config.get("kind_weights", ()))
    label = bench.label or name
    base = scoring_config(config)
    from agac_jax import models
    from agac_jax.scoring.scorer import Scorer, axis_rules
    from agac_jax.scoring.sharding import make_mesh

    adapter, params = models.load_adapter(bench.checkpoint_dir, bench.get("kind", ""), mesh=make_mesh(base.mesh_shape),
                                          rules=axis_rules(base))
    first = Scorer(adapter, params, base)
    originals = first.answers(waveforms, questions)
    answer_ids = [ids for _, ids in originals]
    with_evidence = sum(bool(e) for e in evidence)
    right = np.asarray([metrics.parse_answer(t) == s.answer for (t, _), s in zip(originals, samples)])
    _log.info("%s: %d questions (%d with evidence); accuracy of the original answers %.1f%%", label, len(samples),
              with_evidence, 100 * right.mean())
    rows: list[dict[str, Any]] = []
    rhos = tuple(config.recall_rhos)
    curve_rhos = tuple(config.curve_rhos)
    rate = config.rate
    reference_scores = None
    ends = None  # the curves' shared ends (silent clip, clip), computed with the first curves

    def curves_of(selector, scores, seeds=None):
        """The curves, and per recall ratio whether each clip's answer survives its joined top-rho frames."""
        nonlocal ends
        start = time.perf_counter()
        if ends is None:
            ends = faithfulness.curve_ends(first, scores, waveforms, questions)
        out = faithfulness.selector_curves(first, selector, scores, waveforms, questions, rate=rate,
                                           rhos=curve_rhos, seeds=seeds, ends=ends, weights=weights)
        joined = {rho: faithfulness.joined_consistency(first, selector, scores, waveforms, questions, rate=rate,
                                                       rho=rho, seeds=seeds, weights=weights) for rho in rhos}
        _log.info("%s %s: curves at %d ratios and joined A.C. at %d in %.1f s", label, selector, len(curve_rhos),
                  len(rhos), time.perf_counter() - start)
        return out, joined
    selectors = tuple(config.get("selectors", ()))
    baselines = tuple(config.get("baselines", BASELINES))
    written = 0

    def compared(at_alpha, selector, measured, batch):
        """The row fields of `adaptive.per_question`: each question's outcomes at every recall ratio."""
        outcomes = {rho: selection_outcomes(at_alpha, waveforms, evidence, selector, rate, rho, weights=weights,
                                            batch=batch) for rho in rhos}
        frames = [selection.static_num_frames(len(w), rate) for w in waveforms]
        return adaptive.per_question(outcomes, measured[0], measured[1], frames, groups)

    raw_runs: dict[Setting, tuple[list[Any], float, float, float]] = {}  # raw setting -> scores, wall, s, FLOPs
    for text in config.settings:
        setting = Setting.parse(text)
        if (label, setting.name) in done:
            continue
        if setting.raw not in raw_runs:
            scorer = Scorer(adapter, params, dataclasses.replace(base, **setting.raw.scoring_fields()))
            start = time.perf_counter()
            raw_scores = scorer.score(waveforms, questions, answer_ids=answer_ids)
            raw_runs[setting.raw] = (raw_scores, time.perf_counter() - start,
                                     sum(s.seconds["run"] for s in raw_scores) / len(raw_scores),
                                     clip_flops(scorer, waveforms))
        raw_scores, wall, run_seconds, flops = raw_runs[setting.raw]
        scores = [read_local(s, setting) for s in raw_scores]
        reference_scores = reference_scores or scores
        for alpha in config.alphas:
            at_alpha = [_with_alpha(s, alpha) for s in scores]
            batch = methods.SelectionBatch(at_alpha, waveforms)
            recalls = {rho: evidence_recalls(at_alpha, waveforms, evidence, "fused", rate, rho, batch=batch)
                       for rho in rhos}
            curves = None
            if alpha == config.curve_alpha:
                curves = curves_of("fused", at_alpha)
            rows.append(_row(label, "fused", setting, alpha, recalls, curves, flops, run_seconds, groups, right))
            if alpha == config.curve_alpha and config.get("calibrate_kinds", False):
                _write_kind_weights(workdir, label, setting.name, kinds, at_alpha, waveforms, evidence, rate)
            if alpha == config.curve_alpha and selectors:
                rows[-1].update(compared(at_alpha, "fused", curves, batch))
                for selector in selectors:
                    measured = curves_of(selector, at_alpha)
                    recalls = {rho: evidence_recalls(at_alpha, waveforms, evidence, selector, rate, rho,
                                                     weights=weights, batch=batch) for rho in rhos}
                    rows.append(_row(label, selector, setting, alpha, recalls, measured, flops, run_seconds, groups,
                                     right))
                    rows[-1].update(compared(at_alpha, selector, measured, batch))
        batch = methods.SelectionBatch(scores, waveforms)
        aad = {rho: evidence_recalls(scores, waveforms, evidence, "aad", rate, rho, batch=batch) for rho in rhos}
        rows.append(_row(label, "aad", setting, 1.0, aad, None, flops, run_seconds))
        _log.info("%s %s: scored in %.1f s (%.3f s a clip without compilation); fused recall %s", label,
                  setting.name, wall, run_seconds, rows[written][f"recall_{rhos[0]:g}"])
        _append(workdir, rows[written:])
        written = len(rows)
    if (label, "") not in done and baselines:
        if reference_scores is None:  # every setting was done before: the attention score once more
            reference_scores = first.score(waveforms, questions, answer_ids=answer_ids)
        baseline_rows = []
        batch = methods.SelectionBatch(reference_scores, waveforms)
        for selector in baselines:
            # random: the mean of `random_draws` draws, seeds k * N + i for draw k and question i
            draws = [[k * len(samples) + i for i in range(len(samples))]
                     for k in range(config.random_draws if selector == "random" else 1)]
            recalls = {rho: float(np.mean([evidence_recalls(reference_scores, waveforms, evidence, selector, rate, rho,
                                                            seeds, batch=batch) for seeds in draws])) for rho in rhos}
            measured = [curves_of(selector, reference_scores, seeds=seeds) for seeds in draws]
            curves = faithfulness.mean_curves([c for c, _ in measured])
            joined = {rho: np.mean([np.asarray(j[rho], np.float64) for _, j in measured], axis=0) for rho in rhos}
            row = _row(label, selector, None, None, recalls, (curves, joined), None, None, groups, right)
            row["draws"] = len(draws)
            baseline_rows.append(row)
        _append(workdir, baseline_rows)
        rows += baseline_rows
    return rows


def _write_kind_weights(workdir: Path, label: str, setting: str, kinds: Sequence[str | None], scores: Sequence[Any],
                        waveforms: Sequence[np.ndarray], evidence: Sequence[Any], rate: int) -> None:
    """Adds this benchmark's `adaptive.calibrate_kind_weights` of fused on `scores` to kind_weights.json."""
    if not all(kinds):
        raise ValueError(f"{label}: calibrate_kinds needs a question kind on every sample (the scenes benchmark)")
    batch = methods.SelectionBatch(scores, waveforms)
    recalls = {rho: selection_outcomes(scores, waveforms, evidence, "fused", rate, rho, batch=batch)[0]
               for rho in adaptive.CALIBRATION_RHOS}
    calibrated = adaptive.calibrate_kind_weights(kinds, adaptive.evidence_shares(recalls))
    path = workdir / adaptive.KIND_WEIGHTS_NAME
    stored = json.loads(path.read_text()) if path.exists() else {}
    stored[label] = dict(setting=setting, rate=rate, kinds=calibrated,
                         kind_weights=[[kind, round(v["weight"], 4)] for kind, v in calibrated.items()])
    atomic.write_text(path, json.dumps(stored, indent=2) + "\n")
    _log.info("%s: kind weights %s", label, stored[label]["kind_weights"])


def _append(workdir: Path, rows: Sequence[dict[str, Any]]) -> None:
    with (workdir / "rows.jsonl").open("a", encoding="utf-8") as out:
        for row in rows:
            out.write(json.dumps(row) + "\n")
        out.flush()


def read_rows(workdir: Path) -> list[dict[str, Any]]:
    path = workdir / "rows.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


COLUMNS = ("benchmark", "selector", "setting", "alpha", "recall_0.5", "recall_0.7", "ac_joined_0.5", "ac_joined_0.7",
           "ac_insertion_0.5", "ac_audio_joined_0.5", "ac_audio_insertion_0.5", "audio_questions",
           "ac_right_insertion_0.5", "ac_wrong_insertion_0.5", "right_answers", "draws",
           "log_odds_insertion", "log_odds_deletion", "log_odds_gap", "ac_insertion", "ac_deletion", "ac_gap",
           "flops_per_clip", "seconds_per_clip")


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) >= 1e4 else f"{value:.3f}" if abs(value) < 1 else f"{value:.1f}"
    return str(value)


def write_tables(workdir: Path, rows: Sequence[dict[str, Any]]) -> None:
    """study.csv (every column) and study.md (one table per benchmark) from the rows."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic.write_text(workdir / "study.csv", buffer.getvalue())
    lines = ["# Estimator study", "",
             "Evidence recall (%) of the fused selection at rho; A.C. (%) of the top-rho frames joined (the "
             "codec's input) and of the insertion clip (the rest silent) at rho, over all questions and over the "
             "audio questions (ac_audio_*: those whose answer the silent clip changes, `audio_questions` of them), "
             "and of the insertion clip over the questions the model answers right and wrong (ac_right_*, ac_wrong_*; "
             "`right_answers` right); deletion/insertion areas of the "
             "normalised answer log-odds and of A.C. (gap = insertion - deletion, higher is better); cost per clip. "
             "Random: the mean of `draws` draws.",
             ""]
    for bench in dict.fromkeys(row["benchmark"] for row in rows):
        lines += [f"## {bench}", "", "| " + " | ".join(COLUMNS[1:]) + " |", "|" + "---|" * (len(COLUMNS) - 1)]
        lines += ["| " + " | ".join(_cell(row.get(c)) for c in COLUMNS[1:]) + " |"
                  for row in rows if row["benchmark"] == bench]
        lines.append("")
        lines += _by_kind_table(bench, [row for row in rows if row["benchmark"] == bench])
    atomic.write_text(workdir / "study.md", "\n".join(lines))


def _by_kind_table(bench: str, rows: Sequence[dict[str, Any]]) -> list[str]:
    """study.md's section of A.C. at rho 0.5 per question group (insertion / joined), one row per selector."""
    rows = [row for row in rows if row.get("ac_by_kind_0.5")]
    if not rows:
        return []
    groups = sorted({group for row in rows for group in row["ac_by_kind_0.5"]})
    sizes = {group: next(row["ac_by_kind_0.5"][group]["questions"] for row in rows if group in row["ac_by_kind_0.5"])
             for group in groups}
    lines = [f"### {bench}: A.C. (%) at rho 0.5 by question kind and true answer, insertion / joined", "",
             "| selector | setting | alpha | " + " | ".join(f"{g} ({sizes[g]})" for g in groups) + " |",
             "|" + "---|" * (3 + len(groups))]
    for row in rows:
        cells = [row["ac_by_kind_0.5"].get(g) for g in groups]
        lines.append(f"| {row['selector']} | {row['setting']} | {_cell(row['alpha'])} | " + " | ".join(
            f"{_cell(c['insertion'])} / {_cell(c['joined'])}" if c else "" for c in cells) + " |")
    return lines + [""]


def plot_recall_vs_cost(workdir: Path, rows: Sequence[dict[str, Any]], alpha: float, rho: float) -> Path:
    """Evidence recall at `rho` against seconds per clip, one point per setting (fused at `alpha`), one
    panel per benchmark; the baselines as horizontal lines."""
    from agac_jax.eval.plots import plt, save_figure

    benches = list(dict.fromkeys(row["benchmark"] for row in rows))
    figure, axes = plt.subplots(1, len(benches), figsize=(6 * len(benches), 4.5), squeeze=False)
    key = f"recall_{rho:g}"
    for ax, bench in zip(axes[0], benches):
        for row in rows:
            if row["benchmark"] != bench:
                continue
            if row["selector"] == "fused" and row["alpha"] == alpha and row.get("seconds_per_clip"):
                marker = "o" if row["setting"].startswith("occlusion") else "s"
                ax.scatter(row["seconds_per_clip"], row[key], marker=marker)
                ax.annotate(row["setting"].replace("integrated_gradients", "ig"), (row["seconds_per_clip"], row[key]),
                            fontsize=7, xytext=(3, 3), textcoords="offset points")
            elif row["selector"] in BASELINES:
                ax.axhline(row[key], linestyle="--", linewidth=1, color="grey")
                ax.annotate(row["selector"], (0, row[key]), xycoords=("axes fraction", "data"), fontsize=7)
        ax.set_xscale("log")
        ax.set_xlabel("seconds per clip (scoring, no compilation)")
        ax.set_ylabel(f"evidence recall at rho {rho:g} (%)")
        ax.set_title(f"{bench}: fused, alpha {alpha:g}")
    figure.tight_layout()
    path = workdir / "recall_vs_cost.png"
    save_figure(figure, path)
    plt.close(figure)
    return path


def run_study(config: Any, workdir: str | Path) -> list[dict[str, Any]]:
    """Runs (or resumes) the study of `config` into `workdir`; returns every row."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    for text in config.settings:
        Setting.parse(text)
    done = {(row["benchmark"], row["setting"]) for row in read_rows(workdir)}
    for bench in config.benchmarks:
        run_benchmark(config, bench, workdir, done)
    rows = read_rows(workdir)
    write_tables(workdir, rows)
    plot_recall_vs_cost(workdir, rows, config.curve_alpha, config.recall_rhos[0])
    if any(adaptive.PER_QUESTION in row for row in rows):
        adaptive.write_outputs(workdir, rows)
    return rows
