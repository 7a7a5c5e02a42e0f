"""The poster's ClothoQA grid with Qwen2-Audio-7B-Instruct from a local directory.

    python -m launch.evaluate --config=configs/clothoqa_qwen2audio.py \
        --config.dataset.root=/data/clotho_aqa \
        --config.model.checkpoint_dir=/models/Qwen2-Audio-7B-Instruct \
        --config.codec.options.weights_dir=/models/semanticodec \
        --workdir=runs/clothoqa_qwen2audio

Data: the yes/no subset of the ClothoAQA test split (`agac_jax.data.clotho_aqa`: the released CSV and
wav tree, or the parquet export lmms-eval reads, under dataset.root). Protocol: lmms-eval's
`clotho_aqa`: each question followed by its single-word instruction (`dataset.prompt_suffix`), the
processor's chat template with its system prompt, greedy answers of at most 8 new tokens; tables.md
adds lmms-eval's exact match (EM) beside the accuracy of the parsed yes/no answer. Model: a Hugging
Face Qwen2-Audio-7B-Instruct directory (config, safetensors, tokenizer, preprocessor). Grid: every
method of DESIGN.md section 4, r in {25, 50, 100}, rho in {1.0, 0.9, 0.7}, seeds {0, 1, 2}; codec:
SemantiCodec in its sidecar (under .venv-codec, made by tools/setup_codec_env.sh; put its weights in
codec.options.weights_dir; the sidecar says exactly what is missing). SemantiCodec decodes
by diffusion sampling, so it is not taken as deterministic: each seed is its own codec pass.

For several hosts: `--config.runtime.distributed=True` on every host (jax.distributed.initialize),
then `python -m launch.evaluate --merge --workdir=...` on a shared workdir.

Variants (`--config=configs/clothoqa_qwen2audio.py:NAME`):
  default  the grid above;
  local    the first 10 samples, methods original/codec/fused/random, r = 50, rho in {1.0, 0.9},
           seeds {0, 1}: checks the setup end to end before the full run;
  base     the grid above with the base Qwen2-Audio-7B (no chat training), prompted in its model
           card's raw form (`model.prompt_format="raw"`: "<|audio_bos|><|AUDIO|><|audio_eos|>" + question):
               --config=configs/clothoqa_qwen2audio.py:base --config.model.checkpoint_dir=/models/Qwen2-Audio-7B
"""

from __future__ import annotations

import ml_collections

from agac_jax.data.clotho_aqa import LMMS_EVAL_PROMPT_SUFFIX
from configs.common import base_config

VARIANTS = ("default", "local", "base")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The sweep config; `arg` picks a variant of VARIANTS (None: default)."""
    variant = arg or "default"
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r} of clothoqa_qwen2audio; choose one of {VARIANTS}")
    config = base_config()
    config.dataset.name = "clotho_aqa"  # yes/no subset; CSV: majority label of the three annotators
    config.dataset.root = ""  # set on the command line: the ClothoAQA directory
    config.dataset.split = "test"  # train | val | test (the parquet export: val | test)
    config.dataset.prompt_suffix = LMMS_EVAL_PROMPT_SUFFIX  # lmms-eval's clotho_aqa post_prompt; "" asks bare
    config.model.checkpoint_dir = ""  # set on the command line: Qwen2-Audio-7B-Instruct, local
    config.model.param_dtype = "bfloat16"  # the released weights' dtype: 16.8 GB instead of 33.6 (fp32)
    config.model.dtype = "bfloat16"  # bf16 compute on GPUs/TPUs (tolerances: tests/test_bf16.py)
    config.scoring.max_new_tokens = 8  # lmms-eval's clotho_aqa limit; enough for "Yes." / "No, there is not."
    config.scoring.batch_size = 8  # clips per compiled call; a multiple of mesh.shape[0]
    config.scoring.buckets_seconds = (10, 20, 30)  # Clotho clips last 15 to 30 s
    config.mesh.shape = (1, 1)  # (data, model): one 80 GB GPU; (1, 8) shards the 7B over 8 16 GB devices
    #                             (launch.plan's figures: bench/README.md, "What fits where")
    config.rates = (25, 50, 100)  # the poster's rates
    config.rhos = (1.0, 0.9, 0.7)  # the poster's ratios; rho = 1 is the SemantiCodec row
    config.seeds = (0, 1, 2)  # three seeds, as the poster
    config.codec.backend = "semanticodec"  # the real codec, in the sidecar
    config.codec.python = ".venv-codec/bin/python"  # its own interpreter (tools/setup_codec_env.sh)
    config.codec.options = ml_collections.ConfigDict()  # semanticodec backend options
    config.codec.options.weights_dir = ""  # set on the command line: SemantiCodec checkpoints
    config.codec.deterministic = False  # diffusion decoding: every seed gets its own codec pass
    config.runtime.codec_timeout_s = 900.0  # SemantiCodec on a 30 s clip is slow on CPU
    if variant == "base":
        config.model.prompt_format = "raw"  # the base model's form; its chat template would be untrained
    if variant == "local":
        config.dataset.max_samples = 10  # a setup check
        config.methods = ("original", "codec", "fused", "random")  # one scored method, one seeded
        config.rates = (50,)  # one rate
        config.rhos = (1.0, 0.9)  # rho = 1 is the codec row
        config.seeds = (0, 1)  # two seeds give a std
    return config
