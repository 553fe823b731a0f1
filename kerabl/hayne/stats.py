"""Statistics over stored H results: the regression behind the abstract's claim.

- `cell_table(res)`: finished cells as flat arrays, with z-scored coordinates.
- `deficit_regression(res)`: cell rank deficit ~ selectivity + magnitude + selectivity x
  magnitude (OLS), and the R^2 of the selectivity-only and magnitude-only models.
- `probe_deficit_correlation(res, metric)`: Pearson and Spearman correlation of a probe
  score with the rank deficit over cells.
- `interaction_test(res)`: the abstract's claim tested: additive (sel + mag) against
  interaction (+ sel x mag) model, both with class and layer fixed effects; nested F test,
  R^2 of each, the interaction coefficient with a 95 % class-bootstrap interval.
- `correlation_interval(res, metric)`: the probe-deficit Pearson r with a class-bootstrap interval.
- `network_statistics(paths)`: both per results file (one network each).
- `summary(res)`: the headline numbers, JSON-serialisable.

Reads an `kerabl.hayne.results.HResults` (or anything with its arrays); no TensorFlow here.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from kerabl.errors import KerablError
from kerabl.hayne.probes import hard_log_loss
from kerabl.hayne.results import HResults

_METRICS = ("probe", "probe_heldout", "probe_fold", "srs_tau", "srs_rho")
N_BOOT = 1000


def _zscore(v: np.ndarray) -> np.ndarray:
    sd = v.std()
    return (v - v.mean()) / sd if sd > 0 else np.zeros_like(v)


def cell_table(res) -> dict:
    """Finished cells as flat arrays: deficit, z-scored sel / mag (within class and layer), metrics.

    Example:
        t = cell_table(HResults.open("out/h.h5"))
        t["deficit"].shape == t["sel"].shape     # one entry per finished, non-empty cell
    """
    table: dict[str, list] = {key: [] for key in ("deficit", "sel", "mag", "class", "layer")
                              + _METRICS}
    done = np.asarray(res.done, dtype=bool)
    for ci, li in zip(*np.nonzero(done)):
        ok = np.isfinite(res.deficit[ci, li]) & np.isfinite(res.cell_selectivity[ci, li])
        table["deficit"].append(res.deficit[ci, li][ok])
        table["class"].append(np.full(ok.sum(), ci))
        table["layer"].append(np.full(ok.sum(), li))
        table["sel"].append(_zscore(res.cell_selectivity[ci, li][ok]))
        table["mag"].append(_zscore(res.cell_magnitude[ci, li][ok]))
        for key in _METRICS:
            values = getattr(res, key, None)     # probe_fold: absent from older results
            table[key].append(np.full(ok.sum(), np.nan) if values is None
                              else np.asarray(values)[ci, li][ok])
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


def probe_deficit_correlation(res, metric: str = "probe", *, n_boot: int = N_BOOT,
                              seed: int = 0) -> dict:
    """Pearson and Spearman correlation between a cell metric and the rank deficit.

    Example:
        probe_deficit_correlation(res)["pearson_interval"]      # [low, high], 95 %
        probe_deficit_correlation(res, metric="probe_fold", n_boot=0)

    The p-values take cells as independent; the 95 % intervals come from `n_boot` resamples
    of the classes (seeded, as in `interaction_fit`), since cells of one class are not
    independent.

    Returns:
        {"metric", "pearson_r", "pearson_p", "pearson_interval", "spearman_rho", "spearman_p",
        "spearman_interval", "n", "n_boot"} over the finished cells where both are finite.
    """
    if metric not in _METRICS:
        raise KerablError(f"unknown metric {metric!r}; use one of {', '.join(_METRICS)}")
    t = cell_table(res)
    ok = np.isfinite(t[metric]) & np.isfinite(t["deficit"])
    x, y = t[metric][ok], t["deficit"][ok]
    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        nan = float("nan")
        return {"metric": metric, "pearson_r": nan, "pearson_p": nan, "pearson_interval": [nan, nan],
                "spearman_rho": nan, "spearman_p": nan, "spearman_interval": [nan, nan],
                "n": int(x.size), "n_boot": int(n_boot)}
    pr, pp = stats.pearsonr(x, y)
    sr, sp = stats.spearmanr(x, y)
    boot = [(_pearson(x[rows], y[rows]), _pearson(_ranks(x[rows]), _ranks(y[rows])))
            for rows, _ in _class_bootstrap(t["class"][ok], n_boot, seed)]
    n_classes = int(np.unique(t["class"][ok]).size)
    return {"metric": metric, "pearson_r": float(pr), "pearson_p": float(pp),
            "pearson_interval": _correlation_interval(pr, [b[0] for b in boot], n_classes),
            "spearman_rho": float(sr), "spearman_p": float(sp),
            "spearman_interval": _correlation_interval(sr, [b[1] for b in boot], n_classes),
            "n": int(x.size),
            "n_boot": int(n_boot)}


def _ranks(v: np.ndarray) -> np.ndarray:
    """Average ranks (scipy.stats.rankdata) from one np.unique."""
    _, inverse, counts = np.unique(v, return_inverse=True, return_counts=True)
    return (np.cumsum(counts) - (counts - 1) / 2.0)[inverse]


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson r; NaN when either side is constant (a bootstrap draw can be)."""
    ac, bc = a - a.mean(), b - b.mean()
    denom = np.sqrt((ac @ ac) * (bc @ bc))
    return float(ac @ bc / denom) if denom > 0 else float("nan")


def _dummies(ids: np.ndarray) -> np.ndarray:
    """One-hot columns of the ids with the first level dropped (it is in the intercept)."""
    levels, inverse = np.unique(ids, return_inverse=True)
    return (inverse[:, None] == np.arange(1, levels.size)[None, :]).astype(np.float64)


def _fit(design: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, float, int]:
    """OLS coefficients, residual sum of squares and the design's rank, from the normal equations
    (a few dozen columns: a tall lstsq costs ~100x more, most of it in thread start-up)."""
    coef, _, rank, _ = np.linalg.lstsq(design.T @ design, design.T @ target, rcond=None)
    return coef, float(((target - design @ coef) ** 2).sum()), int(rank)


def _class_bootstrap(class_ids: np.ndarray, n_boot: int, seed: int):
    """Per draw: the rows of classes drawn with replacement and each row's copy number (a drawn
    class counted twice is two classes for the fixed effects)."""
    classes = np.unique(class_ids)
    rows_of = [np.flatnonzero(class_ids == c) for c in classes]
    rng = np.random.default_rng(seed)
    for _ in range(n_boot):
        drawn = rng.integers(0, classes.size, classes.size)
        yield (np.concatenate([rows_of[d] for d in drawn]),
               np.concatenate([np.full(rows_of[d].size, i) for i, d in enumerate(drawn)]))


def _interval(estimate: float, values: list, n_classes: int) -> list[float]:
    """95 % interval: estimate +- t(0.975, C - 1) * sqrt(C / (C - 1)) * bootstrap SD over C
    classes. With few classes the plain percentile interval is too narrow (its variance is
    biased by (C - 1) / C and the normal quantile ignores how few clusters there are); this one
    covers ~95 % on simulated data with 12 classes (tests/test_stats.py)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size < 2 or n_classes < 2 or not np.isfinite(estimate):
        return [float("nan"), float("nan")]
    half = stats.t.ppf(0.975, n_classes - 1) * np.sqrt(n_classes / (n_classes - 1)) * v.std(ddof=1)
    return [float(estimate - half), float(estimate + half)]


def _correlation_interval(estimate: float, values: list, n_classes: int) -> list[float]:
    """`_interval` of a correlation on Fisher's z = atanh(r) scale, mapped back by tanh, so that
    it stays inside (-1, 1) (on the r scale, few classes gave e.g. [-0.910, 1.196])."""
    def z(r):
        return np.arctanh(np.clip(np.asarray(r, dtype=np.float64), -1 + 1e-9, 1 - 1e-9))

    low, high = _interval(float(z(estimate)), list(z(values)), n_classes)
    return [float(np.tanh(low)), float(np.tanh(high))]


_COEFS = ("selectivity", "magnitude", "selectivity_x_magnitude")


def interaction_fit(deficit, sel, mag, class_ids, layer_ids, *, n_boot: int = N_BOOT,
                    seed: int = 0) -> dict:
    """Additive vs interaction model of cell deficit, class and layer fixed effects in both.

    Example:
        fit = interaction_fit(deficit, sel, mag, class_ids, layer_ids)
        fit["p_value"], fit["interval"]["selectivity_x_magnitude"]

    additive: deficit ~ class + layer + sel + mag; interaction: the same + sel x mag (OLS).
    F = (RSS_additive - RSS_interaction) / (RSS_interaction / (n - p)) on (1, n - p) degrees of
    freedom, p = the interaction model's parameter count. The F test takes cells as
    independent; cells of one class are not, so every coefficient also gets a 95 % percentile
    interval from `n_boot` resamples of the classes (seeded; each drawn copy of a class keeps
    its own fixed effect): the estimate +- t(0.975, C - 1) * sqrt(C / (C - 1)) * the bootstrap
    standard deviation (`_interval`).

    Returns:
        {"n_cells", "n_classes", "n_layers", "r2_fixed_effects", "r2_additive",
        "r2_interaction", "f", "df", "p_value", "coef_additive", "coef_interaction",
        "interval" (of each interaction-model coefficient), "n_boot", "seed"}.
    """
    y = np.asarray(deficit, dtype=np.float64)
    sel, mag = np.asarray(sel, np.float64), np.asarray(mag, np.float64)
    class_ids, layer_ids = np.asarray(class_ids), np.asarray(layer_ids)
    if y.size < 8 or not (y.shape == sel.shape == mag.shape == class_ids.shape == layer_ids.shape):
        raise KerablError(f"{y.size} cells are too few for the interaction test (or the arrays "
                          "differ in length); finish more (class, layer) pairs")

    def designs(groups, rows):
        fixed = np.column_stack([np.ones(rows.size), _dummies(groups), _dummies(layer_ids[rows])])
        additive = np.column_stack([fixed, sel[rows], mag[rows]])
        return fixed, additive, np.column_stack([additive, sel[rows] * mag[rows]])

    everything = np.arange(y.size)
    n_classes = int(np.unique(class_ids).size)
    fits = [_fit(d, y) for d in designs(class_ids, everything)]
    (_, rss_f, _), (coef_a, rss_a, rank_a), (coef_i, rss_i, rank_i) = fits
    total = float(((y - y.mean()) ** 2).sum())
    df = (rank_i - rank_a, y.size - rank_i)
    if df[0] < 1 or df[1] < 1:
        f_stat = p_value = float("nan")
    elif rss_i <= 1e-12 * max(total, 1e-300):
        f_stat, p_value = float("inf"), 0.0
    else:
        f_stat = (rss_a - rss_i) / df[0] / (rss_i / df[1])
        p_value = float(stats.f.sf(f_stat, *df))
    boot = [_fit(designs(groups, rows)[2], y[rows])[0][-3:]
            for rows, groups in _class_bootstrap(class_ids, n_boot, seed)]
    r2 = (lambda rss: 1.0 - rss / total if total > 0 else float("nan"))
    return {"n_cells": int(y.size), "n_classes": n_classes,
            "n_layers": int(np.unique(layer_ids).size), "r2_fixed_effects": r2(rss_f),
            "r2_additive": r2(rss_a), "r2_interaction": r2(rss_i), "f": float(f_stat),
            "df": [int(v) for v in df], "p_value": p_value,
            "coef_additive": dict(zip(_COEFS[:2], (float(c) for c in coef_a[-2:]))),
            "coef_interaction": dict(zip(_COEFS, (float(c) for c in coef_i[-3:]))),
            "interval": {name: _interval(coef_i[j - 3], [b[j] for b in boot], n_classes)
                         for j, name in enumerate(_COEFS)},
            "n_boot": int(n_boot), "seed": int(seed)}


def interaction_test(res, *, n_boot: int = N_BOOT, seed: int = 0) -> dict:
    """`interaction_fit` on the finished cells of a results file (sel, mag z-scored within
    class and layer, as in `cell_table`).

    Example:
        test = interaction_test(HResults.open("out/h.h5"))
        test["r2_additive"], test["r2_interaction"], test["p_value"]
    """
    t = cell_table(res)
    return interaction_fit(t["deficit"], t["sel"], t["mag"], t["class"], t["layer"],
                           n_boot=n_boot, seed=seed)


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
        {"control", "ablation", "largest_deficit": {"cell": [i, j], "mean", "grid"},
        "highest_probe": {...},
        "regression": deficit_regression(res) (the earlier, effect-free fit),
        "interaction": interaction_test(res), "correlation": {metric: ...}}, plus
        "highest_probe_fold" and "probe_fold_chance_offset" when the fold probe is stored,
        "baseline" (`kerabl.hayne.baseline.results_baseline`, as a dict) when ranks are.
    """
    done = np.asarray(res.done, dtype=bool)
    shape = tuple(int(v) for v in res.grid_shape)
    out = {"control": getattr(res, "config", {}).get("control", "none"),
           "ablation": getattr(res, "config", {}).get("ablation", "zero"),
           "largest_deficit": _best_cell(np.asarray(res.deficit), done, shape),
           "highest_probe": _best_cell(np.asarray(res.probe), done, shape),
           "regression": deficit_regression(res), "interaction": interaction_test(res),
           "correlation": {m: probe_deficit_correlation(res, m)
                           for m in ("probe", "probe_heldout", "probe_fold")}}
    fold = getattr(res, "probe_fold", None)
    if fold is not None and np.isfinite(np.asarray(fold)[done]).any():
        out["highest_probe_fold"] = _best_cell(np.asarray(fold), done, shape)
        out["probe_fold_chance_offset"] = chance_offset(res)
    if hasattr(res, "image_rows") and hasattr(res, "others"):
        out["probe_majority_level"] = majority_probe_level(res)
    if hasattr(res, "rank_before"):
        from kerabl.hayne.baseline import results_baseline
        out["baseline"] = results_baseline(res).as_dict()
    return out


def chance_offset(res) -> float:
    """Largest |mean over classes - 0.5| of the fold-grid held-out probe over layers and cells
    (finished classes only): ~0 when nothing is decodable, e.g. under permuted labels.

    Example:
        chance_offset(HResults.open("control/h_results.h5"))   # < 0.05 expected
    """
    done = np.asarray(res.done, dtype=bool)
    fold = np.where(done[:, :, None], np.asarray(res.probe_fold), np.nan)
    with np.errstate(invalid="ignore"):
        return float(np.nanmax(np.abs(np.nanmean(fold, axis=0) - 0.5)))


def majority_probe_level(res) -> float:
    """The paper metric of a probe that calls every image "other", mean over finished classes:
    exp(-log_loss) (eps = 1e-15, as the probe score) of all-zero hard predictions with each
    class's target and other counts.
    The paper metric's chance level (it is a training-set score of hard labels).

    Example:
        majority_probe_level(res)    # 0.0316 on the demo (45 target, 405 other images)
    """
    counts = (np.asarray(res.image_rows) >= 0).sum(1)
    levels = []
    for ci in np.flatnonzero(np.asarray(res.done, dtype=bool).any(1)):
        others = [o for o in np.asarray(res.others)[ci] if o >= 0]
        y = np.r_[np.ones(counts[ci]), np.zeros(int(counts[others].sum()))]
        levels.append(np.exp(-hard_log_loss(y, np.zeros_like(y))))
    return float(np.mean(levels)) if levels else float("nan")


def network_statistics(paths) -> list[dict]:
    """`interaction_test` and the probe-deficit correlations of each results file (network).

    Example:
        for row in network_statistics(["alexnet/h_results.h5", "vgg16/h_results.h5"]):
            row["model"], row["interaction"]["p_value"]
    """
    rows = []
    for path in paths:
        res = HResults.open(path)
        rows.append({"path": str(path), "model": res.config.get("model", "?"),
                     "control": res.config.get("control", "none"),
                     "interaction": interaction_test(res),
                     "correlation": {m: probe_deficit_correlation(res, m)
                                     for m in ("probe", "probe_fold")}})
    return rows
