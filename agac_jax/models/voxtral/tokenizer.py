"""Small tekken tokenizers (Mistral's `tekken.json`) with Voxtral's special tokens, built offline.

Voxtral's tokenizer is Mistral's own (mistral-common's `Tekkenizer`: tiktoken byte-level BPE, special
tokens kept apart and numbered first), served on the hub as `tekken.json`; transformers reads it through
`MistralCommonBackend`, and `VoxtralProcessor` through that. Tiny test models need one that loads from a
local directory with no model hub: :func:`write_tekken` writes a valid file in the released layout
(version "v7", 1000 special tokens, the 256 bytes then BPE merges, and the `audio` section of
Voxtral-Mini-3B-2507: 16 kHz, 12.5 audio tokens per second, 128 mel bins, hop 160, window 400, audio padded
to 30 s chunks). The special tokens Voxtral relies on sit at the released ids: `<s>` 1, `</s>` 2,
`[INST]` 3, `[/INST]` 4, `<pad>` 11, `[AUDIO]` 24 (VoxtralProcessor hard-codes it), `[BEGIN_AUDIO]` 25,
`[TRANSCRIBE]` 34. Ordinary tokens are numbered from 1000 (the bytes 1000..1255, then the merges), as in
the released file. The merges make whole tokens of the given words (every prefix of each word is a merge).
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

# The released Voxtral tekken's regular-expression pre-tokenizer (tiktoken `pat_str`).
TEKKEN_PATTERN = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|"
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|"
    r"\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
NUM_SPECIAL_TOKENS = 1000
TOKENIZER_VERSION = "v7"

BOS, EOS, PAD = "<s>", "</s>", "<pad>"
BEGIN_INST, END_INST = "[INST]", "[/INST]"
AUDIO, BEGIN_AUDIO, TRANSCRIBE = "[AUDIO]", "[BEGIN_AUDIO]", "[TRANSCRIBE]"

# rank -> token string of the named special tokens (the rest are `<SPECIAL_{rank}>` fillers).
SPECIAL_TOKENS: dict[int, str] = {
    0: "<unk>", 1: BOS, 2: EOS, 3: BEGIN_INST, 4: END_INST, 5: "[AVAILABLE_TOOLS]", 6: "[/AVAILABLE_TOOLS]",
    7: "[TOOL_RESULTS]", 8: "[/TOOL_RESULTS]", 9: "[TOOL_CALLS]", 10: "[IMG]", 11: PAD, 12: "[IMG_BREAK]",
    13: "[IMG_END]", 14: "[PREFIX]", 15: "[MIDDLE]", 16: "[SUFFIX]", 17: "[SYSTEM_PROMPT]",
    18: "[/SYSTEM_PROMPT]", 19: "[TOOL_CONTENT]", 24: AUDIO, 25: BEGIN_AUDIO, 34: TRANSCRIBE,
}

# The `audio` section of Voxtral-Mini-3B-2507's tekken.json.
VOXTRAL_AUDIO = {
    "sampling_rate": 16_000,
    "frame_rate": 12.5,
    "audio_encoding_config": {"num_mel_bins": 128, "hop_length": 160, "window_size": 400},
    "chunk_length_s": 30.0,
}

# WhisperFeatureExtractor settings of Voxtral-Mini-3B-2507's preprocessor_config.json.
PREPROCESSOR_CONFIG = {
    "chunk_length": 30,
    "dither": 0.0,
    "feature_extractor_type": "WhisperFeatureExtractor",
    "feature_size": 128,
    "hop_length": 160,
    "n_fft": 400,
    "n_samples": 480000,
    "nb_max_frames": 3000,
    "padding_side": "right",
    "padding_value": 0.0,
    "processor_class": "VoxtralProcessor",
    "return_attention_mask": False,
    "sampling_rate": 16000,
}


def _merges(words: Iterable[str]) -> list[bytes]:
    """Every multi-byte prefix of each word and of the word after a space, in first-seen order."""
    seen: dict[bytes, None] = {}
    for word in words:
        for form in (word, " " + word):
            data = form.encode("utf-8")
            for end in range(2, len(data) + 1):
                seen.setdefault(data[:end], None)
    return list(seen)


def tekken_model(words: Sequence[str], num_mel_bins: int = 128) -> dict:
    """The content of a tekken.json whose merges spell `words` (see the module docstring)."""
    vocab = [bytes([i]) for i in range(256)] + _merges(words)
    audio = json.loads(json.dumps(VOXTRAL_AUDIO))
    audio["audio_encoding_config"]["num_mel_bins"] = int(num_mel_bins)
    special = [{"rank": r, "token_str": SPECIAL_TOKENS.get(r, f"<SPECIAL_{r}>"), "is_control": True}
               for r in range(NUM_SPECIAL_TOKENS)]
    return {
        "config": {
            "pattern": TEKKEN_PATTERN,
            "num_vocab_tokens": len(vocab),
            "default_vocab_size": len(vocab) + NUM_SPECIAL_TOKENS,
            "default_num_special_tokens": NUM_SPECIAL_TOKENS,
            "version": TOKENIZER_VERSION,
        },
        "vocab": [{"rank": i, "token_bytes": base64.b64encode(t).decode("ascii"),
                   "token_str": t.decode("utf-8", errors="replace")} for i, t in enumerate(vocab)],
        "special_tokens": special,
        "audio": audio,
    }


def write_tekken(path: str | os.PathLike, words: Sequence[str], num_mel_bins: int = 128) -> int:
    """Writes a tekken.json (see :func:`tekken_model`); returns its vocabulary size."""
    model = tekken_model(words, num_mel_bins)
    Path(path).write_text(json.dumps(model, ensure_ascii=False), encoding="utf-8")
    return int(model["config"]["default_vocab_size"])


def save_processor_files(directory: str | os.PathLike, words: Sequence[str], num_mel_bins: int = 128) -> int:
    """tekken.json and preprocessor_config.json, what `VoxtralProcessor.from_pretrained` reads besides
    config.json; returns the tokenizer's vocabulary size."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    size = write_tekken(directory / "tekken.json", words, num_mel_bins)
    config = dict(PREPROCESSOR_CONFIG, feature_size=int(num_mel_bins))
    (directory / "preprocessor_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return size
