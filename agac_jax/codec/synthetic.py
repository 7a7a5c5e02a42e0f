"""Synthetic 16 kHz test sounds: the material the offline codec is fitted on and tested with.

Kinds: pure tones, up and down chirps, noise bursts, click trains and amplitude-modulated tones,
optionally over background noise at a random SNR. Every generator takes a numpy Generator, so a
seed fixes the sound. All outputs are float32 [round(seconds * 16000)] with peak amplitude <= 1.

These are not the benchmarks' event classes (`agac_jax.data.synthetic_audio`): a codec must
reproduce any sound, so pitches, sweeps and rates are drawn over wide ranges (tones with random
harmonics, click trains of 2 to 40 clicks a second, several bursts per clip) and each sound is
normalised to a peak, where the benchmarks need 8 recognisable classes at calibrated RMS and SNR.
The time axis and the sine are the benchmarks' (`synthetic_audio.signals`); the chirp (a phase
formula of its own), the edge ramps (half-sample offset, 80 samples) and the AM envelope (partial
depth) differ in their arithmetic or their shape, and are kept so the fitted codec's material stays
the same sounds.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from agac_jax.codec.base import SAMPLE_RATE
from agac_jax.data.synthetic_audio.signals import seconds_to_samples, sine, time_axis

SIGNAL_KINDS = ("tone", "chirp_up", "chirp_down", "noise_burst", "click_train", "am_tone")


def _time(seconds: float) -> np.ndarray:
    n = seconds_to_samples(seconds)
    if n <= 0:
        raise ValueError(f"seconds must give at least one sample at {SAMPLE_RATE} Hz; got {seconds}.")
    return time_axis(n)


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


def _edge_ramp(n: int, ramp: int = 80) -> np.ndarray:
    """A gain [n] with raised-cosine on/off ramps of ``ramp`` samples, to avoid clicks at the edges."""
    gain = np.ones(n)
    r = min(ramp, n // 2)
    if r > 0:
        up = 0.5 * (1 - np.cos(np.pi * (np.arange(r) + 0.5) / r))
        gain[:r] = up
        gain[n - r :] = up[::-1]
    return gain


def tone(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """A sine of random pitch (100 Hz to 4 kHz, log-uniform) with a few random harmonics."""
    t = _time(seconds)
    f0 = _log_uniform(rng, 100.0, 4000.0)
    x = sine(t, f0, rng.uniform(0, 2 * np.pi))
    for harmonic in range(2, 5):
        if harmonic * f0 < SAMPLE_RATE / 2 and rng.random() < 0.4:
            x += rng.uniform(0.1, 0.5) * np.sin(2 * np.pi * harmonic * f0 * t)
    return x * _edge_ramp(t.size)


def _chirp(rng: np.random.Generator, seconds: float, upward: bool) -> np.ndarray:
    t = _time(seconds)
    low, high = _log_uniform(rng, 100.0, 800.0), _log_uniform(rng, 1500.0, 6000.0)
    f_start, f_end = (low, high) if upward else (high, low)
    ratio = f_end / f_start
    duration = t.size / SAMPLE_RATE
    phase = 2 * np.pi * f_start * duration / np.log(ratio) * (ratio ** (t / duration) - 1)
    return np.sin(phase) * _edge_ramp(t.size)


def chirp_up(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """An exponential sweep from 100-800 Hz up to 1.5-6 kHz."""
    return _chirp(rng, seconds, upward=True)


def chirp_down(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """An exponential sweep from 1.5-6 kHz down to 100-800 Hz."""
    return _chirp(rng, seconds, upward=False)


def noise_burst(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """One to three white-noise bursts of 50-300 ms in silence, optionally low-passed."""
    t = _time(seconds)
    x = np.zeros(t.size)
    for _ in range(int(rng.integers(1, 4))):
        length = min(t.size, int(rng.uniform(0.05, 0.3) * SAMPLE_RATE))
        start = int(rng.integers(0, t.size - length + 1))
        burst = rng.standard_normal(length)
        if rng.random() < 0.5:
            taps = int(rng.integers(2, 9))
            burst = np.convolve(burst, np.ones(taps) / np.sqrt(taps), mode="same")
        x[start : start + length] += burst * _edge_ramp(length, ramp=32)
    return x


def click_train(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """Short decaying clicks at a regular rate of 2-40 per second."""
    t = _time(seconds)
    x = np.zeros(t.size)
    period = int(SAMPLE_RATE / rng.uniform(2.0, 40.0))
    click = np.exp(-np.arange(48) / 8.0) * np.sign(rng.standard_normal(48) + 0.5)
    for start in range(int(rng.integers(0, period)), t.size, period):
        stop = min(t.size, start + click.size)
        x[start:stop] += click[: stop - start]
    return x


def am_tone(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """A 200 Hz - 3 kHz carrier, amplitude-modulated at 2-20 Hz with depth 0.5-1."""
    t = _time(seconds)
    carrier = _log_uniform(rng, 200.0, 3000.0)
    rate, depth = rng.uniform(2.0, 20.0), rng.uniform(0.5, 1.0)
    envelope = 1 - depth * 0.5 * (1 + np.cos(2 * np.pi * rate * t))
    return envelope * sine(t, carrier) * _edge_ramp(t.size)


GENERATORS: dict[str, Callable[[np.random.Generator, float], np.ndarray]] = {
    "tone": tone,
    "chirp_up": chirp_up,
    "chirp_down": chirp_down,
    "noise_burst": noise_burst,
    "click_train": click_train,
    "am_tone": am_tone,
}


def normalize_peak(x: np.ndarray, peak: float) -> np.ndarray:
    """x scaled to the given peak amplitude (silence stays silent), as float32."""
    top = float(np.max(np.abs(x))) if x.size else 0.0
    scaled = x * (peak / top) if top > 0 else x
    return scaled.astype(np.float32)


def add_background(rng: np.random.Generator, x: np.ndarray, snr_db: float) -> np.ndarray:
    """x plus white or brown-ish noise at ``snr_db`` relative to x's mean power."""
    noise = rng.standard_normal(x.size)
    if rng.random() < 0.5:
        noise = np.cumsum(noise)
        noise -= np.convolve(noise, np.ones(64) / 64, mode="same")
    signal_power = float(np.mean(np.square(x))) or 1e-8
    noise_power = float(np.mean(np.square(noise))) or 1e-8
    return x + noise * np.sqrt(signal_power / noise_power * 10 ** (-snr_db / 10))


def make_signal(
    kind: str,
    seconds: float,
    seed: int,
    snr_db: float | None = None,
    peak: float = 0.5,
) -> np.ndarray:
    """One sound of ``kind`` (see SIGNAL_KINDS), float32 [seconds * 16000], with the given peak.

    ``snr_db`` adds background noise at that SNR; None keeps the sound clean.
    """
    if kind not in GENERATORS:
        raise ValueError(f"kind must be one of {SIGNAL_KINDS}; got {kind!r}.")
    rng = np.random.default_rng(seed)
    x = GENERATORS[kind](rng, seconds)
    if snr_db is not None:
        x = add_background(rng, x, snr_db)
    return normalize_peak(x, peak)


def random_scene(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """A training clip: one to three random events at random times, random gain, maybe background.

    Events are 0.2 s to the whole clip long; background noise (probability 0.6) is at 0-30 dB SNR;
    the peak is log-uniform in [0.01, 0.9].
    """
    n = seconds_to_samples(seconds)
    scene = np.zeros(n)
    for _ in range(int(rng.integers(1, 4))):
        length = int(rng.uniform(0.2, 1.0) * n)
        start = int(rng.integers(0, n - length + 1))
        kind = SIGNAL_KINDS[int(rng.integers(len(SIGNAL_KINDS)))]
        event = GENERATORS[kind](rng, length / SAMPLE_RATE)
        scene[start : start + event.size] += normalize_peak(event, rng.uniform(0.2, 1.0))
    if rng.random() < 0.6:
        scene = add_background(rng, scene, rng.uniform(0.0, 30.0))
    return normalize_peak(scene, _log_uniform(rng, 0.01, 0.9))
