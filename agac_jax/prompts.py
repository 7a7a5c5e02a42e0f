"""Qwen2-Audio prompts: the same ids and features as ``Qwen2AudioProcessor``, with optional frame buckets.

``Qwen2AudioProcessor(text=texts, audio=clips, return_tensors="np", padding=True)`` pads every clip
to 30 s of features, counts each clip's audio tokens from its valid mel frames
(``((L - 1) // 2 + 1 - 2) // 2 + 1``), replaces the k-th ``<|AUDIO|>`` of the batch by that many
``<|AUDIO|>`` tokens (the ``<|audio_bos|>``/``<|audio_eos|>`` around it come from the prompt text)
and tokenizes with the tokenizer's padding side. :func:`encode_prompts` does the same; with
``pad_to_frames`` below 3000 the features are cut to that bucket, equal to the processor's on
every kept frame, and the ids do not change.

Padding side: the processor pads on the tokenizer's ``padding_side``; ``Qwen2Tokenizer`` (and the
tokenizers of agac_jax.tokenizer) default to "right". Pass ``padding_side="left"`` for batched
generation.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from transformers import PreTrainedTokenizerBase

from agac_jax.audio.features import MAX_FRAMES, audio_token_count, batch_log_mel
from agac_jax.tokenizer import AUDIO_BOS, AUDIO_EOS, AUDIO_TOKEN

Clip = np.ndarray
ClipsPerPrompt = Clip | Sequence[Clip]


@dataclass(frozen=True)
class PromptBatch:
    """Model inputs for B prompts holding N clips in all (N = B with one clip per prompt).

    Attributes:
        input_ids: int64 [B, L], ``<|AUDIO|>`` expanded, padded with the tokenizer's pad id.
        attention_mask: int64 [B, L], 1 on tokens, 0 on padding.
        input_features: float32 [N, num_mel_bins, pad_to_frames], clips in prompt order.
        feature_attention_mask: int32 [N, pad_to_frames], 1 on each clip's valid frames.
        num_audio_tokens: int64 [N], ``<|AUDIO|>`` tokens of each clip.
    """

    input_ids: np.ndarray
    attention_mask: np.ndarray
    input_features: np.ndarray
    feature_attention_mask: np.ndarray
    num_audio_tokens: np.ndarray


def _check_question(question: str, name: str) -> None:
    if not isinstance(question, str):
        raise TypeError(f"{name} must be a string, got {type(question).__name__}")
    for token in (AUDIO_TOKEN, AUDIO_BOS, AUDIO_EOS):
        if token in question:
            raise ValueError(f"{name} must not contain {token}: the prompt places the audio itself")


def conversation(question: str, num_audios: int = 1) -> list[dict]:
    """One user turn: num_audios audio items, then the question, as Qwen2-Audio-Instruct expects.

    Returns:
        ``[{"role": "user", "content": [{"type": "audio", "audio_url": "clip_1"}, ...,
        {"type": "text", "text": question}]}]``; the audio references are placeholders, the clips are
        passed separately.
    """
    _check_question(question, "question")
    if num_audios < 1:
        raise ValueError(f"num_audios must be >= 1, got {num_audios}")
    audio_items = [{"type": "audio", "audio_url": f"clip_{k + 1}"} for k in range(num_audios)]
    return [{"role": "user", "content": [*audio_items, {"type": "text", "text": question}]}]


def render_prompt(tokenizer: PreTrainedTokenizerBase, question: str, num_audios: int = 1) -> str:
    """The prompt text, with one ``<|AUDIO|>`` per clip, ending where the answer starts.

    With a chat template: ``tokenizer.apply_chat_template(conversation(...), add_generation_prompt=True)``.
    Without one: the base Qwen2-Audio form ``"<|audio_bos|><|AUDIO|><|audio_eos|>" * num_audios + question``.
    """
    messages = conversation(question, num_audios)
    if tokenizer.chat_template:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return f"{AUDIO_BOS}{AUDIO_TOKEN}{AUDIO_EOS}" * num_audios + question


def expand_audio_placeholders(texts: Sequence[str], num_audio_tokens: Sequence[int]) -> list[str]:
    """Replace the k-th ``<|AUDIO|>`` across the batch by num_audio_tokens[k] copies of it.

    Raises:
        ValueError: the texts hold a different number of ``<|AUDIO|>`` than there are counts.
    """
    found = sum(text.count(AUDIO_TOKEN) for text in texts)
    if found != len(num_audio_tokens):
        raise ValueError(
            f"the texts hold {found} {AUDIO_TOKEN} placeholders but {len(num_audio_tokens)} clips were given; "
            "each clip needs exactly one placeholder"
        )
    counts = iter(num_audio_tokens)
    pattern = re.compile(re.escape(AUDIO_TOKEN))
    return [pattern.sub(lambda _: AUDIO_TOKEN * int(next(counts)), text) for text in texts]


def _check_tokenizer(tokenizer: PreTrainedTokenizerBase) -> None:
    audio_id = tokenizer.convert_tokens_to_ids(AUDIO_TOKEN)
    if audio_id is None or audio_id == tokenizer.unk_token_id:
        raise ValueError(f"tokenizer has no {AUDIO_TOKEN} token; build it with agac_jax.tokenizer")
    if tokenizer.pad_token is None:
        raise ValueError("tokenizer has no pad token, needed to pad a batch of prompts")


def encode_prompts(
    tokenizer: PreTrainedTokenizerBase,
    texts: str | Sequence[str],
    clips: Clip | Sequence[Clip],
    *,
    num_mel_bins: int = 128,
    pad_to_frames: int = MAX_FRAMES,
    padding_side: str | None = None,
    max_frames: int = MAX_FRAMES,
) -> PromptBatch:
    """Ids and features for prompt texts that already hold one ``<|AUDIO|>`` per clip.

    Args:
        tokenizer: a Qwen2-Audio (or agac_jax.tokenizer) tokenizer with a pad token.
        texts: B prompt texts.
        clips: N float mono 16 kHz clips, in the order of the placeholders across the batch.
        num_mel_bins: 80 or 128, the feature extractor's feature_size.
        pad_to_frames: frame bucket (multiple of 100, <= max_frames); max_frames is exactly the processor's.
        padding_side: "left", "right", or None for the tokenizer's own.
        max_frames: the encoder's window in mel frames (2 x max_source_positions; 3000 = 30 s).

    Returns:
        a PromptBatch equal to ``Qwen2AudioProcessor(text=texts, audio=clips, return_tensors="np",
        padding=True)`` (features cut to pad_to_frames).
    """
    texts = [texts] if isinstance(texts, str) else list(texts)
    clips = [clips] if isinstance(clips, np.ndarray) else list(clips)
    if not texts:
        raise ValueError("texts is empty: pass at least one prompt")
    if padding_side not in (None, "left", "right"):
        raise ValueError(f"padding_side must be 'left', 'right' or None, got {padding_side!r}")
    _check_tokenizer(tokenizer)
    features, feature_mask = batch_log_mel(clips, num_mel_bins, pad_to_frames, max_frames)
    num_audio_tokens = np.asarray(audio_token_count(feature_mask.sum(-1).astype(np.int64)), dtype=np.int64)
    expanded = expand_audio_placeholders(texts, num_audio_tokens.tolist())
    side = padding_side or tokenizer.padding_side
    encoded = tokenizer(expanded, padding=True, padding_side=side, return_tensors="np")
    return PromptBatch(
        input_ids=encoded["input_ids"].astype(np.int64),
        attention_mask=encoded["attention_mask"].astype(np.int64),
        input_features=features,
        feature_attention_mask=feature_mask,
        num_audio_tokens=num_audio_tokens,
    )


def _flatten_clips(questions: Sequence[str], clips: Sequence[ClipsPerPrompt]) -> tuple[list[int], list[Clip]]:
    """Per-prompt clip counts and the flat clip list; clips[b] is one array or a list of arrays."""
    if len(clips) != len(questions):
        raise ValueError(f"got {len(questions)} questions but clips for {len(clips)} prompts")
    counts, flat = [], []
    for index, item in enumerate(clips):
        group = [item] if isinstance(item, np.ndarray) else list(item)
        if not group:
            raise ValueError(f"clips[{index}] is empty: each prompt needs at least one clip")
        counts.append(len(group))
        flat.extend(group)
    return counts, flat


def build_prompts(
    tokenizer: PreTrainedTokenizerBase,
    questions: str | Sequence[str],
    clips: ClipsPerPrompt | Sequence[ClipsPerPrompt],
    *,
    num_mel_bins: int = 128,
    pad_to_frames: int = MAX_FRAMES,
    padding_side: str | None = None,
    max_frames: int = MAX_FRAMES,
) -> PromptBatch:
    """Render one prompt per question (see :func:`render_prompt`) and encode it with its clips.

    Args:
        tokenizer: as for :func:`encode_prompts`.
        questions: B questions (or one string).
        clips: per question, one clip [n] or a list of clips (e.g. the 30 s windows of a long
            recording, rendered as "Audio 1", "Audio 2", ...); one array when questions is a string.
        num_mel_bins, pad_to_frames, padding_side, max_frames: as for :func:`encode_prompts`.
    """
    if isinstance(questions, str):
        questions, clips = [questions], [clips]
    questions = list(questions)
    clips = list(clips)
    counts, flat = _flatten_clips(questions, clips)
    texts = [render_prompt(tokenizer, question, count) for question, count in zip(questions, counts)]
    return encode_prompts(
        tokenizer, texts, flat, num_mel_bins=num_mel_bins, pad_to_frames=pad_to_frames, padding_side=padding_side,
        max_frames=max_frames,
    )
