"""AVHBench's audio-driven video hallucination task with a Qwen2-Audio directory (the poster used PandaGPT).

    python -m launch.evaluate --config=configs/avhbench.py \
        --config.dataset.root=/data/AVHBench \
        --config.model.checkpoint_dir=/models/Qwen2-Audio-7B-Instruct \
        --config.codec.options.weights_dir=/models/semanticodec \
        --workdir=runs/avhbench

Data: `agac_jax.data.avhbench` (soundtracks extracted with ffmpeg on demand). The poster's AVHBench
table uses PandaGPT-7B (configs/avhbench_pandagpt.py); this config runs the same grid (r in
{25, 50, 100}, rho in {1.0, 0.8, 0.5}) with a Qwen2-Audio model instead, so its numbers are not the
poster's. Codec: SemantiCodec, not deterministic (see clothoqa_qwen2audio.py).

Variants (`--config=configs/avhbench.py:NAME`):
  default  the grid above, every method, seeds {0, 1, 2};
  local    the first 10 samples, original/codec/fused, r = 100, rho in {1.0, 0.5}, seeds {0, 1}.
  v2a, matching, captioning (and each with `_local`): the same on AVHBench's other tasks (video-driven
           audio hallucination, audio-visual matching, audio-visual captioning; `TASK_VARIANTS`), each
           asked with its QA entry's text as it is, as the benchmark does. Qwen2-Audio hears the
           soundtrack only: on matching and captioning, which ask about the video too, it answers
           without it. Captioning answers are captions (up to CAPTION_TOKENS tokens), scored by
           CIDEr-D (agac_jax/eval/captions.py).
"""

from __future__ import annotations

import ml_collections

from agac_jax.data.avhbench import TASKS, is_caption_task
from configs.common import base_config

TASK_VARIANTS = {slug: task for task, slug in TASKS.items()}  # a2v (the default task), v2a, matching, captioning
VARIANTS = ("default", "local") + tuple(
    f"{slug}{local}" for slug in list(TASK_VARIANTS)[1:] for local in ("", "_local"))
CAPTION_TOKENS = 64  # AVHBench's reference captions are one sentence of about 20-30 words


def task_variant(variant: str) -> tuple[str, str]:
    """(AVHBench task, "default" or "local") of a variant name: "default"/"local" are the audio-driven
    video hallucination task; "{slug}" and "{slug}_local" the task of TASK_VARIANTS[slug]."""
    if variant in ("default", "local"):
        return TASK_VARIANTS["a2v"], variant
    return TASK_VARIANTS[variant.removesuffix("_local")], "local" if variant.endswith("_local") else "default"


def apply_task(config: ml_collections.ConfigDict, task: str, caption_tokens: int = CAPTION_TOKENS) -> None:
    """Asks `task`; the captioning task gets `caption_tokens` answer tokens."""
    config.dataset.task = task
    if is_caption_task(task):
        config.scoring.max_new_tokens = caption_tokens


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The sweep config; `arg` picks a variant of VARIANTS (None: default)."""
    variant = arg or "default"
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r} of avhbench; choose one of {VARIANTS}")
    task, variant = task_variant(variant)
    config = base_config()
    config.dataset.name = "avhbench"  # either release: {root}/**/QA json + videos (2025-03) or {root}/json, video (v0)
    config.dataset.root = ""  # set on the command line: the AVHBench directory
    config.dataset.task = "Audio-driven Video Hallucination"  # the poster's task
    config.model.checkpoint_dir = ""  # set on the command line: a Qwen2-Audio directory
    config.scoring.buckets_seconds = (10, 20, 30)  # soundtracks up to 30 s
    config.rates = (25, 50, 100)  # the poster's rates
    config.rhos = (1.0, 0.8, 0.5)  # the poster's AVHBench ratios
    config.seeds = (0, 1, 2)  # three seeds
    config.codec.backend = "semanticodec"  # the real codec, in the sidecar
    config.codec.python = ".venv-codec/bin/python"  # its own interpreter (tools/setup_codec_env.sh)
    config.codec.options = ml_collections.ConfigDict()  # semanticodec backend options
    config.codec.options.weights_dir = ""  # set on the command line: SemantiCodec checkpoints
    config.codec.deterministic = False  # diffusion decoding: every seed gets its own codec pass
    config.runtime.codec_timeout_s = 900.0  # SemantiCodec on a 30 s clip is slow on CPU
    apply_task(config, task)
    if variant == "local":
        config.dataset.max_samples = 10  # a setup check
        config.methods = ("original", "codec", "fused")  # the poster's rows
        config.rates = (100,)  # the poster's best rate
        config.rhos = (1.0, 0.5)  # rho = 1 is the codec row
        config.seeds = (0, 1)  # two seeds give a std
    return config
