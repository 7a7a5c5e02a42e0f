"""Trains the tiny Qwen2-Audio on the synthetic benchmark, exports it, and measures its accuracy.

  .venv/bin/python launch/train.py --config=configs/train_tiny.py --workdir=runs/train_tiny \
      --export=assets/tiny_qwen2audio
  .venv/bin/python launch/train.py --config=configs/train_tiny.py --eval_only=assets/tiny_qwen2audio

Training resumes from the newest complete checkpoint in --workdir. After training (or with
--eval_only=DIR for a Hugging Face directory) the test questions are answered by greedy generation
with the audio and with silence in its place; the numbers are logged and written as JSON to
--results (default {workdir}/eval.json, or runs/eval_{name}.json with --eval_only).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from agac_jax import checkpoints, train
from agac_jax.models.config import Qwen2AudioConfig

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/train_tiny.py", "Training configuration (get_config()).")
flags.DEFINE_string("workdir", None, "Checkpoints, tokenizer files and logs; training resumes from here.")
flags.DEFINE_string("export", None, "Write the trained model as a Hugging Face directory here.")
flags.DEFINE_string("eval_only", None, "Skip training: evaluate this Hugging Face directory.")
flags.DEFINE_string("results", None, "Where the evaluation JSON goes.")
flags.DEFINE_bool("skip_eval", False, "Train (and export) without the final generation evaluation.")


def evaluate_directory(cfg: ml_collections.ConfigDict, directory: Path) -> dict:
    """Greedy test accuracy of a Hugging Face directory, with the audio and with silence."""
    loaded = checkpoints.load_hf_directory(directory)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    return evaluate(cfg, loaded.config, loaded.params, loaded.generation_config, tokenizer)


def eval_frames(cfg: ml_collections.ConfigDict) -> int:
    """Mel frames every test clip is padded to: one second past the largest training bucket, so that the
    encoder reads real padding frames past every clip's end, as in transformers' 30 s input."""
    return 100 * (max(cfg.bucket_seconds) + 1)


def evaluate(cfg: ml_collections.ConfigDict, config: Qwen2AudioConfig, params: Any, generation: dict,
             tokenizer: PreTrainedTokenizerBase) -> dict:
    """{"audio": ..., "silence": ...}: `GenerationEval.summary()` and seconds, on the test questions."""
    samples = train.evaluation_questions(cfg)
    results = {}
    for name, silence in (("audio", False), ("silence", True)):
        started = time.perf_counter()
        outcome = train.evaluate_generation(config, params, generation, tokenizer, samples, eval_frames(cfg),
                                            cfg.eval_batch_size, silence=silence)
        results[name] = {**outcome.summary(), "seconds": time.perf_counter() - started}
        logging.info("test accuracy with %s: %.3f (%s), %d unknown of %d", name, outcome.accuracy,
                     ", ".join(f"{k} {v:.3f}" for k, v in outcome.accuracy_by_kind.items()), outcome.num_unknown,
                     outcome.num_questions)
    return results


def write_results(path: Path, results: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        json.dump(results, f, indent=2)
    logging.info("wrote %s", path)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    cfg = FLAGS.config
    if FLAGS.eval_only:
        directory = Path(FLAGS.eval_only)
        results = evaluate_directory(cfg, directory)
        write_results(Path(FLAGS.results or f"runs/eval_{directory.name}.json"), results)
        return
    if not FLAGS.workdir:
        raise app.UsageError("--workdir is required for training (or pass --eval_only=DIR)")
    workdir = Path(FLAGS.workdir)
    started = time.perf_counter()
    result = train.train(cfg, workdir)
    logging.info("training reached step %d in %.1f s", result.step, time.perf_counter() - started)
    with open(workdir / "history.json", "w") as f:
        json.dump(result.history, f, indent=1)
    if FLAGS.export:
        train.export(FLAGS.export, result, workdir, cfg.max_new_tokens)
        logging.info("exported %s", FLAGS.export)
    if not FLAGS.skip_eval:
        generation = train.generation_config(result.config, cfg.max_new_tokens)
        results = evaluate(cfg, result.config, result.params, generation, result.tokenizer)
        write_results(Path(FLAGS.results or workdir / "eval.json"), results)


if __name__ == "__main__":
    flags.mark_flags_as_mutual_exclusive(["eval_only", "export"])
    app.run(main)
