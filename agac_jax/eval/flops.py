"""The one analytic FLOP model of the project: a Qwen2-style decoder (GQA attention, SwiGLU MLP) and
the Whisper-style audio encoder.

Conventions: 2 FLOPs per multiply-accumulate; counted are the matrix products (q, k, v, o
projections, the SwiGLU MLP's three products, the attention scores QK^T and the weighted sum PV,
the LM head, the encoder's convolutions and projector); norms, rotary embeddings, softmax,
activations, biases and the embedding lookup are not (XLA's own count adds them: about 1% at the
benchmark's sizes, `tests/test_bench_flops.py`).

Users: the sweep's per-record prefill FLOPs (`decoder_prefill_flops`, causal: query i against its
i + 1 visible keys) and the benchmark's work of each scoring program and of the PyTorch reference
(`decoder_flops` and `encoder_flops` at the padded shapes the programs compute, full score
matrices).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal


@dataclasses.dataclass(frozen=True)
class DecoderShape:
    """The sizes of a Qwen2-style decoder (GQA attention, SwiGLU MLP)."""

    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"DecoderShape.{field.name} must be a positive integer, got {value!r}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"DecoderShape.num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})"
            )

    @classmethod
    def from_text_config(cls, text: Any) -> "DecoderShape":
        """The sizes of a `models.config.TextConfig`."""
        return cls(hidden_size=text.hidden_size, intermediate_size=text.intermediate_size,
                   num_layers=text.num_hidden_layers, num_heads=text.num_attention_heads,
                   num_kv_heads=text.num_key_value_heads, head_dim=text.attention_head_dim,
                   vocab_size=text.vocab_size)


def decoder_flops(shape: DecoderShape, n_query: int, n_key: int, head_rows: int, *, last_rows: int | None = None,
                  backward: bool = False, causal: bool = False) -> int:
    """FLOPs of the decoder on the last n_query of n_key positions (keys and values of the earlier
    ones cached), plus the LM head on head_rows rows.

    Args:
      shape: the decoder's sizes.
      n_query: positions computed (queries, their keys and values, MLP) in every layer.
      n_key: keys each query is scored against (the cached ones included).
      head_rows: rows the LM head is applied to.
      last_rows: the last layer computes keys and values for all n_query positions but queries,
        output and MLP for the last `last_rows` only (the program's answer-rows-only last layer).
      backward: the gradient with respect to the inputs instead, as `jax.grad` of a gate or torch's
        autograd.grad of the gates computes it: one product per weight matmul (no weight
        gradients), two per attention product.
      causal: each query row counts only the keys up to its own position; False counts the full
        rows x n_key score matrix, as a masked dense attention computes it.
    """
    d, heads, kv, head_dim = shape.hidden_size, shape.num_heads, shape.num_kv_heads, shape.head_dim

    def layer(rows: int) -> int:
        query_side = 2 * rows * d * 2 * heads * head_dim + 2 * rows * 3 * d * shape.intermediate_size
        key_side = 2 * n_query * d * 2 * kv * head_dim
        pairs = rows * n_key - rows * (rows - 1) // 2 if causal else rows * n_key
        attention = 2 * 2 * pairs * heads * head_dim
        return query_side + key_side + (2 if backward else 1) * attention

    last = layer(n_query if last_rows is None else last_rows)
    return (shape.num_layers - 1) * layer(n_query) + last + 2 * head_rows * d * shape.vocab_size


def decoder_prefill_flops(
    shape: DecoderShape,
    sequence_length: int,
    *,
    lm_head_rows: Literal["last", "all"] = "last",
    causal: bool = True,
) -> int:
    """FLOPs of one prefill pass over `sequence_length` tokens: `decoder_flops` with every position
    a query and a key.

    Args:
      shape: the decoder's sizes.
      sequence_length: prompt tokens, audio tokens included.
      lm_head_rows: "last" applies the LM head to the last row only (what generation needs),
        "all" to every row.
      causal: True counts query i against its i + 1 visible keys only (L (L + 1) / 2 pairs);
        False counts the full L x L score matrix.
    """
    if not isinstance(sequence_length, int) or sequence_length < 1:
        raise ValueError(f"sequence_length must be a positive integer, got {sequence_length!r}")
    if lm_head_rows not in ("last", "all"):
        raise ValueError(f"lm_head_rows must be 'last' or 'all', got {lm_head_rows!r}")
    head_rows = 1 if lm_head_rows == "last" else sequence_length
    return decoder_flops(shape, sequence_length, sequence_length, head_rows, causal=causal)


def encoder_flops(audio: Any, frames: int, text_width: int, *, backward: bool = False) -> int:
    """FLOPs of the audio encoder (`models.config.AudioEncoderConfig`) and its projector to the
    decoder's `text_width` on `frames` mel frames: two convolutions (kernel 3, the second of stride
    2), the transformer layers on frames // 2 positions, the projector on the frames // 4 tokens.

    backward: the gradient with respect to the mel input instead (the input gate domain's integrated
    gradients): one product per weight matmul and convolution, two per attention product."""
    m, dm = audio.num_mel_bins, audio.d_model
    n = frames // 2
    convs = 2 * frames * m * dm * 3 + 2 * n * dm * dm * 3
    attention = 2 * 2 * n * n * dm
    layer = 2 * n * 4 * dm * dm + 2 * n * 2 * dm * audio.encoder_ffn_dim + (2 if backward else 1) * attention
    return convs + audio.encoder_layers * layer + 2 * (n // 2) * dm * text_width


def analytic_program_flops(scorer: Any, frames: int, prompt_slots: int | None = None,
                           valid_tokens: int | None = None) -> float:
    """FLOPs of the scoring program on one batch at its padded shapes (`prompt_slots` positions per
    prompt, `Scorer.prompt_slots`; None: the bucket's most): two encoder passes, greedy prefill and
    steps, the full and silence passes, and the estimator's passes, each recomputing the positions
    from its shared prefix on, the last layer on the answer rows only (with input gates, each pass
    also encodes its gated log-mel, forward and, for IG, backward). `scorer`: a `Scorer`, or anything
    with its `config`, `model_config` (a Qwen2-Audio-shaped config) and `audio_offset`. `valid_tokens`:
    one real clip of that many valid audio tokens instead of the batch, whose occlusion chunks from
    its last valid token on are skipped, as the program skips them."""
    from agac_jax.scoring.program import occlusion_gate_slots, occlusion_schedule

    c, model = scorer.config, scorer.model_config
    text = DecoderShape.from_text_config(model.text)
    t_slots = frames // 4
    prompt = t_slots + c.max_text_tokens if prompt_slots is None else prompt_slots
    seq = prompt + c.max_new_tokens
    a = c.max_new_tokens
    per_clip = 2 * encoder_flops(model.audio, frames, model.text.hidden_size)
    per_clip += decoder_flops(text, seq - a, seq, 1) + a * decoder_flops(text, 1, seq, 1)
    per_clip += decoder_flops(text, seq, seq, a)  # the full pass (attention maps, cache)
    offset = max(min(scorer.audio_offset, prompt - 1), 0) if c.share_prefix else 0

    def pass_from(start: int, backward: bool = False) -> float:
        return decoder_flops(text, seq - start, seq, a, last_rows=a, backward=backward)

    per_clip += pass_from(0)  # silence
    # input gates: every gated pass encodes its mixed log-mel again, and every audio row changes
    input_gates = c.gate_domain == "input"
    encode = encoder_flops(model.audio, frames, model.text.hidden_size) if input_gates else 0
    if c.estimator == "integrated_gradients":
        encode_backward = (encoder_flops(model.audio, frames, model.text.hidden_size, backward=True)
                           if input_gates else 0)
        per_clip += c.ig_steps * (pass_from(offset) + pass_from(offset, backward=True) + encode + encode_backward)
    else:
        gates = occlusion_gate_slots(t_slots, prompt, offset, t_slots)
        steps = occlusion_schedule(gates, c.occlusion_chunk, c.occlusion_segments, window=c.window,
                                   audio_offset=offset, audio_rows=t_slots, gate_domain=c.gate_domain,
                                   share_prefix=c.share_prefix)
        def chunks(step) -> int:
            if valid_tokens is None:
                return step.chunks
            return sum(step.first + i * step.size < valid_tokens for i in range(step.chunks))

        per_clip += sum(chunks(step) * step.size * (pass_from(step.start) + encode) for step in steps)
    return per_clip if valid_tokens is not None else c.batch_size * per_clip
