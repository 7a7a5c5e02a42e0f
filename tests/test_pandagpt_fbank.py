"""The Kaldi fbank and ImageBind's sub-clips (agac_jax/models/pandagpt/fbank.py).

torchaudio does not load beside torch 2.13 here, so the reference is torchaudio's documented
`compliance.kaldi.fbank` algorithm transcribed test-side in torch (float32, its own framing by
`unfold`, torch's Hann window, `torch.fft.rfft`, the mel banks from their defining formulas), plus
properties the definition implies (frame count, a tone's bin, the window rule of pytorchvideo).
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import torch

from agac_jax.models.pandagpt import fbank as kf


def torch_kaldi_fbank(waveform: torch.Tensor, num_mel_bins: int = 128) -> torch.Tensor:
    """torchaudio.compliance.kaldi.fbank(waveform[None], htk_compat=True, sample_frequency=16000,
    use_energy=False, window_type='hanning', num_mel_bins=num_mel_bins, dither=0.0, frame_length=25,
    frame_shift=10) by its documented steps."""
    frames = waveform.unfold(0, 400, 160)  # snip_edges=True
    frames = frames - frames.mean(dim=1, keepdim=True)  # remove_dc_offset
    shifted = torch.nn.functional.pad(frames.unsqueeze(0), (1, 0), mode="replicate").squeeze(0)
    frames = frames - 0.97 * shifted[:, :-1]  # preemphasis_coefficient
    frames = frames * torch.hann_window(400, periodic=False)
    spectrum = torch.fft.rfft(torch.nn.functional.pad(frames, (0, 112)), dim=1).abs().pow(2.0)
    mel = lambda f: 1127.0 * math.log(1.0 + f / 700.0)  # noqa: E731
    low, high = mel(20.0), mel(8000.0)
    delta = (high - low) / (num_mel_bins + 1)
    banks = torch.zeros(num_mel_bins, 257)
    fft_mel = 1127.0 * torch.log(1.0 + torch.arange(256) * (16000 / 512) / 700.0)
    for b in range(num_mel_bins):
        left, center, right = low + b * delta, low + (b + 1) * delta, low + (b + 2) * delta
        up, down = (fft_mel - left) / (center - left), (right - fft_mel) / (right - center)
        banks[b, :256] = torch.clamp(torch.minimum(up, down), min=0.0)
    return torch.clamp(spectrum @ banks.T, min=torch.finfo(torch.float32).eps).log()


def test_fbank_matches_the_torch_transcription():
    rng = np.random.default_rng(0)
    t = np.arange(32000) / 16000
    wave = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(32000)).astype(np.float32)
    got = kf.kaldi_fbank(wave)
    expected = torch_kaldi_fbank(torch.tensor(wave)).numpy()
    assert got.shape == expected.shape == (198, 128)
    assert np.abs(got - expected).max() < 1e-3  # log energies: float32 against float64 arithmetic


def test_a_tone_peaks_in_its_mel_bin():
    t = np.arange(8000) / 16000
    got = kf.kaldi_fbank(np.sin(2 * np.pi * 1000 * t))
    centers = 700 * (np.exp((kf.mel_scale(20) + (np.arange(128) + 1) * (kf.mel_scale(8000) - kf.mel_scale(20))
                             / 129) / 1127) - 1)
    assert abs(centers[np.argmax(got.mean(0))] - 1000) < 60


def test_clip_windows_follow_pytorchvideo_at_pandagpts_pin():
    assert kf.clip_windows(10.0) == [(0, 2), (4, 6), (8, 10)]
    assert kf.clip_windows(1.5) == [(0, 2), (0, 2), (0, 2)]  # short audio: three copies of the padded clip
    start = Fraction(7.3 - 2) / 2
    assert kf.clip_windows(7.3)[1] == (start, start + 2)


def test_clip_features_pad_and_normalise():
    wave = np.random.default_rng(1).standard_normal(int(1.5 * 16000)).astype(np.float32)
    feats, bounds = kf.imagebind_clip_features(wave)
    assert feats.shape == (3, 128, 204) and bounds.tolist() == [[0, 24000]] * 3
    valid = 1 + (24000 - 400) // 160
    np.testing.assert_allclose(feats[0, :, valid:], (0 - kf.MEAN) / kf.STD, rtol=1e-6)
    expected = (kf.kaldi_fbank(wave - wave.mean()).T - kf.MEAN) / kf.STD
    np.testing.assert_allclose(feats[0, :, :valid], expected, rtol=1e-5, atol=1e-5)


def torch_imagebind_audio(waveform: np.ndarray, windows) -> np.ndarray:
    """ImageBind's `load_and_transform_audio_data` for one float32 waveform, in its order of operations:
    for each sub-clip window (seconds), the slice `waveform[:, a:b]` (a view of the loaded tensor) gets
    `-= its mean` in place, then its fbank is taken, padded or cut to 204 frames, and normalised."""
    loaded = torch.tensor(waveform)[None]  # [1, N], as torchaudio.load returns
    out = []
    for start, end in windows:
        clip = loaded[:, int(start * 16000):int(end * 16000)]
        clip -= clip.mean()
        fbank = torch_kaldi_fbank(clip[0]).T
        fbank = torch.nn.functional.pad(fbank, (0, max(204 - fbank.shape[1], 0)))[:, :204]
        out.append((fbank - kf.MEAN) / kf.STD)
    return torch.stack(out).numpy()


def _offset_clip(seconds: float, offset: float) -> np.ndarray:
    rng = np.random.default_rng(2)
    t = np.arange(int(seconds * 16000)) / 16000
    return (0.1 * np.sin(2 * np.pi * 300 * t) * (t > 1.2) + 0.01 * rng.standard_normal(t.size) + offset
            ).astype(np.float32)


def test_overlapping_subclips_see_the_earlier_means_subtracted_as_upstream():
    clip = _offset_clip(3.0, 0.02)  # windows 0-2, 0.5-2.5, 1-3 s: they overlap
    before = clip.copy()
    expected = torch_imagebind_audio(clip, [(0, 2), (0.5, 2.5), (1, 3)])
    upstream, bounds = kf.imagebind_clip_features(clip)
    independent, _ = kf.imagebind_clip_features(clip, in_place=False)
    np.testing.assert_array_equal(clip, before)  # the caller's waveform is left alone
    assert bounds.tolist() == [[0, 32000], [8000, 40000], [16000, 48000]]
    assert np.abs(upstream - expected).max() < 1e-4
    # the intended arithmetic differs just where a sub-clip crosses an earlier window's edge (2 s)
    gap = np.abs(independent - expected).max(axis=1)  # [clips, frames]
    assert gap[0].max() < 1e-4 and gap[1].max() > 0.1 and gap[2].max() > 0.1
    assert set(np.flatnonzero(gap[1] > 1e-3)) <= {148, 149} and set(np.flatnonzero(gap[2] > 1e-3)) <= {98, 99, 148, 149}


def test_subclips_that_do_not_overlap_are_the_same_either_way():
    clip = _offset_clip(10.0, 0.02)  # windows 0-2, 4-6, 8-10 s
    upstream, _ = kf.imagebind_clip_features(clip)
    independent, _ = kf.imagebind_clip_features(clip, in_place=False)
    np.testing.assert_allclose(upstream, independent, rtol=0, atol=1e-5)
    np.testing.assert_allclose(upstream, torch_imagebind_audio(clip, [(0, 2), (4, 6), (8, 10)]), rtol=0, atol=1e-4)
