"""Every kind of extension point is one table: data sets, selection methods, codecs, models."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agac_jax import data, models
from agac_jax.codec import backends
from agac_jax.eval import faithfulness, results
from agac_jax.scoring import methods, settings
from configs.common import base_config


def test_the_sweeps_names_come_from_the_registries():
    config = base_config()
    assert methods.NAMES == settings.SELECTION_METHODS
    assert settings.POOLED_METHODS == tuple(m for m in methods.NAMES if methods.METHODS[m].pool is not None)
    assert results.METHODS == ("original", "codec") + methods.NAMES
    assert tuple(config.methods) == results.DEFAULT_SWEEP_METHODS == tuple(
        m for m in results.METHODS if m not in methods.METHODS or methods.METHODS[m].pool is None)
    assert config.dataset.name in data.DATASETS
    assert tuple(config.curves.rhos) == faithfulness.DEFAULT_RHOS
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


def test_config_files_load_without_jax():
    """A config is read before the launcher sets the platform up; one that imported JAX would start it first."""
    names = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "configs").glob("*.py")
                   if p.stem not in ("__init__", "common"))
    code = ("import importlib, sys\n"
            f"for name in {names!r}:\n"
            "    importlib.import_module('configs.' + name).get_config('')\n"
            "print(sorted(m for m in ('jax', 'flax', 'torch') if m in sys.modules))")
    run = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "[]"
