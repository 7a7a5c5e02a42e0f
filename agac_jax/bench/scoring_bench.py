"""Benchmark of the jitted scoring program (`agac_jax.scoring`) against the PyTorch reference.

Parts (`PARTS`), each a function of a `BenchContext` returning a JSON-ready dict:

- `whole`: seconds per clip of the whole scoring of a batch (both encoder passes, the answer, the AAD
  estimator, the attention reduction, fusion, keep masks) by `Scorer.score` (warm; the compile apart)
  against `torch_scores.score_clip` per clip on the same clips with the JAX answer ids, medians over
  repeats that alternate the two; on the small model (the shipped `assets/tiny_qwen2audio`, or a
  random one of its shape) and on a mid-size random model.
- `buckets`: JAX seconds per clip of 5, 10, 20 and 30 s clips in their length bucket, against the
  same clip padded to 30 s (a Scorer with the single bucket 30 s, as transformers pads).
- `batch`: batch scaling of the warm program and the number of traces over a sweep of buckets.
- `flops`: the 2048 x 2048 fp32 matmul ceiling, and for every program the `whole` part compiled:
  XLA's FLOP count and an analytic one, the achieved rate, and the memory the executable needs.
- `sharding`: the program on a ('data', 'model') mesh of 8 forced host devices against 1 device, in a
  subprocess (XLA_FLAGS must be set before jax is imported).
- `gpu`: the accelerator the run used, or `GPU_NOT_MEASURED`.

Clips are "n s" clips two mel frames (20 ms) short of n s: the encoder reads up to two frames past a
clip's end (`features.encoder_frames_needed`), so a clip of exactly 5 s is scored in the 10 s bucket.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import numpy as np

from agac_jax import checkpoints
from agac_jax.audio import features as feats
from agac_jax.data import synthetic
from agac_jax.scoring.program import ESTIMATORS
from agac_jax.scoring.scorer import ClipScores, Scorer, ScoringConfig

PARTS = ("whole", "buckets", "batch", "flops", "sharding", "gpu")
SCHEMA = "agac_jax.bench.scoring/1"
SAMPLE_RATE = 16_000
GPU_NOT_MEASURED = "not measured: no GPU in this session"
REPO_ROOT = Path(__file__).resolve().parents[2]
SHIPPED_TINY = REPO_ROOT / "assets" / "tiny_qwen2audio"
CLIP_SHORTFALL_SAMPLES = 2 * feats.HOP_LENGTH  # "n s" clips are two mel frames short of n s
WORKER_COMMAND = "import sys; from agac_jax.bench.scoring_bench import worker_main; worker_main(sys.argv[1:])"

# transformers Qwen2AudioConfig keyword arguments of the random models.
MODEL_SPECS: dict[str, dict[str, Any]] = {
    # The shape of configs/train_tiny.py (the shipped tiny model), random weights.
    "tiny_random": dict(
        audio_config=dict(num_mel_bins=80, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=128,
                          d_model=64),
        text_config=dict(model_type="qwen2", hidden_size=64, intermediate_size=192, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False),
    ),
    "mid_random": dict(
        audio_config=dict(num_mel_bins=128, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=1024,
                          d_model=256),
        text_config=dict(model_type="qwen2", hidden_size=512, intermediate_size=1024, num_hidden_layers=4,
                         num_attention_heads=8, num_key_value_heads=2, tie_word_embeddings=False),
    ),
    # --quick stand-ins for the two.
    "micro_random": dict(
        audio_config=dict(num_mel_bins=80, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=32,
                          d_model=16),
        text_config=dict(model_type="qwen2", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=False),
    ),
    "small_random": dict(
        audio_config=dict(num_mel_bins=80, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=64,
                          d_model=32),
        text_config=dict(model_type="qwen2", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False),
    ),
}


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """Sizes and repeats of a run. `quick()` gives the CI smoke sizes."""

    label: str = "full"  # recorded with the results; "quick" for --quick
    repeats: int = 3  # alternating repeats of the cheap measurements
    slow_repeats: int = 2  # repeats of the mid-size model and of long clips
    padded_repeats: int = 1  # repeats of a clip padded to 30 s (one program for every length)
    whole_models: tuple[str, ...] = ("tiny", "mid")  # roles measured by the `whole` part
    whole_clips: dict[str, int] = dataclasses.field(default_factory=lambda: {"tiny": 4, "mid": 2})
    estimators: tuple[str, ...] = ESTIMATORS
    clip_seconds: int = 5  # nominal clip length of `whole`, `batch`, `flops` and `sharding`
    bucket_seconds: tuple[int, ...] = (5, 10, 20, 30)
    batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    batch_budget_seconds: float = 60.0  # a batch size predicted to take longer than this is not run
    sharding_meshes: tuple[tuple[int, int], ...] = ((8, 1), (4, 2))
    sharding_devices: int = 8
    matmul_size: int = 2048
    layer_memory_check: bool = True  # `flops`: also compile each program for twice the decoder layers
    matmul_repeats: int = 10
    max_new_tokens: int = 8
    max_text_tokens: int = 32  # prompt slots besides the audio: the bench's prompts have 25 text tokens
    occlusion_chunks: tuple[int, ...] = (8, 16, 32, 64)  # gate vectors per batch tried on each side (`whole`, occlusion):
    #                                                   each side is timed at its fastest, so neither is handicapped
    tiny_model: str | None = str(SHIPPED_TINY)  # None or missing: a random model of its shape
    tiny_spec: str = "tiny_random"
    mid_spec: str = "mid_random"
    seed: int = 0

    @classmethod
    def quick(cls, **overrides: Any) -> "BenchConfig":
        """Tiny sizes for a smoke run: random micro models, one repeat, two buckets, batches 1 and 2."""
        fields = dict(label="quick", repeats=1, slow_repeats=1, padded_repeats=1,
                      whole_clips={"tiny": 2, "mid": 1}, bucket_seconds=(5, 10), batch_sizes=(1, 2),
                      sharding_meshes=((2, 1),), sharding_devices=2, matmul_size=512,
                      matmul_repeats=3, max_new_tokens=2, tiny_model=None, tiny_spec="micro_random",
                      mid_spec="small_random", occlusion_chunks=(16,))
        fields.update(overrides)
        return cls(**fields)

    def __post_init__(self):
        for role in self.whole_models:
            if role not in ("tiny", "mid"):
                raise ValueError(f"whole_models holds {role!r}; expected 'tiny' or 'mid'")
        for estimator in self.estimators:
            if estimator not in ESTIMATORS:
                raise ValueError(f"estimator {estimator!r}; expected one of {ESTIMATORS}")
        for spec in (self.tiny_spec, self.mid_spec):
            if spec not in MODEL_SPECS:
                raise ValueError(f"model spec {spec!r}; expected one of {sorted(MODEL_SPECS)}")
        if min(self.repeats, self.slow_repeats, self.padded_repeats) < 1:
            raise ValueError("repeats, slow_repeats and padded_repeats must be >= 1")


# ----------------------------------------------------------------------------------------------
# Models and clips
# ----------------------------------------------------------------------------------------------


def make_random_checkpoint(directory: Path, spec_name: str, seed: int = 0) -> Path:
    """A random Qwen2-Audio directory of `MODEL_SPECS[spec_name]` with a word tokenizer over the
    synthetic benchmark's vocabulary, processor files and a generation config (the recipe of
    tests/tiny_models.make_scoring_checkpoint)."""
    import torch
    from transformers import GenerationConfig, Qwen2AudioConfig, Qwen2AudioForConditionalGeneration

    from agac_jax.tokenizer import AUDIO_TOKEN, IM_END, save_processor_files

    spec = MODEL_SPECS[spec_name]
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = save_processor_files(directory, synthetic.VOCABULARY,
                                     num_mel_bins=spec["audio_config"]["num_mel_bins"])
    text = dict(spec["text_config"], vocab_size=len(tokenizer))
    torch.manual_seed(seed)
    config = Qwen2AudioConfig(**dict(spec, text_config=text,
                                     audio_token_index=tokenizer.convert_tokens_to_ids(AUDIO_TOKEN)))
    model = Qwen2AudioForConditionalGeneration(config)
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.convert_tokens_to_ids(IM_END),
                                               pad_token_id=tokenizer.pad_token_id, max_new_tokens=8)
    model.save_pretrained(directory)
    return directory


@dataclasses.dataclass
class ModelEntry:
    """One benchmarked model: its directory, how it was made, and its loaded halves (lazily)."""

    role: str
    directory: Path
    description: str
    shipped: bool
    _loaded: checkpoints.LoadedModel | None = None
    _tokenizer: Any = None
    _torch: Any = None

    def loaded(self) -> checkpoints.LoadedModel:
        if self._loaded is None:
            self._loaded = checkpoints.load_hf_directory(self.directory)
        return self._loaded

    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(str(self.directory))
        return self._tokenizer

    def torch_model(self) -> Any:
        """transformers' model with eager attention, in eval mode, on CUDA when torch has it."""
        if self._torch is None:
            import torch
            from transformers import Qwen2AudioForConditionalGeneration

            model = Qwen2AudioForConditionalGeneration.from_pretrained(self.directory, attn_implementation="eager")
            self._torch = model.to("cuda" if torch.cuda.is_available() else "cpu").eval()
        return self._torch

    def summary(self) -> dict[str, Any]:
        text, audio = self.loaded().config.text, self.loaded().config.audio
        n_params = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(self.loaded().params))
        return dict(description=self.description, shipped=self.shipped, directory=str(self.directory),
                    parameters=n_params, decoder=dict(width=text.hidden_size, layers=text.num_hidden_layers,
                                                      heads=text.num_attention_heads,
                                                      kv_heads=text.num_key_value_heads,
                                                      intermediate=text.intermediate_size,
                                                      vocab=text.vocab_size),
                    encoder=dict(d_model=audio.d_model, layers=audio.encoder_layers, mel_bins=audio.num_mel_bins))


def clip_samples(seconds: int) -> int:
    """Samples of a nominal `seconds` clip: two mel frames short, so it fits the `seconds` bucket."""
    return seconds * SAMPLE_RATE - CLIP_SHORTFALL_SAMPLES


def make_clips(count: int, seconds: int, seed: int) -> tuple[list[np.ndarray], list[str]]:
    """`count` clips (a tone burst in noise) of `clip_samples(seconds)` and an existence question each."""
    rng = np.random.default_rng(seed)
    n = clip_samples(seconds)
    t = np.arange(n) / SAMPLE_RATE
    clips, questions = [], []
    for i in range(count):
        onset = rng.uniform(0.0, 0.6) * t[-1]
        burst = (t >= onset) & (t < onset + 0.3 * t[-1])
        tone = 0.3 * np.sin(2 * np.pi * rng.uniform(200, 3000) * t) * burst
        clips.append((tone + 0.02 * rng.standard_normal(n)).astype(np.float32))
        questions.append(synthetic.existence_question(synthetic.EVENT_CLASSES[i % len(synthetic.EVENT_CLASSES)]))
    return clips, questions


# ----------------------------------------------------------------------------------------------
# Context and timing helpers
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class ProgramRecord:
    """A compiled scoring program measured by a part, for the `flops` part."""

    label: str
    entry: ModelEntry
    scorer: Scorer
    frames: int
    batch_size: int
    device_seconds: float  # median warm run of the executable on one batch


class BenchContext:
    """The run's config, its models (made on first use in `workdir`) and the programs measured."""

    def __init__(self, config: BenchConfig, workdir: Path, log: Callable[[str], None] = print):
        self.config = config
        self.workdir = workdir
        self.log = log
        self.programs: list[ProgramRecord] = []
        self._models: dict[str, ModelEntry] = {}

    def model(self, role: str) -> ModelEntry:
        if role not in self._models:
            self._models[role] = self._make_model(role)
        return self._models[role]

    def _make_model(self, role: str) -> ModelEntry:
        c = self.config
        if role == "tiny" and c.tiny_model and (Path(c.tiny_model) / "config.json").exists():
            return ModelEntry(role, Path(c.tiny_model), f"shipped trained model {c.tiny_model}", True)
        spec = c.tiny_spec if role == "tiny" else c.mid_spec
        directory = make_random_checkpoint(self.workdir / spec, spec, seed=c.seed)
        note = ""
        if role == "tiny" and c.tiny_model:
            note = f" (fallback: {c.tiny_model} does not exist)"
        return ModelEntry(role, directory, f"random {spec}{note}", False)

    def scorer(self, entry: ModelEntry, **overrides: Any) -> Scorer:
        config = ScoringConfig(max_new_tokens=self.config.max_new_tokens, max_text_tokens=self.config.max_text_tokens,
                               **overrides)
        return Scorer(entry.loaded(), entry.tokenizer(), config)


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def score_timed(scorer: Scorer, clips: list[np.ndarray], questions: list[str]) -> tuple[float, float, list[ClipScores]]:
    """(wall seconds, executable seconds, results) of one `Scorer.score` call."""
    wall, results = timed(lambda: scorer.score(clips, questions))
    run = sum(r.seconds["run"] for r in results)
    return wall, run, results


def reference_inputs(hf: Any, clip: np.ndarray) -> dict[str, np.ndarray]:
    """The reference's inputs of one clip: 30 s padded features and mask, as the processor gives them."""
    n_mels = hf.config.audio_config.num_mel_bins
    features, _ = feats.log_mel(clip, n_mels, pad_to_samples=feats.MAX_SAMPLES)
    silence, _ = feats.log_mel(np.zeros_like(clip), n_mels, pad_to_samples=feats.MAX_SAMPLES)
    mask = (np.arange(feats.MAX_FRAMES) < feats.num_valid_frames(len(clip))).astype(np.int64)
    return dict(features=features, feature_mask=mask, silence_features=silence)


def reference_timed(hf: Any, clips: list[np.ndarray], scores: list[ClipScores], estimator: str,
                    config: ScoringConfig, chunk: int) -> tuple[float, list[Any]]:
    """(wall seconds, ReferenceScores) of the PyTorch reference on each clip with the JAX answer ids,
    the log-mel features included as in `Scorer.score`."""
    from agac_jax.reference import torch_scores

    def run() -> list[Any]:
        return [torch_scores.score_clip(hf, s.input_ids, **reference_inputs(hf, clip), estimator=estimator,
                                        window=config.window, ig_steps=config.ig_steps, alpha=config.alpha,
                                        answer_ids=s.answer_ids, chunk=chunk,
                                        clip_id=f"clip {i}")
                for i, (clip, s) in enumerate(zip(clips, scores))]

    return timed(run)


def relative_differences(scores: list[ClipScores], refs: list[Any]) -> dict[str, float]:
    """Largest JAX - reference differences: local in nats (`local_abs`) and relative to the clip's
    log-probability scale max(|logp(1)|, |logp(0)|) (a confident model's local scores are differences
    of log-probabilities near 0, where float32 leaves ~1e-7 nats of noise), global and FastV relative
    to their max."""
    local_abs = max(float(np.abs(s.local - r.local).max()) for s, r in zip(scores, refs))
    local = max(float(np.abs(s.local - r.local).max() / max(abs(r.logp_full), abs(r.logp_silence), 1e-9))
                for s, r in zip(scores, refs))
    glob = max(float(np.abs(s.global_ - r.global_).max() / max(np.abs(r.global_).max(), 1e-9))
               for s, r in zip(scores, refs))
    fastv = max(float(np.abs(s.fastv - r.fastv).max() / max(np.abs(r.fastv).max(), 1e-9))
                for s, r in zip(scores, refs))
    return dict(local=local, local_abs=local_abs, global_=glob, fastv=fastv)


def check_answers(scores: list[ClipScores]) -> None:
    empty = [i for i, s in enumerate(scores) if len(s.answer_ids) == 0]
    if empty:
        raise RuntimeError(f"clips {empty}: the model's greedy answer is empty (first token EOS); the reference "
                           "cannot score an empty answer; change --seed")


# ----------------------------------------------------------------------------------------------
# Part 1: whole scoring against the reference
# ----------------------------------------------------------------------------------------------


def bench_whole(ctx: BenchContext) -> dict[str, Any]:
    c = ctx.config
    models = {}
    for role in c.whole_models:
        entry = ctx.model(role)
        estimators = {est: whole_case(ctx, entry, est, c.whole_clips[role]) for est in c.estimators}
        models[role] = dict(entry.summary(), estimators=estimators)
    return dict(clip_seconds=clip_samples(c.clip_seconds) / SAMPLE_RATE, models=models,
                note="jax: Scorer.score wall time (log-mel, prompts, greedy answer, program) per clip; torch: "
                     "log-mel + torch_scores.score_clip per clip given the JAX answer ids (no generation)")


def whole_case(ctx: BenchContext, entry: ModelEntry, estimator: str, n_clips: int) -> dict[str, Any]:
    """One model and estimator: alternating JAX / torch repeats on the same batch of clips."""
    c = ctx.config
    repeats = c.repeats if entry.role == "tiny" else c.slow_repeats
    clips, questions = make_clips(n_clips, c.clip_seconds, c.seed)
    chunks = c.occlusion_chunks if estimator == "occlusion" else (c.occlusion_chunks[0],)
    tuning: dict[str, dict[int, float]] = {"jax": {}, "torch": {}}
    candidates = {}
    for chunk in chunks:
        ctx.log(f"whole: {entry.role} {estimator}: compiling (chunk {chunk})")
        candidate = ctx.scorer(entry, estimator=estimator, batch_size=n_clips, occlusion_chunk=chunk)
        first_wall, _, first = score_timed(candidate, clips, questions)
        tuning["jax"][chunk] = score_timed(candidate, clips, questions)[0]
        candidates[chunk] = (candidate, first_wall, first)
    jax_chunk = min(tuning["jax"], key=tuning["jax"].get)
    scorer, first_wall, first = candidates[jax_chunk]
    check_answers(first)
    compile_seconds = sum(s.seconds["compile"] for s in first)
    hf = entry.torch_model()
    for chunk in chunks if estimator == "occlusion" else (scorer.config.ig_steps,):  # IG: every step in one batch
        tuning["torch"][chunk] = reference_timed(hf, clips, first, estimator, scorer.config, chunk)[0]
    torch_chunk = min(tuning["torch"], key=tuning["torch"].get)
    ctx.log(f"whole: {entry.role} {estimator}: chunk {jax_chunk} (jax), {torch_chunk} (torch), the fastest of "
            f"{list(chunks)}")
    jax_walls, jax_runs, torch_walls, refs = [], [], [], []
    for r in range(repeats):
        steps = ("jax", "torch") if r % 2 == 0 else ("torch", "jax")
        for step in steps:
            if step == "jax":
                wall, run, scores = score_timed(scorer, clips, questions)
                jax_walls.append(wall)
                jax_runs.append(run)
            else:
                wall, refs = reference_timed(hf, clips, first, estimator, scorer.config, torch_chunk)
                torch_walls.append(wall)
        ctx.log(f"whole: {entry.role} {estimator}: repeat {r + 1}/{repeats}: jax {jax_walls[-1]:.2f} s, "
                f"torch {torch_walls[-1]:.2f} s")
    frames = scorer.bucket_frames(len(clips[0]))
    ctx.programs.append(ProgramRecord(f"{entry.role} {estimator}", entry, scorer, frames, n_clips, median(jax_runs)))
    jax_s, torch_s = median(jax_walls) / n_clips, median(torch_walls) / n_clips
    jax_flops = analytic_program_flops(scorer, frames) / n_clips
    torch_flops = float(np.mean([reference_clip_flops(scorer, s) for s in first]))
    work = dict(jax_flops_per_clip=jax_flops, torch_flops_per_clip=torch_flops, torch_over_jax=torch_flops / jax_flops,
                jax_gflops_per_s=jax_flops / jax_s / 1e9, torch_gflops_per_s=torch_flops / torch_s / 1e9)
    return dict(clips=n_clips, repeats=repeats, jax_chunk=jax_chunk, torch_chunk=torch_chunk,
                chunk_tuning_s={side: {str(k): v for k, v in times.items()} for side, times in tuning.items()},
                jax_s_per_clip=jax_s,
                jax_program_s_per_clip=median(jax_runs) / n_clips, torch_s_per_clip=torch_s,
                torch_over_jax=torch_s / jax_s, compile_s=compile_seconds, first_call_s=first_wall,
                bucket_frames=frames, answer_tokens=[len(s.answer_ids) for s in first],
                torch_stage_s_per_clip={k: float(np.mean([r.seconds[k] for r in refs])) for k in refs[0].seconds},
                max_relative_difference=relative_differences(first, refs), work=work)


# ----------------------------------------------------------------------------------------------
# Part 2: length buckets against padding to 30 s
# ----------------------------------------------------------------------------------------------


def bench_buckets(ctx: BenchContext) -> dict[str, Any]:
    c = ctx.config
    entry = ctx.model("tiny")
    estimators = {}
    for estimator in c.estimators:
        bucketed = ctx.scorer(entry, estimator=estimator, batch_size=1)
        padded = ctx.scorer(entry, estimator=estimator, batch_size=1, buckets_seconds=(30,))
        lengths = {str(s): bucket_case(ctx, bucketed, padded, s, estimator) for s in c.bucket_seconds}
        result: dict[str, Any] = dict(lengths=lengths, traces_bucketed=bucketed.traces, traces_padded=padded.traces)
        if "10" in lengths and "30" in lengths:
            ratio = lengths["10"]["bucketed_s_per_clip"] / lengths["30"]["bucketed_s_per_clip"]
            result.update(ratio_10s_over_30s=ratio, meets_40_percent=bool(ratio <= 0.4))
        estimators[estimator] = result
    return dict(model=entry.description, batch_size=1, estimators=estimators,
                note="padded: the same clip scored by a Scorer whose only bucket is 30 s (transformers' padding); "
                     "a 30 s clip runs the same program shape either way")


def bucket_case(ctx: BenchContext, bucketed: Scorer, padded: Scorer, seconds: int, estimator: str) -> dict[str, Any]:
    """One clip length: warm seconds in its bucket and padded to 30 s (compiles excluded)."""
    c = ctx.config
    clips, questions = make_clips(1, seconds, c.seed + seconds)
    frames = bucketed.bucket_frames(len(clips[0]))
    same_program = frames == feats.MAX_FRAMES
    first_b = warm_up(bucketed, clips, questions)
    first_p = first_b if same_program else warm_up(padded, clips, questions)
    repeats_b = c.repeats if seconds <= 10 else c.slow_repeats
    repeats_p = 0 if same_program else c.padded_repeats
    walls_b, walls_p = [], []
    for r in range(max(repeats_b, repeats_p)):
        if r < repeats_b:
            walls_b.append(score_timed(bucketed, clips, questions)[0])
        if r < repeats_p:
            walls_p.append(score_timed(padded, clips, questions)[0])
    walls_p = walls_p or walls_b
    ctx.log(f"buckets: {estimator} {seconds} s: bucketed {median(walls_b):.2f} s, padded {median(walls_p):.2f} s")
    tokens = int(feats.audio_token_count(feats.num_valid_frames(len(clips[0]))))
    return dict(clip_s=len(clips[0]) / SAMPLE_RATE, tokens=tokens, bucket_frames=frames,
                repeats_bucketed=len(walls_b), repeats_padded=len(walls_p),
                bucketed_s_per_clip=median(walls_b), padded30_s_per_clip=median(walls_p),
                bucketed_over_padded=median(walls_b) / median(walls_p), first_call_bucketed_s=first_b,
                first_call_padded_s=first_p, same_program=same_program)


def warm_up(scorer: Scorer, clips: list[np.ndarray], questions: list[str]) -> float:
    """Seconds of the first call (compile included) when the Scorer has not compiled the clips' bucket;
    0.0 (and no call) when it has."""
    if (scorer.bucket_frames(len(clips[0])), True) in scorer._executables:
        return 0.0
    return score_timed(scorer, clips, questions)[0]


# ----------------------------------------------------------------------------------------------
# Part 3: batch scaling and traces
# ----------------------------------------------------------------------------------------------


def bench_batch(ctx: BenchContext) -> dict[str, Any]:
    c = ctx.config
    entry = ctx.model("tiny")
    sizes: dict[str, Any] = {}
    capped = None
    last_scorer = None
    for size in c.batch_sizes:
        if sizes:
            prev = sizes[str(max(int(k) for k in sizes))]
            predicted = prev["compile_s"] + prev["s_per_clip"] * size * (c.repeats + 1)
            if predicted > c.batch_budget_seconds:
                reason = f"batch {size} predicted {predicted:.0f} s > budget {c.batch_budget_seconds:.0f} s"
                capped = dict(at=size, predicted_s=predicted, budget_s=c.batch_budget_seconds, reason=reason)
                ctx.log(f"batch: capped: {capped['reason']}")
                break
        last_scorer = ctx.scorer(entry, estimator="occlusion", batch_size=size)
        sizes[str(size)] = batch_case(ctx, last_scorer, size)
    sweep = trace_sweep(ctx, entry)
    return dict(model=entry.description, estimator="occlusion", clip_s=clip_samples(c.clip_seconds) / SAMPLE_RATE,
                sizes=sizes, capped=capped, sweep=sweep)


def batch_case(ctx: BenchContext, scorer: Scorer, size: int) -> dict[str, Any]:
    c = ctx.config
    clips, questions = make_clips(size, c.clip_seconds, c.seed)
    first_wall, _, first = score_timed(scorer, clips, questions)
    walls = [score_timed(scorer, clips, questions)[0] for _ in range(c.repeats)]
    ctx.log(f"batch: {size}: {median(walls) / size:.3f} s per clip")
    return dict(s_per_batch=median(walls), s_per_clip=median(walls) / size,
                compile_s=sum(s.seconds["compile"] for s in first), first_call_s=first_wall, traces=scorer.traces)


def trace_sweep(ctx: BenchContext, entry: ModelEntry) -> dict[str, Any]:
    """Clips of every bucket length, scored twice through one Scorer: one trace per bucket."""
    c = ctx.config
    lengths = tuple(s for s in c.bucket_seconds if s <= 10) or c.bucket_seconds[:1]
    scorer = ctx.scorer(entry, estimator="occlusion", batch_size=2)
    clips, questions = [], []
    for i, seconds in enumerate(lengths * 3):
        clip, question = make_clips(1, seconds, c.seed + i)
        clips += clip
        questions += question
    scorer.score(clips, questions)
    after_first = scorer.traces
    scorer.score(clips, questions)
    buckets = len({scorer.bucket_frames(len(x)) for x in clips})
    return dict(clip_lengths_s=[len(x) / SAMPLE_RATE for x in clips], batch_size=2, buckets=buckets,
                traces_after_first_sweep=after_first, traces_after_second_sweep=scorer.traces,
                one_trace_per_bucket=bool(after_first == scorer.traces == buckets))


# ----------------------------------------------------------------------------------------------
# Part 4: FLOP/s against the matmul ceiling, and memory
# ----------------------------------------------------------------------------------------------


def matmul_ceiling(size: int, repeats: int) -> dict[str, Any]:
    """Median GFLOP/s of a size x size fp32 matmul in JAX and in torch, alternating."""
    import torch

    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((size, size)).astype(np.float32) for _ in range(2))
    ja, jb = jax.device_put(a), jax.device_put(b)
    product = jax.jit(lambda x, y: x @ y)
    jax.block_until_ready(product(ja, jb))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    ta, tb = torch.from_numpy(a).to(device), torch.from_numpy(b).to(device)

    def torch_mm() -> None:
        torch.mm(ta, tb)
        if device == "cuda":
            torch.cuda.synchronize()

    torch_mm()
    jax_times, torch_times = [], []
    for _ in range(repeats):
        jax_times.append(timed(lambda: jax.block_until_ready(product(ja, jb)))[0])
        torch_times.append(timed(torch_mm)[0])
    flops = 2.0 * size ** 3
    return dict(size=size, repeats=repeats, flops=flops, jax_gflops=flops / median(jax_times) / 1e9,
                torch_gflops=flops / median(torch_times) / 1e9)


def decoder_flops(text: Any, n_query: int, n_key: int, head_rows: int, last_rows: int | None = None,
                  backward: bool = False) -> float:
    """Multiply-add FLOPs (x2) of the decoder on n_query positions attending to n_key keys, plus the
    LM head on head_rows rows.

    last_rows: the last layer computes keys and values for every position but queries, output and MLP
    for these rows only (the program's answer-rows-only last layer). backward: the gradient with
    respect to the inputs instead, as `jax.grad` of a gate or torch's autograd.grad of the gates
    computes it: one product per weight matmul (no weight gradients), two per attention product.
    """
    d, heads, kv = text.hidden_size, text.num_attention_heads, text.num_key_value_heads
    head_dim = text.head_dim or d // heads

    def layer(rows: int) -> float:
        query_side = 2 * rows * d * 2 * heads * head_dim + 2 * rows * 3 * d * text.intermediate_size
        key_side = 2 * n_query * d * 2 * kv * head_dim
        attention = 2 * 2 * rows * n_key * heads * head_dim
        return query_side + key_side + (2 if backward else 1) * attention

    last = layer(n_query if last_rows is None else last_rows)
    return (text.num_hidden_layers - 1) * layer(n_query) + last + 2 * head_rows * d * text.vocab_size


def encoder_flops(audio: Any, frames: int, text_width: int) -> float:
    """FLOPs of the audio encoder and projector on `frames` mel frames."""
    m, dm = audio.num_mel_bins, audio.d_model
    n = frames // 2
    convs = 2 * frames * m * dm * 3 + 2 * n * dm * dm * 3
    layer = 2 * n * 4 * dm * dm + 2 * n * 2 * dm * audio.encoder_ffn_dim + 2 * 2 * n * n * dm
    return convs + audio.encoder_layers * layer + 2 * (n // 2) * dm * text_width


def analytic_program_flops(scorer: Scorer, frames: int) -> float:
    """FLOPs of the scoring program on one batch at its padded shapes: two encoder passes, greedy
    prefill and steps, the full and silence passes, and the estimator's passes, each recomputing the
    positions from its shared prefix on, the last layer on the answer rows only."""
    c, model = scorer.config, scorer.model_config
    t_slots = frames // 4
    seq = t_slots + c.max_text_tokens + c.max_new_tokens
    a = c.max_new_tokens
    per_clip = 2 * encoder_flops(model.audio, frames, model.text.hidden_size)
    per_clip += decoder_flops(model.text, seq - a, seq, 1) + a * decoder_flops(model.text, 1, seq, 1)
    per_clip += decoder_flops(model.text, seq, seq, a)  # the full pass (attention maps, cache)
    offset = min(scorer.audio_offset, seq - a - t_slots) if c.share_prefix else 0

    def pass_from(start: int, backward: bool = False) -> float:
        return decoder_flops(model.text, seq - start, seq, a, last_rows=a, backward=backward)

    per_clip += pass_from(0)  # silence
    if c.estimator == "integrated_gradients":
        per_clip += c.ig_steps * (pass_from(offset) + pass_from(offset, backward=True))
    elif c.share_prefix:
        chunk = min(c.occlusion_chunk, t_slots)
        for first in range(0, t_slots, chunk):
            start = max(offset + first - (c.window - 1) // 2, 0)
            per_clip += min(chunk, t_slots - first) * pass_from(start)
    else:
        per_clip += t_slots * pass_from(0)
    return c.batch_size * per_clip


def reference_clip_flops(scorer: Scorer, clip: ClipScores) -> float:
    """FLOPs of `torch_scores.score_clip` on one clip given its answer: the encoder on audio and silence
    padded to 30 s, the attention and silence passes and the estimator's passes over the unpadded
    prompt + answer (every layer on every row), as the reference runs them."""
    c, model = scorer.config, scorer.model_config
    a = len(clip.answer_ids)
    seq = len(clip.input_ids) + a
    full = decoder_flops(model.text, seq, seq, a)
    flops = 2 * encoder_flops(model.audio, feats.MAX_FRAMES, model.text.hidden_size) + 2 * full
    if c.estimator == "integrated_gradients":
        return flops + c.ig_steps * (full + decoder_flops(model.text, seq, seq, a, backward=True))
    return flops + clip.num_tokens * full


def attention_map_bytes(scorer: Scorer, frames: int) -> dict[str, float]:
    """Bytes of fp32 attention maps of the program's sequence: all layers for the batch (L H S^2 4 B),
    and all layers for one occlusion chunk of gate vectors per clip."""
    c, text = scorer.config, scorer.model_config.text
    seq = frames // 4 + c.max_text_tokens + c.max_new_tokens
    all_layers = float(text.num_hidden_layers * text.num_attention_heads * seq ** 2 * 4 * c.batch_size)
    chunk = min(c.occlusion_chunk, frames // 4) if c.estimator == "occlusion" else c.ig_steps
    return dict(sequence=seq, all_layers_batch=all_layers, all_layers_batch_times_chunk=all_layers * chunk,
                one_layer_batch_times_chunk=all_layers * chunk / text.num_hidden_layers)


def program_cost(record: ProgramRecord, ceiling_gflops: float, clip_seconds: int,
                 layer_memory_check: bool) -> dict[str, Any]:
    executable = record.scorer._executables[(record.frames, True)]
    cost = executable.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    xla_flops = float(cost.get("flops", float("nan")))
    analytic = analytic_program_flops(record.scorer, record.frames)
    memory = executable.memory_analysis()
    peak = memory.temp_size_in_bytes + memory.argument_size_in_bytes + memory.output_size_in_bytes
    maps = attention_map_bytes(record.scorer, record.frames)
    xla_rate = xla_flops / record.device_seconds / 1e9
    analytic_rate = analytic / record.device_seconds / 1e9
    deeper = doubled_layers_memory(record, clip_seconds) if layer_memory_check else None
    return dict(label=record.label, batch_size=record.batch_size, bucket_frames=record.frames,
                device_s_per_batch=record.device_seconds, xla_flops=xla_flops, analytic_flops=analytic,
                xla_over_analytic=xla_flops / analytic, xla_gflops_per_s=xla_rate,
                analytic_gflops_per_s=analytic_rate, fraction_of_ceiling=analytic_rate / ceiling_gflops,
                memory=dict(temp_bytes=memory.temp_size_in_bytes, argument_bytes=memory.argument_size_in_bytes,
                            output_bytes=memory.output_size_in_bytes, peak_bytes=peak),
                attention_maps=maps, doubled_layers=deeper,
                temp_growth_over_added_layer_maps=None if deeper is None else
                (deeper["temp_bytes"] - memory.temp_size_in_bytes) / max(maps["all_layers_batch_times_chunk"], 1.0))


def doubled_layers_memory(record: ProgramRecord, clip_seconds: int) -> dict[str, Any]:
    """Memory of the same program for the model with twice the decoder layers (random weights, compiled,
    not run): a program that held every layer's attention maps would grow its temporaries by the
    added layers' maps."""
    import flax.linen as nn

    from agac_jax.models.qwen2_audio import init_params

    loaded = record.entry.loaded()
    text = dataclasses.replace(loaded.config.text, num_hidden_layers=2 * loaded.config.text.num_hidden_layers)
    config = dataclasses.replace(loaded.config, text=text)
    params = nn.meta.unbox(init_params(config, jax.random.key(0)))
    deeper = Scorer(dataclasses.replace(loaded, config=config, params=params), record.scorer.tokenizer,
                    record.scorer.config)
    clips, questions = make_clips(record.batch_size, clip_seconds, 0)
    batch, _ = deeper._make_batch(record.frames, clips, questions, None)
    executable, compile_seconds = deeper._compiled(record.frames, True, batch)
    memory = executable.memory_analysis()
    return dict(layers=text.num_hidden_layers, temp_bytes=memory.temp_size_in_bytes,
                argument_bytes=memory.argument_size_in_bytes, compile_s=compile_seconds)


def bench_flops(ctx: BenchContext) -> dict[str, Any]:
    c = ctx.config
    ceiling = matmul_ceiling(c.matmul_size, c.matmul_repeats)
    ctx.log(f"flops: matmul ceiling jax {ceiling['jax_gflops']:.1f} GFLOP/s, torch {ceiling['torch_gflops']:.1f}")
    if not ctx.programs:
        ctx.programs.append(measure_program(ctx, ctx.model("tiny"), "occlusion"))
    programs = [program_cost(record, ceiling["jax_gflops"], c.clip_seconds, c.layer_memory_check)
                for record in ctx.programs]
    return dict(ceiling=ceiling, programs=programs,
                note="xla_flops: executable.cost_analysis() (a while loop of unknown trip count, e.g. greedy "
                     "generation, counts once); analytic_flops: matmuls and attention at the program's padded "
                     "shapes; rates use the median warm executable time of the `whole` part")


def measure_program(ctx: BenchContext, entry: ModelEntry, estimator: str) -> ProgramRecord:
    """A warm executable time on its own, for a `flops` part run without `whole`."""
    c = ctx.config
    n = c.whole_clips.get(entry.role, 2)
    clips, questions = make_clips(n, c.clip_seconds, c.seed)
    scorer = ctx.scorer(entry, estimator=estimator, batch_size=n)
    scorer.score(clips, questions)
    runs = [score_timed(scorer, clips, questions)[1] for _ in range(c.repeats)]
    return ProgramRecord(f"{entry.role} {estimator}", entry, scorer, scorer.bucket_frames(len(clips[0])), n,
                         median(runs))


# ----------------------------------------------------------------------------------------------
# Part 5: sharding over forced host devices (subprocess)
# ----------------------------------------------------------------------------------------------


def bench_sharding(ctx: BenchContext) -> dict[str, Any]:
    c = ctx.config
    entry = ctx.model("tiny")
    request = dict(directory=str(entry.directory), meshes=[list(m) for m in c.sharding_meshes],
                   batch_size=c.sharding_devices,
                   clip_seconds=c.clip_seconds, repeats=c.repeats, seed=c.seed, max_new_tokens=c.max_new_tokens)
    request_path = ctx.workdir / "sharding_request.json"
    result_path = ctx.workdir / "sharding_result.json"
    request_path.write_text(json.dumps(request))
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join([str(REPO_ROOT)] + [
        p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
    env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={c.sharding_devices}"])
    ctx.log(f"sharding: subprocess with {c.sharding_devices} forced host devices")
    command = [sys.executable, "-c", WORKER_COMMAND, str(request_path), str(result_path)]
    proc = subprocess.run(command, env=env, cwd=REPO_ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"sharding worker failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    result = json.loads(result_path.read_text())
    return dict(model=entry.description, **result)


def sharding_worker(request: dict[str, Any]) -> dict[str, Any]:
    """In a process with forced host devices: the same batch on a 1-device mesh and on each mesh."""
    devices = jax.devices()
    entry = ModelEntry("tiny", Path(request["directory"]), "", False)
    clips, questions = make_clips(request["batch_size"], request["clip_seconds"], request["seed"])
    meshes = [(1, 1)] + [tuple(m) for m in request["meshes"]]
    scorers = {}
    for mesh in meshes:
        config = ScoringConfig(batch_size=request["batch_size"], mesh_shape=mesh,
                               max_new_tokens=request["max_new_tokens"])
        scorers[mesh] = Scorer(entry.loaded(), entry.tokenizer(), config)
    first = {mesh: score_timed(s, clips, questions) for mesh, s in scorers.items()}
    walls: dict[tuple[int, int], list[float]] = {mesh: [] for mesh in meshes}
    for r in range(request["repeats"]):
        order = meshes if r % 2 == 0 else meshes[::-1]
        for mesh in order:
            walls[mesh].append(score_timed(scorers[mesh], clips, questions)[0])
    n = len(clips)
    base = median(walls[(1, 1)]) / n
    results = {}
    for mesh in meshes:
        scores = first[mesh][2]
        diffs = {name: max(float(np.abs(getattr(a, name) - getattr(b, name)).max())
                           for a, b in zip(scores, first[(1, 1)][2])) for name in ("local", "global_", "fused")}
        s_per_clip = median(walls[mesh]) / n
        results["x".join(map(str, mesh))] = dict(
            devices=mesh[0] * mesh[1], s_per_clip=s_per_clip, over_one_device=s_per_clip / base,
            compile_s=sum(s.seconds["compile"] for s in scores), max_abs_difference=diffs,
            same_answers=all(np.array_equal(a.answer_ids, b.answer_ids) for a, b in zip(scores, first[(1, 1)][2])),
            same_keep=all(np.array_equal(a.keep[r], b.keep[r]) for a, b in zip(scores, first[(1, 1)][2])
                          for r in a.keep))
    return dict(forced_devices=len(devices), device_kind=devices[0].device_kind, batch_size=n,
                clip_s=len(clips[0]) / SAMPLE_RATE, repeats=request["repeats"], meshes=results)


# ----------------------------------------------------------------------------------------------
# Part 6 and the machine
# ----------------------------------------------------------------------------------------------


def bench_gpu(ctx: BenchContext) -> dict[str, Any]:
    device = jax.devices()[0]
    if device.platform == "gpu":
        return dict(status=f"measured: every part ran on {device.device_kind}", device_kind=device.device_kind,
                    platform=device.platform)
    return dict(status=GPU_NOT_MEASURED, device_kind=device.device_kind, platform=device.platform)


def machine_info() -> dict[str, Any]:
    import flax
    import jaxlib
    import torch
    import transformers

    device = jax.devices()[0]
    try:
        usable_cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        usable_cpus = os.cpu_count()
    return dict(platform=platform.platform(), processor=platform.processor() or platform.machine(),
                python=platform.python_version(), cpu_count=os.cpu_count(), usable_cpus=usable_cpus,
                load_average=list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
                jax=jax.__version__, jaxlib=jaxlib.__version__, flax=flax.__version__, torch=torch.__version__,
                transformers=transformers.__version__, numpy=np.__version__, jax_backend=jax.default_backend(),
                device_kind=device.device_kind, device_count=jax.device_count(),
                torch_threads=torch.get_num_threads(),
                torch_device="cuda" if torch.cuda.is_available() else "cpu",
                matmul_precision=str(jax.config.jax_default_matmul_precision))


PART_FUNCTIONS: dict[str, Callable[[BenchContext], dict[str, Any]]] = dict(
    whole=bench_whole, buckets=bench_buckets, batch=bench_batch, flops=bench_flops, sharding=bench_sharding,
    gpu=bench_gpu)


def run_benchmark(config: BenchConfig, parts: Sequence[str] = PARTS, workdir: Path | None = None,
                  log: Callable[[str], None] = print) -> dict[str, Any]:
    """Runs `parts` in `PARTS` order; returns the JSON-ready results with the machine's description."""
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise ValueError(f"unknown parts {unknown}; expected a subset of {PARTS}")
    start = time.perf_counter()
    results: dict[str, Any] = dict(schema=SCHEMA, created=datetime.datetime.now().isoformat(timespec="seconds"),
                                   machine=machine_info(),
                                   config=dataclasses.asdict(config), parts={})
    with tempfile.TemporaryDirectory(prefix="agac_bench_") as tmp:
        ctx = BenchContext(config, Path(workdir or tmp), log)
        for part in PARTS:
            if part in parts:
                part_start = time.perf_counter()
                results["parts"][part] = dict(PART_FUNCTIONS[part](ctx), seconds=time.perf_counter() - part_start)
    results["machine"]["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    results["total_seconds"] = time.perf_counter() - start
    return results


def write_results(results: dict[str, Any], path: Path | str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, default=_json_default) + "\n")
    return path


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, (np.ndarray, tuple)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


# ----------------------------------------------------------------------------------------------
# The table
# ----------------------------------------------------------------------------------------------


def format_table(results: dict[str, Any]) -> str:
    """A short plain-text table of the headline numbers of each part that ran."""
    m = results["machine"]
    lines = [f"agac-jax scoring benchmark: {m['jax_backend']} ({m['device_kind']}), {m['usable_cpus']} CPUs, "
             f"load {m['load_average'][0]:.1f}, jax {m['jax']}, torch {m['torch']} ({m['torch_threads']} threads)"]
    rows: list[tuple[str, str, str]] = []
    parts = results["parts"]
    if "whole" in parts:
        _whole_rows(parts["whole"], rows)
    if "buckets" in parts:
        _bucket_rows(parts["buckets"], rows)
    if "batch" in parts:
        _batch_rows(parts["batch"], rows)
    if "flops" in parts:
        _flops_rows(parts["flops"], rows)
    if "sharding" in parts:
        _sharding_rows(parts["sharding"], rows)
    if "gpu" in parts:
        rows.append(("6 gpu", "", parts["gpu"]["status"]))
    widths = [max(len(r[i]) for r in rows + [("part", "case", "result")]) for i in range(2)]
    lines.append(f"{'part':<{widths[0]}}  {'case':<{widths[1]}}  result")
    lines += [f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c}" for a, b, c in rows]
    lines.append(f"total {results['total_seconds']:.0f} s")
    return "\n".join(lines)


def _whole_rows(part: dict[str, Any], rows: list[tuple[str, str, str]]) -> None:
    for role, model in part["models"].items():
        name = f"{role}{' (shipped)' if model['shipped'] else ' (random)'}"
        for est, r in model["estimators"].items():
            rows.append((f"1 whole {part['clip_seconds']:.2f}s", f"{name} {_short(est)} B={r['clips']}",
                         f"jax {r['jax_s_per_clip']:.3f} s/clip, torch {r['torch_s_per_clip']:.3f} s/clip, "
                         f"torch/jax {r['torch_over_jax']:.2f}x, compile {r['compile_s']:.1f} s, "
                         f"max diff local {r['max_relative_difference']['local_abs']:.1e} nats "
                         f"({r['max_relative_difference']['local']:.1e} of |logp|)"))
            w = r["work"]
            rows.append(("", "  = work x rate", f"analytic FLOPs torch/jax {w['torch_over_jax']:.2f}x, rate jax "
                         f"{w['jax_gflops_per_s']:.0f} / torch {w['torch_gflops_per_s']:.0f} GFLOP/s"))


def _bucket_rows(part: dict[str, Any], rows: list[tuple[str, str, str]]) -> None:
    for est, r in part["estimators"].items():
        cells = ", ".join(f"{s}s {v['bucketed_s_per_clip']:.2f}/{v['padded30_s_per_clip']:.2f}"
                          for s, v in r["lengths"].items())
        tail = f"; 10s/30s {r['ratio_10s_over_30s']:.2f}" if "ratio_10s_over_30s" in r else ""
        rows.append(("2 buckets", f"{_short(est)} bucketed/padded30 s/clip", cells + tail))


def _batch_rows(part: dict[str, Any], rows: list[tuple[str, str, str]]) -> None:
    cells = ", ".join(f"B={b} {v['s_per_clip']:.3f}" for b, v in part["sizes"].items())
    capped = f"; capped at B={part['capped']['at']}" if part["capped"] else ""
    rows.append(("3 batch", "occ s/clip", cells + capped))
    sweep = part["sweep"]
    rows.append(("3 batch", "traces over sweep", f"{sweep['traces_after_second_sweep']} for {sweep['buckets']} buckets "
                 f"(two sweeps)"))


def _flops_rows(part: dict[str, Any], rows: list[tuple[str, str, str]]) -> None:
    c = part["ceiling"]
    rows.append(("4 flops", f"matmul {c['size']} fp32", f"jax {c['jax_gflops']:.1f} GFLOP/s, "
                                                        f"torch {c['torch_gflops']:.1f} GFLOP/s"))
    for p in part["programs"]:
        rows.append(("4 flops", p["label"], f"{p['analytic_gflops_per_s']:.1f} GFLOP/s analytic "
                     f"({100 * p['fraction_of_ceiling']:.0f}% of ceiling; XLA count {p['xla_gflops_per_s']:.1f}), "
                     f"peak {p['memory']['peak_bytes'] / 2**20:.0f} MiB" + _layer_memory_cell(p)))


def _layer_memory_cell(program: dict[str, Any]) -> str:
    deeper = program["doubled_layers"]
    if deeper is None:
        return ""
    growth = (deeper["temp_bytes"] - program["memory"]["temp_bytes"]) / 2**20
    held = program["attention_maps"]["all_layers_batch_times_chunk"] / 2**20
    return f"; 2x layers: temp {growth:+.0f} MiB (held maps would add {held:.0f} MiB)"


def _sharding_rows(part: dict[str, Any], rows: list[tuple[str, str, str]]) -> None:
    for mesh, r in part["meshes"].items():
        diff = max(r["max_abs_difference"].values())
        rows.append(("5 sharding", f"mesh {mesh} of {part['forced_devices']}",
                     f"{r['s_per_clip']:.3f} s/clip, {r['over_one_device']:.2f}x 1 device, max abs diff {diff:.1e}"))


def _short(estimator: str) -> str:
    return {"occlusion": "occ", "integrated_gradients": "IG"}.get(estimator, estimator)


def worker_main(argv: list[str]) -> None:
    """The sharding subprocess: reads the request JSON at argv[0], writes the result JSON to argv[1]."""
    request_path, result_path = argv
    result = sharding_worker(json.loads(Path(request_path).read_text()))
    Path(result_path).write_text(json.dumps(result, indent=2, default=_json_default))
