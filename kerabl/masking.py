"""Masks on units, ablation without leaks, cut points and network tails.

- `UnitMask`: a registered Keras layer multiplying its input by a non-trainable 0/1 weight `mask`.
- `masked_model(model, targets)`: the model rebuilt once with a `UnitMask` named
  `f"{target}_mask"` after each target layer, sharing the original weights.
- `ablated(masked, {layer: units}, unit)`: a context manager that zeroes units and restores the
  masks on exit, whatever happened inside; changing a mask never retraces a `tf.function`.
- `n_units`, `unit_mask`, `chw_to_hwc`, `hwc_to_chw`: unit counts, mask arrays, and element index
  conversion between Keras (H, W, C) order and the authors'/PyTorch (C, H, W) order.
- `is_cut_point`, `cut_points`: layers whose output alone determines the network output.
- `head_model`, `tail_model`, `tail_extras`: split a model at a layer; the tail takes the layer's
  output plus, off a cut point, the other tensors that cross the cut (e.g. a residual skip).
- `lambda_masked_model(model, layer, mask)`: the paper engine, a literal `Lambda` multiplying by
  a constant mask, rebuilt per mask as the authors did.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Mapping, Sequence

import keras
import numpy as np

from kerabl.errors import KerablError

__all__ = [
    "UNIT_KINDS",
    "UnitMask",
    "ablated",
    "chw_to_hwc",
    "cut_points",
    "head_model",
    "hwc_to_chw",
    "is_cut_point",
    "lambda_masked_model",
    "masked_model",
    "n_units",
    "tail_extras",
    "tail_model",
    "unit_mask",
]

UNIT_KINDS = ("element", "channel")
MASK_SUFFIX = "_mask"
LAMBDA_SUFFIX = "_lambda_mask"


@keras.saving.register_keras_serializable(package="kerabl")
class UnitMask(keras.layers.Layer):
    """Multiplies its input by a non-trainable weight `mask` of shape input_shape[1:], ones at build.

        mask = UnitMask(name="conv_3_mask")
        y = mask(x)                      # y == x while the mask is all ones
        mask.mask.assign(np.zeros(mask.mask.shape, "float32"))   # now y == 0, no retrace

    With all ones the output equals the input bit for bit (x * 1.0 == x).
    """

    def build(self, input_shape: tuple) -> None:
        """Creates the `mask` weight (ones) of shape `input_shape[1:]`."""
        self.mask = self.add_weight(
            name="mask",
            shape=tuple(input_shape[1:]),
            initializer="ones",
            trainable=False,
            dtype=self.variable_dtype,
        )

    def call(self, inputs):
        """Returns `inputs * mask` (the mask broadcast over the batch)."""
        return inputs * keras.ops.cast(self.mask, inputs.dtype)

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        """The output has the input's shape."""
        return input_shape


# ----------------------------------------------------------------------------- graph helpers


def _functional(model: keras.Model) -> keras.Model:
    """The functional graph of `model` (a Sequential is viewed through its inputs and outputs)."""
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


def _layer_names(model: keras.Model) -> list[str]:
    """Names of the model's non-input layers, in model order."""
    return [lay.name for lay in model.layers if not isinstance(lay, keras.layers.InputLayer)]


def _unknown_layer(model: keras.Model, name: object, names: Sequence[str] | None = None) -> KerablError:
    """The error for a layer name that the model does not have, with a few valid names."""
    names = list(_layer_names(model) if names is None else names)
    few = ", ".join(names[:4] + (["...", names[-1]] if len(names) > 5 else names[4:]))
    return KerablError(
        f"model {model.name!r} has no layer {name!r}; valid names include: {few}"
    )


def _get_layer(model: keras.Model, layer: str | keras.layers.Layer) -> keras.layers.Layer:
    """The layer object for a name or a layer of `model`."""
    name = layer.name if isinstance(layer, keras.layers.Layer) else layer
    if name not in _layer_names(model):
        raise _unknown_layer(model, name)
    return model.get_layer(name)


def _model_nodes(model: keras.Model) -> list:
    """The model's call nodes in topological order (inputs first)."""
    return [
        node
        for depth in sorted(model._nodes_by_depth, reverse=True)
        for node in model._nodes_by_depth[depth]
    ]


def _layer_node(model: keras.Model, layer: str | keras.layers.Layer):
    """The single call node of `layer` in `model` (shared layers are refused)."""
    lay = _get_layer(model, layer)
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


def _producer_name(tensor) -> str:
    """Name of the layer (or input layer) that produced `tensor`."""
    return tensor._keras_history.operation.name


# ----------------------------------------------------------------------------- cut points, tails


def is_cut_point(model: keras.Model, layer: str | keras.layers.Layer) -> bool:
    """Whether the output of `layer` alone determines the network output.

        is_cut_point(vgg16, "block3_conv2")                # True
        is_cut_point(resnet101, "conv3_block2_2_relu")     # False: the skip tensor crosses it

    Args:
        model: a functional (or Sequential) Keras model.
        layer: a layer name of the model (or the layer itself).

    Returns:
        True when no tensor produced before the layer (model input included) is consumed
        after it other than through the layer's output.
    """
    model = _functional(model)
    return not _crossing_tensors(model, _layer_node(model, layer))


def cut_points(model: keras.Model) -> list[str]:
    """Names of every cut point of `model`, in model order.

        cut_points(vgg16)[:2]          # ["block1_conv1", "block1_conv2"]
        "conv2_block1_out" in cut_points(resnet101)   # True

    Args:
        model: a functional (or Sequential) Keras model.

    Returns:
        The non-input layers whose output alone determines the network output.
    """
    model = _functional(model)
    return [name for name in _layer_names(model) if is_cut_point(model, name)]


def tail_extras(model: keras.Model, layer: str | keras.layers.Layer) -> list[str]:
    """Names of the layers whose outputs the tail needs besides `layer`'s output, in input order.

        tail_extras(resnet101, "conv3_block2_2_relu")   # ["conv3_block1_out"]
        tail_extras(vgg16, "block3_conv2")              # [] (a cut point)

    Args:
        model: a functional (or Sequential) Keras model.
        layer: a layer name of the model (or the layer itself).

    Returns:
        The producing layer names of the extra tail inputs (the model's input layer name when
        the raw input is needed after the cut).
    """
    model = _functional(model)
    return [_producer_name(t) for t in _crossing_tensors(model, _layer_node(model, layer))]


def head_model(model: keras.Model, layer: str | keras.layers.Layer) -> keras.Model:
    """The model from the input to `[layer output, *extra tensors]`, sharing the layers.

        head = head_model(resnet101, "conv3_block2_2_relu")
        act, skip = head.predict_on_batch(x)
        tail_model(resnet101, "conv3_block2_2_relu").predict_on_batch([act, skip])  # == model(x)

    Args:
        model: a functional (or Sequential) Keras model.
        layer: a layer name of the model (or the layer itself).

    Returns:
        A model with one output at a cut point, else a list of outputs ordered as `tail_extras`.
    """
    model = _functional(model)
    node = _layer_node(model, layer)
    outputs = [node.outputs[0], *_crossing_tensors(model, node)]
    return keras.Model(
        model.inputs, outputs[0] if len(outputs) == 1 else outputs, name=f"{model.name}_head"
    )


def tail_model(model: keras.Model, layer: str | keras.layers.Layer) -> keras.Model:
    """The model from `[layer output, *extra tensors]` to the model output, sharing the layers.

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
    model = _functional(model)
    node = _layer_node(model, layer)
    crossing = [node.outputs[0], *_crossing_tensors(model, node)]
    inputs = [
        keras.Input(batch_shape=t.shape, dtype=t.dtype, name=_producer_name(t)) for t in crossing
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
    tail.kerabl_extra = tuple(_producer_name(t) for t in crossing[1:])
    return tail


# ----------------------------------------------------------------------------- units and masks


def _check_unit(unit: str) -> None:
    """Refuses a unit kind other than "element" or "channel"."""
    if unit not in UNIT_KINDS:
        raise KerablError(f"unit must be one of {', '.join(UNIT_KINDS)}; got {unit!r}")


def _units_per_kind(shape: Sequence[int], unit: str) -> int:
    """How many units of kind `unit` a layer output of `shape` (no batch) has."""
    _check_unit(unit)
    return int(np.prod(shape)) if unit == "element" else int(shape[-1])


def n_units(model: keras.Model, layer: str | keras.layers.Layer, unit: str) -> int:
    """Number of units of `layer`: every output element, or its channels (last axis).

        n_units(vgg16, "block1_conv1", "channel")   # 64
        n_units(vgg16, "block1_conv1", "element")   # 224 * 224 * 64

    Args:
        model: a Keras model.
        layer: a layer name of the model (or the layer itself).
        unit: "element" (prod of the output shape without batch) or "channel" (its last dim).

    Returns:
        The unit count.
    """
    return _units_per_kind(_get_layer(model, layer).output.shape[1:], unit)


def _unit_indices(units: Sequence[int], count: int, what: str) -> np.ndarray:
    """`units` as a flat int array, refusing indices outside [0, count)."""
    idx = np.asarray(units).reshape(-1)
    if idx.size and not np.issubdtype(idx.dtype, np.integer):
        raise KerablError(f"{what} indices must be integers; got dtype {idx.dtype}")
    idx = idx.astype(np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= count):
        raise KerablError(
            f"{what} indices must lie in [0, {count}); got min {idx.min()}, max {idx.max()}"
        )
    return idx


def unit_mask(shape: Sequence[int], units: Sequence[int], unit: str) -> np.ndarray:
    """A 0/1 float32 array of `shape` with zeros at `units`.

        unit_mask((2, 2, 3), [1], "channel")[..., 1]   # all zeros, other channels ones
        unit_mask((2, 2, 3), [4], "element")[0, 1, 1]  # 0.0: flat index 4 in (H, W, C) order

    Args:
        shape: a layer output shape without the batch axis, channels last.
        units: element units are flat indices into the output flattened in Keras (H, W, C)
            order; channel units are channel indices (every spatial position is zeroed).
        unit: "element" or "channel".

    Returns:
        The mask array.
    """
    shape = tuple(int(s) for s in shape)
    idx = _unit_indices(units, _units_per_kind(shape, unit), f"{unit} unit")
    mask = np.ones(shape, dtype=np.float32)
    if unit == "element":
        mask.reshape(-1)[idx] = 0.0
    else:
        mask[..., idx] = 0.0
    return mask


def _reorder(indices: Sequence[int], shape: Sequence[int], src: tuple, dst: tuple) -> np.ndarray:
    """Flat indices of an array laid out as axes `src` re-expressed in the layout `dst`."""
    shape = tuple(int(s) for s in shape)
    idx = _unit_indices(indices, int(np.prod(shape)), "element")
    coords = np.unravel_index(idx, tuple(shape[a] for a in src))
    by_axis = dict(zip(src, coords))
    return np.ravel_multi_index(
        tuple(by_axis[a] for a in dst), tuple(shape[a] for a in dst)
    ).astype(np.int64)


def chw_to_hwc(indices: Sequence[int], shape: Sequence[int]) -> np.ndarray:
    """Flat element indices in (C, H, W) order converted to Keras (H, W, C) order.

        chw_to_hwc([1], (2, 2, 3))   # [3]: (c=0, h=0, w=1) is (h=0, w=1, c=0)
        hwc_to_chw(chw_to_hwc(i, shape), shape)   # == i

    Args:
        indices: flat indices into a (C, H, W) array (the authors'/PyTorch order).
        shape: the Keras layer output shape (H, W, C) without batch; a 1-D (dense) shape
            leaves the indices unchanged.

    Returns:
        The same elements as flat indices into the (H, W, C) array.
    """
    rank = len(shape)
    return _reorder(indices, shape, (rank - 1, *range(rank - 1)), tuple(range(rank)))


def hwc_to_chw(indices: Sequence[int], shape: Sequence[int]) -> np.ndarray:
    """Flat element indices in Keras (H, W, C) order converted to (C, H, W) order.

        hwc_to_chw([3], (2, 2, 3))   # [1]
        chw_to_hwc(hwc_to_chw(i, shape), shape)   # == i

    Args:
        indices: flat indices into the Keras (H, W, C) layer output.
        shape: the Keras layer output shape (H, W, C) without batch.

    Returns:
        The same elements as flat indices into the (C, H, W) array.
    """
    rank = len(shape)
    return _reorder(indices, shape, tuple(range(rank)), (rank - 1, *range(rank - 1)))


# ----------------------------------------------------------------------------- masked models


def _check_targets(model: keras.Model, targets: Sequence[str], suffix: str) -> list[str]:
    """`targets` as a list, refusing unknown names, duplicates and name clashes."""
    if isinstance(targets, str):
        targets = [targets]
    targets = list(targets)
    names = _layer_names(model)
    for target in targets:
        if target not in names:
            raise _unknown_layer(model, target, names)
        if target + suffix in names:
            raise KerablError(
                f"model {model.name!r} already has a layer {target + suffix!r}: "
                "pass the unmasked model"
            )
        _layer_node(model, target)
    if len(set(targets)) != len(targets):
        raise KerablError(f"targets repeat a layer name: {targets}; list each layer once")
    if not targets:
        raise KerablError("targets is empty: name at least one layer to mask")
    return targets


def _rebuild_with(model: keras.Model, after: Mapping[str, keras.layers.Layer]) -> keras.Model:
    """`model` rebuilt on the same layers with `after[name]` applied to the output of `name`."""

    def call_function(layer, *args, **kwargs):
        out = layer(*args, **kwargs)
        return after[layer.name](out) if layer.name in after else out

    return keras.models.clone_model(
        model, clone_function=lambda layer: layer, call_function=call_function
    )


def masked_model(model: keras.Model, targets: Sequence[str]) -> keras.Model:
    """The model rebuilt once with a `UnitMask` named f"{target}_mask" after each target layer.

        masked = masked_model(net.model, net.targets)
        with ablated(masked, {"conv_3": [0, 5]}):
            scores = masked.predict_on_batch(x)

    Args:
        model: a functional (or Sequential) Keras model; its layers (and weights) are shared.
        targets: names of the layers after whose output a mask goes.

    Returns:
        A functional model; with all-ones masks its outputs equal the original's bit for bit.
        It saves and loads with `model.save` / `keras.models.load_model(..., safe_mode=True)`
        once `kerabl.masking` is imported.
    """
    model = _functional(model)
    targets = _check_targets(model, targets, MASK_SUFFIX)
    return _rebuild_with(model, {t: UnitMask(name=t + MASK_SUFFIX) for t in targets})


def lambda_masked_model(
    model: keras.Model, layer: str | keras.layers.Layer, mask: np.ndarray
) -> keras.Model:
    """The paper engine: the model rebuilt with `Lambda(lambda x: x * const)` after `layer`.

        mask = unit_mask(vgg16.get_layer("block3_conv2").output.shape[1:], units, "element")
        paper = lambda_masked_model(vgg16, "block3_conv2", mask)
        scores = paper.predict_on_batch(x)

    The mask is baked in as a constant, so build one model per mask (per cell), as the
    authors' code did; the layers and weights are shared with `model`.

    Args:
        model: a functional (or Sequential) Keras model.
        layer: the layer after whose output the mask goes.
        mask: an array of the layer's output shape without batch (e.g. from `unit_mask`).

    Returns:
        The rebuilt functional model (the Lambda is named f"{layer}_lambda_mask"; not meant to be
        saved: Lambda layers do not load with safe_mode=True).
    """
    model = _functional(model)
    name = _get_layer(model, layer).name
    _check_targets(model, [name], LAMBDA_SUFFIX)
    const = np.asarray(mask, dtype=np.float32)
    expected = tuple(_get_layer(model, name).output.shape[1:])
    if const.shape != expected:
        raise KerablError(
            f"mask for {name!r} has shape {const.shape}, the layer output is {expected}: "
            "build it with unit_mask(shape, units, unit)"
        )
    lam = keras.layers.Lambda(lambda x, c=const: x * c, name=name + LAMBDA_SUFFIX)
    return _rebuild_with(model, {name: lam})


def _mask_layer(masked: keras.Model, target: str) -> UnitMask:
    """The `UnitMask` after `target` in a model from `masked_model`."""
    masks = [lay.name[: -len(MASK_SUFFIX)] for lay in masked.layers if isinstance(lay, UnitMask)]
    if target not in masks:
        if not masks:
            raise KerablError(
                f"model {masked.name!r} has no UnitMask layers: rebuild it with masked_model(...)"
            )
        raise _unknown_layer(masked, f"{target} (masked target)", masks)
    return masked.get_layer(target + MASK_SUFFIX)


@contextmanager
def ablated(
    masked: keras.Model, units_by_layer: Mapping[str, Sequence[int]], unit: str = "element"
) -> Iterator[keras.Model]:
    """Zeroes units of target layers inside a with-block, restoring the masks on exit.

        with ablated(masked, {"conv_3": [3, 17], "dense_1": [0]}, unit="channel") as m:
            scores = m.predict_on_batch(x)
        # every mask touched is back to its previous value here, even after an exception

    Each named mask is set (not combined with its current value) to ones with zeros at the
    units; a nested `ablated` on another layer keeps the outer one's setting. Only variable
    values change, so a `tf.function` calling the model is not retraced.

    Args:
        masked: a model from `masked_model`.
        units_by_layer: target layer name -> unit indices (see `unit_mask`).
        unit: "element" or "channel".

    Yields:
        The masked model.
    """
    _check_unit(unit)
    layers = {t: _mask_layer(masked, t) for t in units_by_layer}
    values = {
        t: unit_mask(tuple(lay.mask.shape), units_by_layer[t], unit) for t, lay in layers.items()
    }
    previous = {t: np.array(lay.mask.numpy()) for t, lay in layers.items()}
    try:
        for t, lay in layers.items():
            lay.mask.assign(values[t])
        yield masked
    finally:
        for t, lay in layers.items():
            lay.mask.assign(previous[t])
