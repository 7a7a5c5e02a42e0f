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
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from agac_jax.models.generate import GenerationSettings, greedy_generate_from_embeddings
from agac_jax.models.decoder import init_cache
from agac_jax.models.qwen2_audio import Qwen2AudioForConditionalGeneration, causal_mask
from agac_jax.scoring import methods, selection

Array = jax.Array
ESTIMATORS = ("occlusion", "integrated_gradients")


@dataclasses.dataclass(frozen=True)
class ProgramSpec:
    """Static settings of the compiled program (hashable: part of the compile key)."""

    estimator: str = "occlusion"
    window: int = 1  # occlusion: tokens gated off around t
    ig_steps: int = 16  # integrated gradients: midpoint-rule steps
    occlusion_chunk: int = 16  # gate vectors evaluated together (bounds memory; smaller shares more prefix)
    fastv_layer: int = 2  # FastV's K; clamped to the last layer of smaller decoders
    rates: tuple[int, ...] = (25, 50, 100)
    max_samples: int = 480_000  # clip samples the frame grids are sized for (the bucket)
    generate: bool = True  # False: every clip of the batch comes with its answer ids
    share_prefix: bool = True  # occlusion and IG re-use the full pass's keys/values before the audio (and
    #                            occlusion before each chunk's first gate)
    audio_offset: int = 0  # a lower bound of every prompt's first audio placeholder position
    generation: GenerationSettings = GenerationSettings()

    def __post_init__(self):
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"estimator={self.estimator!r}; expected one of {ESTIMATORS}")
        if self.window < 1 or self.ig_steps < 1 or self.occlusion_chunk < 1:
            raise ValueError(f"window, ig_steps and occlusion_chunk must be >= 1, got {self}")
        for r in self.rates:
            selection.frame_samples(r)


class ClipBatch(dict):
    """The program's input: a dict of arrays.

    features [B, n_mels, P] float32, mel_lengths [B] int32, silence_features [B, n_mels, P] float32,
    prompt_ids [B, S] int32 (right-padded), prompt_lengths [B] int32, answer_ids [B, A] int32,
    answer_lengths [B] int32 (-1: generate the answer), n_samples [B] int32, alpha [] float32,
    keep_num [] int32, keep_den [] int32 (rho = keep_num / keep_den).
    """


def score_batch(model: Qwen2AudioForConditionalGeneration, spec: ProgramSpec, params: Any,
                batch: dict[str, Array]) -> dict[str, Array]:
    """Scores a padded batch. Returns a dict of per-clip arrays (see `_score_clip`) plus answers."""
    variables = {"params": params}
    audio, n_tokens = model.apply(variables, batch["features"], batch["mel_lengths"], method=model.encode_audio)
    silence, _ = model.apply(variables, batch["silence_features"], batch["mel_lengths"], method=model.encode_audio)
    answers, answer_lengths = _answers(model, spec, params, batch, audio, n_tokens)
    per_clip = jax.vmap(lambda *a: _score_clip(model, spec, params, *a, batch["alpha"], batch["keep_num"],
                                               batch["keep_den"]))
    out = per_clip(audio, silence, n_tokens, batch["prompt_ids"], batch["prompt_lengths"], answers,
                   answer_lengths, batch["n_samples"])
    out.update(answer_ids=answers, answer_lengths=answer_lengths, num_tokens=n_tokens)
    return out


def _answers(model, spec, params, batch, audio, n_tokens):
    """The given answers, or greedy ones: ([B, A] ids, [B] lengths before the first EOS)."""
    given_ids, given_lengths = batch["answer_ids"], batch["answer_lengths"]
    if not spec.generate:
        return given_ids, given_lengths.astype(jnp.int32)
    prompt_mask = (jnp.arange(batch["prompt_ids"].shape[1])[None] < batch["prompt_lengths"][:, None]).astype(jnp.int32)
    embeds = model.apply({"params": params}, batch["prompt_ids"], audio, n_tokens, method=model.embed_prompt)
    settings = spec.generation
    tokens, n_generated = greedy_generate_from_embeddings(model, params, embeds, batch["prompt_ids"], prompt_mask,
                                                          settings)
    ended = jnp.any(jnp.isin(tokens, jnp.asarray(settings.eos_token_ids or (-1,))), axis=1)
    lengths = jnp.where(ended, n_generated - 1, n_generated)
    a = given_ids.shape[1]
    tokens = tokens[:, :a] if tokens.shape[1] >= a else jnp.pad(tokens, ((0, 0), (0, a - tokens.shape[1])))
    use_given = given_lengths >= 0
    return (jnp.where(use_given[:, None], given_ids, tokens),
            jnp.where(use_given, given_lengths, jnp.minimum(lengths, a)).astype(jnp.int32))


class ClipPasses(NamedTuple):
    """The teacher-forced passes of one clip over its sequence prompt + answer (length L = S + A)."""

    decode: Any  # (gate [T], query_weights=None, sow=None) -> (hidden [L, D], sown state or None)
    decode_cached: Any  # (gate, query_weights, sow) -> (hidden, sown state, KV cache of every layer)
    answer_logp: Any  # (hidden [L - offset, D], offset=0) or (hidden [A, D], gathered=True) -> logp of the answer
    logp_of: Any  # gate -> logp
    suffix_logp: Any  # (gate, start: static int, cache) -> logp, recomputing positions >= start only (and in
    #                   the last layer only the answer-producing rows)
    is_audio: Array  # [L] bool
    rows: Array  # [A] answer-producing rows
    answer_valid: Array  # [A] bool


def clip_passes(model, params, audio, silence, n_tokens, prompt_ids, prompt_length, answer_ids,
                answer_length) -> ClipPasses:
    """Closures over one clip's teacher-forced sequence; see `ClipPasses`."""
    t_slots = audio.shape[0]
    s, a = prompt_ids.shape[0], answer_ids.shape[0]
    seq = jax.lax.dynamic_update_slice(jnp.pad(prompt_ids, (0, a)), answer_ids.astype(prompt_ids.dtype),
                                       (prompt_length,))
    seq_valid = jnp.arange(s + a) < prompt_length + answer_length
    answer_valid = jnp.arange(a) < answer_length
    rows = prompt_length - 1 + jnp.arange(a)
    mask = causal_mask(seq_valid[None].astype(jnp.int32))
    positions = jnp.arange(s + a)[None]
    variables = {"params": params}
    token_embeds = model.apply(variables, seq[None], method=lambda m, x: m.language_model.embed(x))[0]
    is_audio = seq == model.config.audio_token_id
    ordinal = jnp.clip(jnp.cumsum(is_audio) - 1, 0, t_slots - 1)

    def gated_embeds(gate):
        mixed = gate[:, None] * audio + (1.0 - gate[:, None]) * silence
        return jnp.where(is_audio[:, None], mixed[ordinal].astype(token_embeds.dtype), token_embeds)

    def run(embeds, start, cache, query_weights=None, sow=None, output_rows=None):
        args = (embeds[None, start:], positions[:, start:], mask[:, start:], cache,
                None if cache is None else start, query_weights, output_rows)
        if sow:
            (hidden, cache), state = model.apply(variables, *args, method=model.decode, mutable=[sow])
        else:
            (hidden, cache), state = model.apply(variables, *args, method=model.decode), None
        return hidden[0], state, cache

    def decode(gate, query_weights=None, sow=None):
        hidden, state, _ = run(gated_embeds(gate), 0, None, query_weights, sow)
        return hidden, state

    def decode_cached(gate, query_weights=None, sow=None):
        cache = init_cache(model.config.text, 1, s + a, model.config.dtype)
        return run(gated_embeds(gate), 0, cache, query_weights, sow)

    def answer_logp(hidden, offset=0, gathered=False):
        logits = model.apply(variables, hidden if gathered else hidden[rows - offset], method=model.logits)
        logp = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), answer_ids[:, None], axis=-1)[:, 0]
        return jnp.sum(jnp.where(answer_valid, logp, 0.0))

    def logp_of(gate):
        hidden, _, _ = run(gated_embeds(gate), 0, None, output_rows=rows[None])
        return answer_logp(hidden, gathered=True)

    def suffix_logp(gate, start, cache):
        hidden, _, _ = run(gated_embeds(gate), start, cache, output_rows=(rows - start)[None])
        return answer_logp(hidden, gathered=True)

    return ClipPasses(decode, decode_cached, answer_logp, logp_of, suffix_logp, is_audio, rows, answer_valid)


def _score_clip(model, spec, params, audio, silence, n_tokens, prompt_ids, prompt_length, answer_ids,
                answer_length, n_samples, alpha, keep_num, keep_den):
    """One clip: audio/silence [T, D], prompt [S], answer [A]. Returns per-clip scores and masks."""
    t_slots = audio.shape[0]
    s, a = prompt_ids.shape[0], answer_ids.shape[0]
    token_valid = jnp.arange(t_slots) < n_tokens
    passes = clip_passes(model, params, audio, silence, n_tokens, prompt_ids, prompt_length, answer_ids,
                         answer_length)
    ones = token_valid.astype(jnp.float32)
    weights = _query_weights(s + a, passes.rows, passes.answer_valid, prompt_length)
    hidden, state, cache = passes.decode_cached(ones, weights[None], "attention_received")
    logp_full = passes.answer_logp(hidden)
    logp_silence = passes.logp_of(jnp.zeros_like(ones))
    received = jnp.stack([layer["self_attn"]["received"][0][0]
                          for layer in _layers(state["attention_received"], model.config.text.num_hidden_layers)])
    audio_positions = jnp.nonzero(passes.is_audio, size=t_slots, fill_value=0)[0]
    global_score = jnp.where(token_valid, jnp.sum(received[:, 0, audio_positions], axis=0), 0.0)
    k_layer = min(spec.fastv_layer, model.config.text.num_hidden_layers - 1)
    heads = model.config.text.num_attention_heads
    fastv = jnp.where(token_valid, received[k_layer, 1, audio_positions] / heads, 0.0)

    audio_offset = min(spec.audio_offset, s - t_slots)
    if spec.estimator == "integrated_gradients":
        if spec.share_prefix:  # positions before the first audio token do not depend on the gate
            local = _integrated_gradients(lambda gate: passes.suffix_logp(gate, audio_offset, cache), ones,
                                          token_valid, spec)
        else:
            local = _integrated_gradients(passes.logp_of, ones, token_valid, spec)
    elif spec.share_prefix:
        local = _occlusion_shared_prefix(passes.suffix_logp, cache, logp_full, ones, token_valid, spec,
                                         audio_offset)
    else:
        local = _occlusion(passes.logp_of, logp_full, ones, token_valid, spec)

    fused = selection.fuse(local, global_score, token_valid, alpha)
    out = dict(local=local, global_=global_score, fastv=fastv, fused=fused, token_valid=token_valid,
               logp_full=logp_full, logp_silence=logp_silence)
    clip = methods.ClipInputs(local=local, global_=global_score, fused=fused, fastv=fastv, n_tokens=n_tokens,
                              n_samples=n_samples, waveform=jnp.zeros((0,), jnp.float32))
    for r in spec.rates:
        max_frames = selection.static_num_frames(spec.max_samples, r)
        out[f"frames_{r}"], out[f"keep_{r}"] = methods.clip_keep_mask(
            "fused", clip, rate=r, max_frames=max_frames, keep_num=keep_num, keep_den=keep_den,
            key=jax.random.key(0))
        out[f"frame_valid_{r}"] = selection.frame_valid_mask(n_samples, r, max_frames)
    return out


def _layers(collection: Any, num_layers: int) -> list[Any]:
    layers = collection["language_model"]
    return [layers[f"layers_{i}"] for i in range(num_layers)]


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


def _occlusion(logp_of, logp_full, ones, token_valid, spec: ProgramSpec) -> Array:
    """L_t = logp(1) - logp(1 - w_t), the T gates evaluated `occlusion_chunk` at a time."""
    gates = occlusion_gates(ones, spec.window)
    t = gates.shape[0]
    chunk = min(spec.occlusion_chunk, t)
    padded = -(-t // chunk) * chunk
    gates = jnp.pad(gates, ((0, padded - t), (0, 0)), constant_values=1.0)
    logps = jax.lax.map(jax.vmap(logp_of), gates.reshape(padded // chunk, chunk, t)).reshape(padded)[:t]
    return jnp.where(token_valid, logp_full - logps, 0.0)


def _occlusion_shared_prefix(suffix_logp, cache, logp_full, ones, token_valid, spec: ProgramSpec,
                             audio_offset: int) -> Array:
    """Occlusion that re-uses the full pass's keys and values before the first occluded position.

    Gates are grouped in chunks of `occlusion_chunk` consecutive tokens; a chunk whose first gate
    switches off token j recomputes sequence positions from audio_offset + j on: audio token j sits
    at position (first placeholder) + j >= audio_offset + j, so this static start is at or before
    the first position any gate of the chunk touches. Exact: a causal decoder's states before that
    position are those of the full pass. With chunks of c gates over T tokens and L positions the
    work is about T * (L - audio_offset - T / 2) token passes, against T * L without sharing.
    """
    gates = occlusion_gates(ones, spec.window)
    t = gates.shape[0]
    chunk = min(spec.occlusion_chunk, t)
    logps = []
    for first in range(0, t, chunk):
        start = max(audio_offset + first - (spec.window - 1) // 2, 0)
        logps.append(jax.vmap(lambda g, start=start: suffix_logp(g, start, cache))(gates[first:first + chunk]))
    return jnp.where(token_valid, logp_full - jnp.concatenate(logps), 0.0)


def _integrated_gradients(logp_of, ones, token_valid, spec: ProgramSpec) -> Array:
    """L_t = mean over midpoints a_i = (i + 0.5) / n of d logp / d m_t at m = a_i * 1."""
    alphas = (jnp.arange(spec.ig_steps, dtype=jnp.float32) + 0.5) / spec.ig_steps
    grads = jax.lax.map(lambda a: jax.grad(logp_of)(a * ones), alphas)
    return jnp.where(token_valid, jnp.mean(grads, axis=0), 0.0)
