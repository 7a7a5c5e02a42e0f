"""The question templates both generated benchmarks ask, their vocabulary, and the balanced schedule
that picks what each clip is asked.

Balance: every kind of question draws (class, answer) pairs from its own `BalancedSchedule`, shuffled
blocks that hold every pair once, so each class is asked "yes" and "no" equally often; a pair the
clip being planned cannot satisfy waits for a later clip instead of being dropped, so only the
pairs still waiting at the end of a split unbalance it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

from agac_jax.data.common import NO, YES
from agac_jax.data.synthetic_audio.events import EVENT_CLASSES

EXISTENCE = "existence"
ORDER = "order"


def existence_question(label: str) -> str:
    """'is there a {label} ?'"""
    return f"is there a {label} ?"


def order_question(first: str, second: str) -> str:
    """'does the {first} come before the {second} ?'"""
    return f"does the {first} come before the {second} ?"


def vocabulary(questions: Iterable[str]) -> list[str]:
    """The sorted words of `questions` (split at spaces) and the two answers."""
    words = {word for question in questions for word in question.split(" ")}
    return sorted(words | {YES, NO})


class BalancedSchedule:
    """Hands out (class, answer) pairs from shuffled blocks that hold every pair of EVENT_CLASSES and
    (yes, no) once.

    `take(allowed)` returns the earliest pending pair that `allowed(label, answer)` accepts, so a
    refused pair waits for a later clip instead of being dropped.
    """

    def __init__(self, rng: np.random.Generator) -> None:
        self._rng = rng
        self._pending: list[tuple[str, str]] = []

    def take(self, allowed: Callable[[str, str], bool]) -> tuple[str, str]:
        for _ in range(64):
            for index, (label, answer) in enumerate(self._pending):
                if allowed(label, answer):
                    return self._pending.pop(index)
            block = [(label, answer) for label in EVENT_CLASSES for answer in (YES, NO)]
            self._pending.extend(block[i] for i in self._rng.permutation(len(block)))
        raise RuntimeError("no (class, answer) pair is allowed")  # a new block holds every pair
