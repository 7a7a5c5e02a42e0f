"""Tests for agac_jax.scoring.baselines: random, uniform, evenly spaced, energy, segment top-k."""

from __future__ import annotations

import math
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agac_jax.scoring import baselines, selection

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True)

PAD_FRAMES = 96
RHOS = (0.1, 0.25, 0.3, 0.5, 0.7, 0.9, 1.0)


def prefix_mask(n_valid: int, length: int = PAD_FRAMES) -> np.ndarray:
    return np.arange(length) < n_valid


def gaps(kept: np.ndarray, n_valid: int) -> np.ndarray:
    """Distances between consecutive kept frames, and from the last kept frame to the clip's end."""
    return np.diff(np.append(kept, n_valid))


topk_jit = jax.jit(selection.topk_keep)


# ---------------------------------------------------------------------------------------------
# random
# ---------------------------------------------------------------------------------------------

random_jit = jax.jit(baselines.random_scores)


def test_random_scores_seeded_bounded_and_masked():
    valid = prefix_mask(70)
    first = np.asarray(random_jit(jax.random.key(0), valid))
    again = np.asarray(random_jit(jax.random.key(0), valid))
    other = np.asarray(random_jit(jax.random.key(1), valid))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    assert np.all((first[valid] >= 0) & (first[valid] < 1))
    assert np.all(first[~valid] == 0)
    assert len(np.unique(first[valid])) == 70


def test_random_scores_independent_of_padding():
    key = jax.random.key(5)
    short = np.asarray(baselines.random_scores(key, prefix_mask(40, 40)))
    long = np.asarray(random_jit(key, prefix_mask(40, PAD_FRAMES)))
    np.testing.assert_array_equal(short, long[:40])


def test_random_selection_covers_frames_evenly_over_seeds():
    valid = prefix_mask(20, 20)
    keys = jax.random.split(jax.random.key(3), 400)
    scores = jax.vmap(baselines.random_scores, in_axes=(0, None))(keys, valid)
    masks = np.asarray(jax.vmap(selection.topk_keep, in_axes=(0, None, None))(scores, valid, 5))
    assert np.all(masks.sum(axis=1) == 5)
    per_frame = masks.mean(axis=0)
    np.testing.assert_allclose(per_frame, 0.25, atol=0.1)


# ---------------------------------------------------------------------------------------------
# uniform (nested van der Corput) and evenly spaced
# ---------------------------------------------------------------------------------------------

uniform_jit = jax.jit(baselines.uniform_scores)


def uniform_kept_sets(n_valid: int) -> list[np.ndarray]:
    """Kept frames of uniform_scores for k = 1..n_valid (one vmapped program over k)."""
    valid = prefix_mask(n_valid)
    scores = uniform_jit(valid)
    ks = jnp.arange(1, n_valid + 1)
    masks = np.asarray(jax.vmap(topk_jit, in_axes=(None, None, 0))(scores, valid, ks))
    return [selection.kept_indices(mask) for mask in masks]


@pytest.mark.parametrize("n_valid", [1, 2, 7, 16, 17, 50, 63, 64, 65, 96])
def test_uniform_scores_spread_evenly_for_every_k(n_valid):
    kept_sets = uniform_kept_sets(n_valid)
    for k, kept in enumerate(kept_sets, start=1):
        assert len(kept) == k
        assert kept[0] == 0
        power = 1 << (k.bit_length() - 1)
        bound = math.ceil(n_valid / power)
        assert gaps(kept, n_valid).max() <= bound, (n_valid, k, kept)
        assert bound <= math.ceil(2 * n_valid / k)
        if k == power:
            assert gaps(kept, n_valid).max() <= math.ceil(n_valid / k)
        if k > 1:
            assert set(kept_sets[k - 2]) <= set(kept)


@pytest.mark.parametrize("n_valid", [10, 37, 100])
@pytest.mark.parametrize("rho", RHOS)
def test_uniform_scores_spread_for_keep_ratio(n_valid, rho):
    valid = prefix_mask(n_valid, 128)
    k = int(selection.keep_count(n_valid, *selection.keep_ratio_fraction(rho)))
    kept = selection.kept_indices(topk_jit(uniform_jit(valid), valid, k))
    assert len(kept) == k
    assert gaps(kept, n_valid).max() <= math.ceil(2 * n_valid / k)


def test_uniform_scores_distinct_positive_and_padding_independent():
    tight = np.asarray(baselines.uniform_scores(prefix_mask(45, 45)))
    loose = np.asarray(uniform_jit(prefix_mask(45)))
    np.testing.assert_array_equal(tight, loose[:45])
    assert np.all(loose[45:] == 0)
    assert np.all(tight > 0) and len(np.unique(tight)) == 45


def test_uniform_scores_rejects_huge_grid():
    with pytest.raises(ValueError, match="up to"):
        baselines.uniform_scores(np.ones(baselines.MAX_UNIFORM_FRAMES + 1, bool))


evenly_jit = jax.jit(baselines.evenly_spaced_scores)


@SETTINGS
@given(n_valid=st.integers(1, PAD_FRAMES), k_fraction=st.floats(0.0, 1.2))
def test_evenly_spaced_scores_keep_k_centred_frames(n_valid, k_fraction):
    k = int(round(k_fraction * n_valid))
    valid = prefix_mask(n_valid)
    scores = evenly_jit(valid, k)
    kept = selection.kept_indices(topk_jit(scores, valid, k))
    kept_count = min(k, n_valid)
    assert len(kept) == kept_count
    assert np.all(np.asarray(scores)[kept] == 1)
    if kept_count:
        expected = [(2 * i + 1) * n_valid // (2 * kept_count) for i in range(kept_count)]
        np.testing.assert_array_equal(kept, expected)
        spacing = np.diff(kept)
        assert np.all(spacing >= n_valid // kept_count)
        assert np.all(spacing <= math.ceil(n_valid / kept_count))


# ---------------------------------------------------------------------------------------------
# energy
# ---------------------------------------------------------------------------------------------


def reference_energy(waveform: np.ndarray, n_samples: int, rate: int) -> np.ndarray:
    fs = 32000 // rate
    n_frames = -(-n_samples // fs)
    clip = waveform[:n_samples].astype(np.float64)
    return np.array(
        [np.sqrt(np.mean(clip[f * fs : (f + 1) * fs] ** 2)) for f in range(n_frames)]
    )


ENERGY_SAMPLES = 12_000
energy_jit = jax.jit(baselines.energy_scores, static_argnums=(2, 3))


@SETTINGS
@given(
    rate=st.sampled_from([25, 50, 100]),
    n_samples=st.integers(1, ENERGY_SAMPLES),
    seed=st.integers(0, 2**31 - 1),
)
def test_energy_scores_match_frame_rms(rate, n_samples, seed):
    rng = np.random.default_rng(seed)
    waveform = rng.normal(size=ENERGY_SAMPLES).astype(np.float32)
    waveform[n_samples:] = 1e6
    max_frames = selection.static_num_frames(ENERGY_SAMPLES, rate)
    got = np.asarray(energy_jit(waveform, n_samples, rate, max_frames))
    expected = reference_energy(waveform, n_samples, rate)
    np.testing.assert_allclose(got[: len(expected)], expected, rtol=1e-5)
    assert np.all(got[len(expected) :] == 0)


def test_energy_scores_constant_and_silent_signals():
    tone = np.full(5000, -0.5, dtype=np.float32)
    np.testing.assert_allclose(energy_jit(tone, 5000, 25, 4), 0.5, rtol=1e-6)
    silent = energy_jit(np.zeros(3000, np.float32), 3000, 100, 12)
    np.testing.assert_array_equal(silent, 0)


def test_energy_scores_waveform_shorter_or_longer_than_grid_agree():
    waveform = np.random.default_rng(4).normal(size=2000).astype(np.float32)
    short = np.asarray(energy_jit(waveform, 2000, 50, 8))
    long_input = np.concatenate([waveform, np.ones(9000, np.float32)])
    long = np.asarray(energy_jit(long_input, 2000, 50, 8))
    np.testing.assert_array_equal(short, long)


def test_bad_energy_lengths_are_refused_on_the_host():
    with pytest.raises(ValueError, match="exceeds"):
        selection.check_clip_values(n_samples=200, rate=100, max_frames=4, waveform_samples=100)
    with pytest.raises(ValueError, match="more than max_frames"):
        selection.check_clip_values(n_samples=5000, rate=100, max_frames=4, waveform_samples=5000)


# ---------------------------------------------------------------------------------------------
# segment top-k
# ---------------------------------------------------------------------------------------------


def test_segment_ids_follow_time_not_frame_count():
    ids = baselines.segment_ids(40, 25)
    assert (ids == 0).sum() == 13 and (ids == 1).sum() == 12 and (ids == 2).sum() == 13
    np.testing.assert_array_equal(baselines.segment_ids(60, 50), np.arange(60) // 25)
    np.testing.assert_array_equal(baselines.segment_ids(60, 100, 0.5), np.arange(60) // 25)
    with pytest.raises(ValueError, match="positive"):
        baselines.segment_ids(10, 50, 0.0)


quotas_jit = jax.jit(baselines.segment_quotas)


@SETTINGS
@given(
    valid_per_segment=st.lists(st.integers(0, 30), min_size=1, max_size=8),
    k_fraction=st.floats(0.0, 1.0),
)
def test_segment_quotas_largest_remainder(valid_per_segment, k_fraction):
    counts = np.array(valid_per_segment, dtype=np.int32)
    total = int(counts.sum())
    k = int(round(k_fraction * total))
    quotas = np.asarray(quotas_jit(jnp.asarray(counts), k))
    assert quotas.sum() == k
    assert np.all((quotas >= 0) & (quotas <= counts))
    if total:
        exact = np.array([Fraction(k * int(c), total) for c in counts])
        assert all(abs(q - e) < 1 for q, e in zip(quotas, exact))
        expected = [math.floor(e) for e in exact]
        leftover = k - sum(expected)
        by_remainder = sorted(range(len(counts)), key=lambda s: (-(exact[s] % 1), s))
        for s in by_remainder[:leftover]:
            expected[s] += 1
        np.testing.assert_array_equal(quotas, expected)


def reference_segment_topk(
    scores: np.ndarray, valid: np.ndarray, quotas: np.ndarray, ids: np.ndarray
) -> np.ndarray:
    mask = np.zeros(len(scores), dtype=bool)
    for segment, quota in enumerate(quotas):
        members = [f for f in np.flatnonzero(valid) if ids[f] == segment]
        members.sort(key=lambda f: (-scores[f], f))
        mask[members[:quota]] = True
    return mask


segment_topk_jit = jax.jit(baselines.segment_topk_keep, static_argnums=(3, 4))


@SETTINGS
@given(
    rate=st.sampled_from([25, 50, 100]),
    n_valid=st.integers(1, PAD_FRAMES),
    rho=st.sampled_from(RHOS),
    seed=st.integers(0, 2**31 - 1),
)
def test_segment_topk_keep_exact_count_and_per_segment_best(rate, n_valid, rho, seed):
    scores = np.random.default_rng(seed).integers(0, 5, size=PAD_FRAMES).astype(np.float32)
    valid = prefix_mask(n_valid)
    k = int(selection.keep_count(n_valid, *selection.keep_ratio_fraction(rho)))
    mask = np.asarray(segment_topk_jit(scores, valid, k, rate, 1.0))
    assert mask.sum() == k
    assert not mask[~valid].any()
    ids = baselines.segment_ids(PAD_FRAMES, rate)
    per_segment = np.bincount(ids[valid], minlength=ids.max() + 1)
    quotas = np.asarray(baselines.segment_quotas(jnp.asarray(per_segment, jnp.int32), k))
    np.testing.assert_array_equal(mask, reference_segment_topk(scores, valid, quotas, ids))


def test_segment_topk_keep_padding_independent_and_vmaps():
    rng = np.random.default_rng(8)
    lengths = [30, 55, 12]
    scores = rng.normal(size=(3, PAD_FRAMES)).astype(np.float32)
    valid = np.stack([prefix_mask(n) for n in lengths])
    ks = np.array([10, 20, 12], dtype=np.int32)
    batched = jax.jit(
        jax.vmap(lambda s, v, k: baselines.segment_topk_keep(s, v, k, 50))
    )(scores, valid, ks)
    for i, n in enumerate(lengths):
        tight = segment_topk_jit(scores[i, :n], valid[i, :n], ks[i], 50, 1.0)
        np.testing.assert_array_equal(
            selection.kept_indices(batched[i]), selection.kept_indices(tight)
        )


# ---------------------------------------------------------------------------------------------
# Batch: jit + vmap over clips equals per-clip calls
# ---------------------------------------------------------------------------------------------


def test_baseline_scores_vmap_over_padded_batch():
    lengths = np.array([5000, 12_000, 700], dtype=np.int32)
    waveforms = np.random.default_rng(9).normal(size=(3, ENERGY_SAMPLES)).astype(np.float32)
    max_frames = selection.static_num_frames(ENERGY_SAMPLES, 50)
    keys = jax.random.split(jax.random.key(2), 3)

    def clip_scores(key, waveform, n_samples):
        valid = selection.frame_valid_mask(n_samples, 50, max_frames)
        return (
            baselines.random_scores(key, valid),
            baselines.uniform_scores(valid),
            baselines.energy_scores(waveform, n_samples, 50, max_frames),
        )

    batched = jax.jit(jax.vmap(clip_scores))(keys, waveforms, lengths)
    single_jit = jax.jit(clip_scores)
    for i in range(3):
        single = single_jit(keys[i], waveforms[i], lengths[i])
        for got, want in zip(batched, single):
            np.testing.assert_array_equal(got[i], want)
