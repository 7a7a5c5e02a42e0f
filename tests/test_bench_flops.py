"""The benchmark's analytic FLOP model against XLA's own count of the same decoder passes.

`agac_jax.eval.flops.decoder_flops` turns measured seconds into GFLOP/s and the torch/JAX work ratio, so it
must count what the programs compute: every layer on every row or the last layer on the answer rows
only, and the input-gradient backward pass of integrated gradients (no weight gradients). XLA's
count adds the element-wise operations (norms, softmax, RoPE, SiLU), about 1% at these sizes, and
is otherwise the same sum of 2 M N K over the dots.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from agac_jax.eval.flops import DecoderShape, decoder_flops
from agac_jax.models.config import AudioEncoderConfig, Qwen2AudioConfig, TextConfig
from agac_jax.models.qwen2_audio.model import Qwen2AudioForConditionalGeneration, causal_mask, init_params

LENGTH, ANSWER = 256, 8
TEXT = TextConfig(vocab_size=64, hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2)
SHAPE = DecoderShape.from_text_config(TEXT)


@pytest.fixture(scope="module")
def answer_logp():
    audio = AudioEncoderConfig(num_mel_bins=80, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=32,
                               d_model=16)
    config = Qwen2AudioConfig(audio=audio, text=TEXT, audio_token_id=5)
    model = Qwen2AudioForConditionalGeneration(config)
    params = nn.meta.unbox(init_params(config, jax.random.key(0)))
    rows = jnp.arange(LENGTH - ANSWER - 1, LENGTH - 1)
    positions = jnp.arange(LENGTH)[None]
    mask = causal_mask(jnp.ones((1, LENGTH), jnp.int32))

    def logp(gate, embeds, answer_rows_only):
        """Sum of the answer rows' log-probabilities of token 0, the embeddings scaled by a gate."""
        hidden, _ = model.apply({"params": params}, (embeds * gate[:, None])[None], positions=positions, mask=mask,
                                output_rows=rows[None] if answer_rows_only else None, method=model.decode)
        hidden = hidden[0] if answer_rows_only else hidden[0][rows]
        logits = model.apply({"params": params}, hidden, method=model.logits)
        return jnp.sum(jax.nn.log_softmax(logits)[:, 0])

    return logp


def xla_flops(fn, *args) -> float:
    cost = jax.jit(fn).lower(*args).compile().cost_analysis()
    return float((cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"])


@pytest.mark.parametrize("answer_rows_only", [False, True])
def test_forward_and_input_gradient_counts_match_xla(answer_logp, answer_rows_only):
    gate, embeds = jnp.ones((LENGTH,)), jax.random.normal(jax.random.key(1), (LENGTH, TEXT.hidden_size))
    last_rows = ANSWER if answer_rows_only else None
    forward = decoder_flops(SHAPE, LENGTH, LENGTH, ANSWER, last_rows=last_rows)
    backward = decoder_flops(SHAPE, LENGTH, LENGTH, ANSWER, last_rows=last_rows, backward=True)

    xla_forward = xla_flops(lambda g, e: answer_logp(g, e, answer_rows_only), gate, embeds)
    xla_both = xla_flops(jax.grad(lambda g, e: answer_logp(g, e, answer_rows_only)), gate, embeds)

    assert 1.0 <= xla_forward / forward <= 1.03
    assert 1.0 <= (xla_both - xla_forward) / backward <= 1.03  # weight gradients counted too: 1.6-1.9


def test_encoder_forward_and_input_gradient_counts_match_xla():
    """The encoder's count (the input gate domain encodes every gated log-mel, and IG differentiates
    it with respect to the mel): XLA's count of the encoder pass, and of its gradient by the mel."""
    from agac_jax.eval.flops import encoder_flops

    audio = AudioEncoderConfig(num_mel_bins=80, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=512,
                               d_model=256)
    config = Qwen2AudioConfig(audio=audio, text=TEXT, audio_token_id=5)
    model = Qwen2AudioForConditionalGeneration(config)
    params = nn.meta.unbox(jax.jit(lambda key: init_params(config, key))(jax.random.key(0)))
    frames = 400
    mel = jax.random.normal(jax.random.key(1), (1, 80, frames))
    weights = jax.random.normal(jax.random.key(2), (1, frames // 4, TEXT.hidden_size))

    def encoded(x):
        audio_embeds, _ = model.apply({"params": params}, x, jnp.asarray([frames]), method=model.encode_audio)
        return jnp.sum(audio_embeds * weights)

    forward = encoder_flops(audio, frames, TEXT.hidden_size)
    backward = encoder_flops(audio, frames, TEXT.hidden_size, backward=True)
    xla_forward = xla_flops(encoded, mel)
    xla_both = xla_flops(jax.grad(encoded), mel)
    # XLA adds the element-wise work (GELU on every FFN and convolution output, norms, softmax: 4% of
    # the forward here); its count of the input gradient is 2% under the model's
    assert 1.0 <= xla_forward / forward <= 1.05, xla_forward / forward
    assert 0.97 <= (xla_both - xla_forward) / backward <= 1.03, (xla_both - xla_forward) / backward
