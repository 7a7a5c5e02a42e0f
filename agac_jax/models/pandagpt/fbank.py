"""Kaldi filter-bank features as ImageBind (PandaGPT) computes them, in numpy, and its 2 s sub-clips.

`kaldi_fbank` is torchaudio.compliance.kaldi.fbank at the settings ImageBind's
`waveform2melspec` passes (htk_compat, use_energy False, hanning window, dither 0, 25 ms frames,
10 ms shift, 128 bins) and torchaudio's defaults for the rest: frames snipped at the edges
(1 + (N - 400) // 160 of them), each frame's DC offset removed, pre-emphasis 0.97 (the first sample
against itself), a symmetric Hann window, zero padding to 512, the power spectrum, 128 triangular
filters equally spaced on the mel scale 1127 ln(1 + f / 700) from 20 Hz to 8 kHz (weights on
the first 256 FFT bins, none on Nyquist), natural log floored at float32 eps. With
use_energy False, htk_compat changes nothing.

`imagebind_clip_features` is ImageBind's `load_and_transform_audio_data` for one waveform: the
sub-clip windows of `clip_windows`, each waveform slice mean-subtracted, its fbank cut or
zero-padded to 204 frames, then (x + 4.268) / 9.138 (padding therefore becomes 0.467).

An upstream quirk it reproduces by default: ImageBind's `waveform2melspec` runs `waveform -= waveform.mean()`
on the slice it is handed, a view of the loaded waveform, so each sub-clip's mean is subtracted from the
waveform itself, in sub-clip order. Below 6 s the three 2 s sub-clips overlap, and a later one reads
samples an earlier one has already shifted: with a DC offset its slice holds a step where an earlier
window ended, which the fbank's per-frame DC removal does not undo for the frames across it. PandaGPT's own
outputs come from that arithmetic; `in_place=False` gives the intended one (every sub-clip centred on its own
unmodified samples; the same when the sub-clips do not overlap, from 6 s on).

`clip_windows` is pytorchvideo's ConstantClipsPerVideoSampler at the commit PandaGPT pins
(28fe037; the same rule at ImageBind's pin 6cdc929 and at pytorchvideo's head): clip k of n starts at
k * max(D - 2, 0) / max(n - 1, 1) seconds (so the first starts at 0 and the last ends at the end;
the PyPI release 0.1.5 differs), ends 2 s later (past the end the slice is short and its fbank is
padded), and the sampling stops early when the next start would pass D - 2 (never, with n >= 2).
Sample indices are floor(t * 16000) of the exact fractions, as `int(Fraction)`.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

SAMPLE_RATE = 16000
FRAME_LENGTH = 400  # 25 ms
FRAME_SHIFT = 160  # 10 ms
PADDED = 512
NUM_MEL_BINS = 128
LOW_FREQ, HIGH_FREQ = 20.0, 8000.0
PREEMPHASIS = 0.97
TARGET_FRAMES = 204
CLIP_SECONDS = 2
CLIPS_PER_VIDEO = 3
MEAN, STD = -4.268, 9.138


def mel_scale(freq: np.ndarray) -> np.ndarray:
    return 1127.0 * np.log(1.0 + np.asarray(freq, np.float64) / 700.0)


def mel_banks(num_bins: int = NUM_MEL_BINS) -> np.ndarray:
    """[num_bins, PADDED // 2 + 1] triangular weights in the mel domain (Nyquist column zero)."""
    low, high = mel_scale(LOW_FREQ), mel_scale(HIGH_FREQ)
    delta = (high - low) / (num_bins + 1)
    left = low + delta * np.arange(num_bins)[:, None]
    center, right = left + delta, left + 2 * delta
    mel = mel_scale(SAMPLE_RATE / PADDED * np.arange(PADDED // 2))[None]
    weights = np.maximum(0.0, np.minimum((mel - left) / (center - left), (right - mel) / (right - center)))
    return np.pad(weights, ((0, 0), (0, 1)))


def kaldi_fbank(waveform: np.ndarray, num_mel_bins: int = NUM_MEL_BINS) -> np.ndarray:
    """waveform [N] float at 16 kHz (N >= 400) -> log mel energies [frames, num_mel_bins] float32."""
    x = np.asarray(waveform, np.float64)
    n_frames = 1 + (x.shape[0] - FRAME_LENGTH) // FRAME_SHIFT
    if n_frames < 1:
        raise ValueError(f"a waveform of {x.shape[0]} samples holds no 400-sample frame")
    index = np.arange(FRAME_LENGTH)[None] + FRAME_SHIFT * np.arange(n_frames)[:, None]
    frames = x[index]
    frames = frames - frames.mean(axis=1, keepdims=True)
    frames = frames - PREEMPHASIS * np.concatenate([frames[:, :1], frames[:, :-1]], axis=1)
    frames = frames * np.hanning(FRAME_LENGTH)[None]
    power = np.abs(np.fft.rfft(frames, n=PADDED, axis=1)) ** 2
    energies = power @ mel_banks(num_mel_bins).T
    return np.log(np.maximum(energies, np.finfo(np.float32).eps)).astype(np.float32)


def clip_windows(duration: float, clip_seconds: int = CLIP_SECONDS,
                 clips: int = CLIPS_PER_VIDEO) -> list[tuple[Fraction, Fraction]]:
    """[(start, end)] seconds of ImageBind's sub-clips of a `duration`-second waveform (module docstring)."""
    max_start = Fraction(max(duration - clip_seconds, 0))
    step = max_start / max(clips - 1, 1)
    windows = []
    for k in range(clips):
        windows.append((step * k, step * k + clip_seconds))
        if step * (k + 1) > max_start:
            break
    return windows


def _subclip_fbank(piece: np.ndarray) -> np.ndarray:
    """A mean-subtracted waveform slice [n] -> its normalised fbank [128, 204] float64, cut or
    zero-padded (before the normalisation) to 204 frames."""
    fbank = kaldi_fbank(piece).T[:, :TARGET_FRAMES]
    fbank = np.pad(fbank, ((0, 0), (0, TARGET_FRAMES - fbank.shape[1])))
    return (fbank - MEAN) / STD


def imagebind_clip_features(waveform: np.ndarray, in_place: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """waveform [N] at 16 kHz -> (normalised fbank [clips, 128, 204] float32, window sample bounds
    [clips, 2] int: each sub-clip's [start, end) sample indices, end clipped to N).

    in_place: as ImageBind (the default), each sub-clip's mean is subtracted, in float32, from one
    working copy of the waveform before the next sub-clip is cut from it (the module docstring's
    upstream quirk); False: each sub-clip is centred on its own samples of the unmodified waveform.
    The caller's array is never modified.
    """
    n = waveform.shape[0]
    loaded = np.array(waveform, np.float32)  # the working copy: torchaudio.load's float32 waveform
    features, bounds = [], []
    for start, end in clip_windows(n / SAMPLE_RATE):
        a, b = int(start * SAMPLE_RATE), min(int(end * SAMPLE_RATE), n)
        if in_place:
            piece = loaded[a:b]  # a view: the subtraction below reaches every later overlapping sub-clip
            piece -= np.float32(piece.mean(dtype=np.float64))
        else:
            piece = np.asarray(waveform[a:b], np.float64)
            piece = piece - piece.mean()
        features.append(_subclip_fbank(piece))
        bounds.append((a, b))
    return np.stack(features).astype(np.float32), np.asarray(bounds, np.int64)
