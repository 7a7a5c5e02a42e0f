"""Voxtral prompts: the ids and features `VoxtralProcessor.apply_chat_template` makes, built here.

The conversation is the model card's: one user turn holding the audio item(s) then the question
(``[{"role": "user", "content": [{"type": "audio", ...}, {"type": "text", "text": question}]}]``).
`VoxtralProcessor` hands it to mistral-common (`MistralCommonBackend` over the directory's `tekken.json`),
whose instruct tokenizer (v7) writes

    <s> [INST] ([BEGIN_AUDIO] [AUDIO] x n_k for each clip k) question-tokens [/INST]

with n_k = 375 x ceil(samples_k / 480 000): the clip is zero-padded to whole 30 s chunks (the tekken
`audio.chunk_length_s`) and counted at `frame_rate` 12.5 tokens a second (8 mel frames of 160 samples
each). There is no system turn and no generation-prompt text: the answer starts after `[/INST]`. The
question is tekken-encoded as plain text (a written "[INST]" or "[AUDIO]" is not a control token; an
empty question adds no token). A batch is padded with `<pad>` on the left (`MistralCommonBackend`'s side).

Here the prompt is built with one `[AUDIO]` per clip (:func:`prompt_ids`) and expanded to each clip's
count (Qwen2-Audio's `expand_audio_ids`), from the tekken tokenizer alone (mistral-common's `Tekkenizer`;
no chat request).

Features: the processor runs `WhisperFeatureExtractor` on the padded clip (whole 30 s chunks), so the
log-mel maximum is taken over the whole padded clip, and cuts the 3000 x K frames into K windows stacked
on the batch axis. :func:`clip_features` computes the same frames with `agac_jax.audio.features.log_mel`
(its window set to K x 3000 frames) and keeps a clip's windows side by side on the frame axis, the layout
`VoxtralForConditionalGeneration.encode_audio` takes; :func:`processor_layout` gives the processor's.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from agac_jax.audio.features import log_mel
from agac_jax.audio.grids import HOP_LENGTH
from agac_jax.cli.errors import UserError
from agac_jax.models.qwen2_audio.prompts import expand_audio_ids, flatten_clips, pad_rows
from agac_jax.models.voxtral.tokenizer import AUDIO, BEGIN_AUDIO, BEGIN_INST, END_INST

Clip = np.ndarray
ClipsPerPrompt = Clip | Sequence[Clip]


class PromptError(UserError, ValueError):
    """A prompt that cannot be built from a checkpoint's files or a question; the message names the file."""


@dataclasses.dataclass(frozen=True)
class VoxtralTokenizer:
    """The directory's tekken tokenizer (mistral-common `Tekkenizer`) and the ids a prompt needs."""

    tekken: object
    bos_id: int
    pad_id: int
    eos_id: int
    begin_inst_id: int
    end_inst_id: int
    begin_audio_id: int
    audio_id: int
    sampling_rate: int
    tokens_per_window: int  # chunk_length_s x frame_rate: 375
    window_samples: int  # chunk_length_s x sampling_rate: 480 000
    path: str

    @property
    def token_samples(self) -> int:
        """Samples per audio token (sampling_rate / frame_rate): 1280."""
        return self.window_samples // self.tokens_per_window

    def encode(self, text: str) -> list[int]:
        """Plain text -> ids (no BOS/EOS; control-token strings stay text)."""
        return list(self.tekken.encode(text, bos=False, eos=False)) if text else []

    def decode(self, ids: Sequence[int]) -> str:
        return self.tekken.decode([int(i) for i in ids])


def load_tokenizer(directory: str | os.PathLike) -> VoxtralTokenizer:
    """The `tekken.json` of a Voxtral directory (the file `VoxtralProcessor` reads), with its audio settings."""
    from mistral_common.tokens.tokenizers.tekken import Tekkenizer

    path = Path(directory) / "tekken.json"
    if not path.is_file():
        raise PromptError(f"{path} not found: Voxtral's tokenizer is mistral-common's tekken.json")
    try:
        tekken = Tekkenizer.from_file(path)
    except (ValueError, KeyError, AssertionError) as error:
        raise PromptError(f"{path} is not a tekken tokenizer mistral-common loads: {error}") from error
    audio = tekken.audio
    if audio is None or not audio.chunk_length_s:
        raise PromptError(f"{path} has no audio section with chunk_length_s: not a Voxtral tokenizer")
    special = tekken.get_special_token
    try:
        ids = dict(begin_inst_id=special(BEGIN_INST), end_inst_id=special(END_INST),
                   begin_audio_id=special(BEGIN_AUDIO), audio_id=special(AUDIO))
    except ValueError as error:
        raise PromptError(f"{path} lacks a special token Voxtral's prompt needs: {error}") from error
    window_samples = int(audio.chunk_length_s * audio.sampling_rate)
    return VoxtralTokenizer(tekken=tekken, bos_id=tekken.bos_id, pad_id=tekken.pad_id, eos_id=tekken.eos_id,
                            sampling_rate=int(audio.sampling_rate),
                            tokens_per_window=audio.num_audio_tokens(window_samples),
                            window_samples=window_samples, path=str(path), **ids)


def audio_token_count(n_samples: int, tokenizer: VoxtralTokenizer) -> int:
    """Placeholders of one clip: tokens_per_window x whole 30 s chunks (mistral-common pads the clip)."""
    if n_samples < 1:
        raise ValueError(f"a clip needs at least one sample, got {n_samples}")
    return tokenizer.tokens_per_window * -(-int(n_samples) // tokenizer.window_samples)


def prompt_ids(tokenizer: VoxtralTokenizer, question: str, num_audios: int = 1) -> list[int]:
    """`<s> [INST] ([BEGIN_AUDIO] [AUDIO]) x num_audios question [/INST]`: one placeholder per clip."""
    if not isinstance(question, str):
        raise TypeError(f"question must be a string, got {type(question).__name__}")
    if num_audios < 1:
        raise ValueError(f"num_audios must be >= 1, got {num_audios}")
    audio = [tokenizer.begin_audio_id, tokenizer.audio_id] * num_audios
    return [tokenizer.bos_id, tokenizer.begin_inst_id, *audio, *tokenizer.encode(question), tokenizer.end_inst_id]


def conversation(question: str, audio_items: Sequence[dict]) -> list[dict]:
    """The model card's conversation: one user turn, the audio items, then the question (none if empty)."""
    content = list(audio_items)
    if question:
        content.append({"type": "text", "text": question})
    return [{"role": "user", "content": content}]


def clip_features(clip: Clip, num_mel_bins: int = 128, window_frames: int = 3000) -> tuple[np.ndarray, int]:
    """(float32 [num_mel_bins, K x window_frames], valid mel frames ceil(n / 160)): the processor's
    features of the clip zero-padded to K whole windows, its windows side by side."""
    n = int(np.asarray(clip).shape[-1])
    k = max(1, -(-n // (window_frames * HOP_LENGTH)))
    features, valid = log_mel(np.asarray(clip), num_mel_bins, pad_to_samples=k * window_frames * HOP_LENGTH,
                              max_frames=k * window_frames)
    return features, valid


@dataclasses.dataclass(frozen=True)
class PromptBatch:
    """Model inputs for B prompts holding A clips in all.

    Attributes:
        input_ids: int64 [B, L], placeholders expanded, left-padded with `<pad>` (unless asked otherwise).
        attention_mask: int64 [B, L].
        input_features: float32 [A, num_mel_bins, K x 3000]: each clip's windows side by side, K the most
            windows of any clip (a shorter clip's extra windows hold its padding value and give no token).
        mel_lengths: int64 [A], each clip's valid mel frames ceil(n / 160).
        num_audio_tokens: int64 [A], each clip's placeholders (375 per window).
        num_windows: int64 [A], each clip's 30 s windows.
    """

    input_ids: np.ndarray
    attention_mask: np.ndarray
    input_features: np.ndarray
    mel_lengths: np.ndarray
    num_audio_tokens: np.ndarray
    num_windows: np.ndarray


def build_prompts(tokenizer: VoxtralTokenizer, questions: str | Sequence[str],
                  clips: ClipsPerPrompt | Sequence[ClipsPerPrompt], *, num_mel_bins: int = 128,
                  window_frames: int = 3000, padding_side: str = "left") -> PromptBatch:
    """One prompt per question with its clips (one array, or a list for several clips in one turn), as
    `VoxtralProcessor.apply_chat_template` builds them (module docstring)."""
    if isinstance(questions, str):
        questions, clips = [questions], [clips]
    questions, clips = list(questions), list(clips)
    if not questions:
        raise ValueError("questions is empty: pass at least one prompt")
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    if window_frames * HOP_LENGTH != tokenizer.window_samples:
        raise PromptError(f"{tokenizer.path} pads audio to {tokenizer.window_samples} samples, but the model's "
                          f"encoder window is {window_frames} mel frames ({window_frames * HOP_LENGTH} samples)")
    counts, flat = flatten_clips(questions, clips)
    rows = [prompt_ids(tokenizer, q, c) for q, c in zip(questions, counts)]
    per_clip = [clip_features(c, num_mel_bins, window_frames) for c in flat]
    windows = np.array([f.shape[1] // window_frames for f, _ in per_clip], np.int64)
    n_tokens = np.array([audio_token_count(np.asarray(c).shape[-1], tokenizer) for c in flat], np.int64)
    frames = int(windows.max()) * window_frames
    features = np.empty((len(flat), num_mel_bins, frames), np.float32)
    for i, (f, _) in enumerate(per_clip):
        features[i, :, : f.shape[1]] = f
        features[i, :, f.shape[1]:] = max(-1.5, float(f.max()) - 2.0)
    mel_lengths = np.array([valid for _, valid in per_clip], np.int64)
    expanded = expand_audio_ids(rows, tokenizer.audio_id, n_tokens.tolist())
    ids, mask = pad_rows(expanded, tokenizer.pad_id, padding_side)
    return PromptBatch(ids, mask, features, mel_lengths, n_tokens, windows)


def processor_layout(batch: PromptBatch, window_frames: int = 3000) -> np.ndarray:
    """The processor's `input_features`: every clip's own windows, stacked on the batch axis in clip
    order, [sum of windows, num_mel_bins, window_frames]."""
    chunks = []
    for features, k in zip(batch.input_features, batch.num_windows):
        for w in range(int(k)):
            chunks.append(features[:, w * window_frames:(w + 1) * window_frames])
    return np.stack(chunks)

