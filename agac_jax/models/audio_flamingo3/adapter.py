"""What the model-agnostic `scoring.Scorer` needs from Audio Flamingo 3 (`interface.ModelAdapter`).

AF3 hears a clip as Qwen2-Audio does within one 30 s window (Whisper log-mel, 40 ms tokens after the
encoder's pooling, keys past the clip masked), so a clip of one window takes Qwen2-Audio's buckets. A
longer clip is cut into 30 s windows: its bucket is the full windows then the last window's own bucket,
and its tokens follow window after window on the same 40 ms grid (a full window is exactly 750 tokens).
Prompts and features are `AudioFlamingo3Processor`'s (`prompts.build_prompts`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np

from agac_jax.audio import features as feats
from agac_jax.audio.grids import HOP_LENGTH, encoder_output_lengths
from agac_jax.models.audio_flamingo3 import checkpoints
from agac_jax.models.audio_flamingo3.config import AudioFlamingo3Config
from agac_jax.models.audio_flamingo3.model import AudioFlamingo3ForConditionalGeneration, init_params
from agac_jax.models.audio_flamingo3.prompts import (ProcessorSettings, audio_token_id, build_prompts,
                                                     load_processor_settings, prompt_ids, split_windows)
from agac_jax.models.generate import GenerationSettings
from agac_jax.models.interface import HFTokenizerAdapter, ModelInputs
from agac_jax.models.qwen2_audio.adapter import MIN_CLIP_SAMPLES, head_counts
from agac_jax.scoring.sharding import logical_shardings


class AudioFlamingo3Adapter(HFTokenizerAdapter):
    """Audio Flamingo 3 for the `Scorer`: config, tokenizer, processor settings and generation defaults."""

    kind = "audio_flamingo3"
    uses_video = False
    min_samples = MIN_CLIP_SAMPLES

    def __init__(self, config: AudioFlamingo3Config, tokenizer: Any, settings: ProcessorSettings | None,
                 generation_config: dict | None = None):
        self.config = config
        self.model = AudioFlamingo3ForConditionalGeneration(config)
        self.tokenizer = tokenizer
        self.settings = settings
        self.generation_config = generation_config or {}

    @classmethod
    def load(cls, directory: str | Path, *, mesh: Any, rules: Any, param_dtype: Any = "float32",
             dtype: Any = "float32", scan_layers: bool = False, remat_layers: bool = False,
             prompt_format: str = "chat", use_video: bool = False) -> tuple["AudioFlamingo3Adapter", Any]:
        """A Hugging Face AF3 directory as downloaded; the processor files are read before any weight."""
        from agac_jax.models.hf_checkpoints import load_tokenizer

        if prompt_format != "chat" or use_video:
            raise ValueError("Audio Flamingo 3 takes its processor's chat prompt, audio only")
        settings = load_processor_settings(directory)
        loaded = checkpoints.load_hf_directory(
            directory, dtype=dtype, param_dtype=param_dtype, scan_layers=scan_layers,
            shardings=lambda config: cls(config, None, None).param_shardings(mesh, rules))
        config = loaded.config.replace(remat_layers=remat_layers)
        return cls(config, load_tokenizer(directory), settings, loaded.generation_config), loaded.params

    @classmethod
    def abstract(cls, config_json: str | Path, *, param_dtype: Any = "bfloat16", dtype: Any = "",
                 scan_layers: bool = False, remat_layers: bool = False) -> "AudioFlamingo3Adapter":
        """The adapter of a config.json alone (no weights, no tokenizer), for planning."""
        config = checkpoints.read_model_config(Path(config_json), dtype=dtype or param_dtype, param_dtype=param_dtype,
                                               scan_layers=scan_layers)
        return cls(config.replace(remat_layers=remat_layers), None, None)

    def init_params(self, key: Any) -> Any:
        return nn.meta.unbox(init_params(self.config, key))

    def abstract_inputs(self, batch: int, frames: int) -> dict[str, jax.ShapeDtypeStruct]:
        features = jax.ShapeDtypeStruct((batch, self.config.audio.num_mel_bins, frames), np.float32)
        return dict(features=features, mel_lengths=jax.ShapeDtypeStruct((batch,), np.int32), silence_features=features)

    def generation_settings(self, max_new_tokens: int) -> GenerationSettings:
        return GenerationSettings.from_hf(self.generation_config, self.config, max_new_tokens=max_new_tokens)

    def param_shardings(self, mesh: Any, rules: Any) -> Any:
        return logical_shardings(lambda: init_params(self.config, jax.random.key(0)), mesh, rules,
                                 head_counts(self.config))

    @property
    def window_frames(self) -> int:
        return self.config.window_frames

    def max_samples(self, buckets_seconds: Sequence[int]) -> int:
        """One window, or as many whole windows as the largest bucket asks (at most the processor's)."""
        window = self.window_frames * HOP_LENGTH
        windows = max(1, -(-max(buckets_seconds) * feats.SAMPLE_RATE // window))
        if self.settings is not None:
            windows = min(windows, self.settings.max_windows)
        return windows * window

    def bucket_frames(self, n_samples: int, buckets_seconds: Sequence[int]) -> int:
        """The full windows before the clip's last one, then the last window's own bucket
        (`features.encoder_bucket_frames`, as Qwen2-Audio's)."""
        window = self.window_frames * HOP_LENGTH
        full = max(0, -(-n_samples // window) - 1)
        return full * self.window_frames + feats.encoder_bucket_frames(n_samples - full * window, buckets_seconds,
                                                                       self.window_frames)

    def audio_slots(self, frames: int) -> int:
        return frames // 4

    def audio_token_count(self, n_samples: int) -> int:
        """`<sound>` copies of a clip: its valid mel frames summed over its windows through the pooling."""
        window = self.window_frames * HOP_LENGTH
        sizes = [min(window, n_samples - start) for start in range(0, max(n_samples, 1), window)]
        return int(encoder_output_lengths(sum(-(-size // HOP_LENGTH) for size in sizes))[1])

    def text_tokens(self, question: str) -> int:
        return len(prompt_ids(self.tokenizer, self.settings, question)) - 1

    def audio_offset(self) -> int:
        return prompt_ids(self.tokenizer, self.settings, "").index(audio_token_id(self.tokenizer, self.settings))

    def inputs(self, clips: Sequence[np.ndarray], questions: Sequence[str], frames: int, *,
               padding_side: str, silence: bool) -> ModelInputs:
        """The processor's prompts and each clip's windows side by side, the last one in its bucket."""
        window = self.window_frames
        last = frames - (frames - 1) // window * window
        for i, clip in enumerate(clips):
            if len(split_windows(np.asarray(clip), self.settings)) != (frames - 1) // window + 1:
                raise ValueError(f"clip {i} of {len(clip)} samples does not fill a bucket of {frames} frames")
        prompts = build_prompts(self.tokenizer, self.settings, list(questions), list(clips), padding_side=padding_side,
                                last_window_frames=last)
        quiet = (feats.silence_log_mel(len(clips), self.config.audio.num_mel_bins, frames, frames)
                 if silence else None)
        return ModelInputs(prompts.input_ids, prompts.attention_mask, prompts.input_features, prompts.mel_lengths, quiet)

    def video_context(self, params: Any, videos: Sequence[Any]) -> np.ndarray:
        raise ValueError("Audio Flamingo 3 hears the audio only: it takes no videos")
