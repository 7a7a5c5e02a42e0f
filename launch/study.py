"""Runs (or resumes) the estimator study and writes its table and plot (agac_jax/eval/study.py).

  python -m launch.study --config=configs/estimator_study.py --workdir=runs/estimator_study
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from absl import app, flags, logging
from ml_collections import config_flags

from agac_jax.cli import compile_cache
from agac_jax.cli import errors
from agac_jax.eval import study

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/estimator_study.py", "Study configuration file (get_config(arg)).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Where rows.jsonl, study.md, study.csv and the plot go; a rerun resumes.",
                    required=True)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    compile_cache.enable_from_flags()
    logging.set_verbosity(logging.INFO)
    for text in FLAGS.config.settings:
        try:
            study.Setting.parse(text)
        except ValueError as error:
            raise errors.ConfigError(f"bad config: {error}") from error
    study.run_study(FLAGS.config, FLAGS.workdir)
    print((Path(FLAGS.workdir) / "study.md").read_text(encoding="utf-8"))


if __name__ == "__main__":
    errors.run(main)
