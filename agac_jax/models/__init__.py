"""The audio-language model families, each a package, chosen in one place by `model.kind`.

`MODELS[kind]` says how a family's checkpoint directories are told apart (config.json's "model_type",
or a converted checkpoint's own config file), its adapter (`interface.ModelAdapter`: what the model-agnostic `scoring.Scorer` holds), its parity check
against the family's own PyTorch definition and its random tiny directories. `model_kind(directory)`
tells which family a directory holds; `load_adapter(directory, kind)` loads it. Adding a family is a
package beside `qwen2_audio/` and `pandagpt/` and an entry here (WORKSPACE.md, "Adding a model");
families are imported when used.
"""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path
from typing import Any


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    """A model family: how its directories and config files are told apart, and where its pieces live."""

    adapter: str  # "package.module:Class", the `interface.ModelAdapter` with its `load` classmethod
    parity: str  # "package.module:function", directory -> a parity report against PyTorch
    random_init: str  # "package.module:function", (config json, seed) -> a random tiny directory
    model_type: str = ""  # the config.json "model_type" of its Hugging Face directories
    marker: str = ""  # or: a file its directories hold instead (a converted checkpoint's own config)
    config_key: str = ""  # with `marker`: a top-level key of that config file

    def adapter_class(self) -> Any:
        return resolve(self.adapter)


def resolve(path: str) -> Any:
    """The object a "package.module:name" path names (its module imported now)."""
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


MODELS: dict[str, ModelEntry] = {
    # A Hugging Face Qwen2-Audio directory (config.json, safetensors, tokenizer, processor files).
    "qwen2_audio": ModelEntry("agac_jax.models.qwen2_audio.adapter:Qwen2AudioAdapter",
                              "agac_jax.models.qwen2_audio.parity:run_parity",
                              "agac_jax.models.qwen2_audio.parity:random_init_directory", model_type="qwen2_audio"),
    # A PandaGPT directory converted from its released files (`pandagpt.checkpoints.convert_to_directory`).
    "pandagpt": ModelEntry("agac_jax.models.pandagpt.adapter:PandaGPTAdapter",
                           "agac_jax.models.pandagpt.parity:run_parity",
                           "agac_jax.models.pandagpt.parity:random_init_directory",
                           marker="pandagpt_config.json", config_key="imagebind"),
    # A Hugging Face Audio Flamingo 3 directory (config.json, safetensors shards, tokenizer, processor files).
    "audio_flamingo3": ModelEntry("agac_jax.models.audio_flamingo3.adapter:AudioFlamingo3Adapter",
                                  "agac_jax.models.audio_flamingo3.parity:run_parity",
                                  "agac_jax.models.audio_flamingo3.parity:random_init_directory",
                                  model_type="audioflamingo3"),
    # A Hugging Face Voxtral directory (config.json, safetensors shards, tekken.json).
    "voxtral": ModelEntry("agac_jax.models.voxtral.adapter:VoxtralAdapter", "agac_jax.models.voxtral.parity:run_parity",
                          "agac_jax.models.voxtral.parity:random_init_directory", model_type="voxtral"),
}
MODEL_KINDS = tuple(MODELS)


def _kind_of_config(config: dict, where: Path) -> str:
    model_type = config.get("model_type")
    for kind, entry in MODELS.items():
        if (entry.model_type and model_type == entry.model_type) or (entry.config_key and entry.config_key in config):
            return kind
    known = ", ".join(f"{kind} (model_type {e.model_type!r})" if e.model_type else f"{kind} ({e.marker})"
                      for kind, e in MODELS.items())
    raise ValueError(f"{where} is no model this project ports (model_type {model_type!r}); it ports {known}")


def model_kind(path: str | Path) -> str:
    """The family (`MODELS` key) of a model directory or of a family's config json: a directory's
    marker file (a converted checkpoint's own config) first, else its config.json's "model_type"; a
    json file by its "model_type" or a family's `config_key`. FileNotFoundError for a directory with
    neither, ValueError for a model no family ports."""
    import json

    path = Path(path)
    if path.is_dir():
        for kind, entry in MODELS.items():
            if entry.marker and (path / entry.marker).is_file():
                return kind
        if not (path / "config.json").is_file():
            markers = ", ".join(["config.json"] + [e.marker for e in MODELS.values() if e.marker])
            raise FileNotFoundError(f"{path} holds no model this project loads: expected one of {markers}")
        path = path / "config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"{path} is not a readable model config json: {error}") from error
    if not isinstance(config, dict):
        raise ValueError(f"{path} is not a model config json (not an object)")
    return _kind_of_config(config, path)

def entry(kind: str) -> ModelEntry:
    """The registry entry of `kind`; ValueError naming the kinds for an unknown one."""
    if kind not in MODELS:
        raise ValueError(f"model kind {kind!r} is not one of {MODEL_KINDS}")
    return MODELS[kind]


def load_adapter(directory: str | Path, kind: str = "", **options: Any) -> tuple[Any, Any]:
    """(adapter, params) of the checkpoint in `directory`; `kind` "" : `model_kind(directory)`. `options`
    go to the family's `load` (the mesh and rules, and the family's own options)."""
    kind = kind or model_kind(directory)
    return entry(kind).adapter_class().load(directory, **options)
