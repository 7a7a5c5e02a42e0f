"""Loading and saving Voxtral parameters: Hugging Face directories as they are downloaded.

One declarative table, `NAME_MAP`: (HF key pattern in the transformers 5 layout, Flax path template with
{0}, {1}... from the pattern's groups, transform), read forwards to load and backwards to save. The
transforms are Qwen2-Audio's (`LINEAR`: [out, in] -> [in, out]; `CONV`: [out, in, k] -> [k, in, out];
`SAME`). Keys in the transformers 4 layout, as the released Voxtral-Mini-3B-2507 shards hold them
(`audio_tower.*`, `language_model.model.*`, `language_model.lm_head.*`, `multi_modal_projector.*`), are
renamed first by Qwen2-Audio's `modernize_key` (transformers maps `voxtral` to the same renamings).

A directory holds `config.json`, `model.safetensors` or the shards listed by
`model.safetensors.index.json`, `generation_config.json`, `tekken.json` and `preprocessor_config.json`.
The Mistral-native files of the release (`consolidated.safetensors`, `params.json`) are not read.
Tensors are read one at a time from the memory-mapped shards (`qwen2_audio.checkpoints.TensorSource`),
checked by name and shape before any data is read, then cast and placed leaf by leaf (on a sharding when
one is given; leaves over 64 MiB block by block of their first axis).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from agac_jax.models.qwen2_audio import checkpoints as q2
from agac_jax.models.qwen2_audio.checkpoints import (CONV, LEGACY_PREFIXES, LINEAR, SAME, CheckpointError, LoadedModel,
                                                     TensorSource, flatten, modernize_key, unflatten)
from agac_jax.models.voxtral.config import VoxtralConfig
from agac_jax.models.voxtral.model import init_params

PathLike = str | os.PathLike[str]
Params = dict[str, Any]

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
_COMPILED = tuple((re.compile(p + r"\Z"), t, f) for p, t, f in NAME_MAP)
_TRANSFORMS = {SAME: lambda w: w, LINEAR: lambda w: w.T, CONV: lambda w: w.transpose(2, 1, 0)}
INDEX_FILE = "model.safetensors.index.json"


def hf_to_flax_path(key: str) -> tuple[str, str] | None:
    """HF key (transformers 5 layout) -> (Flax path 'a/b/c', transform), or None."""
    for pattern, template, transform in _COMPILED:
        m = pattern.match(key)
        if m:
            return template.format(*m.groups()), transform
    return None


def flax_to_hf_key(path: str) -> tuple[str, str]:
    """Flax path -> (HF key, transform): `NAME_MAP` read backwards."""
    for pattern, template, transform in NAME_MAP:
        regex = re.escape(template)
        for i in range(template.count("{")):
            regex = regex.replace(re.escape("{%d}" % i), r"([^/]+)")
        m = re.fullmatch(regex, path)
        if m:
            key = pattern.replace("\\.", ".")
            for group in m.groups():
                key = re.sub(r"\([^)]*\)", group, key, count=1)
            return key, transform
    raise KeyError(f"no HF name for Flax parameter {path!r}")


def legacy_key(key: str) -> str:
    """A transformers 5 key -> the transformers 4 name the released shards use (`modernize_key` inverted)."""
    for old, new in LEGACY_PREFIXES:
        if key.startswith(new):
            return old + key[len(new):]
    return key


def expected_shapes(config: VoxtralConfig) -> dict[str, tuple[int, ...]]:
    """Flax path -> shape of every parameter the model declares, nothing allocated."""
    abstract = jax.eval_shape(lambda: q2._unbox(init_params(config, jax.random.key(0))))
    return {path: tuple(leaf.shape) for path, leaf in flatten(abstract).items()}


def _plan(source: TensorSource, config: VoxtralConfig) -> tuple[dict[str, tuple[str, str]], dict]:
    """{Flax path: (HF key, transform)} from names and shapes only; CheckpointError listing every missing,
    unexpected and mis-shaped key."""
    want = expected_shapes(config)
    plan, unexpected, misshaped, misshaped_paths = {}, [], [], set()
    for raw_key in source.keys():
        mapped = hf_to_flax_path(modernize_key(raw_key))
        if mapped is None or mapped[0] not in want:
            unexpected.append(raw_key)
            continue
        path, transform = mapped
        if q2._flax_shape(source.shape(raw_key), transform) != want[path]:
            misshaped.append(f"{raw_key}: checkpoint {source.shape(raw_key)}, model expects "
                             f"{q2._flax_shape(want[path], transform)}")
            misshaped_paths.add(path)
            continue
        plan[path] = (raw_key, transform)
    missing = sorted(flax_to_hf_key(p)[0] for p in want if p not in plan and p not in misshaped_paths)
    if missing or unexpected or misshaped:
        lines = [f"checkpoint does not match the Voxtral config ({len(missing)} missing, {len(unexpected)} "
                 f"unexpected, {len(misshaped)} mis-shaped keys)"]
        lines += [f"  missing: {k}" for k in missing]
        lines += [f"  unexpected: {k}" for k in sorted(unexpected)]
        lines += [f"  mis-shaped: {k}" for k in misshaped]
        raise CheckpointError("\n".join(lines))
    return plan, want


def convert_hf_state(state: Mapping[str, np.ndarray] | TensorSource, config: VoxtralConfig,
                     shardings: Mapping[str, Any] | Any | None = None, block_bytes: int = q2._BLOCK_BYTES) -> Params:
    """HF tensors -> Flax parameter tree in `config.param_dtype`, checked, then streamed leaf by leaf.

    With `shardings` (a tree or flat {Flax path: NamedSharding}) each leaf is placed on its sharding as it
    is read; else it stays a host numpy array. A leaf over `block_bytes` is filled block by block of its
    first (Flax-layout) axis from slices of the memory-mapped tensor (the embedding and LM head of the 3B:
    131072 x 3072).
    """
    source = state if isinstance(state, TensorSource) else TensorSource(state=state)
    plan, want = _plan(source, config)
    shardings = None if shardings is None else flatten(shardings)
    dtype = jnp.dtype(config.param_dtype)
    flat: dict[str, Any] = {}
    for path, (raw_key, transform) in plan.items():
        shape = want[path]
        sharding = None if shardings is None else shardings[path]
        if np.prod(shape) * dtype.itemsize <= block_bytes:
            host = q2._convert(source.read(raw_key), transform, dtype)
            flat[path] = host if sharding is None else jax.block_until_ready(jax.device_put(host, sharding))
            continue
        flat[path] = np.empty(shape, dtype) if sharding is None else q2._zeros_fn(shape, dtype, sharding)()
        rows = max(1, block_bytes // max(1, int(np.prod(shape[1:])) * dtype.itemsize))
        for start in range(0, shape[0], rows):
            index = (slice(start, min(start + rows, shape[0])),) + tuple(slice(None) for _ in shape[1:])
            piece = q2._convert(source.read(raw_key, q2._hf_index(transform, index)), transform, dtype)
            if sharding is None:
                flat[path][index] = piece
            else:
                starts = tuple(np.int32(i) for i in (start,) + (0,) * (len(shape) - 1))
                flat[path] = jax.block_until_ready(q2._update_fn(sharding)(flat[path], piece, starts))
            del piece
    return unflatten(flat)


def flax_to_hf_state(params: Params, legacy: bool = False) -> dict[str, np.ndarray]:
    """Flax parameters -> HF state dict, numpy in the parameters' dtype: transformers 5 names, or with
    `legacy` the transformers 4 names of the released shards."""
    state = {}
    for path, value in flatten(q2._unbox(params)).items():
        key, transform = flax_to_hf_key(path)
        state[legacy_key(key) if legacy else key] = np.ascontiguousarray(_TRANSFORMS[transform](np.asarray(value)))
    return state


def read_model_config(path: Path, **options: Any) -> VoxtralConfig:
    """The config in a directory's config.json; CheckpointError naming the file when it is not JSON, not an
    object, or not a Voxtral config the port supports."""
    settings = q2._read_json_object(path)
    try:
        return VoxtralConfig.from_hf_dict(settings, **options)
    except (ValueError, TypeError) as error:
        raise CheckpointError(f"{path}: {error}") from error


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
    generation = {}
    if (directory / "generation_config.json").exists():
        generation = q2._read_json_object(directory / "generation_config.json")
    return LoadedModel(config, params, generation, directory)


def save_hf_directory(directory: PathLike, config: VoxtralConfig, params: Params,
                      generation_config: Mapping[str, Any] | None = None, extra_files_from: PathLike | None = None,
                      max_shard_bytes: int | None = None, legacy: bool = False,
                      hf_config: Mapping[str, Any] | None = None) -> None:
    """Writes config.json and the weights transformers loads: one `model.safetensors`, or with
    `max_shard_bytes` shards `model-0000k-of-0000n.safetensors` and the index (the released layout);
    `legacy`: transformers 4 key names, as the released shards have them. `hf_config`: the config.json
    content to write instead of `config.to_hf_dict()`. `extra_files_from`: a directory whose tokenizer and
    processor files (tekken.json, preprocessor_config.json, ...) are copied along."""
    from safetensors.numpy import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    content = dict(hf_config) if hf_config is not None else config.to_hf_dict()
    (directory / "config.json").write_text(json.dumps(content, indent=2))
    state = flax_to_hf_state(params, legacy=legacy)
    if max_shard_bytes is None:
        save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
    else:
        shards: list[dict[str, np.ndarray]] = [{}]
        size = 0
        for key in sorted(state):
            if shards[-1] and size + state[key].nbytes > max_shard_bytes:
                shards.append({})
                size = 0
            shards[-1][key] = state[key]
            size += state[key].nbytes
        weight_map = {}
        for k, shard in enumerate(shards):
            name = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, str(directory / name), metadata={"format": "pt"})
            weight_map.update({key: name for key in shard})
        index = {"metadata": {"total_size": int(sum(v.nbytes for v in state.values()))}, "weight_map": weight_map}
        (directory / INDEX_FILE).write_text(json.dumps(index, indent=2))
    if generation_config:
        (directory / "generation_config.json").write_text(json.dumps(dict(generation_config), indent=2))
    if extra_files_from is not None:
        for p in Path(extra_files_from).iterdir():
            skip = p.name in ("config.json", "generation_config.json") or p.name.startswith("model")
            if p.is_file() and not skip:
                shutil.copy2(p, directory / p.name)
