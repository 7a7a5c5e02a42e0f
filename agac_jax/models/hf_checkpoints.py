"""Hugging Face checkpoints, whatever the model family: reading, converting to Flax, writing.

A family's `checkpoints` module holds what is its own: the name table (`NAME_MAP`: HF key pattern,
Flax path template with {0}, {1}... from the pattern's groups, transform), its config class and its
`load_hf_directory` / `save_hf_directory`. Everything else is here:

- `TensorSource`: HF tensors read one at a time, whole or as a slice, from a directory's memory-mapped
  safetensors shards (`model.safetensors` or those of `INDEX_FILE`) or from an in-memory state dict;
  `read_json_object`, `read_config`: the directory's JSON files, a `CheckpointError` naming the file
  when one cannot be read.
- `NameTable`: a compiled `NAME_MAP`, read forwards (HF key -> Flax path) and backwards. Keys in the
  transformers 4 layout (`LEGACY_PREFIXES`) are renamed to the transformers 5 layout first
  (`modernize_key`; `legacy_key` is its inverse).
- `convert_state`: the streaming conversion. Every key's name and shape is checked first (from the
  safetensors headers, before any data is read; `plan_conversion`); then each leaf is read,
  transformed (`TRANSFORMS`: `LINEAR` HF [out, in] -> Flax [in, out]; `CONV` HF [out, in, k] -> Flax
  [k, in, out]; `SAME`), cast and placed on its own, a large leaf block by block; the shared decoder's
  layers are stacked for its layer scan on the way (`scan_flat` / `unscan_flat`).
- `export_state` and `write_hf_directory`: the table read backwards, and the files transformers loads.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

PathLike = str | os.PathLike[str]
Params = dict[str, Any]
NameMap = tuple[tuple[str, str, str], ...]

SAME = "same"
LINEAR = "linear"
CONV = "conv"
# Each transform is its own inverse, so export applies the same table backwards. Every transform keeps
# the axes or reverses them all (the block-wise conversion relies on it: `_hf_index`).
TRANSFORMS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    SAME: lambda w: w,
    LINEAR: lambda w: w.T,
    CONV: lambda w: w.transpose(2, 1, 0),
}

INDEX_FILE = "model.safetensors.index.json"
BLOCK_BYTES = 64 << 20  # a leaf larger than this is converted and placed in blocks of its first axis

# transformers 4 key prefixes -> transformers 5 prefixes (transformers renames Qwen2-Audio's, Audio
# Flamingo 3's and Voxtral's keys alike).
LEGACY_PREFIXES: tuple[tuple[str, str], ...] = (
    ("language_model.model.", "model.language_model."),
    ("language_model.lm_head.", "lm_head."),
    ("audio_tower.", "model.audio_tower."),
    ("multi_modal_projector.", "model.multi_modal_projector."),
)

# The shared decoder's layers: unrolled `language_model/layers_{i}/...`, or stacked [L, ...] for its
# layer scan under `language_model/layers/layer/...`.
SCANNED_PREFIX = "language_model/layers/layer/"
_DECODER_LAYER = re.compile(r"language_model/layers_(\d+)/(.+)\Z")


class CheckpointError(ValueError):
    """A checkpoint directory that cannot be used: unreadable files (the message names them), or
    tensors that do not fit the model (every missing, unexpected and mis-shaped key at once)."""


@dataclasses.dataclass
class LoadedModel:
    """A model directory read into memory: its config, Flax parameters and generation settings."""

    config: Any
    params: Params
    generation_config: dict[str, Any]
    directory: Path


def modernize_key(key: str) -> str:
    """Renames a transformers 4 key to the transformers 5 layout; other keys pass unchanged."""
    for old, new in LEGACY_PREFIXES:
        if key.startswith(old):
            return new + key[len(old):]
    return key


def legacy_key(key: str) -> str:
    """A transformers 5 key -> its transformers 4 name (`modernize_key` inverted), the names released
    shards use and `save_pretrained` writes for these models."""
    for old, new in LEGACY_PREFIXES:
        if key.startswith(new):
            return old + key[len(new):]
    return key


class NameTable:
    """A `NAME_MAP` compiled: (HF key pattern, Flax path template, transform) rows, read both ways."""

    def __init__(self, name_map: NameMap):
        self.name_map = tuple(name_map)
        self._compiled = tuple((re.compile(p + r"\Z"), t, f) for p, t, f in self.name_map)

    def hf_to_flax_path(self, key: str) -> tuple[str, str] | None:
        """HF key (transformers 5 layout) -> (Flax path 'a/b/c', transform), or None when the table has
        no rule for it."""
        for pattern, template, transform in self._compiled:
            m = pattern.match(key)
            if m:
                return template.format(*m.groups()), transform
        return None

    def flax_to_hf_key(self, path: str) -> tuple[str, str]:
        """Flax path -> (HF key, transform), the table read backwards."""
        for pattern, template, transform in self.name_map:
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


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested parameter dicts -> {'a/b/c': leaf}."""
    out = {}
    for k, v in tree.items():
        path = f"{prefix}/{k}" if prefix else k
        if isinstance(v, Mapping):
            out.update(flatten(v, path))
        else:
            out[path] = v
    return out


def unflatten(flat: Mapping[str, Any]) -> Params:
    """{'a/b/c': leaf} -> nested parameter dicts (`flatten` inverted)."""
    tree: Params = {}
    for path, v in flat.items():
        node = tree
        *parents, leaf = path.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = v
    return tree


def unbox(params: Any) -> Any:
    """Flax parameters without their partitioning metadata boxes."""
    import flax.linen as nn

    return nn.meta.unbox(params)


def param_shapes(init_params: Callable[[Any, jax.Array], Any], config: Any) -> dict[str, tuple[int, ...]]:
    """Flax path -> shape of every parameter `init_params(config, key)` declares, without allocating any."""
    abstract = jax.eval_shape(lambda: unbox(init_params(config, jax.random.key(0))))
    return {path: tuple(leaf.shape) for path, leaf in flatten(abstract).items()}


def read_json_object(path: PathLike) -> dict[str, Any]:
    """The JSON object in `path`; CheckpointError naming the file when it is not valid JSON or not an
    object (a list, a number)."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path} is not valid JSON ({error}); restore it from the model's release") from error
    if not isinstance(value, dict):
        raise CheckpointError(f"{path} holds a JSON {type(value).__name__}, not an object of settings; restore it "
                              "from the model's release")
    return value


def read_config(path: Path, from_hf_dict: Callable[..., Any], **options: Any) -> Any:
    """`from_hf_dict(settings of the config.json at path, **options)`; CheckpointError naming the file when
    it is not JSON, not an object, or not a config the port supports (ValueError, TypeError)."""
    settings = read_json_object(path)
    try:
        return from_hf_dict(settings, **options)
    except (ValueError, TypeError) as error:
        raise CheckpointError(f"{path}: {error}") from error


def read_generation_config(directory: Path) -> dict[str, Any]:
    """The directory's generation_config.json ({} without one)."""
    path = Path(directory) / "generation_config.json"
    return read_json_object(path) if path.exists() else {}


def _safetensors_shapes(path: Path) -> dict[str, tuple[Path, tuple[int, ...]]]:
    """{key: (path, shape)} of one safetensors file, from its header; CheckpointError naming the file
    when it is truncated or not a safetensors file."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            return {key: (path, tuple(f.get_slice(key).get_shape())) for key in f.keys()}
    except SafetensorError as error:
        raise CheckpointError(f"{path} ({os.path.getsize(path)} bytes) is not a readable safetensors file: {error}. "
                              "It is truncated or corrupt (an interrupted download or copy?); download or copy it "
                              "again") from error


class TensorSource:
    """HF tensors read one at a time, whole or as a slice: a directory's safetensors shards or an
    in-memory state dict. A shard is opened (memory mapped by `safe_open`) for each read and closed
    after it, so a slice reads only its bytes and no mapped page of the file stays resident."""

    def __init__(self, state: Mapping[str, np.ndarray] | None = None,
                 files: Mapping[str, tuple[Path, tuple[int, ...]]] | None = None):
        self._state = state
        self._files = dict(files or {})  # key -> (shard, shape)

    @classmethod
    def of(cls, state: "Mapping[str, np.ndarray] | TensorSource") -> "TensorSource":
        """`state` itself when it is a TensorSource, else the source of the state dict."""
        return state if isinstance(state, TensorSource) else cls(state=state)

    @classmethod
    def from_directory(cls, directory: PathLike) -> "TensorSource":
        """The tensors of `model.safetensors` or of the shards of `model.safetensors.index.json` (only
        the headers are read here)."""
        directory = Path(directory)
        index = directory / INDEX_FILE
        if index.exists():
            names = sorted(set(read_json_object(index).get("weight_map", {}).values()))
        elif (directory / "model.safetensors").exists():
            names = ["model.safetensors"]
        else:
            names = []
        files = {}
        for name in names:
            path = directory / name
            if not path.exists():
                raise FileNotFoundError(f"{index} lists shard {name}, which is not in {directory}")
            files.update(_safetensors_shapes(path))
        return cls(files=files)

    def keys(self) -> list[str]:
        return list(self._state) if self._state is not None else list(self._files)

    def __len__(self) -> int:
        return len(self.keys())

    def shape(self, key: str) -> tuple[int, ...]:
        if self._state is not None:
            return tuple(np.shape(self._state[key]))
        return self._files[key][1]

    def read(self, key: str, index: tuple[slice, ...] | None = None) -> np.ndarray:
        """The tensor `key` (HF layout), or its `index` slice, as a numpy array in its stored dtype."""
        if self._state is not None:
            value = np.asarray(self._state[key])
            return value if index is None else value[index]
        from safetensors import safe_open

        path, shape = self._files[key]
        with safe_open(str(path), framework="numpy") as f:
            return np.array(f.get_slice(key)[index if index is not None else tuple(slice(None) for _ in shape)])


def tensors_equal(source: TensorSource, a: str, b: str, block_rows: int = 4096) -> bool:
    """Whether tensors `a` and `b` are equal, compared block by block of rows (never both whole in memory)."""
    shape = source.shape(a)
    if shape != source.shape(b):
        return False
    if not shape:
        return bool(np.array_equal(source.read(a), source.read(b)))
    for start in range(0, shape[0], block_rows):
        index = (slice(start, min(start + block_rows, shape[0])),) + tuple(slice(None) for _ in shape[1:])
        if not np.array_equal(source.read(a, index), source.read(b, index)):
            return False
    return True


def read_safetensors(directory: PathLike) -> dict[str, np.ndarray]:
    """All tensors of `model.safetensors` or of the index's shards, in memory, float32 (a small model's
    whole state; `convert_state` streams instead)."""
    source = TensorSource.from_directory(directory)
    return {key: source.read(key).astype(np.float32) for key in source.keys()}


def _flax_shape(hf_shape: tuple[int, ...], transform: str) -> tuple[int, ...]:
    return tuple(hf_shape) if transform == SAME else tuple(reversed(hf_shape))


def _hf_index(transform: str, index: tuple[slice, ...]) -> tuple[slice, ...]:
    """A slice of the Flax-layout array -> the same elements' slice of the HF tensor: LINEAR and CONV
    reverse the axes ([out, in] <-> [in, out]; [out, in, k] <-> [k, in, out]), SAME keeps them."""
    return index if transform == SAME else tuple(reversed(index))


def _convert(array: np.ndarray, transform: str, dtype: Any) -> np.ndarray:
    return np.ascontiguousarray(TRANSFORMS[transform](array), dtype=jnp.dtype(dtype))


@functools.lru_cache(maxsize=64)
def _zeros_fn(shape: tuple[int, ...], dtype: Any, sharding: Any) -> Callable[[], jax.Array]:
    return jax.jit(lambda: jnp.zeros(shape, dtype), out_shardings=sharding)


@functools.lru_cache(maxsize=64)
def _update_fn(sharding: Any) -> Callable[..., jax.Array]:
    return jax.jit(lambda buf, piece, starts: jax.lax.dynamic_update_slice(buf, piece.astype(buf.dtype), starts),
                   donate_argnums=0, out_shardings=sharding)


def _scan_target(path: str, scanned: bool) -> tuple[str, int | None]:
    """Unscanned Flax path -> (path in the loaded tree, decoder layer index under the layer scan or None)."""
    m = _DECODER_LAYER.match(path) if scanned else None
    if m is None:
        return path, None
    return f"{SCANNED_PREFIX}{m.group(2)}", int(m.group(1))


def plan_conversion(source: TensorSource, names: NameTable, want: Mapping[str, tuple[int, ...]], *, model: str,
                    skip: Callable[[str], bool] | None = None) -> dict[str, tuple[str, str]]:
    """{Flax path: (HF key, transform)} of every parameter in `want` (Flax path -> shape, unrolled), from
    names and shapes only. Keys are renamed by `modernize_key` before the table is read; `skip(key)`
    (of the renamed key) drops a key the model does not read.

    Raises CheckpointError listing every missing, unexpected and mis-shaped key; its first line says
    the checkpoint does not match "the {model} config".
    """
    plan: dict[str, tuple[str, str]] = {}
    unexpected, misshaped, misshaped_paths = [], [], set()
    for raw_key in source.keys():
        key = modernize_key(raw_key)
        if skip is not None and skip(key):
            continue
        mapped = names.hf_to_flax_path(key)
        if mapped is None or mapped[0] not in want:
            unexpected.append(raw_key)
            continue
        path, transform = mapped
        hf_shape = source.shape(raw_key)
        if _flax_shape(hf_shape, transform) != want[path]:
            misshaped.append(f"{raw_key}: checkpoint {hf_shape}, model expects {_flax_shape(want[path], transform)}")
            misshaped_paths.add(path)
            continue
        plan[path] = (raw_key, transform)
    missing = sorted(names.flax_to_hf_key(p)[0] for p in want if p not in plan and p not in misshaped_paths)
    if missing or unexpected or misshaped:
        lines = [f"checkpoint does not match the {model} config ({len(missing)} missing, "
                 f"{len(unexpected)} unexpected, {len(misshaped)} mis-shaped keys)"]
        lines += [f"  missing: {k}" for k in missing]
        lines += [f"  unexpected: {k}" for k in sorted(unexpected)]
        lines += [f"  mis-shaped: {k}" for k in misshaped]
        raise CheckpointError("\n".join(lines))
    return plan


def convert_state(state: Mapping[str, np.ndarray] | TensorSource, names: NameTable,
                  want: Mapping[str, tuple[int, ...]], dtype: Any, *, model: str,
                  shardings: Mapping[str, Any] | Any | None = None, block_bytes: int | None = None,
                  scan_layers: int | None = None, skip: Callable[[str], bool] | None = None) -> Params:
    """HF tensors -> Flax parameter tree in `dtype`, checked against `want`, streamed.

    want: Flax path -> shape of every parameter, decoder layers unrolled. Every key's name and shape is
    checked first (`plan_conversion`, with `model` and `skip`), before any data is read; then each leaf
    is read, transformed (the table's transform), cast and placed on its own: with `shardings` (a tree
    or flat {Flax path: NamedSharding} in the loaded layout) as a `jax.Array` on that sharding, else as
    a host numpy array. A leaf over `block_bytes` (None: `BLOCK_BYTES`) is filled block by block along
    its first (Flax-layout) axis from slices of the memory-mapped tensor, into a device buffer updated
    in place (donated), so the host holds at most about one block besides what is placed.
    scan_layers: the number of decoder layers, whose leaves are stacked into `language_model/layers/layer/...`
    [scan_layers, ...] for the layer scan, layer by layer, the same way; None: unrolled.
    """
    source = TensorSource.of(state)
    block_bytes = BLOCK_BYTES if block_bytes is None else block_bytes
    plan = plan_conversion(source, names, want, model=model, skip=skip)
    shardings = None if shardings is None else flatten(shardings)
    dtype = jnp.dtype(dtype)
    flat: dict[str, Any] = {}
    for path, (raw_key, transform) in plan.items():
        target, layer = _scan_target(path, scan_layers is not None)
        shape = want[path]  # every parameter has at least one axis
        sharding = None if shardings is None else shardings[target]
        if layer is None and np.prod(shape) * dtype.itemsize <= block_bytes:
            host = _convert(source.read(raw_key), transform, dtype)
            # Waiting for each transfer keeps one host copy in flight (dispatch is asynchronous).
            flat[target] = host if sharding is None else jax.block_until_ready(jax.device_put(host, sharding))
            continue
        if target not in flat:
            full_shape = shape if layer is None else (scan_layers,) + shape
            flat[target] = np.empty(full_shape, dtype) if sharding is None else _zeros_fn(full_shape, dtype, sharding)()
        lead = () if layer is None else (layer,)
        rows = max(1, block_bytes // max(1, int(np.prod(shape[1:])) * dtype.itemsize))
        for start in range(0, shape[0], rows):
            index = (slice(start, min(start + rows, shape[0])),) + tuple(slice(None) for _ in shape[1:])
            piece = _convert(source.read(raw_key, _hf_index(transform, index)), transform, dtype)
            if sharding is None:
                flat[target][lead + index] = piece
            else:
                starts = tuple(np.int32(i) for i in lead + (start,) + (0,) * (len(shape) - 1))
                flat[target] = jax.block_until_ready(_update_fn(sharding)(
                    flat[target], piece.reshape((1,) * len(lead) + piece.shape), starts))
            del piece
    return unflatten(flat)


def unscan_flat(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Flat params with the layer scan's stacked `language_model/layers/layer/...` [L, ...] -> the
    unrolled `language_model/layers_{i}/...` (other paths unchanged)."""
    out = {}
    for path, value in flat.items():
        if path.startswith(SCANNED_PREFIX):
            rest = path[len(SCANNED_PREFIX):]
            for i in range(value.shape[0]):
                out[f"language_model/layers_{i}/{rest}"] = value[i]
        else:
            out[path] = value
    return out


def scan_flat(flat: Mapping[str, Any], num_layers: int) -> dict[str, Any]:
    """The inverse of `unscan_flat`: unrolled decoder layers stacked into `language_model/layers/layer/...`."""
    out, stacks = {}, {}
    for path, value in flat.items():
        m = _DECODER_LAYER.match(path)
        if m is None:
            out[path] = value
        else:
            stacks.setdefault(m.group(2), {})[int(m.group(1))] = value
    for rest, layers in stacks.items():
        out[SCANNED_PREFIX + rest] = np.stack([np.asarray(layers[i]) for i in range(num_layers)])
    return out


def export_state(params: Params, names: NameTable, rename: Callable[[str], str] | None = None
                 ) -> dict[str, np.ndarray]:
    """Flax parameter tree (unrolled or layer-scanned) -> HF state dict, numpy in the parameters' dtype:
    the table read backwards, each key passed through `rename` when given (`legacy_key`)."""
    state = {}
    for path, value in unscan_flat(flatten(unbox(params))).items():
        key, transform = names.flax_to_hf_key(path)
        state[key if rename is None else rename(key)] = np.ascontiguousarray(TRANSFORMS[transform](np.asarray(value)))
    return state


def write_hf_directory(directory: PathLike, hf_config: Mapping[str, Any], state: Mapping[str, np.ndarray],
                       generation_config: Mapping[str, Any] | None = None, extra_files_from: PathLike | None = None,
                       max_shard_bytes: int | None = None) -> None:
    """Writes config.json (`hf_config`), the weights and generation_config.json (when given) as transformers
    reads them: one `model.safetensors`, or with `max_shard_bytes` shards `model-0000k-of-0000n.safetensors`
    and `INDEX_FILE` (the released layout). `extra_files_from`: a directory whose other files (tokenizer,
    processor) are copied along."""
    from safetensors.numpy import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(dict(hf_config), indent=2))
    if max_shard_bytes is None:
        save_file(dict(state), str(directory / "model.safetensors"), metadata={"format": "pt"})
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


def load_tokenizer(directory: str | Path) -> Any:
    """The directory's tokenizer, the one `AutoTokenizer.from_pretrained` gives: the class its
    tokenizer_config.json names, taken from transformers by name (with AutoTokenizer's preference for
    the "...Fast" one), so loading does not import transformers' auto module, which imports torch
    (1.5 s of a launch tool's start). A directory that names no class transformers exports goes
    through AutoTokenizer itself."""
    import transformers

    try:
        name = json.loads((Path(directory) / "tokenizer_config.json").read_text(encoding="utf-8")).get("tokenizer_class")
    except (OSError, ValueError, AttributeError):
        name = None
    if isinstance(name, str) and name.isidentifier():
        for candidate in (f"{name}Fast", name):
            try:
                cls = getattr(transformers, candidate)
            except (AttributeError, ImportError, RuntimeError):
                continue
            if isinstance(cls, type) and hasattr(cls, "from_pretrained"):
                return cls.from_pretrained(str(directory))
    return transformers.AutoTokenizer.from_pretrained(str(directory))
