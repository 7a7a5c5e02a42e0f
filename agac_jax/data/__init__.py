"""The data sets, by the name a config gives them (`config.dataset.name`).

`DATASETS[name](section)` loads the config's dataset section and returns (the name the tables use,
the samples and the items skipped). Adding a data set is a loader yielding `common.AudioQASample`
(with evidence intervals when known) and an entry here; loaders are imported when first used.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

from agac_jax.data.common import LoadedDataset


def _generated(module: str, table: str) -> Callable[[Any], tuple[str, LoadedDataset]]:
    """The loader of a generated benchmark (`agac_jax.data.{module}`: synthetic, scenes): the split
    written at `section.root`, else `generate_split(split, num_clips, generation_seed)` in memory;
    named f"{table}-{split}" in the tables."""

    def load(section: Any) -> tuple[str, LoadedDataset]:
        benchmark = importlib.import_module(f"agac_jax.data.{module}")
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
    from agac_jax.data.avhbench import load_avhbench, write_generated

    root = section.root
    if not root and section.get("generated", 0):  # a few generated videos (configs/avhbench_pandagpt.py:local)
        import tempfile
        from pathlib import Path

        root = write_generated(Path(tempfile.gettempdir()) / f"agac_avhbench_generated_{section.generated}",
                               section.generated)
    return "avhbench", load_avhbench(root, section.task)


DATASETS: dict[str, Callable[[Any], tuple[str, LoadedDataset]]] = {
    # generated in memory or read from a written split (evidence known)
    "synthetic": _generated("synthetic", "synthetic"),
    # the harder scenes: quiet evidence, loud distractors, overlaps, counting (evidence known)
    "synthetic_scenes": _generated("scenes", "synthetic_scenes"),
    "clotho_aqa": _clotho_aqa,  # ClothoAQA's yes/no subset, majority label
    "avhbench": _avhbench,  # AVHBench's soundtracks, one task
}


def load_dataset(section: Any) -> tuple[str, LoadedDataset]:
    """(name for the tables, samples and skipped items) of a config's dataset section; the first
    `max_samples` samples when it is set."""
    if section.name not in DATASETS:
        raise ValueError(f"config.dataset.name must be one of {tuple(DATASETS)}, got {section.name!r}")
    name, loaded = DATASETS[section.name](section)
    if section.max_samples:
        loaded = LoadedDataset(samples=loaded.samples[: section.max_samples], skipped=loaded.skipped)
    return name, loaded
