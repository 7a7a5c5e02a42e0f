"""The sounds both generated benchmarks are made of, as float64 arrays on the 16 kHz sample grid.

Event renderers (`Renderer`: a numpy Generator and a length in samples -> the signal; pitches and
rates jittered by `jitter`): `tone`, `chirp`, `pulsing_tone`, `siren`, `noise_burst`, `click_train`.
Backgrounds at unit RMS: `pink_noise`, `white_noise`, `brown_noise`, `hum`. Shaping: `unit_rms`,
`rising_ramp`, `fade`. Every one draws from the Generator it is given, so a seed fixes the sound.

Numpy only (and the grid's constants), so the codec's test signals (`agac_jax.codec.synthetic`)
share `seconds_to_samples`, `time_axis` and `sine` with the benchmarks.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from agac_jax.audio.grids import SAMPLE_RATE

Renderer = Callable[[np.random.Generator, int], np.ndarray]


def seconds_to_samples(seconds: float) -> int:
    """The sample index nearest to `seconds` at 16 kHz."""
    return int(round(seconds * SAMPLE_RATE))


def time_axis(num_samples: int) -> np.ndarray:
    """The time of each sample, seconds, float64 [num_samples]."""
    return np.arange(num_samples) / SAMPLE_RATE


def sine(time: np.ndarray, frequency_hz: float, phase: float | None = None) -> np.ndarray:
    """sin(2 pi f t + phase) at the times `time` (no phase term when `phase` is None)."""
    angle = 2 * np.pi * frequency_hz * time
    return np.sin(angle if phase is None else angle + phase)


def jitter(rng: np.random.Generator, value: float, spread: float = 0.05) -> float:
    """`value` scaled by a uniform factor in [1 - spread, 1 + spread]."""
    return value * float(rng.uniform(1.0 - spread, 1.0 + spread))


def unit_rms(signal: np.ndarray) -> np.ndarray:
    """`signal` scaled to RMS 1."""
    return signal / np.sqrt(np.mean(signal**2))


# --- event renderers -----------------------------------------------------------------------------


def tone(base_hz: float) -> Renderer:
    """A pure tone near base_hz with a random phase."""

    def render(rng: np.random.Generator, num_samples: int) -> np.ndarray:
        return sine(time_axis(num_samples), jitter(rng, base_hz), rng.uniform(0, 2 * np.pi))

    return render


def chirp(start_hz: float, end_hz: float) -> Renderer:
    """An exponential sweep from near start_hz to near end_hz over the event's whole length."""

    def render(rng: np.random.Generator, num_samples: int) -> np.ndarray:
        duration = num_samples / SAMPLE_RATE
        time = time_axis(num_samples)
        f0, f1 = jitter(rng, start_hz), jitter(rng, end_hz)
        growth = np.log(f1 / f0) / duration
        phase = 2 * np.pi * f0 * np.expm1(growth * time) / growth
        return np.sin(phase)

    return render


def pulsing_tone(rng: np.random.Generator, num_samples: int) -> np.ndarray:
    """A 500 Hz tone, fully amplitude-modulated at about 6 Hz."""
    time = time_axis(num_samples)
    carrier = sine(time, jitter(rng, 500.0))
    envelope = 0.5 - 0.5 * np.cos(2 * np.pi * jitter(rng, 6.0) * time)
    return carrier * envelope


def siren(rng: np.random.Generator, num_samples: int) -> np.ndarray:
    """A tone whose frequency swings sinusoidally between about 900 and 1800 Hz, 3 times a second."""
    time = time_axis(num_samples)
    low, high, rate = jitter(rng, 900.0), jitter(rng, 1800.0), jitter(rng, 3.0)
    centre, swing = (low + high) / 2, (high - low) / 2
    phase = 2 * np.pi * centre * time - swing / rate * np.cos(2 * np.pi * rate * time)
    return np.sin(phase)


def noise_burst(rng: np.random.Generator, num_samples: int) -> np.ndarray:
    """White Gaussian noise (not normalised; `white_noise` is, for backgrounds)."""
    return rng.standard_normal(num_samples)


def click_train(rng: np.random.Generator, num_samples: int) -> np.ndarray:
    """Ticks (a 4 kHz ring decaying within a few ms) about 12 times a second."""
    period = int(round(SAMPLE_RATE / jitter(rng, 12.0)))
    click_time = np.arange(int(0.006 * SAMPLE_RATE)) / SAMPLE_RATE
    click = np.sin(2 * np.pi * jitter(rng, 4000.0) * click_time) * np.exp(-click_time / 0.001)
    signal = np.zeros(num_samples)
    for onset in range(int(rng.integers(0, period // 2)), num_samples - len(click), period):
        signal[onset : onset + len(click)] += click
    return signal


# --- backgrounds ---------------------------------------------------------------------------------


def _spectrally_shaped_noise(rng: np.random.Generator, num_samples: int,
                             shape: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Gaussian noise whose spectrum is divided by shape(max(f, 20 Hz)), unit RMS, [num_samples]."""
    fft_length = 1 << max(num_samples - 1, 1).bit_length()
    spectrum = np.fft.rfft(rng.standard_normal(fft_length))
    spectrum /= shape(np.maximum(np.fft.rfftfreq(fft_length, d=1.0 / SAMPLE_RATE), 20.0))
    noise = np.fft.irfft(spectrum, n=fft_length)[:num_samples]
    return unit_rms(noise)


def pink_noise(rng: np.random.Generator, num_samples: int) -> np.ndarray:
    """Noise with power falling as 1/f (flat below 20 Hz), unit RMS, [num_samples]."""
    return _spectrally_shaped_noise(rng, num_samples, np.sqrt)


def brown_noise(rng: np.random.Generator, num_samples: int) -> np.ndarray:
    """Noise with power falling as 1/f^2 (flat below 20 Hz), unit RMS, [num_samples]."""
    return _spectrally_shaped_noise(rng, num_samples, lambda frequencies: frequencies)


def white_noise(rng: np.random.Generator, num_samples: int) -> np.ndarray:
    """White Gaussian noise at unit RMS, [num_samples]."""
    return unit_rms(rng.standard_normal(num_samples))


def hum(rng: np.random.Generator, fundamental_hz: float, num_samples: int, harmonics: int) -> np.ndarray:
    """Mains hum: the fundamental and its first `harmonics` - 1 harmonics (amplitude 1/h, random
    phases), unit RMS, [num_samples]."""
    time = time_axis(num_samples)
    total = sum(np.sin(2 * np.pi * h * fundamental_hz * time + rng.uniform(0, 2 * np.pi)) / h
                for h in range(1, harmonics + 1))
    return unit_rms(total)


# --- shaping -------------------------------------------------------------------------------------


def rising_ramp(length: int) -> np.ndarray:
    """A raised-cosine gain rising from 0 towards 1 over `length` samples, float64 [length]."""
    return 0.5 - 0.5 * np.cos(np.pi * np.arange(length) / length)


def fade(signal: np.ndarray, seconds: float) -> np.ndarray:
    """A copy of `signal` faded in and out by `rising_ramp` over `seconds` (or half the signal, if shorter)."""
    length = min(int(seconds * SAMPLE_RATE), len(signal) // 2)
    ramp = rising_ramp(length)
    faded = signal.copy()
    faded[:length] *= ramp
    faded[len(signal) - length :] *= ramp[::-1]
    return faded
