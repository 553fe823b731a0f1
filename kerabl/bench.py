"""Speed of the fast ablation engine against the authors' procedure and the machine's floor.

- `run_bench(out, quick=False)`: the benchmark (`kerabl bench`, `scripts/bench.py`). Each network
  runs in its own process (its peak RSS is reported): the H sweep with the fast engine
  (`TailAblator`) against the authors' procedure on sampled cells (their ranks compared), a
  bfloat16 tail against float32, a Z single-unit sweep of a late layer (demo, AlexNet, VGG16),
  `kerabl.engine`'s channel engine (linear shortcut where the layer has one) against full forward,
  and the probes of one cell. Prints one table, the paper-scale extrapolation, writes them as
  JSON, and ends with the headline ratio line.
- `matmul_floor(sizes)`: the best float32 `tf.matmul` throughput reached here (GFLOP/s).
- `layer_flops(layer)`, `tail_flops(model, layer)`, `target_tail_flops(model, layers)`: FLOPs per
  image of convolutions and dense layers (elementwise work ignored), of one layer or of
  everything after a cut.
- `authors_cell(...)`: one cell as the authors' code does it: rebuild the model, reload its
  weights from a file, re-read and preprocess the images, Lambda mask, full forward.
- `probe_cell_seconds(n_units)`: seconds of one cell's probes (`kerabl.hayne.study.cell_probe_scores`).
- `extrapolate(cases, workers)`, `fast_cell_over_targets(h)`: full paper-scale study times from
  the measured per-cell times (untimed target layers interpolated in tail FLOPs).
- `format_table(rows, columns)`: a plain-text table.

Example:
    result = run_bench("bench.json", quick=True)   # demo model only, well under a minute
    result["headline"]                              # the last printed line
"""

from __future__ import annotations

import json
import resource
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from kerabl.errors import KerablError

GRID_CELLS = 16
SEED = 0
# Per network: the target layers timed (None: every default target; the rest are interpolated
# by tail FLOPs in the extrapolation), those whose cells the authors' procedure also runs (None:
# every timed layer), those whose bfloat16 tail is checked (None: the authors' layers), fast cells
# timed per layer, and the Z layer (None: no Z case) with the units timed tail-only / full-forward.
PLANS = {
    "demo": dict(layers=None, paper_layers=None, fast_cells=16, z_layer="conv_5", z_tail=64,
                 z_full=8),
    "demo-quick": dict(layers=None, paper_layers=("conv_1", "conv_4", "dense_2"), fast_cells=4,
                       z_layer="conv_5", z_tail=32, z_full=4),
    "alexnet": dict(layers=None, paper_layers=("conv_1", "conv_3", "conv_5", "dense_2"),
                    fast_cells=4, z_layer="conv_5", z_tail=32, z_full=3),
    "vgg16": dict(layers=None, paper_layers=("block3_conv1", "fc2"), fast_cells=1,
                  z_layer="block5_conv3", z_tail=32, z_full=2),
    "mobilenet_v2": dict(layers=("expanded_conv_project_BN", "block_5_add", "block_11_add",
                                 "block_16_project_BN"), paper_layers=None, fast_cells=4,
                         bf16_layers=("block_5_add",), z_layer=None),
    "resnet101": dict(layers=("conv2_block1_out", "conv4_block6_out", "conv5_block3_out"),
                      paper_layers=("conv2_block1_out", "conv5_block3_out"), fast_cells=1,
                      bf16_layers=("conv4_block6_out",), z_layer=None),
}
# Paper-scale studies: classes per network; each class x target layer has 16 cells.
STUDY_CLASSES = {"alexnet": 50, "vgg16": 8, "mobilenet_v2": 8, "resnet101": 8}
IMAGES_PER_CLASS = 50
# Probe rows per cell: the target class and 10 other classes (HConfig others='random-10').
PROBE_ROWS = 11 * IMAGES_PER_CLASS
# (m, k, n) products timed for the floor: square ones and dense-layer-like ones (many rows times
# a 4096-wide weight matrix, as the tails of AlexNet and VGG16 run).
MATMUL_SIZES = ((512, 512, 512), (1024, 1024, 1024), (2048, 2048, 2048), (4096, 4096, 4096),
                (400, 4096, 4096), (1600, 4096, 1024))


# ----------------------------------------------------------------------------- FLOPs and floor


def layer_flops(layer) -> int:
    """FLOPs per image of one Conv2D, DepthwiseConv2D or Dense layer (0 for any other layer).

    Example:
        conv = model.get_layer("conv_3")     # 13 x 13 x 384 out, 3 x 3 kernel, 256 in
        layer_flops(conv)                    # 2 * 13 * 13 * 384 * 3 * 3 * 256

    A multiply-add counts as 2 FLOPs; bias, activation and other elementwise work are ignored.
    """
    import keras

    kernel = getattr(layer, "kernel", None)
    if kernel is None:
        return 0
    out = [int(d) for d in layer.output.shape[1:]]
    kshape = [int(d) for d in kernel.shape]
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return 2 * int(np.prod(out)) * kshape[0] * kshape[1]
    if isinstance(layer, keras.layers.Conv2D):
        return 2 * int(np.prod(out)) * int(np.prod(kshape[:-1]))
    if isinstance(layer, keras.layers.Dense):
        return 2 * int(np.prod(out[:-1], dtype=np.int64)) * kshape[0] * kshape[1]
    return 0


def tail_flops(model, layer: str) -> int:
    """FLOPs per image of the network after `layer` (the work of one masked copy).

    Example:
        tail_flops(net.model, "dense_1")   # dense_2 + dense_3: 2 * (4096 * 4096 + 4096 * 1000)
    """
    from kerabl.graph import tail_model

    return sum(layer_flops(lay) for lay in tail_model(model, layer).layers)


def model_flops(model) -> int:
    """FLOPs per image of the whole network (a full forward pass)."""
    return sum(layer_flops(lay) for lay in model.layers)


def target_tail_flops(model, layers: Sequence[str]) -> list[int]:
    """FLOPs per image of the layers after each of `layers` in model (topological) order.

    Example:
        target_tail_flops(net.model, net.targets)   # one count per target, falling with depth

    At a cut point this is its tail (`tail_flops`): every later layer depends on the cut, and
    none before it does. Off a cut point, skip branches alongside the layer are not counted.
    """
    after = np.cumsum([layer_flops(lay) for lay in model.layers][::-1])[::-1].tolist() + [0]
    names = [lay.name for lay in model.layers]
    return [int(after[names.index(layer) + 1]) for layer in layers]


def _best_seconds(fn: Callable[[], object], repeats: int) -> float:
    """The fastest of `repeats` timed calls of `fn` (after one untimed call)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def matmul_floor(sizes: Sequence[tuple[int, int, int]] = MATMUL_SIZES, repeats: int = 5) -> dict:
    """The best float32 matmul throughput of this TensorFlow here, (m x k) times (k x n).

    Example:
        matmul_floor([(512, 512, 512)])["best_gflops"]   # e.g. 150.0

    Returns:
        {"best_gflops": float, "by_size": {"m x k x n": GFLOP/s}}.
    """
    import tensorflow as tf

    matmul = tf.function(lambda a, b: tf.matmul(a, b))
    rng = np.random.default_rng(SEED)
    by_size = {}
    for m, k, n in sizes:
        a = tf.constant(rng.standard_normal((m, k), dtype=np.float32))
        b = tf.constant(rng.standard_normal((k, n), dtype=np.float32))
        seconds = _best_seconds(lambda: matmul(a, b).numpy(), repeats)
        by_size[f"{m}x{k}x{n}"] = 2.0 * m * k * n / seconds / 1e9
    return {"best_gflops": max(by_size.values()), "by_size": by_size}


def onednn_enabled() -> bool:
    """Whether this TensorFlow runs its CPU kernels through oneDNN."""
    try:
        from tensorflow.python.util import _pywrap_util_port

        return bool(_pywrap_util_port.IsMklEnabled())
    except (ImportError, AttributeError):
        return False


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MB (Linux reports KB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ----------------------------------------------------------------------------- the engines


def random_cells(n_units: int, n_cells: int, seed: int) -> list[np.ndarray]:
    """`n_cells` equal-count groups of a random permutation of the units (timing stand-ins for
    grid cells: the engines' cost does not depend on which units a cell holds).

    Example:
        [len(c) for c in random_cells(10, 4, seed=0)]   # [3, 3, 2, 2]
    """
    return np.array_split(np.random.default_rng(seed).permutation(n_units), n_cells)


def authors_cell(name: str, weights_path: Path, imageset, rows: np.ndarray, layer: str,
                 mask: np.ndarray, labels: np.ndarray, input_size, preprocess: str) -> np.ndarray:
    """Ranks under one cell's mask, computed the way the authors' code does.

    Example:
        ranks = authors_cell("alexnet", w, images, rows, "conv_3", mask, labels, (227, 227), "paper")

    The model is built anew, its weights read from `weights_path`, the images re-read and
    preprocessed, a `Lambda` mask inserted after `layer`, and the full network run.
    """
    from kerabl.hayne.ablation import true_class_rank
    from kerabl.masks import lambda_masked_model
    from kerabl.models import build_model

    model = build_model(name)
    model.load_weights(weights_path)
    images = imageset.load(input_size, preprocess, rows=rows)
    scores = lambda_masked_model(model, layer, mask).predict(images, batch_size=64, verbose=0)
    return true_class_rank(scores, labels)


def _timed(fn: Callable[[], object]) -> tuple[object, float]:
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def sample_masks(net, layer: str, n: int) -> np.ndarray:
    """Element masks of the first `n` of `GRID_CELLS` random equal-size cells of `layer`."""
    from kerabl.masks import cell_masks
    from kerabl.masks import n_units

    cells = random_cells(n_units(net.model, layer, "element"), GRID_CELLS, SEED)
    return cell_masks(ablator_shape(net.model, layer), cells[:n], "element")


def _h_layer(net, layer: str, images: np.ndarray, labels: np.ndarray, n_fast: int) -> dict:
    """Fast-engine timings of one layer: build, per-class head, per-cell tail."""
    from kerabl.engine import TailAblator

    masks = sample_masks(net, layer, n_fast)

    def build():
        ablator = TailAblator(net.model, layer)
        ablator.set_images(images)
        ablator.ranks(masks, labels)  # builds and traces, and warms oneDNN at the timed shapes
        return ablator

    ablator, build_s = _timed(build)
    _, head_s = _timed(lambda: ablator.set_images(images))
    ranks, sweep_s = _timed(lambda: ablator.ranks(masks, labels))
    tail_s = sweep_s / n_fast
    flops = tail_flops(net.model, layer) * len(images)
    return dict(layer=layer, build_s=build_s, head_s=head_s, tail_s=tail_s,
                cell_s=head_s / GRID_CELLS + tail_s, tail_gflops=flops / tail_s / 1e9,
                traces=ablator.traces, ranks=ranks, masks=masks, ablator=ablator)


def ablator_shape(model, layer: str) -> tuple[int, ...]:
    """The target layer's output shape without the batch axis."""
    return tuple(int(d) for d in model.get_layer(layer).output.shape[1:])


def _bf16_check(net, layer: str, images, labels, fast: dict) -> dict:
    """Timing and largest rank change of the bfloat16 tail against float32 on the same cells."""
    from kerabl.engine import TailAblator

    ablator = TailAblator(net.model, layer, precision="bfloat16")
    ablator.set_images(images[:1])
    ablator.ranks(fast["masks"][:1], labels[:1])
    ablator.set_images(images)
    ranks, seconds = _timed(lambda: ablator.ranks(fast["masks"], labels))
    return dict(layer=layer, tail_s=seconds / len(fast["masks"]),
                max_rank_diff=int(np.abs(ranks - fast["ranks"]).max()))


def h_case(net, imageset, rows: np.ndarray, plan: dict, log: Callable[[str], None]) -> dict:
    """The H sweep of one class: the plan's target layers fast, sampled cells the authors' way."""
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
        for layer in timed_layers:
            fast = _h_layer(net, layer, images, labels, plan["fast_cells"])
            log(f"  {net.name} {layer}: fast {fast['cell_s']:.3f} s/cell "
                f"({fast['tail_gflops']:.0f} GFLOP/s in the tail)")
            if layer in paper_layers:
                ranks, seconds = _timed(lambda: authors_cell(
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
    return _h_summary(net, len(rows), layers, paper, bf16)


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
        traces=max(row["traces"] for row in layers),
        full_forward_gflop=model_flops(net.model) / 1e9,
        target_tail_gflop=[f / 1e9 for f in target_tail_flops(net.model, net.targets)],
        targets=list(net.targets))


def shortcut_flops(model, cut, n_dropped: int = 1) -> int:
    """FLOPs per image and unit of the Z shortcut (`kerabl.graph.channel_shortcut`): the dropped
    channels' Dense kernel rows, then the layers after the Dense.

    Example:
        shortcut_flops(alexnet, channel_shortcut(alexnet, "conv_5"))   # 2*36*4096 + dense_2, _3
    """
    width = int(model.get_layer(cut.dense).kernel.shape[1])
    return 2 * n_dropped * cut.positions.shape[1] * width + tail_flops(model, cut.dense)


def _full_forward_s(net, layer: str, units: np.ndarray, images: np.ndarray) -> float:
    """Seconds per unit of a full forward pass with a UnitMask zeroing the unit's channel."""
    from kerabl.masks import ablated, masked_model

    masked = masked_model(net.model, [layer])

    def run(units, images):
        for u in units:
            with ablated(masked, {layer: [u]}, unit="channel"):
                for i in range(0, len(images), 64):
                    masked.predict_on_batch(images[i:i + 64])

    run(units[:1], images)  # builds and traces the predict function for these batch shapes
    return _timed(lambda: run(units, images))[1] / len(units)


def _z_sweep(net, images: np.ndarray, layer: str, units: np.ndarray, shortcut: bool) -> dict:
    """units.py's tail engine on `units`: build seconds (models, first head pass), head seconds
    (the head and shortcut set-up on the images, traced already) and sweep seconds. Per unit, the
    head's seconds count spread over the layer's channels, since one head pass serves the sweep
    of all of them; model building and tracing count on neither side (the full forward's
    `masked_model` and its first call are untimed too)."""
    from kerabl.engine import tail_engine
    from kerabl.masks import keep_masks

    eng, build_s = _timed(lambda: tail_engine(net.model, images, layer, shortcut=shortcut))
    head_s = _timed(lambda: eng.set_images(images))[1]
    keep = keep_masks(eng.n_channels, [[u] for u in units])
    eng.predict(keep)  # traces, and warms oneDNN at the timed shapes
    if eng.shortcut_flops is not None:
        eng.shortcut_flops = 0
    preds, sweep_s = _timed(lambda: eng.predict(keep))
    return dict(eng=eng, build_s=build_s, head_s=head_s, sweep_s=sweep_s, preds=preds,
                flops=eng.shortcut_flops,
                sweep_unit_s=sweep_s / len(units),
                unit_s=(sweep_s + head_s * len(units) / eng.n_channels) / len(units))


def z_case(net, images: np.ndarray, labels: np.ndarray, plan: dict,
           log: Callable[[str], None]) -> dict:
    """Z single-unit sweep of a late layer: units.py's tail engine (with its linear shortcut
    where the layer has one) against a full forward pass per unit; the plain tail (TailAblator,
    and units.py without the shortcut) for reference, its predictions compared."""
    from kerabl.engine import TailAblator
    from kerabl.masks import cell_masks

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
    scores, ablator_s = _timed(lambda: ablator.outputs(masks))
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
    """The network and its images for one case: digits for demo, hayne8 for ImageNet models."""
    from kerabl.data import digits_imageset, paper_imageset
    from kerabl.models import load_network

    if name == "demo":
        return load_network("demo"), digits_imageset()
    if root is None or not (Path(root) / "images").is_dir():
        raise KerablError(f"the paper's images are not at {root}: pass their folder as --images DIR")
    return load_network(name, weights=None, seed=SEED), paper_imageset(root, classes="hayne8")


def probe_cell_seconds(n_units: int, n_target: int = IMAGES_PER_CLASS,
                       n_rows: int = PROBE_ROWS, seed: int = SEED) -> float:
    """Seconds of `kerabl.hayne.study.cell_probe_scores` (default `HConfig`) on one cell, in this process.

    Example:
        probe_cell_seconds(4056)   # 550 images x 4056 units: 200 fits, held-out folds, RSA

    The activations are random and ReLU-like, the target rows shifted up a little so that the
    probes have something to find; the cost depends on the shape, not on the values.
    """
    from kerabl.hayne.study import HConfig, cell_probe_scores

    rng = np.random.default_rng(seed)
    y = np.r_[np.ones(n_target, dtype=np.int64), np.zeros(n_rows - n_target, dtype=np.int64)]
    x = rng.standard_normal((n_rows, n_units), dtype=np.float32)
    x = np.maximum(x + np.float32(0.25) * y[:, None].astype(np.float32), 0.0)
    return _timed(lambda: cell_probe_scores((x, y, HConfig(), seed)))[1]


def probe_case(net, log: Callable[[str], None]) -> dict:
    """Probe seconds per cell for the smallest and largest cells of the default targets, and
    their mean over the targets (linear in the cell's unit count between the two)."""
    from kerabl.masks import n_units

    cell_units = [n_units(net.model, t, "element") // GRID_CELLS for t in net.targets]
    sizes = sorted({min(cell_units), max(cell_units)})
    seconds = [probe_cell_seconds(n) for n in sizes]
    mean_s = float(np.mean(np.interp(cell_units, sizes, seconds)))
    log(f"  {net.name} probes: " + ", ".join(f"{n} units {t:.2f} s" for n, t in
                                              zip(sizes, seconds)) + " per cell")
    return dict(cell_units=sizes, cell_s=seconds, mean_cell_s=mean_s, rows=PROBE_ROWS)


def run_case(name: str, root: str | Path | None = None, quiet: bool = False,
             quick: bool = False) -> dict:
    """One network's H, Z and probe cases (run in a fresh process by `run_bench`).

    Example:
        run_case("demo")["h"]["ratio"]   # the authors' procedure / fast engine, per cell
    """
    log = (lambda line: None) if quiet else (lambda line: print(line, flush=True))
    net, imageset = _case_data(name, root)
    plan = PLANS["demo-quick" if quick else name]
    rows = imageset.rows_of(imageset.classes[0])
    h = h_case(net, imageset, rows, plan, log)
    z = None
    if plan["z_layer"]:
        images = imageset.load(net.input_size, net.preprocess, rows=rows)
        z = z_case(net, images, np.asarray(imageset.labels)[rows], plan, log)
    probe = probe_case(net, log) if name in STUDY_CLASSES else None
    return dict(network=name, plan=plan, h=h, z=z, probe=probe, peak_rss_mb=peak_rss_mb())


def _in_subprocess(name: str, root: str | Path | None, quick: bool) -> dict:
    """`run_case` in a fresh spawned process, so that its peak memory is its own."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(run_case, (name, None if root is None else str(root)), dict(quick=quick))


# ----------------------------------------------------------------------------- extrapolation


def fast_cell_over_targets(h: dict) -> float:
    """Mean fast-engine seconds per cell over all default targets, from the timed ones.

    Example:
        fast_cell_over_targets(case["h"])   # = h["fast_cell_s"] when every target was timed

    A timed target counts with its measured time; any other target gets its per-class head and
    per-cell tail seconds interpolated linearly in tail FLOPs between the timed targets (held
    at the nearest timed target outside their range), a cell costing tail + head / 16.
    """
    tails = dict(zip(h["targets"], h["target_tail_gflop"]))
    timed = sorted(h["layers"], key=lambda row: tails[row["layer"]])
    x = [tails[row["layer"]] for row in timed]
    by_layer = {row["layer"]: row["cell_s"] for row in timed}
    cells = [by_layer[t] if t in by_layer else
             float(np.interp(tails[t], x, [r["head_s"] for r in timed])) / GRID_CELLS
             + float(np.interp(tails[t], x, [r["tail_s"] for r in timed])) for t in h["targets"]]
    return float(np.mean(cells))


def extrapolate(cases: dict, workers: int) -> list[dict]:
    """Paper-scale study times (hours) of both engines and of the probes, from the measured cases.

    Example:
        rows = extrapolate({"alexnet": alexnet_case, "vgg16": vgg_case}, workers=2)

    Per network: `STUDY_CLASSES` classes x its default targets x 16 cells. Fast engine: the
    mean over the targets of `fast_cell_over_targets`; authors' procedure: the mean of its timed
    cells (it rebuilds and runs the whole network whatever the layer); probes: the mean probe
    seconds per cell over the targets, run by `workers` processes with the cores to themselves
    (the sweep waits for a pair's probes, then ablates: total = fast + probes).
    """
    rows = []
    for name, n_classes in STUDY_CLASSES.items():
        if name not in cases:
            continue
        h, probe = cases[name]["h"], cases[name]["probe"]
        n_layers, n_timed = len(h["targets"]), len(h["layers"])
        cells = n_classes * n_layers * GRID_CELLS
        fast_cell = fast_cell_over_targets(h)
        fast_h = cells * fast_cell / 3600
        probe_h = cells * probe["mean_cell_s"] / workers / 3600
        rows.append(dict(network=name, classes=n_classes, layers=n_layers, cells=cells,
                         fast_cell_s=fast_cell, paper_cell_s=h["paper_cell_s"],
                         probe_cell_s=probe["mean_cell_s"], fast_h=fast_h, probe_h=probe_h,
                         total_h=fast_h + probe_h, paper_h=cells * h["paper_cell_s"] / 3600,
                         timed=f"{n_timed}/{n_layers} layers, {len(h['paper'])} authors' cells",
                         timed_layers=[row["layer"] for row in h["layers"]]))
    return rows


def extrapolation_note(rows: Sequence[dict], workers: int) -> str:
    """The lines printed under the extrapolation table: what was timed and how it was averaged."""
    sampled = "; ".join(f"{row['network']}: {', '.join(row['timed_layers'])}" for row in rows
                        if len(row["timed_layers"]) < row["layers"])
    return ("fast s/cell: per-class head / 16 + tail, averaged over all default targets; targets "
            "not timed get head and tail seconds interpolated in tail FLOPs between the timed ones"
            f"{' (timed: ' + sampled + ')' if sampled else ''}. authors s/cell: mean of the timed "
            "authors' cells. probe s/cell: cell_probe_scores with the default HConfig (200 fits "
            "of <= 100 units, 5-fold held-out, RSA over all the cell's units) on 550 random "
            "ReLU-like rows (11 classes x 50 images), timed on the smallest and largest cell of "
            "the targets and interpolated in unit count; probe h assumes the default "
            f"{workers} worker processes (os.cpu_count()) running in parallel with nothing else. "
            "total h = fast h + probe h (the sweep waits for a pair's probes, then ablates).")


# ----------------------------------------------------------------------------- table and entry


def format_table(rows: Sequence[dict], columns: Sequence[tuple[str, str, str]]) -> str:
    """Rows as a plain-text table; columns are (key, header, format spec).

    Example:
        format_table([{"a": 1.5}], [("a", "seconds", ".2f")])   # "seconds\\n-------\\n   1.50"
    """
    cells = [[format(row[key], spec) if row.get(key) is not None else "-"
              for key, _, spec in columns] for row in rows]
    widths = [max([len(head)] + [len(c[i]) for c in cells]) for i, (_, head, _) in
              enumerate(columns)]
    lines = ["  ".join(head.rjust(w) for (_, head, _), w in zip(columns, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


MAIN_COLUMNS = (("case", "case", "s"), ("sample", "timed (fast / slow)", "s"),
                ("fast_s", "fast s/item", ".4f"), ("slow_s", "slow s/item", ".3f"),
                ("ratio", "ratio", ".1f"), ("ratio_cached", "ratio, cached acts", ".1f"),
                ("floor_pct", "% floor", ".0f"),
                ("ranks", "ranks equal", "s"), ("bf16", "bf16 tail", "s"),
                ("rss_mb", "peak MB", ".0f"))
LEGEND = ("H rows: s/item per cell, one class (50 images; demo: one digit class); fast = "
          "TailAblator, tail + 1/16 of the per-class head (cached acts: tail only, as run_h_study "
          "reads the activation cache); slow = the authors' procedure (rebuild, reload weights, "
          "re-read images, Lambda mask, full forward) on the sampled cells, whose ranks are "
          "compared. Z rows: s/item per unit, channel units; fast = kerabl.units' tail engine "
          "with its linear shortcut where the layer feeds a Dense through pooling/flatten and "
          "the Dense layers after it skipping inputs that are zero in every row (sweep + head "
          "pass / channels; cached acts: the sweep alone, tail only, as the study reuses the head "
          "pass for the unit attributes), predictions compared with the plain tail "
          "(TailAblator); slow = full "
          "forward with a UnitMask; model building and tracing untimed on both sides. Every "
          "timed run follows an untimed one at the same shapes (tracing, oneDNN set-up), the "
          "authors' cells one per network. "
          "% floor = tail FLOPs / tail seconds / best matmul GFLOP/s. bf16 tail: speed-up and "
          "largest rank change against float32.")
EXTRAPOLATION_COLUMNS = (("network", "network", "s"), ("classes", "classes", "d"),
                         ("layers", "layers", "d"), ("cells", "cells", "d"),
                         ("fast_cell_s", "fast s/cell", ".3f"),
                         ("paper_cell_s", "authors s/cell", ".2f"),
                         ("probe_cell_s", "probe s/cell", ".2f"), ("fast_h", "fast h", ".2f"),
                         ("probe_h", "probe h", ".2f"), ("total_h", "total h", ".2f"),
                         ("paper_h", "authors h", ".1f"), ("timed", "timed", "s"))


def table_rows(cases: dict, floor: float) -> list[dict]:
    """One H row (per cell) and one Z row (per unit) per network."""
    rows = []
    for name, case in cases.items():
        h, z, n_timed = case["h"], case["z"], len(case["h"]["layers"])
        n_targets = len(h.get("targets", h["layers"]))
        of = f"{n_timed} layers" if n_timed == n_targets else f"{n_timed} of {n_targets} layers"
        rows.append(dict(case=f"H {name} ({of})",
                         sample=f"{n_timed}x{case['plan']['fast_cells']} / {len(h['paper'])} cells",
                         fast_s=h["fast_cell_s"], slow_s=h["paper_cell_s"], ratio=h["ratio"],
                         ratio_cached=h["ratio_cached"],
                         floor_pct=100 * h["tail_gflops"] / floor,
                         ranks=f"{h['same_ranks']:.0%} (max diff {h['max_rank_diff']})",
                         bf16=f"{h['bf16_tail_speedup']:.1f}x, ranks +-{h['bf16_max_rank_diff']}",
                         rss_mb=case["peak_rss_mb"]))
        if z is not None:
            rows.append(dict(case=f"Z {name} {z['layer']}",
                             sample=f"{z['tail_units']} / {z['full_units']} units",
                             fast_s=z["tail_unit_s"], slow_s=z["full_unit_s"], ratio=z["ratio"],
                             ratio_cached=z["full_unit_s"] / z["sweep_unit_s"],
                             floor_pct=100 * z["tail_gflops"] / floor,
                             ranks=f"{z['same_preds']:.0%} preds = plain tail", bf16="-",
                             rss_mb=case["peak_rss_mb"]))
    return rows


def z_notes(cases: dict, floor: float) -> list[str]:
    """Per Z case: the share of the dense FLOPs the sweep ran, and the ceiling of an exact dense
    tail (its FLOPs at 100 % of the floor, plus the head pass over the channels) against the full
    forward, the bound that only skipping work can pass."""
    notes = []
    for name, case in cases.items():
        z = case["z"]
        if z is None:
            continue
        dense_s = z["dense_unit_flops"] * z["images"] / (floor * 1e9)
        ceiling = z["full_unit_s"] / (dense_s + z["head_s"] / z["channels"])
        notes.append(f"Z {name} {z['layer']}: {z['ratio']:.1f}x with the head pass, "
                     f"{z['full_unit_s'] / z['sweep_unit_s']:.1f}x tail only; the sweep ran "
                     f"{z['flops_run']:.0%} of the dense FLOPs; an exact dense tail at 100 % "
                     f"of the floor would reach {ceiling:.1f}x")
    return notes


def headline(cases: dict) -> str:
    """The last printed line: the per-cell ratio of the largest measured H case."""
    name = next(n for n in ("alexnet", "vgg16", "demo") if n in cases)
    h = cases[name]["h"]
    return (f"headline: {name} H sweep, fast engine {h['ratio']:.1f}x faster per cell than the "
            f"authors' procedure ({h['fast_cell_s']:.3f} s vs {h['paper_cell_s']:.2f} s)")


def run_bench(out: str | Path, quick: bool = False, root: str | Path | None = None,
              log: Callable[[str], None] = print) -> dict:
    """Run the benchmark, print its tables, write them as JSON to `out`, return them.

    Example:
        result = run_bench("bench.json", quick=True)
        result["cases"]["demo"]["h"]["ratio"]

    Args:
        out: JSON file for the results.
        quick: the demo model only (under a minute).
        root: the paper's image set, the folder of `images/` (the ImageNet cases are skipped,
            with a message, when it is None or holds no images).
        log: where lines go.

    Returns:
        {"machine", "floor", "cases", "table", "notes", "extrapolation", "skipped", "headline"}.
    """
    import os
    import platform

    import tensorflow as tf

    floor = matmul_floor(MATMUL_SIZES[:2] if quick else MATMUL_SIZES)
    log(f"matmul floor: {floor['best_gflops']:.1f} GFLOP/s float32 (best of "
        f"{', '.join(floor['by_size'])}); oneDNN on: {onednn_enabled()}")
    cases, skipped = {}, []
    for name in ("demo",) if quick else ("demo", *STUDY_CLASSES):
        if name != "demo" and (root is None or not (Path(root) / "images").is_dir()):
            where = "no --images folder given" if root is None else f"no images under {root}"
            skipped.append(f"{name}: {where} (pass the paper's image set as --images DIR)")
            log(f"skipped {skipped[-1]}")
            continue
        log(f"case {name} ...")
        cases[name] = _in_subprocess(name, root, quick)
    rows = table_rows(cases, floor["best_gflops"])
    workers = os.cpu_count() or 1
    extra = [] if quick else extrapolate(cases, workers)
    result = dict(machine=dict(cpus=os.cpu_count(), platform=platform.platform(),
                               tensorflow=tf.__version__, onednn=onednn_enabled()),
                  floor=floor, cases=cases, table=rows, notes=z_notes(cases, floor["best_gflops"]),
                  extrapolation=extra, skipped=skipped, headline=headline(cases))
    Path(out).write_text(json.dumps(result, indent=1, default=_json_default))
    log(format_table(rows, MAIN_COLUMNS))
    log(LEGEND)
    for note in result["notes"]:
        log(note)
    if extra:
        log("\nPaper-scale study times on this machine (50 images per class, 16 cells):")
        log(format_table(extra, EXTRAPOLATION_COLUMNS))
        log(extrapolation_note(extra, workers))
    log(result["headline"])
    return result


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
