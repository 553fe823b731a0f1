"""Many L2 logistic regressions solved to their exact optima.

- `fit_logistic_batched(Xb, y)`: a stack of design matrices (fits, rows, d + 1), the intercept
  column last; optional row weights per fit (a test fold left out).
- `fit_logistic_columns(X, column_sets, y)`: the fits of the paper probe: each fit takes a set
  of columns of one matrix X (rows, units) plus an intercept.
- `solve_logistic(...)`: either of them with the solver's record (`LogisticFit`: weights, margins,
  Newton steps, Hessians formed, floating-point operations).

The objective of every fit: C * sum(s * log loss) + 0.5 * sum(reg * w^2), C = 1, reg = 1 on the
weights and 0 (lbfgs) or 1 (liblinear) on the intercept. The solver is a damped Newton method,
compiled (`kerabl.hayne.newton`, which says how a step is made): float64 sums for gradients and
margins (from a float32 design when the values are float32), float32 Hessians as the steps'
metric, a factor reused while the gradient falls fast, a line search on the convex objective
along the step. A fit stops when every gradient entry is below
1e-11 * (1 + C * sum(s)). With the intercept penalised (liblinear) the objective is 1-strongly
convex, so the weights are within ||gradient||_2 of the optimum (below 1e-8 for the probes'
sizes); `signs_only` stops a fit as soon as that bound fixes the sign of every row's margin (the
hard predictions are then the optimum's, proven, in fewer steps).

Fits on columns of one matrix gather their own (d, rows) design once, and their first step's
Hessian (every curvature 1/4) is a principal submatrix of one Gram matrix of [X 1] when that
product costs less than the fits' own.

Its speed, measured version by version, is on the documentation's Performance page (Probes).

BLAS runs on one thread here: the study runs one cell per core.
"""

from __future__ import annotations

import contextlib

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from kerabl.errors import KerablError
from kerabl.hayne import newton

_C = 1.0                # LogisticRegression's default inverse regularisation strength
_GRAD_TOL = 1e-11       # stop when every gradient entry is below this times (1 + C * sum(s))


@dataclass
class LogisticFit:
    """What `solve_logistic` found and what it cost.

    Example:
        fit = solve_logistic(columns=(X, sets), y=y)
        fit.weights.shape, fit.steps, fit.hessians, fit.flops / 1e9   # GFLOP
    """

    weights: np.ndarray     # (fits, d + 1), the intercept last
    margins: np.ndarray     # (fits, rows): each fit's margins at its weights
    steps: int              # Newton steps taken by the slowest fit
    hessians: int           # Hessians formed, over all fits
    flops: float            # floating-point operations of the products and factorisations
                            # (the first steps' shared Gram matrix included)


def one_blas_thread():
    """Context that runs BLAS on one thread: the many small products here are faster that way,
    and threads thrash when the machine is shared.

    Example:
        with one_blas_thread():
            w = fit_logistic_batched(Xb, y)
    """
    return _blas_controller().limit(limits=1, user_api="blas")


def single_threaded():
    """Context that runs BLAS and OpenMP on one thread: a sweep runs one cell per core instead
    (`kerabl.hayne.pools` workers); threads of one small problem mostly wait on each other.
    Inside a block that already holds BLAS at one thread (the probes' thread pool) it changes
    nothing, so the pool's threads never set the process's thread counts under each other.

    Example:
        with single_threaded():
            score = paper_probe_score(acts, labels)
    """
    controller = _blas_controller()
    if all(lib.num_threads == 1 for lib in controller.lib_controllers if lib.user_api == "blas"):
        return contextlib.nullcontext()
    return controller.limit(limits=1)


@lru_cache(maxsize=1)
def _blas_controller():
    """The process's thread-pool controller: finding the BLAS libraries costs ~10 ms, so once.

    A controller limits only the libraries loaded when it is made, so SciPy's BLAS (a library of
    its own, which the compiled solver calls) is loaded first: a worker whose first task entered
    `single_threaded()` before importing the probes used to run every probe product on two
    threads per worker, two workers on two cores (the demo's probes took 100 s instead of 74)."""
    import scipy.linalg  # noqa: F401 -- loads SciPy's OpenBLAS
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()  # after Numba and what it links (kerabl.hayne.newton, above)


def solve_logistic(y: np.ndarray, *, stacked: np.ndarray | None = None,
                   columns: tuple[np.ndarray, np.ndarray] | None = None,
                   sample_weight: np.ndarray | None = None,
                   penalise_intercept: bool = False,
                   signs_only: bool = False, plain_newton: bool = False) -> LogisticFit:
    """The optima of a batch of L2 logistic regressions (C = 1) and the solver's record.

    Example:
        fit = solve_logistic(y, columns=(X, np.array([[0, 3, 5], [1, 2, 4]])))
        fit.weights        # (2, 4): three unit weights and the intercept per fit
        fit = solve_logistic(y, stacked=Xb, sample_weight=train_rows, penalise_intercept=True)

    Args:
        y: (rows,) 0/1 labels shared by every fit.
        stacked: (fits, rows, d + 1) design matrices whose last column is the intercept column.
        columns: `(X, column_sets)`: X (rows, units) and (fits, k) column indices per fit; each
            fit's design is X[:, set] plus an intercept column.
        sample_weight: (fits, rows) row weights (0 leaves a row out); default all ones.
        penalise_intercept: penalise the intercept like a weight (liblinear's objective).
        signs_only: with `penalise_intercept` (a 1-strongly convex objective, so the optimum
            lies within ||gradient||_2 of the weights), stop a fit as soon as that bound fixes
            the sign of every row's margin: the weights are then not the optimum, but every
            hard prediction on the rows is the optimum's, proven. Fits whose margins never
            separate from 0 that way run to the gradient tolerance.
        plain_newton: the textbook method instead (fits on `columns` only): every step forms
            its fit's Hessian from its own product and factors it, no factor kept, no first
            Hessian shared; the same line search, stop and optima. `kerabl bench` counts its
            work on the bench's fits as the reference for the solver's time.
    """
    if (stacked is None) == (columns is None):
        raise ValueError("pass exactly one of stacked= and columns=")
    if plain_newton and columns is None:
        raise ValueError("plain_newton solves fits on columns= only")
    if signs_only and not penalise_intercept:
        raise ValueError("signs_only needs penalise_intercept (a strongly convex objective)")
    y = np.asarray(y, dtype=np.float64).ravel()
    if columns is not None:
        X = _design_values(columns[0])
        sets = np.ascontiguousarray(columns[1], dtype=np.int64)
        if sample_weight is not None:     # the Gram matrix's first step needs equal weights
            stacked = _gathered(X, sets)
        n_fits, d = len(sets), sets.shape[1] + 1
    else:
        stacked = np.asarray(stacked, dtype=np.float64)
        n_fits, d = stacked.shape[0], stacked.shape[2]
    n = y.size
    s = np.ones((n_fits, n)) if sample_weight is None else np.ascontiguousarray(np.broadcast_to(
        np.asarray(sample_weight, dtype=np.float64), (n_fits, n)))
    _check_finite(X if stacked is None else stacked)
    reg = np.ones(d)
    reg[-1] = 1.0 if penalise_intercept else 0.0
    tol = _GRAD_TOL * (1 + _C * s.sum(1))
    W, Z = np.zeros((n_fits, d)), np.zeros((n_fits, n))
    record = np.zeros(3, dtype=np.int64)
    with one_blas_thread():
        if stacked is None:
            gram = np.empty((0, 0), np.float32) if plain_newton else _first_gram(X, sets)
            flops = 2.0 * n * gram.shape[0] ** 2 + newton.solve_columns(
                np.ascontiguousarray(X.T), sets, gram, y, reg, tol, signs_only,
                not plain_newton, W, Z, record)
        else:
            TT = np.ascontiguousarray(stacked.transpose(0, 2, 1))
            flops = newton.solve_stacked(TT, s, y, reg, tol, signs_only, W, Z, record)
    if record[newton.FAILED]:
        raise KerablError("a probe's Hessian has no Cholesky factor even with a ridge; check "
                          "the model's outputs on these images")
    return LogisticFit(weights=W, margins=Z, steps=int(record[newton.STEPS]),
                       hessians=int(record[newton.HESSIANS]), flops=float(flops))


def _design_values(X) -> np.ndarray:
    """X as float32 when that loses nothing (a network's activations are float32: the fits then
    read half the memory, with the same float64 sums), else as float64."""
    X = np.asarray(X)
    if X.dtype == np.float32:
        return X
    X64 = np.asarray(X, dtype=np.float64)
    X32 = X64.astype(np.float32)
    return X32 if np.array_equal(X32, X64) else X64


def _check_finite(values: np.ndarray) -> None:
    if not np.isfinite(values).all():
        raise KerablError("the probe's activations hold inf or NaN; check the model's outputs "
                          "on these images")


def _gathered(X: np.ndarray, sets: np.ndarray) -> np.ndarray:
    """(fits, rows, k + 1) float64 designs X[:, set] plus an intercept column."""
    stacked = np.ones((len(sets), X.shape[0], sets.shape[1] + 1))
    for f, cols in enumerate(sets):
        stacked[f, :, :-1] = X[:, cols]
    return stacked


def _first_gram(X: np.ndarray, sets: np.ndarray) -> np.ndarray:
    """0.25 [X 1]^T [X 1] in float32: every fit's first Hessian (all curvatures 1/4) is one of
    its principal submatrices; an empty (0, 0) array where that product costs more than the
    fits' own (rows x d^2 each)."""
    width = X.shape[1] + 1
    if width ** 2 > 2 * len(sets) * (sets.shape[1] + 1) ** 2:
        return np.empty((0, 0), dtype=np.float32)
    Xb = np.empty((X.shape[0], width), dtype=np.float32)
    Xb[:, :-1], Xb[:, -1] = X, 1.0
    gram = Xb.T @ Xb
    gram *= np.float32(0.25)
    return gram


def fit_logistic_batched(Xb: np.ndarray, y: np.ndarray,
                         sample_weight: np.ndarray | None = None,
                         penalise_intercept: bool = False) -> np.ndarray:
    """Optimal weights of L2 logistic regressions (C = 1) on a stack of design matrices.

    Example:
        Xb = np.concatenate([X_stack, np.ones((*X_stack.shape[:2], 1))], axis=2)
        w = fit_logistic_batched(Xb, y)      # (fits, d + 1); w[:, -1] is the intercept

    Minimises C * sum(sample_weight * log loss) + 0.5 * ||w[:-1]||^2 (+ 0.5 * w[-1]^2 with
    `penalise_intercept`, liblinear's objective) for every fit (`solve_logistic`).

    Args:
        Xb: (fits, rows, d + 1) design matrices whose last column is the intercept column.
        y: (rows,) 0/1 labels shared by every fit.
        sample_weight: (fits, rows) row weights (0 leaves a row out, e.g. a test fold);
            default all ones.
        penalise_intercept: penalise the last column's weight too (liblinear's objective).

    Returns:
        (fits, d + 1) float64 weights.
    """
    return solve_logistic(y, stacked=Xb, sample_weight=sample_weight,
                          penalise_intercept=penalise_intercept).weights


def fit_logistic_columns(X: np.ndarray, column_sets: np.ndarray, y: np.ndarray,
                         penalise_intercept: bool = False, signs_only: bool = False) -> np.ndarray:
    """Optimal weights of L2 logistic regressions (C = 1), one per set of columns of X.

    Example:
        w = fit_logistic_columns(acts, np.array([[0, 4, 9], [2, 3, 7]]), y)   # (2, 4)
        margins = acts[:, [0, 4, 9]] @ w[0, :-1] + w[0, -1]

    Args:
        X: (rows, units) values.
        column_sets: (fits, k) column indices per fit.
        y: (rows,) 0/1 labels.
        penalise_intercept: liblinear's objective (the intercept penalised like a weight).
        signs_only: stop each fit once the sign of every row's margin is the optimum's,
            proven (`solve_logistic`); needs `penalise_intercept`.

    Returns:
        (fits, k + 1) float64 weights, the intercept last.
    """
    return solve_logistic(y, columns=(X, column_sets), penalise_intercept=penalise_intercept,
                          signs_only=signs_only).weights


def column_margins(X: np.ndarray, column_sets: np.ndarray, w: np.ndarray) -> np.ndarray:
    """(fits, rows) margins X[:, set] @ w[:-1] + w[-1] of each fit of `fit_logistic_columns`.

    Example:
        predictions = column_margins(acts, sets, fit_logistic_columns(acts, sets, y)) > 0
    """
    X = np.asarray(X, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    with one_blas_thread():
        return np.stack([X[:, cols] @ wf[:-1] + wf[-1] for cols, wf in zip(column_sets, w)])
