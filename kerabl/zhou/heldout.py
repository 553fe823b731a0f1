"""Z study numbers that do not score on the images that chose them, and ties said out loud.

- `split_greedy(eng, labels, class_, steps, seed)`: greedy units chosen on one half of the
  class's images (seeded split) and the same order scored on the other half: both curves.
- `most_hurt_class(class_drop, seed)`: the class each unit hurts most, ties broken at random with
  a recorded seed, and how many classes tie.

Why: choosing the most harmful unit and measuring the accuracy on the same images makes the
greedy curve optimistic; on small image sets accuracy drops move in steps of 1/n, so "the class a
unit hurts most" is often a tie, and `argmax` settles it towards the lowest class index.
"""

from __future__ import annotations

import numpy as np

from kerabl.errors import KerablError
from kerabl.masks import keep_masks
from kerabl.zhou.ablation import greedy


def split_greedy(eng, labels: np.ndarray, class_: int, steps: int,
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Greedy order chosen on half of the class's images, scored on both halves.

    Example:
        chosen_on, held_out, order = split_greedy(eng, labels, 3, steps=10, seed=0)

    The class's images are split by `np.random.default_rng([seed, class_]).permutation`: the
    first half (rounded down) chooses, the rest scores. Other classes' images play no part (the
    greedy curve is the class's own accuracy).

    Args:
        eng: a Z engine of the greedy layer (`kerabl.zhou.ablation.channel_engine`).
        labels: (N,) label of every image of the engine.
        class_: output index of the class.
        steps: units ablated.
        seed: seed of the split (recorded in the results).

    Returns:
        (steps + 1,) accuracy on the choosing half, (steps + 1,) on the held-out half, and the
        (steps,) units in the order chosen.
    """
    labels = np.asarray(labels)
    rows = np.flatnonzero(labels == class_)
    if rows.size < 2:
        raise KerablError(f"class {class_} has {rows.size} image(s); a split greedy curve needs "
                          "at least 2")
    rows = rows[np.random.default_rng([seed, int(class_)]).permutation(rows.size)]
    choose, score = np.sort(rows[:rows.size // 2]), np.sort(rows[rows.size // 2:])
    choosing_labels = np.full_like(labels, -1)
    choosing_labels[choose] = class_
    curve, order = greedy(eng, choosing_labels, int(class_), steps, None)
    prefixes = [order[:i].tolist() for i in range(steps + 1)]
    held_out = (eng.predict(keep_masks(eng.n_channels, prefixes), score) == class_).mean(axis=1)
    return curve, held_out.astype(np.float64), order


def most_hurt_class(class_drop, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Column of the largest drop of each unit, ties broken at random; and the tie sizes.

    Example:
        hurt, tied = most_hurt_class(z.layer("conv_2")["class_drop"], seed=0)
        (tied > 1).sum()      # units whose most-hurt class is a tie

    Args:
        class_drop: (units, classes) accuracy drops.
        seed: seed of `np.random.default_rng([seed, 3])`, one uniform draw per unit.

    Returns:
        (units,) int64 column of the chosen class, (units,) int64 number of classes at the maximum.
    """
    drop = np.asarray(class_drop, dtype=np.float64)
    if drop.ndim != 2 or drop.shape[1] == 0:
        raise KerablError(f"class_drop has shape {drop.shape}; pass (units, classes)")
    at_max = drop == drop.max(axis=1, keepdims=True)
    tied = at_max.sum(axis=1)
    pick = np.floor(np.random.default_rng([seed, 3]).random(drop.shape[0]) * tied).astype(np.int64)
    hurt = np.array([np.flatnonzero(row)[k] for row, k in zip(at_max, pick)], dtype=np.int64)
    return hurt, tied.astype(np.int64)
