"""The jitted scoring program: estimators, the attention reduction, buckets, sharding, outputs."""

from __future__ import annotations

import collections
import dataclasses
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agac_jax.models.interface import PROBS, stack_sown
from agac_jax.scoring.program import ClipInputs, clip_passes, ig_steps_per_chunk, occlusion_gates
from agac_jax.scoring import scorer as scorer_module
from agac_jax.scoring.scorer import POSTER_ALPHA, POSTER_LOCAL_SCORE, Scorer, ScoringConfig
from tests.tiny_models import make_scoring_checkpoint

QUESTIONS = ["is there a tone ?", "is there a chirp ?"]
ONE_BUCKET = (5, 10)  # both fixture clips (3.0 and 4.2 s) in one 5 s bucket: one program of 2 slots
POSTER = POSTER_LOCAL_SCORE  # these tests check the occlusion program: the poster's local score
POSTER_IG = dict(POSTER_LOCAL_SCORE, estimator="integrated_gradients")  # IG on log p, signed (completeness)


class PassCounter(collections.Counter):
    """The programs' probe (`Scorer.probe`): counts the occlusion passes and generated rows that run."""

    def __call__(self, name: str, n) -> None:
        self[name] += int(n)


PASSES = PassCounter()


ON_CPU = jax.devices()[0].platform == "cpu"  # the Scorer's CPU defaults (ig_chunk, generate_per_clip) apply


def needs_devices(n: int):
    """Skips a test on fewer than `n` devices (one GPU: tools/gpu_check.sh runs these on 8 forced CPUs)."""
    return pytest.mark.skipif(len(jax.devices()) < n, reason=f"needs {n} devices")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_scoring_checkpoint(tmp_path_factory.mktemp("scoring_model"))


@pytest.fixture(scope="module")
def clips():
    rng = np.random.default_rng(0)
    return [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in (48_000, 67_200)]


@pytest.fixture(scope="module")
def occlusion_scorer(model_dir):
    return Scorer.from_directory(model_dir, ScoringConfig(buckets_seconds=ONE_BUCKET, batch_size=2, max_new_tokens=4, occlusion_chunk=32,
                                                          **POSTER))


@pytest.fixture(scope="module")
def occlusion_scores(occlusion_scorer, clips):
    return occlusion_scorer.score(clips, QUESTIONS)


def _clip_inputs(scorer: Scorer, scores, clip):
    """Re-creates one clip's program inputs outside the program, for direct computations."""
    batch, _ = scorer.make_batch(scorer.bucket_frames(len(clip)), [clip], [scores.question],
                                  [scores.answer_ids])
    model, params = scorer.model, scorer.params
    encode = jax.jit(lambda p, *x: model.apply({"params": p}, *x, method=model.encode_audio))  # not per primitive
    audio, n_tok = encode(params, batch["features"][:1], batch["mel_lengths"][:1])
    silence, _ = encode(params, batch["silence_features"][:1], batch["mel_lengths"][:1])
    clip_inputs = ClipInputs(audio=audio[0], silence=silence[0], n_tokens=n_tok[0],
                             prompt_ids=jnp.asarray(batch["prompt_ids"][0]),
                             prompt_length=int(batch["prompt_lengths"][0]),
                             answer_ids=jnp.asarray(batch["answer_ids"][0]),
                             answer_length=int(batch["answer_lengths"][0]), n_samples=len(clip))
    return clip_passes(model, params, clip_inputs), int(n_tok[0]), audio.shape[1]


def test_occlusion_equals_a_plain_loop(occlusion_scorer, occlusion_scores, clips):
    scores = occlusion_scores[0]
    passes, t, t_slots = _clip_inputs(occlusion_scorer, scores, clips[0])
    ones = (jnp.arange(t_slots) < t).astype(jnp.float32)
    logp_of = jax.jit(passes.logp_of)
    full = float(logp_of(ones))
    gates = occlusion_gates(ones, 1)
    loop = np.array([full - float(logp_of(gates[i])) for i in range(t)])
    np.testing.assert_allclose(scores.local, loop, rtol=0, atol=1e-5 * max(1.0, np.abs(loop).max()))
    assert scores.logp_full == pytest.approx(full, rel=1e-6)


def test_global_score_is_the_direct_reduction_of_sown_maps(occlusion_scorer, occlusion_scores, clips):
    scores = occlusion_scores[1]
    passes, t, t_slots = _clip_inputs(occlusion_scorer, scores, clips[1])
    decode, is_audio, rows, answer_valid = passes.decode, passes.is_audio, passes.rows, passes.answer_valid
    ones = (jnp.arange(t_slots) < t).astype(jnp.float32)
    _, state = decode(ones, sow=PROBS)
    maps = np.asarray(stack_sown(state, PROBS, occlusion_scorer.model_config.text.num_hidden_layers))
    maps = maps[:, 0]  # [layers, heads, q, k]
    answer_rows = np.asarray(rows)[np.asarray(answer_valid)]
    audio_positions = np.flatnonzero(np.asarray(is_audio))
    direct = maps[:, :, answer_rows][..., audio_positions].sum(axis=(0, 1, 2))
    np.testing.assert_allclose(scores.global_, direct, rtol=1e-5, atol=1e-6)
    k_layer = min(2, maps.shape[0] - 1)
    prompt_rows = int(np.asarray(rows)[0]) + 1
    fastv = maps[k_layer, :, :prompt_rows][..., audio_positions].mean(axis=(0, 1))
    np.testing.assert_allclose(scores.fastv, fastv, rtol=1e-5, atol=1e-7)


def test_integrated_gradients_completeness(model_dir, clips):
    scorer = Scorer.from_directory(model_dir, ScoringConfig(buckets_seconds=ONE_BUCKET, batch_size=2,
                                                            max_new_tokens=4, ig_steps=64, **POSTER_IG))
    for s in scorer.score(clips, QUESTIONS):
        evidence = s.logp_full - s.logp_silence
        assert abs(evidence) > 0.1, "the test needs a clip whose audio matters"
        assert s.local.sum() == pytest.approx(evidence, rel=0.02)


def test_integrated_gradients_from_the_cached_prefix_equal_full_passes(model_dir, clips):
    config = ScoringConfig(buckets_seconds=ONE_BUCKET, batch_size=2, max_new_tokens=4, ig_steps=4, **POSTER_IG)
    shared = Scorer.from_directory(model_dir, config)
    assert shared.audio_offset > 0, "the test needs a template with text before the audio"
    full = Scorer.from_directory(model_dir, dataclasses.replace(config, share_prefix=False))
    for a, b in zip(shared.score(clips, QUESTIONS), full.score(clips, QUESTIONS)):
        np.testing.assert_array_equal(a.answer_ids, b.answer_ids)
        np.testing.assert_allclose(a.local, b.local, rtol=0, atol=1e-5 * np.abs(b.local).max())


def test_integrated_gradients_in_chunks_of_steps_equal_one_step_at_a_time(model_dir, clips):
    """Midpoints vmapped together (`ig_chunk`: the largest divisor of ig_steps up to it) give the
    scores of one midpoint at a time; on CPU the default vmaps 4 (here 3 of 6)."""
    assert [ig_steps_per_chunk(n, c) for n, c in ((8, 8), (8, 3), (6, 4), (7, 4), (4, 1), (2, 9))] == [
        8, 2, 3, 1, 1, 2]
    config = ScoringConfig(buckets_seconds=ONE_BUCKET, batch_size=2, max_new_tokens=4, ig_steps=6, **POSTER_IG)
    together = Scorer.from_directory(model_dir, config if ON_CPU else dataclasses.replace(config, ig_chunk=4))
    assert together.ig_chunk == scorer_module.CPU_IG_CHUNK == 4
    alone = Scorer.from_directory(model_dir, dataclasses.replace(config, ig_chunk=1))
    reference = alone.score(clips, QUESTIONS)
    for other in (together,):
        for a, b in zip(other.score(clips, QUESTIONS), reference):
            np.testing.assert_array_equal(a.answer_ids, b.answer_ids)
            np.testing.assert_allclose(a.local, b.local, rtol=0, atol=1e-6 * np.abs(b.local).max())
    with pytest.raises(ValueError, match="ig_chunk"):
        ScoringConfig(ig_chunk=0)


@pytest.mark.skipif(not ON_CPU, reason="the host-memory check guards CPU programs only")
def test_cpu_memory_budget_warns_and_a_program_larger_than_the_host_is_refused(model_dir, occlusion_scorer,
                                                                             occlusion_scores, clips, caplog):
    (temp,) = occlusion_scorer.program_memory.values()
    assert temp > 0
    budget = 0.5 * temp / scorer_module._host_memory_bytes()
    config = dataclasses.replace(occlusion_scorer.config, cpu_memory_budget=budget)
    with caplog.at_level(logging.WARNING, logger=scorer_module.__name__):
        Scorer.from_directory(model_dir, config).score(clips, QUESTIONS)  # the same program: 2 slots
    assert scorer_module.CPU_LEAN_SCHEDULER_FLAG in caplog.text and "GiB of temporaries" in caplog.text
    with pytest.raises(MemoryError, match="500-frame bucket needs"):
        scorer_module._check_cpu_memory(scorer_module._host_memory_bytes() + 1, 0.25, 500)


def test_one_trace_per_bucket_and_answers_given_exactly(occlusion_scorer, occlusion_scores, clips):
    rng = np.random.default_rng(1)
    same_bucket = [(0.1 * rng.standard_normal(40_000)).astype(np.float32)] * 2
    occlusion_scorer.score(same_bucket, QUESTIONS)
    traces = occlusion_scorer.traces
    occlusion_scorer.score(same_bucket[::-1], QUESTIONS)
    occlusion_scorer.score(same_bucket[:1], QUESTIONS[:1])
    assert occlusion_scorer.traces == traces + 1  # one more: the program for a lone clip (1 slot)
    occlusion_scorer.score(same_bucket[1:], QUESTIONS[1:])
    assert occlusion_scorer.traces == traces + 1
    traces = occlusion_scorer.traces
    longer = [(0.1 * rng.standard_normal(100_000)).astype(np.float32)]
    given = [[occlusion_scores[0].answer_ids[0]]]
    result = occlusion_scorer.score(longer, QUESTIONS[:1], answer_ids=given)
    assert occlusion_scorer.traces == traces + 1
    np.testing.assert_array_equal(result[0].answer_ids, given[0])


def test_outputs_carry_no_full_attention_map(occlusion_scorer):
    executable = next(e for key, e in occlusion_scorer.executables.items() if key.generate)
    shapes = [leaf.shape for leaf in jax.tree_util.tree_leaves(executable.out_info)]
    assert all(len(shape) <= 2 for shape in shapes), shapes


def test_keep_masks_follow_the_fused_score(occlusion_scores):
    for s in occlusion_scores:
        for rate, kept in s.keep.items():
            n = len(s.frames[rate])
            k = -(-9 * n // 10)
            assert len(kept) == k
            threshold = np.sort(s.frames[rate])[::-1][k - 1]
            assert (s.frames[rate][kept] >= threshold).all()


# Two chunks of 64 gates over the 125 token slots: the chunked schedule, compiled in a quarter of the
# default 16-gate chunks' time (each chunk is its own branch of the program).
SHARDED_CONFIG = ScoringConfig(buckets_seconds=ONE_BUCKET, batch_size=8, max_new_tokens=4, occlusion_chunk=64, **POSTER)


@pytest.fixture(scope="module")
def unsharded_batch_of_8(model_dir, clips):
    return Scorer.from_directory(model_dir, SHARDED_CONFIG).score(clips * 4, QUESTIONS * 4)


@needs_devices(8)
@pytest.mark.parametrize("mesh_shape, fsdp", [((8, 1), True), ((1, 8), False)])
def test_sharded_equals_unsharded(model_dir, clips, unsharded_batch_of_8, mesh_shape, fsdp):
    """The meshes cover weights split over 'data' (FSDP) and a model axis of 8 that divides neither
    the 6 query heads nor the 2 kv heads (those weights split along the width: tests/test_sharding.py),
    with the vocabulary of the embedding and the head split where it divides; both axes at once in
    `test_integrated_gradients_sharded_equals_unsharded`."""
    scorer = Scorer.from_directory(model_dir, dataclasses.replace(SHARDED_CONFIG, mesh_shape=mesh_shape, fsdp=fsdp))
    _assert_weights_split(scorer, mesh_shape, fsdp)
    _assert_sharded_equal(unsharded_batch_of_8, scorer.score(clips * 4, QUESTIONS * 4))


@needs_devices(8)
def test_integrated_gradients_sharded_equals_unsharded(tmp_path, clips):
    """The default local score (integrated gradients, differentiated through weights split over both
    axes with FSDP) equals the unsharded program's. The model's vocabulary (40 tokens) splits over the
    4 model devices, so the answer rows' logits, their log-odds and the greedy argmax are reduced
    across devices inside the program."""
    words = ("is", "there", "a", "tone", "chirp", "?", "yes", "no", "bell", "dog", "rain", "car", "bird", "drum")
    directory = make_scoring_checkpoint(tmp_path, words=words)
    config = ScoringConfig(buckets_seconds=ONE_BUCKET, batch_size=4, max_new_tokens=4)
    single = Scorer.from_directory(directory, config).score(clips * 2, QUESTIONS * 2)
    scorer = Scorer.from_directory(directory, dataclasses.replace(config, mesh_shape=(2, 4), fsdp=True))
    _assert_weights_split(scorer, (2, 4), True)
    assert scorer.model_config.text.vocab_size % 4 == 0
    assert tuple(scorer.param_shardings["lm_head"]["kernel"].spec) == ("data", "model")
    assert tuple(scorer.param_shardings["language_model"]["embed_tokens"]["embedding"].spec) == ("model", "data")
    _assert_sharded_equal(single, scorer.score(clips * 2, QUESTIONS * 2))


def _assert_weights_split(scorer: Scorer, mesh_shape: tuple[int, int], fsdp: bool) -> None:
    specs = [tuple(sh.spec) for sh in jax.tree_util.tree_leaves(scorer.param_shardings)]
    assert (mesh_shape[1] == 1) or any("model" in spec for spec in specs)
    assert not fsdp or any("data" in spec for spec in specs)


def _assert_sharded_equal(single, sharded) -> None:
    """Equal within 1e-5 of each quantity's scale: local scores are differences of answer
    log-probabilities, so their scale is |logp|; keep sets are equal wherever the k-th and
    (k+1)-th frame scores are not within float32 noise of each other."""
    assert len(single) == len(sharded)
    for a, b in zip(single, sharded):
        np.testing.assert_array_equal(a.answer_ids, b.answer_ids)
        assert b.logp_full == pytest.approx(a.logp_full, rel=1e-5)
        np.testing.assert_allclose(b.local, a.local, rtol=0, atol=1e-5 * abs(a.logp_full))
        for field in ("global_", "fastv"):
            x, y = getattr(a, field), getattr(b, field)
            np.testing.assert_allclose(y, x, rtol=0, atol=1e-5 * np.abs(x).max(), err_msg=field)
        for rate, kept in a.keep.items():
            ranked = np.sort(a.frames[rate])[::-1]
            k = len(kept)
            if k < len(ranked) and ranked[k - 1] - ranked[k] > 1e-3:
                np.testing.assert_array_equal(b.keep[rate], kept)


def test_select_frames_for_every_method(occlusion_scores, clips):
    from agac_jax.scoring.methods import NAMES as METHODS
    from agac_jax.scoring.methods import select_frames

    scores, clip = occlusion_scores[1], clips[1]
    for rate in (25, 50, 100):
        n = len(scores.frames[rate])
        for method in METHODS:
            kept = select_frames(scores, clip, method, rate, 0.7, seed=0)
            assert len(kept) == -(-7 * n // 10), (method, rate)
            assert (np.diff(kept) > 0).all() and kept[-1] < n
        rho_09 = select_frames(scores, clip, "fused", rate, 0.9, seed=0)
        np.testing.assert_array_equal(rho_09, scores.keep[rate])
    assert not np.array_equal(select_frames(scores, clip, "random", 50, 0.5, seed=0),
                              select_frames(scores, clip, "random", 50, 0.5, seed=1))


def test_select_batch_equals_each_clip_alone(occlusion_scores, clips):
    """One batched call (clips of different lengths, padded together) keeps what each clip alone keeps
    (the adaptive methods share a budget over the call's clips: tests/test_adaptive_selection.py)."""
    from agac_jax.scoring.methods import METHODS, NAMES, select_batch, select_frames

    assert len({len(c) for c in clips}) > 1
    for method in (name for name in NAMES if METHODS[name].pool is None):
        for rate in (25, 100):
            batched = select_batch(occlusion_scores, clips, method, rate, 0.7, [3, 4, 5][: len(clips)])
            for scores, clip, seed, kept in zip(occlusion_scores, clips, (3, 4, 5), batched):
                np.testing.assert_array_equal(kept, select_frames(scores, clip, method, rate, 0.7, seed),
                                              err_msg=f"{method} r={rate}")


def test_select_batch_refuses_bad_input(occlusion_scores, clips):
    from agac_jax.scoring.methods import select_batch

    with pytest.raises(ValueError, match="method='loudest'"):
        select_batch(occlusion_scores[:1], clips[:1], "loudest", 50, 0.5, [0])
    with pytest.raises(ValueError, match="samples"):
        select_batch(occlusion_scores[:1], [clips[0][:-1]], "fused", 50, 0.5, [0])
    with pytest.raises(ValueError):
        select_batch(occlusion_scores[:1], clips[:1], "fused", 30, 0.5, [0])
    with pytest.raises(ValueError):
        select_batch(occlusion_scores[:1], clips[:1], "fused", 50, 0.0, [0])


def _assert_same_scores(a, b):
    """Equal up to float32 noise: local scores are differences of log-probabilities, so their noise
    is relative to |logp| (WORKSPACE.md, sharded equality); the fused score divides it by the local
    score's range."""
    np.testing.assert_array_equal(a.answer_ids, b.answer_ids)
    local_atol = 1e-5 * max(abs(b.logp_full), 1.0)
    np.testing.assert_allclose(a.local, b.local, rtol=0, atol=local_atol, err_msg="local")
    spread = float(np.ptp(b.local)) or 1.0
    np.testing.assert_allclose(a.fused, b.fused, rtol=0, atol=2 * local_atol / spread, err_msg="fused")
    for name in ("global_", "fastv"):
        x, y = getattr(a, name), getattr(b, name)
        np.testing.assert_allclose(x, y, rtol=0, atol=1e-5 * max(np.abs(y).max(), 1e-6), err_msg=name)


def test_padding_changes_nothing_and_a_lone_clip_runs_only_the_passes_it_needs(model_dir, occlusion_scores,
                                                                               clips):
    """In an 8 s bucket (more token and prompt slots), alone (1 slot), beside the other clip (2 slots)
    or in a batch padded with a copy (3 clips in 4 slots), a clip gets the scores it gets in the 5 s
    bucket; and, counted rather than timed, a clip of T valid tokens runs ceil(T / chunk) chunks
    whatever its bucket's 200 token slots and whatever the other clips of its batch need, and a
    padding copy runs none and generates no answer."""
    config = ScoringConfig(batch_size=4, max_new_tokens=4, occlusion_chunk=32, buckets_seconds=(8,),
                           generate_per_clip=None if ON_CPU else True, **POSTER)
    scorer = Scorer.from_directory(model_dir, config)
    assert scorer.bucket_frames(len(clips[0])) == 800
    assert scorer.generate_per_clip  # the CPU default
    scorer.probe = PASSES
    PASSES["occlusion"] = 0
    PASSES["generation"] = 0
    (alone,) = scorer.score(clips[:1], QUESTIONS[:1])
    assert PASSES["generation"] == 1
    _assert_same_scores(alone, occlusion_scores[0])
    assert PASSES["occlusion"] == -(-alone.num_tokens // 32) * 32  # 75 valid tokens: 3 of 7 chunks
    PASSES["occlusion"] = 0
    both = scorer.score(clips, QUESTIONS)
    for a, b in zip(both, occlusion_scores):
        _assert_same_scores(a, b)
    longest = max(s.num_tokens for s in both)
    # 105 tokens: 4 chunks, the last one cut where the batch's prompt slots end (no slot past them
    # can hold audio)
    prompt_slots = scorer.prompt_slots(800, max(len(s.input_ids) for s in both))
    assert prompt_slots < 800 // 4 + scorer.config.max_text_tokens
    gate_slots = prompt_slots - scorer.audio_offset
    assert longest <= gate_slots < 4 * 32

    def passes(n_tokens):  # chunks of 32 from gate 0 while the first gate is below n_tokens; the last cut
        return sum(min(32, gate_slots - first) for first in range(0, gate_slots, 32) if first < n_tokens)

    assert sorted(s.num_tokens for s in both) == [75, 105]
    assert PASSES["occlusion"] == passes(75) + passes(105) == 96 + 121
    PASSES["occlusion"] = 0
    PASSES["generation"] = 0
    three = scorer.score(clips + clips[:1], QUESTIONS + QUESTIONS[:1])
    assert scorer.batch_slots(3) == 4
    for a, b in zip(three, occlusion_scores + occlusion_scores[:1]):
        _assert_same_scores(a, b)
    assert PASSES["occlusion"] == sum(passes(s.num_tokens) for s in three)
    assert PASSES["generation"] == 3  # 3 clips in 4 slots: the copy generates nothing


@needs_devices(2)
def test_clips_of_like_length_run_together_on_several_data_shards(model_dir, occlusion_scores, clips):
    """On a (2, 1) mesh the shards' i-th clips run together until the longest is done, so the slots
    go longest first, the k-th longest to shard k mod 2: a batch given as (long, long, short, short)
    runs the long clips' chunks on one step and the short clips' on the other (passes counted, every
    shard's counted while its step runs), and every clip keeps its scores."""
    scorer = Scorer.from_directory(model_dir, ScoringConfig(batch_size=4, max_new_tokens=4, occlusion_chunk=32,
                                                            buckets_seconds=(8,), mesh_shape=(2, 1), **POSTER))
    assert list(scorer.slot_order([10, 50, 20, 40], 4)) == [1, 2, 3, 0]  # steps: (50, 40), (20, 10)
    assert list(scorer.slot_order([10, 50, 20], 4)) == [1, 0, 2, 3]  # steps (50, 20), (10, the copy 3)
    long, short = (1, 0) if len(clips[1]) > len(clips[0]) else (0, 1)
    batch = [clips[long], clips[long], clips[short], clips[short]]
    questions = [QUESTIONS[long]] * 2 + [QUESTIONS[short]] * 2
    scorer.probe = PASSES
    PASSES["occlusion"] = 0
    scores = scorer.score(batch, questions)
    for got, i in zip(scores, (long, long, short, short)):
        _assert_same_scores(got, occlusion_scores[i])
    gate_slots = scorer.prompt_slots(800, max(len(s.input_ids) for s in scores)) - scorer.audio_offset

    def passes(n_tokens):
        return sum(min(32, gate_slots - first) for first in range(0, gate_slots, 32) if first < n_tokens)

    n_long, n_short = scores[0].num_tokens, scores[2].num_tokens
    assert passes(n_long) > passes(n_short)
    assert PASSES["occlusion"] == 2 * passes(n_long) + 2 * passes(n_short)


def test_answers_skip_batch_padding_copies_and_equal_the_whole_batchs(model_dir, clips):
    """`Scorer.answers` generates one clip at a time on CPU, and none for the copy that pads 3 clips
    to 4 slots (rows counted); its answers are those of the whole batch generated at once."""
    config = ScoringConfig(batch_size=4, max_new_tokens=4, buckets_seconds=(8,))
    per_clip = Scorer.from_directory(model_dir, config if ON_CPU else
                                     dataclasses.replace(config, generate_per_clip=True))
    whole = Scorer.from_directory(model_dir, dataclasses.replace(config, generate_per_clip=False))
    assert per_clip.generate_per_clip and not whole.generate_per_clip
    per_clip.probe = PASSES
    PASSES["generation"] = 0
    three, questions = clips + clips[:1], QUESTIONS + QUESTIONS[:1]
    answers = per_clip.answers(three, questions)
    assert PASSES["generation"] == 3
    expected = whole.answers(three, questions)
    assert [text for text, _ in answers] == [text for text, _ in expected]
    for (_, a), (_, b) in zip(answers, expected):
        np.testing.assert_array_equal(a, b)
    assert all(len(ids) > 0 for _, ids in answers)


def test_prompt_slots_follow_the_longest_prompt_and_change_no_score(model_dir, occlusion_scores, clips):
    """A batch's prompt positions are the smallest step that holds its longest prompt; scoring over
    the bucket's full prompt slots (prompt_steps 1) gives the same scores."""
    config = ScoringConfig(batch_size=4, max_new_tokens=4, occlusion_chunk=32, buckets_seconds=(8,), **POSTER)
    stepped = Scorer.from_directory(model_dir, config)
    full = 200 + config.max_text_tokens
    # 264 x 0.8^3, 0.8^2, 0.8 = 135.2, 169.0, 211.2, each rounded up to a multiple of 8
    assert [stepped.prompt_slots(800, n) for n in (1, 136, 137, 176, 177, 216, 217, full)] == [
        136, 136, 176, 176, 216, 216, full, full]
    for longest in range(137, full + 1):  # past the smallest step, a prompt runs at most 1/0.8 of itself
        assert stepped.prompt_slots(800, longest) <= longest / 0.8 + 8
    batch, _ = stepped.make_batch(800, clips, QUESTIONS, None)
    longest = int(batch["prompt_lengths"].max())
    assert batch["prompt_ids"].shape[1] == stepped.prompt_slots(800, longest) < full
    whole = Scorer.from_directory(model_dir, dataclasses.replace(config, prompt_steps=1))
    assert whole.make_batch(800, clips, QUESTIONS, None)[0]["prompt_ids"].shape[1] == full
    for a, b in zip(whole.score(clips, QUESTIONS), occlusion_scores):
        _assert_same_scores(a, b)
    with pytest.raises(ValueError, match="prompt_steps"):
        ScoringConfig(prompt_steps=0)
    with pytest.raises(ValueError, match="prompt_step_ratio"):
        ScoringConfig(prompt_step_ratio=0.0)


def test_occlusion_schedule_steps_cover_every_gate_once():
    from agac_jax.scoring.program import OcclusionStep, occlusion_schedule

    kw = dict(window=1, audio_offset=10, audio_rows=200, gate_domain="embedding", share_prefix=True)
    per_chunk = occlusion_schedule(200, 32, 0, **kw)
    assert [(s.first, s.chunks, s.size, s.start) for s in per_chunk] == (
        [(32 * i, 1, 32, 10 + 32 * i) for i in range(6)] + [(192, 1, 8, 202)])
    looped = occlusion_schedule(200, 32, 2, **kw)
    assert looped == [OcclusionStep(0, 3, 32, 10), OcclusionStep(96, 3, 32, 106), OcclusionStep(192, 1, 8, 106)]
    for segments in (0, 1, 2, 5, 6, 50):
        steps = occlusion_schedule(200, 32, segments, **kw)
        gates = [g for s in steps for g in range(s.first, s.first + s.chunks * s.size)]
        assert gates == list(range(200)), segments
        assert all(s.start <= 10 + s.first for s in steps)  # never after a gate it recomputes
    assert len(occlusion_schedule(200, 32, 1, **kw)) == 2
    # one audio row (PandaGPT) or input gates: every step starts at the audio
    assert {s.start for s in occlusion_schedule(200, 32, 0, **{**kw, "audio_rows": 1})} == {10}
    assert {s.start for s in occlusion_schedule(200, 32, 0, **{**kw, "gate_domain": "input"})} == {10}
    assert {s.start for s in occlusion_schedule(200, 32, 0, **{**kw, "share_prefix": False})} == {0}


def test_occlusion_in_loops_over_chunks_scores_and_skips_as_one_step_per_chunk(model_dir, occlusion_scores, clips):
    """occlusion_segments=2 in the 8 s bucket (6 whole chunks of 32 in 2 loops, then a partial one): the
    5 s bucket's scores, and the loop skips the chunks past the longest clip as the unrolled steps do."""
    from agac_jax.eval.flops import analytic_program_flops
    config = ScoringConfig(batch_size=4, max_new_tokens=4, occlusion_chunk=32, buckets_seconds=(8,),
                           occlusion_segments=2, **POSTER)
    scorer = Scorer.from_directory(model_dir, config)
    scorer.probe = PASSES
    PASSES["occlusion"] = 0
    both = scorer.score(clips, QUESTIONS)
    for a, b in zip(both, occlusion_scores):
        _assert_same_scores(a, b)
    # each clip's chunks up to its valid tokens; the last one is cut where the prompt slots end
    gate_slots = scorer.prompt_slots(800, max(len(s.input_ids) for s in both)) - scorer.audio_offset
    assert max(s.num_tokens for s in both) <= gate_slots < 4 * 32
    assert PASSES["occlusion"] == sum(
        min(32, gate_slots - first) for s in both for first in range(0, gate_slots, 32) if first < s.num_tokens)
    # the loops recompute from their first chunk: more work than a step per chunk, counted as such
    per_chunk = Scorer.from_directory(model_dir, dataclasses.replace(config, occlusion_segments=0))
    assert analytic_program_flops(scorer, 800) > analytic_program_flops(per_chunk, 800)
    with pytest.raises(ValueError, match="occlusion_segments must be >= 0"):
        ScoringConfig(occlusion_segments=-1)


def test_rematerialised_layers_give_the_same_gradients_with_fewer_temporaries(model_dir, clips):
    """Integrated gradients under the layer scan: `remat_layers` keeps each layer's input only, so the
    program's temporaries shrink (XLA's count), and the scores do not change."""
    config = ScoringConfig(batch_size=1, max_new_tokens=2, ig_steps=2, prompt_steps=1,
                           **POSTER_IG)  # the bucket's whole sequence: activations dominate
    scored, temps = [], []
    for remat in (False, True):
        scorer = Scorer.from_directory(model_dir, config, scan_layers=True, remat_layers=remat)
        assert scorer.model_config.remat_layers is remat
        scored.append(scorer.score(clips[:1], QUESTIONS[:1])[0])
        (temp,) = scorer.program_memory.values()
        temps.append(temp)
    _assert_same_scores(scored[1], scored[0])
    assert temps[1] < 0.8 * temps[0], temps


def test_the_default_local_score_and_the_posters_reach_every_entry_point():
    """ScoringConfig's default local score (the estimator study's) and POSTER_LOCAL_SCORE (DESIGN.md),
    through the sweep config and its poster variant, and through launch.score's request."""
    from agac_jax.eval.sweep import scoring_config
    from agac_jax.scoring import report
    from configs import synthetic_tiny

    local_fields = tuple(POSTER_LOCAL_SCORE)
    default = ScoringConfig()
    assert {f: getattr(default, f) for f in local_fields + ("ig_steps",)} == dict(
        estimator="integrated_gradients", window=1, target="log_odds", gate_domain="embedding",
        local_sign="magnitude", local_smooth=9, ig_steps=8)
    swept = scoring_config(synthetic_tiny.get_config())
    poster = scoring_config(synthetic_tiny.get_config("poster"))
    assert {f: getattr(swept, f) for f in local_fields} == {f: getattr(default, f) for f in local_fields}
    assert {f: getattr(poster, f) for f in local_fields} == POSTER_LOCAL_SCORE
    assert (default.alpha, swept.alpha, poster.alpha) == (0.75, 0.75, POSTER_ALPHA)
    assert dataclasses.replace(poster, alpha=swept.alpha,
                               **{f: getattr(swept, f) for f in local_fields}) == swept  # nothing else differs
    request = report.ScoreRequest(checkpoint="", audio=("a.wav",), question="?")
    assert report.scoring_config(request, 1).estimator == "integrated_gradients"
    as_poster = report.scoring_config(dataclasses.replace(request, local_score="poster"), 1)
    assert {f: getattr(as_poster, f) for f in local_fields} == POSTER_LOCAL_SCORE and as_poster.alpha == POSTER_ALPHA
    occlusion = report.scoring_config(dataclasses.replace(request, estimator="occlusion"), 1)
    assert (occlusion.estimator, occlusion.local_sign, occlusion.local_smooth) == ("occlusion", "magnitude", 9)
