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
from kerabl.store import check_results_kind, write_csv_atomic
from kerabl.zhou.attributes import ATTRIBUTES


Z_KIND = "kerabl.z-results"
DROPS = ("overall_drop", "max_class_drop")


def _read_config(path: Path) -> dict[str, Any]:
    import h5py

    with h5py.File(path, "r") as f:
        check_results_kind(path, f.attrs.get("kind"), Z_KIND)
        return json.loads(f.attrs["config"])


@dataclass
class ZResults:
    """Reader of a Z results file (numpy and h5py only).

    Example:
        z = ZResults.open("out/z_demo.h5")
        z.layers, z.layer("conv_3")["max_class_drop"], z.greedy["curves"]

    Attributes:
        path, config, versions, layers (names in study order), labels (N,), classes (C,),
        class_names, greedy (dict: curves (C, steps+1), order (C, steps), random
        (C, seeds, steps+1), layer), thumbnails (N, h, w, 3) uint8 or None.
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
        config = _read_config(path)
        with h5py.File(path, "r") as f:
            layers = {name: _read_group(f[f"layer_{name}"]) for name in config["layers"]}
            return cls(path=path, config=config, versions=json.loads(f.attrs["versions"]),
                       labels=f["labels"][()], classes=f["classes"][()],
                       class_names=[n.decode() if isinstance(n, bytes) else str(n)
                                    for n in f["class_names"][()]],
                       greedy=_read_group(f["greedy"]),
                       thumbnails=f["thumbnails"][()] if "thumbnails" in f else None,
                       _layers=layers)

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
