"""Reading Z results (no TensorFlow import).

- `ZResults.open(path)`: reader of a results file written by `kerabl.zhou.study.run_z_study`.
- `export_units_csv(z_path, csv_path)`: one row per (layer, unit).
- `display_images(images)`: preprocessed images back to displayable uint8 thumbnails.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kerabl.errors import KerablError
from kerabl.store import (check_results_kind, check_schema, check_shape, damaged_line,
                          reading_results, write_csv_atomic)
from kerabl.zhou.attributes import ATTRIBUTES


Z_KIND = "kerabl.z-results"
# The layout version, as H files have: files written before the attribute existed have this
# layout and read as schema 1.
Z_SCHEMA = 1
WRITER = "kerabl units"   # the command that writes a Z results file, named when one is damaged
DROPS = ("overall_drop", "max_class_drop")
# per-unit vectors of a layer group: one value per unit, as the figures and the CSV read them
UNIT_VECTORS = DROPS + ("rand_overall_drop", "rand_max_class_drop", "argmax_class") + ATTRIBUTES


def read_config(path: Path) -> dict[str, Any]:
    """The recorded config of a Z results file (a one-line error for another file).

    Example:
        read_config(Path("out/z_results.h5"))["seed"]   # 0
    """
    import h5py

    with reading_results(path, WRITER), h5py.File(path, "r") as f:
        check_results_kind(path, f.attrs.get("kind"), Z_KIND)
        check_schema(path, f.attrs.get("schema", Z_SCHEMA), Z_SCHEMA, WRITER)
        config = json.loads(f.attrs["config"])
        if not isinstance(config, dict) or not isinstance(config.get("layers"), list):
            raise KerablError(damaged_line(path, "its config names no layers", WRITER))
        return config


@dataclass
class ZResults:
    """Reader of a Z results file (numpy and h5py only).

    Example:
        z = ZResults.open("out/z_demo.h5")
        z.layers, z.layer("conv_3")["max_class_drop"], z.greedy["curves"]

    Attributes:
        path, config, versions: the file, the run's configuration and library versions.
        layers, labels, classes, class_names: layer names in study order; labels (N,);
            classes (C,).
        greedy: dict of curves (C, steps+1), order (C, steps), random (C, seeds, steps+1), layer.
        thumbnails: (N, h, w, 3) uint8 or None.
    """

    path: Path
    config: dict[str, Any]
    versions: dict[str, str]
    labels: np.ndarray
    classes: np.ndarray
    class_names: list[str]
    greedy: dict[str, Any]
    thumbnails: np.ndarray | None
    _layers: dict[str, dict[str, Any]] = field(repr=False)

    @classmethod
    def open(cls, path: str | os.PathLike) -> "ZResults":
        """Read a finished results file written by `run_z_study`."""
        import h5py

        path = Path(path)
        if not path.exists():
            hint = " (the run has not finished: rerun it)" if path.with_name(
                path.name + ".partial").exists() else ""
            raise KerablError(f"no Z results at {path}{hint}: run `kerabl units` first")
        config = read_config(path)
        with reading_results(path, WRITER), h5py.File(path, "r") as f:
            layers = {name: _read_group(f[f"layer_{name}"]) for name in config["layers"]}
            z = cls(path=path, config=config, versions=json.loads(f.attrs["versions"]),
                    labels=f["labels"][()], classes=f["classes"][()],
                    class_names=[n.decode() if isinstance(n, bytes) else str(n)
                                 for n in f["class_names"][()]],
                    greedy=_read_group(f["greedy"]),
                    thumbnails=f["thumbnails"][()] if "thumbnails" in f else None,
                    _layers=layers)
        z._check_shapes()
        return z

    def _check_shapes(self) -> None:
        """The arrays the figures and the CSV read, of consistent shapes (else one line)."""
        n, c = len(self.labels), len(self.classes)
        check_shape(self.path, "labels", self.labels, (None,), WRITER)
        check_shape(self.path, "class_names", np.asarray(self.class_names), (c,), WRITER)
        if self.thumbnails is not None:
            check_shape(self.path, "thumbnails", self.thumbnails, (n, None, None, 3), WRITER)
        needed = [f"layer_{name}/{key}" for name, d in self._layers.items()
                  for key in (*UNIT_VECTORS, "top_images", "top_maps") if key not in d]
        needed += [f"greedy/{key}" for key in ("curves", "random", "order")
                   if key not in self.greedy]
        if needed:
            raise KerablError(damaged_line(self.path, f"no dataset {', '.join(needed[:3])}",
                                           WRITER))
        for name, d in self._layers.items():
            units = np.shape(d["overall_drop"])[:1]
            for key in UNIT_VECTORS:
                check_shape(self.path, f"layer_{name}/{key}", d[key], units, WRITER)
            check_shape(self.path, f"layer_{name}/top_images", d["top_images"], (*units, None),
                        WRITER)
            maps = np.shape(d["top_maps"])
            if maps[:2] != d["top_images"].shape[:2]:
                raise KerablError(damaged_line(
                    self.path, f"layer_{name}/top_maps has shape {maps}, not "
                    f"{d['top_images'].shape[:2]} + a map", WRITER))
            for key, top in (("top_images", n), ("argmax_class", c)):
                if d[key].size and not 0 <= d[key].min() <= d[key].max() < top:
                    raise KerablError(damaged_line(self.path, f"layer_{name}/{key} holds numbers "
                                                   f"beyond 0..{top - 1}", WRITER))
        steps = self.greedy["curves"].shape[1:2]
        for key, shape in (("curves", (c, *steps)), ("random", (c, None, *steps)),
                           ("order", (c, None))):
            check_shape(self.path, f"greedy/{key}", self.greedy[key], shape, WRITER)

    @property
    def layers(self) -> list[str]:
        return list(self.config["layers"])

    def layer(self, name: str) -> dict[str, Any]:
        """Arrays of one layer: class_acc, overall_drop, max_class_drop, l1, selectivity, ..."""
        if name not in self._layers:
            raise KerablError(f"no layer {name!r} in {self.path}: use one of {', '.join(self.layers)}")
        return self._layers[name]

    def correlations(self, name: str) -> dict[str, dict[str, dict[str, float]]]:
        """`attribute_drop_correlations` of one layer, as stored."""
        with reading_results(self.path, WRITER):
            return json.loads(self.layer(name)["correlations"])


def _read_group(group) -> dict[str, Any]:
    out: dict[str, Any] = {key: group[key][()] for key in group}
    out.update({key: value for key, value in group.attrs.items() if key != "done"})
    return out


def display_images(images: np.ndarray) -> np.ndarray:
    """Network inputs scaled per image to 0..255 uint8 for display (thumbnails, figures).

    Example:
        display_images(np.array([[[[-1.0, 0, 1]]]]))   # array([[[[  0, 128, 255]]]], dtype=uint8)
    """
    images = np.asarray(images, dtype=np.float64)
    lo = images.min(axis=(1, 2, 3), keepdims=True)
    hi = images.max(axis=(1, 2, 3), keepdims=True)
    scaled = (images - lo) / np.where(hi > lo, hi - lo, 1.0)
    return np.round(scaled * 255).astype(np.uint8)


CSV_COLUMNS = ("layer", "unit", "overall_drop", "max_class_drop", "argmax_class", "argmax_class_name",
               "l1", "max_class_corr", "selectivity", "rand_max_class_drop", "ablation")


def export_units_csv(z_path: str | os.PathLike, csv_path: str | os.PathLike) -> Path:
    """Write one row per layer x unit with the scalar columns (`CSV_COLUMNS`).

    Example:
        export_units_csv("out/z_demo.h5", "out/z_units.csv")

    `argmax_class` is the output index of the most-hurt class; `rand_max_class_drop` is the
    max class drop of random direction k of the same layer (a separate sample, not unit k);
    `ablation` how a removed unit was removed (zero, mean or resample).
    """
    z = ZResults.open(z_path)
    csv_path = Path(csv_path)
    csv_path.parent.mkdir(parents=True, exist_ok=True)

    def row(name: str, d: dict, unit: int) -> list:
        top = int(d["argmax_class"][unit])
        return [name, unit, *(_num(d[k][unit]) for k in DROPS), int(z.classes[top]),
                z.class_names[top], *(_num(d[k][unit]) for k in (*ATTRIBUTES, "rand_max_class_drop")),
                z.config.get("ablation", "zero")]

    rows = (row(name, d, unit) for name, d in ((n, z.layer(n)) for n in z.layers)
            for unit in range(len(d["overall_drop"])))
    return write_csv_atomic(csv_path, CSV_COLUMNS, rows)


def _num(value) -> str:
    return repr(float(value))
