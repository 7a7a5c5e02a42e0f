"""Word-level Hugging Face tokenizers with the Qwen2-Audio special tokens, built offline.

Tiny test and toy models need a tokenizer that ``AutoTokenizer`` and ``Qwen2AudioProcessor`` load from
a local directory, with no model hub. :func:`build_word_tokenizer` writes one: a ``WordLevel`` model
over a given word list, split on whitespace and punctuation (numbers into single digits), with the
Qwen2-Audio special tokens at fixed ids 0..5 and ``<unk>`` at 6. Decoding joins words with spaces.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
AUDIO_TOKEN = "<|AUDIO|>"
AUDIO_BOS = "<|audio_bos|>"
AUDIO_EOS = "<|audio_eos|>"
UNK = "<unk>"
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END, AUDIO_TOKEN, AUDIO_BOS, AUDIO_EOS, UNK)

# transformers' `Qwen2AudioProcessor.default_chat_template` (tests/test_prompts.py holds them equal):
# a default system turn, "Audio k: <|audio_bos|><|AUDIO|><|audio_eos|>\n" per audio item, then text.
QWEN2_AUDIO_CHAT_TEMPLATE = (
    "{% set audio_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n"
    "{% else %}"
    "{% for content in message['content'] %}"
    "{% if 'audio' in content or 'audio_url' in content or message['type'] == 'audio' "
    "or content['type'] == 'audio' %}"
    "{% set audio_count.value = audio_count.value + 1 %}"
    "Audio {{ audio_count.value }}: <|audio_bos|><|AUDIO|><|audio_eos|>\n"
    "{% elif 'text' in content %}"
    "{{ content['text'] }}"
    "{% endif %}"
    "{% endfor %}"
    "<|im_end|>\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}"
    "<|im_start|>assistant\n"
    "{% endif %}"
)

# Every word the chat template writes outside special tokens and digits.
TEMPLATE_WORDS = ("system", "user", "assistant", "You", "are", "a", "helpful", ".", "Audio", ":")
DIGITS = tuple(str(d) for d in range(10))


def _pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    """Split on whitespace and punctuation (``\\w+|[^\\w\\s]+``), then numbers into single digits."""
    return pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.Digits(individual_digits=True)])


def _check_words(words: Sequence[str]) -> None:
    """Each word must survive pre-tokenization whole, else it could never be produced."""
    if isinstance(words, str):
        raise TypeError("words must be a list of words, got a single string")
    splitter = _pre_tokenizer()
    for index, word in enumerate(words):
        if not isinstance(word, str) or not word:
            raise ValueError(f"words[{index}] must be a non-empty string, got {word!r}")
        pieces = [piece for piece, _ in splitter.pre_tokenize_str(word)]
        if pieces != [word]:
            raise ValueError(
                f"words[{index}] = {word!r} is split into {pieces} by the pre-tokenizer (whitespace, "
                "punctuation runs and single digits are separate words); pass the pieces instead"
            )


def _vocabulary(words: Iterable[str]) -> dict[str, int]:
    """Special tokens at ids 0..6, then the template's words, digits and the given words, first seen first."""
    ordered = dict.fromkeys([*SPECIAL_TOKENS, *TEMPLATE_WORDS, *DIGITS, *words])
    return {token: index for index, token in enumerate(ordered)}


def _backend_tokenizer(words: Sequence[str]) -> Tokenizer:
    """The ``tokenizers`` object: WordLevel model, special tokens registered as added tokens."""
    tokenizer = Tokenizer(models.WordLevel(vocab=_vocabulary(words), unk_token=UNK))
    tokenizer.pre_tokenizer = _pre_tokenizer()
    # WordPiece's decoder prefixes every token but the first with a space; no token carries "##".
    tokenizer.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
    return tokenizer


def build_word_tokenizer(
    words: Sequence[str],
    out_dir: str | os.PathLike,
    chat_template: str | None = None,
    *,
    padding_side: str = "right",
) -> PreTrainedTokenizerFast:
    """Build a word-level tokenizer, save it to out_dir and return it as loaded back from there.

    Args:
        words: the vocabulary besides the special tokens, the chat template's words and the digits;
            each a single pre-token (no whitespace; letters/digits/underscore or a punctuation run).
        out_dir: directory to write tokenizer.json, tokenizer_config.json (and chat_template.jinja).
        chat_template: a Jinja chat template, e.g. QWEN2_AUDIO_CHAT_TEMPLATE; None: no template
            (prompts then take the base model's form, see agac_jax.models.qwen2_audio.prompts.render_prompt).
        padding_side: "right" (Qwen2Tokenizer's default, hence the processor's) or "left".

    Returns:
        ``AutoTokenizer.from_pretrained(out_dir)``: pad ``<|endoftext|>``, unk ``<unk>``, eos
        ``<|im_end|>`` with a chat template and ``<|endoftext|>`` without, no BOS.
    """
    _check_words(words)
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=_backend_tokenizer(words),
        unk_token=UNK,
        pad_token=ENDOFTEXT,
        eos_token=IM_END if chat_template is not None else ENDOFTEXT,
        padding_side=padding_side,
        chat_template=chat_template,
        model_max_length=32768,
    )
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    tokenizer.save_pretrained(out_dir)
    from transformers import AutoTokenizer  # the auto module imports torch: only where a tokenizer is made

    return AutoTokenizer.from_pretrained(out_dir)


def save_processor_files(
    out_dir: str | os.PathLike,
    tokenizer_words: Sequence[str],
    num_mel_bins: int = 128,
    chat_template: str | None = QWEN2_AUDIO_CHAT_TEMPLATE,
    *,
    padding_side: str = "right",
) -> PreTrainedTokenizerFast:
    """Write everything ``Qwen2AudioProcessor.from_pretrained(out_dir)`` needs, offline.

    The tokenizer of :func:`build_word_tokenizer` and a preprocessor_config.json for a
    WhisperFeatureExtractor with num_mel_bins (80 or 128) bins and ``return_attention_mask=True``.

    Returns:
        the saved tokenizer, as loaded back from out_dir.
    """
    if num_mel_bins not in (80, 128):
        raise ValueError(f"num_mel_bins must be 80 or 128, got {num_mel_bins!r}")
    tokenizer = build_word_tokenizer(tokenizer_words, out_dir, chat_template, padding_side=padding_side)
    from transformers import WhisperFeatureExtractor

    WhisperFeatureExtractor(feature_size=num_mel_bins, return_attention_mask=True).save_pretrained(os.fspath(out_dir))
    return tokenizer
