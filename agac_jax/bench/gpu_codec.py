"""Requests per second of the codec sidecar on one device (`tools/gpu_check.sh`).

    python -m agac_jax.bench.gpu_codec --out=/tmp/codec.json --device=cuda:0 [--rates=100,50,25]

For each rate, a fresh sidecar (`CodecClient`, this interpreter unless --python) encodes and decodes
`requests` synthetic clips of `clip_seconds` with every `keep_every`-th frame kept, pipelined
(`max_in_flight`), after one warm-up request that loads the codec. SemantiCodec without --weights_dir
gets random weights first (`codec.semanticodec_random`, written by the sidecar's interpreter): the
real modules at the real sizes, so the cost is the real one and the audio is noise. `--backend=rvq_mel`
runs the same measurement on the offline codec (the CPU dry run of the GPU check).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from agac_jax.bench.gpu_mfu import PartialWriter


def clip_requests(rate: int, count: int, clip_seconds: float, keep_every: int, prefix: str) -> list[Any]:
    """`count` synthetic clips of mixed kinds at `rate`, every `keep_every`-th frame kept."""
    from agac_jax.codec import CodecRequest, num_frames
    from agac_jax.codec.synthetic import SIGNAL_KINDS, make_signal

    requests = []
    for i in range(count):
        x = make_signal(SIGNAL_KINDS[i % len(SIGNAL_KINDS)], clip_seconds, seed=i, snr_db=20.0)
        requests.append(CodecRequest(f"{prefix}{i}", x, rate, np.arange(0, num_frames(x.size, rate), keep_every)))
    return requests


def measure_rate(client: Any, rate: int, requests: int, clip_seconds: float, keep_every: int) -> dict[str, float]:
    """Requests per second, the sidecar's mean seconds per stage, its peak memory and load time."""
    warmup = list(client.compress(clip_requests(rate, 1, clip_seconds, keep_every, f"warmup{rate}-")))
    if not warmup[0].ok:
        raise RuntimeError(f"the warm-up request failed at rate {rate}: {warmup[0].failure}")
    start = time.perf_counter()
    replies = list(client.compress(clip_requests(rate, requests, clip_seconds, keep_every, f"r{rate}-")))
    elapsed = time.perf_counter() - start
    failed = [r for r in replies if not r.ok]
    if failed:
        raise RuntimeError(f"{len(failed)} requests failed at rate {rate}: {failed[0].failure}")
    stages = {f"{stage}_s": float(np.mean([r.seconds[stage] for r in replies]))
              for stage in ("assemble", "encode", "decode", "total")}
    return dict(requests_per_s=len(replies) / elapsed, audio_s_per_s=len(replies) * clip_seconds / elapsed,
                load_s=float(warmup[0].seconds.get("load", 0.0)),
                peak_rss_gib=max(r.peak_rss_bytes for r in replies) / 2**30,
                tokens_per_request=float(np.mean([r.tokens.size for r in replies])), **stages)


def random_weights(out: Path, rates: Sequence[int], semantic_vocab_size: int, python: str) -> float:
    """Writes random SemantiCodec weights for `rates` under `out` with `python`; returns the seconds."""
    from agac_jax.codec.client import PACKAGE_ROOT

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
    start = time.perf_counter()
    subprocess.run([python, "-m", "agac_jax.codec.semanticodec_random", f"--out={out}",
                    f"--rates={','.join(map(str, rates))}", f"--semantic_vocab_size={semantic_vocab_size}"],
                   check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def measure(backend: str, rates: Sequence[int], device: str = "cuda:0", weights_dir: str = "", requests: int = 4,
            clip_seconds: float = 10.0, keep_every: int = 2, ddim_sample_step: int = 50,
            semantic_vocab_size: int = 16384, max_in_flight: int = 4, num_threads: int = 4, python: str = "",
            log: Callable[[str], None] = print,
            checkpoint: Callable[[dict[str, Any]], None] = lambda record: None) -> dict[str, Any]:
    """One entry per rate (a rate that fails is recorded with its error) and the settings, handed to
    `checkpoint` after each rate."""
    from agac_jax.codec import CodecClient

    python = python or sys.executable
    record: dict[str, Any] = dict(backend=backend, device=device if backend == "semanticodec" else "cpu",
                                  requests=requests, clip_seconds=clip_seconds, keep_every=keep_every,
                                  max_in_flight=max_in_flight, num_threads=num_threads, rates={})
    options: dict[str, Any] = {}
    scratch = None
    if backend == "semanticodec":
        if not weights_dir:
            scratch = tempfile.TemporaryDirectory(prefix="agac_semanticodec_random_")
            weights_dir = scratch.name
            record["random_weights_s"] = random_weights(Path(weights_dir), rates, semantic_vocab_size, python)
            record["weights"] = "random (agac_jax.codec.semanticodec_random): cost only, the audio is noise"
            log(f"gpu_codec: random weights for rates {list(rates)} in {record['random_weights_s']:.1f} s")
        options = dict(weights_dir=weights_dir, semantic_vocab_size=semantic_vocab_size,
                       ddim_sample_step=ddim_sample_step, device=device)
        record["options"] = options
    try:
        for rate in rates:
            try:
                with CodecClient(backend, options, max_in_flight=max_in_flight, num_threads=num_threads,
                                 python=python, timeout_s=600.0, startup_timeout_s=300.0) as client:
                    row = measure_rate(client, int(rate), requests, clip_seconds, keep_every)
                log(f"gpu_codec: {backend} r={rate}: {row['requests_per_s']:.2f} requests/s, "
                    f"encode {row['encode_s']:.3f} s, decode {row['decode_s']:.3f} s, load {row['load_s']:.1f} s")
            except Exception as error:  # noqa: BLE001 - recorded; the next rate still runs
                row = dict(error=f"{type(error).__name__}: {error}"[:2000])
                log(f"gpu_codec: {backend} r={rate} failed: {row['error']}")
            record["rates"][str(rate)] = row
            checkpoint(record)
    finally:
        if scratch is not None:
            scratch.cleanup()
    return record


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--backend", default="semanticodec", choices=("semanticodec", "rvq_mel"))
    parser.add_argument("--rates", default="100,50,25")
    parser.add_argument("--device", default="cuda:0", help="SemantiCodec's device")
    parser.add_argument("--weights_dir", default="", help="SemantiCodec's weights (default: random ones)")
    parser.add_argument("--requests", type=int, default=4, help="timed requests per rate")
    parser.add_argument("--clip_seconds", type=float, default=10.0)
    parser.add_argument("--keep_every", type=int, default=2)
    parser.add_argument("--ddim_sample_step", type=int, default=50)
    parser.add_argument("--num_threads", type=int, default=4, help="torch threads in the sidecar")
    parser.add_argument("--python", default="", help="the sidecar's interpreter (default: this one)")
    args = parser.parse_args(argv)
    write = PartialWriter(Path(args.out))
    try:
        record = measure(args.backend, [int(r) for r in args.rates.split(",")], args.device, args.weights_dir,
                         args.requests, args.clip_seconds, args.keep_every, args.ddim_sample_step,
                         num_threads=args.num_threads, python=args.python, checkpoint=write)
    except KeyboardInterrupt:
        write.interrupted()
        return 130
    write(record)
    print(f"wrote {args.out}")
    return 0 if all("error" not in row for row in record["rates"].values()) else 1

if __name__ == "__main__":
    sys.exit(main())
