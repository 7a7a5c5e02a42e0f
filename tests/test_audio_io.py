"""Reading audio files and checking waveforms: mono 16 kHz float32, never silently truncated."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile

from agac_jax.audio.io import load_audio, split_windows, validate_waveform


def tone(seconds: float, rate: int, freq: float = 440.0, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def write(path: Path, data: np.ndarray, rate: int, subtype: str = "FLOAT") -> Path:
    soundfile.write(path, data, rate, subtype=subtype)
    return path


def test_wav_round_trip_at_16k_is_exact(tmp_path: Path) -> None:
    x = np.random.default_rng(0).uniform(-0.9, 0.9, 24_000).astype(np.float32)
    loaded = load_audio(write(tmp_path / "a.wav", x, 16_000))
    assert loaded.dtype == np.float32 and loaded.ndim == 1
    np.testing.assert_array_equal(loaded, x)


def test_pcm16_wav_is_scaled_to_unit_range(tmp_path: Path) -> None:
    x = tone(0.5, 16_000)
    loaded = load_audio(write(tmp_path / "a.wav", x, 16_000, subtype="PCM_16"))
    np.testing.assert_allclose(loaded, x, atol=1.0 / 32768)


def test_44k1_wav_is_resampled_to_16k(tmp_path: Path) -> None:
    loaded = load_audio(write(tmp_path / "a.wav", tone(2.0, 44_100), 44_100))
    expected = tone(2.0, 16_000)
    assert loaded.dtype == np.float32
    assert loaded.shape == expected.shape
    # Away from the edges, where the resampling filter sees beyond the clip.
    np.testing.assert_allclose(loaded[800:-800], expected[800:-800], atol=2e-3)


def test_stereo_is_averaged_to_mono(tmp_path: Path) -> None:
    left, right = tone(1.0, 16_000, 440.0), tone(1.0, 16_000, 660.0, amplitude=0.25)
    loaded = load_audio(write(tmp_path / "s.wav", np.stack([left, right], axis=1), 16_000))
    np.testing.assert_allclose(loaded, (left + right) / 2, atol=1e-7)


def test_long_file_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = write(tmp_path / "long.wav", tone(31.0, 16_000), 16_000)
    with pytest.raises(ValueError, match=r"long\.wav.*31\.00 s.*split_windows=True"):
        load_audio(path)


def test_long_file_splits_into_30s_windows_losing_nothing(tmp_path: Path) -> None:
    x = tone(65.0, 16_000)
    windows = load_audio(write(tmp_path / "long.wav", x, 16_000), split_windows=True)
    assert [w.size for w in windows] == [480_000, 480_000, 80_000]
    np.testing.assert_array_equal(np.concatenate(windows), x)


def test_short_file_split_gives_one_window(tmp_path: Path) -> None:
    x = tone(1.0, 16_000)
    windows = load_audio(write(tmp_path / "a.wav", x, 16_000), split_windows=True)
    assert len(windows) == 1
    np.testing.assert_array_equal(windows[0], x)


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nothere.wav"):
        load_audio(tmp_path / "nothere.wav")


def test_unreadable_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "text.wav"
    path.write_text("not audio")
    with pytest.raises(ValueError, match=r"text\.wav.*cannot read"):
        load_audio(path)


def test_empty_file_is_named(tmp_path: Path) -> None:
    path = write(tmp_path / "empty.wav", np.zeros(0, np.float32), 16_000)
    with pytest.raises(ValueError, match=r"empty\.wav.*no samples"):
        load_audio(path)


def test_nan_in_file_is_named(tmp_path: Path) -> None:
    x = tone(0.1, 16_000)
    x[10] = np.nan
    with pytest.raises(ValueError, match=r"nan\.wav.*NaN"):
        load_audio(write(tmp_path / "nan.wav", x, 16_000))


def test_validate_waveform_returns_float32_contiguous() -> None:
    x = np.linspace(-1, 1, 200)[::2]
    out = validate_waveform(x, "clip")
    assert out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_allclose(out, x, rtol=1e-7)


@pytest.mark.parametrize(
    ("x", "error", "match"),
    [
        ([0.0, 0.1], TypeError, "clip_7: expected a numpy array"),
        (np.zeros(10, np.int16), TypeError, "clip_7: .*int16.*32768"),
        (np.zeros((10, 2), np.float32), ValueError, r"clip_7: expected a mono .*\(10, 2\)"),
        (np.zeros(0, np.float32), ValueError, "clip_7: the waveform is empty"),
        (np.array([0.0, np.nan]), ValueError, "clip_7: .*NaN"),
        (np.array([0.0, np.inf], np.float32), ValueError, "clip_7: .*inf"),
        (np.zeros(480_001, np.float32), ValueError, "clip_7: .*longer than 30 s.*split_windows=True"),
    ],
)
def test_validate_waveform_errors_name_the_input(x, error, match) -> None:
    with pytest.raises(error, match=match):
        validate_waveform(x, "clip_7")


def test_validate_waveform_accepts_exactly_30s() -> None:
    assert validate_waveform(np.zeros(480_000, np.float32), "clip").size == 480_000


@pytest.mark.parametrize(
    ("n_samples", "seconds", "sizes"),
    [(960_000, 30, [480_000, 480_000]), (100, 30, [100]), (50_000, 2, [32_000, 18_000])],
)
def test_split_windows_sizes_and_order(n_samples: int, seconds: float, sizes: list[int]) -> None:
    x = np.random.default_rng(1).standard_normal(n_samples).astype(np.float32)
    windows = split_windows(x, seconds)
    assert [w.size for w in windows] == sizes
    np.testing.assert_array_equal(np.concatenate(windows), x)


@pytest.mark.parametrize("seconds", [0, -1, 31])
def test_split_windows_rejects_bad_window(seconds: float) -> None:
    with pytest.raises(ValueError, match="seconds"):
        split_windows(np.zeros(10, np.float32), seconds)


def test_split_windows_checks_the_waveform() -> None:
    with pytest.raises(ValueError, match="rec_3: .*NaN"):
        split_windows(np.array([np.nan], np.float32), name="rec_3")
