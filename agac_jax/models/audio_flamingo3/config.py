"""Frozen configuration of Audio Flamingo 3, read from a Hugging Face `config.json`.

transformers' `AudioFlamingo3Config` holds an `audio_config` (`AudioFlamingo3EncoderConfig`, a Whisper
encoder), a `text_config` (`Qwen2Config`), `audio_token_id` (151669, `<sound>`), `projector_hidden_act`
("gelu") and `projector_bias` (true). Fields a `config.json` leaves out take those classes' defaults,
as transformers does; they are the defaults of the shared `AudioEncoderConfig` and `TextConfig`.

The encoder config has two spellings: transformers 5 writes `num_hidden_layers`, `num_attention_heads`,
`intermediate_size`, `hidden_size` (its `attribute_map` also accepts Whisper's `encoder_layers`,
`encoder_attention_heads`, `encoder_ffn_dim`, `d_model`); both are read here.

Differences from `Qwen2AudioConfig` that matter to the port: the projector is a two-layer MLP with an
activation and optional biases; the placeholder id is `audio_token_id` (not `audio_token_index`); and
the LM head is never tied (`AudioFlamingo3ForConditionalGeneration._tied_weights_keys = None`: the
checkpoint's `lm_head.weight` is the head whatever `tie_word_embeddings` says), so `text.tie_word_embeddings`
is always False here.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping

import jax.numpy as jnp

from agac_jax.models.config import AudioEncoderConfig, Qwen2AudioConfig, TextConfig, dtype_of

MODEL_TYPE = "audioflamingo3"
ENCODER_MODEL_TYPE = "audioflamingo3_encoder"
DEFAULT_AUDIO_TOKEN_ID = 151669
# transformers 5 spelling -> the shared AudioEncoderConfig's (Whisper) field names.
ENCODER_ALIASES = {
    "num_hidden_layers": "encoder_layers",
    "num_attention_heads": "encoder_attention_heads",
    "intermediate_size": "encoder_ffn_dim",
    "hidden_size": "d_model",
}
SUPPORTED_PROJECTOR_ACTS = ("gelu",)


@dataclasses.dataclass(frozen=True)
class AudioFlamingo3Config:
    """The whole model. Same field names as `Qwen2AudioConfig` where they mean the same thing (so the
    shared generation code reads either), plus the projector's activation and bias.

    `dtype`/`param_dtype`/`scan_layers`/`remat_layers`: as `Qwen2AudioConfig` (not in config.json).
    """

    audio: AudioEncoderConfig = dataclasses.field(default_factory=AudioEncoderConfig)
    text: TextConfig = dataclasses.field(default_factory=TextConfig)
    audio_token_id: int = DEFAULT_AUDIO_TOKEN_ID
    projector_hidden_act: str = "gelu"
    projector_bias: bool = True
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    scan_layers: bool = False
    remat_layers: bool = False

    def replace(self, **changes: Any) -> "AudioFlamingo3Config":
        return dataclasses.replace(self, **changes)

    @property
    def window_frames(self) -> int:
        """Mel frames of one encoder window (30 s for the released model: 2 x max_source_positions)."""
        return self.audio.max_mel_frames

    @property
    def window_tokens(self) -> int:
        """Audio tokens of one full window (750 for the released model)."""
        return self.audio.max_mel_frames // 4

    @classmethod
    def from_hf_dict(cls, d: Mapping[str, Any], dtype: Any = jnp.float32, param_dtype: Any = jnp.float32,
                     scan_layers: bool = False) -> "AudioFlamingo3Config":
        """Builds the config from a parsed AF3 `config.json`. The encoder and decoder sections are
        validated by the same rules as Qwen2-Audio's (`Qwen2AudioConfig.from_hf_dict`: GELU encoder
        without embedding scale, default RoPE, no sliding window, SiLU decoder, whole GQA groups)."""
        model_type = d.get("model_type")
        if model_type != MODEL_TYPE:
            raise ValueError(f"config.json has model_type={model_type!r}; expected {MODEL_TYPE!r}")
        audio = encoder_fields(d.get("audio_config") or {})
        text = dict(d.get("text_config") or {})
        text.pop("tie_word_embeddings", None)  # never tied (module docstring)
        shared = Qwen2AudioConfig.from_hf_dict(
            {"model_type": "qwen2_audio", "audio_config": audio, "text_config": text, "tie_word_embeddings": False},
            dtype=dtype, param_dtype=param_dtype, scan_layers=scan_layers)
        act = d.get("projector_hidden_act", "gelu")
        if act not in SUPPORTED_PROJECTOR_ACTS:
            raise ValueError(f"projector_hidden_act={act!r} is not supported (Audio Flamingo 3 uses 'gelu')")
        audio_token_id = d.get("audio_token_id")
        return cls(audio=shared.audio, text=shared.text,
                   audio_token_id=int(DEFAULT_AUDIO_TOKEN_ID if audio_token_id is None else audio_token_id),
                   projector_hidden_act=act, projector_bias=bool(d.get("projector_bias", True)),
                   dtype=dtype_of(dtype), param_dtype=dtype_of(param_dtype), scan_layers=bool(scan_layers))

    @classmethod
    def from_json_file(cls, path: str | os.PathLike[str], **options: Any) -> "AudioFlamingo3Config":
        with open(path) as f:
            return cls.from_hf_dict(json.load(f), **options)

    def to_hf_dict(self) -> dict[str, Any]:
        """The `config.json` content transformers 5 writes for this model (its field spellings)."""
        a = self.audio
        shared = Qwen2AudioConfig(audio=a, text=self.text).to_hf_dict()
        return {
            "architectures": ["AudioFlamingo3ForConditionalGeneration"],
            "model_type": MODEL_TYPE,
            "audio_token_id": self.audio_token_id,
            "projector_hidden_act": self.projector_hidden_act,
            "projector_bias": self.projector_bias,
            "audio_config": {
                "model_type": ENCODER_MODEL_TYPE,
                "num_mel_bins": a.num_mel_bins,
                "num_hidden_layers": a.encoder_layers,
                "num_attention_heads": a.encoder_attention_heads,
                "intermediate_size": a.encoder_ffn_dim,
                "hidden_size": a.d_model,
                "max_source_positions": a.max_source_positions,
                "activation_function": a.activation_function,
                "scale_embedding": a.scale_embedding,
            },
            "text_config": shared["text_config"],
        }


def encoder_fields(audio_config: Mapping[str, Any]) -> dict[str, Any]:
    """An AF3 `audio_config` in the shared `AudioEncoderConfig`'s field names (either spelling; both
    spellings of one field with different values is an error)."""
    out = dict(audio_config)
    for new, old in ENCODER_ALIASES.items():
        if new in out:
            value = out.pop(new)
            if out.get(old, value) != value:
                raise ValueError(f"audio_config has {new}={value!r} and {old}={out[old]!r}, two spellings of one "
                                 "field with different values")
            out[old] = value
    return out
