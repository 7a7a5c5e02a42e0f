"""The data sets, by the name a config gives them (`config.dataset.name`).

`DATASETS[name](section)` loads the config's dataset section and returns (the name the tables use,
the samples and the items skipped). Adding a data set is a loader yielding `common.AudioQASample`
(with evidence intervals when known) and an entry here; loaders are imported when first used.

`load_dataset` is the one way in for a sweep: it appends the section's `prompt_suffix` to every
question (None: the data set's own default, `default_prompt_suffix`: lmms-eval's single-word
instruction for ClothoAQA, nothing elsewhere), logs how many items were skipped and why, and refuses
a data set that yields 0 samples (`common.DatasetError`, one `error:` line from the launch scripts).
"""

from __future__ import annotations

import importlib
import logging
from typing import Any, Callable

from agac_jax.data.common import DatasetError, LoadedDataset, skip_counts

logger = logging.getLogger(__name__)


def _generated(module: str, table: str) -> Callable[[Any], tuple[str, LoadedDataset]]:
    """The loader of a generated benchmark (`agac_jax.data.synthetic_audio.{module}`: synthetic,
    scenes): the split written at `section.root`, else `generate_split(split, num_clips,
    generation_seed)` in memory; named f"{table}-{split}" in the tables."""

    def load(section: Any) -> tuple[str, LoadedDataset]:
        benchmark = importlib.import_module(f"agac_jax.data.synthetic_audio.{module}")
        if section.root:
            samples = list(benchmark.read_split(section.root))
        else:
            samples = list(benchmark.generate_split(section.split, section.num_clips, section.generation_seed))
        return f"{table}-{section.split}", LoadedDataset(samples=samples, skipped=[])

    return load


def _clotho_aqa(section: Any) -> tuple[str, LoadedDataset]:
    from agac_jax.data.clotho_aqa import load_clotho_aqa

    return f"clotho_aqa-{section.split}", load_clotho_aqa(section.root, section.split)


def _avhbench(section: Any) -> tuple[str, LoadedDataset]:
    """AVHBench's `section.task`, named "avhbench" for the default task (audio-driven video
    hallucination) and "avhbench-{short name}" for the others ("avhbench-captioning", ...)."""
    from agac_jax.data.avhbench import DEFAULT_TASK, load_avhbench, task_slug, write_generated

    root = section.root
    if not root and section.get("generated", 0):  # a few generated videos (configs/avhbench_pandagpt.py:local)
        import tempfile
        from pathlib import Path

        root = write_generated(Path(tempfile.gettempdir()) / f"agac_avhbench_generated_{section.generated}",
                               section.generated)
    name = "avhbench" if task_slug(section.task) == task_slug(DEFAULT_TASK) else f"avhbench-{task_slug(section.task)}"
    return name, load_avhbench(root, section.task)


DATASETS: dict[str, Callable[[Any], tuple[str, LoadedDataset]]] = {
    # generated in memory or read from a written split (evidence known)
    "synthetic": _generated("synthetic", "synthetic"),
    # the harder scenes: quiet evidence, loud distractors, overlaps, counting (evidence known)
    "synthetic_scenes": _generated("scenes", "synthetic_scenes"),
    "clotho_aqa": _clotho_aqa,  # ClothoAQA's yes/no subset, majority label
    "avhbench": _avhbench,  # AVHBench's soundtracks, one task (captioning: free-text samples)
}


def default_prompt_suffix(name: str) -> str:
    """The text a data set appends to its questions by default: lmms-eval's `post_prompt` for
    ClothoAQA (`clotho_aqa.LMMS_EVAL_PROMPT_SUFFIX`), "" for the others."""
    if name == "clotho_aqa":
        from agac_jax.data.clotho_aqa import LMMS_EVAL_PROMPT_SUFFIX

        return LMMS_EVAL_PROMPT_SUFFIX
    return ""


def prompt_suffix(section: Any) -> str:
    """The section's `prompt_suffix`, or the data set's default when it is None or absent."""
    value = section.get("prompt_suffix", None)
    return default_prompt_suffix(section.name) if value is None else str(value)


def _describe_skips(loaded: LoadedDataset) -> str:
    """'3 skipped (2 outside the data set root, 1 tied vote)', or '' when nothing was skipped."""
    if not loaded.skipped:
        return ""
    kinds = ", ".join(f"{count} {kind}" for kind, count in skip_counts([s.reason for s in loaded.skipped]).items())
    return f"{len(loaded.skipped)} skipped ({kinds})"


def load_dataset(section: Any) -> tuple[str, LoadedDataset]:
    """(name for the tables, samples and skipped items) of a config's dataset section: questions with
    the section's prompt suffix, the first `max_samples` samples when it is set.

    Raises DatasetError when the data set yields no sample (naming where it looked and what it skipped).
    """
    if section.name not in DATASETS:
        raise ValueError(f"config.dataset.name must be one of {tuple(DATASETS)}, got {section.name!r}")
    name, loaded = DATASETS[section.name](section)
    suffix = prompt_suffix(section)
    samples = [sample.with_prompt_suffix(suffix) for sample in loaded.samples]
    if section.max_samples:
        samples = samples[: section.max_samples]
    loaded = LoadedDataset(samples=samples, skipped=loaded.skipped)
    skips = _describe_skips(loaded)
    if not loaded.samples:
        where = f" under {section.root}" if section.get("root", "") else ""
        raise DatasetError(f"data set {name}: 0 samples{where}" + (f"; {skips}, see the log" if skips else ""))
    log = logger.warning if skips else logger.info
    log("data set %s: %d samples%s", name, len(loaded.samples), f", {skips}" if skips else "")
    return name, loaded
