"""The H results file (HDF5): write as a sweep goes, resume, read, export, shard and merge.

- `HResultsWriter`: appends one (class, layer) pair at a time to `PATH.partial`, resumes an
  interrupted run, renames to `PATH` when its shard is done; refuses a different config.
- `HResults.open(path)`: read-only view; the (C, L, K) arrays in memory, `units(...)` lazily.
- `export_csv(results_path, csv_path)`: one row per class x layer x cell.
- `merge(paths, out)` (`kerabl.hayne.merge`) joins shard files into one complete file;
  `ResultsLayout`, `create_results`, `check_kind` and `shard_pairs` are what it shares with the
  writer.

Layout (C classes, L layers, K = n * m cells, P = max images per class, U_l units of layer l).
File attributes: `kind` = "kerabl.h-results", `schema` = 1, `config` (JSON), `versions`
(JSON), `shard` ("i/n" or ""), `complete` (bool). Datasets: `classes`, `class_index`,
`layers`, `grid_shape`, `n_units`; (C, L, K) float64 `probe`, `probe_loss`, `probe_heldout`,
`deficit`, `srs_tau`, `srs_rho`, `cell_selectivity`, `cell_magnitude`, `probe_fold`,
`probe_fold_sd` (the held-out probe with the grid rebuilt in each fold: mean and spread over
folds) (NaN until done) and int64
`cell_count` (-1); `done` (C, L); `others` (C, max_others); `image_rows`, `rank_before`
(C, P: the plain network's ranks); `rank_baseline` (C, L, P) int32 (the layer's engine with an
all-ones mask: deficit = rank_after - rank_baseline); `rank_after` (C, L, K, P) int32; group `units/<layer>/` with `selectivity`,
`magnitude` (C, U_l) float32, `membership` (C, U_l), `sel_edges` (C, n + 1),
`mag_edges` (C, n, m + 1). Every padded or unwritten entry is -1 or NaN.
How a removed unit was removed is `config["ablation"]` (`kerabl.replacement`; files written
before it: "zero"). Mean ablation adds `ablation_mean/<layer>`: the layer's mean output over the
study's images, flat in Keras (H, W, C) order (attribute `shape`); resample ablation adds
`donor_rows` (C, L, K, P) int64: the image-set row whose layer output each target image took,
per cell (-1 padded).

No TensorFlow here: figures read results with TensorFlow blocked.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from kerabl.errors import KerablError
from kerabl.store import (check_results_kind, check_schema, check_shape, config_differences,
                          damaged_line, differing_keys, finish_partial, library_versions, open_h5,
                          partial_path, reading_results, write_csv_atomic)

KIND = "kerabl.h-results"
SCHEMA = 1
WRITER = "kerabl study"   # the command that writes a results file, named when one is damaged
CELL_FLOATS = ("probe", "probe_heldout", "deficit", "srs_tau", "srs_rho",
               "cell_selectivity", "cell_magnitude", "probe_loss", "probe_fold", "probe_fold_sd")
# absent from files written before them: read as NaN (floats) or -1 (ranks)
OPTIONAL = ("probe_loss", "probe_fold", "probe_fold_sd", "rank_baseline")
CELL_ARRAYS = CELL_FLOATS + ("cell_count",)
UNIT_ARRAYS = ("selectivity", "magnitude", "membership", "sel_edges", "mag_edges")
CLASS_ARRAYS = ("image_rows", "rank_before", "others")
_STR = h5py.string_dtype("utf-8")


def _json_config(config: dict) -> dict:
    """The config as it reads back from the file (tuples become lists)."""
    try:
        return json.loads(json.dumps(config))
    except (TypeError, ValueError) as exc:
        raise KerablError(f"the run's config cannot be stored as JSON ({exc}); "
                          "pass plain numbers, strings, lists and dicts") from exc


@dataclass(frozen=True)
class ResultsLayout:
    """Everything that fixes a results file's layout (and must agree to resume or merge).

    Example:
        with h5py.File("out/h_results.h5") as f:
            layout = ResultsLayout.read(f)
        layout.n_cells, layout.differences(layout)   # 16, []
    """

    config: dict
    classes: tuple[str, ...]
    class_index: tuple[int, ...]
    layers: tuple[str, ...]
    n_units: tuple[int, ...]
    grid_shape: tuple[int, int]
    max_images: int
    max_others: int
    shard: str

    @property
    def n_cells(self) -> int:
        return self.grid_shape[0] * self.grid_shape[1]

    def as_dict(self) -> dict:
        return {"classes": list(self.classes), "class_index": list(self.class_index),
                "layers": list(self.layers), "n_units": list(self.n_units),
                "grid_shape": list(self.grid_shape), "max_images": self.max_images,
                "max_others": self.max_others, "shard": self.shard}

    def differences(self, other: "ResultsLayout", ignore_shard: bool = False) -> list[str]:
        ignore = ("shard",) if ignore_shard else ()
        found = config_differences(self.config, other.config, ignore)
        found += [f"({d})" for d in config_differences(self.as_dict(), other.as_dict(), ignore)]
        return found

    @classmethod
    def read(cls, f: h5py.File) -> "ResultsLayout":
        return cls(config=json.loads(f.attrs["config"]),
                   classes=tuple(s.decode() if isinstance(s, bytes) else s for s in f["classes"][()]),
                   class_index=tuple(int(v) for v in f["class_index"][()]),
                   layers=tuple(s.decode() if isinstance(s, bytes) else s for s in f["layers"][()]),
                   n_units=tuple(int(v) for v in f["n_units"][()]),
                   grid_shape=tuple(int(v) for v in f["grid_shape"][()]),
                   max_images=int(f["image_rows"].shape[1]), max_others=int(f["others"].shape[1]),
                   shard=str(f.attrs["shard"]))


def _membership_dtype(n_cells: int):
    return np.int16 if n_cells < np.iinfo(np.int16).max else np.int32


def create_results(path: Path, layout: ResultsLayout) -> None:
    """Write an empty results file (every entry NaN / -1, nothing done).

    Example:
        create_results(Path("merged.h5.tmp"), dataclasses.replace(layout, shard=""))
    """
    c, n_l, k, p = len(layout.classes), len(layout.layers), layout.n_cells, layout.max_images
    n, m = layout.grid_shape
    with h5py.File(path, "w") as f:
        f.attrs.update(kind=KIND, schema=SCHEMA, config=json.dumps(layout.config),
                       versions=json.dumps(library_versions()), shard=layout.shard, complete=False)
        f.create_dataset("classes", data=np.array(layout.classes, dtype=object), dtype=_STR)
        f.create_dataset("class_index", data=np.array(layout.class_index, dtype=np.int64))
        f.create_dataset("layers", data=np.array(layout.layers, dtype=object), dtype=_STR)
        f.create_dataset("grid_shape", data=np.array(layout.grid_shape, dtype=np.int64))
        f.create_dataset("n_units", data=np.array(layout.n_units, dtype=np.int64))
        for name in CELL_FLOATS:
            f.create_dataset(name, data=np.full((c, n_l, k), np.nan))
        f.create_dataset("cell_count", data=np.full((c, n_l, k), -1, dtype=np.int64))
        f.create_dataset("done", data=np.zeros((c, n_l), dtype=bool))
        f.create_dataset("others", data=np.full((c, layout.max_others), -1, dtype=np.int64))
        f.create_dataset("image_rows", data=np.full((c, p), -1, dtype=np.int64))
        f.create_dataset("rank_before", data=np.full((c, p), -1, dtype=np.int64))
        f.create_dataset("rank_baseline", shape=(c, n_l, p), dtype=np.int32, fillvalue=-1)
        f.create_dataset("rank_after", shape=(c, n_l, k, p), dtype=np.int32, fillvalue=-1,
                         chunks=(1, 1, k, max(p, 1)), compression="gzip")
        if layout.config.get("ablation") == "resample":
            f.create_dataset("donor_rows", shape=(c, n_l, k, p), dtype=np.int64, fillvalue=-1,
                             chunks=(1, 1, k, max(p, 1)), compression="gzip")
        for layer, u in zip(layout.layers, layout.n_units):
            g = f.create_group(f"units/{layer}")
            row = (1, min(u, 1 << 18))
            for name in ("selectivity", "magnitude"):
                g.create_dataset(name, shape=(c, u), dtype=np.float32, fillvalue=np.nan,
                                 chunks=row, compression="gzip")
            g.create_dataset("membership", shape=(c, u), dtype=_membership_dtype(k),
                             fillvalue=-1, chunks=row, compression="gzip")
            g.create_dataset("sel_edges", data=np.full((c, n + 1), np.nan))
            g.create_dataset("mag_edges", data=np.full((c, n, m + 1), np.nan))


def check_kind(f: h5py.File, path: Path) -> None:
    """Raise a `KerablError` unless the open file `f` (read from `path`) is an H results file
    of this schema.

    Example:
        with h5py.File("out/h_results.h5") as f:
            check_kind(f, Path("out/h_results.h5"))   # None; a Z results file raises
    """
    check_results_kind(path, f.attrs.get("kind"), KIND)
    check_schema(path, f.attrs.get("schema"), SCHEMA, WRITER)


def shard_pairs(n_classes: int, n_layers: int, shard: tuple[int, int] | None) -> list[tuple[int, int]]:
    """The (class, layer) pairs of shard (i, n): pair number ci * n_layers + li modulo n is i
    (None: every pair).

    Example:
        shard_pairs(2, 2, (1, 2))   # [(0, 1), (1, 1)]
    """
    i, n = shard if shard is not None else (0, 1)
    return [(ci, li) for ci in range(n_classes) for li in range(n_layers)
            if (ci * n_layers + li) % n == i]


def _padded(values, length: int, name: str, dtype) -> np.ndarray:
    arr = np.asarray(values, dtype=dtype).ravel()
    if arr.size > length:
        raise KerablError(f"{name} has {arr.size} entries, more than the file's {length}; "
                          "raise max_images / max_others when creating the writer")
    out = np.full(length, -1, dtype=dtype)
    out[:arr.size] = arr
    return out


def _cell_vector(values, k: int, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).ravel()
    if arr.size != k:
        raise KerablError(f"{name} has {arr.size} values for a grid of {k} cells; pass one per cell")
    return arr


class HResultsWriter:
    """Append an H sweep's results pair by pair; resume; rename when the shard is done.

    Example:
        w = HResultsWriter("out/h.h5", config=cfg, classes=names, class_index=idx,
                           layers=["conv_1"], n_units=[1000], grid_shape=(4, 4),
                           max_images=50, max_others=10)
        for ci, li in w.pairs(): ...; w.write_pair(ci, li, ...)
        w.finish()   # Path("out/h.h5")

    Args:
        path: the final file; the run writes `PATH.partial` until its pairs are all done.
        config: the run's full configuration (JSON-serialisable); a different config
            for an existing file or partial file is refused, naming each differing key.
        classes, class_index: class names and their model output indices (study order).
        layers, n_units: target layer names and their unit counts.
        grid_shape: (n, m) of the grid.
        max_images: most target-class images of a class (P).
        max_others: most "other" classes of a class.
        shard: (i, n) to write only pairs k = ci * L + li with k % n == i, or None for all.
        log: where a replacement is said. A file whose config differs from this run's only in
            `contents` (the images changed) is replaced, and so is a partial file of another
            config that holds no finished pair; any other difference is refused.
        contents_note: what changed in the images (named in the replacement message).

    Attributes:
        complete: True when `path` already holds this run, finished (nothing to do).
    """

    def __init__(self, path, *, config: dict, classes, class_index, layers, n_units, grid_shape,
                 max_images: int, max_others: int, shard: tuple[int, int] | None = None,
                 log=None, contents_note: str = "the image contents changed"):
        self.path = Path(path)
        self.partial_path = partial_path(self.path)
        self.shard = shard
        layers = tuple(str(x) for x in layers)
        bad = [x for x in layers if "/" in x or not x]
        if bad:
            raise KerablError(f"layer names {bad} cannot name HDF5 groups; rename the layers")
        self.layout = ResultsLayout(
            config=_json_config(config), classes=tuple(str(x) for x in classes),
            class_index=tuple(int(x) for x in class_index), layers=layers,
            n_units=tuple(int(x) for x in n_units), grid_shape=tuple(int(x) for x in grid_shape),
            max_images=int(max_images), max_others=int(max_others),
            shard=f"{shard[0]}/{shard[1]}" if shard is not None else "")
        if len(self.layout.classes) != len(self.layout.class_index):
            raise KerablError(f"{len(self.layout.classes)} class names but "
                              f"{len(self.layout.class_index)} class indices; pass one per class")
        if len(layers) != len(self.layout.n_units):
            raise KerablError(f"{len(layers)} layers but {len(self.layout.n_units)} unit counts; "
                              "pass one per layer")
        self.complete = False
        self._log = log or (lambda message: None)
        self._contents_note = contents_note
        if self.path.exists() and self._check_existing(self.path):
            self.complete = True
        elif self.partial_path.exists() and self._check_existing(self.partial_path):
            pass
        else:
            self.partial_path.parent.mkdir(parents=True, exist_ok=True)
            create_results(self.partial_path, self.layout)

    def _check_existing(self, path: Path) -> bool:
        """True when `path` holds this run; False when it was replaceable and is removed."""
        try:
            with open_h5(path, "r") as f:      # waits while a reader holds it
                check_kind(f, path)
                stored = ResultsLayout.read(f)
                n_done = int(f["done"][()].sum())
        except (OSError, KeyError, RuntimeError) as err:
            reason = str(err).splitlines()[0][:120]
            if path != self.partial_path:
                raise KerablError(f"{path} is damaged ({reason}): delete it and rerun") from None
            # a run stopped mid-write (a kill, a full disk) can leave it unreadable
            self._log(f"discarding {path} (unreadable, cut off mid-write: {reason}): starting "
                      "afresh")
            path.unlink()
            return False
        differences = stored.differences(self.layout)
        if not differences:
            return True
        keys = set(differing_keys(stored.config, self.layout.config))
        if keys == {"contents"} and stored.as_dict() == self.layout.as_dict():
            self._log(f"{self._contents_note} since {path} was written: recomputing it")
        elif path == self.partial_path and n_done == 0:
            self._log(f"replacing {path}: it holds no finished pair and was written by a "
                      f"different run ({'; '.join(differences)})")
        else:
            raise KerablError(f"{path} was written by a different run ({'; '.join(differences)}); "
                              f"delete {path} or use another --out")
        path.unlink()
        return False

    def pairs(self) -> list[tuple[int, int]]:
        """(class position, layer position) pairs of this writer's shard, in order."""
        return shard_pairs(len(self.layout.classes), len(self.layout.layers), self.shard)

    def _open(self, mode: str = "r+") -> h5py.File:
        if self.complete:
            raise KerablError(f"{self.path} is finished; delete it or use another --out to rerun")
        return open_h5(self.partial_path, mode)

    def is_done(self, ci: int, li: int) -> bool:
        """Whether pair (ci, li) is stored."""
        if self.complete:
            return True
        with self._open("r") as f:
            return bool(f["done"][ci, li])

    def write_class(self, ci: int, *, image_rows, rank_before, others) -> None:
        """Store class `ci`'s image rows, ranks before ablation and other classes (-1 padded)."""
        rows = np.asarray(image_rows).ravel()
        before = np.asarray(rank_before).ravel()
        if rows.size != before.size:
            raise KerablError(f"{rows.size} image rows but {before.size} ranks for class {ci}; "
                              "pass one rank per image")
        with self._open() as f:
            f["image_rows"][ci] = _padded(rows, self.layout.max_images, "image_rows", np.int64)
            f["rank_before"][ci] = _padded(before, self.layout.max_images, "rank_before", np.int64)
            f["others"][ci] = _padded(others, self.layout.max_others, "others", np.int64)

    def write_pair(self, ci: int, li: int, *, selectivity, magnitude, grid, rank_after, deficit,
                   probe, probe_heldout, srs_tau, srs_rho, probe_loss=None,
                   rank_baseline=None, probe_fold=None, probe_fold_sd=None,
                   ablation_mean=None, donor_rows=None) -> None:
        """Store pair (ci, li): unit coordinates, the grid, per-cell scores; mark it done.

        Args:
            selectivity, magnitude: (U_l,) unit coordinates.
            grid: the `kerabl.hayne.grid.Grid` of these units.
            rank_after: (K, n_images) rank of the true class with each cell ablated.
            deficit, probe, probe_heldout, srs_tau, srs_rho, probe_loss: (K,) per-cell values
                (probe_loss: the mean training log loss, probe = exp(-probe_loss); NaN if None).
            rank_baseline: (n_images,) ranks through the same engine with an all-ones mask.
            probe_fold, probe_fold_sd: (K,) held-out probe with the grid rebuilt per fold, mean
                and standard deviation over folds (`kerabl.hayne.heldout`); None stores NaN.
            ablation_mean: the layer's mean output (mean ablation; stored once per layer).
            donor_rows: (K, n_images) image rows whose outputs the images took (resample).
        """
        k, u = self.layout.n_cells, self.layout.n_units[li]
        sel = np.asarray(selectivity, dtype=np.float64).ravel()
        mag = np.asarray(magnitude, dtype=np.float64).ravel()
        if sel.size != u or mag.size != u or grid.membership.size != u:
            raise KerablError(f"layer {self.layout.layers[li]} has {u} units but selectivity, "
                              f"magnitude, membership have {sel.size}, {mag.size}, "
                              f"{grid.membership.size}; pass this layer's units")
        if tuple(grid.shape) != self.layout.grid_shape:
            raise KerablError(f"grid {tuple(grid.shape)} differs from the file's "
                              f"{self.layout.grid_shape}; use one grid shape per run")
        after = np.asarray(rank_after)
        if after.ndim != 2 or after.shape[0] != k or after.shape[1] > self.layout.max_images:
            raise KerablError(f"rank_after has shape {after.shape}; pass (cells={k}, images <= "
                              f"{self.layout.max_images})")
        padded_after = np.full((k, self.layout.max_images), -1, dtype=np.int32)
        padded_after[:, :after.shape[1]] = after
        padded_baseline = np.full(self.layout.max_images, -1, dtype=np.int32)
        if rank_baseline is not None:
            padded_baseline[:after.shape[1]] = np.asarray(rank_baseline).ravel()
        if probe_loss is None:
            probe_loss = np.full(k, np.nan)
        counts = np.array([c.size for c in grid.cells], dtype=np.int64)
        values = {name: _cell_vector(v, k, name) for name, v in (
            ("probe", probe), ("probe_heldout", probe_heldout), ("deficit", deficit),
            ("srs_tau", srs_tau), ("srs_rho", srs_rho), ("probe_loss", probe_loss),
            ("probe_fold", np.full(k, np.nan) if probe_fold is None else probe_fold),
            ("probe_fold_sd", np.full(k, np.nan) if probe_fold_sd is None else probe_fold_sd))}
        values["cell_selectivity"] = np.array([sel[c].mean() if c.size else np.nan for c in grid.cells])
        values["cell_magnitude"] = np.array([mag[c].mean() if c.size else np.nan for c in grid.cells])
        with self._open() as f:
            for name, v in values.items():
                f[name][ci, li] = v
            f["cell_count"][ci, li] = counts
            f["rank_after"][ci, li] = padded_after
            f["rank_baseline"][ci, li] = padded_baseline
            g = f[f"units/{self.layout.layers[li]}"]
            g["selectivity"][ci] = sel.astype(np.float32)
            g["magnitude"][ci] = mag.astype(np.float32)
            g["membership"][ci] = grid.membership.astype(g["membership"].dtype)
            g["sel_edges"][ci] = grid.sel_edges
            g["mag_edges"][ci] = grid.mag_edges
            write_ablation_values(f, self.layout.layers[li], ci, li, ablation_mean, donor_rows)
            f["done"][ci, li] = True
            f.flush()

    def finish(self) -> Path | None:
        """Mark the file complete and rename it to `path` when every pair of the shard is done.

        Returns:
            The final path, or None while pairs are missing.
        """
        if self.complete:
            return self.path
        with self._open() as f:
            done = f["done"][()]
            if not all(done[ci, li] for ci, li in self.pairs()):
                return None
            f.attrs["complete"] = True
        finish_partial(self.path)
        self.complete = True
        return self.path


def write_ablation_values(f: h5py.File, layer: str, ci: int, li: int, mean=None,
                          donors=None) -> None:
    """Store what removed units took (see the module docstring): the layer's mean output
    (once) and pair (ci, li)'s donor rows.

    Example:
        write_ablation_values(f, "conv_3", 0, 2, mean=None, donors=donor_rows)   # (K, n)
    """
    name = f"ablation_mean/{layer}"
    if mean is not None and name not in f:
        f.create_dataset(name, data=np.asarray(mean, np.float32).ravel())
        f[name].attrs["shape"] = np.asarray(np.shape(mean), np.int64)
    if donors is not None:
        donors = np.asarray(donors, np.int64)
        padded = np.full(f["donor_rows"].shape[2:], -1, np.int64)
        padded[:, :donors.shape[1]] = donors
        f["donor_rows"][ci, li] = padded


def ablation_mean(f: h5py.File, layer: str) -> np.ndarray | None:
    """The stored mean output of `layer` (its output shape), or None (not mean ablation).

    Example:
        with h5py.File("out/h_results.h5") as f:
            ablation_mean(f, "conv_3").shape      # (8, 8, 16)
    """
    name = f"ablation_mean/{layer}"
    return f[name][()].reshape(tuple(f[name].attrs["shape"])) if name in f else None


def cell_dataset(f: h5py.File, name: str, index=()) -> np.ndarray:
    """`f[name][index]`; for an `OPTIONAL` dataset the file was written without, NaN of the
    probe's shape (cell values) or -1 of the (C, L, P) rank shape (`rank_baseline`).

    Example:
        with h5py.File("out/h_results.h5") as f:
            cell_dataset(f, "probe_fold", (0, 2)).shape   # (16,): class 0, layer 2
    """
    if name in OPTIONAL and name not in f:
        if name == "rank_baseline":
            return np.full(f["rank_after"].shape[:2] + f["rank_after"].shape[3:], -1)[index]
        return np.full(f["probe"].shape, np.nan)[index]
    return f[name][index]


class HResults:
    """A finished H results file, read-only: (C, L, K) arrays in memory, units on demand.

    Example:
        res = HResults.open("out/h.h5")
        res.deficit[0, 2].reshape(res.grid_shape)   # class 0, layer 2, as an n x m grid
        res.units(0, "conv_3")["membership"]

    Attributes:
        config, versions: the run's configuration and library versions.
        classes, class_index, layers, grid_shape, n_units, shard, complete: the study's shape.
        probe, probe_heldout, probe_loss, deficit, srs_tau, srs_rho: (C, L, K).
        cell_selectivity, cell_magnitude, cell_count: (C, L, K); done: (C, L);
            rank_before, image_rows: (C, P);
            rank_baseline: (C, L, P); rank_after: (C, L, K, P); others: (C, max_others).
            Files written before `probe_loss` / `rank_baseline` existed read them as NaN / -1.
    """

    def __init__(self, path: Path, f: h5py.File):
        with reading_results(path, WRITER):
            layout = ResultsLayout.read(f)
            self.path = path
            self.config = layout.config
            self.versions = json.loads(f.attrs["versions"])
            self.shard = layout.shard
            self.complete = bool(f.attrs["complete"])
            self.classes = list(layout.classes)
            self.class_index = np.asarray(layout.class_index, dtype=np.int64)
            self.layers = list(layout.layers)
            self.grid_shape = layout.grid_shape
            self.n_units = np.asarray(layout.n_units, dtype=np.int64)
            for name in CELL_ARRAYS + CLASS_ARRAYS + ("done", "rank_after", "rank_baseline"):
                setattr(self, name, cell_dataset(f, name))
            self.ablation = str(self.config.get("ablation", "zero"))
            self.donor_rows = f["donor_rows"][()] if "donor_rows" in f else None
        self._check_shapes()

    def ablation_mean(self, layer: str) -> np.ndarray | None:
        """The mean output of `layer` that mean ablation gave its removed units, else None.

        Example:
            HResults.open("out/mean/h_results.h5").ablation_mean("conv_5").shape   # (13, 13, 256)
        """
        with open_h5(self.path) as f:
            return ablation_mean(f, layer)

    def _check_shapes(self) -> None:
        """Every array of the shape its layout gives (a damaged file is one line)."""
        c, l_ = len(self.classes), len(self.layers)
        if not isinstance(self.config, dict):
            raise KerablError(damaged_line(self.path, "config is not a JSON object", WRITER))
        check_shape(self.path, "grid_shape", np.asarray(self.grid_shape), (2,), WRITER)
        k = int(np.prod(self.grid_shape))
        p, o = self.image_rows.shape[-1], self.others.shape[-1]
        shapes = {"class_index": (c,), "n_units": (l_,), "done": (c, l_), "image_rows": (c, p),
                  "rank_before": (c, p), "others": (c, o), "rank_after": (c, l_, k, p),
                  "rank_baseline": (c, l_, p), **{name: (c, l_, k) for name in CELL_ARRAYS}}
        for name, shape in shapes.items():
            check_shape(self.path, name, getattr(self, name), shape, WRITER)

    @classmethod
    def open(cls, path, allow_partial: bool = False) -> "HResults":
        """Read a results file; `allow_partial=True` also reads `PATH.partial` of a run in progress.

        Example:
            res = HResults.open("out/h.h5")
            res.done.all()   # True
        """
        path = Path(path)
        if not path.exists() and allow_partial and partial_path(path).exists():
            path = partial_path(path)
        if not path.exists():
            hint = (f"; {partial_path(path).name} exists: the run has not finished, rerun it to resume"
                    if partial_path(path).exists() else "; run `kerabl study` to write it")
            raise KerablError(f"no results file at {path}{hint}")
        with reading_results(path, WRITER), open_h5(path) as f:
            check_kind(f, path)
            if not bool(f.attrs["complete"]) and not allow_partial:
                done = f["done"][()]
                raise KerablError(f"{path} is incomplete ({int(done.sum())} of {done.size} pairs "
                                  "done); rerun the command that wrote it to finish it")
            return cls(path, f)

    def units(self, ci: int, layer) -> dict:
        """Per-unit data of class position `ci` at `layer` (name or position).

        Returns:
            {"selectivity", "magnitude", "membership", "sel_edges", "mag_edges"} arrays.
        """
        name = self.layers[layer] if isinstance(layer, (int, np.integer)) else str(layer)
        if name not in self.layers:
            raise KerablError(f"layer {name!r} is not in {self.path} (layers: {self.layers})")
        c, u = len(self.classes), int(self.n_units[self.layers.index(name)])
        n, m = self.grid_shape
        shapes = {"selectivity": (c, u), "magnitude": (c, u), "membership": (c, u),
                  "sel_edges": (c, n + 1), "mag_edges": (c, n, m + 1)}
        with reading_results(self.path, WRITER), open_h5(self.path) as f:
            g = f[f"units/{name}"]
            for key, shape in shapes.items():
                check_shape(self.path, f"units/{name}/{key}", g[key], shape, WRITER)
            return {key: g[key][ci] for key in UNIT_ARRAYS}


CSV_COLUMNS = ("class", "class_index", "layer", "cell", "sel_bin", "mag_bin", "n_units",
               "cell_selectivity", "cell_magnitude", "probe", "probe_heldout", "deficit",
               "srs_tau", "srs_rho", "probe_fold", "probe_fold_sd", "probe_loss", "ablation")


def export_csv(results_path, csv_path) -> Path:
    """Write a results file as CSV, one row per class x layer x cell (class-major order).

    Example:
        export_csv("out/h.h5", "out/h.csv")
        # class,class_index,layer,cell,sel_bin,mag_bin,n_units,...

    Columns:
        class: class name; class_index: the model's output index of the class;
        layer: target layer name; cell: cell id sel_bin * m + mag_bin;
        sel_bin: selectivity strip (0 = lowest); mag_bin: magnitude cell within the strip
        (0 = lowest); n_units: units in the cell (-1 if the pair was not run);
        cell_selectivity, cell_magnitude: mean coordinates of the cell's units;
        probe: paper probe score exp(-mean training log loss of hard labels);
        probe_heldout: cross-validated balanced accuracy of a standardised logistic regression;
        deficit: mean rank deficit of the target-class images with the cell ablated;
        srs_tau, srs_rho: Kendall tau / Spearman rho between the cell's image RDM and the
        class template RDM; probe_fold, probe_fold_sd: held-out balanced accuracy with the
        grid rebuilt inside each training fold, mean and standard deviation over folds;
        probe_loss: the mean training log loss (probe = exp(-probe_loss));
        ablation: how a removed unit was removed: zero, mean or resample.
        Missing values are empty fields.

    Returns:
        The CSV path (written under a temporary name, then renamed).
    """
    res = HResults.open(results_path)
    csv_path = Path(csv_path)
    m = res.grid_shape[1]

    def fmt(v) -> str:
        return "" if np.isnan(v) else repr(float(v))

    rows = ([name, int(res.class_index[ci]), layer, k, k // m, k % m, int(res.cell_count[ci, li, k])]
            + [fmt(getattr(res, col)[ci, li, k]) for col in CSV_COLUMNS[7:-1]] + [res.ablation]
            for ci, name in enumerate(res.classes)
            for li, layer in enumerate(res.layers)
            for k in range(res.cell_count.shape[2]))
    return write_csv_atomic(csv_path, CSV_COLUMNS, rows)
