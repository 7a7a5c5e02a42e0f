"""A synthetic yes/no audio question-answering benchmark whose evidence is known to the sample.

Each clip (16 kHz mono, 3 to 12 s) is pink background noise with one to three sound events of
distinct classes (the 8 classes of `events`, pitches and rates jittered by 5 % per event):

    low tone       250 Hz sine             high tone      3 kHz sine
    rising chirp   300 Hz -> 5 kHz sweep   falling chirp  5 kHz -> 300 Hz sweep
    pulsing tone   500 Hz, 6 Hz full AM    siren          900-1800 Hz FM at 3 Hz
    noise burst    white noise             click train    4 kHz ticks, 12 a second

placed without overlap (at least 0.2 s apart, 0.1 s from the clip's edges), each
0.3 to 1.5 s long at its own signal-to-noise ratio (6 to 20 dB, RMS over the event against the
background's RMS). Each clip is asked

- an existence question, "is there a {event} ?", and,
- when it holds two events or more, an order question, "does the {a} come before the {b} ?".

Evidence, the intervals (seconds) of the audio that decides the answer:
- existence, "yes": the interval of that event;
- existence, "no": empty. Absence is a property of the whole clip, not of any stretch of it; the
  whole clip would make evidence recall equal the keep ratio for every selector, so such samples
  carry no evidence and are left out of evidence recall (see `agac_jax.eval.metrics`);
- order, either answer: the intervals of both named events (both are present; "no" means the
  {b} comes first).

Balance: existence questions draw (class, answer) from shuffled blocks that hold every pair once, so
each class is asked "yes" and "no" equally often (to within one). Order questions do the same for the
class named first; a pair that the clip cannot satisfy (the first class is the one the existence
question needs absent) waits for a later clip; only pairs still waiting at the end unbalance a
class, by one or two.

`all_questions` lists every question the templates can ask about a clip (for training).
Everything is deterministic in (split, num_clips, seed); the three splits derive different seeds,
so they share no clip. Waveforms are rendered on demand from a `ClipSpec`; `write_split` and
`read_split` store a split as `splits` does (manifest.jsonl and float32 WAVs).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from agac_jax.data.common import NO, SAMPLE_RATE, YES
from agac_jax.data.synthetic_audio import signals, splits
from agac_jax.data.synthetic_audio.events import (
    EDGE_MARGIN_S,
    EVENT_CLASSES,
    FADE_S,
    MIN_GAP_S,
    PEAK_LIMIT,
    Event,
    EventSample,
    render_event,
    spread_in_time,
)
from agac_jax.data.synthetic_audio.questions import (
    EXISTENCE,
    ORDER,
    BalancedSchedule,
    existence_question,
    order_question,
    vocabulary,
)
from agac_jax.data.synthetic_audio.signals import seconds_to_samples
from agac_jax.data.synthetic_audio.splits import MANIFEST_NAME, SPLITS

__all__ = [
    "BACKGROUND_RMS", "EDGE_MARGIN_S", "EVENT_CLASSES", "EXISTENCE", "FADE_S", "MANIFEST_NAME", "MAX_CLIP_S",
    "MAX_EVENT_S", "MAX_SNR_DB", "MIN_CLIP_S", "MIN_EVENT_S", "MIN_GAP_S", "MIN_SNR_DB", "ORDER", "PEAK_LIMIT",
    "QUESTION_KINDS", "SAMPLE_RATE", "SPLITS", "VOCABULARY", "ClipSpec", "Event", "Sample", "all_questions",
    "existence_question", "generate_split", "order_question", "read_split", "render_clip", "render_event",
    "seconds_to_samples", "write_split",
]

QUESTION_KINDS = (EXISTENCE, ORDER)

MIN_CLIP_S = 3.0
MAX_CLIP_S = 12.0
MIN_EVENT_S = 0.3
MAX_EVENT_S = 1.5
MIN_SNR_DB = 6.0
MAX_SNR_DB = 20.0
BACKGROUND_RMS = 0.02


@dataclasses.dataclass(frozen=True)
class ClipSpec:
    """Everything needed to render one clip: its length, its events and the seed of its noise."""

    clip_id: str
    num_samples: int
    events: tuple[Event, ...]
    render_seed: int

    def load(self) -> np.ndarray:
        """Renders the clip, float32 [num_samples]; the same spec always gives the same array."""
        return render_clip(self)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Sample(EventSample):
    """A synthetic sample: the common fields plus the question kind, the clip's events and length.

    `events` lists every event of the clip (sorted by start), not only the evidence.
    """


VOCABULARY: list[str] = vocabulary(
    [existence_question(label) for label in EVENT_CLASSES]
    + [order_question(a, b) for a, b in itertools.permutations(EVENT_CLASSES, 2)]
)


# --- rendering -----------------------------------------------------------------------------------


def render_clip(spec: ClipSpec, *, background: bool = True) -> np.ndarray:
    """Renders a clip: background noise plus its events, float32 [spec.num_samples].

    Each event is scaled to BACKGROUND_RMS * 10 ** (snr_db / 20); if the mixture would peak above
    PEAK_LIMIT, the whole clip is scaled down (the SNRs are kept). `background=False` leaves the
    noise out (but keeps the same scaling), which shows each event's own footprint.
    """
    seeds = np.random.SeedSequence(spec.render_seed).spawn(1 + len(spec.events))
    noise = BACKGROUND_RMS * signals.pink_noise(np.random.default_rng(seeds[0]), spec.num_samples)
    events = np.zeros(spec.num_samples)
    for event, seed in zip(spec.events, seeds[1:]):
        start = seconds_to_samples(event.start_s)
        signal = render_event(event, np.random.default_rng(seed))
        events[start : start + len(signal)] += BACKGROUND_RMS * 10 ** (event.snr_db / 20) * signal
    mixture = noise + events
    scale = min(1.0, PEAK_LIMIT / np.max(np.abs(mixture)))
    clip = (mixture if background else events) * scale
    return clip.astype(np.float32)


# --- planning a split ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _ClipPlan:
    """Which classes a clip holds, in time order, and what it is asked."""

    labels_in_time_order: tuple[str, ...]
    existence: tuple[str, str]
    order: tuple[str, str, str] | None


def _plan_clip(rng: np.random.Generator, schedules: dict[str, BalancedSchedule]) -> _ClipPlan:
    num_events = int(rng.integers(1, 4))
    target, existence_answer = schedules[EXISTENCE].take(lambda label, answer: True)
    forbidden = {target} if existence_answer == NO else set()

    def pick(exclude: set[str]) -> str:
        choices = [label for label in EVENT_CLASSES if label not in exclude]
        return choices[int(rng.integers(len(choices)))]

    if num_events == 1:
        label = target if existence_answer == YES else pick(forbidden)
        return _ClipPlan((label,), (target, existence_answer), None)

    first, order_answer = schedules[ORDER].take(lambda label, answer: label not in forbidden)
    if existence_answer == YES and target != first:
        second = target
    else:
        second = pick(forbidden | {first})
    labels = [first, second]
    if num_events == 3:
        labels.append(target if existence_answer == YES and target not in labels else pick(forbidden | set(labels)))
    labels = [labels[i] for i in rng.permutation(len(labels))]
    first_before_second = labels.index(first) < labels.index(second)
    if first_before_second != (order_answer == YES):
        i, j = labels.index(first), labels.index(second)
        labels[i], labels[j] = labels[j], labels[i]
    return _ClipPlan(tuple(labels), (target, existence_answer), (first, second, order_answer))


def _place_events(rng: np.random.Generator, labels: Sequence[str]) -> tuple[int, list[tuple[int, int]]]:
    """The layout: event lengths, the clip length and non-overlapping positions, all in samples.

    Returns (clip samples, [(start, end) per label, in the given order]).
    """
    lengths = [seconds_to_samples(rng.uniform(MIN_EVENT_S, MAX_EVENT_S)) for _ in labels]
    margin, gap = seconds_to_samples(EDGE_MARGIN_S), seconds_to_samples(MIN_GAP_S)
    needed = sum(lengths) + 2 * margin + gap * (len(labels) - 1)
    clip_samples = seconds_to_samples(rng.uniform(max(MIN_CLIP_S, needed / SAMPLE_RATE), MAX_CLIP_S))
    clip_samples = max(clip_samples, needed)
    return clip_samples, spread_in_time(rng, lengths, clip_samples, margin, gap)


def _clip_samples(clip_id: str, plan: _ClipPlan, rng: np.random.Generator) -> list[Sample]:
    num_samples, positions = _place_events(rng, plan.labels_in_time_order)
    events = tuple(
        Event(label, start / SAMPLE_RATE, end / SAMPLE_RATE, float(rng.uniform(MIN_SNR_DB, MAX_SNR_DB)))
        for label, (start, end) in zip(plan.labels_in_time_order, positions)
    )
    spec = ClipSpec(clip_id, num_samples, events, int(rng.integers(2**63 - 1)))
    by_label = {event.label: event for event in events}
    common = dict(clip_id=clip_id, audio=spec, events=events, num_samples=num_samples)

    target, existence_answer = plan.existence
    existence_evidence = (by_label[target].interval,) if existence_answer == YES else ()
    samples = [
        Sample(
            sample_id=f"{clip_id}-{EXISTENCE}",
            question=existence_question(target),
            answer=existence_answer,
            evidence=existence_evidence,
            kind=EXISTENCE,
            **common,
        )
    ]
    if plan.order is not None:
        first, second, order_answer = plan.order
        evidence = tuple(sorted((by_label[first].interval, by_label[second].interval)))
        samples.append(
            Sample(
                sample_id=f"{clip_id}-{ORDER}",
                question=order_question(first, second),
                answer=order_answer,
                evidence=evidence,
                kind=ORDER,
                **common,
            )
        )
    return samples


def generate_split(split: str, num_clips: int, seed: int) -> list[Sample]:
    """Generates the samples of `num_clips` clips of one split.

    Args:
      split: "train", "validation" or "test"; each derives its own seeds, so splits share no clip.
      num_clips: number of clips (>= 1); each gives one existence question, and one order question
        when it holds two events or more.
      seed: non-negative; the same (split, num_clips, seed) always gives identical samples.
    Returns:
      Samples in clip order, the existence question of a clip before its order question.
    """
    schedules, clip_rngs = splits.split_streams(split, num_clips, seed, QUESTION_KINDS)
    samples: list[Sample] = []
    for index, rng in enumerate(clip_rngs):
        plan = _plan_clip(rng, schedules)
        samples.extend(_clip_samples(f"{split}-seed{seed}-{index:05d}", plan, rng))
    return samples


def all_questions(samples: Sequence[Sample]) -> list[Sample]:
    """Every question the templates can ask about each clip of `samples`, answered from its events.

    Per clip: the existence question of each of the 8 classes (so a clip with k events answers "yes"
    k times in 8, which lets the audio alone predict the answer in part and gives training a signal
    before the model has learnt to read the question), and the order question of every ordered
    pair of its events. Clips keep their first-seen order.
    """
    clips: dict[str, Sample] = {}
    for sample in samples:
        clips.setdefault(sample.clip_id, sample)
    out = []
    for clip_id, sample in clips.items():
        by_label = {event.label: event for event in sample.events}
        starts = {label: event.start_s for label, event in by_label.items()}
        for label in EVENT_CLASSES:
            present = label in by_label
            out.append(dataclasses.replace(
                sample, sample_id=f"{clip_id}-all-{EXISTENCE}-{label}", kind=EXISTENCE,
                question=existence_question(label), answer=YES if present else NO,
                evidence=(by_label[label].interval,) if present else ()))
        for first, second in itertools.permutations(by_label, 2):
            out.append(dataclasses.replace(
                sample, sample_id=f"{clip_id}-all-{ORDER}-{first}-{second}", kind=ORDER,
                question=order_question(first, second),
                answer=YES if starts[first] < starts[second] else NO,
                evidence=tuple(sorted((by_label[first].interval, by_label[second].interval)))))
    return out


# --- writing and reading -------------------------------------------------------------------------


def write_split(directory: Path | str, samples: Sequence[Sample]) -> Path:
    """Writes each clip once as `audio/{clip_id}.wav` (float32) and one JSONL line per sample.

    Returns the manifest's path, `{directory}/manifest.jsonl`.
    """
    return splits.write_split(directory, samples)


def _sample_from_record(record: dict, directory: Path) -> Sample:
    return Sample(**splits.sample_fields(record, directory))


def read_split(directory: Path | str) -> list[Sample]:
    """Reads what `write_split` wrote; the samples load their audio from the WAV files."""
    return splits.read_split(directory, _sample_from_record, "synthetic")
