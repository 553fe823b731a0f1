"""The batched logistic solver: exact optima, the column design, sign-certified early stops."""

import numpy as np
import pytest
from scipy.optimize import minimize
from scipy.special import expit

from kerabl.hayne.logistic import (column_margins, fit_logistic_batched, fit_logistic_columns,
                                   solve_logistic)


def _cell(seed=0, n_target=40, n_other=120, units=60, shift=0.6):
    """ReLU-like activations with a class signal in some units, as a probe cell sees them."""
    rng = np.random.default_rng(seed)
    y = np.r_[np.ones(n_target, np.int64), np.zeros(n_other, np.int64)]
    signal = rng.random(units) * shift
    X = np.maximum(rng.standard_normal((y.size, units)) + np.outer(y, signal), 0.0) * 3.0
    return X, y


def _sets(units, k, fits, seed=1):
    rng = np.random.default_rng(seed)
    return np.stack([np.sort(rng.choice(units, k, replace=False)) for _ in range(fits)])


def _gradient(Xd, y, w, penalise_intercept):
    """The objective's gradient, written out: X^T (sigmoid(X w) - y) + reg * w."""
    reg = np.ones(Xd.shape[1])
    reg[-1] = 1.0 if penalise_intercept else 0.0
    return Xd.T @ (expit(Xd @ w) - y) + reg * w


def _design(X, cols):
    return np.c_[X[:, cols], np.ones(len(X))]


@pytest.mark.parametrize("penalise", [True, False])
def test_weights_are_the_optimum(penalise):
    X, y = _cell()
    sets = _sets(X.shape[1], 25, 6)
    w = fit_logistic_columns(X, sets, y, penalise_intercept=penalise)
    for cols, wf in zip(sets, w):
        Xd = _design(X, cols)
        # the liblinear objective is 1-strongly convex: |w - w*| <= |gradient|
        assert np.linalg.norm(_gradient(Xd, y, wf, penalise)) < 1e-8
        reg = np.ones(Xd.shape[1])
        reg[-1] = 1.0 if penalise else 0.0

        def objective(v):
            z = Xd @ v
            return np.logaddexp(0, z).sum() - y @ z + 0.5 * (reg * v * v).sum()

        ref = minimize(objective, np.zeros(Xd.shape[1]), method="BFGS",
                       jac=lambda v: _gradient(Xd, y, v, penalise), options=dict(gtol=1e-9))
        assert np.abs(ref.x - wf).max() < 1e-5      # BFGS' own accuracy, not ours


def test_column_design_equals_stacked_design():
    X, y = _cell(seed=3)
    sets = _sets(X.shape[1], 20, 9, seed=4)
    Xb = np.stack([_design(X, cols) for cols in sets])
    for penalise in (True, False):
        a = fit_logistic_columns(X, sets, y, penalise_intercept=penalise)
        b = fit_logistic_batched(Xb, y, penalise_intercept=penalise)
        assert np.abs(a - b).max() < 1e-9
        assert np.allclose(column_margins(X, sets, a), np.einsum("fnd,fd->fn", Xb, a))


@pytest.mark.parametrize("n_other", [121, 127, 135, 136])
def test_rows_padded_to_the_vector_width_change_nothing(n_other):
    # fits on columns pad their rows with zero rows of weight 0 to a multiple of 16 (the stacked
    # designs do not): 161, 167, 175 rows padded, 176 not
    X, y = _cell(seed=6, n_other=n_other)
    sets = _sets(X.shape[1], 20, 5, seed=7)
    Xb = np.stack([_design(X, cols) for cols in sets])
    a = solve_logistic(y, columns=(X, sets), penalise_intercept=True)
    b = solve_logistic(y, stacked=Xb, penalise_intercept=True)
    assert a.margins.shape == b.margins.shape == (5, y.size)
    assert np.abs(a.weights - b.weights).max() < 1e-9
    assert np.allclose(a.margins, np.einsum("fnd,fd->fn", Xb, a.weights))
    signs = solve_logistic(y, columns=(X, sets), penalise_intercept=True, signs_only=True)
    assert ((signs.margins > 0) == (b.margins > 0)).all()


def test_row_weights_leave_rows_out():
    X, y = _cell(seed=5, units=15)
    Xb = _design(X, np.arange(15))[None]
    keep = np.ones(len(y))
    keep[::3] = 0.0
    w = fit_logistic_batched(Xb, y, sample_weight=keep[None])[0]
    rows = keep == 1
    alone = fit_logistic_batched(Xb[:, rows], y[rows])[0]
    assert np.abs(w - alone).max() < 1e-9


def test_signs_only_gives_the_optimum_predictions_with_less_work():
    X, y = _cell(seed=7, units=80)
    sets = _sets(80, 40, 30, seed=8)
    full = solve_logistic(y, columns=(X, sets), penalise_intercept=True)
    early = solve_logistic(y, columns=(X, sets), penalise_intercept=True, signs_only=True)
    assert early.steps < full.steps and early.flops < full.flops
    z_full = column_margins(X, sets, full.weights)
    z_early = column_margins(X, sets, early.weights)
    assert ((z_full > 0) == (z_early > 0)).all()
    # the certificate itself, recomputed: every margin is farther from 0 than the bound
    for cols, wf, zf in zip(sets, early.weights, z_early):
        Xd = _design(X, cols)
        bound = np.linalg.norm(Xd, axis=1) * np.linalg.norm(_gradient(Xd, y, wf, True))
        assert (np.abs(zf) > bound).all() or np.linalg.norm(_gradient(Xd, y, wf, True)) < 1e-8


def test_plain_newton_forms_a_hessian_every_step_and_reaches_the_same_optimum():
    """The bench's reference method: a Hessian formed and factored at every step, none kept,
    none shared. Same weights as the solver (both to the gradient tolerance); counted flops: the
    solver's products, factors and steps plus the shared Gram matrix; plain Newton's products
    and factors at every step."""
    X, y = _cell(seed=15, units=50)
    sets = _sets(50, 20, 12, seed=16)
    fast = solve_logistic(y, columns=(X, sets), penalise_intercept=True)
    plain = solve_logistic(y, columns=(X, sets), penalise_intercept=True, plain_newton=True)
    assert np.abs(fast.weights - plain.weights).max() < 1e-8
    assert plain.hessians > fast.hessians and plain.flops > fast.flops
    n, d = y.size, 21
    hessian = n * d * (d + 1) + d ** 3 / 3        # a product (upper triangle) and its factor
    step = 4.0 * n * d + 2.0 * d * d              # gradient, margin change, the two solves
    # every fit's steps each form a Hessian; one more gradient at the end that stops it
    assert plain.flops == pytest.approx(plain.hessians * (hessian + step) + len(sets) * 2 * n * d)
    assert fast.flops >= 2.0 * n * 51 ** 2          # the shared Gram matrix of [X 1] is counted
    with pytest.raises(ValueError, match="columns"):
        solve_logistic(y, stacked=_design(X, sets[0])[None], plain_newton=True)


def test_signs_only_needs_the_strongly_convex_objective():
    X, y = _cell()
    with pytest.raises(ValueError, match="penalise_intercept"):
        solve_logistic(y, columns=(X, _sets(X.shape[1], 5, 2)), signs_only=True)


def test_separable_large_values_converge():
    """Every curvature underflows on the way (margins in the thousands): the step still comes
    out (a ridge on a Hessian that is not positive definite) and the fit converges."""
    rng = np.random.default_rng(9)
    y = np.r_[np.ones(20, np.int64), np.zeros(20, np.int64)]
    X = np.c_[np.where(y == 1, 1.0, -1.0) * 1e4, rng.standard_normal((40, 3))]
    fit = solve_logistic(y, stacked=_design(X, np.arange(4))[None])
    w = fit.weights[0]
    assert np.isfinite(w).all() and fit.steps < 100
    assert np.linalg.norm(_gradient(_design(X, np.arange(4)), y, w, False)) < 1e-6


def test_wide_matrix_skips_the_gram_matrix_with_the_same_optimum():
    """A cell far wider than a fit (AlexNet conv_1: 18,150 units per cell) forms every fit's
    first Hessian itself instead of one Gram matrix of all units; both reach the same weights."""
    from kerabl.hayne.logistic import _first_gram

    X, y = _cell(seed=11, units=400)
    sets = _sets(400, 12, 5, seed=12)
    assert _first_gram(X, sets).shape == (0, 0)
    assert _first_gram(X[:, :30], sets % 30).shape == (31, 31)
    Xb = np.stack([_design(X, cols) for cols in sets])
    a = fit_logistic_columns(X, sets, y, penalise_intercept=True)
    assert np.abs(a - fit_logistic_batched(Xb, y, penalise_intercept=True)).max() < 1e-9


def test_margins_of_the_fit_equal_the_margins_of_its_weights():
    X, y = _cell(seed=13)
    sets = _sets(X.shape[1], 20, 7, seed=14)
    for signs_only in (False, True):
        fit = solve_logistic(y, columns=(X, sets), penalise_intercept=True, signs_only=signs_only)
        assert np.abs(fit.margins - column_margins(X, sets, fit.weights)).max() < 1e-9


def test_first_hessians_are_submatrices_of_one_gram_matrix():
    """At w = 0 every curvature is 1/4: each fit's first Hessian is a principal submatrix of one
    Gram matrix of [X 1] (float32 product, float64 check)."""
    from kerabl.hayne.logistic import _first_gram

    X, y = _cell(seed=5, units=40)
    sets = _sets(X.shape[1], 12, 20, seed=6)
    gram = _first_gram(X, sets)
    assert gram.dtype == np.float32 and gram.shape == (41, 41)
    for cols in sets:
        idx = np.r_[cols, 40]
        Xd = _design(X, cols)
        exact = 0.25 * Xd.T @ Xd
        assert np.abs(gram[np.ix_(idx, idx)] - exact).max() < 1e-5 * np.abs(exact).max()
    # one fit's own product is cheaper than the Gram matrix of all 40 units: none
    assert _first_gram(X, sets[:1]).shape == (0, 0)


def test_gram_kernel_is_the_product_and_the_steps_solve_the_exact_hessian():
    """The compiled Hessian product (float32, vectorised) equals T diag(c) T^T to float32
    accuracy for a float32 and a float64 design, for widths that are and are not multiples of
    its four-by-two blocks, and the factor's step is the exact float64 Newton step to float32
    accuracy."""
    from kerabl.hayne.newton import _cho_solve, _factor, _gram

    rng = np.random.default_rng(9)
    for d in (1, 2, 4, 5, 11, 13):
        for dtype in (np.float32, np.float64):
            T = rng.standard_normal((d, 70)).astype(dtype)
            c = rng.uniform(0.0, 0.25, 70).astype(np.float32)
            H = np.full((d, d), np.nan, dtype=np.float32)
            _gram(T, c, H)
            T32 = T.astype(np.float32).astype(np.float64)
            exact = (T32 * c) @ T32.T
            assert np.abs(H - exact).max() < 1e-5 * np.abs(exact).max()
        reg = np.ones(d)
        L, ok = _factor(H.copy(), reg)
        assert ok
        g = rng.standard_normal(d)
        step = np.empty(d)
        _cho_solve(L, g, step)
        ref = np.linalg.solve(exact + np.eye(d), g)
        assert np.abs(step - ref).max() < 1e-4 * np.abs(ref).max()


def test_gradient_and_margin_products_sum_in_float64():
    """T r and T^T v from a float32 design equal the float64 products of the same values to
    float64 accuracy (the float32 design halves the memory, not the precision of the sums)."""
    from kerabl.hayne.newton import _combine, _times

    rng = np.random.default_rng(12)
    for d in (1, 3, 4, 13):      # four rows per pass, and the rows left over
        T = rng.standard_normal((d, 301)).astype(np.float32)
        T64 = T.astype(np.float64)
        r = rng.standard_normal(301)
        v = rng.standard_normal(d)
        out = np.empty(d)
        _times(T, r, out)
        np.testing.assert_allclose(out, T64 @ r, rtol=1e-13, atol=1e-13)
        rows = np.empty(301)
        _combine(T, v, rows)
        np.testing.assert_allclose(rows, T64.T @ v, rtol=1e-13, atol=1e-13)


def test_float32_values_are_solved_in_float32_to_the_same_optimum():
    """Activations are float32: the design stays float32 (also when handed over as float64
    holding float32 values), and its fits reach the optimum of those values (the float64
    gradient, computed here apart from the solver); values float32 cannot hold stay float64."""
    from kerabl.hayne.logistic import _design_values

    X, y = _cell(seed=13, units=30)
    X32 = X.astype(np.float32)
    assert _design_values(X32).dtype == np.float32
    assert _design_values(X32.astype(np.float64)).dtype == np.float32
    assert _design_values(X32.astype(np.float64) + 1e-9).dtype == np.float64
    sets = _sets(30, 8, 4)
    a = solve_logistic(y, columns=(X32, sets), penalise_intercept=True)
    Xd = X32.astype(np.float64)
    for f, cols in enumerate(sets):
        grad = _gradient(_design(Xd, cols), y, a.weights[f], True)
        assert np.abs(grad).max() < 1e-8


def test_vectorised_exp_is_within_an_ulp_of_numpys():
    from kerabl.hayne.newton import _exp_negative

    a = np.r_[-np.linspace(0.0, 700.0, 200_001), -np.logspace(-300, 0, 1001), -1e-320, 0.0]
    out = np.empty_like(a)
    _exp_negative(a, out, np.empty_like(a))
    ref = np.exp(a)
    assert (np.abs(out - ref) <= np.spacing(ref)).all()
    # below -700 the clamp: e^-700, no underflow to garbage
    low = np.array([-700.0, -745.0, -1e6, -np.inf])
    out = np.empty(4)
    _exp_negative(low, out, np.empty(4))
    assert (out == out[0]).all() and 0.0 < out[0] <= 1e-303


def test_line_search_decreases_the_objective_and_returns_the_new_probabilities():
    from kerabl.hayne.newton import _line_search, _objective

    X, y = _cell(seed=10, units=20)
    Xd = _design(X, np.arange(20))
    rng = np.random.default_rng(11)
    reg = np.ones(21)
    s = np.ones(len(y))
    yf = y.astype(np.float64)
    lengths = []
    # a Newton direction, a direction 5x too long (the line search must shorten it) and one
    # 5x too short (it must lengthen it, up to 16)
    for scale in (1.0, 5.0, 0.2):
        w = rng.standard_normal(21) * 0.1
        z = Xd @ w
        grad = _gradient(Xd, y, w, True)
        curvature = expit(z) * (1 - expit(z))
        step = scale * np.linalg.solve(Xd.T @ (curvature[:, None] * Xd) + np.eye(21), grad)
        dz = Xd @ step
        p = np.empty(len(y))
        t = _line_search(z, dz, w, step, grad, yf, s, reg, p)
        assert _objective(z, dz, w, step, t, yf, s, reg) < _objective(z, dz, w, step, 0.0, yf,
                                                                        s, reg)
        np.testing.assert_allclose(p, expit(z - t * dz), rtol=1e-12)
        lengths.append(t)
    assert lengths[1] < 1.0 < lengths[2]


def test_a_hessian_without_a_cholesky_factor_gets_a_ridge():
    """Every curvature 0 and the intercept unpenalised (lbfgs): the matrix is singular, so it
    gets a ridge of 1e-6 of each diagonal entry (of the largest where an entry is 0); the
    weights' steps are the gradient's (their Hessian is the identity), the intercept's step is
    finite. A matrix with NaN never factors."""
    from kerabl.hayne.newton import _cho_solve, _factor

    reg = np.ones(11)
    reg[-1] = 0.0
    grad = np.random.default_rng(14).standard_normal(11)
    L, ok = _factor(np.zeros((11, 11), dtype=np.float32), reg)
    assert ok
    step = np.empty(11)
    _cho_solve(L, grad, step)
    assert np.isfinite(step).all()
    assert np.allclose(step[:-1], grad[:-1] / (1 + 1e-6), rtol=1e-5)
    assert np.allclose(step[-1], grad[-1] / 1e-6, rtol=1e-4)
    assert not _factor(np.full((3, 3), np.nan, dtype=np.float32), np.ones(3))[1]


def test_activations_with_nan_get_a_one_line_error():
    from kerabl.errors import KerablError

    X, y = _cell(seed=15, units=20)
    X[3, 4] = np.nan
    with pytest.raises(KerablError, match="inf or NaN"):
        fit_logistic_columns(X, _sets(20, 5, 3), y, penalise_intercept=True)


def test_single_threaded_covers_the_blas_the_probes_load_later():
    """In a fresh process (a probe worker's first task): the limit is entered before the probes
    are imported, and still every BLAS library, SciPy's OpenBLAS included, runs one thread."""
    import subprocess
    import sys

    code = ("from kerabl.hayne.logistic import single_threaded\n"
            "with single_threaded():\n"
            "    import kerabl.hayne.probes\n"
            "    from threadpoolctl import threadpool_info\n"
            "    blas = [i for i in threadpool_info() if i['user_api'] == 'blas']\n"
            "    print(len(blas), max(i['num_threads'] for i in blas))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**__import__("os").environ, "OPENBLAS_NUM_THREADS": "2"})
    libraries, threads = map(int, out.stdout.split())
    assert libraries >= 1 and threads == 1
