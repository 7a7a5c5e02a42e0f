"""Frame scores for the baselines of DESIGN.md section 4 that need no model.

Each returns per-frame scores for one clip, padded to a static number of frames, to be passed to
``selection.topk_keep`` like the method's own scores (``segment_topk_keep`` replaces ``topk_keep``
itself). All are pure JAX, jit with static shapes, vmap over clips, and give the same result for a
clip however far it is padded. Invalid (padding) frames score 0.

- ``random_scores``: seeded uniform noise, so top-k keeps a uniformly random k-subset.
- ``uniform_scores``: a nested van der Corput ordering, so top-k is spread evenly for every k.
- ``evenly_spaced_scores``: exactly evenly spaced frames for one given k.
- ``energy_scores``: frame RMS of the waveform.
- ``segment_topk_keep``: top-k within fixed time segments (1 s by default).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.typing import ArrayLike

from agac_jax.scoring import selection

MAX_UNIFORM_FRAMES = 1 << 15


def _check_frame_valid(frame_valid: jax.Array) -> None:
    if frame_valid.ndim != 1:
        raise ValueError(
            f"frame_valid must be one clip's 1-D mask; got shape {frame_valid.shape}. "
            "Use jax.vmap for a batch."
        )


def random_scores(key: jax.Array, frame_valid: ArrayLike) -> jax.Array:
    """Seeded uniform scores in [0, 1): top-k of them is a uniformly random k-subset of the frames.

    Frame f's score is drawn from ``fold_in(key, f)``, so it depends only on the key and f, never on
    the padded length.

    Args:
      key: a PRNG key (per clip: vmap over keys, e.g. ``jax.random.split``).
      frame_valid: [F] bool.

    Returns:
      [F] float32, 0 on invalid frames.
    """
    frame_valid = jnp.asarray(frame_valid, dtype=bool)
    _check_frame_valid(frame_valid)
    frames = jnp.arange(frame_valid.shape[0], dtype=jnp.uint32)
    draws = jax.vmap(lambda f: jax.random.uniform(jax.random.fold_in(key, f)))(frames)
    return jnp.where(frame_valid, draws, 0).astype(jnp.float32)


def _bit_reverse(values: jax.Array, bits: int) -> jax.Array:
    """Reverse the lowest ``bits`` bits of non-negative int32 values."""
    reversed_values = jnp.zeros_like(values)
    for bit in range(bits):
        reversed_values = reversed_values | (((values >> bit) & 1) << (bits - 1 - bit))
    return reversed_values


def van_der_corput_first_hits(n_valid: ArrayLike, max_frames: int) -> jax.Array:
    """For each of N = n_valid frame cells, the first j at which the van der Corput point v_j lands.

    v_j is the base-2 radical inverse of j (bits of j mirrored after the binary point); frame f is
    the cell [f / N, (f + 1) / N). The first 2^p points are exactly {i / 2^p}, so every cell is hit
    once j reaches 2^ceil(log2 N), and the first hits do not depend on ``max_frames``.

    Returns:
      [max_frames] int32, first hit of each valid cell; 2^bits (beyond every hit) for f >= N.
    """
    bits = max(1, (max_frames - 1).bit_length())
    n_points = 1 << bits
    j = jnp.arange(n_points, dtype=jnp.int32)
    n = jnp.asarray(n_valid, dtype=jnp.int32)
    cell = (_bit_reverse(j, bits) * n) >> bits
    unhit = jnp.full(max_frames, n_points, dtype=jnp.int32)
    return unhit.at[cell].min(j, mode="drop")


def uniform_scores(frame_valid: ArrayLike) -> jax.Array:
    """Scores whose top-k is spread evenly over the clip's valid frames, for every k at once.

    Frame f of the clip's N valid frames scores 1 / (1 + j_f), j_f the first index at which the
    van der Corput sequence lands in [f / N, (f + 1) / N) (``van_der_corput_first_hits``). All
    scores are distinct, and top-k sets are nested in k. For 2^p <= k < 2^(p+1), the top k contain
    the frames floor(i N / 2^p), i < 2^p, so every gap (between kept frames, and from the last kept
    frame to N; frame 0 is always kept) is at most ceil(N / 2^p) <= ceil(2 N / k), and at most
    ceil(N / k) when k is a power of two. No nested order can do much better for every k (de Bruijn
    and Erdos); for exactly even spacing at one k, see ``evenly_spaced_scores``.

    Args:
      frame_valid: [F] bool, valid frames first (a prefix), F <= 32768.

    Returns:
      [F] float32 in (0, 1] on valid frames, 0 on invalid frames.
    """
    frame_valid = jnp.asarray(frame_valid, dtype=bool)
    _check_frame_valid(frame_valid)
    max_frames = frame_valid.shape[0]
    if max_frames > MAX_UNIFORM_FRAMES:
        raise ValueError(
            f"uniform_scores supports up to {MAX_UNIFORM_FRAMES} frames per clip; got {max_frames}."
        )
    first_hits = van_der_corput_first_hits(frame_valid.sum(dtype=jnp.int32), max_frames)
    scores = 1.0 / (1.0 + first_hits.astype(jnp.float32))
    return jnp.where(frame_valid, scores, 0).astype(jnp.float32)


def evenly_spaced_scores(frame_valid: ArrayLike, k: ArrayLike) -> jax.Array:
    """Scores whose top-k is exactly k evenly spaced frames: the centres of k equal parts.

    Frames floor((2 i + 1) N / (2 k)), i < k, of the clip's N valid frames score 1, all others 0;
    consecutive kept frames are floor(N / k) or ceil(N / k) apart. The set is built for this k
    (min(k, N)) and is not nested across k.

    Args:
      frame_valid: [F] bool, valid frames first (a prefix).
      k: scalar int, may be traced.

    Returns:
      [F] float32 in {0, 1}.
    """
    frame_valid = jnp.asarray(frame_valid, dtype=bool)
    _check_frame_valid(frame_valid)
    max_frames = frame_valid.shape[0]
    n = frame_valid.sum(dtype=jnp.int32)
    k = jnp.clip(jnp.asarray(k, dtype=jnp.int32), 0, n)
    part = jnp.arange(max_frames, dtype=jnp.int32)
    centre = ((2 * part + 1) * n) // jnp.maximum(2 * k, 1)
    centre = jnp.where(part < k, centre, max_frames)
    chosen = jnp.zeros(max_frames, dtype=jnp.float32).at[centre].set(1.0, mode="drop")
    return jnp.where(frame_valid, chosen, 0)


def energy_scores(
    waveform: ArrayLike, n_samples: ArrayLike, rate: int, max_frames: int
) -> jax.Array:
    """Frame RMS: sqrt(mean of x^2) over each frame's samples [f fs, min((f + 1) fs, n_samples)).

    Args:
      waveform: [S] float, one clip padded to any S; samples from n_samples on are ignored.
      n_samples: scalar int, may be traced; at most S and at most max_frames * fs
        (`selection.check_clip_values` checks it on the host).
      rate: codec token rate, static (25, 50 or 100).
      max_frames: static number of frames.

    Returns:
      [max_frames] float32, 0 on invalid frames.
    """
    waveform = jnp.asarray(waveform, dtype=jnp.float32)
    if waveform.ndim != 1:
        raise ValueError(f"waveform must be one clip's 1-D array; got shape {waveform.shape}.")
    frame_valid = selection.frame_valid_mask(n_samples, rate, max_frames)
    fs = selection.frame_samples(rate)
    grid = max_frames * fs
    if waveform.shape[0] >= grid:
        on_grid = waveform[:grid]
    else:
        on_grid = jnp.pad(waveform, (0, grid - waveform.shape[0]))
    n = jnp.asarray(n_samples, dtype=jnp.int32)
    inside = jnp.arange(grid, dtype=jnp.int32) < n
    power = jnp.where(inside, on_grid * on_grid, 0).reshape(max_frames, fs).sum(axis=1)
    starts = jnp.arange(max_frames, dtype=jnp.int32) * fs
    lengths = jnp.clip(n - starts, 0, fs)
    rms = jnp.sqrt(power / jnp.maximum(lengths, 1))
    return jnp.where(frame_valid, rms, 0).astype(jnp.float32)


def segment_ids(max_frames: int, rate: int, segment_seconds: float = 1.0) -> np.ndarray:
    """Static segment of each frame: floor(frame start sample / segment samples).

    Segments are fixed stretches of time, not of frames, because 1 s is 12.5 frames at rate 25: a
    frame belongs to the segment in which it starts.

    Returns:
      [max_frames] int32 numpy array, non-decreasing, starting at 0.
    """
    if not segment_seconds > 0:
        raise ValueError(f"segment_seconds must be positive; got {segment_seconds}.")
    segment_samples = int(round(segment_seconds * selection.SAMPLE_RATE))
    if segment_samples < 1:
        raise ValueError(f"segment_seconds={segment_seconds} is shorter than one sample.")
    starts = np.arange(max_frames, dtype=np.int64) * selection.frame_samples(rate)
    return (starts // segment_samples).astype(np.int32)


def segment_quotas(valid_per_segment: jax.Array, k: ArrayLike) -> jax.Array:
    """Share k frames among segments in proportion to their valid frames, by largest remainder.

    Segment s gets floor(k n_s / N) frames, and the k - sum of those left over go one each to the
    segments with the largest remainders (k n_s mod N), ties to the earlier segment. The quotas sum
    to exactly min(k, N) and never exceed n_s. Exact in int32 for N < 46341 frames.

    Args:
      valid_per_segment: [S] int32, valid frames n_s per segment, N = sum.
      k: scalar int, may be traced.

    Returns:
      [S] int32 quotas.
    """
    n = valid_per_segment.sum()
    k = jnp.clip(jnp.asarray(k, dtype=jnp.int32), 0, n)
    safe_n = jnp.maximum(n, 1)
    share = k * valid_per_segment
    base, remainder = share // safe_n, share % safe_n
    leftover = k - base.sum()
    order = selection.stable_descending_order(remainder, jnp.ones_like(remainder, dtype=bool))
    rank = jnp.zeros_like(remainder).at[order].set(jnp.arange(remainder.shape[0], dtype=jnp.int32))
    return base + (rank < leftover).astype(jnp.int32)


def segment_topk_keep(
    scores: ArrayLike,
    frame_valid: ArrayLike,
    k: ArrayLike,
    rate: int,
    segment_seconds: float = 1.0,
) -> jax.Array:
    """Keep exactly min(k, N) valid frames: the best within each fixed time segment.

    The clip is cut into segments of ``segment_seconds`` (``segment_ids``); the k frames are shared
    among the segments in proportion to their valid frames (``segment_quotas``), and each segment
    keeps its highest-scoring valid frames, ties to the earlier frame.

    Args:
      scores: [F] frame scores.
      frame_valid: [F] bool.
      k: scalar int, may be traced.
      rate: codec token rate, static.
      segment_seconds: static segment length.

    Returns:
      [F] bool keep mask.
    """
    scores = jnp.asarray(scores)
    frame_valid = jnp.asarray(frame_valid, dtype=bool)
    _check_frame_valid(frame_valid)
    if scores.shape != frame_valid.shape:
        raise ValueError(f"scores {scores.shape} and frame_valid {frame_valid.shape} must match.")
    max_frames = scores.shape[0]
    segment_of_frame = segment_ids(max_frames, rate, segment_seconds)
    n_segments = int(segment_of_frame[-1]) + 1
    segment_start = np.searchsorted(segment_of_frame, np.arange(n_segments)).astype(np.int32)

    valid_per_segment = jax.ops.segment_sum(
        frame_valid.astype(jnp.int32), segment_of_frame, num_segments=n_segments,
        indices_are_sorted=True,
    )
    quotas = segment_quotas(valid_per_segment, k)

    segment_key = jnp.asarray(segment_of_frame)
    invalid_key = jnp.logical_not(frame_valid).astype(jnp.int32)
    index = jnp.arange(max_frames, dtype=jnp.int32)
    sorted_segment, _, _, order = lax.sort(
        (segment_key, invalid_key, -scores, index), num_keys=3, is_stable=True
    )
    rank_in_segment = index - jnp.asarray(segment_start)[sorted_segment]
    keep_sorted = rank_in_segment < quotas[sorted_segment]
    keep = jnp.zeros(max_frames, dtype=bool).at[order].set(keep_sorted)
    return keep & frame_valid


__all__ = [
    "energy_scores",
    "evenly_spaced_scores",
    "random_scores",
    "segment_ids",
    "segment_quotas",
    "segment_topk_keep",
    "uniform_scores",
    "van_der_corput_first_hits",
]
