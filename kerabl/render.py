"""The figures of stored results, H or Z: what `kerabl figures` and `kerabl reproduce` draw.

- `render(results, out)`: one file's figures; `render_several(files, out, ...)`: each file's
  figures and the H files side by side; `render_timed(results, out)`: `render` and its seconds.

Example:
    render(Path("kerabl-out/h_results.h5"), Path("figures"))   # [..."fig1_....png", ...]
"""

from __future__ import annotations

import time
from pathlib import Path

from kerabl.hayne.figures import (fig_interaction_coefficients, fig_network_means,
                                  fig_probe_contrast, render_h_figures, run_label)
from kerabl.hayne.results import HResults
from kerabl.store import results_kind
from kerabl.zhou.figures import render_z_figures


def render_several(results: list[Path], out: Path, class_name, layer) -> list:
    """Each file's figures in OUT/<n>-<model>/, and the H files' Fig 3, probe contrast and
    interaction coefficients side by side in OUT; the written paths.

    Example:
        render_several([Path("a/h_results.h5"), Path("b/h_results.h5")], Path("figs"), None, None)
    """
    paths, h_files, labels = [], [], []
    for n, path in enumerate(results):
        kind = results_kind(path)
        model = "z" if kind == "kerabl.z-results" else HResults.open(path).config.get("model", "h")
        paths += render(path, out / f"{n}-{model}", class_name, layer)
        if kind != "kerabl.z-results":
            h_files.append(path)
            labels.append(model)
    if len(h_files) > 1:
        paths += render_side_by_side(h_files, labels, out)
    return paths


def render_side_by_side(h_files: list[Path], labels: list[str], out: Path) -> list:
    """Fig 3 (a row per file), the probe contrast and the interaction coefficients (with their
    intervals) of several H results files in OUT; rows are named by model, or by run (control,
    ablation method) where files share a model. The written paths.

    Example:
        render_side_by_side([Path(f"out/{m}/h_results.h5") for m in ("zero", "mean")],
                            ["demo", "demo"], Path("out/figures-methods"))
    """
    runs = [run_label(HResults.open(p), name) for p, name in zip(h_files, labels)]
    rows = labels if len(set(labels)) == len(labels) else runs
    return (fig_network_means(h_files, rows, out / "fig3_networks")
            + fig_probe_contrast(h_files, runs, out / "fig_probe_contrast")
            + fig_interaction_coefficients(h_files, runs, out / "fig_interaction"))


def render_timed(results: Path, out: Path) -> tuple[list, float]:
    """`render(results, out)` and its seconds: what `kerabl reproduce` runs in a process beside
    the Z study.

    Example:
        files, seconds = render_timed(Path("kerabl-out/h_results.h5"), Path("figures"))
    """
    start = time.perf_counter()
    files = render(results, out)
    return files, time.perf_counter() - start


def render(results: Path, out: Path, class_name=None, layer=None, z_names=None) -> list:
    """The figures of one results file (H or Z) in `out`; the written paths. `z_names`: which Z
    figures (default all).

    Example:
        render(Path("kerabl-out/z_results.h5"), Path("figures"))   # [..."fig_z_....png", ...]
    """
    kind = results_kind(results)
    if kind == "kerabl.z-results":
        return render_z_figures(results, out, names=z_names)
    return render_h_figures(results, out, class_name=class_name, layer=layer)
