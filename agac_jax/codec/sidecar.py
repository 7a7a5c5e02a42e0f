"""The codec sidecar process: ``python -m agac_jax.codec.sidecar --backend=rvq_mel``.

It speaks the framed protocol of ``agac_jax.codec.protocol`` on its stdin/stdout (everything a
library prints goes to stderr instead), loads one codec per token rate on first use, and serves
requests one at a time, in order. It exits on ``Shutdown`` or when its stdin closes, so it cannot
outlive the client that started it for longer than the request in progress. SIGINT is ignored: the
client owns its lifetime. It imports torch (through the backends) and never jax, so it may run under
another interpreter than the harness (``CodecClient(python=...)``, ``codec.python``): that one needs
numpy, soundfile, soxr, torch and the backend's package, and finds this project through PYTHONPATH.

A backend option ``device`` is enforced before torch loads: "cpu" hides every GPU from the process,
"cuda:<k>" leaves it only GPU k (which it then calls cuda:0), so the codec never allocates on a GPU
that JAX holds; "cuda" leaves visibility as it is.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from typing import BinaryIO

from agac_jax.codec.backends import BACKEND_NAMES, check_backend
from agac_jax.codec.base import BackendUnavailableError
from agac_jax.codec.frames import DEFAULT_CROSSFADE_MS
from agac_jax.codec.protocol import CodecFailure, Shutdown, SidecarReady, read_message, write_message
from agac_jax.codec.service import CodecService


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m agac_jax.codec.sidecar", description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=BACKEND_NAMES, required=True)
    parser.add_argument("--options", default="{}", help="backend options as a JSON object")
    parser.add_argument("--num_threads", type=int, default=1, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--crossfade_ms", type=float, default=DEFAULT_CROSSFADE_MS, help="crossfade at each cut")
    parser.add_argument("--max_loaded_rates", type=int, default=0, help="codecs held at once (0: no limit)")
    return parser.parse_args(argv)


def isolate_device(options: dict, environ: dict) -> dict:
    """The options with ``device`` as this process will see it, after restricting
    ``environ['CUDA_VISIBLE_DEVICES']`` to that device (call before torch is imported)."""
    device = options.get("device")
    if not isinstance(device, str):
        return options
    if device == "cpu":
        environ["CUDA_VISIBLE_DEVICES"] = ""
    elif device.startswith("cuda:") and device[5:].isdigit():
        index = int(device[5:])
        visible = [d.strip() for d in environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
        if "CUDA_VISIBLE_DEVICES" in environ and index >= len(visible):
            raise ValueError(
                f"device {device!r}: CUDA_VISIBLE_DEVICES={environ['CUDA_VISIBLE_DEVICES']!r} shows only "
                f"{len(visible)} GPUs."
            )
        environ["CUDA_VISIBLE_DEVICES"] = visible[index] if "CUDA_VISIBLE_DEVICES" in environ else str(index)
        options = {**options, "device": "cuda:0"}
    return options


def claim_protocol_streams() -> tuple[BinaryIO, BinaryIO]:
    """(input, output) protocol streams; afterwards fd 1 and sys.stdout point at stderr."""
    protocol_out = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr
    return sys.stdin.buffer, protocol_out


def start_service(
    backend: str, options_json: str, crossfade_ms: float, max_loaded_rates: int = 0
) -> tuple[CodecService | None, CodecFailure | None]:
    """The service, or why the backend cannot run at all."""
    try:
        options = json.loads(options_json)
        if not isinstance(options, dict):
            raise ValueError(f"--options must be a JSON object; got {options_json!r}.")
        check_backend(backend, options)
        options = isolate_device(options, os.environ)
        return CodecService(backend, options, crossfade_ms, max_loaded_rates), None
    except BackendUnavailableError as error:
        return None, CodecFailure("BackendUnavailable", str(error))
    except ValueError as error:
        return None, CodecFailure("InvalidRequest", str(error))


def serve(service: CodecService, protocol_in: BinaryIO, protocol_out: BinaryIO) -> None:
    """Answers requests until Shutdown or end of input."""
    while True:
        message = read_message(protocol_in)
        if message is None or isinstance(message, Shutdown):
            return
        write_message(protocol_out, service.handle(message))


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    args = parse_args(argv)
    protocol_in, protocol_out = claim_protocol_streams()
    service, failure = start_service(args.backend, args.options, args.crossfade_ms, args.max_loaded_rates)
    if args.num_threads > 0:
        import torch

        torch.set_num_threads(args.num_threads)
    write_message(protocol_out, SidecarReady(os.getpid(), args.backend, failure))
    if service is None:
        return 2
    serve(service, protocol_in, protocol_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
