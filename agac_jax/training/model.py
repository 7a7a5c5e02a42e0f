"""The tiny Qwen2-Audio that training builds: its tokenizer and processor files, its config from the
training config, its generation config, and its initial parameters.

The tokenizer is word-level over the benchmarks' vocabulary (synthetic's by default) with the Qwen2-Audio chat template
(`agac_jax.models.qwen2_audio.tokenizer.save_processor_files`); the model is the Flax port
(`agac_jax.models.qwen2_audio.model`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from transformers import PreTrainedTokenizerBase

from agac_jax.data.synthetic_audio import synthetic
from agac_jax.models.config import AudioEncoderConfig, Qwen2AudioConfig, TextConfig
from agac_jax.models.qwen2_audio.model import init_params
from agac_jax.models.qwen2_audio.tokenizer import AUDIO_TOKEN, IM_END, QWEN2_AUDIO_CHAT_TEMPLATE, save_processor_files

Params = Any


def build_processor(directory: str | Path, num_mel_bins: int,
                    vocabulary: Sequence[str] = synthetic.VOCABULARY) -> PreTrainedTokenizerBase:
    """Writes the tokenizer (the synthetic vocabulary unless given: `data.vocabulary` of a config, Qwen2-Audio
    chat template) and preprocessor files."""
    return save_processor_files(directory, list(vocabulary), num_mel_bins, QWEN2_AUDIO_CHAT_TEMPLATE)


def model_config(cfg: ml_collections.ConfigDict, tokenizer: PreTrainedTokenizerBase) -> Qwen2AudioConfig:
    """The model's config from the training config; vocabulary and special ids from the tokenizer."""
    m = cfg.model
    audio = AudioEncoderConfig(
        num_mel_bins=cfg.num_mel_bins,
        encoder_layers=m.audio_layers,
        encoder_attention_heads=m.audio_heads,
        encoder_ffn_dim=m.audio_ffn,
        d_model=m.audio_d_model,
        max_source_positions=m.max_source_positions,
    )
    text = TextConfig(
        vocab_size=len(tokenizer),
        hidden_size=m.hidden_size,
        intermediate_size=m.intermediate_size,
        num_hidden_layers=m.layers,
        num_attention_heads=m.heads,
        num_key_value_heads=m.kv_heads,
        rope_theta=m.rope_theta,
        max_position_embeddings=m.max_position_embeddings,
        eos_token_id=tokenizer.convert_tokens_to_ids(IM_END),
        pad_token_id=tokenizer.pad_token_id,
    )
    return Qwen2AudioConfig(audio=audio, text=text, audio_token_id=tokenizer.convert_tokens_to_ids(AUDIO_TOKEN))


def generation_config(config: Qwen2AudioConfig, max_new_tokens: int) -> dict[str, Any]:
    """The generation_config.json content: greedy, EOS `<|im_end|>`, the tokenizer's pad id."""
    return {
        "do_sample": False,
        "eos_token_id": config.text.eos_token_id,
        "pad_token_id": config.text.pad_token_id,
        "max_new_tokens": max_new_tokens,
    }


def whisper_sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> np.ndarray:
    """Whisper's position table: [length, channels], sines in the first half, cosines in the second."""
    if channels % 2:
        raise ValueError(f"channels must be even for sinusoidal positions, got {channels}")
    increment = math.log(max_timescale) / (channels // 2 - 1)
    inverse = np.exp(-increment * np.arange(channels // 2))
    scaled = np.arange(length)[:, None] * inverse[None, :]
    return np.concatenate([np.sin(scaled), np.cos(scaled)], axis=1).astype(np.float32)


def initial_params(config: Qwen2AudioConfig, seed: int, sinusoid_positions: bool = True) -> Params:
    """Unboxed random parameters; optionally the encoder's position table set to Whisper's sinusoids."""
    params = jax.jit(lambda key: nn.meta.unbox(init_params(config, key)))(jax.random.key(seed))
    if sinusoid_positions:
        table = whisper_sinusoids(config.audio.max_source_positions, config.audio.d_model)
        params["audio_tower"]["embed_positions"] = jnp.asarray(table)
    return params
