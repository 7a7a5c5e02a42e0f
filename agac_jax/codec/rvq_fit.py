"""Fitting the ``rvq_mel`` codebooks (k-means, residual stages) and measuring reconstruction (torch).

Used by ``tools/fit_offline_codec.py``; deterministic for a given seed on a given machine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from agac_jax.codec.rvq_mel import N_FFT, HOP, MelAnalysis, MelGrid, asset_path, nearest_code

ASSET_FORMAT_VERSION = 1


def kmeans_plus_plus_init(data: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k initial centres [k, D] drawn from data [M, D] by k-means++ (D^2 sampling)."""
    first = int(torch.randint(data.shape[0], (1,), generator=generator))
    centres = [data[first]]
    closest = (data - data[first]).square().sum(dim=1)
    for _ in range(1, k):
        weights = closest / closest.sum() if float(closest.sum()) > 0 else torch.ones_like(closest)
        pick = int(torch.multinomial(weights, 1, generator=generator))
        centres.append(data[pick])
        closest = torch.minimum(closest, (data - data[pick]).square().sum(dim=1))
    return torch.stack(centres)


def kmeans(data: torch.Tensor, k: int, iterations: int, seed: int, chunk: int = 65536) -> torch.Tensor:
    """Lloyd's k-means on data [M, D] (float32) with k-means++ init; returns centres [k, D].

    An emptied cluster is re-seeded with the point currently farthest from its centre.
    """
    if data.ndim != 2 or data.shape[0] < k:
        raise ValueError(f"data must be [M >= k, D] with k = {k}; got shape {tuple(data.shape)}.")
    generator = torch.Generator().manual_seed(seed)
    centres = kmeans_plus_plus_init(data, k, generator)
    for _ in range(iterations):
        assignment = torch.cat([nearest_code(part, centres) for part in data.split(chunk)])
        sums = torch.zeros_like(centres).index_add_(0, assignment, data)
        counts = torch.bincount(assignment, minlength=k).to(data.dtype)
        centres = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], centres)
        empty = torch.nonzero(counts == 0).flatten()
        if empty.numel():
            error = (data - centres[assignment]).square().sum(dim=1)
            centres[empty] = data[error.topk(empty.numel()).indices]
    return centres


def fit_residual_codebooks(
    features: torch.Tensor, codebook_size: int, iterations: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stage 1 on features [M, D], stage 2 on their residuals; each [codebook_size, D]."""
    stage1 = kmeans(features, codebook_size, iterations, seed)
    residual = features - stage1[torch.cat([nearest_code(p, stage1) for p in features.split(65536)])]
    stage2 = kmeans(residual, codebook_size, iterations, seed + 1)
    return stage1, stage2


def frame_features(waveforms: Iterable[np.ndarray], token_rate: int) -> torch.Tensor:
    """All frames' features [sum N, D] of float32 waveforms on the rate's grid."""
    analysis = MelAnalysis(token_rate)
    return torch.cat([analysis.features(w) for w in waveforms])


def save_codebooks(
    stage1: torch.Tensor, stage2: torch.Tensor, token_rate: int, seed: int, assets_dir: Path | str | None = None
) -> Path:
    """Writes float16 codebooks and their grid to ``rvq_mel_r{r}.npz``; returns the path."""
    path = asset_path(token_rate, assets_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid = MelGrid(token_rate)
    np.savez_compressed(
        path,
        stage1=stage1.numpy().astype(np.float16),
        stage2=stage2.numpy().astype(np.float16),
        token_rate=np.int64(token_rate),
        subframes=np.int64(grid.subframes),
        seed=np.int64(seed),
        format_version=np.int64(ASSET_FORMAT_VERSION),
    )
    return path


def _magnitude(waveform: np.ndarray, length: int) -> torch.Tensor:
    padded = np.zeros(length, dtype=np.float32)
    padded[: min(length, waveform.size)] = waveform[:length]
    window = torch.hann_window(N_FFT)
    return torch.stft(torch.from_numpy(padded), N_FFT, HOP, window=window, return_complex=True).abs()


def spectral_convergence(reference: np.ndarray, decoded: np.ndarray) -> float:
    """|| |S_ref| - |S_dec| ||_F / || |S_ref| ||_F over the reference's length (0 is perfect)."""
    ref, dec = _magnitude(reference, reference.size), _magnitude(decoded, reference.size)
    return float(torch.linalg.norm(ref - dec) / torch.linalg.norm(ref).clamp_min(1e-12))


def log_mel_distance_db(reference: np.ndarray, decoded: np.ndarray, token_rate: int = 100) -> float:
    """Mean |10 log10 mel_ref - 10 log10 mel_dec| in dB over all columns and bands (0 is perfect)."""
    analysis = MelAnalysis(token_rate)
    padded = np.zeros_like(reference)
    padded[: min(reference.size, decoded.size)] = decoded[: reference.size]
    ref, dec = analysis.log_mel_columns(reference), analysis.log_mel_columns(padded)
    return float(10.0 * (ref - dec).abs().mean())
