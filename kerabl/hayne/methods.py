"""The H study's headline numbers under several ablation methods, side by side.

- `method_comparison(summaries)`: per method (zero, mean, resample: `kerabl.replacement`), the
  deficit of the most selective, highest-magnitude cell, the largest-deficit cell, the
  selectivity x magnitude coefficient with its class-bootstrap interval and the probe-vs-deficit
  correlation, from `kerabl.hayne.stats.summary` of each method's results.
- `comparison_text(comparison)`: the same as a table, one line per method.

No TensorFlow here.
"""

from __future__ import annotations

from typing import Mapping


def method_comparison(summaries: Mapping[str, dict]) -> dict:
    """The headline numbers of each method's `summary`, keyed by method.

    Example:
        method_comparison({m: summary(HResults.open(f"out/{m}/h_results.h5"))
                           for m in ("zero", "mean", "resample")})["mean"]["top_cell_deficit"]
    """
    out = {}
    for method, headline in summaries.items():
        grid = headline["largest_deficit"]["grid"]
        test = headline["interaction"]
        corr = headline["correlation"]["probe"]
        out[method] = {
            "control": headline.get("control", "none"),
            "top_cell": [len(grid) - 1, len(grid[0]) - 1],
            "top_cell_deficit": grid[-1][-1],
            "largest_deficit": headline["largest_deficit"],
            "interaction": test["coef_interaction"]["selectivity_x_magnitude"],
            "interaction_interval": test["interval"]["selectivity_x_magnitude"],
            "interaction_p": test["p_value"],
            "probe_deficit_pearson": corr["pearson_r"],
            "probe_deficit_pearson_interval": corr["pearson_interval"]}
    return out


def comparison_text(comparison: Mapping[str, dict]) -> str:
    """One line per method: the top cell's deficit, the largest-deficit cell, the interaction
    coefficient [95 % interval] and probe-vs-deficit Pearson r.

    Example:
        typer.echo(comparison_text(method_comparison(summaries)))
        # method    cell (3, 3)  largest          sel x mag [95 %]          probe~deficit r
    """
    lines = [f"{'method':<9} {'top cell':>12} {'largest deficit':>18} "
             f"{'sel x mag [95 % interval]':>30} {'probe~deficit r':>16}"]
    for method, row in comparison.items():
        lo, hi = row["interaction_interval"]
        cell = tuple(row["largest_deficit"]["cell"])
        lines.append(f"{method:<9} {tuple(row['top_cell'])!s:>7} {row['top_cell_deficit']:.3f} "
                     f"{cell!s:>9} {row['largest_deficit']['mean']:.3f} "
                     f"{row['interaction']:>12.3f} [{lo:.3f}, {hi:.3f}] "
                     f"{row['probe_deficit_pearson']:>16.3f}")
    control = {row["control"] for row in comparison.values()} - {"none"}
    return "\n".join(lines + [f"control: {', '.join(sorted(control))}"] if control else lines)
