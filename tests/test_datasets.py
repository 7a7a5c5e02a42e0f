"""Tests of the ClothoAQA and AVHBench loaders on small trees in their released layouts."""

from __future__ import annotations

import csv
import json
import logging
import re
import subprocess
from pathlib import Path

import ml_collections
import numpy as np
import pytest
import soundfile

from agac_jax.cli import errors
from agac_jax.data import avhbench, clotho_aqa, load_dataset
from agac_jax.data.synthetic_audio import synthetic
from agac_jax.data.common import (
    OUTSIDE_ROOT,
    SAMPLE_RATE,
    AudioQASample,
    AudioSource,
    DatasetError,
    WavFile,
    resolve_inside,
    skip_kind,
)

try:
    FFMPEG = avhbench.find_ffmpeg()
except avhbench.FfmpegNotFoundError:
    FFMPEG = None
needs_ffmpeg = pytest.mark.skipif(FFMPEG is None, reason="ffmpeg is not installed; audio extraction not tested")


def _sine(frequency: float, seconds: float, sample_rate: int) -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * frequency * np.arange(int(seconds * sample_rate)) / sample_rate)).astype(
        np.float32
    )


# --- ClothoAQA -----------------------------------------------------------------------------------


def _write_clotho_csv(path: Path, rows: list[tuple[str, str, str, str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file_name", "QuestionText", "answer", "confidence"])
        writer.writerows(rows)


@pytest.fixture()
def clotho_root(tmp_path: Path) -> Path:
    audio = tmp_path / "audio_files"
    audio.mkdir()
    soundfile.write(audio / "birds.wav", _sine(440, 1.0, SAMPLE_RATE), SAMPLE_RATE)
    stereo = np.stack([_sine(440, 0.5, 44_100), _sine(440, 0.5, 44_100)], axis=1)
    soundfile.write(audio / "rain.wav", stereo, 44_100)
    (audio / "broken.wav").write_bytes(b"this is not audio at all")
    rows = [
        ("birds.wav", "Are birds singing?", "yes", "yes"),
        ("birds.wav", "Are birds singing?", "Yes.", "maybe"),
        ("birds.wav", "Are birds singing?", "no", "yes"),
        ("birds.wav", "What animal is heard?", "bird", "yes"),
        ("birds.wav", "What animal is heard?", "birds", "yes"),
        ("birds.wav", "What animal is heard?", "a bird", "no"),
        ("rain.wav", "Is it raining?", "no", "yes"),
        ("rain.wav", "Is it raining?", "NO", "yes"),
        ("rain.wav", "Is it raining?", "yes", "maybe"),
        ("rain.wav", "Is someone talking?", "yes", "maybe"),
        ("rain.wav", "Is someone talking?", "no", "yes"),
        ("rain.wav", "Is someone talking?", "rain", "yes"),
        ("rain.wav", "Is there thunder?", "yes", "no"),
        ("rain.wav", "Is there thunder?", "no", "no"),
        ("rain.wav", "Is there thunder?", "unsure", "no"),
        ("missing.wav", "Is a car passing?", "yes", "yes"),
        ("missing.wav", "Is a car passing?", "yes", "yes"),
        ("missing.wav", "Is a car passing?", "no", "yes"),
        ("broken.wav", "Is a dog barking?", "no", "yes"),
        ("broken.wav", "Is a dog barking?", "no", "yes"),
        ("broken.wav", "Is a dog barking?", "no", "yes"),
    ]
    _write_clotho_csv(tmp_path / "clotho_aqa_val.csv", rows)
    return tmp_path


def test_clotho_keeps_the_yes_no_subset_with_majority_labels(clotho_root: Path) -> None:
    loaded = clotho_aqa.load_clotho_aqa(clotho_root, "val")
    labels = {sample.question: sample.answer for sample in loaded.samples}
    assert labels == {"Are birds singing?": "yes", "Is it raining?": "no", "Is someone talking?": "no"}


def test_clotho_breaks_ties_by_confidence_and_skips_the_rest(clotho_root: Path) -> None:
    loaded = clotho_aqa.load_clotho_aqa(clotho_root, "val")
    reasons = {item.item: item.reason for item in loaded.skipped}
    assert "tied vote" in reasons["val/rain.wav/2"]
    assert "missing audio file" in reasons["val/missing.wav/0"]
    assert "unreadable audio file" in reasons["val/broken.wav/0"]
    assert len(loaded.skipped) == 3


def test_clotho_logs_each_skip(clotho_root: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        clotho_aqa.load_clotho_aqa(clotho_root, "val")
    messages = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert any("missing.wav" in message for message in messages)
    assert any("broken.wav" in message for message in messages)


def test_clotho_samples_load_mono_16k_float32(clotho_root: Path) -> None:
    loaded = clotho_aqa.load_clotho_aqa(clotho_root, "val")
    by_clip = {sample.clip_id: sample for sample in loaded.samples}
    assert isinstance(by_clip["rain.wav"], AudioQASample)
    assert by_clip["rain.wav"].evidence is None
    resampled = by_clip["rain.wav"].load_waveform()
    assert resampled.dtype == np.float32 and resampled.ndim == 1
    assert abs(len(resampled) - SAMPLE_RATE // 2) <= 2
    spectrum = np.abs(np.fft.rfft(resampled))
    assert abs(np.argmax(spectrum) * SAMPLE_RATE / len(resampled) - 440) < 5
    np.testing.assert_allclose(by_clip["birds.wav"].load_waveform(), _sine(440, 1.0, SAMPLE_RATE), atol=1e-4)


def test_clotho_sample_ids_are_unique(clotho_root: Path) -> None:
    ids = [sample.sample_id for sample in clotho_aqa.load_clotho_aqa(clotho_root, "val").samples]
    assert len(ids) == len(set(ids))


def test_majority_answer_decisions() -> None:
    assert clotho_aqa.majority_answer(["yes", "yes", "no"], ["no", "no", "yes"]) == "yes"
    assert clotho_aqa.majority_answer(["yes", "no"], ["maybe", "yes"]) == "no"
    assert clotho_aqa.majority_answer(["yes", "no"], ["yes", "yes"]) is None
    assert clotho_aqa.majority_answer(["yes", "no", "dog"], ["no", "no", "yes"]) is None


def test_clotho_missing_csv_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="clotho_aqa_test.csv"):
        clotho_aqa.load_clotho_aqa(tmp_path, "test")


def test_clotho_missing_column_is_named(tmp_path: Path) -> None:
    (tmp_path / "clotho_aqa_train.csv").write_text("file_name,QuestionText,answer\na.wav,Is it?,yes\n")
    with pytest.raises(ValueError, match="confidence"):
        clotho_aqa.load_clotho_aqa(tmp_path, "train")


def test_clotho_unknown_split_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="split"):
        clotho_aqa.load_clotho_aqa(tmp_path, "validation")


# --- AVHBench ------------------------------------------------------------------------------------

TASK = avhbench.DEFAULT_TASK


def _make_video(path: Path, *, with_audio: bool) -> None:
    command = [FFMPEG, "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i", "color=c=gray:s=32x32:r=10:d=1"]
    if with_audio:
        command += ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100:duration=1", "-c:a", "aac"]
    command += ["-c:v", "mpeg4", "-shortest", str(path)]
    subprocess.run(command, check=True, capture_output=True)


def _write_json(root: Path, video_id: str, entries: object) -> None:
    (root / "json" / f"{video_id}.json").write_text(json.dumps(entries))


@pytest.fixture()
def avh_root(tmp_path: Path) -> Path:
    (tmp_path / "json").mkdir()
    (tmp_path / "video").mkdir()
    _write_json(
        tmp_path,
        "v1",
        [
            {"video_id": "v1", "task": TASK, "text": "Is a dog visible in the video?", "label": "Yes"},
            {"video_id": "v1", "task": "Video-driven Audio Hallucination", "text": "Is a dog heard?", "label": "No"},
            {"video_id": "v1", "task": "audio-driven  video hallucination", "text": "Is a car visible?", "label": "no"},
            {"video_id": "v1", "task": TASK, "text": "Is a cat visible?", "label": "perhaps"},
        ],
    )
    _write_json(tmp_path, "v2", [{"video_id": "v2", "task": TASK, "text": "Is a bell visible?", "label": "Yes"}])
    _write_json(tmp_path, "v3", [{"video_id": "other", "task": TASK, "text": "Is it?", "label": "Yes"}])
    _write_json(tmp_path, "v4", [{"video_id": "v4", "task": TASK, "label": "Yes"}])
    (tmp_path / "json" / "v5.json").write_text("{ not json")
    for video_id in ("v1", "v3", "v4"):
        (tmp_path / "video" / f"{video_id}.mp4").write_bytes(b"placeholder")
    return tmp_path


def test_avhbench_selects_the_task_and_normalises_labels(avh_root: Path) -> None:
    loaded = avhbench.load_avhbench(avh_root)
    assert [(s.sample_id, s.question, s.answer) for s in loaded.samples] == [
        ("v1/0", "Is a dog visible in the video?", "yes"),
        ("v1/2", "Is a car visible?", "no"),
    ]
    assert all(isinstance(s, AudioQASample) and s.evidence is None for s in loaded.samples)


def test_avhbench_skips_bad_items_with_reasons(avh_root: Path) -> None:
    reasons = {item.item: item.reason for item in avhbench.load_avhbench(avh_root).skipped}
    assert "neither yes nor no" in reasons["v1/3"]
    assert "missing video" in reasons["v2/0"]
    assert "names video 'other'" in reasons["v3/0"]
    assert "lacks keys ['text']" in reasons["v4/0"]
    assert "unreadable JSON" in reasons[str(avh_root / "json" / "v5.json")]
    assert len(reasons) == 5


def test_avhbench_other_task_is_a_parameter(avh_root: Path) -> None:
    loaded = avhbench.load_avhbench(avh_root, task="Video-driven Audio Hallucination")
    assert [(s.question, s.answer) for s in loaded.samples] == [("Is a dog heard?", "no")]


def test_avhbench_unknown_task_logs_the_tasks_found(avh_root: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        loaded = avhbench.load_avhbench(avh_root, task="Audio-visual Captioning")
    assert loaded.samples == []
    assert any("tasks found" in record.getMessage() for record in caplog.records)


def test_avhbench_missing_json_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="json"):
        avhbench.load_avhbench(tmp_path)


def test_avhbench_without_ffmpeg_says_how_to_install(avh_root: Path) -> None:
    sample = avhbench.load_avhbench(avh_root, ffmpeg="no-such-ffmpeg-executable").samples[0]
    with pytest.raises(avhbench.FfmpegNotFoundError, match="Install ffmpeg"):
        sample.load_waveform()


@needs_ffmpeg
def test_avhbench_extracts_the_soundtrack(tmp_path: Path) -> None:
    (tmp_path / "json").mkdir()
    (tmp_path / "video").mkdir()
    _make_video(tmp_path / "video" / "clip.mp4", with_audio=True)
    _write_json(tmp_path, "clip", [{"video_id": "clip", "task": TASK, "text": "Is a bell visible?", "label": "No"}])
    sample = avhbench.load_avhbench(tmp_path).samples[0]
    waveform = sample.load_waveform()
    assert waveform.dtype == np.float32 and waveform.ndim == 1
    assert abs(len(waveform) - SAMPLE_RATE) < 0.1 * SAMPLE_RATE
    spectrum = np.abs(np.fft.rfft(waveform))
    assert abs(np.argmax(spectrum) * SAMPLE_RATE / len(waveform) - 440) < 5


@needs_ffmpeg
def test_avhbench_export_skips_videos_without_audio(tmp_path: Path) -> None:
    (tmp_path / "json").mkdir()
    (tmp_path / "video").mkdir()
    _make_video(tmp_path / "video" / "sound.mp4", with_audio=True)
    _make_video(tmp_path / "video" / "mute.mp4", with_audio=False)
    for video_id in ("sound", "mute"):
        _write_json(tmp_path, video_id, [{"video_id": video_id, "task": TASK, "text": "Is it?", "label": "Yes"}])
    loaded = avhbench.load_avhbench(tmp_path)
    with pytest.raises(avhbench.AudioExtractionError):
        next(s for s in loaded.samples if s.clip_id == "mute").load_waveform()
    exported = avhbench.export_soundtracks(loaded.samples, tmp_path / "wav")
    assert [s.clip_id for s in exported.samples] == ["sound"]
    assert exported.samples[0].audio == WavFile(tmp_path / "wav" / "sound.wav")
    assert [item.item for item in exported.skipped] == ["mute/0"]
    np.testing.assert_allclose(exported.samples[0].load_waveform(), loaded.samples[1].load_waveform(), atol=1e-6)


def test_every_audio_source_follows_the_protocol(tmp_path: Path) -> None:
    clip = synthetic.generate_split("test", 1, seed=0)[0].audio
    sources = [clip, WavFile(tmp_path / "a.wav"), avhbench.VideoSoundtrack(tmp_path / "a.mp4")]
    assert all(isinstance(source, AudioSource) for source in sources)


# --- paths stay inside the root ------------------------------------------------------------------


def _clotho_tree(root: Path, rows: list[tuple[str, str, str, str]]) -> Path:
    (root / "audio_files").mkdir(parents=True)
    soundfile.write(root / "audio_files" / "inside.wav", _sine(440, 0.5, SAMPLE_RATE), SAMPLE_RATE)
    _write_clotho_csv(root / "clotho_aqa_test.csv", rows)
    return root


def _yes(file_name: str, question: str = "Is it there?") -> list[tuple[str, str, str, str]]:
    return [(file_name, question, "yes", "yes")] * 3


def test_clotho_rows_pointing_outside_the_root_are_skipped(tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    soundfile.write(outside / "x.wav", _sine(440, 0.5, SAMPLE_RATE), SAMPLE_RATE)
    root = _clotho_tree(tmp_path / "data", [])
    (root / "audio_files" / "linked.wav").symlink_to(outside / "x.wav")
    (root / "audio_files" / "folder").symlink_to(outside, target_is_directory=True)
    rows = (_yes("inside.wav") + _yes("../../elsewhere/x.wav") + _yes(str(outside / "x.wav"))
            + _yes("linked.wav") + _yes("folder/x.wav") + _yes("../clotho_aqa_test.csv"))
    _write_clotho_csv(root / "clotho_aqa_test.csv", rows)
    loaded = clotho_aqa.load_clotho_aqa(root, "test")
    assert [s.clip_id for s in loaded.samples] == ["inside.wav"]
    reasons = {item.item: item.reason for item in loaded.skipped}
    assert set(reasons) == {"test/../../elsewhere/x.wav/0", f"test/{outside / 'x.wav'}/0", "test/linked.wav/0",
                            "test/folder/x.wav/0", "test/../clotho_aqa_test.csv/0"}
    assert all(reason.startswith("outside the data set root") for reason in reasons.values())
    assert "climbs out" in reasons["test/../../elsewhere/x.wav/0"]
    assert "absolute path" in reasons[f"test/{outside / 'x.wav'}/0"]
    assert "links to" in reasons["test/linked.wav/0"]


def test_clotho_root_and_audio_directory_may_be_symlinks(tmp_path: Path) -> None:
    real = _clotho_tree(tmp_path / "disk" / "clotho", _yes("inside.wav"))
    audio = tmp_path / "audio_disk"
    (real / "audio_files").rename(audio)
    (real / "audio_files").symlink_to(audio, target_is_directory=True)
    (real / "audio_files" / "inner.wav").symlink_to(audio / "inside.wav")  # a link that stays inside
    _write_clotho_csv(real / "clotho_aqa_test.csv", _yes("inside.wav") + _yes("inner.wav", "Is it loud?"))
    (tmp_path / "link").symlink_to(real, target_is_directory=True)
    loaded = clotho_aqa.load_clotho_aqa(tmp_path / "link", "test")
    assert [s.clip_id for s in loaded.samples] == ["inside.wav", "inner.wav"] and not loaded.skipped
    assert loaded.samples[1].load_waveform().size == SAMPLE_RATE // 2


def test_resolve_inside_reasons(tmp_path: Path) -> None:
    assert resolve_inside(tmp_path, "a/b.wav") == ((tmp_path / "a" / "b.wav").resolve(), None)
    assert resolve_inside(tmp_path, "a/../b.wav")[0] == (tmp_path / "b.wav").resolve()
    path, reason = resolve_inside(tmp_path / "a", "../b.wav")
    assert path is None and reason.startswith(OUTSIDE_ROOT) and skip_kind(reason) == OUTSIDE_ROOT


def test_avhbench_videos_outside_the_root_are_skipped(tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "v2.mp4").write_bytes(b"placeholder")
    root = tmp_path / "avh"
    (root / "videos").mkdir(parents=True)
    (root / "videos" / "v1.mp4").write_bytes(b"placeholder")
    (root / "videos" / "v2.mp4").symlink_to(outside / "v2.mp4")
    entries = [{"video_id": video_id, "task": TASK, "text": "Is it?", "label": "Yes"}
               for video_id in ("v1", "v2", "../elsewhere/v2")]
    (root / "QA.json").write_text(json.dumps(entries))
    loaded = avhbench.load_avhbench(root)
    assert [s.sample_id for s in loaded.samples] == ["v1/0"]
    reasons = {item.item: item.reason for item in loaded.skipped}
    assert set(reasons) == {"v2/0", "../elsewhere/v2/0"}
    assert all(reason.startswith(OUTSIDE_ROOT) for reason in reasons.values())


# --- loader errors are one line ------------------------------------------------------------------


def _one_error_line(capsys: pytest.CaptureFixture, function) -> str:
    """Runs `function` the way the launch scripts run main; returns its single stderr line."""
    with pytest.raises(SystemExit) as exit_info:
        errors.main(lambda argv: function())([])
    assert exit_info.value.code == errors.EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


def _section(root: Path, name: str = "clotho_aqa", split: str = "test", **fields) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({"name": name, "root": str(root), "split": split, "max_samples": 0,
                                      "task": TASK, **fields})


def test_clotho_csv_errors_name_the_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    csv_file = tmp_path / "clotho_aqa_test.csv"
    cases = {
        "file_name,QuestionText,answer\na.wav,Is it?,yes\n".encode(): "missing columns ['confidence']",
        "file_name,QuestionText,answer,confidence\na.wav,Is it caf\xe9?,yes,yes\n".encode("latin-1"): "not UTF-8",
        b"file_name,QuestionText,answer,confidence\n": "0 samples",
        b"": "empty file, 0 samples",
    }
    for content, expected in cases.items():
        csv_file.write_bytes(content)
        with pytest.raises(DatasetError, match=re.escape(expected)):
            clotho_aqa.load_clotho_aqa(tmp_path, "test")
        line = _one_error_line(capsys, lambda: load_dataset(_section(tmp_path)))
        assert expected in line and str(csv_file) in line


def test_a_data_set_without_samples_stops_the_run(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _clotho_tree(tmp_path, _yes("missing.wav") + _yes("../x.wav", "Is it far?") + [("a.wav", "What?", "dog", "yes")])
    line = _one_error_line(capsys, lambda: load_dataset(_section(tmp_path)))
    assert "clotho_aqa-test: 0 samples" in line and "2 skipped (1 missing audio file, 1 outside the data set root)" in line


def test_avhbench_errors_name_the_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    entries = [{"video_id": f"v{i}", "task": TASK, "text": "Is it?", "label": "Yes"} for i in range(2)]
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "QA.json").write_text(json.dumps(entries))
    (tmp_path / "b.json").write_text(json.dumps(entries))
    line = _one_error_line(capsys, lambda: load_dataset(_section(tmp_path, "avhbench")))
    assert "several AVHBench QA files" in line and str(tmp_path / "b.json") in line

    wrapped = tmp_path / "wrapped"
    wrapped.mkdir()
    (wrapped / "QA.json").write_text(json.dumps({"annotations": entries}))
    line = _one_error_line(capsys, lambda: load_dataset(_section(wrapped, "avhbench")))
    assert str(wrapped / "QA.json") in line and "JSON object (keys ['annotations'])" in line
    assert "not found" not in line
    line = _one_error_line(capsys, lambda: load_dataset(_section(wrapped / "QA.json", "avhbench")))
    assert str(wrapped / "QA.json") in line and "expected a JSON list" in line


# --- the prompt suffix ---------------------------------------------------------------------------


def test_clotho_questions_get_lmms_evals_suffix_by_default(clotho_root: Path) -> None:
    name, loaded = load_dataset(_section(clotho_root, split="val"))
    bare = {s.sample_id: s.question for s in clotho_aqa.load_clotho_aqa(clotho_root, "val").samples}
    assert name == "clotho_aqa-val" and clotho_aqa.LMMS_EVAL_PROMPT_SUFFIX == (
        "\nAnswer the question using a single word only. ")
    for sample in loaded.samples:
        assert sample.prompt_suffix == clotho_aqa.LMMS_EVAL_PROMPT_SUFFIX
        assert sample.question == bare[sample.sample_id] + clotho_aqa.LMMS_EVAL_PROMPT_SUFFIX
    _, plain = load_dataset(_section(clotho_root, split="val", prompt_suffix=""))
    assert [s.question for s in plain.samples] == list(bare.values()) and plain.samples[0].prompt_suffix == ""


def test_other_data_sets_get_no_suffix_unless_asked() -> None:
    section = ml_collections.ConfigDict({"name": "synthetic", "root": "", "split": "test", "num_clips": 2,
                                         "generation_seed": 0, "max_samples": 0,
                                         "prompt_suffix": ml_collections.config_dict.placeholder(str)})
    _, loaded = load_dataset(section)
    assert [s.question for s in loaded.samples] == [s.question for s in synthetic.generate_split("test", 2, 0)]
    assert all(s.prompt_suffix == "" for s in loaded.samples)
    section.prompt_suffix = " Answer yes or no."
    _, asked = load_dataset(section)
    assert all(s.question.endswith("? Answer yes or no.") for s in asked.samples)
