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

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from agac_jax.audio import features as feats
from agac_jax.audio.io import validate_waveform
from agac_jax.models.generate import GenerationSettings, greedy_generate
from agac_jax.models.interface import ModelAdapter
from agac_jax.scoring import executables
from agac_jax.scoring.program import ProgramSpec, answer_targets_batch, map_real_clips, score_batch
from agac_jax.scoring.settings import (CPU_IG_CHUNK, CPU_OCCLUSION_GATE_BATCH, POSTER_ALPHA, POSTER_LOCAL_SCORE,  # noqa: F401 - the
                                       TARGETS, ScoringConfig, keep_ratio_fraction)  # poster's settings, for callers
from agac_jax.scoring.sharding import fsdp_axis_rules, make_mesh

_log = logging.getLogger(__name__)

# XLA:CPU's default scheduler runs independent occlusion chunks side by side and holds their attention
# scores at once: 4.1 GiB of temporaries for one 30 s clip on the tiny model, 0.34 GiB without it. The
# flag is read from XLA_FLAGS only (a per-compile option does not reach the scheduler).
CPU_LEAN_SCHEDULER_FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler=false"
# XLA:CPU hands dots and reductions to YNNPACK, which builds each fusion's pipeline on the program's first
# execution: 0.3 s of CPU per program of the tiny model (3x its warm run), 0.5 s for the 512-wide one.
# Without it (the default, `ScoringConfig.cpu_ynnpack`) XLA's own kernels run them, built at compile time.
CPU_NO_YNNPACK_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}
# XLA's tree-reduction rewrite splits every long reduction, such as the softmax's max and sum over the
# keys, into a reduce-window that no fusion takes in: one more pass over every attention score matrix,
# a fifth of the occlusion program's time. Without it the reductions fuse with the ops that produce
# their operand; the sums are as accurate (a log-sum-exp over 151,646 logits: the same 8.5e-7 error).
CPU_SCORING_OPTIONS = {"xla_disable_hlo_passes": "tree_reduction_rewriter"}


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
    """Scores clips with any audio-language model held as Flax parameters: a family's adapter
    (`models.interface.ModelAdapter`) builds its inputs, this class batches, compiles and runs them."""

    def __init__(self, adapter: ModelAdapter, params: Any, config: ScoringConfig = ScoringConfig()):
        """`adapter`: the model family's host side (e.g. `Qwen2AudioAdapter.of(loaded, tokenizer)`),
        `params`: its Flax parameters (placed here on the config's mesh)."""
        self.config = config
        self.adapter = adapter
        self.model = adapter.model
        self.model_config = adapter.config
        self.tokenizer = adapter.tokenizer
        self.generation = adapter.generation_settings(config.max_new_tokens)
        self.keep_fraction = keep_ratio_fraction(config.keep)
        self.mesh = make_mesh(config.mesh_shape)
        if config.batch_size % config.mesh_shape[0]:
            raise ValueError(f"batch_size={config.batch_size} must be a multiple of the data axis "
                             f"{config.mesh_shape[0]}")
        self.param_shardings = adapter.param_shardings(self.mesh, axis_rules(config))
        self.params = jax.device_put(params, self.param_shardings)  # no copy when loaded sharded
        self._generate = None  # the jitted, sharded greedy generator (`generation_program`)
        self._targets: dict[ProgramKey, Any] = {}  # jitted `answer_targets` programs
        self.max_samples = adapter.max_samples(config.buckets_seconds)
        self.min_samples = adapter.min_samples
        self.traces = 0  # how often the scoring program was traced (one per bucket and answer mode)
        self.audio_offset = adapter.audio_offset()
        self.executables: dict[ProgramKey, Any] = {}  # the compiled programs
        self.program_memory: dict[ProgramKey, int] = {}  # temporary bytes of each compiled program
        self.probe = None  # tests: f(name, count) called as programs compiled from now on run passes
        on_cpu = self.mesh.devices.flat[0].platform == "cpu"
        self.generate_per_clip = config.generate_per_clip if config.generate_per_clip is not None else on_cpu
        self.ig_chunk = config.ig_chunk or (CPU_IG_CHUNK if on_cpu else 1)
        self.occlusion_gate_batch = config.occlusion_gate_batch or (CPU_OCCLUSION_GATE_BATCH if on_cpu else 0)

    @classmethod
    def from_directory(cls, directory: str | Path, config: ScoringConfig = ScoringConfig(), *, kind: str = "",
                       **options: Any) -> "Scorer":
        """A Scorer for a checkpoint directory as downloaded (or converted); `kind` the model family
        (`models.MODELS`; "": told by the directory's files). The weights stream onto their shardings
        on this config's mesh. `options` go to the family's loader: for Qwen2-Audio `param_dtype`,
        `dtype`, `scan_layers`, `remat_layers`, `prompt_format`; for PandaGPT `use_video`."""
        from agac_jax import models

        adapter, params = models.load_adapter(directory, kind, mesh=make_mesh(config.mesh_shape),
                                              rules=axis_rules(config), **options)
        return cls(adapter, params, config)

    @property
    def kind(self) -> str:
        return self.adapter.kind

    @property
    def uses_video(self) -> bool:
        return self.adapter.uses_video

    @property
    def max_seconds(self) -> float:
        return self.max_samples / feats.SAMPLE_RATE

    def bucket_frames(self, n_samples: int) -> int:
        """10 ms frames of the clip's length bucket (the family's rule over `buckets_seconds`)."""
        if n_samples > self.max_samples:
            raise ValueError(f"a clip of {n_samples} samples is longer than this model's {self.max_seconds:g} s "
                             f"({self.max_samples} samples); split it with split_windows, or raise "
                             "scoring.buckets_seconds where the model takes longer clips")
        return self.adapter.bucket_frames(n_samples, self.config.buckets_seconds)

    def audio_token_count(self, n_samples: int) -> int:
        """Prompt positions the model gives a clip of `n_samples`."""
        return self.adapter.audio_token_count(n_samples)

    def text_tokens(self, question: str) -> int:
        """Prompt tokens of a question besides the audio."""
        return self.adapter.text_tokens(question)

    def _clips(self, clips: Sequence[np.ndarray]) -> list[np.ndarray]:
        return [validate_waveform(np.asarray(c), f"clip {i}", self.max_seconds, self.min_samples)
                for i, c in enumerate(clips)]

    def _context(self, videos: Sequence[Any] | None, n: int) -> np.ndarray | None:
        """The clips' video vectors (`ModelAdapter.video_context`), or None without videos."""
        if videos is None:
            return None
        if len(videos) != n:
            raise ValueError(f"{n} clips but {len(videos)} videos")
        return self.adapter.video_context(self.params, videos)

    def score(self, clips: Sequence[np.ndarray], questions: Sequence[str],
              answer_ids: Sequence[Sequence[int]] | None = None,
              videos: Sequence[Any] | None = None) -> list[ClipScores]:
        """Scores clips (float32 16 kHz, at most `max_seconds`) asked `questions`; answers greedy unless
        given; `videos`, for a model that also sees the clip's video (`uses_video`)."""
        if len(clips) != len(questions):
            raise ValueError(f"{len(clips)} clips but {len(questions)} questions")
        if answer_ids is not None and len(answer_ids) != len(clips):
            raise ValueError(f"{len(answer_ids)} answers for {len(clips)} clips")
        clips = self._clips(clips)
        context = self._context(videos, len(clips))
        results: list[ClipScores | None] = [None] * len(clips)
        for frames, idx in self.batches(clips):
            given = None if answer_ids is None else [answer_ids[i] for i in idx]
            out = self._run(frames, [clips[i] for i in idx], [questions[i] for i in idx], given,
                            None if context is None else context[idx])
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

    def answer(self, clips: Sequence[np.ndarray], questions: Sequence[str],
               videos: Sequence[Any] | None = None) -> list[str]:
        """The greedy answer text for each clip (e.g. a decoded, compressed clip); no scoring."""
        return [text for text, _ in self.answers(clips, questions, videos)]

    def answers(self, clips: Sequence[np.ndarray], questions: Sequence[str],
                videos: Sequence[Any] | None = None) -> list[tuple[str, np.ndarray]]:
        """(text, token ids before the first EOS) of each clip's greedy answer. The ids can be handed to
        `score(..., answer_ids=...)`, so that a clip's answer is generated once and scored as it is."""
        if len(clips) != len(questions):
            raise ValueError(f"{len(clips)} clips but {len(questions)} questions")
        clips = self._clips(clips)
        context = self._context(videos, len(clips))
        texts: list[tuple[str, np.ndarray]] = [("", np.zeros(0, np.int32))] * len(clips)
        generate = self.generation_program()
        for frames, idx in self.batches(clips):
            pad = self.batch_slots(len(idx)) - len(idx)
            members = idx + [idx[0]] * pad
            inputs = self.adapter.inputs([clips[i] for i in members], [questions[i] for i in members], frames,
                                         padding_side="left", silence=False)
            ids, mask = self._left_pad(inputs.input_ids, inputs.attention_mask, frames)
            tokens, n = jax.device_get(generate(self.params, ids, mask, inputs.features, inputs.mel_lengths,
                                                np.arange(len(members)) < len(idx),
                                                None if context is None else context[members]))
            for j, i in enumerate(idx):
                ids = self._answer_ids(tokens[j, : int(n[j])])
                texts[i] = (self._decode_answer(ids), ids)
        return texts

    def answer_targets(self, clips: Sequence[np.ndarray], questions: Sequence[str],
                       answer_ids: Sequence[Sequence[int]], videos: Sequence[Any] | None = None) -> dict[str, np.ndarray]:
        """{target: float64 [N]} of program.TARGETS: each given answer's log-probability and log-odds on
        its clip as it is (one teacher-forced pass; no gate, no generation)."""
        if not len(clips) == len(questions) == len(answer_ids):
            raise ValueError(f"{len(clips)} clips, {len(questions)} questions, {len(answer_ids)} answers")
        clips = self._clips(clips)
        context = self._context(videos, len(clips))
        out = {target: np.zeros(len(clips)) for target in TARGETS}
        for frames, idx in self.batches(clips):
            batch, n_real = self.make_batch(frames, [clips[i] for i in idx], [questions[i] for i in idx],
                                            [answer_ids[i] for i in idx], None if context is None else context[idx])
            key = ProgramKey.of(frames, False, batch)
            if key not in self._targets:
                self._targets[key] = jit_scoring(functools.partial(answer_targets_batch, self.model),
                                                 self.param_shardings, self.mesh, batch)
            values = jax.device_get(self._targets[key](self.params, batch))
            sources = np.asarray(batch["source_clip"])
            real = sources >= 0
            for target in TARGETS:
                out[target][np.asarray(idx)[sources[real]]] = np.asarray(values[target][real], np.float64)
        return out

    def generation_program(self) -> Any:
        """The greedy generator, jitted with the scoring program's shardings: prompts, features and
        outputs on 'data', parameters by the axis rules. fn(params, ids [B, S], mask [B, S], features
        [B, ...], mel_lengths [B], real [B] bool, context [B, ...] or None) -> (tokens [B,
        max_new_tokens], generated counts [B]); with `generate_per_clip`, rows of batch-padding copies
        (real False) generate nothing."""
        if self._generate is None:
            self._generate = jit_generation(self.model, self.generation, self.param_shardings, self.mesh,
                                            per_clip=self.generate_per_clip, probe=self.probe)
        return self._generate

    def _answer_ids(self, tokens: np.ndarray) -> np.ndarray:
        """The generated tokens before the first EOS (what the scoring program scores)."""
        tokens = np.asarray(tokens, np.int32)
        ends = np.flatnonzero(np.isin(tokens, self.generation.eos_token_ids))
        return tokens[: ends[0]] if ends.size else tokens

    def _left_pad(self, ids: np.ndarray, mask: np.ndarray, frames: int) -> tuple[np.ndarray, np.ndarray]:
        """Left-pads prompts to the batch's prompt slots (`prompt_slots`), so generation compiles at
        most `prompt_steps` times per bucket."""
        audio = self.adapter.audio_slots(frames)
        if ids.shape[1] > audio + self.config.max_text_tokens:
            raise ValueError(f"a prompt has {ids.shape[1] - audio}+ text tokens; "
                             f"max_text_tokens={self.config.max_text_tokens}")
        slots = self.prompt_slots(frames, ids.shape[1])
        extra = slots - ids.shape[1]
        pad_id = self.adapter.pad_token_id
        return (np.pad(ids, ((0, 0), (extra, 0)), constant_values=pad_id),
                np.pad(mask, ((0, 0), (extra, 0)), constant_values=0))

    def _decode_answer(self, tokens: np.ndarray) -> str:
        return self.adapter.decode([int(t) for t in tokens if int(t) not in self.generation.eos_token_ids])

    def _run(self, frames: int, clips: list[np.ndarray], questions: list[str],
             answers: list[Sequence[int]] | None, context: np.ndarray | None = None) -> list[ClipScores]:
        batch, n_real = self.make_batch(frames, clips, questions, answers, context)
        fn, compile_seconds = self.program(frames, answers is None, batch)
        start = time.perf_counter()
        out = jax.device_get(fn(self.params, batch))
        run_seconds = time.perf_counter() - start
        slot = {int(i): p for p, i in enumerate(np.asarray(batch["source_clip"])) if i >= 0}
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
        full = self.adapter.audio_slots(frames) + self.config.max_text_tokens
        ratio = self.config.prompt_step_ratio
        for k in reversed(range(1, self.config.prompt_steps)):
            slots = min(-(-math.ceil(full * ratio ** k) // 8) * 8, full)
            if longest <= slots:
                return slots
        return full

    def make_batch(self, frames: int, clips, questions, answers, context: np.ndarray | None = None
                   ) -> tuple[dict[str, Any], int]:
        """The program's input batch for clips of one bucket (see `program.ClipBatch`) and the number of
        real clips, padded with copies to `batch_slots`, in the slots of `slot_order`: clip i is in the
        slot where `source_clip` is i (-1: a copy). `context`: the clips' video vectors, or None."""
        c = self.config
        n_real = len(clips)
        bs = self.batch_slots(n_real)
        order = self.slot_order([len(x) for x in clips], bs)  # slot -> clip (n_real and up: copies)
        source = lambda items: [items[i] if i < n_real else items[0] for i in order]
        clips, questions = source(list(clips)), source(list(questions))
        answers = None if answers is None else source(list(answers))
        inputs = self.adapter.inputs(clips, questions, frames, padding_side="right", silence=True)
        audio = self.adapter.audio_slots(frames)
        lengths = inputs.attention_mask.sum(axis=1)
        if lengths.max() > audio + c.max_text_tokens:
            raise ValueError(f"a prompt has more than max_text_tokens={c.max_text_tokens} text tokens")
        s_slots = self.prompt_slots(frames, int(lengths.max()))
        prompt_ids = np.zeros((bs, s_slots), np.int32)
        prompt_ids[:, : inputs.input_ids.shape[1]] = inputs.input_ids * inputs.attention_mask
        first_audio = np.argmax(prompt_ids == self.model.audio_token_id, axis=1)
        if first_audio.min() < self.audio_offset:
            raise ValueError(f"a prompt's audio starts at position {first_audio.min()}, before the template's "
                             f"{self.audio_offset}: the occlusion prefix sharing would not be exact")
        answer_ids, answer_lengths = answer_arrays(answers, bs, c.max_new_tokens)
        source_clip = np.where(order < n_real, order, -1).astype(np.int32)
        num, den = self.keep_fraction
        batch = dict(
            features=inputs.features.astype(np.float32),
            mel_lengths=inputs.mel_lengths.astype(np.int32),
            silence_features=inputs.silence_features.astype(np.float32),
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
            **inputs.slots,
        )
        if context is not None:
            batch["context"] = np.asarray(context)[np.where(order < n_real, order, 0)]
        return batch, n_real

    def program(self, frames: int, generate: bool, batch: dict[str, Any]):
        """The compiled program for a bucket and a batch's slots, cached: (executable, seconds spent
        compiling it now)."""
        key = ProgramKey.of(frames, generate, batch)
        if key in self.executables:
            return self.executables[key], 0.0
        spec = ProgramSpec.from_config(self.config, max_samples=frames * feats.HOP_LENGTH, generate=generate,
                                       audio_offset=self.audio_offset, generation=self.generation,
                                       generate_per_clip=self.generate_per_clip, ig_chunk=self.ig_chunk,
                                       occlusion_gate_batch=self.occlusion_gate_batch,
                                       probe=self.probe)

        def program(params, batch):
            self.traces += 1
            return score_batch(self.model, spec, params, batch)

        start = time.perf_counter()
        stored = None
        if executables.directory() is not None and self.probe is None:  # a probe is Python the key cannot see
            in_tree = jax.tree_util.tree_structure(((self.params, batch), {}))
            stored = executables.program_key(
                program="scoring", spec=spec, kind=self.kind, model=self.model_config,
                options=self.compiler_options(), params=executables.abstract(self.params),
                batch=executables.abstract(batch), mesh=[list(self.mesh.devices.shape), list(self.mesh.axis_names),
                                                         [d.device_kind for d in self.mesh.devices.flat]])
            executable = executables.load(stored, in_tree, list(self.mesh.devices.flat))
        if stored is None or executable is None:
            executable = jit_scoring(program, self.param_shardings, self.mesh, batch).lower(self.params, batch).compile(
                compiler_options=self.compiler_options())
            if stored is not None:
                executables.save(stored, executable, in_tree)
        temp = _temp_bytes(executable)
        self.program_memory[key] = temp
        if self.mesh.devices.flat[0].platform == "cpu":
            _check_cpu_memory(temp, self.config.cpu_memory_budget, frames)
        self.executables[key] = executable
        return executable, time.perf_counter() - start

    def compiler_options(self) -> dict[str, str] | None:
        """XLA options of the scoring programs: on CPU, CPU_SCORING_OPTIONS, and CPU_NO_YNNPACK_OPTIONS
        without `cpu_ynnpack`."""
        if self.mesh.devices.flat[0].platform != "cpu":
            return None
        return {**CPU_SCORING_OPTIONS, **({} if self.config.cpu_ynnpack else CPU_NO_YNNPACK_OPTIONS)}

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
        slots = {name: np.asarray(batch[name][j]) for name in ("slot_ranges", "slot_valid") if name in batch}
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
            **slots,
        )


def axis_rules(config: ScoringConfig) -> tuple[tuple[str, str | None], ...]:
    """The logical axis rules the config's parameters are sharded by (`fsdp_axis_rules` under `fsdp`)."""
    rules = tuple(tuple(rule) for rule in config.axis_rules)
    return fsdp_axis_rules(rules) if config.fsdp else rules


def jit_scoring(program: Any, shardings: Any, mesh: Mesh, batch: dict[str, Any]) -> Any:
    """jax.jit of program(params, batch) with parameters on `shardings`, the batch's arrays and every
    output on 'data' and its scalars replicated (`batch`: arrays or ShapeDtypeStructs, for their ranks)."""
    data = NamedSharding(mesh, PartitionSpec("data"))
    scalar = NamedSharding(mesh, PartitionSpec())
    batch_sh = {k: scalar if np.ndim(v) == 0 else data for k, v in batch.items()}
    return jax.jit(program, in_shardings=(shardings, batch_sh), out_shardings=data)


def jit_generation(model: Any, settings: GenerationSettings, shardings: Any, mesh: Mesh, *,
                   per_clip: bool = False, probe: Any = None) -> Any:
    """`models.generate.greedy_generate` jitted like the scoring program: fn(params, ids, mask, features,
    mel_lengths, real, context) with the batch arrays and both outputs on 'data', parameters on
    `shardings` (`context`: None, or the clips' video vectors). `per_clip`: one clip per data shard at a
    time, rows with `real` False skipped (`program.map_real_clips`); else the whole batch at once.
    `probe`: f("generation", rows) called with the rows each generation runs (tests count them)."""
    data = NamedSharding(mesh, PartitionSpec("data"))
    shards = mesh.shape["data"]

    def generate(params, ids, mask, features, mel_lengths, real, context):
        def rows_fn(rows):
            if probe is not None:
                jax.debug.callback(functools.partial(probe, "generation"), rows[0].shape[0])
            return greedy_generate(model, params, *rows, settings=settings)

        rows = (ids, mask, features, mel_lengths) + (() if context is None else (context,))
        if per_clip:
            return map_real_clips(rows_fn, rows, real, shards if ids.shape[0] % shards == 0 else 1)
        return rows_fn(rows)

    return jax.jit(generate, in_shardings=(shardings, data, data, data, data, data, data), out_shardings=(data, data))


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


