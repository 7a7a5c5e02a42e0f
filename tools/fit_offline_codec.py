"""Fits the ``rvq_mel`` codebooks for token rates 25, 50 and 100 and reports reconstruction quality.

Training material: synthetic scenes (tones, chirps, noise bursts, click trains, AM tones, background
noise at random SNR; ``agac_jax.codec.synthetic.random_scene``) generated from --seed, plus every
*.wav under --wav_dir when given (resampled to 16 kHz mono). Writes
``agac_jax/codec/assets/rvq_mel_r{r}.npz`` (float16 codebooks) unless --assets_dir says otherwise.

  python tools/fit_offline_codec.py
  python tools/fit_offline_codec.py --wav_dir=/data/wavs --codebook_size=1024
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import librosa
import numpy as np
import soundfile
import torch
from absl import app, flags

from agac_jax.codec.base import SAMPLE_RATE, SUPPORTED_TOKEN_RATES
from agac_jax.codec.rvq_fit import (
    fit_residual_codebooks,
    frame_features,
    log_mel_distance_db,
    save_codebooks,
    spectral_convergence,
)
from agac_jax.codec.rvq_mel import RvqMelCodec
from agac_jax.codec.synthetic import SIGNAL_KINDS, make_signal, random_scene

FLAGS = flags.FLAGS
flags.DEFINE_integer("seed", 0, "Seed of the synthetic scenes and of k-means.")
flags.DEFINE_float("synthetic_seconds", 2400.0, "Total seconds of synthetic training scenes.")
flags.DEFINE_float("clip_seconds", 2.0, "Length of each synthetic scene.")
flags.DEFINE_string("wav_dir", None, "Optional directory of WAV files (searched recursively) to add.")
flags.DEFINE_integer("codebook_size", 1024, "Codes per stage (both stages).")
flags.DEFINE_integer("iterations", 25, "Lloyd iterations per stage.")
flags.DEFINE_list("rates", [str(r) for r in SUPPORTED_TOKEN_RATES], "Token rates to fit.")
flags.DEFINE_string("assets_dir", None, "Output directory; default agac_jax/codec/assets.")
flags.DEFINE_integer("threads", 0, "torch threads; 0 keeps torch's default.")
flags.DEFINE_bool("report_only", False, "Only report the quality of the codebooks already in --assets_dir.")


def synthetic_scenes(total_seconds: float, clip_seconds: float, seed: int) -> list[np.ndarray]:
    """Deterministic training scenes, float32 [clip_seconds * 16000] each."""
    rng = np.random.default_rng(seed)
    count = max(1, int(round(total_seconds / clip_seconds)))
    return [random_scene(rng, clip_seconds) for _ in range(count)]


def wav_clips(wav_dir: Path) -> list[np.ndarray]:
    """Every *.wav under ``wav_dir`` as float32 mono 16 kHz."""
    paths = sorted(wav_dir.rglob("*.wav"))
    if not paths:
        raise ValueError(f"--wav_dir {wav_dir} holds no *.wav files.")
    clips = []
    for path in paths:
        audio, rate = soundfile.read(path, dtype="float32", always_2d=True)
        mono = audio.mean(axis=1)
        if rate != SAMPLE_RATE:
            mono = librosa.resample(mono, orig_sr=rate, target_sr=SAMPLE_RATE)
        if mono.size:
            clips.append(mono.astype(np.float32))
    return clips


def quality_table(token_rate: int, assets_dir: str | None, seed: int) -> list[tuple[str, float, float]]:
    """(kind, log-mel distance dB, spectral convergence) of a 2 s held-out sound of each kind."""
    codec = RvqMelCodec(token_rate, assets_dir=assets_dir)
    rows = []
    for offset, kind in enumerate(SIGNAL_KINDS):
        signal = make_signal(kind, 2.0, seed=10_000 + seed + offset, snr_db=20.0)
        decoded = codec.decode(codec.encode(signal))
        rows.append((kind, log_mel_distance_db(signal, decoded), spectral_convergence(signal, decoded)))
    return rows


def print_quality(rate: int) -> None:
    for kind, distance, convergence in quality_table(rate, FLAGS.assets_dir, FLAGS.seed):
        print(f"  {kind:12s} log-mel distance {distance:5.2f} dB   spectral convergence {convergence:.3f}")


def main(argv: list[str]) -> None:
    del argv
    if FLAGS.threads:
        torch.set_num_threads(FLAGS.threads)
    rates = [int(r) for r in FLAGS.rates]
    if FLAGS.report_only:
        for rate in rates:
            print(f"r={rate}:")
            print_quality(rate)
        return
    clips = synthetic_scenes(FLAGS.synthetic_seconds, FLAGS.clip_seconds, FLAGS.seed)
    if FLAGS.wav_dir:
        clips += wav_clips(Path(FLAGS.wav_dir))
    print(f"training material: {len(clips)} clips, {sum(c.size for c in clips) / SAMPLE_RATE:.0f} s")
    for rate in rates:
        start = time.perf_counter()
        features = frame_features(clips, rate)
        stage1, stage2 = fit_residual_codebooks(features, FLAGS.codebook_size, FLAGS.iterations, FLAGS.seed)
        path = save_codebooks(stage1, stage2, rate, FLAGS.seed, FLAGS.assets_dir)
        print(f"r={rate}: {features.shape[0]} frames of {features.shape[1]} dims -> {path} "
              f"({path.stat().st_size / 1e6:.2f} MB, {time.perf_counter() - start:.0f} s)")
        print_quality(rate)


if __name__ == "__main__":
    app.run(main)
