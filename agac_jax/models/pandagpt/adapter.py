"""What the model-agnostic `scoring.Scorer` needs from PandaGPT (`interface.ModelAdapter`, DESIGN.md
section 9). Its inputs, as the PandaGPT module reads them (`model.PandaGPT`):
- features: ImageBind's three normalised 2 s fbanks side by side, [128, 3 x 204] for every clip length
  (`fbank.imagebind_clip_features`); silence: the same of a zero waveform of the clip's length;
- the gate slots' sample ranges (`model.slot_sample_ranges`) and validity (the 6 padding frames
  inside each sub-clip hold no audio), so frames map through the ranges and audio no slot reads is
  unheard (`selection.slots_to_frames`);
- prompts `model.prompt_ids` (one AV token);
- with videos (the vision trunk's inputs of each clip's video, `video.video_inputs`, or a video file),
  each clip's ImageBind video vector as the batch's `context`: the AV token is then W(a + v) + 2b, the
  video fixed and the audio gated; without, the token is the audio's alone, W a + b.
Buckets only size the codec frame grids (the features do not grow with the clip): a clip goes to the
smallest of `buckets_seconds` that holds it, and clips longer than the largest bucket are refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np

from agac_jax.models.generate import GenerationSettings
from agac_jax.models.interface import HFTokenizerAdapter, ModelInputs
from agac_jax.models.pandagpt import fbank as kf
from agac_jax.models.pandagpt.model import PandaGPT, PandaGPTConfig, init_params, prompt_ids, slot_sample_ranges
from agac_jax.models.qwen2_audio.prompts import pad_rows
from agac_jax.scoring.sharding import divisible

HOP = 160  # the scorer's bucket unit: frames of 10 ms (max_samples = frames * HOP)


def param_shardings(config: PandaGPTConfig, mesh: Any, rules: Any) -> Any:
    """NamedShardings of PandaGPT's parameters from their logical axis names (ImageBind's: replicated)."""
    boxed = jax.eval_shape(lambda: init_params(config, jax.random.key(0), boxed=True))
    shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed), mesh, rules)
    shapes = nn.meta.unbox(boxed)
    return jax.tree_util.tree_map(lambda sh, leaf: divisible(sh, leaf.shape, mesh), shardings, shapes)


def generation_settings(config: PandaGPTConfig, max_new_tokens: int) -> GenerationSettings:
    """Greedy decoding to Vicuna's EOS (`</s>`), the placeholder id suppressed (PandaGPT's own demo also
    stops at '###'; the answer before EOS is what is scored, and yes/no parsing reads its first word)."""
    llama = config.llama
    return GenerationSettings(max_new_tokens=max_new_tokens, eos_token_ids=(llama.eos_token_id,),
                              pad_token_id=llama.pad_token_id, suppress_tokens=(config.audio_token_id,))


class PandaGPTAdapter(HFTokenizerAdapter):
    """PandaGPT for the `Scorer` (see the module docstring)."""

    kind = "pandagpt"
    min_samples = kf.FRAME_LENGTH  # one 25 ms fbank frame

    def __init__(self, config: PandaGPTConfig, tokenizer: Any, use_video: bool = True):
        """`use_video`: the clips come with their videos, which the model sees beside the audio."""
        self.config = config
        self.model = PandaGPT(config)
        self.tokenizer = tokenizer
        self.uses_video = use_video
        self._video_fn = None
        self.video_cache: dict[str, np.ndarray] = {}

    @classmethod
    def load(cls, directory: str | Path, *, mesh: Any, rules: Any, use_video: bool = True,
             **options: Any) -> tuple["PandaGPTAdapter", Any]:
        """A directory of `checkpoints.convert_to_directory` (or `write_directory`) with a tokenizer
        beside the weights: Vicuna's tokenizer.model, read as PandaGPT does, or a tokenizer.json
        (`checkpoints.load_tokenizer`). The port runs float32 and unrolled: other options are refused."""
        from agac_jax.models.pandagpt.checkpoints import load_pandagpt_directory, load_tokenizer

        defaults = dict(scan_layers=False, remat_layers=False, param_dtype="float32", dtype="float32",
                        prompt_format="chat")
        unsupported = [f"{name}={value!r}" for name, value in options.items() if defaults.get(name, object()) != value]
        if unsupported:
            raise ValueError(f"the PandaGPT port runs float32 and unrolled with its own prompt; got {', '.join(unsupported)}")
        config, params = load_pandagpt_directory(directory)
        del mesh, rules  # placed by the Scorer (the directory is one float32 file)
        return cls(config, load_tokenizer(directory), use_video), params

    @classmethod
    def abstract(cls, config_json: str | Path, *, param_dtype: Any = "float32", dtype: Any = "",
                 scan_layers: bool = False, remat_layers: bool = False) -> "PandaGPTAdapter":
        """The adapter of a pandagpt_config.json alone (no weights, no tokenizer), for planning."""
        import json

        from agac_jax.models.pandagpt.checkpoints import config_from_dict

        if (param_dtype, dtype or param_dtype, scan_layers, remat_layers) != ("float32", "float32", False, False):
            raise ValueError("the PandaGPT port runs float32 and unrolled: plan it with --param_dtype=float32")
        return cls(config_from_dict(json.loads(Path(config_json).read_text())), tokenizer=None)

    def init_params(self, key: Any) -> Any:
        """Random parameters (unboxed) of this config."""
        return init_params(self.config, key)

    def abstract_inputs(self, batch: int, frames: int) -> dict[str, jax.ShapeDtypeStruct]:
        """The shapes of `inputs` for `batch` clips: the sub-clips' fbanks side by side, silence's, and
        the gate slots' validity and sample ranges."""
        del frames
        t = self.config.gate_slots
        features = jax.ShapeDtypeStruct((batch, self.config.imagebind.audio_num_mel_bins, t), np.float32)
        return dict(features=features, mel_lengths=jax.ShapeDtypeStruct((batch,), np.int32), silence_features=features,
                    slot_valid=jax.ShapeDtypeStruct((batch, t), np.bool_),
                    slot_ranges=jax.ShapeDtypeStruct((batch, t, 2), np.int32))

    def generation_settings(self, max_new_tokens: int) -> GenerationSettings:
        return generation_settings(self.config, max_new_tokens)

    def param_shardings(self, mesh: Any, rules: Any) -> Any:
        return param_shardings(self.config, mesh, rules)

    def max_samples(self, buckets_seconds: Sequence[int]) -> int:
        return max(buckets_seconds) * kf.SAMPLE_RATE

    def bucket_frames(self, n_samples: int, buckets_seconds: Sequence[int]) -> int:
        """10 ms frames of the smallest bucket of `buckets_seconds` that holds the clip (the codec grids'
        size; ImageBind's features are 3 x 204 frames for every length)."""
        for seconds in sorted(buckets_seconds):
            if n_samples <= seconds * kf.SAMPLE_RATE:
                return int(seconds) * kf.SAMPLE_RATE // HOP
        return max(buckets_seconds) * kf.SAMPLE_RATE // HOP

    def audio_slots(self, frames: int) -> int:
        """One AV token, whatever the clip's length."""
        del frames
        return 1

    def audio_token_count(self, n_samples: int) -> int:
        del n_samples
        return 1

    def prompt(self, question: str) -> list[int]:
        """PandaGPT's prompt ids of a question, its one AV placeholder included."""
        return prompt_ids(self.tokenizer, question, self.config.llama.bos_token_id, self.config.audio_token_id)

    def text_tokens(self, question: str) -> int:
        """Prompt tokens besides the AV token."""
        return len(self.prompt(question)) - 1

    def audio_offset(self) -> int:
        return self.prompt("").index(self.config.audio_token_id)

    def clip_inputs(self, clip: np.ndarray) -> dict[str, np.ndarray]:
        """One clip's features [128, T], silence's, slot ranges [T, 2] and slot validity [T]."""
        if len(clip) < kf.FRAME_LENGTH:
            raise ValueError(f"a clip of {len(clip)} samples is shorter than one 25 ms fbank frame")
        fbank, bounds = kf.imagebind_clip_features(clip)
        silence, _ = kf.imagebind_clip_features(np.zeros_like(clip))
        ranges = slot_sample_ranges(bounds, self.config.imagebind)
        return dict(features=np.concatenate(list(fbank), axis=1), silence=np.concatenate(list(silence), axis=1),
                    slot_ranges=ranges.astype(np.int32), slot_valid=ranges[:, 1] > ranges[:, 0])

    def inputs(self, clips: Sequence[np.ndarray], questions: Sequence[str], frames: int, *,
               padding_side: str, silence: bool) -> ModelInputs:
        del frames  # the features do not depend on the clip's length
        each = [self.clip_inputs(np.asarray(x, np.float32)) for x in clips]
        ids, mask = pad_rows([self.prompt(q) for q in questions], 0, padding_side)
        return ModelInputs(ids, mask, np.stack([x["features"] for x in each]),
                           np.full((len(clips),), self.config.gate_slots, np.int32),
                           np.stack([x["silence"] for x in each]) if silence else None,
                           {"slot_valid": np.stack([x["slot_valid"] for x in each]),
                            "slot_ranges": np.stack([x["slot_ranges"] for x in each])})

    def video_context(self, params: Any, videos: Sequence[Any]) -> np.ndarray:
        """[n, out]: each video's ImageBind vector (its inputs' unit vectors averaged). A video is its
        vision inputs [15, 3, 2, S, S] (`video.video_inputs`) or a file, read with `load_video_inputs`
        and its vector cached by path (a sweep asks about one video many times)."""
        from agac_jax.models.pandagpt.video import load_video_inputs

        if self._video_fn is None:
            self._video_fn = jax.jit(lambda p, x: self.model.apply({"params": p}, x, method=self.model.video_embedding))
        vectors = []
        for i, v in enumerate(videos):
            if v is None:
                raise ValueError(f"clip {i} has no video, and this model answers with the video (use_video)")
            if isinstance(v, (str, Path)):
                key = str(v)
                if key not in self.video_cache:
                    inputs = load_video_inputs(v, self.config.imagebind.image_size)
                    self.video_cache[key] = np.asarray(self._video_fn(params, inputs))
                vectors.append(self.video_cache[key])
            else:
                vectors.append(np.asarray(self._video_fn(params, np.asarray(v, np.float32))))
        return np.stack(vectors)
