"""launch.parity's PandaGPT branch (agac_jax/models/pandagpt/parity.py): the inverse name maps and the check on
a random tiny PandaGPT (configs/tiny_pandagpt.json)."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np

from agac_jax.models.pandagpt.checkpoints import convert_pandagpt, load_pandagpt_directory
from agac_jax import models
from agac_jax.models.pandagpt.parity import random_init_directory, run_parity, torch_states

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny_pandagpt.json"


def test_random_tiny_pandagpt_passes_parity(tmp_path):
    directory = random_init_directory(TINY, seed=1, out=tmp_path / "model")
    assert models.model_kind(directory) == models.model_kind(TINY) == "pandagpt"
    config, params = load_pandagpt_directory(directory)
    imagebind, llama, proj = torch_states(params)  # the inverse maps convert back to the same tree
    back = convert_pandagpt(imagebind, llama, {f"llama_proj.{k}": v for k, v in proj.items()}, config)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), back, params)
    clip = np.random.default_rng(0).standard_normal(4 * 16000).astype(np.float32) * 0.1
    report = run_parity(directory, [clip], ["is there a dog in the video ?"], max_new_tokens=3)
    assert report.ok, report.table()
    assert [c.name for c in report.comparisons] == ["audio_vectors", "video_vector", "av_token", "logits",
                                                   "greedy_tokens"]
