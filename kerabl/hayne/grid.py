"""The H study's unit grid on the (selectivity, magnitude) plane.

- `choose_others(n_classes, target, mode, seed)`: the "other" classes of a target class.
- `coordinates(target_mean, other_mean)`: each unit's (selectivity, magnitude).
- `Grid`: unit -> cell membership, the grid's edges and each cell's units.
- `equal_count_grid(selectivity, magnitude, shape, legacy_bounds)`: the equal-count grid,
  or the authors' inclusive-bounds grid with `legacy_bounds=True`.

No TensorFlow here: figures and statistics import this module with TensorFlow blocked.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kerabl.errors import KerablError
from kerabl.hayne.config import others_count


def choose_others(n_classes: int, target: int, mode: str = "random-10", seed: int = 0) -> np.ndarray:
    """Positions (0..n_classes-1, study order) of the classes whose images are "other" images.

    Example:
        choose_others(50, 3)                # 10 positions, never 3, same for the same (seed, target)
        choose_others(8, 0, mode="all")     # array([1, 2, 3, 4, 5, 6, 7])

    Args:
        n_classes: number of classes in the study.
        target: position of the target class.
        mode: "all" (every other class) or "random-K" (K drawn without replacement with
            `np.random.default_rng([seed, target])`; all others if fewer than K).
        seed: the recorded seed of the draw.

    Returns:
        Sorted int64 positions.
    """
    if not 0 <= target < n_classes:
        raise KerablError(f"target class position {target} is outside 0..{n_classes - 1}; "
                          "pass a position in the study's class list")
    others = np.array([c for c in range(n_classes) if c != target], dtype=np.int64)
    k = others_count(mode)
    if k is None:
        return others
    if k >= others.size:
        return others
    rng = np.random.default_rng([seed, target])
    return np.sort(rng.choice(others, size=k, replace=False))


def coordinates(target_mean, other_mean,
                precision: str = "float64") -> tuple[np.ndarray, np.ndarray]:
    """Selectivity (a - o)/sqrt(2) and magnitude (a + o)/sqrt(2) of each unit, as float64.

    Example:
        sel, mag = coordinates([3.0, 1.0], [1.0, 1.0])
        sel  # array([1.41421356, 0.        ]); mag  # array([2.82842712, 1.41421356])

    Args:
        target_mean: (n_units,) mean activation over target-class images (a).
        other_mean: (n_units,) mean activation over other-class images (o).
        precision: "float64", or "float32": the authors' arithmetic on float32 means (numpy 1's
            rules: a - o, a + o and the division by np.sqrt(2) all in float32).
    """
    dtype = np.float32 if precision == "float32" else np.float64
    a = np.asarray(target_mean, dtype=dtype).ravel()
    o = np.asarray(other_mean, dtype=dtype).ravel()
    if a.shape != o.shape:
        raise KerablError(f"target and other means have {a.size} and {o.size} units; "
                          "pass the means of the same layer")
    root2 = dtype(np.sqrt(2.0))
    return ((a - o) / root2).astype(np.float64), ((a + o) / root2).astype(np.float64)


@dataclass
class Grid:
    """Cells of one layer's units for one class: membership, edges and unit lists.

    Example:
        grid = equal_count_grid(sel, mag)
        grid.units((3, 3))         # the most selective, highest-magnitude units
        grid.membership[:5]        # cell ids i * m + j, -1 = in no cell

    Attributes:
        shape: (n selectivity strips, m magnitude cells).
        membership: (n_units,) int32 cell id i * m + j (i: strip, 0 = lowest selectivity;
            j: 0 = lowest magnitude); -1 = in no cell (legacy grid only).
        sel_edges: (n + 1,) selectivity at the strip boundaries.
        mag_edges: (n, m + 1) magnitude boundaries within each strip.
        cells: the unit indices of each cell (n * m arrays); in the legacy grid a unit may
            appear in two cells, and `membership` holds the first of them.
    """

    shape: tuple[int, int]
    membership: np.ndarray
    sel_edges: np.ndarray
    mag_edges: np.ndarray
    cells: list[np.ndarray]

    def units(self, cell) -> np.ndarray:
        """Unit indices of `cell`, given as a cell id `i * m + j` or as a pair `(i, j)`."""
        n, m = self.shape
        k = cell[0] * m + cell[1] if isinstance(cell, tuple) else int(cell)
        if not 0 <= k < n * m:
            raise KerablError(f"cell {cell!r} is outside the {n} x {m} grid; "
                              f"pass 0..{n * m - 1} or (i, j)")
        return self.cells[k]


def _split_edges(values: np.ndarray, parts: list[np.ndarray]) -> np.ndarray:
    """Boundaries of consecutive sorted parts: min, midpoints between neighbours, max."""
    edges = np.full(len(parts) + 1, np.nan)
    filled = [p for p in parts if p.size]
    if not filled:
        return edges
    edges[0] = values[filled[0][0]]
    edges[-1] = values[filled[-1][-1]]
    for b in range(1, len(parts)):
        if parts[b - 1].size and parts[b].size:
            edges[b] = 0.5 * (values[parts[b - 1][-1]] + values[parts[b][0]])
    return edges


def _check_inputs(selectivity, magnitude, shape) -> tuple[np.ndarray, np.ndarray, int, int]:
    sel = np.asarray(selectivity, dtype=np.float64).ravel()
    mag = np.asarray(magnitude, dtype=np.float64).ravel()
    n, m = (int(v) for v in shape)
    if sel.shape != mag.shape:
        raise KerablError(f"selectivity has {sel.size} units and magnitude {mag.size}; "
                          "pass coordinates of the same layer")
    if n < 1 or m < 1:
        raise KerablError(f"grid shape {tuple(shape)} must be positive, e.g. (4, 4)")
    if sel.size < n * m:
        raise KerablError(f"a layer with {sel.size} units cannot fill the {n} x {m} grid; "
                          "use a smaller grid or a layer with more units")
    if not (np.isfinite(sel).all() and np.isfinite(mag).all()):
        raise KerablError("selectivity or magnitude holds NaN or inf; check the activations")
    return sel, mag, n, m


def _membership_from_cells(cells: list[np.ndarray], n_units: int) -> np.ndarray:
    """Cell id of each unit: the first cell that lists it, -1 for none."""
    membership = np.full(n_units, -1, dtype=np.int32)
    for k in reversed(range(len(cells))):
        membership[cells[k]] = k
    return membership


def equal_count_grid(selectivity, magnitude, shape: tuple[int, int] = (4, 4),
                     legacy_bounds: bool = False) -> Grid:
    """Split units into n selectivity strips of equal count, each into m magnitude cells.

    Example:
        sel, mag = coordinates(a, o)
        grid = equal_count_grid(sel, mag, shape=(4, 4))
        [c.size for c in grid.cells]   # equal counts, differing by at most 1 within a strip

    Default: stable sort by selectivity, `np.array_split` into n strips (counts differ by
    at most 1), within each strip stable sort by magnitude and split into m cells; every
    unit is in exactly one cell. Edges are the midpoints between the last unit of a part
    and the first of the next, and the smallest / largest value at the ends.

    `legacy_bounds=True` is the authors' `grid_space`: selectivity bounds q_i = the sorted
    selectivities at position int(i / n * N) for i < n, and q_n = the largest; strip i = units
    with q_i <= s <= q_{i+1} (a unit on a bound is in two strips); magnitude bounds the same
    rule over the units strictly inside the strip only (q_i < s < q_{i+1}; NaN bounds and empty
    cells when none is), and cell (i, j) = strip units within the inclusive magnitude bounds
    (so a unit can be in two cells, or in none). `cells` holds these lists, `membership` each
    unit's first cell (-1 for none), the edges are those bounds.

    Args:
        selectivity: (n_units,) selectivity of each unit.
        magnitude: (n_units,) magnitude of each unit.
        shape: (n strips, m magnitude cells).
        legacy_bounds: reproduce the authors' inclusive bounds.
    """
    sel, mag, n, m = _check_inputs(selectivity, magnitude, shape)
    if legacy_bounds:
        return _legacy_grid(sel, mag, n, m)
    order = np.argsort(sel, kind="stable")
    strips = np.array_split(order, n)
    cells: list[np.ndarray] = []
    mag_edges = np.empty((n, m + 1))
    for i, strip in enumerate(strips):
        strip_sorted = strip[np.argsort(mag[strip], kind="stable")]
        parts = np.array_split(strip_sorted, m)
        mag_edges[i] = _split_edges(mag, parts)
        cells.extend(np.sort(p).astype(np.int64) for p in parts)
    return Grid(shape=(n, m), membership=_membership_from_cells(cells, sel.size),
                sel_edges=_split_edges(sel, strips), mag_edges=mag_edges, cells=cells)


def _sorted_bounds(values: np.ndarray, parts: int) -> np.ndarray:
    """The authors' bounds: sorted values at int(i / parts * N) for i < parts, then the largest."""
    ordered = np.sort(values)
    return np.array([ordered[int(i / parts * ordered.size)] for i in range(parts)] + [ordered[-1]])


def _legacy_grid(sel: np.ndarray, mag: np.ndarray, n: int, m: int) -> Grid:
    sel_edges = _sorted_bounds(sel, n)
    mag_edges = np.full((n, m + 1), np.nan)
    cells: list[np.ndarray] = []
    for i in range(n):
        lo, hi = sel_edges[i], sel_edges[i + 1]
        strip = (sel >= lo) & (sel <= hi)
        inside = (sel > lo) & (sel < hi)
        if inside.any():
            mag_edges[i] = _sorted_bounds(mag[inside], m)
        for j in range(m):
            in_cell = strip & (mag >= mag_edges[i, j]) & (mag <= mag_edges[i, j + 1])
            cells.append(np.flatnonzero(in_cell).astype(np.int64))
    return Grid(shape=(n, m), membership=_membership_from_cells(cells, sel.size),
                sel_edges=sel_edges, mag_edges=mag_edges, cells=cells)
