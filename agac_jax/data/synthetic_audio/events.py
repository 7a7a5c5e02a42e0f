"""The sound events of the generated benchmarks: the 8 classes, `Event`, the samples that carry them,
rendering one event, and spreading events over a clip.

Classes (`EVENT_CLASSES`; pitches and rates jittered by 5 % per event, `signals.jitter`):

    low tone       250 Hz sine             high tone      3 kHz sine
    rising chirp   300 Hz -> 5 kHz sweep   falling chirp  5 kHz -> 300 Hz sweep
    pulsing tone   500 Hz, 6 Hz full AM    siren          900-1800 Hz FM at 3 Hz
    noise burst    white noise             click train    4 kHz ticks, 12 a second

An event is rendered at unit RMS with raised-cosine fades of FADE_S (`render_event`), so a
benchmark sets its level from its SNR alone. Both benchmarks keep events MIN_GAP_S apart where they
must not overlap, EDGE_MARGIN_S from the clip's edges, and scale a mixture that would peak above
PEAK_LIMIT down as a whole.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from agac_jax.data.common import AudioQASample, Interval
from agac_jax.data.synthetic_audio import signals
from agac_jax.data.synthetic_audio.signals import seconds_to_samples

MIN_GAP_S = 0.2
EDGE_MARGIN_S = 0.1
PEAK_LIMIT = 0.9
FADE_S = 0.01

RENDERERS: dict[str, signals.Renderer] = {
    "low tone": signals.tone(250.0),
    "high tone": signals.tone(3000.0),
    "rising chirp": signals.chirp(300.0, 5000.0),
    "falling chirp": signals.chirp(5000.0, 300.0),
    "pulsing tone": signals.pulsing_tone,
    "siren": signals.siren,
    "noise burst": signals.noise_burst,
    "click train": signals.click_train,
}

EVENT_CLASSES: tuple[str, ...] = tuple(sorted(RENDERERS))


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


@dataclasses.dataclass(frozen=True, kw_only=True)
class EventSample(AudioQASample):
    """A question about a generated clip: the common fields plus the question kind, the clip's events
    (every event of the clip, sorted by start, not only the evidence) and its length in samples.

    Each benchmark's `Sample` derives from it (and is told apart by its own class)."""

    kind: str
    events: tuple[Event, ...]
    num_samples: int


def render_event(event: Event, rng: np.random.Generator) -> np.ndarray:
    """One event at unit RMS with faded edges, float64 [samples of its interval]."""
    num_samples = seconds_to_samples(event.end_s) - seconds_to_samples(event.start_s)
    signal = signals.unit_rms(RENDERERS[event.label](rng, num_samples))
    return signals.fade(signal, FADE_S)


def spread_in_time(rng: np.random.Generator, lengths: Sequence[int], clip_samples: int, margin: int,
                   gap: int) -> list[tuple[int, int]]:
    """(start, end) samples of consecutive slots of `lengths` in a clip of `clip_samples`, in order.

    The slots lie at least `gap` apart and `margin` from the clip's edges; the free time is split
    at random (sorted uniform cuts) before each slot. The clip must hold them:
    clip_samples >= sum(lengths) + 2 margin + gap (len(lengths) - 1).
    """
    needed = sum(lengths) + 2 * margin + gap * (len(lengths) - 1)
    cuts = np.sort(rng.integers(0, clip_samples - needed + 1, size=len(lengths)))
    positions = []
    cursor = margin
    for length, extra in zip(lengths, np.diff(cuts, prepend=0)):
        start = cursor + int(extra)
        positions.append((start, start + length))
        cursor = start + length + gap
    return positions
