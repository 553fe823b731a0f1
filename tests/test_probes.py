"""Probe scores: batched solver against the sklearn loop, held-out score, RSA against scipy."""

import numpy as np
import pytest
from scipy import stats
from sklearn.linear_model import LogisticRegression

from kerabl.errors import KerablError
from kerabl.hayne.probes import (fit_logistic_batched, hard_log_loss, heldout_probe_score, image_rdm,
                                 paper_probe_loss, paper_probe_score, rsa_scores, template_rdm)


def problem(seed, n=120, units=30, signal=0.4):
    rng = np.random.default_rng(seed)
    y = (np.arange(n) < n // 4).astype(int)
    return rng.normal(size=(n, units)) + signal * y[:, None] * rng.normal(size=units), y


@pytest.mark.parametrize("objective, solver", [("liblinear", "liblinear"), ("lbfgs", "lbfgs")])
def test_paper_score_equals_direct_sklearn_loop(objective, solver):
    X, y = problem(0)
    rng = np.random.default_rng(5)
    losses = []
    for _ in range(4):
        cols = rng.choice(X.shape[1], size=10, replace=False)
        clf = LogisticRegression(random_state=0, solver=solver).fit(X[:, cols], y)
        losses.append(hard_log_loss(y, clf.predict(X[:, cols])))
    expected = np.exp(-np.mean(losses))
    kw = dict(n_fits=4, max_units=10, seed=5, objective=objective)
    assert paper_probe_score(X, y, solver="sklearn", **kw) == expected
    assert paper_probe_score(X, y, **kw) == pytest.approx(expected, abs=1e-12)
    assert paper_probe_loss(X, y, **kw) == pytest.approx(np.mean(losses), abs=1e-12)
    assert expected < 1.0


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
@pytest.mark.parametrize("objective", ["liblinear", "lbfgs"])
def test_batched_equals_sklearn(seed, objective):
    X, y = problem(seed, units=40)
    kw = dict(n_fits=8, max_units=12, seed=seed, objective=objective)
    assert paper_probe_score(X, y, solver="batched", **kw) == pytest.approx(
        paper_probe_score(X, y, solver="sklearn", **kw), abs=1e-12)


def test_batched_optimum_matches_sklearn_coefficients():
    X, y = problem(9, units=6)
    Xb = np.concatenate([X, np.ones((len(y), 1))], axis=1)[None]
    w = fit_logistic_batched(Xb, y)[0]
    ref = LogisticRegression(random_state=0, tol=1e-10, max_iter=10000).fit(X, y)
    np.testing.assert_allclose(w, np.r_[ref.coef_[0], ref.intercept_], atol=1e-5)


def test_heldout_score():
    X, y = problem(0, n=80, units=10, signal=0.0)
    noise = heldout_probe_score(X, y, seed=0)
    assert 0.2 < noise < 0.8
    Xs = X + 6.0 * y[:, None]
    assert heldout_probe_score(Xs, y) == 1.0
    with pytest.raises(KerablError, match="both labels"):
        heldout_probe_score(X, np.zeros(80))


def test_rdms_by_hand():
    np.testing.assert_allclose(image_rdm([[1, 2, 3], [3, 2, 1], [5, 5, 5]]),
                               [[0, 2, 1], [2, 0, 1], [1, 1, 0]])
    assert template_rdm([1, 1, 0]).tolist() == [[0, 0, 1], [0, 0, 1], [1, 1, 0]]


@pytest.mark.parametrize("seed", [0, 1])
def test_rsa_against_scipy(seed):
    X, y = problem(seed, n=90, units=8, signal=1.0)
    X[3] = 0.0                                     # a zero-variance row
    iu = np.triu_indices(len(y), k=1)
    a, b = image_rdm(X)[iu], template_rdm(y)[iu]
    tau, rho = rsa_scores(X, y)
    assert tau == pytest.approx(stats.kendalltau(a, b)[0], abs=1e-12)
    assert rho == pytest.approx(stats.spearmanr(a, b)[0], abs=1e-12)
    assert tau > 0                                 # target images are closer to each other


def test_float32_cells_score_as_their_float64_copies_and_are_left_unchanged():
    """The held-out probe converts only its drawn columns and the RSA centres its own copy:
    a float32 cell gives bit for bit the scores of its float64 copy, and neither is written."""
    X, y = problem(4, n=110, units=150, signal=0.5)
    X32 = np.maximum(X, 0).astype(np.float32)
    X64, before = X32.astype(np.float64), X32.copy()
    assert heldout_probe_score(X32, y, max_units=40, seed=2) == heldout_probe_score(
        X64, y, max_units=40, seed=2)
    for matrix in ("upper", "full"):
        tau, rho = rsa_scores(X32, y, matrix)
        assert (tau, rho) == rsa_scores(X64, y, matrix) and tau > 0
    flat = X32.copy()
    flat[5] = 0.0                                  # a zero-variance row (upper: correlation 0)
    assert rsa_scores(flat, y) == rsa_scores(flat.astype(np.float64), y)
    np.testing.assert_array_equal(X32, before)
    np.testing.assert_array_equal(X64, before.astype(np.float64))


def tight_predictions(X, y, draws):
    return np.stack([LogisticRegression(tol=1e-10, max_iter=10000).fit(X[:, c], y).predict(X[:, c])
                     for c in draws])


@pytest.mark.parametrize("seed, units", [(11, 40), (12, 60), (13, 9)])
def test_batched_predictions_equal_tightly_converged_sklearn(seed, units):
    from kerabl.hayne.probes import _batched_predictions, _column_draws
    X, y = problem(seed, n=150, units=units, signal=0.6)
    X = np.maximum(X, 0.0)                         # ReLU-like activations, many zeros
    draws = _column_draws(units, 6, 12, seed)      # units=9: every draw is the same set
    pred = _batched_predictions(X, y, draws, "lbfgs")
    np.testing.assert_array_equal(pred, tight_predictions(X, y, draws))
    if units == 9:
        assert (pred == pred[0]).all()


def test_heldout_batched_equals_tight_sklearn_pipeline():
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    X, y = problem(3, n=100, units=12, signal=0.5)
    X[:, 0] = 2.0                                  # a constant column (scale 1)
    tight = make_pipeline(StandardScaler(), LogisticRegression(tol=1e-10, max_iter=10000))
    cols = np.random.default_rng(4).choice(12, size=12, replace=False)
    cv = StratifiedKFold(n_splits=5, shuffle=True, random_state=4)
    expected = cross_val_score(tight, X[:, cols], y, cv=cv, scoring="balanced_accuracy").mean()
    got = heldout_probe_score(X, y, seed=4)
    assert got == pytest.approx(expected, abs=1e-12)
    assert got == pytest.approx(heldout_probe_score(X, y, seed=4, solver="sklearn"), abs=0.05)
    assert 0.5 < got < 1.0
    with pytest.raises(KerablError, match="unknown probe solver"):
        heldout_probe_score(X, y, solver="lbfgs")


def test_rsa_with_tied_distances_against_scipy():
    X = np.repeat(np.random.default_rng(2).normal(size=(10, 5)), 3, axis=0)   # repeated images
    y = np.r_[np.ones(9), np.zeros(21)].astype(int)
    iu = np.triu_indices(len(y), k=1)
    a, b = image_rdm(X)[iu], template_rdm(y)[iu]
    tau, rho = rsa_scores(X, y)
    assert tau == pytest.approx(stats.kendalltau(a, b)[0], abs=1e-12)
    assert rho == pytest.approx(stats.spearmanr(a, b)[0], abs=1e-12)
    assert np.isnan(rsa_scores(np.ones((6, 3)) * np.arange(3), [1, 1, 0, 0, 0, 0])[0])


@pytest.mark.parametrize("share", [0.1, 0.5, 0.9])
def test_binary_rank_correlations_against_scipy(share):
    from kerabl.hayne.probes import _binary_rank_correlations

    rng = np.random.default_rng(7)
    a = rng.integers(0, 12, 400).astype(np.float64)      # many ties, within and across groups
    a[:150] += rng.random(150)
    b = rng.random(400) < share
    tau, rho = _binary_rank_correlations(a, b)
    assert tau == pytest.approx(stats.kendalltau(a, b)[0], abs=1e-12)
    assert rho == pytest.approx(stats.spearmanr(a, b)[0], abs=1e-12)
