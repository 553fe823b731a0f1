"""The deficit regression and the probe-deficit correlation on synthetic results."""

import json
from types import SimpleNamespace

import numpy as np
import pytest

from kerabl.hayne.stats import deficit_regression, probe_deficit_correlation, summary


def synthetic(deficit_of, seed=0, C=3, L=2):
    rng = np.random.default_rng(seed)
    sel, mag = rng.normal(size=(2, C, L, 16))
    z = lambda v: (v - v.mean(-1, keepdims=True)) / v.std(-1, keepdims=True)
    deficit = deficit_of(z(sel), z(mag))
    done = np.ones((C, L), bool)
    done[-1, -1] = False
    deficit[-1, -1] = np.nan
    return SimpleNamespace(done=done, deficit=deficit, cell_selectivity=sel, cell_magnitude=mag,
                           probe=-deficit + 0.01 * rng.normal(size=deficit.shape),
                           probe_heldout=rng.random(deficit.shape), srs_tau=np.zeros_like(sel),
                           srs_rho=np.zeros_like(sel), grid_shape=(4, 4))


def test_regression_selectivity_only():
    fit = deficit_regression(synthetic(lambda s, m: 2 * s))
    assert fit["r2_selectivity"] == pytest.approx(1.0) and fit["r2_full"] == pytest.approx(1.0)
    assert fit["coef_full"]["selectivity"] == pytest.approx(2.0)
    assert fit["r2_magnitude"] < 0.5 and fit["n_cells"] == 5 * 16


def test_regression_interaction():
    fit = deficit_regression(synthetic(lambda s, m: s * m))
    assert fit["r2_full"] == pytest.approx(1.0)
    assert fit["coef_full"]["selectivity_x_magnitude"] == pytest.approx(1.0)
    assert fit["r2_selectivity"] < 0.2


def test_correlation_and_summary():
    res = synthetic(lambda s, m: 2 * s + 3)
    corr = probe_deficit_correlation(res)
    assert corr["pearson_r"] < -0.99 and corr["n"] == 80
    out = summary(res)
    json.dumps(out)
    assert out["largest_deficit"]["mean"] == pytest.approx(np.nanmax(
        np.nanmean(np.where(res.done[:, :, None], res.deficit, np.nan), axis=(0, 1))))
    assert out["regression"]["r2_full"] == pytest.approx(1.0)
