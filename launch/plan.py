"""Plans a scoring run before renting devices: per-device memory, compile time, FLOPs and time per clip.

  python -m launch.plan --config_json=configs/qwen2_audio_7b_instruct.json --mesh=1,8 \
      --param_dtype=bfloat16 --bucket_seconds=30 --estimator=occlusion --batch_size=1

Compiles the scoring and generation programs for the model of CONFIG.json (a Hugging Face config; no
weights) on forced host CPU devices with abstract parameters, prints a table and one JSON line
(`params_bytes_per_device`, `temp_bytes_per_device`, `flops_per_clip`, `compile_seconds`,
`seconds_per_clip` at --fraction of --accelerator's bf16 peak, ...). Logic: agac_jax/scoring/plan.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from absl import app, flags

from agac_jax.cli import errors
from agac_jax.scoring import plan

flags.DEFINE_string("config_json", None, "The family's config json: Qwen2-Audio's config.json, PandaGPT's "
                    "pandagpt_config.json.", required=True)
flags.DEFINE_string("kind", "", "The model family (agac_jax.models.MODELS); \"\": told by the json's keys.")
flags.DEFINE_string("mesh", "1,1", "DATA,MODEL devices of the mesh.")
flags.DEFINE_integer("devices", 0, "Forced host devices (0: DATA x MODEL).")
flags.DEFINE_enum("param_dtype", "bfloat16", ["float32", "bfloat16"], "Dtype the parameters are held in.")
flags.DEFINE_enum("dtype", "", ["", "float32", "bfloat16"], "Compute dtype ('': --param_dtype).")
flags.DEFINE_integer("bucket_seconds", 30, "Clip length bucket in seconds (at most the encoder's window).")
flags.DEFINE_enum("estimator", "occlusion", ["occlusion", "integrated_gradients"], "Local score estimator.")
flags.DEFINE_integer("batch_size", 1, "Clips per compiled call.")
flags.DEFINE_integer("max_new_tokens", 8, "Greedy answer budget.")
flags.DEFINE_integer("max_text_tokens", 64, "Prompt tokens besides the audio placeholders.")
flags.DEFINE_integer("occlusion_chunk", 16, "Occlusion gate vectors per chunk.")
flags.DEFINE_integer("ig_steps", 16, "Integrated-gradients steps.")
flags.DEFINE_bool("scan_layers", False, "Scan the decoder layers (nn.scan) instead of unrolling them.")
flags.DEFINE_bool("remat_layers", False, "Rematerialise each decoder layer in gradients (integrated gradients).")
flags.DEFINE_integer("occlusion_segments", 0, "Occlusion: 0, a program step per chunk; k, k loops over chunks.")
flags.DEFINE_bool("fsdp", False, "Also split every weight's model width over the data axis (FSDP).")
flags.DEFINE_list("programs", ["scoring", "generation"], "Programs to compile: scoring, generation.")
flags.DEFINE_enum("accelerator", "H100", list(plan.ACCELERATORS), "Accelerator of the time estimate.")
flags.DEFINE_float("fraction", plan.DEFAULT_FRACTION, "Fraction of the accelerator's bf16 peak assumed.")
flags.DEFINE_integer("audio_offset", plan.DEFAULT_AUDIO_OFFSET, "First audio position of the prompt template.")
flags.DEFINE_float("timeout_s", None, "Give up on the child process after this many seconds.")
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        mesh = plan.parse_mesh(FLAGS.mesh)
    except ValueError as error:
        raise app.UsageError(str(error)) from error
    request = plan.PlanRequest(
        config_json=str(Path(FLAGS.config_json).resolve()), kind=FLAGS.kind, mesh=mesh, devices=FLAGS.devices,
        param_dtype=FLAGS.param_dtype, dtype=FLAGS.dtype, bucket_seconds=FLAGS.bucket_seconds,
        estimator=FLAGS.estimator, batch_size=FLAGS.batch_size, max_new_tokens=FLAGS.max_new_tokens,
        max_text_tokens=FLAGS.max_text_tokens, occlusion_chunk=FLAGS.occlusion_chunk, ig_steps=FLAGS.ig_steps,
        scan_layers=FLAGS.scan_layers, remat_layers=FLAGS.remat_layers,
        occlusion_segments=FLAGS.occlusion_segments, fsdp=FLAGS.fsdp, programs=tuple(FLAGS.programs), accelerator=FLAGS.accelerator,
        fraction=FLAGS.fraction, audio_offset=FLAGS.audio_offset)
    for line in plan.main_lines(request, FLAGS.timeout_s):
        print(line, flush=True)


if __name__ == "__main__":
    errors.run(main)
