"""A study without an activation cache: each pair's activations recomputed from the images.

- `RecomputedActivations(network, imageset, layers, unit)`: reads like a finished
  `kerabl.activations.ActivationCache` (`read`, `n_units`, `layers`, `labels`, `attrs`), but
  writes nothing: `read(layer, rows)` runs the images of `rows` through the network up to
  `layer`, in the batches the cache's recording would run them (the image set's rows cut into
  `batch_size` blocks from row 0), so every value equals the cache's.

The H study uses it with `cache="none"` (`kerabl study --cache none`), where the cache would not
fit on the disk: the disk holds only the results, and each class x layer pair runs its images
(the class's and its other classes') through the network again, once per layer, instead of once
in all. The input batches of the last pair are kept, so the layers of one class decode each
image once.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from kerabl.activations import CHUNK_ROWS, activation_fn, as_units
from kerabl.errors import KerablError


class RecomputedActivations:
    """The activations of an image set, computed when read instead of stored.

    Example:
        acts = RecomputedActivations(load_network("demo"), digits_imageset(), ["conv_5"])
        x = acts.read("conv_5", rows=[3, 40])   # equals open_cache(recorded).read(...)

    Attributes:
        layers: the layer names; labels: (N,) model output indices; unit: "element" or
        "channel"; n_images: rows; attrs: {"dtype": "float32", "unit": unit} (as a cache's).
    """

    def __init__(self, network, imageset, layers: Sequence[str], unit: str = "element",
                 batch_size: int = CHUNK_ROWS):
        if unit not in ("element", "channel"):
            raise KerablError(f"unit must be element or channel, got {unit!r}")
        self.network, self.imageset, self.unit = network, imageset, unit
        self.layers = list(layers)
        self.labels = np.asarray(imageset.labels, dtype=np.int64)
        self.n_images = len(self.labels)
        self.batch_size = batch_size
        self.attrs = {"dtype": "float32", "unit": unit}
        self._shapes = {name: tuple(int(d) for d in network.model.get_layer(name).output.shape[1:])
                        for name in self.layers}
        self._forward: dict = {}
        self._batches: tuple = ((), {})

    def n_units(self, layer: str) -> int:
        """Units per image of `layer`.

        Example:
            acts.n_units("conv_5")   # 8 * 8 * 32 for the demo's element units
        """
        shape = self._shape(layer)
        return int(shape[-1]) if self.unit == "channel" else int(np.prod(shape))

    def _shape(self, layer: str) -> tuple:
        if layer not in self._shapes:
            raise KerablError(f"layer {layer!r} is not among {', '.join(self.layers)}")
        return self._shapes[layer]

    def _inputs(self, blocks: np.ndarray) -> dict:
        """The preprocessed input batch of each row block (kept while the blocks stay the same)."""
        key = tuple(int(b) for b in blocks)
        if self._batches[0] != key:
            net, size = self.network, self.batch_size
            self._batches = ((), {})       # the previous pair's inputs go before these load
            self._batches = (key, {b: next(self.imageset.batches(
                net.input_size, net.preprocess, size,
                rows=np.arange(b * size, min((b + 1) * size, self.n_images)))) for b in key})
        return self._batches[1]

    def read(self, layer: str, rows=None, cols=None, out: np.ndarray | None = None) -> np.ndarray:
        """Activations of `layer` as float32 (len(rows), n_units), rows in the order given.

        Example:
            x = acts.read("conv_5", rows=np.flatnonzero(acts.labels == 3))
            acts.read("conv_5", rows=rows, out=block)    # into a float32 (len(rows), units) array
        """
        self._shape(layer)
        rows = np.arange(self.n_images) if rows is None else np.asarray(rows, dtype=np.int64)
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)
        if rows.size and (rows.min() < 0 or rows.max() >= self.n_images):
            raise KerablError(f"row indices must lie in 0..{self.n_images - 1}")
        if out is None:
            out = np.empty((rows.size, self.n_units(layer)), np.float32)
        if layer not in self._forward:
            self._forward[layer] = activation_fn(self.network.model, [layer])
        block = rows // self.batch_size
        inputs = self._inputs(np.unique(block))
        for b, x in inputs.items():
            here = np.flatnonzero(block == b)
            units = as_units(self._forward[layer](x)[0], self.unit).astype(np.float32)
            out[here] = units[rows[here] - b * self.batch_size]
        return out if cols is None else out[:, cols]

    def close(self) -> None:
        """Drop the kept input batches (nothing is open).

        Example:
            acts.close()
        """
        self._batches = ((), {})

    def __repr__(self) -> str:
        return (f"RecomputedActivations({self.network.name}, {self.n_images} images, "
                f"{self.unit} units, layers={self.layers})")
