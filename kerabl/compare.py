"""`kerabl compare`: two cell CSVs of `kerabl export`'s schema, joined and compared.

- `read_cells(path)`: (class, layer, cell) -> {"deficit", "probe"} floats (NaN for empty fields);
  a UTF-8 byte-order mark and CRLF line ends (a CSV saved by Excel) are read.
- `compare_csv(a, b, tolerance, out_dir)`: a `Comparison`: per layer the cells compared, max |diff|
  and Pearson r of deficit and probe; the cells that differ (beyond the tolerance, or a number on
  one side against NaN or an empty field on the other); rows missing on either side; with
  `out_dir`, the scatter figure `compare.png` / `.pdf`. A comparison in which no value is a number
  on both sides fails: nothing was compared.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from kerabl.errors import KerablError
from kerabl.plotting import save_figure

KEY_COLUMNS = ("class", "layer", "cell")
VALUE_COLUMNS = ("deficit", "probe")
SHOWN = 20  # cells listed one by one at most


def _float(text: str, path: Path, line: int, column: str) -> float:
    if text.strip() == "":
        return math.nan
    try:
        return float(text)
    except ValueError:
        raise KerablError(f"{path} line {line}: {column} {text!r} is not a number; pass a CSV "
                          "written by `kerabl export` or in its schema") from None


def read_cells(path) -> dict[tuple[str, str, int], dict[str, float]]:
    """A cell CSV as (class, layer, cell) -> {"deficit": x, "probe": y} (NaN where empty).

    Example:
        cells = read_cells("out/cells.csv")
        cells[("schooner", "conv_3", 5)]["deficit"]   # 1.84

    Raises:
        KerablError: a missing or unreadable file, columns of another schema, a repeated key.
    """
    path = Path(path)
    if not path.is_file():
        raise KerablError(f"CSV file {path} does not exist: write it with `kerabl export`")
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = reader.fieldnames or []
            missing = [c for c in KEY_COLUMNS + VALUE_COLUMNS if c not in header]
            if missing:
                raise KerablError(f"{path} has no column {', '.join(missing)}: it is not a cell "
                                  "CSV of `kerabl export`'s schema (class, layer, cell, ..., "
                                  "probe, ..., deficit)")
            cells: dict[tuple[str, str, int], dict[str, float]] = {}
            for line, row in enumerate(reader, start=2):
                try:
                    key = (row["class"], row["layer"], int(row["cell"]))
                except (TypeError, ValueError):
                    raise KerablError(f"{path} line {line}: cell {row.get('cell')!r} is not an "
                                      "integer; pass a CSV in `kerabl export`'s schema") from None
                if key in cells:
                    raise KerablError(f"{path} line {line}: cell {key} appears twice; pass one "
                                      "row per class x layer x cell")
                cells[key] = {c: _float(row[c] or "", path, line, c) for c in VALUE_COLUMNS}
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise KerablError(f"cannot read {path} ({type(error).__name__}): pass a CSV written by "
                          "`kerabl export`") from None
    return cells


def ablation_methods(path) -> set[str]:
    """The values of a cell CSV's `ablation` column (zero, mean, resample); empty when the
    file has no such column (a port's CSV may leave it out).

    Example:
        ablation_methods("out/cells.csv")   # {"zero"}
    """
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if "ablation" not in (reader.fieldnames or []):
            return set()
        return {row["ablation"] for row in reader if row["ablation"]}


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson r of paired values, NaN with fewer than two pairs or a constant side.

    Example:
        pearson(np.array([1.0, 2, 3]), np.array([2.0, 4, 7]))   # 0.99...
    """
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan
    return float(np.corrcoef(x, y)[0, 1])


@dataclass
class LayerStats:
    """One layer's comparison: cells in both files and, per value, pairs, max |diff| and r.

    Example:
        compare_csv("kerabl.csv", "port.csv").layers[0].max_diff["deficit"]   # e.g. 0.0
    """

    layer: str
    cells: int
    pairs: dict[str, int] = field(default_factory=dict)
    max_diff: dict[str, float] = field(default_factory=dict)
    r: dict[str, float] = field(default_factory=dict)


@dataclass
class Comparison:
    """The result of `compare_csv`; `ok` is False when a cell differs, a row is missing or no
    value was a number on both sides (nothing compared).

    Example:
        c = compare_csv("kerabl.csv", "port.csv")
        c.ok, c.only_a, c.lines()[0]   # True, [], "..."
    """

    a: Path
    b: Path
    tolerance: float
    layers: list[LayerStats]
    beyond: list[tuple[tuple[str, str, int], str, float, float]]
    only_a: list[tuple[str, str, int]]
    only_b: list[tuple[str, str, int]]
    figure: list[Path]
    columns: tuple[str, ...] = VALUE_COLUMNS

    @property
    def compared(self) -> int:
        """Values (of the compared columns) that are numbers on both sides."""
        return sum(sum(s.pairs.values()) for s in self.layers)

    @property
    def ok(self) -> bool:
        return self.compared > 0 and not (self.beyond or self.only_a or self.only_b)

    def lines(self) -> list[str]:
        """The report `kerabl compare` prints, one layer per line, then the differing cells."""
        def fmt(v: float) -> str:
            return "n/a" if math.isnan(v) else f"{v:.6g}"

        out = []
        for s in self.layers:
            parts = [f"{c}: max |diff| {fmt(s.max_diff[c])}, r {fmt(s.r[c])} ({s.pairs[c]} pairs)"
                     for c in self.columns]
            out.append(f"{s.layer}: {s.cells} cells; " + "; ".join(parts))
        for side, keys in (("A", self.only_a), ("B", self.only_b)):
            if keys:
                out.append(f"{len(keys)} cells only in {side} ({self.a if side == 'A' else self.b})"
                           f", e.g. {', '.join(map(str, keys[:3]))}")
        for key, column, x, y in self.beyond[:SHOWN]:
            out.append(f"differs: {key[0]} {key[1]} cell {key[2]} {column} {x!r} vs {y!r}")
        if len(self.beyond) > SHOWN:
            out.append(f"... and {len(self.beyond) - SHOWN} more cells beyond the tolerance")
        out.append(f"{sum(s.cells for s in self.layers)} cells compared, {len(self.beyond)} "
                   f"differ (beyond tolerance {self.tolerance:g}, or a number against NaN/empty), "
                   f"{len(self.only_a) + len(self.only_b)} missing on one side")
        if not self.compared:
            out.append(f"nothing compared: no {' or '.join(self.columns)} is a number in both "
                       "files (no common cells, or the values are empty or NaN); check the files")
        return out


def compare_csv(a, b, *, tolerance: float = 1e-9, out_dir=None,
                columns: Sequence[str] = VALUE_COLUMNS) -> Comparison:
    """Join two cell CSVs on (class, layer, cell) and compare `columns` (deficit and probe;
    `columns=("deficit",)` for a port that computes no probe, such as `kerabl crosscheck`'s).

    Example:
        c = compare_csv("kerabl.csv", "port.csv", tolerance=1e-6, out_dir="cmp")
        c.ok            # False when a cell differs by more than 1e-6 or a row is missing
        print("\\n".join(c.lines()))

    A cell differs when, for deficit or probe, |a - b| > tolerance, or one side is a number and
    the other NaN or empty (both NaN or empty is equal). Max |diff| and r are over the values
    that are finite on both sides.
    """
    if not tolerance >= 0:
        raise KerablError(f"--tolerance must be >= 0, got {tolerance}")
    columns = tuple(columns)
    if not columns or any(c not in VALUE_COLUMNS for c in columns):
        raise KerablError(f"--columns {','.join(columns)}: choose from {', '.join(VALUE_COLUMNS)}")
    a, b = Path(a), Path(b)
    cells_a, cells_b = read_cells(a), read_cells(b)
    methods = {path: ablation_methods(path) for path in (a, b)}
    if all(methods.values()) and methods[a] != methods[b]:
        raise KerablError(f"{a} holds {', '.join(sorted(methods[a]))} ablation and {b} "
                          f"{', '.join(sorted(methods[b]))}: compare runs of one ablation method")
    common = [k for k in cells_a if k in cells_b]
    layers = list(dict.fromkeys(k[1] for k in common))
    stats, beyond, points = [], [], {}
    for layer in layers:
        keys = [k for k in common if k[1] == layer]
        s = LayerStats(layer, len(keys))
        for column in columns:
            x = np.array([cells_a[k][column] for k in keys])
            y = np.array([cells_b[k][column] for k in keys])
            both = np.isfinite(x) & np.isfinite(y)
            diff = np.abs(x[both] - y[both])
            s.pairs[column] = int(both.sum())
            s.max_diff[column] = float(diff.max()) if diff.size else math.nan
            s.r[column] = pearson(x[both], y[both])
            points[(layer, column)] = (x[both], y[both])
            with np.errstate(invalid="ignore"):
                same = (x == y) | (np.isnan(x) & np.isnan(y)) | (np.abs(x - y) <= tolerance)
            beyond += [(k, column, float(u), float(v))
                       for k, u, v, ok in zip(keys, x, y, same) if not ok]
        stats.append(s)
    order = {k: n for n, k in enumerate(common)}
    beyond.sort(key=lambda item: (order[item[0]], item[1]))
    figure = (_scatter(points, layers, columns, a, b, Path(out_dir)) if out_dir is not None
              else [])
    return Comparison(a=a, b=b, tolerance=tolerance, layers=stats, beyond=beyond,
                      only_a=[k for k in cells_a if k not in cells_b],
                      only_b=[k for k in cells_b if k not in cells_a], figure=figure,
                      columns=columns)


def _scatter(points: dict, layers: list[str], columns: Sequence[str], a: Path, b: Path,
             out_dir: Path) -> list[Path]:
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    columns = [c for c in columns if any(len(points[(lay, c)][0]) for lay in layers)]
    fig = Figure(figsize=(4.2 * max(len(columns), 1), 4.0))
    FigureCanvasAgg(fig)
    colours = colormaps["viridis"](np.linspace(0, 0.9, max(len(layers), 1)))
    for n, column in enumerate(columns):
        ax = fig.add_subplot(1, len(columns), n + 1)
        values = [v for lay in layers for v in (*points[(lay, column)][0], *points[(lay, column)][1])]
        low, high = min(values), max(values)
        ax.plot([low, high], [low, high], color="0.7", lw=1, zorder=0)
        for lay, colour in zip(layers, colours):
            x, y = points[(lay, column)]
            ax.scatter(x, y, s=10, color=colour, label=lay, alpha=0.8)
        ax.set_xlabel(f"{column}: {a.name}")
        ax.set_ylabel(f"{column}: {b.name}")
        ax.set_title(f"{column} per cell")
        if n == 0:
            ax.legend(fontsize=7, markerscale=1.5, frameon=False)
    try:
        return save_figure(fig, out_dir / "compare")
    except OSError as error:
        raise KerablError(f"cannot write the figure in {out_dir} ({error.strerror}): choose a "
                          "writable --out") from None
