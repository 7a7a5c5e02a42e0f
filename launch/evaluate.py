"""Runs (or resumes) an evaluation sweep, or merges the results shards of one.

  python -m launch.evaluate --config=configs/synthetic_tiny.py --workdir=runs/synthetic_tiny
  python -m launch.evaluate --config=configs/clothoqa_qwen2audio.py --config.dataset.root=/data/clotho_aqa \
      --config.model.checkpoint_dir=/models/Qwen2-Audio-7B-Instruct --workdir=runs/clothoqa
  python -m launch.evaluate --merge --workdir=runs/clothoqa

Outputs in --workdir: config.json, results.jsonl (results.{i}.jsonl with several JAX processes),
summary.csv, per_seed.csv, tables.md and plots/*.png. See agac_jax/eval/sweep.py. When the outputs
are built, the poster-format table (with evidence recall) is printed to stdout.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from absl import app, flags, logging
from ml_collections import config_flags

from agac_jax.eval import sweep, tables

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/synthetic_tiny.py", "Sweep configuration file (get_config(arg)).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Where the config, results and tables go; a rerun resumes here.", required=True)
flags.DEFINE_bool("merge", False, "Only build the tables and plots from the results files already in --workdir.")


def print_outputs(outputs: sweep.MergeOutputs) -> None:
    print(tables.terminal_table(outputs.rows))
    print(f"{outputs.num_records} records; every column in {outputs.tables_md}; plots:")
    for path in outputs.plots:
        print(f"  {path}")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if FLAGS.merge:
        outputs = sweep.merge(FLAGS.workdir)
        logging.info("wrote %s, %s and %d plots", outputs.summary_csv, outputs.tables_md, len(outputs.plots))
        print_outputs(outputs)
        return
    config = FLAGS.config
    if config.runtime.distributed:
        import jax

        jax.distributed.initialize()
    outcome = sweep.run_sweep(config, FLAGS.workdir)
    logging.info("wrote %d records (%d failed) to %s", outcome.written, outcome.failed, outcome.results_file)
    if outcome.merged is not None:
        logging.info("tables in %s", outcome.merged.tables_md)
        print_outputs(outcome.merged)
    else:
        logging.info("several processes: run `python -m launch.evaluate --merge --workdir=%s` when all are done",
                     FLAGS.workdir)


if __name__ == "__main__":
    app.run(main)
