"""The Flax port against transformers' Qwen2AudioForConditionalGeneration (eager attention), float32."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from agac_jax.models.qwen2_audio import checkpoints
from agac_jax.models.generate import GenerationSettings, jitted_generate
from agac_jax.models.decoder import init_cache
from agac_jax.models.qwen2_audio.model import (Qwen2AudioForConditionalGeneration, causal_mask, check_placeholder_count,
                                         prompt_positions)
from agac_jax.models.interface import PROBS, stack_sown
from agac_jax.audio.features import encoder_frames_needed
from agac_jax.models.audio_encoder import conv_output_lengths
from tests.tiny_models import TINY_CONFIGS, load_hf_eager, make_hf_checkpoint

RTOL = 1e-4  # relative to the largest magnitude of the quantity compared


def assert_close(actual, expected, what):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    scale = max(np.abs(expected).max(), 1e-12)
    err = np.abs(actual - expected).max() / scale
    assert err <= RTOL, f"{what}: max relative difference {err:.2e} > {RTOL:.0e}"


@pytest.fixture(scope="module", params=sorted(TINY_CONFIGS))
def tiny(request, tmp_path_factory):
    directory = make_hf_checkpoint(tmp_path_factory.mktemp(request.param), request.param)
    loaded = checkpoints.load_hf_directory(directory)
    return loaded, load_hf_eager(directory)


def make_batch(config, mel_lengths, seed=0, prefix=(1, 2), suffix=(3, 4, 5)):
    """Left-padded prompts with expanded placeholders and random full-length features."""
    rng = np.random.default_rng(seed)
    n_mels = config.audio.num_mel_bins
    features = rng.standard_normal((len(mel_lengths), n_mels, 3000)).astype(np.float32)
    mask = (np.arange(3000)[None] < np.asarray(mel_lengths)[:, None]).astype(np.int64)
    n_tokens = np.asarray(conv_output_lengths(np.asarray(mel_lengths))[1])
    rows = [list(prefix) + [config.audio_token_id] * int(n) + list(suffix) for n in n_tokens]
    s = max(map(len, rows))
    ids = np.zeros((len(rows), s), np.int64)
    att = np.zeros((len(rows), s), np.int64)
    for i, row in enumerate(rows):
        ids[i, s - len(row):] = row
        att[i, s - len(row):] = 1
    return ids, att, features, mask, n_tokens


def hf_forward(hf, ids, att, features, mask, **kw):
    with torch.no_grad():
        return hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(att), input_features=torch.tensor(features),
                  feature_attention_mask=torch.tensor(mask), **kw)


def test_logits_attentions_and_audio_embeddings_match(tiny):
    loaded, hf = tiny
    config = loaded.config
    ids, att, features, mask, n_tokens = make_batch(config, [3000, 1234])
    out = hf_forward(hf, ids, att, features, mask, output_attentions=True)
    model = Qwen2AudioForConditionalGeneration(config)
    forward = jax.jit(lambda p, *a: model.apply({"params": p}, *a, mutable=["attention"]))
    logits, state = forward(loaded.params, ids, att, features, mask.sum(-1))
    valid = att.astype(bool)
    assert_close(np.asarray(logits)[valid], out.logits.numpy()[valid], "logits")
    probs = np.asarray(stack_sown(state, PROBS, config.text.num_hidden_layers))
    expected = np.stack([a.numpy() for a in out.attentions])
    rows = valid[None, :, None, :, None] & valid[None, :, None, None, :]
    assert probs.shape == expected.shape
    assert_close(np.where(rows, probs, 0), np.where(rows, expected, 0), "attentions")

    encode = jax.jit(lambda p, *a: model.apply({"params": p}, *a, method=model.encode_audio))
    audio, counts = encode(loaded.params, features, mask.sum(-1))
    with torch.no_grad():
        ref_hidden = hf.model.audio_tower(torch.tensor(features), attention_mask=_hf_encoder_mask(hf, mask))
        ref = hf.model.multi_modal_projector(ref_hidden.last_hidden_state).numpy()
    np.testing.assert_array_equal(counts, n_tokens)
    for i, n in enumerate(n_tokens):
        assert_close(np.asarray(audio)[i, :n], ref[i, :n], "audio embeddings")


def _hf_encoder_mask(hf, mask):
    from transformers.masking_utils import create_bidirectional_mask

    after_conv = torch.tensor((mask.sum(-1) - 1) // 2 + 1)
    valid = (torch.arange(1500)[None] < after_conv[:, None]).long()
    return create_bidirectional_mask(config=hf.model.audio_tower.config, inputs_embeds=torch.zeros(len(mask), 1500, 1),
                                     attention_mask=valid)


@pytest.mark.parametrize("valid", [634, 635])
def test_short_mel_inputs_equal_full_length_on_valid_positions(tiny, valid):
    """Any even frame count holding the frames the encoder reads (`encoder_frames_needed`: one past the
    valid end for even counts, two for odd) gives transformers' 30 s result; one frame fewer does not."""
    loaded, hf = tiny
    config = loaded.config
    ids, att, features, mask, n_tokens = make_batch(config, [valid], seed=1)
    full = hf_forward(hf, ids, att, features, mask).logits.numpy()
    model = Qwen2AudioForConditionalGeneration(config)
    forward = jax.jit(lambda p, *a: model.apply({"params": p}, *a))
    needed = encoder_frames_needed(valid)
    assert needed == valid + (1 if valid % 2 == 0 else 2)
    for frames in (needed + needed % 2, 640, 1000):
        short = forward(loaded.params, ids, att, features[:, :, :frames], mask.sum(-1))
        assert_close(np.asarray(short)[0], full[0], f"logits from {frames} mel frames")
    if valid % 2:  # valid + 1 frames (even) reads conv padding where transformers reads a padding frame
        short = np.asarray(forward(loaded.params, ids, att, features[:, :, : valid + 1], mask.sum(-1)))[0]
        assert np.abs(short - full[0]).max() > 1e-3 * np.abs(full[0]).max()


def test_greedy_generation_is_token_for_token_equal(tiny):
    loaded, hf = tiny
    config = loaded.config
    ids, att, features, mask, _ = make_batch(config, [1999, 801], seed=2)
    gen = {"eos_token_id": [7, 11], "pad_token_id": 0, "repetition_penalty": 1.2, "suppress_tokens": [5]}
    settings = GenerationSettings.from_hf(gen, config, max_new_tokens=12)
    with torch.no_grad():
        ref = hf.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(att),
                          input_features=torch.tensor(features), feature_attention_mask=torch.tensor(mask),
                          do_sample=False, max_new_tokens=12, eos_token_id=[7, 11], pad_token_id=0,
                          repetition_penalty=1.2, suppress_tokens=list(settings.suppress_tokens))
    ref = ref[:, ids.shape[1]:].numpy()
    tokens, _ = jitted_generate(config, settings)(loaded.params, ids, att, features, mask.sum(-1))
    np.testing.assert_array_equal(np.asarray(tokens)[:, : ref.shape[1]], ref)


def test_generation_stops_at_eos(tiny):
    loaded, _ = tiny
    config = loaded.config
    ids, att, features, mask, _ = make_batch(config, [600], seed=3)
    free, _ = jitted_generate(config, GenerationSettings(max_new_tokens=6))(loaded.params, ids, att, features,
                                                                             mask.sum(-1))
    eos = int(np.asarray(free)[0, 2])
    settings = GenerationSettings(max_new_tokens=6, eos_token_ids=(eos,), pad_token_id=config.text.vocab_size - 2)
    tokens, n = jitted_generate(config, settings)(loaded.params, ids, att, features, mask.sum(-1))
    tokens = np.asarray(tokens)[0]
    first = int(np.argmax(tokens == eos))
    assert int(n[0]) == first + 1
    assert (tokens[first + 1:] == settings.pad_token_id).all()


def test_placeholder_count_mismatch_is_an_error(tiny):
    loaded, _ = tiny
    config = loaded.config
    ids, _, _, _, n_tokens = make_batch(config, [800])
    with pytest.raises(ValueError, match="do not match, tokens: 200, features: 201"):
        check_placeholder_count(ids[:, 1:], n_tokens + 1, config.audio_token_id)


def test_bfloat16_compute_stays_finite_and_close(tiny):
    loaded, _ = tiny
    config = loaded.config
    ids, att, features, mask, _ = make_batch(config, [400], seed=4)
    features = features[:, :, :404]

    def forward(dtype):
        model = Qwen2AudioForConditionalGeneration(config.replace(dtype=dtype))
        return jax.jit(lambda p, *a: model.apply({"params": p}, *a))(loaded.params, ids, att, features, mask.sum(-1))

    f32, bf16 = forward(jnp.float32), forward(jnp.bfloat16)
    assert bf16.dtype == jnp.float32 and np.isfinite(np.asarray(bf16)).all()
    rel = np.abs(np.asarray(bf16) - np.asarray(f32)).max() / np.abs(np.asarray(f32)).max()
    assert rel < 5e-2, f"bfloat16 logits differ by {rel:.3f} relative"


def test_output_rows_equal_the_full_pass_on_those_rows_with_and_without_a_cache(tiny):
    """`decode(..., output_rows=R)` computes the last layer for rows R only; the hidden states must be
    the full pass's on R, and the cache the same keys and values."""
    loaded, _ = tiny
    config = loaded.config
    model = Qwen2AudioForConditionalGeneration(config)
    variables = {"params": loaded.params}
    rng = np.random.default_rng(5)
    b, s, d = 2, 12, config.text.hidden_size
    embeds = jnp.asarray(rng.standard_normal((b, s, d)).astype(np.float32))
    positions = jnp.broadcast_to(jnp.arange(s), (b, s))
    mask = causal_mask(jnp.ones((b, s), jnp.int32))
    rows = jnp.asarray([[3, 7, 11], [0, 5, 6]])
    # jitted (cache_index static): one compilation a call instead of one per primitive of the eager pass
    decode = jax.jit(lambda v, e, **kw: model.apply(v, e, method=model.decode, **kw), static_argnames="cache_index")
    full, _ = decode(variables, embeds, positions=positions, mask=mask)
    picked, _ = decode(variables, embeds, positions=positions, mask=mask, output_rows=rows)
    assert picked.shape == (b, 3, d)
    assert_close(picked, np.take_along_axis(np.asarray(full), np.asarray(rows)[..., None], axis=1), "output rows")
    cache = init_cache(config.text, b, s, jnp.float32)
    _, cache_full = decode(variables, embeds[:, :5], positions=positions[:, :5], mask=mask[:, :5], cache=cache,
                           cache_index=0)
    tail_mask = mask[:, 5:]
    (full_tail, kv_full), (rows_tail, kv_rows) = (
        decode(variables, embeds[:, 5:], positions=positions[:, 5:], mask=tail_mask, cache=cache_full,
               cache_index=5, output_rows=r) for r in (None, rows[:, 1:] - 5))
    assert_close(rows_tail, np.take_along_axis(np.asarray(full_tail), np.asarray(rows[:, 1:] - 5)[..., None], axis=1),
                 "output rows after a cache")
    for a, e in zip(jax.tree.leaves(kv_rows), jax.tree.leaves(kv_full)):  # the same layers; XLA may fuse the two
        e = np.asarray(e)                                                     # programs apart: a float32 ulp
        np.testing.assert_allclose(np.asarray(a), e, rtol=1e-6, atol=1e-6 * np.abs(e).max())
    with pytest.raises(ValueError, match="cannot be combined"):
        model.apply(variables, embeds, positions=positions, mask=mask, query_weights=jnp.ones((b, s, 1)), output_rows=rows,
                    method=model.decode)
