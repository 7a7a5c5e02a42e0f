"""The poster's ClothoQA grid with Voxtral Mini 3B (mistralai/Voxtral-Mini-3B-2507) from a local directory.

    python -m launch.evaluate --config=configs/clothoqa_voxtral.py \
        --config.dataset.root=/data/clotho_aqa \
        --config.model.checkpoint_dir=/models/Voxtral-Mini-3B-2507 \
        --config.codec.options.weights_dir=/models/semanticodec \
        --workdir=runs/clothoqa_voxtral

Everything but the model is `configs/clothoqa_qwen2audio.py`'s (lmms-eval's clotho_aqa protocol, the
poster's grid, SemantiCodec). The model is read as the hub serves it in the transformers format
(config.json with model_type "voxtral", safetensors shards, tekken.json, preprocessor_config.json).
Voxtral hears 80 ms tokens and pads every clip to whole 30 s windows of 375 tokens, so a Clotho clip
always costs the LLM 375 audio tokens, kept frames or not: its records show compression saving codec
tokens, not LLM tokens. Weights and compute in bfloat16, as Qwen2-Audio's config (9.4 GB for the 3B).

Variants (`--config=configs/clothoqa_voxtral.py:NAME`):
  default  the grid above;
  local    a tiny random Voxtral of configs/tiny_voxtral_random.json, the first 4 samples, the offline
           codec, a small grid (configs/clothoqa_audio_flamingo3.py's `local_variant`).
"""

from __future__ import annotations

from pathlib import Path

import ml_collections

from configs import clothoqa_qwen2audio
from configs.clothoqa_audio_flamingo3 import local_variant

VARIANTS = ("default", "local")
TINY = Path(__file__).resolve().parent / "tiny_voxtral_random.json"


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The sweep config; `arg` picks a variant of VARIANTS (None: default)."""
    variant = arg or "default"
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r} of clothoqa_voxtral; choose one of {VARIANTS}")
    config = clothoqa_qwen2audio.get_config("default")
    config.model.kind = "voxtral"  # agac_jax.models.voxtral
    config.model.checkpoint_dir = ""  # set on the command line: Voxtral-Mini-3B-2507, local
    config.scoring.buckets_seconds = (30,)  # every clip is one whole 30 s window
    if variant == "local":
        local_variant(config, TINY)
    return config
