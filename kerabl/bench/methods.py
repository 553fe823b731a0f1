"""The bench's ablation-method case: one class's H cells under zero, mean and resample ablation.

- `methods_case(net, imageset, rows, plan, log)`: per target layer (the plan's `methods` when it
  names layers), the seconds of the H study's ablation call (`baseline_and_ablated_ranks`: the
  all-ones baseline and 16 cells through the tail engine) under each method of
  `kerabl.replacement`, the fastest of the plan's repeats, and each method's time over zero's.
- `methods_notes(cases)`: the printed lines.
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

from kerabl.bench.cells import sample_masks
from kerabl.bench.flops import GRID_CELLS, SEED
from kerabl.replacement import METHODS, Replacement, draw_donors, mean_output


def methods_case(net, imageset, rows: np.ndarray, plan: dict, log: Callable[[str], None]) -> dict:
    """Seconds per layer and method of one class's 16 cells and baseline, the methods
    interleaved in each repeat (so that a slower moment of a shared machine hits all three).

    Example:
        case = methods_case(net, imageset, imageset.rows_of(imageset.classes[0]), PLANS["demo"], print)
        case["ratio"]["mean"]      # mean ablation's time over zero's, all layers together
    """
    from kerabl.engine import TailAblator
    from kerabl.hayne.ablation import baseline_and_ablated_ranks

    images = imageset.load(net.input_size, net.preprocess, rows=rows)
    labels = np.asarray(imageset.labels)[rows]
    others = np.setdiff1d(np.arange(len(imageset.labels)), rows)[:len(rows) * 4]
    donor_images = imageset.load(net.input_size, net.preprocess, rows=others)
    layers, totals = [], dict.fromkeys(METHODS, 0.0)
    chosen = plan["methods"] if isinstance(plan.get("methods"), tuple) else None
    for layer in chosen or plan.get("layers") or net.targets:
        masks = sample_masks(net, layer, GRID_CELLS)
        ablator = TailAblator(net.model, layer)
        ablator.set_images(donor_images)
        bank = ablator.acts.astype(np.float32)
        donors = np.stack([draw_donors(np.arange(len(bank)), len(rows), SEED, 0, k)
                           for k in range(GRID_CELLS)])
        replacements = {"zero": Replacement(), "mean": Replacement("mean", mean=mean_output([bank])),
                        "resample": Replacement("resample", bank=bank, donors=donors)}
        ablator.set_images(images)
        seconds = dict.fromkeys(METHODS, np.inf)
        for _ in range(max(plan.get("repeats", 1), 2) + 1):     # the first round warms up
            for method, replacement in replacements.items():
                ablator.set_replacement(replacement.with_baseline())
                start = time.perf_counter()
                baseline_and_ablated_ranks(ablator, masks, labels)
                seconds[method] = min(seconds[method], time.perf_counter() - start)
        for method in METHODS:
            totals[method] += seconds[method]
        layers.append(dict(layer=layer, **{f"{m}_s": seconds[m] for m in METHODS}))
        log(f"  {net.name} {layer}: 16 cells + baseline: " + ", ".join(
            f"{m} {seconds[m]:.3f} s" for m in METHODS))
    ratio = {m: totals[m] / totals["zero"] for m in METHODS}
    return dict(layers=layers, total_s=totals, ratio=ratio, images=len(rows),
                traces=ablator.trace_count)


def methods_notes(cases: dict) -> list[str]:
    """One line per case with a methods case: each method's time over zero's.

    Example:
        methods_notes({"demo": run_case("demo")})
        # ['ablation methods, demo: 16 cells + baseline over all targets: zero 0.41 s, ...']
    """
    notes = []
    for name, case in cases.items():
        m = case.get("methods")
        if not m:
            continue
        notes.append(f"ablation methods, {name}: 16 cells + baseline of one class over all "
                     "targets: " + ", ".join(f"{k} {v:.2f} s" for k, v in m["total_s"].items())
                     + f" (mean {m['ratio']['mean']:.2f}x zero, resample "
                     f"{m['ratio']['resample']:.2f}x zero)")
    return notes
