"""Loading and saving Audio Flamingo 3 parameters: Hugging Face directories as they are downloaded.

One declarative table, `NAME_MAP`: (HF key pattern, Flax path template, transform), read forwards to
load and backwards to save. It is Qwen2-Audio's table (`qwen2_audio.checkpoints.NAME_MAP`: the same
encoder, decoder and head names) with the projector's one `linear` replaced by AF3's `linear_1` and
`linear_2`. Keys in the transformers 4 layout (`language_model.model.*`, `audio_tower.*`,
`multi_modal_projector.*`, as the conversion script of the release saved them) are renamed first, by
Qwen2-Audio's `modernize_key` (transformers maps `audioflamingo3` to the same renamings). That is also
the layout transformers 5 itself writes for this model (`save_pretrained` reverses the renaming), so
`save_hf_directory` writes it too.

A directory holds `config.json`, `model.safetensors` or shards listed by `model.safetensors.index.json`,
and `generation_config.json`. Tensors are read one at a time from the memory-mapped shards
(`qwen2_audio.checkpoints.TensorSource`), checked by name and shape before any data is read, cast and
placed (on a sharding, when given) leaf by leaf; large leaves block by block.
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

from agac_jax.models.audio_flamingo3.config import AudioFlamingo3Config
from agac_jax.models.audio_flamingo3.model import init_params
from agac_jax.models.qwen2_audio import checkpoints as q2
from agac_jax.models.qwen2_audio.checkpoints import (CONV, LINEAR, SAME, CheckpointError, LoadedModel, TensorSource,
                                                     flatten, modernize_key, unflatten, unscan_flat)

PathLike = str | os.PathLike[str]
Params = dict[str, Any]

_PROJECTOR = "multi_modal_projector"
NAME_MAP: tuple[tuple[str, str, str], ...] = tuple(
    entry for entry in q2.NAME_MAP if _PROJECTOR not in entry[1]) + (
    (r"model\.multi_modal_projector\.(linear_1|linear_2)\.weight", "multi_modal_projector/{0}/kernel", LINEAR),
    (r"model\.multi_modal_projector\.(linear_1|linear_2)\.bias", "multi_modal_projector/{0}/bias", SAME),
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


def expected_shapes(config: AudioFlamingo3Config) -> dict[str, tuple[int, ...]]:
    """Flax path -> shape of every parameter the model declares (unrolled layers), nothing allocated."""
    abstract = jax.eval_shape(lambda: q2._unbox(init_params(config.replace(scan_layers=False), jax.random.key(0))))
    return {path: tuple(leaf.shape) for path, leaf in flatten(abstract).items()}


def _plan(source: TensorSource, config: AudioFlamingo3Config) -> tuple[dict[str, tuple[str, str]], dict]:
    """{Flax path: (HF key, transform)} of every parameter, from names and shapes only; CheckpointError
    listing every missing, unexpected and mis-shaped key."""
    want = expected_shapes(config)
    plan, unexpected, misshaped, misshaped_paths = {}, [], [], set()
    for raw_key in source.keys():
        mapped = hf_to_flax_path(modernize_key(raw_key))
        if mapped is None or mapped[0] not in want:
            unexpected.append(raw_key)
            continue
        path, transform = mapped
        flax_shape = q2._flax_shape(source.shape(raw_key), transform)
        if flax_shape != want[path]:
            misshaped.append(f"{raw_key}: checkpoint {source.shape(raw_key)}, model expects "
                             f"{q2._flax_shape(want[path], transform)}")
            misshaped_paths.add(path)
            continue
        plan[path] = (raw_key, transform)
    missing = sorted(flax_to_hf_key(p)[0] for p in want if p not in plan and p not in misshaped_paths)
    if missing or unexpected or misshaped:
        lines = [f"checkpoint does not match the Audio Flamingo 3 config ({len(missing)} missing, "
                 f"{len(unexpected)} unexpected, {len(misshaped)} mis-shaped keys)"]
        lines += [f"  missing: {k}" for k in missing]
        lines += [f"  unexpected: {k}" for k in sorted(unexpected)]
        lines += [f"  mis-shaped: {k}" for k in misshaped]
        raise CheckpointError("\n".join(lines))
    return plan, want


def convert_hf_state(state: Mapping[str, np.ndarray] | TensorSource, config: AudioFlamingo3Config,
                     shardings: Mapping[str, Any] | Any | None = None, block_bytes: int = q2._BLOCK_BYTES) -> Params:
    """HF tensors -> Flax parameter tree in `config.param_dtype`, checked, streamed leaf by leaf.

    As `qwen2_audio.checkpoints.convert_hf_state`: with `shardings` (tree or flat {path: sharding} of the
    loaded layout) each leaf is placed on its sharding as it is read, else kept as host numpy; a leaf
    over `block_bytes` is filled block by block of its first axis; under `config.scan_layers` decoder
    layers are stacked into `language_model/layers/layer/...`.
    """
    source = state if isinstance(state, TensorSource) else TensorSource(state=state)
    plan, want = _plan(source, config)
    shardings = None if shardings is None else flatten(shardings)
    dtype = jnp.dtype(config.param_dtype)
    n_layers = config.text.num_hidden_layers
    flat: dict[str, Any] = {}
    for path, (raw_key, transform) in plan.items():
        target, layer = q2._scan_target(path, config.scan_layers)
        shape = want[path]
        sharding = None if shardings is None else shardings[target]
        if layer is None and np.prod(shape) * dtype.itemsize <= block_bytes:
            host = q2._convert(source.read(raw_key), transform, dtype)
            flat[target] = host if sharding is None else jax.block_until_ready(jax.device_put(host, sharding))
            continue
        if target not in flat:
            full_shape = shape if layer is None else (n_layers,) + shape
            flat[target] = (np.empty(full_shape, dtype) if sharding is None
                            else q2._zeros_fn(full_shape, dtype, sharding)())
        lead = () if layer is None else (layer,)
        rows = max(1, block_bytes // max(1, int(np.prod(shape[1:])) * dtype.itemsize))
        for start in range(0, shape[0], rows):
            index = (slice(start, min(start + rows, shape[0])),) + tuple(slice(None) for _ in shape[1:])
            piece = q2._convert(source.read(raw_key, q2._hf_index(transform, index)), transform, dtype)
            if sharding is None:
                flat[target][lead + index] = piece
            else:
                starts = tuple(np.int32(i) for i in lead + (start,) + (0,) * (len(shape) - 1))
                flat[target] = jax.block_until_ready(q2._update_fn(sharding)(
                    flat[target], piece.reshape((1,) * len(lead) + piece.shape), starts))
    return unflatten(flat)


def saved_key(key: str) -> str:
    """transformers 5 module name -> the name its `save_pretrained` writes for AF3 (the transformers 4
    layout, `modernize_key` inverted)."""
    for old, new in q2.LEGACY_PREFIXES:
        if key.startswith(new):
            return old + key[len(new):]
    return key


def flax_to_hf_state(params: Params, saved_names: bool = True) -> dict[str, np.ndarray]:
    """Flax parameters (unrolled or layer-scanned) -> HF state dict, numpy: with the names transformers
    writes to files (`saved_key`), or with `saved_names=False` its module names (`model.audio_tower.*`, ...)."""
    state = {}
    for path, value in unscan_flat(flatten(q2._unbox(params))).items():
        key, transform = flax_to_hf_key(path)
        state[saved_key(key) if saved_names else key] = np.ascontiguousarray(_TRANSFORMS[transform](np.asarray(value)))
    return state


def read_model_config(path: Path, **options: Any) -> AudioFlamingo3Config:
    """The config in a directory's `config.json`; CheckpointError naming the file when it is not JSON,
    not an object, or not an AF3 config the port supports."""
    settings = q2._read_json_object(path)
    try:
        return AudioFlamingo3Config.from_hf_dict(settings, **options)
    except (ValueError, TypeError) as error:
        raise CheckpointError(f"{path}: {error}") from error


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
    generation = {}
    if (directory / "generation_config.json").exists():
        generation = q2._read_json_object(directory / "generation_config.json")
    return LoadedModel(config, params, generation, directory)


def save_hf_directory(directory: PathLike, config: AudioFlamingo3Config, params: Params,
                      generation_config: Mapping[str, Any] | None = None, extra_files_from: PathLike | None = None,
                      max_shard_bytes: int | None = None) -> None:
    """Writes config.json and the weights under the names transformers writes (`saved_key`): one
    `model.safetensors`, or with `max_shard_bytes` shards `model-0000k-of-0000n.safetensors` and
    `model.safetensors.index.json` (the released layout). `extra_files_from`: a directory whose tokenizer
    and processor files are copied along."""
    from safetensors.numpy import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config.to_hf_dict(), indent=2))
    state = flax_to_hf_state(params)
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
