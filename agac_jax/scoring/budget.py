"""Keep counts under a shared budget: the adaptive selection methods' allocation over a pool of clips.

A fixed keep ratio rho keeps k_i = ceil(rho N_i) of clip i's N_i frames. An adaptive method keeps the
same total over a pool of clips (the real clips of one `methods.select_batch` call: a sweep batch,
or a whole data set), B = sum_i ceil(rho N_i), so it is compared with fixed rho at equal frames and
codec tokens, and it moves frames between the clips by their scores. rho is then the budget rho-bar.

Both rules rank each clip's frames as top-k does (score descending, ties to the earlier frame) and
give every (clip, rank) a priority that never increases with the rank; the pool keeps its B entries
of highest priority (ties to the lower rank, then to the earlier clip), every clip's best frame
first. So each clip keeps a prefix of its own ranking, k_i >= 1 frames, the kept frames are its top
k_i (`selection.topk_keep`), and sum_i k_i = B exactly.

- `mass_priority` ("adaptive_mass"): minus the share of the clip's frame-score mass held by the
  frames ranked above. Keeping the B entries of smallest share is keeping, in every clip, the
  smallest k whose top-k frames hold a share tau of its mass, for the one tau at which the pool's
  counts sum to B (the tie rule settles the last frames where integer k cannot meet B at one tau).
  A clip whose evidence is one short event reaches tau in few frames; a flat clip needs many. A clip
  with no mass (every frame score 0) counts its frames as equal.
- `score_priority` ("adaptive_pool"): the frame's fused score, min-max normalised per clip (so in
  [0, 1] for every clip): one score threshold across the pool, a global top-B.
- `weighted_share_priority` ("adaptive_kind"): minus the rank over the clip's frames scaled by the
  clip's weight w_i, -r / (w_i N_i): one threshold t over the pool keeps k_i ~ t w_i N_i, so the
  clips' keep ratios are proportional to their weights and sum to the budget. The weight is the
  clip's question kind's (`eval.adaptive.calibrate_kind_weights`, on a validation split: the share of
  frames each kind needs); with equal weights this is fixed rho, up to how the last frames round.

A pool of one clip keeps ceil(rho N) frames: fixed rho. Everything here is pure JAX on padded arrays.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax

from agac_jax.scoring import selection

Array = jax.Array
Priority = Callable[[Array, Array, Array], Array]  # (sorted scores [F], rank valid [F], weight []) -> [F]


def ranked_scores(scores: Array, valid: Array) -> tuple[Array, Array]:
    """One clip's frame scores in top-k order and which ranks hold a valid frame.

    Args:
      scores: [F] frame scores; valid: [F] bool.
    Returns:
      (sorted scores [F], rank_valid [F] bool), valid frames first, score descending, ties to the
      earlier frame (`selection.stable_descending_order`).
    """
    order = selection.stable_descending_order(scores, valid)
    return jnp.asarray(scores)[order], jnp.arange(scores.shape[0]) < jnp.sum(valid)


def mass_priority(sorted_scores: Array, rank_valid: Array, weight: Array) -> Array:
    """[F] minus the share of the clip's score mass (scores below 0 count as 0) held by the ranks
    before each rank; a clip without mass counts each valid frame as 1 / N of it. The weight is unused."""
    del weight
    mass = jnp.where(rank_valid, jnp.maximum(sorted_scores, 0.0), 0.0).astype(jnp.float32)
    total = jnp.sum(mass)
    before = jnp.concatenate([jnp.zeros(1, jnp.float32), jnp.cumsum(mass)[:-1]])
    rank = jnp.arange(mass.shape[0], dtype=jnp.float32)
    flat = rank / jnp.maximum(jnp.sum(rank_valid), 1).astype(jnp.float32)
    return -jnp.where(total > 0, before / jnp.where(total > 0, total, 1.0), flat)


def score_priority(sorted_scores: Array, rank_valid: Array, weight: Array) -> Array:
    """[F] the frame score itself: one threshold over the pool. The weight is unused."""
    del rank_valid, weight
    return jnp.asarray(sorted_scores, jnp.float32)


def weighted_share_priority(sorted_scores: Array, rank_valid: Array, weight: Array) -> Array:
    """[F] minus rank / (weight N): the share of the clip's N valid frames ranked above, over its weight
    (> 0). A threshold t on it keeps ceil(t weight N) frames of each clip, whatever their scores."""
    del sorted_scores
    rank = jnp.arange(rank_valid.shape[0], dtype=jnp.float32)
    n = jnp.maximum(jnp.sum(rank_valid), 1).astype(jnp.float32)
    return -rank / (n * jnp.asarray(weight, jnp.float32))


def pool_budget(k: Array, real: Array) -> Array:
    """B = the fixed-ratio keep counts k [C] summed over the real clips [C] bool (int32 scalar)."""
    return jnp.sum(jnp.where(real, k, 0), dtype=jnp.int32)


def allocate(priority: Array, rank_valid: Array, real: Array, budget: Array) -> Array:
    """Keep counts [C] int32: the `budget` (clip, rank) entries of highest priority over the pool.

    Args:
      priority: [C, F] per clip and rank, not increasing along the rank.
      rank_valid: [C, F] bool, the ranks that hold a valid frame (a prefix of each row).
      real: [C] bool, the clips of the pool (batch-padding copies are not: they keep 0).
      budget: scalar int, at most the pool's valid frames and at least its real clips.
    Every real clip's first rank comes first, then by priority, ties to the lower rank, then the
    earlier clip; so each clip's count is a prefix of its ranking and the counts sum to `budget`.
    """
    clips, frames = priority.shape
    usable = rank_valid & real[:, None]
    rank = jnp.broadcast_to(jnp.arange(frames, dtype=jnp.int32), (clips, frames))
    clip = jnp.broadcast_to(jnp.arange(clips, dtype=jnp.int32)[:, None], (clips, frames))
    key = jnp.where(rank == 0, -jnp.inf, -jnp.nan_to_num(priority.astype(jnp.float32), nan=-jnp.inf))
    key = jnp.where(usable, key, jnp.inf)
    _, _, owner = lax.sort((key.ravel(), rank.ravel(), clip.ravel()), num_keys=3)
    chosen = (jnp.arange(clips * frames) < budget).astype(jnp.int32)
    return jnp.zeros(clips, jnp.int32).at[owner].add(chosen)


def pooled_counts(priority_fn: Priority, scores: Array, valid: Array, k: Array, real: Array,
                  weights: Array) -> Array:
    """The adaptive keep counts [C] of a pool: `priority_fn` per clip over its ranked frame scores and
    its weight, the fixed counts k [C] summed over the real clips [C] as the budget (`allocate`).

    scores, valid: [C, F] frame scores and valid frames of each clip; weights: [C] float, > 0.
    """
    sorted_scores, rank_valid = jax.vmap(ranked_scores)(scores, valid)
    priority = jax.vmap(priority_fn)(sorted_scores, rank_valid, weights)
    return allocate(priority, rank_valid, real, pool_budget(k, real))
