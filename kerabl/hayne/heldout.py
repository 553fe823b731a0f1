"""The held-out probe that cannot leak: the grid is rebuilt inside every training fold.

- `fold_probe_scores(acts, n_target)`: (cells, folds) balanced accuracy on each fold's held-out
  images, with coordinates, grid and probe all from that fold's training images only.
- `fold_probe_summary(acts, n_target)`: the mean over folds and its spread (standard deviation).

Why: a cell's units are chosen from class means over images. Scoring a probe on images that took
part in choosing them (cross-validation after the grid is built on all images) finds "signal" in
the extreme cells on pure noise. Here the held-out images of a fold never touch the class means,
the cell boundaries, the standardisation or the probe's weights.

Per fold: stratified split of target and other images (shuffled, seeded); target and other means
over the training images -> `coordinates` -> `equal_count_grid`; per cell, min(n_units, max_units)
of its units (seeded draw), standardised with the training rows' mean and standard deviation,
one L2 logistic regression (C = 1) fitted on the training rows by `fit_logistic_batched`, hard
predictions on the held-out rows, balanced accuracy. Cells of equal width share one batched fit.

No TensorFlow here.
"""

from __future__ import annotations

import numpy as np

from kerabl.errors import KerablError
from kerabl.hayne.grid import coordinates, equal_count_grid
from kerabl.hayne.logistic import fit_logistic_batched
from kerabl.hayne.probes import balanced_accuracy, standardised, stratified_folds


def _train_means(acts, y: np.ndarray, test: np.ndarray,
                 sums: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Target and other means over the training rows: the full sums less the held-out rows'."""
    held = acts[test]
    means = []
    for label, total in zip((1, 0), sums):
        rows = y[test] == label
        means.append((total - held[rows].sum(0, dtype=np.float64))
                     / ((y == label).sum() - rows.sum()))
    return means[0], means[1]


def _cell_columns(cells: list[np.ndarray], max_units: int, rng) -> list[np.ndarray]:
    return [np.sort(rng.choice(c, size=min(c.size, max_units), replace=False)) if c.size else c
            for c in cells]


def fold_probe_scores(acts, n_target: int, *, grid_shape: tuple[int, int] = (4, 4),
                      legacy_bounds: bool = False, folds: int = 5, max_units: int = 100,
                      seed: int = 0) -> np.ndarray:
    """Held-out balanced accuracy of every cell in every fold, the grid rebuilt per fold.

    Example:
        acts = cache.read("conv_3", rows=np.r_[target_rows, other_rows])
        scores = fold_probe_scores(acts, len(target_rows))    # (16, 5); ~0.5 on noise

    Args:
        acts: (images, units) activations, the target class's images first.
        n_target: number of target images (the first rows).
        grid_shape: (n strips, m magnitude cells) of `equal_count_grid`.
        legacy_bounds: the authors' inclusive bounds (a cell may be empty: NaN).
        folds: number of folds (at most the smaller class's image count).
        max_units: most units per cell's probe.
        seed: seed of the fold split and of the unit draws.

    Returns:
        (n * m, folds) float64; NaN for a cell that is empty in a fold.
    """
    if acts.ndim != 2 or not 0 < n_target < acts.shape[0]:
        raise KerablError(f"activations of shape {acts.shape} with {n_target} target images: pass "
                          "(images, units) with target and other images")
    y = np.r_[np.ones(n_target, np.int64), np.zeros(acts.shape[0] - n_target, np.int64)]
    splits = [test for _, test in stratified_folds(y, folds, seed).split(np.zeros(y.size), y)]
    sums = (acts[:n_target].sum(0, dtype=np.float64), acts[n_target:].sum(0, dtype=np.float64))
    n_cells = int(grid_shape[0]) * int(grid_shape[1])
    scores = np.full((n_cells, len(splits)), np.nan)
    for f, test in enumerate(splits):
        train = np.setdiff1d(np.arange(y.size), test)
        sel, mag = coordinates(*_train_means(acts, y, test, sums))
        grid = equal_count_grid(sel, mag, tuple(grid_shape), legacy_bounds=legacy_bounds)
        columns = _cell_columns(grid.cells, max_units, np.random.default_rng([seed, f]))
        for width in sorted({c.size for c in columns if c.size}):
            ks = [k for k, c in enumerate(columns) if c.size == width]
            Xb = np.stack([standardised(np.asarray(acts[:, columns[k]], np.float64), train)
                           for k in ks])
            w = fit_logistic_batched(Xb[:, train], y[train])
            for j, k in enumerate(ks):
                scores[k, f] = balanced_accuracy(y[test], (Xb[j, test] @ w[j]) > 0)
    return scores


def fold_probe_summary(acts, n_target: int, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    """Mean over folds and standard deviation over folds (ddof 1) of `fold_probe_scores`.

    Example:
        mean, sd = fold_probe_summary(acts, n_target, grid_shape=(4, 4), seed=3)
    """
    scores = fold_probe_scores(acts, n_target, **kwargs)
    ok = np.isfinite(scores).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(ok > 0, np.nansum(scores, 1) / np.maximum(ok, 1), np.nan)
        sd = np.where(ok > 1, np.sqrt(np.nansum((scores - mean[:, None]) ** 2, 1)
                                      / np.maximum(ok - 1, 1)), np.nan)
    return mean, sd
