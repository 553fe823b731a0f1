"""Decoding scores of a cell's units (DESIGN 2.7, 2.8).

- `paper_probe_score(X, y)`: the paper's metric, exp(-mean training log loss of hard labels)
  over many logistic fits on random unit subsets; `solver="sklearn"` is the reference loop,
  `solver="batched"` finds the same optima for all fits at once with Newton steps in numpy.
- `heldout_probe_score(X, y)`: cross-validated balanced accuracy of a standardised logistic
  regression (reported beside the paper metric).
- `rsa_scores(X, y)`: Kendall tau-b and Spearman rho between the image RDM and the class
  template RDM (the authors' "srs").

No TensorFlow here.
"""

from __future__ import annotations

import warnings
from functools import lru_cache

import numpy as np
from scipy import stats

from kerabl.errors import KerablError

_C = 1.0                 # LogisticRegression's default inverse regularisation strength
_NEWTON_STEPS = 100
_GRAD_TOL = 1e-9         # stop when every gradient entry is below this times (1 + C * n_rows)


def _check_xy(X, y) -> tuple[np.ndarray, np.ndarray]:
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y).ravel()
    if X.ndim != 2 or X.shape[0] != y.size:
        raise KerablError(f"X has shape {X.shape} and y {y.shape}; pass X (images, units) and "
                          "one label per image")
    if not np.isin(y, (0, 1)).all() or np.unique(y).size != 2:
        raise KerablError("y must hold both labels 0 (other images) and 1 (target images)")
    if X.shape[1] == 0:
        raise KerablError("X has no units; pass a cell with at least one unit")
    return X, y.astype(np.int64)


def _column_draws(n_units: int, n_fits: int, max_units: int, seed: int) -> np.ndarray:
    """(n_fits, min(n_units, max_units)) column choices, one draw per fit."""
    rng = np.random.default_rng(seed)
    k = min(n_units, max_units)
    return np.stack([rng.choice(n_units, size=k, replace=False) for _ in range(n_fits)])


def _hard_log_loss(y: np.ndarray, pred: np.ndarray) -> float:
    from sklearn.metrics import log_loss

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)     # y_pred -> y_proba rename
        return float(log_loss(y, pred, labels=[0, 1]))


@lru_cache(maxsize=4096)
def _loss_of_errors(n_pos: int, n_neg: int, wrong_pos: int, wrong_neg: int) -> float:
    """sklearn's log loss of hard predictions with the given errors per class."""
    y = np.array([1] * n_pos + [0] * n_neg)
    pred = y.copy()
    pred[:wrong_pos] = 0
    pred[n_pos:n_pos + wrong_neg] = 1
    return _hard_log_loss(y, pred)


def _sklearn_predictions(X: np.ndarray, y: np.ndarray, draws: np.ndarray) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression

    out = np.empty((len(draws), y.size), dtype=np.int64)
    for f, cols in enumerate(draws):
        out[f] = LogisticRegression(random_state=0).fit(X[:, cols], y).predict(X[:, cols])
    return out


def _margins(Xb: np.ndarray, w: np.ndarray) -> np.ndarray:
    return np.matmul(Xb, w[:, :, None])[:, :, 0]


def _objective(Xb: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    z = _margins(Xb, w)
    return _C * (np.logaddexp(0.0, z) - y * z).sum(1) + 0.5 * (w[:, :-1] ** 2).sum(1)


def fit_logistic_batched(Xb: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Optimal weights of L2 logistic regressions (C = 1, unpenalised last column) on a stack.

    Example:
        Xb = np.concatenate([X_stack, np.ones((*X_stack.shape[:2], 1))], axis=2)
        w = fit_logistic_batched(Xb, y)      # (fits, d + 1); w[:, -1] is the intercept

    Minimises C * sum(log loss) + 0.5 * ||w[:-1]||^2 for every fit by damped Newton steps
    (batched Hessians, np.linalg.solve, backtracking on the objective) until every gradient
    entry is below 1e-9 * (1 + C * n_rows); converged fits leave the batch.
    """
    n_fits, n, d = Xb.shape
    Xb = np.ascontiguousarray(Xb)
    XbT = np.ascontiguousarray(Xb.transpose(0, 2, 1))
    w = np.zeros((n_fits, d))
    reg = np.ones(d)
    reg[-1] = 0.0
    active = np.arange(n_fits)
    for _ in range(_NEWTON_STEPS):
        Xa, XaT, wa = Xb[active], XbT[active], w[active]
        p = 1.0 / (1.0 + np.exp(-_margins(Xa, wa)))
        grad = _C * np.matmul(XaT, (p - y)[:, :, None])[:, :, 0] + reg * wa
        still = np.abs(grad).max(1) > _GRAD_TOL * (1 + _C * n)
        if not still.any():
            break
        active, Xa, XaT, wa, grad, p = (v[still] for v in (active, Xa, XaT, wa, grad, p))
        hess = _C * np.matmul(XaT * (p * (1 - p))[:, None, :], Xa)
        hess[:, np.arange(d), np.arange(d)] += reg
        step = np.linalg.solve(hess, grad[:, :, None])[:, :, 0]
        w[active] = wa - _backtrack(Xa, y, wa, step, grad)[:, None] * step
    return w


def _backtrack(Xa: np.ndarray, y: np.ndarray, w: np.ndarray, step: np.ndarray,
               grad: np.ndarray) -> np.ndarray:
    """Armijo step lengths (1, 1/2, 1/4, ...) per fit for the Newton direction -step."""
    t = np.ones(len(w))
    f0 = _objective(Xa, y, w)
    slope = (grad * step).sum(1)
    bad = np.ones(len(w), dtype=bool)
    for _ in range(30):
        idx = np.flatnonzero(bad)
        f = _objective(Xa[idx], y, w[idx] - t[idx, None] * step[idx])
        bad[idx] = f > f0[idx] - 1e-4 * t[idx] * slope[idx]
        if not bad.any():
            break
        t[bad] *= 0.5
    return t


def _batched_predictions(X: np.ndarray, y: np.ndarray, draws: np.ndarray) -> np.ndarray:
    Xb = np.concatenate([X[:, draws].transpose(1, 0, 2), np.ones((len(draws), len(y), 1))], axis=2)
    w = fit_logistic_batched(Xb, y)
    return (_margins(Xb, w) > 0).astype(np.int64)


def paper_probe_score(X, y, *, n_fits: int = 200, max_units: int = 100, seed: int = 0,
                      solver: str = "batched") -> float:
    """The paper's probe score: exp(-mean log loss of hard training predictions) over fits.

    Example:
        score = paper_probe_score(acts[:, cell_units], labels)     # in (0, 1]
        paper_probe_score(acts, labels, n_fits=20, solver="sklearn")

    Each of `n_fits` fits draws min(n_units, max_units) columns without replacement
    (`np.random.default_rng(seed)`, one draw per fit), fits `LogisticRegression(random_state=0)`
    on all rows, predicts hard labels on the same rows and takes sklearn's
    `log_loss(y, hard_predictions, labels=[0, 1])`.

    Args:
        X: (images, units) activations of the cell's units.
        y: (images,) 1 for target-class images, 0 for other images.
        n_fits: number of fits.
        max_units: most columns per fit.
        seed: seed of the column draws.
        solver: "sklearn" (the reference loop) or "batched" (the exact optimum of the same
            objective for all fits at once; sklearn's lbfgs stops at tol 1e-4, so a hard
            prediction can differ only for an image whose margin is within that tolerance).
    """
    X, y = _check_xy(X, y)
    if solver not in ("sklearn", "batched"):
        raise KerablError(f"unknown probe solver {solver!r}; use 'batched' or 'sklearn'")
    if n_fits < 1 or max_units < 1:
        raise KerablError(f"n_fits={n_fits} and max_units={max_units} must be at least 1")
    draws = _column_draws(X.shape[1], n_fits, max_units, seed)
    predict = _sklearn_predictions if solver == "sklearn" else _batched_predictions
    pred = predict(X, y, draws)
    pos = y == 1
    wrong_pos = (pred[:, pos] != 1).sum(1)
    wrong_neg = (pred[:, ~pos] != 0).sum(1)
    losses = [_loss_of_errors(int(pos.sum()), int((~pos).sum()), int(a), int(b))
              for a, b in zip(wrong_pos, wrong_neg)]
    return float(np.exp(-np.mean(losses)))


def heldout_probe_score(X, y, *, folds: int = 5, max_units: int = 100, seed: int = 0) -> float:
    """Cross-validated balanced accuracy of a standardised logistic regression.

    Example:
        heldout_probe_score(acts[:, cell_units], labels)   # ~1 separable, ~0.5 noise

    Uses min(n_units, max_units) columns drawn with `np.random.default_rng(seed)` and
    stratified k-fold (shuffled, random_state=seed); `folds` is reduced to the minority
    class count when that is smaller.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = _check_xy(X, y)
    k = min(folds, int(np.bincount(y).min()))
    if k < 2:
        raise KerablError("each class needs at least 2 images for a held-out score; "
                          "use more images per class")
    cols = _column_draws(X.shape[1], 1, max_units, seed)[0]
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    cv = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    return float(cross_val_score(model, X[:, cols], y, cv=cv, scoring="balanced_accuracy").mean())


def image_rdm(X) -> np.ndarray:
    """1 - Pearson correlation between rows (images); a row with zero variance has RDM 1
    to every other row (correlation taken as 0) and 0 to itself.

    Example:
        image_rdm([[1, 2, 3], [3, 2, 1]])   # [[0, 2], [2, 0]]
    """
    X = np.asarray(X, dtype=np.float64)
    centred = X - X.mean(1, keepdims=True)
    norm = np.sqrt((centred ** 2).sum(1))
    safe = np.where(norm > 0, norm, 1.0)
    unit = centred / safe[:, None]
    corr = unit @ unit.T
    corr[norm == 0] = 0.0
    corr[:, norm == 0] = 0.0
    rdm = 1.0 - corr
    np.fill_diagonal(rdm, 0.0)
    return rdm


def template_rdm(y) -> np.ndarray:
    """Class template RDM: 0 between two target images (y == 1) and on the diagonal, 1 elsewhere."""
    y = np.asarray(y).ravel()
    both = (y[:, None] == 1) & (y[None, :] == 1)
    rdm = np.where(both, 0.0, 1.0)
    np.fill_diagonal(rdm, 0.0)
    return rdm


def rsa_scores(X, y) -> tuple[float, float]:
    """Kendall tau-b and Spearman rho between the image RDM and the template RDM.

    Example:
        tau, rho = rsa_scores(acts[:, cell_units], labels)

    Both are computed over the upper triangles (i < j). NaN when either triangle is constant.
    """
    X, y = _check_xy(X, y)
    iu = np.triu_indices(len(y), k=1)
    a = image_rdm(X)[iu]
    b = template_rdm(y)[iu]
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan"), float("nan")
    return _binary_kendall_tau_b(a, b), float(stats.spearmanr(a, b)[0])


def _binary_kendall_tau_b(a: np.ndarray, b: np.ndarray) -> float:
    """Kendall tau-b between a continuous vector and a 0/1 vector in O(n log n).

    Concordant minus discordant pairs come from the ranks of `a`: for each pair with
    b = 1 and b = 0, sign(a1 - a0); ties in a count as neither (tau-b).
    """
    ones = b == 1
    n1, n0 = int(ones.sum()), int((~ones).sum())
    ranks = stats.rankdata(a)                      # average ranks handle ties in a
    # sum over b==1 of (#b==0 below - #b==0 above) = sum over pairs of sign(a1 - a0)
    rank_sum_ones = ranks[ones].sum()
    u = rank_sum_ones - n1 * (n1 + 1) / 2.0        # Mann-Whitney U: pairs a1 > a0, ties 1/2
    s = 2.0 * u - n1 * n0                          # concordant - discordant
    n = a.size
    n_pairs = n * (n - 1) / 2.0
    _, counts = np.unique(a, return_counts=True)
    ties_a = (counts * (counts - 1) / 2.0).sum()
    ties_b = n1 * (n1 - 1) / 2.0 + n0 * (n0 - 1) / 2.0
    return float(s / np.sqrt((n_pairs - ties_a) * (n_pairs - ties_b)))
