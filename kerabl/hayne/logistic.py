"""Many L2 logistic regressions solved together to their exact optima.

- `fit_logistic_batched(Xb, y)`: a stack of design matrices (fits, rows, d + 1), the intercept
  column last; optional row weights per fit (a test fold left out).
- `fit_logistic_columns(X, column_sets, y)`: the fits of the paper probe: each fit takes a set
  of columns of one matrix X (rows, units) plus an intercept.
- `solve_logistic(...)`: either of them with the solver's record (`LogisticFit`: weights, Newton
  steps, Hessians formed, floating-point operations).

The objective of every fit: C * sum(s * log loss) + 0.5 * sum(reg * w^2), C = 1, reg = 1 on the
weights and 0 (lbfgs) or 1 (liblinear) on the intercept. The solver is a damped Newton method
run on all fits at once:

- the gradient, margins and objective in float64 on every step; a fit stops when every gradient
  entry is below 1e-11 * (1 + C * sum(s)). With the intercept penalised (liblinear) the objective
  is 1-strongly convex, so the weights are within ||gradient||_2 of the optimum (below 1e-8 for
  the probes' sizes); `signs_only` stops a fit as soon as that bound fixes the sign of every
  row's margin (the hard predictions are then the optimum's, proven; about 5 steps instead of 7);
- the Hessians X^T diag(p (1 - p)) X + diag(reg): the upper triangle as a float32 rank-k update
  per fit (BLAS syrk: half the flops of a general product, rows x d^2 per fit), on a scaled copy
  gathered from one float32 copy of X^T; on the first step, where every curvature is 1/4, the
  paper probe's Hessians are principal submatrices of one Gram matrix of [X 1] (one product for
  all fits). Each is formed and Cholesky-factored in place in float32 (LAPACK potrf, about
  half the time of a float64 posv, and no conversion copy; the float32 product had already set
  the step's precision). The Hessian is only the metric of the step: its rounding changes the
  path, not the optimum, which the float64 gradient fixes;
- a fit keeps its factor for the next step while each step shrinks its gradient by 4 or more
  (a Shamanskii-style reuse); otherwise the Hessian is formed again;
- the step length: three 1-D Newton iterations on the objective along the direction (early
  steps often want t = 2-3), kept where the slope there shows the objective fell (it is convex
  along the line), else Armijo backtracking; the sigmoid at the new margins is kept for the
  next gradient;
- the paper probe's fits share one matrix X: their margins and gradients are two products with
  X itself, (rows, units) x (units, fits), instead of one matrix-vector product per fit;
- fits that have converged leave the batch (the stack is compacted when it has shrunk by a
  quarter).

Measured side by side on synthetic demo-shaped cells (450 rows, 200 fits of 100 of 128-1024
units, one core): 0.34-0.42 s per cell against 0.44-0.51 s for the solver before this one
(Hessians as general float32 products two fits at a time, the objective evaluated on every line
search), and 0.9-1.05 s for the one before that (one fit at a time); the same hard predictions on
every row of every fit.

BLAS runs on one thread here: the study runs one cell per core.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy.linalg import blas, lapack
from scipy.special import expit

from kerabl.errors import KerablError

_C = 1.0                # LogisticRegression's default inverse regularisation strength
_NEWTON_STEPS = 100
_GRAD_TOL = 1e-11       # stop when every gradient entry is below this times (1 + C * sum(s))
_KEEP_FACTOR = 0.25     # reuse a Hessian while each step shrinks the gradient at least this much
_SHARED_WIDTH = 16      # products with the whole matrix X up to this many times a fit's columns
_COMPACT = 0.75         # compact the stack when this share of its fits is still active
_LINE_ITERATIONS = 3    # 1-D Newton iterations of the line search, at most
_LINE_SLOPE = 1e-3      # a fit's line search stops where phi' is in [-this * |phi'(0)|, 0]


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
    (`kerabl.hayne.study` worker processes); threads of one small problem mostly wait on each other.

    Example:
        with single_threaded():
            score = paper_probe_score(acts, labels)
    """
    return _blas_controller().limit(limits=1)


@lru_cache(maxsize=1)
def _blas_controller():
    """The process's thread-pool controller: finding the BLAS libraries costs ~10 ms, so once."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


class _Stacked:
    """One design matrix per fit, held transposed: T (fits, d, rows), the intercept row last."""

    def __init__(self, T: np.ndarray):
        self.T = np.ascontiguousarray(T, dtype=np.float64)
        self.n_fits, self.d, self.n_rows = self.T.shape
        self._T32 = None

    @property
    def T32(self) -> np.ndarray:
        """The designs in float32, for the Hessian products (made on first use)."""
        if self._T32 is None:
            self._T32 = self.T.astype(np.float32)
        return self._T32

    def keep(self, idx: np.ndarray) -> None:
        self.T = self.T[idx]
        self._T32 = None if self._T32 is None else self._T32[idx]

    def scaled(self, fit: int, root: np.ndarray, out: np.ndarray) -> np.ndarray:
        """(d, rows) float32: fit `fit`'s design times `root` per row, into `out`."""
        return np.multiply(self.T32[fit], root, out=out)

    def constant_hessians(self, fits: np.ndarray, value: float, factors: np.ndarray) -> None:
        """The fits' designs share no matrix: their Hessians are formed one by one."""
        return None

    def margins(self, V: np.ndarray) -> np.ndarray:
        return np.matmul(V[:, None, :], self.T)[:, 0]

    def gradients(self, R: np.ndarray) -> np.ndarray:
        return np.matmul(self.T, R[:, :, None])[:, :, 0]

    def row_norms(self) -> np.ndarray:
        return np.sqrt(np.einsum("fdn,fdn->fn", self.T, self.T))

    def product_flops(self, n_fits: int) -> float:
        return 2.0 * n_fits * self.n_rows * self.d


class _Columns:
    """Fits on column sets of one matrix X (rows, units), each with an intercept column: the
    margins and gradients of all fits are one product with X each."""

    def __init__(self, X: np.ndarray, column_sets: np.ndarray):
        self.X = np.ascontiguousarray(X, dtype=np.float64)
        self.sets = np.asarray(column_sets, dtype=np.int64)
        self.n_rows, self.n_units = self.X.shape
        self.n_fits, k = self.sets.shape
        self.d = k + 1
        self._XT32 = None

    def scaled(self, fit: int, root: np.ndarray, out: np.ndarray) -> np.ndarray:
        """(d, rows) float32: fit `fit`'s columns of X and the intercept, transposed, times
        `root` per row, into `out` (gathered from one float32 copy of X^T)."""
        if self._XT32 is None:
            self._XT32 = np.ascontiguousarray(self.X.T, dtype=np.float32)
        np.take(self._XT32, self.sets[fit], axis=0, out=out[:-1])
        out[:-1] *= root
        out[-1] = root
        return out

    def keep(self, idx: np.ndarray) -> None:
        self.sets = self.sets[idx]

    def constant_hessians(self, fits: np.ndarray, value: float,
                          factors: np.ndarray) -> float | None:
        """value * [X_S 1]^T [X_S 1] of the given fits into factors[fits] (float32), and its
        flops: principal submatrices of one Gram matrix of [X 1], one product for all fits
        (the first Newton step, where every curvature is 1/4); None where that product costs
        more than the fits' own."""
        width = self.n_units + 1
        if width ** 2 > 2 * len(fits) * self.d ** 2:
            return None
        Xb = np.empty((self.n_rows, width), dtype=np.float32)
        Xb[:, :-1], Xb[:, -1] = self.X, 1.0
        gram = Xb.T @ Xb
        gram *= np.float32(value)
        idx = np.concatenate([self.sets[fits], np.full((len(fits), 1), self.n_units)], axis=1)
        factors[fits] = np.take(gram.ravel(), idx[:, :, None] * width + idx[:, None, :])
        return float(self.n_rows * width ** 2)

    def _spread(self, V: np.ndarray) -> np.ndarray:
        W = np.zeros((self.n_units, len(V)))
        W[self.sets, np.arange(len(V))[:, None]] = V
        return W

    def margins(self, V: np.ndarray) -> np.ndarray:
        return (self.X @ self._spread(V[:, :-1])).T + V[:, -1:]

    def gradients(self, R: np.ndarray) -> np.ndarray:
        G = self.X.T @ R.T
        return np.concatenate([G[self.sets, np.arange(len(R))[:, None]],
                               R.sum(1, keepdims=True)], axis=1)

    def row_norms(self) -> np.ndarray:
        return np.sqrt((self.X ** 2 @ self._spread(np.ones(self.sets.shape))).T + 1.0)

    def product_flops(self, n_fits: int) -> float:
        return 2.0 * n_fits * self.n_rows * self.n_units


def _column_design(X: np.ndarray, column_sets: np.ndarray):
    """`_Columns` while X has at most `_SHARED_WIDTH` times as many columns as a fit (a product
    with all of X then costs less than one matrix-vector product per fit, which reads memory),
    else the fits' own design matrices (`_Stacked`)."""
    sets = np.asarray(column_sets, dtype=np.int64)
    if X.shape[1] <= _SHARED_WIDTH * (sets.shape[1] + 1):
        return _Columns(X, sets)
    T = np.empty((len(sets), sets.shape[1] + 1, X.shape[0]))
    T[:, :-1] = np.ascontiguousarray(np.asarray(X, dtype=np.float64).T)[sets]
    T[:, -1] = 1.0
    return _Stacked(T)


def solve_logistic(y: np.ndarray, *, stacked: np.ndarray | None = None,
                   columns: tuple[np.ndarray, np.ndarray] | None = None,
                   sample_weight: np.ndarray | None = None,
                   penalise_intercept: bool = False,
                   signs_only: bool = False) -> LogisticFit:
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
    """
    if (stacked is None) == (columns is None):
        raise ValueError("pass exactly one of stacked= and columns=")
    if signs_only and not penalise_intercept:
        raise ValueError("signs_only needs penalise_intercept (a strongly convex objective)")
    design = (_Stacked(np.asarray(stacked, dtype=np.float64).transpose(0, 2, 1))
              if stacked is not None else _column_design(*columns))
    y = np.asarray(y, dtype=np.float64).ravel()
    n_fits, n, d = design.n_fits, design.n_rows, design.d
    s = np.ones((n_fits, n)) if sample_weight is None else np.array(np.broadcast_to(
        np.asarray(sample_weight, dtype=np.float64), (n_fits, n)))
    reg = np.ones(d)
    reg[-1] = 1.0 if penalise_intercept else 0.0
    tol = _GRAD_TOL * (1 + _C * s.sum(1))
    with one_blas_thread():
        norms = design.row_norms() if signs_only else None
        return _newton(design, y, s, reg, tol, norms)


def _newton(design, y: np.ndarray, s: np.ndarray, reg: np.ndarray, tol: np.ndarray,
            row_norms: np.ndarray | None) -> LogisticFit:
    n_fits, n, d = design.n_fits, design.n_rows, design.d
    w_out, z_out = np.zeros((n_fits, d)), np.zeros((n_fits, n))
    ids = np.arange(n_fits)                       # the original index of each row of the batch
    w, z = np.zeros((n_fits, d)), np.zeros((n_fits, n))
    p = np.full((n_fits, n), 0.5)
    factor = np.zeros((n_fits, d, d), dtype=np.float32)
    keep = np.zeros(n_fits, dtype=bool)           # reuse the factor on this step
    last_norm = np.full(n_fits, np.inf)
    certify = row_norms is not None
    row_norms = np.zeros((n_fits, n)) if row_norms is None else row_norms
    hessians, flops, steps = 0, 0.0, 0
    for steps in range(1, _NEWTON_STEPS + 1):
        grad = design.gradients(_C * s * (p - y)) + reg * w
        flops += design.product_flops(len(ids))
        norm = np.abs(grad).max(1)
        going = norm > tol
        if certify:
            bound = np.linalg.norm(grad, axis=1)[:, None] + 1e-9
            going &= ~(np.abs(z) > row_norms * bound + 1e-9).all(1)
        if not going.all():
            w_out[ids[~going]], z_out[ids[~going]] = w[~going], z[~going]
            if not going.any():
                break
            if going.mean() < _COMPACT:
                ids, w, z, s, p, grad, norm, factor, keep, last_norm, tol, row_norms = (
                    a[going] for a in (ids, w, z, s, p, grad, norm, factor, keep, last_norm,
                                       tol, row_norms))
                design.keep(going)
                going = np.ones(len(ids), dtype=bool)
        keep &= norm <= _KEEP_FACTOR * last_norm
        step = np.zeros_like(grad)
        fresh = np.flatnonzero(going & ~keep)
        if fresh.size:
            curvature = _C * s[fresh] * p[fresh] * (1.0 - p[fresh])
            step[fresh], work = _factor_solve(design, fresh, curvature, reg, grad[fresh], factor)
            hessians += fresh.size
            flops += work
        reused = np.flatnonzero(going & keep)
        for f, g in zip(reused, grad[reused].astype(np.float32)):
            step[f] = lapack.spotrs(factor[f].T, g, lower=0)[0]
        dz = design.margins(step)
        flops += design.product_flops(len(ids)) + 2.0 * len(ids) * d * d
        t, p_new = _line_search(z, dz, w, step, grad, y, s, reg)
        w -= t[:, None] * step
        z -= t[:, None] * dz
        p = p_new
        keep = np.ones(len(ids), dtype=bool)   # try the factor again if the gradient falls
        last_norm = norm
    else:
        w_out[ids], z_out[ids] = w, z
    return LogisticFit(weights=w_out, margins=z_out, steps=steps, hessians=hessians, flops=flops)


def _factor_solve(design, fits: np.ndarray, curvature: np.ndarray, reg: np.ndarray,
                  grad: np.ndarray, factors: np.ndarray) -> tuple[np.ndarray, float]:
    """Newton steps H^-1 grad for H = T diag(curvature) T^T + diag(reg) of the given fits
    (T = the fit's (d, rows) design in float32): the upper triangle as one float32 rank-k
    update per fit (BLAS syrk) or, where every curvature is one value (the first step) and the
    design has one, principal submatrices of one Gram matrix. Each fit's matrix is formed and
    Cholesky-factored in place in float32 in factors[f].T (Fortran order, what BLAS and LAPACK
    take without a copy). A matrix that rounding left not positive definite (every curvature
    underflowed, or a condition number near 1 / float32 eps) is formed again with a ridge of
    1e-6 of its largest diagonal entry (times 10 until it factors), which changes the step, not
    the optimum. Returns the steps (float64) and the floating-point operations spent."""
    d = design.d
    if factors.dtype != np.float32 or not factors.flags.c_contiguous:
        raise ValueError("factors must be a C-contiguous float32 array (fits, d, d)")
    flops = len(fits) * d ** 3 / 3.0
    shared = (design.constant_hessians(fits, float(curvature.flat[0]), factors)
              if np.all(curvature == curvature.flat[0]) else None)
    flops += len(fits) * design.n_rows * d * d if shared is None else shared
    root = np.sqrt(curvature).astype(np.float32)
    buffer = np.empty((d, design.n_rows), dtype=np.float32)
    steps = np.empty_like(grad)
    grad32 = grad.astype(np.float32)

    def form(j: int, a: np.ndarray) -> None:
        """Fit fits[j]'s T diag(curvature) T^T, upper triangle, into `a` (float32 syrk)."""
        blas.ssyrk(1.0, design.scaled(fits[j], root[j], buffer).T, trans=1, c=a, overwrite_c=1)

    for j, f in enumerate(fits):
        a = factors[f].T
        if shared is None:
            form(j, a)
        a.flat[::d + 1] += reg
        ridge = 0.0
        while lapack.spotrf(a, lower=0, overwrite_a=1, clean=0)[1] != 0:
            if ridge > 1e30:
                raise KerablError("a probe's Hessian has no Cholesky factor even with a ridge: "
                                  "the cell's activations hold inf or NaN; check the model's "
                                  "outputs on these images")
            # the failed factorisation overwrote the matrix: form it again, with a ridge
            form(j, a)
            a.flat[::d + 1] += reg
            ridge = 10 * ridge if ridge else 1e-6 * max(float(np.diagonal(a).max()), 1e-30)
            a.flat[::d + 1] += ridge
        steps[j] = lapack.spotrs(a, grad32[j], lower=0)[0]
    return steps, flops


def _objective(z: np.ndarray, w: np.ndarray, y: np.ndarray, s: np.ndarray,
               reg: np.ndarray) -> np.ndarray:
    """C * sum(s * log loss) + 0.5 * sum(reg * w^2) per fit, from the margins z = Xb w."""
    return _C * (s * (np.logaddexp(0.0, z) - y * z)).sum(1) + 0.5 * (reg * w ** 2).sum(1)


def _line_search(z: np.ndarray, dz: np.ndarray, w: np.ndarray, step: np.ndarray,
                 grad: np.ndarray, y: np.ndarray, s: np.ndarray,
                 reg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Step lengths t per fit along the Newton direction -step, and p = sigmoid of the margins
    there. The objective along the line, phi(t), is convex: up to three 1-D Newton iterations on
    it from t = 1 (far from the optimum the best t is often 2-3: the curvature falls as the
    margins grow), t in [1/64, 16]; a fit stops iterating once phi'(t) is in
    [-1e-3 |phi'(0)|, 0] (near the optimum t = 1 already is: one evaluation). A t with
    phi'(t) <= 0 lies before the minimum along the line, so phi decreased (or |phi'(t)| is
    below 1e-6 of |phi'(0)|: t is the minimum up to rounding). Other
    fits fall back to Armijo backtracking from t = 1 (1, 1/2, 1/4, ...) on the objective, where
    a change below rounding (1e-13 of the objective) counts as a decrease."""
    a, b = (reg * step * step).sum(1), (reg * w * step).sum(1)
    slope0 = -(grad * step).sum(1)
    t = np.ones(len(w))
    p, slope = np.empty_like(z), np.empty(len(w))
    live = np.arange(len(w))             # fits still iterating
    for it in range(_LINE_ITERATIONS + 1):
        every = live.size == len(w)
        zl, dzl, sl = (z, dz, s) if every else (z[live], dz[live], s[live])
        pl = expit(zl - t[live, None] * dzl)
        sl_dz = sl * dzl
        slope_l = -_C * ((pl - y) * sl_dz).sum(1) + t[live] * a[live] - b[live]
        p[live], slope[live] = pl, slope_l
        if it == _LINE_ITERATIONS:
            break
        # before the line's minimum and within _LINE_SLOPE of phi'(0) of it: nothing to gain
        going = ~((slope_l <= 0) & (slope_l >= -_LINE_SLOPE * np.abs(slope0[live])))
        if not going.any():
            break
        curve = _C * (pl[going] * (1.0 - pl[going]) * sl_dz[going] * dzl[going]).sum(1) \
            + a[live[going]]
        live = live[going]
        t[live] = np.clip(t[live] - slope_l[going] / np.maximum(curve, 1e-300), 1.0 / 64, 16.0)
    bad = np.flatnonzero((slope > 0) & (np.abs(slope) > 1e-6 * np.abs(slope0)))
    if bad.size:
        zb, dzb, wb, stepb, sb = z[bad], dz[bad], w[bad], step[bad], s[bad]
        f0 = _objective(zb, wb, y, sb, reg)
        slack = -1e-4 * slope0[bad] - 1e-13 * np.abs(f0)
        tb = np.ones(bad.size)
        fail = np.ones(bad.size, dtype=bool)
        for _ in range(30):
            idx = np.flatnonzero(fail)
            if not idx.size:
                break
            tt = tb[idx, None]
            f = _objective(zb[idx] - tt * dzb[idx], wb[idx] - tt * stepb[idx], y, sb[idx], reg)
            fail[idx] = f > f0[idx] - tb[idx] * slack[idx]
            tb[fail] *= 0.5
        t[bad] = tb
        p[bad] = expit(zb - tb[:, None] * dzb)
    return t, p


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
    with one_blas_thread():
        return _column_design(X, column_sets).margins(np.asarray(w, dtype=np.float64))
