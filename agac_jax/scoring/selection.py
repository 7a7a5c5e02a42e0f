"""From per-token scores to kept codec frames (DESIGN.md section 3).

Every function here is pure JAX on arrays of one clip, padded to a static length, with a validity
mask or a valid length, so that padding never changes a result. They jit with static shapes and
vmap over clips: the caller batches a padded set of clips with ``jax.vmap``.

Grids, at 16 kHz:

- LLM audio tokens (Qwen2-Audio): 25 per second, token t covers samples [640 t, 640 (t + 1)).
- Codec frames (SemantiCodec): at token rate r in {25, 50, 100} tokens/s with two codebooks a frame
  carries 2 tokens and lasts 2 / r s, that is ``frame_samples(r) = 32000 / r`` samples. A clip of
  n samples has N = ceil(n / frame_samples) frames; the last one is clipped to the clip's end.

Static arguments (``rate``, ``max_frames``, shapes) are Python values; all others may be traced.
Static arguments are checked here; values (a sample count, a valid-token count, alpha) may be traced
and cannot be, so the host boundary checks them: `methods.clip_problem` (once per clip in
`methods.SelectionBatch`), `check_clip_values` and `ScoringConfig`.
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.typing import ArrayLike

from agac_jax.audio.grids import CODEC_TOKEN_RATES, SAMPLE_RATE
from agac_jax.scoring.settings import MAX_RHO_DENOMINATOR, keep_ratio_fraction  # noqa: F401 - the keep ratio's one parser
from agac_jax.codec.base import frame_samples  # the codec frame grid, defined once (raises for a bad rate)
from agac_jax.codec.base import num_frames as static_num_frames  # ceil(n / frame_samples) as a Python int
from agac_jax.audio.grids import CODEC_TOKENS_PER_FRAME as TOKENS_PER_FRAME
from agac_jax.audio.grids import SAMPLES_PER_AUDIO_TOKEN as TOKEN_SAMPLES



def _check_vector(name: str, x: jax.Array) -> None:
    if x.ndim != 1:
        raise ValueError(
            f"{name} must be one clip's 1-D array; got shape {x.shape}. "
            "Use jax.vmap to apply this function to a batch."
        )


def _check_same_shape(name_a: str, a: jax.Array, name_b: str, b: jax.Array) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name_a} {a.shape} and {name_b} {b.shape} must have the same shape.")


def _check_max_frames(max_frames: int) -> None:
    if isinstance(max_frames, bool) or not isinstance(max_frames, (int, np.integer)):
        raise TypeError(f"max_frames must be a Python int (a static shape); got {max_frames!r}.")
    if max_frames <= 0:
        raise ValueError(f"max_frames must be positive; got {max_frames}.")


def check_clip_values(*, n_samples: int, rate: int, max_frames: int, n_valid_tokens: int | None = None,
                      n_tokens: int | None = None, waveform_samples: int | None = None,
                      alpha: float | None = None) -> None:
    """The value checks of one clip's selection inputs, on the host (inside jit values are traced and
    no function here can check them): a non-negative sample count whose frames fit in `max_frames`
    (and in the waveform), valid tokens within the padded `n_tokens`, alpha in [0, 1]."""
    if n_samples < 0:
        raise ValueError(f"n_samples must be non-negative; got {n_samples}.")
    needed = static_num_frames(n_samples, rate)
    if needed > max_frames:
        raise ValueError(
            f"A clip of {n_samples} samples has {needed} frames at token rate {rate}, more than "
            f"max_frames={max_frames}; pad to at least static_num_frames(max_samples, rate) frames."
        )
    if waveform_samples is not None and n_samples > waveform_samples:
        raise ValueError(f"n_samples={n_samples} exceeds the waveform's {waveform_samples} samples.")
    if n_valid_tokens is not None and not 0 <= n_valid_tokens <= n_tokens:
        raise ValueError(f"n_valid_tokens must lie in [0, {n_tokens}] (token_scores' length); got {n_valid_tokens}.")
    if alpha is not None and not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1]; got {alpha}.")


# ----------------------------------------------------------------------------------------------
# Normalisation and fusion
# ----------------------------------------------------------------------------------------------


def minmax_normalize(x: ArrayLike, valid: ArrayLike) -> jax.Array:
    """Min-max normalise over the valid entries: (x - min) / (max - min).

    Args:
      x: [T] scores of one clip (invalid entries may hold anything, NaN included).
      valid: [T] bool, which entries belong to the clip.

    Returns:
      [T] float, in [0, 1] on valid entries; 0 on invalid entries; all 0 when the valid entries are
      all equal (or there are none).
    """
    x = jnp.asarray(x)
    valid = jnp.asarray(valid, dtype=bool)
    _check_vector("x", x)
    _check_same_shape("x", x, "valid", valid)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.float32)
    lo = jnp.min(jnp.where(valid, x, jnp.inf))
    hi = jnp.max(jnp.where(valid, x, -jnp.inf))
    span = hi - lo
    has_span = span > 0
    scaled = (x - lo) / jnp.where(has_span, span, 1)
    return jnp.where(valid & has_span, scaled, 0).astype(x.dtype)


def fuse(local: ArrayLike, global_: ArrayLike, valid: ArrayLike, alpha: ArrayLike) -> jax.Array:
    """Fused score F = alpha * norm(local) + (1 - alpha) * norm(global_) (DESIGN.md section 2).

    Args:
      local: [T] local (AAD) scores.
      global_: [T] global (attention) scores.
      valid: [T] bool.
      alpha: scalar in [0, 1], may be traced (`check_clip_values` checks it on the host). alpha = 1: AAD alone;
        alpha = 0: attention alone.

    Returns:
      [T] float, 0 on invalid entries.
    """
    local = jnp.asarray(local)
    global_ = jnp.asarray(global_)
    _check_same_shape("local", local, "global_", global_)
    norm_local = minmax_normalize(local, valid)
    norm_global = minmax_normalize(global_, valid)
    alpha = jnp.asarray(alpha, dtype=norm_local.dtype)
    return alpha * norm_local + (1 - alpha) * norm_global


# ----------------------------------------------------------------------------------------------
# The codec frame grid
# ----------------------------------------------------------------------------------------------


def num_frames(n_samples: ArrayLike, rate: int) -> jax.Array:
    """Frames of a clip of ``n_samples`` samples: ceil(n_samples / frame_samples(rate)).

    ``n_samples`` may be traced; returns a scalar int32.
    """
    fs = frame_samples(rate)
    n = jnp.asarray(n_samples, dtype=jnp.int32)
    return (n + fs - 1) // fs


def frame_valid_mask(n_samples: ArrayLike, rate: int, max_frames: int) -> jax.Array:
    """[max_frames] bool: frame f belongs to the clip (f < num_frames(n_samples, rate))."""
    _check_max_frames(max_frames)
    return jnp.arange(max_frames, dtype=jnp.int32) < num_frames(n_samples, rate)


def token_frame_overlap(
    n_valid_tokens: ArrayLike, n_samples: ArrayLike, rate: int, n_tokens: int, max_frames: int
) -> jax.Array:
    """Samples shared by each codec frame and each valid audio token.

    Frame f covers [f * fs, min((f + 1) * fs, n_samples)); token t covers [640 t, 640 (t + 1)).

    Returns:
      [max_frames, n_tokens] float32; 0 for invalid frames and for tokens t >= n_valid_tokens.
    """
    fs = frame_samples(rate)
    n = jnp.asarray(n_samples, dtype=jnp.int32)
    frame = lax.broadcasted_iota(jnp.int32, (max_frames, n_tokens), 0)
    token = lax.broadcasted_iota(jnp.int32, (max_frames, n_tokens), 1)
    frame_start = frame * fs
    frame_end = jnp.minimum(frame_start + fs, n)
    token_start = token * TOKEN_SAMPLES
    token_end = token_start + TOKEN_SAMPLES
    shared = jnp.minimum(frame_end, token_end) - jnp.maximum(frame_start, token_start)
    token_valid = token < jnp.asarray(n_valid_tokens, dtype=jnp.int32)
    return jnp.where(token_valid, jnp.maximum(shared, 0), 0).astype(jnp.float32)


def tokens_to_frames(
    token_scores: ArrayLike,
    n_valid_tokens: ArrayLike,
    n_samples: ArrayLike,
    rate: int,
    max_frames: int,
) -> tuple[jax.Array, jax.Array]:
    """Map audio-token scores to codec-frame scores by overlap-weighted averaging.

    A frame's score is the average of the scores of the valid tokens overlapping it, weighted by
    the samples they share. A valid frame that overlaps no valid token (possible only at the end of
    the clip) takes the score of the last valid token. Computed as one matmul with an overlap matrix
    built from iotas, so shapes are static and the function vmaps.

    Args:
      token_scores: [T] scores; entries t >= n_valid_tokens are ignored (may hold anything).
      n_valid_tokens: scalar int, may be traced.
      n_samples: scalar int, the clip's length in samples, may be traced.
      rate: codec token rate, static, one of 25, 50, 100.
      max_frames: static number of frames to pad to; must be >= num_frames(n_samples, rate)
        (`check_clip_values` checks it on the host).

    Returns:
      frame_scores: [max_frames] float32, 0 on invalid frames.
      frame_valid: [max_frames] bool.
    """
    token_scores = jnp.asarray(token_scores)
    _check_vector("token_scores", token_scores)
    if token_scores.shape[0] == 0:
        raise ValueError("token_scores must have at least one (possibly padded) entry.")
    frame_valid = frame_valid_mask(n_samples, rate, max_frames)
    n_tokens = token_scores.shape[0]
    n_valid_tokens = jnp.asarray(n_valid_tokens, dtype=jnp.int32)
    token_valid = jnp.arange(n_tokens, dtype=jnp.int32) < n_valid_tokens
    scores = jnp.where(token_valid, token_scores, 0).astype(jnp.float32)

    overlap = token_frame_overlap(n_valid_tokens, n_samples, rate, n_tokens, max_frames)
    coverage = overlap.sum(axis=1)
    covered = coverage > 0
    weights = overlap / jnp.where(covered, coverage, 1)[:, None]
    averaged = jnp.matmul(weights, scores, precision=lax.Precision.HIGHEST)

    last_index = jnp.clip(n_valid_tokens - 1, 0, n_tokens - 1)
    last_score = jnp.where(n_valid_tokens > 0, scores[last_index], 0)
    frame_scores = jnp.where(covered, averaged, last_score)
    return jnp.where(frame_valid, frame_scores, 0).astype(jnp.float32), frame_valid


UNHEARD = -1.0  # a frame's score where no valid gate slot reads the audio (PandaGPT), below every [0, 1] score


def slots_to_frames(
    slot_scores: ArrayLike,
    slot_ranges: ArrayLike,
    slot_valid: ArrayLike,
    n_samples: ArrayLike,
    rate: int,
    max_frames: int,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """`tokens_to_frames` for gate slots that read given sample ranges (PandaGPT's fbank frames).

    A frame's score is the average of the valid slots' scores weighted by the samples each slot's
    range [start, end) shares with the frame (ranges may overlap: ImageBind's sub-clips do). A valid
    frame that no valid slot reads is unheard: it scores `UNHEARD`.

    Args:
      slot_scores: [T]; slot_ranges: [T, 2] int samples; slot_valid: [T] bool.
      n_samples, rate, max_frames: as `tokens_to_frames`.

    Returns:
      (frame scores [max_frames] float32, 0 on invalid frames; frame_valid [max_frames] bool;
      unheard [max_frames] bool, valid frames no valid slot reads).
    """
    slot_scores = jnp.asarray(slot_scores)
    _check_vector("slot_scores", slot_scores)
    slot_ranges = jnp.asarray(slot_ranges, dtype=jnp.int32)
    if slot_ranges.shape != (slot_scores.shape[0], 2):
        raise ValueError(f"slot_ranges must be [{slot_scores.shape[0]}, 2]; got {slot_ranges.shape}")
    fs = frame_samples(rate)
    frame_valid = frame_valid_mask(n_samples, rate, max_frames)
    valid = jnp.asarray(slot_valid, dtype=bool)
    scores = jnp.where(valid, slot_scores, 0).astype(jnp.float32)
    frame_start = jnp.arange(max_frames, dtype=jnp.int32)[:, None] * fs
    frame_end = jnp.minimum(frame_start + fs, jnp.asarray(n_samples, jnp.int32))
    shared = jnp.minimum(frame_end, slot_ranges[None, :, 1]) - jnp.maximum(frame_start, slot_ranges[None, :, 0])
    overlap = jnp.where(valid[None], jnp.maximum(shared, 0), 0).astype(jnp.float32)
    coverage = overlap.sum(axis=1)
    covered = coverage > 0
    averaged = jnp.matmul(overlap / jnp.where(covered, coverage, 1)[:, None], scores, precision=lax.Precision.HIGHEST)
    frame_scores = jnp.where(covered, averaged, UNHEARD)
    return jnp.where(frame_valid, frame_scores, 0).astype(jnp.float32), frame_valid, frame_valid & ~covered


def topk_keep_heard_first(scores: ArrayLike, valid: ArrayLike, unheard: ArrayLike, k: ArrayLike) -> jax.Array:
    """`topk_keep` for clips with unheard frames: the k highest-scoring heard frames (ties to the earlier
    one); when k exceeds the heard frames, the rest are unheard frames chosen evenly spaced among the
    unheard ones (the centres of equal parts, as the uniform baseline), not the earliest ones.

    Args:
      scores, valid, unheard: [F] (unheard implies valid); k: scalar int, may be traced.

    Returns:
      [F] bool keep mask.
    """
    valid = jnp.asarray(valid, dtype=bool)
    unheard = jnp.asarray(unheard, dtype=bool) & valid
    heard = valid & ~unheard
    keep = topk_keep(scores, heard, k)
    n_unheard = jnp.sum(unheard, dtype=jnp.int32)
    extra = jnp.clip(jnp.asarray(k, jnp.int32) - jnp.sum(heard, dtype=jnp.int32), 0, n_unheard)
    part = jnp.arange(unheard.shape[0], dtype=jnp.int32)
    centre = jnp.where(part < extra, ((2 * part + 1) * n_unheard) // jnp.maximum(2 * extra, 1), unheard.shape[0])
    chosen = jnp.zeros(unheard.shape[0], bool).at[centre].set(True, mode="drop")  # by rank among unheard
    rank = jnp.cumsum(unheard.astype(jnp.int32)) - 1
    return keep | (unheard & chosen[jnp.clip(rank, 0, unheard.shape[0] - 1)])


# ----------------------------------------------------------------------------------------------
# Keep ratio and top-k
# ----------------------------------------------------------------------------------------------


def keep_count(n_valid: ArrayLike, numerator: ArrayLike, denominator: ArrayLike) -> jax.Array:
    """k = ceil(numerator * n_valid / denominator) in exact int32 arithmetic.

    All three may be traced, so one compiled program serves several keep ratios. Computed as
    numerator * (n // d) + ceil(numerator * (n % d) / d) so that nothing overflows int32 for
    denominators up to 10_000, whatever n_valid.

    Args:
      n_valid: scalar int >= 0, frames of the clip.
      numerator, denominator: from ``keep_ratio_fraction``, 0 < numerator <= denominator.

    Returns:
      scalar int32 in [1, n_valid] (0 when n_valid is 0).
    """
    n = jnp.asarray(n_valid, dtype=jnp.int32)
    num = jnp.asarray(numerator, dtype=jnp.int32)
    den = jnp.asarray(denominator, dtype=jnp.int32)
    whole, rest = n // den, n % den
    return num * whole + (num * rest + den - 1) // den


def stable_descending_order(scores: ArrayLike, valid: ArrayLike) -> jax.Array:
    """Frame indices ordered valid first, then by score descending, ties to the earlier index.

    NaN scores of valid frames rank after every number. Returns [F] int32.
    """
    scores = jnp.asarray(scores)
    valid = jnp.asarray(valid, dtype=bool)
    invalid_first_key = jnp.logical_not(valid).astype(jnp.int32)
    descending_key = -scores
    index = jnp.arange(scores.shape[0], dtype=jnp.int32)
    _, _, order = lax.sort((invalid_first_key, descending_key, index), num_keys=2, is_stable=True)
    return order


def topk_keep(scores: ArrayLike, valid: ArrayLike, k: ArrayLike) -> jax.Array:
    """Keep the k highest-scoring valid frames.

    Ties go to the earlier frame (order by (-score, index)); invalid frames are never kept; if k
    exceeds the number of valid frames all valid frames are kept.

    Args:
      scores: [F] frame scores.
      valid: [F] bool.
      k: scalar int, may be traced.

    Returns:
      [F] bool keep mask.
    """
    scores = jnp.asarray(scores)
    valid = jnp.asarray(valid, dtype=bool)
    _check_vector("scores", scores)
    _check_same_shape("scores", scores, "valid", valid)
    order = stable_descending_order(scores, valid)
    rank = jnp.zeros(scores.shape[0], jnp.int32).at[order].set(
        jnp.arange(scores.shape[0], dtype=jnp.int32)
    )
    return valid & (rank < jnp.asarray(k, dtype=jnp.int32))


def kept_indices(mask: ArrayLike) -> np.ndarray:
    """Host-side: the indices of a [F] keep mask, in time order, as an int64 numpy array."""
    mask = np.asarray(mask)
    if mask.ndim != 1 or mask.dtype != np.bool_:
        raise ValueError(
            f"mask must be a 1-D bool array; got shape {mask.shape}, dtype {mask.dtype}."
        )
    return np.flatnonzero(mask).astype(np.int64)


__all__ = [
    "CODEC_TOKEN_RATES",
    "check_clip_values",
    "MAX_RHO_DENOMINATOR",
    "SAMPLE_RATE",
    "TOKEN_SAMPLES",
    "TOKENS_PER_FRAME",
    "frame_samples",
    "frame_valid_mask",
    "fuse",
    "keep_count",
    "keep_ratio_fraction",
    "kept_indices",
    "minmax_normalize",
    "num_frames",
    "stable_descending_order",
    "static_num_frames",
    "token_frame_overlap",
    "tokens_to_frames",
    "topk_keep",
    "topk_keep_heard_first",
    "slots_to_frames",
    "UNHEARD",
]
