"""The benchmark's torch column: the bench's H cells through a PyTorch port of the same network.

- `tf_threads()`: the intra-op threads TensorFlow runs with here; torch is set to the same.
- `TorchColumn(net, images, labels, hook_layers, log)`: per timed layer, right after kerabl's
  fast engine on it (`column.layer(layer, fast)`), seconds per cell of (a) the usual PyTorch
  port, a forward hook multiplying the layer output by the mask in a full forward pass, and (b)
  a cached-output PyTorch tail (the layer's output computed once per class, then only the layers
  after it per cell), on the same cells and images, and how often torch's true-class ranks equal
  kerabl's; `column.summary()` the column of the bench's H row.

The port and its weights are `kerabl.crosscheck`'s (`torch_from_keras`: the Keras weights
converted by `kerabl.torch_models.keras_to_torch`; no torchvision). Without torch the column says so.
"""

from __future__ import annotations

import os
from typing import Callable, Sequence

import numpy as np

from kerabl import torch_models
from kerabl.bench.flops import GRID_CELLS, timed
from kerabl.crosscheck import TorchAblator, hook_points, split_at, torch_from_keras
from kerabl.engine import BATCH_FLOATS, true_class_rank
from kerabl.errors import KerablError

NOT_INSTALLED = "torch not installed"
# Images per torch forward call: one class in one batch, as `kerabl.crosscheck.TorchAblator`.
HEAD_BATCH = 64


def tf_threads() -> int:
    """The intra-op thread count of TensorFlow in this process (its default: the usable cores).

    Example:
        torch.set_num_threads(tf_threads())   # both libraries on the same cores
    """
    import tensorflow as tf

    return tf.config.threading.get_intra_op_parallelism_threads() or len(os.sched_getaffinity(0))


def _fastest(fn: Callable[[], object], warm: Callable[[], object], repeats: int):
    """`warm()` once untimed, then `repeats` timed calls of `fn`: its last value and the fastest
    call's seconds (`kerabl.bench.flops.timed`, as kerabl's side is timed)."""
    warm()
    return timed(fn, repeats)


class TorchColumn:
    """The torch column of one network's H row: the same cells, images and threads as kerabl.

    Example:
        column = TorchColumn(net, images, labels, ["fc1"], print)
        column.layer("fc1", fast)     # fast: masks, ranks, cell_s, tail_s of kerabl's engine
        column.summary()["layers"][0]["tail_lead"]   # torch s/cell over kerabl's fast s/cell

    Args:
        net: a `kerabl.models.Network` with a torch port (demo, vgg16, alexnet_torchvision).
        images: (N, H, W, C) preprocessed images, N <= 64 (one batch, as the authors' code and
            `TorchAblator` run a class); labels: (N,) true output indices.
        hook_layers: the layers whose hook cells run (a full forward pass costs the same
            whatever the layer; the others get the mean of these).
        repeats: timed calls of each measurement (the fastest counts), after an untimed one.

    Per layer: the head (`kerabl.crosscheck.split_at`) on the images, then the tail on the
    masked head output, `BATCH_FLOATS` per call as kerabl's engine (each after an untimed call on
    2 images); a torch tail cell costs tail + head / 16, as kerabl's fast cell. Without torch
    `available` is False and `summary()` says "torch not installed".
    """

    def __init__(self, net, images: np.ndarray, labels: np.ndarray, hook_layers: Sequence[str],
                 log: Callable[[str], None], repeats: int = 1):
        self.net, self.labels, self.log, self.repeats = net, np.asarray(labels), log, repeats
        self.hook_layers, self.rows = list(hook_layers), []
        try:
            self.torch = torch_models.import_torch()
        except KerablError:
            self.torch = None
            return

        if len(images) > HEAD_BATCH:
            raise KerablError(f"the torch column runs one class of at most {HEAD_BATCH} images "
                              f"in one batch, not {len(images)}")
        self.threads = tf_threads()
        self.port = torch_from_keras(net.name, net.model)
        self.points = hook_points(net.name, self.port, net.model)
        self.x = self.torch.from_numpy(np.ascontiguousarray(
            np.asarray(images, np.float32).transpose(0, 3, 1, 2)))

    @property
    def available(self) -> bool:
        return self.torch is not None

    def layer(self, layer: str, fast: dict) -> None:
        """Time `layer`'s cells in torch; `fast`: kerabl's `masks`, `ranks`, `cell_s`, `tail_s`."""
        if not self.available:
            return
        torch = self.torch
        previous = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            with torch.inference_mode():
                row = self._layer(layer, fast)
        finally:
            torch.set_num_threads(previous)
        self.rows.append(row)
        self.log(f"  {self.net.name} {layer} torch ({self.threads} threads): tail "
                 f"{row['tail_cell_s']:.3f} s/cell ({row['tail_lead']:.2f}x kerabl's), "
                 + (f"hook {row['hook_cell_s']:.3f} s/cell, " if "hook_cell_s" in row else "")
                 + f"ranks equal {row['same_ranks']:.0%}")

    def _layer(self, layer: str, fast: dict) -> dict:
        torch, x, labels = self.torch, self.x, self.labels
        masks = [torch.from_numpy(np.ascontiguousarray(np.moveaxis(m, -1, 0)))
                 for m in np.asarray(fast["masks"], np.float32)]
        head, tail = split_at(self.port, self.points[layer])
        act, head_s = _fastest(lambda: head(x), lambda: head(x[:2]), self.repeats)
        batch = max(1, BATCH_FLOATS // int(np.prod(act.shape[1:])))

        def run(n):
            return [torch.cat([tail(act[i:i + batch] * m) for i in range(0, n, batch)])
                    for m in masks]

        # the ranks inside the timed call, as kerabl's `ranks` has them
        ranks, seconds = _fastest(
            lambda: np.stack([true_class_rank(o.numpy(), labels) for o in run(len(act))]),
            lambda: run(2), self.repeats)
        tail_s = seconds / len(masks)
        row = dict(layer=layer, cells=len(masks), head_s=head_s, tail_s=tail_s,
                   tail_cell_s=tail_s + head_s / GRID_CELLS,
                   same_ranks=float((ranks == fast["ranks"]).mean()),
                   kerabl_cell_s=fast["cell_s"], kerabl_tail_s=fast["tail_s"])
        row.update(tail_lead=row["tail_cell_s"] / fast["cell_s"],
                   tail_only_lead=tail_s / fast["tail_s"])
        if layer in self.hook_layers:
            ablator = TorchAblator(self.port, self.points[layer])
            mask = masks[0].numpy()
            hook_ranks, hook_s = _fastest(
                lambda: true_class_rank(ablator.outputs(x, mask), labels),
                lambda: ablator.outputs(x[:2], mask), self.repeats)
            row.update(hook_cell_s=hook_s,
                       hook_same_ranks=float((hook_ranks == fast["ranks"][0]).mean()))
        return row

    def summary(self) -> dict:
        """The column: {"available": False, "note": ...} without torch; else the threads,
        images, per-layer rows (torch hook and tail seconds per cell, their leads = torch seconds
        / kerabl seconds, the tail-only lead, ranks equal) and their ranges."""
        if not self.available:
            return dict(available=False, note=NOT_INSTALLED)
        rows = self.rows
        hook_mean = float(np.mean([r["hook_cell_s"] for r in rows if "hook_cell_s" in r]))
        for row in rows:
            row["hook_lead"] = row.get("hook_cell_s", hook_mean) / row["kerabl_cell_s"]
        return dict(available=True, torch=self.torch.__version__, threads=self.threads,
                    images=len(self.x), layers=rows, hook_layers=self.hook_layers,
                    hook_cell_s=hook_mean,
                    tail_cell_s=float(np.mean([r["tail_cell_s"] for r in rows])),
                    kerabl_cell_s=float(np.mean([r["kerabl_cell_s"] for r in rows])),
                    same_ranks=float(np.mean([r["same_ranks"] for r in rows])),
                    min_tail_lead=min(r["tail_lead"] for r in rows),
                    max_tail_lead=max(r["tail_lead"] for r in rows),
                    min_hook_lead=min(r["hook_lead"] for r in rows),
                    max_hook_lead=max(r["hook_lead"] for r in rows))
