"""Training checkpoints through orbax's `CheckpointManager`.

A checkpoint of step N lives in `{workdir}/checkpoints/step_{N:07d}` and holds two items: `state`
(the trainable parameters {"model", **auxiliary heads} and the optimiser state, orbax
`StandardSave`) and `config` (the model's HF config dict, `JsonSave`). Orbax writes a step into a
temporary directory and renames it when complete, so a run killed while saving leaves no step that
`latest_step()` would return; `train` resumes from the latest complete step. The manager keeps the
newest `keep` steps (all when keep <= 0).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import optax
import orbax.checkpoint as ocp

from agac_jax.models.config import Qwen2AudioConfig
from agac_jax.models.qwen2_audio.model import init_params
from agac_jax.training.losses import MAX_RANK, init_auxiliary

Params = Any

CHECKPOINT_DIR = "checkpoints"
STEP_PREFIX = "step"
STEP_DIGITS = 7
ITEMS = ("state", "config")


def checkpoint_manager(workdir: str | Path, keep: int = 0) -> ocp.CheckpointManager:
    """The manager of `{workdir}/checkpoints` (created when missing), synchronous, keeping `keep` steps."""
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep if keep > 0 else None,
        step_prefix=STEP_PREFIX,
        step_format_fixed_length=STEP_DIGITS,
        enable_async_checkpointing=False,
        create=True,
    )
    return ocp.CheckpointManager(Path(workdir).absolute() / CHECKPOINT_DIR, options=options, item_names=ITEMS)


def step_path(workdir: str | Path, step: int) -> Path:
    """The directory of step `step` in `workdir`: `checkpoints/step_{step:07d}`."""
    return Path(workdir) / CHECKPOINT_DIR / f"{STEP_PREFIX}_{step:0{STEP_DIGITS}d}"


def save_checkpoint(manager: ocp.CheckpointManager, step: int, config: Qwen2AudioConfig, trainable: Params,
                    opt_state: Any) -> None:
    """Saves step `step`: the trainable parameters and optimiser state, and the model config."""
    state = {"trainable": trainable, "opt_state": opt_state}
    manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                               config=ocp.args.JsonSave(config.to_hf_dict())))


def restore_checkpoint(manager: ocp.CheckpointManager, optimizer: optax.GradientTransformation,
                       step: int | None = None, max_rank: int = MAX_RANK) -> tuple[int, Qwen2AudioConfig, Params, Any]:
    """(step, config, trainable {"model", **auxiliary heads}, opt_state) of `step` (None: the latest);
    `max_rank`: the listener's (`init_auxiliary`), the training config's `data.max_rank`.

    The arrays are restored into the shapes that `config` and `optimizer` give, so a checkpoint of
    another model or optimiser is an error, never a silent partial restore.
    """
    step = manager.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"{manager.directory} holds no complete checkpoint")
    hf_config = manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]
    config = Qwen2AudioConfig.from_hf_dict(hf_config)
    model = jax.eval_shape(lambda: nn.meta.unbox(init_params(config, jax.random.key(0))))
    trainable = {"model": model, **jax.eval_shape(functools.partial(init_auxiliary, config.text.hidden_size, max_rank))}
    target = {"trainable": trainable, "opt_state": jax.eval_shape(optimizer.init, trainable)}
    state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))["state"]
    return step, config, state["trainable"], state["opt_state"]
