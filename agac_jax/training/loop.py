"""The training loop of the tiny Qwen2-Audio, and its export as a Hugging Face directory.

`train` encodes the splits (`data.split_set`), restores the latest checkpoint in the workdir or
initialises the parameters, and runs the jitted step (`steps.cached_steps`) on the batches of
`data.step_batch` up to `cfg.optim.steps`, logging every `log_every` steps, validating every
`eval_every` and checkpointing every `checkpoint_every` (`checkpointing`). The step's batch is a
function of (seed, step), so a resumed run equals the uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from transformers import PreTrainedTokenizerBase

from agac_jax.models.qwen2_audio import checkpoints
from agac_jax.data.common import AudioQASample
from agac_jax.models.config import Qwen2AudioConfig
from agac_jax.training.checkpointing import checkpoint_manager, restore_checkpoint, save_checkpoint
from agac_jax.training.data import max_rank, split_set, step_batch, vocabulary
from agac_jax.training.losses import init_auxiliary
from agac_jax.training.model import build_processor, generation_config, initial_params, model_config
from agac_jax.training.steps import cached_steps, make_optimizer, teacher_forced_accuracy

Params = Any

logger = logging.getLogger(__name__)

PROCESSOR_DIR = "processor"


@dataclasses.dataclass
class TrainResult:
    """What `train` returns: the final parameters, their config and the tokenizer trained with."""

    config: Qwen2AudioConfig
    params: Params
    tokenizer: PreTrainedTokenizerBase
    step: int
    history: list[dict[str, float]]


def train(
    cfg: ml_collections.ConfigDict,
    workdir: str | Path,
    train_samples: Sequence[AudioQASample] | None = None,
    validation_samples: Sequence[AudioQASample] | None = None,
) -> TrainResult:
    """Trains (or resumes training in `workdir`) up to `cfg.optim.steps` steps.

    The samples default to the splits of `cfg.data`'s benchmarks (`data.split_samples`), whose encoded
    features are cached in `workdir`; tests pass a handful instead (synthetic or scenes samples).
    `history` holds one record per logged step (mean loss, train answer accuracy, seconds per step)
    and one per validation evaluation.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_processor(workdir / PROCESSOR_DIR, cfg.num_mel_bins, vocabulary(cfg))
    config = model_config(cfg, tokenizer)
    started = time.perf_counter()
    train_set = split_set(cfg, tokenizer, workdir, "train", cfg.data.train_clips, train_samples)
    validation_set = split_set(cfg, tokenizer, workdir, "validation", cfg.data.validation_clips, validation_samples)
    logger.info("encoded %d training and %d validation questions (%d clips, length %d) in %.1f s",
                len(train_set), len(validation_set), len(train_set.mel_lengths), train_set.input_ids.shape[1],
                time.perf_counter() - started)

    optimizer = make_optimizer(cfg.optim)
    manager = checkpoint_manager(workdir, cfg.keep_checkpoints)
    if manager.latest_step() is not None:
        step, restored_config, trainable, opt_state = restore_checkpoint(manager, optimizer, max_rank=max_rank(cfg))
        if restored_config.to_hf_dict() != config.to_hf_dict():
            raise ValueError(f"checkpoint {manager.directory} step {step} was written for a different model "
                             "config than cfg describes")
        logger.info("resumed from %s at step %d", manager.directory, step)
    else:
        step = 0
        trainable = {"model": initial_params(config, cfg.seed, cfg.model.sinusoid_positions),
                     **init_auxiliary(config.text.hidden_size, max_rank(cfg))}
        opt_state = jax.jit(optimizer.init)(trainable)
    train_step, eval_step = cached_steps(config, tuple(sorted(cfg.optim.to_dict().items())))
    history: list[dict[str, float]] = []
    window: list[tuple[float, float]] = []
    tick = time.perf_counter()
    while step < cfg.optim.steps:
        clips, questions = step_batch(train_set, cfg.optim.batch_clips, cfg.optim.questions_per_clip, cfg.seed, step,
                                      cfg.optim.short_clip_steps, cfg.optim.order_share,
                                      cfg.optim.get("count_share", 0.0))
        batch = train_set.batch(questions, clips)
        trainable, opt_state, metrics = train_step(trainable, opt_state, batch)
        step += 1
        window.append(jax.device_get(metrics))
        if step % cfg.log_every == 0 or step == cfg.optim.steps:
            record = {"step": step, **{k: float(np.mean([m[k] for m in window])) for k in window[0]},
                      "seconds_per_step": (time.perf_counter() - tick) / len(window)}
            history.append(record)
            logger.info("step %d: loss %.4f (answer %.4f, tagging %.4f, reading %.4f, listening %.4f, counting %.4f, "
                        "recurrence %.4f), "
                        "train answer accuracy %.3f, %.2f s/step", step, record["loss"], record["answer_loss"],
                        record["tagging_loss"], record["reading_loss"], record["listening_loss"],
                        record["counting_loss"], record["recurrence_loss"],
                        record["accuracy"], record["seconds_per_step"])
            window, tick = [], time.perf_counter()
        if cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.optim.steps):
            scores = teacher_forced_accuracy(eval_step, trainable["model"], validation_set, cfg.eval_batch_size)
            history.append({"step": step, **{f"validation_{k}": v for k, v in scores.items()}})
            logger.info("step %d: validation %s", step, ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))
        if step % cfg.checkpoint_every == 0 or step == cfg.optim.steps:
            save_checkpoint(manager, step, config, trainable, opt_state)
    manager.close()
    return TrainResult(config, trainable["model"], tokenizer, step, history)


def export(directory: str | Path, result: TrainResult, workdir: str | Path, max_new_tokens: int) -> None:
    """Writes the trained model as a Hugging Face directory with tokenizer, preprocessor and generation config."""
    checkpoints.save_hf_directory(directory, result.config, result.params,
                                  generation_config(result.config, max_new_tokens),
                                  extra_files_from=Path(workdir) / PROCESSOR_DIR)

