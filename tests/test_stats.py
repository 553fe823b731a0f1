"""The deficit regression and the probe-deficit correlation on synthetic results."""

import json
from types import SimpleNamespace

import numpy as np
import pytest

from kerabl.errors import KerablError
from kerabl.hayne.stats import deficit_regression, interaction_fit, probe_deficit_correlation, summary


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


def clustered(seed, interaction, C=12, L=2, K=16, slope_sd=0.0):
    """Cells of C classes x L layers: class and layer effects, sel + mag, an interaction whose
    slope varies between classes by slope_sd, and noise."""
    rng = np.random.default_rng(seed)
    sel, mag = rng.normal(size=(2, C, L, K))
    slope = interaction + slope_sd * rng.normal(size=(C, 1, 1))
    deficit = (rng.normal(size=(C, 1, 1)) + rng.normal(size=(1, L, 1)) + 0.5 * sel + 0.3 * mag
               + slope * sel * mag + 0.5 * rng.normal(size=(C, L, K)))
    ids = np.indices((C, L, K))
    return deficit.ravel(), sel.ravel(), mag.ravel(), ids[0].ravel(), ids[1].ravel()


def test_nested_test_finds_the_interaction_only_when_present():
    present = interaction_fit(*clustered(0, 0.3), n_boot=200)
    absent = interaction_fit(*clustered(0, 0.0), n_boot=200)
    assert present["p_value"] < 1e-6 and absent["p_value"] > 0.2
    assert present["r2_interaction"] > present["r2_additive"] + 0.02
    assert absent["r2_interaction"] - absent["r2_additive"] < 0.005
    lo, hi = present["interval"]["selectivity_x_magnitude"]
    assert 0 < lo < 0.3 < hi and absent["interval"]["selectivity_x_magnitude"][0] < 0
    for fit in (present, absent):    # F from the two R^2: the same fits
        df2 = fit["df"][1]
        assert fit["df"] == [1, 12 * 2 * 16 - (1 + 11 + 1 + 3)]
        assert fit["f"] == pytest.approx((fit["r2_interaction"] - fit["r2_additive"])
                                         / (1 - fit["r2_interaction"]) * df2)
    assert present["coef_additive"]["selectivity"] == pytest.approx(0.5, abs=0.1)
    with pytest.raises(KerablError, match="too few"):
        interaction_fit(*(a[:5] for a in clustered(0, 0.3)))


@pytest.mark.slow
def test_class_bootstrap_interval_covers_the_true_coefficient():
    covered = [
        lo <= 0.2 <= hi
        for seed in range(200)
        for lo, hi in [interaction_fit(*clustered(seed, 0.2, slope_sd=0.15), n_boot=200,
                                       seed=seed)["interval"]["selectivity_x_magnitude"]]]
    assert 0.88 <= np.mean(covered) <= 0.99, np.mean(covered)


def test_summary_has_the_test_and_intervals():
    res = synthetic(lambda s, m: s * m + 0.1 * s)
    out = summary(res)
    assert out["interaction"]["p_value"] < 1e-6 and out["control"] == "none"
    corr = out["correlation"]["probe"]
    assert corr["pearson_interval"][0] <= corr["pearson_r"] <= corr["pearson_interval"][1]
    assert "highest_probe_fold" not in out      # no fold probe stored in this table
    json.dumps(out)


def test_correlation_interval_stays_inside_minus_one_one_with_two_classes():
    # two classes, the correlation strong in one and absent in the other: on the r scale the
    # t interval of the bootstrap (t(0.975, 1) = 12.7) reached past 1
    rng = np.random.default_rng(1)
    deficit = rng.normal(size=(2, 2, 16))
    res = synthetic(lambda s, m: s, C=2)
    res.deficit = deficit
    res.probe = np.stack([deficit[0] + 0.05 * rng.normal(size=(2, 16)), rng.normal(size=(2, 16))])
    res.done[:] = True
    corr = probe_deficit_correlation(res, n_boot=200)
    for name, estimate in (("pearson", corr["pearson_r"]), ("spearman", corr["spearman_rho"])):
        low, high = corr[f"{name}_interval"]
        assert -1 <= low < estimate < high <= 1, (name, low, estimate, high)
    assert high - low > 0.5                      # two classes: wide, not a point
