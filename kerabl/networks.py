"""Networks outside the zoo: any `keras.applications` constructor and `.keras` model files.

- `load_any_network(spec, weights, ...)`: a zoo name (`kerabl.models.load_network`), a
  keras.applications constructor name (ResNet50, EfficientNetB0, ...) or a `.keras` file path,
  as a `kerabl.models.Network` whose input size, class count and default targets come from
  the model itself.
- `block_targets(model)`: default targets of a model kerabl does not know: the outputs of its
  conv/dense blocks that are cut points.
- `layer_table(model, targets)`: one row per layer (units, cut point, default target), what
  `kerabl layers` prints.
- `application(name)`: a keras.applications constructor by name (case-insensitive).
- `import_custom_objects(text)`: `module:name,...` (or a module alone, which registers its
  serialisables when imported) as a custom-objects dict.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
from pathlib import Path

from kerabl import models, weightfiles
from kerabl.errors import KerablError
from kerabl.graph import cut_points, functional, inbound_layers
from kerabl.models import MODEL_NAMES
from kerabl.nested import flatten_nested, layer_paths

CONV_KINDS = ("Conv1D", "Conv2D", "Conv3D", "DepthwiseConv1D", "DepthwiseConv2D",
              "SeparableConv1D", "SeparableConv2D", "Conv2DTranspose", "Conv3DTranspose", "Dense",
              "EinsumDense")
# Layers that continue a conv/dense block: the block's output is after them.
BLOCK_CONTINUATION = ("BatchNormalization", "LayerNormalization", "GroupNormalization",
                      "UnitNormalization", "Activation", "ReLU", "LeakyReLU", "ELU", "PReLU",
                      "Softmax")


def application(name: str):
    """The keras.applications constructor called `name` (case-insensitive), or None.

    Example:
        application("resnet50")   # keras.applications.ResNet50
        application("alexnet")    # None
    """
    import keras

    names = {n.lower(): n for n in dir(keras.applications) if n[:1].isupper()}
    found = names.get(str(name).lower())
    return getattr(keras.applications, found) if found else None


def application_names() -> list[str]:
    """Every keras.applications constructor name, sorted.

    Example:
        "ConvNeXtTiny" in application_names()   # True
    """
    import keras

    return sorted(n for n in dir(keras.applications) if n[:1].isupper())


def application_preprocess(name: str):
    """The `preprocess_input` of the keras.applications model `name`, or None.

    Example:
        application_preprocess("ResNet50")(batch)   # caffe: BGR, ImageNet mean subtracted
    """
    constructor = application(name)
    if constructor is None:
        return None
    return getattr(importlib.import_module(constructor.__module__), "preprocess_input", None)


def import_custom_objects(text: str | None) -> dict:
    """Custom objects named as `module:name` (comma-separated); a module alone is imported only.

    Example:
        import_custom_objects("mylayers:Twice")   # {"Twice": mylayers.Twice}
        import_custom_objects("mylayers")         # {} (its registered serialisables now load)
        import_custom_objects("layers.py:Twice")  # a module file by path

    Raises:
        KerablError: a module that cannot be imported or a name it does not define.
    """
    found: dict = {}
    for item in filter(None, (part.strip() for part in (text or "").split(","))):
        module_name, _, attribute = item.partition(":")
        module = _import(module_name)
        if attribute:
            if not hasattr(module, attribute):
                raise KerablError(f"module {module_name} has no {attribute!r}: check "
                                  "--custom-objects (module:name)")
            found[attribute] = getattr(module, attribute)
    return found


def _import(module_name: str):
    path = Path(module_name)
    try:
        if path.suffix == ".py":
            if not path.is_file():
                raise KerablError(f"custom-objects file {path} does not exist: pass a .py file "
                                  "or an importable module name")
            spec = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[path.stem] = module
            spec.loader.exec_module(module)
            return module
        return importlib.import_module(module_name)
    except KerablError:
        raise
    except Exception as error:  # noqa: BLE001 - any import failure is the user's module
        raise KerablError(f"cannot import {module_name} for --custom-objects "
                          f"({type(error).__name__}: {error}); put it on PYTHONPATH or pass "
                          "its .py path") from None


def is_model_file(spec: str) -> bool:
    """Whether `spec` names a model file rather than a model name.

    Example:
        is_model_file("runs/mine.keras"), is_model_file("ResNet50")   # (True, False)
    """
    return str(spec).endswith((".keras", ".h5")) or "/" in str(spec)


def _load_model_file(path: Path, custom_objects: dict):
    import keras

    if not path.is_file():
        raise KerablError(f"model file {path} does not exist: pass the path of a saved "
                          ".keras model")
    if path.suffix != ".keras":
        raise KerablError(f"{path} is not a .keras file: save the model with "
                          "model.save('name.keras') (Keras 3 format)")
    try:
        return keras.saving.load_model(path, custom_objects=custom_objects or None,
                                       compile=False, safe_mode=True)
    except Exception as error:  # noqa: BLE001 - any loader failure: say what is missing
        text = str(error)
        missing = re.search(r"Could not locate (class|function) '([^']+)'", text)
        if missing:
            raise KerablError(
                f"{path} uses the custom {missing.group(1)} {missing.group(2)!r}, which is not "
                f"registered: pass --custom-objects MODULE:{missing.group(2)} (or a module that "
                "registers it with keras.saving.register_keras_serializable)") from None
        first = text.strip().splitlines()[0][:300] if text.strip() else ""
        raise KerablError(f"cannot load {path} ({type(error).__name__}: {first}): check the "
                          "file and --custom-objects") from None


def input_size_of(model, name: str) -> tuple[int, int]:
    """(h, w) of a model taking one (None, h, w, 3) image batch; else a `KerablError`.

    Example:
        input_size_of(keras.applications.ResNet50(weights=None), "ResNet50")   # (224, 224)
    """
    shapes = model.input_shape if isinstance(model.input_shape, list) else [model.input_shape]
    shape = tuple(shapes[0]) if len(shapes) == 1 else None
    if shape is None or len(shape) != 4 or shape[-1] != 3 or None in shape[1:3]:
        raise KerablError(f"model {name} takes input {model.input_shape}; RGB images can only be "
                          "resized to one (None, h, w, 3) input with fixed h and w: save the model "
                          "with keras.Input((h, w, 3))")
    return int(shape[1]), int(shape[2])


def output_count_of(model, name: str) -> int:
    """The class count of a model with one (None, n_classes) output; else a `KerablError`.

    Example:
        output_count_of(keras.applications.ResNet50(weights=None), "ResNet50")   # 1000
    """
    shape = model.output_shape
    if isinstance(shape, list) or len(shape) != 2 or shape[-1] is None:
        raise KerablError(f"model {name} gives output {shape}; the studies need one "
                          "(None, n_classes) class-score output")
    return int(shape[-1])


def block_targets(model) -> tuple[str, ...]:
    """Outputs of the model's conv/dense blocks that are cut points, in model order.

    Example:
        block_targets(demo_model())
        # ("conv_1", "conv_2", "conv_3", "conv_4", "conv_5", "dense_1", "dense_2")

    A cut point is a target when a conv or dense layer (or a nested model holding one) lies
    between it and the previous target, none of its consumers continues the block (`BLOCK_CONTINUATION`: normalisation or
    activation), and it is not the model's output layer.
    """
    model = functional(model)
    cuts = set(cut_points(model))
    outputs = {t._keras_history.operation.name for t in model.outputs}
    consumers: dict[str, list[str]] = {}
    for layer in model.layers:
        for producer in inbound_layers(layer):
            consumers.setdefault(producer.name, []).append(type(layer).__name__)
    targets, since_target = [], False
    for layer in model.layers:
        since_target = since_target or _has_weights_kind(layer)
        continues = any(kind in BLOCK_CONTINUATION for kind in consumers.get(layer.name, []))
        if since_target and layer.name in cuts and not continues and layer.name not in outputs:
            targets.append(layer.name)
            since_target = False
    return tuple(targets)


def _has_weights_kind(layer) -> bool:
    """A conv or dense layer, or a nested model holding one (ConvNeXt's stem)."""
    inner = getattr(layer, "layers", None) or []
    return type(layer).__name__ in CONV_KINDS or any(map(_has_weights_kind, inner))


def layer_table(model, targets) -> list[dict]:
    """One row per layer: name, kind, output shape, units, cut point, default target, and the
    nested model it came from (`inside`: its path, "" for the model's own layers).

    Example:
        for row in layer_table(net.model, net.targets): print(row["name"], row["units"])
        layer_table(flatten_nested(classifier), ())[0]["inside"]   # "mobilenetv2_0.35_96"
    """
    import keras

    graph = functional(model)
    cuts, chosen = set(cut_points(graph)), set(targets)
    paths = layer_paths(model)
    rows = []
    for layer in graph.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        try:
            shape = tuple(layer.output.shape)
            units = int(_product(shape[1:])) if None not in shape[1:] else None
        except (AttributeError, ValueError):
            shape, units = None, None
        rows.append(dict(name=layer.name, kind=type(layer).__name__, shape=shape, units=units,
                         cut_point=layer.name in cuts, target=layer.name in chosen,
                         inside=paths.get(layer.name, "").rpartition("/")[0]))
    return rows


def _product(values) -> int:
    out = 1
    for v in values:
        out *= int(v)
    return out


def load_any_network(spec: str, weights: str | Path | None = "default", *, alpha: float = 0.35,
                     seed: int = 0, custom_objects: str | None = None):
    """A `Network` for a zoo name, a keras.applications constructor name or a `.keras` file.

    Example:
        net = load_any_network("ResNet50", weights=None, seed=0)   # random weights, "random:0"
        net = load_any_network("my_model.keras")                    # the file's own weights
        net = load_any_network("my_model.keras", custom_objects="mylayers:Twice")

    Args:
        spec: one of `kerabl.models.MODEL_NAMES`, a keras.applications name (any case), or the
            path of a `.keras` file (loaded with `safe_mode=True`, not compiled).
        weights: "default" (zoo: as `load_network`; applications: Keras's ImageNet download;
            a file: its own weights), a weights file path, or None for random weights
            deterministic in `seed`.
        alpha: MobileNetV2 width of the zoo model (ignored otherwise).
        custom_objects: `module:name,...` for custom layers of a `.keras` file.

    Returns:
        A Network: input size from the model's input shape, n_classes from its output,
        targets `block_targets(model)` (zoo models keep theirs), preprocess the application's
        own (applications) or "none" (files: RGB 0..255, resized). A model that calls other
        models as layers (a transfer-learning classifier) comes flattened
        (`kerabl.nested.flatten_nested`): the nested models' layers are its layers.

    Raises:
        KerablError: unknown name, a file that does not load (naming a missing custom object),
            an input or output the studies cannot use, or unfit weights.
    """
    if spec in models.MODEL_NAMES:
        if custom_objects:
            raise KerablError("--custom-objects applies to .keras files, not to zoo models")
        return models.load_network(spec, weights, alpha=alpha, seed=seed)
    use_default = isinstance(weights, str) and weights == "default"
    if is_model_file(spec):
        path = Path(spec).expanduser()
        model = _load_model_file(path, import_custom_objects(custom_objects))
        name, preprocess, weights_id = path.stem, "none", weightfiles.weights_digest(path)
    else:
        constructor = application(spec)
        if constructor is None:
            raise _unknown_model(spec)
        if custom_objects:
            raise KerablError("--custom-objects applies to .keras files, not to applications")
        name, preprocess = constructor.__name__, constructor.__name__.lower()
        model = _application_model(constructor, use_default)
        weights_id = arrays_digest(model) if use_default else None
    if weights is None:
        weightfiles.randomize_weights(model, seed, keep_constant=True)
        weights_id = f"random:{seed}"
    elif not use_default:  # a file's name is no zoo name: never the heuritech loader
        label = Path(spec).name if is_model_file(spec) else name
        weights_id = weightfiles.load_weights_file(label, model, weights)
    model = flatten_nested(model)   # after the weights: they are copied into the flat layers
    return models.Network(name=name, model=model, weights_id=weights_id,
                          targets=block_targets(model), input_size=input_size_of(model, name),
                          preprocess=preprocess, n_classes=output_count_of(model, name))


def untrained_model(spec: str, *, alpha: float = 0.35, custom_objects: str | None = None):
    """`(model, default targets)` of `spec` without loading or drawing weights (a file's own stay);
    nested models flattened as in `load_any_network`.

    Example:
        model, targets = untrained_model("EfficientNetB0")
    """
    if spec in models.MODEL_NAMES:
        model = models.build_model(spec, alpha=alpha)
        return model, models.default_targets(spec, model)
    if is_model_file(spec):
        model = _load_model_file(Path(spec).expanduser(), import_custom_objects(custom_objects))
    elif application(spec) is not None:
        model = application(spec)(weights=None)
    else:
        raise _unknown_model(spec)
    model = flatten_nested(model)
    return model, block_targets(model)


def _unknown_model(spec: str) -> KerablError:
    return KerablError(f"unknown model {spec!r}: choose one of {', '.join(MODEL_NAMES)}, a "
                       "keras.applications name (ResNet50, EfficientNetB0, ...) or a .keras file "
                       "path")


def arrays_digest(model) -> str:
    """`"arrays-sha256:<hex>"` of a model's weight arrays, in `model.weights` order.

    Example:
        arrays_digest(keras.applications.ResNet50())   # identifies Keras's ImageNet download
    """
    import hashlib

    import numpy as np

    digest = hashlib.sha256()
    for variable in model.weights:
        digest.update(np.ascontiguousarray(np.asarray(variable)).tobytes())
    return "arrays-sha256:" + digest.hexdigest()


def _application_model(constructor, imagenet: bool):
    """The application with its ImageNet weights (Keras's download), or untouched."""
    if not imagenet:
        return constructor(weights=None)
    try:
        return constructor(weights="imagenet")
    except Exception as error:  # noqa: BLE001 - no internet, no cache, bad download
        first = (str(error).strip().splitlines() or [""])[0][:200]
        raise KerablError(f"cannot get Keras's ImageNet weights for {constructor.__name__} "
                          f"({type(error).__name__}: {first}): pass --weights random or a "
                          "weights file (--weights PATH)") from None
