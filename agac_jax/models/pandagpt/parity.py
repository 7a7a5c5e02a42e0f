"""`launch.parity` for PandaGPT: the Flax model against a PyTorch composition of its released pieces.

The PyTorch side is built from the same converted directory: the Flax tree is mapped back through the
inverse of `checkpoints_pandagpt`'s name maps into imagebind-unofficial's `ImageBindModel` (audio and
vision branches; `reference.imagebind_torch`), a torch `Linear` for `llama_proj` and transformers'
`LlamaForCausalLM` (LoRA already merged). On the same inputs (each clip's three normalised fbanks, one
video's vision inputs, a prompt with the AV token) it compares the audio and video vectors, the AV
token W(a + v) + 2b, the logits of every prompt row and the greedy tokens. The prompt is PandaGPT's for
the question, tokenised by the directory's tokenizer; without one the check stops with a user error.

`random_init_directory(config_json)` writes a random PandaGPT of that config (`pandagpt_config.json`
layout) with a word-level tokenizer, so the check runs without a download.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from agac_jax.models.pandagpt import fbank as kf
from agac_jax.models.qwen2_audio.checkpoints import flatten
from agac_jax.models.pandagpt.checkpoints import (DELTA_NAME_MAP, IMAGEBIND_NAME_MAP, LLAMA_NAME_MAP, PANDAGPT_CONFIG,
                                          config_from_dict, load_pandagpt_directory, load_tokenizer, write_directory)
from agac_jax.models.qwen2_audio.parity import FLOAT32_TOLERANCE, Comparison, ParityReport, compare

INVERSE = {"same": lambda w: w, "linear": lambda w: w.T, "conv2d": lambda w: w.transpose(3, 2, 0, 1),
           "conv3d": lambda w: w.transpose(4, 3, 0, 1, 2)}
# the words of the random model's tokenizer: PandaGPT's template and AVHBench's yes/no questions
TINY_WORDS = ("### Human : < Img > / Assistant is there a an the this that in on of to and video audio sound "
              "dog cat car man woman people music speech visible heard making yes no Yes No ? . ,").split()


def _inverse_rules(table):
    rules = []
    for pattern, template, transform in table:
        target = re.compile(re.sub(r"\\\{(\d+)\\\}", r"([^/]+)", re.escape(template)) + r"\Z")
        rules.append((target, pattern, transform))
    return rules


def _source_key(pattern: str, groups: Sequence[str]) -> str:
    values = iter(groups)
    return re.sub(r"\([^)]*\)", lambda _: next(values), pattern).replace("\\.", ".").replace("\\", "")


def torch_states(params: Any) -> tuple[dict, dict, dict]:
    """Flax tree -> (ImageBind state dict (audio, vision), LlamaForCausalLM state dict, llama_proj's)."""
    out = ({}, {}, {})
    tables = (IMAGEBIND_NAME_MAP, LLAMA_NAME_MAP, DELTA_NAME_MAP)
    rules = [(i, r) for i, table in enumerate(tables) for r in _inverse_rules(table)]
    for path, value in flatten(params).items():
        for i, (target, pattern, transform) in rules:
            m = target.match(path)
            if m:
                key = _source_key(pattern, m.groups())
                if i == 2:
                    key = key.removeprefix("llama_proj.")
                out[i][key] = np.ascontiguousarray(INVERSE[transform](np.asarray(value, np.float32)))
                break
        else:
            raise KeyError(f"no name map rule produces the Flax path {path}")
    return out


def random_init_directory(config_json: str | Path, seed: int = 0, out: str | Path | None = None) -> Path:
    """A random PandaGPT of `config_json` (the `pandagpt_config.json` layout) written with a word-level
    tokenizer to `out` (default: a new temporary directory)."""
    from agac_jax.models.pandagpt.model import init_params
    from agac_jax.models.qwen2_audio.tokenizer import build_word_tokenizer

    config = config_from_dict(json.loads(Path(config_json).read_text()))
    out = Path(out) if out else Path(tempfile.mkdtemp(prefix="pandagpt_random_"))
    tokenizer = build_word_tokenizer(sorted(set(TINY_WORDS)), out)
    if len(tokenizer) > config.audio_token_id:
        raise ValueError(f"the random model's tokenizer has {len(tokenizer)} ids; audio_token_id "
                         f"{config.audio_token_id} must lie above them")
    write_directory(jax.jit(lambda k: init_params(config, k))(jax.random.key(seed)), config, out)
    return out


def run_parity(directory: str | Path, clips: Sequence[np.ndarray] | None = None,
               questions: Sequence[str] | None = None, max_new_tokens: int = 8,
               tolerance: float = FLOAT32_TOLERANCE, video: np.ndarray | None = None, *,
               param_dtype: str = "float32", dtype: str = "float32", prompt_format: str = "chat") -> ParityReport:
    """Both frameworks on the same inputs (see the module docstring); the first clip's audio with `video`
    (default: random vision inputs), every clip's audio vector. The prompt is PandaGPT's, tokenised by
    the directory's own tokenizer (`checkpoints_pandagpt.load_tokenizer`): a directory without one is a
    MissingTokenizerError, never a stand-in prompt. `arrays["prompt_ids"]` holds the prompt compared."""
    if (param_dtype, dtype, prompt_format) != ("float32", "float32", "chat"):
        raise ValueError("PandaGPT's parity runs in float32 with PandaGPT's own prompt")
    import torch
    import transformers

    from agac_jax.models.pandagpt.model import PandaGPT, prompt_ids
    from agac_jax.models.qwen2_audio.parity import synthetic_clips
    from agac_jax.models.pandagpt.torch_reference import imagebind_kwargs, imagebind_model

    torch.backends.cuda.matmul.allow_tf32 = False
    directory = Path(directory)
    config, params = load_pandagpt_directory(directory)
    question = (questions or ["is there a dog in the video ?"])[0]
    ids = prompt_ids(load_tokenizer(directory), question, config.llama.bos_token_id, config.audio_token_id)
    ib = config.imagebind
    module = imagebind_model()
    imagebind_state, llama_state, proj_state = torch_states(params)
    imagebind = module.ImageBindModel(**imagebind_kwargs(ib)).eval()
    missing, unexpected = imagebind.load_state_dict({k: torch.tensor(v) for k, v in imagebind_state.items()},
                                                    strict=False)
    ours = [k for k in missing if k.split(".")[1] in ("audio", "vision") and "logit_scale" not in k]
    if ours or unexpected:
        raise KeyError(f"the inverse name map misses {ours} and names unknown {unexpected}")
    llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(**config.llama.to_hf_dict(),
                                                                   attn_implementation="eager")).eval()
    llama.load_state_dict({k: torch.tensor(v) for k, v in llama_state.items()}, strict=True)
    proj = torch.nn.Linear(ib.out_embed_dim, config.llama.hidden_size)
    proj.load_state_dict({k: torch.tensor(v) for k, v in proj_state.items()})
    modality = module.ModalityType

    clips = list(clips) if clips else synthetic_clips()[:2]
    fbanks = np.stack([kf.imagebind_clip_features(np.asarray(c, np.float32))[0] for c in clips])  # [n, 3, 128, 204]
    if video is None:
        video = np.random.default_rng(0).standard_normal((15, 3, ib.video_frames, ib.image_size, ib.image_size),
                                                         dtype=np.float32)
    position = ids.index(config.audio_token_id)

    def branch(key, x):
        with torch.no_grad():
            tokens = imagebind.modality_preprocessors[key](**{key: x})["trunk"]["tokens"]
            out = imagebind.modality_heads[key](imagebind.modality_trunks[key](tokens=tokens))
            return torch.nn.functional.normalize(out, dim=-1).mean(0)

    with torch.no_grad():
        t_audio = torch.stack([branch(modality.AUDIO, torch.tensor(f)[:, None]) for f in fbanks])
        t_video = branch(modality.VISION, torch.tensor(video))
        t_token = proj(t_audio[0]) + proj(t_video)
        seq = list(ids)
        for _ in range(max_new_tokens):  # greedy, recomputed in full (the reference needs no cache)
            embeds = llama.get_input_embeddings()(torch.tensor(seq))
            embeds[position] = t_token
            logits = llama(inputs_embeds=embeds[None]).logits[0]
            if len(seq) == len(ids):
                t_logits = logits.numpy()
            seq.append(int(logits[-1].argmax()))
        t_tokens = np.asarray(seq[len(ids):])

    model = PandaGPT(config)
    v = {"params": params}
    f_audio = jnp.stack([model.apply(v, jnp.asarray(f), method=model.audio_embedding) for f in fbanks])
    f_video = model.apply(v, jnp.asarray(video), method=model.video_embedding)
    f_token = model.apply(v, f_audio[0], f_video, method=model.av_token)
    seq = list(ids)
    for _ in range(max_new_tokens):
        s = jnp.asarray(seq)
        embeds = model.apply(v, s[None], method=model.embed_tokens)[0].at[position].set(f_token)
        n = len(seq)
        hidden, _ = model.apply(v, embeds[None], positions=jnp.arange(n)[None],
                                mask=jnp.tril(jnp.ones((n, n), bool))[None], method=model.decode)
        logits = model.apply(v, hidden[0], method=model.logits)
        if n == len(ids):
            f_logits = np.asarray(logits)
        seq.append(int(jnp.argmax(logits[-1])))
    f_tokens = np.asarray(seq[len(ids):])

    comparisons = [
        compare("audio_vectors", f_audio, t_audio.numpy(), tolerance),
        compare("video_vector", f_video, t_video.numpy(), tolerance),
        compare("av_token", f_token, t_token.numpy(), tolerance),
        compare("logits", f_logits, t_logits, tolerance),
        Comparison("greedy_tokens", float(np.sum(f_tokens != t_tokens)), float(np.sum(f_tokens != t_tokens)), 0.0),
    ]
    arrays = dict(audio_vectors=np.asarray(f_audio), video_vector=np.asarray(f_video), av_token=np.asarray(f_token),
                  logits=f_logits, greedy_tokens=f_tokens, prompt_ids=np.asarray(ids))
    return ParityReport(comparisons, arrays)
