"""Requests per second and peak memory of each codec backend at each token rate, through the sidecar.

Each request is a synthetic clip of --clip_seconds with every other frame kept (--keep_every),
sent through ``CodecClient.compress`` with pipelining. Each rate gets its own sidecar (so its peak
resident memory is that rate's alone); one warm-up request loads the codec first. Prints a table
and writes JSON.

SemantiCodec runs in its own environment (``bash tools/setup_codec_env.sh``, --codec_python). Without
its weights, --semanticodec_random writes random ones (the package's modules freshly initialised,
``agac_jax.codec.semanticodec_random``) into --semanticodec_random_dir first: the real code at the
real sizes, so the cost is the real one and the audio is noise.

With --pipeline_config, it also measures how much of the codec's time the sweep's pipelining hides
behind the scoring program (agac_jax/bench/pipeline_bench.py): the sweep runs once waiting for each
batch's codec work and once pipelined, after a warm-up.

  python launch/bench_codec.py --output=runs/bench_codec.json
  python launch/bench_codec.py --backends=semanticodec --weights_dir=/data/semanticodec
  python launch/bench_codec.py --semanticodec_random --rates=100 --semanticodec_ddim_steps=1 \
      --requests=3 --clip_seconds=5 --num_threads=2 --output=bench/results/codec_semanticodec_cpu_2cores.json
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
from absl import flags
from ml_collections import config_flags

from agac_jax.cli import errors
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
flags.DEFINE_string("weights_dir", None, "semanticodec weights directory (the hub snapshot).")
flags.DEFINE_string("codec_python", ".venv-codec/bin/python",
                    "Interpreter of the semanticodec sidecar (tools/setup_codec_env.sh makes it).")
flags.DEFINE_bool("semanticodec_random", False, "Write random semanticodec weights for --rates and use them.")
flags.DEFINE_string("semanticodec_random_dir", "/tmp/agac_semanticodec_random", "Where the random weights go.")
flags.DEFINE_integer("semanticodec_vocab", 16384, "semantic_vocab_size of the semanticodec runs.")
flags.DEFINE_integer("semanticodec_ddim_steps", 50, "ddim_sample_step of the semanticodec runs.")
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
    """Requests per second, mean sidecar seconds per stage and peak memory for one rate."""
    warmup = list(client.compress(clip_requests(rate, 1, f"warmup{rate}-")))
    if not warmup[0].ok:
        raise RuntimeError(f"the warm-up request failed at rate {rate}: {warmup[0].failure}")
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
        "load_s": float(warmup[0].seconds.get("load", 0.0)),
        "peak_rss_gib": max(reply.peak_rss_bytes for reply in replies) / 2**30,
        "tokens_per_request": float(np.mean([reply.tokens.size for reply in replies])),
        **{f"{stage}_s": value for stage, value in stages.items()},
    }


def random_semanticodec_weights() -> str:
    """Writes random weights for --rates with the codec interpreter; returns their directory."""
    import subprocess

    from agac_jax.codec.client import PACKAGE_ROOT, resolve_python

    command = [resolve_python(FLAGS.codec_python), "-m", "agac_jax.codec.semanticodec_random",
               f"--out={FLAGS.semanticodec_random_dir}", f"--rates={','.join(FLAGS.rates)}",
               f"--semantic_vocab_size={FLAGS.semanticodec_vocab}"]
    subprocess.run(command, check=True, env={"PYTHONPATH": PACKAGE_ROOT, "PATH": "/usr/bin:/bin"})
    return FLAGS.semanticodec_random_dir


def measure_backend(backend: str) -> dict[str, object]:
    """Results per rate (each in a fresh sidecar), or why the backend is unavailable."""
    options, python = {}, None
    if backend == "semanticodec":
        weights = random_semanticodec_weights() if FLAGS.semanticodec_random else FLAGS.weights_dir
        options = {"weights_dir": weights, "semantic_vocab_size": FLAGS.semanticodec_vocab,
                   "ddim_sample_step": FLAGS.semanticodec_ddim_steps}
        python = FLAGS.codec_python
    rates = {}
    for rate in FLAGS.rates:
        try:
            client = CodecClient(backend, options, max_in_flight=FLAGS.max_in_flight, num_threads=FLAGS.num_threads,
                                 python=python, timeout_s=3600.0, startup_timeout_s=600.0)
        except (BackendUnavailableError, ValueError) as error:
            return {"available": False, "reason": str(error).splitlines()[0]}
        with client:
            rates[str(rate)] = measure_rate(client, int(rate))
    result = {"available": True, "rates": rates, "options": options}
    if FLAGS.semanticodec_random and backend == "semanticodec":
        result["weights"] = "random (agac_jax.codec.semanticodec_random): cost only, the audio is noise"
    return result


def print_table(results: dict[str, dict[str, object]]) -> None:
    print(f"{'backend':14s} {'rate':>5s} {'req/s':>7s} {'audio s/s':>10s} {'encode s':>9s} {'decode s':>9s} "
          f"{'load s':>7s} {'peak GiB':>8s}")
    for backend, result in results.items():
        if not result["available"]:
            print(f"{backend:14s} unavailable: {result['reason']}")
            continue
        for rate, row in result["rates"].items():
            print(f"{backend:14s} {rate:>5s} {row['requests_per_s']:7.2f} {row['audio_s_per_s']:10.1f} "
                  f"{row['encode_s']:9.4f} {row['decode_s']:9.4f} {row['load_s']:7.1f} {row['peak_rss_gib']:8.2f}")


def machine_description() -> dict[str, object]:
    import os
    import platform

    return {"platform": platform.platform(), "processor": platform.processor(), "cpu_count": os.cpu_count(),
            "python": platform.python_version(), "load_average": os.getloadavg()}


def main(argv: list[str]) -> None:
    del argv
    results = {backend: measure_backend(backend) for backend in FLAGS.backends}
    names = ("requests", "clip_seconds", "keep_every", "max_in_flight", "num_threads", "codec_python",
             "semanticodec_vocab", "semanticodec_ddim_steps")
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
    errors.run(main)
