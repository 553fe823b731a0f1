"""Disk space: what a run will write, whether it fits, and one line when the disk fills anyway.

- `free_bytes(path)`: the space free to this user on the file system that holds `path` (or would
  hold it: the nearest existing folder above it counts).
- `mount_point(path)`: that file system's mount point, the DEVICE of the one-line messages.
- `check_free_space(path, need, what, advice)`: stop before writing when `need` bytes do not fit.
- `check_room(path, nbytes)`: before each HDF5 write of a long run, stop with `no_space_line`
  when the write and `WRITE_MARGIN_BYTES` do not fit (`NoSpaceError`).
- `no_space_file(err)`: the file a full disk stopped writing when `err` (or an error it came from)
  is ENOSPC, however h5py worded it; None for other errors. `no_space_line(file)`: the one line.
- `chunked_bytes(rows, widths, itemsize, chunk_rows, chunk_cols)`: an HDF5 file of chunked
  2-D datasets, as written (whole chunks, edges padded). `human_bytes(n)`: "1.64 GB".

Why not wait for the disk to fill: HDF5 keeps unwritten chunks in memory and retries them each
time an object of the file is released, so a full disk mid-write gives hundreds of lines of
tracebacks, and flushing or closing such a file can crash the interpreter (a segmentation
fault). So a run checks the whole activation cache before it writes anything, and each write of
a long run (a batch of activations, a pair's or a layer's results) first checks that it fits with
`WRITE_MARGIN_BYTES` to spare: a disk that another process fills stops the run with one line,
its files closed cleanly, and the next run resumes them. Where HDF5 meets a full disk anyway
(a write larger than the margin), the command line prints `no_space_line` and ends the process
at once (`kerabl.cli`), and the next run resumes or discards each `.partial`, saying which.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from pathlib import Path

from kerabl.errors import KerablError

_ENOSPC_TEXT = ("No space left on device", f"errno = {errno.ENOSPC},")
_FILENAME = re.compile(r"filename = '([^']*)'")


# HDF5's bytes beside the data: per chunk its Fletcher-32 checksum and index entry, per file
# the small datasets and attributes, per row its label and row-list entries (fitted on the demo's
# activation caches, which the estimate exceeds by 0.1-10 %)
CHUNK_EXTRA_BYTES = 4 + 48
FILE_EXTRA_BYTES = 64 << 10
ROW_EXTRA_BYTES = 64


def chunked_bytes(rows: int, widths, itemsize: int, chunk_rows: int, chunk_cols: int) -> int:
    """Bytes of an HDF5 file holding one (rows, width) dataset per width, chunked at most
    `chunk_rows` x `chunk_cols`: HDF5 stores whole chunks, so the last row and column blocks
    count whole.

    Example:
        chunked_bytes(100, [224 * 224 * 64], 4, 32, 16384)   # 1644279872: 128 rows stored
    """
    block = max(1, min(chunk_rows, rows))
    total = FILE_EXTRA_BYTES + ROW_EXTRA_BYTES * rows
    for cols in widths:
        width = max(1, min(chunk_cols, cols))
        chunks = -(-rows // block) * -(-cols // width)
        total += chunks * (block * width * itemsize + CHUNK_EXTRA_BYTES)
    return int(total)


def human_bytes(n: float) -> str:
    """A byte count in decimal units, three significant digits.

    Example:
        human_bytes(1_638_400_000)   # '1.64 GB'
    """
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def _existing(path: Path) -> Path:
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def free_bytes(path: str | os.PathLike) -> int:
    """Bytes free to this user on the file system of `path` (or of its nearest existing folder).

    Example:
        free_bytes("kerabl-out/activations.h5")   # e.g. 41238462464
    """
    return shutil.disk_usage(_existing(Path(path))).free


def mount_point(path: str | os.PathLike) -> Path:
    """The mount point of the file system that holds `path`.

    Example:
        mount_point("/scratch/me/out/activations.h5")   # Path('/scratch'), if mounted there
    """
    path = _existing(Path(path)).resolve()
    device = path.stat().st_dev
    while path != path.parent and path.parent.stat().st_dev == device:
        path = path.parent
    return path


def check_free_space(path: str | os.PathLike, need: int, what: str, advice: str) -> None:
    """Stop with one line when `need` bytes for `what` at `path` exceed the free space there.

    Example:
        check_free_space("out/activations.h5", 22e9, "the activation cache",
                         "free space or choose another --out")
        # KerablError: the activation cache (22 GB) does not fit in the 4.1 GB free on /scratch ...
    """
    free = free_bytes(path)
    if need > free:
        raise KerablError(f"{what} ({human_bytes(need)}) does not fit in the {human_bytes(free)} "
                          f"free on {mount_point(path)}: {advice}")


def available_memory() -> int | None:
    """Bytes of memory a new allocation can have without swapping (Linux's MemAvailable, which
    counts the reclaimable page cache); None where /proc/meminfo does not say.

    Example:
        available_memory()   # e.g. 15032385536
    """
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


# free space a write must leave: HDF5 writes metadata beside the data (and a flush of its cache
# on a full disk can crash the process)
WRITE_MARGIN_BYTES = 1 << 20


class NoSpaceError(KerablError):
    """The disk cannot take the next write: `no_space_line`, raised before HDF5 writes.

    Example:
        raise NoSpaceError(no_space_line("out/h_results.h5.partial"))
    """


def check_room(path: str | os.PathLike, nbytes: int = 0) -> None:
    """Stop with `NoSpaceError` unless `nbytes` plus `WRITE_MARGIN_BYTES` are free at `path`.

    Example:
        check_room("out/h_results.h5.partial", arrays_nbytes)   # before writing a pair
    """
    if free_bytes(path) < nbytes + WRITE_MARGIN_BYTES:
        raise NoSpaceError(no_space_line(str(path)))


def _chain(err: BaseException):
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def no_space_file(err: BaseException) -> str | None:
    """The file being written when the disk filled, if `err` or an error in its chain is ENOSPC
    (an OSError's errno, or h5py's "errno = 28" text); "" when the file is not named; None when
    the error is not a full disk.

    Example:
        no_space_file(OSError(28, "No space left on device", "out/x.csv"))   # 'out/x.csv'
        no_space_file(ValueError("bad"))                                      # None
    """
    for error in _chain(err):
        text = str(error)
        if getattr(error, "errno", None) == errno.ENOSPC or any(t in text for t in _ENOSPC_TEXT):
            found = _FILENAME.search(text)
            return getattr(error, "filename", None) or (found.group(1) if found else "")
    return None


def no_space_line(file: str) -> str:
    """The one line a full disk gets: the device, the file, what to do.

    Example:
        no_space_line("/scratch/out/activations.h5.partial")
        # 'no space left on /scratch writing /scratch/out/activations.h5.partial: free space
        #  and rerun (finished work is kept and resumed)'
    """
    where = f"{mount_point(file)} writing {file}" if file else "the output device"
    return f"no space left on {where}: free space and rerun (finished work is kept and resumed)"
