"""The scoring program: one jitted XLA computation from a padded batch of clips to keep masks.

For each clip (DESIGN.md section 2): the audio encoder on the clip and on silence, the greedy answer
(or the given one), the AAD local score by occlusion or integrated gradients, the global attention
score reduced inside the layers that compute it, FastV's attention at layer K, min-max fusion, and per
codec token rate the frame scores and the top-k keep mask. Everything per clip is `jax.vmap`ped; the
batch axis is sharded on the mesh's 'data' axis by the caller (`agac_jax.scoring.scorer`).

Shapes: B clips, P mel frames (the bucket), T = P // 4 audio token slots, S prompt slots (right-padded),
A = max_new_tokens answer slots, F_r frames at codec rate r.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from agac_jax.models.generate import GenerationSettings, greedy_generate_from_embeddings
from agac_jax.models.interface import RECEIVED, AudioLanguageModel, stack_sown
from agac_jax.models.qwen2_audio.model import causal_mask
from agac_jax.scoring import methods, selection
from agac_jax.scoring.settings import TARGETS, ScoringConfig

Array = jax.Array


@dataclasses.dataclass(frozen=True, kw_only=True)
class ProgramSpec:
    """Static settings of the compiled program (hashable: part of the compile key).

    Built from a `ScoringConfig` by `from_config`, which holds the defaults; the fields here have none.
    """

    estimator: str  # occlusion | integrated_gradients
    target: str  # logp | log_odds (TARGETS)
    gate_domain: str  # embedding | input (GATE_DOMAINS)
    window: int  # occlusion: tokens gated off around t
    ig_steps: int  # integrated gradients: midpoint-rule steps
    local_sign: str  # signed | magnitude (LOCAL_SIGNS)
    local_smooth: int  # box filter width (tokens) over the valid tokens of the local score; 1: none
    occlusion_chunk: int  # gate vectors evaluated together (bounds memory; smaller shares more prefix)
    occlusion_segments: int  # 0: one program step per chunk; k: k loops over chunks (`occlusion_schedule`)
    fastv_layer: int  # FastV's K; clamped to the last layer of smaller decoders
    rates: tuple[int, ...]  # codec token rates of the frame scores and keep masks
    share_prefix: bool  # occlusion and IG re-use the full pass's keys/values before the audio (and
    #                     occlusion before each chunk's first gate)
    max_samples: int  # clip samples the frame grids are sized for (the bucket)
    generate: bool  # False: every clip of the batch comes with its answer ids
    audio_offset: int  # a lower bound of every prompt's first audio placeholder position
    generation: GenerationSettings
    data_shards: int = 1  # the mesh's 'data' devices: the batch's clips run one per shard at a time
    generate_per_clip: bool = False  # greedy answers one clip per shard at a time, batch-padding copies
    #                                  skipped (`map_real_clips`); False: the whole batch at once
    ig_chunk: int = 1  # IG steps vmapped together: the largest divisor of ig_steps up to this
    occlusion_gate_batch: int = 0  # gates of a chunk vmapped together, the blocks in a loop; 0: all
    probe: Callable[[str, int], None] | None = None  # f("occlusion" | "generation", n) called with the
    #   occlusion passes and generated rows as they run (tests count them: which work is skipped)

    @classmethod
    def from_config(cls, config: ScoringConfig, **bucket: Any) -> "ProgramSpec":
        """The spec of one bucket's program: the fields a (validated) `ScoringConfig` holds under the same
        names, `data_shards` from its mesh, and the rest (`max_samples`, `generate`, `audio_offset`,
        `generation`, and the scorer's `generate_per_clip`, `ig_chunk`, `occlusion_gate_batch`, `probe`)
        given; a config field
        left None (resolved per device by the scorer) takes the spec's default."""
        names = {field.name for field in dataclasses.fields(cls)}
        shared = {name: getattr(config, name) for name in names
                  if getattr(config, name, None) is not None and name not in bucket}  # None: the spec's default
        shared["rates"] = tuple(shared["rates"])
        return cls(**shared, data_shards=config.mesh_shape[0], **bucket)


class ClipBatch(dict):
    """The program's input: a dict of arrays.

    features [B, n_mels, P] float32, mel_lengths [B] int32, silence_features [B, n_mels, P] float32,
    prompt_ids [B, S] int32 (right-padded), prompt_lengths [B] int32, answer_ids [B, A] int32,
    answer_lengths [B] int32 (-1: generate the answer), n_samples [B] int32, alpha [] float32,
    keep_num [] int32, keep_den [] int32 (rho = keep_num / keep_den).

    Optional: clip_real [B] bool, False for the copies that pad a batch to its slots (their local
    scores are not computed; default all True).

    Optional, for a model whose gate grid is not Qwen2-Audio's token grid (`interface` docstring:
    PandaGPT): slot_valid [B, T] bool (the gate slots that hold audio; default t < n_tokens) and
    slot_ranges [B, T, 2] int32 (the [start, end) waveform samples each slot reads; frames map
    through them and a frame no valid slot reads scores `selection.UNHEARD`; default the 640-sample
    token grid).
    """


def score_batch(model: AudioLanguageModel, spec: ProgramSpec, params: Any,
                batch: dict[str, Array]) -> dict[str, Array]:
    """Scores a padded batch. Returns a dict of per-clip arrays (see `_finish_clip`) plus answers.

    Work follows the clips, not the bucket: the local scores run one clip per data shard at a time,
    occlusion skips the chunks past each clip's valid token count and integrated gradients the
    batch-padding copies (`clip_real` False), each by a `lax.cond` outside the vmap over the shards
    (one branch runs); chunks run one after another (each takes the previous one's result), so the
    program's temporaries are those of one chunk. The caller sizes the batch to its real clips
    (`Scorer`: batch slots).
    """
    variables = {"params": params}
    audio, n_tokens = model.apply(variables, batch["features"], batch["mel_lengths"], method=model.encode_audio)
    silence, _ = model.apply(variables, batch["silence_features"], batch["mel_lengths"], method=model.encode_audio)
    real = batch.get("clip_real")
    real = jnp.ones(audio.shape[:1], bool) if real is None else real.astype(bool)
    answers, answer_lengths = _answers(model, spec, params, batch, audio, n_tokens, real)
    valid = batch.get("slot_valid")
    context = batch.get("context")
    features, silence_features = batch["features"], batch["silence_features"]
    if valid is not None and getattr(model, "pads_heard", False):
        # slots past the clip hear its padding whatever the gate (Voxtral's whole windows): silence's
        # state there is the clip's own, so a gate changes only the slots that hold audio
        silence = jnp.where(valid.astype(bool)[..., None], silence, audio)
        heard = jnp.arange(features.shape[-1]) < batch["mel_lengths"][:, None]
        silence_features = jnp.where(heard[:, None, :], silence_features, features)
    model_global = None
    if getattr(model, "global_scores", None) is not None:  # the model's own global score (PandaGPT: ImageBind's)
        model_global = model.apply(variables, batch["features"], method=model.global_scores)
    clips = ClipInputs(audio=audio, silence=silence, n_tokens=n_tokens, prompt_ids=batch["prompt_ids"],
                       prompt_length=batch["prompt_lengths"], answer_ids=answers, answer_length=answer_lengths,
                       n_samples=batch["n_samples"], slot_valid=None if valid is None else valid.astype(bool),
                       slot_ranges=batch.get("slot_ranges"), model_global=model_global, context=context)
    if spec.gate_domain == "input":
        clips = clips._replace(features=features, silence_features=silence_features, mel_length=batch["mel_lengths"])
    full = jax.vmap(lambda clip: _full_pass(model, spec, params, clip))(clips)
    if spec.estimator == "integrated_gradients":
        logps = None
        local = _integrated_gradients(model, spec, params, clips, full.cache, real)
    else:
        logps = _occlusion_logps(model, spec, params, clips, full.cache, real)
        local = full.logp_full[:, None] - logps
    out = jax.vmap(lambda clip, f, l: _finish_clip(spec, clip, f, l, alpha=batch["alpha"],
                                                   keep_num=batch["keep_num"], keep_den=batch["keep_den"]))(
        clips, full._replace(cache=None), local)
    out.update(answer_ids=answers, answer_lengths=answer_lengths, num_tokens=n_tokens)
    return out


def answer_targets_batch(model: AudioLanguageModel, params: Any, batch: dict[str, Array]) -> dict[str, Array]:
    """The given answers' targets on the clips as they are (no gate): {target: [B]} for every target of
    TARGETS, from one teacher-forced pass per clip (the deletion and insertion curves' measure)."""
    variables = {"params": params}
    audio, n_tokens = model.apply(variables, batch["features"], batch["mel_lengths"], method=model.encode_audio)
    clips = ClipInputs(audio=audio, silence=audio, n_tokens=n_tokens, prompt_ids=batch["prompt_ids"],
                       prompt_length=batch["prompt_lengths"], answer_ids=batch["answer_ids"],
                       answer_length=batch["answer_lengths"], n_samples=batch["n_samples"])

    def one_clip(clip):
        passes = clip_passes(model, params, clip)
        hidden, _ = passes.decode(slot_valid(clip).astype(jnp.float32))
        logits = model.apply(variables, hidden[passes.rows], method=model.logits).astype(jnp.float32)
        return {target: jnp.sum(jnp.where(passes.answer_valid, answer_target(logits, clip.answer_ids, target), 0.0))
                for target in TARGETS}

    return jax.vmap(one_clip)(clips)


class ClipInputs(NamedTuple):
    """One clip's inputs to the program (a batch of them under vmap)."""

    audio: Array  # [T, D] the clip's audio state on the gate grid
    silence: Array  # [T, D] silence's
    n_tokens: Array  # [] valid gate slots
    prompt_ids: Array  # [S] right-padded, placeholders expanded
    prompt_length: Array  # []
    answer_ids: Array  # [A]
    answer_length: Array  # [] tokens of the answer before the first EOS
    n_samples: Array  # [] valid waveform samples
    slot_valid: Any = None  # [T] bool: gate slots that hold audio (None: t < n_tokens)
    slot_ranges: Any = None  # [T, 2] samples each slot reads (None: the 640-sample token grid)
    model_global: Any = None  # [T] the model's own global score (`global_scores`), or None: LLM attention
    context: Any = None  # the clip's `context` for gate_audio / embed_prompt (PandaGPT: its video vector)
    # gate_domain "input": the clip's and silence's log-mel [n_mels, P] and valid frames []; a gate then
    # mixes these, token t's frames 4t..4t+3, and the encoder runs on the mixture
    features: Any = None
    silence_features: Any = None
    mel_length: Any = None


def slot_valid(clip: ClipInputs) -> Array:
    """[..., T] bool: the clip's gate slots that hold audio (a batch of clips too)."""
    if clip.slot_valid is not None:
        return clip.slot_valid
    return jnp.arange(clip.audio.shape[-2]) < clip.n_tokens[..., None]


def audio_slots(model: Any, gate_slots: int) -> int:
    """Placeholder rows one gate vector fills: the model's optional `audio_slots` (PandaGPT: 1), else
    one per gate slot (Qwen2-Audio)."""
    return int(getattr(model, "audio_slots", None) or gate_slots)


def _answers(model, spec, params, batch, audio, n_tokens, real):
    """The given answers, or greedy ones: ([B, A] ids, [B] lengths before the first EOS). With
    `generate_per_clip`, one clip per data shard generates at a time and batch-padding copies (`real`
    False) generate nothing (their answer: no tokens)."""
    given_ids, given_lengths = batch["answer_ids"], batch["answer_lengths"]
    if not spec.generate:
        return given_ids, given_lengths.astype(jnp.int32)
    prompt_mask = (jnp.arange(batch["prompt_ids"].shape[1])[None] < batch["prompt_lengths"][:, None]).astype(jnp.int32)
    extra = {} if batch.get("context") is None else {"context": batch["context"]}
    embeds = model.apply({"params": params}, batch["prompt_ids"], audio, n_tokens, method=model.embed_prompt, **extra)
    settings = spec.generation

    def generate(rows):
        embeds, ids, mask = rows
        if spec.probe is not None:
            jax.debug.callback(functools.partial(spec.probe, "generation"), ids.shape[0])
        return greedy_generate_from_embeddings(model, params, embeds, ids, mask, settings)

    rows = (embeds, batch["prompt_ids"], prompt_mask)
    if spec.generate_per_clip:
        tokens, n_generated = map_real_clips(generate, rows, real, _shards(spec, real.shape[0]))
    else:
        tokens, n_generated = generate(rows)
    ended = jnp.any(jnp.isin(tokens, jnp.asarray(settings.eos_token_ids or (-1,))), axis=1)
    lengths = jnp.where(ended, n_generated - 1, n_generated)
    a = given_ids.shape[1]
    tokens = tokens[:, :a] if tokens.shape[1] >= a else jnp.pad(tokens, ((0, 0), (0, a - tokens.shape[1])))
    use_given = given_lengths >= 0
    return (jnp.where(use_given[:, None], given_ids, tokens),
            jnp.where(use_given, given_lengths, jnp.minimum(lengths, a)).astype(jnp.int32))


class ClipPasses(NamedTuple):
    """The teacher-forced passes of one clip over its sequence prompt + answer (length L = S + A)."""

    decode: Any  # (gate [T], query_weights=None, sow=None) -> (hidden [L, D], sown state or None); sow is
    #              interface.PROBS or interface.RECEIVED
    decode_cached: Any  # (gate, query_weights, sow) -> (hidden, sown state, KV cache of every layer)
    answer_logp: Any  # (hidden [L - offset, D], offset=0) or (hidden [A, D], gathered=True) -> the answer's
    #                   target (`clip_passes`: its log-probability, or its log-odds)
    logp_of: Any  # gate -> target
    suffix_logp: Any  # (gate, start: static int, cache) -> logp, recomputing positions >= start only (and in
    #                   the last layer only the answer-producing rows)
    is_audio: Array  # [L] bool
    rows: Array  # [A] answer-producing rows
    answer_valid: Array  # [A] bool


def clip_passes(model: AudioLanguageModel, params: Any, clip: ClipInputs, target: str = "logp") -> ClipPasses:
    """Closures over one clip's teacher-forced sequence; see `ClipPasses`. `target` (TARGETS) is what
    `answer_logp` returns: the answer's log-probability, or its log-odds."""
    prompt_ids, prompt_length = clip.prompt_ids, clip.prompt_length
    answer_ids, answer_length = clip.answer_ids, clip.answer_length
    t_slots = clip.audio.shape[0]
    s, a = prompt_ids.shape[0], answer_ids.shape[0]
    seq = jax.lax.dynamic_update_slice(jnp.pad(prompt_ids, (0, a)), answer_ids.astype(prompt_ids.dtype),
                                       (prompt_length,))
    seq_valid = jnp.arange(s + a) < prompt_length + answer_length
    answer_valid = jnp.arange(a) < answer_length
    rows = prompt_length - 1 + jnp.arange(a)
    mask = causal_mask(seq_valid[None].astype(jnp.int32))
    positions = jnp.arange(s + a)[None]
    variables = {"params": params}
    token_embeds = model.apply(variables, seq[None], method=model.embed_tokens)[0]
    is_audio = seq == model.audio_token_id
    ordinal = jnp.clip(jnp.cumsum(is_audio) - 1, 0, audio_slots(model, t_slots) - 1)

    def gated_embeds(gate):
        extra = {} if clip.context is None else {"context": clip.context}
        if clip.features is not None:  # gate_domain "input"
            # frames past the clip stay as they are: the encoder attends to its padding frames too
            kept = jnp.where(jnp.arange(t_slots) < clip.n_tokens, gate, 1.0)
            frame_gate = jnp.repeat(kept, clip.features.shape[-1] // t_slots)[None]
            mel = frame_gate * clip.features + (1.0 - frame_gate) * clip.silence_features
            mixed = model.apply(variables, mel[None], clip.mel_length[None], method=model.encode_audio)[0][0]
        else:
            mixed = model.apply(variables, gate, clip.audio, clip.silence, method=model.gate_audio, **extra)
        return jnp.where(is_audio[:, None], mixed[ordinal].astype(token_embeds.dtype), token_embeds)

    def run(embeds, start, cache, query_weights=None, sow=None, output_rows=None):
        kwargs = dict(positions=positions[:, start:], mask=mask[:, start:], cache=cache,
                      cache_index=None if cache is None else start, query_weights=query_weights,
                      output_rows=output_rows)
        if sow:
            (hidden, cache), state = model.apply(variables, embeds[None, start:], method=model.decode,
                                                 mutable=[sow[0]], **kwargs)
        else:
            (hidden, cache), state = model.apply(variables, embeds[None, start:], method=model.decode, **kwargs), None
        return hidden[0], state, cache

    def decode(gate, query_weights=None, sow=None):
        hidden, state, _ = run(gated_embeds(gate), 0, None, query_weights, sow)
        return hidden, state

    def decode_cached(gate, query_weights=None, sow=None):
        return run(gated_embeds(gate), 0, model.init_cache(1, s + a), query_weights, sow)

    def answer_logp(hidden, offset=0, gathered=False):
        logits = model.apply(variables, hidden if gathered else hidden[rows - offset], method=model.logits)
        return jnp.sum(jnp.where(answer_valid, answer_target(logits.astype(jnp.float32), answer_ids, target), 0.0))

    def logp_of(gate):
        hidden, _, _ = run(gated_embeds(gate), 0, None, output_rows=rows[None])
        return answer_logp(hidden, gathered=True)

    def suffix_logp(gate, start, cache):
        hidden, _, _ = run(gated_embeds(gate), start, cache, output_rows=(rows - start)[None])
        return answer_logp(hidden, gathered=True)

    return ClipPasses(decode, decode_cached, answer_logp, logp_of, suffix_logp, is_audio, rows, answer_valid)


def answer_target(logits: Array, answer_ids: Array, target: str) -> Array:
    """Per answer token [A]: log p(y_i) ("logp") or log p(y_i) - log(1 - p(y_i)) ("log_odds"), from
    logits [A, V]; the log-odds' log(1 - p) is the log-sum-exp of the other tokens' logits, exact where
    1 - p underflows."""
    total = jax.nn.logsumexp(logits, axis=-1)
    chosen = jnp.take_along_axis(logits, answer_ids[:, None], axis=-1)[:, 0]
    if target == "logp":
        return chosen - total
    others = jnp.where(jnp.arange(logits.shape[-1])[None] == answer_ids[:, None], -jnp.inf, logits)
    return chosen - jax.nn.logsumexp(others, axis=-1)


class FullPass(NamedTuple):
    """One clip's pass at m = 1 (sowing the attention reductions) and at m = 0."""

    logp_full: Array  # [] logp(1)
    logp_silence: Array  # [] logp(0)
    global_: Array  # [T] attention the audio tokens receive from the answer-producing rows
    fastv: Array  # [T] mean attention they receive from the prompt rows at layer K
    cache: Any  # the m = 1 pass's keys and values of every layer, [1, L, kv heads, head dim] each


def _audio_offset(spec: ProgramSpec, clip: ClipInputs, model: Any) -> int:
    """The static start of every gated pass: no prompt's audio starts before it (`Scorer` checks)."""
    return max(min(spec.audio_offset, clip.prompt_ids.shape[-1] - 1), 0)


def occlusion_gate_slots(t_slots: int, prompt_slots: int, audio_offset: int, audio_rows: int) -> int:
    """Gates the occlusion program needs of T = t_slots: with one placeholder row per slot, a prompt of
    `prompt_slots` positions whose audio starts at or after `audio_offset` holds at most
    prompt_slots - audio_offset valid slots (a batch of short prompts in a long bucket: fewer chunks
    to compile); else (PandaGPT: one audio row) every slot."""
    if audio_rows != t_slots:
        return t_slots
    return max(min(t_slots, prompt_slots - audio_offset), 1)


def _full_pass(model: AudioLanguageModel, spec: ProgramSpec, params: Any, clip: ClipInputs) -> FullPass:
    t_slots = clip.audio.shape[0]
    s, a = clip.prompt_ids.shape[0], clip.answer_ids.shape[0]
    token_valid = slot_valid(clip)
    passes = clip_passes(model, params, clip, spec.target)
    ones = token_valid.astype(jnp.float32)
    weights = _query_weights(s + a, passes.rows, passes.answer_valid, clip.prompt_length)
    hidden, state, cache = passes.decode_cached(ones, weights[None], RECEIVED)
    logp_full = passes.answer_logp(hidden)
    if spec.share_prefix:  # positions before the audio do not depend on the gate
        logp_silence = passes.suffix_logp(jnp.zeros_like(ones), _audio_offset(spec, clip, model), cache)
    else:
        logp_silence = passes.logp_of(jnp.zeros_like(ones))
    received = stack_sown(state, RECEIVED, model.num_layers)[:, 0]  # [layers, W, K]
    # slot t fills placeholder row min(t, audio_slots - 1): its own row (Qwen2-Audio), or the one AV
    # token every slot feeds (PandaGPT, whose FastV score is then the same for every slot).
    rows = audio_slots(model, t_slots)
    audio_positions = jnp.nonzero(passes.is_audio, size=rows, fill_value=0)[0][jnp.minimum(jnp.arange(t_slots), rows - 1)]
    if clip.model_global is None:
        global_score = jnp.sum(received[:, 0, audio_positions], axis=0)
    else:
        global_score = clip.model_global
    global_score = jnp.where(token_valid, global_score, 0.0)
    k_layer = min(spec.fastv_layer, model.num_layers - 1)
    fastv = jnp.where(token_valid, received[k_layer, 1, audio_positions] / model.num_heads, 0.0)
    return FullPass(logp_full, logp_silence, global_score, fastv, cache)


def _finish_clip(spec: ProgramSpec, clip: ClipInputs, full: FullPass, local: Array, *, alpha: Array,
                 keep_num: Array, keep_den: Array) -> dict[str, Array]:
    """One clip's outputs: local, global, FastV and fused scores [T]; frame scores, validity and the
    fused keep mask [F_r] per codec rate."""
    token_valid = slot_valid(clip)
    local = local_evidence(local, token_valid, sign=spec.local_sign, smooth=spec.local_smooth)
    fused = selection.fuse(local, full.global_, token_valid, alpha)
    out = dict(local=local, global_=full.global_, fastv=full.fastv, fused=fused, token_valid=token_valid,
               logp_full=full.logp_full, logp_silence=full.logp_silence)
    scores = methods.ClipInputs(local=local, global_=full.global_, fused=fused, fastv=full.fastv,
                                n_tokens=clip.n_tokens, n_samples=clip.n_samples,
                                waveform=jnp.zeros((0,), jnp.float32), slot_ranges=clip.slot_ranges,
                                slot_valid=None if clip.slot_ranges is None else token_valid)
    for r in spec.rates:
        max_frames = selection.static_num_frames(spec.max_samples, r)
        out[f"frames_{r}"], out[f"keep_{r}"] = methods.clip_keep_mask(
            "fused", scores, rate=r, max_frames=max_frames, keep_num=keep_num, keep_den=keep_den,
            key=jax.random.key(0))
        out[f"frame_valid_{r}"] = selection.frame_valid_mask(clip.n_samples, r, max_frames)
    return out


def local_evidence(local: Array, valid: Array, *, sign: str, smooth: int) -> Array:
    """[T] the local score the fusion reads: `local` [T] (0 on invalid slots), its magnitude when `sign`
    is "magnitude", then averaged over the valid slots of the `smooth` slots starting (smooth - 1) // 2
    before each slot (occlusion's window). `valid` [T] bool."""
    local = jnp.where(valid, local, 0.0)
    if sign == "magnitude":
        local = jnp.abs(local)
    if smooth > 1:
        t = local.shape[0]
        first = jnp.arange(t) - (smooth - 1) // 2
        start, end = jnp.clip(first, 0, t), jnp.clip(first + smooth, 0, t)
        sums = jnp.concatenate([jnp.zeros((1,), local.dtype), jnp.cumsum(local)])
        counts = jnp.concatenate([jnp.zeros((1,), jnp.int32), jnp.cumsum(valid.astype(jnp.int32))])
        total, count = sums[end] - sums[start], counts[end] - counts[start]
        local = jnp.where(valid, total / jnp.maximum(count, 1).astype(local.dtype), 0.0)
    return local


def _query_weights(length: int, rows: Array, answer_valid: Array, prompt_length: Array) -> Array:
    """[length, 2]: column 0 marks the answer-producing rows (global score); column 1 averages the
    prompt rows (FastV: mean attention received from all prompt queries; the caller divides the
    head sum by the number of heads)."""
    answer_rows = jnp.zeros((length,), jnp.float32).at[rows].add(answer_valid.astype(jnp.float32))
    prompt_rows = (jnp.arange(length) < prompt_length).astype(jnp.float32) / prompt_length
    return jnp.stack([answer_rows, prompt_rows], axis=-1)


def occlusion_gates(ones: Array, window: int) -> Array:
    """[T, T]: gate t switches off the window of `window` tokens starting (window - 1) // 2 before t."""
    t = ones.shape[0]
    start = jnp.arange(t)[:, None] - (window - 1) // 2
    cols = jnp.arange(t)[None, :]
    off = (cols >= start) & (cols < start + window)
    return jnp.where(off, 0.0, ones[None, :])


class OcclusionStep(NamedTuple):
    """Consecutive occlusion chunks that run as one step of the program (static)."""

    first: int  # the first gate of the step's first chunk
    chunks: int  # chunks of `size` gates; more than one run as a `lax.fori_loop`
    size: int  # gates per chunk
    start: int  # the sequence position every pass of the step recomputes from (0: the whole pass)


def occlusion_schedule(t_slots: int, chunk: int, segments: int, *, window: int, audio_offset: int,
                       audio_rows: int, gate_domain: str, share_prefix: bool) -> list[OcclusionStep]:
    """The occlusion program's steps over T = t_slots gates, shared by the program and its FLOP count.

    segments 0: one step per chunk, each recomputing from its own first gate (the least work; the
    program holds one copy of the chunk's passes per chunk, so its compile time grows with T / chunk).
    segments k >= 1: the whole chunks in k runs of consecutive chunks, each one loop sharing the
    prefix up to its first chunk (compile time of about k chunks; later chunks of a run recompute
    more positions), and a last partial chunk as a step of its own.

    A chunk whose first gate switches off token j recomputes sequence positions from audio_offset + j
    on: audio token j sits at position (first placeholder) + j >= audio_offset + j. A model with one
    audio row (`audio_rows` 1, PandaGPT) and input-domain gates (the encoder mixes the clip) change
    every audio row, so their steps start at the audio.
    """
    chunk = min(chunk, t_slots)

    def start_of(first: int) -> int:
        if not share_prefix:
            return 0
        first_row = 0 if gate_domain == "input" else min(first - (window - 1) // 2, audio_rows - 1)
        return max(audio_offset + first_row, 0)

    whole = t_slots // chunk
    if segments == 0:
        runs = [(i, 1) for i in range(whole)]
    else:
        bounds = [round(i * whole / min(segments, whole)) for i in range(min(segments, whole) + 1)]
        runs = [(lo, hi - lo) for lo, hi in zip(bounds, bounds[1:])]
    steps = [OcclusionStep(lo * chunk, n, chunk, start_of(lo * chunk)) for lo, n in runs]
    if t_slots % chunk:
        first = whole * chunk
        start = start_of(first) if segments == 0 or not steps else steps[-1].start
        steps.append(OcclusionStep(first, 1, t_slots - first, start))
    return steps


def _by_local_clip(tree: Any, shards: int) -> Any:
    """[B, ...] -> [B / shards, shards, ...]: row i holds each data shard's i-th clip (the batch axis is
    split into `shards` contiguous blocks on the mesh's 'data' axis)."""
    def group(x):
        return x.reshape((shards, x.shape[0] // shards) + x.shape[1:]).swapaxes(0, 1)
    return jax.tree_util.tree_map(group, tree)


def _from_local_clip(x: Array) -> Array:
    """The inverse of `_by_local_clip` for one array: [B / shards, shards, ...] -> [B, ...]."""
    return x.swapaxes(0, 1).reshape((x.shape[0] * x.shape[1],) + x.shape[2:])


def _shards(spec: ProgramSpec, batch: int) -> int:
    return spec.data_shards if batch % spec.data_shards == 0 else 1


def _occlusion_logps(model: AudioLanguageModel, spec: ProgramSpec, params: Any, clips: ClipInputs,
                     caches: Any, real: Array) -> Array:
    """[B, T] logp(1 - w_t) of every clip and gate, `occlusion_chunk` gates at a time, in the steps of
    `occlusion_schedule` (with `share_prefix`, each pass recomputes only the positions from its step's
    start on: exact, a causal decoder's states before it are those of the full pass).

    Work follows each clip: the clips run one at a time per data shard (a `lax.map` over the shard's
    clips; the shards side by side), and a chunk whose first gate is at or past the clip's valid token
    count (0 for a batch-padding copy, `real` False) is skipped by a `lax.cond` whose predicate is the
    largest such count over the shards' current clips, so only one branch runs. Each chunk takes the
    previous chunk's result, so chunks run one after another; within a chunk the gates run
    `occlusion_gate_batch` at a time (a `lax.map` over vmapped blocks, so that on CPU a block's
    attention scores stay in cache), and the program's temporaries are those of one block of one clip
    per shard. With chunks of c gates over T tokens and L positions, one step
    per chunk does about T (L - audio_offset - T / 2) token passes, against T L without sharing.
    """
    b, t = clips.audio.shape[0], clips.audio.shape[1]
    shards = _shards(spec, b)
    # gates past a clip's last gate slot that holds audio change nothing: their chunks are skipped
    last = clips.n_tokens if clips.slot_valid is None else jnp.minimum(clips.n_tokens, jnp.max(
        jnp.where(clips.slot_valid, jnp.arange(clips.slot_valid.shape[-1]) + 1, 0), axis=-1))
    n_gates = jnp.where(real, last, 0)
    offset, rows = _audio_offset(spec, clips, model), audio_slots(model, t)
    steps = occlusion_schedule(occlusion_gate_slots(t, clips.prompt_ids.shape[-1], offset, rows),
                               spec.occlusion_chunk, spec.occlusion_segments, window=spec.window,
                               audio_offset=offset, audio_rows=rows, gate_domain=spec.gate_domain,
                               share_prefix=spec.share_prefix)

    def local_clips(args):
        """[shards, T]: the occlusion logps of each shard's i-th clip."""
        group, cache, n = args
        largest = jnp.max(n)
        gates = jax.vmap(lambda o: occlusion_gates(o, spec.window))(slot_valid(group).astype(jnp.float32))

        def chunk_logps(done, first, size, start):
            """`done` with the chunk of `size` gates from `first` (static or traced) filled in."""
            def run(done):
                def one_clip(clip, clip_cache, clip_gates):
                    passes = clip_passes(model, params, clip, spec.target)
                    logp = (lambda g: passes.suffix_logp(g, start, clip_cache)) if spec.share_prefix else passes.logp_of
                    if 0 < spec.occlusion_gate_batch < clip_gates.shape[0]:
                        return jax.lax.map(logp, clip_gates, batch_size=spec.occlusion_gate_batch)
                    return jax.vmap(logp)(clip_gates)

                block = jax.lax.dynamic_slice_in_dim(gates, first, size, axis=1)
                part = jax.vmap(one_clip)(group, cache, block)
                if spec.probe is not None:  # every shard runs the chunk
                    jax.debug.callback(functools.partial(spec.probe, "occlusion"), n.shape[0] * size)
                return jax.lax.dynamic_update_slice(done, part.astype(done.dtype), (0, first))

            return jax.lax.cond(first < largest, run, lambda done: done, done)

        logps = jnp.zeros((shards, t), jnp.float32)
        for step in steps:
            if step.chunks == 1:
                logps = chunk_logps(logps, step.first, step.size, step.start)
            else:
                logps = jax.lax.fori_loop(
                    0, step.chunks, lambda i, done, step=step: chunk_logps(done, step.first + i * step.size,
                                                                           step.size, step.start), logps)
        return logps

    return _from_local_clip(jax.lax.map(local_clips, _by_local_clip((clips, caches, n_gates), shards)))


def _integrated_gradients(model: AudioLanguageModel, spec: ProgramSpec, params: Any, clips: ClipInputs,
                          caches: Any, real: Array) -> Array:
    """[B, T] integrated gradients of every clip, one clip per data shard at a time (`map_real_clips`:
    the shards' i-th clips are skipped together when none is real)."""
    def group_gradients(group):
        clip, cache = group
        return jax.vmap(lambda c, kv: _integrated_gradients_clip(model, spec, params, c, kv))(clip, cache)

    return map_real_clips(group_gradients, (clips, caches), real, _shards(spec, clips.audio.shape[0]))


def map_real_clips(fn: Any, rows: Any, real: Array, shards: int) -> Any:
    """fn over a batch's rows one clip per data shard at a time: a `lax.map` over the shards' i-th
    clips (`_by_local_clip`), each step a `lax.cond` outside the vmap over the shards, so a step whose
    clips are all batch-padding copies (`real` False) runs nothing and returns zeros. fn maps a
    [shards, ...] tree of rows to a [shards, ...] tree of outputs; the result is [B, ...]."""
    def step(args):
        group, is_real = args
        shapes = jax.eval_shape(fn, group)
        skip = lambda _: jax.tree_util.tree_map(lambda x: jnp.zeros(x.shape, x.dtype), shapes)
        return jax.lax.cond(jnp.any(is_real), fn, skip, group)

    out = jax.lax.map(step, _by_local_clip((rows, real), shards))
    return jax.tree_util.tree_map(_from_local_clip, out)


def _integrated_gradients_clip(model: AudioLanguageModel, spec: ProgramSpec, params: Any, clip: ClipInputs,
                               cache: Any) -> Array:
    """[T] L_t = mean over midpoints a_i = (i + 0.5) / n of d target / d m_t at m = a_i * 1, the
    midpoints in chunks of `ig_steps_per_chunk` vmapped together."""
    passes = clip_passes(model, params, clip, spec.target)
    if spec.share_prefix:  # positions before the first audio token do not depend on the gate
        offset = _audio_offset(spec, clip, model)
        logp_of = lambda gate: passes.suffix_logp(gate, offset, cache)
    else:
        logp_of = passes.logp_of
    ones = slot_valid(clip).astype(jnp.float32)
    alphas = (jnp.arange(spec.ig_steps, dtype=jnp.float32) + 0.5) / spec.ig_steps
    chunk = ig_steps_per_chunk(spec.ig_steps, spec.ig_chunk)
    gradient = jax.vmap(lambda a: jax.grad(logp_of)(a * ones))
    grads = jax.lax.map(gradient, alphas.reshape(spec.ig_steps // chunk, chunk))
    return jnp.mean(grads.reshape(spec.ig_steps, -1), axis=0)


def ig_steps_per_chunk(steps: int, chunk: int) -> int:
    """The IG midpoints evaluated together: the largest divisor of `steps` up to `chunk` (no
    padded steps)."""
    return max(d for d in range(1, min(steps, chunk) + 1) if steps % d == 0)
