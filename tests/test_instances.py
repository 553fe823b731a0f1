"""Tests of kerabl.zhou.instances on synthetic unit tables with a known answer."""

import numpy as np

from kerabl.zhou.instances import predict_affected_class, stack


def table(seed: int, n_units: int = 60, n_classes: int = 3) -> dict:
    """One instance: each unit hurts the class its class-correlation vector peaks at; L1 is noise."""
    rng = np.random.default_rng(seed)
    hurt = rng.integers(0, n_classes, n_units)
    corr = rng.normal(0, 0.1, (n_units, n_classes))
    corr[np.arange(n_units), hurt] += 1.0
    drop = np.where(np.arange(n_units) % 5 == 0, 0.0, 0.1)   # every fifth unit hurts no class
    return {"conv": {"max_class_drop": drop, "argmax_class": hurt, "class_corr": corr,
                     "class_profile": np.full((n_units, n_classes), 1 / n_classes),
                     "l1": rng.normal(size=(n_units, 1))}}


def test_stack_keeps_units_that_hurt_and_standardises():
    x, y = stack([table(0)], ("class_corr",))
    assert x.shape == (48, 3) and y.shape == (48,)
    np.testing.assert_allclose(stack([table(0)], ("l1",))[0].std(), 1.0, rtol=0.2)


def test_class_correlation_predicts_the_hurt_class_and_noise_does_not():
    scores = predict_affected_class([table(s) for s in range(3)])
    assert scores["class_corr"] == 1.0
    assert scores["class_profile"] < 0.6      # a constant vector: at best the majority class
    assert scores["test units"] == 3 * 48     # held-out units that hurt, pooled over 3 folds
