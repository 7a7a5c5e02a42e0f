"""Evaluation metrics (DESIGN.md section 5) and evidence recall on the codec frame grid.

Conventions, decided here:
- Answers: parsed as lmms-eval parses yes/no replies (`parse_pred_ans` of its MME task, "brought
  from Otter Eval"; POPE-style tasks read them the same way): lower-cased, stripped, every "."
  removed; "yes"/"no" as such, "y"/"n" alone, else "yes" if the first four characters contain
  "yes", else "no" if they contain "no", else "unknown" (Otter's "other"). So "Yes, there is a dog
  barking." -> yes, "Nope." -> no, "Yeah" -> unknown; its quirks are kept so that figures compare:
  "Not sure" -> no, "The answer is no" -> unknown. "unknown" is never equal to any answer, itself
  included, so it is always wrong and always inconsistent; the tables count it.
- Exact match (`exact_match`): lmms-eval's `exact_match` metric as its clotho_aqa task sets it
  (ignore_case, ignore_punctuation): the reply stripped of surrounding whitespace, then both reply
  and reference lower-cased with every ASCII punctuation character removed, then compared whole.
  "Yes." matches "yes"; "Yes, it is." and "Nope" do not.
- Precision, recall and F1 take "yes" as the positive class; an "unknown" prediction counts as not
  "yes" (a false negative when the reference is "yes"). A ratio with a zero denominator is 0.0.
- Summaries across seeds: mean and sample standard deviation (ddof = 1). The standard deviation of
  a single seed is NaN: one run says nothing about the spread, and 0 would claim it does.
- Delta accuracy: per-seed differences compressed - original (paired by seed), then summarised.
- Prefill FLOPs of a record: `agac_jax.eval.flops.decoder_prefill_flops` (the project's one FLOP
  model).
- Evidence frames: frame j of the codec grid (rate r tokens/s, 2 tokens a frame, so 32000 / r
  samples a frame; the last frame is clipped to the clip's end) is an evidence frame when at least
  `min_overlap` (default one half) of its samples lie inside the union of the evidence intervals.
  An interval that gives no frame this way (shorter than half a frame) adds the frame holding most
  of it, so no stretch of evidence goes unrepresented.
- Evidence recall of a sample: kept evidence frames / evidence frames; NaN for a sample without
  evidence (a synthetic "no" existence question), which the summary leaves out and counts.
"""

from __future__ import annotations

import dataclasses
import math
import string
from collections.abc import Callable, Sequence

import numpy as np

from agac_jax.audio.grids import MAX_SAMPLES, audio_tokens_of_samples
from agac_jax.codec.base import SAMPLE_RATE, TOKENS_PER_FRAME, num_frames
from agac_jax.codec.frames import frame_bounds  # the codec grid's frames; also `metrics.frame_bounds`

YES = "yes"
NO = "no"
UNKNOWN = "unknown"
LABELS = (YES, NO)
PREDICTIONS = (YES, NO, UNKNOWN)

MAX_CLIP_SAMPLES = MAX_SAMPLES

_PUNCTUATION = str.maketrans("", "", string.punctuation)
_SINGLE_LETTERS = {"y": YES, "n": NO}
_PREFIX = 4  # characters of the reply Otter's rule looks at


# --- answers -------------------------------------------------------------------------------------


def parse_answer(reply: str) -> str:
    """"yes", "no" or "unknown" from a reply, as lmms-eval's (Otter's) yes/no parser reads it.

    'Yes, there is a dog barking.' -> 'yes'; 'No.' -> 'no'; 'Nope.' -> 'no'; 'y' -> 'yes';
    'Yeah' -> 'unknown'; 'There is no dog.' -> 'unknown'; 'Not sure' -> 'no' (see the module docstring).
    """
    if not isinstance(reply, str):
        raise TypeError(f"reply must be a string, got {type(reply).__name__}")
    text = reply.lower().strip().replace(".", "")
    if text in LABELS:
        return text
    if len(text) == 1:
        return _SINGLE_LETTERS.get(text, UNKNOWN)
    head = text[:_PREFIX]
    if YES in head:
        return YES
    return NO if NO in head else UNKNOWN


def parse_answers(replies: Sequence[str]) -> list[str]:
    """`parse_answer` applied to each reply."""
    return [parse_answer(reply) for reply in replies]


def exact_match_text(text: str) -> str:
    """A text as lmms-eval's exact match compares it: lower-cased, ASCII punctuation removed."""
    return text.lower().translate(_PUNCTUATION)


def exact_match(reply: str, reference: str) -> bool:
    """lmms-eval's exact match of one reply (stripped first, as its generate_until results are)."""
    if not isinstance(reply, str):
        raise TypeError(f"reply must be a string, got {type(reply).__name__}")
    return exact_match_text(reply.strip()) == exact_match_text(reference)


def exact_match_accuracy(replies: Sequence[str], references: Sequence[str]) -> float:
    """Share of replies that exactly match their reference (`exact_match`)."""
    if len(replies) != len(references):
        raise ValueError(f"replies ({len(replies)}) and references ({len(references)}) differ in length")
    if not replies:
        raise ValueError("replies and references are empty")
    return sum(exact_match(reply, reference) for reply, reference in zip(replies, references)) / len(replies)


def count_unknown(predictions: Sequence[str]) -> int:
    """How many parsed answers are "unknown"."""
    return sum(prediction == UNKNOWN for prediction in predictions)


def answers_agree(first: str, second: str) -> bool:
    """True when both answers are the same "yes" or "no"; "unknown" agrees with nothing."""
    return first == second and first != UNKNOWN


def _check_labels(values: Sequence[str], allowed: tuple[str, ...], name: str) -> None:
    bad = sorted({value for value in values if value not in allowed})
    if bad:
        raise ValueError(f"{name} must be among {allowed}, found {bad}")


def _check_pairs(predictions: Sequence[str], references: Sequence[str]) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"predictions ({len(predictions)}) and references ({len(references)}) differ in length")
    if not predictions:
        raise ValueError("predictions and references are empty")
    _check_labels(predictions, PREDICTIONS, "predictions")
    _check_labels(references, LABELS, "references")


# --- classification scores -----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BinaryScores:
    """Scores of one run; fractions in [0, 1]. `unknown` counts unparseable predictions."""

    accuracy: float
    precision: float
    recall: float
    f1: float
    num_samples: int
    unknown: int


def accuracy(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Share of predictions equal to the reference; "unknown" is always wrong."""
    _check_pairs(predictions, references)
    return sum(answers_agree(p, r) for p, r in zip(predictions, references)) / len(references)


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else 0.0


def precision_recall_f1(predictions: Sequence[str], references: Sequence[str]) -> tuple[float, float, float]:
    """Precision, recall and F1 with "yes" as the positive class (0.0 for a zero denominator)."""
    _check_pairs(predictions, references)
    true_positive = sum(p == YES and r == YES for p, r in zip(predictions, references))
    predicted_positive = sum(p == YES for p in predictions)
    actual_positive = sum(r == YES for r in references)
    precision = _ratio(true_positive, predicted_positive)
    recall = _ratio(true_positive, actual_positive)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def binary_scores(predictions: Sequence[str], references: Sequence[str]) -> BinaryScores:
    """Accuracy, precision, recall, F1 and the number of "unknown" predictions of one run."""
    precision, recall, f1 = precision_recall_f1(predictions, references)
    return BinaryScores(
        accuracy=accuracy(predictions, references),
        precision=precision,
        recall=recall,
        f1=f1,
        num_samples=len(references),
        unknown=count_unknown(predictions),
    )


def answer_consistency(original: Sequence[str], compressed: Sequence[str]) -> float:
    """A.C. = share of samples whose answer on compressed audio equals that on the original.

    Independent of correctness; "unknown" on either side counts as inconsistent.
    """
    if len(original) != len(compressed):
        raise ValueError(f"original ({len(original)}) and compressed ({len(compressed)}) differ in length")
    if not original:
        raise ValueError("original and compressed answers are empty")
    _check_labels(original, PREDICTIONS, "original")
    _check_labels(compressed, PREDICTIONS, "compressed")
    return sum(answers_agree(a, b) for a, b in zip(original, compressed)) / len(original)


# --- summaries across seeds ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SeedSummary:
    """Mean and sample standard deviation (ddof = 1; NaN for one seed) of per-seed values."""

    mean: float
    std: float
    num_seeds: int


def summarize_seeds(values: Sequence[float]) -> SeedSummary:
    """Mean and sample standard deviation (ddof = 1) across seeds; std is NaN for a single seed."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"values must be a non-empty 1-D sequence, got shape {array.shape}")
    std = float(np.std(array, ddof=1)) if array.size > 1 else math.nan
    return SeedSummary(mean=float(np.mean(array)), std=std, num_seeds=int(array.size))


def delta_accuracy(compressed: Sequence[float], original: Sequence[float]) -> SeedSummary:
    """Per-seed accuracy differences compressed - original, paired by seed, summarised."""
    if len(compressed) != len(original):
        raise ValueError(f"compressed ({len(compressed)}) and original ({len(original)}) seed counts differ")
    return summarize_seeds([c - o for c, o in zip(compressed, original)])


# --- cost ----------------------------------------------------------------------------------------


def qwen2_audio_token_count(num_samples: int) -> int:
    """Audio tokens Qwen2-Audio gives a clip of `num_samples` at 16 kHz (25 a second).

    Mel frames ceil(n / 160), then the encoder's stride-2 convolution and stride-2 pooling, as in
    transformers' `_get_feat_extract_output_lengths`. Clips over 30 s are refused.
    """
    if not isinstance(num_samples, (int, np.integer)) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
    num_samples = int(num_samples)
    if num_samples > MAX_CLIP_SAMPLES:
        raise ValueError(f"num_samples {num_samples} exceeds 30 s at 16 kHz; split the clip into 30 s windows")
    return audio_tokens_of_samples(num_samples)


def codec_token_count(frame_count: int) -> int:
    """Codec tokens of `frame_count` frames: two codebooks, so 2 per frame."""
    if not isinstance(frame_count, (int, np.integer)) or frame_count < 0:
        raise ValueError(f"frame_count must be a non-negative integer, got {frame_count!r}")
    return TOKENS_PER_FRAME * int(frame_count)


@dataclasses.dataclass(frozen=True)
class TokenCounts:
    """Token counts of one clip before and after frame selection."""

    audio_tokens_before: int
    audio_tokens_after: int
    codec_tokens_before: int
    codec_tokens_after: int


def token_counts(num_samples: int, keep_mask: np.ndarray, token_rate: int,
                 audio_token_count: Callable[[int], int] | None = None) -> TokenCounts:
    """Audio and codec tokens of a clip and of its kept frames joined together; audio tokens by the
    model's `audio_token_count(samples)` (default: Qwen2-Audio's, `qwen2_audio_token_count`).

    Args:
      num_samples: the clip's length at 16 kHz.
      keep_mask: bool [num_frames] on the codec grid of `token_rate`.
      token_rate: codec tokens per second, 25, 50 or 100.
    The compressed clip's length is the kept frames' samples (the last frame clipped); at least
    one frame must be kept.
    """
    mask = _check_keep_mask(keep_mask, num_samples, token_rate)
    if not mask.any():
        raise ValueError("keep_mask keeps no frame")
    bounds = frame_bounds(num_samples, token_rate)
    kept_samples = int(np.sum(bounds[mask, 1] - bounds[mask, 0]))
    audio = audio_token_count or qwen2_audio_token_count
    return TokenCounts(
        audio_tokens_before=audio(num_samples),
        audio_tokens_after=audio(kept_samples),
        codec_tokens_before=codec_token_count(len(mask)),
        codec_tokens_after=codec_token_count(int(mask.sum())),
    )


# --- evidence recall -----------------------------------------------------------------------------


def _check_keep_mask(keep_mask: np.ndarray, num_samples: int, token_rate: int) -> np.ndarray:
    mask = np.asarray(keep_mask)
    if mask.dtype != np.bool_ or mask.ndim != 1:
        raise ValueError(f"keep_mask must be a 1-D bool array, got dtype {mask.dtype} shape {mask.shape}")
    expected = num_frames(num_samples, token_rate)
    if mask.shape[0] != expected:
        raise ValueError(
            f"keep_mask has {mask.shape[0]} frames; a clip of {num_samples} samples has {expected} at rate {token_rate}"
        )
    return mask


def keep_mask_from_indices(indices: Sequence[int], num_frames: int) -> np.ndarray:
    """A bool [num_frames] mask that is True at `indices` (kept frame indices)."""
    index_array = np.asarray(indices, dtype=np.int64).reshape(-1)
    if index_array.size and (index_array.min() < 0 or index_array.max() >= num_frames):
        raise ValueError(f"indices must lie in [0, {num_frames}), got {sorted(set(index_array.tolist()))}")
    mask = np.zeros(num_frames, dtype=bool)
    mask[index_array] = True
    return mask


def _interval_samples(intervals: Sequence[tuple[float, float]], num_samples: int) -> list[tuple[int, int]]:
    """Intervals in seconds -> [start, end) sample bounds clipped to the clip; empty ones dropped."""
    bounds = []
    for interval in intervals:
        if len(interval) != 2 or not 0 <= interval[0] < interval[1]:
            raise ValueError(f"evidence intervals must be (start_s, end_s) with 0 <= start < end, got {interval!r}")
        start = int(round(interval[0] * SAMPLE_RATE))
        end = min(int(round(interval[1] * SAMPLE_RATE)), num_samples)
        if start >= num_samples:
            raise ValueError(f"evidence interval {interval!r} starts after the clip's end ({num_samples} samples)")
        if end > start:
            bounds.append((start, end))
    return bounds


def evidence_frames(
    intervals: Sequence[tuple[float, float]],
    num_samples: int,
    token_rate: int,
    *,
    min_overlap: float = 0.5,
) -> np.ndarray:
    """Marks the codec frames that carry evidence: bool [num_frames].

    A frame is marked when at least `min_overlap` of its samples lie inside the union of the
    intervals; an interval that marks no frame this way marks the frame holding most of it.

    Args:
      intervals: evidence (start_s, end_s) in seconds; parts past the clip's end are ignored.
      num_samples: the clip's length at 16 kHz.
      token_rate: codec tokens per second, 25, 50 or 100.
      min_overlap: in (0, 1].
    """
    if not 0.0 < min_overlap <= 1.0:
        raise ValueError(f"min_overlap must lie in (0, 1], got {min_overlap!r}")
    bounds = frame_bounds(num_samples, token_rate)
    inside = np.zeros(num_samples + 1, dtype=np.int64)
    for start, end in _interval_samples(intervals, num_samples):
        inside[start] += 1
        inside[end] -= 1
    covered = np.concatenate([[0], np.cumsum(np.cumsum(inside)[:-1] > 0)])
    frame_lengths = bounds[:, 1] - bounds[:, 0]
    overlap = covered[bounds[:, 1]] - covered[bounds[:, 0]]
    marked = overlap >= min_overlap * frame_lengths
    for start, end in _interval_samples(intervals, num_samples):
        own = np.minimum(bounds[:, 1], end) - np.maximum(bounds[:, 0], start)
        if not np.any(marked & (own > 0)):
            marked[int(np.argmax(own))] = True
    return marked


def evidence_recall(
    keep_mask: np.ndarray,
    intervals: Sequence[tuple[float, float]],
    num_samples: int,
    token_rate: int,
    *,
    min_overlap: float = 0.5,
) -> float:
    """Share of a sample's evidence frames that `keep_mask` keeps; NaN when it has no evidence.

    Args:
      keep_mask: bool [num_frames] on the codec grid of `token_rate`, True for kept frames.
      intervals: the sample's evidence (start_s, end_s) in seconds.
      num_samples: the clip's length at 16 kHz.
      token_rate: codec tokens per second, 25, 50 or 100.
      min_overlap: see `evidence_frames`.
    """
    mask = _check_keep_mask(keep_mask, num_samples, token_rate)
    evidence = evidence_frames(intervals, num_samples, token_rate, min_overlap=min_overlap)
    if not evidence.any():
        return math.nan
    return float(np.sum(mask & evidence) / np.sum(evidence))


@dataclasses.dataclass(frozen=True)
class EvidenceRecallSummary:
    """Mean evidence recall over the samples that have evidence, and how many had none."""

    mean: float
    num_scored: int
    num_without_evidence: int


def summarize_evidence_recall(recalls: Sequence[float]) -> EvidenceRecallSummary:
    """Averages per-sample evidence recalls, leaving out (and counting) the NaNs of samples
    without evidence; the mean is NaN when no sample has evidence."""
    array = np.asarray(recalls, dtype=np.float64).reshape(-1)
    scored = array[~np.isnan(array)]
    return EvidenceRecallSummary(
        mean=float(scored.mean()) if scored.size else math.nan,
        num_scored=int(scored.size),
        num_without_evidence=int(array.size - scored.size),
    )
