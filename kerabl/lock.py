"""One run per output folder: an exclusive lock file that says who holds it.

- `output_lock(folder, command)`: a context holding `folder/.kerabl.lock` (created, with the
  folder, when missing); a second run on the same folder stops with one line naming the holder.
  A shard of a sharded study holds its own lock (`.kerabl.shard-I-of-N.lock`) instead.
  The lock is an `flock`: the system releases it when its process ends, even by `kill -9`.
  The lock file is removed when the run ends (finished, failed or interrupted; only a killed
  run leaves it, unlocked); a run that wrote nothing also removes a folder it created.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from pathlib import Path
from typing import Iterator

from kerabl.errors import KerablError

LOCK_NAME = ".kerabl.lock"


@contextlib.contextmanager
def output_lock(folder: str | os.PathLike, command: str,
                shard: tuple[int, int] | None = None) -> Iterator[Path]:
    """Hold the output folder's lock for the block (with `shard` (i, n): that shard's own lock,
    so the shards of one study run side by side in one folder, each at most once).

    Example:
        with output_lock("kerabl-out", "kerabl study"):
            ...   # another `kerabl study --out kerabl-out` now stops with exit status 2
        with output_lock("kerabl-out", "kerabl study", shard=(2, 8)):
            ...   # shard 3/8 may run beside it; another 2/8 stops
    """
    import fcntl

    folder = Path(folder)
    name = LOCK_NAME if shard is None else f".kerabl.shard-{shard[0]}-of-{shard[1]}.lock"
    created = not folder.exists()
    if folder.exists() and not folder.is_dir():
        raise KerablError(f"--out {folder} is a file: name a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / name, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise KerablError(f"cannot write in {folder} ({err.strerror}): choose a writable --out") \
            from None
    held = False
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 512, 0).decode(errors="replace").strip() or "another process"
                raise KerablError(f"{folder} is in use by {holder}: wait for it to finish or "
                                  "choose another --out") from None
            if _same_file(fd, folder / name):
                break
            # the holder removed the file between our open and our flock: lock the new one
            os.close(fd)
            fd = os.open(folder / name, os.O_RDWR | os.O_CREAT, 0o644)
        held = True
        os.ftruncate(fd, 0)
        os.pwrite(fd, (f"{command} (pid {os.getpid()} on {socket.gethostname()}, started "
                       f"{time.strftime('%Y-%m-%d %H:%M:%S')})\n").encode(), 0)
        yield folder
    finally:
        with contextlib.suppress(OSError):
            if held:
                (folder / name).unlink()       # removed while held: no other run holds it
                if created and not any(folder.iterdir()):   # nothing written
                    folder.rmdir()
        os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    """Whether the open file `fd` is still the file at `path` (not removed or replaced)."""
    try:
        here, there = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)
