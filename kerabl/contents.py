"""What an image set holds, as digests: the fingerprint part that covers image contents.

- `file_table(imageset, known)`: one `[name, size, mtime_ns, sha256]` row per image file; a file
  whose size and modification time match its row in `known` keeps that row's hash, any other
  file is hashed (so a rewrite under the same name is always seen).
- `contents_digest(table)`: one digest of every file's hash, in study order.
- `changed_files(old, new)`: the names whose contents differ, were added or removed.
- `image_files(imageset, cache_path)`: the table, reusing an activation cache's, and a note
  naming the changed files.

In-memory image sets (the digits) have a single row hashing their array (`array_table`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Sequence

import numpy as np

from kerabl.errors import KerablError
from kerabl.images import image_problem


_BLOCK = 1 << 20


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_BLOCK), b""):
            digest.update(chunk)
    return digest.hexdigest()


SHOWN = 20  # unreadable images named one by one at most


def file_table(imageset, known: Sequence[Sequence] | None = None,
               preprocess: str | None = None) -> list[list]:
    """`[name, size, mtime_ns, sha256]` of every image, reusing hashes of unchanged files.

    With `preprocess`, every file hashed afresh (new or changed since `known`) is also decoded as
    that recipe reads it, so a file that cannot be read is found before anything is written.

    Example:
        table = file_table(synset_imageset("val"))
        again = file_table(synset_imageset("val"), known=table)   # hashes only changed files

    Raises:
        KerablError: one line naming every image that cannot be read or decoded (a dangling
            link, a missing or truncated file, a file that is not an image), up to `SHOWN`.
    """
    if getattr(imageset, "paths", None) is None:
        return array_table(imageset.images)
    previous = {row[0]: row for row in (known or [])}
    table, problems = [], []
    for path in imageset.paths:
        name = str(path)
        try:
            stat = path.stat()
            row = previous.get(name)
            if row is None or row[1] != stat.st_size or row[2] != stat.st_mtime_ns:
                row = [name, int(stat.st_size), int(stat.st_mtime_ns), _sha256(path)]
                problem = image_problem(path, preprocess) if preprocess is not None else None
                if problem:
                    problems.append(f"{path} ({problem})")
        except OSError as err:
            reason = image_problem(path) if path.is_symlink() else err.strerror
            problems.append(f"{path} ({reason})")
            continue
        table.append(list(row))
    if problems:
        more = f", and {len(problems) - SHOWN} more" if len(problems) > SHOWN else ""
        raise KerablError(f"{len(problems)} image{'s' if len(problems) != 1 else ''} cannot be "
                          f"read: {'; '.join(problems[:SHOWN])}{more}: replace or remove "
                          f"{'them' if len(problems) != 1 else 'it'} and rerun")
    return table


def array_table(images) -> list[list]:
    """The one-row table of in-memory images (their array hashed).

    Example:
        array_table(np.zeros((2, 8, 8, 3), "float32"))   # [["<in-memory images>", 1536, 0, "..."]]
    """
    array = np.ascontiguousarray(images)
    return [["<in-memory images>", int(array.nbytes), 0, hashlib.sha256(array.tobytes()).hexdigest()]]


def contents_digest(table: Sequence[Sequence]) -> str:
    """One hex digest of the file hashes in order (names excluded: the data set name has them).

    Example:
        contents_digest([["a.JPEG", 10, 0, "ab12"]])   # 'e3b0...'-like, 16 hex digits
    """
    digest = hashlib.sha256("\n".join(row[3] for row in table).encode())
    return digest.hexdigest()[:16]


def changed_files(old: Sequence[Sequence] | None, new: Sequence[Sequence]) -> list[str]:
    """File names (base names) whose hash differs between two tables, or in one only.

    Example:
        changed_files([["a", 1, 0, "x"]], [["a", 1, 5, "y"]])   # ['a']
    """
    before = {row[0]: row[3] for row in (old or [])}
    after = {row[0]: row[3] for row in new}
    names = [n for n in after if before.get(n) != after[n]] + [n for n in before if n not in after]
    return [Path(n).name for n in names]


def describe_changes(names: Sequence[str], shown: int = 5) -> str:
    """'3 images changed (a.JPEG, b.JPEG, c.JPEG)', at most `shown` names listed.

    Example:
        describe_changes(["a.JPEG"])   # '1 image changed (a.JPEG)'
    """
    if not names:
        return "image contents changed"
    listed = ", ".join(names[:shown]) + (f", ... {len(names) - shown} more"
                                         if len(names) > shown else "")
    return f"{len(names)} image{'s' if len(names) != 1 else ''} changed ({listed})"


def stored_files(path: Path) -> list | None:
    """The `/files` table of a cache or `.partial` (None when absent or unreadable).

    Example:
        stored_files(Path("out/activations.h5"))   # [[name, size, mtime_ns, sha256], ...]
    """
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return json.loads(f["files"][()]) if "files" in f else None
    except (OSError, KeyError, ValueError):
        return None


def image_files(imageset, cache_path, preprocess: str | None = None,
                log=None) -> tuple[list, str]:
    """The image set's file table (hashing only files changed since the activation cache at
    `cache_path`, when there is one) and a note naming the files that changed; with
    `preprocess`, the changed files are decoded too (`file_table`); with `log`, the files the
    image set skipped (not images by their suffix) are said there.

    Example:
        files, note = image_files(imageset, "out/activations.h5")   # note: '2 images changed (...)'
    """
    skipped = getattr(imageset, "skipped", None)
    if log is not None and skipped:
        listed = ", ".join(str(p) for p in skipped[:5]) + (
            f", ... {len(skipped) - 5} more" if len(skipped) > 5 else "")
        log(f"skipping {len(skipped)} file{'s' if len(skipped) != 1 else ''} in the class folders "
            f"that {'are' if len(skipped) != 1 else 'is'} not an image by suffix: {listed}")

    known = stored_files(Path(cache_path)) if Path(cache_path).exists() else None
    files = file_table(imageset, known, preprocess)
    return files, describe_changes(changed_files(known, files) if known else [])


def encode(table: Sequence[Sequence]) -> str:
    """The table as JSON (stored in the activation cache).

    Example:
        encode([("a", 1), ("b", 2)])   # '[["a", 1], ["b", 2]]'
    """
    return json.dumps([list(row) for row in table])
