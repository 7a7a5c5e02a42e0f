"""Voxtral in Flax linen: Whisper encoder per 30 s window, 4-frame stacking, projector, Llama decoder.

Follows transformers' `VoxtralForConditionalGeneration`; the top-level names (`audio_tower`,
`multi_modal_projector`, `language_model`, `lm_head`) drop its `model.` prefix, as Qwen2-Audio's port does.
Reused: the shared encoder layer (`models.audio_encoder.EncoderLayer`: pre-LN attention with k_proj
unbiased, exact-GELU MLP), the shared LLaMA decoder (`models.llama.LlamaDecoder`: no biases, GQA, RoPE,
RMSNorm, attention sown under `interface.PROBS` / `interface.RECEIVED`) with `config.VoxtralTextConfig`'s
explicit head width, and Qwen2-Audio's placeholder merge and masks (`qwen2_audio.model`).

What is Voxtral's own (against Qwen2-Audio's encoder and projector):
- the encoder runs on whole 30 s windows only (3000 mel frames; transformers refuses anything else) and
  masks nothing: every frame of the window, padding included, is attended to, and the audio tokens of the
  padding are real prompt tokens (375 per window whatever the clip's length);
- no AvgPool(2): the final LayerNorm is applied to all 1500 encoder frames, then 4 consecutive frames are
  concatenated (transformers' `reshape(-1, intermediate_size)`) into one 5120-wide row: one audio token
  per 8 mel frames, 80 ms, 1280 samples (`token_samples`, `frames_per_token`);
- the projector is `linear_2(gelu(linear_1(x)))`, both without bias;
- the decoder is Llama (Mistral): no q/k/v biases, head_dim 128 != hidden / heads, rope_theta 1e8, eps 1e-5,
  an untied LM head.

Clip layout (`encode_audio`): a clip's windows side by side on the frame axis, P = K x 3000 frames (a
clip longer than 30 s: the processor cuts its padded features into 30 s windows, encoded one by one); the
result is [A, K x 375, D] on one 80 ms grid per clip. Features of fewer frames (a bucket shorter than 30 s,
or not a whole number of windows) are completed here with the value Whisper's extractor gives zero
padding, `max(-1.5, max(features) - 2)`: exactly the processor's features when the given frames hold every
frame whose STFT window touches the clip (`ceil((n + 200) / 160)` for n samples). `n_tokens` is
375 x ceil(mel_lengths / 3000): the prompt's placeholders (the processor's count), of which the first
ceil(n / 1280) cover the clip and the rest its zero padding (`heard_tokens`).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from agac_jax.models.audio_encoder import EncoderLayer, layer_norm
from agac_jax.models.config import AudioEncoderConfig
from agac_jax.models.decoder import LayerCache
from agac_jax.models.llama import LlamaDecoder, init_cache, lm_head
from agac_jax.models.qwen2_audio.model import (causal_mask, check_placeholder_count, merge_audio_embeddings,
                                               prompt_positions)
from agac_jax.models.voxtral.config import VoxtralConfig

Array = jax.Array

__all__ = ["VoxtralEncoder", "VoxtralProjector", "VoxtralForConditionalGeneration", "init_params", "causal_mask",
           "prompt_positions", "check_placeholder_count", "pad_to_windows", "audio_token_counts", "heard_tokens",
           "whisper_padding_value"]

# Whisper's log-mel: log10 clamped at 1e-10 and at (max - 8), then (x + 4) / 4. A frame of zero samples
# is max(-10, M - 8) before rescaling, i.e. max(-1.5, F - 2) for F the largest rescaled value.
_FLOOR = (-10.0 + 4.0) / 4.0
_RANGE = 8.0 / 4.0


def whisper_padding_value(features: Array) -> Array:
    """[A, n_mels, P] -> [A]: the features Whisper's extractor gives frames of zero samples in each clip's
    padded window, max(-1.5, max(features) - 2)."""
    return jnp.maximum(_FLOOR, jnp.max(features, axis=(1, 2)) - _RANGE)


def pad_to_windows(features: Array, window_frames: int) -> Array:
    """[A, n_mels, P] -> [A, n_mels, ceil(P / window) x window], completed with each clip's
    `whisper_padding_value` (unchanged when P is already whole windows)."""
    a, m, p = features.shape
    total = max(1, -(-p // window_frames)) * window_frames
    if total == p:
        return features
    pad = jnp.broadcast_to(whisper_padding_value(features)[:, None, None], (a, m, total - p))
    return jnp.concatenate([features, pad.astype(features.dtype)], axis=2)


def audio_token_counts(mel_lengths: Any, window_frames: int, tokens_per_window: int) -> Any:
    """Placeholders of clips of `mel_lengths` valid frames: tokens_per_window x their 30 s windows
    (at least one), the count mistral-common's tokenizer writes. numpy or JAX, elementwise."""
    windows = (mel_lengths + window_frames - 1) // window_frames
    return tokens_per_window * (windows + (windows < 1))


def heard_tokens(n_samples: int, token_samples: int = 1280) -> int:
    """Audio tokens whose 80 ms span holds part of a clip of n_samples (the rest cover its zero padding)."""
    return -(-int(n_samples) // token_samples)


class VoxtralEncoder(nn.Module):
    """conv1 (k3, s1) + GELU, conv2 (k3, s2) + GELU, learned positions, pre-LN layers (no key mask),
    LayerNorm; no pooling (transformers' `VoxtralEncoder`). Names as the shared `AudioEncoder`."""

    config: AudioEncoderConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, features: Array) -> Array:
        """features [N, num_mel_bins, 2 x max_source_positions] (whole windows) -> [N, max_source_positions,
        d_model]."""
        c = self.config
        n, n_mels, p = features.shape
        if n_mels != c.num_mel_bins:
            raise ValueError(f"features have {n_mels} mel bins; the model expects {c.num_mel_bins}")
        if p != c.max_mel_frames:
            raise ValueError(f"Voxtral's encoder takes windows of exactly {c.max_mel_frames} mel frames, got {p}")
        x = jnp.transpose(features, (0, 2, 1)).astype(self.dtype)
        conv_kw = dict(kernel_size=(3,), padding=((1, 1),), dtype=self.dtype, param_dtype=self.param_dtype)
        conv1_init = nn.with_logical_partitioning(nn.linear.default_kernel_init, (None, None, "audio_conv"))
        conv2_init = nn.with_logical_partitioning(nn.linear.default_kernel_init, (None, "embed", "audio_conv"))
        x = jax.nn.gelu(nn.Conv(c.d_model, strides=(1,), name="conv1", kernel_init=conv1_init, **conv_kw)(x),
                        approximate=False)
        x = jax.nn.gelu(nn.Conv(c.d_model, strides=(2,), name="conv2", kernel_init=conv2_init, **conv_kw)(x),
                        approximate=False)
        positions = self.param(
            "embed_positions",
            nn.with_logical_partitioning(nn.initializers.normal(0.02), (None, "embed")),
            (c.max_source_positions, c.d_model),
            self.param_dtype,
        )
        x = x + positions.astype(self.dtype)
        every_key = jnp.ones(x.shape[:2], bool)
        for i in range(c.encoder_layers):
            x = EncoderLayer(c, self.dtype, self.param_dtype, name=f"layers_{i}")(x, every_key)
        return layer_norm("layer_norm", self.dtype, self.param_dtype)(x)


class VoxtralProjector(nn.Module):
    """`linear_2(gelu(linear_1(x)))`, no biases (transformers' `VoxtralMultiModalProjector`, exact GELU)."""

    hidden_size: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        dense = lambda name, axes: nn.Dense(
            self.hidden_size, use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype,
            kernel_init=nn.with_logical_partitioning(nn.initializers.normal(0.02), axes), name=name)
        x = jax.nn.gelu(dense("linear_1", ("audio_embed", "embed"))(x), approximate=False)
        return dense("linear_2", ("mlp", "embed"))(x)


class VoxtralForConditionalGeneration(nn.Module):
    """The whole model. Shapes: B prompts, S prompt length, A clips, K windows per clip, P = K x 3000 mel
    frames, T = K x 375 audio tokens of 80 ms, D decoder width."""

    config: VoxtralConfig

    def setup(self):
        c = self.config
        self.audio_tower = VoxtralEncoder(c.audio, c.dtype, c.param_dtype)
        self.multi_modal_projector = VoxtralProjector(c.text.hidden_size, c.dtype, c.param_dtype)
        self.language_model = LlamaDecoder(c.text, c.dtype, c.param_dtype)
        self.lm_head = lm_head(c.text, c.dtype, c.param_dtype)

    # --- the 80 ms audio token grid (plain attributes, for the scorer) ---

    @property
    def token_samples(self) -> int:
        """16 kHz samples per audio token: 1280 (80 ms)."""
        return self.config.token_samples

    @property
    def frames_per_token(self) -> int:
        """Mel frames per audio token: 8."""
        return self.config.frames_per_token

    @property
    def window_frames(self) -> int:
        """Mel frames of one encoder window: 3000 (30 s)."""
        return self.config.window_frames

    @property
    def tokens_per_window(self) -> int:
        return self.config.tokens_per_window

    # --- audio ---

    def encode_windows(self, features: Array) -> Array:
        """[N, n_mels, 3000] whole windows -> projected audio tokens [N, 375, D]."""
        hidden = self.audio_tower(features)
        n, s, d = hidden.shape
        stacked = hidden.reshape(n, s // self.config.frames_per_stack, self.config.frames_per_stack * d)
        return self.multi_modal_projector(stacked)

    def encode_audio(self, features: Array, mel_lengths: Array) -> tuple[Array, Array]:
        """features [A, n_mels, P], mel_lengths [A] -> (projected audio [A, T, D], placeholders per clip [A]).

        P is completed to whole windows (`pad_to_windows`, see the module docstring); T = 375 x windows.
        """
        c = self.config
        features = pad_to_windows(features, c.window_frames)
        a, m, p = features.shape
        k = p // c.window_frames
        windows = features.reshape(a, m, k, c.window_frames).transpose(0, 2, 1, 3).reshape(a * k, m, c.window_frames)
        audio = self.encode_windows(windows)
        audio = audio.reshape(a, k * c.tokens_per_window, audio.shape[-1])
        n_tokens = jnp.minimum(audio_token_counts(mel_lengths, c.window_frames, c.tokens_per_window),
                               k * c.tokens_per_window)
        return audio, n_tokens.astype(jnp.int32)

    # --- the scoring program's interface (agac_jax.models.interface) ---

    pads_heard = True  # the tokens over a window's padding are heard whatever the clip: never gated

    @property
    def audio_token_id(self) -> int:
        return self.config.audio_token_id

    @property
    def num_layers(self) -> int:
        return self.config.text.num_hidden_layers

    @property
    def num_heads(self) -> int:
        return self.config.text.num_attention_heads

    def init_cache(self, batch: int, max_len: int) -> tuple[LayerCache, ...]:
        """An empty KV cache of every decoder layer: [B, max_len, kv_heads, head_dim] each."""
        return init_cache(self.config.text, batch, max_len, self.config.dtype)

    def gate_audio(self, gate: Array, audio: Array, silence: Array) -> Array:
        """gate [T], projected audio and silence tokens [T, D] -> m * E_A + (1 - m) * E_S [T, D] (one 80 ms
        token per gate slot)."""
        return gate[:, None] * audio + (1.0 - gate[:, None]) * silence

    def embed_tokens(self, input_ids: Array) -> Array:
        """[B, S] int -> [B, S, D]."""
        return self.language_model.embed(input_ids)

    def embed_prompt(self, input_ids: Array, audio_embeds: Array, num_audio_tokens: Array) -> Array:
        """input_ids [B, S] with expanded placeholders -> decoder inputs [B, S, D] (transformers'
        `masked_scatter`: the clips' valid tokens, in clip order, fill the batch's placeholders in order)."""
        embeds = self.embed_tokens(input_ids)
        return merge_audio_embeddings(embeds, input_ids, audio_embeds, num_audio_tokens, self.config.audio_token_id)

    def decode(self, inputs_embeds: Array, *, positions: Array, mask: Array,
               cache: tuple[LayerCache, ...] | None = None, cache_index: Array | None = None,
               query_weights: Array | None = None, output_rows: Array | None = None
               ) -> tuple[Array, tuple[LayerCache, ...] | None]:
        """The decoder on embeddings: see `LlamaDecoder.__call__`."""
        return self.language_model(inputs_embeds, positions=positions, mask=mask, cache=cache,
                                   cache_index=cache_index, query_weights=query_weights, output_rows=output_rows)

    def logits(self, hidden: Array) -> Array:
        """[..., D] -> [..., vocab] float32 (untied head)."""
        return self.lm_head(hidden).astype(jnp.float32)

    def __call__(self, input_ids: Array, attention_mask: Array, features: Array, mel_lengths: Array,
                 positions: Array | None = None) -> Array:
        """Teacher-forced forward pass, as transformers' forward without a cache.

        Args:
          input_ids: [B, S] with expanded placeholders; attention_mask: [B, S] 1 on tokens.
          features: [A, n_mels, P] each clip's windows side by side; mel_lengths: [A] valid frames.
          positions: [B, S]; default 0..S-1, as transformers' forward when none are given.
        Returns:
          logits [B, S, vocab] float32.
        """
        audio, n_tokens = self.encode_audio(features, mel_lengths)
        embeds = self.embed_prompt(input_ids, audio, n_tokens)
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(input_ids.shape[1]), input_ids.shape)
        hidden, _ = self.decode(embeds, positions=positions, mask=causal_mask(attention_mask))
        return self.logits(hidden)


def init_params(config: VoxtralConfig, rng: Array) -> Any:
    """Random parameters (boxed with logical axis names) for `config`."""
    model = VoxtralForConditionalGeneration(config)
    ids = jnp.zeros((1, 4), jnp.int32)
    frames = config.window_frames
    feats = jnp.zeros((1, config.audio.num_mel_bins, frames), jnp.float32)
    return model.init(rng, ids, jnp.ones((1, 4), jnp.int32), feats, jnp.full((1,), frames))["params"]
