"""The shipped sweep: the project's tiny Qwen2-Audio on the synthetic test split, offline codec.

    python -m launch.evaluate --config=configs/synthetic_tiny.py --workdir=runs/synthetic_tiny
    python -m launch.evaluate --config=configs/synthetic_tiny.py:local --workdir=/tmp/agac_local

Model: `assets/tiny_qwen2audio` (trained by `agac_jax.train` on the synthetic train split). Data: the
synthetic test split generated in memory (`agac_jax.data.synthetic.generate_split("test", 8, 0)`:
8 clips, 12 questions; the split does not change with the sweep seed). Grid: every method of
DESIGN.md section 4, r in {25, 50, 100}, rho in {1.0, 0.9, 0.7, 0.5}, seeds {0, 1, 2}: 228 records
per question (the adaptive methods are asked for by name: `--config.methods`). Codec: `rvq_mel`, the
offline residual-VQ mel codec (not SemantiCodec; no download).

Budget: at most 10 minutes on 2 CPU cores, which sets the number of clips. Measured: 8 clips, 2736
records, 5 min 11 s with the default local score (6 min 5 s with the poster's occlusion) on the 2
cores of the development machine (about a minute of it compilation; the codec sidecar is the slowest
stage). Raise `--config.dataset.num_clips` for tighter error bars when
there is time.

Variants (`--config=configs/synthetic_tiny.py:NAME`):
  default  the grid above;
  local    2 clips, methods original/codec/fused/random, r = 50, rho in {1.0, 0.7}, seeds {0, 1}:
           a smoke run (3 questions; 2.7 minutes measured on the busy machine);
  poster   the grid above with the poster's method (`scorer.POSTER_LOCAL_SCORE`: occlusion of one token on
           log p, signed; alpha `POSTER_ALPHA` 0.5) in place of the default (IG 8 on the log-odds,
           |local| over 9 tokens, alpha 0.75);
  paired   the headline comparison at a resolvable N: 100 clips (164 questions), methods
           original/codec/fused/random/energy, r = 50, rho in {1.0, 0.5}, one seed: the paired tests
           of tables.md separate fused from the baselines where the default's 12 questions cannot.
"""

from __future__ import annotations

from pathlib import Path

import ml_collections

from agac_jax.scoring.settings import POSTER_ALPHA, POSTER_LOCAL_SCORE
from configs.common import base_config

REPO_ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("default", "local", "poster", "paired")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The sweep config; `arg` picks a variant of VARIANTS (None: default)."""
    variant = arg or "default"
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r} of synthetic_tiny; choose one of {VARIANTS}")
    config = base_config()
    config.dataset.name = "synthetic"  # generated in memory, see agac_jax.data.synthetic
    config.dataset.split = "test"  # disjoint from the train split the model learned from
    config.dataset.num_clips = 8  # fits the 10-minute budget on 2 cores (see the docstring)
    config.dataset.generation_seed = 0  # the split is fixed; sweep seeds do not change it
    config.model.checkpoint_dir = str(REPO_ROOT / "assets" / "tiny_qwen2audio")  # the shipped tiny model
    config.scoring.max_new_tokens = 4  # the tiny model answers one word and <|im_end|>
    config.scoring.max_text_tokens = 32  # the synthetic prompts have 25 to 29 text tokens
    config.scoring.batch_size = 8  # clips per compiled call
    config.scoring.buckets_seconds = (5, 10, 15)  # synthetic clips last 3 to 12 s
    config.rates = (25, 50, 100)  # every SemantiCodec rate
    config.rhos = (1.0, 0.9, 0.7, 0.5)  # the poster's ratios plus 0.5 (AVHBench table)
    config.seeds = (0, 1, 2)  # three seeds, as the poster
    config.codec.backend = "rvq_mel"  # offline codec, named for what it is (not SemantiCodec)
    config.codec.deterministic = True  # rvq_mel is seeded: identical clips share one codec pass
    if variant == "poster":
        config.scoring.update(POSTER_LOCAL_SCORE)  # DESIGN.md section 2's local score, exactly
        config.scoring.alpha = POSTER_ALPHA  # and the poster's fusion weight
    if variant == "paired":
        config.dataset.num_clips = 100  # 164 questions: resolves ~12-point paired differences (tables.md)
        config.methods = ("original", "codec", "fused", "random", "energy")  # the method and two baselines
        config.rates = (50,)  # one rate
        config.rhos = (1.0, 0.5)  # rho = 1 is the codec row; 0.5 is where selections differ most
        config.seeds = (0,)  # the sample is the resampling unit; seeds add little at this N
    if variant == "local":
        config.dataset.num_clips = 2  # a smoke run
        config.methods = ("original", "codec", "fused", "random")  # one scored method, one seeded
        config.rates = (50,)  # one rate
        config.rhos = (1.0, 0.7)  # rho = 1 is the codec row
        config.seeds = (0, 1)  # two seeds give a std
    return config
