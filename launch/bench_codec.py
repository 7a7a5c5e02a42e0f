"""Requests per second of each available codec backend at each token rate, through the sidecar.

Each request is a synthetic clip of --clip_seconds with every other frame kept (--keep_every),
sent through ``CodecClient.compress`` with pipelining. One warm-up request per rate loads the codec
first. Prints a table and writes JSON.

With --pipeline_config, it also measures how much of the codec's time the sweep's pipelining hides
behind the scoring program (agac_jax/bench/pipeline_bench.py): the sweep runs once waiting for each
batch's codec work and once pipelined, after a warm-up.

  python launch/bench_codec.py --output=runs/bench_codec.json
  python launch/bench_codec.py --backends=semanticodec --weights_dir=/data/semanticodec
  python launch/bench_codec.py --backends= --pipeline_config=configs/synthetic_tiny.py \
      --output=bench/results/codec_pipeline_cpu_2cores.json
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import numpy as np
from absl import app, flags
from ml_collections import config_flags

from agac_jax.codec import BackendUnavailableError, CodecClient, CodecRequest, num_frames
from agac_jax.codec.synthetic import SIGNAL_KINDS, make_signal

FLAGS = flags.FLAGS
flags.DEFINE_list("backends", ["rvq_mel", "semanticodec"], "Backends to measure; unavailable ones are reported.")
flags.DEFINE_list("rates", ["25", "50", "100"], "Token rates.")
flags.DEFINE_integer("requests", 12, "Timed requests per backend and rate.")
flags.DEFINE_float("clip_seconds", 10.0, "Length of each clip.")
flags.DEFINE_integer("keep_every", 2, "Keep every n-th frame of each clip.")
flags.DEFINE_integer("max_in_flight", 4, "Client pipelining depth.")
flags.DEFINE_integer("num_threads", 1, "torch threads in the sidecar.")
flags.DEFINE_string("weights_dir", None, "semanticodec weights directory.")
flags.DEFINE_string("output", "runs/bench_codec.json", "Where the JSON goes.")
config_flags.DEFINE_config_file("pipeline_config", None, "A sweep config: also measure the codec pipelining on it.")
flags.DEFINE_string("pipeline_workdir", "runs/bench_codec_pipeline", "Scratch directory of the pipelining runs.")


def clip_requests(rate: int, count: int, prefix: str) -> list[CodecRequest]:
    """``count`` synthetic clips of mixed kinds at ``rate`` with every keep_every-th frame kept."""
    requests = []
    for i in range(count):
        x = make_signal(SIGNAL_KINDS[i % len(SIGNAL_KINDS)], FLAGS.clip_seconds, seed=i, snr_db=20.0)
        kept = np.arange(0, num_frames(x.size, rate), FLAGS.keep_every)
        requests.append(CodecRequest(f"{prefix}{i}", x, rate, kept))
    return requests


def measure_rate(client: CodecClient, rate: int) -> dict[str, float]:
    """Requests per second and mean sidecar seconds per stage for one rate."""
    list(client.compress(clip_requests(rate, 1, f"warmup{rate}-")))
    requests = clip_requests(rate, FLAGS.requests, f"r{rate}-")
    start = time.perf_counter()
    replies = list(client.compress(requests))
    elapsed = time.perf_counter() - start
    failed = [r for r in replies if not r.ok]
    if failed:
        raise RuntimeError(f"{len(failed)} requests failed at rate {rate}: {failed[0].failure}")
    stages = {
        stage: float(np.mean([reply.seconds[stage] for reply in replies]))
        for stage in ("assemble", "encode", "decode", "total")
    }
    return {
        "requests_per_s": len(replies) / elapsed,
        "audio_s_per_s": len(replies) * FLAGS.clip_seconds / elapsed,
        **{f"{stage}_s": value for stage, value in stages.items()},
    }


def measure_backend(backend: str) -> dict[str, object]:
    """Results per rate, or why the backend is unavailable."""
    options = {"weights_dir": FLAGS.weights_dir} if backend == "semanticodec" else {}
    try:
        client = CodecClient(backend, options, max_in_flight=FLAGS.max_in_flight, num_threads=FLAGS.num_threads)
    except BackendUnavailableError as error:
        return {"available": False, "reason": str(error).splitlines()[0]}
    with client:
        return {"available": True, "rates": {str(rate): measure_rate(client, int(rate)) for rate in FLAGS.rates}}


def print_table(results: dict[str, dict[str, object]]) -> None:
    print(f"{'backend':14s} {'rate':>5s} {'req/s':>7s} {'audio s/s':>10s} {'encode s':>9s} {'decode s':>9s}")
    for backend, result in results.items():
        if not result["available"]:
            print(f"{backend:14s} unavailable: {result['reason']}")
            continue
        for rate, row in result["rates"].items():
            print(f"{backend:14s} {rate:>5s} {row['requests_per_s']:7.2f} {row['audio_s_per_s']:10.1f} "
                  f"{row['encode_s']:9.4f} {row['decode_s']:9.4f}")


def machine_description() -> dict[str, object]:
    import os
    import platform

    return {"platform": platform.platform(), "processor": platform.processor(), "cpu_count": os.cpu_count(),
            "python": platform.python_version()}


def main(argv: list[str]) -> None:
    del argv
    results = {backend: measure_backend(backend) for backend in FLAGS.backends}
    names = ("requests", "clip_seconds", "keep_every", "max_in_flight", "num_threads")
    report = {"settings": {name: FLAGS[name].value for name in names}, "results": results,
              "machine": machine_description()}
    if FLAGS.pipeline_config is not None:
        from agac_jax.bench import pipeline_bench

        report["pipeline"] = pipeline_bench.measure(FLAGS.pipeline_config, FLAGS.pipeline_workdir)
        report["pipeline"]["config"] = FLAGS.pipeline_config.to_dict()
    output = Path(FLAGS.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2, default=str))
    print(f"wrote {output}")
    if results:
        print_table(results)
    if "pipeline" in report:
        print(pipeline_bench.format_summary(report["pipeline"]))


if __name__ == "__main__":
    app.run(main)
