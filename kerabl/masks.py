"""Units and masks: unit kinds, mask arrays, index order, and masks inside a Keras model.

- `UNIT_KINDS`: "element" (every activation) and "channel" (a feature map).
- `n_units`, `unit_mask`, `cell_masks`, `keep_masks`: unit counts and mask arrays.
- `chw_to_hwc`, `hwc_to_chw`: element index conversion between Keras (H, W, C) order and the
  authors'/PyTorch (C, H, W) order.
- `UnitMask`: a registered Keras layer multiplying its input by a non-trainable 0/1 weight `mask`.
- `masked_model(model, targets)`: the model rebuilt once with a `UnitMask` named
  `f"{target}_mask"` after each target layer, sharing the original weights.
- `ablated(masked, {layer: units}, unit)`: a context manager that zeroes units and restores the
  masks on exit, whatever happened inside; changing a mask never retraces a `tf.function`.
- `lambda_masked_model(model, layer, mask)`: the paper engine's model, a literal `Lambda`
  multiplying by a constant mask, rebuilt per mask as the authors did.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Mapping, Sequence

import keras
import numpy as np

from kerabl.errors import KerablError
from kerabl.graph import functional, get_layer, layer_names, layer_node, rebuild_with, unknown_layer


UNIT_KINDS = ("element", "channel")


MASK_SUFFIX = "_mask"


LAMBDA_SUFFIX = "_lambda_mask"


@keras.saving.register_keras_serializable(package="kerabl")
class UnitMask(keras.layers.Layer):
    """Multiplies its input by a non-trainable weight `mask` of shape input_shape[1:], ones at build.

    Example:
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

    Example:
        n_units(vgg16, "block1_conv1", "channel")   # 64
        n_units(vgg16, "block1_conv1", "element")   # 224 * 224 * 64

    Args:
        model: a Keras model.
        layer: a layer name of the model (or the layer itself).
        unit: "element" (prod of the output shape without batch) or "channel" (its last dim).

    Returns:
        The unit count.
    """
    return _units_per_kind(get_layer(model, layer).output.shape[1:], unit)


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

    Example:
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

    Example:
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

    Example:
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


def _check_targets(model: keras.Model, targets: Sequence[str], suffix: str) -> list[str]:
    """`targets` as a list, refusing unknown names, duplicates and name clashes."""
    if isinstance(targets, str):
        targets = [targets]
    targets = list(targets)
    names = layer_names(model)
    for target in targets:
        if target not in names:
            raise unknown_layer(model, target, names)
        if target + suffix in names:
            raise KerablError(
                f"model {model.name!r} already has a layer {target + suffix!r}: "
                "pass the unmasked model"
            )
        layer_node(model, target)
    if len(set(targets)) != len(targets):
        raise KerablError(f"targets repeat a layer name: {targets}; list each layer once")
    if not targets:
        raise KerablError("targets is empty: name at least one layer to mask")
    return targets


def masked_model(model: keras.Model, targets: Sequence[str]) -> keras.Model:
    """The model rebuilt once with a `UnitMask` named f"{target}_mask" after each target layer.

    Example:
        masked = masked_model(net.model, net.targets)
        with ablated(masked, {"conv_3": [0, 5]}):
            scores = masked.predict_on_batch(x)

    Args:
        model: a functional (or Sequential) Keras model; its layers (and weights) are shared.
        targets: names of the layers after whose output a mask goes.

    Returns:
        A functional model; with all-ones masks its outputs equal the original's bit for bit.
        It saves and loads with `model.save` / `keras.models.load_model(..., safe_mode=True)`
        once `kerabl.masks` is imported.
    """
    model = functional(model)
    targets = _check_targets(model, targets, MASK_SUFFIX)
    return rebuild_with(model, {t: UnitMask(name=t + MASK_SUFFIX) for t in targets})


def lambda_masked_model(
    model: keras.Model, layer: str | keras.layers.Layer, mask: np.ndarray,
    fill: np.ndarray | None = None
) -> keras.Model:
    """The paper engine: the model rebuilt with `Lambda(lambda x: x * const)` after `layer`.

    Example:
        mask = unit_mask(vgg16.get_layer("block3_conv2").output.shape[1:], units, "element")
        paper = lambda_masked_model(vgg16, "block3_conv2", mask)
        scores = paper.predict_on_batch(x)

    The mask is baked in as a constant, so build one model per mask (per cell), as the
    authors' code did; the layers and weights are shared with `model`.

    Args:
        model: a functional (or Sequential) Keras model.
        layer: the layer after whose output the mask goes.
        mask: an array of the layer's output shape without batch (e.g. from `unit_mask`).
        fill: the values removed units take (`kerabl.replacement`): None (zero), an array of
            the layer's output shape (mean) or (batch, *shape) per image (resample; the model
            then takes batches of exactly that many images). The Lambda computes
            `x * mask + (1 - mask) * fill`.

    Returns:
        The rebuilt functional model (the Lambda is named f"{layer}_lambda_mask"; not meant to be
        saved: Lambda layers do not load with safe_mode=True).
    """
    model = functional(model)
    name = get_layer(model, layer).name
    _check_targets(model, [name], LAMBDA_SUFFIX)
    const = np.asarray(mask, dtype=np.float32)
    expected = tuple(get_layer(model, name).output.shape[1:])
    if const.shape != expected:
        raise KerablError(
            f"mask for {name!r} has shape {const.shape}, the layer output is {expected}: "
            "build it with unit_mask(shape, units, unit)"
        )
    if fill is None:
        lam = keras.layers.Lambda(lambda x, c=const: x * c, name=name + LAMBDA_SUFFIX)
    else:
        added = (1.0 - const) * np.asarray(fill, dtype=np.float32)
        lam = keras.layers.Lambda(lambda x, c=const, f=added: x * c + f, name=name + LAMBDA_SUFFIX)
    return rebuild_with(model, {name: lam})


def _mask_layer(masked: keras.Model, target: str) -> UnitMask:
    """The `UnitMask` after `target` in a model from `masked_model`."""
    masks = [lay.name[: -len(MASK_SUFFIX)] for lay in masked.layers if isinstance(lay, UnitMask)]
    if target not in masks:
        if not masks:
            raise KerablError(
                f"model {masked.name!r} has no UnitMask layers: rebuild it with masked_model(...)"
            )
        raise unknown_layer(masked, f"{target} (masked target)", masks)
    return masked.get_layer(target + MASK_SUFFIX)


@contextmanager
def ablated(
    masked: keras.Model, units_by_layer: Mapping[str, Sequence[int]], unit: str = "element"
) -> Iterator[keras.Model]:
    """Zeroes units of target layers inside a with-block, restoring the masks on exit.

    Example:
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


def cell_masks(shape: Sequence[int], cells: Sequence[np.ndarray], unit: str) -> np.ndarray:
    """One 0/1 mask per cell over a layer output of `shape`: (n_cells, *shape) float32.

    Example:
        cell_masks((2, 2, 3), [np.array([0]), np.array([1, 2])], "channel").shape  # (2, 2, 2, 3)
    """
    return np.stack([unit_mask(tuple(shape), units, unit) for units in cells])


def keep_masks(n_channels: int, ablated_sets: Sequence[Sequence[int]]) -> np.ndarray:
    """(G, n_channels) float32 keep masks, 0 at each set's channels.

    Example:
        keep_masks(3, [[1], [0, 2]])   # [[1, 0, 1], [0, 1, 0]]
    """
    keep = np.ones((len(ablated_sets), n_channels), dtype=np.float32)
    for row, units in zip(keep, ablated_sets):
        row[list(units)] = 0.0
    return keep


def unit_indices(units, n: int) -> np.ndarray:
    """Unit indices as int64, all `n` units when `units` is None; a KerablError for one outside 0..n-1.

    Example:
        unit_indices([3, 1], 8)   # array([3, 1]); unit_indices(None, 3): array([0, 1, 2])
    """
    units = np.arange(n) if units is None else np.asarray(units, dtype=np.int64).reshape(-1)
    if len(units) and (units.min() < 0 or units.max() >= n):
        raise KerablError(f"units must lie in 0..{n - 1}, got {units.min()}..{units.max()}")
    return units
