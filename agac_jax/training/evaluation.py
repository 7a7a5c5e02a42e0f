"""Whether the trained model listens: test accuracy of its greedy answers, with the audio and with
silence in its place.

`evaluate_generation` answers questions by greedy generation (`jitted_generate`) and parses the reply
with `agac_jax.eval.metrics.parse_answer`; with `silence=True` each clip is replaced by zeros of the
same length, which measures how much the answers depend on the audio (chance is about 50 %).
`evaluate` runs both on the first `data.test_questions` questions of the test split of the config's
benchmark (`data.benchmark`: synthetic or scenes).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from agac_jax.models.qwen2_audio import checkpoints
from agac_jax.data.common import AudioQASample
from agac_jax.eval.metrics import UNKNOWN, parse_answer
from agac_jax.models.config import Qwen2AudioConfig
from agac_jax.models.generate import GenerationSettings, jitted_generate
from agac_jax.models.qwen2_audio.prompts import build_prompts
from agac_jax.training.data import split_samples

Params = Any

logger = logging.getLogger(__name__)

PROMPT_LENGTH_QUANTUM = 64


@dataclasses.dataclass(frozen=True)
class GenerationEval:
    """Accuracy of greedy answers: overall, per question kind, and how many replies had no yes/no."""

    accuracy: float
    accuracy_by_kind: dict[str, float]
    num_questions: int
    num_unknown: int
    predictions: tuple[str, ...]

    def summary(self) -> dict[str, Any]:
        return {"accuracy": self.accuracy, "accuracy_by_kind": self.accuracy_by_kind,
                "num_questions": self.num_questions, "num_unknown": self.num_unknown}


def _pad_left(ids: np.ndarray, mask: np.ndarray, length: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Left-pads [B, S] ids and mask to [B, length]."""
    extra = length - ids.shape[1]
    return (np.pad(ids, ((0, 0), (extra, 0)), constant_values=pad_id), np.pad(mask, ((0, 0), (extra, 0))))


def generate_answers(
    config: Qwen2AudioConfig,
    params: Params,
    settings: GenerationSettings,
    tokenizer: PreTrainedTokenizerBase,
    questions: Sequence[str],
    clips: Sequence[np.ndarray],
    pad_to_frames: int,
    batch_size: int,
) -> list[str]:
    """Greedy replies, decoded without special tokens, one per (question, clip).

    Batches are padded to `batch_size` questions and prompts to a multiple of 64 tokens, so a few
    compilations serve the whole set.
    """
    generate = jitted_generate(config, settings)
    replies: list[str] = []
    for start in range(0, len(questions), batch_size):
        chunk = list(range(start, min(start + batch_size, len(questions))))
        chunk_padded = chunk + [chunk[-1]] * (batch_size - len(chunk))
        prompts = build_prompts(tokenizer, [questions[i] for i in chunk_padded], [clips[i] for i in chunk_padded],
                                num_mel_bins=config.audio.num_mel_bins, pad_to_frames=pad_to_frames,
                                padding_side="left")
        length = -(-prompts.input_ids.shape[1] // PROMPT_LENGTH_QUANTUM) * PROMPT_LENGTH_QUANTUM
        ids, mask = _pad_left(prompts.input_ids, prompts.attention_mask, length, tokenizer.pad_token_id)
        tokens, counts = generate(params, ids.astype(np.int32), mask.astype(np.int32), prompts.input_features,
                                  prompts.feature_attention_mask.sum(-1).astype(np.int32))
        tokens, counts = np.asarray(tokens), np.asarray(counts)
        for row in range(len(chunk)):
            replies.append(tokenizer.decode(tokens[row, : counts[row]].tolist(), skip_special_tokens=True))
    return replies


def evaluate_generation(
    config: Qwen2AudioConfig,
    params: Params,
    generation: dict[str, Any],
    tokenizer: PreTrainedTokenizerBase,
    samples: Sequence[AudioQASample],
    pad_to_frames: int,
    batch_size: int,
    silence: bool = False,
) -> GenerationEval:
    """Accuracy of the greedy answers to `samples`; `silence`: zeros of each clip's length instead of the clip."""
    if not samples:
        raise ValueError("samples is empty: nothing to evaluate")
    settings = GenerationSettings.from_hf(generation, config)
    waveforms = {}
    for sample in samples:
        if sample.clip_id not in waveforms:
            clip = sample.load_waveform()
            waveforms[sample.clip_id] = np.zeros_like(clip) if silence else clip
    replies = generate_answers(config, params, settings, tokenizer, [s.question for s in samples],
                               [waveforms[s.clip_id] for s in samples], pad_to_frames, batch_size)
    predictions = tuple(parse_answer(r) for r in replies)
    correct = np.asarray([p == s.answer for p, s in zip(predictions, samples)])
    kinds = np.asarray([s.kind for s in samples])
    by_kind = {str(k): float(correct[kinds == k].mean()) for k in np.unique(kinds)}
    return GenerationEval(
        accuracy=float(correct.mean()),
        accuracy_by_kind=by_kind,
        num_questions=len(samples),
        num_unknown=sum(p == UNKNOWN for p in predictions),
        predictions=predictions,
    )


def evaluation_questions(cfg: ml_collections.ConfigDict) -> list[AudioQASample]:
    """The first `cfg.data.test_questions` questions of the test split of the config's benchmark."""
    samples = split_samples(cfg, "test", cfg.data.test_clips)
    if len(samples) < cfg.data.test_questions:
        raise ValueError(f"data.test_clips={cfg.data.test_clips} gives {len(samples)} questions, fewer than "
                         f"data.test_questions={cfg.data.test_questions}")
    return samples[: cfg.data.test_questions]


def eval_frames(cfg: ml_collections.ConfigDict) -> int:
    """Mel frames every test clip is padded to: one second past the largest training bucket, so that the
    encoder reads real padding frames past every clip's end, as in transformers' 30 s input."""
    return 100 * (max(cfg.bucket_seconds) + 1)


def evaluate(cfg: ml_collections.ConfigDict, config: Qwen2AudioConfig, params: Params, generation: dict,
             tokenizer: PreTrainedTokenizerBase) -> dict:
    """{"audio": ..., "silence": ...}: `GenerationEval.summary()` and seconds, on the test questions."""
    samples = evaluation_questions(cfg)
    results = {}
    for name, silence in (("audio", False), ("silence", True)):
        started = time.perf_counter()
        outcome = evaluate_generation(config, params, generation, tokenizer, samples, eval_frames(cfg),
                                      cfg.eval_batch_size, silence=silence)
        results[name] = {**outcome.summary(), "seconds": time.perf_counter() - started}
        logger.info("test accuracy with %s: %.3f (%s), %d unknown of %d", name, outcome.accuracy,
                    ", ".join(f"{k} {v:.3f}" for k, v in outcome.accuracy_by_kind.items()), outcome.num_unknown,
                    outcome.num_questions)
    return results


def evaluate_directory(cfg: ml_collections.ConfigDict, directory: str | Path) -> dict:
    """`evaluate` of a Hugging Face directory (weights, generation config, tokenizer)."""
    loaded = checkpoints.load_hf_directory(directory)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    return evaluate(cfg, loaded.config, loaded.params, loaded.generation_config, tokenizer)
