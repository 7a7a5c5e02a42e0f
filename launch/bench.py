"""Benchmark of the jitted JAX scoring program against the PyTorch reference (agac_jax/bench/scoring_bench.py).

  .venv/bin/python launch/bench.py --out=bench/results/scoring_cpu.json
  .venv/bin/python launch/bench.py --quick --out=/tmp/bench_quick.json
  .venv/bin/python launch/bench.py --parts=whole,flops --estimators=occlusion
  .venv/bin/python launch/bench.py --parts=whole,flops,gpu --mid_spec=wide_random --out=bench/results/scoring_gpu.json

Writes the results as JSON (with the machine's description), the `scaling` part's plot beside it
(<out stem>_scaling.png) and prints a short table last.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from absl import app, flags

from agac_jax.cli import errors
from agac_jax.bench import scoring_bench
from agac_jax.bench.context import BenchConfig
from agac_jax.bench.report import format_table, plot_scaling, write_results

FLAGS = flags.FLAGS
flags.DEFINE_bool("quick", False, "Tiny random models, one repeat, few sizes (a smoke run).")
flags.DEFINE_string("out", "bench/results/scoring.json", "Where the JSON results go.")
flags.DEFINE_list("parts", list(scoring_bench.PARTS), f"Parts to run, of {', '.join(scoring_bench.PARTS)}.")
flags.DEFINE_list("estimators", None, "Local-score estimators (default: occlusion and integrated_gradients).")
flags.DEFINE_enum("local_score", None, ["bench", "default"], "bench: the local-score settings the recorded "
                  "figures used (log p, signed, IG 16 steps); default: ScoringConfig's (default bench).")
flags.DEFINE_list("references", None, "PyTorch reference modes: the first gives the torch times and ratios, the "
                  "others a second column (default strong,eager; strong: SDPA wherever no attention map is read).")
flags.DEFINE_list("models", None, "Models of the `whole` part: tiny, mid (default both).")
flags.DEFINE_integer("repeats", None, "Repeats of the cheap measurements (default 3; 1 with --quick).")
flags.DEFINE_integer("slow_repeats", None, "Repeats of the mid-size model and long clips (default 2).")
flags.DEFINE_integer("long_torch_repeats", None, "Repeats of the reference on clips over 10 s (`scaling`, default 1).")
flags.DEFINE_list("mix_models", None, "Models of the `mix` part: tiny, mid (default both).")
flags.DEFINE_list("occlusion_chunks", None, "`whole`: occlusion chunks tried on each side (default 8,16,32,64).")
flags.DEFINE_list("memory_chunks", None, "`memory`: occlusion chunks compiled for the long bucket (0: the bucket).")
flags.DEFINE_bool("layer_memory_check", None, "`flops`: also compile each program for twice the layers.")
flags.DEFINE_list("batch_sizes", None, "Batch sizes of the `batch` part (default 1,2,4,8,16,32).")
flags.DEFINE_string("mid_spec", None, "Random model of the `mid` role (default mid_random, 512 wide; "
                                      "wide_random: the 7B's widths with 2 layers, for accelerators).")
flags.DEFINE_integer("seed", None, "Seed of the random models' weights (default 0).")
flags.DEFINE_string("tiny_model", None, "Directory of the small model (default assets/tiny_qwen2audio; a random "
                                        "model of its shape when it does not exist).")


def build_config() -> BenchConfig:
    overrides = {}
    if FLAGS.estimators:
        overrides["estimators"] = tuple(FLAGS.estimators)
    if FLAGS.local_score:
        overrides["local_score"] = FLAGS.local_score
    if FLAGS.references:
        overrides["references"] = tuple(FLAGS.references)
    if FLAGS.models:
        overrides["whole_models"] = tuple(FLAGS.models)
    if FLAGS.repeats is not None:
        overrides["repeats"] = FLAGS.repeats
    if FLAGS.slow_repeats is not None:
        overrides["slow_repeats"] = FLAGS.slow_repeats
    if FLAGS.long_torch_repeats is not None:
        overrides["long_torch_repeats"] = FLAGS.long_torch_repeats
    if FLAGS.mix_models:
        overrides["mix_models"] = tuple(FLAGS.mix_models)
    if FLAGS.occlusion_chunks:
        overrides["occlusion_chunks"] = tuple(int(x) for x in FLAGS.occlusion_chunks)
    if FLAGS.memory_chunks:
        overrides["memory_chunks"] = tuple(int(x) for x in FLAGS.memory_chunks)
    if FLAGS.layer_memory_check is not None:
        overrides["layer_memory_check"] = FLAGS.layer_memory_check
    if FLAGS.batch_sizes:
        overrides["batch_sizes"] = tuple(int(b) for b in FLAGS.batch_sizes)
    if FLAGS.tiny_model:
        overrides["tiny_model"] = FLAGS.tiny_model
    if FLAGS.seed is not None:
        overrides["seed"] = FLAGS.seed
    if FLAGS.mid_spec:
        overrides["mid_spec"] = FLAGS.mid_spec
    if FLAGS.quick:
        return BenchConfig.quick(**overrides)
    return dataclasses.replace(BenchConfig(), **overrides)


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    try:
        config = build_config()
        results = scoring_bench.run_benchmark(config, FLAGS.parts, log=lambda line: print(line, flush=True),
                                              checkpoint=lambda partial: write_results(partial, FLAGS.out))
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    path = write_results(results, FLAGS.out)
    print(f"wrote {path}")
    plot = plot_scaling(results, path.with_name(f"{path.stem}_scaling.png"))
    if plot is not None:
        print(f"wrote {plot}")
    print(format_table(results))
    return 0


if __name__ == "__main__":
    errors.run(main)
