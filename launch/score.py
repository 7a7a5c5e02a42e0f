"""Scores audio clips asked one question: per-token local, global and fused scores, and the kept frames.

  python -m launch.score --checkpoint=/models/Qwen2-Audio-7B-Instruct --audio=a.wav --audio=b.wav \
      --question="Is there a dog barking?" --rate=50 --keep=0.7 --output=scores.json --plot=scores.png

One JSON record per clip, in --audio order: a JSON list in --output, or JSON lines on stdout. A file
that cannot be scored (unreadable, empty, NaN samples, under one audio token (321 samples, 20 ms), over
30 s, --input_ids not its prompt, scores that are not finite: NaN weights) gets
`{"file", "error"}`, its error on stderr, and the others are still scored. Exit codes: 0 all scored,
1 some clip failed, 2 bad flags or checkpoint, or another user error (a full disk, an unwritable
--output: one `error: ...` line, see agac_jax/cli/errors.py). Record fields and figure:
agac_jax/scoring/report.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from absl import app, flags

from agac_jax.cli import compile_cache
from agac_jax.cli import errors
from agac_jax.scoring import report
from agac_jax.scoring.methods import NAMES as METHODS

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", None, "Hugging Face Qwen2-Audio directory (config, safetensors, tokenizer).")
flags.DEFINE_multi_string("audio", None, "Audio file to score; repeat for several clips.")
flags.DEFINE_string("question", None, "The question asked about every clip.")
flags.DEFINE_integer("rate", 50, "Codec token rate of the selection grid: 25, 50 or 100 tokens/s.")
flags.DEFINE_string("keep", "0.7", "Keep ratio rho in (0, 1], exact as written (0.7, or a fraction such as 2/3).")
flags.DEFINE_enum("estimator", None, report.ESTIMATORS, "Estimator of the local (AAD) score; default: the local "
                  "score's own (integrated_gradients; occlusion with --local_score=poster).")
flags.DEFINE_enum("local_score", "default", report.LOCAL_SCORES, "default: IG 8 on the log-odds, |local| over 9 "
                  "tokens (the estimator study); poster: occlusion of one token on log p, signed (DESIGN.md).")
flags.DEFINE_float("alpha", None, "Fusion weight of the local score (1: AAD alone, 0: attention alone); default: "
                   "0.75 (the estimator study), 0.5 with --local_score=poster (the poster's).")
flags.DEFINE_enum("method", "fused", METHODS, "Frame selection method for the kept frames.")
flags.DEFINE_string("input_ids", None, "JSON list of prompt ids (or one list per clip) that must equal the "
                    "prompt built from --question; a clip whose prompt differs fails.")
flags.DEFINE_string("answer_ids", None, "JSON list of answer ids (or one list per clip) scored instead of the "
                    "greedy answer.")
flags.DEFINE_integer("max_new_tokens", 8, "Greedy answer budget, and the most tokens a given answer may have.")
flags.DEFINE_string("output", None, "JSON file for the records; default: JSON lines on stdout.")
flags.DEFINE_enum("param_dtype", "float32", ["float32", "bfloat16"], "Dtype the weights are held in "
                  "(bfloat16 for the 7B on a GPU or TPU).")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype (softmax and logits stay float32).")
flags.DEFINE_enum("prompt_format", "chat", ["chat", "raw"], "chat: the checkpoint's processor chat template "
                  "(Qwen2-Audio-7B-Instruct); raw: '<|audio_bos|><|AUDIO|><|audio_eos|>' + question (the base "
                  "Qwen2-Audio-7B).")
flags.DEFINE_string("plot", None, "PNG with spectrogram, scores and kept frames, two panels per scored clip.")

REQUIRED = ("checkpoint", "audio", "question")


def request_from_flags() -> report.ScoreRequest:
    """The request the parsed flags describe; raises report.RequestError for a missing or bad value."""
    missing = [name for name in REQUIRED if FLAGS[name].value is None]
    if missing:
        raise report.RequestError(f"missing required flags: {', '.join('--' + name for name in missing)}")
    n_clips = len(FLAGS.audio)
    return report.ScoreRequest(
        checkpoint=FLAGS.checkpoint,
        audio=tuple(FLAGS.audio),
        question=FLAGS.question,
        rate=FLAGS.rate,
        keep=FLAGS.keep,
        estimator=FLAGS.estimator,
        local_score=FLAGS.local_score,
        alpha=FLAGS.alpha,
        method=FLAGS.method,
        input_ids=report.parse_id_lists(FLAGS.input_ids, "input_ids", n_clips),
        answer_ids=report.parse_id_lists(FLAGS.answer_ids, "answer_ids", n_clips),
        max_new_tokens=FLAGS.max_new_tokens,
        output=FLAGS.output,
        plot=FLAGS.plot,
        param_dtype=FLAGS.param_dtype,
        dtype=FLAGS.dtype,
        prompt_format=FLAGS.prompt_format,
    )


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}", exitcode=report.EXIT_BAD_REQUEST)
    compile_cache.enable_from_flags()
    try:
        return report.run(request_from_flags())
    except report.RequestError as error:
        raise app.UsageError(str(error), exitcode=report.EXIT_BAD_REQUEST) from error


parse_flags = errors.parse_flags  # a flag that does not parse: one `error:` line, exit code 2


def run(argv: list[str]) -> int:
    """In-process entry point: parses argv (argv[0] is the program name) and returns the exit code."""
    FLAGS.unparse_flags()
    try:
        rest = FLAGS(argv)
        return main(rest)
    except flags.Error as error:
        sys.stderr.write(f"FATAL Flags parsing error: {error}\n")
        return report.EXIT_BAD_REQUEST
    except app.UsageError as error:
        sys.stderr.write(f"{error}\n")
        return error.exitcode


if __name__ == "__main__":
    errors.run(main)
