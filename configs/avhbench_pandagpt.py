"""AVHBench with PandaGPT-7B, the poster's AVHBench model: its audio-driven video hallucination task
(the poster's), and variants for the benchmark's other three tasks.

    python -m launch.evaluate --config=configs/avhbench_pandagpt.py \
        --config.dataset.root=/data/AVHBench \
        --config.model.checkpoint_dir=/models/pandagpt_7b_converted \
        --config.codec.options.weights_dir=/models/semanticodec \
        --workdir=runs/avhbench_pandagpt

    python -m launch.evaluate --config=configs/avhbench_pandagpt.py:local --workdir=/tmp/x

Model: a PandaGPT directory converted once from the released pickles (imagebind_huge.pth, the Vicuna
v0 7B shards, PandaGPT's delta pytorch_model.pt) by `agac_jax.models.pandagpt.checkpoints.convert_to_directory(
..., allow_pickle=True)`, with the Vicuna tokenizer files copied beside model.safetensors. Each sample is
answered with its video and its soundtrack in PandaGPT's one AV token (W(a + v) + 2b); only the audio
is scored, compressed and gated (DESIGN.md section 9). FastV is not run: PandaGPT's audio is one LLM
token, so FastV's score is the same for every frame.

Variants (`--config=configs/avhbench_pandagpt.py:NAME`):
  default  the poster's grid: r in {25, 50, 100}, rho in {1.0, 0.8, 0.5}, every method but fastv, seeds {0, 1, 2};
  local    end to end with no download: a random tiny PandaGPT (configs/tiny_pandagpt.json, word-level
           tokenizer) on 4 generated 9.5 s videos (`avhbench.write_generated`, in the temp directory),
           the offline rvq_mel codec, original/codec/fused/random, r = 100, rho in {1.0, 0.5}, one seed.
  v2a, matching, captioning   the default grid on video-driven audio hallucination ("Is the X making
           sound in the audio?"), audio-visual matching ("Are the contexts of audio and visual content
           matching?": yes/no, the same metrics and statistics) and audio-visual captioning ("Describe
           what you see and hear in a single sentence.": up to 64 answer tokens, CIDEr-D against the
           reference caption, agac_jax/eval/captions.py); each prompt is the QA entry's text as it is.
  v2a_local, matching_local, captioning_local   `local` on that task (the generated tree holds every
           task; captions up to 12 tokens).
On every task only the soundtrack is scored and compressed; the video goes into the AV token as it is
(WORKSPACE.md, "AVHBench's tasks", says what the audio scores mean on each).
"""

from __future__ import annotations

from pathlib import Path

import ml_collections

from configs.avhbench import CAPTION_TOKENS, VARIANTS, apply_task, task_variant
from configs.common import base_config

TINY = str(Path(__file__).resolve().parent / "tiny_pandagpt.json")
LOCAL_CAPTION_TOKENS = 12  # the random tiny model's captions: enough words for CIDEr-D's 4-grams


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The sweep config; `arg` picks a variant of VARIANTS (None: default)."""
    variant = arg or "default"
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r} of avhbench_pandagpt; choose one of {VARIANTS}")
    task, variant = task_variant(variant)
    config = base_config()
    config.dataset.name = "avhbench"
    config.dataset.root = ""  # set on the command line: the AVHBench directory (either release layout)
    config.dataset.task = "Audio-driven Video Hallucination"  # the poster's task
    config.dataset.generated = 0  # > 0 and no root: that many generated videos (the local variant)
    config.model.kind = "pandagpt"  # agac_jax.models.pandagpt
    config.model.checkpoint_dir = ""  # set on the command line: a converted PandaGPT directory
    config.model.use_video = True  # the AV token holds the video too, as PandaGPT answers AVHBench
    config.scoring.buckets_seconds = (10, 20, 30)  # codec frame grids; ImageBind reads 3 x 2 s of any clip
    config.scoring.occlusion_chunk = 68  # 612 fbank gates: 9 chunks, each recomputing from the AV token
    config.scoring.max_text_tokens = 48  # PandaGPT's template and an AVHBench question
    config.methods = ("original", "codec", "fused", "aad", "attention", "random", "uniform", "energy",
                      "segment_topk")
    config.rates = (25, 50, 100)  # the poster's rates
    config.rhos = (1.0, 0.8, 0.5)  # the poster's AVHBench ratios
    config.seeds = (0, 1, 2)
    config.codec.backend = "semanticodec"
    config.codec.options = ml_collections.ConfigDict()
    config.codec.options.weights_dir = ""  # set on the command line: SemantiCodec checkpoints
    config.codec.deterministic = False
    config.runtime.codec_timeout_s = 900.0
    if variant == "local":
        config.dataset.generated = 4
        config.model.random_init = TINY
        config.scoring.buckets_seconds = (10,)
        config.scoring.occlusion_chunk = 204  # 3 chunks: compiles fast on a laptop
        config.scoring.max_new_tokens = 4
        config.scoring.batch_size = 4
        config.methods = ("original", "codec", "fused", "random")
        config.rates = (100,)
        config.rhos = (1.0, 0.5)
        config.seeds = (0,)
        config.codec.backend = "rvq_mel"  # offline, not SemantiCodec
        config.codec.options = ml_collections.ConfigDict()
        config.codec.deterministic = True
        config.runtime.codec_timeout_s = 300.0
        config.runtime.batch_samples = 4
    apply_task(config, task, LOCAL_CAPTION_TOKENS if variant == "local" else CAPTION_TOKENS)
    return config
