"""The sweep's activations in shared memory, so that the probe workers read them where they lie.

- `SharedBlock.create(nbytes)`: a block of shared memory for the sweep, or None where the
  shared-memory folder has no room for it (`room_for`). `apply(shape, fn)` calls `fn(array)` on
  a float32 array of `shape` at the block's start; `columns(shape, units)` and `whole(shape)` are
  the small picklable references a worker task carries; `unlink()` frees the block.
- `resolve(x, fn=None)`: in a worker, a reference's columns (a copy) or `fn(whole array)`; a plain
  array passes through, so the same task runs in this process or in a worker.

Why: the H sweep sends every cell's activations to its probe workers; sent by pipe, each task
was pickled, and the parent's copying competed with the workers for the cores (the
documentation's Performance page, Memory, has the numbers). Through shared memory a task is a
name and a column index, and each worker gathers its own cell's columns.

One block serves the whole sweep, every pair's activations read into its start (its pages are
faulted in once, not for every pair). For the same reason each worker keeps the block mapped between its tasks
(`_attach`: this process's one open mapping), so its pages are mapped once per worker, not once
per task.

No numpy view of a block outlives the call it was passed to (`apply`, `resolve`): a mapping can
only be closed when no view of it is left.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from multiprocessing import shared_memory
from typing import Callable

import numpy as np

SHM_FOLDER = "/dev/shm"     # where Linux keeps POSIX shared memory (a tmpfs of limited size)
HEADROOM = 1.25             # a block is made only where this many times its size is free
DTYPE = np.dtype(np.float32)


def room_for(nbytes: int, folder: str = SHM_FOLDER) -> bool:
    """Whether the shared-memory folder has `HEADROOM` x `nbytes` free (a block larger than the
    room left in a tmpfs fails with SIGBUS on its first write, not with an error).

    Example:
        room_for(639 * 2 ** 20)   # False where /dev/shm is Docker's default 64 MB
    """
    if not os.path.isdir(folder):
        return False
    return shutil.disk_usage(folder).free >= HEADROOM * nbytes


@dataclass(frozen=True)
class _Ref:
    """A block's name, the array's shape at its start, and the columns a task needs (None: the
    whole array)."""

    name: str
    shape: tuple[int, ...]
    columns: np.ndarray | None = None


class SharedBlock:
    """A block of shared memory made by the sweep, holding one pair's float32 activations at a
    time, read by its probe workers.

    Example:
        block = SharedBlock.create(550 * 290400 * 4)
        if block is not None:
            try:
                block.apply((550, 290400), lambda a: cache.read("conv_1", rows=rows, out=a))
                pool.submit(cell_probe_scores, (block.columns((550, 290400), units), y, config, 0))
            finally:
                block.unlink()
    """

    def __init__(self, memory: shared_memory.SharedMemory):
        self._memory = memory

    @classmethod
    def create(cls, nbytes: int) -> "SharedBlock | None":
        """A new block of `nbytes`, or None where the shared-memory folder has no room."""
        if not room_for(nbytes):
            return None
        return cls(shared_memory.SharedMemory(create=True, size=max(int(nbytes), 1)))

    @property
    def nbytes(self) -> int:
        return self._memory.size

    def apply(self, shape: tuple[int, ...], fn: Callable[[np.ndarray], object]):
        """`fn(array)` on a writable float32 array of `shape` at the block's start; `fn` must
        keep no view of it."""
        return fn(_view(self._memory, self._ref(shape)))

    def columns(self, shape: tuple[int, ...], units: np.ndarray) -> _Ref:
        """A task's reference to columns `units` of the (rows, units) array of `shape`."""
        return _Ref(self._memory.name, tuple(shape), np.asarray(units, dtype=np.int64))

    def whole(self, shape: tuple[int, ...]) -> _Ref:
        """A task's reference to the whole array of `shape` (`resolve(ref, fn)` calls fn on it)."""
        return self._ref(shape)

    def _ref(self, shape: tuple[int, ...]) -> _Ref:
        shape = tuple(int(d) for d in shape)
        if int(np.prod(shape)) * DTYPE.itemsize > self.nbytes:
            raise ValueError(f"an array of shape {shape} does not fit a {self.nbytes}-byte block")
        return _Ref(self._memory.name, shape)

    def unlink(self, strict: bool = True) -> None:
        """Remove the block's name and close this process's mapping (workers keep theirs until
        they exit). With `strict=False` (on the way out of an error, whose traceback may still
        hold a view) a mapping that cannot be closed yet is left to close with its last view."""
        self._memory.unlink()
        try:
            self._memory.close()
        except BufferError:
            if strict:
                raise


def _view(memory: shared_memory.SharedMemory, ref: _Ref) -> np.ndarray:
    """The array at the block's start. `np.frombuffer` holds the buffer, so that closing the
    mapping under a live view fails (BufferError) instead of leaving the view dangling (a
    `np.ndarray(buffer=...)` view does not hold it)."""
    return np.frombuffer(memory.buf, dtype=DTYPE, count=int(np.prod(ref.shape))).reshape(ref.shape)


# This process's open mapping of a sweep's block, by name: at most one (a worker serves one
# sweep at a time). Kept between tasks so that the worker maps the block's pages once.
_ATTACHED: dict[str, shared_memory.SharedMemory] = {}


def _attach(name: str) -> shared_memory.SharedMemory:
    memory = _ATTACHED.get(name)
    if memory is None:
        for old in _ATTACHED.values():
            try:
                old.close()
            except BufferError:     # a view still alive (an error's traceback): left to the GC
                pass
        _ATTACHED.clear()
        memory = _ATTACHED[name] = shared_memory.SharedMemory(name=name)
    return memory


def resolve(x, fn: Callable[[np.ndarray], object] | None = None):
    """A task's activations: a plain array as it is, a column reference as a copy of those
    columns, a whole-array reference passed to `fn` (its view lives only during the call). With
    `fn`, the array (plain or columns) goes through `fn` and its value is returned.

    Example:
        x = resolve(task_x)                                   # (rows, cell units) ndarray
        summary = resolve(task_acts, lambda a: fold_probe_summary(a, n_target))
    """
    if isinstance(x, _Ref):
        memory = _attach(x.name)
        if x.columns is None:
            return fn(_view(memory, x)) if fn is not None else _view(memory, x).copy()
        x = _view(memory, x)[:, x.columns]        # fancy indexing: a copy
    return x if fn is None else fn(x)
