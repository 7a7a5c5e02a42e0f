"""Greedy generation with a KV cache, jitted as one `lax.while_loop`.

Token for token the same as transformers' `generate(..., do_sample=False)`: positions from the
attention mask's cumulative sum, EOS ids and the pad token from `generation_config.json`, suppressed
tokens, the repetition penalty, and finished rows padded until every row is done or
`max_new_tokens` is reached. Settings that change greedy decoding in ways not ported here are refused
by `GenerationSettings.from_hf` rather than silently ignored; sampling settings (temperature, top-k,
top-p) do not apply to greedy decoding and are ignored.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from agac_jax.models.config import Qwen2AudioConfig
from agac_jax.models.qwen2_audio.model import Qwen2AudioForConditionalGeneration, causal_mask, prompt_positions

Array = jax.Array

_UNSUPPORTED = ("no_repeat_ngram_size", "bad_words_ids", "force_words_ids", "forced_bos_token_id",
                "forced_eos_token_id", "min_new_tokens", "sequence_bias", "encoder_repetition_penalty",
                "exponential_decay_length_penalty")


@dataclasses.dataclass(frozen=True)
class GenerationSettings:
    """What greedy decoding needs; hashable, so it can be a static argument of a jitted function."""

    max_new_tokens: int = 32
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int = 0
    suppress_tokens: tuple[int, ...] = ()
    begin_suppress_tokens: tuple[int, ...] = ()
    repetition_penalty: float = 1.0

    @classmethod
    def from_hf(
        cls,
        generation_config: Mapping[str, Any],
        config: Qwen2AudioConfig,
        max_new_tokens: int | None = None,
        suppress_audio_token: bool = True,
    ) -> "GenerationSettings":
        """Reads `generation_config.json` (falling back on the model config for EOS and pad ids).

        `suppress_audio_token`: never emit the audio placeholder (DESIGN.md section 2).
        """
        g = dict(generation_config)
        for key in _UNSUPPORTED:
            if g.get(key) not in (None, 0, 1.0, [], {}):
                raise ValueError(f"generation_config {key}={g[key]!r} is not supported by the greedy generator")
        if g.get("min_length", 0) not in (0, None):
            raise ValueError(f"generation_config min_length={g['min_length']!r} is not supported")
        eos = g.get("eos_token_id", config.text.eos_token_id)
        eos = () if eos is None else tuple(eos) if isinstance(eos, (list, tuple)) else (int(eos),)
        pad = g.get("pad_token_id", config.text.pad_token_id)
        if pad is None:
            pad = eos[0] if eos else 0
        suppress = tuple(g.get("suppress_tokens") or ())
        if suppress_audio_token and config.audio_token_id not in suppress:
            suppress = suppress + (config.audio_token_id,)
        if max_new_tokens is None:
            max_new_tokens = int(g.get("max_new_tokens") or 32)
        return cls(
            max_new_tokens=int(max_new_tokens),
            eos_token_ids=eos,
            pad_token_id=int(pad),
            suppress_tokens=suppress,
            begin_suppress_tokens=tuple(g.get("begin_suppress_tokens") or ()),
            repetition_penalty=float(g.get("repetition_penalty") or 1.0),
        )


def _process_logits(logits: Array, presence: Array, step: Array, s: GenerationSettings) -> Array:
    """logits [B, V] float32 -> the scores greedy decoding takes the argmax of."""
    if s.repetition_penalty != 1.0:
        penalised = jnp.where(logits < 0, logits * s.repetition_penalty, logits / s.repetition_penalty)
        logits = jnp.where(presence, penalised, logits)
    if s.suppress_tokens:
        logits = logits.at[:, jnp.asarray(s.suppress_tokens)].set(-jnp.inf)
    if s.begin_suppress_tokens:
        begin = logits.at[:, jnp.asarray(s.begin_suppress_tokens)].set(-jnp.inf)
        logits = jnp.where(step == 0, begin, logits)
    return logits


def greedy_generate(
    model: Qwen2AudioForConditionalGeneration,
    params: Any,
    input_ids: Array,
    attention_mask: Array,
    features: Array,
    mel_lengths: Array,
    context: Array | None = None,
    *,
    settings: GenerationSettings,
) -> tuple[Array, Array]:
    """Greedy answers for a batch of prompts, one clip per prompt.

    Args:
      input_ids: [B, S] prompts with expanded audio placeholders (left- or right-padded).
      attention_mask: [B, S].
      features: [B, n_mels, P]; mel_lengths: [B].
      context: None, or per-clip arrays [B, ...] `embed_prompt` takes as `context` (PandaGPT's video vectors).
    Returns:
      (tokens [B, max_new_tokens] with pad after EOS, num_generated [B]: tokens up to and including
      EOS, or max_new_tokens).
    """
    variables = {"params": params}
    audio, n_audio = model.apply(variables, features, mel_lengths, method=model.encode_audio)
    extra = {} if context is None else {"context": context}
    embeds = model.apply(variables, input_ids, audio, n_audio, method=model.embed_prompt, **extra)
    return greedy_generate_from_embeddings(model, params, embeds, input_ids, attention_mask, settings)


def greedy_generate_from_embeddings(
    model: Qwen2AudioForConditionalGeneration,
    params: Any,
    embeds: Array,
    input_ids: Array,
    attention_mask: Array,
    settings: GenerationSettings,
) -> tuple[Array, Array]:
    """`greedy_generate` on prompt embeddings [B, S, D] that already hold the audio."""
    variables = {"params": params}
    b, s = input_ids.shape
    n_new = settings.max_new_tokens
    max_len = s + n_new
    vocab = model.config.text.vocab_size
    key_valid = jnp.concatenate([attention_mask.astype(bool), jnp.ones((b, n_new), bool)], axis=1)
    prefill_mask = jnp.pad(causal_mask(attention_mask), ((0, 0), (0, 0), (0, n_new)))
    positions = prompt_positions(attention_mask)
    next_position = jnp.sum(attention_mask, axis=1, keepdims=True).astype(jnp.int32)
    cache = model.init_cache(b, max_len)
    hidden, cache = model.apply(variables, embeds, positions=positions, mask=prefill_mask, cache=cache, cache_index=0,
                                method=model.decode)
    last = jnp.take_along_axis(hidden, (next_position - 1)[:, :, None], axis=1)[:, 0]
    last = jnp.where(attention_mask[:, -1:] > 0, hidden[:, -1], last)
    logits = model.apply(variables, last, method=model.logits)
    # transformers ignores the left padding (up to the first unmasked position) in the repetition penalty.
    counted = (jnp.arange(s)[None, :] >= jnp.argmax(attention_mask != 0, axis=1)[:, None]) & (attention_mask > 0)
    presence = jnp.zeros((b, vocab), bool).at[jnp.arange(b)[:, None], input_ids].max(counted)
    eos = jnp.asarray(settings.eos_token_ids or (-1,))

    def cond(state):
        step, _, _, done, _, _ = state
        return (step < n_new) & ~jnp.all(done)

    def body(state):
        step, cache, tokens, done, logits, presence = state
        scores = _process_logits(logits, presence, step, settings)
        token = jnp.argmax(scores, axis=-1).astype(jnp.int32)
        token = jnp.where(done, settings.pad_token_id, token)
        tokens = tokens.at[:, step].set(token)
        done = done | jnp.isin(token, eos)
        presence = presence.at[jnp.arange(b), token].set(True)
        emb = model.apply(variables, token[:, None], method=model.embed_tokens)
        mask = (key_valid & (jnp.arange(max_len) <= s + step))[:, None, :]
        hidden, cache = model.apply(variables, emb, positions=next_position + step, mask=mask, cache=cache,
                                    cache_index=s + step, method=model.decode)
        logits = model.apply(variables, hidden[:, -1], method=model.logits)
        return step + 1, cache, tokens, done, logits, presence

    tokens = jnp.full((b, n_new), settings.pad_token_id, jnp.int32)
    state = (jnp.int32(0), cache, tokens, jnp.zeros((b,), bool), logits, presence)
    _, _, tokens, _, _, _ = jax.lax.while_loop(cond, body, state)
    is_eos = jnp.isin(tokens, eos)
    first_eos = jnp.where(jnp.any(is_eos, axis=1), jnp.argmax(is_eos, axis=1) + 1, n_new)
    return tokens, first_eos


@functools.lru_cache(maxsize=16)
def jitted_generate(config: Qwen2AudioConfig, settings: GenerationSettings):
    """A cached jitted `greedy_generate` for (config, settings): fn(params, ids, mask, features, mel_lengths)."""
    model = Qwen2AudioForConditionalGeneration(config)
    return jax.jit(functools.partial(greedy_generate, model, settings=settings))
