"""Qwen2-Audio in Flax linen: audio encoder, projector, Qwen2 decoder and LM head.

The top-level names (`audio_tower`, `multi_modal_projector`, `language_model`, `lm_head`) follow
transformers' `Qwen2AudioForConditionalGeneration` without its `model.` prefix. Besides `__call__`
(the teacher-forced forward pass), the module exposes its stages as methods, for use with
`model.apply(params, ..., method=...)`: `encode_audio`, `embed_prompt`, `decode` and `logits`.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from agac_jax.models.audio_encoder import AudioEncoder
from agac_jax.models.config import Qwen2AudioConfig
from agac_jax.models.decoder import Decoder, LayerCache

Array = jax.Array


def causal_mask(attention_mask: Array) -> Array:
    """[B, S] {0,1} key validity -> [B, S, S] bool: query i sees valid keys j <= i."""
    s = attention_mask.shape[1]
    causal = jnp.tril(jnp.ones((s, s), dtype=bool))
    return causal[None] & attention_mask[:, None, :].astype(bool)


def prompt_positions(attention_mask: Array) -> Array:
    """Positions as transformers' `generate` derives them: cumsum of the mask - 1, padding at 0."""
    pos = jnp.cumsum(attention_mask, axis=-1) - 1
    return jnp.where(attention_mask > 0, pos, 0).astype(jnp.int32)


def check_placeholder_count(input_ids: np.ndarray, num_audio_tokens: np.ndarray, audio_token_id: int) -> None:
    """transformers' check: the placeholders of the batch must equal the valid audio features."""
    n_tokens = int(np.sum(np.asarray(input_ids) == audio_token_id))
    n_features = int(np.sum(np.asarray(num_audio_tokens)))
    if n_tokens != n_features:
        raise ValueError(f"Audio features and audio tokens do not match, tokens: {n_tokens}, features: {n_features}")


def merge_audio_embeddings(
    inputs_embeds: Array, input_ids: Array, audio_embeds: Array, num_audio_tokens: Array, audio_token_id: int
) -> Array:
    """Writes the valid audio embeddings into the placeholder positions, in order.

    transformers' `masked_scatter` semantics: the valid features of all clips, flattened in clip
    order, fill the placeholders of the batch in row-major order. The counts must agree
    (`check_placeholder_count`); inside a jitted program extra placeholders would repeat the last
    feature.

    Args:
      inputs_embeds: [B, S, D] token embeddings.
      input_ids: [B, S] prompt ids with expanded placeholders.
      audio_embeds: [A, T, D] projected audio states.
      num_audio_tokens: [A] valid tokens per clip.
    Returns:
      [B, S, D].
    """
    a, t, d = audio_embeds.shape
    b, s = input_ids.shape
    valid = (jnp.arange(t)[None, :] < num_audio_tokens[:, None]).reshape(-1)
    source = jnp.nonzero(valid, size=a * t, fill_value=a * t - 1)[0]
    is_audio = (input_ids == audio_token_id).reshape(-1)
    ordinal = jnp.clip(jnp.cumsum(is_audio) - 1, 0, a * t - 1)
    gathered = audio_embeds.reshape(a * t, d)[source[ordinal]].reshape(b, s, d)
    return jnp.where(is_audio.reshape(b, s, 1), gathered.astype(inputs_embeds.dtype), inputs_embeds)


class Qwen2AudioForConditionalGeneration(nn.Module):
    """The whole model. Shapes: B batch, S prompt length, P mel frames, T audio tokens (= P // 4)."""

    config: Qwen2AudioConfig

    def setup(self):
        c = self.config
        self.audio_tower = AudioEncoder(c.audio, c.dtype)
        self.multi_modal_projector = nn.Dense(
            c.text.hidden_size,
            dtype=c.dtype,
            param_dtype=jnp.float32,
            kernel_init=nn.with_logical_partitioning(nn.initializers.normal(0.02), ("audio_embed", "embed")),
        )
        self.language_model = Decoder(c.text, c.dtype)
        if not c.text.tie_word_embeddings:
            self.lm_head = nn.Dense(
                c.text.vocab_size,
                use_bias=False,
                dtype=c.dtype,
                param_dtype=jnp.float32,
                kernel_init=nn.with_logical_partitioning(nn.initializers.normal(0.02), ("embed", "vocab")),
            )

    def encode_audio(self, features: Array, mel_lengths: Array) -> tuple[Array, Array]:
        """features [A, n_mels, P], mel_lengths [A] -> (projected audio embeddings [A, T, D], valid tokens [A])."""
        hidden, num_tokens = self.audio_tower(features, mel_lengths)
        return self.multi_modal_projector(hidden), num_tokens

    def embed_prompt(self, input_ids: Array, audio_embeds: Array, num_audio_tokens: Array) -> Array:
        """input_ids [B, S] with expanded placeholders -> decoder inputs [B, S, D]."""
        embeds = self.language_model.embed(input_ids)
        return merge_audio_embeddings(embeds, input_ids, audio_embeds, num_audio_tokens, self.config.audio_token_id)

    def decode(
        self,
        inputs_embeds: Array,
        positions: Array,
        mask: Array,
        cache: tuple[LayerCache, ...] | None = None,
        cache_index: Array | None = None,
        query_weights: Array | None = None,
        output_rows: Array | None = None,
    ) -> tuple[Array, tuple[LayerCache, ...] | None]:
        """The decoder on embeddings: see `Decoder.__call__`."""
        return self.language_model(inputs_embeds, positions, mask, cache, cache_index, query_weights, output_rows)

    def logits(self, hidden: Array) -> Array:
        """[..., D] -> [..., vocab] in float32."""
        if self.config.text.tie_word_embeddings:
            return self.language_model.attend_logits(hidden).astype(jnp.float32)
        return self.lm_head(hidden).astype(jnp.float32)

    def __call__(
        self,
        input_ids: Array,
        attention_mask: Array,
        features: Array,
        mel_lengths: Array,
        positions: Array | None = None,
    ) -> Array:
        """Teacher-forced forward pass, as transformers' forward without a cache.

        Args:
          input_ids: [B, S] with expanded audio placeholders.
          attention_mask: [B, S] 1 for real tokens.
          features: [A, n_mels, P] log-mel features, one clip per audio.
          mel_lengths: [A] valid mel frames.
          positions: [B, S]; default 0..S-1, as transformers' forward when none are given.
        Returns:
          logits [B, S, vocab] float32.
        """
        audio_embeds, num_tokens = self.encode_audio(features, mel_lengths)
        embeds = self.embed_prompt(input_ids, audio_embeds, num_tokens)
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(input_ids.shape[1]), input_ids.shape)
        hidden, _ = self.decode(embeds, positions, causal_mask(attention_mask))
        return self.logits(hidden)


def init_params(config: Qwen2AudioConfig, rng: Array, mel_frames: int = 8) -> Any:
    """Random parameters (boxed with logical axis names) for `config`."""
    model = Qwen2AudioForConditionalGeneration(config)
    ids = jnp.zeros((1, 4), jnp.int32)
    feats = jnp.zeros((1, config.audio.num_mel_bins, mel_frames), jnp.float32)
    return model.init(rng, ids, jnp.ones((1, 4), jnp.int32), feats, jnp.full((1,), mel_frames))["params"]


def stack_sown(collection: Any, name: str, num_layers: int) -> Array:
    """Stacks what every decoder layer sowed under `name` into [layers, ...], in layer order.

    `collection` is the mutable collection returned by `apply(..., mutable=[...])`, e.g. `state["attention"]`.
    """
    layers = collection["language_model"]
    return jnp.stack([layers[f"layers_{i}"]["self_attn"][name][0] for i in range(num_layers)])
