"""The reference's fusion, frame mapping and keep selection (DESIGN.md sections 3 and 4), in plain
numpy, written apart from agac_jax.scoring.selection so that they check it; `torch_scores` fuses
with them and re-exports them.

Token t covers samples [640 t, 640 (t + 1)) of a 16 kHz clip; a codec frame at r tokens/s holds two
tokens, 32000 / r samples.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

SAMPLE_RATE = 16_000
TOKEN_SAMPLES = 640
CODEC_TOKEN_RATES = (25, 50, 100)


def minmax_normalize(x: np.ndarray) -> np.ndarray:
    """(x - min) / (max - min) over a clip's valid tokens [T]; all equal: all 0. Returns float64."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"scores must be a non-empty 1-D array, got shape {x.shape}")
    span = x.max() - x.min()
    if not span > 0:
        return np.zeros_like(x)
    return (x - x.min()) / span


def local_evidence(local: np.ndarray, *, sign: str = "signed", smooth: int = 1) -> np.ndarray:
    """The local score fusion reads, over a clip's valid tokens [T]: |local| when `sign` is
    "magnitude"; then each token's mean over the `smooth` tokens starting (smooth - 1) // 2 before it
    (the occlusion window), clipped at the clip's ends. float64."""
    x = np.asarray(local, dtype=np.float64)
    if sign not in ("signed", "magnitude"):
        raise ValueError(f"sign must be 'signed' or 'magnitude', got {sign!r}")
    if sign == "magnitude":
        x = np.abs(x)
    if smooth > 1:
        first = np.maximum(np.arange(len(x)) - (smooth - 1) // 2, 0)
        x = np.array([x[a:t - (smooth - 1) // 2 + smooth].mean() for t, a in enumerate(first)])
    return x


def fuse_scores(local: np.ndarray, global_: np.ndarray, alpha: float) -> np.ndarray:
    """F = alpha * norm(local) + (1 - alpha) * norm(global_), [T] float64."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    local, global_ = np.asarray(local), np.asarray(global_)
    if local.shape != global_.shape:
        raise ValueError(f"local {local.shape} and global_ {global_.shape} must have the same shape")
    return alpha * minmax_normalize(local) + (1 - alpha) * minmax_normalize(global_)


def frame_samples(rate: int) -> int:
    """Samples per codec frame (2 tokens at ``rate`` tokens/s): 32000 / rate."""
    if isinstance(rate, bool) or rate not in CODEC_TOKEN_RATES:
        raise ValueError(f"codec token rate must be one of {CODEC_TOKEN_RATES}, got {rate!r}")
    return 2 * SAMPLE_RATE // int(rate)


def _check_n_samples(n_samples: int) -> int:
    if isinstance(n_samples, bool) or not isinstance(n_samples, (int, np.integer)) or n_samples < 1:
        raise ValueError(f"n_samples must be a positive int, got {n_samples!r}")
    return int(n_samples)


def token_scores_to_frames(token_scores: np.ndarray, n_samples: int, rate: int) -> np.ndarray:
    """Overlap-weighted average of token scores over each codec frame.

    Token t covers samples [640 t, 640 (t + 1)); frame f covers [f fs, min((f + 1) fs, n_samples)).
    A frame that overlaps no token takes the last token's score.

    Args:
        token_scores: [T] scores of the clip's valid tokens.
        n_samples: the clip's length.
        rate: codec token rate, one of 25, 50, 100.

    Returns:
        [N] float64, N = ceil(n_samples / frame_samples(rate)).
    """
    scores = np.asarray(token_scores, dtype=np.float64)
    if scores.ndim != 1 or scores.size == 0:
        raise ValueError(f"token_scores must be a non-empty 1-D array, got shape {scores.shape}")
    n_samples = _check_n_samples(n_samples)
    size = frame_samples(rate)
    n_frames = -(-n_samples // size)
    frame_start = np.arange(n_frames, dtype=np.int64)[:, None] * size
    frame_end = np.minimum(frame_start + size, n_samples)
    token_start = np.arange(scores.size, dtype=np.int64)[None, :] * TOKEN_SAMPLES
    token_end = token_start + TOKEN_SAMPLES
    overlap = np.clip(np.minimum(frame_end, token_end) - np.maximum(frame_start, token_start), 0, None)
    coverage = overlap.sum(axis=1)
    weighted = (overlap * scores[None, :]).sum(axis=1)
    return np.where(coverage > 0, weighted / np.maximum(coverage, 1), scores[-1])


def keep_count(n_frames: int, rho: float | str) -> int:
    """k = ceil(rho * N), exact for the decimal rho as written (Fraction(str(rho)))."""
    if isinstance(rho, bool):
        raise ValueError(f"keep ratio rho must be a number in (0, 1], got {rho!r}")
    try:
        fraction = Fraction(str(rho))
    except (ValueError, ZeroDivisionError) as error:
        raise ValueError(f"keep ratio rho must be a number in (0, 1], got {rho!r}") from error
    if not 0 < fraction <= 1:
        raise ValueError(f"keep ratio rho must lie in (0, 1], got {rho!r}")
    return -(-(fraction.numerator * int(n_frames)) // fraction.denominator)


def reference_keep(scores_1d: np.ndarray, n_samples: int, rate: int, rho: float | str) -> np.ndarray:
    """Indices of the kept frames: the k highest frame scores, ties to the earlier frame, in time order.

    Args:
        scores_1d: [T] token scores of the clip's valid tokens (e.g. ReferenceScores.fused).
        n_samples: the clip's length; rate: codec token rate; rho: keep ratio in (0, 1].

    Returns:
        int64 [k], sorted.
    """
    frames = token_scores_to_frames(scores_1d, n_samples, rate)
    k = keep_count(frames.size, rho)
    order = np.argsort(-frames, kind="stable")
    return np.sort(order[:k]).astype(np.int64)

