"""The one file protocol of both studies: write under a temporary name, rename when complete.

- `partial_path(path)`: `PATH.partial`, where a run writes until it is complete (and resumes).
- `finish_partial(path)`: rename `PATH.partial` to `PATH` once the run is complete.
- `config_differences(old, new)`: 'key: old -> new' for every differing key (all of them);
  `differing_keys(old, new)`: those keys. A key of `ADDED_DEFAULTS` missing from a config (a file
  written before the option existed) counts as its default value.
- `write_csv_atomic(path, header, rows)`: a CSV written to `PATH.tmp`, then renamed.
- `check_results_kind(path, kind, wanted)`: an H or Z results file where the other (or another
  file) was given is one line naming what it holds and which command writes the wanted one.
- `results_kind(path)`: the `kind` of a results file (a one-line error for anything else);
  `library_versions()`: the versions a results file records.
- `parse_shard("2/8")`: a `--shard` value as (i, n).
- `open_h5(path, mode)`: `h5py.File`, waiting while another process holds the file's HDF5 lock
  (a figure drawn from a run in progress reads the `.partial` its run writes pair by pair).
- `reading_results(path, command)`: a block that reads a results file; a broken config, a missing
  dataset or attribute, or an array of the wrong shape inside it is one line naming the file.
- `check_shape(path, name, array, shape)`: a stored array's shape, or that one line.
- `check_schema(path, found, schema, kind)`: a results file of the layout this kerabl reads.

A reader never sees a half-written file under the final name: an interrupted run leaves only
`PATH.partial` (or `PATH.tmp`), which the next run resumes or replaces. The activation cache itself
is `kerabl.activations`.
"""

from __future__ import annotations

import contextlib
import csv
import importlib.metadata
import json
import os
import platform
import time
from pathlib import Path
from typing import Iterable, Sequence

from kerabl.errors import KerablError

RESULTS_KINDS = {"kerabl.h-results": ("H", "h_results.h5", "kerabl study"),
                 "kerabl.z-results": ("Z", "z_results.h5", "kerabl units")}


# How long a results file may stay locked by another process before a run gives up on it: a
# reader holds a `.partial` for the moments it takes to read it, a writer for one pair's write.
LOCK_WAIT_S = 60.0


def open_h5(path: str | os.PathLike, mode: str = "r", wait: float = LOCK_WAIT_S):
    """`h5py.File(path, mode)`, retried while another process holds the file's HDF5 lock.

    HDF5 locks a file for as long as a process has it open: a writer cannot open it while anyone
    reads it, and a reader cannot while it is written. Both studies open their `.partial` once
    per stored pair, so a reader of a run in progress (`render_h_figures(..., allow_partial=True)`)
    and the run take turns instead of one stopping the other.

    Example:
        with open_h5("out/h_results.h5.partial", "r+") as f:
            f["done"][0, 0] = True
    """
    import h5py

    deadline, pause = time.monotonic() + wait, 0.01
    while True:
        try:
            return h5py.File(path, mode)
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise KerablError(f"{path} stayed locked by another process for {wait:.0f} s: "
                                  "close what reads or writes it and rerun") from None
            time.sleep(pause)
            pause = min(2 * pause, 0.5)


def partial_path(path: str | os.PathLike) -> Path:
    """The file a run writes until it is complete.

    Example:
        partial_path("out/h_results.h5")   # Path("out/h_results.h5.partial")
    """
    path = Path(path)
    return path.with_name(path.name + ".partial")


def finish_partial(path: str | os.PathLike) -> Path:
    """Rename the complete `PATH.partial` to `path` (replacing any file there); returns `path`.

    Example:
        finish_partial("out/h_results.h5")   # out/h_results.h5.partial -> out/h_results.h5
    """
    path = Path(path)
    os.replace(partial_path(path), path)
    return path


# Options added to the stored configs after results files were written without them, with the
# value those files were computed with: a missing key reads as this value, so an older file still
# resumes and matches a run with the default.
ADDED_DEFAULTS = {"precision": "float32", "ablation": "zero"}

_MISSING = "<absent>"


def _value(config: dict, key: str):
    return config.get(key, ADDED_DEFAULTS.get(key, _MISSING))


def differing_keys(old: dict, new: dict, ignore: Sequence[str] = ()) -> list[str]:
    """The top-level keys whose values differ, sorted (`ADDED_DEFAULTS` fill missing keys).

    Example:
        differing_keys({"seed": 0}, {"seed": 0, "precision": "float32"})   # []
    """
    keys = sorted((set(old) | set(new)) - set(ignore))
    return [k for k in keys if _value(old, k) != _value(new, k)]


def config_differences(old: dict, new: dict, ignore: Sequence[str] = ()) -> list[str]:
    """'key: old -> new' for each top-level key whose value differs (values as JSON).

    Example:
        config_differences({"seed": 0, "k": 1}, {"seed": 1, "k": 1})   # ['seed: 0 -> 1']
    """
    return [f"{k}: {json.dumps(_value(old, k))} -> {json.dumps(_value(new, k))}"
            for k in differing_keys(old, new, ignore)]


def write_csv_atomic(path: str | os.PathLike, header: Sequence[str],
                     rows: Iterable[Sequence]) -> Path:
    """Write `header` and `rows` to `path` through `path.tmp` (renamed when complete).

    Example:
        write_csv_atomic("out/cells.csv", ["a", "b"], [[1, 2], [3, 4]])
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(header)
            writer.writerows(rows)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def check_results_kind(path, kind, wanted: str) -> None:
    """Raise a one-line `KerablError` unless the file's `kind` attribute is `wanted`.

    Example:
        check_results_kind("z_results.h5", "kerabl.z-results", "kerabl.h-results")
        # KerablError: z_results.h5 holds Z results (`kerabl units`), not H results: ...
    """
    if kind == wanted:
        return
    name, file_name, command = RESULTS_KINDS[wanted]
    hint = f"pass a {file_name} written by `{command}`"
    if kind in RESULTS_KINDS:
        other, _, writer = RESULTS_KINDS[kind]
        raise KerablError(f"{path} holds {other} results (`{writer}`), not {name} results: {hint}")
    raise KerablError(f"{path} is not a kerabl {name} results file (kind={kind!r}): {hint}")


@contextlib.contextmanager
def reading_results(path, command: str):
    """Turn what a damaged results file raises while it is read (a config that is not JSON, a
    dataset or attribute missing, an array of another shape: KeyError, ValueError, TypeError,
    IndexError, an HDF5 read error) into one `KerablError` naming the file and what to do.

    Example:
        with reading_results("out/h_results.h5", "kerabl study"):
            config = json.loads(f.attrs["config"])   # a broken attribute: one line, no traceback
    """
    try:
        yield
    except KerablError:
        raise
    except (KeyError, ValueError, TypeError, IndexError, AttributeError, OSError) as error:
        detail = str(error).splitlines()[0][:160] if str(error) else type(error).__name__
        line = damaged_line(path, f"{type(error).__name__}: {detail}", command)
        raise KerablError(line) from None


def damaged_line(path, detail: str, command: str) -> str:
    """The one line of a damaged results file.

    Example:
        damaged_line("out/z_results.h5", "no dataset labels", "kerabl units")
    """
    return (f"{path} is damaged ({detail}): delete it and rerun `{command}` to write it again "
            "(or restore it from a copy)")


def check_shape(path, name: str, array, shape: Sequence[int | None], command: str) -> None:
    """Raise the damaged-file line unless `array.shape` is `shape` (None: any length there).

    Example:
        check_shape("h.h5", "deficit", np.zeros((2, 3, 16)), (2, 3, 16), "kerabl study")  # fine
    """
    got = tuple(getattr(array, "shape", ()))
    if len(got) != len(shape) or any(w is not None and g != w for g, w in zip(got, shape)):
        want = "(" + ", ".join("any" if w is None else str(w) for w in shape) + ")"
        raise KerablError(damaged_line(path, f"{name} has shape {got}, expected {want}", command))


def check_schema(path, found, schema: int, command: str) -> None:
    """Raise one line unless a results file's `schema` attribute is `schema`.

    Example:
        check_schema("z_results.h5", 1, 1, "kerabl units")   # fine
    """
    if found is None or int(found) != schema:
        raise KerablError(f"{path} has results schema {found}, this kerabl reads {schema}: use the "
                          f"kerabl version that wrote it, or rerun `{command}` with this one")


# The libraries whose versions a results file records.
_VERSION_PACKAGES = ("numpy", "h5py", "scikit-learn", "scipy", "kerabl", "tensorflow", "keras")


def library_versions() -> dict:
    """Versions of Python and the libraries behind a run, read without importing them.

    Example:
        library_versions()["numpy"]   # e.g. "2.1.3"; None when not installed
    """
    versions: dict = {"python": platform.python_version()}
    for name in _VERSION_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def results_kind(results: Path) -> str:
    """The `kind` attribute of a results file; a missing or non-HDF5 file is a KerablError.

    Example:
        results_kind(Path("kerabl-out/h_results.h5"))   # "kerabl.h-results"
    """
    if results.is_dir():
        inside = [p.name for p in (results / "h_results.h5", results / "z_results.h5")
                  if p.is_file()]
        raise KerablError(f"{results} is a folder: pass a results file"
                          + (f" such as {results / inside[0]}" if inside else
                             " (h_results.h5 or z_results.h5)"))
    if not results.is_file():
        raise KerablError(f"results file {results} does not exist: run `kerabl study` or "
                          "`kerabl reproduce` first")
    import h5py

    try:
        with h5py.File(results, "r") as f:
            return f.attrs.get("kind", "")
    except OSError:
        raise KerablError(f"{results} is not an HDF5 results file: pass a h_results.h5 or "
                          "z_results.h5 written by kerabl") from None


def parse_shard(text: str) -> tuple[int, int]:
    """A `--shard` value "i/n" (0-based, i < n) as the pair (i, n).

    Example:
        parse_shard("2/8")   # (2, 8)
        parse_shard("8/8")   # KerablError
    """
    parts = str(text).strip().split("/")
    try:
        i, n = (int(p) for p in parts)
    except ValueError:
        i, n = -1, 0
    if len(parts) != 2 or not 0 <= i < n:
        raise KerablError(f"shard {text!r} is not 'i/n' with 0 <= i < n; "
                          "use e.g. --shard 0/8 ... --shard 7/8")
    return i, n
