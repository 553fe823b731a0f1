"""The model zoo and its weight loaders.

- `load_network(name, weights)`: a `Network` (model, weights digest, default targets, input size,
  preprocessing name) for alexnet, vgg16, mobilenet_v2, resnet101, demo, alexnet_torchvision or
  resnet50_torchvision (the last two in `kerabl.convert`, which also reads torch state dicts).
- `build_model(name)`, `alexnet_model()`, `demo_model(batch_norm, channel_dropout)`: the
  architectures, weights untouched.
- `randomize_weights(model, seed)`: deterministic random weights without global random state.
- `load_heuritech_weights(model, path)` / `save_heuritech_weights(model, path)`: the heuritech
  convnets-keras `alexnet_weights.h5` (Theano layout) into and out of the Keras 3 AlexNet.
- `LocalResponseNormalization`: the AlexNet LRN as a registered Keras layer.
- `default_targets(name, model)`, `paper_targets(name, model)`: target layer names.
- `load_weights_file(name, model, path)`, `check_weights_file(name, path)`: checked weight files.
- `weights_digest(path)`, `read_manifest()`, `weights_dir()`: the shipped weights and their hashes.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import re
from dataclasses import dataclass
from pathlib import Path

import h5py
import keras
import numpy as np
import tensorflow as tf

from kerabl.errors import KerablError

MODEL_NAMES = ("alexnet", "vgg16", "mobilenet_v2", "resnet101", "demo", "alexnet_torchvision",
               "resnet50_torchvision")
TORCHVISION_MODELS = ("alexnet_torchvision", "resnet50_torchvision")
KERAS_APPS = ("vgg16", "mobilenet_v2", "resnet101")
MOBILENET_ALPHAS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)
INPUT_SIZES = {"alexnet": (227, 227), "vgg16": (224, 224), "mobilenet_v2": (224, 224),
               "resnet101": (224, 224), "demo": (32, 32), "alexnet_torchvision": (224, 224),
               "resnet50_torchvision": (224, 224)}
ZOO_PREPROCESS = {"alexnet": "paper", "vgg16": "vgg16", "mobilenet_v2": "mobilenet_v2",
                  "resnet101": "resnet101", "demo": "none", "alexnet_torchvision": "torchvision",
                  "resnet50_torchvision": "torchvision"}
N_CLASSES = {"alexnet": 1000, "vgg16": 1000, "mobilenet_v2": 1000, "resnet101": 1000, "demo": 10,
             "alexnet_torchvision": 1000, "resnet50_torchvision": 1000}
ALEXNET_FILE = "alexnet_weights.h5"
ALEXNET_SOURCE = "the heuritech convnets-keras release (github.com/heuritech/convnets-keras)"
DEMO_FILE = "demo.weights.h5"
MANIFEST = "manifest.json"

# Heuritech layer name -> (Keras layer name, group index, number of groups).
HEURITECH_LAYERS = {
    "conv_1": ("conv_1", 0, 1), "conv_2_1": ("conv_2", 0, 2), "conv_2_2": ("conv_2", 1, 2),
    "conv_3": ("conv_3", 0, 1), "conv_4_1": ("conv_4", 0, 2), "conv_4_2": ("conv_4", 1, 2),
    "conv_5_1": ("conv_5", 0, 2), "conv_5_2": ("conv_5", 1, 2),
    "dense_1": ("dense_1", 0, 1), "dense_2": ("dense_2", 0, 1), "dense_3": ("dense_3", 0, 1),
}
ALEXNET_FLAT = (6, 6, 256)
ALEXNET_TARGETS = ("conv_1", "conv_2", "conv_3", "conv_4", "conv_5", "dense_1", "dense_2")
DEMO_TARGETS = ALEXNET_TARGETS


@dataclass(frozen=True)
class Network:
    """A model with what the studies need to know about it (see `load_network`)."""

    name: str
    model: keras.Model
    weights_id: str
    targets: tuple[str, ...]
    input_size: tuple[int, int]
    preprocess: str
    n_classes: int


# ---------------------------------------------------------------------------------------------
# Layers and architectures


@keras.saving.register_keras_serializable("kerabl")
class LocalResponseNormalization(keras.layers.Layer):
    """AlexNet's LRN across channels: x / (bias + alpha * sum_{c-r..c+r} x^2) ^ beta.

    Example:
        lrn = LocalResponseNormalization()
        y = lrn(np.ones((1, 4, 4, 8), "float32"))
        # y == 1 / (2 + 1e-4 * 5) ** 0.75 away from the channel edges

    Args:
        depth_radius: channels on each side in the sum (2: a window of 5).
        bias, alpha, beta: as in the formula (alpha is not divided by the window size).
    """

    def __init__(self, depth_radius: int = 2, bias: float = 2.0, alpha: float = 1e-4,
                 beta: float = 0.75, **kwargs):
        super().__init__(**kwargs)
        self.depth_radius = depth_radius
        self.bias = bias
        self.alpha = alpha
        self.beta = beta

    def call(self, inputs):
        return tf.nn.local_response_normalization(
            inputs, depth_radius=self.depth_radius, bias=self.bias, alpha=self.alpha,
            beta=self.beta)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "depth_radius": self.depth_radius, "bias": self.bias,
                "alpha": self.alpha, "beta": self.beta}


def alexnet_model() -> keras.Model:
    """The heuritech convnets-keras AlexNet in Keras 3, channels-last.

    Example:
        model = alexnet_model()
        model.get_layer("conv_5").output.shape  # (None, 13, 13, 256)
        randomize_weights(model, seed=0)

    Returns:
        A functional model, 227 x 227 x 3 in, 1000 softmax probabilities out; grouped layers
        (conv_2, conv_4, conv_5) are single `Conv2D(groups=2)` layers.
    """
    L = keras.layers
    inputs = keras.Input((227, 227, 3), name="input")
    x = L.Conv2D(96, 11, strides=4, activation="relu", name="conv_1")(inputs)
    x = L.MaxPooling2D(3, strides=2, name="pool_1")(x)
    x = LocalResponseNormalization(name="lrn_1")(x)
    x = L.ZeroPadding2D(2, name="pad_2")(x)
    x = L.Conv2D(256, 5, groups=2, activation="relu", name="conv_2")(x)
    x = L.MaxPooling2D(3, strides=2, name="pool_2")(x)
    x = LocalResponseNormalization(name="lrn_2")(x)
    x = L.ZeroPadding2D(1, name="pad_3")(x)
    x = L.Conv2D(384, 3, activation="relu", name="conv_3")(x)
    x = L.ZeroPadding2D(1, name="pad_4")(x)
    x = L.Conv2D(384, 3, groups=2, activation="relu", name="conv_4")(x)
    x = L.ZeroPadding2D(1, name="pad_5")(x)
    x = L.Conv2D(256, 3, groups=2, activation="relu", name="conv_5")(x)
    x = L.MaxPooling2D(3, strides=2, name="pool_5")(x)
    x = L.Flatten(name="flatten")(x)
    x = L.Dense(4096, activation="relu", name="dense_1")(x)
    x = L.Dropout(0.5, name="dropout_1")(x)
    x = L.Dense(4096, activation="relu", name="dense_2")(x)
    x = L.Dropout(0.5, name="dropout_2")(x)
    x = L.Dense(1000, name="dense_3")(x)
    outputs = L.Activation("softmax", name="softmax")(x)
    return keras.Model(inputs, outputs, name="alexnet")


DEMO_CONV = ((16, True), (32, True), (48, False), (48, False), (32, True))  # (filters, pool after)
DEMO_DENSE = 64


def _demo_conv(x, k: int, filters: int, batch_norm: bool, channel_dropout: float, seed: int):
    """One demo conv stage; the layer named conv_k always holds the ReLU'd output."""
    L = keras.layers
    if batch_norm:
        x = L.Conv2D(filters, 3, padding="same", name=f"conv_{k}_conv")(x)
        x = L.BatchNormalization(name=f"conv_{k}_bn")(x)
        x = L.Activation("relu", name=f"conv_{k}")(x)
    else:
        x = L.Conv2D(filters, 3, padding="same", activation="relu", name=f"conv_{k}")(x)
    if channel_dropout > 0:
        x = L.SpatialDropout2D(channel_dropout, seed=seed + k, name=f"conv_{k}_dropout")(x)
    return x


def demo_model(batch_norm: bool = False, channel_dropout: float = 0.0, seed: int = 0
               ) -> keras.Model:
    """The small AlexNet-shaped CNN for the digits demo (5 conv + 2 dense + softmax, 10 classes).

    Example:
        model = demo_model()                    # the shipped architecture
        bn = demo_model(batch_norm=True)        # Z-study variant: conv_k is still the ReLU'd output
        drop = demo_model(channel_dropout=0.2)  # SpatialDropout2D after each conv

    Args:
        batch_norm: Conv2D (named conv_k_conv) -> BatchNormalization -> ReLU (named conv_k).
        channel_dropout: rate of a SpatialDropout2D after each conv stage (0: none).
        seed: seeds of the dropout layers (training only; inference is deterministic).
    """
    if not 0.0 <= channel_dropout < 1.0:
        raise KerablError(f"channel_dropout={channel_dropout} is not in [0, 1): pass a rate "
                          "such as 0.1")
    L = keras.layers
    inputs = keras.Input((32, 32, 3), name="input")
    x = inputs
    for k, (filters, pool) in enumerate(DEMO_CONV, start=1):
        x = _demo_conv(x, k, filters, batch_norm, channel_dropout, seed)
        if pool:
            x = L.MaxPooling2D(2, name=f"pool_{k}")(x)
    x = L.Flatten(name="flatten")(x)
    x = L.Dense(DEMO_DENSE, activation="relu", name="dense_1")(x)
    x = L.Dropout(0.3, seed=seed, name="dropout_1")(x)
    x = L.Dense(DEMO_DENSE, activation="relu", name="dense_2")(x)
    x = L.Dropout(0.3, seed=seed + 1, name="dropout_2")(x)
    x = L.Dense(10, name="dense_3")(x)
    outputs = L.Activation("softmax", name="softmax")(x)
    suffix = "_bn" if batch_norm else ""
    suffix += "_dropout" if channel_dropout > 0 else ""
    return keras.Model(inputs, outputs, name=f"demo{suffix}")


def _keras_app(name: str, alpha: float) -> keras.Model:
    apps = keras.applications
    common = {"weights": None, "include_top": True, "classifier_activation": "softmax"}
    if name == "vgg16":
        return apps.VGG16(input_shape=(224, 224, 3), **common)
    if name == "resnet101":
        return apps.ResNet101(input_shape=(224, 224, 3), **common)
    return apps.MobileNetV2(input_shape=(224, 224, 3), alpha=alpha, **common)


def check_name(name: str) -> str:
    """Raise a `KerablError` unless `name` is one of `MODEL_NAMES`; return it.

    Example:
        check_name("demo")      # "demo"
        check_name("resnet50")  # KerablError
    """
    if name not in MODEL_NAMES:
        raise KerablError(f"unknown model {name!r}: choose one of {', '.join(MODEL_NAMES)}")
    return name


def check_alpha(name: str, alpha: float) -> float:
    """Raise a `KerablError` unless `alpha` is a MobileNetV2 width Keras offers at 224.

    Example:
        check_alpha("mobilenet_v2", 0.35)  # 0.35
        check_alpha("mobilenet_v2", 0.6)   # KerablError
    """
    if name == "mobilenet_v2" and float(alpha) not in MOBILENET_ALPHAS:
        raise KerablError(f"alpha={alpha} is not offered for mobilenet_v2 at 224: choose one of "
                          f"{', '.join(map(str, MOBILENET_ALPHAS))}")
    return float(alpha)


def build_model(name: str, *, alpha: float = 0.35) -> keras.Model:
    """The architecture `name` with whatever weights Keras initialises (see `load_network`).

    Example:
        model = build_model("mobilenet_v2", alpha=0.35)
        randomize_weights(model, seed=0)
        model.output.shape  # (None, 1000)

    Args:
        name: one of `MODEL_NAMES`.
        alpha: MobileNetV2 width multiplier, one of `MOBILENET_ALPHAS` (ignored by the others).
    """
    check_name(name)
    check_alpha(name, alpha)
    if name == "alexnet":
        return alexnet_model()
    if name == "demo":
        return demo_model()
    if name in TORCHVISION_MODELS:
        from kerabl import convert
        return getattr(convert, f"{name}_model")()
    return _keras_app(name, float(alpha))


# ---------------------------------------------------------------------------------------------
# Random weights


def glorot_uniform(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Glorot-uniform values for a kernel of `shape` (fans as Keras computes them).

    Example:
        w = glorot_uniform((3, 3, 16, 32), np.random.default_rng(0))
        abs(w).max() <= (6 / (9 * 16 + 9 * 32)) ** 0.5  # True
    """
    if len(shape) < 2:
        fan_in = fan_out = int(np.prod(shape)) if shape else 1
    else:
        receptive = int(np.prod(shape[:-2]))
        fan_in, fan_out = shape[-2] * receptive, shape[-1] * receptive
    return _uniform(shape, np.sqrt(6.0 / (fan_in + fan_out)), rng)


def _uniform(shape: tuple[int, ...], limit: float, rng: np.random.Generator) -> np.ndarray:
    limit = np.float32(limit)
    values = rng.random(shape, dtype=np.float32)
    values *= 2 * limit
    values -= limit
    return values


def he_uniform(shape: tuple[int, ...], fan_in: int, rng: np.random.Generator) -> np.ndarray:
    """He-uniform values (limit sqrt(6 / fan_in)): variance kept through a ReLU layer.

    Example:
        w = he_uniform((3, 3, 48, 1), 9, np.random.default_rng(0))   # a depthwise kernel
    """
    return _uniform(shape, np.sqrt(6.0 / max(fan_in, 1)), rng)


_CONSTANT_VARIABLES = {"bias": 0.0, "beta": 0.0, "moving_mean": 0.0, "gamma": 1.0,
                       "moving_variance": 1.0}
RANDOM_SCALING = {"mobilenet_v2": "he"}   # Glorot kernels leave its outputs constant (1/1000)


def _fan_in(layer, shape: tuple[int, ...]) -> int:
    """Inputs seen by one output unit: a depthwise kernel sees its receptive field only."""
    receptive = int(np.prod(shape[:-2]))
    return receptive if isinstance(layer, keras.layers.DepthwiseConv2D) else receptive * shape[-2]


def randomize_weights(model: keras.Model, seed: int, scaling: str = "glorot",
                      keep_constant: bool = False) -> keras.Model:
    """Overwrite every variable of `model` from `np.random.default_rng(seed)`; no global state.

    Example:
        model = build_model("demo")
        randomize_weights(model, seed=3)  # same numbers for the same seed, every time

    Kernels (dense, conv and depthwise) get Glorot-uniform values drawn in the order of
    `model.weights`; biases and BN beta/moving_mean 0; BN gamma/moving_variance 1. With
    `scaling="he"` convolution kernels get He-uniform values from their true fan-in (a
    depthwise kernel: its receptive field), which keeps the signal alive through a deep network
    whose batch normalisation, at its default statistics, does not rescale it (MobileNetV2).
    Other variables are refused, or with `keep_constant` left as Keras initialised them when
    that is one constant (EfficientNet's input Normalization state, ConvNeXt's layer scale).
    Returns the model.
    """
    if scaling not in ("glorot", "he"):
        raise KerablError(f"unknown weight scaling {scaling!r}: use glorot or he")
    rng = np.random.default_rng(seed)
    owner = {id(v): layer for layer in model.layers for v in layer.weights}
    for variable in model.weights:
        kind = variable.name
        shape = tuple(variable.shape)
        layer = owner.get(id(variable))
        if kind.endswith("kernel") and scaling == "he" and len(shape) == 4:
            variable.assign(he_uniform(shape, _fan_in(layer, shape), rng))
        elif kind.endswith("kernel"):
            variable.assign(glorot_uniform(shape, rng))
        elif kind in _CONSTANT_VARIABLES:
            variable.assign(np.full(shape, _CONSTANT_VARIABLES[kind], dtype=np.float32))
        elif keep_constant and np.ptp(np.asarray(variable)) == 0:
            continue
        else:
            raise KerablError(f"cannot randomise variable {variable.path!r} of unknown kind: "
                              "load a weights file for this model instead")
    return model


# ---------------------------------------------------------------------------------------------
# Heuritech AlexNet weights (Theano layout)


def theano_to_keras_kernel(w: np.ndarray) -> np.ndarray:
    """A Theano conv kernel (out, in, kh, kw), flipped, as a Keras kernel (kh, kw, in, out).

    Example:
        k = theano_to_keras_kernel(np.zeros((96, 3, 11, 11)))
        k.shape  # (11, 11, 3, 96)
    """
    return np.ascontiguousarray(w[:, :, ::-1, ::-1].transpose(2, 3, 1, 0))


def keras_to_theano_kernel(k: np.ndarray) -> np.ndarray:
    """The inverse of `theano_to_keras_kernel`.

    Example:
        w = keras_to_theano_kernel(np.zeros((11, 11, 3, 96)))
        w.shape  # (96, 3, 11, 11)
    """
    return np.ascontiguousarray(k.transpose(3, 2, 0, 1)[:, :, ::-1, ::-1])


def _chw_rows_to_hwc(w: np.ndarray) -> np.ndarray:
    h, wd, c = ALEXNET_FLAT
    return w.reshape(c, h, wd, -1).transpose(1, 2, 0, 3).reshape(h * wd * c, -1)


def _hwc_rows_to_chw(w: np.ndarray) -> np.ndarray:
    h, wd, c = ALEXNET_FLAT
    return w.reshape(h, wd, c, -1).transpose(2, 0, 1, 3).reshape(h * wd * c, -1)


def _file_to_keras(name: str, w: np.ndarray) -> np.ndarray:
    if w.ndim == 4:
        return theano_to_keras_kernel(w)
    return _chw_rows_to_hwc(w) if name == "dense_1" else w


def _keras_to_file(name: str, k: np.ndarray) -> np.ndarray:
    if k.ndim == 4:
        return keras_to_theano_kernel(k)
    return _hwc_rows_to_chw(k) if name == "dense_1" else k


def _read_heuritech(path: Path) -> dict[str, list[np.ndarray]]:
    """Keras layer name -> [kernel, bias], the group halves concatenated on the output axis."""
    parts: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    with h5py.File(path, "r") as f:
        for name, (layer, _, _) in HEURITECH_LAYERS.items():
            if name not in f or f"{name}_W" not in f[name] or f"{name}_b" not in f[name]:
                raise KerablError(f"{path} has no {name}/{name}_W and {name}_b: it is not the "
                                  f"heuritech {ALEXNET_FILE} from {ALEXNET_SOURCE}")
            w = _file_to_keras(name, np.asarray(f[name][f"{name}_W"], dtype=np.float32))
            parts.setdefault(layer, []).append((w, np.asarray(f[name][f"{name}_b"], np.float32)))
    return {layer: [np.concatenate([w for w, _ in p], axis=-1),
                    np.concatenate([b for _, b in p], axis=-1)] for layer, p in parts.items()}


def load_heuritech_weights(model: keras.Model, path: str | Path) -> keras.Model:
    """Load the heuritech convnets-keras `alexnet_weights.h5` (Theano layout) into `model`.

    Example:
        model = alexnet_model()
        load_heuritech_weights(model, "alexnet_weights.h5")
        model.predict(images, verbose=0).shape  # (n, 1000)

    Conv kernels are flipped and transposed to (kh, kw, in, out); the group halves
    (conv_2_1/conv_2_2, ...) are concatenated on the output axis into the grouped kernel;
    dense_1 rows go from (C, H, W) to Keras's (H, W, C) flatten order. Returns the model.
    """
    path = Path(path)
    for layer, (kernel, bias) in _read_heuritech(path).items():
        target = model.get_layer(layer)
        expected = [tuple(v.shape) for v in target.weights]
        if expected != [kernel.shape, bias.shape]:
            raise KerablError(f"{path} does not fit alexnet: layer {layer} needs {expected}, "
                              f"the file gives {[kernel.shape, bias.shape]}")
        target.set_weights([kernel, bias])
    return model


def save_heuritech_weights(model: keras.Model, path: str | Path) -> Path:
    """Write `model`'s AlexNet weights in the heuritech `alexnet_weights.h5` (Theano) layout.

    Example:
        model = randomize_weights(alexnet_model(), seed=0)
        save_heuritech_weights(model, "alexnet_weights.h5")
        load_heuritech_weights(alexnet_model(), "alexnet_weights.h5")  # the same network

    The inverse of `load_heuritech_weights`. Returns the path written.
    """
    path = Path(path)
    with h5py.File(path, "w") as f:
        for name, (layer, group, groups) in HEURITECH_LAYERS.items():
            kernel, bias = (np.asarray(v) for v in model.get_layer(layer).get_weights())
            width = kernel.shape[-1] // groups
            part = slice(group * width, (group + 1) * width)
            g = f.create_group(name)
            g.create_dataset(f"{name}_W", data=_keras_to_file(name, kernel[..., part]))
            g.create_dataset(f"{name}_b", data=bias[part])
    return path


# ---------------------------------------------------------------------------------------------
# Weight files, digests and the manifest


def weights_dir() -> Path:
    """The folder of shipped weights (`weights/` in the repository, `kerabl.weights` installed).

    Example:
        (weights_dir() / "demo.weights.h5").is_file()  # True
    """
    try:
        folder = Path(str(importlib.resources.files("kerabl.weights")))
        if (folder / MANIFEST).is_file():
            return folder
    except (ModuleNotFoundError, TypeError):
        pass
    return Path(__file__).resolve().parent.parent / "weights"


def read_manifest() -> dict[str, dict]:
    """File name -> {"sha256" or "md5": hex or None, "source": ..., ...} from weights/manifest.json.

    Example:
        read_manifest()["demo.weights.h5"]["sha256"]  # "3f2a..."
    """
    path = weights_dir() / MANIFEST
    if not path.is_file():
        return {}
    return json.loads(path.read_text())["files"]


def _file_hash(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def weights_digest(path: str | Path) -> str:
    """`"sha256:<hex>"` of a weights file.

    Example:
        weights_digest(weights_dir() / "demo.weights.h5")  # "sha256:3f2a..."
    """
    return "sha256:" + _file_hash(Path(path), "sha256")


def check_manifest(path: Path, sha256: str) -> None:
    """Raise a `KerablError` when `path`'s name is in the manifest with a different hash.

    Example:
        check_manifest(Path("demo.weights.h5"), weights_digest("demo.weights.h5")[7:])

    Files whose entry knows only an md5 (Keras's own hashes) are checked with md5; entries
    with no known hash, and names not in the manifest, pass.
    """
    entry = read_manifest().get(path.name)
    if not entry:
        return
    for algorithm, received in (("sha256", sha256), ("md5", None)):
        expected = entry.get(algorithm)
        if expected:
            received = received or _file_hash(path, algorithm)
            if received != expected:
                raise KerablError(f"{path} has {algorithm} {received}, expected {expected} "
                                  f"(weights/{MANIFEST}): the file is corrupt or another "
                                  "version; fetch it again")
            return


def _one_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:200] if text else ''}"


def _check_keras3_shapes(model: keras.Model, path: Path) -> None:
    """A Keras 3 `.weights.h5` loads silently when it has extra layers: compare shapes first.

    Only the model's arrays (under "layers") count; a file saved from a compiled model also
    holds optimizer state, which loading ignores.
    """
    shapes: list[tuple[int, ...]] = []
    with h5py.File(path, "r") as f:
        if "layers" not in f:
            return
        f["layers"].visititems(
            lambda _, o: shapes.append(o.shape) if isinstance(o, h5py.Dataset) else None)
    wanted = sorted(tuple(v.shape) for v in model.weights)
    if sorted(shapes) != wanted:
        raise KerablError(f"{path} does not fit the {model.name} architecture: it holds "
                          f"{len(shapes)} arrays, the model needs {len(wanted)} with other shapes;"
                          " pass the weights file made for this model")


def check_weights_file(name: str, path: str | Path) -> str:
    """Check that `path` exists, matches its manifest hash and is HDF5; return its digest.

    Example:
        check_weights_file("demo", weights_dir() / "demo.weights.h5")  # "sha256:..."

    Runs before any model is built, so a bad path fails fast.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise KerablError(f"weights file {path} does not exist: pass the path of an existing "
                          f"weights file for {name}")
    digest = weights_digest(path)
    check_manifest(path, digest.removeprefix("sha256:"))
    if not h5py.is_hdf5(path):
        raise KerablError(f"{path} is not an HDF5 file: pass a Keras .weights.h5/.h5 file "
                          f"(alexnet: {ALEXNET_FILE})")
    return digest


def load_weights_file(name: str, model: keras.Model, path: str | Path) -> str:
    """Check `path` (exists, manifest hash, HDF5, fits `model`) and load it; return its digest.

    Example:
        model = build_model("demo")
        load_weights_file("demo", model, weights_dir() / "demo.weights.h5")  # "sha256:..."

    Alexnet reads the heuritech Theano layout, the others Keras `.weights.h5` / `.h5` files.
    """
    digest = check_weights_file(name, path)
    _load_checked(name, model, Path(path).expanduser())
    return digest


def _load_checked(name: str, model: keras.Model, path: Path) -> None:
    try:
        if name == "alexnet":
            load_heuritech_weights(model, path)
        else:
            _check_keras3_shapes(model, path)
            model.load_weights(path)
    except KerablError:
        raise
    except OSError as error:  # h5py cannot read what the header promises
        raise KerablError(f"{path} is a damaged weights file ({_one_line(error)}): fetch or "
                          "save it again") from None
    except Exception as error:  # noqa: BLE001 - any loader failure means the file does not fit
        raise KerablError(f"{path} does not fit the {name} architecture ({_one_line(error)}): "
                          "pass the weights file made for this model") from None


def _default_weights_path(name: str, alpha: float) -> Path:
    if name == "demo":
        return weights_dir() / DEMO_FILE
    if name == "alexnet":
        raise KerablError(f"alexnet has no default weights: download {ALEXNET_FILE} from "
                          f"{ALEXNET_SOURCE} and pass its path (--weights PATH)")
    if name in TORCHVISION_MODELS:
        raise KerablError(f"{name} has no default weights: pass torchvision's state dict "
                          "(--weights FILE.pth) or its `kerabl convert` output (.weights.h5)")
    file_name = keras_app_file(name, alpha)
    entry = read_manifest().get(file_name, {})
    try:
        return Path(keras.utils.get_file(file_name, entry["origin"], cache_subdir="models",
                                         file_hash=entry.get("md5")))
    except Exception as error:  # noqa: BLE001 - no internet, no cache, bad download
        raise KerablError(
            f"cannot get Keras's ImageNet weights for {name} ({_one_line(error)}): download "
            f"{file_name} from {entry.get('origin', 'the keras-applications release')} and "
            "pass its path (--weights PATH)") from None


def keras_app_file(name: str, alpha: float = 0.35) -> str:
    """The file name of Keras's ImageNet weights (with top) for a keras-applications model.

    Example:
        keras_app_file("mobilenet_v2", 0.35)
        # "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224.h5"
    """
    if name == "mobilenet_v2":
        return f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{float(alpha)}_224.h5"
    return f"{name}_weights_tf_dim_ordering_tf_kernels.h5"


# ---------------------------------------------------------------------------------------------
# Targets and the entry point


def _mobilenet_block_outputs(model: keras.Model) -> tuple[str, ...]:
    names = {layer.name for layer in model.layers}
    blocks = sorted({int(m.group(1)) for n in names if (m := re.match(r"block_(\d+)_", n))})
    outputs = ["expanded_conv_project_BN"]
    for n in blocks:
        outputs.append(f"block_{n}_add" if f"block_{n}_add" in names else f"block_{n}_project_BN")
    return tuple(outputs)


def default_targets(name: str, model: keras.Model) -> tuple[str, ...]:
    """The default target layers of a zoo model, in network order.

    Example:
        default_targets("alexnet", alexnet_model())
        # ("conv_1", "conv_2", "conv_3", "conv_4", "conv_5", "dense_1", "dense_2")
    """
    check_name(name)
    if name in ("alexnet", "demo", "alexnet_torchvision"):
        return ALEXNET_TARGETS
    if name == "mobilenet_v2":
        return _mobilenet_block_outputs(model)
    if name == "vgg16":
        return tuple(layer.name for layer in model.layers
                     if isinstance(layer, keras.layers.Conv2D) or layer.name in ("fc1", "fc2"))
    return tuple(layer.name for layer in model.layers
                 if re.fullmatch(r"conv\d+_block\d+_out", layer.name))


def paper_targets(name: str, model: keras.Model) -> tuple[str, ...]:
    """The authors' target set: for mobilenet_v2 every Conv and BN output; else the defaults.

    Example:
        model = build_model("mobilenet_v2", alpha=0.35)
        len(paper_targets("mobilenet_v2", model))  # 104 layers (Conv2D, DepthwiseConv2D, BN)
    """
    if name != "mobilenet_v2":
        return default_targets(name, model)
    kinds = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.BatchNormalization)
    return tuple(layer.name for layer in model.layers if isinstance(layer, kinds))


def load_network(name: str, weights: str | Path | None = "default", *, alpha: float = 0.35,
                 seed: int = 0) -> Network:
    """Build a zoo model and give it weights: shipped/Keras defaults, a file, or random.

    Example:
        net = load_network("demo")                          # the shipped digits model
        net = load_network("vgg16", weights=None, seed=1)   # random, "random:1"
        net = load_network("alexnet", "alexnet_weights.h5") # heuritech file
        net = load_network("vgg16", "vgg16-397923af.pth")   # torchvision state dict (torch)

    Args:
        name: one of `MODEL_NAMES`.
        weights: "default" (demo: weights/demo.weights.h5; keras apps: Keras's ImageNet file
            from its cache or download; alexnet and the torchvision models: none, pass the
            path), a path, or None for random weights deterministic in `seed`. A `.pth` / `.pt`
            path is a torch state dict in torchvision's layout (`kerabl.convert`); the network's
            preprocessing is then "torchvision".
        alpha: MobileNetV2 width (ignored by the other models).
        seed: seed of the random weights (used only when `weights` is None).

    Raises:
        KerablError: unknown name or alpha, missing/corrupt/unfit file, no default available.
    """
    check_alpha(check_name(name), alpha)
    use_default = isinstance(weights, str) and weights == "default"
    path = _default_weights_path(name, alpha) if use_default else weights
    if path is not None and Path(path).suffix.lower() in (".pth", ".pt"):
        from kerabl.convert import load_state_dict_file

        model = build_model(name, alpha=alpha)
        weights_id = load_state_dict_file(name, model, path)
        return Network(name=name, model=model, weights_id=weights_id,
                       targets=default_targets(name, model), input_size=INPUT_SIZES[name],
                       preprocess="none" if name == "demo" else "torchvision",
                       n_classes=N_CLASSES[name])
    if path is not None:
        weights_id = check_weights_file(name, path)  # fail before the (slow) build
    model = build_model(name, alpha=alpha)
    if path is None:
        scaling = RANDOM_SCALING.get(name, "glorot")
        randomize_weights(model, seed, scaling)
        weights_id = f"random:{seed}" if scaling == "glorot" else f"random-{scaling}:{seed}"
    else:
        _load_checked(name, model, Path(path).expanduser())
    return Network(name=name, model=model, weights_id=weights_id,
                   targets=default_targets(name, model), input_size=INPUT_SIZES[name],
                   preprocess=ZOO_PREPROCESS[name], n_classes=N_CLASSES[name])
