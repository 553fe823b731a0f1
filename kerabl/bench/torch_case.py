"""The benchmark's torch column: the bench's H cells through a PyTorch port of the same network.

- `tf_threads()`: the intra-op threads TensorFlow runs with here; torch is set to the same.
- `torch_case(net, images, labels, cells, hook_layers, log)`: per timed layer, seconds per cell of
  (a) the usual PyTorch port, a forward hook multiplying the layer output by the mask in a full
  forward pass, and (b) a cached-output PyTorch tail (the layer's output computed once per class,
  then only the layers after it per cell), beside kerabl's fast engine on the same cells and
  images, and how often torch's true-class ranks equal kerabl's.

The port and its weights are `kerabl.crosscheck`'s (`torch_from_keras`: the Keras weights
converted by `kerabl.convert.keras_to_torch`; no torchvision). Without torch the case says so.
"""

from __future__ import annotations

import os
import time
from typing import Callable, Sequence

import numpy as np

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


def _best_of(fn: Callable[[], object], repeats: int) -> tuple[object, float]:
    """`fn()` once untimed, then `repeats` timed calls: the last value and the fastest call's
    seconds (the least disturbed by anything else on the machine)."""
    value, times = fn(), []
    for _ in range(max(repeats, 1)):
        start = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - start)
    return value, min(times)


def _heads(port, modules: dict, x, repeats: int) -> tuple[dict, dict]:
    """Each layer's output (`modules`: layer -> hook-point module) and its head seconds, from one
    full forward pass with a time stamp at each hook point (after an untimed pass on 2 images;
    the fastest of `repeats` passes)."""
    import torch

    acts, seconds, start = {}, {}, [0.0]

    def stamp(layer):
        def hook(module, inputs, output):
            seconds[layer] = time.perf_counter() - start[0]
            acts[layer] = output
        return hook

    if len(x) > HEAD_BATCH:
        raise KerablError(f"the torch column runs one class of at most {HEAD_BATCH} images in "
                          f"one batch, not {len(x)}")
    handles = [module.register_forward_hook(stamp(layer)) for layer, module in modules.items()]
    best = {}
    try:
        port(x[:2])
        for _ in range(max(repeats, 1)):
            start[0] = time.perf_counter()
            port(x)
            best = {k: min(v, best.get(k, v)) for k, v in seconds.items()}
    finally:
        for handle in handles:
            handle.remove()
    return {k: torch.as_tensor(v) for k, v in acts.items()}, best


def _tail_seconds(tail, act, masks, batch: int, repeats: int) -> tuple[list, float]:
    """The tail's outputs under each mask and its seconds per mask (after an untimed call on
    2 images; the fastest of `repeats`), `batch` images per call."""
    import torch

    def run(n):
        return [torch.cat([tail(act[i:i + batch] * m) for i in range(0, n, batch)])
                for m in masks]

    run(2)
    times = []
    for _ in range(max(repeats, 1)):
        start = time.perf_counter()
        outs = run(len(act))
        times.append(time.perf_counter() - start)
    return outs, min(times) / len(masks)


def torch_case(net, images: np.ndarray, labels: np.ndarray, cells: dict,
               hook_layers: Sequence[str], log: Callable[[str], None], repeats: int = 1) -> dict:
    """The torch column of one network's H row: the same cells, images and threads as kerabl.

    Example:
        column = torch_case(net, images, labels, {"fc1": dict(masks=m, ranks=r, cell_s=0.01,
                            tail_s=0.009, head_s=0.2)}, ["fc1"], print)
        column["layers"][0]["tail_lead"]   # torch tail s/cell over kerabl's fast s/cell

    Args:
        net: a `kerabl.models.Network` with a torch port (demo, vgg16, alexnet_torchvision).
        images: (N, H, W, C) preprocessed images, N <= 64 (one batch, as the authors' code and
            `TorchAblator` run a class); labels: (N,) true output indices.
        cells: per timed layer, kerabl's fast engine on it: `masks` (n, *layer shape) 0/1 element
            masks, `ranks` (n, N) its true-class ranks, `cell_s` (tail + head / 16), `tail_s`,
            `head_s` seconds.
        hook_layers: the layers whose hook cells run (a full forward pass costs the same
            whatever the layer; the others get the mean of these).
        repeats: timed calls of each measurement (the fastest counts), after an untimed one.

    Returns:
        {"available": False, "note": "torch not installed"} without torch; else the threads,
        images, per-layer rows (torch hook and tail seconds per cell, their leads = torch seconds
        / kerabl seconds, the tail-only lead, ranks equal) and their summaries. Head seconds come
        from time stamps at the hook points of one full forward pass, tail seconds from the tail
        (`kerabl.crosscheck.split_at`) on the masked head output, `BATCH_FLOATS` per call as
        kerabl's engine; a torch cell costs tail + head / 16, as kerabl's.
    """
    from kerabl.bench.cases import GRID_CELLS
    from kerabl.convert import import_torch
    from kerabl.engine import BATCH_FLOATS
    from kerabl.hayne.ablation import true_class_rank

    try:
        torch = import_torch()
    except KerablError:
        return dict(available=False, note=NOT_INSTALLED)
    from kerabl.crosscheck import TorchAblator, hook_points, split_at, torch_from_keras

    threads, previous = tf_threads(), torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        port = torch_from_keras(net.name, net.model)
        points = hook_points(net.name, port, net.model)
        x = torch.from_numpy(np.ascontiguousarray(np.asarray(images, np.float32)
                                                  .transpose(0, 3, 1, 2)))
        rows, hook_s = [], []
        with torch.inference_mode():
            acts, heads = _heads(port, {layer: points[layer] for layer in cells}, x, repeats)
            for layer, cell in cells.items():
                masks = [torch.from_numpy(np.ascontiguousarray(np.moveaxis(m, -1, 0)))
                         for m in np.asarray(cell["masks"], np.float32)]
                act = acts.pop(layer)
                batch = max(1, BATCH_FLOATS // int(np.prod(act.shape[1:])))
                outs, tail_s = _tail_seconds(split_at(port, points[layer])[1], act, masks,
                                             batch, repeats)
                ranks = np.stack([true_class_rank(o.numpy(), labels) for o in outs])
                row = dict(layer=layer, cells=len(masks), head_s=heads[layer], tail_s=tail_s,
                           tail_cell_s=tail_s + heads[layer] / GRID_CELLS,
                           same_ranks=float((ranks == cell["ranks"]).mean()))
                if layer in hook_layers:
                    ablator = TorchAblator(port, points[layer])
                    probs, seconds = _best_of(lambda: ablator.outputs(x, masks[0].numpy()),
                                              repeats)
                    hook_s.append(seconds)
                    row.update(hook_cell_s=seconds, hook_same_ranks=float(
                        (true_class_rank(probs, labels) == cell["ranks"][0]).mean()))
                row.update(kerabl_cell_s=cell["cell_s"], kerabl_tail_s=cell["tail_s"],
                           tail_lead=row["tail_cell_s"] / cell["cell_s"],
                           tail_only_lead=tail_s / cell["tail_s"])
                rows.append(row)
                log(f"  {net.name} {layer} torch ({threads} threads): tail "
                    f"{row['tail_cell_s']:.3f} s/cell ({row['tail_lead']:.2f}x kerabl's), "
                    + (f"hook {row['hook_cell_s']:.3f} s/cell, " if "hook_cell_s" in row else "")
                    + f"ranks equal {row['same_ranks']:.0%}")
    finally:
        torch.set_num_threads(previous)
    hook_mean = float(np.mean(hook_s))
    for row in rows:
        row["hook_lead"] = row.get("hook_cell_s", hook_mean) / row["kerabl_cell_s"]
    return dict(available=True, torch=torch.__version__, threads=threads, images=len(images),
                layers=rows, hook_layers=list(hook_layers), hook_cell_s=hook_mean,
                tail_cell_s=float(np.mean([r["tail_cell_s"] for r in rows])),
                kerabl_cell_s=float(np.mean([r["kerabl_cell_s"] for r in rows])),
                same_ranks=float(np.mean([r["same_ranks"] for r in rows])),
                min_tail_lead=min(r["tail_lead"] for r in rows),
                max_tail_lead=max(r["tail_lead"] for r in rows),
                min_hook_lead=min(r["hook_lead"] for r in rows),
                max_hook_lead=max(r["hook_lead"] for r in rows))
