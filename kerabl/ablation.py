"""Rank and rank deficit, and the two ablation engines of the H study.

- `true_class_rank(scores, labels)`: 0-based position of the true class in the descending order
  of the network's outputs (DESIGN 2.5); ties are broken by output index, as a stable sort would.
- `mean_rank_deficit(before, after, clip=True)`: the authors' `mean_rank_deficit`.
- `TailAblator`: the fast engine. The target layer's output for a class's images is computed (or
  read from the activation cache) once; each cell's mask multiplies it and only the network tail
  runs, inside one `tf.function` per layer whose input signature is fixed, so changing the mask,
  the cell or the class never retraces. Masks and images are batched up to `BATCH_FLOATS`
  activation floats per call; grouped convolutions run as one convolution per group (faster with
  oneDNN on a CPU); `precision="bfloat16"` runs a mixed-bfloat16 tail, `storage="float16"` keeps
  the activations in half precision.
- `fast_tail(model, layer, precision)`: the tail model the fast engine runs.
- `PaperAblator`: the reference engine, the authors' procedure: per cell, the whole model is
  rebuilt with a literal `Lambda` mask after the target layer and the full network runs.

Both engines answer `ranks(masks) -> (n_masks, n_images)` for the same images, so a sweep can use
either and a test can compare them.
"""

from __future__ import annotations

import contextlib
import functools
import logging

from typing import Sequence

import numpy as np

from kerabl.errors import KerablError

# One tail call holds at most this many activation floats (masks x images x units, ~128 MB of
# float32). On 2 CPU cores one call per mask, with a class's images split into chunks of this
# size, was fastest (kerabl.bench measures it); on a GPU, a larger value batches several masks.
BATCH_FLOATS = 32 * 1024 * 1024
PRECISIONS = ("float32", "bfloat16")
STORAGES = ("float32", "float16")


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


def _split_groups(conv):
    """A function computing `conv` (a Conv2D with groups > 1) as one convolution per group.

    oneDNN on a CPU runs `Conv2D(groups=2)` slower than two plain convolutions plus a concat
    (kerabl.bench measures both); the result equals the grouped layer to float rounding.
    """
    import tensorflow as tf

    groups, filters = conv.groups, conv.filters
    per_out = filters // groups
    strides, dilations = list(conv.strides), list(conv.dilation_rate)
    padding = conv.padding.upper()

    def call(x):
        per_in = x.shape[-1] // groups
        kernel = tf.cast(conv.kernel, x.dtype)
        parts = [tf.nn.conv2d(x[..., g * per_in:(g + 1) * per_in],
                              kernel[..., g * per_out:(g + 1) * per_out],
                              strides=strides, padding=padding, dilations=dilations)
                 for g in range(groups)]
        y = tf.concat(parts, axis=-1)
        if conv.use_bias:
            y = tf.nn.bias_add(y, tf.cast(conv.bias, x.dtype))
        return conv.activation(y)

    return call


def _splittable(layer) -> bool:
    """A grouped channels-last Conv2D whose groups run faster as separate convolutions."""
    import keras

    return (type(layer) is keras.layers.Conv2D and layer.groups > 1
            and layer.data_format == "channels_last" and layer.padding in ("valid", "same"))


def _bfloat16_copy(tail):
    """`tail` rebuilt with its convolution and dense layers in mixed bfloat16 (weights copied).

    Layers without weights (pooling, LRN: no bfloat16 CPU kernel) stay float32, and so does the
    last weighted layer (the logits), so that the scores do not tie in bfloat16.
    """
    import keras

    weighted = [lay.name for lay in tail.layers if lay.weights][:-1]

    def clone(layer):
        config = layer.get_config()
        if layer.name in weighted:
            config = {**config, "dtype": "mixed_bfloat16"}
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(tail, clone_function=clone)
    for old, new in zip(tail.layers, copy.layers):
        new.set_weights(old.get_weights())
    return copy


def fast_tail(model, layer: str, precision: str = "float32"):
    """The network tail after `layer`, arranged to run fast: grouped convolutions split per group,
    and in `precision="bfloat16"` a mixed-bfloat16 copy of the tail.

    Example:
        tail = fast_tail(net.model, "conv_3")
        scores = tail.predict_on_batch(head_model(net.model, "conv_3").predict_on_batch(x))

    Args:
        model: a functional Keras model.
        layer: the cut layer (see `kerabl.masking.tail_model`).
        precision: "float32" (equal to the model up to float rounding) or "bfloat16".

    Returns:
        A functional model with the inputs of `tail_model(model, layer)`.
    """
    import keras

    from kerabl.masking import tail_model

    if precision not in PRECISIONS:
        raise KerablError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    tail = tail_model(model, layer)
    if precision == "bfloat16":
        tail = _bfloat16_copy(tail)
    if not any(_splittable(lay) for lay in tail.layers):
        return tail

    def call_function(lay, *args, **kwargs):
        if _splittable(lay):
            split = keras.layers.Lambda(_split_groups(lay), name=f"{lay.name}_split",
                                        dtype=lay.dtype_policy)
            return split(*args)
        return lay(*args, **kwargs)

    return keras.models.clone_model(tail, clone_function=lambda lay: lay,
                                    call_function=call_function)


def _chunks(n_masks: int, n_images: int, per_image: int, batch_floats: int):
    """(mask slice, image slice) pairs covering all masks x images, each within `batch_floats`."""
    images_per_call = max(1, min(n_images, batch_floats // max(per_image, 1)))
    masks_per_call = max(1, batch_floats // max(per_image * n_images, 1))
    if images_per_call < n_images:
        masks_per_call = 1
    for m in range(0, n_masks, masks_per_call):
        for i in range(0, n_images, images_per_call):
            yield slice(m, m + masks_per_call), slice(i, i + images_per_call)


class TailAblator:
    """Fast engine for one target layer: mask the cached layer output, run only the tail.

    Example:
        ablator = TailAblator(model, "conv_3")
        ablator.set_images(images)                  # or set_activations(acts) from a cache
        ranks = ablator.ranks(masks, labels)        # (n_masks, n_images)

    The tail model comes from `fast_tail` (`kerabl.masking.tail_model` with grouped convolutions
    split); a target inside a residual block gets its skip tensors as extra inputs, which are
    unmasked and computed by the head model. The tail is built and traced once per ablator:
    `traces` stays 1 whatever the masks, classes and image counts.

    Args:
        model: a functional Keras model.
        layer: the target layer.
        batch_floats: most activation floats per tail call (see `BATCH_FLOATS`).
        precision: "float32" or "bfloat16" (mixed-precision tail; ranks may differ slightly).
        storage: dtype of the stored activations, "float32" or "float16" (half the memory;
            values beyond float16's range are refused).
    """

    def __init__(self, model, layer: str, batch_floats: int = BATCH_FLOATS,
                 precision: str = "float32", storage: str = "float32"):
        import tensorflow as tf

        from kerabl.masking import head_model

        if storage not in STORAGES:
            raise KerablError(f"storage must be one of {', '.join(STORAGES)}; got {storage!r}")
        self.layer = layer
        self.precision = precision
        self.storage = storage
        self._model = model
        self._head = None
        self._head_model = head_model
        self._tail = fast_tail(model, layer, precision)
        inputs = self._tail.inputs
        specs = [tf.TensorSpec((None, *t.shape[1:]), storage) for t in inputs]
        mask_spec = tf.TensorSpec((None, *inputs[0].shape[1:]), tf.float32)
        self.shape = tuple(int(d) for d in specs[0].shape[1:])
        self.batch_floats = batch_floats
        self.traces = 0
        tail = self._tail

        def masked_tail(act, mask, *extras):
            self.traces += 1  # runs only while tracing
            n_masks = tf.shape(mask)[0]
            act = tf.cast(act, tf.float32)
            x = tf.expand_dims(mask, 1) * tf.expand_dims(act, 0)
            x = tf.reshape(x, tf.concat([[-1], tf.shape(act)[1:]], 0))
            tiled = [tf.tile(tf.cast(e, tf.float32), [n_masks] + [1] * (len(e.shape) - 1))
                     for e in extras]
            out = tail([x, *tiled] if tiled else x, training=False)
            return tf.reshape(tf.cast(out, tf.float32), [n_masks, tf.shape(act)[0], -1])

        # A partial per ablator: TensorFlow keys its frequent-retracing warning on the function's
        # code, so plain closures of several layers' ablators would look like one retracing function.
        self._fn = tf.function(functools.partial(masked_tail),
                               input_signature=[specs[0], mask_spec, *specs[1:]])
        self._inputs: list[np.ndarray] = []

    def _store(self, arrays: list[np.ndarray]) -> None:
        """Keep the tail inputs in the storage dtype, refusing values it cannot hold."""
        if self.storage == "float16":
            big = max(float(np.abs(a).max(initial=0.0)) for a in arrays)
            if big > float(np.finfo(np.float16).max):  # a float16 bound would overflow `big`
                raise KerablError(f"{self.layer} activations reach {big:.3g}, beyond float16's "
                                  "range: use storage='float32'")
        self._inputs = [np.ascontiguousarray(a, dtype=self.storage) for a in arrays]

    def set_images(self, images: np.ndarray, batch_size: int = 64) -> None:
        """Compute the target layer's output (and any skip tensors) for `images` once."""
        import tensorflow as tf

        if self._head is None:
            head = self._head_model(self._model, self.layer)
            self._head = tf.function(functools.partial(head, training=False), input_signature=[
                tf.TensorSpec((None, *head.inputs[0].shape[1:]), tf.float32)])
        parts = [self._head(tf.constant(images[i:i + batch_size], tf.float32))
                 for i in range(0, len(images), batch_size)]
        parts = [[t.numpy() for t in p] if isinstance(p, (list, tuple)) else [p.numpy()]
                 for p in parts]
        self._store([np.concatenate([np.asarray(p[j]) for p in parts])
                     for j in range(len(parts[0]))])

    def set_activations(self, acts: np.ndarray) -> None:
        """Use stored activations of the target layer, (N, n_units) flat or (N, *shape).

        Only for cut points (a tail with no extra inputs): the cache holds the layer output alone.
        """
        if len(self._tail.inputs) > 1:
            raise KerablError(f"{self.layer} is not a cut point: use set_images")
        self._store([np.asarray(acts).reshape((-1, *self.shape))])

    def outputs(self, masks: np.ndarray) -> np.ndarray:
        """Network outputs with each mask applied: (n_masks, n_images, n_outputs)."""
        import tensorflow as tf

        if not self._inputs:
            raise KerablError("no activations yet: call set_images or set_activations first")
        masks = np.asarray(masks, dtype=np.float32).reshape((-1, *self.shape))
        n_images = len(self._inputs[0])
        per_image = int(np.prod(self.shape))
        out = None
        for ms, ims in _chunks(len(masks), n_images, per_image, self.batch_floats):
            part = self._fn(*[tf.constant(self._inputs[0][ims]), tf.constant(masks[ms]),
                              *[tf.constant(e[ims]) for e in self._inputs[1:]]]).numpy()
            if out is None:
                out = np.empty((len(masks), n_images, part.shape[-1]), dtype=np.float32)
            out[ms, ims] = part
        return out

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
        with quiet_retracing_warning():  # a rebuild per cell is the point of this engine
            for mask in masks:
                rebuilt = lambda_masked_model(self._model, self.layer, mask)
                result.append(rebuilt.predict(self._images, batch_size=self.batch_size, verbose=0))
        return np.stack(result)

    def ranks(self, masks: np.ndarray, labels: np.ndarray) -> np.ndarray:
        out = self.outputs(masks)
        return np.stack([true_class_rank(o, labels) for o in out])


ENGINES = {"fast": TailAblator, "paper": PaperAblator}


class _DropRetracing(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "triggered tf.function retracing" not in record.getMessage()


@contextlib.contextmanager
def quiet_retracing_warning():
    """Within the block, drop TensorFlow's 'triggered tf.function retracing' warning (it is
    expected when models are rebuilt on purpose); the logger is as before afterwards."""
    logger, drop = logging.getLogger("tensorflow"), _DropRetracing()
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


def predict_batched(model, images: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """`model.predict_on_batch` over `images` in batches: each output concatenated, float32.

    Example:
        probs = predict_batched(net.model, images, 64)[0]   # (N, n_classes)
    """
    with quiet_retracing_warning():  # one predict function per head or rebuilt model, by design
        parts = [model.predict_on_batch(images[i:i + batch_size])
                 for i in range(0, len(images), batch_size)]
    parts = [list(p) if isinstance(p, (list, tuple)) else [p] for p in parts]
    return [np.concatenate([p[j] for p in parts]).astype(np.float32) for j in range(len(parts[0]))]


def cell_masks(shape: Sequence[int], cells: Sequence[np.ndarray], unit: str) -> np.ndarray:
    """One 0/1 mask per cell over a layer output of `shape`: (n_cells, *shape) float32.

    Example:
        cell_masks((2, 2, 3), [np.array([0]), np.array([1, 2])], "channel").shape  # (2, 2, 2, 3)
    """
    from kerabl.masking import unit_mask

    return np.stack([unit_mask(tuple(shape), units, unit) for units in cells])
