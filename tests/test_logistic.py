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


def test_row_weights_leave_rows_out():
    X, y = _cell(seed=5, units=15)
    Xb = _design(X, np.arange(15))[None]
    keep = np.ones(len(y))
    keep[::3] = 0.0
    w = fit_logistic_batched(Xb, y, sample_weight=keep[None])[0]
    rows = keep == 1
    alone = fit_logistic_batched(Xb[:, rows], y[rows])[0]
    assert np.abs(w - alone).max() < 1e-9


def test_signs_only_gives_the_optimum_predictions_with_fewer_hessians():
    X, y = _cell(seed=7, units=80)
    sets = _sets(80, 40, 30, seed=8)
    full = solve_logistic(y, columns=(X, sets), penalise_intercept=True)
    early = solve_logistic(y, columns=(X, sets), penalise_intercept=True, signs_only=True)
    assert early.hessians < full.hessians
    z_full = column_margins(X, sets, full.weights)
    z_early = column_margins(X, sets, early.weights)
    assert ((z_full > 0) == (z_early > 0)).all()
    # the certificate itself, recomputed: every margin is farther from 0 than the bound
    for cols, wf, zf in zip(sets, early.weights, z_early):
        Xd = _design(X, cols)
        bound = np.linalg.norm(Xd, axis=1) * np.linalg.norm(_gradient(Xd, y, wf, True))
        assert (np.abs(zf) > bound).all() or np.linalg.norm(_gradient(Xd, y, wf, True)) < 1e-8


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


def test_wide_matrix_uses_the_fits_own_designs_with_the_same_optimum():
    """A cell far wider than a fit (AlexNet conv_1: 18,150 units per cell) takes the stacked
    path; both paths reach the same weights."""
    from kerabl.hayne import logistic

    X, y = _cell(seed=11, units=400)
    sets = _sets(400, 12, 5, seed=12)
    assert isinstance(logistic._column_design(X, sets), logistic._Stacked)
    assert isinstance(logistic._column_design(X[:, :100], sets % 100), logistic._Columns)
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
    """At w = 0 every curvature is 1/4: the Hessians of all fits come from one Gram matrix of
    [X 1] and equal the fits' own products X_S^T X_S / 4 (float32 products, float64 check)."""
    from kerabl.hayne.logistic import _column_design

    X, y = _cell(seed=5, units=40)
    sets = _sets(X.shape[1], 12, 20, seed=6)
    design = _column_design(X, sets)
    fits = np.arange(0, 20, 3)
    factors = np.zeros((20, 13, 13), dtype=np.float32)
    assert design.constant_hessians(fits, 0.25, factors) > 0
    # one fit's own product is cheaper than the Gram matrix of all 40 units: none
    assert design.constant_hessians(fits[:1], 0.25, factors[:0]) is None
    assert not factors[1].any()                     # fits not asked for are left alone
    for h, f in zip(factors[fits], fits):
        Xd = _design(X, sets[f])
        exact = 0.25 * Xd.T @ Xd
        assert np.abs(h - exact).max() < 1e-5 * np.abs(exact).max()


def test_newton_steps_solve_the_exact_hessian():
    """The syrk-formed Hessians (float32 upper triangle and Cholesky factor) give the Newton
    step of the exact float64 Hessian to float32 accuracy, from the column design and from the
    stacked one; the Gram path (constant curvature) gives the same step."""
    from kerabl.hayne.logistic import _column_design, _factor_solve, _Stacked

    X, y = _cell(seed=7, units=30)
    sets = _sets(X.shape[1], 10, 4, seed=8)
    rng = np.random.default_rng(9)
    reg = np.ones(11)
    grad = rng.standard_normal((4, 11))
    curvature = rng.random((4, len(y))) * 0.25
    fits = np.arange(4)
    stacked = _Stacked(np.stack([_design(X, c).T for c in sets]))
    for design in (_column_design(X, sets), stacked):
        for c in (curvature, np.full_like(curvature, 0.25)):
            factors = np.zeros((4, 11, 11), dtype=np.float32)
            steps = _factor_solve(design, fits, c, reg, grad, factors)[0]
            for f in fits:
                Xd = _design(X, sets[f])
                exact = np.linalg.solve(Xd.T @ (c[f, :, None] * Xd) + np.diag(reg), grad[f])
                assert np.abs(steps[f] - exact).max() < 1e-4 * np.abs(exact).max()


def test_line_search_decreases_the_objective_and_returns_the_new_probabilities():
    from kerabl.hayne.logistic import _line_search, _objective

    X, y = _cell(seed=10, units=20)
    Xd = _design(X, np.arange(20))
    rng = np.random.default_rng(11)
    reg = np.ones(21)
    s = np.ones((3, len(y)))
    w = rng.standard_normal((3, 21)) * 0.1
    z = w @ Xd.T
    grad = np.stack([_gradient(Xd, y, v, True) for v in w])
    # a Newton direction, a direction 5x too long (the line search must shorten it) and one
    # 5x too short (it must lengthen it, up to 16)
    step = np.stack([np.linalg.solve(Xd.T @ ((expit(zz) * (1 - expit(zz)))[:, None] * Xd)
                                     + np.eye(21), g) for zz, g in zip(z, grad)])
    step *= np.array([1.0, 5.0, 0.2])[:, None]
    dz = step @ Xd.T
    t, p = _line_search(z, dz, w, step, grad, y, s, reg)
    f0 = _objective(z, w, y, s, reg)
    f1 = _objective(z - t[:, None] * dz, w - t[:, None] * step, y, s, reg)
    assert (f1 < f0).all()
    assert t[1] < 1.0 < t[2]
    np.testing.assert_allclose(p, expit(z - t[:, None] * dz), rtol=1e-12)


def test_a_hessian_without_a_cholesky_factor_gets_a_ridge():
    """Every curvature 0 and the intercept unpenalised (lbfgs): the float32 matrix is singular,
    so it is formed again with a ridge of 1e-6 of its largest diagonal entry; the weights' steps
    are the gradient's (their Hessian is the identity), the intercept's step is finite."""
    from kerabl.hayne.logistic import _column_design, _factor_solve

    X, y = _cell(seed=12, units=30)
    sets = _sets(X.shape[1], 10, 3, seed=13)
    reg = np.ones(11)
    reg[-1] = 0.0
    grad = np.random.default_rng(14).standard_normal((3, 11))
    factors = np.zeros((3, 11, 11), dtype=np.float32)
    steps, _ = _factor_solve(_column_design(X, sets), np.arange(3), np.zeros((3, len(y))), reg,
                             grad, factors)
    assert np.isfinite(steps).all()
    assert np.allclose(steps[:, :-1], grad[:, :-1] / (1 + 1e-6), rtol=1e-5)
    assert np.allclose(steps[:, -1], grad[:, -1] / 1e-6, rtol=1e-4)
    with pytest.raises(ValueError, match="float32"):
        _factor_solve(_column_design(X, sets), np.arange(3), np.zeros((3, len(y))), reg, grad,
                      np.zeros((3, 11, 11)))
