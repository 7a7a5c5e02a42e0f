"""Tests for agac_jax.scoring.selection: normalisation, fusion, frame mapping, keep count, top-k."""

from __future__ import annotations

import math
from fractions import Fraction

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agac_jax.scoring import selection

SETTINGS = settings(max_examples=30, deadline=None, derandomize=True)

PAD_TOKENS = 32
PAD_FRAMES = 64


# ---------------------------------------------------------------------------------------------
# Independent numpy references
# ---------------------------------------------------------------------------------------------


def reference_tokens_to_frames(
    token_scores: np.ndarray, n_valid_tokens: int, n_samples: int, rate: int
) -> np.ndarray:
    """Frame scores by sample-level averaging: each sample carries the score of its token."""
    fs = 32000 // rate
    n_frames = -(-n_samples // fs)
    sample_token = np.arange(n_samples) // 640
    sample_has_token = sample_token < n_valid_tokens
    sample_score = np.where(
        sample_has_token, token_scores[np.minimum(sample_token, len(token_scores) - 1)], 0.0
    )
    out = np.zeros(n_frames)
    for f in range(n_frames):
        span = slice(f * fs, min((f + 1) * fs, n_samples))
        covered = sample_has_token[span]
        if covered.any():
            out[f] = sample_score[span][covered].mean()
        else:
            out[f] = token_scores[n_valid_tokens - 1]
    return out


def reference_topk(scores: np.ndarray, valid: np.ndarray, k: int) -> np.ndarray:
    """Keep mask from a Python sort of the valid frames by (-score, index)."""
    candidates = sorted(np.flatnonzero(valid), key=lambda f: (-scores[f], f))
    mask = np.zeros(len(scores), dtype=bool)
    mask[candidates[: max(k, 0)]] = True
    return mask


def padded(values: np.ndarray, length: int, fill: float = np.nan) -> np.ndarray:
    out = np.full(length, fill, dtype=np.float32)
    out[: len(values)] = values
    return out


# ---------------------------------------------------------------------------------------------
# Normalisation and fusion
# ---------------------------------------------------------------------------------------------

normalize_jit = jax.jit(selection.minmax_normalize)


@SETTINGS
@given(
    st.lists(st.floats(-1e3, 1e3, width=32), min_size=1, max_size=PAD_TOKENS),
)
def test_minmax_normalize_bounds_and_extremes(values):
    x = padded(np.array(values), PAD_TOKENS)
    valid = np.arange(PAD_TOKENS) < len(values)
    out = np.asarray(normalize_jit(x, valid))
    assert np.all(np.isfinite(out))
    assert np.all(out[~valid] == 0)
    assert np.all((out >= 0) & (out <= 1))
    if max(values) > min(values):
        assert out[int(np.argmin(values))] == 0
        assert out[int(np.argmax(values))] == pytest.approx(1.0)
        expected = (np.array(values) - min(values)) / (max(values) - min(values))
        np.testing.assert_allclose(out[valid], expected, rtol=1e-5, atol=1e-6)
    else:
        assert np.all(out == 0)


def test_minmax_normalize_all_equal_and_empty():
    x = np.array([3.0, 3.0, 3.0, 100.0], dtype=np.float32)
    np.testing.assert_array_equal(
        selection.minmax_normalize(x, np.array([True, True, True, False])), np.zeros(4)
    )
    np.testing.assert_array_equal(selection.minmax_normalize(x, np.zeros(4, bool)), np.zeros(4))


def test_minmax_normalize_ignores_invalid_extremes():
    x = np.array([1.0, 2.0, 3.0, -np.inf, np.nan], dtype=np.float32)
    valid = np.array([True, True, True, False, False])
    np.testing.assert_allclose(selection.minmax_normalize(x, valid), [0.0, 0.5, 1.0, 0.0, 0.0])


def test_minmax_normalize_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="same shape"):
        selection.minmax_normalize(np.zeros(3), np.ones(4, bool))
    with pytest.raises(ValueError, match="1-D"):
        selection.minmax_normalize(np.zeros((2, 3)), np.ones((2, 3), bool))


def test_fuse_alpha_endpoints_give_single_normalised_score():
    rng = np.random.default_rng(0)
    local, global_ = rng.normal(size=(2, 20)).astype(np.float32)
    valid = np.arange(20) < 15
    fuse_jit = jax.jit(selection.fuse)
    np.testing.assert_allclose(
        fuse_jit(local, global_, valid, 1.0), selection.minmax_normalize(local, valid), atol=1e-7
    )
    np.testing.assert_allclose(
        fuse_jit(local, global_, valid, 0.0), selection.minmax_normalize(global_, valid), atol=1e-7
    )
    half = 0.5 * selection.minmax_normalize(local, valid) + 0.5 * selection.minmax_normalize(
        global_, valid
    )
    np.testing.assert_allclose(fuse_jit(local, global_, valid, 0.5), half, atol=1e-7)
    assert np.all(np.asarray(fuse_jit(local, global_, valid, 0.3))[~valid] == 0)


def test_alpha_out_of_range_is_refused_on_the_host():
    with pytest.raises(ValueError, match=r"alpha must lie in \[0, 1\]"):
        selection.check_clip_values(n_samples=640, rate=50, max_frames=1, alpha=1.5)


# ---------------------------------------------------------------------------------------------
# Frame grid and token-to-frame mapping
# ---------------------------------------------------------------------------------------------

tokens_to_frames_jit = jax.jit(selection.tokens_to_frames, static_argnums=(3, 4))


def test_frame_samples_and_rate_errors():
    assert [selection.frame_samples(r) for r in (25, 50, 100)] == [1280, 640, 320]
    with pytest.raises(ValueError, match="not supported"):
        selection.frame_samples(30)
    with pytest.raises(ValueError, match="must be an int"):
        selection.frame_samples(25.0)
    with pytest.raises(ValueError, match="must be an int"):
        selection.frame_samples(True)


@pytest.mark.parametrize("rate", [25, 50, 100])
def test_num_frames_is_ceil_and_traceable(rate):
    fs = selection.frame_samples(rate)
    ns = np.array([0, 1, fs - 1, fs, fs + 1, 16000, 480000], dtype=np.int32)
    got = jax.jit(jax.vmap(lambda n: selection.num_frames(n, rate)))(ns)
    np.testing.assert_array_equal(got, [math.ceil(n / fs) for n in ns])
    assert all(selection.static_num_frames(int(n), rate) == math.ceil(n / fs) for n in ns)


def test_tokens_to_frames_rate_25_averages_token_pairs():
    scores = np.arange(10, dtype=np.float32) ** 2
    frames, valid = tokens_to_frames_jit(scores, 10, 6400, 25, 8)
    np.testing.assert_allclose(frames[:5], scores.reshape(5, 2).mean(axis=1))
    np.testing.assert_array_equal(valid, np.arange(8) < 5)
    np.testing.assert_array_equal(frames[5:], 0)


def test_tokens_to_frames_rate_50_is_identity():
    scores = np.random.default_rng(1).normal(size=12).astype(np.float32)
    frames, valid = tokens_to_frames_jit(scores, 12, 12 * 640, 50, 12)
    np.testing.assert_allclose(frames, scores, rtol=1e-6)
    assert np.all(valid)


def test_tokens_to_frames_rate_100_duplicates_each_token():
    scores = np.random.default_rng(2).normal(size=7).astype(np.float32)
    frames, valid = tokens_to_frames_jit(scores, 7, 7 * 640, 100, 16)
    np.testing.assert_allclose(frames[:14], np.repeat(scores, 2), rtol=1e-6)
    np.testing.assert_array_equal(valid, np.arange(16) < 14)


def test_tokens_to_frames_uncovered_tail_takes_last_valid_token():
    scores = np.array([1.0, 2.0, 3.0, 99.0], dtype=np.float32)
    frames, valid = tokens_to_frames_jit(scores, 3, 3 * 640 + 900, 100, 12)
    np.testing.assert_array_equal(valid, np.arange(12) < 9)
    np.testing.assert_allclose(frames[:9], [1, 1, 2, 2, 3, 3, 3, 3, 3])


def test_tokens_to_frames_constant_maps_to_constant():
    scores = np.full(PAD_TOKENS, 0.37, dtype=np.float32)
    for rate in (25, 50, 100):
        frames, valid = tokens_to_frames_jit(scores, 23, 23 * 640 - 123, rate, PAD_FRAMES)
        np.testing.assert_allclose(np.asarray(frames)[np.asarray(valid)], 0.37, rtol=1e-6)


clip_lengths = st.integers(1, 20 * 640)



@SETTINGS
@given(
    rate=st.sampled_from([25, 50, 100]),
    n_samples=clip_lengths,
    token_delta=st.integers(-2, 2),
    seed=st.integers(0, 2**31 - 1),
)
def test_tokens_to_frames_matches_sample_level_reference_and_conserves_mass(
    rate, n_samples, token_delta, seed
):
    n_valid_tokens = int(np.clip(math.ceil(n_samples / 640) + token_delta, 1, PAD_TOKENS))
    rng = np.random.default_rng(seed)
    scores = padded(rng.normal(size=n_valid_tokens), PAD_TOKENS)
    frames, valid = tokens_to_frames_jit(scores, n_valid_tokens, n_samples, rate, PAD_FRAMES)
    frames, valid = np.asarray(frames), np.asarray(valid)
    expected = reference_tokens_to_frames(scores, n_valid_tokens, n_samples, rate)
    assert valid.sum() == len(expected)
    np.testing.assert_allclose(frames[: len(expected)], expected, rtol=1e-5, atol=1e-5)

    overlap = np.asarray(
        selection.token_frame_overlap(n_valid_tokens, n_samples, rate, PAD_TOKENS, PAD_FRAMES)
    )
    frame_mass = (overlap.sum(axis=1) * frames).sum()
    token_mass = (overlap.sum(axis=0)[:n_valid_tokens] * scores[:n_valid_tokens]).sum()
    np.testing.assert_allclose(frame_mass, token_mass, rtol=1e-4, atol=1e-2)


def test_tokens_to_frames_ignores_padded_token_values():
    scores = np.array([1.0, 2.0, np.nan, np.inf], dtype=np.float32)
    frames, _ = tokens_to_frames_jit(scores, 2, 2 * 640, 25, 2)
    np.testing.assert_allclose(frames, [1.5, 0.0])


def test_too_few_frames_and_bad_counts_are_refused_on_the_host():
    with pytest.raises(ValueError, match="more than max_frames"):
        selection.check_clip_values(n_samples=6400, rate=100, max_frames=10)
    with pytest.raises(ValueError, match="non-negative"):
        selection.check_clip_values(n_samples=-1, rate=100, max_frames=10)
    with pytest.raises(ValueError, match="n_valid_tokens must lie"):
        selection.check_clip_values(n_samples=6400, rate=50, max_frames=10, n_valid_tokens=11, n_tokens=10)
    selection.check_clip_values(n_samples=6400, rate=50, max_frames=10, n_valid_tokens=10, n_tokens=10)


# ---------------------------------------------------------------------------------------------
# Keep ratio and keep count
# ---------------------------------------------------------------------------------------------


def test_keep_ratio_fraction_is_the_written_decimal():
    assert selection.keep_ratio_fraction(0.7) == (7, 10)
    assert selection.keep_ratio_fraction("0.7") == (7, 10)
    assert selection.keep_ratio_fraction("2/3") == (2, 3)
    assert selection.keep_ratio_fraction(1.0) == (1, 1)
    assert selection.keep_ratio_fraction(1) == (1, 1)
    assert selection.keep_ratio_fraction(np.float32(0.9)) == (9, 10)
    assert selection.keep_ratio_fraction(0.125) == (1, 8)


@pytest.mark.parametrize(
    "rho, error, message",
    [
        (0, ValueError, r"\(0, 1\]"),
        (-0.1, ValueError, r"\(0, 1\]"),
        (1.5, ValueError, r"\(0, 1\]"),
        (float("nan"), ValueError, "finite"),
        (float("inf"), ValueError, "finite"),
        ("seventy", ValueError, "finite"),
        (1 / 3, ValueError, "too fine"),
        (True, TypeError, "number"),
        (None, TypeError, "number"),
    ],
)
def test_keep_ratio_fraction_rejects_bad_rho(rho, error, message):
    with pytest.raises(error, match=message):
        selection.keep_ratio_fraction(rho)


def test_keep_count_exact_where_float_rounding_is_not():
    assert math.ceil(0.07 * 100) == 8
    assert math.ceil(0.55 * 100) == 56
    assert int(selection.keep_count(100, *selection.keep_ratio_fraction(np.float32(0.7)))) == 70
    assert int(selection.keep_count(100, *selection.keep_ratio_fraction(0.07))) == 7
    assert int(selection.keep_count(100, *selection.keep_ratio_fraction(0.55))) == 55


def test_keep_count_matches_exact_ceiling_for_many_n():
    ns = np.arange(0, 2001, dtype=np.int32)
    count = jax.jit(jax.vmap(selection.keep_count, in_axes=(0, None, None)))
    for rho in (0.7, 0.9, 0.5, 1.0, 0.25, 0.1, 0.3, 0.33, 0.05, "2/3"):
        num, den = selection.keep_ratio_fraction(rho)
        expected = [math.ceil(Fraction(num, den) * int(n)) for n in ns]
        np.testing.assert_array_equal(count(ns, num, den), expected, err_msg=f"rho={rho}")


def test_keep_count_does_not_overflow_for_long_clips():
    n = 2_000_000
    assert int(selection.keep_count(n, 9999, 10000)) == math.ceil(Fraction(9999, 10000) * n)


# ---------------------------------------------------------------------------------------------
# Top-k
# ---------------------------------------------------------------------------------------------

topk_jit = jax.jit(selection.topk_keep)


@SETTINGS
@given(
    values=st.lists(st.integers(0, 5), min_size=1, max_size=PAD_FRAMES),
    k=st.integers(0, PAD_FRAMES + 3),
    pad_value=st.sampled_from([0.0, 1e9, np.nan]),
)
def test_topk_keep_matches_stable_sort_reference(values, k, pad_value):
    scores = padded(np.array(values, dtype=np.float32), PAD_FRAMES, fill=pad_value)
    valid = np.arange(PAD_FRAMES) < len(values)
    mask = np.asarray(topk_jit(scores, valid, k))
    np.testing.assert_array_equal(mask, reference_topk(scores, valid, k))
    assert mask.sum() == min(k, len(values))
    assert not mask[~valid].any()


def test_topk_keep_ties_go_to_earlier_frame():
    scores = np.array([1.0, 5.0, 5.0, 2.0, 5.0, 2.0], dtype=np.float32)
    valid = np.ones(6, bool)
    assert selection.kept_indices(selection.topk_keep(scores, valid, 2)).tolist() == [1, 2]
    assert selection.kept_indices(selection.topk_keep(scores, valid, 4)).tolist() == [1, 2, 3, 4]


def test_topk_keep_never_keeps_invalid_frames_even_with_best_scores():
    scores = np.array([0.1, 0.2, 9.0, 9.0], dtype=np.float32)
    valid = np.array([True, True, False, False])
    mask = selection.topk_keep(scores, valid, 3)
    assert selection.kept_indices(mask).tolist() == [0, 1]


def test_topk_keep_ranks_nan_after_every_number():
    scores = np.array([np.nan, 1.0, -np.inf, np.nan, 2.0], dtype=np.float32)
    mask = selection.topk_keep(scores, np.ones(5, bool), 3)
    assert selection.kept_indices(mask).tolist() == [1, 2, 4]


def test_kept_indices_sorted_and_validated():
    got = selection.kept_indices(np.array([False, True, False, True, True]))
    assert got.dtype == np.int64 and got.tolist() == [1, 3, 4]
    with pytest.raises(ValueError, match="1-D bool"):
        selection.kept_indices(np.array([0, 1, 1]))


# ---------------------------------------------------------------------------------------------
# The whole per-clip path: jit, vmap, padding, one trace for several rho
# ---------------------------------------------------------------------------------------------


def select_clip(token_scores, n_valid_tokens, n_samples, numerator, denominator, rate, max_frames):
    """Token scores -> keep mask of one clip, as the scoring program composes these functions."""
    frame_scores, frame_valid = selection.tokens_to_frames(
        token_scores, n_valid_tokens, n_samples, rate, max_frames
    )
    k = selection.keep_count(frame_valid.sum(), numerator, denominator)
    return selection.topk_keep(frame_scores, frame_valid, k)


select_clip_jit = jax.jit(select_clip, static_argnums=(5, 6))


def make_clip(seed: int, n_samples: int) -> np.ndarray:
    n_tokens = math.ceil(n_samples / 640)
    return np.random.default_rng(seed).integers(0, 4, size=n_tokens).astype(np.float32)


def test_one_trace_serves_several_rho_values():
    @jax.jit
    @chex.assert_max_traces(n=1)
    def select(token_scores, n_valid, n_samples, numerator, denominator):
        return select_clip(token_scores, n_valid, n_samples, numerator, denominator, 50, 40)

    clip = padded(make_clip(3, 30 * 640), 40)
    for rho in (0.7, 0.9, 0.5, 1.0, "1/3"):
        num, den = selection.keep_ratio_fraction(rho)
        mask = select(clip, 30, 30 * 640, np.int32(num), np.int32(den))
        assert int(np.asarray(mask).sum()) == math.ceil(Fraction(num, den) * 30)


@pytest.mark.parametrize("rate", [25, 50, 100])
def test_jit_vmap_over_padded_batch_equals_per_clip_calls(rate):
    lengths = [640 * 7, 5000, 16000, 301]
    max_samples = max(lengths)
    max_frames = selection.static_num_frames(max_samples, rate)
    max_tokens = math.ceil(max_samples / 640)
    clips = [make_clip(i, n) for i, n in enumerate(lengths)]
    token_batch = np.stack([padded(c, max_tokens) for c in clips])
    n_tokens = np.array([len(c) for c in clips], dtype=np.int32)
    n_samples = np.array(lengths, dtype=np.int32)

    batched = jax.jit(
        jax.vmap(lambda s, t, n: select_clip(s, t, n, 7, 10, rate, max_frames))
    )(token_batch, n_tokens, n_samples)
    for i, clip in enumerate(clips):
        single = select_clip_jit(clip, len(clip), lengths[i], 7, 10, rate, max_frames)
        np.testing.assert_array_equal(batched[i], single)
        n_frames = selection.static_num_frames(lengths[i], rate)
        assert int(np.asarray(batched[i]).sum()) == math.ceil(Fraction(7, 10) * n_frames)


@pytest.mark.parametrize("rate", [25, 50, 100])
def test_kept_set_independent_of_padding(rate):
    n_samples = 9 * 640 + 200
    clip = make_clip(11, n_samples)
    tight_frames = selection.static_num_frames(n_samples, rate)
    kept = []
    for extra_tokens, extra_frames in [(0, 0), (3, 5), (20, 37)]:
        tokens = padded(clip, len(clip) + extra_tokens, fill=7.0)
        max_frames = tight_frames + extra_frames
        mask = select_clip_jit(tokens, len(clip), n_samples, 3, 5, rate, max_frames)
        assert not np.asarray(mask)[tight_frames:].any()
        kept.append(selection.kept_indices(mask).tolist())
    assert kept[0] == kept[1] == kept[2]


@settings(deadline=None, max_examples=25)
@given(n_valid=st.integers(1, 40), pad=st.integers(0, 12), smooth=st.sampled_from([1, 2, 5, 9, 15]),
       sign=st.sampled_from(["signed", "magnitude"]), seed=st.integers(0, 2**16))
def test_local_evidence_equals_the_reference_on_the_valid_tokens_and_ignores_padding(n_valid, pad, smooth, sign, seed):
    from agac_jax.reference.selection import local_evidence as reference_local_evidence
    from agac_jax.scoring.program import local_evidence

    rng = np.random.default_rng(seed)
    local = rng.normal(size=n_valid + pad).astype(np.float32)
    local[n_valid:] = 1e6  # padded slots: must reach neither the valid tokens nor the output
    valid = np.arange(n_valid + pad) < n_valid
    ours = np.asarray(local_evidence(jnp.asarray(local), jnp.asarray(valid), sign=sign, smooth=smooth))
    expected = reference_local_evidence(local[:n_valid], sign=sign, smooth=smooth)
    np.testing.assert_allclose(ours[:n_valid], expected, rtol=1e-5, atol=1e-6)
    assert np.all(ours[n_valid:] == 0)
    if sign == "magnitude":
        assert np.all(ours >= 0)
