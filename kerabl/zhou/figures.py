"""Figures of the Z study, drawn from a stored results file (`kerabl.zhou.results.ZResults`) only.

- `build_drop_curves(z, key)`: per layer, units sorted by drop (descending), unit directions
  against random directions.
- `build_attribute_scatter(z, layer)`: attributes (rows: L1, max class correlation, selectivity)
  against overall and max class drop (columns), Spearman rho in each panel.
- `build_greedy_curves(z)`: a class's accuracy as units are ablated greedily vs in random orders.
- `build_top_images(z, layer, n_units, images)`: the top-activating images of the units with the
  largest max class drop, the activation map overlaid.
- `build_regulariser_curves(curves)`: max class drop curves of several networks side by side, each
  the mean over its trained instances with the min-max band (`curve_band`).
- `render_z_figures(z_path, out_dir)`: all of them, written as files; `save_figure(fig, stem)`;
  `figure_script(name, build)`: the command line of the scripts/fig_z_*.py scripts.

Every builder returns a matplotlib `Figure` (no pyplot state) whose plotted data are the stored
arrays, so tests can read them back.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from kerabl.errors import KerablError
from kerabl.plotting import save_figure
from kerabl.zhou.attributes import ATTRIBUTES
from kerabl.zhou.results import DROPS, ZResults, display_images

ATTRIBUTE_LABELS = {"l1": "L1 norm", "max_class_corr": "max class correlation",
                    "selectivity": "class selectivity"}
DROP_LABELS = {"overall_drop": "overall accuracy drop", "max_class_drop": "max class accuracy drop"}
RANDOM_KEYS = {"overall_drop": "rand_overall_drop", "max_class_drop": "rand_max_class_drop"}
FIGURE_NAMES = ("z_drop_curves", "z_attributes", "z_greedy", "z_top_images")


def _as_results(z: ZResults | str | os.PathLike) -> ZResults:
    return z if isinstance(z, ZResults) else ZResults.open(z)


def _grid(n: int, cols: int = 4, size: float = 2.8) -> tuple[Figure, np.ndarray]:
    rows = -(-n // cols)
    cols = min(cols, n)
    fig = Figure(figsize=(size * cols, size * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False).ravel())
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes


def sorted_curve(values: np.ndarray) -> np.ndarray:
    """Values sorted in descending order (the x axis of a drop curve is the unit's rank).

    Example:
        sorted_curve(np.array([0.1, 0.3, 0.2]))   # array([0.3, 0.2, 0.1])
    """
    return np.sort(np.asarray(values, float))[::-1]


def build_drop_curves(z: ZResults | str | os.PathLike, key: str = "max_class_drop",
                      layers: Sequence[str] | None = None) -> Figure:
    """Per layer, the units' drops sorted descending, beside those of random directions.

    Example:
        fig = build_drop_curves(ZResults.open("z.h5"))
        fig.savefig("z_drop_curves.png")

    Args:
        key: "max_class_drop" or "overall_drop".
        layers: layers to draw (default: all, in study order).
    """
    z = _as_results(z)
    if key not in DROPS:
        raise KerablError(f"key {key!r} is unknown: use one of {', '.join(DROPS)}")
    layers = list(layers or z.layers)
    fig, axes = _grid(len(layers))
    for ax, layer in zip(axes, layers):
        d = z.layer(layer)
        ax.plot(sorted_curve(d[key]), label="unit directions", color="C0")
        ax.plot(sorted_curve(d[RANDOM_KEYS[key]]), label="random directions", color="C1")
        ax.set_title(layer)
        ax.set_xlabel("unit rank")
        ax.set_ylabel(DROP_LABELS[key])
    axes[0].legend(fontsize="small")
    fig.suptitle(f"{z.config['network']}: {DROP_LABELS[key]} per unit, sorted")
    return fig


def build_attribute_scatter(z: ZResults | str | os.PathLike, layer: str) -> Figure:
    """Each unit attribute (rows) against overall and max class drop (columns), rho per panel.

    Example:
        fig = build_attribute_scatter(ZResults.open("z.h5"), "conv_5")
    """
    z = _as_results(z)
    d = z.layer(layer)
    corr = z.correlations(layer)
    fig = Figure(figsize=(7, 8), layout="constrained")
    axes = fig.subplots(len(ATTRIBUTES), len(DROPS), squeeze=False)
    for i, attr in enumerate(ATTRIBUTES):
        for j, drop in enumerate(DROPS):
            ax = axes[i, j]
            ax.scatter(d[attr], d[drop], s=8, alpha=0.6)
            rho = corr[attr][drop]["spearman_r"]
            ax.set_title(f"rho = {rho:.2f}", fontsize="small")
            ax.set_xlabel(ATTRIBUTE_LABELS[attr])
            ax.set_ylabel(DROP_LABELS[drop])
    fig.suptitle(f"{z.config['network']} {layer}: unit attributes vs accuracy drops")
    return fig


def build_greedy_curves(z: ZResults | str | os.PathLike, classes: Sequence[int] | None = None
                        ) -> Figure:
    """Class accuracy vs units ablated: greedy order against random orders (mean +- std), and
    (in results that have it) the greedy order chosen on one half of the class's images, scored
    on that half and on the other.

    Example:
        fig = build_greedy_curves(ZResults.open("z.h5"), classes=[0, 3])

    Args:
        classes: positions in the study's classes to draw (default: all).
    """
    z = _as_results(z)
    g = z.greedy
    picks = list(range(len(g["curves"])) if classes is None else classes)
    fig, axes = _grid(len(picks), cols=5, size=2.4)
    steps = np.arange(g["curves"].shape[1])
    for ax, c in zip(axes, picks):
        mean, spread = g["random"][c].mean(axis=0), g["random"][c].std(axis=0)
        ax.plot(steps, g["curves"][c], marker="o", ms=3, label="greedy", color="C3")
        if "curves_heldout_half" in g:      # chosen on one half of the images, scored on the other
            ax.plot(steps, g["curves_choosing_half"][c], ls="--", color="C1",
                    label="greedy, choosing half")
            ax.plot(steps, g["curves_heldout_half"][c], marker="s", ms=3, color="C0",
                    label="greedy, held-out half")
        ax.plot(steps, mean, label="random order", color="C7")
        ax.fill_between(steps, mean - spread, mean + spread, color="C7", alpha=0.3)
        ax.set_title(z.class_names[c])
        ax.set_ylim(-0.05, 1.05)
        ax.set_xlabel("units ablated")
    axes[0].set_ylabel("class accuracy")
    axes[0].legend(fontsize="small")
    fig.suptitle(f"{z.config['network']} {g['layer']}: greedy vs random ablation")
    return fig


def _display_images(z: ZResults, images: np.ndarray | None) -> np.ndarray:
    if images is not None:
        return display_images(images) / 255.0
    if z.thumbnails is None:
        raise KerablError(f"{z.path} stores no thumbnails (large images): pass the image set's images")
    return z.thumbnails / 255.0


def build_top_images(z: ZResults | str | os.PathLike, layer: str, n_units: int = 4,
                     images: np.ndarray | None = None, k: int | None = None) -> Figure:
    """Top-activating images of the units with the largest max class drop, maps overlaid.

    Example:
        fig = build_top_images(ZResults.open("z.h5"), "conv_5", n_units=4)

    Args:
        n_units: rows: the units with the largest max class drop (ties: lowest index).
        images: (N, H, W, 3) the study's images in file order; default the stored thumbnails.
        k: images per unit (default: all stored).
    """
    z = _as_results(z)
    d = z.layer(layer)
    shown = _display_images(z, images)
    units = np.argsort(-d["max_class_drop"], kind="stable")[:n_units]
    k = k or d["top_images"].shape[1]
    fig = Figure(figsize=(1.3 * k, 1.4 * len(units)), layout="constrained")
    axes = fig.subplots(len(units), k, squeeze=False)
    for row, unit in zip(axes, units):
        for ax, image, amap in zip(row, d["top_images"][unit][:k], d["top_maps"][unit][:k]):
            ax.imshow(shown[image])
            h, w = shown.shape[1:3]
            ax.imshow(amap, cmap="jet", alpha=0.45, extent=(-0.5, w - 0.5, h - 0.5, -0.5),
                      interpolation="bilinear")
            ax.set_xticks([])
            ax.set_yticks([])
        top = z.class_names[int(d["argmax_class"][unit])]
        drop = d["max_class_drop"][unit]
        row[0].set_ylabel(f"unit {unit}\nclass {top}: -{drop:.2f}", fontsize="small")
    fig.suptitle(f"{z.config['network']} {layer}: top images of the most important units")
    return fig


def curve_band(drops: np.ndarray | Sequence[np.ndarray]) -> dict:
    """Mean and spread over network instances of their sorted drop curves, rank by rank.

    Example:
        band = curve_band([drops_seed0, drops_seed1, drops_seed2])   # each (U,)
        band["mean"], band["low"], band["high"], band["sd"]          # each (U,), rank order

    Each instance's drops are sorted descending first (`sorted_curve`); at every unit rank the
    band holds the mean, the minimum and maximum (`low`, `high`) and the sample SD (ddof=1; 0 for
    one instance) over the instances; `n` is their number.
    """
    if isinstance(drops, np.ndarray):
        drops = [drops] if drops.ndim == 1 else list(drops)
    rows = [np.asarray(d, float) for d in drops]
    if not rows or any(r.ndim != 1 or r.size == 0 for r in rows):
        raise KerablError("drop curves: pass one (U,) array or a list of them, each non-empty")
    if len({r.size for r in rows}) != 1:
        raise KerablError("drop curves of one layer differ in unit count "
                          f"({sorted({r.size for r in rows})}): pass instances of one architecture")
    curves = np.stack([sorted_curve(r) for r in rows])
    n = len(curves)
    return {"mean": curves.mean(axis=0), "low": curves.min(axis=0), "high": curves.max(axis=0),
            "sd": curves.std(axis=0, ddof=1) if n > 1 else np.zeros(curves.shape[1]), "n": n}


def build_regulariser_curves(curves: Mapping[str, Mapping[str, np.ndarray | Sequence[np.ndarray]]],
                             key: str = "max_class_drop") -> Figure:
    """Sorted drop curves of several networks (e.g. baseline, batch norm, dropout) per layer.

    Example:
        fig = build_regulariser_curves({"baseline": {"conv_1": drops, ...}, "bn": {...}})
        fig = build_regulariser_curves({"bn": {"conv_1": [drops_seed0, drops_seed1, drops_seed2]}})

    Args:
        curves: network label -> {layer: (U,) drops of one network, or a list of them (or an
            (N, U) array), one per trained instance}; the layers of the first network are drawn.
            Several instances are drawn as their mean curve with the min-max band over instances
            (`curve_band`), labelled "label (N seeds)".
    """
    labels = list(curves)
    if not labels:
        raise KerablError("no networks given: pass at least one {label: {layer: drops}}")
    layers = list(curves[labels[0]])
    fig, axes = _grid(len(layers))
    banded = False
    for ax, layer in zip(axes, layers):
        for i, label in enumerate(labels):
            if layer not in curves[label]:
                continue
            band = curve_band(curves[label][layer])
            name = label if band["n"] == 1 else f"{label} ({band['n']} seeds)"
            ax.plot(band["mean"], label=name, color=f"C{i}")
            if band["n"] > 1:
                ax.fill_between(np.arange(band["mean"].size), band["low"], band["high"],
                                color=f"C{i}", alpha=0.2, linewidth=0)
                banded = True
        ax.set_title(layer)
        ax.set_xlabel("unit rank")
        ax.set_ylabel(DROP_LABELS.get(key, key))
    axes[0].legend(fontsize="small")
    if banded:
        fig.suptitle("lines: mean over seeds at each unit rank; bands: min-max over seeds")
    return fig


def _default_layer(z: ZResults) -> str:
    return z.greedy["layer"] if z.greedy["layer"] in z.layers else z.layers[-1]


def render_z_figures(z_path: str | os.PathLike, out_dir: str | os.PathLike, *,
                     imageset=None, formats: Sequence[str] = ("png", "pdf"),
                     names: Sequence[str] | None = None) -> list[Path]:
    """Write the Z figures of a results file into `out_dir` (`names`: which; None: all).

    Example:
        paths = render_z_figures("out/z_demo.h5", "figures", formats=("png",))
        render_z_figures("out/z_demo.h5", "figures", names=("z_greedy",))   # one of them

    The top-image figure uses `imageset.load(...)` images when given (the network input size and
    preprocessing of the study), else the thumbnails stored for small images; it is skipped when
    neither is available. Layer-wise figures use the last layer studied.

    Returns:
        the written paths, in the order of `FIGURE_NAMES`.
    """
    names = FIGURE_NAMES if names is None else names
    unknown = [name for name in names if name not in FIGURE_NAMES]
    if unknown:
        raise KerablError(f"no Z figure {unknown[0]!r}: the Z figures are "
                          f"{', '.join(FIGURE_NAMES)}")
    z = ZResults.open(z_path)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    layer = _default_layer(z)

    def top_images():
        images = None if imageset is None else imageset.load(tuple(z.config["input_size"]),
                                                             z.config["preprocess"])
        if images is None and z.thumbnails is None:
            return None
        return build_top_images(z, layer, images=images)

    builders = {"z_drop_curves": lambda: build_drop_curves(z),
                "z_attributes": lambda: build_attribute_scatter(z, layer),
                "z_greedy": lambda: build_greedy_curves(z),
                "z_top_images": top_images}
    paths = []
    for name in FIGURE_NAMES:
        fig = builders[name]() if name in names else None
        if fig is not None:
            paths += save_figure(fig, out / name, formats)
    return paths


def figure_script(name: str, build: Callable[[ZResults, str | None], Figure]) -> None:
    """Command line of a scripts/fig_z_*.py script: read a results file, write one figure.

    Example:
        figure_script("z_greedy", lambda z, layer: build_greedy_curves(z))
    """
    import typer

    def main(z_path: Path, out_dir: Path = Path("figures"),
             layer: str = typer.Option(None, help="layer (default: the greedy layer)"),
             formats: str = "png,pdf") -> None:
        z = ZResults.open(z_path)
        fig = build(z, layer or _default_layer(z))
        for path in save_figure(fig, out_dir / name, [f for f in formats.split(",") if f]):
            print(path)

    try:
        typer.run(main)
    except KerablError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)

