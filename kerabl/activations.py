"""The self-describing HDF5 activation cache.

- `record_activations(network, imageset, layers, path, ...)`: one forward pass per batch through
  a multi-output model, each layer's units written as rows of `/layers/<name>`; returns the
  existing file without a forward pass when it was made with the same arguments, recomputes
  (saying what changed) when not, and resumes an interrupted `<path>.partial`.
- `ActivationCache` / `open_cache(path)`: read a finished cache by rows, columns or column blocks.

File layout: `/layers/<name>` (N, n_units) float32 or float16, chunked and compressed;
`/labels` (N,) model output indices; `/classes` (K,) the study's classes in study order;
`/rows/<output index>` the row indices of each class. Attributes: `kerabl_cache`, `complete`,
`rows_done`, the fingerprint (`model`, `weights_id`, `layers`, `dataset`, `preprocess`,
`unit`, `dtype`, `n_images`, `input_size`, `contents`: a digest of every image file's bytes,
`decoder`: "opencv" for "paper", else "pillow"), `class_names`, `layer_shapes`,
`kerabl_version`; `/files` (JSON) holds each image file's name, size, modification time and
hash (`kerabl.contents`), so a rerun hashes only changed files.
Element units are a layer output flattened in Keras (H, W, C) order; channel units are the
spatial mean of each channel (dense layers: the neurons either way).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from kerabl import __version__
from kerabl.contents import (changed_files, contents_digest, describe_changes, encode, file_table,
                             stored_files)
from kerabl.errors import KerablError
from kerabl.images import check_preprocess
from kerabl.nested import flat_network, from_paths
from kerabl.progress import progress_bar
from kerabl.space import check_free_space, check_room, chunked_bytes, free_bytes, human_bytes
from kerabl.store import partial_path

UNITS = ("element", "channel")
DTYPES = ("float32", "float16")
CHUNK_ROWS = 32          # = the default batch size: each batch writes whole chunks
CHUNK_COLS = 16384
# Uncompressed: a study reads every pair's rows again (AlexNet: each image ~77 times), and lzf
# decoded them at ~0.2 GB/s; plain chunks with a Fletcher-32 checksum (which fails a chunk cut
# off mid-write, as lzf's decoder did) read at ~1.3 GB/s, for 1.6-2x the disk. Files written
# lzf-compressed before are read as they are.
COMPRESSION = None
FINGERPRINT = ("model", "weights_id", "layers", "dataset", "preprocess", "unit", "dtype",
               "n_images", "input_size", "contents", "decoder")
_logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Reading

def _attr(value):
    """An HDF5 attribute as a plain Python value (bytes -> str, numpy scalars -> Python)."""
    if isinstance(value, bytes):
        return value.decode()
    return value.item() if isinstance(value, np.generic) else value


def _as_index(index, n: int, what: str) -> np.ndarray | None:
    """An index array (or None for all) checked against `n`; a slice becomes its range."""
    if index is None:
        return None
    if isinstance(index, slice):
        return np.arange(n, dtype=np.int64)[index]
    index = np.asarray(index, dtype=np.int64).reshape(-1)
    if index.size and (index.min() < 0 or index.max() >= n):
        raise KerablError(f"{what} indices must lie in 0..{n - 1}")
    return index


def _row_runs(rows: np.ndarray) -> list[tuple[int, int, int]]:
    """(position in `rows`, first row, length) of each run of consecutive rows, in the given order."""
    if rows.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    starts = np.r_[0, breaks]
    lengths = np.diff(np.r_[starts, rows.size])
    return [(int(p), int(rows[p]), int(n)) for p, n in zip(starts, lengths)]


def _read_rows(ds, rows: np.ndarray | None, c0: int, c1: int,
               out: np.ndarray | None = None) -> np.ndarray:
    """ds[rows, c0:c1] for `rows` in the given order (None = all), decompressing each chunk once.

    HDF5 decompresses a whole chunk to read any row of it, and a chunk larger than its chunk
    cache is decompressed again for every read: a class's rows scattered over the file (the
    paper's validation order) would decode each chunk once per run of rows in it (85 times per
    read on the demo). So each row block of chunks that holds a wanted row is read once into a
    buffer and the wanted rows copied out; runs of whole blocks are read straight into the
    result. A contiguous (unchunked) dataset is read one run of consecutive rows at a time.
    `out`: the (rows, c1 - c0) array of the dataset's dtype to read into (default a new one)."""
    if rows is None and out is None:
        return ds[:, c0:c1]
    if rows is None:
        ds.read_direct(out, np.s_[:, c0:c1])
        return out
    if out is None:
        out = np.empty((rows.size, c1 - c0), ds.dtype)
    if ds.chunks is None:
        for pos, first, length in _row_runs(rows):
            ds.read_direct(out, np.s_[first:first + length, c0:c1], np.s_[pos:pos + length])
        return out
    step = ds.chunks[0]
    block = rows // step
    order = np.argsort(block, kind="stable")
    bounds = np.flatnonzero(np.diff(block[order])) + 1
    buffer = None
    for part in np.split(order, bounds):
        b0 = int(block[part[0]]) * step
        b1 = min(b0 + step, ds.shape[0])
        if part.size == b1 - b0 and _is_range(part) and rows[part[0]] == b0 and _is_range(rows[part]):
            ds.read_direct(out, np.s_[b0:b1, c0:c1], np.s_[int(part[0]):int(part[0]) + part.size])
            continue
        if buffer is None:
            buffer = np.empty((step, c1 - c0), ds.dtype)
        ds.read_direct(buffer, np.s_[b0:b1, c0:c1], np.s_[:b1 - b0])
        out[part] = buffer[rows[part] - b0]
    return out


class ActivationCache:
    """A finished activation cache, open for reading.

    Example:
        with open_cache("activations.h5") as cache:
            x = cache.read("conv_3", rows=cache.labels == 780)
            a = cache.mean("conv_1", rows=np.flatnonzero(cache.labels == 780))

    Attributes:
        path: the file.
        attrs: its attributes (JSON-valued ones decoded).
        layers: the layer names, in recording order.
        labels: (N,) model output index of each row's image.
        unit: "element" or "channel".
        n_images: number of rows.
    """

    def __init__(self, path: str | Path):
        import h5py

        self.path = Path(path)
        if not self.path.is_file():
            raise KerablError(f"activation cache {self.path} not found: record it with "
                              "`kerabl activations`")
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as err:
            raise KerablError(f"{self.path} is not a readable HDF5 file ({err}): record the "
                              "activations again") from None
        attrs = {k: _attr(v) for k, v in self._file.attrs.items()}
        if not attrs.get("kerabl_cache") or not attrs.get("complete"):
            self._file.close()
            raise KerablError(f"{self.path} is not a complete kerabl activation cache: record "
                              "it with `kerabl activations`")
        for key in ("layers", "layer_shapes", "class_names", "input_size"):
            attrs[key] = json.loads(attrs[key])
        self.attrs = attrs
        self.layers: list[str] = list(attrs["layers"])
        self.labels = np.asarray(self._file["labels"][...], dtype=np.int64)
        self.unit: str = attrs["unit"]
        self.n_images: int = int(attrs["n_images"])

    def _dataset(self, layer: str):
        if layer not in self.layers:
            raise KerablError(f"layer {layer!r} is not in cache {self.path}: it holds "
                              f"{', '.join(self.layers)}")
        return self._file["layers"][layer]

    def n_units(self, layer: str) -> int:
        """Units per image of `layer` (columns of its dataset).

        Example:
            cache.n_units("conv_1")  # 290400 for AlexNet element units
        """
        return int(self._dataset(layer).shape[1])

    def layer_shape(self, layer: str) -> tuple[int, ...]:
        """The layer's output shape without the batch axis (e.g. (55, 55, 96)).

        Example:
            h, w, c = cache.layer_shape("conv_1")
        """
        self._dataset(layer)
        return tuple(self.attrs["layer_shapes"][layer])

    def read(self, layer: str, rows=None, cols=None, out: np.ndarray | None = None) -> np.ndarray:
        """Activations of `layer` as float32 (len(rows), len(cols)), in the order given.

        Example:
            x = cache.read("conv_5", rows=[10, 3], cols=np.arange(100))   # row 10 first
            cache.read("conv_1", rows=rows, out=block)     # into a float32 (len(rows), units) array

        Args:
            layer: a layer name of the cache.
            rows, cols: index arrays (any order, repeats allowed), boolean masks, slices, or
                None for all.
            out: a C-contiguous float32 array of the result's shape to read into (all columns
                only); it is returned.
        """
        ds = self._dataset(layer)
        rows = _as_index(_mask_to_index(rows), ds.shape[0], "row")
        cols = _as_index(_mask_to_index(cols), ds.shape[1], "column")
        if out is not None:
            return self._read_into(ds, rows, cols, out)
        if cols is None:
            out = _read_rows(ds, rows, 0, ds.shape[1])
        elif _is_range(cols):
            out = _read_rows(ds, rows, int(cols[0]), int(cols[-1]) + 1)
        else:
            col_set, col_inv = np.unique(cols, return_inverse=True)
            out = np.empty((ds.shape[0] if rows is None else rows.size, col_set.size), ds.dtype)
            width = ds.chunks[1] if ds.chunks else ds.shape[1]
            starts = np.searchsorted(col_set, np.arange(0, ds.shape[1] + width, width))
            for lo, hi in zip(starts[:-1], starts[1:]):
                if hi > lo:
                    c0, c1 = int(col_set[lo]), int(col_set[hi - 1]) + 1
                    out[:, lo:hi] = _read_rows(ds, rows, c0, c1)[:, col_set[lo:hi] - c0]
            if not _is_range(col_inv) or col_inv.size != col_set.size:
                out = out[:, col_inv]
        return np.asarray(out, dtype=np.float32)

    @staticmethod
    def _read_into(ds, rows, cols, out: np.ndarray) -> np.ndarray:
        shape = (ds.shape[0] if rows is None else rows.size, ds.shape[1])
        if cols is not None or out.shape != shape or out.dtype != np.float32 \
                or not out.flags.c_contiguous:
            raise KerablError(f"out= takes all columns into a C-contiguous float32 array of shape "
                              f"{shape}; got {out.dtype} {out.shape}")
        if ds.dtype == np.float32:
            return _read_rows(ds, rows, 0, ds.shape[1], out=out)
        out[...] = _read_rows(ds, rows, 0, ds.shape[1])
        return out

    def column_blocks(self, layer: str, block: int = 65536,
                      rows=None) -> Iterator[tuple[slice, np.ndarray]]:
        """(column slice, float32 (len(rows), width)) blocks covering every unit of `layer`.

        Example:
            for cols, x in cache.column_blocks("conv_1", rows=target_rows):
                means[cols] = x.mean(axis=0)
        """
        if block < 1:
            raise KerablError(f"block must be at least 1 column, got {block}")
        n = self.n_units(layer)
        for c0 in range(0, n, block):
            cols = slice(c0, min(c0 + block, n))
            yield cols, self.read(layer, rows=rows, cols=cols)

    def mean(self, layer: str, rows) -> np.ndarray:
        """Per-unit mean (float64, (n_units,)) over the given rows, read by column blocks.

        Example:
            a = cache.mean("conv_2", rows=np.flatnonzero(cache.labels == 780))
        """
        out = np.empty(self.n_units(layer), dtype=np.float64)
        for cols, x in self.column_blocks(layer, rows=rows):
            if len(x) == 0:
                raise KerablError("mean over no rows: give at least one row index")
            out[cols] = x.mean(axis=0, dtype=np.float64)
        return out

    def close(self) -> None:
        """Close the file (also done by leaving a `with` block)."""
        self._file.close()

    def __enter__(self) -> ActivationCache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"ActivationCache({str(self.path)!r}, {self.n_images} images, {self.unit} units, "
                f"layers={self.layers})")


def _is_range(index: np.ndarray) -> bool:
    """Whether `index` is a non-empty increasing run of consecutive integers."""
    return index.size > 0 and int(index[-1]) - int(index[0]) + 1 == index.size \
        and bool(np.all(np.diff(index) == 1))


def _mask_to_index(index):
    """Boolean masks become index arrays; everything else passes through."""
    if index is not None and not isinstance(index, slice):
        array = np.asarray(index)
        if array.dtype == bool:
            return np.flatnonzero(array)
    return index


def open_cache(path: str | Path) -> ActivationCache:
    """Open a finished activation cache for reading.

    Example:
        with open_cache("out/activations.h5") as cache:
            print(cache.layers, cache.n_units("conv_1"))

    Raises:
        KerablError: the file is missing, not HDF5, not a kerabl cache, or incomplete.
    """
    return ActivationCache(path)


# ---------------------------------------------------------------------------------------------
# Recording

def _source(network_or_model, model_name, weights_id, preprocess, imageset):
    """(keras model, model name, weights id, input size, preprocessing) of what to record."""
    if hasattr(network_or_model, "model") and hasattr(network_or_model, "weights_id"):
        net = network_or_model
        return (net.model, model_name or net.name, weights_id or net.weights_id,
                tuple(net.input_size), preprocess or net.preprocess)
    model = network_or_model
    if not hasattr(model, "get_layer"):
        raise KerablError(f"record_activations needs a kerabl Network or a keras Model, got "
                          f"{type(model).__name__}")
    if not model_name or not weights_id:
        raise KerablError("a bare keras model needs model_name= and weights_id= (they identify "
                          "the cache): pass both, or pass a kerabl Network")
    if preprocess is None:
        if imageset.images is None:
            raise KerablError("a bare keras model needs preprocess= for image files: pass one "
                              "of kerabl.images.PREPROCESS")
        preprocess = "none"
    return model, model_name, weights_id, tuple(model.input_shape[1:3]), preprocess


def _activation_fn(model, layers: Sequence[str]) -> Callable[[np.ndarray], list[np.ndarray]]:
    """A traced function: input batch -> the outputs of `layers` (numpy arrays, in order).

    Example:
        forward = activation_fn(net.model, ["conv_1", "conv_5"])
        conv_1, conv_5 = forward(batch)
    """
    import keras
    import tensorflow as tf

    outputs = [model.get_layer(name).output for name in layers]
    multi = keras.Model(model.inputs, outputs)
    forward = tf.function(lambda x: multi(x, training=False), reduce_retracing=True)

    def run(batch: np.ndarray) -> list[np.ndarray]:
        result = forward(tf.convert_to_tensor(batch))
        result = result if isinstance(result, (list, tuple)) else [result]
        return [np.asarray(r) for r in result]

    return run


def _units(output: np.ndarray, unit: str) -> np.ndarray:
    """(B, ...) layer output -> (B, n_units): flattened elements or spatially averaged channels.

    Example:
        as_units(np.ones((2, 4, 4, 3)), "channel").shape   # (2, 3)
    """
    if unit == "channel" and output.ndim > 2:
        return output.mean(axis=tuple(range(1, output.ndim - 1)))
    return output.reshape(len(output), -1)


# the recording's forward pass and unit kinds, for what recomputes a cache's rows
# (`kerabl.recompute`) exactly as they were recorded
activation_fn = _activation_fn
as_units = _units


def _n_units(shape: tuple[int, ...], unit: str) -> int:
    return int(shape[-1]) if unit == "channel" else int(np.prod(shape))


def cache_bytes(n_images: int, shapes: dict, unit: str = "element", dtype: str = "float32") -> int:
    """The size of a finished activation cache (`kerabl.space.chunked_bytes` of its layers).

    Example:
        cache_bytes(100, {"block1_conv1": (224, 224, 64)})   # 1.64e9: 128 rows of chunks
    """
    return chunked_bytes(n_images, [_n_units(tuple(s), unit) for s in shapes.values()],
                         np.dtype(dtype).itemsize, CHUNK_ROWS, CHUNK_COLS)


def check_cache_fits(path, n_images: int, shapes: dict, unit: str = "element",
                     dtype: str = "float32") -> int:
    """Stop with one line, before anything is written, when the cache at `path` would not fit
    in the free space there (a `.partial` to resume counts as written); returns its size.

    Example:
        check_cache_fits("out/activations.h5", 100, {"block1_conv1": (224, 224, 64)})
        # KerablError: the activation cache (1.64 GB) does not fit in the 40 MB free on /mnt: ...
    """
    need = cache_bytes(n_images, shapes, unit, dtype)
    partial = partial_path(path)
    have = partial.stat().st_blocks * 512 if partial.exists() else 0
    check_free_space(partial, need - have, "the activation cache",
                     "free space, choose another --out, record channel units (--unit channel), "
                     "fewer or later layers, or run the study without a cache (--cache none)")
    return need


def _size_line(path: Path, n: int, shapes: dict, unit: str, dtype: str) -> str:
    """The cache's size and the free space, said before its rows are written."""
    return (f"activation cache: {human_bytes(cache_bytes(n, shapes, unit, dtype))} ({n} images, "
            f"{len(shapes)} layer{'s' * (len(shapes) != 1)}, {unit} units, {dtype}) to {path}; "
            f"{human_bytes(free_bytes(path))} free")


def layer_shapes(model, layers: Sequence[str]) -> dict[str, tuple[int, ...]]:
    """Each layer's output shape without the batch axis.

    Example:
        layer_shapes(net.model, ["conv_5"])   # {"conv_5": (8, 8, 32)}
    """
    return {layer: tuple(int(d) for d in model.get_layer(layer).output.shape[1:])
            for layer in layers}


def _fingerprint(model_name, weights_id, layers, imageset, preprocess, unit, dtype,
                 input_size, contents: str) -> dict:
    return {"model": str(model_name), "weights_id": str(weights_id),
            "layers": json.dumps(list(layers)), "dataset": imageset.name,
            "preprocess": preprocess, "unit": unit, "dtype": dtype,
            "n_images": int(len(imageset.labels)), "input_size": json.dumps(list(input_size)),
            "contents": contents, "decoder": "opencv" if preprocess == "paper" else "pillow"}


def _changes(stored: dict, wanted: dict, changed: Sequence[str] = ()) -> list[str]:
    """'key: old -> new' for every fingerprint entry that differs (changed images by name)."""
    return [describe_changes(changed) if k == "contents" and stored.get(k) else
            f"{k}: {_attr(stored.get(k))} -> {wanted[k]}" for k in FINGERPRINT
            if _attr(stored.get(k)) != wanted[k]]


def _not_a_cache(path: Path) -> str:
    """Why an existing file cannot be used: a damaged HDF5 file, or another kind of file."""
    with open(path, "rb") as fh:
        damaged = fh.read(8) == b"\x89HDF\r\n\x1a\n"
    if damaged:
        return (f"{path} is a damaged HDF5 file (truncated or overwritten): delete it and rerun "
                "to record the activations again")
    return f"{path} exists and is not a kerabl activation cache: choose another path or remove it"


def _stored_attrs(path: Path) -> dict | None:
    """A file's attributes, or None when it is no readable kerabl cache."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            attrs = {k: _attr(v) for k, v in f.attrs.items()}
    except BlockingIOError:
        raise KerablError(f"{path} is locked, another process is writing it: wait for it to "
                          "finish or choose another path") from None
    except OSError:
        return None
    return attrs if attrs.get("kerabl_cache") else None


def _check_arguments(model, layers, unit, dtype, batch_size) -> None:
    if unit not in UNITS:
        raise KerablError(f"unit must be one of {', '.join(UNITS)}, got {unit!r}")
    if dtype not in DTYPES:
        raise KerablError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if batch_size < 1:
        raise KerablError(f"batch_size must be at least 1, got {batch_size}")
    if not layers:
        raise KerablError("no layers to record: name at least one layer")
    names = {layer.name for layer in model.layers}
    unknown = [name for name in layers if name not in names]
    if unknown:
        raise KerablError(f"unknown layer {unknown[0]!r}: the model has "
                          f"{', '.join(l.name for l in model.layers)}")


def _create(path: Path, wanted: dict, imageset, layers, shapes, unit, dtype, files):
    """A fresh `.partial` file with empty datasets and every attribute but `complete`."""
    import h5py

    f = _open_for_writing(path, shapes, unit, dtype, mode="w")
    f.attrs.update({"kerabl_cache": True, "complete": False, "rows_done": 0, **wanted,
                    "class_names": json.dumps(list(imageset.class_names)),
                    "layer_shapes": json.dumps({k: list(v) for k, v in shapes.items()}),
                    "kerabl_version": __version__})
    n = len(imageset.labels)
    f.create_dataset("labels", data=np.asarray(imageset.labels, dtype=np.int64))
    f.create_dataset("files", data=encode(files), dtype=h5py.string_dtype())
    f.create_dataset("classes", data=np.asarray(imageset.classes, dtype=np.int64))
    rows = f.create_group("rows")
    for c in imageset.classes:
        rows.create_dataset(str(c), data=np.flatnonzero(imageset.labels == c).astype(np.int64))
    group = f.create_group("layers")
    for name in layers:
        cols = _n_units(shapes[name], unit)
        group.create_dataset(name, shape=(n, cols), dtype=dtype,
                             chunks=(max(1, min(CHUNK_ROWS, n)), max(1, min(CHUNK_COLS, cols))),
                             compression=COMPRESSION, fletcher32=True)
    f.flush()
    return f


def _open_for_writing(path: Path, shapes: dict, unit: str, dtype: str, mode: str):
    """Open with a chunk cache that holds one row-block of the widest layer (batches of fewer
    rows than a chunk then fill chunks in memory instead of recompressing them)."""
    import h5py

    widest = max(_n_units(s, unit) for s in shapes.values())
    block = CHUNK_ROWS * (-(-widest // CHUNK_COLS) * CHUNK_COLS) * np.dtype(dtype).itemsize
    return h5py.File(path, mode, rdcc_nbytes=block + (8 << 20), rdcc_nslots=100003, rdcc_w0=1.0)


def _last_rows_readable(f, layers: Sequence[str]) -> bool:
    """Whether the row-block holding the last finished row reads back: a process killed while
    it wrote that block's chunks leaves them failing their checksum (or, in files written
    lzf-compressed, undecodable), and resuming would have to read them (HDF5 rewrites a partly
    filled chunk by reading it first)."""
    try:
        done = int(f.attrs["rows_done"])     # a file killed before its first flush may lack it
        for layer in layers:
            ds = f["layers"][layer]
            start = (max(done, 1) - 1) // ds.chunks[0] * ds.chunks[0]
            ds[start:done]
    except (OSError, RuntimeError, KeyError):
        return False
    return True


def _resume_or_create(partial: Path, wanted: dict, imageset, layers, shapes, unit, dtype, log,
                      files):
    """The `.partial` file to continue (same fingerprint) or a fresh one."""
    if partial.exists():
        stored = _stored_attrs(partial)
        changes = None if stored is None else _changes(
            stored, wanted, changed_files(stored_files(partial), files))
        if changes == []:
            f = _open_for_writing(partial, shapes, unit, dtype, mode="r+")
            if _last_rows_readable(f, layers):
                log(f"resuming {partial} at image {int(f.attrs['rows_done'])} of "
                    f"{wanted['n_images']}")
                return f
            f.close()
            changes = ["its last rows were cut off mid-write"]
        reason = "unreadable" if stored is None else "; ".join(changes)
        log(f"discarding {partial} ({reason}): starting afresh")
        partial.unlink()
    return _create(partial, wanted, imageset, layers, shapes, unit, dtype, files)


def record_activations(network_or_model, imageset, layers: Sequence[str] | None, path,
                       *, unit: str = "element", preprocess: str | None = None,
                       batch_size: int = 32, dtype: str = "float32",
                       model_name: str | None = None, weights_id: str | None = None,
                       progress: bool = True, files: list | None = None,
                       log: Callable[[str], None] | None = None) -> ActivationCache:
    """Record every image's activations at `layers` into a self-describing HDF5 cache.

    Example:
        net = load_network("alexnet", weights=None)
        cache = record_activations(net, paper_imageset(root), net.targets, "acts.h5")
        x = cache.read("conv_5", rows=cache.labels == 780)

    The file is made once per (model, weights_id, layers, dataset, preprocess, unit, dtype,
    n_images, input_size, image contents): with the same arguments an existing file is returned
    without a forward pass; with different ones it is recomputed and `log` says what changed
    ("preprocess: paper -> heuritech", "2 images changed (a.JPEG, b.JPEG)"). Rows are written to `<path>.partial` (its `rows_done`
    attribute flushed after each batch) and the file is renamed to `path` when complete; a
    rerun after an interruption continues from `rows_done` (a `.partial` left unreadable by a
    kill during a write is discarded, with a message). Memory holds one batch of activations
    plus one chunk row-block of the widest layer. Datasets are chunked `CHUNK_ROWS` (32) rows
    by `CHUNK_COLS` (16384) columns, uncompressed (`COMPRESSION`): a batch size that is a
    multiple of 32 writes whole chunks, which is fastest.

    Args:
        network_or_model: a kerabl `Network` (its name, weights_id, input_size and default
            preprocessing are used) or a bare keras model (then give model_name, weights_id).
        imageset: a `kerabl.data.ImageSet`.
        layers: layer names to record (None: the Network's targets).
        path: the cache file.
        unit: "element" (output flattened in (H, W, C) order) or "channel" (spatial mean).
        preprocess: a `kerabl.images.PREPROCESS` name (default: the Network's).
        batch_size: images per forward pass.
        dtype: storage dtype, "float32" or "float16" (reads are float32).
        model_name, weights_id: identify a bare keras model (override a Network's).
        progress: show a rich progress bar.
        files: the image set's `kerabl.contents.file_table` when the caller has it (default:
            computed here, hashing and decoding only files changed since the existing cache, so
            that every unreadable image is named before the cache is written).
        log: where messages go (default: this module's `logging` logger at WARNING, which
            Python shows without any logging setup).

    Returns:
        The finished cache, open for reading.

    Raises:
        KerablError: bad arguments, unknown layers, or `path` holding a file that is not a
            kerabl activation cache.
    """
    log = log or _logger.warning
    network_or_model = flat_network(network_or_model)   # a model calling other models: one graph
    model, name, wid, size, preprocess = _source(network_or_model, model_name, weights_id,
                                                 preprocess, imageset)
    if layers is None:
        layers = getattr(network_or_model, "targets", None)
    layers = from_paths(model, layers or [])
    _check_arguments(model, layers, unit, dtype, batch_size)

    check_preprocess(preprocess)

    path = Path(path)
    known = stored_files(path) if path.exists() else None
    files = files if files is not None else file_table(imageset, known, preprocess)
    wanted = _fingerprint(name, wid, layers, imageset, preprocess, unit, dtype, size,
                          contents_digest(files))
    if path.exists():
        stored = _stored_attrs(path)
        if stored is None:
            raise KerablError(_not_a_cache(path))
        changes = (_changes(stored, wanted, changed_files(known, files))
                   if stored.get("complete") else ["complete: False -> True"])
        if not changes:
            return ActivationCache(path)
        log(f"recomputing {path}: " + "; ".join(changes))

    shapes = layer_shapes(model, layers)
    partial = partial_path(path)
    check_cache_fits(path, len(imageset.labels), shapes, unit, dtype)
    path.parent.mkdir(parents=True, exist_ok=True)
    forward = _activation_fn(model, layers)
    n = wanted["n_images"]
    with _resume_or_create(partial, wanted, imageset, layers, shapes, unit, dtype, log,
                           files) as f:
        done = int(f.attrs["rows_done"])
        log(_size_line(path, n, shapes, unit, dtype))
        with progress_bar(f"activations {name}", n, enabled=progress, done=done) as advance:
            todo = np.arange(done, n)
            for batch in imageset.batches(size, preprocess, batch_size, rows=todo):
                outputs = forward(batch)
                check_room(partial, sum(o.nbytes for o in outputs))
                end = done + len(batch)
                for layer, output in zip(layers, outputs):
                    f["layers"][layer][done:end] = _units(output, unit).astype(dtype)
                f.attrs["rows_done"] = done = end
                f.flush()
                advance(len(batch))
        f.attrs["complete"] = True
    os.replace(partial, path)
    return ActivationCache(path)
