"""Frozen model configuration read from a Hugging Face Qwen2-Audio `config.json`.

Every size of the Flax port comes from here. Fields missing from a checkpoint's `config.json` take the
defaults of transformers' `Qwen2AudioEncoderConfig` and `Qwen2Config`, as transformers does when it
loads the same file (the released Qwen2-Audio-7B config lists only the fields that differ).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping

import jax.numpy as jnp


DTYPES: dict[str, Any] = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def dtype_of(name: Any) -> Any:
    """'float32' | 'bfloat16' (or a dtype) -> the jnp dtype; the names the configs and CLIs take."""
    if isinstance(name, str):
        if name not in DTYPES:
            raise ValueError(f"dtype {name!r} is not supported; choose one of {tuple(DTYPES)}")
        return DTYPES[name]
    for value in DTYPES.values():
        if jnp.dtype(name) == jnp.dtype(value):
            return value
    raise ValueError(f"dtype {name!r} is not supported; choose one of {tuple(DTYPES)}")


@dataclasses.dataclass(frozen=True)
class AudioEncoderConfig:
    """Whisper-style audio encoder (`Qwen2AudioEncoderConfig`)."""

    num_mel_bins: int = 128
    encoder_layers: int = 32
    encoder_attention_heads: int = 20
    encoder_ffn_dim: int = 5120
    d_model: int = 1280
    max_source_positions: int = 1500
    activation_function: str = "gelu"
    scale_embedding: bool = False

    @property
    def max_mel_frames(self) -> int:
        """Mel frames of a full window: conv2 halves the frame rate, so 2 x max_source_positions."""
        return 2 * self.max_source_positions


@dataclasses.dataclass(frozen=True)
class TextConfig:
    """Qwen2 decoder (`Qwen2Config`)."""

    vocab_size: int = 151936
    hidden_size: int = 4096
    intermediate_size: int = 22016
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int = 32
    head_dim: int = 0  # 0: hidden_size // num_attention_heads
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    max_position_embeddings: int = 32768
    tie_word_embeddings: bool = False
    hidden_act: str = "silu"
    bos_token_id: int | None = None
    eos_token_id: int | tuple[int, ...] | None = None
    pad_token_id: int | None = None

    @property
    def attention_head_dim(self) -> int:
        return self.head_dim or self.hidden_size // self.num_attention_heads

    @property
    def kv_groups(self) -> int:
        return self.num_attention_heads // self.num_key_value_heads


@dataclasses.dataclass(frozen=True)
class Qwen2AudioConfig:
    """The whole model: audio encoder, projector, decoder and the placeholder token id.

    `dtype` is the compute dtype and `param_dtype` the dtype the parameters are held in (both float32
    by default, the CPU and parity setting; bfloat16 for the 7B on GPUs and TPUs: 16.8 GB of weights
    instead of 33.6). Softmax, RMSNorm statistics and the logits are float32 whatever they are.
    `scan_layers`: run the decoder layers as one `nn.scan` (parameters stacked, see `models.decoder`).
    `remat_layers`: rematerialise each decoder layer in gradients (integrated gradients keep every
    layer's input only); the parameters and results do not change. Neither is in config.json.
    """

    audio: AudioEncoderConfig = dataclasses.field(default_factory=AudioEncoderConfig)
    text: TextConfig = dataclasses.field(default_factory=TextConfig)
    audio_token_id: int = 151646
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    scan_layers: bool = False
    remat_layers: bool = False

    def replace(self, **changes: Any) -> "Qwen2AudioConfig":
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_hf_dict(cls, d: Mapping[str, Any], dtype: Any = jnp.float32, param_dtype: Any = jnp.float32,
                     scan_layers: bool = False) -> "Qwen2AudioConfig":
        """Builds the config from the parsed `config.json` of a Qwen2-Audio checkpoint (and the run's
        dtypes, 'float32' | 'bfloat16' or jnp dtypes, and layer-scan choice, which config.json does not hold)."""
        model_type = d.get("model_type")
        if model_type != "qwen2_audio":
            raise ValueError(f"config.json has model_type={model_type!r}; expected 'qwen2_audio'")
        audio = _take(AudioEncoderConfig, d.get("audio_config") or {})
        if audio.activation_function != "gelu":
            raise ValueError(f"audio_config.activation_function={audio.activation_function!r} is not supported "
                       "(Qwen2-Audio uses 'gelu')")
        if audio.scale_embedding:
            raise ValueError("audio_config.scale_embedding=true is not supported (Qwen2-Audio uses false)")
        text_dict = dict(d.get("text_config") or {})
        rope = text_dict.pop("rope_parameters", None) or text_dict.pop("rope_scaling", None) or {}
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type != "default":
            raise ValueError(f"text_config rope_type={rope_type!r} is not supported; only 'default' RoPE is ported")
        if "rope_theta" in rope:
            text_dict["rope_theta"] = rope["rope_theta"]
        if text_dict.get("use_sliding_window"):
            raise ValueError("text_config.use_sliding_window=true is not supported by the Flax port")
        if text_dict.get("head_dim") is None:
            text_dict.pop("head_dim", None)
        eos = text_dict.get("eos_token_id")
        if isinstance(eos, list):
            text_dict["eos_token_id"] = tuple(eos)
        text = _take(TextConfig, text_dict)
        if text.hidden_act != "silu":
            raise ValueError(f"text_config.hidden_act={text.hidden_act!r} is not supported (Qwen2 uses 'silu')")
        if text.num_attention_heads % text.num_key_value_heads:
            raise ValueError(f"num_attention_heads={text.num_attention_heads} is not a multiple of "
                       f"num_key_value_heads={text.num_key_value_heads}")
        audio_token_id = d.get("audio_token_index", d.get("audio_token_id", 151646))
        tie = d.get("tie_word_embeddings", text_dict.get("tie_word_embeddings", False))
        text = dataclasses.replace(text, tie_word_embeddings=bool(tie))
        return cls(audio=audio, text=text, audio_token_id=int(audio_token_id), dtype=dtype_of(dtype),
                   param_dtype=dtype_of(param_dtype), scan_layers=bool(scan_layers))

    @classmethod
    def from_json_file(cls, path: str | os.PathLike[str], dtype: Any = jnp.float32, param_dtype: Any = jnp.float32,
                       scan_layers: bool = False) -> "Qwen2AudioConfig":
        with open(path) as f:
            return cls.from_hf_dict(json.load(f), dtype=dtype, param_dtype=param_dtype, scan_layers=scan_layers)

    def to_hf_dict(self) -> dict[str, Any]:
        """The `config.json` content transformers 5 writes for this model."""
        a, t = self.audio, self.text
        text = {
                "model_type": "qwen2",
                "vocab_size": t.vocab_size,
                "hidden_size": t.hidden_size,
                "intermediate_size": t.intermediate_size,
                "num_hidden_layers": t.num_hidden_layers,
                "num_attention_heads": t.num_attention_heads,
                "num_key_value_heads": t.num_key_value_heads,
                "rms_norm_eps": t.rms_norm_eps,
                "rope_parameters": {"rope_theta": t.rope_theta, "rope_type": "default"},
                "max_position_embeddings": t.max_position_embeddings,
                "tie_word_embeddings": t.tie_word_embeddings,
                "hidden_act": t.hidden_act,
                "use_sliding_window": False,
                "bos_token_id": t.bos_token_id,
                "eos_token_id": list(t.eos_token_id) if isinstance(t.eos_token_id, tuple) else t.eos_token_id,
                "pad_token_id": t.pad_token_id,
        }
        if t.head_dim:
            text["head_dim"] = t.head_dim
        return {
                "architectures": ["Qwen2AudioForConditionalGeneration"],
                "model_type": "qwen2_audio",
                "audio_token_index": self.audio_token_id,
                "tie_word_embeddings": t.tie_word_embeddings,
                "audio_config": {"model_type": "qwen2_audio_encoder", **dataclasses.asdict(a)},
                "text_config": text,
        }


def _take(cls: type, d: Mapping[str, Any]) -> Any:
    """Instantiates dataclass `cls` from the keys of `d` it knows; the rest are HF-only fields."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in d.items() if k in names and v is not None})
