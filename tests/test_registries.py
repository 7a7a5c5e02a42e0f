"""Every kind of extension point is one table: data sets, selection methods, codecs, models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agac_jax import data, models
from agac_jax.codec import backends
from agac_jax.eval import results
from agac_jax.scoring import methods
from configs.common import base_config


def test_the_sweeps_names_come_from_the_registries():
    config = base_config()
    assert results.METHODS == ("original", "codec") + methods.NAMES
    assert tuple(config.methods) == results.DEFAULT_SWEEP_METHODS == tuple(
        m for m in results.METHODS if m not in methods.METHODS or methods.METHODS[m].pool is None)
    assert config.dataset.name in data.DATASETS
    assert config.codec.backend in backends.BACKENDS


def test_an_unknown_name_is_refused_naming_the_choices():
    section = base_config().dataset
    section.name = "audiocaps"
    with pytest.raises(ValueError, match="clotho_aqa"):
        data.load_dataset(section)
    with pytest.raises(ValueError, match="segment_topk"):
        methods.check_method("loudest")


def test_model_kind_is_read_from_the_directory(tmp_path):
    (tmp_path / "qwen").mkdir()
    (tmp_path / "qwen" / "config.json").write_text(json.dumps({"model_type": "qwen2_audio"}))
    (tmp_path / "panda").mkdir()
    (tmp_path / "panda" / "pandagpt_config.json").write_text("{}")
    (tmp_path / "panda" / "config.json").write_text("{}")
    assert models.model_kind(tmp_path / "qwen") == "qwen2_audio"
    assert models.model_kind(tmp_path / "panda") == "pandagpt"
    with pytest.raises(FileNotFoundError, match="pandagpt_config.json"):
        models.model_kind(tmp_path)
    config_json = tmp_path / "tiny.json"
    config_json.write_text(json.dumps({"imagebind": {}, "llama": {}}))
    assert models.model_kind(config_json) == "pandagpt"
    assert models.model_kind(Path(__file__).parents[1] / "configs" / "tiny_qwen2audio_random.json") == "qwen2_audio"
    for kind, entry in models.MODELS.items():  # every name the registry gives resolves
        assert entry.adapter_class().kind == kind
        assert callable(models.resolve(entry.parity)) and callable(models.resolve(entry.random_init))
    with pytest.raises(ValueError, match="not one of"):
        models.entry("whisper")
