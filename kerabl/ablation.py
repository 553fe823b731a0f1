"""Rank and rank deficit, and the two ablation engines of the H study.

- `true_class_rank(scores, labels)`: 0-based position of the true class in the descending order
  of the network's outputs (DESIGN 2.5); ties are broken by output index, as a stable sort would.
- `mean_rank_deficit(before, after, clip=True)`: the authors' `mean_rank_deficit`.
- `TailAblator`: the fast engine. The target layer's output for a class's images is computed (or
  read from the activation cache) once; each cell's mask multiplies it and only the network tail
  runs, inside one `tf.function` per layer whose input signature is fixed, so changing the mask,
  the cell or the class never retraces. Several cells' masks run in one batch.
- `PaperAblator`: the reference engine, the authors' procedure: per cell, the whole model is
  rebuilt with a literal `Lambda` mask after the target layer and the full network runs.

Both engines answer `ranks(masks) -> (n_masks, n_images)` for the same images, so a sweep can use
either and a test can compare them.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

# Activations of several masked copies are batched up to this many floats (~256 MB of float32).
BATCH_FLOATS = 64 * 1024 * 1024


def true_class_rank(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Position of each image's true class when outputs are sorted by score, descending.

    Example:
        true_class_rank(np.array([[0.1, 0.7, 0.2]]), np.array([2]))  # array([1])

    Args:
        scores: (N, n_classes) network outputs.
        labels: (N,) true output index of each image.

    Returns:
        (N,) int64 ranks: the number of outputs scoring higher than the true class, plus the
        number scoring the same at a lower index (the order of a stable descending sort).
    """
    scores = np.asarray(scores)
    labels = np.asarray(labels, dtype=np.int64)
    true = scores[np.arange(len(labels)), labels][:, None]
    index = np.arange(scores.shape[1])[None, :]
    higher = scores > true
    tied_before = (scores == true) & (index < labels[:, None])
    return (higher | tied_before).sum(axis=1).astype(np.int64)


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


class TailAblator:
    """Fast engine for one target layer: mask the cached layer output, run only the tail.

    Example:
        ablator = TailAblator(model, "conv_3")
        ablator.set_images(images)                  # or set_activations(acts) from a cache
        ranks = ablator.ranks(masks, labels)        # (n_masks, n_images)

    The tail model comes from `kerabl.masking.tail_model`; a target inside a residual block gets
    its skip tensors as extra inputs, which are unmasked and computed by the head model.
    """

    def __init__(self, model, layer: str, batch_floats: int = BATCH_FLOATS):
        import tensorflow as tf

        from kerabl.masking import head_model, tail_model

        self.layer = layer
        self._model = model
        self._head = None
        self._head_model = head_model
        self._tail = tail_model(model, layer)
        specs = [tf.TensorSpec((None, *t.shape[1:]), t.dtype) for t in self._tail.inputs]
        self.shape = tuple(int(d) for d in specs[0].shape[1:])
        self.batch_floats = batch_floats
        self.traces = 0
        tail = self._tail

        def masked_tail(act, mask, *extras):
            self.traces += 1  # runs only while tracing
            n_masks = tf.shape(mask)[0]
            n_images = tf.shape(act)[0]
            x = tf.expand_dims(mask, 1) * tf.expand_dims(act, 0)
            x = tf.reshape(x, tf.concat([[n_masks * n_images], tf.shape(act)[1:]], 0))
            tiled = [tf.repeat(tf.expand_dims(e, 0), n_masks, axis=0) for e in extras]
            tiled = [tf.reshape(e, tf.concat([[n_masks * n_images], tf.shape(e)[2:]], 0))
                     for e in tiled]
            out = tail([x, *tiled] if tiled else x, training=False)
            return tf.reshape(out, [n_masks, n_images, -1])

        self._fn = tf.function(masked_tail, input_signature=[specs[0], specs[0], *specs[1:]])
        self._inputs: list[np.ndarray] = []

    def set_images(self, images: np.ndarray, batch_size: int = 64) -> None:
        """Compute the target layer's output (and any skip tensors) for `images` once."""
        if self._head is None:
            self._head = self._head_model(self._model, self.layer)
        parts = [self._head.predict_on_batch(images[i:i + batch_size])
                 for i in range(0, len(images), batch_size)]
        parts = [p if isinstance(p, (list, tuple)) else [p] for p in parts]
        self._inputs = [np.concatenate([p[j] for p in parts]).astype(np.float32)
                        for j in range(len(parts[0]))]

    def set_activations(self, acts: np.ndarray) -> None:
        """Use stored activations of the target layer, (N, n_units) flat or (N, *shape).

        Only for cut points (a tail with no extra inputs): the cache holds the layer output alone.
        """
        if len(self._tail.inputs) > 1:
            raise ValueError(f"{self.layer} is not a cut point: use set_images")
        self._inputs = [np.asarray(acts, dtype=np.float32).reshape((-1, *self.shape))]

    def outputs(self, masks: np.ndarray) -> np.ndarray:
        """Network outputs with each mask applied: (n_masks, n_images, n_outputs)."""
        import tensorflow as tf

        masks = np.asarray(masks, dtype=np.float32).reshape((-1, *self.shape))
        n_images = len(self._inputs[0])
        per_mask = n_images * int(np.prod(self.shape))
        step = max(1, self.batch_floats // max(per_mask, 1))
        extras = [tf.constant(e) for e in self._inputs[1:]]
        act = tf.constant(self._inputs[0])
        out = [self._fn(act, tf.constant(masks[i:i + step]), *extras).numpy()
               for i in range(0, len(masks), step)]
        return np.concatenate(out)

    def ranks(self, masks: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Rank of each image's true class under each mask: (n_masks, n_images)."""
        out = self.outputs(masks)
        return np.stack([true_class_rank(o, labels) for o in out])


class PaperAblator:
    """Reference engine, the authors' procedure: rebuild with a Lambda mask per cell, full forward.

    Example:
        ablator = PaperAblator(model, "conv_3")
        ablator.set_images(images)
        ranks = ablator.ranks(masks, labels)
    """

    def __init__(self, model, layer: str, batch_size: int = 64):
        from kerabl.masking import n_units  # noqa: F401  (fails early if masking is unavailable)

        self.layer = layer
        self._model = model
        self.batch_size = batch_size
        self.shape = tuple(int(d) for d in model.get_layer(layer).output.shape[1:])
        self._images: np.ndarray | None = None

    def set_images(self, images: np.ndarray, batch_size: int | None = None) -> None:
        self._images = np.asarray(images, dtype=np.float32)

    def outputs(self, masks: np.ndarray) -> np.ndarray:
        from kerabl.masking import lambda_masked_model

        masks = np.asarray(masks, dtype=np.float32).reshape((-1, *self.shape))
        result = []
        for mask in masks:
            rebuilt = lambda_masked_model(self._model, self.layer, mask)
            result.append(rebuilt.predict(self._images, batch_size=self.batch_size, verbose=0))
        return np.stack(result)

    def ranks(self, masks: np.ndarray, labels: np.ndarray) -> np.ndarray:
        out = self.outputs(masks)
        return np.stack([true_class_rank(o, labels) for o in out])


ENGINES = {"fast": TailAblator, "paper": PaperAblator}


def cell_masks(shape: Sequence[int], cells: Sequence[np.ndarray], unit: str) -> np.ndarray:
    """One 0/1 mask per cell over a layer output of `shape`: (n_cells, *shape) float32.

    Example:
        cell_masks((2, 2, 3), [np.array([0]), np.array([1, 2])], "channel").shape  # (2, 2, 2, 3)
    """
    from kerabl.masking import unit_mask

    return np.stack([unit_mask(tuple(shape), units, unit) for units in cells])
