"""The optimiser, the jitted train and eval steps, and the teacher-forced validation accuracy."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from agac_jax.models.config import Qwen2AudioConfig
from agac_jax.models.qwen2_audio.model import Qwen2AudioForConditionalGeneration
from agac_jax.training.data import TrainingSet
from agac_jax.training.losses import (answer_loss, answer_loss_from_logits, counting_loss, forward, listening_loss,
                                      reading_loss, recurrence_loss, tagging_loss)

Params = Any


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
                    tagging_weight: float, reading_weight: float, listening_weight: float,
                    counting_weight: float = 0.0, recurrence_weight: float = 0.0) -> Callable:
    """jitted (trainable, opt_state, batch) -> (trainable, opt_state, metrics).

    `trainable` is {"model": parameters, **`init_auxiliary`}; the loss is the answer loss plus the
    weighted tagging, reading, listening, counting and recurrence losses; metrics: loss, answer_loss,
    tagging_loss, reading_loss, listening_loss, counting_loss, recurrence_loss, accuracy (of the answer
    word). A head of weight 0 gets no gradient and stays at zero.
    """

    def loss_fn(trainable, batch):
        logits, audio, middle = forward(model, trainable["model"], batch)
        answer, correct = answer_loss_from_logits(logits, batch)
        tagging = tagging_loss(trainable["tagger"], audio, batch["token_labels"])
        reading = reading_loss(trainable["reader"], middle, batch)
        listening = listening_loss(trainable["listener"], middle, batch)
        counting = counting_loss(trainable["counter"], middle, batch)
        recurrence = recurrence_loss(trainable["recurrence"], audio, batch["token_labels"], batch["clip_event_counts"])
        metrics = {"answer_loss": answer, "tagging_loss": tagging, "reading_loss": reading,
                   "listening_loss": listening, "counting_loss": counting, "recurrence_loss": recurrence,
                   "accuracy": jnp.mean(correct)}
        total = (answer + tagging_weight * tagging + reading_weight * reading + listening_weight * listening
                 + counting_weight * counting + recurrence_weight * recurrence)
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
def cached_steps(config: Qwen2AudioConfig, optim_items: tuple) -> tuple[Callable, Callable]:
    """The jitted train and eval steps of one (model config, optimiser config), compiled once per process."""
    model = Qwen2AudioForConditionalGeneration(config)
    optim = ml_collections.ConfigDict(dict(optim_items))
    train_step = make_train_step(model, make_optimizer(optim), optim.tagging_weight, optim.reading_weight,
                                 optim.listening_weight, optim.counting_weight,
                                 optim.recurrence_weight)
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

