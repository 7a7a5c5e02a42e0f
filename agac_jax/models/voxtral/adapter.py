"""What the model-agnostic `scoring.Scorer` needs from Voxtral (`interface.ModelAdapter`).

Voxtral's audio token is 80 ms (1280 samples), and every clip is zero-padded to whole 30 s windows of
375 tokens each: a 3 s clip takes 375 prompt positions, 38 of which hold its audio. So:
- a clip's bucket is its windows (3000 mel frames each); `buckets_seconds` only bounds the longest clip;
- the gate slots are the window's 375 tokens, each reading its own 1280 samples (`slot_ranges`), and
  only the tokens that read the clip are gated (`slot_valid`): the others hear the padding, and the
  program neither scores them nor maps frames through them. Frames therefore follow the 80 ms grid
  through the slot ranges, and the occlusion window and the smoothing count Voxtral's tokens;
- the audio tokens a record counts are the prompt's positions: 375 per window, so a compressed clip
  costs the LLM as many tokens as its original until it spans fewer windows.
Prompts and features are `VoxtralProcessor`'s (`prompts.build_prompts`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np

from agac_jax.audio import features as feats
from agac_jax.models.generate import GenerationSettings
from agac_jax.models.interface import ModelInputs
from agac_jax.models.voxtral import checkpoints
from agac_jax.models.voxtral.config import VoxtralConfig
from agac_jax.models.voxtral.model import VoxtralForConditionalGeneration, init_params
from agac_jax.models.voxtral.prompts import VoxtralTokenizer, build_prompts, load_tokenizer, prompt_ids
from agac_jax.scoring.sharding import logical_shardings


class VoxtralAdapter:
    """Voxtral for the `Scorer`: config, tekken tokenizer and generation defaults."""

    kind = "voxtral"
    uses_video = False
    min_samples = 1

    def __init__(self, config: VoxtralConfig, tokenizer: VoxtralTokenizer | None,
                 generation_config: dict | None = None):
        self.config = config
        self.model = VoxtralForConditionalGeneration(config)
        self.tokenizer = tokenizer
        self.generation_config = generation_config or {}

    @classmethod
    def load(cls, directory: str | Path, *, mesh: Any, rules: Any, param_dtype: Any = "float32",
             dtype: Any = "float32", scan_layers: bool = False, remat_layers: bool = False,
             prompt_format: str = "chat", use_video: bool = False) -> tuple["VoxtralAdapter", Any]:
        """A Hugging Face Voxtral directory as downloaded (config.json, safetensors shards, tekken.json);
        the tokenizer is read before any weight."""
        if remat_layers or prompt_format != "chat" or use_video:
            raise ValueError("Voxtral takes its own chat prompt, audio only, without rematerialised layers")
        tokenizer = load_tokenizer(directory)
        loaded = checkpoints.load_hf_directory(
            directory, dtype=dtype, param_dtype=param_dtype, scan_layers=scan_layers,
            shardings=lambda config: cls(config, None).param_shardings(mesh, rules))
        return cls(loaded.config, tokenizer, loaded.generation_config), loaded.params

    @classmethod
    def abstract(cls, config_json: str | Path, *, param_dtype: Any = "float32", dtype: Any = "",
                 scan_layers: bool = False, remat_layers: bool = False) -> "VoxtralAdapter":
        """The adapter of a config.json alone (no weights, no tokenizer), for planning."""
        if remat_layers:
            raise ValueError("Voxtral's decoder is not rematerialised")
        config = checkpoints.read_model_config(Path(config_json), dtype=dtype or param_dtype, param_dtype=param_dtype,
                                               scan_layers=scan_layers)
        return cls(config, None)

    def init_params(self, key: Any) -> Any:
        return nn.meta.unbox(init_params(self.config, key))

    def abstract_inputs(self, batch: int, frames: int) -> dict[str, jax.ShapeDtypeStruct]:
        t = self.audio_slots(frames)
        features = jax.ShapeDtypeStruct((batch, self.config.audio.num_mel_bins, frames), np.float32)
        return dict(features=features, mel_lengths=jax.ShapeDtypeStruct((batch,), np.int32), silence_features=features,
                    slot_valid=jax.ShapeDtypeStruct((batch, t), np.bool_),
                    slot_ranges=jax.ShapeDtypeStruct((batch, t, 2), np.int32))

    def generation_settings(self, max_new_tokens: int) -> GenerationSettings:
        return GenerationSettings.from_hf(self.generation_config, self.config, max_new_tokens=max_new_tokens)

    def param_shardings(self, mesh: Any, rules: Any) -> Any:
        text = self.config.text
        heads = {"heads": text.num_attention_heads, "kv_heads": text.num_key_value_heads,
                 "audio_heads": self.config.audio.encoder_attention_heads}
        return logical_shardings(lambda: init_params(self.config, jax.random.key(0)), mesh, rules, heads)

    @property
    def window_samples(self) -> int:
        return self.config.window_frames * feats.HOP_LENGTH

    def max_samples(self, buckets_seconds: Sequence[int]) -> int:
        """Whole windows up to the largest bucket (30 s by default: one window)."""
        windows = max(1, max(buckets_seconds) * feats.SAMPLE_RATE // self.window_samples)
        return windows * self.window_samples

    def bucket_frames(self, n_samples: int, buckets_seconds: Sequence[int]) -> int:
        """The clip's whole 30 s windows, in mel frames (what the encoder reads whatever the clip)."""
        del buckets_seconds
        return max(1, -(-n_samples // self.window_samples)) * self.config.window_frames

    def audio_slots(self, frames: int) -> int:
        return frames // self.config.window_frames * self.config.tokens_per_window

    def audio_token_count(self, n_samples: int) -> int:
        """Prompt positions of a clip's audio: 375 per started 30 s window."""
        return self.audio_slots(self.bucket_frames(max(int(n_samples), 1), ()))

    def text_tokens(self, question: str) -> int:
        """Prompt tokens of a question besides the audio: its prompt less the one placeholder."""
        return len(prompt_ids(self.tokenizer, question)) - 1

    def audio_offset(self) -> int:
        return prompt_ids(self.tokenizer, "").index(self.tokenizer.audio_id)

    @property
    def pad_token_id(self) -> int:
        return self.tokenizer.pad_id

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids).strip()

    def inputs(self, clips: Sequence[np.ndarray], questions: Sequence[str], frames: int, *,
               padding_side: str, silence: bool) -> ModelInputs:
        """The processor's prompts and features of clips of one bucket (`frames`: their whole windows),
        with each gate slot's 1280 samples and whether they hold the clip."""
        c = self.config
        prompts = build_prompts(self.tokenizer, list(questions), list(clips), num_mel_bins=c.audio.num_mel_bins,
                                window_frames=c.window_frames, padding_side=padding_side)
        if prompts.input_features.shape[-1] != frames:
            raise ValueError(f"clips of {prompts.input_features.shape[-1]} frames in a bucket of {frames}")
        t = self.audio_slots(frames)
        starts = np.arange(t, dtype=np.int64) * c.token_samples
        n = np.asarray([len(x) for x in clips], np.int64)[:, None]
        ranges = np.stack([np.broadcast_to(np.minimum(starts, n), (len(clips), t)),
                           np.minimum(starts + c.token_samples, n)], axis=-1).astype(np.int32)
        quiet = feats.silence_log_mel(len(clips), c.audio.num_mel_bins, frames, frames) if silence else None
        return ModelInputs(prompts.input_ids, prompts.attention_mask, prompts.input_features, prompts.mel_lengths,
                           quiet, {"slot_valid": ranges[..., 1] > ranges[..., 0], "slot_ranges": ranges})

    def video_context(self, params: Any, videos: Sequence[Any]) -> np.ndarray:
        raise ValueError("Voxtral hears the audio only: it takes no videos")
