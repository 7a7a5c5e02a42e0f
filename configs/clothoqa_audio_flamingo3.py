"""The poster's ClothoQA grid with Audio Flamingo 3 (nvidia/audio-flamingo-3-hf) from a local directory.

    python -m launch.evaluate --config=configs/clothoqa_audio_flamingo3.py \
        --config.dataset.root=/data/clotho_aqa \
        --config.model.checkpoint_dir=/models/audio-flamingo-3-hf \
        --config.codec.options.weights_dir=/models/semanticodec \
        --workdir=runs/clothoqa_audio_flamingo3

Everything but the model is `configs/clothoqa_qwen2audio.py`'s: lmms-eval's clotho_aqa protocol (its
single-word instruction after each question, greedy answers of at most 8 tokens, EM beside accuracy),
the poster's grid and SemantiCodec. The model is read as the hub serves it (config.json with
model_type "audioflamingo3", safetensors shards, the Qwen2 tokenizer, processor_config.json and
chat_template.jinja): its processor's chat template, one <sound> per clip, 40 ms tokens.

Variants (`--config=configs/clothoqa_audio_flamingo3.py:NAME`):
  default  the grid above;
  local    a tiny random AF3 of configs/tiny_audio_flamingo3_random.json instead of the checkpoint, the
           first 4 samples of --config.dataset.root, the offline codec (rvq_mel), methods
           original/codec/fused/random at r = 50, rho in {1.0, 0.5}, one seed: the pipeline end to end
           on a laptop, before any download.
"""

from __future__ import annotations

from pathlib import Path

import ml_collections

from configs import clothoqa_qwen2audio

VARIANTS = ("default", "local")
TINY = Path(__file__).resolve().parent / "tiny_audio_flamingo3_random.json"


def local_variant(config: ml_collections.ConfigDict, tiny: Path) -> None:
    """A random tiny model of `tiny`, the first 4 samples, the offline codec, a small grid."""
    config.model.random_init = str(tiny)  # a random model of this config json (its family: model.kind)
    config.model.param_dtype = "float32"  # the tiny model runs in float32
    config.model.dtype = "float32"
    config.dataset.max_samples = 4  # a setup check
    config.codec.backend = "rvq_mel"  # offline, no weights to fetch
    config.codec.python = ""  # this interpreter
    config.codec.options = ml_collections.ConfigDict()  # rvq_mel's defaults
    config.codec.deterministic = True  # same input, same output: identical compressed clips are shared
    config.runtime.codec_timeout_s = 300.0
    config.methods = ("original", "codec", "fused", "random")  # one scored method, one seeded
    config.rates = (50,)
    config.rhos = (1.0, 0.5)  # rho = 1 is the codec row
    config.seeds = (0,)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The sweep config; `arg` picks a variant of VARIANTS (None: default)."""
    variant = arg or "default"
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r} of clothoqa_audio_flamingo3; choose one of {VARIANTS}")
    config = clothoqa_qwen2audio.get_config("default")
    config.model.kind = "audio_flamingo3"  # agac_jax.models.audio_flamingo3
    config.model.checkpoint_dir = ""  # set on the command line: audio-flamingo-3-hf, local
    config.scoring.buckets_seconds = (10, 20, 30)  # Clotho clips last 15 to 30 s: one window each
    if variant == "local":
        local_variant(config, TINY)
    return config
