"""Predicting the class a unit hurts most from its attributes, across network instances (Z study).

- `unit_table(model, images, labels, layers)`: per layer, every channel's ablation drops and its
  attribute vectors (class correlation, class-mean profile, L1 norm).
- `predict_affected_class(tables)`: leave-one-instance-out accuracy of a logistic regression from
  each attribute vector (and their concatenation) to the most-hurt class.

`scripts/z_instances.py` trains the instances and prints these numbers.
"""

from __future__ import annotations

import numpy as np

from kerabl.graph import head_model
from kerabl.zhou import ablation as z_ablation, attributes as z_attributes



FEATURES = ("class_corr", "class_profile", "l1")


def unit_table(model, images: np.ndarray, labels: np.ndarray, layers: list[str]) -> dict:
    """Per layer: ablation drops and the attribute vectors of every channel unit.

    Example:
        table = unit_table(model, images, labels, ["conv_4", "conv_5"])
        table["conv_5"]["class_corr"].shape    # (units, classes)
    """
    classes = np.arange(10)
    probs = model.predict(images, verbose=0)
    table = {}
    for layer in layers:
        r = z_ablation.single_unit_ablation(model, images, labels, classes, layer)
        acts = head_model(model, layer).predict(images, verbose=0)
        means = np.clip(z_attributes.class_means(acts, labels, classes), 0, None)
        total = means.sum(axis=1, keepdims=True)
        table[layer] = {
            "max_class_drop": r["max_class_drop"], "argmax_class": r["argmax_class"],
            "class_corr": np.nan_to_num(z_attributes.class_correlation(acts, probs)),
            "class_profile": np.divide(means, total, out=np.zeros_like(means), where=total > 0),
            "l1": z_attributes.l1_norms(model, layer)[:, None]}
    return table


def stack(tables: list[dict], features: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the units that hurt some class: features (standardised per layer) and class.

    Example:
        x, y = stack(tables, ("class_corr", "l1"))
    """
    xs, ys = [], []
    for table in tables:
        for d in table.values():
            hurt = d["max_class_drop"] > 0
            x = np.concatenate([d[f] for f in features], axis=1)
            spread = x.std(axis=0)
            xs.append(((x - x.mean(axis=0)) / np.where(spread > 0, spread, 1.0))[hurt])
            ys.append(d["argmax_class"][hurt])
    return np.concatenate(xs), np.concatenate(ys)


def predict_affected_class(tables: list[dict]) -> dict[str, float]:
    """Leave-one-instance-out accuracy of LogisticRegression per attribute vector and ensemble.

    Each instance in turn is the test set and the others the training set; the correct
    predictions of all folds are pooled over all test units.

    Example:
        predict_affected_class([unit_table(m, images, labels, ["conv_5"]) for m in models])
        # {"class_corr": 0.5, ..., "ensemble": ..., "test units": ...}
    """
    from sklearn.linear_model import LogisticRegression

    scores: dict = {}
    for name, features in [*((f, (f,)) for f in FEATURES), ("ensemble", FEATURES)]:
        correct = total = 0
        for held in range(len(tables)):
            x_train, y_train = stack(tables[:held] + tables[held + 1:], features)
            x_test, y_test = stack(tables[held:held + 1], features)
            clf = LogisticRegression(max_iter=2000, random_state=0).fit(x_train, y_train)
            correct += int((clf.predict(x_test) == y_test).sum())
            total += len(y_test)
        scores[name] = round(correct / max(total, 1), 3)
    scores["test units"] = total
    return scores
