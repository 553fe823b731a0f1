"""The held-out probe with the grid rebuilt inside each fold: at chance on pure noise, where the
cross-validated probe on a grid chosen from all images is not; high on separable cells."""

import numpy as np
import pytest

from kerabl.errors import KerablError
from kerabl.hayne.grid import coordinates, equal_count_grid
from kerabl.hayne.heldout import fold_probe_scores, fold_probe_summary
from kerabl.hayne.probes import standardised
from kerabl.hayne.probes import heldout_probe_score

N_TARGET, N_OTHER, N_UNITS = 50, 500, 10000     # the paper's 50 + 10 x 50 images


@pytest.fixture(scope="module")
def noise():
    return np.random.default_rng(0).normal(size=(N_TARGET + N_OTHER, N_UNITS)).astype(np.float32)


def test_noise_sits_at_chance_in_every_cell(noise):
    mean, sd = fold_probe_summary(noise, N_TARGET, seed=0)
    assert mean.shape == sd.shape == (16,)
    assert np.abs(mean - 0.5).max() < 0.05, mean.round(3)
    assert np.isfinite(sd).all() and sd.max() > 0
    # the leak this replaces: the grid chosen from all images, then cross-validated
    y = np.r_[np.ones(N_TARGET, int), np.zeros(N_OTHER, int)]
    sel, mag = coordinates(noise[:N_TARGET].mean(0, dtype=np.float64),
                           noise[N_TARGET:].mean(0, dtype=np.float64))
    cells = equal_count_grid(sel, mag).cells
    leaky = [heldout_probe_score(noise[:, cells[k]], y, seed=0) for k in (0, 15)]
    assert min(leaky) > 0.6


def test_signal_is_found_and_folds_are_seeded():
    rng = np.random.default_rng(1)
    acts = rng.normal(size=(120, 400))
    acts[:30, :50] += 3.0                # 50 units fire for the 30 target images
    scores = fold_probe_scores(acts, 30, grid_shape=(2, 2), folds=3, max_units=20, seed=4)
    assert scores.shape == (4, 3)
    top = equal_count_grid(*coordinates(acts[:30].mean(0), acts[30:].mean(0)), (2, 2)).cells[3]
    assert np.isin(np.arange(50), top).all()
    assert scores[3].min() > 0.95 and np.abs(scores[:2].mean() - 0.5) < 0.15
    np.testing.assert_array_equal(scores, fold_probe_scores(acts, 30, grid_shape=(2, 2), folds=3,
                                                            max_units=20, seed=4))


def test_legacy_grid_and_bad_input():
    rng = np.random.default_rng(2)
    acts = rng.normal(size=(40, 64))
    mean, sd = fold_probe_summary(acts, 10, grid_shape=(2, 2), folds=2, legacy_bounds=True)
    assert mean.shape == (4,) and np.isfinite(mean).any()
    with pytest.raises(KerablError, match="at least 2 images"):
        fold_probe_scores(acts, 1)
    with pytest.raises(KerablError, match="target and other"):
        fold_probe_scores(acts, 40)


def test_standardised_is_scikit_learns_standard_scaler():
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(4)
    x = rng.gamma(2.0, 3.0, (60, 5))
    x[:, 1] = 0.123456789  # constant: its computed deviation is rounding noise, not 0
    x[:, 2] = 0.0
    x[:40, 3] = 0.7        # constant over the training rows only
    train = np.arange(40)
    out = standardised(x, train)
    np.testing.assert_allclose(out[:, :-1], StandardScaler().fit(x[train]).transform(x),
                               rtol=1e-12, atol=1e-12)
    assert np.all(out[:, -1] == 1.0) and np.all(np.abs(out[:, 1]) < 1e-12)
