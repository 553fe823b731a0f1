"""Figures of the H study (Hayne et al. 2022), drawn from a stored results file.

Figures only read: every number drawn comes from an `HResults` file (`kerabl.results`), apart
from means taken for display; the probe/deficit correlation and its line come from `kerabl.stats`.
Nothing here imports TensorFlow or Keras, and nothing touches pyplot's global state: every figure
is a `matplotlib.figure.Figure` on its own Agg canvas.

- Fig 1, one layer's units on the (magnitude, selectivity) plane with the grid drawn over them:
  `fig1_arrays`, `build_fig1`, `fig_units_plane`.
- Fig 2, class x layer grids of probe score (2a) or rank deficit (2b) with layer and class means:
  `fig2_arrays`, `build_fig2`, `fig_class_layer_grids`.
- Fig 3, per network the grid averaged over classes and layers, probe beside deficit:
  `fig3_arrays`, `build_fig3`, `fig_network_means`.
- Probe score vs rank deficit per cell, with the least-squares line and r:
  `probe_deficit_arrays`, `build_probe_vs_deficit`, `fig_probe_vs_deficit`.
- The probes side by side (paper metric, cross-validation on the all-image grid, the fold-grid
  held-out probe, rank deficit), one row per results file, e.g. true labels above a
  `--control permuted-labels` run: `build_probe_contrast`, `fig_probe_contrast`.
- The interaction test's coefficients with their class-bootstrap intervals, per network:
  `build_interaction_coefficients`, `fig_interaction_coefficients`.
- `render_h_figures(results_path, out_dir)`: all of them for one results file.
- `save_figure(fig, out_stem, formats)`: 150 dpi PNG / PDF with a tight bounding box.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Colormap, ListedColormap
from matplotlib.figure import Figure

from kerabl.errors import KerablError

__all__ = [
    "GRID_METRICS", "fig1_arrays", "build_fig1", "fig_units_plane",
    "fig2_arrays", "build_fig2", "fig_class_layer_grids",
    "fig3_arrays", "build_fig3", "fig_network_means",
    "probe_deficit_arrays", "build_probe_vs_deficit", "fig_probe_vs_deficit",
    "build_probe_contrast", "fig_probe_contrast", "build_interaction_coefficients",
    "fig_interaction_coefficients", "render_h_figures", "save_figure",
]

#: Per-cell metrics that Fig 2 can show, with their colour-bar labels and colour maps.
GRID_METRICS = {
    "probe": ("probe score (paper metric)", "viridis"),
    "probe_heldout": ("held-out probe balanced accuracy", "viridis"),
    "deficit": ("mean rank deficit", "magma"),
    "probe_fold": ("held-out probe, grid rebuilt per fold", "viridis"),
    "srs_tau": ("RDM Kendall tau", "cividis"),
    "srs_rho": ("RDM Spearman rho", "cividis"),
}
DPI = 150
FONT = 8
NAN_COLOUR = "#d9d9d9"
PANEL_INCH_MIN, PANEL_INCH_MAX = 0.45, 1.1


# ----------------------------------------------------------------------------- shared pieces

def _results(res: Any):
    """An `HResults` as given, or opened from a path."""
    if isinstance(res, (str, Path)):
        from kerabl.hayne.results import HResults
        return HResults.open(res)
    return res


def _grid_shape(res) -> tuple[int, int]:
    n, m = (int(v) for v in res.grid_shape)
    return n, m


def _new_figure(width: float, height: float, layout: str | None = None) -> Figure:
    """A Figure on its own Agg canvas (pyplot and its figure registry stay untouched)."""
    fig = Figure(figsize=(width, height), dpi=DPI, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def _cmap(name: str) -> Colormap:
    """A copy of a registered colour map with NaN (cell not done) drawn light grey."""
    return colormaps[name].with_extremes(bad=NAN_COLOUR)


def _finite_range(*arrays: np.ndarray) -> tuple[float, float]:
    """(min, max) over the finite values of all arrays; (0, 1) when none is finite."""
    values = np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in arrays])
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0, 1.0
    low, high = float(values.min()), float(values.max())
    return (low, high) if high > low else (low - 0.5, high + 0.5)


def _nanmean(x: np.ndarray, axis) -> np.ndarray:
    """Mean ignoring NaN (cells not done); NaN where nothing is done, without a warning."""
    x = np.asarray(x, dtype=np.float64)
    count = np.isfinite(x).sum(axis=axis)
    total = np.where(np.isfinite(x), x, 0.0).sum(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _grid_image(ax, data: np.ndarray, cmap, vmin: float, vmax: float):
    """One n x m grid as an image: x = magnitude cell, y = selectivity strip, (0, 0) bottom left."""
    image = ax.imshow(data, origin="lower", cmap=cmap, vmin=vmin, vmax=vmax,
                      interpolation="nearest", aspect="equal")
    ax.set_xticks([])
    ax.set_yticks([])
    return image


def _class_position(res, class_name: str | None) -> int:
    if class_name is None:
        return 0
    classes = list(res.classes)
    if class_name not in classes:
        shown = ", ".join(classes[:8]) + (", ..." if len(classes) > 8 else "")
        raise KerablError(f"class {class_name!r} is not in the results ({shown}); "
                          f"pass one of the stored class names")
    return classes.index(class_name)


def _layer_name(res, layer: str | None) -> str:
    layers = list(res.layers)
    if layer is None:
        return layers[len(layers) // 2]
    if layer not in layers:
        raise KerablError(f"layer {layer!r} is not in the results ({', '.join(layers)}); "
                          f"pass one of the stored layer names")
    return layer


def save_figure(fig: Figure, out_stem: str | Path,
                formats: Sequence[str] = ("png", "pdf")) -> list[Path]:
    """Write `fig` as `<out_stem>.<format>` for each format (150 dpi, tight bounding box).

    Example:
        fig = build_fig2(res, "deficit")
        save_figure(fig, "figures/fig2b", ("png",))   # [Path("figures/fig2b.png")]

    Args:
        fig: the figure to write.
        out_stem: path without extension; its folder is created if missing.
        formats: file formats matplotlib knows (png, pdf, svg, ...).

    Returns:
        The written paths, in the order of `formats`.
    """
    if not formats:
        raise KerablError("no figure formats given; pass e.g. formats=('png', 'pdf')")
    stem = Path(out_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        fmt = fmt.lower().lstrip(".")
        if fmt not in fig.canvas.get_supported_filetypes():
            raise KerablError(f"figure format {fmt!r} is not supported; use one of "
                              f"{', '.join(sorted(fig.canvas.get_supported_filetypes()))}")
        path = stem.with_name(f"{stem.name}.{fmt}")
        fig.savefig(path, format=fmt, dpi=DPI, bbox_inches="tight")
        paths.append(path)
    return paths


# ----------------------------------------------------------------------------- Fig 1

def fig1_arrays(res, class_name: str | None = None, layer: str | None = None, *,
                max_points: int = 20000, seed: int = 0) -> dict:
    """The units of one (class, layer) as Fig 1 draws them, subsampled when there are many.

    Example:
        a = fig1_arrays(res, "junco_bird", "conv_3", max_points=5000)
        a["magnitude"].shape, a["n_units"]   # ((5000,), 64896)

    Args:
        res: an `HResults` (or a path to one).
        class_name: a stored class name; None = the first class.
        layer: a stored layer name; None = the middle layer.
        max_points: at most this many units are drawn, chosen without replacement with
            `np.random.default_rng(seed)` (kept in stored order).
        seed: seed of that choice.

    Returns:
        dict with "class_name", "layer", "n_units", "index" (drawn units), "magnitude",
        "selectivity", "membership" (of the drawn units), "sel_edges" (n+1,), "mag_edges" (n, m+1),
        "grid_shape".
    """
    res = _results(res)
    ci = _class_position(res, class_name)
    layer = _layer_name(res, layer)
    units = res.units(ci, layer)
    selectivity = np.asarray(units["selectivity"], dtype=np.float64)
    if selectivity.size == 0 or not np.all(np.isfinite(selectivity)):
        raise KerablError(f"class {res.classes[ci]!r}, layer {layer!r} has no stored unit "
                          f"coordinates yet; finish that pair first or pick another")
    if max_points < 1:
        raise KerablError(f"max_points must be >= 1, got {max_points}")
    n_units = selectivity.size
    index = np.arange(n_units)
    if n_units > max_points:
        index = np.sort(np.random.default_rng(seed).choice(n_units, max_points, replace=False))
    return {
        "class_name": res.classes[ci], "layer": layer, "n_units": n_units, "index": index,
        "magnitude": np.asarray(units["magnitude"], dtype=np.float64)[index],
        "selectivity": selectivity[index],
        "membership": np.asarray(units["membership"])[index],
        "sel_edges": np.asarray(units["sel_edges"], dtype=np.float64),
        "mag_edges": np.asarray(units["mag_edges"], dtype=np.float64),
        "grid_shape": _grid_shape(res),
    }


def _cell_colours(n: int, m: int) -> ListedColormap:
    """One colour per cell id: a hue per selectivity strip, darker with magnitude (tab20c) when
    the grid has at most 5 strips of at most 4 cells, else n * m colours along `turbo`."""
    if n <= 5 and m <= 4:
        shades = colormaps["tab20c"].colors
        colours = [shades[4 * i + (m - 1 - j)] for i in range(n) for j in range(m)]
    else:
        colours = colormaps["turbo"](np.linspace(0.05, 0.95, n * m))
    return ListedColormap(colours).with_extremes(bad="#7f7f7f")


def _draw_grid_lines(ax, sel_edges: np.ndarray, mag_edges: np.ndarray) -> None:
    """Strip edges as horizontal lines, magnitude edges as vertical segments within each strip."""
    line = dict(color="black", linewidth=0.8)
    for edge in sel_edges:
        ax.axhline(edge, **line)
    for i, strip_edges in enumerate(mag_edges):
        ax.vlines(strip_edges, sel_edges[i], sel_edges[i + 1], **line)


def build_fig1(res, class_name: str | None = None, layer: str | None = None, *,
               max_points: int = 20000, seed: int = 0) -> Figure:
    """Fig 1: one layer's units for one class, x = magnitude, y = selectivity, coloured by cell.

    Example:
        fig = build_fig1(res, "junco_bird", "conv_3")
        fig.axes[0].collections[0].get_offsets()   # (magnitude, selectivity) of the drawn units

    Args: as `fig1_arrays`. Units in no cell (legacy grid) are drawn grey.

    Returns:
        The Figure; its first Axes holds the scatter as its first collection.
    """
    a = fig1_arrays(res, class_name, layer, max_points=max_points, seed=seed)
    n, m = a["grid_shape"]
    fig = _new_figure(6.0, 5.0)
    ax = fig.add_subplot()
    cmap = _cell_colours(n, m)
    cells = np.ma.masked_less(a["membership"].astype(np.float64), 0)
    points = ax.scatter(a["magnitude"], a["selectivity"], c=cells, cmap=cmap, vmin=-0.5,
                        vmax=n * m - 0.5, s=4 if a["index"].size > 2000 else 12,
                        linewidths=0, alpha=0.8, rasterized=True, plotnonfinite=True)
    _draw_grid_lines(ax, a["sel_edges"], a["mag_edges"])
    colourbar = fig.colorbar(points, ax=ax, ticks=np.arange(n * m))
    colourbar.set_label(f"cell id i*{m} + j (i: selectivity strip, j: magnitude cell)",
                        fontsize=FONT)
    colourbar.ax.tick_params(labelsize=FONT - 1)
    ax.set_xlabel("magnitude (a + o) / sqrt(2)", fontsize=FONT + 1)
    ax.set_ylabel("selectivity (a - o) / sqrt(2)", fontsize=FONT + 1)
    ax.tick_params(labelsize=FONT)
    shown = (f"all {a['n_units']:,} units" if a["index"].size == a["n_units"] else
             f"{a['index'].size:,} of {a['n_units']:,} units (random, seed {seed})")
    ax.set_title(f"{a['class_name']} / {a['layer']}: {shown}, {n} x {m} grid",
                 fontsize=FONT + 1)
    return fig


def fig_units_plane(res, class_name: str | None, layer: str | None, out_stem: str | Path, *,
                    formats: Sequence[str] = ("png", "pdf"), max_points: int = 20000,
                    seed: int = 0) -> list[Path]:
    """Write Fig 1 (see `build_fig1`) as `<out_stem>.png` / `.pdf`.

    Example:
        fig_units_plane("results/h.h5", "junco_bird", "conv_3", "figures/fig1")
        # [Path("figures/fig1.png"), Path("figures/fig1.pdf")]
    """
    return save_figure(build_fig1(res, class_name, layer, max_points=max_points, seed=seed),
                       out_stem, formats)


# ----------------------------------------------------------------------------- Fig 2

def fig2_arrays(res, metric: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The grids Fig 2 draws: per class and layer, and their means (cells not done are NaN).

    Example:
        panels, layer_means, class_means = fig2_arrays(res, "deficit")
        panels.shape, layer_means.shape, class_means.shape   # (C, L, 4, 4), (L, 4, 4), (C, 4, 4)

    Args:
        res: an `HResults` (or a path to one).
        metric: one of `GRID_METRICS` ("probe" for Fig 2a, "deficit" for Fig 2b).

    Returns:
        panels (C, L, n, m) = the stored (C, L, K) metric reshaped (cell id k = i*m + j: row i =
        selectivity strip, column j = magnitude cell); layer_means (L, n, m) = mean over classes;
        class_means (C, n, m) = mean over layers. Means skip NaN.
    """
    if metric not in GRID_METRICS:
        raise KerablError(f"unknown metric {metric!r}; use one of {', '.join(GRID_METRICS)}")
    res = _results(res)
    n, m = _grid_shape(res)
    values = np.asarray(getattr(res, metric), dtype=np.float64)
    panels = values.reshape(values.shape[0], values.shape[1], n, m)
    return panels, _nanmean(panels, axis=0), _nanmean(panels, axis=1)


def _fig2_panel_inch(n_rows: int, n_cols: int) -> float:
    """Panel side: about 0.45 inch for 50 classes, larger for few, so the figure stays readable."""
    return float(np.clip(min(7.0 / n_cols, 9.0 / n_rows), PANEL_INCH_MIN, PANEL_INCH_MAX))


def _fig2_layout(n_classes: int, n_layers: int, grid_shape: tuple[int, int],
                 label_chars: int) -> dict:
    """Panel positions in inches for C + 1 rows and L + 1 columns (means set apart by a gap)."""
    n, m = grid_shape
    side = _fig2_panel_inch(n_classes + 1, n_layers + 1)
    width, height = side * max(m / n, 1.0), side * max(n / m, 1.0)
    gap, margin_gap = 0.06, 0.22
    left = 0.25 + 0.065 * label_chars
    top, bottom, right = 0.9, 0.75, 1.1
    fig_w = left + (n_layers + 1) * width + n_layers * gap + margin_gap + right
    fig_h = top + (n_classes + 1) * height + n_classes * gap + margin_gap + bottom

    def box(row: int, col: int) -> list[float]:
        x = left + col * (width + gap) + (margin_gap if col == n_layers else 0.0)
        y = top + row * (height + gap) + (margin_gap if row == n_classes else 0.0)
        return [x / fig_w, 1.0 - (y + height) / fig_h, width / fig_w, height / fig_h]

    return {"size": (fig_w, fig_h), "box": box, "right": right, "top": top, "bottom": bottom,
            "panel_width": width}


def _column_title_style(label_chars: int, panel_width: float) -> dict:
    """Column titles level when the longest fits over a panel, else all slanted at 45 degrees."""
    if label_chars * 0.075 <= panel_width + 0.05:
        return {"rotation": 0, "ha": "center"}
    return {"rotation": 45, "ha": "left", "va": "bottom", "rotation_mode": "anchor"}


def build_fig2(res, metric: str) -> Figure:
    """Fig 2: rows = classes, columns = layers, each panel the n x m grid of `metric`.

    A last row holds the layer means (over classes), a last column the class means (over
    layers), the corner the mean over both; one colour scale and colour bar for all panels.

    Example:
        fig = build_fig2(res, "deficit")          # Fig 2b
        fig.axes[0].images[0].get_array()         # == res.deficit[0, 0].reshape(n, m)

    Args: as `fig2_arrays`.

    Returns:
        The Figure. Its first (C + 1) * (L + 1) axes are the panels in row-major order
        (row C = layer means, column L = class means), then the colour bar.
    """
    res = _results(res)
    panels, layer_means, class_means = fig2_arrays(res, metric)
    n_classes, n_layers = panels.shape[:2]
    classes, layers = list(res.classes), list(res.layers)
    label, cmap_name = GRID_METRICS[metric]
    cmap = _cmap(cmap_name)
    overall = _nanmean(layer_means, axis=0)
    vmin, vmax = _finite_range(panels, layer_means, class_means)
    layout = _fig2_layout(n_classes, n_layers, _grid_shape(res),
                          max(len(s) for s in classes + ["layer mean"]))
    fig = _new_figure(*layout["size"])
    row_names = classes + ["layer mean"]
    col_names = layers + ["class\nmean"]
    title_style = _column_title_style(max(len(s) for s in layers), layout["panel_width"])
    image = None
    for row in range(n_classes + 1):
        for col in range(n_layers + 1):
            ax = fig.add_axes(layout["box"](row, col))
            data = (overall if row == n_classes and col == n_layers else
                    layer_means[col] if row == n_classes else
                    class_means[row] if col == n_layers else panels[row, col])
            image = _grid_image(ax, data, cmap, vmin, vmax)
            if col == 0:
                ax.set_ylabel(row_names[row], rotation=0, ha="right", va="center",
                              fontsize=FONT, fontweight="bold" if row == n_classes else None)
            if row == 0:
                ax.set_title(col_names[col], fontsize=FONT, **title_style,
                             fontweight="bold" if col == n_layers else None)
    fig_w, fig_h = layout["size"]
    bar_h = min(3.0, fig_h - layout["top"] - layout["bottom"])
    bar = fig.add_axes([1.0 - (layout["right"] - 0.2) / fig_w,
                        1.0 - (layout["top"] + bar_h) / fig_h, 0.15 / fig_w, bar_h / fig_h])
    colourbar = fig.colorbar(image, cax=bar)
    colourbar.set_label(label, fontsize=FONT)
    colourbar.ax.tick_params(labelsize=FONT - 1)
    n, m = _grid_shape(res)
    fig.text(layout["box"](n_classes, 0)[0], 0.05 / fig_h, f"{label} per cell\neach panel: {n} x {m} grid, "
             f"x = magnitude cell, y = selectivity strip,\nlowest at bottom left; "
             f"grey = not done",
             fontsize=FONT, ha="left", va="bottom")
    return fig


def fig_class_layer_grids(res, metric: str, out_stem: str | Path, *,
                          formats: Sequence[str] = ("png", "pdf")) -> list[Path]:
    """Write Fig 2a (metric="probe") or 2b (metric="deficit"); see `build_fig2`.

    Example:
        fig_class_layer_grids("results/h.h5", "deficit", "figures/fig2b")
        # [Path("figures/fig2b.png"), Path("figures/fig2b.pdf")]
    """
    return save_figure(build_fig2(res, metric), out_stem, formats)


# ----------------------------------------------------------------------------- Fig 3

def fig3_arrays(results_list: Sequence) -> np.ndarray:
    """Per network, the probe and deficit grids averaged over classes and layers.

    Example:
        means = fig3_arrays([res_alexnet, res_vgg16])
        means.shape   # (2, 2, 4, 4): network, (probe, deficit), selectivity strip, magnitude cell

    Args:
        results_list: `HResults` objects (or paths), all with the same grid shape.

    Returns:
        (N, 2, n, m) array; [:, 0] = probe, [:, 1] = deficit; means skip NaN (cells not done).
    """
    results_list = [_results(r) for r in results_list]
    if not results_list:
        raise KerablError("no results given for Fig 3; pass at least one results file")
    shapes = {_grid_shape(r) for r in results_list}
    if len(shapes) > 1:
        raise KerablError(f"results have different grid shapes {sorted(shapes)}; "
                          f"Fig 3 compares networks on one grid shape")
    return np.stack([
        np.stack([_nanmean(fig2_arrays(r, metric)[0], axis=(0, 1))
                  for metric in ("probe", "deficit")])
        for r in results_list])


def _annotate_cells(ax, data: np.ndarray, image) -> None:
    """Write each cell's value in it, dark or light text by background."""
    for (i, j), value in np.ndenumerate(data):
        if not np.isfinite(value):
            continue
        shade = np.mean(image.cmap(image.norm(value))[:3])
        ax.text(j, i, f"{value:.3g}", ha="center", va="center", fontsize=FONT - 1,
                color="black" if shade > 0.5 else "white")


def build_fig3(results_list: Sequence, labels: Sequence[str]) -> Figure:
    """Fig 3: one row per network, its mean probe grid beside its mean rank-deficit grid.

    Example:
        fig = build_fig3([res_alexnet, res_vgg16], ["AlexNet", "VGG16"])
        fig.axes[1].images[0].get_array()   # AlexNet's deficit grid, mean over classes and layers

    Args:
        results_list: `HResults` objects (or paths) with one grid shape.
        labels: one network name per result.

    Returns:
        The Figure; axes 2r and 2r + 1 are network r's probe and deficit panels (colour bars follow).
    """
    if len(labels) != len(results_list):
        raise KerablError(f"{len(results_list)} results but {len(labels)} labels; "
                          f"give one label per results file")
    means = fig3_arrays(results_list)
    fig = _new_figure(7.5, 0.6 + 2.8 * len(labels), layout="constrained")
    axes = fig.subplots(len(labels), 2, squeeze=False)
    for col, metric in enumerate(("probe", "deficit")):
        label, cmap_name = GRID_METRICS[metric]
        vmin, vmax = _finite_range(means[:, col])
        for row, name in enumerate(labels):
            ax = axes[row, col]
            image = _grid_image(ax, means[row, col], _cmap(cmap_name), vmin, vmax)
            _annotate_cells(ax, means[row, col], image)
            ax.set_xlabel("magnitude cell (low -> high)", fontsize=FONT)
            ax.set_ylabel("selectivity strip (low -> high)", fontsize=FONT)
            ax.set_title(f"{name}: {label}", fontsize=FONT + 1)
        colourbar = fig.colorbar(image, ax=list(axes[:, col]), shrink=0.8)
        colourbar.ax.tick_params(labelsize=FONT - 1)
    fig.suptitle("mean over classes and layers", fontsize=FONT + 1)
    return fig


def fig_network_means(results_list: Sequence, labels: Sequence[str], out_stem: str | Path, *,
                      formats: Sequence[str] = ("png", "pdf")) -> list[Path]:
    """Write Fig 3 (see `build_fig3`).

    Example:
        fig_network_means(["alexnet.h5", "vgg16.h5"], ["AlexNet", "VGG16"], "figures/fig3")
        # [Path("figures/fig3.png"), Path("figures/fig3.pdf")]
    """
    return save_figure(build_fig3(results_list, labels), out_stem, formats)


# ----------------------------------------------------------------------------- probe vs deficit

def probe_deficit_arrays(res) -> dict:
    """Per finished cell: probe score, rank deficit and layer position (what the scatter shows).

    Example:
        a = probe_deficit_arrays(res)
        a["probe"].shape == a["deficit"].shape == a["layer"].shape   # one entry per cell

    Returns:
        dict with "probe", "deficit" (float64), "layer" (int, position in res.layers) over the
        cells where both numbers are finite, in (class, layer, cell) order.
    """
    res = _results(res)
    probe = np.asarray(res.probe, dtype=np.float64)
    deficit = np.asarray(res.deficit, dtype=np.float64)
    keep = (np.asarray(res.done, dtype=bool)[:, :, None] & np.isfinite(probe)
            & np.isfinite(deficit))
    layer = np.broadcast_to(np.arange(probe.shape[1])[None, :, None], probe.shape)
    return {"probe": probe[keep], "deficit": deficit[keep], "layer": layer[keep]}


def _ols_line(corr: dict, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(slope, intercept) of the least-squares line of y on x, from the stats result's Pearson r:
    slope = r * sd(y) / sd(x), through the means (its own "slope"/"intercept" when it has them)."""
    if "slope" in corr and "intercept" in corr:
        return float(corr["slope"]), float(corr["intercept"])
    slope = float(corr["pearson_r"]) * float(np.std(y)) / float(np.std(x))
    return slope, float(np.mean(y)) - slope * float(np.mean(x))


def _p_text(p: float) -> str:
    """A p-value for a title; one that underflowed to 0 reads "p < 1e-300"."""
    return "p < 1e-300" if p == 0 else f"p = {p:.2g}"


def build_probe_vs_deficit(res) -> Figure:
    """Probe score vs rank deficit, one point per cell coloured by layer, with the OLS line.

    Example:
        fig = build_probe_vs_deficit(res)
        fig.axes[0].get_title()   # "... Pearson r = 0.12 (p = 0.03), Spearman rho = ..., n = 560"

    The correlation comes from `kerabl.hayne.stats.probe_deficit_correlation(res)`.

    Returns:
        The Figure; its Axes holds one scatter collection per layer (in layer order) and the line.
    """
    from kerabl.hayne.stats import probe_deficit_correlation

    res = _results(res)
    a = probe_deficit_arrays(res)
    if a["probe"].size < 2:
        raise KerablError("fewer than 2 finished cells with probe and deficit; "
                          "run the probe and ablation stages first")
    corr = probe_deficit_correlation(res)
    layers = list(res.layers)
    fig = _new_figure(6.0, 4.5)
    ax = fig.add_subplot()
    colours = colormaps["viridis"](np.linspace(0.0, 0.9, max(len(layers), 2)))
    for li, name in enumerate(layers):
        sel = a["layer"] == li
        ax.scatter(a["probe"][sel], a["deficit"][sel], s=12, color=colours[li], alpha=0.75,
                   linewidths=0, label=name)
    r = float(corr["pearson_r"])
    if np.isfinite(r):
        slope, intercept = _ols_line(corr, a["probe"], a["deficit"])
        xs = np.array([a["probe"].min(), a["probe"].max()])
        ax.plot(xs, intercept + slope * xs, color="crimson", linewidth=1.5,
                label=f"least-squares line (r = {r:.2f})")
    ax.set_xlabel("probe score (paper metric)", fontsize=FONT + 1)
    ax.set_ylabel("mean rank deficit", fontsize=FONT + 1)
    ax.tick_params(labelsize=FONT)
    ax.legend(fontsize=FONT - 1, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    ax.set_title(f"per cell: Pearson r = {r:.3f} ({_p_text(corr['pearson_p'])}), "
                 f"Spearman rho = {corr['spearman_rho']:.3f} ({_p_text(corr['spearman_p'])}), "
                 f"n = {corr['n']}", fontsize=FONT + 1)
    return fig


def fig_probe_vs_deficit(res, out_stem: str | Path, *,
                         formats: Sequence[str] = ("png", "pdf")) -> list[Path]:
    """Write the probe-vs-deficit scatter (see `build_probe_vs_deficit`).

    Example:
        fig_probe_vs_deficit("results/h.h5", "figures/probe_vs_deficit")
        # [Path("figures/probe_vs_deficit.png"), Path("figures/probe_vs_deficit.pdf")]
    """
    return save_figure(build_probe_vs_deficit(res), out_stem, formats)


# ----------------------------------------------------------------------------- probes and statistics

CONTRAST_METRICS = ("probe", "probe_heldout", "probe_fold", "deficit")


def build_probe_contrast(results_list: Sequence, labels: Sequence[str]) -> Figure:
    """Per results file (row): the grids averaged over classes and layers of the paper metric,
    the cross-validated probe on the grid of all images, the fold-grid held-out probe and the
    rank deficit; the paper metric's title gives its majority-class level.

    Example:
        fig = build_probe_contrast(["out/h_results.h5", "control/h_results.h5"],
                                   ["true labels", "permuted labels"])
        fig.axes[2].images[0].get_array()   # true labels: the fold-grid held-out probe grid

    Returns:
        The Figure; axes 4r + c hold row r's panel c (colour bars follow).
    """
    from kerabl.hayne.stats import majority_probe_level

    results_list = [_results(r) for r in results_list]
    if len(labels) != len(results_list) or not results_list:
        raise KerablError(f"{len(results_list)} results but {len(labels)} labels; "
                          "give one label per results file")
    means = np.stack([[_nanmean(fig2_arrays(r, metric)[0], axis=(0, 1)) for metric in
                       CONTRAST_METRICS] for r in results_list])
    fig = _new_figure(13.0, 0.6 + 2.9 * len(labels), layout="constrained")
    axes = fig.subplots(len(labels), len(CONTRAST_METRICS), squeeze=False)
    titles = {"probe": "paper metric", "probe_heldout": "CV probe, grid of all images",
              "probe_fold": "held-out probe, grid per fold", "deficit": "rank deficit"}
    extras = [{"probe": f"\n(all 'other' scores {majority_probe_level(res):.3f})",
               "probe_heldout": "\n(chance 0.5)", "probe_fold": "\n(chance 0.5)"}
              for res in results_list]
    for col, metric in enumerate(CONTRAST_METRICS):
        cmap_name = GRID_METRICS.get(metric, ("", "viridis"))[1]
        vmin, vmax = _finite_range(means[:, col])
        if metric in ("probe_heldout", "probe_fold"):
            vmin, vmax = min(vmin, 0.5), max(vmax, 0.5)
        for row, name in enumerate(labels):
            ax = axes[row, col]
            image = _grid_image(ax, means[row, col], _cmap(cmap_name), vmin, vmax)
            _annotate_cells(ax, means[row, col], image)
            ax.set_title(f"{titles[metric]}{extras[row].get(metric, '')}", fontsize=FONT)
            ax.set_xlabel("magnitude cell", fontsize=FONT)
            ax.set_ylabel(f"{name}\nselectivity strip" if col == 0 else "selectivity strip",
                          fontsize=FONT)
        fig.colorbar(image, ax=list(axes[:, col]), shrink=0.8).ax.tick_params(labelsize=FONT - 1)
    fig.suptitle("mean over classes and layers", fontsize=FONT + 1)
    return fig


def fig_probe_contrast(results_list: Sequence, labels: Sequence[str], out_stem: str | Path, *,
                       formats: Sequence[str] = ("png", "pdf")) -> list[Path]:
    """Write the probe contrast (see `build_probe_contrast`).

    Example:
        fig_probe_contrast(["out/h.h5", "control/h.h5"], ["true", "permuted"], "fig_probe_contrast")
    """
    return save_figure(build_probe_contrast(results_list, labels), out_stem, formats)


def build_interaction_coefficients(results_list: Sequence, labels: Sequence[str]) -> Figure:
    """Coefficients of the interaction model (sel, mag, sel x mag; class and layer effects) with
    their 95 % class-bootstrap intervals, one marker per network, the nested test in the legend.

    Example:
        fig = build_interaction_coefficients(["alexnet/h.h5", "vgg16/h.h5"], ["AlexNet", "VGG16"])

    The numbers come from `kerabl.hayne.stats.interaction_test`.
    """
    from kerabl.hayne.stats import interaction_test

    results_list = [_results(r) for r in results_list]
    if len(labels) != len(results_list) or not results_list:
        raise KerablError(f"{len(results_list)} results but {len(labels)} labels; "
                          "give one label per results file")
    names = ("selectivity", "magnitude", "selectivity_x_magnitude")
    fig = _new_figure(6.5, 3.6)
    ax = fig.add_subplot()
    width = 0.7 / len(labels)
    for n, (res, label) in enumerate(zip(results_list, labels)):
        test = interaction_test(res)
        x = np.arange(3) + (n - (len(labels) - 1) / 2) * width
        est = np.array([test["coef_interaction"][k] for k in names])
        ci = np.array([test["interval"][k] for k in names])
        ax.errorbar(x, est, yerr=np.abs(ci.T - est), fmt="o", capsize=3, markersize=4,
                    label=f"{label}: R^2 {test['r2_additive']:.3f} -> {test['r2_interaction']:.3f}, "
                          f"F test {_p_text(test['p_value'])}")
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.set_xticks(np.arange(3), ["selectivity", "magnitude", "sel x mag"], fontsize=FONT)
    ax.set_ylabel("effect on mean rank deficit\n(per SD, within class and layer)", fontsize=FONT)
    ax.tick_params(labelsize=FONT)
    ax.legend(fontsize=FONT - 1, frameon=False, loc="best")
    ax.set_title("deficit ~ sel + mag + sel x mag + class + layer; 95 % class-bootstrap intervals",
                 fontsize=FONT)
    return fig


def fig_interaction_coefficients(results_list: Sequence, labels: Sequence[str],
                                 out_stem: str | Path, *,
                                 formats: Sequence[str] = ("png", "pdf")) -> list[Path]:
    """Write the coefficient figure (see `build_interaction_coefficients`).

    Example:
        fig_interaction_coefficients(["out/h.h5"], ["demo"], "figures/fig_interaction")
    """
    return save_figure(build_interaction_coefficients(results_list, labels), out_stem, formats)


# ----------------------------------------------------------------------------- all of them

def render_h_figures(results_path: str | Path, out_dir: str | Path, *,
                     class_name: str | None = None, layer: str | None = None,
                     formats: Sequence[str] = ("png", "pdf"),
                     allow_partial: bool = False) -> list[Path]:
    """Every H figure of one results file: fig1, fig2a, fig2b, fig3, probe_vs_deficit.

    Example:
        paths = render_h_figures("out/h_results.h5", "out/figures")
        [p.name for p in paths][:2]   # ["fig1_units_plane.png", "fig1_units_plane.pdf"]

    Args:
        results_path: an H results file (`kerabl.results`).
        out_dir: folder for the figures (created if missing).
        class_name: class of Fig 1; None = the first class whose `layer` pair is done.
        layer: layer of Fig 1; None = the middle layer.
        formats: file formats of every figure.
        allow_partial: also draw a run in progress (`PATH.partial`); pairs not done are grey.

    Returns:
        The written paths: fig1_units_plane, fig2a_probe_grids, fig2b_deficit_grids,
        fig3_network_means, fig_probe_vs_deficit, fig_probe_contrast, fig_interaction, each in
        every format.
    """
    from kerabl.hayne.results import HResults

    res = HResults.open(results_path, allow_partial=allow_partial)
    out = Path(out_dir)
    layer = _layer_name(res, layer)
    if class_name is None:
        done = np.asarray(res.done)[:, list(res.layers).index(layer)]
        class_name = res.classes[int(np.argmax(done))]
    label = str(res.config.get("model", Path(results_path).stem))
    return [
        *fig_units_plane(res, class_name, layer, out / "fig1_units_plane", formats=formats),
        *fig_class_layer_grids(res, "probe", out / "fig2a_probe_grids", formats=formats),
        *fig_class_layer_grids(res, "deficit", out / "fig2b_deficit_grids", formats=formats),
        *fig_network_means([res], [label], out / "fig3_network_means", formats=formats),
        *fig_probe_vs_deficit(res, out / "fig_probe_vs_deficit", formats=formats),
        *fig_probe_contrast([res], [_run_label(res, label)], out / "fig_probe_contrast",
                            formats=formats),
        *fig_interaction_coefficients([res], [label], out / "fig_interaction", formats=formats),
    ]


def _run_label(res, label: str) -> str:
    control = res.config.get("control", "none")
    return label if control == "none" else f"{label}, {control}"
