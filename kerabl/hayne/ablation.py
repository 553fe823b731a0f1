"""Rank and rank deficit: how far the true class falls when a cell is ablated (the H study).

- Ranks themselves are `kerabl.engine.true_class_rank` (0-based position of the true class in
  the descending order of the network's outputs, ties broken by output index).
- `mean_rank_deficit(before, after, clip=True)`: the authors' `mean_rank_deficit`.
- `baseline_and_ablated_ranks(ablator, masks, labels)`: ranks with an all-ones mask and with
  each mask, from one engine (the authors' baseline: the same masked graph, all ones).

The engines a sweep can use are `kerabl.engine.rank_engine`'s: "fast" (`TailAblator`) and "paper"
(`PaperAblator`); both answer `ranks(masks, labels) -> (n_masks, n_images)`.
"""

from __future__ import annotations

import numpy as np


def mean_rank_deficit(before: np.ndarray, after: np.ndarray, clip: bool = True) -> np.ndarray:
    """Mean over images of rank after ablation minus rank before (last axis).

    Example:
        mean_rank_deficit(np.array([0, 3]), np.array([[2, 1]]))  # array([1.])  (clipped: (2 + 0) / 2)

    Args:
        before: (N,) ranks without ablation.
        after: (..., N) ranks with ablation.
        clip: negative deficits count as 0, as in the authors' `mean_rank_deficit`.
    """
    deficit = np.asarray(after, dtype=np.float64) - np.asarray(before, dtype=np.float64)
    if clip:
        deficit = np.clip(deficit, 0.0, None)
    return deficit.mean(axis=-1)


def baseline_and_ablated_ranks(ablator, masks: np.ndarray,
                               labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Baseline ranks (all-ones mask) and ranks under each mask, in one call of one engine.

    Example:
        before, after = baseline_and_ablated_ranks(ablator, cell_masks(shape, cells, "element"),
                                                   labels)
        mean_rank_deficit(before, after)     # exactly 0 for a mask of all ones

    The baseline runs through the same graph as the ablated ranks, so rounding differences
    between two graphs (e.g. the whole model against a split tail) cannot turn near-ties into
    deficits.

    Args:
        ablator: a `kerabl.engine.rank_engine` with its images or activations set.
        masks: (n_masks, *layer shape) 0/1 masks.
        labels: (N,) true output index of each image.

    Returns:
        (N,) baseline ranks and (n_masks, N) ablated ranks.
    """
    masks = np.asarray(masks, dtype=np.float32)
    ones = np.ones((1, *masks.shape[1:]), dtype=np.float32)
    ranks = ablator.ranks(np.concatenate([ones, masks]), labels)
    return ranks[0], ranks[1:]
