"""The compiled kernel of the probes' logistic fits: a damped Newton method, one fit at a time.

`kerabl.hayne.logistic.solve_logistic` is the interface; this module is its inner loop, compiled
with Numba (cached on disk after the first run), so that a fit costs what its products cost and
not what a Python loop over 200 fits costs. Each fit, alone in the cache:

- the gradient X^T (C s (p - y)) + reg w and the margin change X step as two float64 products
  (BLAS gemv) with the fit's own (d, rows) design, gathered once per fit;
- the Hessian X^T diag(C s p (1 - p)) X + diag(reg) as one float32 product (`_gram`, compiled
  here) of the design scaled per row by sqrt(curvature), Cholesky-factored (LAPACK potrf, through
  `np.linalg.cholesky`); on the first step
  of a fit on columns of a shared matrix every curvature is 1/4, and the Hessian is a principal
  submatrix of one Gram matrix of [X 1] made once per cell. The Hessian is only the step's
  metric: its float32 rounding changes the path, not the optimum, which the float64 gradient
  fixes;
- a factor is kept for the next step while each step at least halves the gradient's largest
  entry (Shamanskii-style reuse; a step costs ~1/5 of a fresh factor here, so reuse pays sooner
  than in a solver whose steps are dearer);
- the step length: up to three 1-D Newton iterations on the objective along the direction (it
  is convex there), stopped where its slope is in [-1e-3 |slope at 0|, 0]; a length whose slope
  is still positive falls back to Armijo backtracking on the objective;
- a fit stops when every gradient entry is below `tol`, or, with `certify` (the 1-strongly
  convex liblinear objective, whose optimum lies within ||gradient||_2 of the weights), as soon
  as that bound fixes the sign of every row's margin, or when twice running no step longer than
  1e-6 lowers the objective while the gradient stays as large (its rounding floor: values of
  1e4 and saturated rows).

No TensorFlow here, and no Python objects in the loop.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

C = 1.0                 # LogisticRegression's default inverse regularisation strength
NEWTON_STEPS = 100
KEEP_FACTOR = 0.5      # reuse a factor while each step shrinks the gradient at least this much
LINE_ITERATIONS = 3     # 1-D Newton iterations of the line search, at most
LINE_SLOPE = 1e-3       # the line search stops where phi'(t) is in [-this * |phi'(0)|, 0]
STALL_LENGTH = 1e-6     # a step shorter than this that leaves the gradient as large is a stall

# record slots: [slowest fit's steps, Hessians formed, fits whose factorisation failed]
STEPS, HESSIANS, FAILED = 0, 1, 2


@njit(cache=True)
def _expit(x: float) -> float:
    if x >= 0.0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


@njit(cache=True)
def _softplus(x: float) -> float:
    """log(1 + e^x) without overflow."""
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


@njit(cache=True, fastmath={"reassoc", "contract"})
def _gram(B, H):
    """H = B B^T (float32), four rows of B at a time against each later row (the upper
    triangle, then mirrored): each load of a row serves four products. Reassociation lets the
    compiler vectorise the sums over the rows (~110 us for 101 x 450 on one AVX2 core, against
    ~90 us for numpy's full sgemm and ~170 us for Numba's, which calls SciPy's BLAS); this is only
    the Hessian's (the metric's) product, whose rounding changes the path, not the optimum."""
    d, n = B.shape
    for a in range(0, d, 4):
        a1 = min(a + 1, d - 1)
        a2 = min(a + 2, d - 1)
        a3 = min(a + 3, d - 1)
        for b in range(a, d):
            s0 = np.float32(0.0)
            s1 = np.float32(0.0)
            s2 = np.float32(0.0)
            s3 = np.float32(0.0)
            for i in range(n):
                v = B[b, i]
                s0 += B[a, i] * v
                s1 += B[a1, i] * v
                s2 += B[a2, i] * v
                s3 += B[a3, i] * v
            H[a, b] = s0
            H[a1, b] = s1
            H[a2, b] = s2
            H[a3, b] = s3
    for a in range(d):
        for b in range(a):
            H[a, b] = H[b, a]


@njit(cache=True)
def _factor(H, reg):
    """Lower Cholesky factor (float64) of H + diag(reg), H float32 without the diagonal term.
    A matrix that rounding left not positive definite gets a ridge of 1e-6 of each diagonal
    entry (of the largest one where an entry is 0), times 10 until it factors: relative to each
    entry, so that a direction of small curvature (an unpenalised intercept whose rows all
    saturated) keeps its scale. Returns (factor, ok); not ok for a matrix with inf or NaN."""
    d = H.shape[0]
    if not np.isfinite(H).all():
        return np.eye(d), False
    for i in range(d):
        H[i, i] += reg[i]
    top = 1e-30
    for i in range(d):
        top = max(top, float(H[i, i]))
    ridge = 0.0
    while True:
        A = H.copy()
        for i in range(d):
            A[i, i] += ridge * (H[i, i] if H[i, i] > 0.0 else top)
        try:
            return np.linalg.cholesky(A).astype(np.float64), True
        except Exception:  # noqa: BLE001 -- numba raises LinAlgError for a non-PD matrix
            ridge = 10.0 * ridge if ridge > 0.0 else 1e-6
            if ridge > 1e30:
                return np.eye(d), False


@njit(cache=True)
def _cho_solve(L, g, out):
    """out = (L L^T)^-1 g for a lower-triangular L."""
    d = L.shape[0]
    for i in range(d):
        acc = g[i]
        for j in range(i):
            acc -= L[i, j] * out[j]
        out[i] = acc / L[i, i]
    for i in range(d - 1, -1, -1):
        acc = out[i]
        for j in range(i + 1, d):
            acc -= L[j, i] * out[j]
        out[i] = acc / L[i, i]


@njit(cache=True)
def _line_search(z, dz, w, step, grad, y, s, reg, p):
    """Step length t along -step; p is set to sigmoid(z - t dz). See the module docstring."""
    n, d = z.size, w.size
    a = 0.0
    b = 0.0
    slope0 = 0.0
    for j in range(d):
        a += reg[j] * step[j] * step[j]
        b += reg[j] * w[j] * step[j]
        slope0 -= grad[j] * step[j]
    t = 1.0
    slope = 0.0
    for it in range(LINE_ITERATIONS + 1):
        slope = 0.0
        curve = 0.0
        for i in range(n):
            q = _expit(z[i] - t * dz[i])
            p[i] = q
            sdz = s[i] * dz[i]
            slope -= (q - y[i]) * sdz
            curve += q * (1.0 - q) * sdz * dz[i]
        slope = C * slope + t * a - b
        if it == LINE_ITERATIONS:
            break
        if slope <= 0.0 and slope >= -LINE_SLOPE * abs(slope0):
            break
        curve = C * curve + a
        t = min(max(t - slope / max(curve, 1e-300), 1.0 / 64), 16.0)
    if slope > 0.0 and abs(slope) > 1e-6 * abs(slope0):
        f0 = _objective(z, dz, w, step, 0.0, y, s, reg)
        slack = -1e-4 * slope0 - 1e-13 * abs(f0)
        t = 1.0
        for _ in range(30):
            if _objective(z, dz, w, step, t, y, s, reg) <= f0 - t * slack:
                break
            t *= 0.5
        for i in range(n):
            p[i] = _expit(z[i] - t * dz[i])
    return t


@njit(cache=True)
def _objective(z, dz, w, step, t, y, s, reg):
    """C * sum(s * log loss) + 0.5 * sum(reg * w^2) at w - t step (margins z - t dz)."""
    total = 0.0
    for i in range(z.size):
        m = z[i] - t * dz[i]
        total += s[i] * (_softplus(m) - y[i] * m)
    penalty = 0.0
    for j in range(w.size):
        v = w[j] - t * step[j]
        penalty += reg[j] * v * v
    return C * total + 0.5 * penalty


@njit(cache=True)
def _fit(T, T32, s, y, reg, tol, certify, first, w, z, record):
    """One fit from w = 0: T (d, rows) float64 design (intercept row last), T32 its float32
    copy, s the row weights; `first` the first step's Hessian without its diagonal term (an
    empty array: form it). Writes the weights into w and the margins into z; returns the flops
    spent."""
    d, n = T.shape
    p = np.full(n, 0.5)
    r = np.empty(n)
    grad = np.empty(d)
    step = np.zeros(d)
    root = np.empty(n, dtype=np.float32)
    B = np.empty((d, n), dtype=np.float32)
    L = np.eye(d)
    norms = np.zeros(n)
    if certify:
        for j in range(d):
            for i in range(n):
                norms[i] += T[j, i] * T[j, i]
        for i in range(n):
            norms[i] = math.sqrt(norms[i])
    w[:] = 0.0
    z[:] = 0.0
    keep = False
    last_norm = np.inf
    stalled = 0
    flops = 0.0
    steps = 0
    for steps in range(1, NEWTON_STEPS + 1):
        for i in range(n):
            r[i] = C * s[i] * (p[i] - y[i])
        np.dot(T, r, grad)
        largest = 0.0
        two = 0.0
        for j in range(d):
            grad[j] += reg[j] * w[j]
            largest = max(largest, abs(grad[j]))
            two += grad[j] * grad[j]
        flops += 2.0 * n * d
        if largest <= tol:
            break
        if certify:
            bound = math.sqrt(two) + 1e-9
            settled = True
            for i in range(n):
                if not abs(z[i]) > norms[i] * bound + 1e-9:
                    settled = False
                    break
            if settled:
                break
        keep = keep and largest <= KEEP_FACTOR * last_norm
        if not keep:
            if steps == 1 and first.shape[0] == d:
                H = first.copy()
            else:
                for i in range(n):
                    root[i] = math.sqrt(C * s[i] * p[i] * (1.0 - p[i]))
                for j in range(d):
                    for i in range(n):
                        B[j, i] = T32[j, i] * root[i]
                H = np.empty((d, d), dtype=np.float32)
                _gram(B, H)
                flops += float(n) * d * (d + 1)
            L, ok = _factor(H, reg)
            if not ok:
                record[FAILED] += 1
                break
            record[HESSIANS] += 1
            flops += d ** 3 / 3.0
        _cho_solve(L, grad, step)
        dz = np.dot(step, T)
        flops += 2.0 * n * d + 2.0 * d * d
        t = _line_search(z, dz, w, step, grad, y, s, reg, p)
        # no step of measurable length lowers the objective twice running: the weights are at
        # its rounding floor (a gradient entry stays near the tolerance); stop there
        stalled = stalled + 1 if t < STALL_LENGTH and largest >= last_norm else 0
        if stalled == 2:
            break
        for j in range(d):
            w[j] -= t * step[j]
        for i in range(n):
            z[i] -= t * dz[i]
        keep = True
        last_norm = largest
    record[STEPS] = max(record[STEPS], steps)
    return flops


@njit(cache=True)
def solve_columns(XT, XT32, sets, gram, y, reg, tol, certify, W, Z, record):
    """Fits on column sets of one matrix: XT (units, rows) float64 and its float32 copy, sets
    (fits, k); gram: (units + 1, units + 1) float32 0.25 [X 1]^T [X 1] for the first step, or
    (0, 0). W (fits, k + 1) and Z (fits, rows) receive the weights and margins. Returns the
    flops spent.

    Example:
        record = np.zeros(3, np.int64)
        flops = solve_columns(XT, XT.astype(np.float32), sets, np.empty((0, 0), np.float32), y,
                              np.ones(k + 1), np.full(len(sets), 1e-8), True, W, Z, record)
    """
    n_fits, k = sets.shape
    n = XT.shape[1]
    d = k + 1
    T = np.empty((d, n))
    T32 = np.empty((d, n), dtype=np.float32)
    T[k] = 1.0
    T32[k] = 1.0
    s = np.ones(n)
    first = np.empty((0, 0), dtype=np.float32)
    idx = np.empty(d, dtype=np.int64)
    idx[k] = XT.shape[0]
    flops = 0.0
    for f in range(n_fits):
        for j in range(k):
            T[j] = XT[sets[f, j]]
            T32[j] = XT32[sets[f, j]]
            idx[j] = sets[f, j]
        if gram.shape[0] > 0:
            first = np.empty((d, d), dtype=np.float32)
            for a in range(d):
                for b in range(d):
                    first[a, b] = gram[idx[a], idx[b]]
        flops += _fit(T, T32, s, y, reg, tol[f], certify, first, W[f], Z[f], record)
    return flops


@njit(cache=True)
def solve_stacked(TT, S, y, reg, tol, certify, W, Z, record):
    """Fits on their own designs: TT (fits, d, rows) float64, transposed, intercept row last; S
    (fits, rows) row weights. W (fits, d) and Z (fits, rows) receive the weights and margins.
    Returns the flops spent.

    Example:
        flops = solve_stacked(TT, S, y, reg, np.full(len(TT), 1e-8), False, W, Z, record)
    """
    n_fits, d, n = TT.shape
    first = np.empty((0, 0), dtype=np.float32)
    flops = 0.0
    for f in range(n_fits):
        T = np.ascontiguousarray(TT[f])
        flops += _fit(T, T.astype(np.float32), np.ascontiguousarray(S[f]), y, reg, tol[f],
                      certify, first, W[f], Z[f], record)
    return flops
