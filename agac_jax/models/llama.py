"""The LLaMA-1 decoder (Vicuna v0, PandaGPT's language model) in Flax linen, attention sown.

LLaMA-1 against the Qwen2 decoder of `decoder.py`: no biases anywhere (q, k, v, o and the MLP),
full multi-head attention (key/value heads = heads, kept general), an untied LM head, RMSNorm
eps 1e-6, RoPE base 10000 over the whole head (rotate-half layout, as transformers'
`LlamaForCausalLM`). RMSNorm, the rotary tables, the SwiGLU MLP and the cache layout are those of
`decoder.py`; the attention is written here because Qwen2's has q/k/v biases built in.

Names follow transformers (`layers_{i}.self_attn.q_proj`, `mlp.gate_proj`, `norm`; `lm_head` sits
beside the decoder in `LlamaForCausalLM` and in `models.pandagpt.PandaGPT`). The sown names are
`interface.PROBS` and `interface.RECEIVED`, as in `decoder.py`.

Shapes: B batch, S new positions, K key slots (S, or max_len with a cache), D hidden, H heads.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from agac_jax.models.decoder import MLP, LayerCache, RMSNorm, apply_rotary, rotary_cos_sin, take_rows
from agac_jax.models.interface import PROBS, RECEIVED

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """transformers' LlamaConfig fields that matter here; defaults are Vicuna v0 7B (LLaMA-1 7B + 1 token)."""

    vocab_size: int = 32001
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int = 32
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    max_position_embeddings: int = 2048
    bos_token_id: int = 1
    eos_token_id: int = 2
    pad_token_id: int = 0

    @property
    def attention_head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def kv_groups(self) -> int:
        return self.num_attention_heads // self.num_key_value_heads

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "LlamaConfig":
        """From a config.json dict (unknown keys ignored; num_key_value_heads defaults to the heads)."""
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in d.items() if k in known and v is not None}
        values.setdefault("num_key_value_heads", values.get("num_attention_heads", cls.num_attention_heads))
        if isinstance(values.get("eos_token_id"), (list, tuple)):
            values["eos_token_id"] = values["eos_token_id"][0]
        return cls(**values)

    def to_hf_dict(self) -> dict[str, Any]:
        """A config.json dict transformers' LlamaConfig reads to the same model."""
        d = dataclasses.asdict(self)
        d.update(model_type="llama", architectures=["LlamaForCausalLM"], hidden_act="silu",
                 attention_bias=False, mlp_bias=False, tie_word_embeddings=False)
        return d


def _dense(features: int, name: str, dtype: Any, axes: tuple[str, str], param_dtype: Any = jnp.float32) -> nn.Dense:
    return nn.Dense(features, use_bias=False, dtype=dtype, param_dtype=param_dtype,
                    kernel_init=nn.with_logical_partitioning(nn.initializers.normal(0.02), axes), name=name)


def init_cache(config: LlamaConfig, batch: int, max_len: int, dtype: Any) -> tuple[LayerCache, ...]:
    """Zero keys/values of every layer: [B, max_len, kv_heads, head_dim] each."""
    shape = (batch, max_len, config.num_key_value_heads, config.attention_head_dim)
    return tuple(LayerCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)) for _ in range(config.num_hidden_layers))


class LlamaSelfAttention(nn.Module):
    """Causal multi-head attention with RoPE, no biases; sows like `decoder.DecoderSelfAttention`."""

    config: LlamaConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, cos: Array, sin: Array, mask: Array, *, cache: LayerCache | None = None,
                 cache_index: Array | None = None, query_weights: Array | None = None,
                 query_rows: Array | None = None) -> tuple[Array, LayerCache | None]:
        """x [B, S, D], cos/sin [B, S, hd], mask [B, S, K] bool -> ([B, S or R, D], cache).

        cache/cache_index: this layer's keys/values, the new ones written at [cache_index, +S).
        query_weights [B, S, W]: sow the head sum of the weighted query rows, [B, W, K].
        query_rows [B, R]: compute queries and outputs for those rows only.
        """
        c = self.config
        b, s, _ = x.shape
        hd, nh, nkv = c.attention_head_dim, c.num_attention_heads, c.num_key_value_heads
        k = apply_rotary(_dense(nkv * hd, "k_proj", self.dtype, ("embed", "kv_heads"), self.param_dtype)(x).reshape(b, s, nkv, hd),
                         cos, sin)
        v = _dense(nkv * hd, "v_proj", self.dtype, ("embed", "kv_heads"), self.param_dtype)(x).reshape(b, s, nkv, hd)
        if query_rows is not None:
            x, cos, sin, mask = (take_rows(a, query_rows) for a in (x, cos, sin, mask))
            s = query_rows.shape[1]
        q = apply_rotary(_dense(nh * hd, "q_proj", self.dtype, ("embed", "heads"), self.param_dtype)(x).reshape(b, s, nh, hd), cos, sin)
        if cache is not None:
            k = jax.lax.dynamic_update_slice_in_dim(cache.k, k.astype(cache.k.dtype), cache_index, axis=1)
            v = jax.lax.dynamic_update_slice_in_dim(cache.v, v.astype(cache.v.dtype), cache_index, axis=1)
            cache = LayerCache(k, v)
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
        return _dense(c.hidden_size, "o_proj", self.dtype, ("heads", "embed"), self.param_dtype)(out), cache


class LlamaDecoderLayer(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then + mlp(norm(.))."""

    config: LlamaConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, cos, sin, mask, *, cache=None, cache_index=None, query_weights=None, query_rows=None):
        """x [B, S, D] -> ([B, S, D] or [B, R, D], cache); arguments as `LlamaSelfAttention`."""
        c = self.config
        h = RMSNorm(c.rms_norm_eps, self.dtype, self.param_dtype, name="input_layernorm")(x)
        h, cache = LlamaSelfAttention(c, self.dtype, self.param_dtype, name="self_attn")(
            h, cos, sin, mask, cache=cache, cache_index=cache_index, query_weights=query_weights,
            query_rows=query_rows)
        if query_rows is not None:
            x = take_rows(x, query_rows)
        x = x + h
        h = RMSNorm(c.rms_norm_eps, self.dtype, self.param_dtype, name="post_attention_layernorm")(x)
        return x + MLP(c, self.dtype, self.param_dtype, name="mlp")(h), cache


class LlamaDecoder(nn.Module):
    """Token embedding, the layers and the final norm (transformers' `LlamaModel`); `param_dtype` the
    parameters' dtype (bfloat16 halves the weights; norms and softmax compute in float32)."""

    config: LlamaConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def setup(self):
        c = self.config
        self.embed_tokens = nn.Embed(
            c.vocab_size, c.hidden_size, dtype=self.dtype, param_dtype=self.param_dtype,
            embedding_init=nn.with_logical_partitioning(nn.initializers.normal(0.02), ("vocab", "embed")))
        self.layers = [LlamaDecoderLayer(c, self.dtype, self.param_dtype, name=f"layers_{i}")
                       for i in range(c.num_hidden_layers)]
        self.norm = RMSNorm(c.rms_norm_eps, self.dtype, self.param_dtype)

    def embed(self, input_ids: Array) -> Array:
        """[B, S] int -> [B, S, D]."""
        return self.embed_tokens(input_ids)

    def __call__(self, inputs_embeds: Array, *, positions: Array, mask: Array,
                 cache: tuple[LayerCache, ...] | None = None, cache_index: Array | None = None,
                 query_weights: Array | None = None, output_rows: Array | None = None):
        """inputs_embeds [B, S, D], positions [B, S], mask [B, S, K] -> (normed hidden [B, S or R, D], cache).

        output_rows [B, R]: the last layer computes those rows only (every layer still writes all S
        keys and values to the cache).
        """
        c = self.config
        if output_rows is not None and query_weights is not None:
            raise ValueError("output_rows and query_weights cannot be combined")
        cos, sin = rotary_cos_sin(positions, c.attention_head_dim, c.rope_theta, self.dtype)
        x = inputs_embeds.astype(self.dtype)
        new_cache = []
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x, layer_cache = layer(x, cos, sin, mask, cache=None if cache is None else cache[i],
                                   cache_index=cache_index, query_weights=query_weights,
                                   query_rows=output_rows if i == last else None)
            new_cache.append(layer_cache)
        return self.norm(x), (tuple(new_cache) if cache is not None else None)


def lm_head(config: LlamaConfig, dtype: Any = jnp.float32, param_dtype: Any = jnp.float32) -> nn.Dense:
    """The untied head, [.., D] -> [.., vocab] (named `lm_head` by the caller)."""
    return nn.Dense(config.vocab_size, use_bias=False, dtype=dtype, param_dtype=param_dtype,
                    kernel_init=nn.with_logical_partitioning(nn.initializers.normal(0.02), ("embed", "vocab")),
                    name="lm_head")


class LlamaForCausalLM(nn.Module):
    """The decoder under `language_model` and the untied `lm_head`: input ids -> float32 logits."""

    config: LlamaConfig
    dtype: Any = jnp.float32

    def setup(self):
        self.language_model = LlamaDecoder(self.config, self.dtype)
        self.lm_head = lm_head(self.config, self.dtype)

    def __call__(self, input_ids: Array, attention_mask: Array | None = None) -> Array:
        """input_ids [B, S] (right padding marked 0 in attention_mask [B, S]) -> logits [B, S, vocab]."""
        b, s = input_ids.shape
        valid = jnp.ones((b, s), bool) if attention_mask is None else attention_mask.astype(bool)
        mask = jnp.tril(jnp.ones((s, s), bool))[None] & valid[:, None, :]
        hidden, _ = self.language_model(self.language_model.embed(input_ids),
                                        positions=jnp.broadcast_to(jnp.arange(s), (b, s)), mask=mask)
        return self.lm_head(hidden).astype(jnp.float32)
