"""Statistics over stored H results: the regression behind the abstract's claim.

- `cell_table(res)`: finished cells as flat arrays, with z-scored coordinates.
- `deficit_regression(res)`: cell rank deficit ~ selectivity + magnitude + selectivity x
  magnitude (OLS), and the R^2 of the selectivity-only and magnitude-only models.
- `probe_deficit_correlation(res, metric)`: Pearson and Spearman correlation of a probe
  score with the rank deficit over cells.
- `summary(res)`: the headline numbers, JSON-serialisable.

Reads an `kerabl.hayne.results.HResults` (or anything with its arrays); no TensorFlow here.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from kerabl.errors import KerablError

_METRICS = ("probe", "probe_heldout", "srs_tau", "srs_rho")


def _zscore(v: np.ndarray) -> np.ndarray:
    sd = v.std()
    return (v - v.mean()) / sd if sd > 0 else np.zeros_like(v)


def cell_table(res) -> dict:
    """Finished cells as flat arrays: deficit, z-scored sel / mag (within class and layer), metrics.

    Example:
        t = cell_table(HResults.open("out/h.h5"))
        t["deficit"].shape == t["sel"].shape     # one entry per finished, non-empty cell
    """
    table: dict[str, list] = {key: [] for key in ("deficit", "sel", "mag") + _METRICS}
    done = np.asarray(res.done, dtype=bool)
    for ci, li in zip(*np.nonzero(done)):
        ok = np.isfinite(res.deficit[ci, li]) & np.isfinite(res.cell_selectivity[ci, li])
        table["deficit"].append(res.deficit[ci, li][ok])
        table["sel"].append(_zscore(res.cell_selectivity[ci, li][ok]))
        table["mag"].append(_zscore(res.cell_magnitude[ci, li][ok]))
        for key in _METRICS:
            table[key].append(np.asarray(getattr(res, key))[ci, li][ok])
    if not table["deficit"]:
        raise KerablError("the results hold no finished (class, layer) pair; run the sweep first")
    return {key: np.concatenate(v).astype(np.float64) for key, v in table.items()}


def _r2(design: np.ndarray, target: np.ndarray) -> tuple[float, np.ndarray]:
    coef = np.linalg.lstsq(design, target, rcond=None)[0]
    resid = target - design @ coef
    total = ((target - target.mean()) ** 2).sum()
    return (float(1.0 - (resid ** 2).sum() / total) if total > 0 else float("nan")), coef


def deficit_regression(res) -> dict:
    """OLS of cell mean rank deficit on z-scored selectivity, magnitude and their product.

    Example:
        fit = deficit_regression(HResults.open("out/h.h5"))
        fit["r2_full"], fit["r2_selectivity"]

    Returns:
        {"r2_full", "r2_selectivity", "r2_magnitude", "coef_full": {"intercept",
        "selectivity", "magnitude", "selectivity_x_magnitude"}, "n_cells"}.
    """
    t = cell_table(res)
    ones = np.ones_like(t["sel"])
    r2_full, coef = _r2(np.column_stack([ones, t["sel"], t["mag"], t["sel"] * t["mag"]]), t["deficit"])
    return {"r2_full": r2_full,
            "r2_selectivity": _r2(np.column_stack([ones, t["sel"]]), t["deficit"])[0],
            "r2_magnitude": _r2(np.column_stack([ones, t["mag"]]), t["deficit"])[0],
            "coef_full": dict(zip(("intercept", "selectivity", "magnitude",
                                   "selectivity_x_magnitude"), (float(c) for c in coef))),
            "n_cells": int(t["deficit"].size)}


def probe_deficit_correlation(res, metric: str = "probe") -> dict:
    """Pearson and Spearman correlation between a cell metric and the rank deficit.

    Example:
        probe_deficit_correlation(res)["pearson_r"]
        probe_deficit_correlation(res, metric="probe_heldout")

    Returns:
        {"metric", "pearson_r", "pearson_p", "spearman_rho", "spearman_p", "n"} over the
        finished cells where both values are finite.
    """
    if metric not in _METRICS:
        raise KerablError(f"unknown metric {metric!r}; use one of {', '.join(_METRICS)}")
    t = cell_table(res)
    ok = np.isfinite(t[metric]) & np.isfinite(t["deficit"])
    x, y = t[metric][ok], t["deficit"][ok]
    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        nan = float("nan")
        return {"metric": metric, "pearson_r": nan, "pearson_p": nan, "spearman_rho": nan,
                "spearman_p": nan, "n": int(x.size)}
    pr, pp = stats.pearsonr(x, y)
    sr, sp = stats.spearmanr(x, y)
    return {"metric": metric, "pearson_r": float(pr), "pearson_p": float(pp),
            "spearman_rho": float(sr), "spearman_p": float(sp), "n": int(x.size)}


def _best_cell(values: np.ndarray, done: np.ndarray, shape: tuple[int, int]) -> dict:
    """Grid cell (i, j) with the largest mean over finished classes and layers."""
    means = np.nanmean(np.where(done[:, :, None], values, np.nan), axis=(0, 1))
    k = int(np.nanargmax(means))
    return {"cell": [k // shape[1], k % shape[1]], "mean": float(means[k]),
            "grid": means.reshape(shape).tolist()}


def summary(res) -> dict:
    """Headline numbers of a results file, JSON-serialisable.

    Example:
        json.dumps(summary(HResults.open("out/h.h5")))

    Returns:
        {"largest_deficit": {"cell": [i, j], "mean", "grid"}, "highest_probe": {...},
        "regression": deficit_regression(res), "correlation": {metric: ...}}.
    """
    done = np.asarray(res.done, dtype=bool)
    shape = tuple(int(v) for v in res.grid_shape)
    return {"largest_deficit": _best_cell(np.asarray(res.deficit), done, shape),
            "highest_probe": _best_cell(np.asarray(res.probe), done, shape),
            "regression": deficit_regression(res),
            "correlation": {m: probe_deficit_correlation(res, m) for m in ("probe", "probe_heldout")}}
