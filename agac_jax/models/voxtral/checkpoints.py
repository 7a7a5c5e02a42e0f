"""Loading and saving Voxtral parameters: Hugging Face directories as they are downloaded.

One declarative table, `NAME_MAP`: (HF key pattern in the transformers 5 layout, Flax path template with
{0}, {1}... from the pattern's groups, transform), read forwards to load and backwards to save. The
transforms are `hf_checkpoints`' (`LINEAR`: [out, in] -> [in, out]; `CONV`: [out, in, k] -> [k, in, out];
`SAME`). Keys in the transformers 4 layout, as the released Voxtral-Mini-3B-2507 shards hold them
(`audio_tower.*`, `language_model.model.*`, `language_model.lm_head.*`, `multi_modal_projector.*`), are
renamed first by `hf_checkpoints.modernize_key` (transformers maps `voxtral` to the same renamings).

A directory holds `config.json`, `model.safetensors` or the shards listed by
`model.safetensors.index.json`, `generation_config.json`, `tekken.json` and `preprocessor_config.json`.
The Mistral-native files of the release (`consolidated.safetensors`, `params.json`) are not read.
Tensors are read one at a time from the memory-mapped shards (`hf_checkpoints.TensorSource`), checked by
name and shape before any data is read, then cast and placed leaf by leaf (on a sharding when one is
given; leaves over 64 MiB block by block of their first axis: `hf_checkpoints.convert_state`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

import jax.numpy as jnp
import numpy as np

# modernize_key and legacy_key are read here by tests and the parity check.
from agac_jax.models.hf_checkpoints import (CONV, INDEX_FILE, LINEAR, SAME, CheckpointError, LoadedModel, NameTable,
                                            Params, PathLike, TensorSource, convert_state, export_state, legacy_key,
                                            modernize_key, param_shapes, read_config, read_generation_config,
                                            write_hf_directory)
from agac_jax.models.voxtral.config import VoxtralConfig
from agac_jax.models.voxtral.model import init_params

_ENC = r"model\.audio_tower\."
_DEC = r"model\.language_model\."
NAME_MAP: tuple[tuple[str, str, str], ...] = (
    (_ENC + r"conv(\d)\.weight", "audio_tower/conv{0}/kernel", CONV),
    (_ENC + r"conv(\d)\.bias", "audio_tower/conv{0}/bias", SAME),
    (_ENC + r"embed_positions\.weight", "audio_tower/embed_positions", SAME),
    (_ENC + r"layers\.(\d+)\.self_attn\.(q|k|v|out)_proj\.weight", "audio_tower/layers_{0}/self_attn/{1}_proj/kernel",
     LINEAR),
    (_ENC + r"layers\.(\d+)\.self_attn\.(q|v|out)_proj\.bias", "audio_tower/layers_{0}/self_attn/{1}_proj/bias", SAME),
    (_ENC + r"layers\.(\d+)\.(fc1|fc2)\.weight", "audio_tower/layers_{0}/{1}/kernel", LINEAR),
    (_ENC + r"layers\.(\d+)\.(fc1|fc2)\.bias", "audio_tower/layers_{0}/{1}/bias", SAME),
    (_ENC + r"layers\.(\d+)\.(self_attn_layer_norm|final_layer_norm)\.weight", "audio_tower/layers_{0}/{1}/scale",
     SAME),
    (_ENC + r"layers\.(\d+)\.(self_attn_layer_norm|final_layer_norm)\.bias", "audio_tower/layers_{0}/{1}/bias", SAME),
    (_ENC + r"layer_norm\.weight", "audio_tower/layer_norm/scale", SAME),
    (_ENC + r"layer_norm\.bias", "audio_tower/layer_norm/bias", SAME),
    (r"model\.multi_modal_projector\.(linear_1|linear_2)\.weight", "multi_modal_projector/{0}/kernel", LINEAR),
    (_DEC + r"embed_tokens\.weight", "language_model/embed_tokens/embedding", SAME),
    (_DEC + r"layers\.(\d+)\.self_attn\.(q|k|v|o)_proj\.weight", "language_model/layers_{0}/self_attn/{1}_proj/kernel",
     LINEAR),
    (_DEC + r"layers\.(\d+)\.mlp\.(gate|up|down)_proj\.weight", "language_model/layers_{0}/mlp/{1}_proj/kernel",
     LINEAR),
    (_DEC + r"layers\.(\d+)\.(input_layernorm|post_attention_layernorm)\.weight", "language_model/layers_{0}/{1}/scale",
     SAME),
    (_DEC + r"norm\.weight", "language_model/norm/scale", SAME),
    (r"lm_head\.weight", "lm_head/kernel", LINEAR),
)
NAMES = NameTable(NAME_MAP)


def expected_shapes(config: VoxtralConfig) -> dict[str, tuple[int, ...]]:
    """Flax path -> shape of every parameter the model declares, nothing allocated."""
    return param_shapes(init_params, config)


def convert_hf_state(state: Mapping[str, np.ndarray] | TensorSource, config: VoxtralConfig,
                     shardings: Mapping[str, Any] | Any | None = None, block_bytes: int | None = None) -> Params:
    """HF tensors -> Flax parameter tree in `config.param_dtype`, checked, then streamed leaf by leaf
    (`hf_checkpoints.convert_state`).

    With `shardings` (a tree or flat {Flax path: NamedSharding}) each leaf is placed on its sharding as it
    is read; else it stays a host numpy array. A leaf over `block_bytes` is filled block by block of its
    first (Flax-layout) axis from slices of the memory-mapped tensor (the embedding and LM head of the 3B:
    131072 x 3072). CheckpointError listing every missing, unexpected and mis-shaped key.
    """
    return convert_state(state, NAMES, expected_shapes(config), config.param_dtype, model="Voxtral",
                         shardings=shardings, block_bytes=block_bytes)


def flax_to_hf_state(params: Params, legacy: bool = False) -> dict[str, np.ndarray]:
    """Flax parameters -> HF state dict, numpy in the parameters' dtype: transformers 5 names, or with
    `legacy` the transformers 4 names of the released shards (`legacy_key`)."""
    return export_state(params, NAMES, legacy_key if legacy else None)


def read_model_config(path: Path, **options: Any) -> VoxtralConfig:
    """The config in a directory's config.json; CheckpointError naming the file when it is not JSON, not an
    object, or not a Voxtral config the port supports."""
    return read_config(path, VoxtralConfig.from_hf_dict, **options)


def load_hf_directory(directory: PathLike, dtype: Any = jnp.float32, *, param_dtype: Any = jnp.float32,
                      scan_layers: bool = False,
                      shardings: Callable[[VoxtralConfig], Any] | None = None) -> LoadedModel:
    """Reads a Hugging Face Voxtral directory (config.json, safetensors shards) into a config and Flax
    parameters, tensor by tensor (`convert_hf_state`). `shardings(config)` returns the parameter tree's
    NamedShardings; None: host numpy arrays."""
    directory = Path(directory)
    config_path = directory / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"{config_path} not found: expected a Hugging Face Voxtral directory")
    config = read_model_config(config_path, dtype=dtype, param_dtype=param_dtype, scan_layers=scan_layers)
    source = TensorSource.from_directory(directory)
    if not len(source):
        raise CheckpointError(f"{directory} has neither model.safetensors nor {INDEX_FILE} (the Mistral-native "
                              "consolidated.safetensors is not read)")
    params = convert_hf_state(source, config, None if shardings is None else shardings(config))
    return LoadedModel(config, params, read_generation_config(directory), directory)


def save_hf_directory(directory: PathLike, config: VoxtralConfig, params: Params,
                      generation_config: Mapping[str, Any] | None = None, extra_files_from: PathLike | None = None,
                      max_shard_bytes: int | None = None, legacy: bool = False,
                      hf_config: Mapping[str, Any] | None = None) -> None:
    """Writes config.json and the weights transformers loads: one `model.safetensors`, or with
    `max_shard_bytes` shards `model-0000k-of-0000n.safetensors` and the index (the released layout);
    `legacy`: transformers 4 key names, as the released shards have them. `hf_config`: the config.json
    content to write instead of `config.to_hf_dict()`. `extra_files_from`: a directory whose tokenizer and
    processor files (tekken.json, preprocessor_config.json, ...) are copied along."""
    content = dict(hf_config) if hf_config is not None else config.to_hf_dict()
    write_hf_directory(directory, content, flax_to_hf_state(params, legacy=legacy), generation_config,
                       extra_files_from, max_shard_bytes)
