"""A synthetic yes/no audio question-answering benchmark whose evidence is known to the sample.

Each clip (16 kHz mono, 3 to 12 s) is pink background noise with one to three sound events of
distinct classes (pitches and rates jittered by 5 % per event):

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

Everything is deterministic in (split, num_clips, seed); the three splits derive different seeds,
so they share no clip. Waveforms are rendered on demand from a `ClipSpec`.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import soundfile

from agac_jax.data.common import NO, SAMPLE_RATE, YES, AudioQASample, Interval, WavFile

SPLITS = ("train", "validation", "test")
EXISTENCE = "existence"
ORDER = "order"
QUESTION_KINDS = (EXISTENCE, ORDER)

MIN_CLIP_S = 3.0
MAX_CLIP_S = 12.0
MIN_EVENT_S = 0.3
MAX_EVENT_S = 1.5
MIN_GAP_S = 0.2
EDGE_MARGIN_S = 0.1
MIN_SNR_DB = 6.0
MAX_SNR_DB = 20.0
BACKGROUND_RMS = 0.02
PEAK_LIMIT = 0.9
FADE_S = 0.01
MANIFEST_NAME = "manifest.jsonl"

_SPLIT_CODES = {name: code for code, name in enumerate(SPLITS)}


@dataclasses.dataclass(frozen=True)
class Event:
    """One sound event of a clip: its class label, its interval in seconds, its SNR in dB."""

    label: str
    start_s: float
    end_s: float
    snr_db: float

    @property
    def interval(self) -> Interval:
        """(start_s, end_s)."""
        return (self.start_s, self.end_s)


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
class Sample(AudioQASample):
    """A synthetic sample: the common fields plus the question kind, the clip's events and length.

    `events` lists every event of the clip (sorted by start), not only the evidence.
    """

    kind: str
    events: tuple[Event, ...]
    num_samples: int


# --- event classes -------------------------------------------------------------------------------


def _jitter(rng: np.random.Generator, value: float, spread: float = 0.05) -> float:
    return value * float(rng.uniform(1.0 - spread, 1.0 + spread))


def _tone(base_hz: float) -> Callable[[np.random.Generator, int], np.ndarray]:
    """A pure tone near base_hz with a random phase."""

    def render(rng: np.random.Generator, num_samples: int) -> np.ndarray:
        time = np.arange(num_samples) / SAMPLE_RATE
        return np.sin(2 * np.pi * _jitter(rng, base_hz) * time + rng.uniform(0, 2 * np.pi))

    return render


def _chirp(start_hz: float, end_hz: float) -> Callable[[np.random.Generator, int], np.ndarray]:
    """An exponential sweep from start_hz to end_hz over the event's whole length."""

    def render(rng: np.random.Generator, num_samples: int) -> np.ndarray:
        duration = num_samples / SAMPLE_RATE
        time = np.arange(num_samples) / SAMPLE_RATE
        f0, f1 = _jitter(rng, start_hz), _jitter(rng, end_hz)
        growth = np.log(f1 / f0) / duration
        phase = 2 * np.pi * f0 * np.expm1(growth * time) / growth
        return np.sin(phase)

    return render


def _pulsing_tone(rng: np.random.Generator, num_samples: int) -> np.ndarray:
    """A 500 Hz tone, fully amplitude-modulated at about 6 Hz."""
    time = np.arange(num_samples) / SAMPLE_RATE
    carrier = np.sin(2 * np.pi * _jitter(rng, 500.0) * time)
    envelope = 0.5 - 0.5 * np.cos(2 * np.pi * _jitter(rng, 6.0) * time)
    return carrier * envelope


def _siren(rng: np.random.Generator, num_samples: int) -> np.ndarray:
    """A tone whose frequency swings sinusoidally between about 900 and 1800 Hz, 3 times a second."""
    time = np.arange(num_samples) / SAMPLE_RATE
    low, high, rate = _jitter(rng, 900.0), _jitter(rng, 1800.0), _jitter(rng, 3.0)
    centre, swing = (low + high) / 2, (high - low) / 2
    phase = 2 * np.pi * centre * time - swing / rate * np.cos(2 * np.pi * rate * time)
    return np.sin(phase)


def _noise_burst(rng: np.random.Generator, num_samples: int) -> np.ndarray:
    """White Gaussian noise."""
    return rng.standard_normal(num_samples)


def _click_train(rng: np.random.Generator, num_samples: int) -> np.ndarray:
    """Ticks (a 4 kHz ring decaying within a few ms) about 12 times a second."""
    period = int(round(SAMPLE_RATE / _jitter(rng, 12.0)))
    click_time = np.arange(int(0.006 * SAMPLE_RATE)) / SAMPLE_RATE
    click = np.sin(2 * np.pi * _jitter(rng, 4000.0) * click_time) * np.exp(-click_time / 0.001)
    signal = np.zeros(num_samples)
    for onset in range(int(rng.integers(0, period // 2)), num_samples - len(click), period):
        signal[onset : onset + len(click)] += click
    return signal


_RENDERERS: dict[str, Callable[[np.random.Generator, int], np.ndarray]] = {
    "low tone": _tone(250.0),
    "high tone": _tone(3000.0),
    "rising chirp": _chirp(300.0, 5000.0),
    "falling chirp": _chirp(5000.0, 300.0),
    "pulsing tone": _pulsing_tone,
    "siren": _siren,
    "noise burst": _noise_burst,
    "click train": _click_train,
}

EVENT_CLASSES: tuple[str, ...] = tuple(sorted(_RENDERERS))


# --- questions and vocabulary --------------------------------------------------------------------


def existence_question(label: str) -> str:
    """'is there a {label} ?'"""
    return f"is there a {label} ?"


def order_question(first: str, second: str) -> str:
    """'does the {first} come before the {second} ?'"""
    return f"does the {first} come before the {second} ?"


def _vocabulary() -> list[str]:
    questions = [existence_question(label) for label in EVENT_CLASSES]
    questions += [order_question(a, b) for a, b in itertools.permutations(EVENT_CLASSES, 2)]
    words = {word for question in questions for word in question.split(" ")}
    return sorted(words | {YES, NO})


VOCABULARY: list[str] = _vocabulary()


# --- rendering -----------------------------------------------------------------------------------


def _pink_noise(rng: np.random.Generator, num_samples: int) -> np.ndarray:
    """Noise with power falling as 1/f (flat below 20 Hz), unit RMS, shape [num_samples]."""
    fft_length = 1 << max(num_samples - 1, 1).bit_length()
    spectrum = np.fft.rfft(rng.standard_normal(fft_length))
    frequencies = np.fft.rfftfreq(fft_length, d=1.0 / SAMPLE_RATE)
    spectrum /= np.sqrt(np.maximum(frequencies, 20.0))
    noise = np.fft.irfft(spectrum, n=fft_length)[:num_samples]
    return noise / np.sqrt(np.mean(noise**2))


def _fade(signal: np.ndarray) -> np.ndarray:
    """Raised-cosine fade in and out over FADE_S (or half the signal, if shorter)."""
    length = min(int(FADE_S * SAMPLE_RATE), len(signal) // 2)
    ramp = 0.5 - 0.5 * np.cos(np.pi * np.arange(length) / length)
    faded = signal.copy()
    faded[:length] *= ramp
    faded[len(signal) - length :] *= ramp[::-1]
    return faded


def seconds_to_samples(seconds: float) -> int:
    """The sample index nearest to `seconds` at 16 kHz."""
    return int(round(seconds * SAMPLE_RATE))


def render_event(event: Event, rng: np.random.Generator) -> np.ndarray:
    """One event at unit RMS with faded edges, float64 [samples of its interval]."""
    num_samples = seconds_to_samples(event.end_s) - seconds_to_samples(event.start_s)
    signal = _RENDERERS[event.label](rng, num_samples)
    signal = signal / np.sqrt(np.mean(signal**2))
    return _fade(signal)


def render_clip(spec: ClipSpec, *, background: bool = True) -> np.ndarray:
    """Renders a clip: background noise plus its events, float32 [spec.num_samples].

    Each event is scaled to BACKGROUND_RMS * 10 ** (snr_db / 20); if the mixture would peak above
    PEAK_LIMIT, the whole clip is scaled down (the SNRs are kept). `background=False` leaves the
    noise out (but keeps the same scaling), which shows each event's own footprint.
    """
    seeds = np.random.SeedSequence(spec.render_seed).spawn(1 + len(spec.events))
    noise = BACKGROUND_RMS * _pink_noise(np.random.default_rng(seeds[0]), spec.num_samples)
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


class _BalancedSchedule:
    """Hands out (class, answer) pairs from shuffled blocks that hold every pair once.

    `take` returns the earliest pending pair whose class is allowed, so a refused pair waits for a
    later request instead of being dropped.
    """

    def __init__(self, rng: np.random.Generator) -> None:
        self._rng = rng
        self._pending: list[tuple[str, str]] = []

    def take(self, allowed: Callable[[str], bool]) -> tuple[str, str]:
        while True:
            for index, (label, answer) in enumerate(self._pending):
                if allowed(label):
                    return self._pending.pop(index)
            self._pending.extend(self._new_block())

    def _new_block(self) -> list[tuple[str, str]]:
        block = [(label, answer) for label in EVENT_CLASSES for answer in (YES, NO)]
        order = self._rng.permutation(len(block))
        return [block[i] for i in order]


@dataclasses.dataclass(frozen=True)
class _ClipPlan:
    """Which classes a clip holds, in time order, and what it is asked."""

    labels_in_time_order: tuple[str, ...]
    existence: tuple[str, str]
    order: tuple[str, str, str] | None


def _plan_clip(
    rng: np.random.Generator, existence_schedule: _BalancedSchedule, order_schedule: _BalancedSchedule
) -> _ClipPlan:
    num_events = int(rng.integers(1, 4))
    target, existence_answer = existence_schedule.take(lambda label: True)
    forbidden = {target} if existence_answer == NO else set()

    def pick(exclude: set[str]) -> str:
        choices = [label for label in EVENT_CLASSES if label not in exclude]
        return choices[int(rng.integers(len(choices)))]

    if num_events == 1:
        label = target if existence_answer == YES else pick(forbidden)
        return _ClipPlan((label,), (target, existence_answer), None)

    first, order_answer = order_schedule.take(lambda label: label not in forbidden)
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
    """Draws event lengths, the clip length and non-overlapping positions, all in samples.

    Returns (clip samples, [(start, end) per label, in the given order]).
    """
    lengths = [seconds_to_samples(rng.uniform(MIN_EVENT_S, MAX_EVENT_S)) for _ in labels]
    margin, gap = seconds_to_samples(EDGE_MARGIN_S), seconds_to_samples(MIN_GAP_S)
    needed = sum(lengths) + 2 * margin + gap * (len(labels) - 1)
    clip_samples = seconds_to_samples(rng.uniform(max(MIN_CLIP_S, needed / SAMPLE_RATE), MAX_CLIP_S))
    clip_samples = max(clip_samples, needed)
    cuts = np.sort(rng.integers(0, clip_samples - needed + 1, size=len(labels)))
    extra_before = np.diff(cuts, prepend=0)
    positions = []
    cursor = margin
    for length, extra in zip(lengths, extra_before):
        start = cursor + int(extra)
        positions.append((start, start + length))
        cursor = start + length + gap
    return clip_samples, positions


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
    if split not in _SPLIT_CODES:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if not isinstance(num_clips, int) or num_clips < 1:
        raise ValueError(f"num_clips must be a positive integer, got {num_clips!r}")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    split_seed = np.random.SeedSequence([seed, _SPLIT_CODES[split]])
    schedule_seed, clips_seed = split_seed.spawn(2)
    existence_rng, order_rng = (np.random.default_rng(s) for s in schedule_seed.spawn(2))
    existence_schedule, order_schedule = _BalancedSchedule(existence_rng), _BalancedSchedule(order_rng)
    samples: list[Sample] = []
    for index, clip_seed in enumerate(clips_seed.spawn(num_clips)):
        rng = np.random.default_rng(clip_seed)
        plan = _plan_clip(rng, existence_schedule, order_schedule)
        samples.extend(_clip_samples(f"{split}-seed{seed}-{index:05d}", plan, rng))
    return samples


# --- writing and reading -------------------------------------------------------------------------


def _sample_record(sample: Sample, audio_path: str) -> dict:
    return {
        "sample_id": sample.sample_id,
        "clip_id": sample.clip_id,
        "audio": audio_path,
        "num_samples": sample.num_samples,
        "kind": sample.kind,
        "question": sample.question,
        "answer": sample.answer,
        "evidence": [list(interval) for interval in sample.evidence or ()],
        "events": [dataclasses.asdict(event) for event in sample.events],
    }


def write_split(directory: Path | str, samples: Sequence[Sample]) -> Path:
    """Writes each clip once as `audio/{clip_id}.wav` (float32) and one JSONL line per sample.

    Returns the manifest's path, `{directory}/manifest.jsonl`.
    """
    directory = Path(directory)
    (directory / "audio").mkdir(parents=True, exist_ok=True)
    written: set[str] = set()
    manifest = directory / MANIFEST_NAME
    with manifest.open("w", encoding="utf-8") as out:
        for sample in samples:
            relative = f"audio/{sample.clip_id}.wav"
            if sample.clip_id not in written:
                soundfile.write(directory / relative, sample.load_waveform(), SAMPLE_RATE, subtype="FLOAT")
                written.add(sample.clip_id)
            out.write(json.dumps(_sample_record(sample, relative)) + "\n")
    return manifest


def _sample_from_record(record: dict, directory: Path) -> Sample:
    return Sample(
        sample_id=record["sample_id"],
        clip_id=record["clip_id"],
        question=record["question"],
        answer=record["answer"],
        audio=WavFile(directory / record["audio"]),
        evidence=tuple((float(start), float(end)) for start, end in record["evidence"]),
        kind=record["kind"],
        events=tuple(Event(**event) for event in record["events"]),
        num_samples=int(record["num_samples"]),
    )


def read_split(directory: Path | str) -> list[Sample]:
    """Reads what `write_split` wrote; the samples load their audio from the WAV files."""
    directory = Path(directory)
    manifest = directory / MANIFEST_NAME
    if not manifest.is_file():
        raise FileNotFoundError(f"no synthetic split at {directory}: {MANIFEST_NAME} is missing")
    samples = []
    with manifest.open(encoding="utf-8") as lines:
        for line_number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                samples.append(_sample_from_record(json.loads(line), directory))
            except (KeyError, TypeError, ValueError) as error:
                raise ValueError(f"{manifest}, line {line_number}: malformed sample record ({error})") from error
    return samples
