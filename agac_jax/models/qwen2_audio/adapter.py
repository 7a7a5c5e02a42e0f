"""What the model-agnostic `scoring.Scorer` needs from Qwen2-Audio (`interface.ModelAdapter`).

Prompts and features are built the way `Qwen2AudioProcessor` builds them (`prompts.build_prompts`):
Whisper log-mel features padded to the clip's bucket, one `<|AUDIO|>` per 40 ms token. Buckets are
the smallest that give the encoder exactly its full-window result on the clip's valid positions
(`features.encoder_bucket_frames`). Silence is the log-mel of zeros, without an STFT.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np

from agac_jax.audio import features as feats
from agac_jax.audio.grids import audio_tokens_of_samples
from agac_jax.models.config import Qwen2AudioConfig
from agac_jax.models.generate import GenerationSettings
from agac_jax.models.hf_checkpoints import load_tokenizer
from agac_jax.models.interface import HFTokenizerAdapter, ModelInputs
from agac_jax.models.qwen2_audio import checkpoints
from agac_jax.models.qwen2_audio.model import Qwen2AudioForConditionalGeneration, check_placeholder_count, init_params
from agac_jax.models.qwen2_audio.prompts import (DEFAULT_PROMPT_FORMAT, PromptFormat, build_prompts,
                                                 load_prompt_format, prompt_format_of, prompt_ids)
from agac_jax.scoring.sharding import logical_shardings

# The shortest clip the model gives an audio token (321 samples, 20 ms): a shorter one has no audio in
# its prompt, so it is refused as too short.
MIN_CLIP_SAMPLES = next(n for n in range(1, feats.SAMPLE_RATE) if audio_tokens_of_samples(n) >= 1)


def head_counts(config: Qwen2AudioConfig) -> dict[str, int]:
    """Logical head axis -> its number of heads in `config`."""
    return {"heads": config.text.num_attention_heads, "kv_heads": config.text.num_key_value_heads,
            "audio_heads": config.audio.encoder_attention_heads}


def param_shardings(config: Qwen2AudioConfig, mesh: Any, rules: Any) -> Any:
    """NamedShardings of the Qwen2-Audio parameters from their logical axis names and `rules`."""
    return logical_shardings(lambda: init_params(config, jax.random.key(0)), mesh, rules, head_counts(config))


class Qwen2AudioAdapter(HFTokenizerAdapter):
    """Qwen2-Audio for the `Scorer`: config, tokenizer, prompt format and generation defaults."""

    kind = "qwen2_audio"
    uses_video = False
    min_samples = MIN_CLIP_SAMPLES

    def __init__(self, config: Qwen2AudioConfig, tokenizer: Any, generation_config: dict | None = None,
                 prompt_format: PromptFormat | None = None):
        """`prompt_format`: how questions become prompts (`prompts.load_prompt_format`); None: the chat
        format of the directory the tokenizer was loaded from. `generation_config`: the directory's
        generation_config.json (its EOS ids). Without a tokenizer (planning) nothing can be prompted."""
        self.config = config
        self.model = Qwen2AudioForConditionalGeneration(config)
        self.tokenizer = tokenizer
        self.prompt_format = prompt_format or (None if tokenizer is None else prompt_format_of(tokenizer))
        self.generation_config = generation_config or {}
        self.max_frames = config.audio.max_mel_frames  # the encoder's window (3000 = 30 s released)
        self._audio_offset: int | None = None

    @classmethod
    def of(cls, loaded: checkpoints.LoadedModel, tokenizer: Any,
           prompt_format: PromptFormat | None = None) -> "Qwen2AudioAdapter":
        """The adapter of a loaded checkpoint (`checkpoints.load_hf_directory`)."""
        return cls(loaded.config, tokenizer, loaded.generation_config, prompt_format)

    @classmethod
    def load(cls, directory: str | Path, *, mesh: Any, rules: Any, param_dtype: Any = "float32",
             dtype: Any = "float32", scan_layers: bool = False, remat_layers: bool = False,
             prompt_format: str = DEFAULT_PROMPT_FORMAT, use_video: bool = False) -> tuple["Qwen2AudioAdapter", Any]:
        """A Hugging Face directory as downloaded. The prompt format is decided before any weight is
        read; the weights stream tensor by tensor onto their shardings, cast to `param_dtype`; `dtype`
        is the compute dtype; `scan_layers`, `remat_layers` as `Qwen2AudioConfig`'s."""
        if use_video:
            raise ValueError("use_video: Qwen2-Audio hears the audio only")
        fmt = load_prompt_format(directory, prompt_format)
        loaded = checkpoints.load_hf_directory(directory, dtype=dtype, param_dtype=param_dtype, scan_layers=scan_layers,
                                               shardings=lambda config: param_shardings(config, mesh, rules))
        config = loaded.config.replace(remat_layers=remat_layers)
        adapter = cls(config, load_tokenizer(directory), loaded.generation_config, fmt)
        return adapter, loaded.params

    @classmethod
    def abstract(cls, config_json: str | Path, *, param_dtype: Any = "bfloat16", dtype: Any = "",
                 scan_layers: bool = False, remat_layers: bool = False) -> "Qwen2AudioAdapter":
        """The adapter of a config.json alone (no weights, no tokenizer), for planning (`scoring.plan`)."""
        config = Qwen2AudioConfig.from_json_file(str(config_json), dtype=dtype or param_dtype, param_dtype=param_dtype,
                                                 scan_layers=scan_layers)
        return cls(config.replace(remat_layers=remat_layers), tokenizer=None)

    def init_params(self, key: Any) -> Any:
        """Random parameters (unboxed) of this config."""
        return nn.meta.unbox(init_params(self.config, key))

    def abstract_inputs(self, batch: int, frames: int) -> dict[str, jax.ShapeDtypeStruct]:
        """The shapes of `inputs` for `batch` clips of a bucket: log-mel features and silence's."""
        features = jax.ShapeDtypeStruct((batch, self.config.audio.num_mel_bins, frames), np.float32)
        return dict(features=features, mel_lengths=jax.ShapeDtypeStruct((batch,), np.int32), silence_features=features)

    def generation_settings(self, max_new_tokens: int) -> GenerationSettings:
        return GenerationSettings.from_hf(self.generation_config, self.config, max_new_tokens=max_new_tokens)

    def param_shardings(self, mesh: Any, rules: Any) -> Any:
        return param_shardings(self.config, mesh, rules)

    def max_samples(self, buckets_seconds: Sequence[int]) -> int:
        """The encoder's window: `max_source_positions` x 2 mel frames (30 s for the released model)."""
        del buckets_seconds
        return self.max_frames * feats.HOP_LENGTH

    def bucket_frames(self, n_samples: int, buckets_seconds: Sequence[int]) -> int:
        """The smallest bucket that holds every frame the encoder reads for the clip's valid positions
        (`features.encoder_bucket_frames`), or the encoder's whole window."""
        return feats.encoder_bucket_frames(n_samples, buckets_seconds, self.max_frames)

    def audio_slots(self, frames: int) -> int:
        """40 ms tokens of a bucket: the encoder's stride-2 convolution and stride-2 pooling."""
        return frames // 4

    def audio_token_count(self, n_samples: int) -> int:
        return audio_tokens_of_samples(n_samples)

    def text_tokens(self, question: str) -> int:
        """Prompt tokens of a question besides the audio: its prompt's ids less the one placeholder."""
        return len(prompt_ids(self.tokenizer, self.prompt_format, question)) - 1

    def audio_offset(self) -> int:
        """Where the first audio placeholder sits in the prompt of the empty question (the template's
        prefix: a lower bound even for templates that put the question first)."""
        if self._audio_offset is None:
            frames = min(feats.FRAMES_PER_SECOND, self.max_frames)
            prompts = build_prompts(self.tokenizer, [""], [np.zeros(frames * feats.HOP_LENGTH, np.float32)],
                                    prompt_format=self.prompt_format, num_mel_bins=self.config.audio.num_mel_bins,
                                    pad_to_frames=frames, padding_side="right", max_frames=self.max_frames)
            self._audio_offset = int(np.argmax(prompts.input_ids[0] == self.config.audio_token_id))
        return self._audio_offset

    def inputs(self, clips: Sequence[np.ndarray], questions: Sequence[str], frames: int, *,
               padding_side: str, silence: bool) -> ModelInputs:
        """The processor's prompts and log-mel features of clips of one bucket (`frames`)."""
        n_mels = self.config.audio.num_mel_bins
        prompts = build_prompts(self.tokenizer, list(questions), list(clips), prompt_format=self.prompt_format,
                                num_mel_bins=n_mels, pad_to_frames=frames, padding_side=padding_side,
                                max_frames=self.max_frames)
        check_placeholder_count(prompts.input_ids, prompts.num_audio_tokens, self.config.audio_token_id)
        quiet = feats.silence_log_mel(len(clips), n_mels, frames, self.max_frames) if silence else None
        return ModelInputs(prompts.input_ids, prompts.attention_mask, prompts.input_features,
                           prompts.feature_attention_mask.sum(axis=1), quiet)

    def video_context(self, params: Any, videos: Sequence[Any]) -> np.ndarray:
        raise ValueError("Qwen2-Audio hears the audio only: it takes no videos")
