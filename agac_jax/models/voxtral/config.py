"""Frozen Voxtral configuration read from a Hugging Face `config.json` (`model_type` "voxtral").

The encoder is the shared Whisper-style `AudioEncoderConfig` (`models.config`); the decoder config is
the shared `LlamaConfig` (`models.llama`) with Mistral's explicit `head_dim` (128 in Voxtral-Mini-3B-2507,
not hidden_size / heads = 96). Fields missing from config.json take transformers' defaults: those of
`VoxtralEncoderConfig` for `audio_config` and `VoxtralConfig.sub_configs_defaults` over `LlamaConfig` for
`text_config` (the released file lists most of them anyway).

transformers writes the encoder fields under their canonical names (`hidden_size`, `intermediate_size`,
`num_hidden_layers`, `num_attention_heads`) and reads the Whisper names (`d_model`, `encoder_ffn_dim`,
`encoder_layers`, `encoder_attention_heads`) as aliases; both are accepted here.

The audio token: the encoder's 1500 states per 30 s window are stacked `intermediate_size // hidden_size`
at a time (4 in the released model: transformers reshapes them to rows of `intermediate_size`) before the
projector, so one audio token is 4 encoder frames = 8 mel frames = 1280 samples = 80 ms (12.5 a second).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping

import jax.numpy as jnp

from agac_jax.audio.grids import HOP_LENGTH  # samples per mel frame (16 kHz, Whisper's extractor)
from agac_jax.models.config import AudioEncoderConfig, dtype_of
from agac_jax.models.llama import LlamaConfig

CONV_STRIDE = 2  # mel frames per encoder frame (conv2's stride)

# transformers' VoxtralEncoderConfig: canonical name -> the Whisper name AudioEncoderConfig uses.
_ENCODER_ALIASES = {"hidden_size": "d_model", "intermediate_size": "encoder_ffn_dim",
                    "num_hidden_layers": "encoder_layers", "num_attention_heads": "encoder_attention_heads"}
# VoxtralConfig.sub_configs_defaults["text_config"]: applied over LlamaConfig's defaults.
TEXT_DEFAULTS: dict[str, Any] = {"vocab_size": 131072, "hidden_size": 3072, "intermediate_size": 8192,
                                 "num_hidden_layers": 30, "num_key_value_heads": 8, "max_position_embeddings": 131072,
                                 "rms_norm_eps": 1e-05, "rope_theta": 100000000.0, "head_dim": 128}


def voxtral_encoder_config(**fields: Any) -> AudioEncoderConfig:
    """`AudioEncoderConfig` with transformers' `VoxtralEncoderConfig` defaults (they equal Whisper
    large-v3's, which the shared config's defaults already are)."""
    return AudioEncoderConfig(**fields)


@dataclasses.dataclass(frozen=True)
class VoxtralTextConfig(LlamaConfig):
    """The Llama decoder of Voxtral: `LlamaConfig` with an explicit head width and Voxtral's defaults.

    `head_dim` 0 means hidden_size // num_attention_heads (transformers' `LlamaConfig` with head_dim None).
    """

    vocab_size: int = 131072
    hidden_size: int = 3072
    intermediate_size: int = 8192
    num_hidden_layers: int = 30
    num_attention_heads: int = 32
    num_key_value_heads: int = 8
    rms_norm_eps: float = 1e-5
    rope_theta: float = 100000000.0
    max_position_embeddings: int = 131072
    bos_token_id: int | None = 1
    eos_token_id: int | tuple[int, ...] | None = 2
    pad_token_id: int | None = None
    head_dim: int = 128

    @property
    def attention_head_dim(self) -> int:
        return self.head_dim or self.hidden_size // self.num_attention_heads


@dataclasses.dataclass(frozen=True)
class VoxtralConfig:
    """The whole model: Whisper encoder, 4-frame stacking, projector, Llama decoder, placeholder id.

    `dtype` is the compute dtype; `param_dtype` the parameters' (bfloat16 halves the 3B's 19 GB).
    `scan_layers` / `remat_layers` are refused: the shared LLaMA decoder has neither; they exist so the
    scoring tools can read them.
    """

    audio: AudioEncoderConfig = dataclasses.field(default_factory=AudioEncoderConfig)
    text: VoxtralTextConfig = dataclasses.field(default_factory=VoxtralTextConfig)
    audio_token_id: int = 24
    projector_hidden_act: str = "gelu"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    scan_layers: bool = False
    remat_layers: bool = False

    def __post_init__(self):
        a = self.audio
        if a.encoder_ffn_dim % a.d_model:
            raise ValueError(f"audio_config.intermediate_size={a.encoder_ffn_dim} is not a multiple of "
                             f"hidden_size={a.d_model}: transformers stacks encoder frames into rows of "
                             "intermediate_size, so it must be")
        if a.max_source_positions % self.frames_per_stack:
            raise ValueError(f"audio_config.max_source_positions={a.max_source_positions} is not a multiple of "
                             f"the {self.frames_per_stack} encoder frames stacked into one audio token")
        if self.scan_layers or self.remat_layers:
            raise ValueError("scan_layers / remat_layers are not supported by Voxtral's port (the shared LLaMA "
                             "decoder has neither)")

    # --- the audio token grid ---

    @property
    def frames_per_stack(self) -> int:
        """Encoder frames concatenated into one projector input (intermediate_size // hidden_size: 4)."""
        return self.audio.encoder_ffn_dim // self.audio.d_model

    @property
    def frames_per_token(self) -> int:
        """Mel frames per audio token: 8 (80 ms)."""
        return CONV_STRIDE * self.frames_per_stack

    @property
    def token_samples(self) -> int:
        """16 kHz samples per audio token: 1280 (80 ms)."""
        return HOP_LENGTH * self.frames_per_token

    @property
    def window_frames(self) -> int:
        """Mel frames of one encoder window (2 x max_source_positions: 3000, 30 s)."""
        return self.audio.max_mel_frames

    @property
    def window_samples(self) -> int:
        return HOP_LENGTH * self.window_frames

    @property
    def tokens_per_window(self) -> int:
        """Audio tokens of one 30 s window: 375."""
        return self.audio.max_source_positions // self.frames_per_stack

    def replace(self, **changes: Any) -> "VoxtralConfig":
        return dataclasses.replace(self, **changes)

    # --- config.json ---

    @classmethod
    def from_hf_dict(cls, d: Mapping[str, Any], dtype: Any = jnp.float32, param_dtype: Any = jnp.float32,
                     scan_layers: bool = False) -> "VoxtralConfig":
        """From the parsed config.json of a Voxtral checkpoint (and the run's dtypes)."""
        if d.get("model_type") != "voxtral":
            raise ValueError(f"config.json has model_type={d.get('model_type')!r}; expected 'voxtral'")
        audio = _encoder_config(d.get("audio_config") or {})
        text = _text_config(d.get("text_config") or {})
        act = d.get("projector_hidden_act", "gelu")
        if act != "gelu":
            raise ValueError(f"projector_hidden_act={act!r} is not supported (Voxtral uses 'gelu')")
        audio_token_id = d.get("audio_token_id", d.get("audio_token_index"))
        if audio_token_id is None:
            raise ValueError("config.json has no audio_token_id")
        return cls(audio=audio, text=text, audio_token_id=int(audio_token_id), projector_hidden_act=act,
                   dtype=dtype_of(dtype), param_dtype=dtype_of(param_dtype), scan_layers=bool(scan_layers))

    @classmethod
    def from_json_file(cls, path: str | os.PathLike[str], **options: Any) -> "VoxtralConfig":
        with open(path, encoding="utf-8") as f:
            return cls.from_hf_dict(json.load(f), **options)

    def to_hf_dict(self) -> dict[str, Any]:
        """The config.json content (canonical transformers 5 names) for this model."""
        a, t = self.audio, self.text
        text = {
            "model_type": "llama", "vocab_size": t.vocab_size, "hidden_size": t.hidden_size,
            "intermediate_size": t.intermediate_size, "num_hidden_layers": t.num_hidden_layers,
            "num_attention_heads": t.num_attention_heads, "num_key_value_heads": t.num_key_value_heads,
            "head_dim": t.attention_head_dim, "rms_norm_eps": t.rms_norm_eps,
            "rope_parameters": {"rope_theta": t.rope_theta, "rope_type": "default"},
            "max_position_embeddings": t.max_position_embeddings, "hidden_act": "silu", "attention_bias": False,
            "mlp_bias": False, "tie_word_embeddings": False, "bos_token_id": t.bos_token_id,
            "eos_token_id": list(t.eos_token_id) if isinstance(t.eos_token_id, tuple) else t.eos_token_id,
            "pad_token_id": t.pad_token_id,
        }
        audio = {
            "model_type": "voxtral_encoder", "hidden_size": a.d_model, "intermediate_size": a.encoder_ffn_dim,
            "num_hidden_layers": a.encoder_layers, "num_attention_heads": a.encoder_attention_heads,
            "num_mel_bins": a.num_mel_bins, "max_source_positions": a.max_source_positions,
            "activation_function": a.activation_function, "scale_embedding": a.scale_embedding,
        }
        return {"architectures": ["VoxtralForConditionalGeneration"], "model_type": "voxtral",
                "audio_token_id": self.audio_token_id, "projector_hidden_act": self.projector_hidden_act,
                "audio_config": audio, "text_config": text}


def _encoder_config(d: Mapping[str, Any]) -> AudioEncoderConfig:
    fields = {_ENCODER_ALIASES.get(k, k): v for k, v in d.items() if v is not None}
    names = {f.name for f in dataclasses.fields(AudioEncoderConfig)}
    audio = voxtral_encoder_config(**{k: v for k, v in fields.items() if k in names})
    if audio.activation_function != "gelu":
        raise ValueError(f"audio_config.activation_function={audio.activation_function!r} is not supported "
                         "(Voxtral uses 'gelu')")
    if audio.scale_embedding:
        raise ValueError("audio_config.scale_embedding=true is not supported (Voxtral uses false)")
    return audio


def _text_config(d: Mapping[str, Any]) -> VoxtralTextConfig:
    fields = dict(TEXT_DEFAULTS)
    fields.update({k: v for k, v in d.items() if v is not None or k in ("head_dim", "pad_token_id")})
    rope = fields.pop("rope_parameters", None) or fields.pop("rope_scaling", None) or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise ValueError(f"text_config rope_type={rope_type!r} is not supported; only 'default' RoPE is ported")
    if "rope_theta" in rope:
        fields["rope_theta"] = rope["rope_theta"]
    for key, want in (("hidden_act", "silu"), ("attention_bias", False), ("mlp_bias", False)):
        if fields.get(key, want) != want:
            raise ValueError(f"text_config.{key}={fields[key]!r} is not supported (Voxtral's Llama uses {want!r})")
    # tie_word_embeddings is ignored: transformers' VoxtralForConditionalGeneration declares no tied
    # weights, so its head is the checkpoint's lm_head.weight whatever the flag says.
    if fields.get("head_dim") is None:
        fields["head_dim"] = 0
    if isinstance(fields.get("eos_token_id"), list):
        fields["eos_token_id"] = tuple(fields["eos_token_id"])
    names = {f.name for f in dataclasses.fields(VoxtralTextConfig)}
    text = VoxtralTextConfig(**{k: v for k, v in fields.items() if k in names})
    if text.num_attention_heads % text.num_key_value_heads:
        raise ValueError(f"num_attention_heads={text.num_attention_heads} is not a multiple of "
                         f"num_key_value_heads={text.num_key_value_heads}")
    return text
