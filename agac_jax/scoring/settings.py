"""The scoring settings, each written once: `ScoringConfig` (every field, its default and its meaning),
the choices it validates against, the mesh axes and the default logical axis rules.

Nothing here imports JAX: a config file reads these defaults, `sweep.scoring_config` builds a
`ScoringConfig` from a config's sections by field name, and the compiled program's static spec
(`program.ProgramSpec.from_config`) takes the fields of the same names.
"""

from __future__ import annotations

import dataclasses
from fractions import Fraction
from typing import Any

import numpy as np

from agac_jax.audio.features import DEFAULT_BUCKETS_SECONDS
from agac_jax.codec.base import frame_samples

MESH_AXES = ("data", "model")
CPU_IG_CHUNK = 4  # IG steps vmapped together on CPU: 12 mixed clips at 16 steps, tiny model, 2 cores:
#                   1.70 s against 2.08 s one at a time and 1.93 s all 16 (3x the temporaries)
CPU_OCCLUSION_GATE_BATCH = 4  # occlusion gates vmapped together inside a chunk on CPU, so that a block's
#                   attention scores stay in cache. 12 mixed clips, tiny model, chunks of 16, 2 cores: 3.54 s
#                   against 4.17 s for the whole chunk at once; before CPU_SCORING_OPTIONS 4.62 s against
#                   5.19 s, and 2 gates 8.07 s, 8 gates 4.93 s
MAX_RHO_DENOMINATOR = 10_000

# The selection methods in table order (`methods.METHODS` holds each one's rule under the same name), and
# the adaptive ones among them: their kept frames depend on which clips are selected together (a sweep
# batch; a resume or another batch size groups them otherwise), so a sweep runs them only when asked.
SELECTION_METHODS = ("fused", "aad", "attention", "random", "uniform", "energy", "fastv", "segment_topk",
                     "adaptive_mass", "adaptive_pool", "adaptive_kind")
POOLED_METHODS = ("adaptive_mass", "adaptive_pool", "adaptive_kind")
DEFAULT_RHOS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)  # a faithfulness curve's keep ratios

ESTIMATORS = ("occlusion", "integrated_gradients")
# What the local score contrasts (DESIGN.md: the answer's log-probability). "log_odds" sums per answer
# token log p / (1 - p), computed from the logits; it does not flatten when the model is saturated.
TARGETS = ("logp", "log_odds")
# Where a gate mixes the clip with silence: the projected audio embeddings (DESIGN.md), or the log-mel
# frames before the encoder (each token's 4 frames), which re-runs the encoder for every gate.
GATE_DOMAINS = ("embedding", "input")
# What the fusion reads of a token's local contribution: its sign (DESIGN.md: evidence for the answer
# ranks first), or its magnitude (audio the answer rests on either way: counter-evidence that a "no"
# or an order answer weighs against ranks as high as support).
LOCAL_SIGNS = ("signed", "magnitude")

# Logical parameter axes -> mesh axes (`param_shardings`). Batch goes on 'data'; one wide axis of every
# matrix on 'model'. A head axis is split in whole heads only, and a named axis whose mesh axis does not
# divide it evenly hands that mesh axis to the weight's other named axis (`param_sharding`).
DEFAULT_AXIS_RULES: tuple[tuple[str, str | None], ...] = (
    ("batch", "data"),  # activations' batch (the program's clips)
    ("vocab", "model"),  # embedding table rows and LM head columns [vocab]
    ("mlp", "model"),  # decoder and encoder MLP hidden units [intermediate_size], [encoder_ffn_dim]
    ("heads", "model"),  # decoder query heads, q_proj columns and o_proj rows [heads * head_dim]
    ("kv_heads", "model"),  # decoder key/value heads, k_proj and v_proj columns [kv_heads * head_dim]
    ("audio_heads", "model"),  # encoder heads, q/k/v_proj columns and out_proj rows [d_model]
    ("audio_embed", "model"),  # the projector's input, the encoder's width [d_model]
    ("audio_conv", "model"),  # the encoder convolutions' output channels [d_model]
    ("embed", None),  # every model width [hidden_size], [d_model]: 'data' under FSDP (`fsdp_axis_rules`)
    ("norm", None),  # RMSNorm scales [hidden_size]
)
FSDP_AXES = ("embed",)  # the logical axes `fsdp_axis_rules` puts on 'data'

# The poster's local score exactly as DESIGN.md section 2 gives it: occlusion of one token, the answer's
# log-probability, gates on the projected audio embeddings, the signed contrast. `ScoringConfig(
# **POSTER_LOCAL_SCORE)` scores with it; the defaults below are the estimator study's choice (WORKSPACE.md).
POSTER_LOCAL_SCORE = dict(estimator="occlusion", window=1, target="logp", gate_domain="embedding",
                          local_sign="signed", local_smooth=1)
POSTER_ALPHA = 0.5  # the poster's fusion weight (DESIGN.md); ScoringConfig's default weighs the local score more


@dataclasses.dataclass(frozen=True)
class ScoringConfig:
    """What `Scorer` needs. The local score defaults to integrated gradients (8 steps) on the answer's
    log-odds, read as its magnitude smoothed over 9 tokens (the estimator study, WORKSPACE.md); every
    fusion weight alpha is 0.75 (the same study); every other field has the DESIGN.md default.
    POSTER_LOCAL_SCORE with alpha POSTER_ALPHA restores the poster's method."""

    estimator: str = "integrated_gradients"  # occlusion (DESIGN.md) | integrated_gradients
    target: str = "log_odds"  # what the local score contrasts: logp (DESIGN.md) | log_odds (program.TARGETS)
    gate_domain: str = "embedding"  # where gates mix clip and silence: embedding (DESIGN.md) | input (log-mel)
    window: int = 1  # occlusion window W in audio tokens
    ig_steps: int = 8  # integrated-gradients midpoint steps n
    ig_chunk: int | None = None  # IG steps evaluated together (vmapped; each holds a pass's activations
    #                              for its backward); None: CPU_IG_CHUNK on CPU, one at a time on
    #                              accelerators (a 7B pass's activations each)
    local_sign: str = "magnitude"  # what fusion reads of the local score: signed (DESIGN.md) | magnitude
    local_smooth: int = 9  # box filter width over the local score, in tokens (1: none, DESIGN.md; 9: 0.36 s)
    alpha: float = 0.75  # fusion weight of the local (AAD) score (the study's choice; POSTER_ALPHA: 0.5)
    keep: float | str = 0.9  # rho of the keep masks the program returns
    rates: tuple[int, ...] = (25, 50, 100)  # codec token rates the program maps scores to
    fastv_layer: int = 2  # FastV's decoder layer K
    max_new_tokens: int = 8  # greedy answer budget
    max_text_tokens: int = 64  # prompt tokens besides the audio placeholders
    batch_size: int = 8  # clips per compiled call (padded up)
    occlusion_chunk: int = 16  # gate vectors per vmapped chunk (memory; smaller chunks share more prefix)
    occlusion_segments: int = 0  # 0: a program step per chunk (least work); k: k loops (compile time)
    occlusion_gate_batch: int | None = None  # gates of a chunk vmapped together (a loop over blocks of
    #                                          them); None: CPU_OCCLUSION_GATE_BATCH on CPU, the whole
    #                                          chunk on accelerators
    prompt_steps: int = 4  # a batch's prompt slots: the smallest of this many steps up to the bucket's
    #                        (`Scorer.prompt_slots`) holding its longest prompt; 1: always the bucket's
    prompt_step_ratio: float = 0.8  # each prompt step is this share of the next: a prompt past the
    #                                 smallest step runs at most 1 / ratio of its own positions
    cpu_memory_budget: float = 0.25  # CPU: warn when a program's temporaries exceed this share of the
    #                                  host's memory (and refuse one that exceeds all of it)
    share_prefix: bool = True  # re-use the keys/values before the audio (IG) and each occlusion chunk (exact)
    cpu_ynnpack: bool = False  # CPU: XLA's YNNPACK fusions for dots and reductions (True: XLA's default,
    #                            whose first run of each program builds their pipelines; README); False: XLA's
    #                            own kernels (CPU_NO_YNNPACK_OPTIONS), same tables for the main job
    buckets_seconds: tuple[int, ...] = DEFAULT_BUCKETS_SECONDS  # clip length buckets (2-5 s apart: a clip
    #                                    pads at most 2-5 s; each bucket used compiles its own program)
    mesh_shape: tuple[int, int] = (1, 1)  # (data, model) devices
    generate_per_clip: bool | None = None  # greedy answers one clip per data shard at a time, so
    #   batch-padding copies generate nothing; None: on CPU (rows cost what they add there), not on
    #   accelerators (decoding reads the weights once per step whatever the batch holds)
    axis_rules: tuple[tuple[str, str | None], ...] = DEFAULT_AXIS_RULES
    fsdp: bool = False  # also split every weight's model width over 'data' (`fsdp_axis_rules`): for a
    #                     small 'model' axis and a large batch; weights are gathered where they are used

    def __post_init__(self):
        """The host boundary's value checks: inside the program these values are traced."""
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"estimator={self.estimator!r}; expected one of {ESTIMATORS}")
        if self.target not in TARGETS:
            raise ValueError(f"target={self.target!r}; expected one of {TARGETS}")
        if self.gate_domain not in GATE_DOMAINS:
            raise ValueError(f"gate_domain={self.gate_domain!r}; expected one of {GATE_DOMAINS}")
        if self.local_sign not in LOCAL_SIGNS:
            raise ValueError(f"local_sign={self.local_sign!r}; expected one of {LOCAL_SIGNS}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1]; got {self.alpha}")
        for name in ("window", "ig_steps", "local_smooth", "batch_size", "occlusion_chunk", "max_new_tokens", "max_text_tokens",
                     "prompt_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1; got {getattr(self, name)}")
        for name in ("ig_chunk", "occlusion_gate_batch"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1 or None; got {getattr(self, name)}")
        if self.occlusion_segments < 0:
            raise ValueError(f"occlusion_segments must be >= 0 (0: one step per chunk); got {self.occlusion_segments}")
        if not 0.0 < self.prompt_step_ratio <= 1.0:
            raise ValueError(f"prompt_step_ratio must lie in (0, 1]; got {self.prompt_step_ratio}")
        keep_ratio_fraction(self.keep)
        for rate in self.rates:
            frame_samples(rate)


def keep_ratio_fraction(rho: float | str) -> tuple[int, int]:
    """The keep ratio as the exact fraction of the decimal the user wrote.

    ``Fraction(str(rho))``: 0.7 -> (7, 10), not the binary float's 3152519739159347/2**52. Strings
    such as "0.7" or "2/3" are accepted too.

    Returns:
      (numerator, denominator) in lowest terms, with 0 < numerator <= denominator <= 10_000.

    Raises:
      ValueError: rho is not a finite number in (0, 1], or needs a denominator above 10_000 (write
        it with at most 4 decimals, or as a fraction string such as "1/3").
    """
    if isinstance(rho, bool) or not isinstance(rho, (int, float, str, np.integer, np.floating)):
        raise TypeError(f"Keep ratio rho must be a number or a decimal string; got {rho!r}.")
    try:
        fraction = Fraction(str(rho).strip())
    except (ValueError, ZeroDivisionError) as error:
        raise ValueError(
            f"Keep ratio rho must be a finite number in (0, 1]; got {rho!r}."
        ) from error
    if not 0 < fraction <= 1:
        raise ValueError(f"Keep ratio rho must lie in (0, 1]; got {rho!r}.")
    if fraction.denominator > MAX_RHO_DENOMINATOR:
        raise ValueError(
            f"Keep ratio rho={rho!r} is too fine: its exact fraction {fraction} has a denominator "
            f"above {MAX_RHO_DENOMINATOR}. Write it with at most 4 decimals or as a fraction "
            'string such as "1/3".'
        )
    return fraction.numerator, fraction.denominator


def fields_of(section: Any) -> dict[str, Any]:
    """The `ScoringConfig` fields a mapping or object holds (a config section, another dataclass)."""
    get = section.get if hasattr(section, "get") else lambda name, default: getattr(section, name, default)
    missing = object()
    out = {}
    for field in dataclasses.fields(ScoringConfig):
        value = get(field.name, missing)
        if value is not missing:
            out[field.name] = tuple(value) if isinstance(value, list) else value
    return out
