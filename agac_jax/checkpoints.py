"""Loading and saving Qwen2-Audio parameters: Hugging Face directories and orbax checkpoints.

The conversion is one declarative table, `NAME_MAP`: a regular expression over the HF key, the Flax
parameter path it becomes, and the transform of the array (`LINEAR`: HF [out, in] -> Flax [in, out];
`CONV`: HF [out, in, k] -> Flax [k, in, out]; `SAME`). Export applies the table backwards.

HF directories hold `config.json` and `model.safetensors` or a sharded `model.safetensors.index.json`.
Keys in the transformers 4 layout (`language_model.model.*`, `audio_tower.*`, as the released
Qwen2-Audio-7B files have them) are renamed to the transformers 5 layout first (`LEGACY_PREFIXES`).
PyTorch pickles (`pytorch_model.bin`) run arbitrary code when read and are refused unless the caller
passes `allow_pickle=True`.
"""

from __future__ import annotations

import dataclasses
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
from agac_jax.models.qwen2_audio import init_params

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
    """A checkpoint that does not fit the model: every missing, unexpected and mis-shaped key at once."""


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


def convert_hf_state(state: Mapping[str, np.ndarray], config: Qwen2AudioConfig) -> Params:
    """HF state dict (numpy arrays) -> Flax parameter tree (float32), checked against the model.

    Raises CheckpointError listing every missing, unexpected and mis-shaped key.
    """
    want = expected_shapes(config)
    flat: dict[str, np.ndarray] = {}
    unexpected, misshaped, misshaped_paths = [], [], set()
    for raw_key, value in state.items():
        key = modernize_key(raw_key)
        if config.text.tie_word_embeddings and key == "lm_head.weight":
            continue
        mapped = hf_to_flax_path(key)
        if mapped is None or mapped[0] not in want:
            unexpected.append(raw_key)
            continue
        path, transform = mapped
        array = _TRANSFORMS[transform](np.asarray(value))
        if tuple(array.shape) != want[path]:
            misshaped.append(f"{raw_key}: checkpoint {tuple(np.asarray(value).shape)}, "
                             f"model expects {_TRANSFORMS[transform](np.zeros(want[path], np.int8)).shape}")
            misshaped_paths.add(path)
            continue
        flat[path] = np.ascontiguousarray(array, dtype=np.float32)
    missing = sorted(flax_to_hf_key(p)[0] for p in want if p not in flat and p not in misshaped_paths)
    if missing or unexpected or misshaped:
        lines = [f"checkpoint does not match the model config ({len(missing)} missing, "
                 f"{len(unexpected)} unexpected, {len(misshaped)} mis-shaped keys)"]
        lines += [f"  missing: {k}" for k in missing]
        lines += [f"  unexpected: {k}" for k in sorted(unexpected)]
        lines += [f"  mis-shaped: {k}" for k in misshaped]
        raise CheckpointError("\n".join(lines))
    return unflatten(flat)


def resolve_tied_head(config: Qwen2AudioConfig, state: Mapping[str, np.ndarray]) -> Qwen2AudioConfig:
    """Decides tying as transformers does for Qwen2-Audio.

    transformers' `Qwen2AudioForConditionalGeneration` declares no tied weights: its LM head is the
    checkpoint's `lm_head.weight` whatever `tie_word_embeddings` says. So a config that says "tied"
    with a stored head that differs from the embedding is loaded untied; a tied config without a
    stored head uses the embedding.
    """
    if not config.text.tie_word_embeddings:
        return config
    keys = {modernize_key(k): k for k in state}
    head = keys.get("lm_head.weight")
    embed = keys.get("model.language_model.embed_tokens.weight")
    if head is None or (embed is not None and np.array_equal(np.asarray(state[head]), np.asarray(state[embed]))):
        return config
    return config.replace(text=dataclasses.replace(config.text, tie_word_embeddings=False))


def flax_to_hf_state(params: Params) -> dict[str, np.ndarray]:
    """Flax parameter tree -> HF state dict (transformers 5 names), float32 numpy.

    A tied model also gets `lm_head.weight` (a copy of the embedding), because transformers does not
    tie Qwen2-Audio's head and would otherwise initialise it at random.
    """
    state = {}
    for path, value in flatten(_unbox(params)).items():
        key, transform = flax_to_hf_key(path)
        state[key] = np.ascontiguousarray(_TRANSFORMS[transform](np.asarray(value, dtype=np.float32)))
    if "lm_head.weight" not in state:
        state["lm_head.weight"] = state["model.language_model.embed_tokens.weight"].copy()
    return state


def read_safetensors(directory: PathLike) -> dict[str, np.ndarray]:
    """All tensors of `model.safetensors` or of the shards listed in `model.safetensors.index.json`."""
    from safetensors import safe_open

    directory = Path(directory)
    index = directory / "model.safetensors.index.json"
    if index.exists():
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
        files = sorted(set(weight_map.values()))
    elif (directory / "model.safetensors").exists():
        files = ["model.safetensors"]
    else:
        files = []
    state: dict[str, np.ndarray] = {}
    for name in files:
        path = directory / name
        if not path.exists():
            raise FileNotFoundError(f"{index} lists shard {name}, which is not in {directory}")
        with safe_open(str(path), framework="flax") as f:
            for key in f.keys():
                state[key] = np.asarray(f.get_tensor(key).astype(jnp.float32))
    return state


def _read_pickle(directory: Path, allow_pickle: bool) -> dict[str, np.ndarray]:
    bins = sorted(directory.glob("pytorch_model*.bin"))
    if not bins:
        raise FileNotFoundError(
            f"{directory} has neither model.safetensors nor model.safetensors.index.json nor pytorch_model.bin; "
            "expected a Hugging Face Qwen2-Audio directory")
    if not allow_pickle:
        raise ValueError(
            f"{directory} holds only PyTorch pickle weights ({bins[0].name}); pickles can run code when read. "
            "Convert them to safetensors, or pass allow_pickle=True (--allow_pickle) if you trust the file.")
    import torch

    state = {}
    for path in bins:
        for key, value in torch.load(path, map_location="cpu", weights_only=True).items():
            state[key] = value.float().numpy()
    return state


def load_hf_directory(directory: PathLike, dtype: Any = jnp.float32, allow_pickle: bool = False) -> LoadedModel:
    """Reads a Hugging Face Qwen2-Audio directory into a config and Flax parameters."""
    directory = Path(directory)
    config_path = directory / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"{config_path} not found: --checkpoint must be a Hugging Face model directory")
    config = Qwen2AudioConfig.from_json_file(config_path, dtype=dtype)
    state = read_safetensors(directory)
    if not state:
        state = _read_pickle(directory, allow_pickle)
    config = resolve_tied_head(config, state)
    params = convert_hf_state(state, config)
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


def restore_orbax(directory: PathLike, dtype: Any = jnp.float32) -> tuple[Qwen2AudioConfig, Params]:
    """Restores what `save_orbax` wrote: (config, parameters), checked against the config's shapes."""
    import orbax.checkpoint as ocp

    directory = Path(directory).absolute()
    config = Qwen2AudioConfig.from_json_file(directory / "config.json", dtype=dtype)
    target = jax.eval_shape(lambda: _unbox(init_params(config, jax.random.key(0))))
    with ocp.StandardCheckpointer() as ckptr:
        params = ckptr.restore(directory / "params", target)
    return config, params
