"""The drawing pieces the H figures share (`kerabl.hayne.figures`, `kerabl.hayne.stat_figures`):
figures on their own Agg canvas (pyplot's global state untouched), colour maps with NaN drawn
grey, a cell grid as an image, the class x layer mean grid of a metric and the panel rows of
such mean grids (the figure canvas and `save_figure` are `kerabl.plotting`'s).

Example:
    fig = new_figure(7.5, 3.4, layout="constrained")
    draw_mean_grids(fig, np.stack([[mean_grid(res, "probe")]]), ("probe",),
                    lambda ax, row, col: ax.set_title("probe"))
    save_figure(fig, "figures/probe_means", ("png",))
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import Colormap
from matplotlib.figure import Figure

from kerabl.errors import KerablError
from kerabl.hayne.results import HResults
from kerabl.plotting import FONT

#: Per-cell metrics that the grid figures can show, with their colour-bar labels and colour maps.
GRID_METRICS = {
    "probe": ("probe score (paper metric)", "viridis"),
    "probe_heldout": ("held-out probe balanced accuracy", "viridis"),
    "deficit": ("mean rank deficit", "magma"),
    "probe_fold": ("held-out probe, grid rebuilt per fold", "viridis"),
    "srs_tau": ("RDM Kendall tau", "cividis"),
    "srs_rho": ("RDM Spearman rho", "cividis"),
}
NAN_COLOUR = "#d9d9d9"


def open_results(res: Any):
    """An `HResults` as given, or opened from a path.

    Example:
        open_results("out/h_results.h5").layers   # ["conv_1", ...]; an HResults is passed through
    """
    if isinstance(res, (str, Path)):
        return HResults.open(res)
    return res


def grid_shape(res) -> tuple[int, int]:
    """The (strips, cells per strip) of a results file's grid, as ints.

    Example:
        grid_shape(open_results("out/h_results.h5"))   # (4, 4)
    """
    n, m = (int(v) for v in res.grid_shape)
    return n, m


def nan_cmap(name: str) -> Colormap:
    """A copy of a registered colour map with NaN (cell not done) drawn light grey.

    Example:
        nan_cmap("magma").get_bad()   # the RGBA of NAN_COLOUR
    """
    return colormaps[name].with_extremes(bad=NAN_COLOUR)


def finite_range(*arrays: np.ndarray) -> tuple[float, float]:
    """(min, max) over the finite values of all arrays; (0, 1) when none is finite.

    Example:
        finite_range(np.array([0.2, np.nan]), np.array([0.7]))   # (0.2, 0.7)
        finite_range(np.array([3.0]))                            # (2.5, 3.5): widened when flat
    """
    values = np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in arrays])
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0, 1.0
    low, high = float(values.min()), float(values.max())
    return (low, high) if high > low else (low - 0.5, high + 0.5)


def nanmean(x: np.ndarray, axis) -> np.ndarray:
    """Mean ignoring NaN (cells not done); NaN where nothing is done, without a warning.

    Example:
        nanmean(np.array([[1.0, np.nan], [3.0, np.nan]]), axis=0)   # [2.0, nan]
    """
    x = np.asarray(x, dtype=np.float64)
    count = np.isfinite(x).sum(axis=axis)
    total = np.where(np.isfinite(x), x, 0.0).sum(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def metric_panels(res, metric: str) -> np.ndarray:
    """The (C, L, n, m) grids of one stored per-cell metric (cell id k = i*m + j: row i =
    selectivity strip, column j = magnitude cell); cells not done are NaN.

    Example:
        metric_panels("out/h_results.h5", "deficit").shape   # (10, 7, 4, 4) on the demo
    """
    if metric not in GRID_METRICS:
        raise KerablError(f"unknown metric {metric!r}; use one of {', '.join(GRID_METRICS)}")
    res = open_results(res)
    n, m = grid_shape(res)
    values = np.asarray(getattr(res, metric), dtype=np.float64)
    return values.reshape(values.shape[0], values.shape[1], n, m)


def mean_grid(res, metric: str) -> np.ndarray:
    """The (n, m) grid of `metric` averaged over classes and layers (NaN skipped).

    Example:
        mean_grid("out/h_results.h5", "deficit")[3, 3]   # 0.425 on the demo
    """
    return nanmean(metric_panels(res, metric), axis=(0, 1))


def grid_image(ax, data: np.ndarray, cmap, vmin: float, vmax: float):
    """One n x m grid as an image: x = magnitude cell, y = selectivity strip, (0, 0) bottom left.

    Example:
        image = grid_image(fig.add_subplot(), np.eye(4), nan_cmap("viridis"), 0.0, 1.0)
    """
    image = ax.imshow(data, origin="lower", cmap=cmap, vmin=vmin, vmax=vmax,
                      interpolation="nearest", aspect="equal")
    ax.set_xticks([])
    ax.set_yticks([])
    return image


def annotate_cells(ax, data: np.ndarray, image) -> None:
    """Write each cell's value in it, dark or light text by background.

    Example:
        annotate_cells(ax, grid, grid_image(ax, grid, nan_cmap("magma"), 0.0, 1.0))
    """
    for (i, j), value in np.ndenumerate(data):
        if not np.isfinite(value):
            continue
        shade = np.mean(image.cmap(image.norm(value))[:3])
        ax.text(j, i, f"{value:.3g}", ha="center", va="center", fontsize=FONT - 1,
                color="black" if shade > 0.5 else "white")


def draw_mean_grids(fig: Figure, means: np.ndarray, metrics: Sequence[str],
                    label_panel: Callable[[Any, int, int], None],
                    scale_includes: dict[str, float] | None = None) -> None:
    """Rows of mean grids: row r, column c shows `means[r, c]` (a grid of `metrics[c]`) with its
    values written in; one colour scale and colour bar per column, stretched to hold
    `scale_includes[metric]` where given (a chance level); `label_panel(ax, row, col)` writes a
    panel's titles and axis labels.

    Example:
        fig = new_figure(7.5, 3.4, layout="constrained")
        means = np.stack([[mean_grid(res, "probe"), mean_grid(res, "deficit")]])   # (1, 2, n, m)
        draw_mean_grids(fig, means, ("probe", "deficit"),
                        lambda ax, row, col: ax.set_title(("probe", "deficit")[col]))
    """
    axes = fig.subplots(means.shape[0], len(metrics), squeeze=False)
    for col, metric in enumerate(metrics):
        cmap = nan_cmap(GRID_METRICS[metric][1])
        vmin, vmax = finite_range(means[:, col])
        if metric in (scale_includes or {}):
            vmin, vmax = min(vmin, scale_includes[metric]), max(vmax, scale_includes[metric])
        for row in range(means.shape[0]):
            ax = axes[row, col]
            image = grid_image(ax, means[row, col], cmap, vmin, vmax)
            annotate_cells(ax, means[row, col], image)
            label_panel(ax, row, col)
        fig.colorbar(image, ax=list(axes[:, col]), shrink=0.8).ax.tick_params(labelsize=FONT - 1)
    fig.suptitle("mean over classes and layers", fontsize=FONT + 1)


def p_text(p: float) -> str:
    """A p-value for a title; one that underflowed to 0 reads "p < 1e-300".

    Example:
        p_text(3.6e-23), p_text(0.0)   # ("p = 3.6e-23", "p < 1e-300")
    """
    return "p < 1e-300" if p == 0 else f"p = {p:.2g}"
