"""Whisper log-mel features against transformers' WhisperFeatureExtractor, as Qwen2AudioProcessor calls it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import WhisperFeatureExtractor
from transformers.audio_utils import mel_filter_bank as hf_mel_filter_bank
from transformers.models.qwen2_audio.modeling_qwen2_audio import Qwen2AudioEncoder

from agac_jax.audio import features
from agac_jax.audio.features import (
    MAX_FRAMES,
    MAX_SAMPLES,
    audio_token_count,
    silence_log_mel,
    batch_log_mel,
    bucket_frames,
    bucket_seconds,
    encoder_bucket_frames,
    encoder_frames_needed,
    feat_extract_output_lengths,
    log_mel,
    mel_filter_bank,
    num_valid_frames,
)

ATOL = 5e-5  # float32 torch STFT in the reference against float64 here; features lie in about [-1.5, 2]
LENGTHS_SECONDS = (0.5, 3.7, 10.0, 30.0)


def make_clip(n_samples: int, seed: int) -> np.ndarray:
    """Noise and a chirp under a slow envelope with near-silent stretches, float32 [n_samples]."""
    rng = np.random.default_rng(seed)
    t = np.arange(n_samples) / 16_000
    envelope = 0.02 + 0.3 * np.abs(np.sin(2 * np.pi * 0.37 * t)) ** 3
    chirp = np.sin(2 * np.pi * (200 + 300 * t) * t)
    return (envelope * (0.5 * rng.standard_normal(n_samples) + chirp)).astype(np.float32)


@pytest.fixture(scope="module")
def extractors() -> dict[int, WhisperFeatureExtractor]:
    return {bins: WhisperFeatureExtractor(feature_size=bins) for bins in (80, 128)}


def reference(extractor: WhisperFeatureExtractor, clips: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(features [B, bins, 3000], attention mask [B, 3000]) exactly as Qwen2AudioProcessor requests them."""
    out = extractor(
        clips, sampling_rate=16_000, return_attention_mask=True, padding="max_length", return_tensors="np"
    )
    return out["input_features"], out["attention_mask"]


@pytest.mark.parametrize("num_mel_bins", [80, 128])
def test_mel_filter_bank_equals_transformers(num_mel_bins: int) -> None:
    expected = hf_mel_filter_bank(
        num_frequency_bins=201,
        num_mel_filters=num_mel_bins,
        min_frequency=0.0,
        max_frequency=8000.0,
        sampling_rate=16_000,
        norm="slaney",
        mel_scale="slaney",
    )
    np.testing.assert_allclose(mel_filter_bank(num_mel_bins), expected, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("num_mel_bins", [80, 128])
@pytest.mark.parametrize("seconds", LENGTHS_SECONDS)
def test_log_mel_equals_whisper_30s_reference(extractors, num_mel_bins: int, seconds: float) -> None:
    clip = make_clip(int(seconds * 16_000), seed=int(seconds * 10) + num_mel_bins)
    ref_features, ref_mask = reference(extractors[num_mel_bins], [clip])

    full, valid = log_mel(clip, num_mel_bins, pad_to_samples=MAX_SAMPLES)
    short, short_valid = log_mel(clip, num_mel_bins)

    assert full.dtype == np.float32 and full.shape == (num_mel_bins, MAX_FRAMES)
    assert valid == short_valid == ref_mask.sum() == num_valid_frames(clip.size)
    assert short.shape == (num_mel_bins, valid)
    np.testing.assert_allclose(full, ref_features[0], atol=ATOL, rtol=0)
    np.testing.assert_allclose(short, ref_features[0, :, :valid], atol=ATOL, rtol=0)


@pytest.mark.parametrize("num_mel_bins", [80, 128])
def test_batch_log_mel_bucket_equals_reference_prefix(extractors, num_mel_bins: int) -> None:
    lengths = (8_000, 59_200, 80_000, 79_999, 1, 161)
    clips = [make_clip(n, seed=i) for i, n in enumerate(lengths)]
    # 80 000 samples fill the 5 s bucket exactly. Frame 500, outside the bucket, has the clip's last
    # sample at the centre of its window and so holds the maximum that sets the clamp (max - 8) of
    # the clip's silent frames.
    clips[2][:] = 0.0
    clips[2][1000:3000] = make_clip(2000, seed=7) * 0.03
    clips[2][-1] = 1.0
    ref_features, ref_mask = reference(extractors[num_mel_bins], clips)

    features, mask = batch_log_mel(clips, num_mel_bins, pad_to_frames=500)

    assert features.shape == (len(clips), num_mel_bins, 500) and features.dtype == np.float32
    assert mask.dtype == ref_mask.dtype
    np.testing.assert_array_equal(mask, ref_mask[:, :500])
    np.testing.assert_allclose(features, ref_features[:, :, :500], atol=ATOL, rtol=0)


@settings(max_examples=12, deadline=None)
@given(n_samples=st.integers(1, MAX_SAMPLES), seed=st.integers(0, 2**16))
def test_any_length_and_bucket_match_reference(n_samples: int, seed: int) -> None:
    extractor = WhisperFeatureExtractor(feature_size=128)
    clip = make_clip(n_samples, seed)
    ref_features, ref_mask = reference(extractor, [clip])
    frames = bucket_frames(n_samples)

    features, mask = batch_log_mel([clip], 128, pad_to_frames=frames)

    np.testing.assert_array_equal(mask, ref_mask[:, :frames])
    np.testing.assert_allclose(features, ref_features[:, :, :frames], atol=ATOL, rtol=0)


def test_silent_clip_matches_reference(extractors) -> None:
    clip = np.zeros(12_345, dtype=np.float32)
    ref_features, _ = reference(extractors[128], [clip])
    features, _ = log_mel(clip, 128, pad_to_samples=MAX_SAMPLES)
    np.testing.assert_allclose(features, ref_features[0], atol=ATOL, rtol=0)


def test_token_counts_equal_qwen2_audio_encoder_arithmetic() -> None:
    frames = np.arange(1, MAX_FRAMES + 1)
    conv, pooled = Qwen2AudioEncoder._get_feat_extract_output_lengths(None, torch.from_numpy(frames))
    ours_conv, ours_pooled = feat_extract_output_lengths(frames)
    np.testing.assert_array_equal(ours_conv, conv.numpy())
    np.testing.assert_array_equal(ours_pooled, pooled.numpy())
    np.testing.assert_array_equal(audio_token_count(frames), pooled.numpy())
    assert audio_token_count(3000) == 750
    assert audio_token_count(50) == 12
    assert isinstance(audio_token_count(370), int)


def test_encoder_buckets_hold_the_frames_the_encoder_reads() -> None:
    assert [encoder_frames_needed(v) for v in (1, 2, 3, 498, 499, 500)] == [3, 3, 5, 499, 501, 501]
    coarse = (5, 10, 20, 30)
    assert encoder_bucket_frames(79_680, buckets=coarse) == 500  # 498 valid frames: the 499th is read
    assert encoder_bucket_frames(79_681, buckets=coarse) == 1000  # 499 valid frames: frames 499 and 500 are read
    assert encoder_bucket_frames(79_681) == 600  # the default buckets: 6 s holds it
    assert encoder_bucket_frames(80_000, buckets=(5, 10)) == 1000
    assert encoder_bucket_frames(479_000, buckets=(5, 10)) == 3000  # no bucket holds it: the 30 s input


def test_bucket_seconds_boundaries() -> None:
    coarse = (5, 10, 20, 30)
    assert bucket_seconds(1, coarse) == 5
    assert bucket_seconds(80_000, coarse) == 5
    assert bucket_seconds(80_001, coarse) == 10
    assert bucket_seconds(480_000, coarse) == 30
    assert [bucket_seconds(int(s * 16_000)) for s in (1, 3.7, 7.0, 11.3, 13, 29)] == [2, 4, 8, 12, 15, 30]
    assert bucket_seconds(40_000, buckets=(2, 4)) == 4
    assert bucket_frames(80_001, coarse) == 1000
    with pytest.raises(ValueError, match="longer than the largest bucket"):
        bucket_seconds(480_001)
    with pytest.raises(ValueError, match="buckets"):
        bucket_seconds(100, buckets=(5, 40))
    with pytest.raises(ValueError, match="n_samples"):
        bucket_seconds(0)


@pytest.mark.parametrize(
    ("waveform", "kwargs", "error", "match"),
    [
        (np.zeros((2, 100), np.float32), {}, ValueError, "waveform: expected a mono"),
        (np.zeros(100, np.int16), {}, TypeError, "float"),
        (np.zeros(0, np.float32), {}, ValueError, "empty"),
        (np.array([0.0, np.nan], np.float32), {}, ValueError, "NaN"),
        (np.zeros(MAX_SAMPLES + 1, np.float32), {}, ValueError, "waveform: .*split"),
        ([0.0, 0.1], {}, TypeError, "numpy array"),
        (np.zeros(100, np.float32), {"num_mel_bins": 64}, ValueError, "num_mel_bins"),
        (np.zeros(1000, np.float32), {"pad_to_samples": 999}, ValueError, "pad_to_samples"),
        (np.zeros(1000, np.float32), {"pad_to_samples": 1001}, ValueError, "fewer than the 7 valid"),
    ],
)
def test_log_mel_rejects_bad_input(waveform, kwargs, error, match) -> None:
    with pytest.raises(error, match=match):
        log_mel(waveform, **kwargs)


@pytest.mark.parametrize("pad_to_frames", [0, 250, 3100, 1000.0])
def test_batch_log_mel_rejects_bad_bucket(pad_to_frames) -> None:
    with pytest.raises(ValueError, match="pad_to_frames"):
        batch_log_mel([np.zeros(100, np.float32)], 128, pad_to_frames)


def test_batch_log_mel_names_clip_longer_than_bucket() -> None:
    clips = [np.zeros(100, np.float32), np.zeros(80_001, np.float32)]
    with pytest.raises(ValueError, match=r"waveforms\[1\].*bucket"):
        batch_log_mel(clips, 128, pad_to_frames=500)


@pytest.mark.parametrize("n_mels", [80, 128])
def test_silence_log_mel_is_the_log_mel_of_zeros(n_mels):
    zeros = [np.zeros(n, np.float32) for n in (16_000, 33_333, 80_000)]
    expected, _ = batch_log_mel(zeros, n_mels, pad_to_frames=500)
    np.testing.assert_array_equal(silence_log_mel(3, n_mels, 500), expected)


def test_a_clip_answered_then_scored_has_its_log_mel_computed_once(monkeypatch):
    """`batch_log_mel` keeps the features of recent (clip, bucket)s: the same bytes give the same
    features without a second STFT; other bytes, another bucket or another dtype do not hit."""
    calls = []
    original = features.log_mel
    monkeypatch.setattr(features, "log_mel", lambda *a, **k: calls.append(1) or original(*a, **k))
    rng = np.random.default_rng(11)
    a, b = ((0.1 * rng.standard_normal(n)).astype(np.float32) for n in (16_000, 24_000))
    first, mask = features.batch_log_mel([a, b], 80, 200)
    assert len(calls) == 2
    again, again_mask = features.batch_log_mel([b.copy(), a], 80, 200)  # equal bytes, other arrays and order
    assert len(calls) == 2
    np.testing.assert_array_equal(again, first[::-1])
    np.testing.assert_array_equal(again_mask, mask[::-1])
    features.batch_log_mel([a], 80, 300)  # another bucket
    changed = a.copy()
    changed[0] += 1e-3
    features.batch_log_mel([changed, a.astype(np.float64)], 80, 200)  # other bytes; other dtype
    assert len(calls) == 5
    first[0, 0, 0] = 99.0  # the caller's array is its own
    np.testing.assert_array_equal(features.batch_log_mel([a], 80, 200)[0][0], again[1])
