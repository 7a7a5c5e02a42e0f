"""The Whisper-style audio encoder of Qwen2-Audio, in Flax linen.

Module and parameter names follow transformers' `Qwen2AudioEncoder`, so that the checkpoint name map
in `agac_jax.models.qwen2_audio.checkpoints` stays a plain renaming.

Variable length: transformers requires exactly 2 x max_source_positions mel frames (30 s). This port
takes any even number of frames P up to that, and masks attention keys past each clip's valid length
exactly as transformers does. On valid positions the outputs equal transformers' run on the same clip
padded to 30 s, provided the features hold every frame the convolutions read for the last valid
position: one past the valid end for an even number of valid frames, two for an odd one
(`agac_jax.audio.features.encoder_frames_needed`). `agac_jax.audio.features` pads with the same values
Whisper's feature extractor gives padding.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from agac_jax.audio.grids import encoder_output_lengths
from agac_jax.models.config import AudioEncoderConfig
from agac_jax.models.decoder import grouped_attention

Array = jax.Array


def _dense(features: int, name: str, dtype: Any, axes: tuple[str, str], use_bias: bool = True,
           param_dtype: Any = jnp.float32) -> nn.Dense:
    return nn.Dense(
        features,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=nn.with_logical_partitioning(nn.initializers.normal(0.02), axes),
        name=name,
    )


def layer_norm(name: str, dtype: Any, param_dtype: Any = jnp.float32) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=1e-5, dtype=dtype, param_dtype=param_dtype, name=name)


conv_output_lengths = encoder_output_lengths  # (frames after conv2, audio tokens after pooling)


class EncoderSelfAttention(nn.Module):
    """Bidirectional multi-head attention of one encoder layer (k_proj has no bias, as in Whisper)."""

    d_model: int
    num_heads: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, key_valid: Array) -> Array:
        """x: [B, S, D]; key_valid: [B, S] bool. Returns [B, S, D]. Nothing is sown: the decoder's
        `grouped_attention` (one kv head per head, float32 softmax)."""
        b, s, _ = x.shape
        hd = self.d_model // self.num_heads
        scaling = hd**-0.5
        dense = lambda name, bias=True: _dense(self.d_model, name, self.dtype, ("embed", "audio_heads"), bias,
                                               self.param_dtype)
        q = dense("q_proj")(x) * scaling
        k = dense("k_proj", bias=False)(x)
        v = dense("v_proj")(x)
        q, k, v = (t.reshape(b, s, self.num_heads, hd) for t in (q, k, v))
        out, _ = grouped_attention(q, k, v, key_valid[:, None, :], 1, self.dtype, scale=1.0)
        return _dense(self.d_model, "out_proj", self.dtype, ("audio_heads", "embed"), True, self.param_dtype)(out)


class EncoderLayer(nn.Module):
    """Pre-LN transformer layer: self-attention and a GELU MLP, each with a residual."""

    config: AudioEncoderConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, key_valid: Array) -> Array:
        """x: [B, S, D]; key_valid: [B, S] bool. Returns [B, S, D]."""
        c, pd = self.config, self.param_dtype
        h = layer_norm("self_attn_layer_norm", self.dtype, pd)(x)
        x = x + EncoderSelfAttention(c.d_model, c.encoder_attention_heads, self.dtype, pd, name="self_attn")(
            h, key_valid)
        h = layer_norm("final_layer_norm", self.dtype, pd)(x)
        h = jax.nn.gelu(_dense(c.encoder_ffn_dim, "fc1", self.dtype, ("embed", "mlp"), True, pd)(h), approximate=False)
        return x + _dense(c.d_model, "fc2", self.dtype, ("mlp", "embed"), True, pd)(h)


class AudioEncoder(nn.Module):
    """conv1 (k3, s1) + GELU, conv2 (k3, s2) + GELU, learned positions, layers, AvgPool(2), LayerNorm."""

    config: AudioEncoderConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, features: Array, mel_lengths: Array) -> tuple[Array, Array]:
        """Encodes log-mel features.

        Args:
          features: [B, num_mel_bins, P] log-mel frames, P even and at most 2 x max_source_positions.
          mel_lengths: [B] int, valid mel frames per clip (the feature attention mask's sum).

        Returns:
          (hidden [B, P // 4, d_model], num_tokens [B] int): audio token states at 25 per second and
          the number of valid ones per clip.
        """
        c = self.config
        b, n_mels, p = features.shape
        if n_mels != c.num_mel_bins:
            raise ValueError(f"features have {n_mels} mel bins; the model expects {c.num_mel_bins}")
        if p % 2 or p > c.max_mel_frames or p < 4:
            raise ValueError(f"features have {p} frames; expected an even number in [4, {c.max_mel_frames}]")
        x = jnp.transpose(features, (0, 2, 1)).astype(self.dtype)
        conv_kw = dict(kernel_size=(3,), padding=((1, 1),), dtype=self.dtype, param_dtype=self.param_dtype)
        conv1_init = nn.with_logical_partitioning(nn.linear.default_kernel_init, (None, None, "audio_conv"))
        conv2_init = nn.with_logical_partitioning(nn.linear.default_kernel_init, (None, "embed", "audio_conv"))
        x = jax.nn.gelu(nn.Conv(c.d_model, strides=(1,), name="conv1", kernel_init=conv1_init, **conv_kw)(x),
                        approximate=False)
        x = jax.nn.gelu(nn.Conv(c.d_model, strides=(2,), name="conv2", kernel_init=conv2_init, **conv_kw)(x),
                        approximate=False)
        s = x.shape[1]
        positions = self.param(
            "embed_positions",
            nn.with_logical_partitioning(nn.initializers.normal(0.02), (None, "embed")),
            (c.max_source_positions, c.d_model),
            self.param_dtype,
        )
        x = x + positions[:s].astype(self.dtype)
        conv_lengths, num_tokens = conv_output_lengths(mel_lengths)
        key_valid = jnp.arange(s)[None, :] < conv_lengths[:, None]
        for i in range(c.encoder_layers):
            x = EncoderLayer(c, self.dtype, self.param_dtype, name=f"layers_{i}")(x, key_valid)
        x = x[:, : (s // 2) * 2].reshape(b, s // 2, 2, c.d_model).mean(axis=2)
        x = layer_norm("layer_norm", self.dtype, self.param_dtype)(x)
        return x, num_tokens
