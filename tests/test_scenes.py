"""Tests of the synthetic_scenes benchmark (agac_jax.data.scenes): determinism, splits, answers and
evidence re-derived from the events, the loudness rule on rendered audio, backgrounds, balance, I/O,
the DATASETS entry, and that a question-blind energy selector keeps far less evidence than on the
old synthetic benchmark."""

from __future__ import annotations

import collections
import functools

import jax
import ml_collections
import numpy as np
import pytest

from agac_jax.codec.base import num_frames
from agac_jax.data import load_dataset
from agac_jax.data.synthetic_audio import scenes, synthetic
from agac_jax.data.common import SAMPLE_RATE, WavFile
from agac_jax.eval.metrics import evidence_recall, summarize_evidence_recall
from agac_jax.scoring import baselines, selection


@pytest.fixture(scope="module")
def train_samples() -> list[scenes.Sample]:
    return scenes.generate_split("train", 240, seed=3)


def _by_clip(samples: list[scenes.Sample]) -> dict[str, list[scenes.Sample]]:
    clips: dict[str, list[scenes.Sample]] = collections.defaultdict(list)
    for sample in samples:
        clips[sample.clip_id].append(sample)
    return clips


def _named(sample: scenes.Sample) -> list[str]:
    """The classes a question names, parsed from its text (independently of the module's templates)."""
    body = sample.question.removesuffix(" ?")
    if sample.kind == scenes.EXISTENCE:
        return [body.removeprefix("is there a ")]
    if sample.kind == scenes.COUNT:
        return [body.removeprefix("is there more than one ")]
    return body.removeprefix("does the ").split(" come before the ")


def _roles(samples: list[scenes.Sample]) -> tuple[list[synthetic.Event], list[synthetic.Event]]:
    """(evidence events, distractors) of one clip: an event is evidence when some question rests on it."""
    evidence = {interval for sample in samples for interval in sample.evidence}
    events = samples[0].events
    return [e for e in events if e.interval in evidence], [e for e in events if e.interval not in evidence]


def _apart(a: synthetic.Event, b: synthetic.Event) -> bool:
    return max(a.start_s, b.start_s) - min(a.end_s, b.end_s) >= scenes.MIN_GAP_S - 1e-9


def test_same_arguments_give_identical_samples_and_waveforms() -> None:
    first = scenes.generate_split("validation", 4, seed=11)
    second = scenes.generate_split("validation", 4, seed=11)
    assert first == second
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a.load_waveform(), b.load_waveform())
    assert [s.events for s in scenes.generate_split("validation", 4, seed=12)] != [s.events for s in first]


def test_splits_share_no_clip() -> None:
    splits = {split: scenes.generate_split(split, 30, seed=0) for split in scenes.SPLITS}
    ids = [{s.clip_id for s in samples} for samples in splits.values()]
    layouts = [{(s.num_samples, s.events) for s in samples} for samples in splits.values()]
    for i in range(3):
        for j in range(i + 1, 3):
            assert not ids[i] & ids[j] and not layouts[i] & layouts[j]
    old = {s.clip_id for s in synthetic.generate_split("test", 30, seed=0)}
    assert not old & ids[2]  # no scenes clip id collides with a synthetic one (they are mixed in training)


def test_clip_layout_respects_the_rules(train_samples) -> None:
    overlapping = 0
    for samples in _by_clip(train_samples).values():
        first = samples[0]
        assert scenes.MIN_CLIP_S <= first.num_samples / SAMPLE_RATE <= scenes.MAX_CLIP_S
        assert 3 <= len(first.events) <= 5
        assert list(first.events) == sorted(first.events, key=lambda e: e.start_s)
        evidence, distractors = _roles(samples)
        assert distractors, first.clip_id
        for event in first.events:
            assert event.label in scenes.EVENT_CLASSES
            assert scenes.EDGE_MARGIN_S - 1e-9 <= event.start_s < event.end_s <= first.num_samples / SAMPLE_RATE
        for event in evidence:
            assert scenes.MIN_EVIDENCE_S - 1e-3 <= event.end_s - event.start_s <= scenes.MAX_EVIDENCE_S + 1e-3
            assert scenes.EVIDENCE_SNR_DB[0] <= event.snr_db <= scenes.EVIDENCE_SNR_DB[1]
            assert event.end_s <= first.num_samples / SAMPLE_RATE - scenes.EDGE_MARGIN_S + 1e-9
            # distractors cover at most half of each evidence event
            cover = np.zeros(first.num_samples, bool)
            for d in distractors:
                cover[synthetic.seconds_to_samples(d.start_s) : synthetic.seconds_to_samples(d.end_s)] = True
            inside = cover[synthetic.seconds_to_samples(event.start_s) : synthetic.seconds_to_samples(event.end_s)]
            assert inside.mean() <= scenes.MAX_COVERED_SHARE + 1e-3
        for i, a in enumerate(evidence):  # evidence events never overlap, and lie 0.2 s apart
            assert all(_apart(a, b) for b in evidence[i + 1 :])
        assert max(d.snr_db for d in distractors) >= scenes.LOUD_SNR_DB[0]
        named = {label for sample in samples for label in _named(sample)}
        assert not named & {d.label for d in distractors}
        overlapping += any(not _apart(a, b) for i, a in enumerate(first.events) for b in first.events[i + 1 :])
    assert overlapping > len(_by_clip(train_samples)) // 3  # some events overlap
    assert collections.Counter(len(s.events) for s in train_samples).keys() == {3, 4, 5}


def test_answers_and_evidence_follow_from_the_events(train_samples) -> None:
    kinds = collections.Counter()
    for samples in _by_clip(train_samples).values():
        assert [s.kind for s in samples] in ([scenes.EXISTENCE, scenes.ORDER, scenes.COUNT],
                                             [scenes.EXISTENCE, scenes.COUNT])
        evidence_events = {iv for s in samples for iv in s.evidence}
        assert evidence_events <= {e.interval for e in samples[0].events}
        for sample in samples:
            kinds[sample.kind] += 1
            found = {label: [e for e in sample.events if e.label == label] for label in _named(sample)}
            assert list(sample.evidence) == sorted(sample.evidence)
            if sample.kind == scenes.EXISTENCE:
                (occurrences,) = found.values()
                assert sample.answer == ("yes" if occurrences else "no")
                assert sample.evidence == tuple(sorted(e.interval for e in occurrences))  # () for "no"
            elif sample.kind == scenes.COUNT:
                (occurrences,) = found.values()
                assert len(occurrences) in (1, 2)
                assert sample.answer == ("yes" if len(occurrences) == 2 else "no")
                assert sample.evidence == tuple(e.interval for e in occurrences)
                if len(occurrences) == 2:
                    assert _apart(*occurrences)  # counted occurrences do not overlap
            else:
                (first,), (second,) = found.values()  # each named class occurs exactly once
                assert _apart(first, second)
                assert sample.answer == ("yes" if first.start_s < second.start_s else "no")
                assert sample.evidence == tuple(sorted((first.interval, second.interval)))
    assert set(kinds) == set(scenes.QUESTION_KINDS)


def test_answers_are_balanced_per_kind_and_class(train_samples) -> None:
    counts = collections.Counter((s.kind, _named(s)[0], s.answer) for s in train_samples)
    for kind in scenes.QUESTION_KINDS:
        for label in scenes.EVENT_CLASSES:
            yes, no = counts[(kind, label, "yes")], counts[(kind, label, "no")]
            assert yes + no > 0 and abs(yes - no) <= 2, (kind, label, yes, no)
        total = collections.Counter(s.answer for s in train_samples if s.kind == kind)
        assert abs(total["yes"] - total["no"]) <= 4, (kind, total)


def test_a_hundred_test_clips_give_two_hundred_questions_with_evidence() -> None:
    samples = scenes.generate_split("test", 100, seed=0)
    assert sum(bool(s.evidence) for s in samples) >= 200


def test_every_evidence_event_is_quieter_than_a_distractor_on_the_rendered_audio(train_samples) -> None:
    """Each event rendered alone (background off, the clip's own scaling): the loudest distractor's
    RMS over its interval exceeds every evidence event's by at least 3 dB."""
    for samples in list(_by_clip(train_samples).values())[:12]:
        spec = samples[0].audio
        evidence, _ = _roles(samples)

        def rms(index: int) -> float:
            event = spec.events[index]
            audio = scenes.render_clip(spec, background=False, events=[index]).astype(np.float64)
            start, end = synthetic.seconds_to_samples(event.start_s), synthetic.seconds_to_samples(event.end_s)
            assert not audio[:start].any() and not audio[end:].any()
            return float(np.sqrt(np.mean(audio[start:end] ** 2)))

        levels = {i: rms(i) for i in range(len(spec.events))}
        quiet = [levels[i] for i, e in enumerate(spec.events) if e in evidence]
        loud = [levels[i] for i, e in enumerate(spec.events) if e not in evidence]
        assert 20 * np.log10(max(loud) / max(quiet)) >= 3.0, (spec.clip_id, quiet, loud)
        mixture = scenes.render_clip(spec, background=False)
        np.testing.assert_allclose(mixture, sum(scenes.render_clip(spec, background=False, events=[i])
                                                for i in range(len(spec.events))), atol=1e-6)


def test_backgrounds_all_occur_and_render_as_recorded(train_samples) -> None:
    clips = [samples[0] for samples in _by_clip(train_samples).values()]
    assert {c.background.kind for c in clips} == set(scenes.BACKGROUND_KINDS)
    for clip in clips:
        b = clip.background
        assert (b.hum_hz in scenes.HUM_FUNDAMENTALS_HZ) == (b.kind == "hum") and (b.hum_hz == 0) == (b.kind != "hum")
        assert bool(b.gaps) == (b.kind == "gaps")
        assert b.colour in scenes.NOISE_COLOURS and (b.kind not in scenes.NOISE_COLOURS or b.colour == b.kind)
        assert scenes.BACKGROUND_LEVEL_DBFS[0] <= b.level_dbfs <= scenes.BACKGROUND_LEVEL_DBFS[1]
    for kind in scenes.BACKGROUND_KINDS:
        clip = next(c for c in clips if c.background.kind == kind)
        spec, b = clip.audio, clip.background
        waveform = clip.load_waveform()
        assert waveform.dtype == np.float32 and waveform.shape == (clip.num_samples,)
        assert np.max(np.abs(waveform)) <= scenes.PEAK_LIMIT + 1e-6
        # the background alone: zero inside the gaps, at its level (times the clip's scaling) elsewhere
        alone = scenes.render_clip(spec, events=[]).astype(np.float64)
        silent = np.zeros(clip.num_samples, bool)
        for start, end in b.gaps:
            silent[synthetic.seconds_to_samples(start) : synthetic.seconds_to_samples(end)] = True
        assert not alone[silent].any()
        assert np.sqrt(np.mean(alone[~silent] ** 2)) > 0
        if kind == "hum":  # the hum's fundamental dominates the background's spectrum
            spectrum = np.abs(np.fft.rfft(alone))
            peak_hz = np.argmax(spectrum) * SAMPLE_RATE / len(alone)
            assert abs(peak_hz - b.hum_hz) < 1.0


def test_write_and_read_round_trip(tmp_path) -> None:
    samples = scenes.generate_split("test", 3, seed=5)
    manifest = scenes.write_split(tmp_path, samples)
    assert manifest.name == "manifest.jsonl" and len(manifest.read_text().splitlines()) == len(samples)
    again = scenes.read_split(tmp_path)
    assert len(again) == len(samples)
    for original, read in zip(samples, again):
        assert isinstance(read.audio, WavFile)
        for field in ("sample_id", "clip_id", "question", "answer", "evidence", "kind", "events", "num_samples",
                      "background"):
            assert getattr(read, field) == getattr(original, field), field
        np.testing.assert_array_equal(read.load_waveform(), original.load_waveform())
    with pytest.raises(FileNotFoundError, match="manifest.jsonl"):
        scenes.read_split(tmp_path / "missing")


def test_the_datasets_entry_generates_and_reads(tmp_path) -> None:
    section = ml_collections.ConfigDict(dict(name="synthetic_scenes", root="", split="validation", num_clips=3,
                                             generation_seed=4, max_samples=0))
    name, loaded = load_dataset(section)
    assert name == "synthetic_scenes-validation" and not loaded.skipped
    assert loaded.samples == scenes.generate_split("validation", 3, 4)
    scenes.write_split(tmp_path, loaded.samples)
    section.root = str(tmp_path)
    name, read = load_dataset(section)
    assert name == "synthetic_scenes-validation"
    assert [s.sample_id for s in read.samples] == [s.sample_id for s in loaded.samples]


def test_vocabulary_holds_every_question_word_and_the_old_vocabulary(train_samples) -> None:
    words = {w for s in scenes.all_questions(train_samples[:30]) + train_samples for w in s.question.split(" ")}
    assert words | {"yes", "no"} == set(scenes.VOCABULARY)
    assert set(synthetic.VOCABULARY) <= set(scenes.VOCABULARY)
    assert scenes.VOCABULARY == sorted(scenes.VOCABULARY)


def test_all_questions_agree_with_the_benchmark_and_its_rules(train_samples) -> None:
    samples = train_samples[:60]
    pool = scenes.all_questions(samples)
    answers = {(s.clip_id, s.question): (s.answer, s.evidence) for s in pool}
    for sample in samples:
        assert answers[(sample.clip_id, sample.question)] == (sample.answer, sample.evidence)
    for clip_id, mine in _by_clip(pool).items():
        events = mine[0].events
        labels = collections.Counter(e.label for e in events)
        existence = [s for s in mine if s.kind == scenes.EXISTENCE]
        assert len(existence) == 8 and sum(s.answer == "yes" for s in existence) == len(labels)
        for s in mine:
            if s.kind == scenes.COUNT:
                (label,) = _named(s)
                assert labels[label] in (1, 2)
                assert s.answer == ("yes" if labels[label] == 2 else "no")
            if s.kind == scenes.ORDER:
                a, b = _named(s)
                assert labels[a] == labels[b] == 1
        order = [s for s in mine if s.kind == scenes.ORDER]
        assert sum(s.answer == "yes" for s in order) == len(order) // 2
        assert len({s.sample_id for s in mine}) == len(mine)


@functools.cache
def _energy_keep_program(rate: int, max_frames: int):
    def keep(waveform, n_samples):
        scores = baselines.energy_scores(waveform, n_samples, rate, max_frames)
        valid = selection.frame_valid_mask(n_samples, rate, max_frames)
        k = selection.keep_count(jax.numpy.sum(valid), 1, 2)
        return selection.topk_keep(scores, valid, k)

    return jax.jit(keep)


def energy_recall(samples, rate: int = 50) -> tuple[float, int]:
    """Mean evidence recall of the energy baseline (top 50 % of each clip's frames by RMS), and how
    many questions had evidence."""
    max_samples = int(scenes.MAX_CLIP_S * SAMPLE_RATE)
    program = _energy_keep_program(rate, num_frames(max_samples, rate))
    masks, recalls = {}, []
    for sample in samples:
        if sample.clip_id not in masks:
            padded = np.zeros(max_samples, np.float32)
            padded[: sample.num_samples] = sample.load_waveform()
            mask = np.asarray(program(padded, sample.num_samples))
            masks[sample.clip_id] = mask[: num_frames(sample.num_samples, rate)]
        recalls.append(evidence_recall(masks[sample.clip_id], sample.evidence, sample.num_samples, rate))
    summary = summarize_evidence_recall(recalls)
    return summary.mean, summary.num_scored


def test_the_energy_selector_keeps_far_less_evidence_than_on_the_old_benchmark() -> None:
    """The point of the benchmark, with the numbers of the module docstring (rate 50)."""
    new, new_count = energy_recall(scenes.generate_split("test", 100, seed=0))
    old, old_count = energy_recall(synthetic.generate_split("test", 130, seed=0))
    assert (new_count, old_count) == (229, 153)
    assert new == pytest.approx(0.53, abs=0.005) and old == pytest.approx(0.93, abs=0.005)
    assert new < old - 0.3


# --- training on the scenes (agac_jax.training with configs/train_tiny.py:scenes) ----------------


def _scenes_training_config(**data):
    """configs/train_tiny.py:scenes at the local variant's sizes, one 12 s bucket, a few clips."""
    from configs.train_tiny import get_config

    cfg, local = get_config("scenes"), get_config("local")
    cfg.model, cfg.bucket_seconds = local.model, (12,)
    cfg.data.update(train_clips=3, mix_clips=2, validation_clips=2, test_clips=2, test_questions=4, **data)
    cfg.optim.update(local.optim.to_dict(), order_share=0.375, count_share=0.25, counting_weight=1.0,
                     recurrence_weight=1.0)
    cfg.optim.update(steps=2, batch_clips=2, questions_per_clip=4)
    cfg.update(log_every=1, eval_every=0, checkpoint_every=2, eval_batch_size=4)
    return cfg


def test_training_labels_are_defined_on_repeated_classes_and_overlaps() -> None:
    from agac_jax.training import data as train_data

    classes = scenes.EVENT_CLASSES
    siren, low, click = (classes.index(c) for c in ("siren", "low tone", "click train"))
    events = (synthetic.Event("siren", 0.10, 0.50, 6.0), synthetic.Event("low tone", 0.30, 1.00, 20.0),
              synthetic.Event("click train", 1.20, 1.40, 5.0), synthetic.Event("siren", 1.60, 2.00, 8.0))
    labels = train_data.audio_token_labels(events, num_tokens=60, length=64)
    expected = np.full(64, train_data.BACKGROUND_LABEL)
    expected[2:7] = siren  # centres 0.1 .. 0.26 s: the siren alone
    expected[7:25] = low  # centres 0.3 .. 0.98 s: the louder low tone wins where both sound
    expected[30:35], expected[40:50], expected[60:] = click, siren, -1
    np.testing.assert_array_equal(labels, expected)
    ranks = train_data.event_ranks(events)  # by first onset; the second siren does not count
    assert (ranks[siren], ranks[low], ranks[click]) == (1, 2, 3) and ranks.sum() == 6
    assert train_data.question_labels(scenes.count_question("siren")) == (siren, siren)
    assert train_data.question_labels(scenes.existence_question("siren")) == (siren, train_data.BACKGROUND_LABEL)
    assert train_data.question_labels(scenes.order_question("siren", "low tone")) == (siren, low)


def test_the_scenes_training_data_mixes_both_benchmarks_with_the_union_vocabulary(tmp_path) -> None:
    from agac_jax.training import data as train_data, model

    cfg = _scenes_training_config()
    assert train_data.vocabulary(cfg) == scenes.VOCABULARY and train_data.max_rank(cfg) == 5
    pool = train_data.split_samples(cfg, "train", cfg.data.train_clips)
    assert [type(s) for s in pool] == sorted((type(s) for s in pool), key=lambda t: t is scenes.Sample)
    assert len({s.clip_id for s in pool}) == 5 and {s.kind for s in pool} == set(scenes.QUESTION_KINDS)
    assert train_data.split_samples(cfg, "test", 2) == scenes.generate_split("test", 2, cfg.data.seed)
    tokenizer = model.build_processor(tmp_path / "processor", cfg.num_mel_bins, train_data.vocabulary(cfg))
    data = train_data.split_set(cfg, tokenizer, tmp_path, "train", cfg.data.train_clips, None)
    assert (tmp_path / "all_silence0.5-0.25-1_scenes_mix-synthetic2_train_clips3_seed0_mel80_buckets12_v3.npz").is_file()
    assert len(data) == len(pool) and tokenizer.unk_token_id not in data.input_ids
    assert data.event_ranks.max() <= 5 and set(np.unique(data.kinds)) == set(scenes.QUESTION_KINDS)
    for i in np.flatnonzero(data.kinds == scenes.COUNT):  # the counted class occurs once ("no") or twice ("yes")
        counted = data.event_counts[data.clip_index[i], data.question_labels[i, 0]]
        assert counted == (2 if tokenizer.decode(data.input_ids[i][data.target_mask[i] > 0][:1]) == "yes" else 1)
    for i in np.flatnonzero(data.kinds == scenes.COUNT):
        assert data.question_labels[i, 0] == data.question_labels[i, 1]
    clips, questions = train_data.step_batch(data, 2, 8, seed=0, step=3, order_share=0.375, count_share=0.25)
    for i, clip in enumerate(clips):
        mine = data.kinds[questions[8 * i : 8 * i + 8]]
        own = data.kinds[data.clip_index == clip]
        assert (mine == scenes.COUNT).sum() == (2 if (own == scenes.COUNT).any() else 0)
        assert (mine == scenes.ORDER).sum() == (3 if (own == scenes.ORDER).any() else 0)


@pytest.mark.slow
def test_a_local_sized_scenes_training_run_trains_and_checkpoints(tmp_path) -> None:
    """Two steps of a 1-layer model on 3 scenes and 2 synthetic clips (about 20 s: compiling the step)."""
    from agac_jax.training import checkpointing, loop, steps

    cfg = _scenes_training_config()
    result = loop.train(cfg, tmp_path)
    losses = [record for record in result.history if "loss" in record]
    assert result.step == 2 and len(losses) == 2 and all(np.isfinite(r["loss"]) for r in losses)
    assert result.tokenizer.convert_tokens_to_ids("more") != result.tokenizer.unk_token_id
    manager = checkpointing.checkpoint_manager(tmp_path)
    _, _, trainable, _ = checkpointing.restore_checkpoint(manager, steps.make_optimizer(cfg.optim), max_rank=5)
    assert trainable["listener"]["kernel"].shape == (cfg.model.hidden_size, len(scenes.EVENT_CLASSES), 6)
    assert np.any(trainable["counter"]["kernel"]) and np.any(trainable["recurrence"]["kernel"])  # weights 1: trained
    assert all(np.isfinite(r["counting_loss"]) and np.isfinite(r["recurrence_loss"]) for r in losses)
