"""Qwen2-Audio prompts: the ids and features ``Qwen2AudioProcessor`` makes, with optional frame buckets.

How a prompt is chosen (:func:`load_prompt_format`, one function for every entry point):

- ``chat`` (the default, for Qwen2-Audio-7B-Instruct): the chat template ``Qwen2AudioProcessor.from_pretrained``
  would use: ``processor_config.json``'s ``chat_template`` key, else ``chat_template.json``, else
  ``chat_template.jinja`` (with any ``chat_templates/*.jinja``), else transformers' own default audio
  template (:data:`DEFAULT_AUDIO_CHAT_TEMPLATE`). The tokenizer's template (``tokenizer_config.json``) is
  never used: on the released checkpoints it is Qwen2's plain text template, which transformers does not
  apply to audio either. The conversation is the model card's: one user turn with the audio items, then
  the question, and the generation prompt.
- ``raw`` (for the base model, Qwen2-Audio-7B, which has no chat training): its model card's form,
  ``"<|audio_bos|><|AUDIO|><|audio_eos|>"`` per clip, then the question.

The question is data: control tokens written in it (``<|im_end|>``, ``<|im_start|>``, ``<|endoftext|>``,
``<|AUDIO|>``, ...) are encoded as plain text, as ``apply_chat_template(..., sanitize_control_tokens=True)``
does, so a question can neither open a turn nor add audio tokens; every other question gets the ids the
processor gives.

``Qwen2AudioProcessor`` pads every clip to 30 s of features, counts each clip's audio tokens from its
valid mel frames (``((L - 1) // 2 + 1 - 2) // 2 + 1``) and replaces the k-th ``<|AUDIO|>`` of the batch by
that many. :func:`build_prompts` does the same; with ``pad_to_frames`` below 3000 the features are cut to
that bucket, equal to the processor's on every kept frame, and the ids do not change. Padding side: the
tokenizer's ``padding_side`` (``Qwen2Tokenizer``: "right") unless given; "left" for batched generation.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from transformers import PreTrainedTokenizerBase

from agac_jax.audio.features import MAX_FRAMES, audio_token_count, batch_log_mel
from agac_jax.cli.errors import UserError
from agac_jax.models.qwen2_audio.tokenizer import AUDIO_BOS, AUDIO_EOS, AUDIO_TOKEN, QWEN2_AUDIO_CHAT_TEMPLATE

Clip = np.ndarray
ClipsPerPrompt = Clip | Sequence[Clip]

PROMPT_FORMATS = ("chat", "raw")
DEFAULT_PROMPT_FORMAT = "chat"
# transformers' `Qwen2AudioProcessor.default_chat_template`: what the processor uses when a checkpoint
# directory has no template of its own (the released Instruct checkpoint's main branch).
DEFAULT_AUDIO_CHAT_TEMPLATE = QWEN2_AUDIO_CHAT_TEMPLATE
DEFAULT_TEMPLATE_SOURCE = "transformers' default Qwen2-Audio chat template"
RAW_AUDIO_ITEM = f"{AUDIO_BOS}{AUDIO_TOKEN}{AUDIO_EOS}"


class PromptError(UserError, ValueError):
    """A prompt that cannot be built from a checkpoint's files or a question; the message names the file."""


@dataclasses.dataclass(frozen=True)
class PromptFormat:
    """How questions become prompts for one checkpoint.

    Attributes:
        kind: "chat" (a chat template) or "raw" (the base model's audio items + question).
        template: the Jinja chat template for "chat"; None for "raw".
        source: where the template came from (a file, or transformers' default), for messages and records.
    """

    kind: str
    template: str | None
    source: str

    def __post_init__(self):
        if self.kind not in PROMPT_FORMATS:
            raise PromptError(f"prompt format {self.kind!r} is not one of {PROMPT_FORMATS}")
        if (self.kind == "chat") != (self.template is not None):
            raise ValueError(f"a {self.kind!r} prompt format {'needs' if self.kind == 'chat' else 'has no'} template")

    @classmethod
    def chat(cls, template: str | None = None, source: str | None = None) -> "PromptFormat":
        """A chat format: `template`, or transformers' default audio template."""
        if template is None:
            return cls("chat", DEFAULT_AUDIO_CHAT_TEMPLATE, DEFAULT_TEMPLATE_SOURCE)
        return cls("chat", template, source or "a given chat template")

    @classmethod
    def raw(cls) -> "PromptFormat":
        return cls("raw", None, "the base model's raw form")


def _read_json(path: Path) -> object:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise PromptError(f"{path} is not valid JSON ({error})") from error


def _template_from(value: object, path: Path) -> str:
    if not isinstance(value, str) or not value.strip():
        raise PromptError(f"{path} holds no chat template string (got {type(value).__name__})")
    return value


def processor_chat_template(directory: str | os.PathLike) -> tuple[str, str] | None:
    """(template, source file) as `Qwen2AudioProcessor.from_pretrained(directory)` reads it, or None.

    The processor's order: a ``chat_template`` key in ``processor_config.json``; else the legacy
    ``chat_template.json``; else ``chat_template.jinja`` (the default of ``chat_templates/*.jinja``,
    if any). None: the processor falls back to its default template.
    """
    directory = Path(directory)
    processor_config = directory / "processor_config.json"
    if processor_config.is_file():
        content = _read_json(processor_config)
        if isinstance(content, dict) and content.get("chat_template") is not None:
            return _template_from(content["chat_template"], processor_config), str(processor_config)
    legacy = directory / "chat_template.json"
    named = sorted((directory / "chat_templates").glob("*.jinja")) if (directory / "chat_templates").is_dir() else []
    if legacy.is_file():
        if named:
            raise PromptError(f"{directory} holds both chat_template.json and chat_templates/*.jinja, which "
                              "transformers refuses to combine; keep one")
        content = _read_json(legacy)
        if not isinstance(content, dict) or "chat_template" not in content:
            raise PromptError(f"{legacy} has no 'chat_template' key")
        return _template_from(content["chat_template"], legacy), str(legacy)
    jinja = directory / "chat_template.jinja"
    if jinja.is_file():
        return _template_from(jinja.read_text(encoding="utf-8"), jinja), str(jinja)
    default = directory / "chat_templates" / "default.jinja"
    if default.is_file():
        return _template_from(default.read_text(encoding="utf-8"), default), str(default)
    if named:
        raise PromptError(f"{directory / 'chat_templates'} holds templates {[p.stem for p in named]} but no "
                          "'default' one, and no chat_template.jinja: the processor cannot pick one")
    return None


def load_prompt_format(directory: str | os.PathLike, kind: str = DEFAULT_PROMPT_FORMAT) -> PromptFormat:
    """The prompt format of a checkpoint directory (module docstring): "chat" by the processor's rules,
    or "raw" for the base model."""
    if kind not in PROMPT_FORMATS:
        raise PromptError(f"prompt format {kind!r} is not one of {PROMPT_FORMATS} (model.prompt_format)")
    if kind == "raw":
        return PromptFormat.raw()
    found = processor_chat_template(directory)
    return PromptFormat.chat() if found is None else PromptFormat.chat(*found)


def prompt_format_of(tokenizer: PreTrainedTokenizerBase, kind: str = DEFAULT_PROMPT_FORMAT) -> PromptFormat:
    """The prompt format of the directory a tokenizer was loaded from (``tokenizer.name_or_path``)."""
    directory = getattr(tokenizer, "name_or_path", "")
    if kind == "chat" and not (directory and Path(directory).is_dir()):
        raise ValueError("the tokenizer was not loaded from a local directory; pass prompt_format= "
                         "(prompts.load_prompt_format(checkpoint_dir))")
    return load_prompt_format(directory, kind)


def conversation(question: str, num_audios: int = 1) -> list[dict]:
    """One user turn, as the model card writes it: num_audios audio items, then the question.

    Returns:
        ``[{"role": "user", "content": [{"type": "audio", "audio_url": "clip_1"}, ...,
        {"type": "text", "text": question}]}]``; the audio references are placeholders, the clips are
        passed separately.
    """
    if not isinstance(question, str):
        raise TypeError(f"question must be a string, got {type(question).__name__}")
    if num_audios < 1:
        raise ValueError(f"num_audios must be >= 1, got {num_audios}")
    audio_items = [{"type": "audio", "audio_url": f"clip_{k + 1}"} for k in range(num_audios)]
    return [{"role": "user", "content": [*audio_items, {"type": "text", "text": question}]}]


def _check_tokenizer(tokenizer: PreTrainedTokenizerBase) -> int:
    audio_id = tokenizer.convert_tokens_to_ids(AUDIO_TOKEN)
    if audio_id is None or audio_id == tokenizer.unk_token_id:
        raise PromptError(f"the tokenizer has no {AUDIO_TOKEN} token: not a Qwen2-Audio tokenizer")
    if tokenizer.pad_token is None:
        raise PromptError("the tokenizer has no pad token, needed to pad a batch of prompts")
    return int(audio_id)


def _chat_ids(tokenizer: PreTrainedTokenizerBase, fmt: PromptFormat, question: str, num_audios: int) -> list[int]:
    import jinja2

    messages = conversation(question, num_audios)
    try:
        encoded = tokenizer.apply_chat_template(
            messages, chat_template=fmt.template, add_generation_prompt=True,
            tokenize=True, sanitize_control_tokens=True, return_dict=True)
    except (jinja2.TemplateError, TypeError, KeyError, AttributeError) as error:
        raise PromptError(f"the chat template of {fmt.source} does not render an audio conversation "
                          f"({type(error).__name__}: {error}); give the checkpoint's processor template "
                          "(chat_template.jinja or chat_template.json), or model.prompt_format='raw'") from error
    return list(encoded["input_ids"])


def _raw_ids(tokenizer: PreTrainedTokenizerBase, question: str, num_audios: int) -> list[int]:
    if not isinstance(question, str):
        raise TypeError(f"question must be a string, got {type(question).__name__}")
    items = tokenizer(RAW_AUDIO_ITEM * num_audios)["input_ids"]
    text = tokenizer(question, add_special_tokens=False, split_special_tokens=True)["input_ids"] if question else []
    return list(items) + list(text)


def prompt_ids(tokenizer: PreTrainedTokenizerBase, fmt: PromptFormat, question: str, num_audios: int = 1) -> list[int]:
    """The prompt's ids, one ``<|AUDIO|>`` per clip, ending where the answer starts.

    Raises:
        PromptError: the template does not render, or does not place exactly one ``<|AUDIO|>`` per clip.
    """
    audio_id = _check_tokenizer(tokenizer)
    if num_audios < 1:
        raise ValueError(f"num_audios must be >= 1, got {num_audios}")
    ids = _chat_ids(tokenizer, fmt, question, num_audios) if fmt.kind == "chat" else _raw_ids(tokenizer, question,
                                                                                               num_audios)
    placed = ids.count(audio_id)
    if placed != num_audios:
        raise PromptError(f"the chat template of {fmt.source} places {placed} {AUDIO_TOKEN} for {num_audios} "
                          "audio item(s); it must place one per audio item")
    return ids


def expand_audio_ids(rows: Sequence[Sequence[int]], audio_id: int, num_audio_tokens: Sequence[int]) -> list[list[int]]:
    """Replace the k-th ``<|AUDIO|>`` id across the rows by num_audio_tokens[k] copies of it.

    Equal to the processor's expansion in text: ``<|AUDIO|>`` is an added token, so its copies never
    merge with their neighbours.
    """
    found = sum(list(row).count(audio_id) for row in rows)
    if found != len(num_audio_tokens):
        raise ValueError(f"the prompts hold {found} {AUDIO_TOKEN} placeholders but {len(num_audio_tokens)} clips "
                         "were given; each clip needs exactly one placeholder")
    counts = iter(int(n) for n in num_audio_tokens)
    out = []
    for row in rows:
        expanded = []
        for token in row:
            expanded.extend([token] * next(counts) if token == audio_id else [token])
        out.append(expanded)
    return out


def pad_rows(rows: Sequence[Sequence[int]], pad_id: int, side: str) -> tuple[np.ndarray, np.ndarray]:
    """(ids int64 [B, L], attention mask int64 [B, L]) of rows padded to the longest on `side`."""
    length = max(len(row) for row in rows)
    ids = np.full((len(rows), length), pad_id, np.int64)
    mask = np.zeros((len(rows), length), np.int64)
    for b, row in enumerate(rows):
        span = slice(length - len(row), length) if side == "left" else slice(0, len(row))
        ids[b, span] = row
        mask[b, span] = 1
    return ids, mask


@dataclasses.dataclass(frozen=True)
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


def flatten_clips(questions: Sequence[str], clips: Sequence[ClipsPerPrompt]) -> tuple[list[int], list[Clip]]:
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
    prompt_format: PromptFormat | None = None,
    num_mel_bins: int = 128,
    pad_to_frames: int = MAX_FRAMES,
    padding_side: str | None = None,
    max_frames: int = MAX_FRAMES,
) -> PromptBatch:
    """One prompt per question (see :func:`prompt_ids`) with its clips, as the processor builds it.

    Args:
        tokenizer: the checkpoint's tokenizer (it must know ``<|AUDIO|>`` and have a pad token).
        questions: B questions (or one string).
        clips: per question, one float mono 16 kHz clip [n] or a list of clips (e.g. the 30 s windows of
            a long recording, rendered as "Audio 1", "Audio 2", ...); one array when questions is a string.
        prompt_format: the checkpoint's :class:`PromptFormat`; None: :func:`prompt_format_of` the tokenizer.
        num_mel_bins: 80 or 128, the feature extractor's feature_size.
        pad_to_frames: frame bucket (multiple of 100, <= max_frames); max_frames is exactly the processor's.
        padding_side: "left", "right", or None for the tokenizer's own.
        max_frames: the encoder's window in mel frames (2 x max_source_positions; 3000 = 30 s).
    """
    if isinstance(questions, str):
        questions, clips = [questions], [clips]
    questions, clips = list(questions), list(clips)
    if not questions:
        raise ValueError("questions is empty: pass at least one prompt")
    if padding_side not in (None, "left", "right"):
        raise ValueError(f"padding_side must be 'left', 'right' or None, got {padding_side!r}")
    fmt = prompt_format or prompt_format_of(tokenizer)
    counts, flat = flatten_clips(questions, clips)
    rows = [prompt_ids(tokenizer, fmt, question, count) for question, count in zip(questions, counts)]
    features, feature_mask = batch_log_mel(flat, num_mel_bins, pad_to_frames, max_frames)
    num_audio_tokens = np.asarray(audio_token_count(feature_mask.sum(-1).astype(np.int64)), dtype=np.int64)
    audio_id = tokenizer.convert_tokens_to_ids(AUDIO_TOKEN)
    expanded = expand_audio_ids(rows, audio_id, num_audio_tokens.tolist())
    ids, mask = pad_rows(expanded, tokenizer.pad_token_id, padding_side or tokenizer.padding_side)
    return PromptBatch(input_ids=ids, attention_mask=mask, input_features=features,
                       feature_attention_mask=feature_mask, num_audio_tokens=num_audio_tokens)
