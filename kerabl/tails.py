"""The tail models the fast engines run (`kerabl.engine`), and the Dense shortcut's traced step.

- `fast_tail(model, layer, precision)`: the network tail after `layer`, grouped convolutions split
  per group (faster with oneDNN on a CPU), in `precision="bfloat16"` a mixed-bfloat16 copy.
- `dense_split(tail)`: the tail cut where its first Dense layer takes its input, so that the Dense
  layers can run on more rows per call than the convolutions.
- `skip_zero_inputs(x, kernel)`, `run_chain(steps, x)`: Dense products over the inputs that are
  nonzero in some row (the ReLU zeros left out: only the summation order changes).
- `shortcut_function(model, cut)`: the traced correction of a Dense pre-activation for channel
  keep-masks and the layers after it (the exact Dense shortcut of `TailAblator(shortcut=True)`).
"""

from __future__ import annotations

from typing import Sequence

from kerabl.choices import PRECISIONS
from kerabl.errors import KerablError
from kerabl.graph import (dense_chain, head_model, is_cut_point, layer_node, producer_name,
                          tail_model)



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
        layer: the cut layer (see `kerabl.graph.tail_model`).
        precision: "float32" (equal to the model up to float rounding) or "bfloat16".

    Returns:
        A functional model with the inputs of `tail_model(model, layer)`.
    """
    import keras

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


def dense_split(tail):
    """(front, back): `tail` cut where its first Dense layer takes its input, when that input is
    a cut point of the tail with weighted layers before it; else None. `back(front(x))` is
    `tail(x)`: the same layers, split so that the Dense layers can run on more rows per call
    than the convolutions (`TailAblator`).

    Example:
        front, back = dense_split(fast_tail(model, "conv_3"))    # AlexNet-like: cut at Flatten
        scores = back.predict_on_batch(front.predict_on_batch(acts))
    """
    import keras

    names = [lay.name for lay in tail.layers]
    dense = next((lay for lay in tail.layers if isinstance(lay, keras.layers.Dense)), None)
    if dense is None:
        return None
    node = layer_node(tail, dense)      # its call in the tail (a layer shared with the model)
    if len(node.input_tensors) != 1:
        return None
    source = tail.get_layer(producer_name(node.input_tensors[0]))
    if isinstance(source, keras.layers.InputLayer) or not is_cut_point(tail, source.name):
        return None
    if not any(lay.weights for lay in tail.layers[:names.index(source.name) + 1]):
        return None
    return head_model(tail, source.name), tail_model(tail, source.name)


def skip_zero_inputs(x, kernel):
    """`x @ kernel` over the inputs that are nonzero in some row of `x` (at most 90 % of them;
    otherwise the plain product): the terms left out are exact zeros, so only the summation order
    changes.

    Example:
        out, kept = skip_zero_inputs(relu_rows, dense.kernel)   # kept: the inputs multiplied
    """
    import tensorflow as tf

    nonzero = tf.reshape(tf.where(tf.reduce_max(tf.abs(x), axis=0) > 0), [-1])
    return tf.cond(10 * tf.size(nonzero) < 9 * tf.shape(x)[1],
                   lambda: (tf.matmul(tf.gather(x, nonzero, axis=1), tf.gather(kernel, nonzero)),
                            tf.size(nonzero)),
                   lambda: (tf.matmul(x, kernel), tf.shape(x)[1]))


def run_chain(steps: Sequence, x):
    """`dense_chain` steps on flat rows, each Dense skipping the inputs that are zero in every row;
    returns the outputs and the FLOPs of the products run.

    Example:
        scores, flops = run_chain(dense_chain(model, "fc1"), fc1_outputs)
    """
    import tensorflow as tf

    flops = tf.constant(0, tf.int64)
    for kind, lay in steps:
        if kind == "activation":
            x = lay(x)
            continue
        rows = tf.cast(tf.shape(x)[0], tf.int64)
        x, kept = skip_zero_inputs(x, lay.kernel)
        flops += 2 * rows * tf.cast(kept, tf.int64) * int(lay.kernel.shape[1])
        if lay.use_bias:
            x = x + lay.bias
        if lay.activation is not None:
            x = lay.activation(x)
    return x, flops


def shortcut_function(model, cut):
    """The traced per-mask correction of the Dense pre-activation of `cut` and the layers after
    it -> (predicted classes (G, N), FLOPs); and whether those FLOPs are counted (only when the
    layers after the Dense are a `dense_chain`).

    Example:
        fn, counted = shortcut_function(model, channel_shortcut(model, "block5_conv3"))
        classes, flops = fn(dense_in, dense_pre, drops, weight)
    """
    import tensorflow as tf

    dense = model.get_layer(cut.dense)
    kernel = dense.kernel
    positions, valid = tf.constant(cut.positions), tf.constant(cut.valid)
    activation, width = dense.activation, int(kernel.shape[1])
    steps = dense_chain(model, cut.dense)
    if steps is None:
        tail = fast_tail(model, cut.dense)

        def rest(x):
            return tail(x, training=False), tf.constant(0, tf.int64)
    else:
        def rest(x):
            return run_chain(steps, x)

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

    fn = tf.function(corrected, input_signature=[
        tf.TensorSpec((None, int(kernel.shape[0])), tf.float32),
        tf.TensorSpec((None, width), tf.float32), tf.TensorSpec((None, None), tf.int32),
        tf.TensorSpec((None, None), tf.float32)])
    return fn, steps is not None
