"""The ablation engines: the network head run once, the tail run on masked copies of its output.

- `TailAblator`: the one tail engine. The target layer's output for a set of images is computed
  (or read from the activation cache) once; masks (full-shape, or channel keep-vectors) multiply
  it, or unit directions are projected out of it, and only the network tail runs, inside one
  `tf.function` whose input signature is fixed, so changing the masks, the cell or the class
  never retraces. Masks and images are batched up to `BATCH_FLOATS` tail-input floats per call;
  grouped convolutions run as one convolution per group (faster with oneDNN on a CPU);
  `precision="bfloat16"` runs a mixed-bfloat16 tail, `storage="float16"` keeps the activations
  in half precision; `shortcut=True` uses the exact Dense shortcut for channel keep-masks where
  the graph has one. It answers class scores and true-class ranks (the H study) and predicted
  classes (the Z study; `tail_engine(...)` builds one for a layer and a set of images).
- `FullEngine`: the Z study's reference, the model rebuilt with a mask layer and run whole.
- `PaperAblator`: the reference engine of the H study, the authors' procedure: per cell, the
  whole model is rebuilt with a literal `Lambda` mask after the target layer and runs.
- The tail models they run (`fast_tail`) and the Dense shortcut's traced step: `kerabl.tails`.
- `predict_batched(model, images, batch_size)`: `predict_on_batch` over batches;
  `check_live_outputs(network, imageset)`: the network's outputs vary across images (constant
  outputs give ranks equal to the class index and NaN statistics).
- `true_class_rank(scores, labels)`: the one place outputs become true-class ranks; every
  engine's `ranks(masks, labels)` is `RankingEngine.ranks`, built on it.
- The one engine vocabulary is `kerabl.choices.ENGINES` ("tail", "full"; the H study's command
  line and results spell them "fast" and "paper"); `rank_engine(...)` (the H study: ranks) and `channel_engine(...)` (the Z study: predicted
  classes under channel keep-masks) to build one.
"""

from __future__ import annotations

import contextlib
import functools
import logging

import numpy as np

from kerabl.choices import ENGINES, ENGINE_SPELLINGS, PRECISIONS, engine_kind
from kerabl.errors import KerablError
from kerabl.graph import apply_chain, as_model, channel_shortcut, check_layer, head_model
from kerabl.replacement import ZERO, Replacement
from kerabl.tails import dense_split, fast_tail, shortcut_function

__all__ = ["BATCH_FLOATS", "ENGINES", "check_live_outputs", "ENGINE_SPELLINGS", "PRECISIONS", "STORAGES", "ChannelEngine",
           "FullEngine", "PaperAblator", "RankingEngine", "TailAblator", "channel_engine",
           "engine_kind", "fast_tail", "predict_batched", "quiet_retracing_warning", "rank_engine",
           "tail_engine", "true_class_rank"]


# One tail call holds at most this many activation floats (masks x images x units, ~128 MB of
# float32). On 2 CPU cores one call per mask, with a class's images split into chunks of this
# size, was fastest (kerabl.bench measures it); on a GPU, a larger value batches several masks.
BATCH_FLOATS = 32 * 1024 * 1024


# The Dense shortcut's calls hold at most this many Dense pre-activation floats.
SHORTCUT_FLOATS = BATCH_FLOATS // 4


# Images per call of the head (and of the full engine when batch_size is None).
HEAD_BATCH = 64


# The Z study's batch_size (masked copies per tail call) defaults to None: by float count.
DEFAULT_BATCH = None


STORAGES = ("float32", "float16")


def _chunks(n_masks: int, n_images: int, per_copy: int, batch_floats: int,
            batch_size: int | None = None):
    """(mask slice, image slice) pairs covering all masks x images: `batch_size` masked copies
    per call, or as many as hold `batch_floats` floats of `per_copy` each (at least one). A
    mask's images are split only when its copies do not fit, and then one mask runs per call."""
    copies = batch_size or max(1, batch_floats // max(per_copy, 1))
    images_per_call = max(1, min(n_images, copies))
    masks_per_call = max(1, copies // images_per_call)
    for m in range(0, n_masks, masks_per_call):
        for i in range(0, n_images, images_per_call):
            yield slice(m, m + masks_per_call), slice(i, i + images_per_call)


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


class RankingEngine:
    """An engine that answers `outputs(masks)`; `ranks(masks, labels)` is built on it, the same
    for every engine.

    Example:
        ranks = TailAblator(model, "conv_3").ranks(masks, labels)   # (n_masks, n_images)
    """

    def outputs(self, masks: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def ranks(self, masks: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Rank of each image's true class under each mask: (n_masks, n_images)."""
        return np.stack([true_class_rank(o, labels) for o in self.outputs(masks)])


class ChannelEngine:
    """Answers `predict(keep)`: the predicted class of every image under each channel keep-mask.

    Example:
        eng = channel_engine(net, images, "conv_5", "tail")
        eng.predict(np.ones((1, eng.n_channels)))   # (1, n_images) predicted classes
    """

    n_channels: int

    def predict(self, keep: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        raise NotImplementedError

    def predict_projected(self, directions: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        raise KerablError("random directions need engine='tail': the full engine only zeroes units")


class TailAblator(ChannelEngine, RankingEngine):
    """The tail engine for one target layer: its output computed (or read from the activation
    cache) once, then only the network tail runs on masked or projected copies of it.

    Example:
        ablator = TailAblator(model, "conv_3")
        ablator.set_images(images)                  # or set_activations(acts) from a cache
        ranks = ablator.ranks(masks, labels)        # (n_masks, n_images), full-shape masks
        preds = ablator.predict(keep)               # (G, n_images) classes, keep (G, C) 0/1

    One `tf.function` with a fixed input signature multiplies the layer output by masks (full
    shape, or channel keep-vectors broadcast over positions) or removes directions from it
    (`predict_projected`), then runs the tail from `fast_tail`; a target inside a residual block
    gets its skip tensors as extra inputs, unmasked and computed by the head. Changing the masks,
    the class or the image count never retraces: `traces` stays 1. Masks and images are batched
    by `_chunks`: `batch_size` copies per call, else `batch_floats` tail-input floats.

    With `shortcut=True` and a `channel_shortcut` at the layer, `predict` on 0/1 keep masks
    corrects the Dense pre-activation per mask and runs only the layers after the Dense
    (`SHORTCUT_FLOATS` pre-activation floats per call); `shortcut_flops` counts its products.

    Args:
        model: a functional Keras model.
        layer: the target layer.
        batch_floats: most tail-input floats per call (see `BATCH_FLOATS`).
        precision: "float32" or "bfloat16" (mixed-precision tail; ranks may differ slightly).
        storage: dtype of the stored activations, "float32" or "float16" (half the memory;
            values beyond float16's range are refused).
        batch_size: masked copies per call instead of the float count (None: by floats).
        shortcut: use the exact Dense shortcut where the layer has one.
    """

    def __init__(self, model, layer: str, batch_floats: int = BATCH_FLOATS,
                 precision: str = "float32", storage: str = "float32", *,
                 batch_size: int | None = None, shortcut: bool = False):
        import tensorflow as tf

        if storage not in STORAGES:
            raise KerablError(f"storage must be one of {', '.join(STORAGES)}; got {storage!r}")
        self.layer = layer
        self.precision = precision
        self.storage = storage
        self.batch_floats = batch_floats
        self.batch_size = batch_size
        self._model = model
        self._head = None
        self._tail = fast_tail(model, layer, precision)
        inputs = self._tail.inputs
        specs = [tf.TensorSpec((None, *t.shape[1:]), storage) for t in inputs]
        self.shape = tuple(int(d) for d in specs[0].shape[1:])
        self.n_channels = self.shape[-1]
        self._n_outputs = int(self._tail.outputs[0].shape[-1])
        vectors = tf.TensorSpec((None,) * len(self.shape) + (self.n_channels,), tf.float32)
        self.traces = 0
        tail, shape, channels = self._tail, self.shape, self.n_channels
        split = dense_split(self._tail) if len(inputs) == 1 else None
        self._back_fn = None
        if split is not None:
            tail, back = split
            width = int(np.prod(back.inputs[0].shape[1:]))
            self._back_width = width

            def back_rows(rows):
                out = back(tf.reshape(tf.cast(rows, back.inputs[0].dtype),
                                      [-1, *back.inputs[0].shape[1:]]), training=False)
                scores = tf.cast(out, tf.float32)
                return scores, tf.argmax(scores, axis=-1, output_type=tf.int32)

            self._back_fn = tf.function(functools.partial(back_rows), input_signature=[
                tf.TensorSpec((None, width), back.inputs[0].dtype)])

        def masked_tail(act, vectors, project, bank, donors, mode, binary, *extras):
            self.traces += 1  # runs only while tracing
            n, n_images = tf.shape(vectors)[0], tf.shape(act)[0]
            act = tf.cast(act, tf.float32)
            keep = tf.expand_dims(vectors, 1)
            has_fill = mode > 0     # 0: zero, 1: mean (bank = the mean), 2: resample (donors)
            fill = tf.cond(mode > 1, lambda: tf.gather(bank, donors), lambda: bank[None])

            def replaced():     # 0/1 masks: the select is keep * a + (1 - keep) * fill exactly
                return tf.cond(binary, lambda: tf.where(keep > 0, act[None], fill),
                               lambda: keep * act[None] + (1.0 - keep) * fill)

            def masked():
                return tf.cond(has_fill, replaced, lambda: keep * act[None])

            def projected():
                def plain():
                    return tf.einsum("b...c,gc->gb...", act, tf.reshape(vectors, [-1, channels]))

                def replaced():    # the direction's coordinate set to the fill's
                    return tf.reduce_sum((act[None] - fill) * keep, axis=-1)

                coef = tf.cond(has_fill, replaced, plain)
                return act[None] - coef[..., None] * keep

            x = tf.reshape(tf.cond(project, projected, masked), [-1, *shape])
            tiled = [tf.tile(tf.cast(e, tf.float32), [n] + [1] * (len(e.shape) - 1))
                     for e in extras]
            out = tail([x, *tiled] if tiled else x, training=False)
            if split is not None:       # the front's rows, for `back_rows` (see `_run`)
                return tf.reshape(out, [n * n_images, -1]), tf.zeros([0], tf.int32)
            scores = tf.reshape(tf.cast(out, tf.float32), [n, n_images, -1])
            return scores, tf.argmax(scores, axis=-1, output_type=tf.int32)

        # A partial per ablator: TensorFlow keys its frequent-retracing warning on the function's
        # code, so plain closures of several layers' ablators would look like one retracing function.
        self._fn = tf.function(functools.partial(masked_tail), input_signature=[
            specs[0], vectors, tf.TensorSpec((), tf.bool),
            tf.TensorSpec((None,) * (len(self.shape) + 1), tf.float32),
            tf.TensorSpec((None, None), tf.int32), tf.TensorSpec((), tf.int32),
            tf.TensorSpec((), tf.bool), *specs[1:]])
        self.replacement: Replacement = ZERO
        self._bank = tf.zeros((1,) * (len(self.shape) + 1))
        self._fill_in = None
        self._inputs: list[np.ndarray] = []
        self.cut = channel_shortcut(model, layer) if shortcut and len(inputs) == 1 else None
        self.shortcut_fn = None
        # FLOPs of the shortcut's products so far (inputs skipped as zero not counted); None
        # without a shortcut, or when the layers after its Dense are not a `dense_chain`.
        self.shortcut_flops: int | None = None
        if self.cut is not None:
            self.shortcut_fn, counted = shortcut_function(model, self.cut)
            self.shortcut_flops = 0 if counted else None

    @property
    def acts(self) -> np.ndarray:
        """The stored target-layer output, (N, *shape)."""
        return self._inputs[0]

    @property
    def trace_count(self) -> int:
        """The most traces of any of the engine's functions (the tail, or its front and Dense
        back; the shortcut): 1, whatever the masks."""
        fns = [self._fn] + [fn for fn in (self._back_fn, self.shortcut_fn) if fn is not None]
        return max(fn.experimental_get_tracing_count() for fn in fns)

    def _store(self, arrays: list[np.ndarray]) -> None:
        """Keep the tail inputs in the storage dtype, refusing values it cannot hold; with the
        shortcut, compute the Dense inputs (N, F) and pre-activations (N, D) once."""
        import tensorflow as tf

        if self.storage == "float16":
            big = max(float(np.abs(a).max(initial=0.0)) for a in arrays)
            if big > float(np.finfo(np.float16).max):  # a float16 bound would overflow `big`
                raise KerablError(f"{self.layer} activations reach {big:.3g}, beyond float16's "
                                  "range: use storage='float32'")
        self._inputs = [np.ascontiguousarray(a, dtype=self.storage) for a in arrays]
        if self.cut is None:
            return
        acts = self._inputs[0].astype(np.float32, copy=False)
        dense = self._model.get_layer(self.cut.dense)
        flat = [np.asarray(apply_chain(self.cut.chain, tf.constant(acts[i:i + HEAD_BATCH])))
                .reshape(min(HEAD_BATCH, len(acts) - i), -1)
                for i in range(0, len(acts), HEAD_BATCH)]
        self.dense_in = np.concatenate(flat)
        pre = tf.matmul(tf.constant(self.dense_in), dense.kernel)
        self.dense_pre = (pre + dense.bias if dense.use_bias else pre).numpy()

    def set_images(self, images: np.ndarray, batch_size: int = HEAD_BATCH) -> None:
        """Compute the target layer's output (and any skip tensors) for `images` once."""
        import tensorflow as tf

        if self._head is None:
            head = head_model(self._model, self.layer)
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

    def set_replacement(self, replacement: Replacement) -> None:
        """What removed units take from now on (`kerabl.replacement`; default zero): a mean
        array of the layer's shape, or donor outputs (bank) and donors (masks or 1, images)."""
        import tensorflow as tf

        self.replacement = replacement
        self._fill_in = None
        values = {"zero": np.zeros((1,) * (len(self.shape) + 1), np.float32),
                  "mean": None if replacement.mean is None else replacement.mean[None],
                  "resample": replacement.bank}[replacement.method]
        self._bank = tf.constant(np.asarray(values, np.float32))     # held, not copied per call

    def _run(self, vectors: np.ndarray, project: bool, rows, classes: bool) -> np.ndarray:
        """Tail scores (N_masks, N, n_outputs), or with `classes` their argmax (N_masks, N)."""
        import tensorflow as tf

        if not self._inputs:
            raise KerablError("no activations yet: call set_images or set_activations first")
        inputs = self._inputs if rows is None else [x[rows] for x in self._inputs]
        replacement = self.replacement.for_images(rows)
        mode = tf.constant({"zero": 0, "mean": 1, "resample": 2}[replacement.method])
        donors = (np.asarray(replacement.donors, np.int32) if replacement.method == "resample"
                  else np.zeros((1, 1), np.int32))
        binary = tf.constant(bool(np.isin(vectors, (0.0, 1.0)).all()))
        n_images = len(inputs[0])
        per_copy = sum(int(np.prod(x.shape[1:])) for x in inputs)
        if classes:
            out = np.empty((len(vectors), n_images), dtype=np.int64)
        else:
            out = np.empty((len(vectors), n_images, self._n_outputs), dtype=np.float32)
        flag = tf.constant(project)
        pending: list = []
        for ms, ims in _chunks(len(vectors), n_images, per_copy, self.batch_floats,
                               self.batch_size):
            chosen = (donors[ms if len(donors) > 1 else slice(None)][:, ims]
                      if replacement.method == "resample" else donors)
            scores, preds = self._fn(tf.constant(inputs[0][ims]), tf.constant(vectors[ms]), flag,
                                     self._bank, tf.constant(chosen), mode, binary,
                                     *[tf.constant(e[ims]) for e in inputs[1:]])
            if self._back_fn is None:
                out[ms, ims] = (preds if classes else scores).numpy()
                continue
            pending.append((ms, ims, scores))
            if sum(int(p[2].shape[0]) for p in pending) * self._back_width >= self.batch_floats:
                self._run_back(pending, out, classes)
        if pending:
            self._run_back(pending, out, classes)
        return out

    def _run_back(self, pending: list, out: np.ndarray, classes: bool) -> None:
        """The Dense back of a split tail on the front rows of several calls at once (oneDNN
        runs a float32 product of <= 200 rows on one core here: 85 GFLOP/s against 175 from 300
        rows), written into `out`; empties `pending`."""
        import tensorflow as tf

        scores, preds = self._back_fn(tf.concat([p[2] for p in pending], axis=0))
        result = (preds if classes else scores).numpy()
        start = 0
        for ms, ims, rows in pending:
            n_masks = len(range(*ms.indices(out.shape[0])))
            n_images = len(range(*ims.indices(out.shape[1])))
            block = result[start:start + int(rows.shape[0])]
            out[ms, ims] = block.reshape((n_masks, n_images, *block.shape[1:]))
            start += int(rows.shape[0])
        pending.clear()

    def _channel_vectors(self, vectors: np.ndarray) -> np.ndarray:
        """(G, C) keep-masks or directions as (G, 1, ..., 1, C), broadcast over positions."""
        vectors = np.asarray(vectors, dtype=np.float32)
        return vectors.reshape((-1, *[1] * (len(self.shape) - 1), self.n_channels))

    def outputs(self, masks: np.ndarray) -> np.ndarray:
        """Network outputs with each mask applied: (n_masks, n_images, n_outputs)."""
        masks = np.asarray(masks, dtype=np.float32).reshape((-1, *self.shape))
        return self._run(masks, False, None, classes=False)

    def predict(self, keep, rows=None):
        """Predicted classes (G, N) with the channels where a keep row (G, C) is 0 zeroed, on the
        images `rows` (default all); through the Dense shortcut where it applies."""
        drops = None if self.cut is None else self._drops(keep)
        removed = None if drops is None else self._removed_inputs(rows)
        if removed is None:
            return self._run(self._channel_vectors(keep), False, rows, classes=True)
        index, weight = drops
        dense_in, dense_pre = removed, (self.dense_pre if rows is None else self.dense_pre[rows])
        out = np.empty((len(index), len(dense_in)), dtype=np.int64)
        for ms, ims in _chunks(len(index), len(dense_in), dense_pre.shape[1], SHORTCUT_FLOATS,
                               self.batch_size):
            preds, flops = self.shortcut_fn(dense_in[ims], dense_pre[ims], index[ms], weight[ms])
            if self.shortcut_flops is not None:
                self.shortcut_flops += int(flops)
            out[ms, ims] = preds.numpy()
        return out

    def _removed_inputs(self, rows) -> np.ndarray | None:
        """What a removed channel takes out of each Dense input: the input minus its
        replacement's (the replacement through the same weightless chain), (N, F); None where
        the replacement differs per mask (the plain tail runs then)."""
        import tensorflow as tf

        dense_in = self.dense_in if rows is None else self.dense_in[rows]
        rep = self.replacement
        if rep.is_zero:
            return dense_in
        if rep.method == "resample" and len(rep.donors) > 1:
            return None
        if self._fill_in is None:
            source = rep.mean[None] if rep.method == "mean" else rep.bank
            self._fill_in = np.concatenate([
                np.asarray(apply_chain(self.cut.chain, tf.constant(
                    np.asarray(source[i:i + HEAD_BATCH], np.float32)))).reshape(
                    min(HEAD_BATCH, len(source) - i), -1)
                for i in range(0, len(source), HEAD_BATCH)])
        if rep.method == "mean":
            return dense_in - self._fill_in
        donors = rep.for_images(rows).donors[0]
        return dense_in - self._fill_in[donors]

    def predict_projected(self, directions, rows=None):
        """Predicted classes (G, N) with each unit direction (G, C) removed at every position:
        a -> a - (a . d) d."""
        return self._run(self._channel_vectors(directions), True, rows, classes=True)

    def _drops(self, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """Zeroed channels of 0/1 keep masks as padded (G, K) indices and 0/1 weights; None when
        the masks are not 0/1 or drop so many channels that the plain tail is cheaper."""
        keep = np.asarray(keep)
        if not np.isin(keep, (0.0, 1.0)).all():
            return None
        dropped = keep == 0
        k = max(1, int(dropped.sum(axis=1).max(initial=0)))
        if 2 * k * self.cut.positions.shape[1] > self.dense_in.shape[1]:
            return None
        order = np.argsort(~dropped, axis=1, kind="stable")[:, :k]
        weight = np.take_along_axis(dropped, order, axis=1).astype(np.float32)
        return (order * weight).astype(np.int32), weight


class PaperAblator(RankingEngine):
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

        self.replacement: Replacement = ZERO

    def set_images(self, images: np.ndarray, batch_size: int | None = None) -> None:
        self._images = np.asarray(images, dtype=np.float32)

    def set_replacement(self, replacement: Replacement) -> None:
        """What removed units take (`kerabl.replacement`; default zero)."""
        self.replacement = replacement

    def outputs(self, masks: np.ndarray) -> np.ndarray:
        """Network outputs (n_masks, n_images, n_outputs): per mask, the model rebuilt with a
        Lambda after the layer and run whole (under resample, per batch of images: each batch's
        donor values are the Lambda's constant)."""
        masks = np.asarray(masks, dtype=np.float32).reshape((-1, *self.shape))
        with quiet_retracing_warning():  # a rebuild per cell is the point of this engine
            return np.stack([replaced_outputs(self._model, self.layer, mask, self._images,
                                              self.replacement, g, self.batch_size)
                             for g, mask in enumerate(masks)])


def replaced_outputs(model, layer: str, mask: np.ndarray, images: np.ndarray,
                     replacement: Replacement, index: int = 0, batch_size: int = 64) -> np.ndarray:
    """The whole model's outputs on `images` with `layer`'s output replaced under mask number
    `index` (`lambda_masked_model`): one rebuild for zero and mean, one per batch for resample.

    Example:
        scores = replaced_outputs(model, "conv_3", mask, images, Replacement("mean", mean=m))
    """
    from kerabl.masks import lambda_masked_model

    if replacement.method != "resample":
        fill = replacement.fill()
        rebuilt = lambda_masked_model(model, layer, mask, None if fill is None else fill[0, 0])
        return rebuilt.predict(images, batch_size=batch_size, verbose=0)
    parts = []
    for start in range(0, len(images), batch_size):
        batch = slice(start, min(start + batch_size, len(images)))
        fill = replacement.fill(slice(index, index + 1), batch)[0]
        parts.append(np.asarray(lambda_masked_model(model, layer, mask, fill)
                                .predict_on_batch(images[batch])))
    return np.concatenate(parts)


class _DropRetracing(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "triggered tf.function retracing" not in record.getMessage()


@contextlib.contextmanager
def quiet_retracing_warning():
    """Within the block, drop TensorFlow's 'triggered tf.function retracing' warning (it is
    expected when models are rebuilt on purpose); the logger is as before afterwards.

    Example:
        with quiet_retracing_warning():
            for cells in batches: paper_engine(model, layer, cells)
    """
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


class FullEngine(ChannelEngine):
    """The model rebuilt with a mask layer after the target; a full forward pass per mask (the
    Z study's "full" engine, the reference of the tail engine's predicted classes).

    Example:
        eng = FullEngine(model, "conv_5", images, batch_size=None)
        eng.predict(keep)     # (G, n_images) predicted classes, keep (G, C) 0/1
    """

    def __init__(self, model, layer: str, images: np.ndarray, batch_size: int | None):
        from kerabl.masks import masked_model, n_units  # loads TensorFlow: on first use

        self.masked = masked_model(model, [layer])
        self.model = model
        self.layer = layer
        self.images = images
        self.batch_size = batch_size or HEAD_BATCH
        self.n_channels = int(n_units(model, layer, "channel"))
        self.shape = tuple(int(d) for d in model.get_layer(layer).output.shape[1:])
        self.replacement: Replacement = ZERO
        self._acts = None

    def set_replacement(self, replacement: Replacement) -> None:
        """What removed channels take (`kerabl.replacement`; default zero)."""
        self.replacement = replacement

    def predict(self, keep, rows=None):
        from kerabl.masks import ablated, unit_mask

        images = self.images if rows is None else self.images[rows]
        replacement = self.replacement.for_images(rows)
        out = []
        for g, vector in enumerate(np.asarray(keep)):
            units = np.flatnonzero(vector == 0)
            if replacement.is_zero:
                with ablated(self.masked, {self.layer: units}, unit="channel"):
                    probs = predict_batched(self.masked, images, self.batch_size)[0]
            else:       # a full forward pass with the layer's output replaced
                with quiet_retracing_warning():
                    probs = replaced_outputs(self.model, self.layer,
                                             unit_mask(self.shape, units, "channel"), images,
                                             replacement, g, self.batch_size)
            out.append(probs.argmax(axis=-1))
        return np.stack(out).astype(np.int64)

    @property
    def acts(self) -> np.ndarray:
        """The layer's output on the images (computed once, for mean and resample ablation)."""
        if self._acts is None:
            from kerabl.graph import head_model

            self._acts = predict_batched(head_model(self.model, self.layer), self.images,
                                         self.batch_size)[0]
        return self._acts


def channel_engine(network_or_model, images, layer: str, engine: str, batch_size: int | None,
            shortcut: bool = True) -> ChannelEngine:
    """A "tail" (`TailAblator`, images set) or "full" (`FullEngine`) engine for channel sweeps.

    Example:
        eng = channel_engine(net, images, "conv_5", "full", None)   # the Z study's reference
        eng.predict(keep)     # (G, n_images) predicted classes, keep (G, C) 0/1
    """
    engine = engine_kind(engine)
    if batch_size is not None and batch_size < 1:
        raise KerablError(f"batch_size {batch_size} must be a positive integer (or None)")
    model = as_model(network_or_model)
    check_layer(model, layer)
    images = np.asarray(images, dtype=np.float32)
    if engine == "full":
        return FullEngine(model, layer, images, batch_size)
    eng = TailAblator(model, layer, batch_size=batch_size, shortcut=shortcut)
    eng.set_images(images)
    return eng


def tail_engine(network_or_model, images: np.ndarray, layer: str, *,
                batch_size: int | None = DEFAULT_BATCH, shortcut: bool = True) -> TailAblator:
    """The tail engine of `single_unit_ablation` for one layer, for sweeps timed step by step.

    Example:
        eng = tail_engine(net, images, "conv_5")       # head run once; eng.cut: the shortcut
        preds = eng.predict(keep)                      # (G, N) predicted classes, keep (G, C) 0/1

    A `TailAblator` with the Dense shortcut (unless `shortcut=False`) and `images` set:
    `predict(keep, rows=None)` zeroes the channels where a keep row is 0; `predict_projected`
    removes directions; `trace_count` stays 1 per traced function whatever the masks.
    """
    return channel_engine(network_or_model, images, layer, "tail", batch_size, shortcut)


def rank_engine(engine: str, model, layer: str, precision: str = "float32") -> RankingEngine:
    """The H study's engine for one layer: a `TailAblator` ("tail"/"fast", in `precision`) or a
    `PaperAblator` ("full"/"paper", the authors' float32 model); set its images, then `ranks`.

    Example:
        ablator = rank_engine("fast", model, "conv_3")
        ablator.set_images(images)
        ranks = ablator.ranks(masks, labels)      # (n_masks, n_images)
    """
    if engine_kind(engine) == "full":
        return PaperAblator(model, layer)
    return TailAblator(model, layer, precision=precision)


LIVE_PROBE_IMAGES = 8     # images, evenly spaced over the set, the liveness check runs
CONSTANT_SPREAD = 1e-6    # outputs that differ less than this across images count as constant


def check_live_outputs(network, imageset=None, *, images=None, labels=None) -> None:
    """Stop when the network gives (nearly) the same outputs for different images.

    Example:
        check_live_outputs(load_network("demo"), digits_imageset())   # passes silently
        check_live_outputs(net, images=x, labels=y)                   # already loaded inputs

    `LIVE_PROBE_IMAGES` images evenly spaced over the set run (spread over its classes: a
    confident network gives the same saturated outputs for images of one class).
    """
    n = len(imageset.labels) if imageset is not None else len(labels)
    rows = np.unique(np.linspace(0, n - 1, min(n, LIVE_PROBE_IMAGES)).astype(np.int64))
    if len(rows) < 2:
        return
    if images is None:
        images = imageset.load(network.input_size, network.preprocess, rows=rows)
    else:
        images = np.asarray(images)[rows]
    scores = predict_batched(network.model, images, len(rows))[0]
    if float(np.ptp(scores, axis=0).max()) <= CONSTANT_SPREAD:
        raise KerablError(
            f"{network.name} with weights {network.weights_id} gives the same outputs "
            f"(to {CONSTANT_SPREAD:g}) for {len(rows)} different images: its ranks and "
            "deficits would be meaningless; use other weights")
