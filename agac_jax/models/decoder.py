"""The Qwen2 decoder of Qwen2-Audio, in Flax linen, with attention exposed through `sow`.

Names follow transformers' `Qwen2Model` (`layers_{i}.self_attn.q_proj`, ...). The decoder works on
input embeddings, explicit positions and a key-validity mask, with an optional functional KV cache
for generation.

What the attention modules sow (opt-in; `sow` is a no-op unless the collection is mutable; the names
are `interface.PROBS` and `interface.RECEIVED`):
  - collection "attention", name "probs": the softmax probabilities [B, H, Q, K] of every layer.
  - collection "attention_received", name "received": when `query_weights` [B, Q, W] is given, each
    layer's sum over heads of the query rows weighted by each of the W weightings, [B, W, K]. The scoring program uses this so that the
    full maps never leave the layer that computes them.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from agac_jax.models.config import TextConfig
from agac_jax.models.interface import PROBS, RECEIVED

Array = jax.Array


class LayerCache(NamedTuple):
    """Keys and values of one layer: [B, max_len, num_key_value_heads, head_dim] each."""

    k: Array
    v: Array


def init_cache(config: TextConfig, batch: int, max_len: int, dtype: Any) -> tuple[LayerCache, ...]:
    shape = (batch, max_len, config.num_key_value_heads, config.attention_head_dim)
    return tuple(LayerCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)) for _ in range(config.num_hidden_layers))


def _dense(features: int, name: str, dtype: Any, axes: tuple[str, str], use_bias: bool) -> nn.Dense:
    return nn.Dense(
        features,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=nn.with_logical_partitioning(nn.initializers.normal(0.02), axes),
        name=name,
    )


class RMSNorm(nn.Module):
    """x / rms(x) in float32, scaled by a learned weight (named `scale`)."""

    eps: float
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)), (x.shape[-1],),
                           jnp.float32)
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return scale.astype(self.dtype) * x32.astype(self.dtype)


def rotary_cos_sin(positions: Array, head_dim: int, theta: float, dtype: Any) -> tuple[Array, Array]:
    """positions: [B, S] int -> cos, sin: [B, S, head_dim] (halves repeated, as transformers builds them)."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb).astype(dtype), jnp.sin(emb).astype(dtype)


def apply_rotary(x: Array, cos: Array, sin: Array) -> Array:
    """x: [B, S, H, hd]; cos, sin: [B, S, hd]."""
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos[:, :, None, :] + rotated * sin[:, :, None, :]


class DecoderSelfAttention(nn.Module):
    """Causal grouped-query attention with RoPE; q, k, v have biases, o_proj has none."""

    config: TextConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(
        self,
        x: Array,
        cos: Array,
        sin: Array,
        mask: Array,
        *,
        cache: LayerCache | None = None,
        cache_index: Array | None = None,
        query_weights: Array | None = None,
        query_rows: Array | None = None,
    ) -> tuple[Array, LayerCache | None]:
        """One attention step.

        Args:
          x: [B, S, D] hidden states of the new positions.
          cos, sin: [B, S, head_dim] rotary tables of the new positions.
          mask: [B, S, K] bool, which keys each query may see (K = S without cache, max_len with).
          cache: this layer's keys/values, written at [cache_index, cache_index + S).
          cache_index: int scalar, where the new positions go in the cache.
          query_weights: [B, S, W] W weightings of the query rows for the sown `received` reduction.
          query_rows: [B, R] int, the only new positions whose outputs are wanted: queries are
            computed for them alone (keys and values for all S). None: all S.

        Returns:
          ([B, S, D] or [B, R, D], the updated cache or None).
        """
        c = self.config
        b, s, _ = x.shape
        hd, nh, nkv = c.attention_head_dim, c.num_attention_heads, c.num_key_value_heads
        k = _dense(nkv * hd, "k_proj", self.dtype, ("embed", "kv_heads"), True)(x).reshape(b, s, nkv, hd)
        v = _dense(nkv * hd, "v_proj", self.dtype, ("embed", "kv_heads"), True)(x).reshape(b, s, nkv, hd)
        k = apply_rotary(k, cos, sin)
        if query_rows is not None:
            x, cos, sin, mask = (_take_rows(a, query_rows) for a in (x, cos, sin, mask))
            s = query_rows.shape[1]
        q = _dense(nh * hd, "q_proj", self.dtype, ("embed", "heads"), True)(x).reshape(b, s, nh, hd)
        q = apply_rotary(q, cos, sin)
        if cache is not None:
            k = jax.lax.dynamic_update_slice_in_dim(cache.k, k.astype(cache.k.dtype), cache_index, axis=1)
            v = jax.lax.dynamic_update_slice_in_dim(cache.v, v.astype(cache.v.dtype), cache_index, axis=1)
            cache = LayerCache(k, v)
        # Head-major layout: each kv head's G query heads stacked as one [G * S, hd] matrix, so both
        # products are plain batched matmuls over (B, kv head) (2.4x faster on CPU than a 5-d einsum).
        n_keys, groups = k.shape[1], c.kv_groups
        q = q.reshape(b, s, nkv, groups, hd).transpose(0, 2, 3, 1, 4).reshape(b, nkv, groups * s, hd)
        scores = jnp.einsum("bnqd,bnkd->bnqk", q, k.astype(self.dtype).transpose(0, 2, 1, 3)) * (hd**-0.5)
        scores = scores.reshape(b, nh, s, n_keys).astype(jnp.float32)
        scores = jnp.where(mask[:, None, :, :], scores, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(scores, axis=-1)
        self.sow(*PROBS, probs)
        if query_weights is not None:
            self.sow(*RECEIVED, jnp.einsum("bhqk,bqw->bwk", probs, query_weights))
        probs = probs.astype(self.dtype).reshape(b, nkv, groups * s, n_keys)
        out = jnp.einsum("bnqk,bnkd->bnqd", probs, v.astype(self.dtype).transpose(0, 2, 1, 3))
        out = out.reshape(b, nkv, groups, s, hd).transpose(0, 3, 1, 2, 4).reshape(b, s, nh * hd)
        return _dense(c.hidden_size, "o_proj", self.dtype, ("heads", "embed"), False)(out), cache


def _take_rows(a: Array, rows: Array) -> Array:
    """a [B, S, ...], rows [B, R] -> [B, R, ...]."""
    return jnp.take_along_axis(a, rows.reshape(rows.shape + (1,) * (a.ndim - 2)), axis=1)


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    config: TextConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        c = self.config
        gate = _dense(c.intermediate_size, "gate_proj", self.dtype, ("embed", "mlp"), False)(x)
        up = _dense(c.intermediate_size, "up_proj", self.dtype, ("embed", "mlp"), False)(x)
        return _dense(c.hidden_size, "down_proj", self.dtype, ("mlp", "embed"), False)(jax.nn.silu(gate) * up)


class DecoderLayer(nn.Module):
    config: TextConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, cos, sin, mask, *, cache=None, cache_index=None, query_weights=None, query_rows=None):
        """x: [B, S, D] -> ([B, S, D] or [B, R, D] with query_rows, cache). Arguments as `DecoderSelfAttention`."""
        c = self.config
        h = RMSNorm(c.rms_norm_eps, self.dtype, name="input_layernorm")(x)
        h, cache = DecoderSelfAttention(c, self.dtype, name="self_attn")(
            h, cos, sin, mask, cache=cache, cache_index=cache_index, query_weights=query_weights,
            query_rows=query_rows)
        if query_rows is not None:
            x = _take_rows(x, query_rows)
        x = x + h
        h = RMSNorm(c.rms_norm_eps, self.dtype, name="post_attention_layernorm")(x)
        return x + MLP(c, self.dtype, name="mlp")(h), cache


class Decoder(nn.Module):
    """Token embedding, the decoder layers and the final norm (transformers' `Qwen2Model`)."""

    config: TextConfig
    dtype: Any = jnp.float32

    def setup(self):
        c = self.config
        self.embed_tokens = nn.Embed(
            c.vocab_size,
            c.hidden_size,
            dtype=self.dtype,
            param_dtype=jnp.float32,
            embedding_init=nn.with_logical_partitioning(nn.initializers.normal(0.02), ("vocab", "embed")),
        )
        self.layers = [DecoderLayer(c, self.dtype, name=f"layers_{i}") for i in range(c.num_hidden_layers)]
        self.norm = RMSNorm(c.rms_norm_eps, self.dtype)

    def embed(self, input_ids: Array) -> Array:
        """[B, S] int -> [B, S, D]."""
        return self.embed_tokens(input_ids)

    def attend_logits(self, hidden: Array) -> Array:
        """Tied LM head: [B, S, D] -> [B, S, vocab]."""
        return self.embed_tokens.attend(hidden)

    def __call__(
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
        """inputs_embeds [B, S, D], positions [B, S], mask [B, S, K] -> (normed hidden [B, S, D], cache).

        output_rows: [B, R] int, the only positions whose hidden states are wanted (e.g. the rows that
        predict an answer): the last layer computes queries, attention output and MLP for them alone
        and the result is [B, R, D]. Every layer still writes all S keys and values to the cache.
        """
        c = self.config
        if output_rows is not None and query_weights is not None:
            raise ValueError("output_rows and query_weights cannot be combined")
        cos, sin = rotary_cos_sin(positions, c.attention_head_dim, c.rope_theta, self.dtype)
        x = inputs_embeds.astype(self.dtype)
        new_cache = []
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            rows = output_rows if i == last else None
            x, layer_cache = layer(x, cos, sin, mask, cache=None if cache is None else cache[i],
                                   cache_index=cache_index, query_weights=query_weights, query_rows=rows)
            new_cache.append(layer_cache)
        return self.norm(x), (tuple(new_cache) if cache is not None else None)
