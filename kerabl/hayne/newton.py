"""The compiled kernel of the probes' logistic fits: a damped Newton method, one fit at a time.

`kerabl.hayne.logistic.solve_logistic` is the interface; this module is its inner loop, compiled
with Numba (cached on disk after the first run), so that a fit costs what its products cost and
not what a Python loop over 200 fits costs. Each fit, alone in the cache:

- the fit's own (d, rows) design, gathered once, in float32 when the values are float32 (a
  network's activations: the same numbers in half the memory) and float64 otherwise; for fits
  on columns of one matrix, its rows padded with zero rows of weight 0 to a multiple of 16, so
  that no product ends in a remainder loop;
- the gradient X^T (C s (p - y)) + reg w and the margin change X step with float64 sums
  (`_times`, `_combine`);
- the Hessian X^T diag(C s p (1 - p)) X + diag(reg) in float32 (`_gram`: four rows of the design
  scaled by the curvature against two rows at a time), Cholesky-factored (LAPACK potrf, through
  `np.linalg.cholesky`); on the first step of a fit on columns of a shared matrix every
  curvature is 1/4, and the Hessian is a principal submatrix of one Gram matrix of [X 1] made
  once per cell. The Hessian is only the step's metric: its float32 rounding changes the path,
  not the optimum, which the float64 gradient fixes;
- a factor is kept for the next step while each step shrinks the gradient's largest entry to at
  most 0.7 of the last (Shamanskii-style reuse: a step costs far less than a fresh Hessian and
  factor, so reuse pays sooner than in a solver whose steps are dearer; the documentation's
  Performance page gives the measurements);
- the step length: up to three 1-D Newton iterations on the objective along the direction (it
  is convex there), stopped where its slope is in [-0.3 |slope at 0|, 0] (a decrease, proven by
  convexity, without the exact minimum along the line: the next Newton step is cheaper than
  more passes over the rows); a length whose slope is still positive falls back to Armijo
  backtracking on the objective. Each pass over the rows takes its sigmoids from a vectorised
  exp (`_exp_negative`, within an ulp of libm's), half the cost of libm's one call per row;
- a fit stops when every gradient entry is below `tol`, or, with `certify` (the 1-strongly
  convex liblinear objective, whose optimum lies within ||gradient||_2 of the weights), as soon
  as that bound fixes the sign of every row's margin, or when twice running no step longer than
  1e-6 lowers the objective while the gradient stays as large (its rounding floor: values of
  1e4 and saturated rows).

No TensorFlow here, and no Python objects in the loop; every kernel releases the GIL (`nogil`),
so the probes' threads (`kerabl.hayne.pools`, a script that cannot spawn workers) run side by side.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

C = 1.0                 # LogisticRegression's default inverse regularisation strength
NEWTON_STEPS = 100
KEEP_FACTOR = 0.7      # reuse a factor while each step shrinks the gradient at least this much
LINE_ITERATIONS = 3     # 1-D Newton iterations of the line search, at most
LINE_SLOPE = 0.3        # the line search stops where phi'(t) is in [-this * |phi'(0)|, 0]
STALL_LENGTH = 1e-6     # a step shorter than this that leaves the gradient as large is a stall
PAD = 16                # fits on columns of one matrix pad their rows to a multiple of this (zero
                        # rows of weight 0): the products then need no remainder loop (a 101 x
                        # 550 Hessian 100 -> 84 us, 101 x 560 here)

_LN2_HI = 0.6931471803691238         # ln 2 in two parts (Cody-Waite): the high one exact in
_LN2_LO = 1.9082149292705877e-10      # a product with any k here
_INV_LN2 = 1.4426950408889634
_SHIFT = 6755399441055744.0           # 1.5 * 2^52: x + this rounds x to an integer in the low bits
_SHIFT_BITS = np.array([_SHIFT]).view(np.int64)[0]

# record slots: [slowest fit's steps, Hessians formed, fits whose factorisation failed]
STEPS, HESSIANS, FAILED = 0, 1, 2


@njit(cache=True, nogil=True)
def _softplus(x: float) -> float:
    """log(1 + e^x) without overflow."""
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


@njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
def _gram(T, c, H):
    """H = T diag(c) T^T (float32), upper triangle then mirrored: four rows of T, scaled by c
    into a small buffer, against two rows of T at a time, so that each load serves more than one
    product (six loads for eight multiply-adds). Reassociation lets the compiler vectorise the
    sums over the rows."""
    d, n = T.shape
    A = np.empty((4, n), dtype=np.float32)
    for a in range(0, d, 4):
        a1 = min(a + 1, d - 1)
        a2 = min(a + 2, d - 1)
        a3 = min(a + 3, d - 1)
        for i in range(n):
            A[0, i] = T[a, i] * c[i]
            A[1, i] = T[a1, i] * c[i]
            A[2, i] = T[a2, i] * c[i]
            A[3, i] = T[a3, i] * c[i]
        for b in range(a, d, 2):
            b1 = min(b + 1, d - 1)
            s0 = np.float32(0.0)
            s1 = np.float32(0.0)
            s2 = np.float32(0.0)
            s3 = np.float32(0.0)
            t0 = np.float32(0.0)
            t1 = np.float32(0.0)
            t2 = np.float32(0.0)
            t3 = np.float32(0.0)
            for i in range(n):
                u = np.float32(T[b, i])
                v = np.float32(T[b1, i])
                x0 = A[0, i]
                x1 = A[1, i]
                x2 = A[2, i]
                x3 = A[3, i]
                s0 += x0 * u
                s1 += x1 * u
                s2 += x2 * u
                s3 += x3 * u
                t0 += x0 * v
                t1 += x1 * v
                t2 += x2 * v
                t3 += x3 * v
            H[a, b] = s0
            H[a1, b] = s1
            H[a2, b] = s2
            H[a3, b] = s3
            H[a, b1] = t0
            H[a1, b1] = t1
            H[a2, b1] = t2
            H[a3, b1] = t3
    for a in range(d):
        for b in range(a):
            H[a, b] = H[b, a]


@njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
def _times(T, r, out):
    """out = T r with float64 sums, T float32 or float64 (d, rows); four rows of T per pass
    over r."""
    d, n = T.shape
    for j in range(0, d - 3, 4):
        a0 = 0.0
        a1 = 0.0
        a2 = 0.0
        a3 = 0.0
        for i in range(n):
            ri = r[i]
            a0 += T[j, i] * ri
            a1 += T[j + 1, i] * ri
            a2 += T[j + 2, i] * ri
            a3 += T[j + 3, i] * ri
        out[j] = a0
        out[j + 1] = a1
        out[j + 2] = a2
        out[j + 3] = a3
    for j in range(d - d % 4, d):
        acc = 0.0
        for i in range(n):
            acc += T[j, i] * r[i]
        out[j] = acc


@njit(cache=True, nogil=True, fastmath={"contract"})
def _combine(T, v, out):
    """out = T^T v (rows,) in float64, as a sum of T's rows (each contiguous), four per pass
    over out."""
    d, n = T.shape
    out[:] = 0.0
    for j in range(0, d - 3, 4):
        v0 = v[j]
        v1 = v[j + 1]
        v2 = v[j + 2]
        v3 = v[j + 3]
        for i in range(n):
            out[i] += v0 * T[j, i] + v1 * T[j + 1, i] + v2 * T[j + 2, i] + v3 * T[j + 3, i]
    for j in range(d - d % 4, d):
        vj = v[j]
        for i in range(n):
            out[i] += vj * T[j, i]


@njit(cache=True, nogil=True)
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


@njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
def _cho_solve(L, g, out):
    """out = (L L^T)^-1 g for a lower-triangular L, reading L by rows only: forward by dot
    products of rows, backward by subtracting multiples of rows."""
    d = L.shape[0]
    for i in range(d):
        acc = g[i]
        for j in range(i):
            acc -= L[i, j] * out[j]
        out[i] = acc / L[i, i]
    for i in range(d - 1, -1, -1):
        out[i] /= L[i, i]
        x = out[i]
        for j in range(i):
            out[j] -= L[i, j] * x


@njit(cache=True, nogil=True, fastmath={"contract"})
def _exp_parts(a, frac, kd):
    """For a <= 0 (clamped at -700): a = k ln2 + r with |r| <= ln2 / 2 (Cody-Waite, ln2 in two
    parts), frac = e^r by its Taylor series to r^13 (the rest is below 4e-18), kd = k + 1.5 2^52,
    whose low bits hold k. No reassociation here: it would cancel the rounding that makes k."""
    for i in range(a.size):
        ai = max(a[i], -700.0)
        shifted = ai * _INV_LN2 + _SHIFT
        kd[i] = shifted
        k = shifted - _SHIFT
        r = (ai - k * _LN2_HI) - k * _LN2_LO
        e = 1.0 / 6227020800.0
        e = e * r + 1.0 / 479001600.0
        e = e * r + 1.0 / 39916800.0
        e = e * r + 1.0 / 3628800.0
        e = e * r + 1.0 / 362880.0
        e = e * r + 1.0 / 40320.0
        e = e * r + 1.0 / 5040.0
        e = e * r + 1.0 / 720.0
        e = e * r + 1.0 / 120.0
        e = e * r + 1.0 / 24.0
        e = e * r + 1.0 / 6.0
        e = e * r + 0.5
        e = e * r + 1.0
        frac[i] = e * r + 1.0


@njit(cache=True, nogil=True)
def _exp_negative(a, out, kd):
    """out = e^a for an array a <= 0, within an ulp of libm's (tested), vectorised: Numba calls
    libm's exp once per element (pip's llvmlite has no vector math library), which made the
    line search's passes over the rows cost twice as much. Below -700 it gives e^-700 (1e-304),
    which no sum here can see. kd is scratch of a's size."""
    _exp_parts(a, out, kd)
    bits = kd.view(np.int64)
    for i in range(bits.size):
        bits[i] = (bits[i] - _SHIFT_BITS + 1023) << 52
    scale = bits.view(np.float64)
    for i in range(out.size):
        out[i] *= scale[i]


@njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
def _sigmoid_along(z, dz, t, y, s, p, e, kd):
    """p = sigmoid(z - t dz); returns the sums that make the objective's slope and curvature
    along the line at t: sum(s (p - y) dz) and sum(s p (1 - p) dz^2)."""
    n = z.size
    for i in range(n):
        p[i] = -abs(z[i] - t * dz[i])
    _exp_negative(p, e, kd)
    slope = 0.0
    curve = 0.0
    for i in range(n):
        inv = 1.0 / (1.0 + e[i])
        q = inv if z[i] - t * dz[i] >= 0.0 else e[i] * inv
        p[i] = q
        sdz = s[i] * dz[i]
        slope += (q - y[i]) * sdz
        curve += q * (1.0 - q) * sdz * dz[i]
    return slope, curve


@njit(cache=True, nogil=True)
def _line_search(z, dz, w, step, grad, y, s, reg, p):
    """Step length t along -step; p is set to sigmoid(z - t dz). See the module docstring."""
    n, d = z.size, w.size
    e = np.empty(n)
    kd = np.empty(n)
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
        along, curve = _sigmoid_along(z, dz, t, y, s, p, e, kd)
        slope = -C * along + t * a - b
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
        _sigmoid_along(z, dz, t, y, s, p, e, kd)
    return t


@njit(cache=True, nogil=True)
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


@njit(cache=True, nogil=True)
def _fit(T, s, y, reg, tol, certify, first, reuse, w, z, record):
    """One fit from w = 0: T (d, n) float32 or float64 design (intercept row last), s and y the
    row weights and labels (n,); `first` the first step's Hessian without its diagonal term (an
    empty array: form it); `reuse` False forms and factors a Hessian at every step. The rows
    past z.size are padding (zero columns of T, zero weights), there to make the products'
    lengths a multiple of the vector width. Writes the weights into w and the margins of the
    first z.size rows into z; returns the flops spent on those rows (the padding's products
    with zeros not counted)."""
    d, n = T.shape
    rows = z.size
    p = np.full(n, 0.5)
    r = np.empty(n)
    grad = np.empty(d)
    step = np.zeros(d)
    curve = np.empty(n, dtype=np.float32)
    dz = np.empty(n)
    L = np.eye(d)
    norms = np.zeros(n)
    if certify:
        for j in range(d):
            for i in range(n):
                norms[i] += T[j, i] * T[j, i]
        for i in range(n):
            norms[i] = math.sqrt(norms[i])
    w[:] = 0.0
    margins = z
    if n > rows:
        margins = np.zeros(n)
    margins[:] = 0.0
    keep = False
    last_norm = np.inf
    stalled = 0
    flops = 0.0
    steps = 0
    for steps in range(1, NEWTON_STEPS + 1):
        for i in range(n):
            r[i] = C * s[i] * (p[i] - y[i])
        _times(T, r, grad)
        largest = 0.0
        two = 0.0
        for j in range(d):
            grad[j] += reg[j] * w[j]
            largest = max(largest, abs(grad[j]))
            two += grad[j] * grad[j]
        flops += 2.0 * rows * d
        if largest <= tol:
            break
        if certify:
            bound = math.sqrt(two) + 1e-9
            settled = True
            for i in range(rows):
                if not abs(margins[i]) > norms[i] * bound + 1e-9:
                    settled = False
                    break
            if settled:
                break
        keep = reuse and keep and largest <= KEEP_FACTOR * last_norm
        if not keep:
            if steps == 1 and first.shape[0] == d:
                H = first.copy()
            else:
                for i in range(n):
                    curve[i] = C * s[i] * p[i] * (1.0 - p[i])
                H = np.empty((d, d), dtype=np.float32)
                _gram(T, curve, H)
                flops += float(rows) * d * (d + 1)
            L, ok = _factor(H, reg)
            if not ok:
                record[FAILED] += 1
                break
            record[HESSIANS] += 1
            flops += d ** 3 / 3.0
        _cho_solve(L, grad, step)
        _combine(T, step, dz)
        flops += 2.0 * rows * d + 2.0 * d * d
        t = _line_search(margins, dz, w, step, grad, y, s, reg, p)
        # no step of measurable length lowers the objective twice running: the weights are at
        # its rounding floor (a gradient entry stays near the tolerance); stop there
        stalled = stalled + 1 if t < STALL_LENGTH and largest >= last_norm else 0
        if stalled == 2:
            break
        for j in range(d):
            w[j] -= t * step[j]
        for i in range(n):
            margins[i] -= t * dz[i]
        keep = True
        last_norm = largest
    if n > rows:
        z[:] = margins[:rows]
    record[STEPS] = max(record[STEPS], steps)
    return flops


@njit(cache=True, nogil=True)
def solve_columns(XT, sets, gram, y, reg, tol, certify, reuse, W, Z, record):
    """Fits on column sets of one matrix: XT (units, rows), float32 or float64; sets (fits, k);
    gram: (units + 1, units + 1) float32 0.25 [X 1]^T [X 1] for the first step, or (0, 0).
    `reuse` False: plain Newton (a Hessian formed and factored at every step; `gram` empty).
    W (fits, k + 1) and Z (fits, rows) receive the weights and margins. Returns the
    flops spent.

    Example:
        record = np.zeros(3, np.int64)
        flops = solve_columns(XT, sets, np.empty((0, 0), np.float32), y, np.ones(k + 1),
                              np.full(len(sets), 1e-8), True, True, W, Z, record)
    """
    n_fits, k = sets.shape
    n = XT.shape[1]
    d = k + 1
    padded = -(-n // PAD) * PAD
    T = np.zeros((d, padded), dtype=XT.dtype)
    T[k, :n] = 1.0
    s = np.zeros(padded)
    s[:n] = 1.0
    labels = np.zeros(padded)
    labels[:n] = y
    first = np.empty((0, 0), dtype=np.float32)
    idx = np.empty(d, dtype=np.int64)
    idx[k] = XT.shape[0]
    flops = 0.0
    for f in range(n_fits):
        for j in range(k):
            T[j, :n] = XT[sets[f, j]]
            idx[j] = sets[f, j]
        if gram.shape[0] > 0:
            first = np.empty((d, d), dtype=np.float32)
            for a in range(d):
                for b in range(d):
                    first[a, b] = gram[idx[a], idx[b]]
        flops += _fit(T, s, labels, reg, tol[f], certify, first, reuse, W[f], Z[f], record)
    return flops


@njit(cache=True, nogil=True)
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
        flops += _fit(T, np.ascontiguousarray(S[f]), y, reg, tol[f],
                      certify, first, True, W[f], Z[f], record)
    return flops
