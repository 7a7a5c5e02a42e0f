"""The frame-selection methods of DESIGN.md section 4, as one registry and one batched path.

`METHODS` maps a method's name to how it scores the codec frames of one clip and how it keeps k of
them. `clip_keep_mask` is that rule for one padded clip, pure JAX; the scoring program calls it for
its own `fused` keep masks, and `batch_keep_masks` vmaps it over the clips of a batch, jitted once
per (method, rate, padded frames, batch slots). `SelectionBatch` puts clips' scores and waveforms on
the device once and selects any method, rate, ratio and subset of them from there, so a sweep batch,
a curve or a study uploads its clips once however many selections it makes; `select_batch` is one
selection through it. The sweep, `launch.score`, the study and the benchmark all select this way, so
there is one selection path.

Adding a method is adding an entry to `METHODS` (and its tests); `original` and `codec` are not
selection methods (no frame is dropped) and live in `agac_jax.eval.results.METHODS`.

The adaptive methods (`adaptive_mass`, `adaptive_pool`, `adaptive_kind`: `Method.pool`) choose each
clip's k from its scores, or from its question kind's weight (`adaptive_kind`), under a budget: the real clips of one `select_batch` call keep as many frames together as
fixed rho would (`agac_jax.scoring.budget`), so rho is the budget rho-bar: the share of the call's
frames kept (as fixed rho rounds it up per clip), the clips' own shares spread around it. Which frames a
clip keeps then depends on the clips it is selected with (a sweep batch, a study's whole split); a
clip alone (`clip_keep_mask`, `select_frames`) keeps ceil(rho N), as fixed rho does.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from agac_jax.audio import grids
from agac_jax.scoring import baselines, budget, selection

Array = jax.Array


class ClipInputs(NamedTuple):
    """One clip's scores padded to T token slots and its waveform padded to N samples."""

    local: Array  # [T] AAD share of the audio evidence
    global_: Array  # [T] attention received from the answer-producing rows
    fused: Array  # [T] the program's fusion at the config's alpha
    fastv: Array  # [T] FastV's attention at layer K
    n_tokens: Array  # [] valid tokens
    n_samples: Array  # [] valid samples
    waveform: Array  # [N] float32
    # A model whose gate slots are not the 640-sample token grid (PandaGPT's fbank frames): the samples
    # [start, end) each slot reads [T, 2] and which slots hold audio [T]. Frames then map through the
    # ranges (`selection.slots_to_frames`), a frame no slot reads is unheard (score `selection.UNHEARD`),
    # and the score-based methods keep heard frames first (`selection.topk_keep_heard_first`).
    slot_ranges: Any = None
    slot_valid: Any = None
    weight: Any = None  # [] float32 > 0: the clip's share weight under `adaptive_kind` (None: 1)


class FrameContext(NamedTuple):
    """What a frame scorer may use besides the clip: the frame grid, the keep count and a PRNG key."""

    rate: int  # static codec token rate
    max_frames: int  # static
    frame_valid: Array  # [F] bool
    k: Array  # [] frames to keep
    key: Array  # PRNG key of this clip
    unheard: Any = None  # [F] bool: frames no gate slot reads (score-based methods on slot ranges), else None


def _token_rule(token_scores: Callable[[ClipInputs], Array]) -> Callable[[ClipInputs, FrameContext], Array]:
    """Frame scores by overlap-weighted averaging of token scores (DESIGN.md section 3)."""

    def frame_scores(clip: ClipInputs, ctx: FrameContext) -> Array:
        if clip.slot_ranges is not None:
            scores, _, _ = selection.slots_to_frames(token_scores(clip), clip.slot_ranges, clip.slot_valid,
                                                     clip.n_samples, ctx.rate, ctx.max_frames)
            return scores
        scores, _ = selection.tokens_to_frames(token_scores(clip), clip.n_tokens, clip.n_samples, ctx.rate,
                                               ctx.max_frames)
        return scores

    return frame_scores


def _slot_valid(clip: ClipInputs) -> Array:
    return jnp.arange(clip.local.shape[0]) < clip.n_tokens if clip.slot_valid is None else clip.slot_valid


def _top_k(scores: Array, ctx: FrameContext) -> Array:
    if ctx.unheard is None:
        return selection.topk_keep(scores, ctx.frame_valid, ctx.k)
    return selection.topk_keep_heard_first(scores, ctx.frame_valid, ctx.unheard, ctx.k)


def _fused_at(clip: ClipInputs, alpha: float) -> Array:
    valid = _slot_valid(clip)
    return selection.fuse(clip.local, clip.global_, valid, alpha)


@dataclasses.dataclass(frozen=True)
class Method:
    """A selection method: frame scores of one clip, then which k frames of them it keeps."""

    frame_scores: Callable[[ClipInputs, FrameContext], Array]  # -> [F] float32
    keep: Callable[[Array, FrameContext], Array] = _top_k  # -> [F] bool
    uses_scores: bool = True  # reads the model's scores (False: a model-free baseline)
    # An adaptive method: the priority of each rank of a clip's sorted frame scores ([F], [F] -> [F]);
    # the batch's keep counts are then allocated over its clips under fixed rho's total (`budget`).
    pool: budget.Priority | None = None
    weighted: bool = False  # the pool's priority reads each clip's weight (`select_batch`'s weights)


METHODS: dict[str, Method] = {
    "fused": Method(_token_rule(lambda c: c.fused)),
    "aad": Method(_token_rule(lambda c: _fused_at(c, 1.0))),
    "attention": Method(_token_rule(lambda c: _fused_at(c, 0.0))),
    "random": Method(lambda c, ctx: baselines.random_scores(ctx.key, ctx.frame_valid), uses_scores=False),
    "uniform": Method(lambda c, ctx: baselines.evenly_spaced_scores(ctx.frame_valid, ctx.k), uses_scores=False),
    "energy": Method(lambda c, ctx: baselines.energy_scores(c.waveform, c.n_samples, ctx.rate, ctx.max_frames),
                     uses_scores=False),
    "fastv": Method(_token_rule(lambda c: c.fastv)),
    "segment_topk": Method(_token_rule(lambda c: c.fused),
                           keep=lambda scores, ctx: baselines.segment_topk_keep(scores, ctx.frame_valid, ctx.k,
                                                                                ctx.rate)),
    "adaptive_mass": Method(_token_rule(lambda c: c.fused), pool=budget.mass_priority),
    "adaptive_pool": Method(_token_rule(lambda c: c.fused), pool=budget.score_priority),
    "adaptive_kind": Method(_token_rule(lambda c: c.fused), pool=budget.weighted_share_priority, weighted=True),
}
NAMES = tuple(METHODS)


def check_method(method: str) -> Method:
    """The registry entry of `method`; ValueError naming the choices otherwise."""
    if method not in METHODS:
        raise ValueError(f"method={method!r}; expected one of {NAMES}")
    return METHODS[method]


def _clip_frames(method: str, clip: ClipInputs, *, rate: int, max_frames: int, keep_num: Array,
                 keep_den: Array, key: Array) -> tuple[Array, FrameContext]:
    """(frame scores [F], its FrameContext) of `method` for one padded clip, k = ceil(rho N)."""
    frame_valid = selection.frame_valid_mask(clip.n_samples, rate, max_frames)
    k = selection.keep_count(jnp.sum(frame_valid), keep_num, keep_den)
    entry = METHODS[method]
    unheard = None
    if clip.slot_ranges is not None and entry.uses_scores:
        _, _, unheard = selection.slots_to_frames(jnp.zeros(clip.slot_ranges.shape[0]), clip.slot_ranges,
                                                  clip.slot_valid, clip.n_samples, rate, max_frames)
    ctx = FrameContext(rate=rate, max_frames=max_frames, frame_valid=frame_valid, k=k, key=key, unheard=unheard)
    return entry.frame_scores(clip, ctx), ctx


def clip_keep_mask(method: str, clip: ClipInputs, *, rate: int, max_frames: int, keep_num: Array,
                   keep_den: Array, key: Array) -> tuple[Array, Array]:
    """(frame scores [F], keep mask [F] bool) of `method` for one padded clip; pure JAX, vmappable.

    k = ceil(rho * N) of the clip's N valid frames, rho = keep_num / keep_den (exact); an adaptive
    method on one clip alone keeps that k too (a pool of one).
    """
    scores, ctx = _clip_frames(method, clip, rate=rate, max_frames=max_frames, keep_num=keep_num,
                               keep_den=keep_den, key=key)
    return scores, METHODS[method].keep(scores, ctx) & ctx.frame_valid


def batch_keep_masks(method: str, clips: ClipInputs, keys: Array, keep_num: Array, keep_den: Array, real: Array,
                     *, rate: int, max_frames: int) -> Array:
    """[C, F] bool keep masks of `method` for a padded batch of C clips (`ClipInputs` fields [C, ...]).

    real: [C] bool, the batch's own clips (False: batch-padding copies). An adaptive method's counts
    are allocated over the real clips (`budget.pooled_counts`) and its copies keep nothing; other
    methods treat copies as clips (the caller drops them). Pure JAX.
    """
    entry = METHODS[method]

    def frames(clip, key):
        scores, ctx = _clip_frames(method, clip, rate=rate, max_frames=max_frames, keep_num=keep_num,
                                   keep_den=keep_den, key=key)
        return scores, ctx.frame_valid, ctx.k, ctx.unheard

    scores, valid, k, unheard = jax.vmap(frames)(clips, keys)
    if entry.pool is not None:
        weights = jnp.ones(k.shape, jnp.float32) if clips.weight is None else clips.weight
        k = budget.pooled_counts(entry.pool, scores, valid, k, real, weights)

    def keep(s, v, n, u, key):
        ctx = FrameContext(rate=rate, max_frames=max_frames, frame_valid=v, k=n, key=key, unheard=u)
        return entry.keep(s, ctx) & v

    return jax.vmap(keep)(scores, valid, k, unheard, keys)


@jax.jit
def _keys(seeds: Array) -> Array:
    """[C] PRNG keys of [C] uint32 seeds."""
    return jax.vmap(jax.random.key)(seeds)


@functools.lru_cache(maxsize=256)
def _batched(method: str, rate: int, max_frames: int) -> Callable[..., Array]:
    """The jitted `batch_keep_masks` of `method` at one rate and frame count."""
    return jax.jit(functools.partial(batch_keep_masks, method, rate=rate, max_frames=max_frames))


def _slots(n: int) -> int:
    """Batch slots for n clips: the next power of two, so a sweep compiles a handful of shapes."""
    return 1 << max(n - 1, 0).bit_length()


def _padded_samples(n: int) -> int:
    """n samples rounded up to the selection's padding quantum (a 5 s multiple)."""
    return -(-n // grids.BUCKET_QUANTUM_SAMPLES) * grids.BUCKET_QUANTUM_SAMPLES


def _pad(x: Any, n: int) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return np.pad(x, (0, n - len(x)))


def select_batch(scores: Sequence[Any], waveforms: Sequence[np.ndarray], method: str, rate: int,
                 rho: float | str, seeds: Sequence[int],
                 weights: Sequence[float] | None = None) -> list[np.ndarray]:
    """Sorted kept frame indices of `method` at codec rate `rate` and keep ratio `rho`, per clip: the
    indices of `select_batch_masks`."""
    return [selection.kept_indices(mask) for mask in select_batch_masks(scores, waveforms, method, rate, rho,
                                                                        seeds, weights)]


def select_batch_masks(scores: Sequence[Any], waveforms: Sequence[np.ndarray], method: str, rate: int,
                       rho: float | str, seeds: Sequence[int],
                       weights: Sequence[float] | None = None) -> list[np.ndarray]:
    """Keep masks (bool [N_r], the clip's codec frames) of `method` at codec rate `rate` and keep ratio
    `rho`, per clip: `SelectionBatch(scores, waveforms).masks(...)`, for one selection over these clips."""
    return SelectionBatch(scores, waveforms).masks(method, rate, rho, seeds, weights)


class SelectionBatch:
    """Clips' scores and waveforms, checked, padded and placed on the device once, for every selection
    over them: a sweep batch's (method, rate, rho, seed) groups, a curve's ratios, a study's selectors
    read the same device arrays, and only the keep masks come back.

    Clips are padded to the longest one's 5 s multiple and the batch to a power of two with copies of
    its first clip, so a sweep compiles once per (method, rate, length, batch slots).
    """

    def __init__(self, scores: Sequence[Any], waveforms: Sequence[np.ndarray], *, strict: bool = True):
        """
        Args:
          scores: per clip, an object with the `ClipScores` fields local, global_, fused, fastv,
            num_tokens and n_samples (model-free methods read only n_samples), and slot_ranges and
            slot_valid (None on the token grid; every clip of one model alike).
          waveforms: per clip, its float32 samples (len == n_samples).
          strict: a clip whose scores and waveform disagree (`clip_problem`) raises ValueError naming
            it; False: it is left out, `problems` says why, and selecting it raises.
        """
        if len(scores) != len(waveforms):
            raise ValueError(f"{len(scores)} scores and {len(waveforms)} waveforms")
        self.problems = [clip_problem(s, w) for s, w in zip(scores, waveforms)]
        bad = next((i for i, problem in enumerate(self.problems) if problem is not None), None)
        if strict and bad is not None:
            raise ValueError(f"clip {bad}: {self.problems[bad]}")
        self.n_samples = [int(s.n_samples) for s in scores]
        good = [i for i, problem in enumerate(self.problems) if problem is None]
        self._row = {i: row for row, i in enumerate(good)}  # clip -> its row of the device arrays
        self.clips: ClipInputs | None = None
        if not good:
            return
        scores, waveforms = [scores[i] for i in good], [waveforms[i] for i in good]
        self.bucket = max(_padded_samples(s.n_samples) for s in scores)
        ranges = [getattr(s, "slot_ranges", None) for s in scores]
        ranged = ranges[0] is not None
        max_tokens = len(ranges[0]) if ranged else self.bucket // grids.SAMPLES_PER_AUDIO_TOKEN
        for i, r in zip(good, ranges):
            if (r is not None) != ranged or (ranged and len(r) != max_tokens):
                raise ValueError(f"clip {i}: its gate slots differ from clip {good[0]}'s; select clips of one "
                                 "model together")
        slots = _slots(len(scores))
        padded = list(scores) + [scores[0]] * (slots - len(scores))
        waves = list(waveforms) + [waveforms[0]] * (slots - len(scores))
        self.clips = jax.device_put(ClipInputs(
            local=np.stack([_pad(s.local, max_tokens) for s in padded]),
            global_=np.stack([_pad(s.global_, max_tokens) for s in padded]),
            fused=np.stack([_pad(s.fused, max_tokens) for s in padded]),
            fastv=np.stack([_pad(s.fastv, max_tokens) for s in padded]),
            n_tokens=np.asarray([s.num_tokens for s in padded], np.int32),
            n_samples=np.asarray([s.n_samples for s in padded], np.int32),
            waveform=np.stack([_pad(w, self.bucket) for w in waves]),
            slot_ranges=np.stack([np.asarray(s.slot_ranges, np.int32) for s in padded]) if ranged else None,
            slot_valid=np.stack([np.asarray(s.slot_valid, bool) for s in padded]) if ranged else None,
        ))

    def __len__(self) -> int:
        return len(self.n_samples)

    def masks(self, method: str, rate: int, rho: float | str, seeds: Sequence[int],
              weights: Sequence[float] | None = None, rows: Sequence[int] | None = None) -> list[np.ndarray]:
        """Keep masks (bool [N_r], the clip's codec frames) of `method` at codec rate `rate` and keep
        ratio `rho`, per clip of `rows` (default: all, in order).

        Args:
          method: a name of `METHODS`.
          rate: codec token rate.
          rho: keep ratio in (0, 1], exact as written.
          seeds: per selected clip, the seed of its PRNG key (the `random` baseline).
          weights: per selected clip, its share weight under `adaptive_kind` (> 0; None: all 1); other
            methods ignore it.
          rows: the clips selected together, as indices into this batch.
        An adaptive method (`Method.pool`) keeps sum_i ceil(rho N_i) frames over the selected clips
        together, at least one of each (`agac_jax.scoring.budget`); the padding copies never count.
        """
        entry = check_method(method)
        num, den = selection.keep_ratio_fraction(rho)
        selection.frame_samples(rate)
        rows = list(range(len(self))) if rows is None else [int(r) for r in rows]
        if any(not 0 <= r < len(self) for r in rows):
            raise ValueError(f"rows {rows} outside this batch of {len(self)} clips")
        bad = next((r for r in rows if self.problems[r] is not None), None)
        if bad is not None:
            raise ValueError(f"clip {bad}: {self.problems[bad]}")
        if len(seeds) != len(rows):
            raise ValueError(f"{len(seeds)} seeds for {len(rows)} clips")
        if weights is not None:
            weights = [float(w) for w in weights]
            if len(weights) != len(rows) or not all(math.isfinite(w) and w > 0 for w in weights):
                raise ValueError(f"weights must be {len(rows)} finite values > 0, one a clip; got {weights}")
        if not rows:
            return []
        slots = _slots(len(rows))
        clips, at = self.clips, [self._row[r] for r in rows]
        if at != list(range(len(at))) or slots != clips.n_tokens.shape[0]:  # a gather on the device
            picked = jax.device_put(np.asarray(at + [at[0]] * (slots - len(at)), np.int32))
            clips = jax.tree.map(lambda x: x[picked], clips)
        # what one call adds, uploaded explicitly: the clips' weights, seeds, the ratio, the real slots
        if weights is not None and entry.weighted:
            clips = clips._replace(weight=jax.device_put(np.asarray(weights + [1.0] * (slots - len(rows)), np.float32)))
        all_seeds = jax.device_put(np.asarray(list(seeds) + [seeds[0]] * (slots - len(rows)), np.uint32))
        num, den, real = jax.device_put((np.int32(num), np.int32(den), np.arange(slots) < len(rows)))
        max_frames = selection.static_num_frames(self.bucket, rate)
        masks = jax.device_get(_batched(method, rate, max_frames)(clips, _keys(all_seeds), num, den, real))
        return [masks[i, : selection.static_num_frames(self.n_samples[r], rate)] for i, r in enumerate(rows)]


def clip_problem(scores: Any, waveform: np.ndarray) -> str | None:
    """None, or why one clip's scores and waveform cannot be selected from: a waveform of another
    length than the scores', a negative sample count, or more valid tokens than the clip's slots."""
    n = int(scores.n_samples)
    if n < 0:
        return f"n_samples must be non-negative; got {n}"
    if len(waveform) != n:
        return f"waveform has {len(waveform)} samples; the scores are for {n}"
    ranges = getattr(scores, "slot_ranges", None)
    slots = len(ranges) if ranges is not None else _padded_samples(n) // grids.SAMPLES_PER_AUDIO_TOKEN
    if not 0 <= int(scores.num_tokens) <= slots:
        return f"num_tokens must lie in [0, {slots}] (the clip's token slots); got {scores.num_tokens}"
    return None


def select_frames(scores: Any, waveform: np.ndarray, method: str, rate: int, rho: float | str,
                  seed: int) -> np.ndarray:
    """`select_batch` for one clip."""
    return select_batch([scores], [waveform], method, rate, rho, [seed])[0]
