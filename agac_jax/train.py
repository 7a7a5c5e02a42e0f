"""Training a tiny Qwen2-Audio on the synthetic benchmark, and measuring whether it listens.

The model is the Flax port (`agac_jax.models.qwen2_audio`) with a word-level tokenizer over the
synthetic vocabulary and the Qwen2-Audio chat template (`agac_jax.tokenizer.save_processor_files`).
Each training question is rendered exactly as at inference (`agac_jax.prompts.render_prompt`) and
followed by its answer word and `<|im_end|>`. Sequences are right-padded, so positions 0..S-1 equal
the positions that left-padded greedy generation derives for the real tokens. A step takes
`batch_clips` clips and `questions_per_clip` questions about each; each clip is encoded once, its
prompt prefix (system turn and audio) decoded once into a KV cache, and each question decoded on a
copy of that cache (`forward`; the model's own stages, as `__call__` chains them).

Questions: by default (`data.all_questions`) every question the benchmark's templates can ask about a
training clip (`all_questions`): the 8 existence questions and the order question of every ordered
pair of its events, answered from the clip's events. The benchmark's own questions are balanced, so
neither the question nor the audio alone says anything about the answer; a small model trained on
them alone stays at chance for hundreds of steps.

Loss: the teacher-forced cross-entropy of the answer tokens, plus three training-only auxiliary
losses whose linear heads are discarded (never exported): `tagging_loss` (the event class of every
audio token, from the known event intervals, on the projected audio embeddings), `reading_loss`
(the classes the question names) and `listening_loss` (each class's place in the clip's time order),
both read at the last prompt position from the input of the last decoder layer. They teach the
encoder to tell the events apart and the decoder to bring the question and the events to the
position that answers; the last layer then only has to combine them. No loss touches the
attention maps.

Log-mel features of the training clips are computed once (`batch_log_mel`, padded to the largest
frame bucket) and kept as float16 to halve their memory; a batch is cast back to float32. Each
question belongs to the frame bucket of its clip (`agac_jax.audio.features.bucket_frames`); a batch
holds questions of one bucket only, cut to that bucket's frames and token length, so short clips
cost less and each bucket compiles once. Cutting the features is exact: every frame of
`batch_log_mel` equals the 30 s reference at its index whatever the padding.

Checkpoints (every `checkpoint_every` steps, in `{workdir}/checkpoints/step_{N:07d}`) hold the
parameters (`agac_jax.checkpoints.save_orbax`), the optimiser state (orbax) and `meta.json` with the
step, written last: a directory without `meta.json` is incomplete and is ignored. Batch order is a
function of (seed, step), so a resumed run sees the batches the interrupted one would have.

`evaluate_generation` answers questions by greedy generation (`jitted_generate`) and parses the reply
with `agac_jax.eval.metrics.parse_answer`; with `silence=True` each clip is replaced by zeros of the
same length, which measures how much the answers depend on the audio (chance is about 50 %).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import logging
import math
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from transformers import PreTrainedTokenizerBase

from agac_jax import checkpoints
from agac_jax.audio.features import audio_token_count, batch_log_mel, bucket_frames
from agac_jax.audio.grids import SAMPLES_PER_AUDIO_TOKEN
from agac_jax.data import synthetic
from agac_jax.data.common import NO, YES
from agac_jax.eval.metrics import UNKNOWN, parse_answer
from agac_jax.models.config import AudioEncoderConfig, Qwen2AudioConfig, TextConfig
from agac_jax.models.generate import GenerationSettings, jitted_generate
from agac_jax.models.decoder import LayerCache, init_cache
from agac_jax.models.qwen2_audio import Qwen2AudioForConditionalGeneration, causal_mask, init_params
from agac_jax.prompts import build_prompts, expand_audio_placeholders, render_prompt
from agac_jax.tokenizer import AUDIO_EOS, AUDIO_TOKEN, IM_END, QWEN2_AUDIO_CHAT_TEMPLATE, save_processor_files

Params = Any
Batch = dict[str, np.ndarray]

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
PROCESSOR_DIR = "processor"
META_NAME = "meta.json"
OPT_STATE_NAME = "opt_state"
PROMPT_LENGTH_QUANTUM = 64
SET_FORMAT = 2  # version of the cached training-set files (2: suffix_start)


# --- model -----------------------------------------------------------------------------------------


def build_processor(directory: str | Path, num_mel_bins: int) -> PreTrainedTokenizerBase:
    """Writes the tokenizer (synthetic vocabulary, Qwen2-Audio chat template) and preprocessor files."""
    return save_processor_files(directory, synthetic.VOCABULARY, num_mel_bins, QWEN2_AUDIO_CHAT_TEMPLATE)


def model_config(cfg: ml_collections.ConfigDict, tokenizer: PreTrainedTokenizerBase) -> Qwen2AudioConfig:
    """The model's config from the training config; vocabulary and special ids from the tokenizer."""
    m = cfg.model
    audio = AudioEncoderConfig(
        num_mel_bins=cfg.num_mel_bins,
        encoder_layers=m.audio_layers,
        encoder_attention_heads=m.audio_heads,
        encoder_ffn_dim=m.audio_ffn,
        d_model=m.audio_d_model,
        max_source_positions=m.max_source_positions,
    )
    text = TextConfig(
        vocab_size=len(tokenizer),
        hidden_size=m.hidden_size,
        intermediate_size=m.intermediate_size,
        num_hidden_layers=m.layers,
        num_attention_heads=m.heads,
        num_key_value_heads=m.kv_heads,
        rope_theta=m.rope_theta,
        max_position_embeddings=m.max_position_embeddings,
        eos_token_id=tokenizer.convert_tokens_to_ids(IM_END),
        pad_token_id=tokenizer.pad_token_id,
    )
    return Qwen2AudioConfig(audio=audio, text=text, audio_token_id=tokenizer.convert_tokens_to_ids(AUDIO_TOKEN))


def generation_config(config: Qwen2AudioConfig, max_new_tokens: int) -> dict[str, Any]:
    """The generation_config.json content: greedy, EOS `<|im_end|>`, the tokenizer's pad id."""
    return {
        "do_sample": False,
        "eos_token_id": config.text.eos_token_id,
        "pad_token_id": config.text.pad_token_id,
        "max_new_tokens": max_new_tokens,
    }


def whisper_sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> np.ndarray:
    """Whisper's position table: [length, channels], sines in the first half, cosines in the second."""
    if channels % 2:
        raise ValueError(f"channels must be even for sinusoidal positions, got {channels}")
    increment = math.log(max_timescale) / (channels // 2 - 1)
    inverse = np.exp(-increment * np.arange(channels // 2))
    scaled = np.arange(length)[:, None] * inverse[None, :]
    return np.concatenate([np.sin(scaled), np.cos(scaled)], axis=1).astype(np.float32)


def initial_params(config: Qwen2AudioConfig, seed: int, sinusoid_positions: bool = True) -> Params:
    """Unboxed random parameters; optionally the encoder's position table set to Whisper's sinusoids."""
    params = jax.jit(lambda key: nn.meta.unbox(init_params(config, key)))(jax.random.key(seed))
    if sinusoid_positions:
        table = whisper_sinusoids(config.audio.max_source_positions, config.audio.d_model)
        params["audio_tower"]["embed_positions"] = jnp.asarray(table)
    return params


# --- data ------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TrainingSet:
    """Questions with their answers as token ids, and the features of their clips.

    Attributes:
      features: float16 [C, num_mel_bins, F] log-mel features of the C clips (F the largest bucket).
      mel_lengths: int32 [C] valid frames of each clip.
      clip_index: int32 [N] the clip of each of the N questions.
      input_ids: int32 [N, L] prompt, answer word and `<|im_end|>`, right-padded with the pad id.
      attention_mask: int32 [N, L] 1 on tokens.
      target_mask: float32 [N, L] 1 on the answer tokens (the positions the loss predicts).
      suffix_start: int32 [N] the first position after `<|audio_eos|>`: tokens before it (system turn,
        audio) are the same for every question about a clip, the question starts here.
      kinds: [N] question kinds ("existence" / "order").
      buckets: int32 [N] the frame bucket of each question's clip.
      bucket_lengths: frame bucket -> token length of its longest question.
      token_labels: int8 [C, F // 4] the event class of each audio token of each clip (see
        `audio_token_labels`), -1 past the clip's valid tokens.
      question_labels: int8 [N, 2] the classes a question names (see `question_labels`).
      event_ranks: int8 [C, 8] per class of EVENT_CLASSES, 0 when the clip lacks it, else its place
        (1, 2, 3) in the clip's time order.
    """

    features: np.ndarray
    mel_lengths: np.ndarray
    clip_index: np.ndarray
    input_ids: np.ndarray
    attention_mask: np.ndarray
    target_mask: np.ndarray
    suffix_start: np.ndarray
    kinds: np.ndarray
    buckets: np.ndarray
    bucket_lengths: dict[int, int]
    token_labels: np.ndarray
    question_labels: np.ndarray
    event_ranks: np.ndarray

    def __len__(self) -> int:
        return len(self.clip_index)

    @functools.cached_property
    def prefix_lengths(self) -> dict[int, int]:
        """frame bucket -> the longest shared prefix (`suffix_start`) of its questions."""
        return {int(b): int(self.suffix_start[self.buckets == b].max()) for b in np.unique(self.buckets)}

    @functools.cached_property
    def suffix_length(self) -> int:
        """The longest question suffix (question, assistant turn, answer) of the set."""
        return int((self.attention_mask.sum(1) - self.suffix_start).max())

    def batch(self, questions: np.ndarray, clips: np.ndarray | None = None) -> Batch:
        """Model inputs for `questions` (all of one bucket P) about `clips`, split at `suffix_start`.

        Every clip's prefix (system turn and audio, the same for all its questions) is decoded once;
        each question's suffix attends to its clip's prefix (see `forward`). Shapes are fixed per
        bucket (prefix length `prefix_lengths[P]`, suffix length `suffix_length`), so each bucket
        compiles once.

        Args:
          questions: [B] question indices.
          clips: [C] the clips whose features the batch carries, each encoded once; every question's
            clip must be among them. None: one copy of its clip per question (C = B).
        Returns:
          prefix_ids, prefix_mask [C, Lp] (right-padded); suffix_ids, suffix_mask, target_mask [B, Ls]
          (target_mask 1 on the answer tokens); suffix_start [B]; features float32 [C, mels, P];
          mel_lengths [C]; question_clip [B] int32, the position in `clips` of each question's clip;
          token_labels int32 [C, P // 4]; question_labels int32 [B, 2]; event_ranks int32 [B, 8] (of
          each question's clip).
        """
        frames = np.unique(self.buckets[questions])
        if len(frames) != 1:
            raise ValueError(f"a batch must hold questions of one frame bucket, got buckets {frames.tolist()}")
        frames = int(frames[0])
        own = self.clip_index[questions]
        if clips is None:
            clips, question_clip = own, np.arange(len(questions))
        else:
            position = {int(c): i for i, c in enumerate(clips)}
            missing = sorted(set(own.tolist()) - set(position))
            if missing:
                raise ValueError(f"clips lacks the clips {missing} of the batch's questions")
            question_clip = np.asarray([position[int(c)] for c in own])
        prefix_length, suffix_length = self.prefix_lengths[frames], self.suffix_length
        # A question of each clip supplies the clip's prefix (they all share it).
        representative = np.empty(len(clips), np.int64)
        representative[question_clip] = questions
        starts = self.suffix_start[questions]
        prefix_mask = (np.arange(prefix_length)[None, :] < self.suffix_start[representative][:, None])
        gather = starts[:, None] + np.arange(suffix_length)[None, :]
        width = self.input_ids.shape[1]
        inside = gather < width
        gather = np.minimum(gather, width - 1)
        rows = questions[:, None]
        return {
            "prefix_ids": np.where(prefix_mask, self.input_ids[representative, :prefix_length], 0).astype(np.int32),
            "prefix_mask": prefix_mask.astype(np.int32),
            "suffix_ids": np.where(inside, self.input_ids[rows, gather], 0).astype(np.int32),
            "suffix_mask": np.where(inside, self.attention_mask[rows, gather], 0).astype(np.int32),
            "target_mask": np.where(inside, self.target_mask[rows, gather], 0).astype(np.float32),
            "suffix_start": starts.astype(np.int32),
            "features": self.features[clips, :, :frames].astype(np.float32),
            "mel_lengths": self.mel_lengths[clips],
            "question_clip": question_clip.astype(np.int32),
            "token_labels": self.token_labels[clips, : frames // 4].astype(np.int32),
            "question_labels": self.question_labels[questions].astype(np.int32),
            "event_ranks": self.event_ranks[own].astype(np.int32),
        }

    def questions_by_clip(self) -> list[np.ndarray]:
        """[C] arrays: the question indices of each clip."""
        order = np.argsort(self.clip_index, kind="stable")
        bounds = np.searchsorted(self.clip_index[order], np.arange(len(self.mel_lengths) + 1))
        return [order[bounds[c] : bounds[c + 1]] for c in range(len(self.mel_lengths))]

    def clip_buckets(self) -> np.ndarray:
        """[C] the frame bucket of each clip (0 for a clip without questions)."""
        out = np.zeros(len(self.mel_lengths), np.int32)
        out[self.clip_index] = self.buckets
        return out


BACKGROUND_LABEL = len(synthetic.EVENT_CLASSES)


def audio_token_labels(events: Sequence[synthetic.Event], num_tokens: int, length: int) -> np.ndarray:
    """int8 [length]: per audio token (40 ms), the index in EVENT_CLASSES of the event holding its
    centre, BACKGROUND_LABEL (8) where none does, -1 from `num_tokens` (the clip's valid tokens) on."""
    centres = (np.arange(length) + 0.5) * SAMPLES_PER_AUDIO_TOKEN / synthetic.SAMPLE_RATE
    labels = np.full(length, BACKGROUND_LABEL, np.int8)
    for event in events:
        labels[(centres >= event.start_s) & (centres < event.end_s)] = synthetic.EVENT_CLASSES.index(event.label)
    labels[num_tokens:] = -1
    return labels


def question_labels(question: str) -> tuple[int, int]:
    """The classes a benchmark question names, as EVENT_CLASSES indices: (class, BACKGROUND_LABEL) for
    an existence question, (first, second) for an order question."""
    classes = synthetic.EVENT_CLASSES
    for i, label in enumerate(classes):
        if question == synthetic.existence_question(label):
            return i, BACKGROUND_LABEL
    for (i, first), (j, second) in itertools.permutations(enumerate(classes), 2):
        if question == synthetic.order_question(first, second):
            return i, j
    raise ValueError(f"{question!r} is not a question of the synthetic benchmark")


def event_ranks(events: Sequence[synthetic.Event]) -> np.ndarray:
    """int8 [8]: per class of EVENT_CLASSES, 0 if absent, else its place (1, 2, ...) among the events by start."""
    ranks = np.zeros(len(synthetic.EVENT_CLASSES), np.int8)
    for place, event in enumerate(sorted(events, key=lambda e: e.start_s), start=1):
        ranks[synthetic.EVENT_CLASSES.index(event.label)] = place
    return ranks


def all_questions(samples: Sequence[synthetic.Sample]) -> list[synthetic.Sample]:
    """Every question the benchmark's templates can ask about each clip of `samples`, answered from its events.

    Per clip: the existence question of each of the 8 classes (so a clip with k events answers "yes"
    k times in 8, which lets the audio alone predict the answer in part and gives training a signal
    before the model has learnt to read the question), and the order question of every ordered
    pair of its events. Clips keep their first-seen order.
    """
    clips: dict[str, synthetic.Sample] = {}
    for sample in samples:
        clips.setdefault(sample.clip_id, sample)
    out = []
    for clip_id, sample in clips.items():
        by_label = {event.label: event for event in sample.events}
        starts = {label: event.start_s for label, event in by_label.items()}
        for label in synthetic.EVENT_CLASSES:
            present = label in by_label
            out.append(dataclasses.replace(
                sample, sample_id=f"{clip_id}-all-{synthetic.EXISTENCE}-{label}", kind=synthetic.EXISTENCE,
                question=synthetic.existence_question(label), answer=YES if present else NO,
                evidence=(by_label[label].interval,) if present else ()))
        for first, second in itertools.permutations(by_label, 2):
            out.append(dataclasses.replace(
                sample, sample_id=f"{clip_id}-all-{synthetic.ORDER}-{first}-{second}", kind=synthetic.ORDER,
                question=synthetic.order_question(first, second),
                answer=YES if starts[first] < starts[second] else NO,
                evidence=tuple(sorted((by_label[first].interval, by_label[second].interval)))))
    return out


def answer_token_ids(tokenizer: PreTrainedTokenizerBase, answer: str) -> list[int]:
    """The ids the model is taught to produce: the answer word, then `<|im_end|>`."""
    ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    if len(ids) != 1 or ids[0] == tokenizer.unk_token_id:
        raise ValueError(f"answer {answer!r} is not one word of the tokenizer's vocabulary (ids {ids})")
    return ids + [tokenizer.convert_tokens_to_ids(IM_END)]


def encode_training_set(
    tokenizer: PreTrainedTokenizerBase,
    samples: Sequence[synthetic.Sample],
    num_mel_bins: int,
    bucket_seconds: Sequence[int],
) -> TrainingSet:
    """Computes each clip's features once and each question's ids (prompt + answer) once.

    `bucket_seconds`: the frame buckets in seconds (e.g. (6, 9, 12)); the largest must hold every clip.
    """
    if not samples:
        raise ValueError("samples is empty: nothing to train on")
    clip_order: dict[str, int] = {}
    waveforms: list[np.ndarray] = []
    clip_events: list[Sequence[synthetic.Event]] = []
    for sample in samples:
        if sample.clip_id not in clip_order:
            clip_order[sample.clip_id] = len(waveforms)
            waveforms.append(sample.load_waveform())
            clip_events.append(sample.events)
    clip_buckets = np.asarray([bucket_frames(w.size, bucket_seconds) for w in waveforms], np.int32)
    features, feature_mask = batch_log_mel(waveforms, num_mel_bins, int(clip_buckets.max()))
    mel_lengths = feature_mask.sum(-1).astype(np.int32)
    clip_index = np.asarray([clip_order[s.clip_id] for s in samples], np.int32)
    num_tokens = audio_token_count(mel_lengths[clip_index]).tolist()
    prompts = expand_audio_placeholders([render_prompt(tokenizer, s.question) for s in samples], num_tokens)
    prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    rows = [p + answer_token_ids(tokenizer, s.answer) for p, s in zip(prompt_ids, samples)]
    audio_eos = tokenizer.convert_tokens_to_ids(AUDIO_EOS)
    suffix_start = np.asarray([p.index(audio_eos) + 1 for p in prompt_ids], np.int32)
    first_of_clip: dict[int, int] = {}
    for i, clip in enumerate(clip_index.tolist()):
        j = first_of_clip.setdefault(clip, i)
        if prompt_ids[i][: suffix_start[i]] != prompt_ids[j][: suffix_start[j]]:
            raise ValueError(f"questions {j} and {i} of one clip differ before {AUDIO_EOS}: the template "
                             "must put the audio before the question")
    length = max(map(len, rows))
    input_ids = np.full((len(rows), length), tokenizer.pad_token_id, np.int32)
    attention_mask = np.zeros((len(rows), length), np.int32)
    target_mask = np.zeros((len(rows), length), np.float32)
    for i, (row, prompt) in enumerate(zip(rows, prompt_ids)):
        input_ids[i, : len(row)] = row
        attention_mask[i, : len(row)] = 1
        target_mask[i, len(prompt) : len(row)] = 1.0
    buckets = clip_buckets[clip_index]
    lengths = attention_mask.sum(1)
    max_tokens = features.shape[-1] // 4
    clip_tokens = audio_token_count(mel_lengths)
    token_labels = np.stack([audio_token_labels(events, int(n), max_tokens)
                             for events, n in zip(clip_events, clip_tokens)])
    return TrainingSet(
        features=features.astype(np.float16),
        mel_lengths=mel_lengths,
        clip_index=clip_index,
        input_ids=input_ids,
        attention_mask=attention_mask,
        target_mask=target_mask,
        suffix_start=suffix_start,
        kinds=np.asarray([s.kind for s in samples]),
        buckets=buckets,
        bucket_lengths={int(b): int(lengths[buckets == b].max()) for b in np.unique(buckets)},
        token_labels=token_labels,
        question_labels=np.asarray([question_labels(s.question) for s in samples], np.int8),
        event_ranks=np.stack([event_ranks(events) for events in clip_events]),
    )


def save_training_set(path: str | Path, data: TrainingSet) -> None:
    """Writes the encoded set as one .npz, so a resumed or repeated run skips the feature computation."""
    arrays = {f.name: getattr(data, f.name) for f in dataclasses.fields(data) if f.name != "bucket_lengths"}
    lengths = np.asarray(sorted(data.bucket_lengths.items()), np.int64)
    np.savez(Path(path), bucket_lengths=lengths, **arrays)


def load_training_set(path: str | Path) -> TrainingSet:
    """Reads what `save_training_set` wrote."""
    with np.load(Path(path)) as f:
        arrays = {name: f[name] for name in f.files}
    lengths = {int(b): int(n) for b, n in arrays.pop("bucket_lengths")}
    return TrainingSet(bucket_lengths=lengths, **arrays)


def cached_training_set(path: Path, encode: Callable[[], TrainingSet]) -> TrainingSet:
    """`load_training_set(path)` if it exists, else `encode()` saved to `path`."""
    if path.is_file():
        return load_training_set(path)
    data = encode()
    save_training_set(path, data)
    return data


def epoch_batches(buckets: np.ndarray, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """One epoch's batches: each bucket's questions shuffled and cut into full batches, batches shuffled.

    A bucket's remainder (fewer than batch_size questions) sits this epoch out; the shuffle differs
    every epoch, so no question is left out for long.
    """
    rng = np.random.default_rng([seed, epoch])
    batches = []
    for bucket in np.unique(buckets):
        members = rng.permutation(np.flatnonzero(buckets == bucket))
        batches += [members[i : i + batch_size] for i in range(0, len(members) - batch_size + 1, batch_size)]
    if not batches:
        raise ValueError(f"batch_size={batch_size} exceeds the questions of every frame bucket "
                         f"(sizes {np.unique(buckets, return_counts=True)[1].tolist()})")
    return [batches[i] for i in rng.permutation(len(batches))]


def batch_indices(buckets: np.ndarray, batch_size: int, seed: int, step: int, short_steps: int = 0) -> np.ndarray:
    """The questions of step `step`, a function of (seed, step) only, so a resumed run sees the same batches.

    The first `short_steps` steps draw from the smallest frame bucket only (a curriculum: short clips
    dilute the question less among the audio tokens and cost less); later steps from every bucket.
    """
    if step < short_steps:
        members = np.flatnonzero(buckets == buckets.min())
        return members[_step_batch(buckets[members], batch_size, seed, step)]
    return _step_batch(buckets, batch_size, seed, step - short_steps)


def step_batch(data: TrainingSet, batch_clips: int, questions_per_clip: int, seed: int, step: int,
               short_steps: int = 0, order_share: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """The clips [batch_clips] and questions [batch_clips * questions_per_clip] of step `step`.

    Clips follow `batch_indices` over the clips' buckets; each clip's questions are drawn from its
    own, without replacement while it has enough. `order_share` of them (rounded) come from the
    clip's order questions when it has any (a clip asks 8 existence questions and at most 6 order
    ones, and order is the harder kind). A function of (seed, step) only.
    """
    clips = batch_indices(data.clip_buckets(), batch_clips, seed, step, short_steps)
    pools = data.questions_by_clip()
    rng = np.random.default_rng([seed, step, 1])
    questions = []
    for clip in clips:
        pool = pools[clip]
        is_order = data.kinds[pool] == synthetic.ORDER
        wanted = int(round(questions_per_clip * order_share)) if is_order.any() else 0
        parts = [(pool[is_order], wanted), (pool[~is_order], questions_per_clip - wanted)]
        for members, count in parts:
            if count:
                questions.append(rng.choice(members, count, replace=len(members) < count))
    return clips, np.concatenate(questions)


def _step_batch(buckets: np.ndarray, batch_size: int, seed: int, step: int) -> np.ndarray:
    steps_per_epoch = len(epoch_batches(buckets, batch_size, seed, 0))
    epoch, offset = divmod(step, steps_per_epoch)
    return epoch_batches(buckets, batch_size, seed, epoch)[offset]


# --- loss and steps --------------------------------------------------------------------------------


def forward(model: Qwen2AudioForConditionalGeneration, params: Params, batch: Batch) -> tuple[jax.Array, ...]:
    """Teacher-forced logits of the question suffixes [B, Ls, vocab], the clips' projected audio
    embeddings [C, P // 4, D] and the input of the last decoder layer on the suffixes [B, Ls, D].

    The model's own stages, as its `__call__` chains them, with the prompt split at `suffix_start`:
    each clip is encoded and its prefix (system turn and audio tokens) decoded once into a KV
    cache; each question's suffix (question, assistant turn, answer) then runs on a copy of its
    clip's cache at its true positions. Under causal attention this equals decoding every question
    in full (`tests/test_train.py` checks it) for a fraction of the cost, as a clip's questions
    differ only after its audio.
    """
    variables = {"params": params}
    text = model.config.text
    audio, num_tokens = model.apply(variables, batch["features"], batch["mel_lengths"], method=model.encode_audio)
    prefix_ids, prefix_mask = batch["prefix_ids"], batch["prefix_mask"]
    suffix_ids, suffix_mask = batch["suffix_ids"], batch["suffix_mask"]
    (c, lp), (b, ls) = prefix_ids.shape, suffix_ids.shape
    prefix = model.apply(variables, prefix_ids, audio, num_tokens, method=model.embed_prompt)
    cache = init_cache(text, c, lp + ls, prefix.dtype)
    mask = jnp.concatenate([causal_mask(prefix_mask), jnp.zeros((c, lp, ls), bool)], axis=2)
    positions = jnp.broadcast_to(jnp.arange(lp), prefix_ids.shape)
    _, cache = model.apply(variables, prefix, positions, mask, cache, 0, method=model.decode)
    which = batch["question_clip"]
    cache = tuple(LayerCache(layer.k[which], layer.v[which]) for layer in cache)
    suffix = model.apply(variables, suffix_ids, method=lambda m, ids: m.language_model.embed(ids))
    sees_prefix = jnp.arange(lp)[None, None, :] < batch["suffix_start"][:, None, None]
    mask = jnp.concatenate([jnp.broadcast_to(sees_prefix, (b, ls, lp)), causal_mask(suffix_mask)], axis=2)
    positions = batch["suffix_start"][:, None] + jnp.arange(ls)[None, :]
    before_last = f"layers_{text.num_hidden_layers - 2}"
    (hidden, _), state = model.apply(
        variables, suffix, positions, mask, cache, lp, method=model.decode,
        capture_intermediates=lambda module, name: module.name == before_last and name == "__call__")
    if text.num_hidden_layers >= 2:
        middle = state["intermediates"]["language_model"][before_last]["__call__"][0][0]
    else:
        middle = suffix
    return model.apply(variables, hidden, method=model.logits), audio, middle


def answer_loss_from_logits(logits: jax.Array, batch: Batch) -> tuple[jax.Array, jax.Array]:
    """Mean cross-entropy per answer token, and correct [B]: the first answer token is the argmax.

    logits [B, Ls, vocab] of the suffixes; batch["suffix_ids"] and batch["target_mask"] [B, Ls].
    """
    ids = batch["suffix_ids"]
    logp = jax.nn.log_softmax(logits[:, :-1], axis=-1)
    targets = ids[:, 1:]
    weights = batch["target_mask"][:, 1:]
    nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    loss = jnp.sum(nll * weights) / jnp.maximum(jnp.sum(weights), 1.0)
    first = jnp.argmax(weights, axis=1)
    predicted = jnp.argmax(logits[:, :-1], axis=-1)
    rows = jnp.arange(targets.shape[0])
    return loss, predicted[rows, first] == targets[rows, first]


def answer_loss(model: Qwen2AudioForConditionalGeneration, params: Params, batch: Batch) -> tuple[jax.Array, jax.Array]:
    """Teacher-forced answer loss and correct [B] (see `answer_loss_from_logits`)."""
    return answer_loss_from_logits(forward(model, params, batch)[0], batch)


def init_tagger(hidden_size: int) -> Params:
    """The training-only event tagger: a linear map from audio embeddings to the 8 classes + background."""
    return {"kernel": jnp.zeros((hidden_size, BACKGROUND_LABEL + 1)), "bias": jnp.zeros((BACKGROUND_LABEL + 1,))}


def init_reader(hidden_size: int) -> Params:
    """The training-only question reader: two linear maps from a hidden state to the classes a question names."""
    return {"kernel": jnp.zeros((hidden_size, 2, BACKGROUND_LABEL + 1)), "bias": jnp.zeros((2, BACKGROUND_LABEL + 1))}


def reading_loss(reader: Params, middle: jax.Array, batch: Batch) -> jax.Array:
    """Mean cross-entropy of the two classes the question names (`question_labels`), read from the
    last decoder layer's input [B, L, D] at the last prompt position.

    An auxiliary objective: the answer needs both the audio and the question, neither informative
    alone, so the answer loss alone gives the decoder almost no signal to bring the question to
    the position that answers. The reader is not part of the model and is not exported.
    """
    last = jnp.argmax(batch["target_mask"], axis=1) - 1
    h = middle[jnp.arange(middle.shape[0]), last].astype(jnp.float32)
    logits = jnp.einsum("bd,dkc->bkc", h, reader["kernel"]) + reader["bias"]
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, batch["question_labels"][..., None], axis=-1))


MAX_RANK = 3


def init_listener(hidden_size: int) -> Params:
    """The training-only listener: per class, a linear map from a hidden state to its rank (0 absent .. 3)."""
    n = len(synthetic.EVENT_CLASSES)
    return {"kernel": jnp.zeros((hidden_size, n, MAX_RANK + 1)), "bias": jnp.zeros((n, MAX_RANK + 1))}


def listening_loss(listener: Params, middle: jax.Array, batch: Batch) -> jax.Array:
    """Mean cross-entropy of each class's rank in the clip (`event_ranks`), read like `reading_loss`.

    With the question (reading) and the clip's events in time order (listening) both at the
    answering position, the last layer only has to combine them.
    """
    last = jnp.argmax(batch["target_mask"], axis=1) - 1
    h = middle[jnp.arange(middle.shape[0]), last].astype(jnp.float32)
    logits = jnp.einsum("bd,dkc->bkc", h, listener["kernel"]) + listener["bias"]
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, batch["event_ranks"][..., None], axis=-1))


def init_auxiliary(hidden_size: int) -> Params:
    """The training-only heads: {"tagger": `init_tagger`, "reader": `init_reader`, "listener": `init_listener`}."""
    return {"tagger": init_tagger(hidden_size), "reader": init_reader(hidden_size),
            "listener": init_listener(hidden_size)}


def tagging_loss(tagger: Params, audio: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean cross-entropy of the event class of each valid audio token (labels [C, T], -1 invalid).

    An auxiliary objective from the synthetic benchmark's event intervals: it teaches the encoder
    to tell the classes apart before the decoder has learnt to ask for them. The tagger is not
    part of the model and is not exported.
    """
    logits = audio.astype(jnp.float32) @ tagger["kernel"] + tagger["bias"]
    valid = labels >= 0
    logp = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(logp, jnp.maximum(labels, 0)[..., None], axis=-1)[..., 0]
    return jnp.sum(jnp.where(valid, nll, 0.0)) / jnp.maximum(jnp.sum(valid), 1)


def make_optimizer(optim: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """adamw with linear warmup and cosine decay, after global-norm clipping."""
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=optim.peak_learning_rate,
        warmup_steps=optim.warmup_steps,
        decay_steps=max(optim.steps, optim.warmup_steps + 1),
        end_value=optim.end_learning_rate,
    )
    return optax.chain(
        optax.clip_by_global_norm(optim.grad_clip_norm),
        optax.adamw(schedule, weight_decay=optim.weight_decay),
    )


def make_train_step(model: Qwen2AudioForConditionalGeneration, optimizer: optax.GradientTransformation,
                    tagging_weight: float, reading_weight: float, listening_weight: float) -> Callable:
    """jitted (trainable, opt_state, batch) -> (trainable, opt_state, metrics).

    `trainable` is {"model": parameters, **`init_auxiliary`}; the loss is the answer loss plus the
    weighted tagging, reading and listening losses; metrics: loss, answer_loss, tagging_loss,
    reading_loss, listening_loss, accuracy (of the answer word).
    """

    def loss_fn(trainable, batch):
        logits, audio, middle = forward(model, trainable["model"], batch)
        answer, correct = answer_loss_from_logits(logits, batch)
        tagging = tagging_loss(trainable["tagger"], audio, batch["token_labels"])
        reading = reading_loss(trainable["reader"], middle, batch)
        listening = listening_loss(trainable["listener"], middle, batch)
        metrics = {"answer_loss": answer, "tagging_loss": tagging, "reading_loss": reading,
                   "listening_loss": listening, "accuracy": jnp.mean(correct)}
        total = answer + tagging_weight * tagging + reading_weight * reading + listening_weight * listening
        return total, metrics

    def step(trainable, opt_state, batch):
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable, batch)
        updates, opt_state = optimizer.update(grads, opt_state, trainable)
        return optax.apply_updates(trainable, updates), opt_state, {"loss": loss, **metrics}

    return jax.jit(step, donate_argnums=(0, 1))


def make_eval_step(model: Qwen2AudioForConditionalGeneration) -> Callable:
    """jitted (params, batch) -> (loss, correct [B])."""
    return jax.jit(functools.partial(answer_loss, model))


@functools.lru_cache(maxsize=4)
def _cached_steps(config: Qwen2AudioConfig, optim_items: tuple) -> tuple[Callable, Callable]:
    """The jitted train and eval steps of one (model config, optimiser config), compiled once per process."""
    model = Qwen2AudioForConditionalGeneration(config)
    optim = ml_collections.ConfigDict(dict(optim_items))
    train_step = make_train_step(model, make_optimizer(optim), optim.tagging_weight, optim.reading_weight,
                                 optim.listening_weight)
    return train_step, make_eval_step(model)


def teacher_forced_accuracy(eval_step: Callable, params: Params, data: TrainingSet,
                            batch_size: int) -> dict[str, float]:
    """Answer-word accuracy (argmax at the answer position) and mean loss over `data`, by question kind."""
    correct = np.zeros(len(data), bool)
    loss_sum = 0.0
    for bucket in np.unique(data.buckets):
        members = np.flatnonzero(data.buckets == bucket)
        for start in range(0, len(members), batch_size):
            indices = members[start : start + batch_size]
            padded = np.concatenate([indices, np.full(batch_size - len(indices), indices[-1])])
            loss, ok = eval_step(params, data.batch(padded))
            correct[indices] = np.asarray(ok)[: len(indices)]
            loss_sum += float(loss) * len(indices)
    out = {"loss": loss_sum / len(data), "accuracy": float(correct.mean())}
    for kind in np.unique(data.kinds):
        out[f"accuracy_{kind}"] = float(correct[data.kinds == kind].mean())
    return out


# --- checkpoints -----------------------------------------------------------------------------------


def checkpoint_path(workdir: str | Path, step: int) -> Path:
    return Path(workdir) / CHECKPOINT_DIR / f"step_{step:07d}"


def save_checkpoint(workdir: str | Path, step: int, config: Qwen2AudioConfig, trainable: Params, opt_state: Any,
                    keep: int) -> Path:
    """Writes the model parameters (`save_orbax`), the optimiser state and auxiliary heads (orbax) and
    `meta.json` (last).

    Keeps the newest `keep` checkpoints (all when keep <= 0).
    """
    import orbax.checkpoint as ocp

    path = checkpoint_path(workdir, step)
    checkpoints.save_orbax(path, trainable["model"], config)
    with ocp.StandardCheckpointer() as ckptr:
        extra = {k: v for k, v in trainable.items() if k != "model"}
        ckptr.save(path.absolute() / OPT_STATE_NAME, {"opt_state": opt_state, **extra}, force=True)
    with open(path / META_NAME, "w") as f:
        json.dump({"step": step}, f)
    for old in complete_checkpoints(workdir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old)
    return path


def complete_checkpoints(workdir: str | Path) -> list[Path]:
    """Checkpoint directories that hold `meta.json`, oldest first."""
    root = Path(workdir) / CHECKPOINT_DIR
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("step_*") if (p / META_NAME).is_file())


def restore_checkpoint(path: str | Path,
                       optimizer: optax.GradientTransformation) -> tuple[int, Qwen2AudioConfig, Params, Any]:
    """(step, config, trainable {"model", **auxiliary heads}, opt_state), as `save_checkpoint` wrote them."""
    import orbax.checkpoint as ocp

    path = Path(path).absolute()
    if not (path / META_NAME).is_file():
        raise FileNotFoundError(f"{path} is not a complete training checkpoint: {META_NAME} is missing")
    config, params = checkpoints.restore_orbax(path)
    extra = jax.eval_shape(functools.partial(init_auxiliary, config.text.hidden_size))
    target = {"opt_state": jax.eval_shape(optimizer.init, {"model": params, **extra}), **extra}
    with ocp.StandardCheckpointer() as ckptr:
        restored = ckptr.restore(path / OPT_STATE_NAME, target)
    with open(path / META_NAME) as f:
        step = int(json.load(f)["step"])
    return step, config, {"model": params, **{k: restored[k] for k in extra}}, restored["opt_state"]


# --- training --------------------------------------------------------------------------------------


@dataclasses.dataclass
class TrainResult:
    """What `train` returns: the final parameters, their config and the tokenizer trained with."""

    config: Qwen2AudioConfig
    params: Params
    tokenizer: PreTrainedTokenizerBase
    step: int
    history: list[dict[str, float]]


def _split_set(cfg: ml_collections.ConfigDict, tokenizer: PreTrainedTokenizerBase, workdir: Path, split: str,
               num_clips: int, samples: Sequence[synthetic.Sample] | None) -> TrainingSet:
    """The encoded synthetic split (cached in the workdir), or the given samples encoded (not cached)."""
    def encode(chosen: Sequence[synthetic.Sample]) -> TrainingSet:
        return encode_training_set(tokenizer, chosen, cfg.num_mel_bins, cfg.bucket_seconds)

    if samples is not None:
        return encode(samples)
    buckets = "-".join(str(b) for b in cfg.bucket_seconds)
    name = f"{split}_clips{num_clips}_seed{cfg.data.seed}_mel{cfg.num_mel_bins}_buckets{buckets}_v{SET_FORMAT}.npz"
    if split == "train" and cfg.data.all_questions:
        name = "all_" + name
    generated = lambda: synthetic.generate_split(split, num_clips, cfg.data.seed)  # noqa: E731
    if split == "train" and cfg.data.all_questions:
        return cached_training_set(workdir / name, lambda: encode(all_questions(generated())))
    return cached_training_set(workdir / name, lambda: encode(generated()))


def train(
    cfg: ml_collections.ConfigDict,
    workdir: str | Path,
    train_samples: Sequence[synthetic.Sample] | None = None,
    validation_samples: Sequence[synthetic.Sample] | None = None,
) -> TrainResult:
    """Trains (or resumes training in `workdir`) up to `cfg.optim.steps` steps.

    The samples default to the synthetic splits of `cfg.data`, whose encoded features are cached in
    `workdir`; tests pass a handful instead.
    `history` holds one record per logged step (mean loss, train answer accuracy, seconds per step)
    and one per validation evaluation.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_processor(workdir / PROCESSOR_DIR, cfg.num_mel_bins)
    config = model_config(cfg, tokenizer)
    started = time.perf_counter()
    train_set = _split_set(cfg, tokenizer, workdir, "train", cfg.data.train_clips, train_samples)
    validation_set = _split_set(cfg, tokenizer, workdir, "validation", cfg.data.validation_clips, validation_samples)
    logger.info("encoded %d training and %d validation questions (%d clips, length %d) in %.1f s",
                len(train_set), len(validation_set), len(train_set.mel_lengths), train_set.input_ids.shape[1],
                time.perf_counter() - started)

    optimizer = make_optimizer(cfg.optim)
    saved = complete_checkpoints(workdir)
    if saved:
        step, restored_config, trainable, opt_state = restore_checkpoint(saved[-1], optimizer)
        if restored_config.to_hf_dict() != config.to_hf_dict():
            raise ValueError(f"checkpoint {saved[-1]} was written for a different model config than cfg describes")
        logger.info("resumed from %s at step %d", saved[-1], step)
    else:
        step = 0
        trainable = {"model": initial_params(config, cfg.seed, cfg.model.sinusoid_positions),
                     **init_auxiliary(config.text.hidden_size)}
        opt_state = jax.jit(optimizer.init)(trainable)
    train_step, eval_step = _cached_steps(config, tuple(sorted(cfg.optim.to_dict().items())))
    history: list[dict[str, float]] = []
    window: list[tuple[float, float]] = []
    tick = time.perf_counter()
    while step < cfg.optim.steps:
        clips, questions = step_batch(train_set, cfg.optim.batch_clips, cfg.optim.questions_per_clip, cfg.seed, step,
                                      cfg.optim.short_clip_steps, cfg.optim.order_share)
        batch = train_set.batch(questions, clips)
        trainable, opt_state, metrics = train_step(trainable, opt_state, batch)
        step += 1
        window.append(jax.device_get(metrics))
        if step % cfg.log_every == 0 or step == cfg.optim.steps:
            record = {"step": step, **{k: float(np.mean([m[k] for m in window])) for k in window[0]},
                      "seconds_per_step": (time.perf_counter() - tick) / len(window)}
            history.append(record)
            logger.info("step %d: loss %.4f (answer %.4f, tagging %.4f, reading %.4f, listening %.4f), "
                        "train answer accuracy %.3f, %.2f s/step", step, record["loss"], record["answer_loss"],
                        record["tagging_loss"], record["reading_loss"], record["listening_loss"],
                        record["accuracy"], record["seconds_per_step"])
            window, tick = [], time.perf_counter()
        if cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.optim.steps):
            scores = teacher_forced_accuracy(eval_step, trainable["model"], validation_set, cfg.eval_batch_size)
            history.append({"step": step, **{f"validation_{k}": v for k, v in scores.items()}})
            logger.info("step %d: validation %s", step, ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))
        if step % cfg.checkpoint_every == 0 or step == cfg.optim.steps:
            save_checkpoint(workdir, step, config, trainable, opt_state, cfg.keep_checkpoints)
    return TrainResult(config, trainable["model"], tokenizer, step, history)


def export(directory: str | Path, result: TrainResult, workdir: str | Path, max_new_tokens: int) -> None:
    """Writes the trained model as a Hugging Face directory with tokenizer, preprocessor and generation config."""
    checkpoints.save_hf_directory(directory, result.config, result.params,
                                  generation_config(result.config, max_new_tokens),
                                  extra_files_from=Path(workdir) / PROCESSOR_DIR)


# --- evaluation by generation ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class GenerationEval:
    """Accuracy of greedy answers: overall, per question kind, and how many replies had no yes/no."""

    accuracy: float
    accuracy_by_kind: dict[str, float]
    num_questions: int
    num_unknown: int
    predictions: tuple[str, ...]

    def summary(self) -> dict[str, Any]:
        return {"accuracy": self.accuracy, "accuracy_by_kind": self.accuracy_by_kind,
                "num_questions": self.num_questions, "num_unknown": self.num_unknown}


def _pad_left(ids: np.ndarray, mask: np.ndarray, length: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Left-pads [B, S] ids and mask to [B, length]."""
    extra = length - ids.shape[1]
    return (np.pad(ids, ((0, 0), (extra, 0)), constant_values=pad_id), np.pad(mask, ((0, 0), (extra, 0))))


def generate_answers(
    config: Qwen2AudioConfig,
    params: Params,
    settings: GenerationSettings,
    tokenizer: PreTrainedTokenizerBase,
    questions: Sequence[str],
    clips: Sequence[np.ndarray],
    pad_to_frames: int,
    batch_size: int,
) -> list[str]:
    """Greedy replies, decoded without special tokens, one per (question, clip).

    Batches are padded to `batch_size` questions and prompts to a multiple of 64 tokens, so a few
    compilations serve the whole set.
    """
    generate = jitted_generate(config, settings)
    replies: list[str] = []
    for start in range(0, len(questions), batch_size):
        chunk = list(range(start, min(start + batch_size, len(questions))))
        chunk_padded = chunk + [chunk[-1]] * (batch_size - len(chunk))
        prompts = build_prompts(tokenizer, [questions[i] for i in chunk_padded], [clips[i] for i in chunk_padded],
                                num_mel_bins=config.audio.num_mel_bins, pad_to_frames=pad_to_frames,
                                padding_side="left")
        length = -(-prompts.input_ids.shape[1] // PROMPT_LENGTH_QUANTUM) * PROMPT_LENGTH_QUANTUM
        ids, mask = _pad_left(prompts.input_ids, prompts.attention_mask, length, tokenizer.pad_token_id)
        tokens, counts = generate(params, ids.astype(np.int32), mask.astype(np.int32), prompts.input_features,
                                  prompts.feature_attention_mask.sum(-1).astype(np.int32))
        tokens, counts = np.asarray(tokens), np.asarray(counts)
        for row in range(len(chunk)):
            replies.append(tokenizer.decode(tokens[row, : counts[row]].tolist(), skip_special_tokens=True))
    return replies


def evaluate_generation(
    config: Qwen2AudioConfig,
    params: Params,
    generation: dict[str, Any],
    tokenizer: PreTrainedTokenizerBase,
    samples: Sequence[synthetic.Sample],
    pad_to_frames: int,
    batch_size: int,
    silence: bool = False,
) -> GenerationEval:
    """Accuracy of the greedy answers to `samples`; `silence`: zeros of each clip's length instead of the clip."""
    if not samples:
        raise ValueError("samples is empty: nothing to evaluate")
    settings = GenerationSettings.from_hf(generation, config)
    waveforms = {}
    for sample in samples:
        if sample.clip_id not in waveforms:
            clip = sample.load_waveform()
            waveforms[sample.clip_id] = np.zeros_like(clip) if silence else clip
    replies = generate_answers(config, params, settings, tokenizer, [s.question for s in samples],
                               [waveforms[s.clip_id] for s in samples], pad_to_frames, batch_size)
    predictions = tuple(parse_answer(r) for r in replies)
    correct = np.asarray([p == s.answer for p, s in zip(predictions, samples)])
    kinds = np.asarray([s.kind for s in samples])
    by_kind = {str(k): float(correct[kinds == k].mean()) for k in np.unique(kinds)}
    return GenerationEval(
        accuracy=float(correct.mean()),
        accuracy_by_kind=by_kind,
        num_questions=len(samples),
        num_unknown=sum(p == UNKNOWN for p in predictions),
        predictions=predictions,
    )


def evaluation_questions(cfg: ml_collections.ConfigDict) -> list[synthetic.Sample]:
    """The first `cfg.data.test_questions` questions of the synthetic test split."""
    samples = synthetic.generate_split("test", cfg.data.test_clips, cfg.data.seed)
    if len(samples) < cfg.data.test_questions:
        raise ValueError(f"data.test_clips={cfg.data.test_clips} gives {len(samples)} questions, fewer than "
                         f"data.test_questions={cfg.data.test_questions}")
    return samples[: cfg.data.test_questions]
