"""Host side of scoring: buckets, prompts, the compiled program per bucket, sharding, frame selection.

`Scorer.score(clips, questions)` groups clips by length bucket, builds prompts and features for each
bucket, pads the batch to its slots (`batch_slots`: the next power of two of its real clips, at most
`batch_size`; padded slots are copies whose results are dropped), and runs the jitted program of
`agac_jax.scoring.program`, compiled once per `ProgramKey` (bucket, answers given or not, slots).
`agac_jax.scoring.methods.select_batch` turns the scores into the kept frames of any method of DESIGN.md section 4.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from agac_jax.models.qwen2_audio import checkpoints
from agac_jax.audio import features as feats
from agac_jax.audio.grids import audio_tokens_of_samples
from agac_jax.audio.io import validate_waveform
from agac_jax.models.generate import GenerationSettings, greedy_generate
from agac_jax.models.qwen2_audio.model import Qwen2AudioForConditionalGeneration, check_placeholder_count, init_params
from agac_jax.models.qwen2_audio.prompts import (DEFAULT_PROMPT_FORMAT, PromptFormat, build_prompts, load_prompt_format,
                              prompt_format_of, prompt_ids)
from agac_jax.scoring import selection
from agac_jax.scoring.program import (ESTIMATORS, GATE_DOMAINS, LOCAL_SIGNS, TARGETS, ProgramSpec, answer_targets_batch,
                                      count_generated, map_real_clips, score_batch)

MESH_AXES = ("data", "model")
MIN_CLIP_SAMPLES = next(n for n in range(1, feats.SAMPLE_RATE) if audio_tokens_of_samples(n) >= 1)
CPU_IG_CHUNK = 4  # IG steps vmapped together on CPU: 12 mixed clips at 16 steps, tiny model, 2 cores:
#                   1.70 s against 2.08 s one at a time and 1.93 s all 16 (3x the temporaries)

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
_log = logging.getLogger(__name__)

# XLA:CPU's default scheduler runs independent occlusion chunks side by side and holds their attention
# scores at once: 4.1 GiB of temporaries for one 30 s clip on the tiny model, 0.34 GiB without it. The
# flag is read from XLA_FLAGS only (a per-compile option does not reach the scheduler).
CPU_LEAN_SCHEDULER_FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler=false"
# XLA:CPU hands dots and reductions to YNNPACK, which builds each fusion's pipeline on the program's first
# execution: 0.3 s of CPU per program of the tiny model (3x its warm run), 0.5 s for the 512-wide one.
# Without it (the default, `ScoringConfig.cpu_ynnpack`) XLA's own kernels run them, built at compile time.
CPU_NO_YNNPACK_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


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
    buckets_seconds: tuple[int, ...] = feats.DEFAULT_BUCKETS_SECONDS  # clip length buckets (2-5 s apart: a clip
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
        if self.ig_chunk is not None and self.ig_chunk < 1:
            raise ValueError(f"ig_chunk must be >= 1 or None; got {self.ig_chunk}")
        if self.occlusion_segments < 0:
            raise ValueError(f"occlusion_segments must be >= 0 (0: one step per chunk); got {self.occlusion_segments}")
        if not 0.0 < self.prompt_step_ratio <= 1.0:
            raise ValueError(f"prompt_step_ratio must lie in (0, 1]; got {self.prompt_step_ratio}")
        selection.keep_ratio_fraction(self.keep)
        for rate in self.rates:
            selection.frame_samples(rate)


class ProgramKey(NamedTuple):
    """What a compiled scoring program is specialised to."""

    frames: int  # the bucket's mel frames
    generate: bool  # the program generates the answers (False: they are given)
    slots: int  # clips per call (`Scorer.batch_slots`)
    prompt_slots: int  # prompt positions per clip (`Scorer.prompt_slots`)

    @classmethod
    def of(cls, frames: int, generate: bool, batch: dict[str, Any]) -> "ProgramKey":
        """The key of the program that runs `batch` (a `make_batch` result) of a bucket."""
        return cls(frames, generate, int(batch["n_samples"].shape[0]), int(batch["prompt_ids"].shape[1]))


@dataclasses.dataclass
class ClipScores:
    """One clip's scores on the LLM audio grid (T valid tokens) and the program's keep masks."""

    question: str
    input_ids: np.ndarray  # [S] the prompt, placeholders expanded
    answer_ids: np.ndarray  # [n] the scored answer (EOS excluded)
    answer_text: str
    n_samples: int
    num_tokens: int
    local: np.ndarray  # [T] AAD share of the audio evidence
    global_: np.ndarray  # [T] attention received from the answer-producing rows
    fused: np.ndarray  # [T]
    fastv: np.ndarray  # [T]
    logp_full: float
    logp_silence: float
    frames: dict[int, np.ndarray]  # rate -> frame scores of `fused` [N_r]
    keep: dict[int, np.ndarray]  # rate -> kept frame indices at config.keep, sorted
    seconds: dict[str, float]  # this clip's share of the batch's compile (0 when cached) and run
    # Models whose gate slots are not the token grid (PandaGPT): samples each slot reads [T, 2] and
    # which slots hold audio [T]; frames map through them (`methods.ClipInputs`). None: Qwen2-Audio.
    slot_ranges: np.ndarray | None = None
    slot_valid: np.ndarray | None = None

    def non_finite(self) -> str | None:
        """None, or why these scores cannot be used: the fields that hold NaN or inf (weights or
        activations that are not finite make every score NaN, and a top-k of NaN keeps frames 0..k-1)."""
        fields = {"local": self.local, "global": self.global_, "fused": self.fused, "fastv": self.fastv,
                  "logp_full": self.logp_full, "logp_silence": self.logp_silence,
                  **{f"frames at r={rate}": scores for rate, scores in self.frames.items()}}
        bad = [name for name, value in fields.items() if value is not None and not np.all(np.isfinite(value))]
        if not bad:
            return None
        return (f"non-finite scores: {', '.join(bad)} hold NaN or inf (the model's weights or activations are not "
                "finite; check the checkpoint, or run launch.parity on it)")


class Scorer:
    """Scores clips with a Qwen2-Audio model held as Flax parameters."""

    def __init__(self, loaded: checkpoints.LoadedModel, tokenizer: Any, config: ScoringConfig = ScoringConfig(),
                 prompt_format: PromptFormat | None = None):
        """`prompt_format`: how questions become prompts (`prompts.load_prompt_format`); None: the chat
        format of the directory the tokenizer was loaded from."""
        self.config = config
        self.model_config = loaded.config
        self.model = Qwen2AudioForConditionalGeneration(loaded.config)
        self.tokenizer = tokenizer
        self.prompt_format = prompt_format or prompt_format_of(tokenizer)
        self.generation = GenerationSettings.from_hf(loaded.generation_config, loaded.config,
                                                     max_new_tokens=config.max_new_tokens)
        self.keep_fraction = selection.keep_ratio_fraction(config.keep)
        self.mesh = make_mesh(config.mesh_shape)
        if config.batch_size % config.mesh_shape[0]:
            raise ValueError(f"batch_size={config.batch_size} must be a multiple of the data axis "
                             f"{config.mesh_shape[0]}")
        self.param_shardings = param_shardings(loaded.config, self.mesh, config.axis_rules, config.fsdp)
        self.params = jax.device_put(loaded.params, self.param_shardings)  # no copy when loaded sharded
        self._generate = None  # the jitted, sharded greedy generator (`generation_program`)
        self._targets: dict[ProgramKey, Any] = {}  # jitted `answer_targets` programs
        self.max_frames = loaded.config.audio.max_mel_frames  # the encoder's window (3000 = 30 s released)
        self.traces = 0  # how often the scoring program was traced (one per bucket and answer mode)
        self.audio_offset = self._first_audio_position("")
        self.executables: dict[ProgramKey, Any] = {}  # the compiled programs
        self.program_memory: dict[ProgramKey, int] = {}  # temporary bytes of each compiled program
        self.count_passes = False  # tests: programs compiled from now on count their occlusion passes
        on_cpu = self.mesh.devices.flat[0].platform == "cpu"
        self.generate_per_clip = config.generate_per_clip if config.generate_per_clip is not None else on_cpu
        self.ig_chunk = config.ig_chunk or (CPU_IG_CHUNK if on_cpu else 1)

    @classmethod
    def from_directory(cls, directory: str | Path, config: ScoringConfig = ScoringConfig(), *,
                       param_dtype: Any = "float32", dtype: Any = "float32", scan_layers: bool = False,
                       remat_layers: bool = False, prompt_format: str = DEFAULT_PROMPT_FORMAT) -> "Scorer":
        """A Scorer for a Hugging Face directory. The weights stream tensor by tensor onto their
        shardings on this config's mesh (`checkpoints.load_hf_directory(shardings=...)`), cast to
        `param_dtype`; `dtype` is the compute dtype ('float32' | 'bfloat16'); `scan_layers` and
        `remat_layers` as `Qwen2AudioConfig`'s; `prompt_format` "chat" | "raw" (`prompts.load_prompt_format`),
        decided before any weight is read."""
        from transformers import AutoTokenizer

        fmt = load_prompt_format(directory, prompt_format)
        mesh = make_mesh(config.mesh_shape)
        loaded = checkpoints.load_hf_directory(
            directory, dtype=dtype, param_dtype=param_dtype, scan_layers=scan_layers,
            shardings=lambda model_config: param_shardings(model_config, mesh, config.axis_rules, config.fsdp))
        loaded = dataclasses.replace(loaded, config=loaded.config.replace(remat_layers=remat_layers))
        return cls(loaded, AutoTokenizer.from_pretrained(str(directory)), config, fmt)

    def bucket_frames(self, n_samples: int) -> int:
        """Mel frames of the bucket for a clip: the smallest that holds every frame the encoder reads
        for the clip's valid positions (`features.encoder_bucket_frames`), or the encoder's whole window
        (`max_source_positions` x 2 frames of the checkpoint's config: 3000, 30 s, for the released model)."""
        if n_samples > self.max_samples:
            raise ValueError(f"a clip of {n_samples} samples is longer than this model's {self.max_seconds:g} s "
                             f"window ({self.max_frames} mel frames); split it with split_windows")
        return feats.encoder_bucket_frames(n_samples, self.config.buckets_seconds, self.max_frames)

    @property
    def max_samples(self) -> int:
        return self.max_frames * feats.HOP_LENGTH

    @property
    def max_seconds(self) -> float:
        return self.max_samples / feats.SAMPLE_RATE

    @property
    def min_samples(self) -> int:
        """The shortest clip the model gives an audio token (321 samples, 20 ms): a shorter one has no
        audio in its prompt, so it is refused as too short."""
        return MIN_CLIP_SAMPLES

    def score(self, clips: Sequence[np.ndarray], questions: Sequence[str],
              answer_ids: Sequence[Sequence[int]] | None = None) -> list[ClipScores]:
        """Scores clips (float32 16 kHz, at most 30 s) asked `questions`; answers greedy unless given."""
        if len(clips) != len(questions):
            raise ValueError(f"{len(clips)} clips but {len(questions)} questions")
        if answer_ids is not None and len(answer_ids) != len(clips):
            raise ValueError(f"{len(answer_ids)} answers for {len(clips)} clips")
        clips = [validate_waveform(np.asarray(c), f"clip {i}", self.max_seconds, self.min_samples) for i, c in enumerate(clips)]
        results: list[ClipScores | None] = [None] * len(clips)
        for frames, idx in self.batches(clips):
            given = None if answer_ids is None else [answer_ids[i] for i in idx]
            out = self._run(frames, [clips[i] for i in idx], [questions[i] for i in idx], given)
            for j, i in enumerate(idx):
                results[i] = out[j]
        return results  # type: ignore[return-value]

    def batches(self, clips: Sequence[np.ndarray]) -> list[tuple[int, list[int]]]:
        """(bucket frames, clip indices) of each call: clips grouped by bucket, at most batch_size a call."""
        by_bucket: dict[int, list[int]] = {}
        for i, clip in enumerate(clips):
            by_bucket.setdefault(self.bucket_frames(len(clip)), []).append(i)
        bs = self.config.batch_size
        return [(frames, members[start:start + bs]) for frames, members in sorted(by_bucket.items())
                for start in range(0, len(members), bs)]

    def answer(self, clips: Sequence[np.ndarray], questions: Sequence[str]) -> list[str]:
        """The greedy answer text for each clip (e.g. a decoded, compressed clip); no scoring."""
        return [text for text, _ in self.answers(clips, questions)]

    def answers(self, clips: Sequence[np.ndarray], questions: Sequence[str]) -> list[tuple[str, np.ndarray]]:
        """(text, token ids before the first EOS) of each clip's greedy answer. The ids can be handed to
        `score(..., answer_ids=...)`, so that a clip's answer is generated once and scored as it is."""
        if len(clips) != len(questions):
            raise ValueError(f"{len(clips)} clips but {len(questions)} questions")
        clips = [validate_waveform(np.asarray(c), f"clip {i}", self.max_seconds, self.min_samples) for i, c in enumerate(clips)]
        texts: list[tuple[str, np.ndarray]] = [("", np.zeros(0, np.int32))] * len(clips)
        generate = self.generation_program()
        for frames, idx in self.batches(clips):
            pad = self.batch_slots(len(idx)) - len(idx)
            batch_clips = [clips[i] for i in idx] + [clips[idx[0]]] * pad
            batch_questions = [questions[i] for i in idx] + [questions[idx[0]]] * pad
            prompts = build_prompts(self.tokenizer, batch_questions, batch_clips, prompt_format=self.prompt_format,
                                    num_mel_bins=self.model_config.audio.num_mel_bins, pad_to_frames=frames,
                                    padding_side="left", max_frames=self.max_frames)
            ids, mask = self._left_pad(prompts.input_ids, prompts.attention_mask, frames)
            tokens, n = jax.device_get(generate(self.params, ids, mask, prompts.input_features,
                                                prompts.feature_attention_mask.sum(axis=1),
                                                np.arange(len(batch_clips)) < len(idx)))
            for j, i in enumerate(idx):
                ids = self._answer_ids(tokens[j, : int(n[j])])
                texts[i] = (self._decode_answer(ids), ids)
        return texts

    def answer_targets(self, clips: Sequence[np.ndarray], questions: Sequence[str],
                       answer_ids: Sequence[Sequence[int]]) -> dict[str, np.ndarray]:
        """{target: float64 [N]} of program.TARGETS: each given answer's log-probability and log-odds on
        its clip as it is (one teacher-forced pass; no gate, no generation)."""
        if not len(clips) == len(questions) == len(answer_ids):
            raise ValueError(f"{len(clips)} clips, {len(questions)} questions, {len(answer_ids)} answers")
        clips = [validate_waveform(np.asarray(c), f"clip {i}", self.max_seconds, self.min_samples) for i, c in enumerate(clips)]
        out = {target: np.zeros(len(clips)) for target in TARGETS}
        for frames, idx in self.batches(clips):
            batch, n_real = self.make_batch(frames, [clips[i] for i in idx], [questions[i] for i in idx],
                                            [answer_ids[i] for i in idx])
            key = ProgramKey.of(frames, False, batch)
            if key not in self._targets:
                self._targets[key] = jit_scoring(functools.partial(answer_targets_batch, self.model),
                                                 self.param_shardings, self.mesh, batch)
            values = jax.device_get(self._targets[key](self.params, batch))
            sources = _source_clips(batch, n_real)
            real = sources >= 0
            for target in TARGETS:
                out[target][np.asarray(idx)[sources[real]]] = np.asarray(values[target][real], np.float64)
        return out

    def generation_program(self) -> Any:
        """The greedy generator, jitted with the scoring program's shardings: prompts, features and
        outputs on 'data', parameters by the axis rules. fn(params, ids [B, S], mask [B, S], features
        [B, n_mels, P], mel_lengths [B], real [B] bool) -> (tokens [B, max_new_tokens], generated counts [B]);
        with `generate_per_clip`, rows of batch-padding copies (real False) generate nothing."""
        if self._generate is None:
            self._generate = jit_generation(self.model, self.generation, self.param_shardings, self.mesh,
                                            per_clip=self.generate_per_clip, count=self.count_passes)
        return self._generate

    def _answer_ids(self, tokens: np.ndarray) -> np.ndarray:
        """The generated tokens before the first EOS (what the scoring program scores)."""
        tokens = np.asarray(tokens, np.int32)
        ends = np.flatnonzero(np.isin(tokens, self.generation.eos_token_ids))
        return tokens[: ends[0]] if ends.size else tokens

    def _left_pad(self, ids: np.ndarray, mask: np.ndarray, frames: int) -> tuple[np.ndarray, np.ndarray]:
        """Left-pads prompts to the batch's prompt slots (`prompt_slots`), so generation compiles at
        most `prompt_steps` times per bucket."""
        if ids.shape[1] > frames // 4 + self.config.max_text_tokens:
            raise ValueError(f"a prompt has {ids.shape[1] - frames // 4}+ text tokens; "
                             f"max_text_tokens={self.config.max_text_tokens}")
        slots = self.prompt_slots(frames, ids.shape[1])
        extra = slots - ids.shape[1]
        pad_id = self.tokenizer.pad_token_id or 0
        return (np.pad(ids, ((0, 0), (extra, 0)), constant_values=pad_id),
                np.pad(mask, ((0, 0), (extra, 0)), constant_values=0))

    def text_tokens(self, question: str) -> int:
        """Prompt tokens of a question besides the audio: its prompt's ids less the one placeholder."""
        return len(prompt_ids(self.tokenizer, self.prompt_format, question)) - 1

    def _first_audio_position(self, question: str) -> int:
        """Where the first audio placeholder sits in the prompt of `question` (the template's prefix;
        the empty question gives a lower bound even for templates that put the question first)."""
        frames = min(feats.FRAMES_PER_SECOND, self.max_frames)
        prompts = build_prompts(self.tokenizer, [question], [np.zeros(frames * feats.HOP_LENGTH, np.float32)],
                                prompt_format=self.prompt_format,
                                num_mel_bins=self.model_config.audio.num_mel_bins, pad_to_frames=frames,
                                padding_side="right", max_frames=self.max_frames)
        return int(np.argmax(prompts.input_ids[0] == self.model_config.audio_token_id))

    def _decode_answer(self, tokens: np.ndarray) -> str:
        tokens = [int(t) for t in tokens if int(t) not in self.generation.eos_token_ids]
        return self.tokenizer.decode(tokens, skip_special_tokens=True).strip()

    def _run(self, frames: int, clips: list[np.ndarray], questions: list[str],
             answers: list[Sequence[int]] | None) -> list[ClipScores]:
        batch, n_real = self.make_batch(frames, clips, questions, answers)
        fn, compile_seconds = self.program(frames, answers is None, batch)
        start = time.perf_counter()
        out = jax.device_get(fn(self.params, batch))
        run_seconds = time.perf_counter() - start
        slot = {int(i): p for p, i in enumerate(_source_clips(batch, n_real)) if i >= 0}
        return [self._clip_result(out, batch, slot[j], questions[j], len(clips[j]), compile_seconds / n_real,
                                  run_seconds / n_real) for j in range(n_real)]

    def batch_slots(self, n_real: int) -> int:
        """Slots of a batch of `n_real` clips: the next power of two, a multiple of the mesh's data axis,
        at most `batch_size`; so a bucket compiles at most log2(batch_size) + 1 programs and a lone
        clip (the CLI, a sweep's last batch) is scored once, not `batch_size` times."""
        data = self.config.mesh_shape[0]
        slots = 1 << max(n_real - 1, 0).bit_length()
        return min(-(-slots // data) * data, self.config.batch_size)

    def slot_order(self, n_samples: Sequence[int], slots: int) -> np.ndarray:
        """[slots] the clip in each batch slot (indices from len(n_samples) on: batch-padding copies).
        The program runs each data shard's i-th clips together and until the longest of them is done
        (`program.map_real_clips`, `_occlusion_logps`), so with several data shards the clips go
        longest first, the k-th longest to shard k mod shards at row k // shards: clips that run
        together are of like length and rows of copies alone are skipped. One shard: input order."""
        shards = self.config.mesh_shape[0]
        if shards == 1 or slots % shards:
            return np.arange(slots)
        n = len(n_samples)
        by_length = sorted(range(n), key=lambda i: -n_samples[i]) + list(range(n, slots))
        order = np.empty(slots, np.int64)
        for k, clip in enumerate(by_length):
            order[(k % shards) * (slots // shards) + k // shards] = clip
        return order

    def prompt_slots(self, frames: int, longest: int) -> int:
        """Prompt positions of a batch of one bucket whose longest prompt has `longest` tokens: the
        smallest of `prompt_steps` lengths full x ratio^k (k < prompt_steps, rounded up to multiples
        of 8; full = the bucket's T + `max_text_tokens`, ratio = `prompt_step_ratio`) that holds it.
        Steps in a constant ratio bound every prompt past the smallest step to 1 / ratio of its own
        positions (even steps cannot: one just past a step runs up to 4/3 more), and a bucket's clips
        are longer than the bucket below, so few prompts fall under the smallest. Prompts are
        right-padded and causal, so every pass over fewer positions is exact; each length used
        compiles its own program (at most `prompt_steps` per bucket and batch slots)."""
        full = frames // 4 + self.config.max_text_tokens
        ratio = self.config.prompt_step_ratio
        for k in reversed(range(1, self.config.prompt_steps)):
            slots = min(-(-math.ceil(full * ratio ** k) // 8) * 8, full)
            if longest <= slots:
                return slots
        return full

    def make_batch(self, frames: int, clips, questions, answers) -> tuple[dict[str, Any], int]:
        """The program's input batch for clips of one bucket (see `program.ClipBatch`) and the number of
        real clips, padded with copies to `batch_slots`, in the slots of `slot_order`: clip i is in the
        slot where `source_clip` is i (-1: a copy)."""
        c = self.config
        n_real = len(clips)
        bs = self.batch_slots(n_real)
        order = self.slot_order([len(x) for x in clips], bs)  # slot -> clip (n_real and up: copies)
        source = lambda items: [items[i] if i < n_real else items[0] for i in order]
        clips, questions = source(list(clips)), source(list(questions))
        answers = None if answers is None else source(list(answers))
        n_mels = self.model_config.audio.num_mel_bins
        prompts = build_prompts(self.tokenizer, questions, clips, prompt_format=self.prompt_format, num_mel_bins=n_mels,
                                pad_to_frames=frames, padding_side="right", max_frames=self.max_frames)
        check_placeholder_count(prompts.input_ids, prompts.num_audio_tokens, self.model_config.audio_token_id)
        s_slots = frames // 4 + c.max_text_tokens
        lengths = prompts.attention_mask.sum(axis=1)
        if lengths.max() > s_slots:
            raise ValueError(f"a prompt has {lengths.max() - prompts.num_audio_tokens.max()} text tokens; "
                             f"max_text_tokens={c.max_text_tokens}")
        s_slots = self.prompt_slots(frames, int(lengths.max()))
        prompt_ids = np.zeros((bs, s_slots), np.int32)
        prompt_ids[:, : prompts.input_ids.shape[1]] = prompts.input_ids * prompts.attention_mask
        first_audio = np.argmax(prompt_ids == self.model_config.audio_token_id, axis=1)
        if first_audio.min() < self.audio_offset:
            raise ValueError(f"a prompt's audio starts at position {first_audio.min()}, before the template's "
                             f"{self.audio_offset}: the occlusion prefix sharing would not be exact")
        silence = feats.silence_log_mel(bs, n_mels, frames, self.max_frames)
        answer_ids, answer_lengths = answer_arrays(answers, bs, c.max_new_tokens)
        source_clip = np.where(order < n_real, order, -1).astype(np.int32)
        num, den = self.keep_fraction
        batch = dict(
            features=prompts.input_features.astype(np.float32),
            mel_lengths=prompts.feature_attention_mask.sum(axis=1).astype(np.int32),
            silence_features=silence.astype(np.float32),
            prompt_ids=prompt_ids,
            prompt_lengths=lengths.astype(np.int32),
            answer_ids=answer_ids,
            answer_lengths=answer_lengths,
            n_samples=np.asarray([len(x) for x in clips], np.int32),
            clip_real=source_clip >= 0,
            source_clip=source_clip,
            alpha=np.float32(c.alpha),
            keep_num=np.int32(num),
            keep_den=np.int32(den),
        )
        return batch, n_real

    def program(self, frames: int, generate: bool, batch: dict[str, Any]):
        """The compiled program for a bucket and a batch's slots, cached: (executable, seconds spent
        compiling it now)."""
        key = ProgramKey.of(frames, generate, batch)
        if key in self.executables:
            return self.executables[key], 0.0
        c = self.config
        spec = ProgramSpec.from_config(c, max_samples=frames * feats.HOP_LENGTH, generate=generate,
                                       audio_offset=self.audio_offset, generation=self.generation)
        spec = dataclasses.replace(spec, count_passes=self.count_passes, generate_per_clip=self.generate_per_clip,
                                   ig_chunk=self.ig_chunk)

        def program(params, batch):
            self.traces += 1
            return score_batch(self.model, spec, params, batch)

        start = time.perf_counter()
        executable = jit_scoring(program, self.param_shardings, self.mesh, batch).lower(self.params, batch).compile(
            compiler_options=self.compiler_options())
        temp = _temp_bytes(executable)
        self.program_memory[key] = temp
        if self.mesh.devices.flat[0].platform == "cpu":
            _check_cpu_memory(temp, c.cpu_memory_budget, frames)
        self.executables[key] = executable
        return executable, time.perf_counter() - start

    def compiler_options(self) -> dict[str, str] | None:
        """XLA options of the scoring programs: CPU_NO_YNNPACK_OPTIONS on CPU without `cpu_ynnpack`."""
        if self.config.cpu_ynnpack or self.mesh.devices.flat[0].platform != "cpu":
            return None
        return dict(CPU_NO_YNNPACK_OPTIONS)

    def _clip_result(self, out, batch, j, question, n_samples, compile_share, run_share) -> ClipScores:
        t = int(out["num_tokens"][j])
        n = int(out["answer_lengths"][j])
        answer = np.asarray(out["answer_ids"][j, :n])
        frames, keep = {}, {}
        for r in self.config.rates:
            valid = np.asarray(out[f"frame_valid_{r}"][j])
            frames[r] = np.asarray(out[f"frames_{r}"][j])[valid]
            keep[r] = np.flatnonzero(np.asarray(out[f"keep_{r}"][j]) & valid)
        length = int(batch["prompt_lengths"][j])
        return ClipScores(
            question=question,
            input_ids=np.asarray(batch["prompt_ids"][j, :length]),
            answer_ids=answer,
            answer_text=self._decode_answer(answer),
            n_samples=n_samples,
            num_tokens=t,
            local=np.asarray(out["local"][j, :t]),
            global_=np.asarray(out["global_"][j, :t]),
            fused=np.asarray(out["fused"][j, :t]),
            fastv=np.asarray(out["fastv"][j, :t]),
            logp_full=float(out["logp_full"][j]),
            logp_silence=float(out["logp_silence"][j]),
            frames=frames,
            keep=keep,
            seconds={"compile": compile_share, "run": run_share},
        )


def _source_clips(batch: dict[str, Any], n_real: int) -> np.ndarray:
    """[slots] the clip each slot of a `make_batch` batch holds (-1: a copy); a batch without
    `source_clip` (PandaGPT's) is in input order, copies last."""
    if "source_clip" in batch:
        return np.asarray(batch["source_clip"])
    slots = np.arange(len(batch["n_samples"]))
    return np.where(slots < n_real, slots, -1)


def jit_scoring(program: Any, shardings: Any, mesh: Mesh, batch: dict[str, Any]) -> Any:
    """jax.jit of program(params, batch) with parameters on `shardings`, the batch's arrays and every
    output on 'data' and its scalars replicated (`batch`: arrays or ShapeDtypeStructs, for their ranks)."""
    data = NamedSharding(mesh, PartitionSpec("data"))
    scalar = NamedSharding(mesh, PartitionSpec())
    batch_sh = {k: scalar if np.ndim(v) == 0 else data for k, v in batch.items()}
    return jax.jit(program, in_shardings=(shardings, batch_sh), out_shardings=data)


def jit_generation(model: Any, settings: GenerationSettings, shardings: Any, mesh: Mesh, *,
                   per_clip: bool = False, count: bool = False) -> Any:
    """`models.generate.greedy_generate` jitted like the scoring program: fn(params, ids, mask, features,
    mel_lengths, real) with the five batch arrays and both outputs on 'data', parameters on `shardings`.
    `per_clip`: one clip per data shard at a time, rows with `real` False skipped
    (`program.map_real_clips`); else the whole batch at once. `count`: count the rows generated
    (`program.PASS_COUNTER`)."""
    data = NamedSharding(mesh, PartitionSpec("data"))
    shards = mesh.shape["data"]

    def generate(params, ids, mask, features, mel_lengths, real):
        def rows_fn(rows):
            if count:
                jax.debug.callback(count_generated, rows[0].shape[0])
            return greedy_generate(model, params, *rows, settings=settings)

        rows = (ids, mask, features, mel_lengths)
        if per_clip:
            return map_real_clips(rows_fn, rows, real, shards if ids.shape[0] % shards == 0 else 1)
        return rows_fn(rows)

    return jax.jit(generate, in_shardings=(shardings, data, data, data, data, data), out_shardings=(data, data))



def answer_arrays(answers: Sequence[Sequence[int]] | None, slots: int, max_new_tokens: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """The program's answer_ids [slots, max_new_tokens] and answer_lengths [slots] (-1: generate) for
    the given answers, padded with copies of the first to `slots`."""
    ids = np.zeros((slots, max_new_tokens), np.int32)
    lengths = np.full((slots,), -1, np.int32)
    if answers is not None:
        answers = list(answers) + [answers[0]] * (slots - len(answers))
        for j, ans in enumerate(answers):
            ans = np.asarray(ans, np.int32)
            if len(ans) > max_new_tokens:
                raise ValueError(f"answer {j} has {len(ans)} tokens; expected at most max_new_tokens={max_new_tokens}")
            ids[j, : len(ans)] = ans
            lengths[j] = len(ans)
    return ids, lengths

def _temp_bytes(executable: Any) -> int:
    memory = executable.memory_analysis()
    return 0 if memory is None else int(memory.temp_size_in_bytes)


def _host_memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _check_cpu_memory(temp_bytes: int, budget: float, frames: int) -> None:
    """Refuses a CPU program whose temporaries exceed the host's memory; warns above `budget` of it."""
    host = _host_memory_bytes()
    if temp_bytes <= budget * host:
        return
    lean = CPU_LEAN_SCHEDULER_FLAG in os.environ.get("XLA_FLAGS", "")
    advice = ("lower scoring.batch_size or occlusion_chunk, or drop the longest bucket" if lean else
              f"set XLA_FLAGS={CPU_LEAN_SCHEDULER_FLAG} before starting (about 10x less on long buckets)")
    message = (f"the scoring program of the {frames}-frame bucket needs {temp_bytes / 2**30:.1f} GiB of "
               f"temporaries, {temp_bytes / host:.0%} of this host's {host / 2**30:.0f} GiB; {advice}")
    if temp_bytes > host:
        raise MemoryError(message)
    _log.warning(message)


def make_mesh(shape: tuple[int, int]) -> Mesh:
    """A ('data', 'model') mesh over this host's first data x model devices (each host scores its own
    shard of the data set, DESIGN.md section 7)."""
    n = shape[0] * shape[1]
    devices = jax.local_devices()
    if n > len(devices):
        raise ValueError(f"mesh {shape} needs {n} devices; {len(devices)} available")
    return Mesh(np.asarray(devices[:n]).reshape(shape), MESH_AXES)


def param_shardings(config, mesh: Mesh, rules, fsdp: bool = False) -> Any:
    """NamedShardings of the Qwen2-Audio parameters (`config`: `Qwen2AudioConfig`) from their logical
    axis names and `rules` (`param_sharding` per leaf); `fsdp`: `fsdp_axis_rules(rules)` instead."""
    boxed = jax.eval_shape(lambda: init_params(config, jax.random.key(0)))
    logical = nn.get_partition_spec(boxed)
    shapes = nn.meta.unbox(boxed)
    rules = fsdp_axis_rules(rules) if fsdp else tuple(tuple(rule) for rule in rules)
    heads = head_counts(config)
    return jax.tree_util.tree_map(lambda names, leaf: param_sharding(names, leaf.shape, mesh, rules, heads),
                                  logical, shapes, is_leaf=lambda x: isinstance(x, PartitionSpec))


def fsdp_axis_rules(rules) -> tuple[tuple[str, str | None], ...]:
    """`rules` with the `FSDP_AXES` (every model width) on 'data' wherever they map to no mesh axis:
    each weight is also split over the data devices and gathered where it is used (FSDP)."""
    return tuple((name, "data") if name in FSDP_AXES and axis is None else (name, axis) for name, axis in rules)


def head_counts(config) -> dict[str, int]:
    """Logical head axis -> its number of heads in `config` (a `Qwen2AudioConfig`)."""
    return {"heads": config.text.num_attention_heads, "kv_heads": config.text.num_key_value_heads,
            "audio_heads": config.audio.encoder_attention_heads}


def param_sharding(names: PartitionSpec, shape: tuple[int, ...], mesh: Mesh, rules,
                   heads: dict[str, int]) -> NamedSharding:
    """The NamedSharding of one parameter of `shape` whose dimensions have the logical `names`.

    Each dimension goes on the mesh axis `rules` give its name, if that axis splits it evenly: a
    dimension named in `heads` ([heads * head_dim]) only in whole heads. A mesh axis that cannot split
    its dimension goes to the first other named dimension that no rule placed and that it splits
    (e.g. k_proj [embed, kv_heads * head_dim] with 2 kv heads on 4 devices: split along embed, the
    products summed across the axis), else the weight stays whole along it.
    """
    names = tuple(names) + (None,) * (len(shape) - len(names))
    wanted = list(nn.logical_to_mesh_axes(names, rules))
    spec: list[str | None] = [None] * len(shape)
    homeless = []
    for i, axis in enumerate(wanted):
        if axis is None:
            continue
        if _splits(shape[i], heads.get(names[i]), _axis_size(mesh, axis)):
            spec[i] = axis
        else:
            homeless.append(axis)
    for axis in homeless:
        for i, name in enumerate(names):
            if name is not None and wanted[i] is None and spec[i] is None and \
                    _splits(shape[i], heads.get(name), _axis_size(mesh, axis)):
                spec[i] = axis
                break
    return NamedSharding(mesh, PartitionSpec(*spec))


def _axis_size(mesh: Mesh, axis: str | tuple[str, ...]) -> int:
    """Devices along a mesh axis or a tuple of them."""
    return math.prod(mesh.shape[a] for a in ((axis,) if isinstance(axis, str) else axis))


def _splits(size: int, heads: int | None, devices: int) -> bool:
    """Whether `devices` split a dimension of `size` evenly (in whole heads when it holds `heads`)."""
    return size % devices == 0 and (heads is None or heads % devices == 0)


def _divisible(sharding: NamedSharding, shape: tuple[int, ...], mesh: Mesh) -> NamedSharding:
    """Replicates the dimensions a mesh axis does not divide (e.g. a vocabulary of 33 over 2 devices)."""
    spec = [axis if axis is None or shape[i] % mesh.shape[axis] == 0 else None
            for i, axis in enumerate(tuple(sharding.spec) + (None,) * (len(shape) - len(sharding.spec)))]
    return NamedSharding(mesh, PartitionSpec(*spec))
