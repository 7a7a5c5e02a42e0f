"""Every kind of extension point is one table: data sets, selection methods, codecs, models."""

from __future__ import annotations

import json

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
    assert models.MODELS["qwen2_audio"].module_class().__name__ == "Qwen2AudioForConditionalGeneration"
    assert models.MODELS["pandagpt"].module_class().__name__ == "PandaGPT"
