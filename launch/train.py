"""Trains the tiny Qwen2-Audio on the synthetic benchmark, exports it, and measures its accuracy.

  .venv/bin/python -m launch.train --config=configs/train_tiny.py --workdir=runs/train_tiny \
      --export=assets/tiny_qwen2audio
  .venv/bin/python -m launch.train --config=configs/train_tiny.py --eval_only=assets/tiny_qwen2audio
  .venv/bin/python -m launch.train --config=configs/train_tiny.py:local --workdir=/tmp/agac_train_local

The training code is `agac_jax.training`. Training resumes from the latest complete checkpoint in
--workdir. After training (or with --eval_only=DIR for a Hugging Face directory) the test questions
are answered by greedy generation with the audio and with silence in its place; the numbers are logged and written as JSON to
--results (default {workdir}/eval.json, or runs/eval_{name}.json with --eval_only).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from absl import app, flags, logging
from ml_collections import config_flags

from agac_jax.cli import compile_cache
from agac_jax.cli import errors
from agac_jax.training import evaluation, loop
from agac_jax.training.model import generation_config

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/train_tiny.py", "Training configuration (get_config(); a variant after ':').")
flags.DEFINE_string("workdir", None, "Checkpoints, tokenizer files and logs; training resumes from here.")
flags.DEFINE_string("export", None, "Write the trained model as a Hugging Face directory here.")
flags.DEFINE_string("eval_only", None, "Skip training: evaluate this Hugging Face directory.")
flags.DEFINE_string("results", None, "Where the evaluation JSON goes.")
flags.DEFINE_bool("skip_eval", False, "Train (and export) without the final generation evaluation.")


def write_results(path: Path, results: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        json.dump(results, f, indent=2)
    logging.info("wrote %s", path)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    compile_cache.enable_from_flags()
    cfg = FLAGS.config
    if FLAGS.eval_only:
        directory = Path(FLAGS.eval_only)
        results = evaluation.evaluate_directory(cfg, directory)
        write_results(Path(FLAGS.results or f"runs/eval_{directory.name}.json"), results)
        return
    if not FLAGS.workdir:
        raise app.UsageError("--workdir is required for training (or pass --eval_only=DIR)")
    workdir = Path(FLAGS.workdir)
    started = time.perf_counter()
    result = loop.train(cfg, workdir)
    logging.info("training reached step %d in %.1f s", result.step, time.perf_counter() - started)
    with open(workdir / "history.json", "w") as f:
        json.dump(result.history, f, indent=1)
    if FLAGS.export:
        loop.export(FLAGS.export, result, workdir, cfg.max_new_tokens)
        logging.info("exported %s", FLAGS.export)
    if not FLAGS.skip_eval:
        generation = generation_config(result.config, cfg.max_new_tokens)
        results = evaluation.evaluate(cfg, result.config, result.params, generation, result.tokenizer)
        write_results(Path(FLAGS.results or workdir / "eval.json"), results)


if __name__ == "__main__":
    flags.mark_flags_as_mutual_exclusive(["eval_only", "export"])
    errors.run(main)
