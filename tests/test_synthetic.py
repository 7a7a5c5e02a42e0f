"""Tests of the synthetic benchmark: determinism, balance, evidence bookkeeping, splits, I/O."""

from __future__ import annotations

import collections
import hashlib

import numpy as np
import pytest

from agac_jax.data.synthetic_audio import synthetic
from agac_jax.data.common import SAMPLE_RATE, AudioQASample


@pytest.fixture(scope="module")
def train_samples() -> list[synthetic.Sample]:
    return synthetic.generate_split("train", 160, seed=3)


def _first_sample_per_clip(samples: list[synthetic.Sample]) -> list[synthetic.Sample]:
    seen: dict[str, synthetic.Sample] = {}
    for sample in samples:
        seen.setdefault(sample.clip_id, sample)
    return list(seen.values())


def _digest(waveform: np.ndarray) -> str:
    return hashlib.sha256(waveform.tobytes()).hexdigest()


def _named_classes(sample: synthetic.Sample) -> list[str]:
    """The event classes a question names, in the order it names them."""
    body = sample.question.removesuffix(" ?")
    if sample.kind == synthetic.EXISTENCE:
        return [body.removeprefix("is there a ")]
    first, second = body.removeprefix("does the ").split(" come before the ")
    return [first, second]


def test_same_seed_gives_identical_samples_and_waveforms() -> None:
    first = synthetic.generate_split("validation", 6, seed=11)
    second = synthetic.generate_split("validation", 6, seed=11)
    assert first == second
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a.load_waveform(), b.load_waveform())


def test_other_seed_gives_other_clips() -> None:
    first = synthetic.generate_split("validation", 4, seed=11)
    second = synthetic.generate_split("validation", 4, seed=12)
    assert [s.events for s in first] != [s.events for s in second]


def test_waveform_is_float32_mono_of_recorded_length(train_samples: list[synthetic.Sample]) -> None:
    for sample in train_samples[:6]:
        waveform = sample.load_waveform()
        assert waveform.dtype == np.float32
        assert waveform.shape == (sample.num_samples,)
        assert np.max(np.abs(waveform)) <= synthetic.PEAK_LIMIT + 1e-6


def test_clip_layout_respects_the_bounds(train_samples: list[synthetic.Sample]) -> None:
    for sample in _first_sample_per_clip(train_samples):
        duration = sample.num_samples / SAMPLE_RATE
        assert synthetic.MIN_CLIP_S <= duration <= synthetic.MAX_CLIP_S
        assert 1 <= len(sample.events) <= 3
        assert len({event.label for event in sample.events}) == len(sample.events)
        for event in sample.events:
            assert event.label in synthetic.EVENT_CLASSES
            assert synthetic.MIN_EVENT_S - 1e-3 <= event.end_s - event.start_s <= synthetic.MAX_EVENT_S + 1e-3
            assert synthetic.MIN_SNR_DB <= event.snr_db <= synthetic.MAX_SNR_DB
        assert sample.events[0].start_s >= synthetic.EDGE_MARGIN_S - 1e-9
        assert sample.events[-1].end_s <= duration - synthetic.EDGE_MARGIN_S + 1e-9
        for earlier, later in zip(sample.events, sample.events[1:]):
            assert later.start_s - earlier.end_s >= synthetic.MIN_GAP_S - 1e-9


def test_at_least_six_classes_are_used(train_samples: list[synthetic.Sample]) -> None:
    assert len(synthetic.EVENT_CLASSES) >= 6
    used = {event.label for sample in train_samples for event in sample.events}
    assert used == set(synthetic.EVENT_CLASSES)


def test_answers_are_balanced_per_class_and_kind(train_samples: list[synthetic.Sample]) -> None:
    counts: collections.Counter[tuple[str, str, str]] = collections.Counter()
    for sample in train_samples:
        counts[(sample.kind, _named_classes(sample)[0], sample.answer)] += 1
    tolerance = {synthetic.EXISTENCE: 1, synthetic.ORDER: 2}
    for kind in synthetic.QUESTION_KINDS:
        for label in synthetic.EVENT_CLASSES:
            yes, no = counts[(kind, label, "yes")], counts[(kind, label, "no")]
            assert yes + no > 0, (kind, label)
            assert abs(yes - no) <= tolerance[kind], (kind, label, yes, no)
        kind_yes = sum(counts[(kind, label, "yes")] for label in synthetic.EVENT_CLASSES)
        kind_no = sum(counts[(kind, label, "no")] for label in synthetic.EVENT_CLASSES)
        assert abs(kind_yes - kind_no) <= tolerance[kind] * len(synthetic.EVENT_CLASSES)


def test_each_clip_gets_existence_and_order_questions_with_different_evidence(
    train_samples: list[synthetic.Sample],
) -> None:
    by_clip = collections.defaultdict(list)
    for sample in train_samples:
        by_clip[sample.clip_id].append(sample)
    for samples in by_clip.values():
        kinds = [sample.kind for sample in samples]
        expected = [synthetic.EXISTENCE] + ([synthetic.ORDER] if len(samples[0].events) >= 2 else [])
        assert kinds == expected
        if len(samples) == 2:
            assert samples[0].evidence != samples[1].evidence


def test_evidence_matches_the_answer(train_samples: list[synthetic.Sample]) -> None:
    for sample in train_samples:
        events = {event.label: event for event in sample.events}
        named = _named_classes(sample)
        if sample.kind == synthetic.EXISTENCE:
            if sample.answer == "yes":
                assert sample.evidence == (events[named[0]].interval,)
            else:
                assert named[0] not in events
                assert sample.evidence == ()
        else:
            first, second = events[named[0]], events[named[1]]
            assert sample.evidence == tuple(sorted([first.interval, second.interval]))
            assert (first.start_s < second.start_s) == (sample.answer == "yes")


def test_energy_is_far_higher_inside_event_intervals(train_samples: list[synthetic.Sample]) -> None:
    for sample in _first_sample_per_clip(train_samples)[:25]:
        waveform = sample.load_waveform().astype(np.float64)
        inside = np.zeros(sample.num_samples, dtype=bool)
        for event in sample.events:
            inside[synthetic.seconds_to_samples(event.start_s) : synthetic.seconds_to_samples(event.end_s)] = True
        outside_power = np.mean(waveform[~inside] ** 2)
        for event in sample.events:
            segment = waveform[synthetic.seconds_to_samples(event.start_s) : synthetic.seconds_to_samples(event.end_s)]
            assert np.mean(segment**2) > 3.0 * outside_power, (sample.clip_id, event)


def test_events_alone_are_silent_outside_their_intervals(train_samples: list[synthetic.Sample]) -> None:
    for sample in _first_sample_per_clip(train_samples)[:10]:
        events_only = synthetic.render_clip(sample.audio, background=False)
        inside = np.zeros(sample.num_samples, dtype=bool)
        for event in sample.events:
            start, end = synthetic.seconds_to_samples(event.start_s), synthetic.seconds_to_samples(event.end_s)
            inside[start:end] = True
            assert np.sqrt(np.mean(events_only[start:end] ** 2)) > 0.01
        assert np.all(events_only[~inside] == 0.0)


_BAND_EDGES = np.geomspace(100, 8000, 17)
_FFT_FREQUENCIES = np.fft.rfftfreq(512, 1 / SAMPLE_RATE)
_BANDS = [(_FFT_FREQUENCIES >= lo) & (_FFT_FREQUENCIES < hi) for lo, hi in zip(_BAND_EDGES, _BAND_EDGES[1:])]


def _frame_band_energies(segment: np.ndarray) -> np.ndarray:
    """Log energies in 16 log-spaced bands of 25 ms frames every 10 ms (log-mel-like), [frames, 16]."""
    frames = np.lib.stride_tricks.sliding_window_view(segment, 400)[::160] * np.hanning(400)
    power = np.abs(np.fft.rfft(frames, n=512, axis=1)) ** 2
    return np.log(np.stack([power[:, band].mean(axis=1) for band in _BANDS], axis=1) + 1e-10)


def _event_features(sample: synthetic.Sample) -> tuple[list[np.ndarray], list[str]]:
    """Per event: mean and std over frames of band energies above the clip's background, for each
    half of the event, [4 * 16]; and the events' labels."""
    waveform = sample.load_waveform().astype(np.float64)
    bounds = [(synthetic.seconds_to_samples(e.start_s), synthetic.seconds_to_samples(e.end_s)) for e in sample.events]
    inside = np.zeros(len(waveform), dtype=bool)
    for start, end in bounds:
        inside[start:end] = True
    background = _frame_band_energies(waveform[~inside]).mean(axis=0)
    rows = []
    for start, end in bounds:
        energies = _frame_band_energies(waveform[start:end]) - background
        halves = np.array_split(energies, 2)
        rows.append(np.concatenate([statistic(half, axis=0) for half in halves for statistic in (np.mean, np.std)]))
    return rows, [event.label for event in sample.events]


def test_event_classes_are_separable_from_frame_features(train_samples: list[synthetic.Sample]) -> None:
    """A nearest-centroid classifier on log-mel-like frame statistics, fit on train clips, labels
    the events of test clips."""

    def features_and_labels(samples: list[synthetic.Sample]) -> tuple[np.ndarray, list[str]]:
        rows, labels = [], []
        for sample in _first_sample_per_clip(samples):
            clip_rows, clip_labels = _event_features(sample)
            rows += clip_rows
            labels += clip_labels
        return np.stack(rows), labels

    train_x, train_y = features_and_labels(train_samples[:80])
    test_x, test_y = features_and_labels(synthetic.generate_split("test", 24, seed=3))
    mean, scale = train_x.mean(0), train_x.std(0) + 1e-6
    names = list(synthetic.EVENT_CLASSES)
    centroids = np.stack([((train_x[[y == name for y in train_y]] - mean) / scale).mean(0) for name in names])
    distances = np.linalg.norm(((test_x - mean) / scale)[:, None, :] - centroids[None], axis=2)
    predicted = [names[i] for i in distances.argmin(1)]
    accuracy = np.mean([p == y for p, y in zip(predicted, test_y)])
    assert accuracy >= 0.95


def test_splits_share_no_clip() -> None:
    splits = {name: synthetic.generate_split(name, 8, seed=0) for name in synthetic.SPLITS}
    clip_ids = {name: {s.clip_id for s in samples} for name, samples in splits.items()}
    digests = {
        name: {_digest(s.load_waveform()) for s in _first_sample_per_clip(samples)} for name, samples in splits.items()
    }
    for a, b in [("train", "validation"), ("train", "test"), ("validation", "test")]:
        assert not clip_ids[a] & clip_ids[b]
        assert not digests[a] & digests[b]


def test_questions_use_only_the_vocabulary(train_samples: list[synthetic.Sample]) -> None:
    assert synthetic.VOCABULARY == sorted(set(synthetic.VOCABULARY))
    assert len(synthetic.VOCABULARY) <= 40
    vocabulary = set(synthetic.VOCABULARY)
    assert {"yes", "no", "?"} <= vocabulary
    for sample in train_samples:
        assert sample.question == sample.question.lower()
        assert sample.question.endswith(" ?")
        assert set(sample.question.split(" ")) <= vocabulary
        assert sample.answer in vocabulary


def test_samples_follow_the_common_interface(train_samples: list[synthetic.Sample]) -> None:
    assert all(isinstance(sample, AudioQASample) for sample in train_samples)


def test_write_then_read_round_trips(tmp_path, train_samples: list[synthetic.Sample]) -> None:
    samples = train_samples[:7]
    synthetic.write_split(tmp_path, samples)
    wav_files = sorted(p.name for p in (tmp_path / "audio").iterdir())
    assert wav_files == sorted({f"{s.clip_id}.wav" for s in samples})
    restored = synthetic.read_split(tmp_path)
    assert len(restored) == len(samples)
    for original, copy in zip(samples, restored):
        assert copy == synthetic.Sample(**{**vars(original), "audio": copy.audio})
        np.testing.assert_array_equal(copy.load_waveform(), original.load_waveform())


def test_read_split_reports_a_missing_manifest(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="manifest.jsonl"):
        synthetic.read_split(tmp_path)


def test_read_split_names_a_malformed_line(tmp_path) -> None:
    (tmp_path / synthetic.MANIFEST_NAME).write_text('{"sample_id": "x"}\n')
    with pytest.raises(ValueError, match="line 1"):
        synthetic.read_split(tmp_path)


@pytest.mark.parametrize(
    ("split", "num_clips", "seed", "message"),
    [("dev", 3, 0, "split"), ("train", 0, 0, "num_clips"), ("train", 3, -1, "seed")],
)
def test_bad_arguments_are_named(split: str, num_clips: int, seed: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        synthetic.generate_split(split, num_clips, seed)
