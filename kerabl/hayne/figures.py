"""Figures of the H study (Hayne et al. 2022), drawn from a stored results file.

Figures only read: every number drawn comes from an `HResults` file (`kerabl.hayne.results`),
apart from means taken for display. Nothing here imports TensorFlow or Keras, and nothing touches
pyplot's global state: every figure is a `matplotlib.figure.Figure` on its own Agg canvas
(`kerabl.hayne.plot`). This module holds the paper's grid figures; the statistics figures (probe
vs deficit, the probe contrast, the interaction coefficients) are in `kerabl.hayne.stat_figures`
and importable from here too.

- Fig 1, one layer's units on the (magnitude, selectivity) plane with the grid drawn over them:
  `fig1_arrays`, `build_fig1`, `fig_units_plane`.
- Fig 2, class x layer grids of probe score (2a) or rank deficit (2b) with layer and class means:
  `fig2_arrays`, `build_fig2`, `fig_class_layer_grids`.
- Fig 3, per network the grid averaged over classes and layers, probe beside deficit:
  `fig3_arrays`, `build_fig3`, `fig_network_means`.
- `render_h_figures(results_path, out_dir)`: all H figures of one results file.
- `save_figure(fig, out_stem, formats)`: 150 dpi PNG / PDF with a tight bounding box.

Example:
    render_h_figures("kerabl-out/h_results.h5", "kerabl-out/figures")
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure

from kerabl.errors import KerablError
from kerabl.hayne.plot import (GRID_METRICS, draw_mean_grids, finite_range, grid_image, grid_shape,
                               mean_grid, metric_panels, nan_cmap, nanmean, open_results)
from kerabl.hayne.results import HResults
from kerabl.hayne.stat_figures import (build_interaction_coefficients, build_probe_contrast,
                                       build_probe_vs_deficit, fig_interaction_coefficients,
                                       fig_probe_contrast, fig_probe_vs_deficit,
                                       probe_deficit_arrays, run_label)
from kerabl.plotting import FONT, new_figure, save_figure

__all__ = [
    "GRID_METRICS", "fig1_arrays", "build_fig1", "fig_units_plane",
    "fig2_arrays", "build_fig2", "fig_class_layer_grids",
    "fig3_arrays", "build_fig3", "fig_network_means",
    "probe_deficit_arrays", "build_probe_vs_deficit", "fig_probe_vs_deficit",
    "build_probe_contrast", "fig_probe_contrast", "build_interaction_coefficients",
    "fig_interaction_coefficients", "render_h_figures", "run_label",
]

PANEL_INCH_MIN, PANEL_INCH_MAX = 0.45, 1.1


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
    res = open_results(res)
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
        "grid_shape": grid_shape(res),
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
    fig = new_figure(6.0, 5.0)
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
    panels = metric_panels(res, metric)
    return panels, nanmean(panels, axis=0), nanmean(panels, axis=1)


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
    res = open_results(res)
    panels, layer_means, class_means = fig2_arrays(res, metric)
    n_classes, n_layers = panels.shape[:2]
    classes, layers = list(res.classes), list(res.layers)
    label, cmap_name = GRID_METRICS[metric]
    cmap = nan_cmap(cmap_name)
    overall = nanmean(layer_means, axis=0)
    vmin, vmax = finite_range(panels, layer_means, class_means)
    layout = _fig2_layout(n_classes, n_layers, grid_shape(res),
                          max(len(s) for s in classes + ["layer mean"]))
    fig = new_figure(*layout["size"])
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
            image = grid_image(ax, data, cmap, vmin, vmax)
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
    n, m = grid_shape(res)
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
    results_list = [open_results(r) for r in results_list]
    if not results_list:
        raise KerablError("no results given for Fig 3; pass at least one results file")
    shapes = {grid_shape(r) for r in results_list}
    if len(shapes) > 1:
        raise KerablError(f"results have different grid shapes {sorted(shapes)}; "
                          f"Fig 3 compares networks on one grid shape")
    return np.stack([
        np.stack([mean_grid(r, metric) for metric in ("probe", "deficit")])
        for r in results_list])


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
    fig = new_figure(7.5, 0.6 + 2.8 * len(labels), layout="constrained")

    def label_panel(ax, row: int, col: int) -> None:
        ax.set_xlabel("magnitude cell (low -> high)", fontsize=FONT)
        ax.set_ylabel("selectivity strip (low -> high)", fontsize=FONT)
        ax.set_title(f"{labels[row]}: {GRID_METRICS[('probe', 'deficit')[col]][0]}",
                     fontsize=FONT + 1)

    draw_mean_grids(fig, means, ("probe", "deficit"), label_panel)
    return fig


def fig_network_means(results_list: Sequence, labels: Sequence[str], out_stem: str | Path, *,
                      formats: Sequence[str] = ("png", "pdf")) -> list[Path]:
    """Write Fig 3 (see `build_fig3`).

    Example:
        fig_network_means(["alexnet.h5", "vgg16.h5"], ["AlexNet", "VGG16"], "figures/fig3")
        # [Path("figures/fig3.png"), Path("figures/fig3.pdf")]
    """
    return save_figure(build_fig3(results_list, labels), out_stem, formats)


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
        results_path: an H results file (`kerabl.hayne.results`).
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
        *fig_probe_contrast([res], [run_label(res, label)], out / "fig_probe_contrast",
                            formats=formats),
        *fig_interaction_coefficients([res], [label], out / "fig_interaction", formats=formats),
    ]
