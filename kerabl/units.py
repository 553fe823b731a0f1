"""The Z study (Zhou et al. 2018): single channel units ablated one at a time, and what predicts it.

Ablation (TensorFlow is imported only inside these functions):

- `single_unit_ablation(...)`: per-class accuracy with each channel zeroed, and the drops.
- `greedy_ablation(...)`: a class's accuracy as units are ablated greedily (the most harmful first).
- `random_order_ablation(...)`: the same curve for random unit orders, one per seed.
- `random_direction_ablation(...)`: zero one coordinate of a randomly rotated channel space.
- `run_z_study(...)`: all of the above for several layers, into a resumable HDF5 results file.
- `channel_shortcut(model, layer)`: the exact linear shortcut of channel
  ablation where the layer feeds a Dense through pooling / flatten only; `tail_engine(...)`,
  `keep_masks(...)`: the tail engine itself, for timing sweeps.

Unit attributes (numpy only):

- `l1_norms(model, layer)`, `class_correlation(acts, probs)`, `class_means(acts, labels, classes)`,
  `selectivity_index(acts, labels, classes)`, `top_activating(acts, k)`,
  `attribute_drop_correlations(attrs, overall_drop, max_class_drop)`.

Results (no TensorFlow import):

- `ZResults.open(path)`: reader of a results file; `export_units_csv(z_path, csv_path)`.

Engines. `engine="tail"` computes the target layer's output (and any skip tensors, for targets
that are not cut points) once, then runs only the network tail on transformed copies of it inside
one `tf.function` with a fixed input signature: several units' copies share one batch and changing
the unit never retraces. `engine="full"` rebuilds the model with a mask layer after the target and
runs the whole network per unit (the reference the tail engine is checked against).

Shortcut. Where the target feeds a Dense layer through channel-wise weightless layers only
(max/average pooling, padding, cropping, flatten, dropout: a zeroed channel stays a zeroed
channel, e.g. AlexNet conv_5 -> pool_5 -> flatten -> dense_1), the Dense pre-activation is
computed once and each unit's ablation subtracts that channel's inputs times their kernel rows
(36 of 9216 for AlexNet); only the layers after the Dense run, as one batch of units x images.
Where those layers are Dense layers, activations and dropouts only (`dense_chain`), each Dense
multiplies only the inputs that are nonzero in some row of the batch (ReLU leaves many exact
zeros). Exact up to float rounding (`channel_shortcut`); random directions mix channels and use
the plain tail.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from kerabl.ablation import predict_batched
from kerabl.errors import KerablError
from kerabl.progress import progress_bar

Z_KIND = "kerabl.z-results"
ENGINES = ("tail", "full")
# Masked copies of the layer output per tail call (masks x images); None: by float count, at
# most BATCH_FLOATS layer-output floats (SHORTCUT_FLOATS Dense pre-activation floats) per call.
DEFAULT_BATCH = None
BATCH_FLOATS = 32 * 1024 * 1024
SHORTCUT_FLOATS = 8 * 1024 * 1024
# Images per call of the head (and of the full engine when batch_size is None).
HEAD_BATCH = 64
TOP_K = 8
THUMBNAIL_MAX = 64
ATTRIBUTES = ("l1", "max_class_corr", "selectivity")
DROPS = ("overall_drop", "max_class_drop")


# ----------------------------------------------------------------------------- unit attributes

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


def _class_rows(labels: np.ndarray, classes: Sequence[int]) -> list[np.ndarray]:
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
    return np.stack([a[r].mean(axis=0) for r in _class_rows(labels, classes)], axis=1)


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
    if type(layer).__name__ == "DepthwiseConv2D":
        return w.sum(axis=(0, 1)).reshape(-1)
    return w.reshape(-1, w.shape[-1]).sum(axis=0)


def _inbound_layers(layer) -> list:
    node = layer._inbound_nodes[0] if getattr(layer, "_inbound_nodes", None) else None
    if node is None:
        return []
    return [t._keras_history[0] for t in node.input_tensors]


def l1_norms(model, layer: str) -> np.ndarray:
    """L1 norm of each unit's incoming weights: a conv kernel's (kh, kw, c_in) slice, a dense column.

    Example:
        l1_norms(network.model, "conv_3")   # (n_channels,)

    A target without weights (an activation, dropout, batch-norm or mask layer) takes the norms of
    the weighted layer before it; a concatenation joins the norms of its inputs.

    Returns:
        (U,) float64.
    """
    model = _as_model(model)
    current = _check_layer(model, layer)
    for _ in range(len(model.layers)):
        norms = _kernel_layer_norms(current)
        if norms is not None:
            return norms.astype(np.float64)
        inbound = _inbound_layers(current)
        if type(current).__name__ == "Concatenate":
            return np.concatenate([l1_norms(model, parent.name) for parent in inbound])
        if len(inbound) != 1:
            break
        current = inbound[0]
    raise KerablError(f"layer {layer!r} has no single weighted layer feeding it: L1 norms are "
                      "defined for conv/dense outputs (and their activations, or concatenations)")


# ----------------------------------------------------------------------------- ablation engines

def _check_layer(model, layer: str):
    try:
        return model.get_layer(layer)
    except ValueError as err:
        raise KerablError(f"no layer {layer!r} in model {model.name}: use one of its layer names") from err


def _as_model(network_or_model):
    return getattr(network_or_model, "model", network_or_model)


class _Engine:
    """Answers `predict(keep)`: the predicted class of every image under each channel keep-mask."""

    n_channels: int

    def predict(self, keep: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        raise NotImplementedError

    def predict_projected(self, directions: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        raise KerablError("random directions need engine='tail': the full engine only zeroes units")


# Layers that act on each channel alone and keep an all-zero channel all zero (at inference).
CHANNELWISE = ("MaxPooling1D", "MaxPooling2D", "MaxPooling3D", "AveragePooling1D",
               "AveragePooling2D", "AveragePooling3D", "ZeroPadding1D", "ZeroPadding2D",
               "ZeroPadding3D", "Cropping1D", "Cropping2D", "Cropping3D", "Flatten", "Dropout",
               "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D", "Identity")


@dataclass
class ChannelShortcut:
    """Channel ablation of a layer whose tail is channel-wise weightless layers, then a Dense.

    Example:
        cut = channel_shortcut(net.model, "conv_5")   # pool_5 -> flatten -> dense_1: found
        cut.dense, cut.positions.shape                 # "dense_1", (256, 36)

    Zeroing channel c zeroes exactly the Dense inputs `positions[c]` (padded with `valid` 0),
    so the Dense pre-activation with a set of channels zeroed is the unablated one minus those
    inputs times their kernel rows; only the layers after the Dense run per unit.

    Attributes:
        layer: the target layer; chain: the weightless layers between it and the Dense;
        dense: the Dense layer's name; positions (C, S) int32 Dense inputs fed by each channel;
        valid (C, S) float32, 0 where a row of `positions` is padding.
    """

    layer: str
    chain: tuple
    dense: str
    positions: np.ndarray
    valid: np.ndarray


def _consumers(model, layer) -> list:
    return [other for other in model.layers if any(p is layer for p in _inbound_layers(other))]


def _apply_chain(chain: Sequence, x):
    for lay in chain:
        x = lay(x, training=False)
    return x


def _channel_positions(chain: Sequence, shape: tuple[int, ...],
                       chunk: int = 32) -> np.ndarray | None:
    """(C, F) bool: the chain's outputs that channel c reaches (each reached by at most one
    channel), from one-channel indicator inputs; None if a channel-free output is nonzero."""
    import tensorflow as tf

    n = shape[-1]
    if np.any(np.asarray(_apply_chain(chain, tf.zeros((1, *shape))))):
        return None
    parts = []
    for start in range(0, n, chunk):
        c = np.arange(start, min(n, start + chunk))
        ind = np.zeros((len(c), *shape), np.float32)
        ind[np.arange(len(c)), ..., c] = 1.0
        parts.append(np.asarray(_apply_chain(chain, tf.constant(ind))).reshape(len(c), -1) != 0)
    reach = np.concatenate(parts)
    return reach if reach.sum(axis=0).max(initial=0) <= 1 else None


def channel_shortcut(network_or_model, layer: str) -> ChannelShortcut | None:
    """The exact linear shortcut of channel ablation at `layer`, or None where it does not apply.

    Example:
        channel_shortcut(alexnet, "conv_5")   # ChannelShortcut(dense="dense_1", ...)
        channel_shortcut(alexnet, "conv_4")   # None: a convolution follows

    It applies when the layer's output feeds, through a single path of `CHANNELWISE` layers
    (pooling, padding, cropping, flatten, dropout), one Dense layer on flat inputs, with float32
    computation; the layout (which Dense inputs each channel feeds) is read from one-channel
    indicator inputs, found from the graph, not from layer names.
    """
    model = _as_model(network_or_model)
    current = _check_layer(model, layer)
    shape = tuple(int(d) for d in current.output.shape[1:])
    chain = []
    while True:
        after = _consumers(model, current)
        if len(after) != 1 or len(_inbound_layers(after[0])) != 1:
            return None
        current = after[0]
        if type(current).__name__ == "Dense":
            break
        if type(current).__name__ not in CHANNELWISE:
            return None
        chain.append(current)
    dense = current
    if (len(dense.input.shape) != 2 or dense.compute_dtype != "float32"
            or dense.dtype_policy.name != "float32"):
        return None
    reach = _channel_positions(chain, shape)
    if reach is None:
        return None
    width = max(1, int(reach.sum(axis=1).max()))
    positions = np.zeros((len(reach), width), np.int32)
    valid = np.zeros((len(reach), width), np.float32)
    for c, row in enumerate(reach):
        found = np.flatnonzero(row)
        positions[c, :len(found)] = found
        valid[c, :len(found)] = 1.0
    return ChannelShortcut(layer, tuple(chain), dense.name, positions, valid)


# Layers that are the identity at inference (a chain after the shortcut's Dense may hold them).
INFERENCE_IDENTITY = ("Dropout", "AlphaDropout", "GaussianDropout", "GaussianNoise",
                      "ActivityRegularization", "Identity")


def dense_chain(network_or_model, dense: str) -> list | None:
    """The layers after Dense `dense` up to the model output as steps ("dense", layer) and
    ("activation", layer), or None unless they form one path of float32 Dense layers on flat inputs,
    Activation / ReLU / Softmax layers and `INFERENCE_IDENTITY` layers.

    Example:
        dense_chain(alexnet, "dense_1")   # dense_2, relu; dense_3; softmax (dropouts dropped)
    """
    model = _as_model(network_or_model)
    current, steps = _check_layer(model, dense), []
    if len(model.outputs) != 1:
        return None
    output = model.outputs[0]._keras_history[0]
    while current is not output:
        after = _consumers(model, current)
        if len(after) != 1 or len(_inbound_layers(after[0])) != 1:
            return None
        current = after[0]
        kind = type(current).__name__
        if kind == "Dense":
            if (len(current.input.shape) != 2 or current.dtype_policy.name != "float32"
                    or getattr(current, "quantization_mode", None)
                    or getattr(current, "lora_enabled", False)):
                return None
            steps.append(("dense", current))
        elif kind in ("Activation", "ReLU", "Softmax"):
            steps.append(("activation", current))
        elif kind not in INFERENCE_IDENTITY:
            return None
    return steps


def _skip_zero_inputs(x, kernel):
    """`x @ kernel` over the inputs that are nonzero in some row of `x` (at most 90 % of them;
    otherwise the plain product): the terms left out are exact zeros, so only the summation order
    changes."""
    import tensorflow as tf

    nonzero = tf.reshape(tf.where(tf.reduce_max(tf.abs(x), axis=0) > 0), [-1])
    return tf.cond(10 * tf.size(nonzero) < 9 * tf.shape(x)[1],
                   lambda: (tf.matmul(tf.gather(x, nonzero, axis=1), tf.gather(kernel, nonzero)),
                            tf.size(nonzero)),
                   lambda: (tf.matmul(x, kernel), tf.shape(x)[1]))


def _run_chain(steps: Sequence, x):
    """`dense_chain` steps on flat rows, each Dense skipping the inputs that are zero in every row;
    returns the outputs and the FLOPs of the products run."""
    import tensorflow as tf

    flops = tf.constant(0, tf.int64)
    for kind, lay in steps:
        if kind == "activation":
            x = lay(x)
            continue
        rows = tf.cast(tf.shape(x)[0], tf.int64)
        x, kept = _skip_zero_inputs(x, lay.kernel)
        flops += 2 * rows * tf.cast(kept, tf.int64) * int(lay.kernel.shape[1])
        if lay.use_bias:
            x = x + lay.bias
        if lay.activation is not None:
            x = lay.activation(x)
    return x, flops


class _TailEngine(_Engine):
    """Layer output computed once; the tail runs on masked or projected copies, several masks
    per call (`batch_size` copies, or by default `BATCH_FLOATS` floats per call). With a
    `ChannelShortcut` (and 0/1 keep masks), only the Dense pre-activation's correction and the
    layers after the Dense run."""

    def __init__(self, model, layer: str, images: np.ndarray, batch_size: int | None,
                 shortcut: bool = True):
        import tensorflow as tf

        from kerabl.ablation import fast_tail
        from kerabl.masking import head_model

        self.head = head_model(model, layer)
        shapes = [tuple(int(d) for d in x.shape[1:]) for x in self.head.outputs]
        self.n_channels = shapes[0][-1]
        self.batch_size = batch_size
        tail = fast_tail(model, layer)
        specs = [tf.TensorSpec((None, *shape), tf.float32) for shape in shapes]
        vec = tf.TensorSpec((None, self.n_channels), tf.float32)
        ones = [1] * len(shapes[0])

        def run(copies, extras, n):
            tiled = [tf.reshape(tf.repeat(e[None], n, axis=0), tf.concat([[-1], tf.shape(e)[1:]], 0))
                     for e in extras]
            flat = tf.reshape(copies, tf.concat([[-1], tf.shape(copies)[2:]], 0))
            out = tail([flat, *tiled] if tiled else flat, training=False)
            return tf.reshape(tf.argmax(out, axis=-1, output_type=tf.int32), [n, -1])

        def masked(act, keep, *extras):
            copies = act[None] * tf.reshape(keep, [-1, 1, *ones[:-1], self.n_channels])
            return run(copies, extras, tf.shape(keep)[0])

        def projected(act, dirs, *extras):
            coef = tf.einsum("b...c,gc->gb...", act, dirs)[..., None]
            copies = act[None] - coef * tf.reshape(dirs, [-1, 1, *ones[:-1], self.n_channels])
            return run(copies, extras, tf.shape(dirs)[0])

        self.masked_fn = tf.function(masked, input_signature=[specs[0], vec, *specs[1:]])
        self.projected_fn = tf.function(projected, input_signature=[specs[0], vec, *specs[1:]])
        self.cut = channel_shortcut(model, layer) if shortcut and len(shapes) == 1 else None
        self.shortcut_fn = None
        # FLOPs of the shortcut's products so far (inputs skipped as zero not counted); None
        # without a shortcut, or when the layers after its Dense are not a `dense_chain`.
        self.shortcut_flops: int | None = None
        if self.cut is not None:
            self._build_shortcut(model)
        self.set_images(images)

    def set_images(self, images: np.ndarray) -> None:
        """Run the head on `images` (and, with the shortcut, compute the Dense inputs (N, F) and
        pre-activations (N, D)): the per-image work that every later sweep reuses."""
        import tensorflow as tf

        self.inputs = predict_batched(self.head, images, HEAD_BATCH)
        self.acts = self.inputs[0]
        if self.cut is None:
            return
        dense = self.dense
        flat = [np.asarray(_apply_chain(self.cut.chain, tf.constant(self.acts[i:i + HEAD_BATCH])))
                .reshape(min(HEAD_BATCH, len(self.acts) - i), -1)
                for i in range(0, len(self.acts), HEAD_BATCH)]
        self.dense_in = np.concatenate(flat)
        pre = tf.matmul(tf.constant(self.dense_in), dense.kernel)
        self.dense_pre = (pre + dense.bias if dense.use_bias else pre).numpy()

    def _build_shortcut(self, model) -> None:
        """The traced per-mask correction of the Dense pre-activation, and the layers after it."""
        import tensorflow as tf

        from kerabl.ablation import fast_tail

        dense = self.dense = model.get_layer(self.cut.dense)
        kernel = dense.kernel
        positions, valid = tf.constant(self.cut.positions), tf.constant(self.cut.valid)
        activation, width = dense.activation, int(kernel.shape[1])
        steps = dense_chain(model, self.cut.dense)
        if steps is None:
            tail = fast_tail(model, self.cut.dense)

            def rest(x):
                return tail(x, training=False), tf.constant(0, tf.int64)
        else:
            self.shortcut_flops = 0

            def rest(x):
                return _run_chain(steps, x)

        def corrected(dense_in, dense_pre, drops, weight):
            g, n = tf.shape(drops)[0], tf.shape(dense_in)[0]
            rows = tf.reshape(tf.gather(positions, drops), [g, -1])                 # (G, K*S)
            scale = tf.reshape(tf.gather(valid, drops) * weight[..., None], [g, 1, -1])
            picked = tf.transpose(tf.gather(dense_in, rows, axis=1), [1, 0, 2])     # (G, N, K*S)
            delta = tf.matmul(picked * scale, tf.gather(kernel, rows))             # (G, N, D)
            out, flops = rest(tf.reshape(activation(dense_pre[None] - delta), [-1, width]))
            if steps is not None:
                flops += 2 * tf.cast(tf.size(delta), tf.int64) * tf.cast(tf.shape(rows)[1], tf.int64)
            return tf.reshape(tf.argmax(out, axis=-1, output_type=tf.int32), [g, n]), flops

        self.shortcut_fn = tf.function(corrected, input_signature=[
            tf.TensorSpec((None, int(kernel.shape[0])), tf.float32),
            tf.TensorSpec((None, width), tf.float32), tf.TensorSpec((None, None), tf.int32),
            tf.TensorSpec((None, None), tf.float32)])

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

    def _sweep(self, fn, vectors, inputs: list[np.ndarray], per_copy: int,
               budget: int) -> np.ndarray:
        n, count = len(inputs[0]), len(vectors[0])
        copies = self.batch_size or max(1, budget // per_copy)
        block = min(n, copies)
        group = max(1, copies // block)
        out = np.empty((count, n), dtype=np.int64)
        for g in range(0, count, group):
            for b in range(0, n, block):
                part = [x[b:b + block] for x in inputs]
                args = [part[0], *[v[g:g + group] for v in vectors], *part[1:]]
                out[g:g + group, b:b + block] = fn(*args).numpy()
        return out

    def _plain(self, fn, vectors: np.ndarray, rows: np.ndarray | None) -> np.ndarray:
        inputs = self.inputs if rows is None else [x[rows] for x in self.inputs]
        per_copy = sum(int(np.prod(x.shape[1:])) for x in self.inputs)
        return self._sweep(fn, [np.asarray(vectors, dtype=np.float32)], inputs, per_copy,
                           BATCH_FLOATS)

    def predict(self, keep, rows=None):
        drops = None if self.cut is None else self._drops(keep)
        if drops is None:
            return self._plain(self.masked_fn, keep, rows)
        inputs = [self.dense_in, self.dense_pre]
        if rows is not None:
            inputs = [x[rows] for x in inputs]
        def call(dense_in, d, w, pre):
            preds, flops = self.shortcut_fn(dense_in, pre, d, w)
            if self.shortcut_flops is not None:
                self.shortcut_flops += int(flops)
            return preds

        return self._sweep(call, list(drops), inputs, self.dense_pre.shape[1], SHORTCUT_FLOATS)

    def predict_projected(self, directions, rows=None):
        return self._plain(self.projected_fn, directions, rows)

    @property
    def trace_count(self) -> int:
        fns = [self.masked_fn, self.projected_fn] + ([self.shortcut_fn] if self.shortcut_fn else [])
        return sum(fn.experimental_get_tracing_count() for fn in fns)


class _FullEngine(_Engine):
    """The model rebuilt with a mask layer after the target; a full forward pass per mask."""

    def __init__(self, model, layer: str, images: np.ndarray, batch_size: int | None,
                 shortcut: bool = True):
        from kerabl.masking import masked_model, n_units

        self.masked = masked_model(model, [layer])
        self.layer = layer
        self.images = images
        self.batch_size = batch_size or HEAD_BATCH
        self.n_channels = int(n_units(model, layer, "channel"))
        self.acts = None

    def predict(self, keep, rows=None):
        from kerabl.masking import ablated

        images = self.images if rows is None else self.images[rows]
        out = []
        for vector in np.asarray(keep):
            with ablated(self.masked, {self.layer: np.flatnonzero(vector == 0)}, unit="channel"):
                probs = predict_batched(self.masked, images, self.batch_size)[0]
            out.append(probs.argmax(axis=-1))
        return np.stack(out).astype(np.int64)


def _engine(network_or_model, images, layer: str, engine: str, batch_size: int | None,
            shortcut: bool = True) -> _Engine:
    if engine not in ENGINES:
        raise KerablError(f"engine {engine!r} is unknown: use one of {', '.join(ENGINES)}")
    if batch_size is not None and batch_size < 1:
        raise KerablError(f"batch_size {batch_size} must be a positive integer (or None)")
    model = _as_model(network_or_model)
    _check_layer(model, layer)
    images = np.asarray(images, dtype=np.float32)
    cls = _TailEngine if engine == "tail" else _FullEngine
    return cls(model, layer, images, batch_size, shortcut)


def tail_engine(network_or_model, images: np.ndarray, layer: str, *,
                batch_size: int | None = DEFAULT_BATCH, shortcut: bool = True) -> _Engine:
    """The tail engine of `single_unit_ablation` for one layer, for sweeps timed step by step.

    Example:
        eng = tail_engine(net, images, "conv_5")       # head run once; eng.cut: the shortcut
        preds = eng.predict(keep)                      # (G, N) predicted classes, keep (G, C) 0/1

    `predict(keep, rows=None)` zeroes the channels where a keep row is 0; `predict_projected`
    removes directions; `trace_count` stays 1 per traced function whatever the masks.
    """
    return _engine(network_or_model, images, layer, "tail", batch_size, shortcut)


def keep_masks(n_channels: int, ablated_sets: Sequence[Sequence[int]]) -> np.ndarray:
    """(G, n_channels) float32 keep masks, 0 at each set's channels.

    Example:
        keep_masks(3, [[1], [0, 2]])   # [[1, 0, 1], [0, 1, 0]]
    """
    return _keep_masks(n_channels, ablated_sets)


def _units(units, n: int) -> np.ndarray:
    units = np.arange(n) if units is None else np.asarray(units, dtype=np.int64).reshape(-1)
    if len(units) and (units.min() < 0 or units.max() >= n):
        raise KerablError(f"units must lie in 0..{n - 1}, got {units.min()}..{units.max()}")
    return units


def _keep_masks(n: int, ablated_sets: Sequence[Sequence[int]]) -> np.ndarray:
    keep = np.ones((len(ablated_sets), n), dtype=np.float32)
    for row, units in zip(keep, ablated_sets):
        row[list(units)] = 0.0
    return keep


def _accuracy_table(preds: np.ndarray, labels: np.ndarray, rows: list[np.ndarray]) -> np.ndarray:
    correct = np.asarray(preds) == np.asarray(labels)[None]
    return np.stack([correct[:, r].mean(axis=1) for r in rows], axis=1)


def _drop_summary(preds: np.ndarray, base_preds: np.ndarray, labels: np.ndarray,
                  classes: Sequence[int]) -> dict[str, np.ndarray]:
    rows = _class_rows(labels, classes)
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


def _base_predictions(eng: _Engine, rows=None) -> np.ndarray:
    return eng.predict(np.ones((1, eng.n_channels), np.float32), rows)[0]


def single_unit_ablation(network_or_model, images: np.ndarray, labels: np.ndarray,
                         classes: Sequence[int], layer: str, *, units: Sequence[int] | None = None,
                         engine: str = "tail", batch_size: int | None = DEFAULT_BATCH,
                         shortcut: bool = True, progress: bool = False) -> dict[str, Any]:
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

    Returns:
        dict with `units` (U,), `class_acc` (U, C), `base_class_acc` (C,), `base_acc`,
        `overall_drop` (U,) (base overall accuracy - ablated overall accuracy, all images),
        `class_drop` (U, C), `max_class_drop` (U,), `argmax_class` (U,) (column in `classes`),
        `classes` (C,).
    """
    labels = _check_labels(images, labels)
    eng = _engine(network_or_model, images, layer, engine, batch_size, shortcut)
    return _unit_drops(eng, labels, classes, units, progress, f"ablating {layer}")


def _unit_drops(eng: _Engine, labels: np.ndarray, classes: Sequence[int], units, progress: bool,
                label: str) -> dict[str, Any]:
    units = _units(units, eng.n_channels)
    keep = _keep_masks(eng.n_channels, [[u] for u in units])
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
                              progress: bool = False) -> dict[str, Any]:
    """Single-direction ablation in a randomly rotated channel space of `layer`.

    Example:
        r = random_direction_ablation(net, images, labels, range(10), "conv_3", seed=0)
        np.sort(r["max_class_drop"])[::-1]      # the random-direction curve

    Direction k is column k of a random orthogonal matrix Q; at every spatial position the
    activation a becomes a - (a . q_k) q_k (rotate, zero coordinate k, rotate back). With
    `rotation=np.eye(C)` this is exactly single-unit ablation.

    Args:
        rotation: (C, C) orthogonal matrix to use instead of a random one from `seed`.
        Others as in `single_unit_ablation` (the tail engine is used).

    Returns:
        the keys of `single_unit_ablation` (one row per direction; `units` = direction index),
        plus `rotation` (C, C) and `seed`.
    """
    labels = _check_labels(images, labels)
    eng = _engine(network_or_model, images, layer, "tail", batch_size)
    return _direction_drops(eng, labels, classes, seed, rotation, progress, f"directions {layer}")


def _direction_drops(eng: _Engine, labels: np.ndarray, classes: Sequence[int], seed: int,
                     rotation: np.ndarray | None, progress: bool, label: str) -> dict[str, Any]:
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
                    return_order: bool = False):
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
        Others as in `single_unit_ablation`.

    Returns:
        (steps + 1,) class accuracy after 0..steps units; with `return_order`, also (steps,) units.
    """
    labels = _check_labels(images, labels)
    eng = _engine(network_or_model, images, layer, engine, batch_size)
    curve, order = _greedy(eng, labels, class_, steps, candidates)
    return (curve, order) if return_order else curve


def _greedy(eng: _Engine, labels: np.ndarray, class_: int, steps: int,
            candidates: Sequence[int] | None) -> tuple[np.ndarray, np.ndarray]:
    rows = _class_rows_for(labels, class_)
    pool = _units(candidates, eng.n_channels)
    _check_steps(steps, pool)
    chosen: list[int] = []
    curve = [float((_base_predictions(eng, rows) == class_).mean())]
    for _ in range(steps):
        left = np.array([u for u in pool if u not in set(chosen)])
        keep = _keep_masks(eng.n_channels, [chosen + [int(u)] for u in left])
        acc = (eng.predict(keep, rows) == class_).mean(axis=1)
        order = np.lexsort((left, acc))  # lowest accuracy, then lowest unit index
        chosen.append(int(left[order[0]]))
        curve.append(float(acc[order[0]]))
    return np.asarray(curve), np.asarray(chosen, np.int64)


def random_order_ablation(network_or_model, images: np.ndarray, labels: np.ndarray, class_: int,
                          layer: str, *, steps: int = 10, seeds: Sequence[int] = (0, 1, 2, 3, 4),
                          candidates: Sequence[int] | None = None, engine: str = "tail",
                          batch_size: int | None = DEFAULT_BATCH) -> np.ndarray:
    """Accuracy of one class as units are ablated cumulatively in a random order, per seed.

    Example:
        curves = random_order_ablation(net, images, labels, 3, "conv_5", steps=10)  # (5, 11)
        curves.mean(axis=0), curves.std(axis=0)

    The order for seed s is the first `steps` of `np.random.default_rng(s).permutation(candidates)`.

    Returns:
        (n_seeds, steps + 1) class accuracy after 0..steps units.
    """
    labels = _check_labels(images, labels)
    eng = _engine(network_or_model, images, layer, engine, batch_size)
    return _random_order(eng, labels, class_, steps, seeds, candidates)


def _random_order(eng: _Engine, labels: np.ndarray, class_: int, steps: int, seeds: Sequence[int],
                  candidates: Sequence[int] | None) -> np.ndarray:
    rows = _class_rows_for(labels, class_)
    pool = _units(candidates, eng.n_channels)
    _check_steps(steps, pool)
    sets = []
    for seed in seeds:
        order = np.random.default_rng(seed).permutation(pool)[:steps]
        sets.extend([order[:i].tolist() for i in range(steps + 1)])
    acc = (eng.predict(_keep_masks(eng.n_channels, sets), rows) == class_).mean(axis=1)
    return acc.reshape(len(seeds), steps + 1)


# ----------------------------------------------------------------------------- the study and its file

def _json_default(value):
    return value.tolist() if isinstance(value, np.ndarray) else value.item()


def _digest(array: np.ndarray) -> str:
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()[:16]


@dataclass
class _StudyData:
    labels: np.ndarray
    classes: np.ndarray
    class_names: list[str]
    imageset: Any
    network: Any

    def images(self) -> np.ndarray:
        return np.asarray(self.imageset.load(self.network.input_size, self.network.preprocess),
                          dtype=np.float32)


def _study_data(network, imageset) -> _StudyData:
    labels = np.asarray(imageset.labels).astype(np.int64)
    classes = np.asarray(imageset.classes)
    if not np.issubdtype(classes.dtype, np.integer):
        raise KerablError("imageset.classes must be the model output indices of the studied classes")
    names = [str(n) for n in getattr(imageset, "class_names", classes)]
    return _StudyData(labels, classes.astype(np.int64), names, imageset, network)


def _study_config(network, data: _StudyData, layers: Sequence[str], seed: int, greedy_layer: str,
                  greedy_steps: int, greedy_seeds: int, top_k: int) -> dict[str, Any]:
    return {"network": network.name, "weights": network.weights_id, "layers": list(layers),
            "imageset": getattr(data.imageset, "name", type(data.imageset).__name__),
            "labels": _digest(data.labels), "n_images": int(len(data.labels)),
            "classes": data.classes.tolist(), "unit": "channel", "seed": int(seed),
            "input_size": list(network.input_size), "preprocess": network.preprocess,
            "greedy_layer": greedy_layer, "greedy_steps": int(greedy_steps),
            "greedy_seeds": list(range(int(greedy_seeds))), "top_k": int(top_k)}


def _check_config(path: Path, stored: dict[str, Any], wanted: dict[str, Any]) -> None:
    for key in sorted(set(stored) | set(wanted)):
        if stored.get(key) != wanted.get(key):
            raise KerablError(f"{path} was made with {key}={stored.get(key)!r}, not "
                              f"{wanted.get(key)!r}: pass the same arguments or another out_path")


def _read_config(path: Path) -> dict[str, Any]:
    import h5py

    with h5py.File(path, "r") as f:
        if f.attrs.get("kind") != Z_KIND:
            raise KerablError(f"{path} is not a kerabl Z results file: pass another out_path")
        return json.loads(f.attrs["config"])


def _default_greedy_layer(model, layers: Sequence[str]) -> str:
    spatial = [name for name in layers if len(model.get_layer(name).output.shape) == 4]
    return (spatial or list(layers))[-1]


def display_images(images: np.ndarray) -> np.ndarray:
    """Network inputs scaled per image to 0..255 uint8 for display (thumbnails, figures).

    Example:
        display_images(np.array([[[[-1.0, 0, 1]]]]))   # array([[[[  0, 128, 255]]]], dtype=uint8)
    """
    images = np.asarray(images, dtype=np.float64)
    lo = images.min(axis=(1, 2, 3), keepdims=True)
    hi = images.max(axis=(1, 2, 3), keepdims=True)
    scaled = (images - lo) / np.where(hi > lo, hi - lo, 1.0)
    return np.round(scaled * 255).astype(np.uint8)


def _create_partial(partial: Path, config: dict[str, Any], data: _StudyData,
                    images: np.ndarray) -> None:
    import h5py

    from kerabl.results import library_versions

    with h5py.File(partial, "w") as f:
        f.attrs["kind"] = Z_KIND
        f.attrs["config"] = json.dumps(config)
        f.attrs["versions"] = json.dumps(library_versions())
        f.create_dataset("labels", data=data.labels)
        f.create_dataset("classes", data=data.classes)
        f.create_dataset("class_names", data=np.array(data.class_names, dtype=object),
                         dtype=h5py.string_dtype())
        if images.ndim == 4 and max(images.shape[1:3]) <= THUMBNAIL_MAX:
            f.create_dataset("thumbnails", data=display_images(images), compression="gzip")


def _done_groups(partial: Path) -> set[str]:
    import h5py

    with h5py.File(partial, "r") as f:
        return {name for name, group in f.items()
                if isinstance(group, h5py.Group) and group.attrs.get("done", False)}


def _write_group(partial: Path, name: str, arrays: Mapping[str, np.ndarray],
                 attrs: Mapping[str, Any]) -> None:
    import h5py

    with h5py.File(partial, "a") as f:
        if name in f:
            del f[name]
        group = f.create_group(name)
        for key, value in arrays.items():
            group.create_dataset(key, data=value)
        for key, value in attrs.items():
            group.attrs[key] = value
        group.attrs["done"] = True


def _layer_results(model, eng: _TailEngine, data: _StudyData, probs: np.ndarray, layer: str,
                   seed: int, top_k: int, progress: bool) -> tuple[dict, dict]:
    units = _unit_drops(eng, data.labels, data.classes, None, progress, f"units {layer}")
    directions = _direction_drops(eng, data.labels, data.classes, seed, None, progress,
                                  f"random directions {layer}")
    corr = class_correlation(eng.acts, probs[:, data.classes])
    attrs = {"l1": l1_norms(model, layer),
             "max_class_corr": np.where(np.isnan(corr).all(axis=1), np.nan,
                                        np.nanmax(np.nan_to_num(corr, nan=-np.inf), axis=1)),
             "selectivity": selectivity_index(eng.acts, data.labels, data.classes)}
    top, maps = top_activating(eng.acts, min(top_k, len(data.labels)))
    arrays = {key: units[key] for key in ("class_acc", "base_class_acc", "overall_drop",
                                          "class_drop", "max_class_drop", "argmax_class")}
    arrays.update(attrs, class_corr=corr, class_means=class_means(eng.acts, data.labels, data.classes),
                  top_images=top, top_maps=maps,
                  rand_max_class_drop=directions["max_class_drop"],
                  rand_overall_drop=directions["overall_drop"], rotation=directions["rotation"])
    corrs = attribute_drop_correlations(attrs, units["overall_drop"], units["max_class_drop"])
    return arrays, {"base_acc": units["base_acc"], "correlations": json.dumps(corrs)}


def _greedy_results(eng: _Engine, data: _StudyData, steps: int, n_seeds: int,
                    progress: bool) -> dict[str, np.ndarray]:
    curves, orders, random = [], [], []
    with progress_bar("greedy ablation", len(data.classes), enabled=progress,
                      transient=True) as advance:
        for class_ in data.classes:
            curve, order = _greedy(eng, data.labels, int(class_), steps, None)
            curves.append(curve)
            orders.append(order)
            random.append(_random_order(eng, data.labels, int(class_), steps, range(n_seeds), None))
            advance(1)
    return {"curves": np.stack(curves), "order": np.stack(orders), "random": np.stack(random)}


def run_z_study(network, imageset, layers: Sequence[str] | None, out_path: str | os.PathLike, *,
                seed: int = 0, greedy_layer: str | None = None, greedy_steps: int = 10,
                greedy_seeds: int = 5, top_k: int = TOP_K, batch_size: int | None = DEFAULT_BATCH,
                progress: bool = True) -> Path:
    """Run the whole Z study on `layers` and store it in one HDF5 file.

    Example:
        net = load_network("demo"); images = digits_imageset()
        path = run_z_study(net, images, net.targets, "out/z_demo.h5")
        ZResults.open(path).layer("conv_3")["max_class_drop"]

    Per layer: single-unit ablation, random-direction ablation (seed `seed`), L1 norms, class
    correlations, selectivity, class means, top-activating images; then greedy and random-order
    ablation for every class on `greedy_layer`. Results go to `<out>.partial` layer by layer; an
    interrupted run resumes there (finished layers are not recomputed) and the file is renamed to
    `out_path` when complete. A rerun of a finished file computes nothing.

    Args:
        network: a `kerabl.models.Network`.
        imageset: a `kerabl.data.ImageSet` (labels and classes are model output indices).
        layers: target layer names (default: the network's targets).
        out_path: the results file.
        seed: seed of the random rotations.
        greedy_layer: layer of the greedy curves (default: the last spatial layer of `layers`).
        greedy_steps: units ablated greedily per class.
        greedy_seeds: random orders (seeds 0..greedy_seeds-1) for the baseline curves.
        top_k: top-activating images stored per unit.
        batch_size: masked copies per tail call (None: by float count, see `DEFAULT_BATCH`).
        progress: show progress bars.

    Raises:
        KerablError: an existing file or partial file made with other arguments (the key is named).
    """
    model = _as_model(network)
    layers = list(network.targets if layers is None else layers)
    for name in layers + ([greedy_layer] if greedy_layer else []):
        _check_layer(model, name)
    greedy_layer = greedy_layer or _default_greedy_layer(model, layers)
    data = _study_data(network, imageset)
    config = _study_config(network, data, layers, seed, greedy_layer, greedy_steps, greedy_seeds,
                           top_k)
    out = Path(out_path)
    if out.exists():
        _check_config(out, _read_config(out), config)
        return out
    partial = out.with_name(out.name + ".partial")
    images = data.images()
    if partial.exists():
        _check_config(partial, _read_config(partial), config)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        _create_partial(partial, config, data, images)
    done = _done_groups(partial)
    probs = None
    for layer in layers:
        if f"layer_{layer}" in done:
            continue
        if probs is None:
            probs = predict_batched(model, images, HEAD_BATCH)[0]
        eng = _engine(model, images, layer, "tail", batch_size)
        arrays, attrs = _layer_results(model, eng, data, probs, layer, seed, top_k, progress)
        _write_group(partial, f"layer_{layer}", arrays, {**attrs, "layer": layer})
    if "greedy" not in done:
        eng = _engine(model, images, greedy_layer, "tail", batch_size)
        _write_group(partial, "greedy", _greedy_results(eng, data, greedy_steps, greedy_seeds, progress),
                     {"layer": greedy_layer})
    os.replace(partial, out)
    return out


@dataclass
class ZResults:
    """Reader of a Z results file (numpy and h5py only).

    Example:
        z = ZResults.open("out/z_demo.h5")
        z.layers, z.layer("conv_3")["max_class_drop"], z.greedy["curves"]

    Attributes:
        path, config, versions, layers (names in study order), labels (N,), classes (C,),
        class_names, greedy (dict: curves (C, steps+1), order (C, steps), random
        (C, seeds, steps+1), layer), thumbnails (N, h, w, 3) uint8 or None.
    """

    path: Path
    config: dict[str, Any]
    versions: dict[str, str]
    labels: np.ndarray
    classes: np.ndarray
    class_names: list[str]
    greedy: dict[str, Any]
    thumbnails: np.ndarray | None
    _layers: dict[str, dict[str, Any]] = field(repr=False)

    @classmethod
    def open(cls, path: str | os.PathLike) -> "ZResults":
        """Read a finished results file written by `run_z_study`."""
        import h5py

        path = Path(path)
        if not path.exists():
            hint = " (the run has not finished: rerun it)" if path.with_name(
                path.name + ".partial").exists() else ""
            raise KerablError(f"no Z results at {path}{hint}: run `kerabl units` first")
        config = _read_config(path)
        with h5py.File(path, "r") as f:
            layers = {name: _read_group(f[f"layer_{name}"]) for name in config["layers"]}
            return cls(path=path, config=config, versions=json.loads(f.attrs["versions"]),
                       labels=f["labels"][()], classes=f["classes"][()],
                       class_names=[n.decode() if isinstance(n, bytes) else str(n)
                                    for n in f["class_names"][()]],
                       greedy=_read_group(f["greedy"]),
                       thumbnails=f["thumbnails"][()] if "thumbnails" in f else None,
                       _layers=layers)

    @property
    def layers(self) -> list[str]:
        return list(self.config["layers"])

    def layer(self, name: str) -> dict[str, Any]:
        """Arrays of one layer: class_acc, overall_drop, max_class_drop, l1, selectivity, ..."""
        if name not in self._layers:
            raise KerablError(f"no layer {name!r} in {self.path}: use one of {', '.join(self.layers)}")
        return self._layers[name]

    def correlations(self, name: str) -> dict[str, dict[str, dict[str, float]]]:
        """`attribute_drop_correlations` of one layer, as stored."""
        return json.loads(self.layer(name)["correlations"])


def _read_group(group) -> dict[str, Any]:
    out: dict[str, Any] = {key: group[key][()] for key in group}
    out.update({key: value for key, value in group.attrs.items() if key != "done"})
    return out


CSV_COLUMNS = ("layer", "unit", "overall_drop", "max_class_drop", "argmax_class", "argmax_class_name",
               "l1", "max_class_corr", "selectivity", "rand_max_class_drop")


def export_units_csv(z_path: str | os.PathLike, csv_path: str | os.PathLike) -> Path:
    """Write one row per layer x unit with the scalar columns (`CSV_COLUMNS`).

    Example:
        export_units_csv("out/z_demo.h5", "out/z_units.csv")

    `argmax_class` is the output index of the most-hurt class; `rand_max_class_drop` is the
    max class drop of random direction k of the same layer (a separate sample, not unit k).
    """
    import csv

    z = ZResults.open(z_path)
    csv_path = Path(csv_path)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    with open(csv_path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        for name in z.layers:
            d = z.layer(name)
            for unit in range(len(d["overall_drop"])):
                top = int(d["argmax_class"][unit])
                writer.writerow([name, unit, *(_num(d[k][unit]) for k in DROPS),
                                 int(z.classes[top]), z.class_names[top],
                                 *(_num(d[k][unit]) for k in (*ATTRIBUTES, "rand_max_class_drop"))])
    return csv_path


def _num(value) -> str:
    return repr(float(value))
