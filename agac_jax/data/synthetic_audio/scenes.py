"""A harder synthetic evidence benchmark, `synthetic_scenes`: scenes in which loudness does not give
the evidence away.

On the `synthetic` benchmark (quiet pink noise, one to three separate events) the loudest frames of
a clip are its events, so a question-blind selector that keeps the loudest frames keeps the
evidence too, and that benchmark cannot tell question relevance from loudness. Here the evidence is
quiet, a louder event that no question is about sits in every clip, events overlap and the
background varies, so that keeping the loudest frames is no better a guide to the evidence than
keeping frames at random, while every question stays answerable from the audio. The event classes
and their rendering (`events`), the existence and order templates and the balanced schedule
(`questions`) and the split files (`splits`) are shared with `synthetic`.

Clips (16 kHz mono float32, 6 to 12 s) hold 3, 4 or 5 events (probabilities 1/4, 1/4, 1/2) of the 8
event classes; a class may occur more than once. Each event has a role:

- evidence: an event some question of the clip rests on. Evidence events are 0.4 to 1.5 s long at
  4 to 10 dB SNR; no two overlap, any two are at least 0.2 s apart (MIN_GAP_S), and all lie
  0.1 s or more from the clip's edges.
- distractor: every other event; each clip has at least one. Distractors are 1.5 to 4.5 s long
  (shrunk in proportion when the clip would otherwise exceed 12 s); the first (the loud
  distractor) is at 14 to 24 dB SNR, any others at 4 to 24 dB, so every evidence event is at least
  4 dB quieter than a distractor of another class in its clip, while not every quiet event is
  evidence. A distractor's class is none of the classes the clip's questions name (so the counts
  and the absent class the questions rest on stay true); distractors may share a class.

Layout: every event gets a slot on one time line (evidence in its planned order, the distractors'
slots at random places among them, slots 0.2 s apart, the free time spread at random); then each
distractor is shifted by a uniform offset that may carry it into its neighbours: into a
neighbouring distractor by up to half that one's length, into a neighbouring evidence event as
long as distractors cover at most half of that event (MAX_COVERED_SHARE) in all. So distractors
often overlap each other or part of an evidence event, and at least half of every evidence event
is heard over the background alone.

SNR is the RMS over the event (rendered at unit RMS with 10 ms fades, `events.render_event`)
against the background's RMS outside its silence gaps; a mixture that would peak above 0.9 is
scaled down as a whole (SNRs kept).

Backgrounds, one of five kinds drawn uniformly per clip (`Background`, recorded in each sample),
at an RMS level of -50 to -34 dBFS:
- "pink", "white", "brown": noise with power flat, falling as 1/f or as 1/f^2 (flat below 20 Hz);
- "hum": mains hum (50 or 60 Hz and 3 harmonics, amplitude 1/h) 6 to 12 dB over noise of a
  random colour;
- "gaps": noise of a random colour with 1 to 3 silence gaps of 0.5 to 1.5 s (one in each of as
  many equal stretches of the clip) where the background is zero, with 10 ms ramps outside them.

Questions (yes/no), and their evidence (the intervals, seconds, of the audio that decides it):
1. existence, "is there a {x} ?": "yes": every occurrence of x; "no": x is absent and the
   evidence is empty (absence rests on no localised stretch of audio; evidence recall leaves such
   samples out, as for `synthetic`);
2. order, "does the {a} come before the {b} ?", asked only when a and b each occur exactly once
   and lie at least 0.2 s apart (`order_answerable`): both events, either answer;
3. count, "is there more than one {x} ?", asked only when x occurs once, or twice at least 0.2 s
   apart (`count_answerable`): "yes" when twice; the evidence is every occurrence (one or two).

Planning a clip: the number of events n is drawn first; n - 1 events may be evidence. The count
question comes first ((x, answer) from its schedule: x twice or once); the order question follows
when the evidence budget leaves room for its two classes (a counted class that occurs once may be
one of them); then the existence question (a class already in the evidence, or a new one while
the budget lasts, for "yes"; a class absent from the clip for "no"); the remaining events are
distractors. So every clip has an existence and a count question and most an order question, and
the evidence of a clip's questions is a subset of its events (questions may share events: "is
there a {x} ?" may rest on the counted x).

Balance: each kind draws (class, answer) pairs from its own `questions.BalancedSchedule` (for order
the class named first); a pair the clip cannot satisfy waits for a later clip.

`all_questions` lists every question the templates can ask about a clip (for training), under the
same answerability rules. Everything is deterministic in (split, num_clips, seed); the splits (and
this benchmark against `synthetic`) derive different seeds, so they share no clip. Waveforms are
rendered on demand from a `ClipSpec`; `write_split`/`read_split` store a split as `splits` does
(manifest.jsonl and float32 WAVs), plus each clip's background.
"""
from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agac_jax.data.common import NO, SAMPLE_RATE, YES, Interval
from agac_jax.data.synthetic_audio import signals, splits
from agac_jax.data.synthetic_audio.events import (
    EDGE_MARGIN_S,
    EVENT_CLASSES,
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
    "BACKGROUND_KINDS", "COUNT", "EDGE_MARGIN_S", "EVENT_CLASSES", "EXISTENCE", "MANIFEST_NAME", "MIN_GAP_S",
    "ORDER", "PEAK_LIMIT", "QUESTION_KINDS", "SPLITS", "VOCABULARY", "Background", "ClipSpec", "Event", "Sample",
    "all_questions", "count_question", "existence_question", "generate_split", "order_question", "read_split",
    "render_background", "render_clip", "write_split",
]

COUNT = "count"
QUESTION_KINDS = (EXISTENCE, ORDER, COUNT)

MIN_CLIP_S = 6.0
MAX_CLIP_S = 12.0
EVENT_COUNT_WEIGHTS = {3: 0.25, 4: 0.25, 5: 0.5}  # events per clip and their probabilities
MIN_EVIDENCE_S = 0.4
MAX_EVIDENCE_S = 1.5
MIN_DISTRACTOR_S = 1.5
MAX_DISTRACTOR_S = 4.5
MAX_COVERED_SHARE = 0.5  # distractors cover at most this share of each evidence event
EVIDENCE_SNR_DB = (4.0, 10.0)
LOUD_SNR_DB = (14.0, 24.0)
DISTRACTOR_SNR_DB = (4.0, 24.0)

NOISE_COLOURS = ("pink", "white", "brown")
BACKGROUND_KINDS = NOISE_COLOURS + ("hum", "gaps")
BACKGROUND_LEVEL_DBFS = (-50.0, -34.0)
HUM_FUNDAMENTALS_HZ = (50.0, 60.0)
HUM_HARMONICS = 4
HUM_OVER_NOISE_DB = (6.0, 12.0)
SILENCE_GAPS = (1, 3)
SILENCE_GAP_S = (0.5, 1.5)
GAP_RAMP_S = 0.01

_BENCHMARK_CODE = 0x5CE4E5  # in every split's seed, so no scenes clip repeats a synthetic one


@dataclasses.dataclass(frozen=True)
class Background:
    """A clip's background: its kind, RMS level (dBFS, outside silence gaps), noise colour, hum, gaps.

    kind: one of BACKGROUND_KINDS; colour: the noise's colour (NOISE_COLOURS); hum_hz: the hum's
    fundamental (0 without hum); hum_over_noise_db: the hum's level over the noise's; gaps: the
    silence gaps (start_s, end_s), where the background is zero.
    """

    kind: str
    level_dbfs: float
    colour: str
    hum_hz: float = 0.0
    hum_over_noise_db: float = 0.0
    gaps: tuple[Interval, ...] = ()

    @property
    def rms(self) -> float:
        """The background's RMS outside the gaps, the reference of every event's SNR."""
        return float(10 ** (self.level_dbfs / 20))


@dataclasses.dataclass(frozen=True)
class ClipSpec:
    """Everything needed to render one clip: its length, events, background and the seed of its noise."""

    clip_id: str
    num_samples: int
    events: tuple[Event, ...]
    background: Background
    render_seed: int

    def load(self) -> np.ndarray:
        """Renders the clip, float32 [num_samples]; the same spec always gives the same array."""
        return render_clip(self)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Sample(EventSample):
    """A scenes sample: the common fields plus the question kind, the clip's events, length and background.

    `events` lists every event of the clip (sorted by start), evidence and distractors alike.
    """

    background: Background


# --- questions and vocabulary --------------------------------------------------------------------


def count_question(label: str) -> str:
    """'is there more than one {label} ?'"""
    return f"is there more than one {label} ?"


VOCABULARY: list[str] = vocabulary(
    [existence_question(label) for label in EVENT_CLASSES]
    + [count_question(label) for label in EVENT_CLASSES]
    + [order_question(a, b) for a, b in itertools.permutations(EVENT_CLASSES, 2)]
)


def separated(a: Event, b: Event) -> bool:
    """Whether two events are at least MIN_GAP_S apart (so neither overlaps the other)."""
    return b.start_s - a.end_s >= MIN_GAP_S - 1e-9 or a.start_s - b.end_s >= MIN_GAP_S - 1e-9


def occurrences(events: Iterable[Event], label: str) -> list[Event]:
    """The events of class `label`, by start."""
    return sorted((e for e in events if e.label == label), key=lambda e: e.start_s)


def order_answerable(events: Sequence[Event], first: str, second: str) -> bool:
    """An order question about (first, second) is asked only when each occurs exactly once, separated."""
    a, b = occurrences(events, first), occurrences(events, second)
    return first != second and len(a) == 1 and len(b) == 1 and separated(a[0], b[0])


def count_answerable(events: Sequence[Event], label: str) -> bool:
    """A count question about `label` is asked only when it occurs once, or twice separated."""
    found = occurrences(events, label)
    return len(found) == 1 or (len(found) == 2 and separated(*found))


def _evidence(events: Iterable[Event]) -> tuple[Interval, ...]:
    return tuple(sorted(e.interval for e in events))


def existence_sample(base: Sample, label: str, sample_id: str) -> Sample:
    """The existence question about `label`, answered and evidenced from `base.events`."""
    found = occurrences(base.events, label)
    return dataclasses.replace(base, sample_id=sample_id, kind=EXISTENCE, question=existence_question(label),
                               answer=YES if found else NO, evidence=_evidence(found))


def order_sample(base: Sample, first: str, second: str, sample_id: str) -> Sample:
    """The order question about (first, second), answered and evidenced from `base.events`."""
    if not order_answerable(base.events, first, second):
        raise ValueError(f"clip {base.clip_id}: no order question about {first!r} and {second!r}")
    (a,), (b,) = occurrences(base.events, first), occurrences(base.events, second)
    return dataclasses.replace(base, sample_id=sample_id, kind=ORDER, question=order_question(first, second),
                               answer=YES if a.start_s < b.start_s else NO, evidence=_evidence((a, b)))


def count_sample(base: Sample, label: str, sample_id: str) -> Sample:
    """The count question about `label`, answered and evidenced from `base.events`."""
    if not count_answerable(base.events, label):
        raise ValueError(f"clip {base.clip_id}: no count question about {label!r}")
    found = occurrences(base.events, label)
    return dataclasses.replace(base, sample_id=sample_id, kind=COUNT, question=count_question(label),
                               answer=YES if len(found) == 2 else NO, evidence=_evidence(found))


def all_questions(samples: Sequence[Sample]) -> list[Sample]:
    """Every question the templates can ask about each clip of `samples`, answered from its events.

    Per clip (first-seen order): the existence question of each of the 8 classes, the count
    question of every class that `count_answerable` allows, and the order question of every ordered
    pair that `order_answerable` allows (so both orders of each pair, one "yes" and one "no").
    """
    clips: dict[str, Sample] = {}
    for sample in samples:
        clips.setdefault(sample.clip_id, sample)
    out = []
    for clip_id, base in clips.items():
        for label in EVENT_CLASSES:
            out.append(existence_sample(base, label, f"{clip_id}-all-{EXISTENCE}-{label}"))
        for label in EVENT_CLASSES:
            if count_answerable(base.events, label):
                out.append(count_sample(base, label, f"{clip_id}-all-{COUNT}-{label}"))
        for first, second in itertools.permutations(EVENT_CLASSES, 2):
            if order_answerable(base.events, first, second):
                out.append(order_sample(base, first, second, f"{clip_id}-all-{ORDER}-{first}-{second}"))
    return out


# --- rendering -----------------------------------------------------------------------------------


_NOISES: dict[str, signals.Renderer] = {
    "pink": signals.pink_noise,
    "white": signals.white_noise,
    "brown": signals.brown_noise,
}


def _gap_envelope(gaps: Sequence[Interval], num_samples: int) -> np.ndarray:
    """1 outside the gaps, 0 inside, with raised-cosine ramps of GAP_RAMP_S just outside each gap."""
    envelope = np.ones(num_samples)
    length = seconds_to_samples(GAP_RAMP_S)
    ramp = signals.rising_ramp(length)  # 0 -> 1
    for start_s, end_s in gaps:
        start, end = seconds_to_samples(start_s), seconds_to_samples(end_s)
        envelope[start:end] = 0.0
        before = envelope[max(start - length, 0) : start]
        before *= ramp[::-1][length - len(before) :]
        after = envelope[end : end + length]
        after *= ramp[: len(after)]
    return envelope


def render_background(background: Background, rng: np.random.Generator, num_samples: int) -> np.ndarray:
    """The background alone, float64 [num_samples], at RMS `background.rms` outside its gaps."""
    noise = _NOISES[background.colour](rng, num_samples)
    if background.hum_hz:
        hum_gain = 10 ** (background.hum_over_noise_db / 20)
        mixed = noise + hum_gain * signals.hum(rng, background.hum_hz, num_samples, HUM_HARMONICS)
        noise = signals.unit_rms(mixed)
    signal = background.rms * noise
    if background.gaps:
        signal *= _gap_envelope(background.gaps, num_samples)
    return signal


def render_clip(spec: ClipSpec, *, background: bool = True, events: Sequence[int] | None = None) -> np.ndarray:
    """Renders a clip: its background plus its events, float32 [spec.num_samples].

    Each event is scaled to background.rms * 10 ** (snr_db / 20); if the mixture would peak above
    PEAK_LIMIT, the whole clip is scaled down (the SNRs are kept). `background=False` leaves the
    background out and `events` (indices into spec.events; None: all) keeps only those events, both
    with the full mixture's scaling, which shows each event's own footprint.
    """
    seeds = np.random.SeedSequence(spec.render_seed).spawn(1 + len(spec.events))
    noise = render_background(spec.background, np.random.default_rng(seeds[0]), spec.num_samples)
    tracks = np.zeros((len(spec.events), spec.num_samples))
    for track, event, seed in zip(tracks, spec.events, seeds[1:]):
        start = seconds_to_samples(event.start_s)
        signal = render_event(event, np.random.default_rng(seed))
        track[start : start + len(signal)] = spec.background.rms * 10 ** (event.snr_db / 20) * signal
    mixture = noise + tracks.sum(axis=0)
    scale = min(1.0, PEAK_LIMIT / np.max(np.abs(mixture)))
    chosen = tracks.sum(axis=0) if events is None else tracks[list(events)].sum(axis=0)
    clip = ((noise if background else 0.0) + chosen) * scale
    return np.asarray(clip, dtype=np.float32)


# --- planning a split ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _ClipPlan:
    """What a clip holds and asks: its evidence events by class (occurrences), its distractor classes,
    and its questions: count (class, answer), existence (class, answer), order (first, second, answer)."""

    evidence: dict[str, int]
    distractors: tuple[str, ...]
    count: tuple[str, str]
    existence: tuple[str, str]
    order: tuple[str, str, str] | None


def _plan_clip(rng: np.random.Generator, schedules: dict[str, BalancedSchedule]) -> _ClipPlan:
    sizes = list(EVENT_COUNT_WEIGHTS)
    num_events = int(rng.choice(sizes, p=[EVENT_COUNT_WEIGHTS[n] for n in sizes]))
    budget = num_events - 1  # evidence events; at least one event is a distractor

    def pick(exclude: set[str]) -> str:
        choices = [label for label in EVENT_CLASSES if label not in exclude]
        return choices[int(rng.integers(len(choices)))]

    counted, count_answer = schedules[COUNT].take(lambda label, answer: True)
    evidence = {counted: 2 if count_answer == YES else 1}
    room = budget - sum(evidence.values())
    order = None
    if room >= 1 + (count_answer == YES):  # both named classes new, or one of them the counted one
        first, order_answer = schedules[ORDER].take(lambda label, answer: evidence.get(label, 0) <= 1)
        if room == 1 and first != counted:
            second = counted
        else:
            second = pick({first} | {label for label, n in evidence.items() if n > 1})
        for label in (first, second):
            evidence.setdefault(label, 1)
        order = (first, second, order_answer)
    room = budget - sum(evidence.values())

    def existence_allowed(label: str, answer: str) -> bool:
        return (label in evidence or room >= 1) if answer == YES else label not in evidence

    target, existence_answer = schedules[EXISTENCE].take(existence_allowed)
    if existence_answer == YES:
        evidence.setdefault(target, 1)
    taken = set(evidence) | {target}
    distractors = tuple(pick(taken) for _ in range(num_events - sum(evidence.values())))
    return _ClipPlan(evidence, distractors, (counted, count_answer), (target, existence_answer), order)


def _evidence_layout(rng: np.random.Generator, plan: _ClipPlan) -> list[str]:
    """The evidence events' classes in time order, the order question's pair in its answer's order."""
    labels = [label for label, n in plan.evidence.items() for _ in range(n)]
    labels = [labels[i] for i in rng.permutation(len(labels))]
    if plan.order is not None:
        first, second, answer = plan.order
        i, j = labels.index(first), labels.index(second)
        if (i < j) != (answer == YES):
            labels[i], labels[j] = labels[j], labels[i]
    return labels


def _layout(rng: np.random.Generator, evidence_labels: Sequence[str],
            distractor_labels: Sequence[str]) -> tuple[int, list[tuple[int, int]], list[tuple[int, int]]]:
    """The clip length and the (start, end) samples of the evidence events (in the given order) and of
    the distractors.

    Every event gets a slot in one time line: the evidence in its given order, the distractors'
    slots inserted at random places among them, slots at least MIN_GAP_S apart and EDGE_MARGIN_S
    from the edges, the free time spread at random. Each distractor is then shifted by a uniform
    offset that may carry it into its neighbours: into a neighbouring distractor up to half that
    one's length, into a neighbouring evidence event only while distractors cover at most
    MAX_COVERED_SHARE of it. Distractor lengths shrink in proportion when the clip would exceed
    MAX_CLIP_S.
    """
    margin, gap = seconds_to_samples(EDGE_MARGIN_S), seconds_to_samples(MIN_GAP_S)
    evidence_lengths = [seconds_to_samples(rng.uniform(MIN_EVIDENCE_S, MAX_EVIDENCE_S)) for _ in evidence_labels]
    distractor_lengths = [seconds_to_samples(rng.uniform(MIN_DISTRACTOR_S, MAX_DISTRACTOR_S))
                          for _ in distractor_labels]
    slots = len(evidence_labels) + len(distractor_labels)
    fixed = sum(evidence_lengths) + 2 * margin + gap * (slots - 1)
    room = seconds_to_samples(MAX_CLIP_S) - fixed
    if sum(distractor_lengths) > room:
        distractor_lengths = [int(length * room / sum(distractor_lengths)) for length in distractor_lengths]
    needed = fixed + sum(distractor_lengths)
    clip_samples = max(seconds_to_samples(rng.uniform(MIN_CLIP_S, MAX_CLIP_S)), needed)
    is_distractor = np.zeros(slots, bool)
    is_distractor[rng.choice(slots, len(distractor_labels), replace=False)] = True
    evidence_iter, distractor_iter = iter(range(len(evidence_labels))), iter(range(len(distractor_labels)))
    sequence = [("d", next(distractor_iter)) if d else ("e", next(evidence_iter)) for d in is_distractor]
    lengths = {("e", i): n for i, n in enumerate(evidence_lengths)}
    lengths.update({("d", i): n for i, n in enumerate(distractor_lengths)})
    slot_of = dict(zip(sequence, spread_in_time(rng, [lengths[item] for item in sequence], clip_samples, margin,
                                                gap)))
    covered = {("e", i): 0 for i in range(len(evidence_labels))}  # samples of each evidence event under distractors
    placed = dict(slot_of)
    for index, item in enumerate(sequence):
        if item[0] != "d":
            continue
        start, end = slot_of[item]

        def reach(neighbour: tuple[str, int] | None, free: int) -> int:
            if neighbour is None:
                return free
            if neighbour[0] == "d":
                return free + lengths[neighbour] // 2
            return free + max(int(MAX_COVERED_SHARE * lengths[neighbour]) - covered[neighbour], 0)

        before = sequence[index - 1] if index > 0 else None
        after = sequence[index + 1] if index + 1 < slots else None
        left = reach(before, start - (slot_of[before][1] if before else margin))
        right = reach(after, (slot_of[after][0] if after else clip_samples - margin) - end)
        shift = int(rng.integers(-left, right + 1))
        start, end = start + shift, end + shift
        placed[item] = (start, end)
        for neighbour in (before, after):
            if neighbour is not None and neighbour[0] == "e":
                e_start, e_end = slot_of[neighbour]
                covered[neighbour] += max(0, min(end, e_end) - max(start, e_start))
    evidence = [placed[("e", i)] for i in range(len(evidence_labels))]
    distractors = [placed[("d", i)] for i in range(len(distractor_labels))]
    return clip_samples, evidence, distractors


def _draw_background(rng: np.random.Generator, clip_samples: int) -> Background:
    kind = BACKGROUND_KINDS[int(rng.integers(len(BACKGROUND_KINDS)))]
    level = float(rng.uniform(*BACKGROUND_LEVEL_DBFS))
    colour = kind if kind in NOISE_COLOURS else NOISE_COLOURS[int(rng.integers(len(NOISE_COLOURS)))]
    if kind == "hum":
        return Background(kind, level, colour, hum_hz=float(rng.choice(HUM_FUNDAMENTALS_HZ)),
                          hum_over_noise_db=float(rng.uniform(*HUM_OVER_NOISE_DB)))
    if kind == "gaps":
        count = int(rng.integers(SILENCE_GAPS[0], SILENCE_GAPS[1] + 1))
        slot = clip_samples / SAMPLE_RATE / count  # one gap in each of `count` equal stretches of the clip
        gaps = []
        for k in range(count):
            length = min(float(rng.uniform(*SILENCE_GAP_S)), slot - 2 * GAP_RAMP_S)
            start = k * slot + GAP_RAMP_S + float(rng.uniform(0.0, slot - 2 * GAP_RAMP_S - length))
            gaps.append((start, start + length))
        return Background(kind, level, colour, gaps=tuple(gaps))
    return Background(kind, level, colour)


def _clip_samples(clip_id: str, plan: _ClipPlan, rng: np.random.Generator) -> list[Sample]:
    labels = _evidence_layout(rng, plan)
    clip_samples, evidence, distractors = _layout(rng, labels, plan.distractors)
    events = [Event(label, start / SAMPLE_RATE, end / SAMPLE_RATE, float(rng.uniform(*EVIDENCE_SNR_DB)))
              for label, (start, end) in zip(labels, evidence)]
    for index, (label, (start, end)) in enumerate(zip(plan.distractors, distractors)):
        snr = rng.uniform(*(LOUD_SNR_DB if index == 0 else DISTRACTOR_SNR_DB))
        events.append(Event(label, start / SAMPLE_RATE, end / SAMPLE_RATE, float(snr)))
    events = tuple(sorted(events, key=lambda e: (e.start_s, e.label)))
    background = _draw_background(rng, clip_samples)
    spec = ClipSpec(clip_id, clip_samples, events, background, int(rng.integers(2**63 - 1)))
    base = Sample(sample_id=clip_id, clip_id=clip_id, question="", answer=YES, audio=spec, evidence=None,
                  kind="", events=events, num_samples=clip_samples, background=background)
    samples = [existence_sample(base, plan.existence[0], f"{clip_id}-{EXISTENCE}")]
    if plan.order is not None:
        samples.append(order_sample(base, plan.order[0], plan.order[1], f"{clip_id}-{ORDER}"))
    samples.append(count_sample(base, plan.count[0], f"{clip_id}-{COUNT}"))
    asked = [plan.existence[1]] + ([plan.order[2]] if plan.order else []) + [plan.count[1]]
    if [sample.answer for sample in samples] != asked:  # the layout must give the planned answers
        raise AssertionError(f"clip {clip_id}: planned answers {asked}, events give {samples}")
    return samples


def generate_split(split: str, num_clips: int, seed: int) -> list[Sample]:
    """Generates the samples of `num_clips` clips of one split.

    Args:
      split: "train", "validation" or "test"; each derives its own seeds, so splits share no clip.
      num_clips: number of clips (>= 1); each gives an existence and a count question, and an
        order question when it holds one.
      seed: non-negative; the same (split, num_clips, seed) always gives identical samples.
    Returns:
      Samples in clip order: a clip's existence, order (when asked) and count questions.
    """
    schedules, clip_rngs = splits.split_streams(split, num_clips, seed, QUESTION_KINDS, salt=(_BENCHMARK_CODE,))
    samples: list[Sample] = []
    for index, rng in enumerate(clip_rngs):
        plan = _plan_clip(rng, schedules)
        samples.extend(_clip_samples(f"scenes-{split}-seed{seed}-{index:05d}", plan, rng))
    return samples


# --- writing and reading -------------------------------------------------------------------------


def _sample_record(sample: Sample, audio_path: str) -> dict[str, Any]:
    return {**splits.sample_record(sample, audio_path), "background": dataclasses.asdict(sample.background)}


def write_split(directory: Path | str, samples: Sequence[Sample]) -> Path:
    """Writes each clip once as `audio/{clip_id}.wav` (float32) and one JSONL line per sample, with
    the clip's background.

    Returns the manifest's path, `{directory}/manifest.jsonl`.
    """
    return splits.write_split(directory, samples, _sample_record)


def _sample_from_record(record: dict[str, Any], directory: Path) -> Sample:
    background = dict(record["background"])
    background["gaps"] = tuple((float(start), float(end)) for start, end in background["gaps"])
    return Sample(**splits.sample_fields(record, directory), background=Background(**background))


def read_split(directory: Path | str) -> list[Sample]:
    """Reads what `write_split` wrote; the samples load their audio from the WAV files."""
    return splits.read_split(directory, _sample_from_record, "synthetic_scenes")
