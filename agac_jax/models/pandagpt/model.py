"""PandaGPT (ImageBind + a projection + Vicuna v0 with merged LoRA) in Flax, on the model interface.

PandaGPT hears a clip as ONE LLM token: ImageBind's audio branch embeds each of the clip's three 2 s
sub-clips (`audio.kaldi_fbank.imagebind_clip_features`), the unit vectors are averaged, and
`llama_proj` (Linear 1024 -> 4096, with bias) maps the mean to the token. With video too, the
modalities are summed before the projection's bias is added once per modality: W(a + v) + 2b
(`av_token`). The prompt is [BOS] '### Human: <Img>' [AV token] '</Img> ' question
'\\n### Assistant:', the two text pieces tokenised separately without special tokens
(`prompt_ids`).

The gate domain (DESIGN.md section 9): the scoring program's gate vector runs over the fbank frames
ImageBind reads, clips x 204 slots (`T = clips * audio_target_len`); the audio state handed
between the interface methods is the normalised fbank itself, [T, n_mels]. `gate_audio` mixes the
clip's fbank with silence's (the fbank of a zero waveform over the same windows, so padding is
the same in both) frame by frame, runs ImageBind, averages and projects: it returns [1, D], the
one placeholder row (`audio_slots = 1`). The global score is ImageBind's own attention
(`global_scores`): the audio CLS query's row over the 12 x 19 patches (bias key removed,
renormalised), summed over layers, heads and mel rows, each time column spread evenly over the 16
frames its patches cover. `slot_times` maps every slot to the waveform samples its 25 ms frame
reads; audio that no slot reads is unheard (`unheard_mask`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from agac_jax.models.pandagpt import fbank as kf
from agac_jax.models.pandagpt.imagebind import ImageBind, ImageBindConfig
from agac_jax.models.llama import LlamaConfig, LlamaDecoder, init_cache, lm_head
from agac_jax.scoring.selection import UNHEARD  # noqa: F401  (a frame's score where no ImageBind input reads the audio)

Array = jax.Array
PROMPT_START = "### Human: <Img>"


@dataclasses.dataclass(frozen=True)
class PandaGPTConfig:
    """ImageBind, Vicuna and PandaGPT's own settings (defaults: PandaGPT-7B)."""

    imagebind: ImageBindConfig = ImageBindConfig()
    llama: LlamaConfig = LlamaConfig()
    clips: int = kf.CLIPS_PER_VIDEO
    lora_r: int = 32
    lora_alpha: float = 32.0
    audio_token_id: int = 32000  # the prompt's placeholder id; its own embedding is never read
    dtype: Any = jnp.float32

    @property
    def text(self) -> LlamaConfig:
        """The language model's config under the name `models.generate` and `eval.flops` read."""
        return self.llama

    @property
    def gate_slots(self) -> int:
        """T: fbank frames the gate runs over, clips x 204."""
        return self.clips * self.imagebind.audio_target_len


def prompt_ids(tokenizer: Any, question: str, bos_id: int, audio_token_id: int) -> list[int]:
    """[BOS] '### Human: <Img>' [placeholder] '</Img> ' + question + '\\n### Assistant:' as ids;
    `tokenizer(text, add_special_tokens=False).input_ids` tokenises each text piece."""
    before = tokenizer(PROMPT_START, add_special_tokens=False).input_ids
    after = tokenizer("</Img> " + question + "\n### Assistant:", add_special_tokens=False).input_ids
    return [bos_id, *before, audio_token_id, *after]


def spread_patch_columns(columns: np.ndarray | Array, config: ImageBindConfig) -> Array:
    """[..., time columns] -> [..., target_len] frames: column w's mass spread evenly over frames
    [w * stride, w * stride + kernel)."""
    k, s = config.audio_kernel_size, config.audio_stride
    n_cols = config.audio_patch_grid[1]
    frames = jnp.arange(config.audio_target_len)[:, None]
    starts = s * jnp.arange(n_cols)[None]
    cover = ((frames >= starts) & (frames < starts + k)).astype(jnp.float32) / k  # [frames, cols]
    return jnp.asarray(columns) @ cover.T


def slot_sample_ranges(bounds: np.ndarray, config: ImageBindConfig) -> np.ndarray:
    """[clips, 2] sub-clip sample bounds -> [clips * 204, 2] int: the [start, end) samples each fbank
    slot's 25 ms frame reads; a padding slot (past the sub-clip's frames) reads nothing (start = end)."""
    out = np.zeros((bounds.shape[0], config.audio_target_len, 2), np.int64)
    for k, (a, b) in enumerate(bounds):
        n_frames = max(1 + (int(b - a) - kf.FRAME_LENGTH) // kf.FRAME_SHIFT, 0)
        f = np.arange(config.audio_target_len)
        start = a + kf.FRAME_SHIFT * f
        valid = f < n_frames
        out[k, :, 0] = np.where(valid, start, a)
        out[k, :, 1] = np.where(valid, start + kf.FRAME_LENGTH, a)
    return out.reshape(-1, 2)


def unheard_mask(bounds: np.ndarray, n_samples: int) -> np.ndarray:
    """[n_samples] bool: the samples outside every sub-clip window (the model never reads them)."""
    heard = np.zeros(n_samples, bool)
    for a, b in bounds:
        heard[int(a):int(b)] = True
    return ~heard


class PandaGPT(nn.Module):
    """The model interface of `models.interface` for PandaGPT (see the module docstring)."""

    config: PandaGPTConfig

    def setup(self):
        c = self.config
        self.imagebind = ImageBind(c.imagebind)
        self.llama_proj = nn.Dense(c.llama.hidden_size, dtype=c.dtype, name="llama_proj")
        self.language_model = LlamaDecoder(c.llama, c.dtype)
        self.lm_head = lm_head(c.llama, c.dtype)

    # --- attributes the scoring program reads ---
    @property
    def audio_token_id(self) -> int:
        return self.config.audio_token_id

    @property
    def audio_slots(self) -> int:
        """Placeholder rows one gate vector fills (Qwen2-Audio: one per gate slot)."""
        return 1

    @property
    def num_layers(self) -> int:
        return self.config.llama.num_hidden_layers

    @property
    def num_heads(self) -> int:
        return self.config.llama.num_attention_heads

    def init_cache(self, batch: int, max_len: int):
        return init_cache(self.config.llama, batch, max_len, self.config.dtype)

    # --- the audio path ---
    def encode_audio(self, features: Array, mel_lengths: Array) -> tuple[Array, Array]:
        """features [A, n_mels, clips * 204] (the sub-clips' normalised fbanks side by side), mel_lengths [A]
        -> (the gate-domain state [A, T, n_mels], valid slots [A]). The state is the fbank itself."""
        return jnp.swapaxes(features, 1, 2), mel_lengths.astype(jnp.int32)

    def audio_embedding(self, fbank: Array) -> Array:
        """fbank [clips, n_mels, 204] -> ImageBind's audio vector, the sub-clips' unit vectors averaged [out]."""
        embeddings, _ = self.imagebind.audio(fbank)
        return jnp.mean(embeddings, axis=0)

    def _clips(self, state: Array) -> Array:
        """[T, n_mels] -> [clips, n_mels, 204]."""
        c = self.config
        return state.reshape(c.clips, c.imagebind.audio_target_len, -1).transpose(0, 2, 1)

    def gate_audio(self, gate: Array, audio: Array, silence: Array, context: Array | None = None) -> Array:
        """gate [T], audio/silence [T, n_mels] -> the AV token [1, D] of the gated fbank; with `context`,
        the video's ImageBind vector [out] (`video_embedding`), W(a + v) + 2b as PandaGPT sums them."""
        mixed = gate[:, None] * audio + (1.0 - gate[:, None]) * silence
        return self.av_token(self.audio_embedding(self._clips(mixed)), context)[None]

    def av_token(self, audio_vector: Array | None, video_vector: Array | None) -> Array:
        """PandaGPT's one token from ImageBind vectors [out] of the given modalities: W(sum) + n b, [D]."""
        vectors = [v for v in (audio_vector, video_vector) if v is not None]
        return sum(self.llama_proj(v) for v in vectors)

    def video_embedding(self, frames: Array) -> Array:
        """frames [inputs, 3, 2, 224, 224] (PandaGPT: 5 clips x 3 crops) -> their unit vectors averaged [out]."""
        return jnp.mean(self.imagebind.vision(frames), axis=0)

    def global_scores(self, features: Array) -> Array:
        """features [A, n_mels, T] -> [A, T]: the audio CLS attention over the patches (bias key removed,
        renormalised) summed over layers, heads and mel rows, spread over the frames each time column covers."""
        c = self.config
        a = features.shape[0]
        grid = c.imagebind.audio_patch_grid
        clips = features.reshape(a, features.shape[1], c.clips, -1).transpose(0, 2, 1, 3).reshape(
            a * c.clips, features.shape[1], -1)
        _, rows = self.imagebind.audio(clips)  # [A * clips, layers, heads, rows * cols]
        columns = rows.sum(axis=(1, 2)).reshape(a * c.clips, *grid).sum(axis=1)
        return spread_patch_columns(columns, c.imagebind).reshape(a, -1)

    # --- the language model ---
    def embed_tokens(self, input_ids: Array) -> Array:
        """[B, S] -> [B, S, D]."""
        return self.language_model.embed(input_ids)

    def embed_prompt(self, input_ids: Array, audio: Array, n_tokens: Array, context: Array | None = None) -> Array:
        """input_ids [B, S] with one placeholder each, audio [B, T, n_mels] (the clips' fbank state),
        context [B, out] video vectors or None -> [B, S, D] with each clip's AV token (all slots on) at
        its placeholder."""
        del n_tokens
        if context is None:
            tokens = jax.vmap(lambda state: self.gate_audio(jnp.ones(state.shape[0]), state, state)[0])(audio)
        else:
            tokens = jax.vmap(lambda state, v: self.gate_audio(jnp.ones(state.shape[0]), state, state, v)[0])(
                audio, context)
        embeds = self.embed_tokens(input_ids)
        return jnp.where((input_ids == self.audio_token_id)[..., None], tokens[:, None].astype(embeds.dtype), embeds)

    def decode(self, inputs_embeds: Array, *, positions: Array, mask: Array, cache: Any = None,
               cache_index: Any = None, query_weights: Array | None = None, output_rows: Array | None = None):
        """As `LlamaDecoder.__call__`: -> (hidden [B, S or R, D], cache)."""
        return self.language_model(inputs_embeds, positions=positions, mask=mask, cache=cache,
                                   cache_index=cache_index, query_weights=query_weights, output_rows=output_rows)

    def logits(self, hidden: Array) -> Array:
        """[..., D] -> [..., vocab] float32."""
        return self.lm_head(hidden).astype(jnp.float32)

    def __call__(self, fbank: Array, frames: Array, input_ids: Array) -> Array:
        """For initialisation: every parameter touched once."""
        av = self.av_token(self.audio_embedding(fbank), self.video_embedding(frames))
        hidden, _ = self.decode(self.embed_tokens(input_ids) + av, positions=jnp.arange(input_ids.shape[1])[None],
                                mask=jnp.ones((1, input_ids.shape[1], input_ids.shape[1]), bool))
        return self.logits(hidden)


def init_params(config: PandaGPTConfig, key: Array, *, boxed: bool = False) -> Any:
    """Random parameters of the whole model (unboxed; `boxed`: with their logical axis names)."""
    ib = config.imagebind
    fbank = jnp.zeros((config.clips, ib.audio_num_mel_bins, ib.audio_target_len))
    frames = jnp.zeros((1, 3, ib.video_frames, ib.image_size, ib.image_size))
    variables = PandaGPT(config).init(key, fbank, frames, jnp.zeros((1, 4), jnp.int32))
    return variables["params"] if boxed else nn.meta.unbox(variables["params"])
