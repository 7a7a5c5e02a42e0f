"""The training data: questions with their answers as token ids, the features of their clips, the
auxiliary targets, and the batch order.

Each training question is rendered exactly as at inference (`agac_jax.models.qwen2_audio.prompts.prompt_ids`) and
followed by its answer word and `<|im_end|>`. Sequences are right-padded, so positions 0..S-1 equal
the positions that left-padded greedy generation derives for the real tokens.

Benchmarks (`BENCHMARKS`): the splits come from `data.benchmark`, "synthetic"
(`agac_jax.data.synthetic_audio.synthetic`, the shipped model's) or "scenes"
(`agac_jax.data.synthetic_audio.scenes`); with `data.mix_benchmark` the training split also holds
`data.mix_clips` clips of a second one. The tokenizer's vocabulary is the union of theirs
(`vocabulary`), and every label below is defined for both (scenes repeat classes and overlap events).

Questions: by default (`data.all_questions`) every question the benchmark's templates can ask about a
training clip (`all_questions`): synthetic, `synthetic.all_questions` (the 8 existence questions
and the order question of every ordered pair of its events); scenes, `scenes.all_questions`
(existence, count and order where they are answerable); answered from the clip's events. The
benchmark's own questions are balanced, so neither the question nor the audio alone says anything
about the answer; a small model trained on them alone stays at chance for hundreds of steps.

Log-mel features of the training clips are computed once, one clip at a time (`log_mel`, padded to
the largest frame bucket), and kept as float16 to halve their memory; a batch is cast back to float32. Each
question belongs to the frame bucket of its clip (`agac_jax.audio.features.bucket_frames`); a batch
holds questions of one bucket only, cut to that bucket's frames and token length, so short clips
cost less and each bucket compiles once. Cutting the features is exact: every frame of
`log_mel` equals the 30 s reference at its index whatever the padding. Encoded splits are
cached in the workdir as .npz (`split_set`).

Silence outside the events (`data.silence_share`, training split only): a share of the training
clips is encoded with some of its codec frames that overlap no event set to digital zeros
(`silence_outside_events`), so the model hears a clip whose background is partly cut away, as in the
insertion clips of the faithfulness curves and at the AAD's gated tokens, as the same scene. Every
label stays exact: no event loses a sample.

Batch order is a function of (seed, step) only (`step_batch`), so a resumed run sees the batches the
interrupted one would have.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np
from transformers import PreTrainedTokenizerBase

from agac_jax.audio.features import FRAMES_PER_SECOND, HOP_LENGTH, audio_token_count, bucket_frames, log_mel
from agac_jax.audio.grids import CODEC_TOKEN_RATES, SAMPLE_RATE, SAMPLES_PER_AUDIO_TOKEN
from agac_jax.codec.frames import frame_bounds
from agac_jax.data.synthetic_audio import scenes, synthetic
from agac_jax.models.qwen2_audio import prompts as prompting
from agac_jax.models.qwen2_audio.tokenizer import AUDIO_EOS, AUDIO_TOKEN, IM_END

Batch = dict[str, np.ndarray]

SET_FORMAT = 3  # version of the cached training-set files (2: suffix_start, 3: event_counts)
MAX_COUNT = 3  # `event_counts` saturate here: 0, 1, 2, 3 or more occurrences of a class


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
      kinds: [N] question kinds ("existence" / "order" / "count").
      buckets: int32 [N] the frame bucket of each question's clip.
      bucket_lengths: frame bucket -> token length of its longest question.
      token_labels: int8 [C, F // 4] the event class of each audio token of each clip (see
        `audio_token_labels`), -1 past the clip's valid tokens.
      question_labels: int8 [N, 2] the classes a question names (see `question_labels`).
      event_ranks: int8 [C, 8] per class of EVENT_CLASSES, 0 when the clip lacks it, else the place
        (1, 2, ...) of its first onset in the clip's time order (see `event_ranks`).
      event_counts: int8 [C, 8] per class of EVENT_CLASSES, how often it occurs in the clip, 0 to
        MAX_COUNT (see `event_counts`).
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
    event_counts: np.ndarray

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
        each question's suffix attends to its clip's prefix (see `losses.forward`). Shapes are fixed per
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
          token_labels int32 [C, P // 4]; question_labels int32 [B, 2]; event_ranks and event_counts int32
          [B, 8] (of each question's clip); clip_event_counts int32 [C, 8] (of each clip).
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
            "event_counts": self.event_counts[own].astype(np.int32),
            "clip_event_counts": self.event_counts[clips].astype(np.int32),
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
    centre, BACKGROUND_LABEL (8) where none does, -1 from `num_tokens` (the clip's valid tokens) on.

    Where events overlap (the scenes benchmark), the token takes the loudest one's class (highest
    SNR; the later one in `events` on a tie): the class one hears there. Synthetic events never
    overlap, so each token has at most one."""
    centres = (np.arange(length) + 0.5) * SAMPLES_PER_AUDIO_TOKEN / synthetic.SAMPLE_RATE
    labels = np.full(length, BACKGROUND_LABEL, np.int8)
    for event in sorted(events, key=lambda e: e.snr_db):
        labels[(centres >= event.start_s) & (centres < event.end_s)] = synthetic.EVENT_CLASSES.index(event.label)
    labels[num_tokens:] = -1
    return labels


def question_labels(question: str) -> tuple[int, int]:
    """The classes a benchmark question names, as EVENT_CLASSES indices: (class, BACKGROUND_LABEL) for
    an existence question, (first, second) for an order question, (class, class) for a count
    question of the scenes benchmark (the class named twice: a pair no other kind gives)."""
    classes = synthetic.EVENT_CLASSES
    for i, label in enumerate(classes):
        if question == synthetic.existence_question(label):
            return i, BACKGROUND_LABEL
        if question == scenes.count_question(label):
            return i, i
    for (i, first), (j, second) in itertools.permutations(enumerate(classes), 2):
        if question == synthetic.order_question(first, second):
            return i, j
    raise ValueError(f"{question!r} is not a question of the synthetic benchmarks")


def event_ranks(events: Sequence[synthetic.Event]) -> np.ndarray:
    """int8 [8]: per class of EVENT_CLASSES, 0 if absent, else the place (1, 2, ...) of its first onset
    among the first onsets of the clip's classes.

    A class that occurs twice (scenes) is ranked by its first occurrence and counts once, so the
    ranks are 1..number of classes present (at most the clip's events) and each order question's
    answer is the comparison of its two classes' ranks. With distinct classes (synthetic) this is
    each event's place in time."""
    first_onsets: dict[str, float] = {}
    for event in sorted(events, key=lambda e: e.start_s):
        first_onsets.setdefault(event.label, event.start_s)
    ranks = np.zeros(len(synthetic.EVENT_CLASSES), np.int8)
    for place, label in enumerate(first_onsets, start=1):
        ranks[synthetic.EVENT_CLASSES.index(label)] = place
    return ranks


def event_counts(events: Sequence[synthetic.Event]) -> np.ndarray:
    """int8 [8]: per class of EVENT_CLASSES, how many of the clip's events are of it, capped at MAX_COUNT.

    The count question ("is there more than one {x} ?") compares this with one; the ranks of
    `event_ranks` cannot tell once from twice."""
    counts = np.zeros(len(synthetic.EVENT_CLASSES), np.int8)
    for event in events:
        index = synthetic.EVENT_CLASSES.index(event.label)
        counts[index] = min(counts[index] + 1, MAX_COUNT)
    return counts


@dataclasses.dataclass(frozen=True)
class Benchmark:
    """A generated benchmark training can use (`cfg.data.benchmark`, `cfg.data.mix_benchmark`).

    Attributes:
      module: its data module (generate_split, VOCABULARY, the question templates).
      all_questions: every question its templates can ask about each clip, answered from its events.
      max_events: the most events a clip holds, so the largest `event_ranks` value.
    """

    module: Any
    all_questions: Callable[[Sequence[Any]], list[Any]]
    max_events: int


BENCHMARKS: dict[str, Benchmark] = {
    "synthetic": Benchmark(synthetic, synthetic.all_questions, 3),  # 1-3 events
    "scenes": Benchmark(scenes, scenes.all_questions, max(scenes.EVENT_COUNT_WEIGHTS)),  # synthetic_scenes
}


def all_questions(samples: Sequence[Any]) -> list[Any]:
    """Every question the templates of each sample's benchmark can ask about its clip, answered from its
    events (`Benchmark.all_questions`: `synthetic.all_questions`, `scenes.all_questions`). Clips keep
    their first-seen order within each benchmark, the benchmarks in the order of BENCHMARKS."""
    out, claimed = [], 0
    for benchmark in BENCHMARKS.values():
        own = [s for s in samples if isinstance(s, benchmark.module.Sample)]
        claimed += len(own)
        out += benchmark.all_questions(own) if own else []
    if claimed != len(samples):
        raise TypeError("all_questions takes samples of the BENCHMARKS' data modules only")
    return out


def benchmarks(cfg: ml_collections.ConfigDict) -> list[Benchmark]:
    """The benchmarks a training config uses: `data.benchmark`, then `data.mix_benchmark` when set."""
    names = [cfg.data.get("benchmark", "synthetic")] + ([cfg.data.mix_benchmark] if cfg.data.get("mix_benchmark")
                                                         else [])
    unknown = [name for name in names if name not in BENCHMARKS]
    if unknown:
        raise ValueError(f"unknown benchmark {unknown[0]!r} in cfg.data; choose from {tuple(BENCHMARKS)}")
    return [BENCHMARKS[name] for name in names]


def vocabulary(cfg: ml_collections.ConfigDict) -> list[str]:
    """The sorted union of the vocabularies of the config's benchmarks (synthetic alone: its own)."""
    return sorted(set().union(*(b.module.VOCABULARY for b in benchmarks(cfg))))


def max_rank(cfg: ml_collections.ConfigDict) -> int:
    """The largest `event_ranks` value of the config's benchmarks (the listener's ranks are 0..max_rank)."""
    return max(b.max_events for b in benchmarks(cfg))


def answer_token_ids(tokenizer: PreTrainedTokenizerBase, answer: str) -> list[int]:
    """The ids the model is taught to produce: the answer word, then `<|im_end|>`."""
    ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    if len(ids) != 1 or ids[0] == tokenizer.unk_token_id:
        raise ValueError(f"answer {answer!r} is not one word of the tokenizer's vocabulary (ids {ids})")
    return ids + [tokenizer.convert_tokens_to_ids(IM_END)]


EVENT_MARGIN_S = 0.02  # a frame this close to an event counts as the event's in `silence_outside_events`


def silence_outside_events(waveform: np.ndarray, events: Sequence[synthetic.Event], rng: np.random.Generator,
                           cut_range: tuple[float, float]) -> np.ndarray:
    """float32 [n]: `waveform` with a random share of its event-free codec frames set to zeros.

    The frame grid is the codec's at a token rate drawn from `CODEC_TOKEN_RATES` (frames of 80, 40 or 20 ms);
    a frame is event-free when it lies more than EVENT_MARGIN_S from every event's interval. Each
    event-free frame is cut with probability p, drawn uniformly from `cut_range` per clip, so p = 1
    leaves the events alone in silence, as the insertion clip of a selector that keeps every event
    does. Every event's samples are kept.
    """
    low, high = cut_range
    if not 0.0 <= low <= high <= 1.0:
        raise ValueError(f"cut_range must satisfy 0 <= low <= high <= 1, got {cut_range}")
    starts, ends = frame_bounds(waveform.size, int(rng.choice(CODEC_TOKEN_RATES))).T
    free = np.ones(starts.size, bool)
    margin = EVENT_MARGIN_S * SAMPLE_RATE
    for event in events:
        free &= (ends <= event.start_s * SAMPLE_RATE - margin) | (starts >= event.end_s * SAMPLE_RATE + margin)
    cut = free & (rng.random(starts.size) < rng.uniform(low, high))
    out = np.array(waveform, np.float32)
    for start, end in zip(starts[cut], ends[cut]):
        out[start:end] = 0.0
    return out


def encode_training_set(
    tokenizer: PreTrainedTokenizerBase,
    samples: Sequence[synthetic.Sample],
    num_mel_bins: int,
    bucket_seconds: Sequence[int],
    silence_share: float = 0.0,
    silence_cut: tuple[float, float] = (0.25, 1.0),
    seed: int = 0,
) -> TrainingSet:
    """Computes each clip's features once and each question's ids (prompt + answer) once.

    `bucket_seconds`: the frame buckets in seconds (e.g. (6, 9, 12)); the largest must hold every clip.
    `silence_share`: the share of clips encoded through `silence_outside_events` (cut probability drawn
    from `silence_cut`), chosen and cut by a generator seeded with (`seed`, clip index).
    """
    if not 0.0 <= silence_share <= 1.0:
        raise ValueError(f"silence_share must lie in [0, 1], got {silence_share}")
    if not samples:
        raise ValueError("samples is empty: nothing to train on")
    clip_order: dict[str, int] = {}
    clip_samples: list[Any] = []
    for sample in samples:
        if sample.clip_id not in clip_order:
            clip_order[sample.clip_id] = len(clip_samples)
            clip_samples.append(sample)
    clip_events = [sample.events for sample in clip_samples]
    # One waveform at a time (16000 clips of 12 s are 12 GB as float32): each clip's features at the
    # largest bucket, exact at every frame (`log_mel` equals the 30 s reference), cut to the largest
    # bucket in use below.
    largest = max(bucket_seconds) * FRAMES_PER_SECOND
    features = np.empty((len(clip_samples), num_mel_bins, largest), np.float16)
    mel_lengths = np.empty(len(clip_samples), np.int32)
    clip_buckets = np.empty(len(clip_samples), np.int32)
    for index, sample in enumerate(clip_samples):
        waveform = sample.load_waveform()
        if silence_share:
            rng = np.random.default_rng([seed, index])
            if rng.random() < silence_share:
                waveform = silence_outside_events(waveform, sample.events, rng, silence_cut)
        clip_buckets[index] = bucket_frames(waveform.size, bucket_seconds)
        clip_features, mel_lengths[index] = log_mel(waveform, num_mel_bins, largest * HOP_LENGTH,
                                                    name=f"clip {sample.clip_id!r}")
        features[index] = clip_features
    features = features[:, :, : int(clip_buckets.max())]
    clip_index = np.asarray([clip_order[s.clip_id] for s in samples], np.int32)
    num_tokens = audio_token_count(mel_lengths[clip_index]).tolist()
    prompt_format = prompting.prompt_format_of(tokenizer)
    prompt_ids = prompting.expand_audio_ids(
        [prompting.prompt_ids(tokenizer, prompt_format, s.question) for s in samples],
        tokenizer.convert_tokens_to_ids(AUDIO_TOKEN), num_tokens)
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
        features=features,
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
        event_counts=np.stack([event_counts(events) for events in clip_events]),
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
               short_steps: int = 0, order_share: float = 0.0, count_share: float = 0.0
               ) -> tuple[np.ndarray, np.ndarray]:
    """The clips [batch_clips] and questions [batch_clips * questions_per_clip] of step `step`.

    Clips follow `batch_indices` over the clips' buckets; each clip's questions are drawn from its
    own, without replacement while it has enough. `order_share` of them (rounded) come from the
    clip's order questions when it has any (a synthetic clip asks 8 existence questions and at most
    6 order ones, and order is the harder kind), `count_share` from its count questions (scenes)
    likewise, the rest from its other questions. A function of (seed, step) only.
    """
    if order_share + count_share > 1:
        raise ValueError(f"order_share + count_share must be at most 1, got {order_share} + {count_share}")
    clips = batch_indices(data.clip_buckets(), batch_clips, seed, step, short_steps)
    pools = data.questions_by_clip()
    rng = np.random.default_rng([seed, step, 1])
    questions = []
    for clip in clips:
        pool = pools[clip]
        parts, rest = [], np.ones(len(pool), bool)
        for kind, share in ((synthetic.ORDER, order_share), (scenes.COUNT, count_share)):
            of_kind = data.kinds[pool] == kind
            parts.append((pool[of_kind], int(round(questions_per_clip * share)) if of_kind.any() else 0))
            rest &= ~of_kind
        parts.append((pool[rest], questions_per_clip - sum(count for _, count in parts)))
        for members, count in parts:
            if count:
                questions.append(rng.choice(members, count, replace=len(members) < count))
    return clips, np.concatenate(questions)


def _step_batch(buckets: np.ndarray, batch_size: int, seed: int, step: int) -> np.ndarray:
    steps_per_epoch = len(epoch_batches(buckets, batch_size, seed, 0))
    epoch, offset = divmod(step, steps_per_epoch)
    return epoch_batches(buckets, batch_size, seed, epoch)[offset]



def split_samples(cfg: ml_collections.ConfigDict, split: str, num_clips: int) -> list[Any]:
    """The questions of a split of `cfg.data.benchmark` (seed `cfg.data.seed`). The training split with
    `data.all_questions` holds every question about each clip (`all_questions`), and, with
    `data.mix_benchmark`, `data.mix_clips` training clips of that benchmark too (first)."""
    main, *mixed = benchmarks(cfg)
    samples = main.module.generate_split(split, num_clips, cfg.data.seed)
    if split != "train":
        return samples
    if mixed and cfg.data.mix_clips:  # synthetic and scenes clip ids never collide
        samples = mixed[0].module.generate_split(split, cfg.data.mix_clips, cfg.data.seed) + samples
    return all_questions(samples) if cfg.data.all_questions else samples


def split_set(cfg: ml_collections.ConfigDict, tokenizer: PreTrainedTokenizerBase, workdir: Path, split: str,
              num_clips: int, samples: Sequence[Any] | None) -> TrainingSet:
    """The encoded split of the config's benchmarks (`split_samples`, cached in the workdir), or the
    given samples encoded (not cached)."""

    silence = cfg.data.get("silence_share", 0.0) if split == "train" else 0.0
    cut = tuple(cfg.data.get("silence_cut", (0.25, 1.0)))

    def encode(chosen: Sequence[Any]) -> TrainingSet:
        return encode_training_set(tokenizer, chosen, cfg.num_mel_bins, cfg.bucket_seconds, silence, cut,
                                   cfg.data.seed)

    if samples is not None:
        return encode(samples)
    buckets = "-".join(str(b) for b in cfg.bucket_seconds)
    name = f"{split}_clips{num_clips}_seed{cfg.data.seed}_mel{cfg.num_mel_bins}_buckets{buckets}_v{SET_FORMAT}.npz"
    benchmark, mixed = cfg.data.get("benchmark", "synthetic"), cfg.data.get("mix_benchmark")
    if benchmark != "synthetic" or mixed:  # the synthetic splits keep the names they always had
        mix = f"_mix-{mixed}{cfg.data.mix_clips}" if mixed and split == "train" else ""
        name = f"{benchmark}{mix}_{name}"
    if silence:
        name = f"silence{silence:g}-{cut[0]:g}-{cut[1]:g}_" + name
    if split == "train" and cfg.data.all_questions:
        name = "all_" + name
    return cached_training_set(workdir / name, lambda: encode(split_samples(cfg, split, num_clips)))
