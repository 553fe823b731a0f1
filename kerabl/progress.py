"""One progress display for every long loop of kerabl, switched off by `enabled=False`.

On a terminal it is a rich bar; where stdout is not a terminal (a SLURM log, `nohup`, `> log`)
it is plain lines, flushed as they are written: `H study: class x layer 12/70 (17 %), elapsed
0:14:05, about 1:08:04 left`. A loop whose steps are long (a study's pairs and layers) writes a
line per step (`every=0`); one of many short steps (images, units) a line every `LOG_EVERY_S`
seconds and one at its end.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import Callable, Iterator, TextIO

LOG_EVERY_S = 30.0    # seconds between two plain lines of a loop of short steps


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def progress_line(description: str, done: int, total: int, elapsed: float,
                  done_here: int) -> str:
    """The plain line of a loop `done` of `total` steps in, `elapsed` seconds after it started
    with `done - done_here` steps already done (the estimate uses this run's pace only).

    Example:
        progress_line("H study: class x layer", 12, 70, 845.0, 12)
        # 'H study: class x layer 12/70 (17 %), elapsed 0:14:05, about 1:08:04 left'
    """
    line = f"{description} {done}/{total} ({100 * done // max(total, 1)} %), " \
           f"elapsed {_clock(elapsed)}"
    if done >= total:
        return line + ", done"
    if done_here > 0:
        return line + f", about {_clock(elapsed / done_here * (total - done))} left"
    return line


class _Lines:
    """`advance(n)` writing a `progress_line` to `stream` at most every `every` seconds."""

    def __init__(self, description: str, total: int, done: int, every: float, final: bool,
                 stream: TextIO):
        self.description, self.total, self.done, self.every = description, total, done, every
        self.final, self.stream = final, stream
        self.start = self.last = time.monotonic()
        self.first = done

    def __call__(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= self.every or (self.final and self.done >= self.total):
            self.last = now
            self.stream.write(progress_line(self.description, self.done, self.total,
                                            now - self.start, self.done - self.first) + "\n")
            self.stream.flush()


@contextmanager
def progress_bar(description: str, total: int, *, enabled: bool = True, done: int = 0,
                 transient: bool = False, every: float = LOG_EVERY_S
                 ) -> Iterator[Callable[[int], None]]:
    """A bar over `total` steps, `done` of them already done; yields `advance(n)`.

    Example:
        with progress_bar("H study: class x layer", 70, every=0) as advance:
            for pair in pairs:
                ...
                advance(1)     # off a terminal: one line per pair on stdout

    Where stdout is no terminal, `advance` writes a plain line instead (`progress_line`) when
    `every` seconds have passed since the last one, and one when the loop ends unless the bar is
    `transient` (an inner loop, whose end its outer loop's next line reports).
    """
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    if enabled and not Console(stderr=False).is_terminal:
        yield _Lines(description, total, done, every, not transient, sys.stdout)
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TimeRemainingColumn(), disable=not enabled,
                  transient=transient) as bar:
        task = bar.add_task(description, total=total, completed=done)
        yield lambda n: bar.advance(task, n)
