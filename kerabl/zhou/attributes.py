"""Unit attributes of the Z study (numpy only, except `l1_norms`, which reads a layer's kernel).

- `spatial_mean(acts)`, `class_correlation(acts, probs)`, `class_means(acts, labels, classes)`,
  `selectivity_index(acts, labels, classes)`, `top_activating(acts, k)`, `l1_norms(model, layer)`.
- `attribute_drop_correlations(attrs, overall_drop, max_class_drop)`: how each attribute
  predicts a unit's ablation drops.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from kerabl.errors import KerablError
from kerabl.graph import as_model, check_layer, inbound_layers


TOP_K = 8


ATTRIBUTES = ("l1", "max_class_corr", "selectivity")


def spatial_mean(acts: np.ndarray) -> np.ndarray:
    """Average a layer output over its spatial axes: (N, ..., U) -> (N, U).

    Example:
        spatial_mean(np.ones((5, 4, 4, 8))).shape  # (5, 8)
    """
    acts = np.asarray(acts, dtype=np.float64)
    if acts.ndim < 2:
        raise KerablError(f"activations must be (N, ..., units), got shape {acts.shape}")
    return acts.reshape(acts.shape[0], -1, acts.shape[-1]).mean(axis=1)


def class_correlation(acts: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Pearson correlation over images between each unit's activation and each class's probability.

    Example:
        corr = class_correlation(acts, probs[:, classes])   # (U, C)
        max_corr = np.nanmax(corr, axis=1)

    Args:
        acts: (N, ..., U) layer output; conv outputs are averaged over space first.
        probs: (N, C) predicted probabilities of the studied classes.

    Returns:
        (U, C) float64; NaN where a unit (e.g. a dead ReLU) or a class probability is constant.
    """
    a = spatial_mean(acts)
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or len(p) != len(a):
        raise KerablError(f"probs must be (N, C) with N = {len(a)} images, got shape {p.shape}")
    a = a - a.mean(axis=0)
    p = p - p.mean(axis=0)
    norm = np.outer(np.sqrt((a ** 2).sum(axis=0)), np.sqrt((p ** 2).sum(axis=0)))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norm > 0, (a.T @ p) / np.where(norm > 0, norm, 1.0), np.nan)


def class_rows(labels: np.ndarray, classes: Sequence[int]) -> list[np.ndarray]:
    """The image rows of each class in `classes`; a KerablError for a class without images.

    Example:
        class_rows(np.array([0, 1, 0]), [0, 1])   # [array([0, 2]), array([1])]
    """
    labels = np.asarray(labels)
    rows = [np.flatnonzero(labels == c) for c in classes]
    empty = [int(c) for c, r in zip(classes, rows) if len(r) == 0]
    if empty:
        raise KerablError(f"classes {empty} have no images: pass only classes present in labels")
    return rows


def class_means(acts: np.ndarray, labels: np.ndarray, classes: Sequence[int]) -> np.ndarray:
    """Mean spatially averaged activation of each unit over each class's images.

    Example:
        means = class_means(acts, labels, range(10))   # (U, 10)

    Returns:
        (U, C) float64.
    """
    a = spatial_mean(acts)
    if len(a) != len(labels):
        raise KerablError(f"{len(a)} activations but {len(labels)} labels: pass one label per image")
    return np.stack([a[r].mean(axis=0) for r in class_rows(labels, classes)], axis=1)


def selectivity_index(acts: np.ndarray, labels: np.ndarray, classes: Sequence[int]) -> np.ndarray:
    """Class selectivity index of Morcos et al.: (mu_max - mu_-max) / (mu_max + mu_-max).

    Example:
        si = selectivity_index(acts, labels, range(10))   # (U,), in [0, 1] for ReLU units

    mu_max is the largest class mean of the unit's spatially averaged activation, mu_-max the mean
    of the other classes' means.

    Returns:
        (U,) float64; NaN where both are 0 (a unit that never fires).
    """
    means = class_means(acts, labels, classes)
    if means.shape[1] < 2:
        raise KerablError("selectivity needs at least two classes: pass more classes")
    top = means.argmax(axis=1)
    mu_max = means[np.arange(len(means)), top]
    mu_rest = (means.sum(axis=1) - mu_max) / (means.shape[1] - 1)
    den = mu_max + mu_rest
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den != 0, (mu_max - mu_rest) / np.where(den != 0, den, 1.0), np.nan)


def top_activating(acts: np.ndarray, k: int = TOP_K) -> tuple[np.ndarray, np.ndarray]:
    """The k images on which each unit's spatially averaged activation is largest, and their maps.

    Example:
        idx, maps = top_activating(acts, k=8)   # (U, 8) image rows, (U, 8, h, w) maps

    Ties go to the lower image index. Dense outputs give 1 x 1 maps.

    Returns:
        indices (U, k) int64, highest first; maps (U, k, h, w) float32.
    """
    acts = np.asarray(acts, dtype=np.float32)
    if not 1 <= k <= len(acts):
        raise KerablError(f"k = {k} top images asked of {len(acts)} images: use 1 <= k <= N")
    order = np.argsort(-spatial_mean(acts), axis=0, kind="stable")[:k].T
    spatial = acts.reshape(len(acts), *(acts.shape[1:-1] or (1, 1)), acts.shape[-1])
    maps = np.moveaxis(spatial, -1, 1)[order, np.arange(order.shape[0])[:, None]]
    return order.astype(np.int64), maps


def attribute_drop_correlations(attrs: Mapping[str, np.ndarray], overall_drop: np.ndarray,
                                max_class_drop: np.ndarray) -> dict[str, dict[str, dict[str, float]]]:
    """Spearman and Pearson correlation of each unit attribute with the two accuracy drops.

    Example:
        c = attribute_drop_correlations({"l1": l1}, overall_drop, max_class_drop)
        c["l1"]["max_class_drop"]["spearman_r"]

    Units whose attribute is NaN (dead units) are left out; `n` says how many were used.

    Returns:
        {attribute: {"overall_drop" | "max_class_drop": {"spearman_r", "spearman_p",
        "pearson_r", "pearson_p", "n"}}}.
    """
    from scipy import stats

    drops = {"overall_drop": np.asarray(overall_drop, float),
             "max_class_drop": np.asarray(max_class_drop, float)}
    out: dict[str, dict[str, dict[str, float]]] = {}
    for name, values in attrs.items():
        values = np.asarray(values, float)
        out[name] = {}
        for drop_name, drop in drops.items():
            if values.shape != drop.shape:
                raise KerablError(f"attribute {name!r} has shape {values.shape} but {drop_name} "
                                  f"{drop.shape}: pass one value per unit")
            ok = np.isfinite(values) & np.isfinite(drop)
            out[name][drop_name] = _correlate(values[ok], drop[ok], stats)
    return out


def _correlate(x: np.ndarray, y: np.ndarray, stats) -> dict[str, float]:
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        nan = float("nan")
        return {"spearman_r": nan, "spearman_p": nan, "pearson_r": nan, "pearson_p": nan,
                "n": len(x)}
    s = stats.spearmanr(x, y)
    p = stats.pearsonr(x, y)
    return {"spearman_r": float(s.statistic), "spearman_p": float(s.pvalue),
            "pearson_r": float(p.statistic), "pearson_p": float(p.pvalue), "n": len(x)}


def _kernel_layer_norms(layer) -> np.ndarray | None:
    kernel = getattr(layer, "kernel", None)
    if kernel is None:
        return None
    w = np.abs(np.asarray(kernel.numpy() if hasattr(kernel, "numpy") else kernel))
    import keras

    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return w.sum(axis=(0, 1)).reshape(-1)
    return w.reshape(-1, w.shape[-1]).sum(axis=0)


def l1_norms(model, layer: str) -> np.ndarray:
    """L1 norm of each unit's incoming weights: a conv kernel's (kh, kw, c_in) slice, a dense column.

    Example:
        l1_norms(network.model, "conv_3")   # (n_channels,)

    A target without weights (an activation, dropout, batch-norm or mask layer) takes the norms of
    the weighted layer before it; a concatenation joins the norms of its inputs.

    Returns:
        (U,) float64.
    """
    import keras

    model = as_model(model)
    current = check_layer(model, layer)
    for _ in range(len(model.layers)):
        norms = _kernel_layer_norms(current)
        if norms is not None:
            return norms.astype(np.float64)
        inbound = inbound_layers(current)
        if isinstance(current, keras.layers.Concatenate):
            return np.concatenate([l1_norms(model, parent.name) for parent in inbound])
        if len(inbound) != 1:
            break
        current = inbound[0]
    raise KerablError(f"layer {layer!r} has no single weighted layer feeding it: L1 norms are "
                      "defined for conv/dense outputs (and their activations, or concatenations)")
