"""The adaptive selection methods: each clip's k from its own scores under fixed rho's total budget."""

from __future__ import annotations

import types

import jax.numpy as jnp
import numpy as np
import pytest

from agac_jax.audio import grids
from agac_jax.eval import results
from agac_jax.scoring import budget, methods, selection

ADAPTIVE = ("adaptive_mass", "adaptive_pool", "adaptive_kind")
BY_SCORES = ("adaptive_mass", "adaptive_pool")  # the rules that read the scores (adaptive_kind: the kind)
RATE = 25  # a frame is 2 audio tokens (1280 samples)
TOKEN = grids.SAMPLES_PER_AUDIO_TOKEN


def _clip(fused: np.ndarray) -> tuple[types.SimpleNamespace, np.ndarray]:
    """Scores whose fused score is `fused` [T] (min-max within the clip), and a waveform of T tokens."""
    fused = np.asarray(fused, np.float32)
    t = len(fused)
    scores = types.SimpleNamespace(local=fused, global_=fused, fused=fused, fastv=fused, num_tokens=t,
                                   n_samples=t * TOKEN)
    wave = np.random.default_rng(t).standard_normal(t * TOKEN).astype(np.float32) * 0.1
    return scores, wave


def _event(t: int, start: int, length: int, rng: np.random.Generator) -> np.ndarray:
    """A clip whose evidence is one short event: high scores on `length` tokens, low noise elsewhere."""
    x = 0.05 * rng.random(t)
    x[start:start + length] = 0.9 + 0.1 * rng.random(length)
    return x


def _throughout(t: int, rng: np.random.Generator) -> np.ndarray:
    """A clip that is evidence throughout: high scores everywhere, with small variation."""
    x = 0.7 + 0.3 * rng.random(t)
    x[0] = 0.0  # min-max's zero
    return x


def _frame_scores(scores: types.SimpleNamespace) -> np.ndarray:
    frames, _ = selection.tokens_to_frames(jnp.asarray(scores.fused), scores.num_tokens, scores.n_samples, RATE,
                                           selection.static_num_frames(scores.n_samples, RATE))
    return np.asarray(frames)


@pytest.fixture(scope="module")
def pool():
    """Five clips of different lengths and score concentrations (five: the batch is padded to eight)."""
    rng = np.random.default_rng(0)
    made = [_clip(_event(100, 40, 6, rng)), _clip(_throughout(80, rng)), _clip(_event(150, 10, 20, rng)),
            _clip(_throughout(60, rng)), _clip(rng.random(120))]
    return [s for s, _ in made], [w for _, w in made]


def _counts(kept):
    return np.asarray([len(k) for k in kept])


def _fixed(scores, rho):
    return np.asarray([-(-int(round(rho * 10)) * selection.static_num_frames(s.n_samples, RATE) // 10)
                       for s in scores])


@pytest.mark.parametrize("method", ADAPTIVE)
@pytest.mark.parametrize("rho", [0.1, 0.3, 0.5, 0.7, 0.9])
def test_the_budget_is_fixed_rhos_total_exactly(pool, method, rho):
    """Over the call's clips the adaptive method keeps as many frames as fixed rho, every clip at least
    one; the batch-padding copies (5 clips -> 8 slots) never count, and the kept frames of each clip
    are its top-k by fused frame score."""
    scores, waves = pool
    kept = methods.select_batch(scores, waves, method, RATE, rho, [0] * len(scores))
    fixed = methods.select_batch(scores, waves, "fused", RATE, rho, [0] * len(scores))
    assert _counts(fixed).tolist() == _fixed(scores, rho).tolist()
    assert _counts(kept).sum() == _counts(fixed).sum()
    assert (_counts(kept) >= 1).all()
    for s, keep in zip(scores, kept):
        frames = _frame_scores(s)
        top = selection.kept_indices(np.asarray(selection.topk_keep(frames, np.ones(len(frames), bool), len(keep))))
        np.testing.assert_array_equal(keep, top)


@pytest.mark.parametrize("method", BY_SCORES)
def test_k_follows_the_clips_score_concentration(pool, method):
    """A short event keeps fewer frames than fixed rho, a clip that is evidence throughout more."""
    scores, waves = pool
    kept = _counts(methods.select_batch(scores, waves, method, RATE, 0.5, [0] * len(scores)))
    fixed = _fixed(scores, 0.5)
    assert kept[0] < fixed[0] and kept[2] < fixed[2]  # one short event each
    assert kept[1] > fixed[1] and kept[3] > fixed[3]  # evidence throughout


@pytest.mark.parametrize("method", ADAPTIVE)
def test_clips_of_one_score_profile_keep_what_fused_keeps(method):
    """Every clip alike: the budget has nothing to move, so the adaptive method is fused top-k; a clip
    alone is fused top-k too."""
    rng = np.random.default_rng(3)
    s, w = _clip(rng.random(90))
    for n in (1, 3, 4):
        for rho in (0.3, 0.5, 0.7):
            kept = methods.select_batch([s] * n, [w] * n, method, RATE, rho, [0] * n)
            fused = methods.select_frames(s, w, "fused", RATE, rho, 0)
            for keep in kept:
                np.testing.assert_array_equal(keep, fused)


def test_mass_rule_is_one_share_tau_for_every_clip(pool):
    """adaptive_mass keeps, in every clip, the smallest k whose top-k frames hold a share tau of its
    frame-score mass, one tau for the pool: every kept frame's share-before is at most every unkept
    frame's (first frames aside, always kept)."""
    scores, waves = pool
    kept = methods.select_batch(scores, waves, "adaptive_mass", RATE, 0.4, [0] * len(scores))
    last_kept, first_unkept = [], []
    for s, keep in zip(scores, kept):
        frames = np.sort(_frame_scores(s))[::-1].astype(np.float64)
        before = np.concatenate([[0.0], np.cumsum(frames)[:-1]]) / frames.sum()
        last_kept.append(before[len(keep) - 1])
        if len(keep) < len(frames):
            first_unkept.append(before[len(keep)])
    assert max(last_kept) <= min(first_unkept) + 1e-6


def test_pool_rule_is_one_score_threshold(pool):
    """adaptive_pool keeps the highest fused frame scores across the clips (each clip's best frame first)."""
    scores, waves = pool
    kept = methods.select_batch(scores, waves, "adaptive_pool", RATE, 0.4, [0] * len(scores))
    inside, outside = [], []
    for s, keep in zip(scores, kept):
        frames = _frame_scores(s)
        mask = np.zeros(len(frames), bool)
        mask[keep] = True
        best = np.argmax(frames)
        inside += frames[mask & (np.arange(len(frames)) != best)].tolist()
        outside += frames[~mask].tolist()
    assert min(inside) >= max(outside)


def test_padding_copies_and_their_scores_change_nothing(pool):
    """The same clips in a batch of 5 (padded to 8 with copies of the first) and of 8 real clips whose
    extra three are other clips: the first five's budget is theirs alone, so the first call's counts sum
    to the fixed total of the five."""
    scores, waves = pool
    five = _counts(methods.select_batch(scores, waves, "adaptive_pool", RATE, 0.3, [0] * 5))
    assert five.sum() == _fixed(scores, 0.3).sum()
    eight = _counts(methods.select_batch(scores + scores[1:4], waves + waves[1:4], "adaptive_pool", RATE, 0.3,
                                         [0] * 8))
    assert eight.sum() == _fixed(scores + scores[1:4], 0.3).sum()


def test_allocate_counts_and_ties():
    """`budget.allocate`: counts sum to the budget, copies keep nothing, first ranks first, ties to the
    lower rank then the earlier clip."""
    priority = jnp.asarray([[5.0, 1.0, 1.0, 0.0], [5.0, 1.0, 1.0, 0.0], [9.0, 9.0, 9.0, 9.0]])
    valid = jnp.asarray([[True] * 4, [True] * 3 + [False], [True] * 4])
    real = jnp.asarray([True, True, False])
    assert budget.allocate(priority, valid, real, 2).tolist() == [1, 1, 0]
    assert budget.allocate(priority, valid, real, 3).tolist() == [2, 1, 0]
    assert budget.allocate(priority, valid, real, 4).tolist() == [2, 2, 0]
    assert budget.allocate(priority, valid, real, 5).tolist() == [3, 2, 0]
    assert budget.allocate(priority, valid, real, 7).tolist() == [4, 3, 0]
    low_first = jnp.asarray([[0.0, 0.0], [9.0, 8.0]])  # clip 0's best frame is kept whatever its priority
    assert budget.allocate(low_first, jnp.ones((2, 2), bool), jnp.ones(2, bool), 2).tolist() == [1, 1]


def test_mass_priority_of_a_clip_without_mass_is_even():
    share = -np.asarray(budget.mass_priority(jnp.zeros(4), jnp.asarray([True, True, True, False]), 1.0))
    np.testing.assert_allclose(share[:3], [0.0, 1 / 3, 2 / 3])
    share = -np.asarray(budget.mass_priority(jnp.asarray([3.0, 1.0, 0.0, -1.0]), jnp.ones(4, bool), 1.0))
    np.testing.assert_allclose(share, [0.0, 0.75, 1.0, 1.0])


def test_adaptive_methods_are_ordinary_registry_methods():
    """The sweep, its tables, the CLI and the config schema take them from the registry."""
    from configs.common import base_config

    for name in ADAPTIVE:
        assert name in methods.NAMES and name in results.SELECTING_METHODS
        assert methods.METHODS[name].pool is not None
    assert not set(ADAPTIVE) & set(base_config().methods)  # asked for by name: their rows depend on batching
    assert set(base_config().methods) | set(ADAPTIVE) == set(results.METHODS)
    assert all(methods.METHODS[name].pool is None for name in methods.NAMES if name not in ADAPTIVE)


def test_study_compares_adaptive_with_fused_at_equal_frames(tmp_path):
    """The study's adaptive variant on two synthetic clips: every selector keeps the same frames in all,
    adaptive.md holds the paired differences, the plot is written, and a rerun scores nothing again.
    Calibrating the kinds on the same clips writes kind_weights.json, and adaptive_kind keeps frames
    by the configured weights."""
    import csv
    import json

    from agac_jax.eval import adaptive, study
    from configs.estimator_study import get_config

    config = get_config("adaptive")
    config.benchmarks = config.benchmarks[:1]
    config.benchmarks[0].dataset.num_clips = 2
    config.settings = ("integrated_gradients/2/log_odds/magnitude/smooth9",)
    config.selectors = ("adaptive_mass", "adaptive_kind")  # adaptive_pool's study path is adaptive_mass's
    config.kind_weights = (("count", 3.0), ("existence", 0.5), ("order", 1.0))
    config.calibrate_kinds = True
    rows = study.run_study(config, tmp_path)
    assert [row["selector"] for row in rows] == ["fused", "adaptive_mass", "adaptive_kind", "aad"]
    lines = list(csv.DictReader((tmp_path / "adaptive.csv").open()))
    assert len(lines) == 3 * 3
    for rho in (0.3, 0.5, 0.7):
        at = [line for line in lines if float(line["rho"]) == rho]
        assert len({line["frames_kept"] for line in at}) == 1  # one budget
        assert float(at[0]["frames_kept"]) >= 100 * rho
        for line in at:
            assert 0 <= float(line["insertion"]) <= 100 and 0 <= float(line["joined"]) <= 100
            if line["selector"] != "fused":
                assert float(line["insertion_p_holm"]) >= float(line["insertion_p"])
    kept = {row["selector"]: row[adaptive.PER_QUESTION]["kept_0.5"] for row in rows[:3]}
    assert sum(kept["fused"]) == sum(kept["adaptive_mass"]) == sum(kept["adaptive_kind"])
    kinds = [group.split()[0] for group in rows[0][adaptive.PER_QUESTION]["groups"]]
    if len(set(kinds)) > 1:  # the weights move frames between kinds
        assert kept["adaptive_kind"] != kept["fused"]
    stored = json.loads((tmp_path / adaptive.KIND_WEIGHTS_NAME).read_text())["synthetic"]
    assert stored["rate"] == config.rate and {kind for kind, _ in stored["kind_weights"]} == set(kinds)
    assert all(weight > 0 for _, weight in stored["kind_weights"])
    assert "| adaptive_mass | 0.5 |" in (tmp_path / "adaptive.md").read_text()
    assert (tmp_path / "ac_vs_tokens.png").stat().st_size > 1000
    assert len(study.run_study(config, tmp_path)) == len(rows)


def test_paired_difference_and_sign_test():
    from agac_jax.eval import adaptive

    a = np.asarray([1.0, 1.0, 0.0, 1.0, np.nan])
    b = np.asarray([0.0, 1.0, 0.0, 0.0, 1.0])
    out = adaptive.paired(a, b)
    assert out["diff"] == pytest.approx(50.0) and (out["better"], out["worse"]) == (2, 0)
    assert out["p"] == pytest.approx(0.5) and out["low"] <= 50.0 <= out["high"]


def test_kind_weights_set_each_clips_keep_ratio(pool):
    """adaptive_kind: equal weights keep exactly fixed rho's frames; unequal ones keep the same total
    with each clip's keep ratio in proportion to its weight (to a frame), top-k by fused score."""
    scores, waves = pool
    for rho in (0.3, 0.5):
        fused = methods.select_batch(scores, waves, "fused", RATE, rho, [0] * 5)
        for weights in (None, [1.0] * 5, [3.0] * 5):
            kept = methods.select_batch(scores, waves, "adaptive_kind", RATE, rho, [0] * 5, weights)
            for a, b in zip(kept, fused):
                np.testing.assert_array_equal(a, b)
    weights = [2.0, 1.0, 1.0, 0.5, 1.0]
    kept = methods.select_batch(scores, waves, "adaptive_kind", RATE, 0.3, [0] * 5, weights)
    frames = np.asarray([selection.static_num_frames(s.n_samples, RATE) for s in scores])
    assert _counts(kept).sum() == _fixed(scores, 0.3).sum()
    threshold = _counts(kept) / (frames * np.asarray(weights))  # one threshold t: k_i ~ t w_i N_i
    assert np.ptp(threshold) <= 1.0 / (frames * np.asarray(weights)).min() + 1e-9
    assert _counts(kept)[0] > _fixed(scores, 0.3)[0] and _counts(kept)[3] < _fixed(scores, 0.3)[3]
    for s, keep in zip(scores, kept):
        f = _frame_scores(s)
        top = selection.kept_indices(np.asarray(selection.topk_keep(f, np.ones(len(f), bool), len(keep))))
        np.testing.assert_array_equal(keep, top)
    with pytest.raises(ValueError, match="weights must be 5 finite values > 0"):
        methods.select_batch(scores, waves, "adaptive_kind", RATE, 0.3, [0] * 5, [1.0, 1.0, 0.0, 1.0, 1.0])


def test_kind_weights_are_calibrated_from_the_evidence_share_each_kind_needs():
    from agac_jax.eval import adaptive

    recalls = {0.25: np.asarray([1.0, 0.5, np.nan, 0.2, 0.0]), 0.5: np.asarray([1.0, 1.0, np.nan, 0.9, 0.5]),
               1.0: np.asarray([1.0, 1.0, np.nan, 1.0, 0.9])}
    shares = adaptive.evidence_shares(recalls)
    np.testing.assert_array_equal(shares, [0.25, 0.5, np.nan, 1.0, np.nan])  # last: never all of it
    kinds = ["existence", "existence", "existence", "count", "order"]
    calibrated = adaptive.calibrate_kind_weights(kinds, shares)
    mean = (0.25 + 0.5 + 1.0) / 3
    assert calibrated["existence"] == dict(weight=pytest.approx(0.375 / mean), mean_share=0.375, questions=2)
    assert calibrated["count"]["weight"] == pytest.approx(1.0 / mean)
    assert calibrated["order"]["weight"] == 1.0 and calibrated["order"]["questions"] == 0
    pairs = [(kind, v["weight"]) for kind, v in calibrated.items()]
    assert adaptive.sample_weights(["count", "speech", None], pairs) == [pytest.approx(1.0 / mean), 1.0, 1.0]
    with pytest.raises(ValueError, match="finite and > 0"):
        adaptive.sample_weights(["count"], [("count", -1.0)])
    with pytest.raises(ValueError, match="nothing to calibrate"):
        adaptive.calibrate_kind_weights(["count"], np.asarray([np.nan]))



@pytest.mark.parametrize("method", ["fused", "random", "energy", "segment_topk", "adaptive_pool", "adaptive_kind"])
def test_a_selection_batch_selects_any_rows_as_a_call_on_those_clips_would(pool, method):
    """One `SelectionBatch` serves every selection over its clips: all rows, a subset out of order and
    one clip alone keep what `select_batch` keeps on those clips (the subset's pool, its own padding)."""
    scores, waves = pool
    batch = methods.SelectionBatch(scores, waves)
    weights = [1.0, 0.5, 2.0, 1.0, 1.5]
    for rows in ([0, 1, 2, 3, 4], [3, 1], [2]):
        seeds = [7 + r for r in rows]
        picked = [weights[r] for r in rows]
        expected = methods.select_batch([scores[r] for r in rows], [waves[r] for r in rows], method, RATE, 0.4,
                                        seeds, picked)
        got = [selection.kept_indices(m) for m in batch.masks(method, RATE, 0.4, seeds, picked, rows=rows)]
        assert [k.tolist() for k in got] == [k.tolist() for k in expected]


def test_a_selection_batch_uploads_the_clips_once(pool):
    """After construction a selection moves no clip data to the device: implicit host-to-device
    transfers are refused while selecting, and only the per-call seeds, ratio and weights go up."""
    import jax

    scores, waves = pool
    batch = methods.SelectionBatch(scores, waves)
    before = [k.tolist() for k in methods.select_batch(scores, waves, "energy", RATE, 0.5, [0] * 5)]
    with jax.transfer_guard_host_to_device("disallow"):
        for method in ("fused", "energy", "adaptive_mass"):
            batch.masks(method, RATE, 0.5, [0] * 5)
        got = batch.masks("energy", RATE, 0.5, [0] * 5)
    assert [selection.kept_indices(m).tolist() for m in got] == before
    on_host = jax.tree.map(np.asarray, batch.clips)  # the same call with the clips on the host: refused
    seeds, num, den, real = jax.device_put((np.zeros(8, np.uint32), np.int32(1), np.int32(2), np.arange(8) < 5))
    keys = methods._keys(seeds)
    with pytest.raises(Exception, match="[Dd]isallowed"), jax.transfer_guard_host_to_device("disallow"):
        methods._batched("energy", RATE, batch.clips.waveform.shape[1] // 1280)(on_host, keys, num, den, real)


def test_a_selection_batch_sets_aside_a_clip_it_cannot_select(pool):
    scores, waves = pool
    bad = [scores[0], types.SimpleNamespace(**{**vars(scores[1]), "num_tokens": 10_000}), scores[2]]
    with pytest.raises(ValueError, match="clip 1: num_tokens must lie in"):
        methods.SelectionBatch(bad, waves[:3])
    with pytest.raises(ValueError, match="clip 0: waveform has"):
        methods.SelectionBatch(scores[:1], [waves[0][:-1]])
    batch = methods.SelectionBatch(bad, waves[:3], strict=False)
    assert batch.problems[0] is None and batch.problems[2] is None and "num_tokens" in batch.problems[1]
    kept = batch.masks("fused", RATE, 0.5, [0, 0], rows=[0, 2])
    expected = methods.select_batch_masks([scores[0], scores[2]], [waves[0], waves[2]], "fused", RATE, 0.5, [0, 0])
    assert all(np.array_equal(a, b) for a, b in zip(kept, expected))
    with pytest.raises(ValueError, match="clip 1: num_tokens"):
        batch.masks("fused", RATE, 0.5, [0], rows=[1])
