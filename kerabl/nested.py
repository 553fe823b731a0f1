"""Models inside models: one flat functional graph, and layer names as paths.

A transfer-learning classifier calls a whole base model as one layer
(`keras.Sequential([MobileNetV2(include_top=False), GlobalAveragePooling2D(), Dense(n)])`);
its inner layers are outside the outer model's graph, so they cannot be cut, recorded or
ablated there. `flatten_nested` rebuilds such a model as one functional graph whose layers
are copies of every leaf layer (same configuration, same weights), so the graph walker, the
masks, the tails and the activation recorder see every inner layer as a layer of the model.

- `nested_models(model)`: paths of the functional models called inside `model`.
- `flatten_nested(model)`: the flat model (`model` itself when nothing is nested).
- `flat_network(network)`: a kerabl `Network` (or a bare model) with its model flattened.
- `layer_paths(model)`: {layer name: path} of the layers that came from inside a nested model.
- `from_paths(model, names)`: each path replaced by its layer's name, other names kept.
- `resolve_layer(model, name)`, `resolve_layers(model, names)`: a layer name or path
  (`base/inner`) to the layer's name in the flat model, or a one-line error.

A flat layer keeps its inner name where that name is used once in the whole model; where two
layers share a name, the nested ones are named by their path with "." for "/"
(`base_a.conv1`), since Keras layer names cannot hold "/". Either way the path names it too.

Keras is imported inside the functions, so importing this module does not load TensorFlow.

Example:
    flat = flatten_nested(classifier)            # Sequential([MobileNetV2(...), GAP, Dense])
    resolve_layer(flat, "mobilenetv2_0.35_96/block_4_add")   # "block_4_add"
    flat.predict_on_batch(x)                     # == classifier.predict_on_batch(x)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from kerabl.errors import KerablError

if TYPE_CHECKING:
    import keras

SEPARATOR = "/"


def _graph(model) -> keras.Model | None:
    """The functional graph of a functional or built Sequential model, else None."""
    import keras

    if not isinstance(model, keras.Model):
        return None
    if isinstance(model, keras.Sequential):
        try:
            return keras.Model(model.inputs, model.outputs, name=model.name)
        except (AttributeError, ValueError):
            return None
    return model if hasattr(model, "_nodes_by_depth") else None


def _nodes(graph) -> list:
    """The graph's call nodes in topological order (inputs first)."""
    return [node for depth in sorted(graph._nodes_by_depth, reverse=True)
            for node in graph._nodes_by_depth[depth]]


def _calls(graph, prefix: str = ""):
    """(path prefix, node) of every call node, nested graphs entered, in topological order."""
    import keras

    for node in _nodes(graph):
        op = node.operation
        if isinstance(op, keras.layers.InputLayer):
            continue
        yield prefix, node
        inner = _graph(op)
        if inner is not None:
            yield from _calls(inner, f"{prefix}{op.name}{SEPARATOR}")


def nested_models(model) -> list[str]:
    """Paths of the functional (or Sequential) models called inside `model`, outermost first.

    Example:
        nested_models(keras.Sequential([base, GlobalAveragePooling2D(), Dense(3)]))
        # ["mobilenetv2_0.35_96"]
    """
    graph = _graph(model)
    if graph is None:
        return []
    return [prefix + node.operation.name for prefix, node in _calls(graph)
            if _graph(node.operation) is not None]


def _flat_names(graph) -> dict[int, str]:
    """{id(leaf layer): its name in the flat model}: the bare name unless used twice."""
    leaves: dict[int, tuple[str, str]] = {}
    for prefix, node in _calls(graph):
        if _graph(node.operation) is None:
            leaves.setdefault(id(node.operation), (prefix, node.operation.name))
    count: dict[str, int] = {}
    for _, name in leaves.values():
        count[name] = count.get(name, 0) + 1
    for tensor in graph.inputs:
        name = tensor._keras_history.operation.name
        count[name] = count.get(name, 0) + 1
    names = {}
    for key, (prefix, name) in leaves.items():
        clash = count[name] > 1 and prefix
        names[key] = (prefix + name).replace(SEPARATOR, ".") if clash else name
    if len(set(names.values())) != len(names):
        raise KerablError(f"model {graph.name!r} has nested layers whose paths give one name "
                          "twice: rename the nested models or their layers")
    return names


def _copy(layer, name: str):
    """A new layer of `layer`'s class and configuration, named `name` (weights set later); an
    operation that is not a layer (`x + y` on tensors) holds no state and is copied where its
    config allows, else called as it is."""
    import keras

    try:
        return type(layer).from_config(dict(layer.get_config(), name=name))
    except Exception as error:  # noqa: BLE001 - any from_config failure: the layer's class
        if not isinstance(layer, keras.layers.Layer):
            return layer
        raise KerablError(f"layer {layer.name!r} ({type(layer).__name__}) inside a nested model "
                          f"cannot be rebuilt from its config ({type(error).__name__}: "
                          f"{str(error)[:200]}): give the class a get_config/from_config that "
                          "round-trips") from None


def _inline(graph, inputs: list, prefix: str, names: dict, copies: dict, paths: dict) -> list:
    """Call copies of `graph`'s leaf layers on `inputs`; the tensors of `graph.outputs`."""
    import keras

    if len(inputs) != len(graph.inputs):
        raise KerablError(f"nested model {graph.name!r} takes {len(graph.inputs)} inputs and is "
                          f"called on {len(inputs)}: call it on its inputs as a list")
    values = {id(t): new for t, new in zip(graph.inputs, inputs)}
    for node in _nodes(graph):
        op = node.operation
        if isinstance(op, keras.layers.InputLayer):
            continue
        args, kwargs = node.arguments.fill_in(values)
        inner = _graph(op)
        if inner is not None:
            tensors = [t for t in keras.tree.flatten(args) if isinstance(t, keras.KerasTensor)]
            outs = _inline(inner, tensors, f"{prefix}{op.name}{SEPARATOR}", names, copies, paths)
        else:
            if id(op) not in copies:
                copies[id(op)] = (op, _copy(op, names[id(op)]))
                if prefix:
                    paths[names[id(op)]] = prefix + op.name
            outs = keras.tree.flatten(copies[id(op)][1](*args, **kwargs))
        values.update((id(t), new) for t, new in zip(node.outputs, outs))
    return [values[id(t)] for t in graph.outputs]


def flatten_nested(model) -> keras.Model:
    """`model` as one functional graph with every nested model's layers in it (same weights).

    Example:
        base = keras.applications.MobileNetV2(include_top=False, input_shape=(96, 96, 3),
                                              alpha=0.35, weights=None)
        flat = flatten_nested(keras.Sequential([base, GlobalAveragePooling2D(), Dense(3)]))
        flat.get_layer("block_4_add")            # a layer of the flat model
        layer_paths(flat)["block_4_add"]         # "mobilenetv2_0.35_96/block_4_add"

    Args:
        model: a functional or built Sequential Keras model.

    Returns:
        `model` itself when it calls no functional or Sequential model; else a new functional
        model of the same name, inputs and outputs, whose layers are copies of the leaf layers
        (configuration and weights copied; the original model is left as it was), with the
        attribute `kerabl_paths`: ((flat name, path), ...) of the layers from inside.

    Raises:
        KerablError: a nested layer that cannot be rebuilt from its config, or a nested model
            called on a different number of tensors than it takes.
    """
    import keras

    graph = _graph(model)
    if graph is None or not nested_models(graph):
        return model
    inputs = [keras.Input(batch_shape=t.shape, dtype=t.dtype,
                          name=t._keras_history.operation.name) for t in graph.inputs]
    copies: dict = {}
    paths: dict[str, str] = {}
    outputs = _inline(graph, inputs, "", _flat_names(graph), copies, paths)
    flat = keras.Model(inputs[0] if len(inputs) == 1 else inputs,
                       outputs[0] if len(outputs) == 1 else outputs, name=model.name)
    for original, copy in copies.values():
        if copy is not original and getattr(original, "weights", None):
            copy.set_weights(original.get_weights())
    flat.kerabl_paths = tuple(paths.items())
    return flat


def flat_network(network_or_model):
    """`network_or_model` with its model flattened (`flatten_nested`); itself when nothing is nested.

    Example:
        net = flat_network(Network(name="flowers", model=classifier, ...))
        net.model.get_layer("block_4_add")   # a layer of the flat model

    Args:
        network_or_model: a kerabl `Network` (a dataclass with a `model` field) or a Keras model.
    """
    import dataclasses

    model = getattr(network_or_model, "model", network_or_model)
    flat = flatten_nested(model)
    if flat is model:
        return network_or_model
    return flat if model is network_or_model else dataclasses.replace(network_or_model, model=flat)


def layer_paths(model) -> dict[str, str]:
    """{flat layer name: path} of the layers that came from inside nested models ({} if none).

    Example:
        layer_paths(flatten_nested(classifier))["block_4_add"]
        # "mobilenetv2_0.35_96/block_4_add"
    """
    return {str(name): str(path) for name, path in getattr(model, "kerabl_paths", ())}


def from_paths(model, names: Sequence[str]) -> list[str]:
    """`names` with each path into a nested model replaced by its layer's name; the others kept
    as they are (for a caller that checks them with its own message).

    Example:
        from_paths(flat, ["mobilenetv2_0.35_96/block_4_add", "dense", "nope"])
        # ["block_4_add", "dense", "nope"]
    """
    by_path = {path: flat for flat, path in layer_paths(model).items()}
    return [by_path.get(str(name), str(name)) for name in names]


def resolve_layer(model, name: str) -> str:
    """The flat model's name for a layer name or path; a one-line error for anything else.

    Example:
        resolve_layer(flat, "mobilenetv2_0.35_96/block_4_add")   # "block_4_add"
        resolve_layer(flat, "block_4_add")                       # "block_4_add"
        resolve_layer(flat, "block_99_add")   # KerablError: ... valid names include ...
    """
    import keras

    names = [lay.name for lay in model.layers if not isinstance(lay, keras.layers.InputLayer)]
    if name in names:
        return name
    paths = layer_paths(model)
    by_path = {path: flat for flat, path in paths.items()}
    if name in by_path:
        return by_path[name]
    inside = sorted(path for path in paths.values() if path.endswith(SEPARATOR + str(name)))
    if inside:
        raise KerablError(f"layer name {name!r} is in several nested models of {model.name!r}: "
                          f"name it by its path, one of {', '.join(inside)}")
    few = ", ".join(names[:4] + (["...", names[-1]] if len(names) > 5 else names[4:]))
    hint = " (or a path BASE/LAYER that `kerabl layers` lists)" if paths else ""
    raise KerablError(f"model {model.name!r} has no layer {name!r}; valid names include: "
                      f"{few}{hint}")


def resolve_layers(model, names: Sequence[str]) -> list[str]:
    """`resolve_layer` of each name, in order.

    Example:
        resolve_layers(flat, ["mobilenetv2_0.35_96/block_4_add", "dense"])
        # ["block_4_add", "dense"]
    """
    return [resolve_layer(model, name) for name in names]
