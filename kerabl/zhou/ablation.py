"""Single-unit, random-direction, greedy and random-order ablation (the Z study).

- `single_unit_ablation(...)`: per-class accuracy with each channel zeroed, and the drops.
- `random_direction_ablation(...)`: zero one coordinate of a randomly rotated channel space.
- `greedy_ablation(...)`: a class's accuracy as units are ablated greedily (the most harmful first).
- `random_order_ablation(...)`: the same curve for random unit orders, one per seed.

Each runs on an engine of `kerabl.engine`: "tail" (the layer output once, only the tail per
unit, with the exact Dense shortcut where the graph has one) or "full" (the reference). Each
takes `ablation` ("zero", "mean", "resample": `kerabl.replacement`; `layer_replacement` makes
the layer's values).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from kerabl.engine import DEFAULT_BATCH, ChannelEngine, channel_engine
from kerabl.errors import KerablError
from kerabl.masks import keep_masks, unit_indices
from kerabl.progress import progress_bar
from kerabl.replacement import ZERO, Replacement, check_method, draw_donors
from kerabl.zhou.attributes import class_rows


def layer_replacement(eng: ChannelEngine, labels: np.ndarray, layer: str, method: str,
                      seed: int = 0) -> tuple[Replacement, dict[str, np.ndarray]]:
    """What the removed channels of `layer` take under `method`, set on `eng`, and what the
    results store of it: the layer's mean output over the study's images (`ablation_mean`), or
    each image's donor, an image of another class drawn with `draw_donors(pool, n, seed,
    crc32(layer), class)` and the same for every unit (`donor_rows`).

    Example:
        eng = channel_engine(net, images, "conv_3")
        replacement, stored = layer_replacement(eng, labels, "conv_3", "resample", seed=0)
    """
    import zlib

    check_method(method)
    if method == "zero":
        replacement, stored = ZERO, {}
    elif method == "mean":
        mean = np.asarray(eng.acts, np.float32).mean(axis=0)
        replacement, stored = Replacement("mean", mean=mean), {"ablation_mean": mean}
    else:
        labels = np.asarray(labels)
        donors = np.empty(len(labels), np.int64)
        for class_ in np.unique(labels):
            own = labels == class_
            donors[own] = draw_donors(np.flatnonzero(~own), int(own.sum()), seed,
                                      zlib.crc32(layer.encode()), int(class_))
        replacement = Replacement("resample", bank=eng.acts, donors=donors[None])
        stored = {"donor_rows": donors}
    eng.set_replacement(replacement)
    return replacement, stored


def _accuracy_table(preds: np.ndarray, labels: np.ndarray, rows: list[np.ndarray]) -> np.ndarray:
    correct = np.asarray(preds) == np.asarray(labels)[None]
    return np.stack([correct[:, r].mean(axis=1) for r in rows], axis=1)


def _drop_summary(preds: np.ndarray, base_preds: np.ndarray, labels: np.ndarray,
                  classes: Sequence[int]) -> dict[str, np.ndarray]:
    rows = class_rows(labels, classes)
    class_acc = _accuracy_table(preds, labels, rows)
    base_class_acc = _accuracy_table(base_preds[None], labels, rows)[0]
    base_acc = float((base_preds == labels).mean())
    class_drop = base_class_acc[None] - class_acc
    return {"class_acc": class_acc, "base_class_acc": base_class_acc, "base_acc": base_acc,
            "overall_drop": base_acc - (preds == labels[None]).mean(axis=1),
            "class_drop": class_drop, "max_class_drop": class_drop.max(axis=1),
            "argmax_class": class_drop.argmax(axis=1), "classes": np.asarray(classes)}


def _check_labels(images, labels) -> np.ndarray:
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if len(labels) != len(images):
        raise KerablError(f"{len(images)} images but {len(labels)} labels: pass one label per image")
    return labels


def _base_predictions(eng: ChannelEngine, rows=None) -> np.ndarray:
    return eng.predict(np.ones((1, eng.n_channels), np.float32), rows)[0]


def single_unit_ablation(network_or_model, images: np.ndarray, labels: np.ndarray,
                         classes: Sequence[int], layer: str, *, units: Sequence[int] | None = None,
                         engine: str = "tail", batch_size: int | None = DEFAULT_BATCH,
                         shortcut: bool = True, progress: bool = False,
                         ablation: str = "zero", ablation_seed: int = 0) -> dict[str, Any]:
    """Accuracy of every class with each channel unit of `layer` zeroed, one unit at a time.

    Example:
        r = single_unit_ablation(net, images, labels, range(10), "conv_3")
        r["max_class_drop"]          # (U,) the largest class accuracy drop per unit

    Args:
        network_or_model: a `kerabl.models.Network` or a Keras model with softmax outputs.
        images: (N, H, W, 3) preprocessed float32 images.
        labels: (N,) true output index of each image.
        classes: output indices of the studied classes (columns of the per-class arrays).
        layer: target layer name.
        units: channel indices to ablate (default: all).
        engine: "tail" (layer output once, tail per unit) or "full" (full forward per unit).
        batch_size: masked copies of the layer output per tail call (images per call for "full");
            None: by float count (`BATCH_FLOATS`, `SHORTCUT_FLOATS`; 64 images for "full").
        shortcut: with engine "tail", use the exact `channel_shortcut` where the layer has one
            (the Dense pre-activation corrected per unit; only the layers after it run). It
            equals the plain tail up to float rounding: tested equal class accuracies on the
            demo model and equal predictions on a random AlexNet's conv_5.
        progress: show a progress bar.
        ablation: how a unit is removed: "zero", "mean" or "resample" (`layer_replacement`,
            its draws seeded by `ablation_seed`).

    Returns:
        dict with `units` (U,), `class_acc` (U, C), `base_class_acc` (C,), `base_acc`,
        `overall_drop` (U,) (base overall accuracy - ablated overall accuracy, all images),
        `class_drop` (U, C), `max_class_drop` (U,), `argmax_class` (U,) (column in `classes`),
        `classes` (C,).
    """
    labels = _check_labels(images, labels)
    eng = channel_engine(network_or_model, images, layer, engine, batch_size, shortcut)
    layer_replacement(eng, labels, layer, ablation, ablation_seed)
    return unit_drops(eng, labels, classes, units, progress, f"ablating {layer}")


def unit_drops(eng: ChannelEngine, labels: np.ndarray, classes: Sequence[int], units, progress: bool,
               label: str) -> dict[str, Any]:
    """Per-class accuracy drops with each unit of `units` zeroed alone, on engine `eng` (the body of
    `single_unit_ablation`).

    Example:
        unit_drops(channel_engine(net, x, "conv_5"), y, [0, 1], None, False, "conv_5")["drop"]
    """
    units = unit_indices(units, eng.n_channels)
    keep = keep_masks(eng.n_channels, [[u] for u in units])
    preds = _chunked(eng.predict, keep, progress, label)
    result = _drop_summary(preds, _base_predictions(eng), labels, classes)
    result["units"] = units
    return result


def _chunked(fn, vectors: np.ndarray, progress: bool, label: str, chunk: int = 64) -> np.ndarray:
    with progress_bar(label, len(vectors), enabled=progress, transient=True) as advance:
        parts = []
        for i in range(0, len(vectors), chunk):
            parts.append(fn(vectors[i:i + chunk]))
            advance(len(parts[-1]))
    return np.concatenate(parts) if parts else np.empty((0, 0), np.int64)


def random_rotation(n: int, seed: int = 0) -> np.ndarray:
    """A random orthogonal n x n matrix (Haar distributed), deterministic in `seed`.

    Example:
        q = random_rotation(64, seed=3)
        np.allclose(q.T @ q, np.eye(64))   # True

    QR of a seeded standard normal matrix, with the signs of R's diagonal moved into Q.
    """
    if n < 1:
        raise KerablError(f"rotation size {n} must be positive")
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((n, n)))
    return q * np.where(np.diag(r) < 0, -1.0, 1.0)[None]


def random_direction_ablation(network_or_model, images: np.ndarray, labels: np.ndarray,
                              classes: Sequence[int], layer: str, *, seed: int = 0,
                              rotation: np.ndarray | None = None,
                              batch_size: int | None = DEFAULT_BATCH,
                              progress: bool = False, ablation: str = "zero") -> dict[str, Any]:
    """Single-direction ablation in a randomly rotated channel space of `layer`.

    Example:
        r = random_direction_ablation(net, images, labels, range(10), "conv_3", seed=0)
        np.sort(r["max_class_drop"])[::-1]      # the random-direction curve

    Direction k is column k of a random orthogonal matrix Q; at every spatial position the
    activation a becomes a - (a . q_k) q_k (rotate, zero coordinate k, rotate back). With
    `rotation=np.eye(C)` this is exactly single-unit ablation. Under mean or resample ablation
    (`ablation`) the coordinate takes the replacement's: a - ((a - r) . q_k) q_k.

    Args:
        rotation: (C, C) orthogonal matrix to use instead of a random one from `seed`.
        others: as in `single_unit_ablation` (the tail engine is used).

    Returns:
        the keys of `single_unit_ablation` (one row per direction; `units` = direction index),
        plus `rotation` (C, C) and `seed`.
    """
    labels = _check_labels(images, labels)
    eng = channel_engine(network_or_model, images, layer, "tail", batch_size)
    layer_replacement(eng, labels, layer, ablation, seed)
    return direction_drops(eng, labels, classes, seed, rotation, progress, f"directions {layer}")


def direction_drops(eng: ChannelEngine, labels: np.ndarray, classes: Sequence[int], seed: int,
                    rotation: np.ndarray | None, progress: bool, label: str) -> dict[str, Any]:
    """Per-class accuracy drops with each random unit direction (the columns of an orthogonal
    `rotation`, seeded when None) removed alone, on engine `eng`.

    Example:
        direction_drops(eng, y, [0, 1], seed=0, rotation=None, progress=False, label="conv_5")
    """
    n = eng.n_channels
    q = random_rotation(n, seed) if rotation is None else np.asarray(rotation, float)
    if q.shape != (n, n) or not np.allclose(q.T @ q, np.eye(n), atol=1e-5):
        raise KerablError(f"rotation must be an orthogonal {n} x {n} matrix, got shape {q.shape}")
    preds = _chunked(eng.predict_projected, q.T.astype(np.float32), progress, label)
    result = _drop_summary(preds, _base_predictions(eng), labels, classes)
    result.update(units=np.arange(n), rotation=q, seed=seed)
    return result


def _class_rows_for(labels: np.ndarray, class_: int) -> np.ndarray:
    rows = np.flatnonzero(labels == class_)
    if len(rows) == 0:
        raise KerablError(f"class {class_} has no images: pass a class present in labels")
    return rows


def _check_steps(steps: int, pool: np.ndarray) -> None:
    if not 0 <= steps <= len(pool):
        raise KerablError(f"steps = {steps} but only {len(pool)} candidate units: use 0 <= steps <= "
                          f"{len(pool)}")


def greedy_ablation(network_or_model, images: np.ndarray, labels: np.ndarray, class_: int,
                    layer: str, *, steps: int = 10, candidates: Sequence[int] | None = None,
                    engine: str = "tail", batch_size: int | None = DEFAULT_BATCH,
                    return_order: bool = False, ablation: str = "zero", ablation_seed: int = 0):
    """Accuracy of one class as the units that hurt it most are ablated one after another.

    Example:
        acc = greedy_ablation(net, images, labels, 3, "conv_5", steps=10)   # (11,)
        acc, order = greedy_ablation(..., return_order=True)

    Each step adds to the ablated set the candidate unit whose ablation (with those already
    ablated) gives the lowest accuracy on the class's images; ties go to the lowest unit index.

    Args:
        class_: output index of the class.
        steps: number of units ablated.
        candidates: channel indices to choose from (default: all).
        return_order: also return the units in the order chosen.
        others: as in `single_unit_ablation`.

    Returns:
        (steps + 1,) class accuracy after 0..steps units; with `return_order`, also (steps,) units.
    """
    labels = _check_labels(images, labels)
    eng = channel_engine(network_or_model, images, layer, engine, batch_size)
    layer_replacement(eng, labels, layer, ablation, ablation_seed)
    curve, order = greedy(eng, labels, class_, steps, candidates)
    return (curve, order) if return_order else curve


def greedy(eng: ChannelEngine, labels: np.ndarray, class_: int, steps: int,
           candidates: Sequence[int] | None) -> tuple[np.ndarray, np.ndarray]:
    """Units chosen greedily for class `class_` (each step the one whose removal lowers the class's
    accuracy most) and the accuracy curve, on engine `eng`.

    Example:
        units, curve = greedy(eng, y, class_=3, steps=10, candidates=None)   # curve[0]: no unit off
    """
    rows = _class_rows_for(labels, class_)
    pool = unit_indices(candidates, eng.n_channels)
    _check_steps(steps, pool)
    chosen: list[int] = []
    curve = [float((_base_predictions(eng, rows) == class_).mean())]
    for _ in range(steps):
        left = np.array([u for u in pool if u not in set(chosen)])
        keep = keep_masks(eng.n_channels, [chosen + [int(u)] for u in left])
        acc = (eng.predict(keep, rows) == class_).mean(axis=1)
        order = np.lexsort((left, acc))  # lowest accuracy, then lowest unit index
        chosen.append(int(left[order[0]]))
        curve.append(float(acc[order[0]]))
    return np.asarray(curve), np.asarray(chosen, np.int64)


def random_order_ablation(network_or_model, images: np.ndarray, labels: np.ndarray, class_: int,
                          layer: str, *, steps: int = 10, seeds: Sequence[int] = (0, 1, 2, 3, 4),
                          candidates: Sequence[int] | None = None, engine: str = "tail",
                          batch_size: int | None = DEFAULT_BATCH, ablation: str = "zero",
                          ablation_seed: int = 0) -> np.ndarray:
    """Accuracy of one class as units are ablated cumulatively in a random order, per seed.

    Example:
        curves = random_order_ablation(net, images, labels, 3, "conv_5", steps=10)  # (5, 11)
        curves.mean(axis=0), curves.std(axis=0)

    The order for seed s is the first `steps` of `np.random.default_rng(s).permutation(candidates)`.

    Returns:
        (n_seeds, steps + 1) class accuracy after 0..steps units.
    """
    labels = _check_labels(images, labels)
    eng = channel_engine(network_or_model, images, layer, engine, batch_size)
    layer_replacement(eng, labels, layer, ablation, ablation_seed)
    return random_order(eng, labels, class_, steps, seeds, candidates)


def random_order(eng: ChannelEngine, labels: np.ndarray, class_: int, steps: int, seeds: Sequence[int],
                 candidates: Sequence[int] | None) -> np.ndarray:
    """Accuracy of class `class_` with the first 0..steps units of a random order removed, one row per
    seed, on engine `eng`.

    Example:
        random_order(eng, y, class_=3, steps=10, seeds=[0, 1], candidates=None).shape   # (2, 11)
    """
    rows = _class_rows_for(labels, class_)
    pool = unit_indices(candidates, eng.n_channels)
    _check_steps(steps, pool)
    sets = []
    for seed in seeds:
        order = np.random.default_rng(seed).permutation(pool)[:steps]
        sets.extend([order[:i].tolist() for i in range(steps + 1)])
    acc = (eng.predict(keep_masks(eng.n_channels, sets), rows) == class_).mean(axis=1)
    return acc.reshape(len(seeds), steps + 1)
