"""Qwen2-Audio in Flax linen: audio encoder, projector, Qwen2 decoder and LM head.

The top-level names (`audio_tower`, `multi_modal_projector`, `language_model`, `lm_head`) follow
transformers' `Qwen2AudioForConditionalGeneration` without its `model.` prefix. Besides `__call__`
(the teacher-forced forward pass), the module exposes its stages as methods, for use with
`model.apply(params, ..., method=...)`: the scoring program's interface (`agac_jax.models.interface`:
`encode_audio`, `gate_audio`, `embed_tokens`, `decode`, `logits`) and `embed_prompt` for generation.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from agac_jax.models.audio_encoder import AudioEncoder
from agac_jax.models.config import Qwen2AudioConfig
from agac_jax.models.decoder import Decoder, LayerCache, init_cache

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
        self.audio_tower = AudioEncoder(c.audio, c.dtype, c.param_dtype)
        self.multi_modal_projector = nn.Dense(
            c.text.hidden_size,
            dtype=c.dtype,
            param_dtype=c.param_dtype,
            kernel_init=nn.with_logical_partitioning(nn.initializers.normal(0.02), ("audio_embed", "embed")),
        )
        self.language_model = Decoder(c.text, c.dtype, c.param_dtype, c.scan_layers, c.remat_layers)
        if not c.text.tie_word_embeddings:
            self.lm_head = nn.Dense(
                c.text.vocab_size,
                use_bias=False,
                dtype=c.dtype,
                param_dtype=c.param_dtype,
                kernel_init=nn.with_logical_partitioning(nn.initializers.normal(0.02), ("embed", "vocab")),
            )

    def encode_audio(self, features: Array, mel_lengths: Array) -> tuple[Array, Array]:
        """features [A, n_mels, P], mel_lengths [A] -> (projected audio embeddings [A, T, D], valid tokens [A])."""
        hidden, num_tokens = self.audio_tower(features, mel_lengths)
        return self.multi_modal_projector(hidden), num_tokens

    # --- the scoring program's interface (agac_jax.models.interface) ---

    @property
    def audio_token_id(self) -> int:
        return self.config.audio_token_id

    @property
    def num_layers(self) -> int:
        return self.config.text.num_hidden_layers

    @property
    def num_heads(self) -> int:
        return self.config.text.num_attention_heads

    def init_cache(self, batch: int, max_len: int) -> tuple[LayerCache, ...] | LayerCache:
        """An empty KV cache of every decoder layer for `batch` sequences of `max_len` positions (one
        stacked `LayerCache` under the layer scan)."""
        return init_cache(self.config.text, batch, max_len, self.config.dtype, stacked=self.config.scan_layers)

    def gate_audio(self, gate: Array, audio: Array, silence: Array) -> Array:
        """gate [T], projected audio and silence embeddings [T, D] -> m * E_A + (1 - m) * E_S [T, D]."""
        return gate[:, None] * audio + (1.0 - gate[:, None]) * silence

    def embed_tokens(self, input_ids: Array) -> Array:
        """[B, S] int -> [B, S, D] text token embeddings."""
        return self.language_model.embed(input_ids)

    def embed_prompt(self, input_ids: Array, audio_embeds: Array, num_audio_tokens: Array) -> Array:
        """input_ids [B, S] with expanded placeholders -> decoder inputs [B, S, D]."""
        embeds = self.embed_tokens(input_ids)
        return merge_audio_embeddings(embeds, input_ids, audio_embeds, num_audio_tokens, self.config.audio_token_id)

    def decode(
        self,
        inputs_embeds: Array,
        *,
        positions: Array,
        mask: Array,
        cache: tuple[LayerCache, ...] | None = None,
        cache_index: Array | None = None,
        query_weights: Array | None = None,
        output_rows: Array | None = None,
    ) -> tuple[Array, tuple[LayerCache, ...] | None]:
        """The decoder on embeddings: see `Decoder.__call__`."""
        return self.language_model(inputs_embeds, positions=positions, mask=mask, cache=cache,
                                   cache_index=cache_index, query_weights=query_weights, output_rows=output_rows)

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
        hidden, _ = self.decode(embeds, positions=positions, mask=causal_mask(attention_mask))
        return self.logits(hidden)


def init_params(config: Qwen2AudioConfig, rng: Array, mel_frames: int = 8) -> Any:
    """Random parameters (boxed with logical axis names) for `config`."""
    model = Qwen2AudioForConditionalGeneration(config)
    ids = jnp.zeros((1, 4), jnp.int32)
    feats = jnp.zeros((1, config.audio.num_mel_bins, mel_frames), jnp.float32)
    return model.init(rng, ids, jnp.ones((1, 4), jnp.int32), feats, jnp.full((1,), mel_frames))["params"]
