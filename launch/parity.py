"""Cross-framework check of the Flax port against transformers on the same inputs.

  python -m launch.parity --checkpoint DIR [--audio a.wav ...] [--question "..."] [--dump out.npz]
  python -m launch.parity --random_init CONFIG.json
  python -m launch.parity --checkpoint BASE_DIR --prompt_format=raw   (Qwen2-Audio-7B, the base model)
  python -m launch.parity --checkpoint PANDAGPT_DIR | --random_init configs/tiny_pandagpt.json

The family (agac_jax.models.MODELS) is told by the directory's files or the config json's keys, or set
with --kind; each family compares the port with its own PyTorch definition (its package's parity.py).
Both sides build their prompt from the checkpoint's own files (for Qwen2-Audio: transformers'
Qwen2AudioProcessor against agac_jax.models.qwen2_audio.prompts); the prompt ids are compared first.

Exits 1 when a quantity exceeds its tolerance (float32: 1e-4 relative to its largest magnitude;
greedy tokens must be identical; with --param_dtype/--dtype bfloat16 the default tolerance is the
stated bf16 one, 1e-2 for bf16 weights and 2.5e-2 for bf16 weights and compute, tests/test_bf16.py,
and greedy tokens may differ where two logits are that close); 2 with one `error: ...` line for a user error (a missing or
unreadable checkpoint or audio file, a checkpoint that does not fit the model; agac_jax/cli/errors.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from absl import app, flags

from agac_jax.cli import errors

flags.DEFINE_string("checkpoint", None, "The model directory (Hugging Face Qwen2-Audio, converted PandaGPT).")
flags.DEFINE_string("random_init", None, "A family's config json to build a random tiny model from instead.")
flags.DEFINE_integer("seed", 0, "Seed of --random_init.")
flags.DEFINE_multi_string("audio", [], "Audio files (default: two synthetic clips).")
flags.DEFINE_multi_string("question", [], "One question, or one per clip.")
flags.DEFINE_integer("max_new_tokens", 8, "Greedy tokens to compare.")
flags.DEFINE_float("tolerance", None, "Max relative difference allowed for float quantities (default: 1e-4 "
                   "in float32, the bf16 tolerance otherwise).")
flags.DEFINE_enum("param_dtype", "float32", ["float32", "bfloat16"], "Dtype of the Flax side's weights.")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype of the Flax side.")
BF16_TOLERANCE = {("bfloat16", "float32"): 1e-2, ("bfloat16", "bfloat16"): 2.5e-2, ("float32", "bfloat16"): 2.5e-2}
flags.DEFINE_enum("prompt_format", "chat", ["chat", "raw"], "chat: the processor's chat template (Instruct "
                  "checkpoints); raw: '<|audio_bos|><|AUDIO|><|audio_eos|>' + question (the base Qwen2-Audio-7B).")
flags.DEFINE_string("kind", "", "The model family (agac_jax.models.MODELS); \"\": told by the directory's "
                    "files or the --random_init json's keys.")
flags.DEFINE_string("dump", None, "Write the Flax side's arrays to this .npz.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    import numpy as np

    from agac_jax import models
    from agac_jax.audio.io import load_audio

    if bool(FLAGS.checkpoint) == bool(FLAGS.random_init):
        raise app.UsageError("give exactly one of --checkpoint and --random_init")
    source = FLAGS.checkpoint or FLAGS.random_init
    family = models.entry(FLAGS.kind or models.model_kind(source))
    directory = FLAGS.checkpoint or models.resolve(family.random_init)(FLAGS.random_init, FLAGS.seed)
    clips = [load_audio(p) for p in FLAGS.audio] or None
    tolerance = FLAGS.tolerance
    if tolerance is None:
        tolerance = BF16_TOLERANCE.get((FLAGS.param_dtype, FLAGS.dtype), 1e-4)
    report = models.resolve(family.parity)(directory, clips, FLAGS.question or None, FLAGS.max_new_tokens, tolerance,
                                           param_dtype=FLAGS.param_dtype, dtype=FLAGS.dtype,
                                           prompt_format=FLAGS.prompt_format)
    print(report.table())
    if FLAGS.dump:
        np.savez(FLAGS.dump, **report.arrays)
        print(f"wrote {FLAGS.dump}")
    if not report.ok:
        print("parity FAILED", file=sys.stderr)
        sys.exit(1)
    print("parity ok")


if __name__ == "__main__":
    errors.run(main)
