"""The one Keras graph walker: where a model can be cut, its head and tail, and channel-wise chains.

- `is_cut_point(model, layer)`, `cut_points(model)`: layers whose output alone determines the
  network output.
- `head_model`, `tail_model`, `tail_extras`: split a model at a layer; the tail takes the layer's
  output plus, off a cut point, the other tensors that cross the cut (e.g. a residual skip).
- `consumers(model, layer)`, `inbound_layers(layer)`: a layer's neighbours in the graph.
- `channel_shortcut(model, layer)`: where a layer feeds a Dense through channel-wise weightless
  layers only, which Dense inputs each channel feeds; `dense_chain(model, dense)`: the Dense /
  activation layers after it up to the output.

Every walk reads the graph the model was built with (nodes, inbound layers); layer kinds are
matched on their classes, not on their names.

Keras is imported inside the functions, so importing this module does not load TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np

from kerabl.errors import KerablError

if TYPE_CHECKING:
    import keras


def functional(model: keras.Model) -> keras.Model:
    """The functional graph of `model` (a Sequential is viewed through its inputs and outputs).

    Example:
        functional(keras.Sequential([...])).layers   # the same layers, as a functional model
    """
    import keras

    if isinstance(model, keras.Sequential):
        try:
            return keras.Model(model.inputs, model.outputs, name=model.name)
        except (AttributeError, ValueError) as err:
            raise KerablError(
                f"Sequential model {model.name!r} has no defined input: "
                "build it with keras.Input(...) first"
            ) from err
    if not hasattr(model, "_nodes_by_depth"):
        raise KerablError(
            f"model {getattr(model, 'name', model)!r} is not a Keras functional model: "
            "build it with keras.Input(...) and keras.Model(inputs, outputs)"
        )
    return model


def layer_names(model: keras.Model) -> list[str]:
    """Names of the model's non-input layers, in model order.

    Example:
        layer_names(load_network("demo").model)[:2]   # ["conv_1", "pool_1"]
    """
    import keras

    return [lay.name for lay in model.layers if not isinstance(lay, keras.layers.InputLayer)]


def unknown_layer(model: keras.Model, name: object, names: Sequence[str] | None = None) -> KerablError:
    """The error for a layer name that the model does not have, with a few valid names.

    Example:
        raise unknown_layer(model, "conv_9")   # KerablError: no layer 'conv_9' ... (conv_1, ...)
    """
    names = list(layer_names(model) if names is None else names)
    few = ", ".join(names[:4] + (["...", names[-1]] if len(names) > 5 else names[4:]))
    return KerablError(
        f"model {model.name!r} has no layer {name!r}; valid names include: {few}"
    )


def get_layer(model: keras.Model, layer: str | keras.layers.Layer) -> keras.layers.Layer:
    """The layer object for a name or a layer of `model`.

    Example:
        get_layer(model, "conv_5").name   # "conv_5"
    """
    import keras

    name = layer.name if isinstance(layer, keras.layers.Layer) else layer
    if name not in layer_names(model):
        raise unknown_layer(model, name)
    return model.get_layer(name)


def _model_nodes(model: keras.Model) -> list:
    """The model's call nodes in topological order (inputs first)."""
    return [
        node
        for depth in sorted(model._nodes_by_depth, reverse=True)
        for node in model._nodes_by_depth[depth]
    ]


def layer_node(model: keras.Model, layer: str | keras.layers.Layer):
    """The single call node of `layer` in `model` (shared layers are refused).

    Example:
        layer_node(model, "conv_5").input_tensors   # the tensors conv_5 was called on
    """
    lay = get_layer(model, layer)
    nodes = [node for node in _model_nodes(model) if node.operation is lay]
    if len(nodes) != 1:
        raise KerablError(
            f"layer {lay.name!r} is called {len(nodes)} times in model {model.name!r}: "
            "choose a layer that is called once"
        )
    if len(nodes[0].outputs) != 1:
        raise KerablError(
            f"layer {lay.name!r} has {len(nodes[0].outputs)} outputs: choose a single-output layer"
        )
    return nodes[0]


def _head_nodes(model: keras.Model, node) -> set[int]:
    """Ids of `node` and every node it depends on (its ancestors), input nodes included."""
    head, stack = set(), [node]
    while stack:
        cur = stack.pop()
        if id(cur) in head:
            continue
        head.add(id(cur))
        for tensor in cur.input_tensors:
            op, index = tensor._keras_history.operation, tensor._keras_history.node_index
            if op is not None:
                stack.append(op._inbound_nodes[index])
    return head


def _crossing_tensors(model: keras.Model, node) -> list:
    """Tensors made before the cut at `node` (other than its output) that are needed after it.

    Head = `node` and its ancestors. A head tensor crosses the cut when a non-head node consumes
    it or when it is a model output. Returned in topological order of their producers.
    """
    head = _head_nodes(model, node)
    cut_output = node.outputs[0]
    needed = {id(t) for t in model.outputs}
    for other in _model_nodes(model):
        if id(other) not in head:
            needed.update(id(t) for t in other.input_tensors)
    crossing = []
    for producer in _model_nodes(model):
        if id(producer) not in head:
            continue
        for tensor in producer.outputs:
            if tensor is not cut_output and id(tensor) in needed and tensor not in crossing:
                crossing.append(tensor)
    return crossing


def producer_name(tensor) -> str:
    """Name of the layer (or input layer) that produced `tensor`.

    Example:
        producer_name(model.get_layer("conv_5").input)   # "conv_4"
    """
    return tensor._keras_history.operation.name


def is_cut_point(model: keras.Model, layer: str | keras.layers.Layer) -> bool:
    """Whether the output of `layer` alone determines the network output.

    Example:
        is_cut_point(vgg16, "block3_conv2")                # True
        is_cut_point(resnet101, "conv3_block2_2_relu")     # False: the skip tensor crosses it

    Args:
        model: a functional (or Sequential) Keras model.
        layer: a layer name of the model (or the layer itself).

    Returns:
        True when no tensor produced before the layer (model input included) is consumed
        after it other than through the layer's output.
    """
    model = functional(model)
    return not _crossing_tensors(model, layer_node(model, layer))


def cut_points(model: keras.Model) -> list[str]:
    """Names of every cut point of `model`, in model order.

    Example:
        cut_points(vgg16)[:2]          # ["block1_conv1", "block1_conv2"]
        "conv2_block1_out" in cut_points(resnet101)   # True

    Args:
        model: a functional (or Sequential) Keras model.

    Returns:
        The non-input layers whose output alone determines the network output.
    """
    model = functional(model)
    return [name for name in layer_names(model) if is_cut_point(model, name)]


def tail_extras(model: keras.Model, layer: str | keras.layers.Layer) -> list[str]:
    """Names of the layers whose outputs the tail needs besides `layer`'s output, in input order.

    Example:
        tail_extras(resnet101, "conv3_block2_2_relu")   # ["conv3_block1_out"]
        tail_extras(vgg16, "block3_conv2")              # [] (a cut point)

    Args:
        model: a functional (or Sequential) Keras model.
        layer: a layer name of the model (or the layer itself).

    Returns:
        The producing layer names of the extra tail inputs (the model's input layer name when
        the raw input is needed after the cut).
    """
    model = functional(model)
    return [producer_name(t) for t in _crossing_tensors(model, layer_node(model, layer))]


def head_model(model: keras.Model, layer: str | keras.layers.Layer) -> keras.Model:
    """The model from the input to `[layer output, *extra tensors]`, sharing the layers.

    Example:
        head = head_model(resnet101, "conv3_block2_2_relu")
        act, skip = head.predict_on_batch(x)
        tail_model(resnet101, "conv3_block2_2_relu").predict_on_batch([act, skip])  # == model(x)

    Args:
        model: a functional (or Sequential) Keras model.
        layer: a layer name of the model (or the layer itself).

    Returns:
        A model with one output at a cut point, else a list of outputs ordered as `tail_extras`.
    """
    import keras

    model = functional(model)
    node = layer_node(model, layer)
    outputs = [node.outputs[0], *_crossing_tensors(model, node)]
    return keras.Model(
        model.inputs, outputs[0] if len(outputs) == 1 else outputs, name=f"{model.name}_head"
    )


def tail_model(model: keras.Model, layer: str | keras.layers.Layer) -> keras.Model:
    """The model from `[layer output, *extra tensors]` to the model output, sharing the layers.

    Example:
        tail = tail_model(vgg16, "block3_conv2")      # one input: a cut point
        tail.predict_on_batch(head_model(vgg16, "block3_conv2").predict_on_batch(x))
        tail.kerabl_extra                               # () here; names of the extra inputs

    Args:
        model: a functional (or Sequential) Keras model.
        layer: a layer name of the model (or the layer itself).

    Returns:
        A functional model with one input at a cut point, else inputs `[layer output, *extras]`;
        each input is named after the layer that produces it, and the attribute `kerabl_extra`
        holds the extras' names (as `tail_extras`). `tail(head(x))` equals `model(x)` bit for bit.
    """
    import keras

    model = functional(model)
    node = layer_node(model, layer)
    crossing = [node.outputs[0], *_crossing_tensors(model, node)]
    inputs = [
        keras.Input(batch_shape=t.shape, dtype=t.dtype, name=producer_name(t)) for t in crossing
    ]
    values = {id(t): new for t, new in zip(crossing, inputs)}
    head = _head_nodes(model, node)
    for other in _model_nodes(model):
        if id(other) not in head:
            args, kwargs = other.arguments.fill_in(values)
            outs = keras.tree.flatten(other.operation(*args, **kwargs))
            values.update((id(t), new) for t, new in zip(other.outputs, outs))
    outputs = [values[id(t)] for t in model.outputs]
    tail = keras.Model(
        inputs[0] if len(inputs) == 1 else inputs,
        outputs[0] if len(outputs) == 1 else outputs,
        name=f"{model.name}_tail_{node.operation.name}",
    )
    tail.kerabl_extra = tuple(producer_name(t) for t in crossing[1:])
    return tail


def rebuild_with(model: keras.Model, after: Mapping[str, keras.layers.Layer]) -> keras.Model:
    """`model` rebuilt on the same layers with `after[name]` applied to the output of `name`.

    Example:
        rebuild_with(model, {"conv_5": MaskLayer(mask)})   # conv_5 output masked, weights shared
    """

    import keras

    def call_function(layer, *args, **kwargs):
        out = layer(*args, **kwargs)
        return after[layer.name](out) if layer.name in after else out

    return keras.models.clone_model(
        model, clone_function=lambda layer: layer, call_function=call_function
    )


def check_layer(model, layer: str):
    """The layer `layer` of `model`; a KerablError naming the model when it has none.

    Example:
        check_layer(model, "conv_5")   # the layer; "conv_9": KerablError
    """
    try:
        return model.get_layer(layer)
    except ValueError as err:
        raise KerablError(f"no layer {layer!r} in model {model.name}: use one of its layer names") from err


def as_model(network_or_model):
    """The Keras model of a `Network`, or the model itself.

    Example:
        as_model(load_network("demo")) is as_model(load_network("demo").model)   # both models
    """
    return getattr(network_or_model, "model", network_or_model)


def inbound_layers(layer) -> list:
    """The layers whose outputs `layer` was called on (its first call; [] for an input).

    Example:
        [l.name for l in inbound_layers(model.get_layer("conv_5"))]   # ["conv_4"]
    """
    node = layer._inbound_nodes[0] if getattr(layer, "_inbound_nodes", None) else None
    if node is None:
        return []
    return [t._keras_history[0] for t in node.input_tensors]


def _consumers(model, layer) -> list:
    return [other for other in model.layers if any(p is layer for p in inbound_layers(other))]


def _kind(layer, classes: Sequence[type]) -> bool:
    """Whether `layer` is an instance of one of `classes` that keeps its class's `call` (a
    subclass that computes something else is not taken for it)."""
    return any(isinstance(layer, cls) and type(layer).call is cls.call for cls in classes)


def _channelwise() -> tuple[type, ...]:
    """Layers that act on each channel alone and keep an all-zero channel all zero (at inference)."""
    from keras import layers as k

    return (k.MaxPooling1D, k.MaxPooling2D, k.MaxPooling3D, k.AveragePooling1D,
            k.AveragePooling2D, k.AveragePooling3D, k.ZeroPadding1D, k.ZeroPadding2D,
            k.ZeroPadding3D, k.Cropping1D, k.Cropping2D, k.Cropping3D, k.Flatten, k.Dropout,
            k.SpatialDropout1D, k.SpatialDropout2D, k.SpatialDropout3D, k.Identity)


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
        layer: the target layer.
        chain: the weightless layers between it and the Dense.
        dense: the Dense layer's name.
        positions: (C, S) int32 Dense inputs fed by each channel.
        valid: (C, S) float32, 0 where a row of `positions` is padding.
    """

    layer: str
    chain: tuple
    dense: str
    positions: np.ndarray
    valid: np.ndarray


def apply_chain(chain: Sequence, x):
    """`x` through each layer of `chain` in turn, in inference mode.

    Example:
        apply_chain([model.get_layer("dense_1"), model.get_layer("dense_2")], x)
    """
    for lay in chain:
        x = lay(x, training=False)
    return x


def _channel_positions(chain: Sequence, shape: tuple[int, ...],
                       chunk: int = 32) -> np.ndarray | None:
    """(C, F) bool: the chain's outputs that channel c reaches (each reached by at most one
    channel), from one-channel indicator inputs; None if a channel-free output is nonzero."""
    import tensorflow as tf

    n = shape[-1]
    if np.any(np.asarray(apply_chain(chain, tf.zeros((1, *shape))))):
        return None
    parts = []
    for start in range(0, n, chunk):
        c = np.arange(start, min(n, start + chunk))
        ind = np.zeros((len(c), *shape), np.float32)
        ind[np.arange(len(c)), ..., c] = 1.0
        parts.append(np.asarray(apply_chain(chain, tf.constant(ind))).reshape(len(c), -1) != 0)
    reach = np.concatenate(parts)
    return reach if reach.sum(axis=0).max(initial=0) <= 1 else None


def channel_shortcut(network_or_model, layer: str) -> ChannelShortcut | None:
    """The exact linear shortcut of channel ablation at `layer`, or None where it does not apply.

    Example:
        channel_shortcut(alexnet, "conv_5")   # ChannelShortcut(dense="dense_1", ...)
        channel_shortcut(alexnet, "conv_4")   # None: a convolution follows

    It applies when the layer's output feeds, through a single path of channel-wise layers
    (pooling, padding, cropping, flatten, dropout), one Dense layer on flat inputs, with float32
    computation; the layout (which Dense inputs each channel feeds) is read from one-channel
    indicator inputs, found from the graph, not from layer names.
    """
    import keras

    model = as_model(network_or_model)
    current = check_layer(model, layer)
    shape = tuple(int(d) for d in current.output.shape[1:])
    chain = []
    while True:
        after = _consumers(model, current)
        if len(after) != 1 or len(inbound_layers(after[0])) != 1:
            return None
        current = after[0]
        if _kind(current, (keras.layers.Dense,)):
            break
        if not _kind(current, _channelwise()):
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


def _inference_identity() -> tuple[type, ...]:
    """Layers that are the identity at inference (a chain after the shortcut's Dense may hold them)."""
    from keras import layers as k

    return (k.Dropout, k.AlphaDropout, k.GaussianDropout, k.GaussianNoise,
            k.ActivityRegularization, k.Identity)


def dense_chain(network_or_model, dense: str) -> list | None:
    """The layers after Dense `dense` up to the model output as steps ("dense", layer) and
    ("activation", layer), or None unless they form one path of float32 Dense layers on flat inputs,
    Activation / ReLU / Softmax layers and layers that are the identity at inference (dropout,
    noise, activity regularisation, Identity).

    Example:
        dense_chain(alexnet, "dense_1")   # dense_2, relu; dense_3; softmax (dropouts dropped)
    """
    import keras

    model = as_model(network_or_model)
    current, steps = check_layer(model, dense), []
    if len(model.outputs) != 1:
        return None
    output = model.outputs[0]._keras_history[0]
    while current is not output:
        after = _consumers(model, current)
        if len(after) != 1 or len(inbound_layers(after[0])) != 1:
            return None
        current = after[0]
        if _kind(current, (keras.layers.Dense,)):
            if (len(current.input.shape) != 2 or current.dtype_policy.name != "float32"
                    or getattr(current, "quantization_mode", None)
                    or getattr(current, "lora_enabled", False)):
                return None
            steps.append(("dense", current))
        elif _kind(current, (keras.layers.Activation, keras.layers.ReLU, keras.layers.Softmax)):
            steps.append(("activation", current))
        elif not _kind(current, _inference_identity()):
            return None
    return steps
