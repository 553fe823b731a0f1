"""Weights: seeded random weights, the heuritech AlexNet file, checked weight files.

- `randomize_weights(model, seed)`: deterministic random weights without global random state
  (`glorot_uniform`, `he_uniform`: the initialisers).
- `load_heuritech_weights(model, path)` / `save_heuritech_weights(model, path)`: the heuritech
  convnets-keras `alexnet_weights.h5` (Theano layout) into and out of the Keras 3 AlexNet
  (`theano_to_keras_kernel`, `keras_to_theano_kernel`: its kernel layout).
- `check_weights_file(name, path)`, `load_weights_file(name, model, path)`, `load_checked`:
  weight files checked (exists, manifest hash, HDF5, fits the model) and loaded.
- `weights_digest(path)`, `read_manifest()`, `check_manifest`, `weights_dir()`: the shipped
  weights and their hashes; `keras_app_file(name)`: the name of Keras's ImageNet weights file.

Nothing here knows the zoo's architectures (`kerabl.models` builds them and picks the default
weights).

Example:
    model = randomize_weights(demo_model(), seed=0)
    load_weights_file("demo", model, weights_dir() / "demo.weights.h5")   # "sha256:..."
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
from pathlib import Path

import h5py
import keras
import numpy as np

from kerabl.errors import KerablError

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


def error_line(error: Exception) -> str:
    """An exception as one short line for a `KerablError` message: its type and first line.

    Example:
        error_line(OSError("Unable to open file\nmore"))   # "OSError: Unable to open file"
    """
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
    load_checked(name, model, Path(path).expanduser())
    return digest


def load_checked(name: str, model: keras.Model, path: Path) -> None:
    """Load a weights file already checked by `check_weights_file` into `model` (alexnet: the
    heuritech layout); a file that does not fit is a one-line `KerablError`.

    Example:
        path = weights_dir() / "demo.weights.h5"
        check_weights_file("demo", path)
        load_checked("demo", build_model("demo"), path)
    """
    try:
        if name == "alexnet":
            load_heuritech_weights(model, path)
        else:
            _check_keras3_shapes(model, path)
            model.load_weights(path)
    except KerablError:
        raise
    except OSError as error:  # h5py cannot read what the header promises
        raise KerablError(f"{path} is a damaged weights file ({error_line(error)}): fetch or "
                          "save it again") from None
    except Exception as error:  # noqa: BLE001 - any loader failure means the file does not fit
        raise KerablError(f"{path} does not fit the {name} architecture ({error_line(error)}): "
                          "pass the weights file made for this model") from None


def keras_app_file(name: str, alpha: float = 0.35) -> str:
    """The file name of Keras's ImageNet weights (with top) for a keras-applications model.

    Example:
        keras_app_file("mobilenet_v2", 0.35)
        # "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224.h5"
    """
    if name == "mobilenet_v2":
        return f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{float(alpha)}_224.h5"
    return f"{name}_weights_tf_dim_ordering_tf_kernels.h5"
