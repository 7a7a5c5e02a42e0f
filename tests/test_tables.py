"""Per-seed metrics, summaries over seeds, summary.csv, tables.md, plots and the progress line."""

from __future__ import annotations

import io
import math

import pytest

from agac_jax.eval import plots, tables
from agac_jax.eval.progress import Progress, estimate_remaining, format_duration, render_line
from agac_jax.eval.results import Failure, ResultRecord

LABELS = ("yes", "no", "yes", "no")
ORIGINAL = ("yes", "no", "no", "yes")  # accuracy 0.5
EVIDENCE = (0.5, None, 1.0, None)
WORDS = {"yes": "Yes.", "no": "No.", "unknown": "a siren"}


def record(index: int, method: str, rate: int | None, rho: float, seed: int, compressed: str | None,
           kept: int = 50, failure: Failure | None = None) -> ResultRecord:
    codec = rate is not None
    return ResultRecord(
        dataset="synthetic-test", sample_id=f"s{index}", clip_id=f"c{index}", question="is there a siren ?",
        label=LABELS[index % 4], method=method, rate=rate, rho=rho, seed=seed,
        answer_original=WORDS[ORIGINAL[index % 4]], parsed_original=ORIGINAL[index % 4],
        answer_compressed=None if compressed is None else WORDS[compressed], parsed_compressed=compressed,
        num_frames=50 if codec else None, kept_frames=kept if codec else None,
        codec_tokens_before=100 if codec else None, codec_tokens_after=2 * kept if codec else None,
        audio_tokens_before=200, audio_tokens_after=4 * kept if codec else 200,
        evidence_recall=EVIDENCE[index % 4] if codec else None, seconds={"answer": 1.0}, failure=failure,
    )


FUSED_ANSWERS = {0: ("yes", "no", "no", "yes"), 1: ("yes", "yes", "yes", "unknown")}
CODEC_FAILURE = Failure(stage="codec", error_type="SidecarCrashed", message="failed on 2 sidecar processes: | x")


def sweep_records() -> list[ResultRecord]:
    out = []
    for seed in (0, 1):
        for i in range(4):
            out.append(record(i, "original", None, 1.0, seed, ORIGINAL[i]))
            out.append(record(i, "codec", 25, 1.0, seed, ORIGINAL[i], kept=50))
            out.append(record(i, "codec", 50, 1.0, seed, ORIGINAL[i], kept=50))
            out.append(record(i, "fused", 25, 0.5, seed, FUSED_ANSWERS[seed][i], kept=25))
    out.append(record(4, "fused", 25, 0.5, 1, None, failure=CODEC_FAILURE))
    out += [record(i, "fused", 25, 0.9, 0, ORIGINAL[i], kept=45) for i in range(4)]
    out.append(record(0, "random", 25, 0.5, 0, None, failure=CODEC_FAILURE))
    return out


@pytest.fixture(scope="module")
def rows() -> list[tables.RowSummary]:
    return tables.summarize_rows(tables.seed_metrics(sweep_records()))


def find(rows, method, rate, rho) -> tables.RowSummary:
    (row,) = [r for r in rows if (r.method, r.rate, r.rho) == (method, rate, rho)]
    return row


def test_seed_metrics_of_one_seed():
    per_seed = tables.seed_metrics(sweep_records())
    (seed1,) = [m for m in per_seed if (m.method, m.rho, m.seed) == ("fused", 0.5, 1)]
    assert seed1.num_samples == 4 and seed1.failures == 1 and seed1.unknown == 1
    assert seed1.accuracy == pytest.approx(0.5)
    assert seed1.answer_consistency == pytest.approx(0.25)
    assert seed1.precision == pytest.approx(2 / 3) and seed1.recall == pytest.approx(1.0)
    assert seed1.f1 == pytest.approx(0.8)
    assert seed1.delta_accuracy == pytest.approx(0.0)
    assert seed1.evidence_recall == pytest.approx(0.75) and seed1.evidence_scored == 2
    assert seed1.codec_tokens_kept == pytest.approx(0.5)
    assert seed1.keep_ratio_mean == pytest.approx(0.5)
    assert seed1.audio_tokens_kept == pytest.approx(0.5)


def test_summaries_over_seeds_use_ddof_1(rows):
    fused = find(rows, "fused", 25, 0.5)
    assert fused.seeds == (0, 1)
    assert fused.summaries["answer_consistency"].mean == pytest.approx(0.625)
    assert fused.summaries["answer_consistency"].std == pytest.approx(0.75 / math.sqrt(2))
    assert fused.summaries["f1"].mean == pytest.approx(0.65)
    assert fused.unknown == 1 and fused.failures == 1
    original = find(rows, "original", None, 1.0)
    assert original.summaries["accuracy"].mean == pytest.approx(0.5)
    assert original.summaries["accuracy"].std == 0.0
    assert original.summaries["answer_consistency"].mean == 1.0
    assert math.isnan(original.summaries["codec_tokens_kept"].mean)
    single_seed = find(rows, "fused", 25, 0.9)
    assert single_seed.summaries["accuracy"].num_seeds == 1 and math.isnan(single_seed.summaries["accuracy"].std)
    only_failures = find(rows, "random", 25, 0.5)
    assert only_failures.failures == 1 and math.isnan(only_failures.summaries["accuracy"].mean)


def test_rows_follow_the_poster_order(rows):
    order = [(r.method, r.rate, r.rho) for r in rows]
    assert order == [("original", None, 1.0), ("codec", 25, 1.0), ("fused", 25, 0.9), ("fused", 25, 0.5),
                     ("random", 25, 0.5), ("codec", 50, 1.0)]


def test_summary_csv(rows, tmp_path):
    path = tables.write_summary_csv(rows, tmp_path / "summary.csv")
    lines = tables.read_summary_csv(path)
    assert len(lines) == len(rows)
    fused = next(line for line in lines if line["method"] == "fused" and line["rho"] == "0.5")
    assert float(fused["answer_consistency_mean"]) == pytest.approx(0.625)
    assert float(fused["answer_consistency_std"]) == pytest.approx(0.75 / math.sqrt(2))
    assert fused["num_seeds"] == "2" and fused["failures"] == "1" and fused["unknown"] == "1"
    random_row = next(line for line in lines if line["method"] == "random")
    assert random_row["accuracy_mean"] == "" and random_row["failures"] == "1"
    assert next(line for line in lines if line["method"] == "original")["rate"] == ""


def test_per_seed_csv(tmp_path):
    per_seed = tables.seed_metrics(sweep_records())
    path = tables.write_per_seed_csv(per_seed, tmp_path / "per_seed.csv")
    lines = tables.read_summary_csv(path)
    assert len(lines) == len(per_seed) == 10
    assert {"seed", "accuracy", "answer_consistency", "evidence_recall"} <= set(lines[0])


def test_markdown_table_and_problems(rows):
    text = tables.render_markdown(rows, sweep_records(), skipped=[("clip_9.wav", "missing audio file")],
                                  codec_backend="rvq_mel")
    assert "## synthetic-test" in text
    assert "| Method | r | ρ | Acc | F1 | A.C. | Precision | Recall | Δ Acc | Evidence recall | Tokens kept |" in text
    fused_line = next(line for line in text.splitlines() if line.startswith("| `fused` | 25 | 0.5 |"))
    cells = [cell.strip() for cell in fused_line.strip("|").split("|")]
    assert cells[3:] == ["50.0 ± 0.00", "65.0 ± 21.21", "62.5 ± 53.03", "58.3 ± 11.79", "75.0 ± 35.36",
                         "+0.0 ± 0.00", "75.0 ± 0.00", "50.0 ± 0.00", "1", "1"]
    single = next(line for line in text.splitlines() if line.startswith("| `fused` | 25 | 0.9 |"))
    assert "| 50.0 |" in single and "±" not in single.split("|")[4]
    original = next(line for line in text.splitlines() if line.startswith("| `original` | — | 1.0 |"))
    assert "| — |" in original
    assert "mean ± std over 2 seeds [0, 1]" in text and "backend `rvq_mel`" in text
    assert "- clip_9.wav: missing audio file" in text
    assert "2 failed records" in text and "SidecarCrashed" in text
    assert "| s4 | fused | 25 | 0.5 | 1 | codec |" in text
    assert "`fused` 1" in text


def test_exact_match_is_lmms_evals_rule_on_the_whole_reply():
    suffix = "\nAnswer the question using a single word only. "
    replies = {0: "Yes.", 1: "No, there is none.", 2: "yes", 3: "Nope"}  # labels yes, no, yes, no
    records = [
        ResultRecord(**{**record(i, "original", None, 1.0, 0, parsed).__dict__, "dataset": "clotho_aqa-test",
                        "answer_original": replies[i], "answer_compressed": replies[i], "parsed_original": parsed,
                        "prompt_suffix": suffix})
        for i, parsed in enumerate(("yes", "no", "yes", "no"))
    ]
    (metrics_,) = tables.seed_metrics(records)
    assert metrics_.accuracy == 1.0 and metrics_.exact_match == pytest.approx(0.5)
    rows_ = tables.summarize_rows([metrics_])
    assert rows_[0].summaries["exact_match"].mean == pytest.approx(0.5)
    text = tables.render_markdown(rows_, records)
    assert "| Method | r | ρ | Acc | EM | F1 | A.C. |" in text
    assert "| `original` | — | 1.0 | 100.0 | 50.0 | 100.0 | 100.0 | " in text
    assert '`"\\nAnswer the question using a single word only. "`' in text and "lmms-eval" in text


def test_tables_without_a_prompt_suffix_keep_their_columns(rows):
    text = tables.render_markdown(rows, sweep_records())
    header = next(line for line in text.splitlines() if line.startswith("| Method |"))
    assert header == "| " + " | ".join(tables.TABLE_COLUMNS) + " |"
    assert "EM" not in header and "Prompt:" not in text


def test_summary_csv_has_exact_match(rows, tmp_path):
    lines = tables.read_summary_csv(tables.write_summary_csv(rows, tmp_path / "summary.csv"))
    fused = next(line for line in lines if line["method"] == "fused" and line["rho"] == "0.5")
    assert float(fused["exact_match_mean"]) == pytest.approx(0.5)  # "Yes." / "No." match, "a siren" does not


def test_skipped_items_are_counted_by_kind(rows):
    skipped = [("val/a.wav/0", "outside the data set root /d/audio_files: absolute path '/etc/x.wav'"),
               ("val/b.wav/0", "outside the data set root /d/audio_files: path '../x.wav' climbs out with '..'"),
               ("val/c.wav/1", "tied vote ['yes', 'no']")]
    text = tables.render_markdown(rows, sweep_records(), skipped=skipped)
    assert "3 skipped: 2 outside the data set root, 1 tied vote." in text


def test_terminal_table_has_the_poster_columns_and_evidence_recall(rows):
    text = tables.terminal_table(rows)
    lines = text.splitlines()
    assert lines[1].split() == ["Method", "r", "rho", "Acc", "F1", "A.C.", "dAcc", "Ev.recall", "Tokens", "Failed"]
    fused = next(line for line in lines if line.split()[:3] == ["fused", "25", "0.5"])
    assert " ".join(fused.split()[3:]) == ("50.0 ± 0.00 65.0 ± 21.21 62.5 ± 53.03 +0.0 ± 0.00 75.0 ± 0.00 "
                                           "50.0 ± 0.00 1")  # the codec failure of seed 1
    original = next(line for line in lines if line.split()[0] == "original")
    assert original.split()[1:3] == ["-", "1.0"] and len({len(line) for line in lines[1:len(rows) + 2]}) == 1


def test_plots_are_written_as_png(rows, tmp_path):
    written = plots.write_plots(rows, tmp_path / "plots")
    names = sorted(path.name for path in written)
    assert names == ["synthetic-test_accuracy_ac_vs_rho.png", "synthetic-test_evidence_recall_vs_rho.png",
                     "synthetic-test_tokens_vs_ac.png"]
    for path in written:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_evidence_plot_without_evidence(tmp_path):
    no_evidence = [r for r in sweep_records() if r.evidence_recall is None or r.method == "original"]
    no_evidence = [ResultRecord(**{**r.__dict__, "evidence_recall": None}) for r in no_evidence]
    written = plots.write_plots(tables.summarize_rows(tables.seed_metrics(no_evidence)), tmp_path)
    assert sorted(path.name for path in written) == ["synthetic-test_accuracy_ac_vs_rho.png",
                                                     "synthetic-test_tokens_vs_ac.png"]


# --- progress ------------------------------------------------------------------------------------


def test_durations_and_eta():
    assert format_duration(7) == "0:07" and format_duration(245) == "4:05" and format_duration(3723) == "1:02:03"
    assert format_duration(float("inf")) == "?"
    assert estimate_remaining(0, 10, 5.0) == float("inf")
    assert estimate_remaining(4, 10, 8.0) == pytest.approx(12.0)
    line = render_line("sweep", 3, 12, 30.0)
    assert line.startswith("sweep [" + "#" * 8 + "." * 22 + "] 3/12")
    assert "25%" in line and "elapsed 0:30" in line and "ETA 1:30" in line


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class TerminalStream(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_redraws_on_a_terminal():
    clock, stream = FakeClock(), TerminalStream()
    with Progress(4, "p0", stream=stream, clock=clock) as progress:
        clock.now = 10.0
        progress.update(2)
    text = stream.getvalue()
    assert text.startswith("\rp0 [") and "2/4" in text and "ETA 0:10" in text and text.endswith("\n")


def test_progress_logs_when_not_a_terminal(monkeypatch):
    logged = []
    monkeypatch.setattr("agac_jax.eval.progress.logging.info", lambda fmt, line: logged.append(line))
    clock, stream = FakeClock(), io.StringIO()
    progress = Progress(10, "p0", stream=stream, clock=clock, log_every_s=30.0)
    clock.now = 5.0
    progress.update()
    clock.now = 31.0
    progress.update()
    clock.now = 40.0
    progress.update(8)
    assert stream.getvalue() == ""
    assert len(logged) == 2 and "2/10" in logged[0] and "10/10" in logged[1]
