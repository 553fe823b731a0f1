"""The cells the bench times: random equal-size cells of a layer and their element masks.

- `random_cells(n_units, n_cells, seed)`, `sample_masks(net, layer, n)`, `ablator_shape(model,
  layer)`: what `kerabl.bench.cases` and `kerabl.bench.methods` ablate (`kerabl.masks`, which
  loads TensorFlow, is imported on first use: the bench's probe workers import this package).

Example:
    masks = sample_masks(load_network("demo"), "conv_5", 4)   # (4, 4, 4, 128)
"""

from __future__ import annotations

import numpy as np

from kerabl.bench.flops import GRID_CELLS, SEED


def ablator_shape(model, layer: str) -> tuple[int, ...]:
    """The target layer's output shape without the batch axis.

    Example:
        ablator_shape(load_network("demo").model, "conv_5")   # (4, 4, 128)
    """
    return tuple(int(d) for d in model.get_layer(layer).output.shape[1:])


def random_cells(n_units: int, n_cells: int, seed: int) -> list[np.ndarray]:
    """`n_cells` equal-count groups of a random permutation of the units (timing stand-ins for
    grid cells: the engines' cost does not depend on which units a cell holds).

    Example:
        [len(c) for c in random_cells(10, 4, seed=0)]   # [3, 3, 2, 2]
    """
    return np.array_split(np.random.default_rng(seed).permutation(n_units), n_cells)


def sample_masks(net, layer: str, n: int) -> np.ndarray:
    """Element masks of the first `n` of `GRID_CELLS` random equal-size cells of `layer`.

    Example:
        masks = sample_masks(load_network("demo"), "conv_5", 4)   # (4, 4, 4, 128)
    """
    from kerabl.masks import cell_masks, n_units  # loads TensorFlow: on first use

    cells = random_cells(n_units(net.model, layer, "element"), GRID_CELLS, SEED)
    return cell_masks(ablator_shape(net.model, layer), cells[:n], "element")
