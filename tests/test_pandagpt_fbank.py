"""The Kaldi fbank and ImageBind's sub-clips (agac_jax/audio/kaldi_fbank.py).

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

from agac_jax.audio import kaldi_fbank as kf


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
