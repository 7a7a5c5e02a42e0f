"""The teacher-forced forward pass of a training batch, the answer loss, and the training-only heads
with their auxiliary losses.

A step takes `batch_clips` clips and `questions_per_clip` questions about each; each clip is encoded
once, its prompt prefix (system turn and audio) decoded once into a KV cache, and each question
decoded on a copy of that cache (`forward`; the model's own stages, as `__call__` chains them).

Loss: the teacher-forced cross-entropy of the answer tokens, plus five training-only auxiliary
losses whose linear heads are discarded (never exported): `tagging_loss` (the event class of every
audio token, from the known event intervals) and `recurrence_loss` (whether that class occurs more
than once in the clip), both on the projected audio embeddings; `reading_loss` (the classes the
question names), `listening_loss` (each class's place in the clip's time order) and `counting_loss`
(how often each class occurs), read at the last prompt position from the input of the last decoder
layer. They teach the encoder to tell the events apart and the decoder to bring the question and the
events to the position that answers; the last layer then only has to combine them. No loss touches the
attention maps.

The labels are defined on both benchmarks (`agac_jax.training.data`): a token under overlapping
events takes the loudest one's class, a count question names its class twice, and a class's rank
is that of its first onset among the classes present (1..MAX_RANK on the synthetic benchmark,
1..5 on scenes: the listener's width follows the config, `init_auxiliary(max_rank=...)`); a count
saturates at `data.MAX_COUNT`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from agac_jax.data.synthetic_audio import synthetic
from agac_jax.models.decoder import LayerCache, init_cache
from agac_jax.models.qwen2_audio.model import Qwen2AudioForConditionalGeneration, causal_mask
from agac_jax.training.data import BACKGROUND_LABEL, MAX_COUNT, Batch

Params = Any


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
    _, cache = model.apply(variables, prefix, positions=positions, mask=mask, cache=cache, cache_index=0,
                           method=model.decode)
    which = batch["question_clip"]
    cache = tuple(LayerCache(layer.k[which], layer.v[which]) for layer in cache)
    suffix = model.apply(variables, suffix_ids, method=model.embed_tokens)
    sees_prefix = jnp.arange(lp)[None, None, :] < batch["suffix_start"][:, None, None]
    mask = jnp.concatenate([jnp.broadcast_to(sees_prefix, (b, ls, lp)), causal_mask(suffix_mask)], axis=2)
    positions = batch["suffix_start"][:, None] + jnp.arange(ls)[None, :]
    before_last = f"layers_{text.num_hidden_layers - 2}"
    (hidden, _), state = model.apply(
        variables, suffix, positions=positions, mask=mask, cache=cache, cache_index=lp, method=model.decode,
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


def _answering_position_loss(head: Params, middle: jax.Array, batch: Batch, labels: jax.Array) -> jax.Array:
    """Mean cross-entropy of labels [B, K] (K targets of a head, each a class of its last axis) read by
    `head` (kernel [D, K, classes]) from middle [B, L, D] at the last prompt position."""
    last = jnp.argmax(batch["target_mask"], axis=1) - 1
    h = middle[jnp.arange(middle.shape[0]), last].astype(jnp.float32)
    logits = jnp.einsum("bd,dkc->bkc", h, head["kernel"]) + head["bias"]
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, labels[..., None], axis=-1))


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
    return _answering_position_loss(reader, middle, batch, batch["question_labels"])


MAX_RANK = 3  # the synthetic benchmark's clips hold at most 3 events (`data.max_rank` of a config)


def init_listener(hidden_size: int, max_rank: int = MAX_RANK) -> Params:
    """The training-only listener: per class, a linear map from a hidden state to its rank (0 absent .. max_rank)."""
    n = len(synthetic.EVENT_CLASSES)
    return {"kernel": jnp.zeros((hidden_size, n, max_rank + 1)), "bias": jnp.zeros((n, max_rank + 1))}


def listening_loss(listener: Params, middle: jax.Array, batch: Batch) -> jax.Array:
    """Mean cross-entropy of each class's rank in the clip (`event_ranks`), read like `reading_loss`.

    With the question (reading) and the clip's events in time order (listening) both at the
    answering position, the last layer only has to combine them.
    """
    return _answering_position_loss(listener, middle, batch, batch["event_ranks"])


def init_recurrence(hidden_size: int) -> Params:
    """The training-only recurrence head: a linear map from an audio embedding to one logit."""
    return {"kernel": jnp.zeros((hidden_size,)), "bias": jnp.zeros(())}


def recurrence_loss(head: Params, audio: jax.Array, labels: jax.Array, clip_counts: jax.Array) -> jax.Array:
    """Mean binary cross-entropy, over the audio tokens inside an event, of whether the token's class
    occurs more than once in its clip.

    audio [C, T, D]: projected audio embeddings; labels [C, T]: `audio_token_labels` (a class, the
    background or -1); clip_counts [C, 8]: `event_counts` of each clip. With this mark on every token
    of a repeated class, "is there more than one {x} ?" asks whether a token of class x carries it,
    which is how the existence question is answered; the encoder has the whole clip to find the other
    occurrence. Like the tagger, the head is not exported.
    """
    logits = audio.astype(jnp.float32) @ head["kernel"] + head["bias"]
    inside = (labels >= 0) & (labels < BACKGROUND_LABEL)
    counts = jnp.take_along_axis(clip_counts, jnp.clip(labels, 0, BACKGROUND_LABEL - 1), axis=1)
    target = (counts >= 2).astype(jnp.float32)
    nll = jax.nn.softplus(logits) - target * logits  # -log sigmoid(logit) for 1, -log(1 - sigmoid) for 0
    return jnp.sum(jnp.where(inside, nll, 0.0)) / jnp.maximum(jnp.sum(inside), 1)


def init_counter(hidden_size: int) -> Params:
    """The training-only counter: per class, a linear map from a hidden state to its count (0 .. MAX_COUNT)."""
    n = len(synthetic.EVENT_CLASSES)
    return {"kernel": jnp.zeros((hidden_size, n, MAX_COUNT + 1)), "bias": jnp.zeros((n, MAX_COUNT + 1))}


def counting_loss(counter: Params, middle: jax.Array, batch: Batch) -> jax.Array:
    """Mean cross-entropy of each class's number of occurrences in the clip (`event_counts`), read like
    `reading_loss`.

    The listener ranks a class by its first onset, so it says nothing about a second occurrence; the
    scenes' count question needs exactly that at the answering position.
    """
    return _answering_position_loss(counter, middle, batch, batch["event_counts"])


def init_auxiliary(hidden_size: int, max_rank: int = MAX_RANK) -> Params:
    """The training-only heads: {"tagger": `init_tagger`, "reader": `init_reader`, "listener": `init_listener`,
    "counter": `init_counter`, "recurrence": `init_recurrence`}."""
    return {"tagger": init_tagger(hidden_size), "reader": init_reader(hidden_size),
            "listener": init_listener(hidden_size, max_rank), "counter": init_counter(hidden_size),
            "recurrence": init_recurrence(hidden_size)}


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

