"""A checkpoint whose encoder window is not 30 s: every length limit must come from its config.

transformers' own tester config has `max_source_positions` 100 (200 mel frames, 2 s). Parity feeds
transformers exactly that window, the scorer's buckets stop at it, and clips longer than it are
refused with the window named.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile

from agac_jax.models.qwen2_audio import parity
from agac_jax.scoring.scorer import POSTER_LOCAL_SCORE, Scorer, ScoringConfig
from launch import score
from tests.tiny_models import make_scoring_checkpoint

NAME = "window2s_gqa3"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_scoring_checkpoint(tmp_path_factory.mktemp(NAME), NAME,
                                   words=("is", "there", "a", "tone", "?", "yes", "no"))


def _tone(seconds: float, hz: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * 16_000)) / 16_000
    return (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def test_parity_uses_the_checkpoints_window(model_dir):
    report = parity.run_parity(model_dir, max_new_tokens=3)
    assert report.ok, report.table()
    assert report.arrays["audio_embeddings"].shape[1] == 50  # 200 frames -> 50 audio tokens


def test_parity_refuses_a_clip_longer_than_the_window(model_dir):
    with pytest.raises(ValueError, match="encoder window of 32000"):
        parity.run_parity(model_dir, clips=[_tone(2.5)])


def test_scorer_buckets_stop_at_the_window_and_refuse_longer_clips(model_dir):
    scorer = Scorer.from_directory(model_dir, ScoringConfig(rates=(50,), max_new_tokens=3, batch_size=2,
                                                            max_text_tokens=32, occlusion_chunk=64,
                                                            **POSTER_LOCAL_SCORE))
    assert scorer.adapter.max_frames == 200 and scorer.bucket_frames(16_000) == 200  # the 5 s bucket would not fit
    short, full = _tone(1.0), _tone(2.0, 660.0)
    results = scorer.score([short, full], ["is there a tone ?"] * 2)
    assert [r.num_tokens for r in results] == [25, 50]
    assert all(np.isfinite(r.fused).all() for r in results)
    assert len(scorer.answer([short], ["is there a tone ?"])) == 1
    with pytest.raises(ValueError, match="longer than 2 s"):
        scorer.score([_tone(2.5)], ["is there a tone ?"])


def test_launch_score_runs_on_the_short_window_model(model_dir, tmp_path):
    good, long = tmp_path / "good.wav", tmp_path / "long.wav"
    soundfile.write(good, _tone(1.5), 16_000)
    soundfile.write(long, _tone(3.0), 16_000)
    out = tmp_path / "scores.json"
    code = score.run(["score", f"--checkpoint={model_dir}", "--question=is there a tone ?", "--rate=50",
                      "--keep=0.7", "--max_new_tokens=3", f"--audio={good}", f"--audio={long}", f"--output={out}"])
    records = json.loads(out.read_text())
    assert code == 1  # one clip failed
    assert "error" not in records[0] and len(records[0]["frames"]["keep"]) == 27  # ceil(0.7 * 38 frames)
    assert "longer than 2 s" in records[1]["error"]
