"""The Qwen2 decoder of Qwen2-Audio, in Flax linen, with attention exposed through `sow`.

Names follow transformers' `Qwen2Model` (`layers_{i}.self_attn.q_proj`, ...). The decoder works on
input embeddings, explicit positions and a key-validity mask, with an optional functional KV cache
for generation.

Parameters are held in `param_dtype` (float32 or bfloat16) and computed in `dtype`; softmax and
RMSNorm statistics are float32 whatever the compute dtype.

Attention (`grouped_attention`): head-major grouped-query products (each kv head's query heads stacked as one
matrix), the key mask as an additive [B, Q, K] bias shared by all heads, and a float32 softmax. On
XLA:CPU this runs 2-5x faster than `jax.nn.dot_product_attention`, whose default implementation is
the same XLA computation in a [B, Q, H, K] layout with the boolean mask broadcast over every head
(`launch/bench.py --parts=mix`). The probabilities are returned only to a pass that sows.

Layer scan (`Decoder.scan_layers`, off by default): the decoder layers run as one `nn.scan`, so the
program holds one layer's computation instead of `num_hidden_layers` copies (compile time). Their
parameters are then stacked under `layers/...` with a leading [num_hidden_layers] axis
(`agac_jax.models.qwen2_audio.checkpoints` maps them to and from the HF names), the KV cache is one `LayerCache` of
[num_hidden_layers, B, max_len, kv_heads, head_dim] arrays, and whatever the layers sow is relayed to
the same names as without the scan (`layers_{i}/self_attn/...`), so `interface.stack_sown` reads
both. Under the scan the last layer computes every row and `output_rows` is taken after it (one
layer's rows more work than the unrolled decoder, which computes only those rows in its last layer).

Layer rematerialisation (`Decoder.remat_layers`, off by default): each layer runs under `nn.remat`,
so a gradient through the decoder (integrated gradients) keeps only every layer's input and recomputes
the layer's inside on the way back; passes that are not differentiated run as before. Parameters and
results are unchanged.

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


def init_cache(config: TextConfig, batch: int, max_len: int, dtype: Any,
               stacked: bool = False) -> tuple[LayerCache, ...] | LayerCache:
    """Zero keys/values of every layer: a tuple of [B, max_len, kv_heads, head_dim] `LayerCache`s, or with
    `stacked` (the layer scan's layout) one `LayerCache` of [layers, B, max_len, kv_heads, head_dim]."""
    shape = (batch, max_len, config.num_key_value_heads, config.attention_head_dim)
    if stacked:
        shape = (config.num_hidden_layers,) + shape
        return LayerCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))
    return tuple(LayerCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)) for _ in range(config.num_hidden_layers))


def _dense(features: int, name: str, dtype: Any, axes: tuple[str, str], use_bias: bool,
           param_dtype: Any = jnp.float32) -> nn.Dense:
    return nn.Dense(
        features,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=nn.with_logical_partitioning(nn.initializers.normal(0.02), axes),
        name=name,
    )


class RMSNorm(nn.Module):
    """x / rms(x) in float32, scaled by a learned weight (named `scale`)."""

    eps: float
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)), (x.shape[-1],),
                           self.param_dtype)
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
    """Causal grouped-query attention with RoPE; q, k, v have biases, o_proj has none.

    `sow_inline` False (the layer scan): nothing is sown here; what would be sown is returned instead
    (the third output), for the decoder to relay under the unscanned names. `want` then says which of
    (probs, received) to compute; with `sow_inline` True it is read from the mutable collections.
    """

    config: TextConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    sow_inline: bool = True
    want: tuple[bool, bool] = (False, False)

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
    ) -> tuple[Array, LayerCache | None, tuple[Array | None, Array | None]]:
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
          ([B, S, D] or [B, R, D], the updated cache or None, (probs [B, H, S, K] or None,
          received [B, W, K] or None): computed only when wanted, returned only to the layer scan).
        """
        c = self.config
        b, s, _ = x.shape
        hd, nh, nkv = c.attention_head_dim, c.num_attention_heads, c.num_key_value_heads
        dense = lambda n, name, axes, bias: _dense(n, name, self.dtype, axes, bias, self.param_dtype)
        k = dense(nkv * hd, "k_proj", ("embed", "kv_heads"), True)(x).reshape(b, s, nkv, hd)
        v = dense(nkv * hd, "v_proj", ("embed", "kv_heads"), True)(x).reshape(b, s, nkv, hd)
        k = apply_rotary(k, cos, sin)
        if query_rows is not None:
            x, cos, sin, mask = (take_rows(a, query_rows) for a in (x, cos, sin, mask))
            s = query_rows.shape[1]
        q = dense(nh * hd, "q_proj", ("embed", "heads"), True)(x).reshape(b, s, nh, hd)
        q = apply_rotary(q, cos, sin)
        if cache is not None:
            k = jax.lax.dynamic_update_slice_in_dim(cache.k, k.astype(cache.k.dtype), cache_index, axis=1)
            v = jax.lax.dynamic_update_slice_in_dim(cache.v, v.astype(cache.v.dtype), cache_index, axis=1)
            cache = LayerCache(k, v)
        if self.sow_inline:
            want_probs = self.is_mutable_collection(PROBS[0])
            want_received = query_weights is not None and self.is_mutable_collection(RECEIVED[0])
        else:
            want_probs, want_received = self.want
            want_received = want_received and query_weights is not None
        received = None
        out, probs = grouped_attention(q, k.astype(self.dtype), v.astype(self.dtype), mask, c.kv_groups, self.dtype)
        if want_probs or want_received:
            if query_weights is not None and want_received:
                received = jnp.einsum("bhqk,bqw->bwk", probs, query_weights)
            if self.sow_inline:
                self.sow(*PROBS, probs)
                if received is not None:
                    self.sow(*RECEIVED, received)
            if not want_probs:
                probs = None
        out = dense(c.hidden_size, "o_proj", ("heads", "embed"), False)(out)
        return out, cache, (probs, received)


def grouped_attention(q: Array, k: Array, v: Array, mask: Array, groups: int, dtype: Any,
                      scale: float | None = None) -> tuple[Array, Array]:
    """q [B, S, H, hd], k, v [B, K, H / groups, hd], mask [B, S or 1, K] bool -> (out [B, S, H * hd],
    float32 probs [B, H, S, K]); XLA drops the probabilities where the caller does not use them.
    `scale` multiplies q (default hd ** -0.5)."""
    b, s, nh, hd = q.shape
    n_keys, nkv = k.shape[1], k.shape[2]
    # Head-major layout: each kv head's G query heads stacked as one [G * S, hd] matrix, so both
    # products are plain batched matmuls over (B, kv head).
    q = (q * (hd**-0.5 if scale is None else scale)).reshape(b, s, nkv, groups, hd).transpose(0, 2, 3, 1, 4).reshape(b, nkv, groups * s, hd)
    scores = jnp.einsum("bnqd,bnkd->bnqk", q, k.transpose(0, 2, 1, 3))
    bias = jnp.where(mask, 0.0, jnp.finfo(jnp.float32).min)  # [B, S or 1, K], added to every head
    scores = scores.reshape(b, nkv, groups, s, n_keys).astype(jnp.float32) + bias[:, None, None]
    probs = jax.nn.softmax(scores, axis=-1)
    weights = probs.astype(dtype).reshape(b, nkv, groups * s, n_keys)
    out = jnp.einsum("bnqk,bnkd->bnqd", weights, v.transpose(0, 2, 1, 3))
    out = out.reshape(b, nkv, groups, s, hd).transpose(0, 3, 1, 2, 4).reshape(b, s, nh * hd)
    return out, probs.reshape(b, nh, s, n_keys)


def take_rows(a: Array, rows: Array) -> Array:
    """a [B, S, ...], rows [B, R] -> [B, R, ...]."""
    return jnp.take_along_axis(a, rows.reshape(rows.shape + (1,) * (a.ndim - 2)), axis=1)


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    config: TextConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        c = self.config
        dense = lambda n, name, axes: _dense(n, name, self.dtype, axes, False, self.param_dtype)
        gate = dense(c.intermediate_size, "gate_proj", ("embed", "mlp"))(x)
        up = dense(c.intermediate_size, "up_proj", ("embed", "mlp"))(x)
        return dense(c.hidden_size, "down_proj", ("mlp", "embed"))(jax.nn.silu(gate) * up)


class DecoderLayer(nn.Module):
    config: TextConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    sow_inline: bool = True
    want: tuple[bool, bool] = (False, False)

    @nn.compact
    def __call__(self, x, cos, sin, mask, *, cache=None, cache_index=None, query_weights=None, query_rows=None):
        """x: [B, S, D] -> ([B, S, D] or [B, R, D] with query_rows, cache, sown). Arguments and the sown
        pair as `DecoderSelfAttention`."""
        c = self.config
        h = RMSNorm(c.rms_norm_eps, self.dtype, self.param_dtype, name="input_layernorm")(x)
        h, cache, sown = DecoderSelfAttention(c, self.dtype, self.param_dtype, self.sow_inline, self.want,
                                              name="self_attn")(
            h, cos, sin, mask, cache=cache, cache_index=cache_index, query_weights=query_weights,
            query_rows=query_rows)
        if query_rows is not None:
            x = take_rows(x, query_rows)
        x = x + h
        h = RMSNorm(c.rms_norm_eps, self.dtype, self.param_dtype, name="post_attention_layernorm")(x)
        return x + MLP(c, self.dtype, self.param_dtype, name="mlp")(h), cache, sown


class _ScanBody(nn.Module):
    """One decoder layer in `nn.scan`'s calling convention: (carry x, per-layer cache) -> (x, (cache, sown))."""

    config: TextConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    want: tuple[bool, bool] = (False, False)

    @nn.compact
    def __call__(self, x, layer_cache, cos, sin, mask, cache_index, query_weights):
        x, layer_cache, sown = DecoderLayer(self.config, self.dtype, self.param_dtype, sow_inline=False,
                                            want=self.want, name="layer")(
            x, cos, sin, mask, cache=layer_cache, cache_index=cache_index, query_weights=query_weights)
        return x, (layer_cache, sown)


class _SownAttention(nn.Module):
    """Sows one layer's attention under the unscanned names (`layers_{i}/self_attn/...`); no parameters."""

    @nn.compact
    def __call__(self, probs: Array | None, received: Array | None) -> None:
        if probs is not None:
            self.sow(*PROBS, probs)
        if received is not None:
            self.sow(*RECEIVED, received)


class _SownLayer(nn.Module):
    @nn.compact
    def __call__(self, probs: Array | None, received: Array | None) -> None:
        _SownAttention(name="self_attn")(probs, received)


class Decoder(nn.Module):
    """Token embedding, the decoder layers and the final norm (transformers' `Qwen2Model`)."""

    config: TextConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    scan_layers: bool = False
    remat_layers: bool = False

    def setup(self):
        c = self.config
        self.embed_tokens = nn.Embed(
            c.vocab_size,
            c.hidden_size,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            embedding_init=nn.with_logical_partitioning(nn.initializers.normal(0.02), ("vocab", "embed")),
        )
        if self.scan_layers:
            # What the layers compute for sowing is fixed per apply (the mutable collections).
            want = (self.is_mutable_collection(PROBS[0]), self.is_mutable_collection(RECEIVED[0]))
            self.scanned_layers = nn.scan(
                nn.remat(_ScanBody, prevent_cse=False) if self.remat_layers else _ScanBody,
                variable_axes={"params": 0},
                split_rngs={"params": True},
                in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast),
                length=c.num_hidden_layers,
                metadata_params={nn.PARTITION_NAME: None},
            )(c, self.dtype, self.param_dtype, want, name="layers")
            self.relays = [_SownLayer(name=f"layers_{i}") for i in range(c.num_hidden_layers)]
        else:
            layer = nn.remat(DecoderLayer) if self.remat_layers else DecoderLayer
            self.layers = [layer(c, self.dtype, self.param_dtype, name=f"layers_{i}")
                           for i in range(c.num_hidden_layers)]
        self.norm = RMSNorm(c.rms_norm_eps, self.dtype, self.param_dtype)

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
        cache: tuple[LayerCache, ...] | LayerCache | None = None,
        cache_index: Array | None = None,
        query_weights: Array | None = None,
        output_rows: Array | None = None,
    ) -> tuple[Array, tuple[LayerCache, ...] | LayerCache | None]:
        """inputs_embeds [B, S, D], positions [B, S], mask [B, S, K] -> (normed hidden [B, S, D], cache).

        output_rows: [B, R] int, the only positions whose hidden states are wanted (e.g. the rows that
        predict an answer): the result is [B, R, D]; unrolled, the last layer computes queries,
        attention output and MLP for them alone. Every layer still writes all S keys and values to the
        cache (a tuple of per-layer caches, or one stacked `LayerCache` under the layer scan).
        """
        c = self.config
        if output_rows is not None and query_weights is not None:
            raise ValueError("output_rows and query_weights cannot be combined")
        cos, sin = rotary_cos_sin(positions, c.attention_head_dim, c.rope_theta, self.dtype)
        x = inputs_embeds.astype(self.dtype)
        if self.scan_layers:
            x, cache = self._scanned(x, cos, sin, mask, cache, cache_index, query_weights)
            if output_rows is not None:
                x = take_rows(x, output_rows)
            return self.norm(x), cache
        new_cache = []
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            rows = output_rows if i == last else None
            x, layer_cache, _ = layer(x, cos, sin, mask, cache=None if cache is None else cache[i],
                                      cache_index=cache_index, query_weights=query_weights, query_rows=rows)
            new_cache.append(layer_cache)
        return self.norm(x), (tuple(new_cache) if cache is not None else None)

    def _scanned(self, x, cos, sin, mask, cache, cache_index, query_weights):
        """The layers as one nn.scan over the stacked parameters `layers/layer/...` [num_layers, ...]."""
        if cache is not None and not isinstance(cache, LayerCache):
            raise ValueError("the layer scan takes a stacked LayerCache (init_cache(..., stacked=True))")
        x, (cache, (probs, received)) = self.scanned_layers(x, cache, cos, sin, mask, cache_index, query_weights)
        for i, relay in enumerate(self.relays):
            relay(None if probs is None else probs[i], None if received is None else received[i])
        return x, cache
