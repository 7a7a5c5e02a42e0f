"""Checks a SemantiCodec set-up and reports what it found, as JSON (run it in the codec environment):

    .venv-codec/bin/python -m agac_jax.codec.semanticodec_check --weights_dir=DIR [--rate=100]

It loads the codec through ``SemantiCodecBackend`` and reports: where the model, its semantic
codebook and the package's device attributes live; a decode on the fresh codec (before any encode)
and its reproducibility for one seed and difference across seeds; the in-memory encoder input
against the package's own ``SemantiCodec.load_audio`` on a WAV of the same samples; the tokens
spent on a clip; and the error for out-of-range tokens. The tests assert on this report
(``tests/test_codec_semanticodec_real.py``); users can run it to see that their weights load.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from agac_jax.codec.base import SAMPLE_RATE
from agac_jax.codec.semanticodec_backend import (
    DEFAULT_SEMANTIC_VOCAB_SIZE,
    SemantiCodecBackend,
    patch_frames,
    spent_frames,
)


def package_features(codec: SemantiCodecBackend, waveform: np.ndarray):
    """What ``SemantiCodec.load_audio`` makes of a 16 kHz float WAV of ``waveform``.

    ``torchaudio.load`` needs torchcodec (torchaudio >= 2.9), which the codec environment does not
    carry; for this comparison only, the file is read with soundfile into the same [channels, n]
    float32 tensor that ``torchaudio.load`` returns for a float WAV, and the package's own
    ``load_audio`` does the rest."""
    import soundfile
    import torch
    import torchaudio

    def load(path):
        data, rate = soundfile.read(path, dtype="float32", always_2d=True)
        return torch.from_numpy(np.ascontiguousarray(data.T)), rate

    with tempfile.TemporaryDirectory() as folder:
        path = str(Path(folder) / "clip.wav")
        soundfile.write(path, waveform, SAMPLE_RATE, subtype="FLOAT")
        original, torchaudio.load = torchaudio.load, load
        try:
            return codec.model.load_audio(path)
        finally:
            torchaudio.load = original


def run_checks(
    weights_dir: str, token_rate: int = 100, semantic_vocab_size: int = DEFAULT_SEMANTIC_VOCAB_SIZE,
    ddim_sample_step: int = 1, device: str = "cpu", clip_samples: int = 20800,
) -> dict:
    """The report described in the module docstring."""
    import torch

    report: dict = {"cuda_available": bool(torch.cuda.is_available())}
    start = time.perf_counter()
    codec = SemantiCodecBackend(
        token_rate, weights_dir=weights_dir, semantic_vocab_size=semantic_vocab_size,
        ddim_sample_step=ddim_sample_step, device=device,
    )
    report["load_seconds"] = time.perf_counter() - start
    model = codec.model
    report["placement"] = {
        "device": str(codec.device),
        "encoder_device_attribute": str(model.encoder.device),
        "codebook": str(model.encoder.centroid_npy.device),
        "decoder_device_attribute": str(model.decoder.device),
        "parameters": sorted({str(p.device) for p in model.parameters()}),
    }
    rng = np.random.default_rng(0)
    group = patch_frames(token_rate)
    tokens = np.stack(
        [rng.integers(0, codec.semantic_vocab_size, 2 * group), rng.integers(0, codec.acoustic_vocab_size, 2 * group)],
        axis=1,
    )
    mark = time.perf_counter()
    first = codec.decode(tokens, seed=0)  # on the fresh codec: no encode has run
    report["decode_seconds"] = time.perf_counter() - mark
    again, other = codec.decode(tokens, seed=0), codec.decode(tokens, seed=1)
    report["decode_before_encode"] = {"samples": int(first.size), "expected": int(tokens.shape[0] * codec.frame_samples)}
    report["seed"] = {
        "same_seed_equal": bool(np.array_equal(first, again)),
        "other_seed_max_abs_diff": float(np.max(np.abs(first - other))),
    }
    t = np.arange(clip_samples) / SAMPLE_RATE
    clip = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(clip_samples)).astype(np.float32)
    ours = codec.input_features(clip)
    theirs, target_token_len = package_features(codec, clip)
    report["features"] = {
        "shape": list(ours.shape), "package_shape": list(theirs.shape),
        "max_abs_diff": float((ours - theirs).abs().max()) if ours.shape == theirs.shape else None,
        "package_target_token_len": float(target_token_len),
    }
    mark = time.perf_counter()
    encoded = codec.encode(clip)
    report["encode_seconds"] = time.perf_counter() - mark
    report["encode"] = {
        "samples": clip_samples, "shape": list(encoded.shape),
        "spent_frames": spent_frames(clip_samples, token_rate), "patch_frames": group,
    }
    errors = {}
    for name, bad in (("semantic", [codec.semantic_vocab_size, 0]), ("acoustic", [0, codec.acoustic_vocab_size]),
                      ("negative", [-1, 0])):
        wrong = tokens.copy()
        wrong[3] = bad
        try:
            codec.decode(wrong)
            errors[name] = None
        except ValueError as error:
            errors[name] = str(error)
    try:
        codec.decode(tokens[:-1])
        errors["partial_patch"] = None
    except ValueError as error:
        errors["partial_patch"] = str(error)
    report["token_errors"] = errors
    report["vocab"] = {"semantic": codec.semantic_vocab_size, "acoustic": codec.acoustic_vocab_size}
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights_dir", required=True)
    parser.add_argument("--rate", type=int, default=100)
    parser.add_argument("--semantic_vocab_size", type=int, default=DEFAULT_SEMANTIC_VOCAB_SIZE)
    parser.add_argument("--ddim_sample_step", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--num_threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args(argv)
    import torch

    if args.num_threads > 0:
        torch.set_num_threads(args.num_threads)
    report = run_checks(args.weights_dir, args.rate, args.semantic_vocab_size, args.ddim_sample_step, args.device)
    sys.stdout.write("AGAC_REPORT " + json.dumps(report) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
