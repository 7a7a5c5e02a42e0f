"""The offline ``rvq_mel`` codec with its shipped codebooks, and the codebook fitting (in process)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from agac_jax.codec.backends import make_codec
from agac_jax.codec.base import SAMPLE_RATE, UnsupportedTokenRateError, frame_samples, num_frames
from agac_jax.codec.rvq_fit import (
    fit_residual_codebooks,
    kmeans,
    log_mel_distance_db,
    save_codebooks,
    spectral_convergence,
)
from agac_jax.codec.rvq_mel import (
    MelAnalysis,
    RvqMelCodec,
    asset_path,
    load_codebooks,
    mel_filterbank,
    nearest_code,
)
from agac_jax.codec.synthetic import SIGNAL_KINDS, make_signal

RATES = (25, 50, 100)


@pytest.fixture(scope="module")
def codecs() -> dict[int, RvqMelCodec]:
    torch.set_num_threads(1)
    return {rate: RvqMelCodec(rate) for rate in RATES}


def dominant_frequency(x: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    return float(np.argmax(spectrum) * SAMPLE_RATE / x.size)


def test_assets_are_shipped_and_small() -> None:
    sizes = [asset_path(rate).stat().st_size for rate in RATES]
    assert sum(sizes) < 4_000_000
    for rate in RATES:
        stage1, stage2 = load_codebooks(rate)
        assert stage1.shape == stage2.shape == (1024, MelAnalysis(rate).grid.feature_dim)
        assert np.all(np.isfinite(stage1)) and np.all(np.isfinite(stage2))


@pytest.mark.parametrize("rate", RATES)
def test_round_trip_token_counts(codecs: dict[int, RvqMelCodec], rate: int) -> None:
    codec = codecs[rate]
    x = make_signal("chirp_up", 1.234, seed=3)
    tokens = codec.encode(x)
    n_frames = num_frames(x.size, rate)
    assert tokens.shape == (n_frames, 2) and tokens.dtype == np.int64
    assert tokens.min() >= 0 and np.all(tokens.max(axis=0) < np.array(codec.codebook_sizes))
    decoded = codec.decode(tokens)
    assert decoded.dtype == np.float32 and decoded.shape == (n_frames * frame_samples(rate),)
    assert np.all(np.isfinite(decoded))
    assert codec.frame_seconds == pytest.approx(2 / rate)


@pytest.mark.parametrize("rate", RATES)
def test_k_whole_frames_encode_to_k_frames(codecs: dict[int, RvqMelCodec], rate: int) -> None:
    for k in (1, 2, 7):
        x = make_signal("noise_burst", k * frame_samples(rate) / SAMPLE_RATE, seed=k)
        assert codecs[rate].encode(x).shape == (k, 2)


def test_encode_and_decode_are_deterministic(codecs: dict[int, RvqMelCodec]) -> None:
    x = make_signal("am_tone", 0.5, seed=4)
    fresh = RvqMelCodec(50)
    np.testing.assert_array_equal(codecs[50].encode(x), fresh.encode(x))
    tokens = fresh.encode(x)
    np.testing.assert_array_equal(codecs[50].decode(tokens), fresh.decode(tokens))


@pytest.mark.parametrize("rate", RATES)
def test_tone_pitch_survives(codecs: dict[int, RvqMelCodec], rate: int) -> None:
    for seed in (1, 2, 3):
        x = make_signal("tone", 1.0, seed=seed)
        decoded = codecs[rate].decode(codecs[rate].encode(x))
        assert dominant_frequency(decoded) == pytest.approx(dominant_frequency(x), rel=0.15)


@pytest.mark.parametrize("rate", (25, 100))
def test_each_sound_is_recognisable_among_the_kinds(codecs: dict[int, RvqMelCodec], rate: int) -> None:
    originals = {kind: make_signal(kind, 1.0, seed=20 + i, snr_db=20.0) for i, kind in enumerate(SIGNAL_KINDS)}
    for kind, x in originals.items():
        decoded = codecs[rate].decode(codecs[rate].encode(x))
        distances = {other: log_mel_distance_db(y, decoded) for other, y in originals.items()}
        assert min(distances, key=distances.get) == kind, distances


def test_residual_stage_and_beam_search_reduce_quantisation_error() -> None:
    features = MelAnalysis(100).features(make_signal("chirp_down", 1.0, seed=5, snr_db=15.0))
    greedy, beam = RvqMelCodec(100, search_width=1), RvqMelCodec(100)
    one_stage = greedy.codebooks[0][nearest_code(features, greedy.codebooks[0])]
    greedy_error = torch.mean((features - greedy.dequantize(greedy.quantize(features).numpy())) ** 2)
    beam_error = torch.mean((features - beam.dequantize(beam.quantize(features).numpy())) ** 2)
    assert greedy_error < 0.8 * torch.mean((features - one_stage) ** 2)
    assert beam_error <= greedy_error
    with pytest.raises(ValueError, match="search_width"):
        RvqMelCodec(100, search_width=0)


def test_decode_rejects_out_of_range_tokens(codecs: dict[int, RvqMelCodec]) -> None:
    with pytest.raises(ValueError, match=r"tokens\[:, 1\] must lie in \[0, 1024\)"):
        codecs[25].decode(np.array([[0, 1024]]))


def test_reconstruction_metrics_are_zero_for_identity_and_grow_with_damage() -> None:
    x = make_signal("tone", 0.5, seed=6)
    assert spectral_convergence(x, x) == pytest.approx(0.0, abs=1e-6)
    assert log_mel_distance_db(x, x) == pytest.approx(0.0, abs=1e-6)
    noisy = x + 0.05 * np.random.default_rng(0).standard_normal(x.size).astype(np.float32)
    assert spectral_convergence(x, noisy) > 0.01 and log_mel_distance_db(x, noisy) > 0.5


def test_mel_filterbank_covers_every_band() -> None:
    filters = mel_filterbank()
    assert filters.shape == (64, 257)
    assert np.all(filters.max(axis=1) > 0.5) and np.all(filters <= 1.0)


def test_kmeans_finds_separated_clusters_deterministically() -> None:
    generator = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    data = (centres[:, None, :] + 0.1 * torch.randn(3, 50, 2, generator=generator)).reshape(-1, 2)
    found = kmeans(data, 3, iterations=10, seed=1)
    again = kmeans(data, 3, iterations=10, seed=1)
    torch.testing.assert_close(found, again)
    distances = torch.cdist(centres, found)
    assert torch.all(distances.min(dim=1).values < 0.1)


def test_kmeans_needs_enough_points() -> None:
    with pytest.raises(ValueError, match="k = 5"):
        kmeans(torch.zeros(3, 2), 5, iterations=1, seed=0)


def test_fitted_codebooks_round_trip_through_an_asset_file(tmp_path: Path) -> None:
    clips = [make_signal(kind, 0.5, seed=i) for i, kind in enumerate(SIGNAL_KINDS)]
    features = torch.cat([MelAnalysis(100).features(c) for c in clips])
    stage1, stage2 = fit_residual_codebooks(features, 16, iterations=5, seed=0)
    path = save_codebooks(stage1, stage2, 100, seed=0, assets_dir=tmp_path)
    assert path == tmp_path / "rvq_mel_r100.npz"
    codec = make_codec("rvq_mel", 100, {"assets_dir": str(tmp_path), "griffin_lim_iters": 4})
    assert codec.codebook_sizes == (16, 16)
    assert codec.encode(clips[0]).shape == (num_frames(clips[0].size, 100), 2)
    with pytest.raises(UnsupportedTokenRateError, match="fit_offline_codec"):
        RvqMelCodec(25, assets_dir=tmp_path)
