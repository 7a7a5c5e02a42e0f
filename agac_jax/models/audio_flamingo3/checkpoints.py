"""Loading and saving Audio Flamingo 3 parameters: Hugging Face directories as they are downloaded.

One declarative table, `NAME_MAP`: (HF key pattern, Flax path template, transform), read forwards to
load and backwards to save. It is Qwen2-Audio's table (`qwen2_audio.checkpoints.NAME_MAP`: the same
encoder, decoder and head names) with the projector's one `linear` replaced by AF3's `linear_1` and
`linear_2`. Keys in the transformers 4 layout (`language_model.model.*`, `audio_tower.*`,
`multi_modal_projector.*`, as the conversion script of the release saved them) are renamed first, by
`hf_checkpoints.modernize_key` (transformers maps `audioflamingo3` to Qwen2-Audio's renamings). That is
also the layout transformers 5 itself writes for this model (`save_pretrained` reverses the renaming),
so `save_hf_directory` writes it too (`hf_checkpoints.legacy_key`).

A directory holds `config.json`, `model.safetensors` or shards listed by `model.safetensors.index.json`,
and `generation_config.json`. Tensors are read one at a time from the memory-mapped shards
(`hf_checkpoints.TensorSource`), checked by name and shape before any data is read, cast and placed
(on a sharding, when given) leaf by leaf; large leaves block by block (`hf_checkpoints.convert_state`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

import jax.numpy as jnp
import numpy as np

from agac_jax.models.audio_flamingo3.config import AudioFlamingo3Config
from agac_jax.models.audio_flamingo3.model import init_params
from agac_jax.models.hf_checkpoints import (INDEX_FILE, LINEAR, SAME, CheckpointError, LoadedModel, NameTable, Params,
                                            PathLike, TensorSource, convert_state, export_state, legacy_key,
                                            param_shapes, read_config, read_generation_config, write_hf_directory)
from agac_jax.models.qwen2_audio import checkpoints as q2

_PROJECTOR = "multi_modal_projector"
NAME_MAP: tuple[tuple[str, str, str], ...] = tuple(
    entry for entry in q2.NAME_MAP if _PROJECTOR not in entry[1]) + (
    (r"model\.multi_modal_projector\.(linear_1|linear_2)\.weight", "multi_modal_projector/{0}/kernel", LINEAR),
    (r"model\.multi_modal_projector\.(linear_1|linear_2)\.bias", "multi_modal_projector/{0}/bias", SAME),
)
NAMES = NameTable(NAME_MAP)


def expected_shapes(config: AudioFlamingo3Config) -> dict[str, tuple[int, ...]]:
    """Flax path -> shape of every parameter the model declares (unrolled layers), nothing allocated."""
    return param_shapes(init_params, config.replace(scan_layers=False))


def convert_hf_state(state: Mapping[str, np.ndarray] | TensorSource, config: AudioFlamingo3Config,
                     shardings: Mapping[str, Any] | Any | None = None, block_bytes: int | None = None) -> Params:
    """HF tensors -> Flax parameter tree in `config.param_dtype`, checked, streamed leaf by leaf
    (`hf_checkpoints.convert_state`): with `shardings` (tree or flat {path: sharding} of the loaded layout)
    each leaf is placed on its sharding as it is read, else kept as host numpy; a leaf over `block_bytes`
    is filled block by block of its first axis; under `config.scan_layers` decoder layers are stacked
    into `language_model/layers/layer/...`. CheckpointError listing every missing, unexpected and
    mis-shaped key.
    """
    return convert_state(state, NAMES, expected_shapes(config), config.param_dtype, model="Audio Flamingo 3",
                         shardings=shardings, block_bytes=block_bytes,
                         scan_layers=config.text.num_hidden_layers if config.scan_layers else None)


def flax_to_hf_state(params: Params, saved_names: bool = True) -> dict[str, np.ndarray]:
    """Flax parameters (unrolled or layer-scanned) -> HF state dict, numpy: with the names transformers
    writes to files (the transformers 4 layout, `legacy_key`), or with `saved_names=False` its module
    names (`model.audio_tower.*`, ...)."""
    return export_state(params, NAMES, legacy_key if saved_names else None)


def read_model_config(path: Path, **options: Any) -> AudioFlamingo3Config:
    """The config in a directory's `config.json`; CheckpointError naming the file when it is not JSON,
    not an object, or not an AF3 config the port supports."""
    return read_config(path, AudioFlamingo3Config.from_hf_dict, **options)


def load_hf_directory(directory: PathLike, dtype: Any = jnp.float32, *, param_dtype: Any = jnp.float32,
                      scan_layers: bool = False,
                      shardings: Callable[[AudioFlamingo3Config], Any] | None = None) -> LoadedModel:
    """Reads a Hugging Face Audio Flamingo 3 directory (config.json, safetensors shards) into a config
    and Flax parameters, tensor by tensor (see `convert_hf_state`). `shardings(config)` returns the
    parameter tree's NamedShardings; None: host numpy arrays."""
    directory = Path(directory)
    config_path = directory / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"{config_path} not found: expected a Hugging Face Audio Flamingo 3 directory")
    config = read_model_config(config_path, dtype=dtype, param_dtype=param_dtype, scan_layers=scan_layers)
    source = TensorSource.from_directory(directory)
    if not len(source):
        raise CheckpointError(f"{directory} has neither model.safetensors nor {INDEX_FILE}")
    params = convert_hf_state(source, config, None if shardings is None else shardings(config))
    return LoadedModel(config, params, read_generation_config(directory), directory)


def save_hf_directory(directory: PathLike, config: AudioFlamingo3Config, params: Params,
                      generation_config: Mapping[str, Any] | None = None, extra_files_from: PathLike | None = None,
                      max_shard_bytes: int | None = None) -> None:
    """Writes config.json and the weights under the names transformers writes (`legacy_key`): one
    `model.safetensors`, or with `max_shard_bytes` shards `model-0000k-of-0000n.safetensors` and
    `model.safetensors.index.json` (the released layout). `extra_files_from`: a directory whose tokenizer
    and processor files are copied along."""
    write_hf_directory(directory, config.to_hf_dict(), flax_to_hf_state(params), generation_config,
                       extra_files_from, max_shard_bytes)
