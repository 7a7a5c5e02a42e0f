"""Audio Flamingo 3 prompts: the ids and features `AudioFlamingo3Processor` builds, from a directory's files.

What the processor does (transformers' `processing_audioflamingo3.py`), and where it differs from
Qwen2-Audio's (`qwen2_audio.prompts`):

- Chat template: the processor's own (`chat_template.jinja`, or a `chat_template` key in
  `processor_config.json` / `chat_template.json`: the same lookup as `qwen2_audio.prompts.processor_chat_template`).
  The released one writes a default system turn, then per user turn ONE `<sound>` (when the turn holds
  any audio item) followed by the turn's texts concatenated, then `<|im_start|>assistant\\n`. There is
  no default template: a directory without one is refused. The conversation is the model card's: one
  user turn `[{"type": "text", ...}, {"type": "audio", ...}]`, one clip per prompt (the processor
  requires as many texts as audios).
- Windows: a clip of n samples is cut into ceil(n / 480 000) windows of 30 s (at least one; at most
  `max_audio_len / chunk_length`, 20 for 600 s, the rest dropped); each window goes through
  WhisperFeatureExtractor on its own (padded to 30 s, its own log-mel maximum).
- Placeholders: `<sound>` becomes `((L - 1) // 2 + 1 - 2) // 2 + 1` copies, L the clip's valid mel
  frames summed over its windows (Qwen2-Audio: one window, the same formula).
- Padding: left by default (the processor sets `padding_side="left"` unless told otherwise; Qwen2-Audio
  follows the tokenizer, "right").

`build_prompts` returns the features of each clip's windows side by side on the frame axis, the layout
`model.AudioFlamingo3ForConditionalGeneration.encode_audio` takes; `PromptBatch.processor_windows`
gives them back in the processor's layout (one row per window).
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from transformers import PreTrainedTokenizerBase

from agac_jax.audio.features import SILENCE_LOG_MEL, batch_log_mel, check_pad_to_frames, encoder_frames_needed
from agac_jax.audio.grids import HOP_LENGTH, N_FFT, SAMPLE_RATE, encoder_output_lengths
from agac_jax.models.qwen2_audio.prompts import PromptError, expand_audio_ids, pad_rows, processor_chat_template

AUDIO_TOKEN = "<sound>"
DEFAULT_PADDING_SIDE = "left"


@dataclasses.dataclass(frozen=True)
class ProcessorSettings:
    """What the directory's processor files say (processor_config.json, with the feature extractor nested
    in transformers 5, or preprocessor_config.json), with `AudioFlamingo3Processor`'s defaults."""

    chat_template: str
    template_source: str
    audio_token: str = AUDIO_TOKEN
    max_audio_len: float = 600
    chunk_length: int = 30
    sampling_rate: int = SAMPLE_RATE
    feature_size: int = 128

    @property
    def window_samples(self) -> int:
        return int(self.sampling_rate * self.chunk_length)

    @property
    def window_frames(self) -> int:
        return self.window_samples // HOP_LENGTH

    @property
    def max_windows(self) -> int:
        return int(self.max_audio_len // self.chunk_length)


def _json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise PromptError(f"{path} is not valid JSON ({error})") from error
    if not isinstance(value, dict):
        raise PromptError(f"{path} holds a JSON {type(value).__name__}, not an object")
    return value


def load_processor_settings(directory: str | Path) -> ProcessorSettings:
    """The processor settings of a checkpoint directory; PromptError when it has no chat template or its
    feature extractor is not the Whisper one this port computes (16 kHz, hop 160, n_fft 400, no dither,
    zero padding)."""
    directory = Path(directory)
    found = processor_chat_template(directory)
    if found is None:
        raise PromptError(f"{directory} has no processor chat template (chat_template.jinja): "
                          "AudioFlamingo3Processor has no default one")
    processor = _json(directory / "processor_config.json") if (directory / "processor_config.json").is_file() else {}
    extractor = processor.get("feature_extractor")
    if extractor is None:
        path = directory / "preprocessor_config.json"
        if not path.is_file():
            raise PromptError(f"{directory} has neither processor_config.json with a feature_extractor nor "
                              "preprocessor_config.json")
        extractor = _json(path)
    expected = {"sampling_rate": SAMPLE_RATE, "hop_length": HOP_LENGTH, "n_fft": N_FFT, "dither": 0.0,
                "padding_value": 0.0}
    for key, value in expected.items():
        if extractor.get(key, value) != value:
            raise PromptError(f"{directory}: feature extractor {key}={extractor[key]!r} is not supported "
                              f"(the port computes Whisper features with {key}={value!r})")
    if extractor.get("feature_extractor_type", "WhisperFeatureExtractor") != "WhisperFeatureExtractor":
        raise PromptError(f"{directory}: feature extractor {extractor['feature_extractor_type']!r} is not "
                          "WhisperFeatureExtractor")
    return ProcessorSettings(
        chat_template=found[0], template_source=found[1],
        audio_token=processor.get("audio_token", AUDIO_TOKEN),
        max_audio_len=processor.get("max_audio_len", 600),
        chunk_length=int(extractor.get("chunk_length", 30)),
        sampling_rate=int(extractor.get("sampling_rate", SAMPLE_RATE)),
        feature_size=int(extractor.get("feature_size", 80)))


def conversation(question: str) -> list[dict]:
    """The model card's single turn: the question, then the audio item (a placeholder reference: the
    template only looks at the item's type)."""
    if not isinstance(question, str):
        raise TypeError(f"question must be a string, got {type(question).__name__}")
    return [{"role": "user", "content": [{"type": "text", "text": question}, {"type": "audio", "path": "clip"}]}]


def prompt_ids(tokenizer: PreTrainedTokenizerBase, settings: ProcessorSettings, question: str) -> list[int]:
    """The prompt's ids with one unexpanded `<sound>`, ending where the answer starts. Control tokens
    written in the question are encoded as text (`sanitize_control_tokens=True`, on both sides of parity)."""
    import jinja2

    audio_id = audio_token_id(tokenizer, settings)
    try:
        encoded = tokenizer.apply_chat_template(conversation(question), chat_template=settings.chat_template,
                                                add_generation_prompt=True, tokenize=True,
                                                sanitize_control_tokens=True, return_dict=True)
    except (jinja2.TemplateError, TypeError, KeyError, AttributeError) as error:
        raise PromptError(f"the chat template of {settings.template_source} does not render an audio "
                          f"conversation ({type(error).__name__}: {error})") from error
    ids = list(encoded["input_ids"])
    if ids.count(audio_id) != 1:
        raise PromptError(f"the chat template of {settings.template_source} places {ids.count(audio_id)} "
                          f"{settings.audio_token} for one audio item; it must place one")
    return ids


def audio_token_id(tokenizer: PreTrainedTokenizerBase, settings: ProcessorSettings) -> int:
    token_id = tokenizer.convert_tokens_to_ids(settings.audio_token)
    if token_id is None or token_id == tokenizer.unk_token_id:
        raise PromptError(f"the tokenizer has no {settings.audio_token} token: not an Audio Flamingo 3 tokenizer")
    if tokenizer.pad_token is None:
        raise PromptError("the tokenizer has no pad token, needed to pad a batch of prompts")
    return int(token_id)


def split_windows(clip: np.ndarray, settings: ProcessorSettings) -> list[np.ndarray]:
    """The processor's windows of one clip: ceil(n / window) of them (at least one), the last shorter,
    at most `settings.max_windows` (audio past them is dropped, with a warning, as the processor does)."""
    clip = np.asarray(clip)
    if clip.ndim != 1 or clip.size == 0:
        raise ValueError(f"a clip must be a non-empty 1-D waveform, got shape {clip.shape}")
    window = settings.window_samples
    n_win = max(1, -(-clip.size // window))
    if n_win > settings.max_windows:
        warnings.warn(f"audio of {clip.size / settings.sampling_rate:.1f} s exceeds {settings.max_audio_len} s; "
                      f"only its first {settings.max_audio_len} s are used (as AudioFlamingo3Processor does)")
        n_win = settings.max_windows
    return [clip[i * window: min((i + 1) * window, clip.size)] for i in range(n_win)]


@dataclasses.dataclass(frozen=True)
class PromptBatch:
    """Model inputs for B prompts of one clip each.

    Attributes:
        input_ids: int64 [B, L], `<sound>` expanded, padded with the tokenizer's pad id.
        attention_mask: int64 [B, L].
        input_features: float32 [B, n_mels, P]: each clip's windows side by side (P = (W - 1) x window
            frames + the last column's frames, W the most windows of a clip); windows a clip does not
            reach hold silence.
        feature_attention_mask: int32 [B, P], 1 on valid frames (every window's, in place).
        mel_lengths: int64 [B], valid frames of each clip (summed over its windows).
        num_windows: int64 [B].
        num_audio_tokens: int64 [B], `<sound>` tokens of each clip.
        window_frames: frames of one full window (3000).
    """

    input_ids: np.ndarray
    attention_mask: np.ndarray
    input_features: np.ndarray
    feature_attention_mask: np.ndarray
    mel_lengths: np.ndarray
    num_windows: np.ndarray
    num_audio_tokens: np.ndarray
    window_frames: int

    def processor_windows(self) -> tuple[np.ndarray, np.ndarray]:
        """(input_features [N, n_mels, window], input_features_mask [N, window]) of the N windows in clip
        order, as the processor returns them (the last column must be a full window)."""
        b, n_mels, p = self.input_features.shape
        w = self.window_frames
        if p % w:
            raise ValueError(f"the last window column has {p % w} frames, not a full window of {w}")
        cols = p // w
        feats = self.input_features.reshape(b, n_mels, cols, w).transpose(0, 2, 1, 3)
        mask = self.feature_attention_mask.reshape(b, cols, w)
        keep = np.arange(cols)[None, :] < self.num_windows[:, None]
        return feats[keep], mask[keep]


def build_prompts(tokenizer: PreTrainedTokenizerBase, settings: ProcessorSettings, questions: str | Sequence[str],
                  clips: np.ndarray | Sequence[np.ndarray], *, padding_side: str = DEFAULT_PADDING_SIDE,
                  last_window_frames: int | None = None) -> PromptBatch:
    """One prompt per (question, clip), as `AudioFlamingo3Processor.apply_chat_template` builds it.

    `last_window_frames`: frames of the last window column (default a full window); a bucket (a multiple
    of 100 frames) must hold every frame the encoder reads for the valid frames there
    (`features.encoder_frames_needed`), so that `encode_audio` equals transformers' full windows.
    """
    if isinstance(questions, str):
        questions, clips = [questions], [clips]
    questions, clips = list(questions), list(clips)
    if not questions or len(questions) != len(clips):
        raise ValueError(f"got {len(questions)} questions and {len(clips)} clips; give one clip per question")
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    window = settings.window_frames
    windows = [split_windows(clip, settings) for clip in clips]
    n_win = np.asarray([len(w) for w in windows], np.int64)
    cols = int(n_win.max())
    last = window if last_window_frames is None else check_pad_to_frames(last_window_frames, window)
    b, n_mels = len(clips), settings.feature_size
    width = (cols - 1) * window + last
    features = np.full((b, n_mels, width), SILENCE_LOG_MEL, np.float32)
    mask = np.zeros((b, width), np.int32)
    for col in range(cols):
        rows = [i for i in range(b) if n_win[i] > col]
        frames = window if col < cols - 1 else last
        chunks = [windows[i][col] for i in rows]
        if frames < window:
            for i, chunk in zip(rows, chunks):
                valid = -(-chunk.size // HOP_LENGTH)
                if encoder_frames_needed(valid) > frames:
                    raise ValueError(f"last_window_frames={frames} cannot hold clip {i}'s last window: its {valid} "
                                     f"valid frames need {encoder_frames_needed(valid)}")
        col_feats, col_mask = batch_log_mel(chunks, n_mels, frames, window)
        start = col * window
        features[rows, :, start:start + frames] = col_feats
        mask[rows, start:start + frames] = col_mask
    mel_lengths = mask.sum(-1).astype(np.int64)
    n_tokens = np.asarray(encoder_output_lengths(mel_lengths)[1], np.int64)
    audio_id = audio_token_id(tokenizer, settings)
    rows_ids = [prompt_ids(tokenizer, settings, q) for q in questions]
    expanded = expand_audio_ids(rows_ids, audio_id, n_tokens.tolist())
    ids, attention = pad_rows(expanded, tokenizer.pad_token_id, padding_side)
    return PromptBatch(ids, attention, features, mask, mel_lengths, n_win, n_tokens, window)
