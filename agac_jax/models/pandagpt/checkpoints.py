"""PandaGPT's parameters: the name maps from its three PyTorch checkpoints to the Flax tree.

PandaGPT-7B is three files, each a PyTorch pickle as released:
  - `imagebind_huge.pth`: ImageBind-huge's state dict (keys `modality_preprocessors.audio.*`, ...);
  - the Vicuna v0 7B directory: transformers `LlamaForCausalLM` shards (`model.layers.0...`);
  - PandaGPT's delta `pytorch_model.pt`: `llama_proj.{weight,bias}` and the LoRA factors
    (`llama_model.base_model.model.model.layers.{i}.self_attn.{q,k,v,o}_proj.lora_{A,B}.weight`).

Each map is a table in the style of `checkpoints.NAME_MAP`: (source key pattern, Flax path template,
transform), with the transforms `SAME`, `LINEAR` ([out, in] -> [in, out]), `CONV2D`
([out, in, kh, kw] -> [kh, kw, in, out]), `CONV3D` ([out, in, kt, kh, kw] -> [kt, kh, kw, in, out]).
Keys no table names (ImageBind's text, depth, thermal and IMU branches, its logit-scale buffers) are
dropped; keys a table names but the model lacks, and shapes that differ, are errors.

The Flax tree (`models.pandagpt.PandaGPT`): `imagebind/{audio,vision}/...`, `llama_proj`,
`language_model/...`, `lm_head`. LoRA is merged into q/k/v/o at conversion (`merge_lora`).

The tokenizer is Vicuna's sentencepiece `tokenizer.model`, which conversion copies beside the weights
and `load_tokenizer` reads as PandaGPT does (`VicunaTokenizer`).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
from transformers.tokenization_utils_sentencepiece import SentencePieceBackend

from agac_jax.models.qwen2_audio.checkpoints import CheckpointError, flatten, unflatten
from agac_jax.cli.errors import UserError

SAME, LINEAR, CONV2D, CONV3D = "same", "linear", "conv2d", "conv3d"
TRANSFORMS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    SAME: lambda w: w,
    LINEAR: lambda w: w.T,
    CONV2D: lambda w: w.transpose(2, 3, 1, 0),
    CONV3D: lambda w: w.transpose(2, 3, 4, 1, 0),
}

# transformers LlamaForCausalLM -> PandaGPT's language model.
LLAMA_NAME_MAP: tuple[tuple[str, str, str], ...] = (
    (r"model\.embed_tokens\.weight", "language_model/embed_tokens/embedding", SAME),
    (r"model\.layers\.(\d+)\.self_attn\.(q|k|v|o)_proj\.weight", "language_model/layers_{0}/self_attn/{1}_proj/kernel",
     LINEAR),
    (r"model\.layers\.(\d+)\.mlp\.(gate|up|down)_proj\.weight", "language_model/layers_{0}/mlp/{1}_proj/kernel", LINEAR),
    (r"model\.layers\.(\d+)\.(input_layernorm|post_attention_layernorm)\.weight", "language_model/layers_{0}/{1}/scale",
     SAME),
    (r"model\.norm\.weight", "language_model/norm/scale", SAME),
    (r"lm_head\.weight", "lm_head/kernel", LINEAR),
)

def _layer_norm(source: str, target: str) -> tuple[tuple[str, str, str], ...]:
    """The two rules of a LayerNorm: torch weight -> Flax scale, bias -> bias."""
    return ((source + r"\.weight", target + "/scale", SAME), (source + r"\.bias", target + "/bias", SAME))


_TRUNK = r"modality_trunks\.(audio|vision)\.blocks\.(\d+)"
# ImageBind's state dict -> `imagebind/{audio,vision}/...` (models.imagebind).
IMAGEBIND_NAME_MAP: tuple[tuple[str, str, str], ...] = (
    (r"modality_preprocessors\.audio\.rgbt_stem\.proj\.weight", "imagebind/audio/stem/kernel", CONV2D),
    *_layer_norm(r"modality_preprocessors\.audio\.rgbt_stem\.norm_layer", "imagebind/audio/stem_norm"),
    (r"modality_preprocessors\.vision\.rgbt_stem\.proj\.1\.weight", "imagebind/vision/stem/kernel", CONV3D),
    (r"modality_preprocessors\.(audio|vision)\.cls_token", "imagebind/{0}/cls_token", SAME),
    (r"modality_preprocessors\.(audio|vision)\.pos_embedding_helper\.pos_embed", "imagebind/{0}/pos_embed", SAME),
    *_layer_norm(r"modality_trunks\.vision\.pre_transformer_layer\.0", "imagebind/vision/pre_norm"),
    (_TRUNK + r"\.attn\.in_proj_weight", "imagebind/{0}/blocks_{1}/attn/in_proj/kernel", LINEAR),
    (_TRUNK + r"\.attn\.in_proj_bias", "imagebind/{0}/blocks_{1}/attn/in_proj/bias", SAME),
    (_TRUNK + r"\.attn\.(bias_k|bias_v)", "imagebind/{0}/blocks_{1}/attn/{2}", SAME),
    (_TRUNK + r"\.attn\.out_proj\.weight", "imagebind/{0}/blocks_{1}/attn/out_proj/kernel", LINEAR),
    (_TRUNK + r"\.attn\.out_proj\.bias", "imagebind/{0}/blocks_{1}/attn/out_proj/bias", SAME),
    *_layer_norm(_TRUNK + r"\.(norm_1|norm_2)", "imagebind/{0}/blocks_{1}/{2}"),
    (_TRUNK + r"\.mlp\.(fc1|fc2)\.weight", "imagebind/{0}/blocks_{1}/mlp/{2}/kernel", LINEAR),
    (_TRUNK + r"\.mlp\.(fc1|fc2)\.bias", "imagebind/{0}/blocks_{1}/mlp/{2}/bias", SAME),
    *_layer_norm(r"modality_heads\.(audio|vision)\.0", "imagebind/{0}/head_norm"),
    (r"modality_heads\.(audio|vision)\.2\.weight", "imagebind/{0}/head/kernel", LINEAR),
)

# PandaGPT's delta checkpoint (besides its LoRA factors, which `merge_lora` consumes).
DELTA_NAME_MAP: tuple[tuple[str, str, str], ...] = (
    (r"llama_proj\.weight", "llama_proj/kernel", LINEAR),
    (r"llama_proj\.bias", "llama_proj/bias", SAME),
)
LORA_KEY = re.compile(r"(?:llama_model\.)?(?:base_model\.model\.)?model\.layers\.(\d+)\.self_attn\.(q|k|v|o)_proj"
                      r"\.lora_(A|B)(?:\.default)?\.weight\Z")

def _compile(table):
    return tuple((re.compile(p + r"\Z"), t, f) for p, t, f in table)


def map_keys(state: Mapping[str, np.ndarray], table) -> tuple[dict[str, np.ndarray], list[str]]:
    """Source state dict -> ({Flax path: array}, source keys no rule names)."""
    compiled = _compile(table)
    out, unmatched = {}, []
    for key, value in state.items():
        for pattern, template, transform in compiled:
            m = pattern.match(key)
            if m:
                out[template.format(*m.groups())] = np.asarray(TRANSFORMS[transform](np.asarray(value, np.float32)))
                break
        else:
            unmatched.append(key)
    return out, unmatched


def merge_lora(llama_state: Mapping[str, np.ndarray], delta: Mapping[str, np.ndarray], r: int,
               alpha: float) -> dict[str, np.ndarray]:
    """The LLaMA state with PandaGPT's LoRA merged: W [out, in] += B [out, r] @ A [r, in] * (alpha / r).

    Raises CheckpointError for a factor whose layer or projection the LLaMA state lacks, a factor
    without its partner, or a rank other than `r`.
    """
    factors: dict[tuple[str, str], dict[str, np.ndarray]] = {}
    for key, value in delta.items():
        m = LORA_KEY.match(key)
        if m:
            factors.setdefault((m.group(1), m.group(2)), {})[m.group(3)] = np.asarray(value, np.float32)
    merged = dict(llama_state)
    problems = []
    for (layer, proj), pair in sorted(factors.items()):
        target = f"model.layers.{layer}.self_attn.{proj}_proj.weight"
        if set(pair) != {"A", "B"} or target not in merged:
            problems.append(f"LoRA factors {sorted(pair)} of {target} (base present: {target in merged})")
            continue
        a, b = pair["A"], pair["B"]
        if a.shape[0] != r or b.shape[1] != r:
            problems.append(f"LoRA rank of {target}: A {a.shape}, B {b.shape}, expected r = {r}")
            continue
        merged[target] = np.asarray(merged[target], np.float32) + (b @ a) * (alpha / r)
    if problems:
        raise CheckpointError("; ".join(problems))
    return merged


def check_against(flat: Mapping[str, np.ndarray], expected: Mapping[str, tuple[int, ...]],
                  prefixes: tuple[str, ...] | None = None) -> None:
    """Raises CheckpointError naming every missing, unexpected and mis-shaped Flax path.

    prefixes: compare only the expected paths under these prefixes (a partial source).
    """
    wanted = {p: s for p, s in expected.items() if prefixes is None or p.startswith(prefixes)}
    missing = sorted(set(wanted) - set(flat))
    unexpected = sorted(set(flat) - set(wanted))
    shapes = sorted(f"{p}: {flat[p].shape} != {wanted[p]}" for p in set(flat) & set(wanted)
                    if tuple(flat[p].shape) != tuple(wanted[p]))
    if missing or unexpected or shapes:
        raise CheckpointError(f"missing {missing}; unexpected {unexpected}; mis-shaped {shapes}")


def llama_params_from_hf(state: Mapping[str, np.ndarray]) -> dict:
    """transformers LlamaForCausalLM state dict -> {'language_model': ..., 'lm_head': ...} (unchecked)."""
    flat, _ = map_keys(state, LLAMA_NAME_MAP)
    return unflatten(flat)


__all__ = ["LLAMA_NAME_MAP", "IMAGEBIND_NAME_MAP", "DELTA_NAME_MAP", "map_keys", "merge_lora", "check_against",
           "convert_pandagpt", "VicunaTokenizer", "load_tokenizer", "copy_tokenizer", "MissingTokenizerError",
           "llama_params_from_hf", "flatten", "unflatten"]


def convert_pandagpt(imagebind_state: Mapping[str, np.ndarray], vicuna_state: Mapping[str, np.ndarray],
                     delta_state: Mapping[str, np.ndarray], config) -> dict:
    """The three PyTorch state dicts (numpy arrays) -> the Flax tree of `models.pandagpt.PandaGPT(config)`,
    LoRA merged with config.lora_r and config.lora_alpha; CheckpointError on any mismatch."""
    import jax

    from agac_jax.models.pandagpt.model import init_params

    flat_imagebind, _ = map_keys(imagebind_state, IMAGEBIND_NAME_MAP)
    flat_llama, _ = map_keys(merge_lora(vicuna_state, delta_state, config.lora_r, config.lora_alpha), LLAMA_NAME_MAP)
    flat_delta, _ = map_keys(delta_state, DELTA_NAME_MAP)
    flat = {**flat_imagebind, **flat_llama, **flat_delta}
    declared = jax.eval_shape(lambda: init_params(config, jax.random.key(0)))
    check_against(flat, {k: tuple(v.shape) for k, v in flatten(declared).items()})
    return unflatten(flat)


# --- PandaGPT directories: the converted model as safetensors ---------------------------------------

PANDAGPT_WEIGHTS = "model.safetensors"  # Flax paths ('imagebind/audio/stem/kernel', ...) -> float32 arrays
PANDAGPT_CONFIG = "pandagpt_config.json"  # {"imagebind": {...}, "llama": {...}, "lora_r", "lora_alpha", ...}


def read_torch_pickle(path, allow_pickle: bool) -> dict[str, np.ndarray]:
    """A PyTorch state dict file as numpy float32 arrays; refused unless `allow_pickle` (pickles can
    run code when read; torch.load runs with weights_only=True even then)."""
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if not allow_pickle:
        raise ValueError(f"{path} is a PyTorch pickle; pickles can run code when read. Pass allow_pickle=True "
                         "(--allow_pickle) if you trust the file: it is converted once to safetensors.")
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    return {k: v.float().numpy() for k, v in state.items() if hasattr(v, "float")}


def read_vicuna(directory, allow_pickle: bool) -> dict[str, np.ndarray]:
    """The Vicuna directory's state: its safetensors, else its pytorch_model*.bin shards (opt-in)."""
    from pathlib import Path

    from agac_jax.models.qwen2_audio.checkpoints import read_safetensors

    state = read_safetensors(directory)
    if state:
        return state
    shards = sorted(Path(directory).glob("pytorch_model*.bin"))
    if not shards:
        raise FileNotFoundError(f"{directory} holds neither safetensors nor pytorch_model*.bin shards")
    out: dict[str, np.ndarray] = {}
    for shard in shards:
        out.update(read_torch_pickle(shard, allow_pickle))
    return out


def config_to_dict(config) -> dict:
    import dataclasses

    return {"imagebind": dataclasses.asdict(config.imagebind), "llama": dataclasses.asdict(config.llama),
            "clips": config.clips, "lora_r": config.lora_r, "lora_alpha": config.lora_alpha,
            "audio_token_id": config.audio_token_id}


def config_from_dict(d: Mapping) -> Any:
    from agac_jax.models.pandagpt.imagebind import ImageBindConfig
    from agac_jax.models.llama import LlamaConfig
    from agac_jax.models.pandagpt.model import PandaGPTConfig

    imagebind = dict(d["imagebind"])
    imagebind["vision_kernel_size"] = tuple(imagebind["vision_kernel_size"])
    return PandaGPTConfig(imagebind=ImageBindConfig(**imagebind), llama=LlamaConfig(**d["llama"]), clips=d["clips"],
                          lora_r=d["lora_r"], lora_alpha=d["lora_alpha"], audio_token_id=d["audio_token_id"])


def convert_to_directory(imagebind_path, vicuna_directory, delta_path, out_directory, config,
                         allow_pickle: bool = False):
    """PandaGPT's released pickles -> `out_directory` (PANDAGPT_WEIGHTS, PANDAGPT_CONFIG), LoRA merged,
    with the Vicuna directory's tokenizer files (`copy_tokenizer`).

    Returns the Flax parameters. Every pickle is refused unless `allow_pickle`.
    """
    params = convert_pandagpt(read_torch_pickle(imagebind_path, allow_pickle), read_vicuna(vicuna_directory,
                              allow_pickle), read_torch_pickle(delta_path, allow_pickle), config)
    write_directory(params, config, out_directory)
    copy_tokenizer(vicuna_directory, out_directory)
    return params


def write_directory(params, config, out_directory) -> None:
    """Flax parameters and their config -> `out_directory` (PANDAGPT_WEIGHTS, PANDAGPT_CONFIG). A tokenizer
    (the Vicuna directory's tokenizer files) may sit beside them: `PandaGPTScorer.from_directory` reads it."""
    import json
    from pathlib import Path

    from safetensors.numpy import save_file

    out = Path(out_directory)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: np.ascontiguousarray(v, np.float32) for k, v in flatten(params).items()}, str(out / PANDAGPT_WEIGHTS))
    (out / PANDAGPT_CONFIG).write_text(json.dumps(config_to_dict(config), indent=2))


def load_pandagpt_directory(directory):
    """A directory written by `convert_to_directory` -> (PandaGPTConfig, Flax parameters)."""
    import json
    from pathlib import Path

    from safetensors.numpy import load_file

    directory = Path(directory)
    if not (directory / PANDAGPT_CONFIG).is_file():
        raise FileNotFoundError(f"{directory / PANDAGPT_CONFIG} not found: not a converted PandaGPT directory")
    config = config_from_dict(json.loads((directory / PANDAGPT_CONFIG).read_text()))
    return config, unflatten(load_file(str(directory / PANDAGPT_WEIGHTS)))


# --- the Vicuna tokenizer ---------------------------------------------------------------------------

VICUNA_TOKENIZER_FILES = ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json")
LLAMA_SPECIAL_TOKENS = {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>"}  # ids 0, 1, 2


class MissingTokenizerError(UserError, FileNotFoundError):
    """A PandaGPT directory without a tokenizer: neither Vicuna's tokenizer.model nor a tokenizer.json."""


class VicunaTokenizer(SentencePieceBackend):
    """PandaGPT's tokenizer: `LlamaTokenizer.from_pretrained(vicuna, use_fast=False)` of the transformers
    it pins (4.29), i.e. sentencepiece itself on Vicuna's `tokenizer.model`.

    transformers 5 turns a `tokenizer.model` into a converted `tokenizers` BPE and has no sentencepiece
    Llama class; this one keeps sentencepiece's ids: text between special tokens is `sp.encode(text)`
    (the dummy-prefix space included: the "legacy" encoding that version had), and decoding runs
    sentencepiece's decoder (byte-fallback pieces such as <0x0A> become their bytes). Special tokens
    are the directory's (tokenizer_config.json, special_tokens_map.json), Llama's <unk>, <s>, </s> where
    it names none or a blank one (as early LLaMA conversions wrote); `add_special_tokens` prepends <s>.
    """

    model_input_names = ["input_ids", "attention_mask"]

    def __init__(self, vocab_file: str, **kwargs: Any):
        for name, default in LLAMA_SPECIAL_TOKENS.items():
            if not str(kwargs.get(name) or ""):
                kwargs[name] = default
        kwargs["legacy"] = True
        kwargs.setdefault("special_tokens_pattern", "bos")
        super().__init__(vocab_file=vocab_file, **kwargs)

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        """Pieces -> text: each run of vocabulary pieces through sentencepiece's decoder, special tokens as
        they are written."""
        special = set(self.all_special_tokens)
        parts, run = [], []
        for token in tokens:
            if token in special:
                parts += [self.sp_model.decode_pieces(run), token]
                run = []
            else:
                run.append(token)
        parts.append(self.sp_model.decode_pieces(run))
        return "".join(parts)


def copy_tokenizer(vicuna_directory, out_directory) -> list[str]:
    """Copies the Vicuna directory's tokenizer files (those of VICUNA_TOKENIZER_FILES it has) into
    `out_directory`, where `load_tokenizer` reads them; returns the names copied."""
    source, out = Path(vicuna_directory), Path(out_directory)
    copied = [name for name in VICUNA_TOKENIZER_FILES if (source / name).is_file()]
    for name in copied:
        if (out / name).resolve() != (source / name).resolve():
            shutil.copyfile(source / name, out / name)
    return copied


def load_tokenizer(directory) -> Any:
    """The tokenizer beside a converted PandaGPT's weights.

    Vicuna's `tokenizer.model` is read as PandaGPT reads it (`VicunaTokenizer`), even beside a
    tokenizer.json; without one, a `tokenizer.json` (the random tiny models' word-level tokenizer)
    through AutoTokenizer. Raises MissingTokenizerError when the directory has neither, and a
    UserError when the tokenizer.model cannot be read.
    """
    directory = Path(directory)
    model = directory / "tokenizer.model"
    if model.is_file():
        try:
            return VicunaTokenizer.from_pretrained(str(directory))
        except ImportError as error:
            raise UserError(f"reading {model} needs the sentencepiece package ({error}); run bash tools/setup.sh"
                            ) from error
        except (RuntimeError, OSError) as error:
            raise UserError(f"{model} is not a readable sentencepiece model: {error}") from error
    if (directory / "tokenizer.json").is_file():
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(directory))
    raise MissingTokenizerError(
        f"{directory} holds no tokenizer (tokenizer.model or tokenizer.json): copy the Vicuna directory's "
        f"{', '.join(VICUNA_TOKENIZER_FILES)} into it (convert_to_directory copies them)")
