"""The audio-language models, by the kind of checkpoint directory they load from.

`MODELS[kind]` says how a directory of that kind is recognised and loaded; `model_kind(directory)`
tells which one a directory holds. Adding a model is a Flax module implementing the scoring
program's interface (`interface.py`), a loader, and an entry here; modules are imported when used.
"""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path
from typing import Any, Callable


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    """A model kind: the file that marks its directories, and where its module and loader live."""

    marker: str  # a file every directory of this kind holds
    module: str  # "package.module:Class", the Flax module
    loader: str  # "package.module:function", directory -> the loaded config and parameters

    def load(self, directory: str | Path, **kwargs: Any) -> Any:
        return _resolve(self.loader)(directory, **kwargs)

    def module_class(self) -> Callable[..., Any]:
        return _resolve(self.module)


def _resolve(path: str) -> Any:
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


MODELS: dict[str, ModelEntry] = {
    # A Hugging Face Qwen2-Audio directory (config.json, safetensors, tokenizer, processor files).
    "qwen2_audio": ModelEntry("config.json", "agac_jax.models.qwen2_audio.model:Qwen2AudioForConditionalGeneration",
                              "agac_jax.models.qwen2_audio.checkpoints:load_hf_directory"),
    # A PandaGPT directory converted from its released pickles (`checkpoints_pandagpt.convert_to_directory`).
    "pandagpt": ModelEntry("pandagpt_config.json", "agac_jax.models.pandagpt.model:PandaGPT",
                           "agac_jax.models.pandagpt.checkpoints:load_pandagpt_directory"),
}


def model_kind(directory: str | Path) -> str:
    """The key of `MODELS` whose marker file `directory` holds (PandaGPT's is checked first: a
    converted directory may also carry a tokenizer's config.json); FileNotFoundError otherwise."""
    directory = Path(directory)
    for kind in sorted(MODELS, key=lambda k: MODELS[k].marker == "config.json"):
        if (directory / MODELS[kind].marker).is_file():
            return kind
    markers = ", ".join(f"{entry.marker} ({kind})" for kind, entry in MODELS.items())
    raise FileNotFoundError(f"{directory} holds no model this project loads: expected one of {markers}")
