"""The LLaMA-1 decoder (agac_jax/models/llama.py) against transformers' LlamaForCausalLM, float32, tiny random."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from agac_jax.models.qwen2_audio.checkpoints import flatten
from agac_jax.models.pandagpt.checkpoints import llama_params_from_hf
from agac_jax.models.decoder import LayerCache
from agac_jax.models.interface import RECEIVED
from agac_jax.models.llama import LlamaConfig, LlamaDecoder, LlamaForCausalLM, init_cache

RTOL = 1e-4  # relative to the largest magnitude compared
TINY = LlamaConfig(vocab_size=101, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64)


def assert_close(actual, expected, what):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    err = np.abs(actual - expected).max() / max(np.abs(expected).max(), 1e-12)
    assert err <= RTOL, f"{what}: max relative difference {err:.2e} > {RTOL:.0e}"


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    hf_config = transformers.LlamaConfig(**TINY.to_hf_dict(), attn_implementation="eager")
    hf = transformers.LlamaForCausalLM(hf_config).eval()
    with torch.no_grad():  # non-trivial norms, so a swapped norm weight cannot pass
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    state = {k: v.numpy() for k, v in hf.state_dict().items()}
    return hf, llama_params_from_hf(state)


def test_config_round_trips_through_transformers():
    hf_config = transformers.LlamaConfig(**TINY.to_hf_dict())
    assert LlamaConfig.from_dict(hf_config.to_dict()) == TINY
    assert hf_config.rms_norm_eps == 1e-6 and not hf_config.tie_word_embeddings


def test_logits_match_transformers_with_right_padding(pair):
    hf, params = pair
    ids = np.array([[1, 5, 9, 33, 7, 2, 44, 3], [1, 8, 60, 4, 0, 0, 0, 0]])
    att = (np.arange(8)[None] < np.array([[8], [4]])).astype(np.int64)
    with torch.no_grad():
        expected = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(att)).logits.numpy()
    with jax.default_matmul_precision("highest"):
        got = LlamaForCausalLM(TINY).apply({"params": params}, jnp.asarray(ids), jnp.asarray(att))
    assert_close(got[0], expected[0], "logits, full row")
    assert_close(got[1, :4], expected[1, :4], "logits, padded row's valid positions")


def test_parameter_tree_is_exactly_the_converted_state(pair):
    _, params = pair
    declared = jax.eval_shape(lambda: nn.meta.unbox(
        LlamaForCausalLM(TINY).init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]))
    assert {k: v.shape for k, v in flatten(params).items()} == {k: v.shape for k, v in flatten(declared).items()}


def test_cached_decoding_equals_one_pass_and_sows_received(pair):
    _, params = pair
    decoder = LlamaDecoder(TINY)
    dec_params = {"params": params["language_model"]}
    x = jax.random.normal(jax.random.key(1), (1, 6, TINY.hidden_size))
    mask = jnp.tril(jnp.ones((6, 6), bool))[None]
    pos = jnp.arange(6)[None]
    # jitted: one compilation a call instead of one per primitive of the eager pass
    apply = jax.jit(lambda v, e, **kw: decoder.apply(v, e, **kw), static_argnames=("cache_index", "mutable"))
    with jax.default_matmul_precision("highest"):
        full, _ = apply(dec_params, x, positions=pos, mask=mask)
        cache = init_cache(TINY, 1, 6, jnp.float32)
        head, cache = apply(dec_params, x[:, :4], positions=pos[:, :4], mask=mask[:, :4], cache=cache, cache_index=0)
        tail, _ = apply(dec_params, x[:, 4:], positions=pos[:, 4:], mask=mask[:, 4:], cache=cache, cache_index=4)
        weights = jnp.zeros((1, 6, 1)).at[0, 5, 0].set(1.0)
        (_, _), state = apply(dec_params, x, positions=pos, mask=mask, query_weights=weights,
                              mutable=(RECEIVED[0],))
    assert isinstance(cache[0], LayerCache)
    assert_close(jnp.concatenate([head, tail], axis=1), full, "cached vs one pass")
    received = state[RECEIVED[0]]["layers_0"]["self_attn"][RECEIVED[1]][0]
    assert received.shape == (1, 1, 6)
    np.testing.assert_allclose(received.sum(), TINY.num_attention_heads, rtol=1e-5)  # heads x one softmax row
