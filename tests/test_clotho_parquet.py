"""ClothoAQA as lmms-eval reads it: the Hugging Face parquet export, a second layout of the loader."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile

from agac_jax.data import clotho_aqa
from agac_jax.data.common import OUTSIDE_ROOT, SAMPLE_RATE, DatasetError, WavFile

AUDIO_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def _wav_bytes(frequency: float, seconds: float, sample_rate: int = 44_100) -> bytes:
    """A mono WAV file's bytes, as `datasets` embeds a clip in its Audio feature."""
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    buffer = io.BytesIO()
    soundfile.write(buffer, (0.5 * np.sin(2 * np.pi * frequency * t)).astype(np.float32), sample_rate, format="WAV")
    return buffer.getvalue()


def _write_shard(path: Path, rows: list[tuple[dict | None, str, str]], row_group_size: int = 2) -> Path:
    """A parquet shard with lmms-eval's columns: audio {bytes, path}, question, answer."""
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table({
        "audio": pa.array([audio for audio, _, _ in rows], type=AUDIO_TYPE),
        "question": [question for _, question, _ in rows],
        "answer": [answer for _, _, answer in rows],
    })
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def _peak_hz(waveform: np.ndarray) -> float:
    return float(np.argmax(np.abs(np.fft.rfft(waveform))) * SAMPLE_RATE / len(waveform))


@pytest.fixture()
def export_root(tmp_path: Path) -> Path:
    """The export as `huggingface-cli download lmms-lab/ClothoAQA` lays it out (tiny)."""
    root = tmp_path / "ClothoAQA"
    birds, rain = _wav_bytes(440, 0.5), _wav_bytes(880, 0.25)
    _write_shard(root / "clotho_aqa" / "clotho_aqa_test_filtered-00000-of-00002.parquet", [
        ({"bytes": birds, "path": "birds.wav"}, "Are birds   singing?", "yes"),
        ({"bytes": birds, "path": "birds.wav"}, "What animal is heard?", "bird"),
        ({"bytes": birds, "path": "birds.wav"}, "Is a car passing?", "No."),
    ])
    _write_shard(root / "clotho_aqa" / "clotho_aqa_test_filtered-00001-of-00002.parquet", [
        ({"bytes": rain, "path": "rain.wav"}, "Is it raining?", "Yes"),
        ({"bytes": b"not audio at all", "path": "broken.wav"}, "Is a dog barking?", "no"),
        ({"bytes": b"", "path": ""}, "Is it quiet?", "yes"),
    ])
    _write_shard(root / "clotho_aqa" / "clotho_aqa_val_filtered-00000-of-00001.parquet", [
        ({"bytes": rain, "path": "rain.wav"}, "Is there thunder?", "no"),
    ])
    _write_shard(root / "clotho_asqa_test_v2" / "test-00000-of-00001.parquet", [
        ({"bytes": rain, "path": "rain.wav"}, "Describe the sound.", "Rain falls on a roof."),
    ])
    return root


def test_the_export_is_found_by_content(export_root: Path) -> None:
    assert clotho_aqa.find_layout(export_root, "test") == "parquet"
    assert [p.name for p in clotho_aqa.split_parquet_files(export_root, "test")] == [
        "clotho_aqa_test_filtered-00000-of-00002.parquet", "clotho_aqa_test_filtered-00001-of-00002.parquet"]


def test_the_yes_no_rows_become_samples(export_root: Path) -> None:
    loaded = clotho_aqa.load_clotho_aqa(export_root, "test")
    assert [(s.sample_id, s.clip_id, s.question, s.answer) for s in loaded.samples] == [
        ("test/birds.wav/0", "birds.wav", "Are birds singing?", "yes"),
        ("test/birds.wav/2", "birds.wav", "Is a car passing?", "no"),
        ("test/rain.wav/0", "rain.wav", "Is it raining?", "yes"),
    ]
    reasons = {item.item: item.reason for item in loaded.skipped}
    assert set(reasons) == {"test/broken.wav/0", "test/clotho_aqa_test_filtered-00001-of-00002:1:0/0"}
    assert "unreadable audio file embedded in" in reasons["test/broken.wav/0"]
    assert "no audio in" in reasons["test/clotho_aqa_test_filtered-00001-of-00002:1:0/0"]
    assert [s.question for s in clotho_aqa.load_clotho_aqa(export_root, "val").samples] == ["Is there thunder?"]


def test_embedded_clips_load_mono_16k_across_row_groups(export_root: Path) -> None:
    samples = clotho_aqa.load_clotho_aqa(export_root, "test").samples
    waveforms = [sample.load_waveform() for sample in reversed(samples)]  # out of file order too
    assert all(w.dtype == np.float32 and w.ndim == 1 for w in waveforms)
    rain, car, birds = waveforms
    assert abs(len(birds) - SAMPLE_RATE // 2) <= 2 and abs(len(rain) - SAMPLE_RATE // 4) <= 2
    assert abs(_peak_hz(birds) - 440) < 5 and abs(_peak_hz(rain) - 880) < 5
    np.testing.assert_array_equal(car, birds)


def test_rows_naming_a_file_stay_inside_the_root(tmp_path: Path) -> None:
    root = tmp_path / "export"
    (root / "audio").mkdir(parents=True)
    soundfile.write(root / "audio" / "kept.wav", np.zeros(800, np.float32), SAMPLE_RATE)
    soundfile.write(tmp_path / "secret.wav", np.zeros(800, np.float32), SAMPLE_RATE)
    _write_shard(root / "clotho_aqa_test_filtered-00000-of-00001.parquet", [
        ({"bytes": None, "path": "audio/kept.wav"}, "Is it silent?", "yes"),
        ({"bytes": None, "path": "../secret.wav"}, "Is it silent?", "yes"),
        ({"bytes": None, "path": str(tmp_path / "secret.wav")}, "Is it loud?", "no"),
    ])
    loaded = clotho_aqa.load_clotho_aqa(root, "test")
    assert [s.audio for s in loaded.samples] == [WavFile((root / "audio" / "kept.wav").resolve())]
    assert len(loaded.skipped) == 2 and all(i.reason.startswith(OUTSIDE_ROOT) for i in loaded.skipped)


def test_a_missing_column_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "clotho_aqa_test_filtered-00000-of-00001.parquet"
    pq.write_table(pa.table({"context": pa.array([None], type=AUDIO_TYPE), "instruction": ["Is it?"],
                             "answer": ["yes"]}), path)
    with pytest.raises(DatasetError, match=r"missing columns \['audio', 'question'\]") as error:
        clotho_aqa.load_clotho_aqa(tmp_path, "test")
    assert str(path) in str(error.value)


def test_an_unreadable_shard_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "clotho_aqa_test_filtered-00000-of-00001.parquet"
    path.write_bytes(b"PAR1 but nothing else")
    with pytest.raises(DatasetError, match="not a readable parquet file") as error:
        clotho_aqa.load_clotho_aqa(tmp_path, "test")
    assert str(path) in str(error.value)


def test_a_split_the_export_lacks_is_named(export_root: Path) -> None:
    with pytest.raises(DatasetError, match="no parquet file of split 'train'"):
        clotho_aqa.load_clotho_aqa(export_root, "train")


def test_both_layouts_under_one_root_are_an_error(export_root: Path) -> None:
    with (export_root / "clotho_aqa_test.csv").open("w", newline="") as handle:
        csv.writer(handle).writerow(["file_name", "QuestionText", "answer", "confidence"])
    with pytest.raises(DatasetError, match="both .*clotho_aqa_test.csv and parquet files"):
        clotho_aqa.load_clotho_aqa(export_root, "test")
    assert clotho_aqa.find_layout(export_root, "val") == "parquet"
