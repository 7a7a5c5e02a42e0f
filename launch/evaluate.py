"""Runs (or resumes) an evaluation sweep, or merges the results shards of one.

  python -m launch.evaluate --config=configs/synthetic_tiny.py --workdir=runs/synthetic_tiny
  python -m launch.evaluate --config=configs/clothoqa_qwen2audio.py --config.dataset.root=/data/clotho_aqa \
      --config.model.checkpoint_dir=/models/Qwen2-Audio-7B-Instruct --workdir=runs/clothoqa
  python -m launch.evaluate --merge --workdir=runs/clothoqa
  python -m launch.evaluate --config=... --plan --workdir=unused   (samples, records, detectable differences)

Outputs in --workdir: config.json, results.jsonl (results.{i}.jsonl with several JAX processes),
summary.csv, per_seed.csv, tables.md and plots/*.png. See agac_jax/eval/sweep.py. When the outputs
are built, the poster-format table (with evidence recall) is printed to stdout.

One run per results file: a second run on the same workdir (and process index) exits at once naming
the first (agac_jax/eval/lock.py); --merge waits for no one and refuses while a run still writes,
unless --allow_partial. A user error (bad config value, missing input, full disk, workdir in use)
ends with one `error: ...` line on stderr and exit code 2; --verbose or AGAC_TRACEBACK=1 shows its
traceback (agac_jax/cli/errors.py). A run that finished with work left for a rerun (records that failed
for a transient cause, or the shard of another process that stopped, as process 0 sees it when all
are done) ends with one `incomplete: ...` line and exit code 1; Ctrl-C with one
`error: interrupted ...` line and exit code 130.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from absl import app, flags, logging
from ml_collections import config_flags

from agac_jax.cli import compile_cache
from agac_jax.cli import errors
from agac_jax.eval import captions, distributed, sweep, tables

FLAGS = flags.FLAGS
EXIT_INCOMPLETE = 1  # the run finished, but a rerun has work left (transient failures, a lost process)
config_flags.DEFINE_config_file("config", "configs/synthetic_tiny.py", "Sweep configuration file (get_config(arg)).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Where the config, results and tables go; a rerun resumes here.", required=True)
flags.DEFINE_bool("merge", False, "Only build the tables and plots from the results files already in --workdir.")
flags.DEFINE_bool("plan", False, "Only print what the run would do (samples, records) and the smallest paired "
                  "A.C. or accuracy difference it can detect at 80% power; loads the data set, no model.")
flags.DEFINE_bool("allow_partial", False, "With --merge: build the tables from the records there even while a run "
                  "still writes a shard of --workdir, or a shard is missing or incomplete.")


def print_outputs(outputs: sweep.MergeOutputs) -> None:
    if outputs.rows or not outputs.caption_rows:
        print(tables.terminal_table(outputs.rows))
    if outputs.caption_rows:
        print(captions.terminal_table(outputs.caption_rows))
    print(f"{outputs.num_records} records; every column in {outputs.tables_md}; plots:")
    for path in outputs.plots:
        print(f"  {path}")


def check_config(config) -> None:
    """The sweep's own validation, as a user error (`errors.ConfigError`) naming the bad field."""
    try:
        sweep.validate_config(config)
    except ValueError as error:
        raise errors.ConfigError(f"bad config: {error}") from error
    if not config.model.checkpoint_dir and not config.model.get("random_init", ""):
        raise errors.ConfigError("bad config: config.model.checkpoint_dir is empty; set it to a Hugging Face "
                                 "Qwen2-Audio directory (--config.model.checkpoint_dir=DIR)")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    compile_cache.enable_from_flags()
    if FLAGS.merge:
        outputs = sweep.merge(FLAGS.workdir, allow_partial=FLAGS.allow_partial)
        logging.info("wrote %s, %s and %d plots", outputs.summary_csv, outputs.tables_md, len(outputs.plots))
        print_outputs(outputs)
        return
    config = FLAGS.config
    check_config(config)
    if FLAGS.plan:
        print("\n".join(sweep.plan_lines(config)))
        return
    index, count = distributed.initialize(config.runtime)  # jax.distributed.initialize() when runtime.distributed
    outcome = sweep.run_sweep(config, FLAGS.workdir)
    logging.info("wrote %d records (%d failed) to %s", outcome.written, outcome.failed, outcome.results_file)
    if outcome.merged is not None:
        logging.info("tables in %s", outcome.merged.tables_md)
        print_outputs(outcome.merged)
    else:
        logging.info("several processes: run `python -m launch.evaluate --merge --workdir=%s` when all are done",
                     FLAGS.workdir)
    left = distributed.finish(FLAGS.workdir, index, count)  # process 0 waits for the others
    if left:
        left.append(f"process {index} finished its own shard. Rerun every process with the same ids to finish the "
                    "run: each redoes only its missing records")
    if outcome.retryable:
        left.append(f"{outcome.retryable} records failed for a transient cause (a codec sidecar that crashed or timed "
                    "out; the log names each restart); rerun the same command to retry them")
    if left:
        incomplete("; ".join(left))


def incomplete(message: str) -> None:
    """Ends a run that finished with work left for a rerun: one `incomplete:` line, exit code 1."""
    sys.stderr.write(f"incomplete: {message}\n")
    sys.stderr.flush()
    sys.exit(EXIT_INCOMPLETE)


if __name__ == "__main__":
    errors.run(main, interrupt_hint="; rerun the same command to resume: every finished record is kept")
