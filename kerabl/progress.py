"""One progress bar for every long loop of kerabl (rich), switched off by `enabled=False`."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator


@contextmanager
def progress_bar(description: str, total: int, *, enabled: bool = True, done: int = 0,
                 transient: bool = False) -> Iterator[Callable[[int], None]]:
    """A bar over `total` steps, `done` of them already done; yields `advance(n)`.

    Example:
        with progress_bar("H study: class x layer", 70) as advance:
            for pair in pairs:
                ...
                advance(1)
    """
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    from rich.console import Console

    if transient and not Console(stderr=False).is_terminal:
        enabled = False   # a transient bar leaves a blank line where it cannot be erased
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TimeRemainingColumn(), disable=not enabled,
                  transient=transient) as bar:
        task = bar.add_task(description, total=total, completed=done)
        yield lambda n: bar.advance(task, n)
