"""Frame grid and frame assembly (agac_jax.codec.base, agac_jax.codec.frames); numpy only."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agac_jax.codec.base import (
    UnsupportedTokenRateError,
    check_token_rate,
    frame_samples,
    frame_seconds,
    num_frames,
    validate_tokens,
    validate_waveform,
)
from agac_jax.codec.frames import join_frames, kept_runs, raised_cosine_fade_out, validate_kept_frames


@pytest.mark.parametrize("rate, samples, seconds", [(25, 1280, 0.08), (50, 640, 0.04), (100, 320, 0.02)])
def test_frame_grid(rate: int, samples: int, seconds: float) -> None:
    assert frame_samples(rate) == samples
    assert frame_seconds(rate) == pytest.approx(seconds)
    assert num_frames(samples * 7, rate) == 7
    assert num_frames(samples * 7 + 1, rate) == 8
    assert num_frames(1, rate) == 1


@pytest.mark.parametrize("rate", [0, 30, 75, 200, 50.0, "50", True])
def test_unsupported_rate_is_named(rate: object) -> None:
    with pytest.raises(UnsupportedTokenRateError, match="token_rate"):
        check_token_rate(rate)


def test_validate_waveform_is_the_audio_loaders_one() -> None:
    import agac_jax.audio.io
    import agac_jax.codec.base

    assert validate_waveform is agac_jax.audio.io.validate_waveform is agac_jax.codec.base.validate_waveform
    with pytest.raises(TypeError, match="float32 or float64"):
        validate_waveform(np.zeros(10, np.int16), "w")
    with pytest.raises(TypeError, match="numpy array"):
        validate_waveform([0.0, 1.0], "w")
    with pytest.raises(ValueError, match="empty"):
        validate_waveform(np.zeros(0, np.float32), "w")
    with pytest.raises(ValueError, match="mono"):
        validate_waveform(np.zeros((2, 10), np.float32), "w")
    with pytest.raises(ValueError, match="NaN or inf"):
        validate_waveform(np.array([0.0, np.nan, np.inf], np.float32), "w")
    assert validate_waveform(np.zeros(10, np.float64), "w").dtype == np.float32


def test_validate_tokens_shape() -> None:
    assert validate_tokens(np.zeros((3, 2), np.int32)).dtype == np.int64
    with pytest.raises(ValueError, match=r"\[N >= 1, 2\]"):
        validate_tokens(np.zeros((3, 3), np.int64))
    with pytest.raises(TypeError, match="integer"):
        validate_tokens(np.zeros((3, 2), np.float32))


@pytest.mark.parametrize(
    "indices, message",
    [
        (np.array([], np.int64), "empty"),
        (np.array([0, 5], np.int64), r"outside \[0, 5\)"),
        (np.array([-1, 2], np.int64), "outside"),
        (np.array([1, 1, 2], np.int64), "duplicated"),
        (np.array([2, 1], np.int64), "sorted"),
        (np.array([[0, 1]], np.int64), "1-D"),
    ],
)
def test_validate_kept_frames_errors(indices: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        validate_kept_frames(indices, 5)


def test_validate_kept_frames_rejects_float_indices() -> None:
    with pytest.raises(TypeError, match="integer"):
        validate_kept_frames(np.array([0.0, 1.0]), 5)


def test_kept_runs() -> None:
    assert kept_runs(np.array([0, 1, 2, 5, 7, 8])) == [(0, 3), (5, 6), (7, 9)]
    assert kept_runs(np.array([4])) == [(4, 5)]


def test_fade_is_complementary() -> None:
    fade = raised_cosine_fade_out(80)
    np.testing.assert_allclose(fade + fade[::-1], 1.0, atol=1e-6)
    assert fade[0] > 0.99 and fade[-1] < 0.01 and np.all(np.diff(fade) < 0)


def test_join_without_crossfade_concatenates_frames() -> None:
    rate, size = 100, 320
    x = np.arange(size * 6 + 100, dtype=np.float32)  # 7 frames, the last one 100 samples
    joined = join_frames(x, np.array([0, 2, 3, 6]), rate, crossfade_ms=0.0)
    expected = np.concatenate([x[0:size], x[2 * size : 4 * size], x[6 * size :]])
    np.testing.assert_array_equal(joined, expected)
    assert num_frames(joined.size, rate) == 4


def test_join_of_all_frames_is_the_clip() -> None:
    x = np.random.default_rng(0).standard_normal(5000).astype(np.float32)
    np.testing.assert_array_equal(join_frames(x, np.arange(num_frames(x.size, 50)), 50), x)


def test_crossfade_only_touches_the_cut_and_blends_true_samples() -> None:
    rate, size, half = 50, 640, 40
    x = np.random.default_rng(1).standard_normal(size * 5).astype(np.float32)
    joined = join_frames(x, np.array([0, 3]), rate, crossfade_ms=5.0)
    plain = join_frames(x, np.array([0, 3]), rate, crossfade_ms=0.0)
    assert joined.size == plain.size == 2 * size
    np.testing.assert_array_equal(joined[: size - half], plain[: size - half])
    np.testing.assert_array_equal(joined[size + half :], plain[size + half :])
    fade = raised_cosine_fade_out(2 * half)
    expected = fade * x[size - half : size + half] + (1 - fade) * x[3 * size - half : 3 * size + half]
    np.testing.assert_allclose(joined[size - half : size + half], expected, rtol=1e-6)


def test_crossfade_keeps_a_constant_signal_constant() -> None:
    x = np.full(320 * 10, 0.25, np.float32)
    joined = join_frames(x, np.array([1, 4, 5, 8]), 100)
    np.testing.assert_allclose(joined, 0.25, rtol=1e-6)


def test_crossfade_removes_the_step_at_a_cut() -> None:
    x = np.concatenate([np.zeros(1280 * 2), np.ones(1280 * 2)]).astype(np.float32)
    hard = join_frames(x, np.array([0, 3]), 25, crossfade_ms=0.0)
    soft = join_frames(x, np.array([0, 3]), 25, crossfade_ms=5.0)
    assert np.max(np.abs(np.diff(hard))) == 1.0
    assert np.max(np.abs(np.diff(soft))) < 0.05


def test_crossfade_into_a_short_clipped_last_frame() -> None:
    x = np.random.default_rng(2).standard_normal(320 * 3 + 10).astype(np.float32)
    joined = join_frames(x, np.array([0, 3]), 100)
    assert joined.size == 330
    np.testing.assert_array_equal(joined[: 320 - 10], x[: 320 - 10])


def test_join_rejects_bad_crossfade() -> None:
    with pytest.raises(ValueError, match="crossfade_ms"):
        join_frames(np.zeros(640, np.float32), np.array([0]), 50, crossfade_ms=-1.0)


@settings(max_examples=60, deadline=None)
@given(
    rate=st.sampled_from([25, 50, 100]),
    n=st.integers(min_value=1, max_value=6000),
    data=st.data(),
)
def test_joined_length_gives_exactly_k_frames(rate: int, n: int, data: st.DataObject) -> None:
    total = num_frames(n, rate)
    kept = sorted(data.draw(st.sets(st.integers(0, total - 1), min_size=1, max_size=total)))
    x = np.linspace(-1, 1, n, dtype=np.float32)
    joined = join_frames(x, np.array(kept, np.int64), rate)
    lengths = [min((i + 1) * frame_samples(rate), n) - i * frame_samples(rate) for i in kept]
    assert joined.size == sum(lengths)
    assert num_frames(joined.size, rate) == len(kept)
    assert np.all(np.isfinite(joined)) and np.max(np.abs(joined)) <= 1.0
