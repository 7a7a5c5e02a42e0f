"""Training the tiny model: data encoding, batch order, loss decrease, and resuming from orbax checkpoints."""

from __future__ import annotations

import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

from agac_jax.audio.features import batch_log_mel
from agac_jax.data.synthetic_audio import synthetic
from agac_jax.models.qwen2_audio.model import Qwen2AudioForConditionalGeneration
from agac_jax.models.qwen2_audio.tokenizer import IM_END
from agac_jax.training import checkpointing, data as train_data, loop, losses, model, steps
from configs.train_tiny import get_config


def small_config():
    """The config's `local` variant (a 1-layer model, 6 steps, checkpoints at 3 and 6) on one 5 s frame bucket."""
    cfg = get_config("local")
    cfg.bucket_seconds = (5,)
    return cfg


@pytest.fixture(scope="module")
def samples() -> list[synthetic.Sample]:
    """Four questions about clips of at most 5 s: the training set (and the unused validation set)."""
    short = [s for s in synthetic.generate_split("train", 40, seed=7) if s.num_samples <= 5 * synthetic.SAMPLE_RATE]
    assert len(short) >= 4
    return short[:4]


@pytest.fixture(scope="module")
def trained(samples, tmp_path_factory) -> tuple[Path, loop.TrainResult]:
    workdir = tmp_path_factory.mktemp("train")
    return workdir, loop.train(small_config(), workdir, samples, samples)


def test_training_set_targets_are_answer_then_im_end(samples, tmp_path: Path) -> None:
    tokenizer = model.build_processor(tmp_path, 80)
    data = train_data.encode_training_set(tokenizer, samples, 80, (4, 5))
    assert data.features.dtype == np.float16 and data.features.shape[1] == 80
    for i, sample in enumerate(samples):
        targets = data.input_ids[i][data.target_mask[i] > 0].tolist()
        assert targets == [tokenizer.convert_tokens_to_ids(sample.answer), tokenizer.convert_tokens_to_ids(IM_END)]
        assert data.bucket_lengths[int(data.buckets[i])] >= data.attention_mask[i].sum()
        assert sample.num_samples <= data.buckets[i] * 160
    same_bucket = np.flatnonzero(data.buckets == data.buckets[0])
    batch = data.batch(same_bucket)
    assert batch["features"].dtype == np.float32 and batch["features"].shape[2] == data.buckets[0]
    clips = np.unique(data.clip_index[same_bucket])[::-1]
    shared = data.batch(same_bucket, clips)
    assert shared["features"].shape[0] == len(clips)
    np.testing.assert_array_equal(clips[shared["question_clip"]], data.clip_index[same_bucket])
    with pytest.raises(ValueError, match="clips lacks"):
        data.batch(same_bucket, clips[:0])
    train_data.save_training_set(tmp_path / "set.npz", data)
    again = train_data.load_training_set(tmp_path / "set.npz")
    assert again.bucket_lengths == data.bucket_lengths
    np.testing.assert_array_equal(again.input_ids, data.input_ids)


def test_training_features_are_the_batch_log_mel_of_the_clips(samples, tmp_path: Path) -> None:
    """Features are computed one clip at a time at the largest bucket and cut to the largest bucket in
    use: they must equal `batch_log_mel` of all clips at that bucket, and a bucket no clip needs (9 s
    here: the clips are at most 5 s) must not widen them."""
    tokenizer = model.build_processor(tmp_path, 80)
    data = train_data.encode_training_set(tokenizer, samples, 80, (4, 5, 9))
    assert data.features.shape[2] == int(data.buckets.max()) == 500
    clip_samples = {s.clip_id: s for s in samples}
    first = [next(s for s in samples if s.clip_id == c) for c in clip_samples]
    expected, mask = batch_log_mel([s.load_waveform() for s in first], 80, 500)
    np.testing.assert_array_equal(data.features, expected.astype(np.float16))
    np.testing.assert_array_equal(data.mel_lengths, mask.sum(-1))


def test_silence_outside_events_cuts_only_event_free_frames() -> None:
    """Zeros fall on whole codec frames more than EVENT_MARGIN_S from every event; every event sample
    is kept; cut probability 1 silences every event-free frame, 0 none."""
    rng = np.random.default_rng(3)
    wave = rng.uniform(0.1, 0.2, 4 * synthetic.SAMPLE_RATE).astype(np.float32)  # no sample is zero
    events = (synthetic.Event("siren", 0.5, 1.1, 10.0), synthetic.Event("dog bark", 2.3, 2.9, 10.0))
    event_samples = np.zeros(wave.size, bool)
    for e in events:
        event_samples[int(e.start_s * 16000) : int(e.end_s * 16000)] = True
    for seed in range(6):
        out = train_data.silence_outside_events(wave, events, np.random.default_rng(seed), (1.0, 1.0))
        np.testing.assert_array_equal(out[event_samples], wave[event_samples])
        zero = out == 0
        starts = np.flatnonzero(np.diff(np.concatenate([[0], zero.astype(int)])) == 1)
        frame = {320, 640, 1280}
        assert any(all(s % f == 0 for s in starts) for f in frame)  # cuts start on one codec grid
        margin = int(train_data.EVENT_MARGIN_S * 16000)
        near = np.zeros(wave.size, bool)
        for e in events:
            near[int(e.start_s * 16000) - margin : int(e.end_s * 16000) + margin] = True
        assert not zero[near].any()
        assert zero[~near].mean() > 0.8  # p = 1: all but the frames straddling the margins
    untouched = train_data.silence_outside_events(wave, events, np.random.default_rng(0), (0.0, 0.0))
    np.testing.assert_array_equal(untouched, wave)
    with pytest.raises(ValueError, match="cut_range"):
        train_data.silence_outside_events(wave, events, rng, (0.5, 0.2))


def test_silence_share_changes_only_the_chosen_training_clips(samples, tmp_path: Path) -> None:
    """With silence_share 1 every clip's features differ from the plain encoding where it had
    event-free background, and the cut frames sit at the log-mel floor (max - 2 after Whisper's
    normalisation); share 0 reproduces the plain features; a share outside [0, 1] is refused."""
    tokenizer = model.build_processor(tmp_path, 80)
    plain = train_data.encode_training_set(tokenizer, samples, 80, (5,))
    cut = train_data.encode_training_set(tokenizer, samples, 80, (5,), silence_share=1.0, silence_cut=(1.0, 1.0))
    again = train_data.encode_training_set(tokenizer, samples, 80, (5,), silence_share=0.0)
    np.testing.assert_array_equal(again.features, plain.features)
    for clip in range(plain.features.shape[0]):
        changed = np.any(cut.features[clip] != plain.features[clip], axis=0)[: cut.mel_lengths[clip]]
        assert 0.2 < changed.mean() < 1.0
        floor = cut.features[clip].astype(np.float32).max() - 2.0
        frames = cut.features[clip][:, : cut.mel_lengths[clip]].astype(np.float32)
        assert np.mean(np.all(np.abs(frames - floor) < 1e-2, axis=0)) > 0.2  # whole frames of digital silence
    np.testing.assert_array_equal(cut.token_labels, plain.token_labels)
    with pytest.raises(ValueError, match="silence_share"):
        train_data.encode_training_set(tokenizer, samples, 80, (5,), silence_share=1.5)


def test_batches_hold_one_bucket_and_depend_only_on_seed_and_step() -> None:
    buckets = np.repeat([600, 900, 1200], [10, 7, 5])
    per_epoch = [train_data.batch_indices(buckets, 3, seed=1, step=s) for s in range(5)]
    assert len(train_data.epoch_batches(buckets, 3, 1, 0)) == 3 + 2 + 1
    flat = np.concatenate(per_epoch + [train_data.batch_indices(buckets, 3, seed=1, step=5)])
    assert len(set(flat.tolist())) == len(flat)
    for indices in per_epoch:
        assert len(np.unique(buckets[indices])) == 1
    np.testing.assert_array_equal(train_data.batch_indices(buckets, 3, 1, 7), train_data.batch_indices(buckets, 3, 1, 7))
    with pytest.raises(ValueError, match="batch_size=11"):
        train_data.epoch_batches(buckets, 11, 1, 0)


def test_all_questions_agree_with_the_benchmark_answers() -> None:
    samples = synthetic.generate_split("validation", 12, seed=3)
    pool = train_data.all_questions(samples)
    answers = {(s.clip_id, s.question): s.answer for s in pool}
    for sample in samples:
        assert answers[(sample.clip_id, sample.question)] == sample.answer
    for clip_id in {s.clip_id for s in samples}:
        mine = [s for s in pool if s.clip_id == clip_id]
        events = mine[0].events
        existence = [s for s in mine if s.kind == synthetic.EXISTENCE]
        order = [s for s in mine if s.kind == synthetic.ORDER]
        assert len(existence) == len(synthetic.EVENT_CLASSES)
        assert sum(s.answer == "yes" for s in existence) == len(events)
        assert len(order) == len(events) * (len(events) - 1)
        assert sum(s.answer == "yes" for s in order) == len(order) // 2


def test_step_batch_draws_questions_of_its_clips(samples, tmp_path: Path) -> None:
    tokenizer = model.build_processor(tmp_path, 80)
    data = train_data.encode_training_set(tokenizer, train_data.all_questions(samples), 80, (12,))
    clips, questions = train_data.step_batch(data, 2, 3, seed=0, step=4)
    assert len(clips) == 2 and len(questions) == 6
    np.testing.assert_array_equal(data.clip_index[questions], np.repeat(clips, 3))
    assert all(len(set(questions[i : i + 3].tolist())) == 3 for i in (0, 3))
    again = train_data.step_batch(data, 2, 3, seed=0, step=4)
    np.testing.assert_array_equal(again[1], questions)


def test_audio_token_labels_follow_the_event_intervals() -> None:
    events = (synthetic.Event("siren", 0.10, 0.50, 10.0), synthetic.Event("low tone", 1.0, 1.2, 10.0))
    labels = train_data.audio_token_labels(events, num_tokens=40, length=50)
    siren, low = synthetic.EVENT_CLASSES.index("siren"), synthetic.EVENT_CLASSES.index("low tone")
    expected = np.full(50, train_data.BACKGROUND_LABEL)
    expected[2:12] = siren  # token centres 0.1, 0.14, ..., 0.46 s
    expected[25:30] = low  # token centres 1.02 .. 1.18 s
    expected[40:] = -1
    np.testing.assert_array_equal(labels, expected)


def test_question_labels_name_the_asked_classes() -> None:
    classes = synthetic.EVENT_CLASSES
    assert train_data.question_labels("is there a siren ?") == (classes.index("siren"), train_data.BACKGROUND_LABEL)
    order = synthetic.order_question("click train", "low tone")
    assert train_data.question_labels(order) == (classes.index("click train"), classes.index("low tone"))
    with pytest.raises(ValueError, match="not a question"):
        train_data.question_labels("is there a dog ?")


def test_event_ranks_give_each_class_its_place_in_time() -> None:
    events = (synthetic.Event("siren", 2.0, 2.5, 10.0), synthetic.Event("low tone", 0.5, 1.0, 10.0))
    ranks = train_data.event_ranks(events)
    expected = np.zeros(len(synthetic.EVENT_CLASSES), np.int8)
    expected[synthetic.EVENT_CLASSES.index("low tone")] = 1
    expected[synthetic.EVENT_CLASSES.index("siren")] = 2
    np.testing.assert_array_equal(ranks, expected)


def test_event_counts_count_each_class_up_to_the_cap() -> None:
    siren = lambda start: synthetic.Event("siren", start, start + 0.3, 10.0)  # noqa: E731
    events = (siren(0.5), synthetic.Event("low tone", 1.0, 1.5, 10.0), siren(2.0), siren(3.0), siren(4.0))
    counts = train_data.event_counts(events)
    expected = np.zeros(len(synthetic.EVENT_CLASSES), np.int8)
    expected[synthetic.EVENT_CLASSES.index("siren")] = train_data.MAX_COUNT  # four sirens saturate at 3
    expected[synthetic.EVENT_CLASSES.index("low tone")] = 1
    np.testing.assert_array_equal(counts, expected)
    np.testing.assert_array_equal(train_data.event_counts(events[:3]), np.minimum(expected, 2))


def test_counting_loss_reads_the_last_prompt_position() -> None:
    n, width = len(synthetic.EVENT_CLASSES), train_data.MAX_COUNT + 1
    counter = losses.init_counter(2)
    middle = np.zeros((1, 3, 2), np.float32)
    middle[0, 1] = (1.0, 0.0)  # the position before the first answer token (index 2)
    batch = {"target_mask": np.array([[0.0, 0.0, 1.0]], np.float32),
             "event_counts": np.array([[0, 1, 2, 3, 0, 0, 0, 0]], np.int32)}
    np.testing.assert_allclose(losses.counting_loss(counter, middle, batch), np.log(width), rtol=1e-6)
    kernel = np.zeros((2, n, width), np.float32)
    kernel[0, np.arange(n), batch["event_counts"][0]] = 20.0  # feature 0 of that position says every count
    assert losses.counting_loss({"kernel": kernel, "bias": counter["bias"]}, middle, batch) < 1e-6
    middle[0, 1], middle[0, 0] = 0.0, (1.0, 0.0)  # the same feature one position early is not read
    np.testing.assert_allclose(losses.counting_loss({"kernel": kernel, "bias": counter["bias"]}, middle, batch),
                               np.log(width), rtol=1e-6)


def test_recurrence_loss_marks_the_tokens_of_classes_that_occur_twice() -> None:
    siren, low = (synthetic.EVENT_CLASSES.index(c) for c in ("siren", "low tone"))
    labels = np.array([[siren, low, train_data.BACKGROUND_LABEL, siren, -1]])
    clip_counts = np.zeros((1, len(synthetic.EVENT_CLASSES)), np.int32)
    clip_counts[0, siren], clip_counts[0, low] = 2, 1
    audio = np.zeros((1, 5, 2), np.float32)
    audio[0, :, 0] = (1.0, -1.0, 50.0, 1.0, 50.0)  # background and invalid tokens are not read
    head = losses.init_recurrence(2)
    np.testing.assert_allclose(losses.recurrence_loss(head, audio, labels, clip_counts), np.log(2), rtol=1e-6)
    head = {"kernel": np.array([20.0, 0.0], np.float32), "bias": np.zeros((), np.float32)}
    assert losses.recurrence_loss(head, audio, labels, clip_counts) < 1e-6  # sirens (twice) 1, the low tone 0
    clip_counts[0, low] = 3
    np.testing.assert_allclose(losses.recurrence_loss(head, audio, labels, clip_counts), 20.0 / 3, rtol=1e-5)


def test_tagging_loss_ignores_invalid_tokens() -> None:
    tagger = losses.init_tagger(4)
    audio = np.ones((1, 3, 4), np.float32)
    uniform = np.log(train_data.BACKGROUND_LABEL + 1)
    np.testing.assert_allclose(losses.tagging_loss(tagger, audio, np.array([[0, 8, -1]])), uniform, rtol=1e-6)
    tagger["bias"] = tagger["bias"].at[0].set(5.0)
    assert losses.tagging_loss(tagger, audio, np.array([[0, -1, -1]])) < 0.1


def test_whisper_sinusoids() -> None:
    table = model.whisper_sinusoids(1500, 64)
    assert table.shape == (1500, 64)
    np.testing.assert_allclose(table[0], np.r_[np.zeros(32), np.ones(32)])
    np.testing.assert_allclose(table[:, :32] ** 2 + table[:, 32:] ** 2, 1.0, rtol=1e-5)


def test_a_few_steps_lower_the_loss(trained) -> None:
    _, result = trained
    values = [record["loss"] for record in result.history if "loss" in record]
    assert result.step == 6 and len(values) == 6
    assert values[-1] < values[0] - 0.5, values


def test_checkpoints_restore_step_parameters_and_optimizer(trained) -> None:
    workdir, result = trained
    manager = checkpointing.checkpoint_manager(workdir)
    assert list(manager.all_steps()) == [3, 6]
    assert all(checkpointing.step_path(workdir, s).is_dir() for s in (3, 6))
    optimizer = steps.make_optimizer(small_config().optim)
    step, config, trainable, opt_state = checkpointing.restore_checkpoint(manager, optimizer)
    assert step == 6 and config == result.config
    jax.tree.map(np.testing.assert_array_equal, trainable["model"], jax.device_get(result.params))
    assert trainable["tagger"]["kernel"].shape == (config.text.hidden_size, len(synthetic.EVENT_CLASSES) + 1)
    counter = trainable["counter"]  # counting_weight 0 on the synthetic benchmark: no gradient reaches it
    assert counter["kernel"].shape == (config.text.hidden_size, len(synthetic.EVENT_CLASSES), train_data.MAX_COUNT + 1)
    assert not np.any(counter["kernel"]) and not np.any(counter["bias"])
    assert not np.any(trainable["recurrence"]["kernel"])
    counts = [np.asarray(leaf) for leaf in jax.tree.leaves(opt_state) if np.asarray(leaf).dtype == np.int32]
    assert counts and all(int(c) == 6 for c in counts)


def test_resumed_training_equals_the_uninterrupted_run(trained, samples) -> None:
    workdir, result = trained
    shutil.rmtree(checkpointing.step_path(workdir, 6))  # as if the run had been killed before step 6's save
    resumed = loop.train(small_config(), workdir, samples, samples)
    assert resumed.step == 6
    assert [record["step"] for record in resumed.history if "loss" in record] == [4, 5, 6]
    assert list(checkpointing.checkpoint_manager(workdir).all_steps()) == [3, 6]
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 jax.device_get(resumed.params), jax.device_get(result.params))


def test_shared_prefix_forward_equals_decoding_each_question_in_full(samples, tmp_path: Path) -> None:
    """`forward` decodes a clip's prefix once and its questions' suffixes on the cache: the logits must
    equal the model's own teacher-forced pass over each whole prompt."""
    cfg = small_config()
    tokenizer = model.build_processor(tmp_path, 80)
    data = train_data.encode_training_set(tokenizer, train_data.all_questions(samples[:2]), 80, (12,))
    config = model.model_config(cfg, tokenizer)
    params = model.initial_params(config, seed=3)
    questions = np.arange(len(data))[::3]
    clips = np.unique(data.clip_index[questions])
    batch = data.batch(questions, clips)
    assert batch["prefix_ids"].shape[0] == len(clips) < len(questions)
    flax_model = Qwen2AudioForConditionalGeneration(config)
    # jitted: one compilation each instead of one per primitive and shape of the eager passes
    logits, _, _ = jax.jit(lambda p, b: losses.forward(flax_model, p, b))(params, batch)
    full = jax.jit(lambda p, *inputs: flax_model.apply({"params": p}, *inputs))(
        params, data.input_ids[questions], data.attention_mask[questions],
        data.features[data.clip_index[questions]].astype(np.float32), data.mel_lengths[data.clip_index[questions]])
    for row, question in enumerate(questions):
        start, length = int(data.suffix_start[question]), int(data.attention_mask[question].sum())
        np.testing.assert_allclose(np.asarray(logits[row, : length - start]), np.asarray(full[row, start:length]),
                                   rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(batch["suffix_ids"][row, : length - start], data.input_ids[question, start:length])


def test_step_batch_draws_the_asked_share_of_order_questions(samples, tmp_path: Path) -> None:
    tokenizer = model.build_processor(tmp_path, 80)
    data = train_data.encode_training_set(tokenizer, train_data.all_questions(samples), 80, (12,))
    clips, questions = train_data.step_batch(data, 2, 4, seed=0, step=1, order_share=0.5)
    for i, clip in enumerate(clips):
        mine = questions[4 * i : 4 * i + 4]
        assert (data.clip_index[mine] == clip).all()
        has_order = (data.kinds[data.clip_index == clip] == synthetic.ORDER).any()
        assert (data.kinds[mine] == synthetic.ORDER).sum() == (2 if has_order else 0)
