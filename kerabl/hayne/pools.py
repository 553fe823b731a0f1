"""Where the probes run: worker processes, or threads of this process when it cannot start them.

- `worker_count(workers)`: the workers to run (default one per CPU core).
- `probe_pool(workers)`: None for one worker; else worker processes (`worker_pool`) when this
  process can spawn them safely (`spawn_is_safe`), and threads (`thread_pool`) when it cannot: a
  plain script without `if __name__ == "__main__":`, whose every spawned process would run the
  script again. The compiled probe solver releases the GIL, so the threads run side by side;
  BLAS runs on one thread in either, and the results are the same numbers.
- `bounded_map(pool, fn, tasks, in_flight)`: `map` on a pool with few tasks built at once.

Example:
    with probe_pool(4) as pool:
        scores = list(bounded_map(pool, cell_probe_scores, tasks, in_flight=8))
"""

from __future__ import annotations

import ast
import collections
import contextlib
import multiprocessing
import os
import sys
from concurrent.futures import ThreadPoolExecutor


def worker_count(workers: int | None) -> int:
    """The probe workers to run: `workers` as given, else one per CPU core.

    Example:
        worker_count(None)     # os.cpu_count() (1 where it is unknown)
    """
    return workers or os.cpu_count() or 1


def probe_pool(workers: int, kind: str | None = None):
    """The probes' workers: None for workers <= 1 (they run in this thread); else `kind`
    "processes" (`worker_pool`) or "threads" (`thread_pool`), by default processes where
    `spawn_is_safe()` and threads where not (`pool_note` says so).

    Example:
        with probe_pool(4) as pool:       # None (no processes) for workers <= 1
            results = list(bounded_map(pool, cell_probe_scores, tasks))
    """
    if workers <= 1:
        return contextlib.nullcontext(None)
    kind = kind or ("processes" if spawn_is_safe() else "threads")
    if kind not in ("processes", "threads"):
        raise ValueError(f"pool kind must be 'processes' or 'threads', got {kind!r}")
    return worker_pool(workers) if kind == "processes" else thread_pool(workers)


def pool_note(workers: int) -> str | None:
    """The line a run prints when its `workers` probe workers will be threads, not processes.

    Example:
        note = pool_note(4)   # None in a notebook or under the __main__ guard
    """
    if workers <= 1 or spawn_is_safe():
        return None
    return (f"probes: {workers} threads of this process, not worker processes: a script whose "
            'study call is not under `if __name__ == "__main__":` would run again in each '
            "spawned process (the numbers are the same)")


def spawn_is_safe() -> bool:
    """Whether a spawned process can start without running this program's work again.

    A spawned process first imports the main module as `__mp_main__`: an interactive session or
    a notebook (no file), `python -m package` (`package.__main__`, which multiprocessing skips)
    and a script whose call stands inside `if __name__ == "__main__":` are safe; a plain script
    that calls the study at its top level would call it again in every worker.

    Example:
        spawn_is_safe()   # True in a notebook, False in a script without the guard
    """
    if multiprocessing.parent_process() is not None:
        return True     # a spawned process: its main module was imported once already, safely
    main = sys.modules.get("__main__")
    name = getattr(getattr(main, "__spec__", None), "name", None)
    if main is None or name == "__main__" or (name or "").endswith(".__main__"):
        return True
    path = getattr(main, "__file__", None)
    if path is None:
        return True
    frame = sys._getframe(1)
    while frame is not None and not (frame.f_globals is vars(main)
                                     and frame.f_code.co_name == "<module>"):
        frame = frame.f_back
    return frame is not None and _inside_main_guard(path, frame.f_lineno)


def _inside_main_guard(path: str, line: int) -> bool:
    """Whether line `line` of the script at `path` lies in a top-level
    `if __name__ == "__main__":` block."""
    try:
        tree = ast.parse(open(path, encoding="utf-8").read())
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return False
    for node in tree.body:
        if isinstance(node, ast.If) and _is_main_test(node.test) and node.body:
            if node.body[0].lineno <= line <= node.body[-1].end_lineno:
                return True
    return False


def _is_main_test(test) -> bool:
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1
            and isinstance(test.ops[0], ast.Eq)):
        return False
    sides = [test.left, test.comparators[0]]
    return (any(isinstance(s, ast.Name) and s.id == "__name__" for s in sides)
            and any(isinstance(s, ast.Constant) and s.value == "__main__" for s in sides))


@contextlib.contextmanager
def thread_pool(workers: int):
    """`workers` threads of this process, with BLAS and OpenMP on one thread while the pool
    lives (as in each worker process: one cell per core).

    Example:
        with thread_pool(4) as pool:
            future = pool.submit(fn, task)

    When the block ends by an exception, the pending tasks are cancelled.
    """
    from kerabl.hayne.logistic import single_threaded

    with single_threaded():
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kerabl-probe")
        try:
            yield pool
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown(wait=True)


def worker_pool(workers: int):
    """A pool of `workers` spawned processes (they import only what their tasks import: the
    probes numpy and scikit-learn, the figures matplotlib).

    Example:
        with worker_pool(1) as pool:      # one process beside this one
            future = pool.submit(fn, task)

    Each worker ignores Ctrl-C (its parent stops the run) and exits within a second of its
    parent's end, whatever ended it (`kill -9` included); when the block ends by an exception
    the pending tasks are cancelled and the workers stopped at once.
    """
    from concurrent.futures import ProcessPoolExecutor

    return _stopping(ProcessPoolExecutor(max_workers=workers,
                                         mp_context=multiprocessing.get_context("spawn"),
                                         initializer=_worker_start, initargs=(os.getpid(),)))


@contextlib.contextmanager
def _stopping(pool):
    try:
        yield pool
    except BaseException:
        processes = list((getattr(pool, "_processes", None) or {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            process.terminate()
        for process in processes:
            process.join(5)
        raise
    pool.shutdown(wait=True)


def _worker_start(parent: int) -> None:
    """In a worker: ignore SIGINT, and exit when the parent process is gone."""
    import signal
    import threading
    import time

    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def watch():
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="kerabl-parent-watch").start()


def bounded_map(pool, fn, tasks, in_flight: int = 4):
    """`map(fn, tasks)` in order, on `pool` when given, with at most `in_flight` tasks built and
    sent at once, so the cells of a large layer are never all copied together.

    Example:
        with probe_pool(4) as pool:
            scores = list(bounded_map(pool, cell_probe_scores, tasks, in_flight=8))
    """
    if pool is None:
        yield from map(fn, tasks)
        return
    pending: collections.deque = collections.deque()
    for task in tasks:
        pending.append(pool.submit(fn, task))
        if len(pending) >= in_flight:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()
