"""AVHBench as released: the 2025-03 layout (one QA json, a folder of videos) beside v0, on generated trees."""

from __future__ import annotations

import json
import logging
import subprocess
from pathlib import Path

import numpy as np
import pytest

from agac_jax.data import avhbench
from agac_jax.data.common import SAMPLE_RATE

TASK = avhbench.DEFAULT_TASK
OTHER = "Video-driven Audio Hallucination"

ENTRIES = [
    {"video_id": "00191", "task": OTHER, "text": "Is the sleeping man making sound in the audio?", "label": "Yes"},
    {"video_id": "00191", "task": TASK, "text": "Is the sleeping man visible in the video?", "label": "Yes"},
    {"video_id": "00191", "task": TASK, "text": "Is the person walking visible in the video?", "label": "No"},
    {"video_id": "00191", "task": "AV Captioning", "text": "Describe it.", "label": "A man snores."},
    {"video_id": "00200", "task": "AV Matching", "text": "Are they matching?", "label": "No"},
    {"video_id": "00200", "task": TASK, "text": "Is a dog visible in the video?", "label": "no"},
    {"video_id": "00300", "task": TASK, "text": "Is a car visible in the video?", "label": "Yes"},  # no video
    {"video_id": "00191", "task": TASK, "text": "Is a cat visible in the video?", "label": "maybe"},
]


def _release(root: Path, *, videos: tuple[str, ...] = ("00191.mp4", "00200.mkv")) -> Path:
    (root / "AVHBench_QA").mkdir(parents=True)
    (root / "AVHBench_QA" / "QA.json").write_text(json.dumps(ENTRIES))
    (root / "AVHBench_QA" / "meta.json").write_text(json.dumps({"version": "2025-03"}))  # not a QA file
    (root / "videos").mkdir()
    for name in videos:
        (root / "videos" / name).write_bytes(b"placeholder")
    return root


def test_the_qa_file_is_found_by_content_and_the_task_kept(tmp_path: Path) -> None:
    loaded = avhbench.load_avhbench(_release(tmp_path))
    assert [(s.sample_id, s.question, s.answer) for s in loaded.samples] == [
        ("00191/1", "Is the sleeping man visible in the video?", "yes"),
        ("00191/2", "Is the person walking visible in the video?", "no"),
        ("00200/1", "Is a dog visible in the video?", "no"),
    ]
    assert loaded.samples[2].audio.path == tmp_path / "videos" / "00200.mkv"
    other = avhbench.load_avhbench(tmp_path, task="video-driven  audio hallucination")
    assert [s.sample_id for s in other.samples] == ["00191/0"]


def test_missing_videos_are_reported_and_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        loaded = avhbench.load_avhbench(_release(tmp_path))
    reasons = {item.item: item.reason for item in loaded.skipped}
    assert reasons == {"00300/0": "missing video 00300.mp4", "00191/4": "label 'maybe' is neither yes nor no"}
    assert any("1 videos named by task" in r.getMessage() for r in caplog.records)


def test_both_layouts_give_the_same_samples(tmp_path: Path) -> None:
    new = avhbench.load_avhbench(_release(tmp_path / "new", videos=("00191.mp4", "00200.mp4")))
    old_root = tmp_path / "old"
    (old_root / "json").mkdir(parents=True)
    (old_root / "video").mkdir()
    for video_id in ("00191", "00200", "00300"):
        entries = [e for e in ENTRIES if e["video_id"] == video_id]
        (old_root / "json" / f"{video_id}.json").write_text(json.dumps(entries))
    for video_id in ("00191", "00200"):
        (old_root / "video" / f"{video_id}.mp4").write_bytes(b"placeholder")
    old = avhbench.load_avhbench(old_root)
    key = lambda loaded: [(s.sample_id, s.question, s.answer, s.audio.path.name) for s in loaded.samples]  # noqa: E731
    assert key(new) == key(old) and len(new.samples) == 3
    assert sorted(i.item for i in new.skipped) == sorted(i.item for i in old.skipped)


def test_a_combined_file_in_the_json_folder_is_the_new_layout(tmp_path: Path) -> None:
    (tmp_path / "json").mkdir()
    (tmp_path / "json" / "QA.json").write_text(json.dumps(ENTRIES))
    (tmp_path / "video").mkdir()
    (tmp_path / "video" / "00200.mp4").write_bytes(b"placeholder")
    assert [s.sample_id for s in avhbench.load_avhbench(tmp_path).samples] == ["00200/1"]


def test_the_qa_file_may_be_given_directly_and_several_are_an_error(tmp_path: Path) -> None:
    _release(tmp_path)
    (tmp_path / "copy.json").write_text(json.dumps(ENTRIES[:2]))
    with pytest.raises(ValueError, match="several AVHBench QA files"):
        avhbench.load_avhbench(tmp_path)
    loaded = avhbench.load_avhbench(tmp_path / "copy.json")
    assert [s.sample_id for s in loaded.samples] == ["00191/1"]


def test_no_annotations_at_all_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "videos").mkdir()
    (tmp_path / "notes.json").write_text("[1, 2]")
    with pytest.raises(FileNotFoundError, match="no QA json"):
        avhbench.load_avhbench(tmp_path)


def test_the_soundtrack_of_a_found_video_is_extracted(tmp_path: Path) -> None:
    ffmpeg = avhbench.find_ffmpeg()  # imageio-ffmpeg is pinned: always present after tools/setup.sh
    (tmp_path / "clips").mkdir()
    command = [ffmpeg, "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i", "color=c=gray:s=32x32:r=10:d=1",
               "-f", "lavfi", "-i", "sine=frequency=660:sample_rate=44100:duration=1", "-c:a", "aac",
               "-c:v", "mpeg4", "-shortest", str(tmp_path / "clips" / "00200.mp4")]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True)
    (tmp_path / "QA.json").write_text(json.dumps(ENTRIES))
    (sample,) = avhbench.load_avhbench(tmp_path).samples
    waveform = sample.load_waveform()
    assert abs(len(waveform) - SAMPLE_RATE) < 0.1 * SAMPLE_RATE
    peak = np.argmax(np.abs(np.fft.rfft(waveform))) * SAMPLE_RATE / len(waveform)
    assert abs(peak - 660) < 5


def test_generated_release_loads_with_its_videos(tmp_path):
    """`write_generated` (configs/avhbench_pandagpt.py:local) writes a 2025-03 tree the loader reads."""
    from agac_jax.data.avhbench import write_generated
    from configs.avhbench_pandagpt import get_config

    root = write_generated(tmp_path / "gen", num_videos=2, seconds=3.0)
    loaded = avhbench.load_avhbench(root)
    assert [s.answer for s in loaded.samples] == ["yes", "no"] and not loaded.skipped
    wave = loaded.samples[0].audio.load()
    assert abs(len(wave) - 48000) < 2000 and np.abs(wave[:30000]).max() > 0.1 and np.abs(wave[34000:46000]).max() < 0.01
    assert loaded.samples[0].audio.path.suffix == ".mp4"  # the sweep hands this file to PandaGPT's scorer
    local = get_config("local")
    assert local.model.kind == "pandagpt" and local.dataset.generated == 4 and tuple(local.rhos) == (1.0, 0.5)
    poster = get_config(None)
    assert tuple(poster.rates) == (25, 50, 100) and tuple(poster.rhos) == (1.0, 0.8, 0.5) and "fastv" not in poster.methods
