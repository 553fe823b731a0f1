"""Figures as files, for both studies and the tools: a figure on its own Agg canvas (pyplot's
global state untouched) and the one way figures are written.

- `new_figure(width, height)`: a Figure on its own canvas, `DPI` dots per inch.
- `save_figure(fig, out_stem, formats)`: `<out_stem>.png` / `.pdf` at `DPI`, tight bounding box.
- `FONT`: the base font size of every figure.

Example:
    fig = new_figure(6.0, 4.5)
    fig.add_subplot().plot([0, 1], [1, 0])
    save_figure(fig, "figures/line", ("png",))   # [Path("figures/line.png")]
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from kerabl.errors import KerablError

DPI = 150
FONT = 8


def new_figure(width: float, height: float, layout: str | None = None) -> Figure:
    """A Figure on its own Agg canvas (pyplot and its figure registry stay untouched).

    Example:
        fig = new_figure(6.0, 4.5)
        ax = fig.add_subplot()
    """
    fig = Figure(figsize=(width, height), dpi=DPI, layout=layout)
    FigureCanvasAgg(fig)
    return fig


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
