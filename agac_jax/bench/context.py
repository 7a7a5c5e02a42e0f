"""What every part of the scoring benchmark shares: the run's sizes (`BenchConfig`), the benchmarked
models (`MODEL_SPECS`, `ModelEntry`), the clips, the context a part runs in (`BenchContext`) and the
timing helpers.

Clips are "n s" clips two mel frames (20 ms) short of n s: the encoder reads up to two frames past a
clip's end (`features.encoder_frames_needed`), so a clip of exactly 5 s is scored in the 10 s bucket.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import numpy as np

from agac_jax.models.qwen2_audio import checkpoints
from agac_jax.audio import features as feats
from agac_jax.audio.grids import SAMPLE_RATE
from agac_jax.data.synthetic_audio import synthetic
from agac_jax.reference.torch_scores import MODES as REFERENCE_MODES
from agac_jax.scoring.settings import ESTIMATORS
from agac_jax.scoring.scorer import ClipScores, Scorer, ScoringConfig

REPO_ROOT = Path(__file__).resolve().parents[2]
SHIPPED_TINY = REPO_ROOT / "assets" / "tiny_qwen2audio"
CLIP_SHORTFALL_SAMPLES = 2 * feats.HOP_LENGTH  # "n s" clips are two mel frames short of n s
# The local-score settings the recorded speed figures were measured with (each case names its estimator):
# the poster's target, reading and fusion weight, and IG at 16 steps.
BENCH_LOCAL_SCORE = dict(target="logp", local_sign="signed", local_smooth=1, window=1, ig_steps=16, alpha=0.5)

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
    # Qwen2-Audio-7B's widths (configs/qwen2_audio_7b_instruct.json) with 2 decoder and 2 encoder layers:
    # the per-layer work of the 7B, for achieved FLOP/s on an accelerator (`--mid_spec=wide_random`).
    "wide_random": dict(
        audio_config=dict(num_mel_bins=128, encoder_layers=2, encoder_attention_heads=20, encoder_ffn_dim=5120,
                          d_model=1280),
        text_config=dict(model_type="qwen2", hidden_size=4096, intermediate_size=11008, num_hidden_layers=2,
                         num_attention_heads=32, num_key_value_heads=32, tie_word_embeddings=False),
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
    long_torch_repeats: int = 1  # `scaling`: repeats of the reference on clips over 10 s
    whole_models: tuple[str, ...] = ("tiny", "mid")  # roles measured by the `whole` part
    whole_clips: dict[str, int] = dataclasses.field(default_factory=lambda: {"tiny": 4, "mid": 2})
    estimators: tuple[str, ...] = ESTIMATORS
    local_score: str = "bench"  # bench: BENCH_LOCAL_SCORE (the recorded figures' settings) | default: ScoringConfig's
    # PyTorch reference modes (`torch_scores.MODES`): the first gives every torch time and ratio, the others
    # a second column (`whole`, `mix`): "strong" (SDPA wherever no attention map is read), "eager" (every pass)
    references: tuple[str, ...] = ("strong", "eager")
    clip_seconds: int = 5  # nominal clip length of `whole`, `batch`, `flops` and `sharding`
    bucket_seconds: tuple[int, ...] = (5, 10, 20, 30)  # every Scorer's buckets but the `mix` default's: coarser
    #   than ScoringConfig's, so the best case fills its bucket and `scaling`
    #   checks clips that leave most of theirs padded
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
    # `mix`: a user's folder: clips of lengths drawn once from `mix_seed`, scored in one Scorer.score call.
    mix_models: tuple[str, ...] = ("tiny", "mid")
    mix_clips: int = 12
    mix_seconds_range: tuple[float, float] = (3.0, 12.0)
    mix_seed: int = 13
    mix_keep: str = "0.7"  # launch.score's default --keep (one executable serves every keep ratio)
    mix_batch_size: int = 8  # ScoringConfig's and the configs' default
    jax_occlusion_chunk: int = 16  # `mix`, `scaling`: ScoringConfig's default (what users get)
    issue_clip_seconds: tuple[float, ...] = (3.7, 7.0, 11.3)  # three mixed clips in one call
    # `scaling`: one clip per call in its bucket (nominal lengths, two mel frames short), beside the reference.
    scaling_seconds: tuple[int, ...] = (2, 4, 5, 8, 10, 12, 20, 30)
    scaling_tolerance: float = 1.3  # time per clip <= this x (tokens / full-bucket tokens) x the bucket's full cost
    # `memory`: program temporaries of one clip in the `memory_seconds` bucket per occlusion chunk (0: the bucket).
    memory_seconds: int = 30
    memory_chunks: tuple[int, ...] = (32, 0)  # with `jax_occlusion_chunk` from `scaling`
    tiny_model: str | None = str(SHIPPED_TINY)  # None or missing: a random model of its shape
    tiny_spec: str = "tiny_random"
    mid_spec: str = "mid_random"
    seed: int = 0

    @classmethod
    def quick(cls, **overrides: Any) -> "BenchConfig":
        """Tiny sizes for a smoke run: random micro models, one repeat, two buckets, batches 1 and 2."""
        fields = dict(label="quick", repeats=1, slow_repeats=1, long_torch_repeats=1,
                      whole_clips={"tiny": 2, "mid": 1}, bucket_seconds=(5, 10), batch_sizes=(1, 2),
                      sharding_meshes=((2, 1),), sharding_devices=2, matmul_size=512,
                      matmul_repeats=3, max_new_tokens=2, tiny_model=None, tiny_spec="micro_random",
                      mid_spec="small_random", occlusion_chunks=(64,), mix_models=("tiny",), mix_clips=4,
                      mix_seconds_range=(2.0, 4.8), mix_batch_size=4,
                      issue_clip_seconds=(3.7, 4.1, 4.5), jax_occlusion_chunk=64, scaling_seconds=(2, 5),
                      memory_seconds=5, memory_chunks=(0,))
        fields.update(overrides)
        return cls(**fields)

    def __post_init__(self):
        for name in ("whole_models", "mix_models"):
            for role in getattr(self, name):
                if role not in ("tiny", "mid"):
                    raise ValueError(f"{name} holds {role!r}; expected 'tiny' or 'mid'")
        low, high = self.mix_seconds_range
        if not 0 < low <= high <= 30:
            raise ValueError(f"mix_seconds_range={self.mix_seconds_range}; expected 0 < low <= high <= 30")
        if not self.references or any(mode not in REFERENCE_MODES for mode in self.references):
            raise ValueError(f"references={self.references}; expected one or more of {REFERENCE_MODES}")
        if self.local_score not in ("bench", "default"):
            raise ValueError(f"local_score={self.local_score!r}; expected 'bench' or 'default'")
        for estimator in self.estimators:
            if estimator not in ESTIMATORS:
                raise ValueError(f"estimator {estimator!r}; expected one of {ESTIMATORS}")
        for spec in (self.tiny_spec, self.mid_spec):
            if spec not in MODEL_SPECS:
                raise ValueError(f"model spec {spec!r}; expected one of {sorted(MODEL_SPECS)}")
        if min(self.repeats, self.slow_repeats, self.long_torch_repeats) < 1:
            raise ValueError("repeats, slow_repeats and long_torch_repeats must be >= 1")


def make_random_checkpoint(directory: Path, spec_name: str, seed: int = 0) -> Path:
    """A random Qwen2-Audio directory of `MODEL_SPECS[spec_name]` with a word tokenizer over the
    synthetic benchmark's vocabulary, processor files and a generation config (the recipe of
    tests/tiny_models.make_scoring_checkpoint)."""
    import torch
    from transformers import GenerationConfig, Qwen2AudioConfig, Qwen2AudioForConditionalGeneration

    from agac_jax.models.qwen2_audio.tokenizer import AUDIO_TOKEN, IM_END, save_processor_files

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

    def scorer(self, config: ScoringConfig) -> Scorer:
        """A Scorer of this model under `config` (the loaded weights shared by every call)."""
        from agac_jax.models.qwen2_audio.adapter import Qwen2AudioAdapter

        loaded = self.loaded()
        return Scorer(Qwen2AudioAdapter.of(loaded, self.tokenizer()), loaded.params, config)

    def torch_model(self) -> Any:
        """transformers' model loaded with eager attention, in eval mode, on CUDA when torch has it (the
        reference's "strong" mode switches the passes without attention maps to SDPA itself)."""
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
    return make_clips_of([clip_samples(seconds)] * count, seed)


def make_clips_of(samples: Sequence[int], seed: int) -> tuple[list[np.ndarray], list[str]]:
    """One clip (a tone burst in noise) of each length in `samples` and an existence question each."""
    rng = np.random.default_rng(seed)
    clips, questions = [], []
    for i, n in enumerate(samples):
        t = np.arange(n) / SAMPLE_RATE
        onset = rng.uniform(0.0, 0.6) * t[-1]
        burst = (t >= onset) & (t < onset + 0.3 * t[-1])
        tone = 0.3 * np.sin(2 * np.pi * rng.uniform(200, 3000) * t) * burst
        clips.append((tone + 0.02 * rng.standard_normal(n)).astype(np.float32))
        questions.append(synthetic.existence_question(synthetic.EVENT_CLASSES[i % len(synthetic.EVENT_CLASSES)]))
    return clips, questions


def mix_lengths_seconds(count: int, seconds_range: tuple[float, float], seed: int) -> list[float]:
    """`count` clip lengths drawn once, uniformly in `seconds_range`, rounded to 0.1 s (a user's folder)."""
    rng = np.random.default_rng(seed)
    return [round(float(x), 1) for x in rng.uniform(*seconds_range, size=count)]


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
        self.torch_chunks: dict[tuple[str, str], int] = {}  # (role, estimator) -> the reference's fastest chunk
        self.temp_bytes: dict[tuple[int, str, int], int] = {}  # (bucket frames, estimator, chunk) -> temporaries
        self._models: dict[str, ModelEntry] = {}
        self._scorers: dict[Any, Scorer] = {}
        self.report_partial: Callable[[dict[str, Any]], None] = lambda values: None  # set per part by run_benchmark

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

    def shared_scorer(self, entry: ModelEntry, **overrides: Any) -> Scorer:
        """`scorer(entry, **overrides)`, made once per model and overrides and shared between parts (the
        `scaling` and `mix` share their coarse-bucket Scorer, which then compiles only new programs)."""
        key = (entry.role, tuple(sorted(overrides.items())))
        if key not in self._scorers:
            self._scorers[key] = self.scorer(entry, **overrides)
        return self._scorers[key]

    def scorer(self, entry: ModelEntry, **overrides: Any) -> Scorer:
        pinned = BENCH_LOCAL_SCORE if self.config.local_score == "bench" else {}
        overrides = {"buckets_seconds": self.config.bucket_seconds, **pinned, **overrides}
        config = ScoringConfig(max_new_tokens=self.config.max_new_tokens, max_text_tokens=self.config.max_text_tokens,
                               **overrides)
        return entry.scorer(config)


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

