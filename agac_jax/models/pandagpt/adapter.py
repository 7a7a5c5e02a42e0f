"""The host side of scoring for PandaGPT (DESIGN.md section 9): the `Scorer` with PandaGPT's inputs.

The compiled program, its batching and its keys are `scorer.Scorer`'s; this subclass builds the batch
PandaGPT's interface reads (`models.pandagpt`):
- features: ImageBind's three normalised 2 s fbanks side by side, [128, 3 x 204] for every clip length
  (`kaldi_fbank.imagebind_clip_features`); silence: the same of a zero waveform of the clip's length;
- the gate slots' sample ranges (`pandagpt.slot_sample_ranges`) and validity (the 6 padding frames
  inside each sub-clip hold no audio), so frames map through the ranges and audio no slot reads is
  unheard (`selection.slots_to_frames`);
- prompts `pandagpt.prompt_ids`, right-padded to 1 + `max_text_tokens` slots (one AV token);
- with `videos` (the vision trunk's inputs of each clip's video, `data.imagebind_video`), each clip's
  ImageBind video vector as the batch's `context`: the AV token is then W(a + v) + 2b, the video fixed
  and the audio gated; without, the token is the audio's alone, W a + b.
Buckets only size the codec frame grids (the features do not grow with the clip): a clip goes to the
smallest of `buckets_seconds` that holds it, and clips longer than the largest bucket are refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import flax.linen as nn

from agac_jax.models.pandagpt import fbank as kf
from agac_jax.audio.io import validate_waveform
from agac_jax.models.generate import GenerationSettings, greedy_generate_from_embeddings
from agac_jax.models.pandagpt.model import PandaGPT, PandaGPTConfig, init_params, prompt_ids, slot_sample_ranges
from agac_jax.scoring import selection
from agac_jax.scoring.scorer import CPU_IG_CHUNK, ClipScores, ProgramKey, Scorer, ScoringConfig, _divisible, answer_arrays, fsdp_axis_rules, make_mesh  # noqa: F401

HOP = 160  # the scorer's bucket unit: frames of 10 ms (max_samples = frames * HOP)


def pandagpt_param_shardings(config: PandaGPTConfig, mesh, rules) -> Any:
    """NamedShardings of PandaGPT's parameters from their logical axis names (ImageBind's: replicated)."""
    boxed = jax.eval_shape(lambda: init_params(config, jax.random.key(0), boxed=True))
    shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed), mesh, rules)
    shapes = nn.meta.unbox(boxed)
    return jax.tree_util.tree_map(lambda sh, leaf: _divisible(sh, leaf.shape, mesh), shardings, shapes)


def generation_settings(config: PandaGPTConfig, max_new_tokens: int) -> GenerationSettings:
    """Greedy decoding to Vicuna's EOS (`</s>`), the placeholder id suppressed (PandaGPT's own demo also
    stops at '###'; the answer before EOS is what is scored, and yes/no parsing reads its first word)."""
    llama = config.llama
    return GenerationSettings(max_new_tokens=max_new_tokens, eos_token_ids=(llama.eos_token_id,),
                              pad_token_id=llama.pad_token_id, suppress_tokens=(config.audio_token_id,))


class PandaGPTScorer(Scorer):
    """Scores clips with PandaGPT held as Flax parameters (see the module docstring)."""

    def __init__(self, params: Any, model_config: PandaGPTConfig, tokenizer: Any,
                 config: ScoringConfig = ScoringConfig()):
        if config.gate_domain != "embedding":
            raise ValueError(f"gate_domain={config.gate_domain!r}: PandaGPT gates its fbank frames in its own "
                             "domain (models/pandagpt.py); use 'embedding'")
        self.config = config
        self.model_config = model_config
        self.model = PandaGPT(model_config)
        self.tokenizer = tokenizer
        self.generation = generation_settings(model_config, config.max_new_tokens)
        self.keep_fraction = selection.keep_ratio_fraction(config.keep)
        self.mesh = make_mesh(config.mesh_shape)
        if config.batch_size % config.mesh_shape[0]:
            raise ValueError(f"batch_size={config.batch_size} must be a multiple of the data axis "
                             f"{config.mesh_shape[0]}")
        self.param_shardings = pandagpt_param_shardings(
            model_config, self.mesh, fsdp_axis_rules(config.axis_rules) if config.fsdp else config.axis_rules)
        self.params = jax.device_put(params, self.param_shardings)
        self._generate = None
        self._targets: dict[ProgramKey, Any] = {}  # jitted `answer_targets` programs (`Scorer.answer_targets`)
        self.max_frames = max(config.buckets_seconds) * kf.SAMPLE_RATE // HOP
        self.traces = 0
        self.audio_offset = self._first_audio_position("")
        self.executables = {}
        self.program_memory = {}
        self.count_passes = False
        self.generate_per_clip = False  # its answers come from its own generator (`generation_program`)
        on_cpu = self.mesh.devices.flat[0].platform == "cpu"
        self.ig_chunk = config.ig_chunk or (CPU_IG_CHUNK if on_cpu else 1)  # as `Scorer`
        self._context = None  # the video vectors of the batch being built (`score`)
        self._video_fn = None
        self._video_cache: dict[str, np.ndarray] = {}
        self.uses_video = False  # the sweep hands each sample's video (`eval.stages`) when True
        self._programs: dict[bool, dict] = {}  # has video vectors -> that kind's executables

    @classmethod
    def from_directory(cls, directory: str | Path, config: ScoringConfig = ScoringConfig(), **_: Any) -> "PandaGPTScorer":
        """A directory of `checkpoints_pandagpt.convert_to_directory` (or `write_directory`) with a tokenizer
        beside the weights: Vicuna's tokenizer.model, read as PandaGPT does, or a tokenizer.json
        (`checkpoints_pandagpt.load_tokenizer`)."""
        from agac_jax.models.pandagpt.checkpoints import load_pandagpt_directory, load_tokenizer

        model_config, params = load_pandagpt_directory(directory)
        return cls(params, model_config, load_tokenizer(directory), config)

    @classmethod
    def from_config(cls, model: Any, config: ScoringConfig) -> "PandaGPTScorer":
        """From a sweep config's model section: `checkpoint_dir` (a converted PandaGPT directory), or
        `random_init` (a pandagpt_config.json: a random model of it, seed `seed`, with a word-level
        tokenizer; configs/tiny_pandagpt.json). `use_video`: answer with each sample's video too."""
        unsupported = [f"{name}={model.get(name)!r}" for name, default in
                       (("scan_layers", False), ("remat_layers", False), ("param_dtype", "float32"),
                        ("dtype", "float32")) if model.get(name, default) != default]
        if unsupported:
            raise ValueError(f"the PandaGPT port runs float32 and unrolled; config.model has {', '.join(unsupported)}")
        if model.get("random_init", ""):
            from agac_jax.models.pandagpt.parity import random_init_directory

            directory = random_init_directory(model.random_init, int(model.get("seed", 0)))
        elif model.checkpoint_dir:
            directory = model.checkpoint_dir
        else:
            raise ValueError("config.model.checkpoint_dir is empty: set it to a converted PandaGPT directory "
                             "(agac_jax.models.pandagpt.checkpoints.convert_to_directory), or set config.model.random_init")
        scorer = cls.from_directory(directory, config)
        scorer.uses_video = bool(model.get("use_video", True))
        return scorer

    # --- what the sweep reads besides Scorer's methods ---
    def text_tokens(self, question: str) -> int:
        """Prompt tokens besides the AV token."""
        return len(self._prompt(question)) - 1

    @staticmethod
    def audio_token_count(n_samples: int) -> int:
        """LLM audio positions of a clip: one AV token, whatever its length."""
        del n_samples
        return 1

    # --- buckets and prompts ---
    def bucket_frames(self, n_samples: int) -> int:
        """10 ms frames of the smallest bucket of `buckets_seconds` that holds the clip (the codec grids'
        size; ImageBind's features are 3 x 204 frames for every length)."""
        if n_samples > self.max_samples:
            raise ValueError(f"a clip of {n_samples} samples is longer than the largest bucket "
                             f"({self.max_seconds:g} s); raise scoring.buckets_seconds")
        for seconds in sorted(self.config.buckets_seconds):
            if n_samples <= seconds * kf.SAMPLE_RATE:
                return int(seconds) * kf.SAMPLE_RATE // HOP
        return self.max_frames

    def _prompt(self, question: str) -> list[int]:
        return prompt_ids(self.tokenizer, question, self.model_config.llama.bos_token_id,
                          self.model_config.audio_token_id)

    def _first_audio_position(self, question: str) -> int:
        return self._prompt(question).index(self.model_config.audio_token_id)

    def _prompt_array(self, questions: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Right-padded prompt ids [B, 1 + max_text_tokens] and their lengths."""
        slots = 1 + self.config.max_text_tokens
        ids = np.zeros((len(questions), slots), np.int32)
        lengths = np.zeros(len(questions), np.int32)
        for j, q in enumerate(questions):
            p = self._prompt(q)
            if len(p) > slots:
                raise ValueError(f"a prompt has {len(p) - 1} text tokens; max_text_tokens={self.config.max_text_tokens}")
            ids[j, : len(p)] = p
            lengths[j] = len(p)
        return ids, lengths

    def clip_inputs(self, clip: np.ndarray) -> dict[str, np.ndarray]:
        """One clip's features [128, T], silence's, slot ranges [T, 2] and slot validity [T]."""
        if len(clip) < kf.FRAME_LENGTH:
            raise ValueError(f"a clip of {len(clip)} samples is shorter than one 25 ms fbank frame")
        fbank, bounds = kf.imagebind_clip_features(clip)
        silence, _ = kf.imagebind_clip_features(np.zeros_like(clip))
        ranges = slot_sample_ranges(bounds, self.model_config.imagebind)
        return dict(features=np.concatenate(list(fbank), axis=1), silence=np.concatenate(list(silence), axis=1),
                    slot_ranges=ranges.astype(np.int32), slot_valid=ranges[:, 1] > ranges[:, 0])

    def video_vectors(self, videos: Sequence[Any]) -> np.ndarray:
        """[n, out]: each video's ImageBind vector (its inputs' unit vectors averaged). A video is its
        vision inputs [15, 3, 2, S, S] (`data.imagebind_video.video_inputs`) or a file, read with
        `load_video_inputs` and its vector cached by path (the sweep asks about one video many times)."""
        from agac_jax.models.pandagpt.video import load_video_inputs

        if self._video_fn is None:
            self._video_fn = jax.jit(lambda p, x: self.model.apply({"params": p}, x, method=self.model.video_embedding))
        vectors = []
        for i, v in enumerate(videos):
            if v is None:
                raise ValueError(f"clip {i} has no video, and this scorer answers with the video (use_video)")
            if isinstance(v, (str, Path)):
                key = str(v)
                if key not in self._video_cache:
                    inputs = load_video_inputs(v, self.model_config.imagebind.image_size)
                    self._video_cache[key] = np.asarray(self._video_fn(self.params, inputs))
                vectors.append(self._video_cache[key])
            else:
                vectors.append(np.asarray(self._video_fn(self.params, np.asarray(v, np.float32))))
        return np.stack(vectors)

    def score(self, clips: Sequence[np.ndarray], questions: Sequence[str],
              answer_ids: Sequence[Sequence[int]] | None = None,
              videos: Sequence[np.ndarray] | None = None) -> list[ClipScores]:
        """`Scorer.score`, each clip with its video's inputs when `videos` is given."""
        if len(clips) != len(questions) or (videos is not None and len(videos) != len(clips)):
            raise ValueError(f"{len(clips)} clips, {len(questions)} questions"
                             + ("" if videos is None else f", {len(videos)} videos"))
        if answer_ids is not None and len(answer_ids) != len(clips):
            raise ValueError(f"{len(answer_ids)} answers for {len(clips)} clips")
        clips = [validate_waveform(np.asarray(c), f"clip {i}", self.max_seconds) for i, c in enumerate(clips)]
        context = None if videos is None else self.video_vectors(videos)
        results: list[ClipScores | None] = [None] * len(clips)
        for frames, idx in self.batches(clips):
            given = None if answer_ids is None else [answer_ids[i] for i in idx]
            self._context = None if context is None else context[idx]
            try:
                out = self._run(frames, [clips[i] for i in idx], [questions[i] for i in idx], given)
            finally:
                self._context = None
            for j, i in enumerate(idx):
                results[i] = out[j]
        return results  # type: ignore[return-value]

    def answer(self, clips: Sequence[np.ndarray], questions: Sequence[str],
               videos: Sequence[np.ndarray] | None = None) -> list[str]:
        return [text for text, _ in self.answers(clips, questions, videos)]

    def program(self, frames: int, generate: bool, batch: dict[str, Any]):
        """`Scorer.program`, its programs cached apart for batches with and without video vectors."""
        self.executables = self._programs.setdefault("context" in batch, {})
        return super().program(frames, generate, batch)

    def make_batch(self, frames: int, clips, questions, answers) -> tuple[dict[str, Any], int]:
        c = self.config
        n_real = len(clips)
        bs = self.batch_slots(n_real)
        pad = bs - n_real
        clips = list(clips) + [clips[0]] * pad
        questions = list(questions) + [questions[0]] * pad
        inputs = [self.clip_inputs(np.asarray(x, np.float32)) for x in clips]
        prompt, lengths = self._prompt_array(questions)
        first_audio = np.argmax(prompt == self.model_config.audio_token_id, axis=1)
        if first_audio.min() < self.audio_offset:
            raise ValueError(f"a prompt's audio starts at {first_audio.min()}, before the template's {self.audio_offset}")
        answer_ids, answer_lengths = answer_arrays(answers, bs, c.max_new_tokens)
        num, den = self.keep_fraction
        t = self.model_config.gate_slots
        batch = dict(
            features=np.stack([x["features"] for x in inputs]),
            mel_lengths=np.full((bs,), t, np.int32),
            silence_features=np.stack([x["silence"] for x in inputs]),
            prompt_ids=prompt,
            prompt_lengths=lengths,
            answer_ids=answer_ids,
            answer_lengths=answer_lengths,
            n_samples=np.asarray([len(x) for x in clips], np.int32),
            slot_valid=np.stack([x["slot_valid"] for x in inputs]),
            slot_ranges=np.stack([x["slot_ranges"] for x in inputs]),
            alpha=np.float32(c.alpha),
            keep_num=np.int32(num),
            keep_den=np.int32(den),
        )
        if self._context is not None:
            batch["context"] = np.concatenate([self._context, np.repeat(self._context[:1], pad, axis=0)])
        return batch, n_real

    def _clip_result(self, out, batch, j, question, n_samples, compile_share, run_share) -> ClipScores:
        result = super()._clip_result(out, batch, j, question, n_samples, compile_share, run_share)
        result.slot_ranges = np.asarray(batch["slot_ranges"][j])
        result.slot_valid = np.asarray(batch["slot_valid"][j])
        return result

    def generation_program(self) -> Any:
        """fn(params, ids [B, S] left-padded, mask, features [B, n_mels, T], context [B, out] or None) ->
        (tokens, generated counts): the greedy generator with the video vectors in the AV token."""
        if self._generate is None:
            model, settings = self.model, self.generation

            def generate(params, ids, mask, features, context):
                variables = {"params": params}
                audio, n = model.apply(variables, features, jnp.full(features.shape[:1], features.shape[-1]),
                                       method=model.encode_audio)
                extra = {} if context is None else {"context": context}
                embeds = model.apply(variables, ids, audio, n, method=model.embed_prompt, **extra)
                return greedy_generate_from_embeddings(model, params, embeds, ids, mask, settings)

            self._generate = jax.jit(generate)
        return self._generate

    def answers(self, clips: Sequence[np.ndarray], questions: Sequence[str],
                videos: Sequence[np.ndarray] | None = None) -> list[tuple[str, np.ndarray]]:
        """(text, ids before EOS) of each clip's greedy answer, with its video when `videos` is given."""
        if len(clips) != len(questions):
            raise ValueError(f"{len(clips)} clips but {len(questions)} questions")
        clips = [validate_waveform(np.asarray(c), f"clip {i}", self.max_seconds) for i, c in enumerate(clips)]
        context = None if videos is None else self.video_vectors(videos)
        texts: list[tuple[str, np.ndarray]] = [("", np.zeros(0, np.int32))] * len(clips)
        generate = self.generation_program()
        bs = self.config.batch_size
        for start in range(0, len(clips), bs):  # the features do not depend on the length: no buckets
            idx = list(range(start, min(start + bs, len(clips))))
            pad = self.batch_slots(len(idx)) - len(idx)
            members = idx + [idx[0]] * pad
            ids, lengths = self._prompt_array([questions[i] for i in members])
            slots = ids.shape[1]
            left = np.zeros_like(ids)
            mask = np.zeros_like(ids)
            for j, n in enumerate(lengths):  # left-padded for generation
                left[j, slots - n:] = ids[j, :n]
                mask[j, slots - n:] = 1
            features = np.stack([self.clip_inputs(np.asarray(clips[i], np.float32))["features"] for i in members])
            tokens, n = jax.device_get(generate(self.params, left, mask, features,
                                                None if context is None else context[members]))
            for j, i in enumerate(idx):
                answer = self._answer_ids(tokens[j, : int(n[j])])
                texts[i] = (self._decode_answer(answer), answer)
        return texts


__all__ = ["PandaGPTScorer", "generation_settings", "pandagpt_param_shardings"]
