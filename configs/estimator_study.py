"""The estimator study: local-score settings against evidence recall, faithfulness and cost.

    python -m launch.study --config=configs/estimator_study.py --workdir=runs/estimator_study
    python -m launch.study --config=configs/estimator_study.py:local --workdir=/tmp/agac_study_local

A setting is 'estimator/window-or-steps/target[/input][/magnitude][/smooth<k>]' (`study.Setting`):
gates on the log-mel frames instead of the embeddings, and how fusion reads the local score (its
magnitude, a k-token box filter); readings of one raw score share its scoring run.

Per benchmark and setting: fused evidence recall at rho 0.5 and 0.7 for each alpha; at `curve_alpha`,
the A.C. of the joined top-rho frames at those ratios and the deletion and insertion areas of the
answer's log-odds and of A.C.; FLOPs and seconds per clip; energy, random and attention once per
benchmark (agac_jax/eval/study.py). Outputs in --workdir: rows.jsonl (a rerun resumes), study.md,
study.csv, recall_vs_cost.png.

Variants (`--config=configs/estimator_study.py:NAME`):
  default  both benchmarks (24 synthetic clips, 90 scenes clips: 29 and 205 questions with evidence),
           every setting of SETTINGS (each raw setting signed and as READ): the whole grid; hours on
           2 CPU cores (occlusion dominates);
  quick    12 synthetic and 20 scenes clips (14 and 46 questions with evidence), QUICK_SETTINGS:
           the poster's setting, each target, IG steps 4 to 16, the input gate domain, three of them
           also as READ;
  targets  the 90 scenes clips: the poster's setting (occlusion/1/logp) and the default (IG 8 on the
           log-odds read as |local| over 9 tokens) with its signed reading, recall at alpha 0.5 and
           0.75, curves at alpha 0.75 and rho 0, 0.5 and 1, against the baselines: the default's targets
           (recall and A.C. at rho 0.5) on 205 questions with evidence, within 15 minutes on 2 cores;
  validation  the 80 clips of the scenes validation split (220 questions), the default's estimator
           read over 5, 9 and 15 tokens, alphas 0.5 to 1, random one draw: where the default's reading
           and alpha were chosen (4 min 48 s on 2 cores);
  kinds    the default setting at alpha 0.75 on the scenes validation split (80 clips, 220 questions):
           calibrates `adaptive_kind`'s weight per question kind (kind_weights.json; KIND_WEIGHTS);
  adaptive the default setting (IG 8 on the log-odds, |local| over 9 tokens, alpha 0.75) on both
           benchmarks' test splits (24 synthetic clips, 90 scenes clips), fused at fixed rho against the
           adaptive selectors (`adaptive_mass`, `adaptive_pool`) at rho-bar 0.3, 0.5, 0.7, each
           benchmark's questions one budget pool; no baselines. Writes adaptive.md (paired tests),
           adaptive.csv and ac_vs_tokens.png besides the study's outputs;
  adaptive_kind  the adaptive variant's scenes benchmark with `adaptive_kind` alone (KIND_WEIGHTS),
           the one benchmark whose kinds were calibrated;
  local    4 clips of each benchmark, two settings, one alpha: a smoke run.
"""

from __future__ import annotations

from pathlib import Path

import ml_collections

from configs.common import base_config

REPO_ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("default", "quick", "targets", "validation", "kinds", "adaptive", "adaptive_kind", "local")
_RAW = tuple(f"occlusion/{w}/{t}" for t in ("logp", "log_odds") for w in (1, 3, 9)) + tuple(
    f"integrated_gradients/{n}/{t}" for t in ("logp", "log_odds") for n in (4, 8, 16, 32))
READ = "magnitude/smooth9"  # the default reading of the local score: |local| over 9 tokens (0.36 s)
SETTINGS = _RAW + tuple(f"{raw}/{READ}" for raw in _RAW)  # each read both ways (one scoring run each)
QUICK_SETTINGS = ("occlusion/1/logp", "occlusion/1/log_odds", "integrated_gradients/4/log_odds",
                  "integrated_gradients/8/log_odds", "integrated_gradients/16/logp",
                  "integrated_gradients/8/log_odds/input", f"occlusion/1/logp/{READ}",
                  f"integrated_gradients/8/log_odds/{READ}", f"integrated_gradients/8/log_odds/input/{READ}")
# adaptive_kind's weights: each scenes question kind's mean share of frames fused needs to keep all of a
# question's evidence, over the mean of all (the `kinds` variant on the validation split, 180 questions
# with evidence: bench/results/estimator_study_kinds/kind_weights.json)
KIND_WEIGHTS = (("count", 0.955), ("existence", 0.7911), ("order", 1.1992))
SHIPPED = REPO_ROOT / "assets" / "tiny_qwen2audio"
SCENES_MODEL = REPO_ROOT / "assets" / "tiny_qwen2audio_scenes"


def _benchmark(name: str, num_clips: int, checkpoint_dir: Path, label: str) -> ml_collections.ConfigDict:
    bench = ml_collections.ConfigDict()
    bench.label = label  # the benchmark's name in the tables
    bench.checkpoint_dir = str(checkpoint_dir)  # the model that answers it
    bench.dataset = base_config().dataset  # the data set section of a sweep config
    bench.dataset.name = name
    bench.dataset.split = "test"
    bench.dataset.num_clips = num_clips
    return bench


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The study config; `arg` picks a variant of VARIANTS (None: default)."""
    variant = arg or "default"
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r} of estimator_study; choose one of {VARIANTS}")
    config = base_config()
    scenes_model = SCENES_MODEL if SCENES_MODEL.is_dir() else SHIPPED
    config.benchmarks = [  # each: a data set section and the model that answers it
        _benchmark("synthetic", 24, SHIPPED, "synthetic"),  # the main job's benchmark (29 questions with evidence)
        _benchmark("synthetic_scenes", 90, scenes_model, "scenes"),  # the harder one (205 questions with evidence)
    ]
    config.settings = SETTINGS  # estimator/window-or-steps/target of each scored setting
    config.alphas = (0.25, 0.5, 0.75)  # fusion weights of the local score measured for every setting
    config.curve_alpha = 0.75  # the alpha of the deletion and insertion curves (the default's; the poster's is 0.5)
    config.rate = 50  # codec frame grid the selections rank (tokens/s)
    config.recall_rhos = (0.5, 0.7)  # keep ratios of the evidence recall columns
    config.curve_rhos = (0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)  # ratios of the curves (from 0 to 1)
    config.random_draws = 4  # draws of the random baseline averaged (one moves its A.C. at rho 0.5 by ~1 point)
    config.selectors = ()  # more registry selectors measured like fused at curve_alpha, compared with it (adaptive.md)
    config.calibrate_kinds = False  # write adaptive_kind's weights per question kind (kind_weights.json)
    config.baselines = ("energy", "random", "attention")  # measured once per benchmark
    config.scoring.max_new_tokens = 4  # the tiny models answer one word and <|im_end|>
    config.scoring.max_text_tokens = 32  # the synthetic prompts have at most 32 text tokens
    config.scoring.buckets_seconds = (5, 10, 15)  # synthetic clips last 3 to 12 s
    if variant == "quick":
        config.benchmarks = [_benchmark("synthetic", 12, SHIPPED, "synthetic"),
                             _benchmark("synthetic_scenes", 20, scenes_model, "scenes")]
        config.settings = QUICK_SETTINGS  # every estimator, target and gate domain once
    if variant == "targets":
        config.benchmarks = config.benchmarks[1:]  # the scenes benchmark, 205 questions with evidence
        # the poster's setting, and the default (IG 8 on the log-odds, read as |local| over 9 tokens)
        # beside its signed reading (the same scoring run)
        config.settings = ("occlusion/1/logp", "integrated_gradients/8/log_odds",
                           f"integrated_gradients/8/log_odds/{READ}")
        config.alphas = (0.5, 0.75)  # the poster's alpha (recall only) and the default's (with the curves)
        config.curve_rhos = (0.0, 0.5, 1.0)  # the targets' A.C. at rho 0.5 (the curves of 7 ratios: default)
    if variant == "validation":
        config.benchmarks = [_benchmark("synthetic_scenes", 80, scenes_model, "scenes validation")]
        config.benchmarks[0].dataset.split = "validation"  # not the study's test clips
        config.settings = tuple(f"integrated_gradients/8/log_odds/magnitude/smooth{k}" for k in (5, 9, 15))
        config.alphas = (0.5, 0.6, 0.75, 1.0)  # the poster's weight to AAD alone
        config.curve_rhos = (0.0, 0.5, 1.0)  # A.C. at rho 0.5
        config.random_draws = 1  # one draw: a check, not the study's figure
    if variant == "kinds":
        config.benchmarks = [_benchmark("synthetic_scenes", 80, scenes_model, "scenes validation")]
        config.benchmarks[0].dataset.split = "validation"  # not the test clips the weights are used on
        config.settings = (f"integrated_gradients/8/log_odds/{READ}",)  # the project's default local score
        config.alphas = (0.75,)  # the default's alpha
        config.curve_rhos = (0.0, 0.5, 1.0)  # the fewest curve ratios: the weights are the output
        config.baselines = ()
        config.calibrate_kinds = True
    if variant in ("adaptive", "adaptive_kind"):
        config.settings = (f"integrated_gradients/8/log_odds/{READ}",)  # the project's default local score
        config.alphas = (0.75,)  # the default's alpha, with the curves
        config.recall_rhos = (0.3, 0.5, 0.7)  # rho-bar: fixed rho for fused, the budget for the adaptive ones
        config.curve_rhos = (0.0, 0.3, 0.5, 0.7, 1.0)  # insertion A.C. at each rho-bar
        config.selectors = ("adaptive_mass", "adaptive_pool")
        config.baselines = ()  # measured by the targets variant
    if variant == "adaptive_kind":
        config.benchmarks = config.benchmarks[1:]  # the scenes test split (the kinds calibrated on its validation)
        config.selectors = ("adaptive_kind",)
        config.kind_weights = KIND_WEIGHTS
    if variant == "local":
        config.benchmarks = [_benchmark("synthetic", 4, SHIPPED, "synthetic"),
                             _benchmark("synthetic_scenes", 4, scenes_model, "scenes")]
        config.settings = ("occlusion/1/logp", "integrated_gradients/4/log_odds")  # one of each estimator
        config.alphas = (0.75,)  # the curve alpha only
        config.curve_rhos = (0.0, 0.5, 1.0)  # three points
        config.random_draws = 2  # the mean of two draws
    return config
