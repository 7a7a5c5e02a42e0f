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
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from agac_jax.models.config import Qwen2AudioConfig
from agac_jax.models.qwen2_audio.model import init_params

PathLike = str | os.PathLike[str]
Params = dict[str, Any]

SAME = "same"
LINEAR = "linear"
CONV = "conv"

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

# transformers 4 key prefixes -> transformers 5 prefixes.
LEGACY_PREFIXES: tuple[tuple[str, str], ...] = (
    ("language_model.model.", "model.language_model."),
    ("language_model.lm_head.", "lm_head."),
    ("audio_tower.", "model.audio_tower."),
    ("multi_modal_projector.", "model.multi_modal_projector."),
)

# Each transform is its own inverse, so export applies the same table backwards.
_TRANSFORMS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    SAME: lambda w: w,
    LINEAR: lambda w: w.T,
    CONV: lambda w: w.transpose(2, 1, 0),
}
_COMPILED = tuple((re.compile(p + r"\Z"), t, f) for p, t, f in NAME_MAP)


class CheckpointError(ValueError):
    """A checkpoint directory that cannot be used: unreadable files (the message names them), or
    tensors that do not fit the model (every missing, unexpected and mis-shaped key at once)."""


@dataclasses.dataclass
class LoadedModel:
    """A model directory read into memory: its config, Flax parameters and generation settings."""

    config: Qwen2AudioConfig
    params: Params
    generation_config: dict[str, Any]
    directory: Path


def modernize_key(key: str) -> str:
    """Renames a transformers 4 key to the transformers 5 layout; other keys pass unchanged."""
    for old, new in LEGACY_PREFIXES:
        if key.startswith(old):
            return new + key[len(old):]
    return key


def hf_to_flax_path(key: str) -> tuple[str, str] | None:
    """HF key -> (Flax path 'a/b/c', transform), or None when the table has no rule for it."""
    for pattern, template, transform in _COMPILED:
        m = pattern.match(key)
        if m:
            return template.format(*m.groups()), transform
    return None


def flax_to_hf_key(path: str) -> tuple[str, str]:
    """Flax path -> (HF key, transform), the table read backwards."""
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


def expected_shapes(config: Qwen2AudioConfig) -> dict[str, tuple[int, ...]]:
    """Flax path -> shape of every parameter the model declares, without allocating any."""
    abstract = jax.eval_shape(lambda: _unbox(init_params(config, jax.random.key(0))))
    return {path: tuple(leaf.shape) for path, leaf in flatten(abstract).items()}


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in tree.items():
        path = f"{prefix}/{k}" if prefix else k
        if isinstance(v, Mapping):
            out.update(flatten(v, path))
        else:
            out[path] = v
    return out


def unflatten(flat: Mapping[str, Any]) -> Params:
    tree: Params = {}
    for path, v in flat.items():
        node = tree
        *parents, leaf = path.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = v
    return tree


def _unbox(params: Any) -> Any:
    import flax.linen as nn

    return nn.meta.unbox(params)


def _read_json_object(path: Path) -> dict[str, Any]:
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
    def from_directory(cls, directory: PathLike) -> "TensorSource":
        """The tensors of `model.safetensors` or of the shards of `model.safetensors.index.json` (only
        the headers are read here)."""
        from safetensors import safe_open

        directory = Path(directory)
        index = directory / "model.safetensors.index.json"
        if index.exists():
            names = sorted(set(_read_json_object(index).get("weight_map", {}).values()))
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


_BLOCK_BYTES = 64 << 20  # a leaf larger than this is converted and placed in blocks of its first axis


def _hf_index(transform: str, index: tuple[slice, ...]) -> tuple[slice, ...]:
    """A slice of the Flax-layout array -> the same elements' slice of the HF tensor: LINEAR and CONV
    reverse the axes ([out, in] <-> [in, out]; [out, in, k] <-> [k, in, out]), SAME keeps them."""
    return index if transform == SAME else tuple(reversed(index))


def _convert(array: np.ndarray, transform: str, dtype: Any) -> np.ndarray:
    return np.ascontiguousarray(_TRANSFORMS[transform](array), dtype=jnp.dtype(dtype))


@functools.lru_cache(maxsize=64)
def _zeros_fn(shape: tuple[int, ...], dtype: Any, sharding: Any) -> Callable[[], jax.Array]:
    return jax.jit(lambda: jnp.zeros(shape, dtype), out_shardings=sharding)


@functools.lru_cache(maxsize=64)
def _update_fn(sharding: Any) -> Callable[..., jax.Array]:
    return jax.jit(lambda buf, piece, starts: jax.lax.dynamic_update_slice(buf, piece.astype(buf.dtype), starts),
                   donate_argnums=0, out_shardings=sharding)


def _scan_target(path: str, scan_layers: bool) -> tuple[str, int | None]:
    """Unscanned Flax path -> (path in the loaded tree, decoder layer index under the layer scan or None)."""
    m = _DECODER_LAYER.match(path) if scan_layers else None
    if m is None:
        return path, None
    return f"language_model/layers/layer/{m.group(2)}", int(m.group(1))


_DECODER_LAYER = re.compile(r"language_model/layers_(\d+)/(.+)\Z")


def convert_hf_state(state: Mapping[str, np.ndarray] | TensorSource, config: Qwen2AudioConfig,
                     shardings: Mapping[str, Any] | Any | None = None, block_bytes: int = _BLOCK_BYTES) -> Params:
    """HF tensors -> Flax parameter tree in `config.param_dtype`, checked against the model, streamed.

    Every key's name and shape is checked first (from the safetensors headers, before any data is
    read); then each leaf is read, transformed (`NAME_MAP`), cast and placed on its own: with
    `shardings` (a tree or flat {Flax path: NamedSharding} in the loaded layout) as a `jax.Array` on
    that sharding, else as a host numpy array. A leaf over `block_bytes` is filled block by block
    along its first (Flax-layout) axis from slices of the memory-mapped tensor, into a device buffer
    updated in place (donated), so the host holds at most about one block besides what is placed.
    Under `config.scan_layers` the decoder layers' leaves are stacked into `layers/layer/...`
    [num_hidden_layers, ...], layer by layer, the same way.

    Raises CheckpointError listing every missing, unexpected and mis-shaped key.
    """
    source = state if isinstance(state, TensorSource) else TensorSource(state=state)
    scan = config.scan_layers
    want = expected_shapes(config.replace(scan_layers=False))
    plan: dict[str, tuple[str, str]] = {}  # Flax path (unscanned) -> (HF key, transform)
    unexpected, misshaped, misshaped_paths = [], [], set()
    for raw_key in source.keys():
        key = modernize_key(raw_key)
        if config.text.tie_word_embeddings and key == "lm_head.weight":
            continue
        mapped = hf_to_flax_path(key)
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
    missing = sorted(flax_to_hf_key(p)[0] for p in want if p not in plan and p not in misshaped_paths)
    if missing or unexpected or misshaped:
        lines = [f"checkpoint does not match the model config ({len(missing)} missing, "
                 f"{len(unexpected)} unexpected, {len(misshaped)} mis-shaped keys)"]
        lines += [f"  missing: {k}" for k in missing]
        lines += [f"  unexpected: {k}" for k in sorted(unexpected)]
        lines += [f"  mis-shaped: {k}" for k in misshaped]
        raise CheckpointError("\n".join(lines))
    shardings = None if shardings is None else flatten(shardings)
    dtype = jnp.dtype(config.param_dtype)
    n_layers = config.text.num_hidden_layers
    flat: dict[str, Any] = {}
    for path, (raw_key, transform) in plan.items():
        target, layer = _scan_target(path, scan)
        shape = want[path]  # every parameter has at least one axis
        sharding = None if shardings is None else shardings[target]
        if layer is None and np.prod(shape) * dtype.itemsize <= block_bytes:
            host = _convert(source.read(raw_key), transform, dtype)
            # Waiting for each transfer keeps one host copy in flight (dispatch is asynchronous).
            flat[target] = host if sharding is None else jax.block_until_ready(jax.device_put(host, sharding))
            continue
        if target not in flat:
            full_shape = shape if layer is None else (n_layers,) + shape
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


def _flax_shape(hf_shape: tuple[int, ...], transform: str) -> tuple[int, ...]:
    return tuple(hf_shape) if transform == SAME else tuple(reversed(hf_shape))


def resolve_tied_head(config: Qwen2AudioConfig, state: Mapping[str, np.ndarray] | TensorSource) -> Qwen2AudioConfig:
    """Decides tying as transformers does for Qwen2-Audio.

    transformers' `Qwen2AudioForConditionalGeneration` declares no tied weights: its LM head is the
    checkpoint's `lm_head.weight` whatever `tie_word_embeddings` says. So a config that says "tied"
    with a stored head that differs from the embedding is loaded untied; a tied config without a
    stored head uses the embedding.
    """
    if not config.text.tie_word_embeddings:
        return config
    source = state if isinstance(state, TensorSource) else TensorSource(state=state)
    keys = {modernize_key(k): k for k in source.keys()}
    head = keys.get("lm_head.weight")
    embed = keys.get("model.language_model.embed_tokens.weight")
    if head is None or (embed is not None and _tensors_equal(source, head, embed)):
        return config
    return config.replace(text=dataclasses.replace(config.text, tie_word_embeddings=False))


def _tensors_equal(source: TensorSource, a: str, b: str, block_rows: int = 4096) -> bool:
    """Compares two tensors block by block of rows (never both whole in memory)."""
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


def flax_to_hf_state(params: Params) -> dict[str, np.ndarray]:
    """Flax parameter tree (unrolled or layer-scanned) -> HF state dict (transformers 5 names), numpy in
    the parameters' dtype (float32 or bfloat16).

    A tied model also gets `lm_head.weight` (a copy of the embedding), because transformers does not
    tie Qwen2-Audio's head and would otherwise initialise it at random.
    """
    state = {}
    for path, value in unscan_flat(flatten(_unbox(params))).items():
        key, transform = flax_to_hf_key(path)
        value = np.asarray(value)
        state[key] = np.ascontiguousarray(_TRANSFORMS[transform](value))
    if "lm_head.weight" not in state:
        state["lm_head.weight"] = state["model.language_model.embed_tokens.weight"].copy()
    return state


def unscan_flat(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Flat params with the layer scan's stacked `language_model/layers/layer/...` [L, ...] -> the
    unrolled `language_model/layers_{i}/...` (other paths unchanged)."""
    out = {}
    for path, value in flat.items():
        if path.startswith(_SCANNED_PREFIX):
            rest = path[len(_SCANNED_PREFIX):]
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
        out[_SCANNED_PREFIX + rest] = np.stack([np.asarray(layers[i]) for i in range(num_layers)])
    return out


_SCANNED_PREFIX = "language_model/layers/layer/"


def read_safetensors(directory: PathLike) -> dict[str, np.ndarray]:
    """All tensors of `model.safetensors` or of the index's shards, in memory, float32 (a small model's
    whole state; `load_hf_directory` streams instead)."""
    source = TensorSource.from_directory(directory)
    return {key: source.read(key).astype(np.float32) for key in source.keys()}


def read_model_config(path: Path, **options: Any) -> Qwen2AudioConfig:
    """The model config in a directory's `config.json` (`options`: `Qwen2AudioConfig.from_hf_dict`'s
    dtypes and layer scan); CheckpointError naming the file when it is not JSON, not an object, or
    not a config the port supports."""
    settings = _read_json_object(path)
    try:
        return Qwen2AudioConfig.from_hf_dict(settings, **options)
    except (ValueError, TypeError) as error:
        raise CheckpointError(f"{path}: {error}") from error


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
    from safetensors.numpy import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "config.json", "w") as f:
        json.dump(config.to_hf_dict(), f, indent=2)
    save_file(flax_to_hf_state(params), str(directory / "model.safetensors"), metadata={"format": "pt"})
    if generation_config:
        with open(directory / "generation_config.json", "w") as f:
            json.dump(dict(generation_config), f, indent=2)
    if extra_files_from is not None:
        for p in Path(extra_files_from).iterdir():
            if p.is_file() and p.name not in ("config.json", "generation_config.json") and not p.name.startswith("model"):
                shutil.copy2(p, directory / p.name)


def save_orbax(directory: PathLike, params: Params, config: Qwen2AudioConfig) -> None:
    """Saves the parameters with orbax (directory `params/`) and the HF config beside them."""
    import orbax.checkpoint as ocp

    directory = Path(directory).absolute()
    directory.mkdir(parents=True, exist_ok=True)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(directory / "params", _unbox(params), force=True)
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
    abstract = jax.eval_shape(lambda: _unbox(init_params(config, jax.random.key(0))))
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
