"""Loading and saving Qwen2-Audio parameters: Hugging Face directories and orbax checkpoints.

The conversion is one declarative table, `NAME_MAP`: a regular expression over the HF key, the Flax
parameter path it becomes, and the transform of the array (`LINEAR`: HF [out, in] -> Flax [in, out];
`CONV`: HF [out, in, k] -> Flax [k, in, out]; `SAME`). Export applies the table backwards.

HF directories hold `config.json` and `model.safetensors` or a sharded `model.safetensors.index.json`.
Keys in the transformers 4 layout (`language_model.model.*`, `audio_tower.*`, as the released
Qwen2-Audio-7B files have them) are renamed to the transformers 5 layout first (`LEGACY_PREFIXES`).
PyTorch pickles (`pytorch_model.bin`) run arbitrary code when read and are refused unless the caller
passes `allow_pickle=True`; `convert_pickles` turns a trusted directory's pickles into the
`model.safetensors` every launch tool reads. A directory that cannot be read (a truncated or corrupt
safetensors file, a `config.json` that is not a Qwen2-Audio config object) is a `CheckpointError`
naming the file, so the launch tools end with one `error:` line.

What is not Qwen2-Audio's own (reading the files, the streamed conversion, the layer-scan layout,
writing) is `agac_jax.models.hf_checkpoints`.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from agac_jax.models.config import Qwen2AudioConfig
# Besides what this module uses, it re-exports the shared names that other modules and tests read here
# (LEGACY_PREFIXES, LoadedModel, flatten, unflatten, scan_flat, unscan_flat, read_safetensors, ...).
from agac_jax.models.hf_checkpoints import (CONV, LEGACY_PREFIXES, LINEAR, SAME, CheckpointError, LoadedModel,
                                            NameTable, Params, PathLike, TensorSource, convert_state, export_state,
                                            flatten, modernize_key, param_shapes, read_config, read_safetensors,
                                            scan_flat, tensors_equal, unbox, unflatten, unscan_flat,
                                            write_hf_directory)
from agac_jax.models.qwen2_audio.model import init_params

# (HF key pattern, Flax path template with {0}, {1}... from the pattern's groups, transform).
NAME_MAP: tuple[tuple[str, str, str], ...] = (
    (r"model\.audio_tower\.conv(\d)\.weight", "audio_tower/conv{0}/kernel", CONV),
    (r"model\.audio_tower\.conv(\d)\.bias", "audio_tower/conv{0}/bias", SAME),
    (r"model\.audio_tower\.embed_positions\.weight", "audio_tower/embed_positions", SAME),
    (r"model\.audio_tower\.layers\.(\d+)\.self_attn\.(q|k|v|out)_proj\.weight",
     "audio_tower/layers_{0}/self_attn/{1}_proj/kernel", LINEAR),
    (r"model\.audio_tower\.layers\.(\d+)\.self_attn\.(q|v|out)_proj\.bias",
     "audio_tower/layers_{0}/self_attn/{1}_proj/bias", SAME),
    (r"model\.audio_tower\.layers\.(\d+)\.(fc1|fc2)\.weight", "audio_tower/layers_{0}/{1}/kernel", LINEAR),
    (r"model\.audio_tower\.layers\.(\d+)\.(fc1|fc2)\.bias", "audio_tower/layers_{0}/{1}/bias", SAME),
    (r"model\.audio_tower\.layers\.(\d+)\.(self_attn_layer_norm|final_layer_norm)\.weight",
     "audio_tower/layers_{0}/{1}/scale", SAME),
    (r"model\.audio_tower\.layers\.(\d+)\.(self_attn_layer_norm|final_layer_norm)\.bias",
     "audio_tower/layers_{0}/{1}/bias", SAME),
    (r"model\.audio_tower\.layer_norm\.weight", "audio_tower/layer_norm/scale", SAME),
    (r"model\.audio_tower\.layer_norm\.bias", "audio_tower/layer_norm/bias", SAME),
    (r"model\.multi_modal_projector\.linear\.weight", "multi_modal_projector/kernel", LINEAR),
    (r"model\.multi_modal_projector\.linear\.bias", "multi_modal_projector/bias", SAME),
    (r"model\.language_model\.embed_tokens\.weight", "language_model/embed_tokens/embedding", SAME),
    (r"model\.language_model\.layers\.(\d+)\.self_attn\.(q|k|v|o)_proj\.weight",
     "language_model/layers_{0}/self_attn/{1}_proj/kernel", LINEAR),
    (r"model\.language_model\.layers\.(\d+)\.self_attn\.(q|k|v)_proj\.bias",
     "language_model/layers_{0}/self_attn/{1}_proj/bias", SAME),
    (r"model\.language_model\.layers\.(\d+)\.mlp\.(gate|up|down)_proj\.weight",
     "language_model/layers_{0}/mlp/{1}_proj/kernel", LINEAR),
    (r"model\.language_model\.layers\.(\d+)\.(input_layernorm|post_attention_layernorm)\.weight",
     "language_model/layers_{0}/{1}/scale", SAME),
    (r"model\.language_model\.norm\.weight", "language_model/norm/scale", SAME),
    (r"lm_head\.weight", "lm_head/kernel", LINEAR),
)

NAMES = NameTable(NAME_MAP)
hf_to_flax_path = NAMES.hf_to_flax_path
flax_to_hf_key = NAMES.flax_to_hf_key

def expected_shapes(config: Qwen2AudioConfig) -> dict[str, tuple[int, ...]]:
    """Flax path -> shape of every parameter the model declares, without allocating any."""
    return param_shapes(init_params, config)


def convert_hf_state(state: Mapping[str, np.ndarray] | TensorSource, config: Qwen2AudioConfig,
                     shardings: Mapping[str, Any] | Any | None = None, block_bytes: int | None = None) -> Params:
    """HF tensors -> Flax parameter tree in `config.param_dtype`, checked against the model, streamed
    (`hf_checkpoints.convert_state`: names and shapes checked first, then leaf by leaf, on `shardings`
    when given, leaves over `block_bytes` block by block). Under `config.scan_layers` the decoder
    layers' leaves are stacked into `layers/layer/...` [num_hidden_layers, ...]. A tied config skips a
    stored `lm_head.weight`.

    Raises CheckpointError listing every missing, unexpected and mis-shaped key.
    """
    tied = config.text.tie_word_embeddings
    return convert_state(state, NAMES, expected_shapes(config.replace(scan_layers=False)), config.param_dtype,
                         model="model", shardings=shardings, block_bytes=block_bytes,
                         scan_layers=config.text.num_hidden_layers if config.scan_layers else None,
                         skip=(lambda key: key == "lm_head.weight") if tied else None)


def resolve_tied_head(config: Qwen2AudioConfig, state: Mapping[str, np.ndarray] | TensorSource) -> Qwen2AudioConfig:
    """Decides tying as transformers does for Qwen2-Audio.

    transformers' `Qwen2AudioForConditionalGeneration` declares no tied weights: its LM head is the
    checkpoint's `lm_head.weight` whatever `tie_word_embeddings` says. So a config that says "tied"
    with a stored head that differs from the embedding is loaded untied; a tied config without a
    stored head uses the embedding.
    """
    if not config.text.tie_word_embeddings:
        return config
    source = TensorSource.of(state)
    keys = {modernize_key(k): k for k in source.keys()}
    head = keys.get("lm_head.weight")
    embed = keys.get("model.language_model.embed_tokens.weight")
    if head is None or (embed is not None and tensors_equal(source, head, embed)):
        return config
    return config.replace(text=dataclasses.replace(config.text, tie_word_embeddings=False))


def flax_to_hf_state(params: Params) -> dict[str, np.ndarray]:
    """Flax parameter tree (unrolled or layer-scanned) -> HF state dict (transformers 5 names), numpy in
    the parameters' dtype (float32 or bfloat16).

    A tied model also gets `lm_head.weight` (a copy of the embedding), because transformers does not
    tie Qwen2-Audio's head and would otherwise initialise it at random.
    """
    state = export_state(params, NAMES)
    if "lm_head.weight" not in state:
        state["lm_head.weight"] = state["model.language_model.embed_tokens.weight"].copy()
    return state


def read_model_config(path: Path, **options: Any) -> Qwen2AudioConfig:
    """The model config in a directory's `config.json` (`options`: `Qwen2AudioConfig.from_hf_dict`'s
    dtypes and layer scan); CheckpointError naming the file when it is not JSON, not an object, or
    not a config the port supports."""
    return read_config(path, Qwen2AudioConfig.from_hf_dict, **options)


def convert_pickles(directory: PathLike) -> Path:
    """Writes `model.safetensors` beside a directory's `pytorch_model*.bin` (read as float32 with
    `torch.load(weights_only=True)`); only for pickles you trust. Returns the file written."""
    from safetensors.numpy import save_file

    directory = Path(directory)
    target = directory / "model.safetensors"
    save_file(_read_pickle(directory, allow_pickle=True), str(target), metadata={"format": "pt"})
    return target


def _read_pickle(directory: Path, allow_pickle: bool) -> dict[str, np.ndarray]:
    bins = sorted(directory.glob("pytorch_model*.bin"))
    if not bins:
        raise FileNotFoundError(
            f"{directory} has neither model.safetensors nor model.safetensors.index.json nor pytorch_model.bin; "
            "expected a Hugging Face Qwen2-Audio directory")
    if not allow_pickle:
        raise CheckpointError(
            f"{directory} holds only PyTorch pickle weights ({bins[0].name}), which can run code when read, and "
            "the launch tools read safetensors only. If you trust the file, convert it once: python -c \"from "
            f"agac_jax.models.qwen2_audio import checkpoints; checkpoints.convert_pickles('{directory}')\" (it writes "
            "model.safetensors beside it); then rerun")
    import torch

    state = {}
    for path in bins:
        for key, value in torch.load(path, map_location="cpu", weights_only=True).items():
            state[key] = value.float().numpy()
    return state


def load_hf_directory(directory: PathLike, dtype: Any = jnp.float32, allow_pickle: bool = False, *,
                      param_dtype: Any = jnp.float32, scan_layers: bool = False,
                      shardings: Callable[[Qwen2AudioConfig], Any] | None = None) -> LoadedModel:
    """Reads a Hugging Face Qwen2-Audio directory into a config and Flax parameters, tensor by tensor.

    dtype / param_dtype: compute and parameter dtypes ('float32' | 'bfloat16' or jnp dtypes); the
    parameters are cast to `param_dtype` one tensor at a time. scan_layers: the decoder layers'
    parameters are stacked for the layer scan. shardings: called with the final config (tying
    resolved), returns the parameter tree's NamedShardings; each leaf is then placed on its sharding
    as it is read (`convert_hf_state`), and host memory holds a few tensors at most. None: host numpy.
    """
    directory = Path(directory)
    config_path = directory / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"{config_path} not found: --checkpoint must be a Hugging Face model directory")
    config = read_model_config(config_path, dtype=dtype, param_dtype=param_dtype, scan_layers=scan_layers)
    source = TensorSource.from_directory(directory)
    if not len(source):
        source = TensorSource(state=_read_pickle(directory, allow_pickle))
    config = resolve_tied_head(config, source)
    params = convert_hf_state(source, config, None if shardings is None else shardings(config))
    generation = {}
    if (directory / "generation_config.json").exists():
        with open(directory / "generation_config.json") as f:
            generation = json.load(f)
    return LoadedModel(config, params, generation, directory)


def save_hf_directory(
    directory: PathLike,
    config: Qwen2AudioConfig,
    params: Params,
    generation_config: Mapping[str, Any] | None = None,
    extra_files_from: PathLike | None = None,
) -> None:
    """Writes config.json, model.safetensors (and generation_config.json) that transformers loads.

    `extra_files_from`: a directory whose tokenizer and preprocessor files are copied along.
    """
    write_hf_directory(directory, config.to_hf_dict(), flax_to_hf_state(params), generation_config, extra_files_from)


def save_orbax(directory: PathLike, params: Params, config: Qwen2AudioConfig) -> None:
    """Saves the parameters with orbax (directory `params/`) and the HF config beside them."""
    import orbax.checkpoint as ocp

    directory = Path(directory).absolute()
    directory.mkdir(parents=True, exist_ok=True)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(directory / "params", unbox(params), force=True)
    with open(directory / "config.json", "w") as f:
        json.dump(config.to_hf_dict(), f, indent=2)


def restore_orbax(directory: PathLike, dtype: Any = jnp.float32, *, param_dtype: Any = jnp.float32,
                  scan_layers: bool = False, shardings: Callable[[Qwen2AudioConfig], Any] | None = None
                  ) -> tuple[Qwen2AudioConfig, Params]:
    """Restores what `save_orbax` wrote: (config, parameters), checked against the config's shapes.

    The target is abstract (`jax.ShapeDtypeStruct`s in `param_dtype`, with the shardings that
    `shardings(config)` returns, or the default device's): orbax reads each array straight into its
    shards, cast to `param_dtype`, without a host copy of the whole tree. The checkpoint must hold the
    layout of `scan_layers` (as saved).
    """
    import orbax.checkpoint as ocp

    directory = Path(directory).absolute()
    config = Qwen2AudioConfig.from_json_file(directory / "config.json", dtype=dtype, param_dtype=param_dtype,
                                             scan_layers=scan_layers)
    abstract = jax.eval_shape(lambda: unbox(init_params(config, jax.random.key(0))))
    if shardings is None:
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        target_shardings = jax.tree_util.tree_map(lambda _: device, abstract)
    else:
        target_shardings = shardings(config)
    target = jax.tree_util.tree_map(lambda leaf, sh: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sh),
                                    abstract, target_shardings)
    with ocp.StandardCheckpointer() as ckptr:
        params = ckptr.restore(directory / "params", target)
    return config, params
