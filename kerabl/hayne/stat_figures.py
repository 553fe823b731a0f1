"""The statistics figures of the H study, drawn from stored results files: probe score against
rank deficit per cell with its least-squares line, the probes side by side (true labels against a
control), and the interaction test's coefficients. The numbers come from `kerabl.hayne.stats`;
the drawing pieces from `kerabl.hayne.plot`.

- Probe score vs rank deficit per cell, with the least-squares line and r:
  `probe_deficit_arrays`, `build_probe_vs_deficit`, `fig_probe_vs_deficit`.
- The probes side by side (paper metric, cross-validation on the all-image grid, the fold-grid
  held-out probe, rank deficit), one row per results file, e.g. true labels above a
  `--control permuted-labels` run: `build_probe_contrast`, `fig_probe_contrast`.
- The interaction test's coefficients with their class-bootstrap intervals, per network:
  `build_interaction_coefficients`, `fig_interaction_coefficients`.

Example:
    fig_probe_contrast(["out/h_results.h5", "control/h_results.h5"], ["true", "permuted"],
                       "figures/fig_probe_contrast")
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from kerabl.errors import KerablError
from kerabl.hayne.plot import draw_mean_grids, mean_grid, open_results, p_text
from kerabl.hayne.stats import interaction_test, majority_probe_level, probe_deficit_correlation
from kerabl.plotting import FONT, new_figure, save_figure

__all__ = [
    "probe_deficit_arrays", "build_probe_vs_deficit", "fig_probe_vs_deficit", "CONTRAST_METRICS",
    "build_probe_contrast", "fig_probe_contrast", "build_interaction_coefficients",
    "fig_interaction_coefficients", "run_label",
]

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
    res = open_results(res)
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

def build_probe_vs_deficit(res) -> Figure:
    """Probe score vs rank deficit, one point per cell coloured by layer, with the OLS line.

    Example:
        fig = build_probe_vs_deficit(res)
        fig.axes[0].get_title()   # "... Pearson r = 0.12 (p = 0.03), Spearman rho = ..., n = 560"

    The correlation comes from `kerabl.hayne.stats.probe_deficit_correlation(res)`.

    Returns:
        The Figure; its Axes holds one scatter collection per layer (in layer order) and the line.
    """
    res = open_results(res)
    a = probe_deficit_arrays(res)
    if a["probe"].size < 2:
        raise KerablError("fewer than 2 finished cells with probe and deficit; "
                          "run the probe and ablation stages first")
    corr = probe_deficit_correlation(res)
    layers = list(res.layers)
    fig = new_figure(6.0, 4.5)
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
    ax.set_title(f"per cell: Pearson r = {r:.3f} ({p_text(corr['pearson_p'])}), "
                 f"Spearman rho = {corr['spearman_rho']:.3f} ({p_text(corr['spearman_p'])}), "
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
    results_list = [open_results(r) for r in results_list]
    if len(labels) != len(results_list) or not results_list:
        raise KerablError(f"{len(results_list)} results but {len(labels)} labels; "
                          "give one label per results file")
    means = np.stack([[mean_grid(r, metric) for metric in CONTRAST_METRICS]
                      for r in results_list])
    fig = new_figure(13.0, 0.6 + 2.9 * len(labels), layout="constrained")
    titles = {"probe": "paper metric", "probe_heldout": "CV probe, grid of all images",
              "probe_fold": "held-out probe, grid per fold", "deficit": "rank deficit"}
    extras = [{"probe": f"\n(all 'other' scores {majority_probe_level(res):.3f})",
               "probe_heldout": "\n(chance 0.5)", "probe_fold": "\n(chance 0.5)"}
              for res in results_list]

    def label_panel(ax, row: int, col: int) -> None:
        metric = CONTRAST_METRICS[col]
        ax.set_title(f"{titles[metric]}{extras[row].get(metric, '')}", fontsize=FONT)
        ax.set_xlabel("magnitude cell", fontsize=FONT)
        ax.set_ylabel(f"{labels[row]}\nselectivity strip" if col == 0 else "selectivity strip",
                      fontsize=FONT)

    draw_mean_grids(fig, means, CONTRAST_METRICS, label_panel,
                    scale_includes={"probe_heldout": 0.5, "probe_fold": 0.5})
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
    results_list = [open_results(r) for r in results_list]
    if len(labels) != len(results_list) or not results_list:
        raise KerablError(f"{len(results_list)} results but {len(labels)} labels; "
                          "give one label per results file")
    names = ("selectivity", "magnitude", "selectivity_x_magnitude")
    fig = new_figure(6.5, 3.6)
    ax = fig.add_subplot()
    width = 0.7 / len(labels)
    for n, (res, label) in enumerate(zip(results_list, labels)):
        test = interaction_test(res)
        x = np.arange(3) + (n - (len(labels) - 1) / 2) * width
        est = np.array([test["coef_interaction"][k] for k in names])
        ci = np.array([test["interval"][k] for k in names])
        ax.errorbar(x, est, yerr=np.abs(ci.T - est), fmt="o", capsize=3, markersize=4,
                    label=f"{label}: R^2 {test['r2_additive']:.3f} -> {test['r2_interaction']:.3f}, "
                          f"F test {p_text(test['p_value'])}")
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




def run_label(res, label: str) -> str:
    """A results file's row label: its model, with the control it ran under and how a removed
    unit was removed (when not zero).

    Example:
        run_label(HResults.open("control/h_results.h5"), "demo")   # "demo, permuted-labels"
        run_label(HResults.open("mean/h_results.h5"), "demo")      # "demo, mean ablation"
    """
    control = res.config.get("control", "none")
    ablation = res.config.get("ablation", "zero")
    return ", ".join([label] + ([control] if control != "none" else [])
                     + ([f"{ablation} ablation"] if ablation != "zero" else []))
