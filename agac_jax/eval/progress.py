"""A progress bar with an ETA on stderr; absl log lines instead when stderr is not a terminal."""

from __future__ import annotations

import sys
import time
from typing import Callable, TextIO

from absl import logging

BAR_WIDTH = 30


def format_duration(seconds: float) -> str:
    """'1:02:03', '4:05' or '0:07' for a number of seconds; '?' when unknown or negative."""
    if not seconds >= 0 or seconds == float("inf"):
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def estimate_remaining(done: int, total: int, elapsed: float) -> float:
    """Seconds left at the average rate so far; inf before the first item."""
    if done <= 0:
        return float("inf")
    return elapsed / done * max(total - done, 0)


def render_line(description: str, done: int, total: int, elapsed: float) -> str:
    """'desc [#####.....] 12/40  30% elapsed 0:42 ETA 1:38'."""
    fraction = done / total if total else 1.0
    filled = int(round(BAR_WIDTH * min(fraction, 1.0)))
    bar = "#" * filled + "." * (BAR_WIDTH - filled)
    eta = format_duration(estimate_remaining(done, total, elapsed))
    return f"{description} [{bar}] {done}/{total} {100 * fraction:3.0f}% elapsed {format_duration(elapsed)} ETA {eta}"


class Progress:
    """Counts finished items out of `total`: a redrawn bar on a TTY, else a log line every `log_every_s`."""

    def __init__(self, total: int, description: str = "sweep", *, stream: TextIO | None = None,
                 log_every_s: float = 30.0, clock: Callable[[], float] = time.monotonic):
        if total < 0:
            raise ValueError(f"total must be >= 0, got {total}")
        self.total = total
        self.description = description
        self.stream = sys.stderr if stream is None else stream
        self.log_every_s = log_every_s
        self.done = 0
        self._clock = clock
        self._start = clock()
        self._last_log = self._start
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())

    @property
    def elapsed(self) -> float:
        return self._clock() - self._start

    def line(self) -> str:
        return render_line(self.description, self.done, self.total, self.elapsed)

    def update(self, count: int = 1) -> None:
        """Marks `count` more items finished and redraws (or logs, at most every log_every_s)."""
        self.done += count
        if self._tty:
            self.stream.write("\r" + self.line())
            self.stream.flush()
        elif self._clock() - self._last_log >= self.log_every_s or self.done >= self.total:
            self._last_log = self._clock()
            logging.info("%s", self.line())

    def close(self) -> None:
        if self._tty:
            self.stream.write("\n")
            self.stream.flush()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
