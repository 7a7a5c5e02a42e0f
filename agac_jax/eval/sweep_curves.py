"""Deletion and insertion curves in the sweep (`config.curves`): records, resume, tables, plots.

With `config.curves.enabled`, every scored sample of a sweep also gets, for each selecting method of
`config.curves.methods` (default: the sweep's own), its curves at `config.curves.rhos` on the frame
grid of `config.curves.rate` (`faithfulness.selector_curves`: frames silenced in the waveform, no
codec). They are written per process to `curves.jsonl` (`curves.{i}.jsonl` with several), one
`CurveRecord` per (sample, method), fsynced like the results. A record carries its rate and rhos, so
`curves` is not part of the config's fingerprint: it can be switched on for a finished sweep (the
resume computes the curves alone) or changed, and `merge` tables every (method, rate, rhos) it finds.

`merge` writes `curves.csv` (per dataset, method, rate: clips and the areas of `Curves.areas`), a
section of `tables.md` and `plots/{dataset}_deletion_insertion.png` (mean curves, one line per method).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from absl import logging

from agac_jax.eval import atomic, faithfulness, results

SINGLE_NAME = "curves.jsonl"
GLOB = "curves*.jsonl"
AREA_COLUMNS = ("log_odds_insertion", "log_odds_deletion", "log_odds_gap", "ac_insertion", "ac_deletion", "ac_gap")


@dataclasses.dataclass(frozen=True)
class CurveSettings:
    """What `config.curves` asks: the methods (selector names), the frame grid, the ratios."""

    methods: tuple[str, ...]
    rate: int
    rhos: tuple[float, ...]

    @classmethod
    def of_config(cls, config: Any) -> "CurveSettings | None":
        """The settings of a sweep config, or None when curves are off (or the config has no section)."""
        section = config.get("curves") if hasattr(config, "get") else None
        if section is None or not section.get("enabled", False):
            return None
        methods = tuple(section.get("methods", ()) or (m for m in config.methods if m in results.SELECTING_METHODS))
        return cls(methods=methods, rate=int(section.rate), rhos=tuple(float(r) for r in section.rhos))

    def validate(self, config: Any) -> None:
        from agac_jax.codec import SUPPORTED_TOKEN_RATES

        bad = [m for m in self.methods if m not in results.SELECTING_METHODS]
        if bad or not self.methods:
            raise ValueError(f"config.curves.methods must be a non-empty subset of {results.SELECTING_METHODS} "
                             f"(or empty with frame-selecting methods in config.methods); bad: {bad}")
        if self.rate not in SUPPORTED_TOKEN_RATES:
            raise ValueError(f"config.curves.rate must be one of {SUPPORTED_TOKEN_RATES}, got {self.rate}")
        rhos = self.rhos
        if len(rhos) < 2 or rhos[0] != 0.0 or rhos[-1] != 1.0 or any(b <= a for a, b in zip(rhos, rhos[1:])):
            raise ValueError(f"config.curves.rhos must increase from 0 to 1, got {list(rhos)}")
        if config.model.get("kind", "qwen2_audio") == "pandagpt":
            raise ValueError("config.curves is not supported for PandaGPT yet (its answers need the video, which "
                             "faithfulness.selector_curves does not pass); set config.curves.enabled = False")

    def key(self, sample_id: str, method: str) -> tuple[str, str, int, tuple[float, ...]]:
        return (sample_id, method, self.rate, self.rhos)


@dataclasses.dataclass(frozen=True)
class CurveRecord:
    """One sample's curves of one method (the arrays of `faithfulness.Curves`, one row), or its failure."""

    dataset: str
    sample_id: str
    method: str
    rate: int
    rhos: tuple[float, ...]
    log_odds_insertion: tuple[float, ...] = ()
    log_odds_deletion: tuple[float, ...] = ()
    consistent_insertion: tuple[bool, ...] = ()
    consistent_deletion: tuple[bool, ...] = ()
    seconds: float = 0.0
    failure: str | None = None

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, line: str) -> "CurveRecord":
        raw = json.loads(line)
        return cls(**{f.name: tuple(raw[f.name]) if isinstance(raw.get(f.name), list) else raw.get(f.name, f.default)
                      for f in dataclasses.fields(cls) if f.name in raw})

    @property
    def key(self) -> tuple[str, str, int, tuple[float, ...]]:
        return (self.sample_id, self.method, self.rate, tuple(self.rhos))


def curves_path(workdir: Path | str, process_index: int, process_count: int) -> Path:
    """`curves.jsonl` for a single process, `curves.{process_index}.jsonl` for several."""
    return Path(workdir) / (SINGLE_NAME if process_count == 1 else f"curves.{process_index}.jsonl")


def read_records(workdir: Path | str) -> list[CurveRecord]:
    """Every complete curve record of a workdir's curve files, the last one per key (a retried failure)."""
    latest: dict[tuple, CurveRecord] = {}
    for path in sorted(Path(workdir).glob(GLOB)):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(keepends=True), 1):
            if not line.endswith("\n"):  # a crash's partial last line: ResultsWriter cuts it on the next run
                continue
            try:
                record = CurveRecord.from_json(line)
            except (ValueError, TypeError) as error:
                raise results.CorruptResultsError(f"{path}:{number}: not a curve record ({error})") from error
            latest[record.key] = record
    return list(latest.values())


def done_keys(workdir: Path | str, *, retry_failed: bool = False) -> set[tuple]:
    return {r.key for r in read_records(workdir) if not (retry_failed and r.failure is not None)}


def from_curves(dataset: str, sample_ids: Sequence[str], curves: faithfulness.Curves, rate: int,
                seconds: float) -> list[CurveRecord]:
    """One record per clip of `curves` (clips in `sample_ids` order); `seconds` is each clip's share."""
    return [CurveRecord(dataset=dataset, sample_id=sid, method=curves.selector, rate=rate, rhos=curves.rhos,
                        log_odds_insertion=tuple(map(float, curves.log_odds_insertion[i])),
                        log_odds_deletion=tuple(map(float, curves.log_odds_deletion[i])),
                        consistent_insertion=tuple(map(bool, curves.consistent_insertion[i])),
                        consistent_deletion=tuple(map(bool, curves.consistent_deletion[i])), seconds=seconds)
            for i, sid in enumerate(sample_ids)]


@dataclasses.dataclass(frozen=True)
class CurveRow:
    """The curves of one (dataset, method, rate, rhos) over its clips, and their failures."""

    dataset: str
    method: str
    rate: int
    curves: faithfulness.Curves
    failed: int

    @property
    def clips(self) -> int:
        return len(self.curves.log_odds_insertion)


def rows_of(records: Iterable[CurveRecord], method_order: Sequence[str] = ()) -> list[CurveRow]:
    """Groups the records by (dataset, method, rate, rhos) in sample order; failures are counted."""
    groups: dict[tuple, list[CurveRecord]] = {}
    for record in sorted(records, key=lambda r: r.sample_id):
        groups.setdefault((record.dataset, record.method, record.rate, tuple(record.rhos)), []).append(record)
    rank = {m: i for i, m in enumerate(method_order)}
    rows = []
    for (dataset, method, rate, rhos), members in sorted(
            groups.items(), key=lambda kv: (kv[0][0], kv[0][2], rank.get(kv[0][1], len(rank)), kv[0][1], kv[0][3])):
        ok = [r for r in members if r.failure is None]
        stack = lambda name, dtype: np.asarray([getattr(r, name) for r in ok], dtype).reshape(len(ok), len(rhos))  # noqa: E731
        curves = faithfulness.Curves(selector=method, rhos=rhos, log_odds_insertion=stack("log_odds_insertion", np.float64),
                                     log_odds_deletion=stack("log_odds_deletion", np.float64),
                                     consistent_insertion=stack("consistent_insertion", bool),
                                     consistent_deletion=stack("consistent_deletion", bool))
        rows.append(CurveRow(dataset, method, rate, curves, failed=len(members) - len(ok)))
    return rows


def _cell(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.3f}"


def write_csv(rows: Sequence[CurveRow], path: Path) -> Path:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(("dataset", "method", "rate", "rhos", "clips", "failed") + AREA_COLUMNS)
    for row in rows:
        areas = row.curves.areas() if row.clips else {c: float("nan") for c in AREA_COLUMNS}
        writer.writerow((row.dataset, row.method, row.rate, " ".join(f"{r:g}" for r in row.curves.rhos), row.clips,
                         row.failed) + tuple(_cell(areas[c]) for c in AREA_COLUMNS))
    return atomic.write_text(path, buffer.getvalue())


def markdown_section(rows: Sequence[CurveRow]) -> str:
    """The tables.md section: per dataset and rate, one line per method with the six areas."""
    if not rows:
        return ""
    lines = ["## Faithfulness: deletion and insertion curves", "",
             "Areas over rho in [0, 1] of the mean curves when each method's top-rho frames are kept alone "
             "(insertion) or silenced (deletion): the original answer's log-odds normalised per clip from the "
             "silent clip (0) to the clip (1), and A.C. (share of unchanged answers). Gap = insertion - deletion: "
             "higher means the method's frames carry the answer. No codec; `curves.csv` has every column.", ""]
    for dataset in dict.fromkeys(r.dataset for r in rows):
        for rate in dict.fromkeys(r.rate for r in rows if r.dataset == dataset):
            lines += [f"### {dataset}, rate {rate}", "",
                      "| method | clips | log-odds ins. | log-odds del. | log-odds gap | A.C. ins. | A.C. del. | A.C. gap |",
                      "|---|---|---|---|---|---|---|---|"]
            for row in rows:
                if row.dataset != dataset or row.rate != rate:
                    continue
                areas = row.curves.areas() if row.clips else {c: float("nan") for c in AREA_COLUMNS}
                clips = f"{row.clips}" + (f" ({row.failed} failed)" if row.failed else "")
                lines.append(f"| {row.method} | {clips} | " + " | ".join(_cell(areas[c]) for c in AREA_COLUMNS) + " |")
            lines.append("")
    return "\n".join(lines)


def plot(rows: Sequence[CurveRow], out_dir: Path) -> list[Path]:
    """Per dataset and rate: mean insertion and deletion curves (normalised log-odds, A.C.), a line per method."""
    from agac_jax.eval.plots import plt, safe_name, save_figure

    written = []
    for dataset in dict.fromkeys(r.dataset for r in rows):
        for rate in dict.fromkeys(r.rate for r in rows if r.dataset == dataset):
            members = [r for r in rows if r.dataset == dataset and r.rate == rate and r.clips]
            if not members:
                continue
            figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))
            for row in members:
                rhos = np.asarray(row.curves.rhos)
                for ax, (ins, dele, label) in zip(axes, (
                        (row.curves.normalised(row.curves.log_odds_insertion),
                         row.curves.normalised(row.curves.log_odds_deletion), "normalised answer log-odds"),
                        (row.curves.consistent_insertion.astype(float), row.curves.consistent_deletion.astype(float),
                         "answer consistency"))):
                    if not len(ins):
                        continue
                    line, = ax.plot(rhos, ins.mean(axis=0), marker="o", markersize=3, label=f"{row.method} insertion")
                    ax.plot(rhos, dele.mean(axis=0), linestyle="--", color=line.get_color(), label=f"{row.method} deletion")
                    ax.set_ylabel(label)
            for ax in axes:
                ax.set_xlabel("rho (share of frames kept / silenced)")
                ax.grid(alpha=0.3)
            axes[1].legend(fontsize=7, ncol=2)
            figure.suptitle(f"{dataset}, rate {rate}: insertion (solid) and deletion (dashed)")
            figure.tight_layout()
            path = out_dir / f"{safe_name(dataset)}_r{rate}_deletion_insertion.png"
            out_dir.mkdir(parents=True, exist_ok=True)
            save_figure(figure, path)
            plt.close(figure)
            written.append(path)
    return written


def merge_outputs(workdir: Path, method_order: Sequence[str]) -> tuple[str, list[Path]]:
    """(tables.md section, written files) of the workdir's curve records; ("", []) when it has none."""
    rows = rows_of(read_records(workdir), method_order)
    if not rows:
        return "", []
    written = [write_csv(rows, workdir / "curves.csv")] + plot(rows, workdir / "plots")
    logging.info("curves: %d (dataset, method, rate) rows into %s", len(rows), workdir / "curves.csv")
    return markdown_section(rows), written
