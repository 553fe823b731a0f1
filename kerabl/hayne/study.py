"""The H study end to end: activations -> coordinates and grid -> probes -> cell ablation -> results.

- `HConfig`: every protocol choice of the paper; defaults = the authors' choices except the
  grid bounds (`legacy_bounds=True` gives theirs) and the srs matrices (`srs_matrix="full"`);
  `HConfig.authors(network)` = every choice of the authors' code for that network.
- `run_h_study(network, imageset, out_dir, ...)`: the sweep over class x layer pairs. It appends to
  the results file as it goes, resumes where an interrupted run stopped, computes nothing when the
  results are complete, and runs one deterministic shard of the pairs when asked (`shard=(i, n)`).

Example:
    net = load_network("demo")
    path = run_h_study(net, digits_imageset(), "out")   # out/h_results.h5
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from kerabl.activations import check_cache_fits, layer_shapes, record_activations
from kerabl.contents import contents_digest, image_files
from kerabl.engine import check_live_outputs, predict_batched, rank_engine, true_class_rank
from kerabl.errors import KerablError
from kerabl.graph import is_cut_point
from kerabl.hayne.ablation import baseline_and_ablated_ranks, mean_rank_deficit
from kerabl.hayne.baseline import log_baseline
from kerabl.hayne.config import HConfig, others_count
from kerabl.hayne.controls import permuted_labels
from kerabl.hayne.grid import choose_others, coordinates, equal_count_grid
from kerabl.hayne.heldout import fold_probe_summary
from kerabl.hayne.logistic import single_threaded
from kerabl.hayne.pools import (bounded_map, pool_note, probe_pool, worker_count,  # noqa: F401
                                worker_pool)
from kerabl.hayne.probes import heldout_probe_score, paper_probe_loss, rsa_scores
from kerabl.hayne.results import HResultsWriter, shard_pairs
from kerabl.hayne.shared import SharedBlock, resolve
from kerabl.nested import flat_network, from_paths, layer_paths
from kerabl.progress import progress_bar
from kerabl.recompute import RecomputedActivations
from kerabl.replacement import ZERO, Replacement, draw_donors, mean_output
from kerabl.space import available_memory, check_room, human_bytes
from kerabl.validate import check_grid_fits, check_study_images

def ranks_preprocess(network, config: HConfig) -> str:
    """The preprocessing recipe of the baseline and ablated ranks: `config.ablation_preprocess`,
    else the network's own (the activations' recipe).

    Example:
        ranks_preprocess(net, HConfig.authors("resnet50_torchvision"))   # "torchvision232"
    """
    return config.ablation_preprocess or network.preprocess


def class_means(acts: np.ndarray, n_target: int, precision: str = "float64"):
    """Mean activation of each unit over the target images (the first `n_target` rows) and
    over the other images: float64 sums, or the authors' `np.mean` of float32 activations
    (`precision="float32"`: float32 sums, row by row, in the rows' order).

    Example:
        a, o = class_means(acts, 50)             # float64
        a, o = class_means(acts, 50, "float32")  # theirs: np.mean(acts[rows], axis=0)
    """
    if precision == "float32":
        acts = np.asarray(acts, dtype=np.float32)
        return acts[:n_target].mean(0), acts[n_target:].mean(0)
    return acts[:n_target].mean(0, dtype=np.float64), acts[n_target:].mean(0, dtype=np.float64)


def cell_seed(seed: int, *keys: int) -> int:
    """A seed for one (class, layer, cell) derived from the run's seed, independent of run order.

    Example:
        cell_seed(0, 1, 2, 3)   # 3898271682: class 1, layer 2, cell 3 of a run with seed 0
    """
    return int(np.random.SeedSequence([seed, *keys]).generate_state(1)[0])


def results_name(shard: tuple[int, int] | None) -> str:
    """The results file name of a shard (None: the whole run).

    Example:
        results_name(None), results_name((1, 4))   # "h_results.h5", "h_results.shard-1-of-4.h5"
    """
    return "h_results.h5" if shard is None else f"h_results.shard-{shard[0]}-of-{shard[1]}.h5"


def run_h_study(network, imageset, out_dir, *, layers: Sequence[str] | None = None,
                config: HConfig = HConfig(), cache_path=None,
                shard: tuple[int, int] | None = None, progress: bool = True,
                workers: int | None = None, log: Callable[[str], None] = print,
                cache: str = "file") -> Path | None:
    """Run (or resume, or skip when finished) the H study and return the results file.

    Example:
        net = load_network("demo")
        run_h_study(net, digits_imageset(), "out", config=HConfig(probe_fits=200))

    Args:
        network: a `kerabl.models.Network`.
        imageset: a `kerabl.data.ImageSet`; its classes are the study's classes, in order.
        out_dir: folder for `activations.h5` and `h_results.h5` (or the shard's results file).
        layers: target layers (default: the network's default targets).
        config: protocol options.
        cache_path: activation cache (default `out_dir/activations.h5`).
        shard: `(i, n)` to run only pairs k = class * n_layers + layer with k % n == i.
        workers: processes computing the probes (default: the number of CPU cores); 1 runs them
            in this thread. Where this process cannot spawn workers safely (a plain script
            without `if __name__ == "__main__":`) they are threads of this process
            (`kerabl.hayne.pools`). Results depend on neither.
        cache: "file" (record the activation cache, stopping first when it does not fit in
            the free space) or "none" (no cache: `kerabl.recompute`; the same results).

    Returns:
        The finished results file, or None for a shard whose file is written but not renamed
        because it does not cover every pair (it is renamed when its own pairs are done).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    network = flat_network(network)   # a model calling other models: one graph
    layers = target_layers(network, layers)
    cache_path = Path(cache_path or out_dir / "activations.h5")
    preprocess = network.preprocess
    studied = imageset   # the true labels: the baseline is the network's own accuracy
    if config.control == "permuted-labels":
        imageset = permuted_labels(imageset, config.seed)
        log(f"control: class labels permuted among the images (seed {config.seed}); "
            "every class is a random set of images")

    check_study_images(imageset)
    files, note = image_files(imageset, cache_path, preprocess, log)
    check_live_outputs(network, imageset)
    writer_args = sweep_writer_args(network, imageset, layers, config)
    writer_args["config"]["contents"] = contents_digest(files)
    check_grid_fits(tuple(config.grid), dict(zip(layers, writer_args["n_units"])))
    check_cache_room(network, imageset, layers, config, cache_path, cache)
    check_pair_memory(Sweep(network, imageset, layers, config, None),
                      dict(zip(layers, writer_args["n_units"])), log, shard)
    writer = HResultsWriter(out_dir / results_name(shard), shard=shard, log=log,
                            contents_note=note, **writer_args)
    if writer.complete:
        log(f"results are complete, nothing to compute: {out_dir / results_name(shard)}")
        return out_dir / results_name(shard)
    log_baseline(network, studied, log)
    acts = study_activations(network, imageset, layers, config, cache_path, cache, progress,
                             log, files)
    pairs = writer.pairs()
    todo = [(ci, li) for ci, li in pairs if not writer.is_done(ci, li)]
    sweep = Sweep(network, imageset, layers, config, acts, log)
    sweep.workers = worker_count(workers)
    bar = progress_bar("H study: class x layer", len(pairs), enabled=progress,
                       done=len(pairs) - len(todo), every=0)
    if note := pool_note(sweep.workers):
        log(note)
    with probe_pool(sweep.workers) as sweep.pool, sweep, bar as advance:
        for ci in sorted({ci for ci, _ in todo}):
            state = sweep.start_class(ci)
            check_room(writer.partial_path)
            writer.write_class(ci, image_rows=state["target_rows"],
                               rank_before=state["rank_before"], others=state["others"])
            for li in [li for c, li in todo if c == ci]:
                found = sweep.pair(state, li)
                check_room(writer.partial_path)     # a pair's arrays: kB, in the margin
                writer.write_pair(ci, li, **found)
                advance(1)
    return writer.finish()


CACHE_MODES = ("file", "none")
# a pair's peak memory over its activations block (the grid's means, the probe and srs columns);
# measured on ResNet-50 pairs of 2,500 images: about 1.0x the block over the process before it
PAIR_MEMORY_FACTOR = 1.4


def check_pair_memory(sweep: "Sweep", n_units: dict[str, int],
                      log: Callable[[str], None] = print,
                      shard: tuple[int, int] | None = None) -> int:
    """Stop with one line, before anything is computed, when the largest class x layer pair
    (of `shard`'s pairs) would not fit in the available memory (a process the kernel kills for
    memory says nothing); say the need when it is over 1 GB. Returns the bytes of the largest
    pair's activations (`n_units`: units per layer, in the sweep's layer order).

    Example:
        check_pair_memory(Sweep(net, images, layers, config, None), {"conv2_block1_out": 802816})
        # KerablError: a class x layer pair holds 8.03 GB of activations (2500 images x 802816
        # units of conv2_block1_out) and 6.2 GB of memory is available: ...
    """
    pairs = shard_pairs(len(sweep.imageset.classes), len(sweep.layers), shard)
    if not pairs:
        return 0
    rows = max(len(s["target_rows"]) + len(s["other_rows"]) for s in
               (sweep.start_class(ci, forward=False) for ci in sorted({ci for ci, _ in pairs})))
    layer = max({sweep.layers[li] for _, li in pairs}, key=n_units.get)
    need, have = rows * n_units[layer] * 4, available_memory()
    what = (f"a class x layer pair holds {human_bytes(need)} of activations ({rows} images x "
            f"{n_units[layer]} units of {layer})")
    if have is not None and need * PAIR_MEMORY_FACTOR > have:
        raise KerablError(f"{what} and {human_bytes(have)} of memory is available: free memory, "
                          "record channel units (--unit channel), study fewer or later layers "
                          "(--layers), or take the other images from the studied classes only "
                          "(--other-images studied)")
    if need > 1e9:
        log(f"{what}; {human_bytes(have) if have is not None else 'unknown'} of memory available")
    return need


def check_cache_room(network, imageset, layers: Sequence[str], config: HConfig, cache_path,
                     cache: str = "file") -> None:
    """Before a study writes anything: an unknown cache mode, or a cache to record that does
    not fit in the free space, is one `KerablError` (`kerabl.activations.check_cache_fits`).

    Example:
        check_cache_room(net, images, ["block1_conv1"], HConfig(), "out/activations.h5")
    """
    if cache not in CACHE_MODES:
        raise KerablError(f"unknown cache mode {cache!r}: use file or none")
    if cache == "file" and not Path(cache_path).exists():
        check_cache_fits(cache_path, len(imageset.labels), layer_shapes(network.model, layers),
                         config.unit)


def study_activations(network, imageset, layers: Sequence[str], config: HConfig, cache_path,
                      cache: str = "file", progress: bool = True,
                      log: Callable[[str], None] = print, files=None):
    """The activations a study's pairs read: the recorded cache at `cache_path`, or with
    `cache="none"` a `RecomputedActivations` that writes nothing (each pair runs its images
    through the network again; every value equals the cache's).

    Example:
        acts = study_activations(net, images, ["conv_5"], HConfig(), "out/activations.h5", "none")
    """
    if cache == "none":
        log("no activation cache: each class x layer pair runs its images through the network "
            "again (slower; the results equal a cached run's)")
        return RecomputedActivations(network, imageset, layers, config.unit)
    return record_activations(network, imageset, layers, cache_path, unit=config.unit,
                              preprocess=network.preprocess, progress=progress, files=files,
                              log=log)


def target_layers(network, layers: Sequence[str] | None) -> list[str]:
    """`layers` (default: the network's targets), each checked to be a layer of the model; a
    path into a nested model (`base/layer`, see `kerabl.nested`) becomes the layer's name.

    Example:
        target_layers(load_network("demo"), None)   # ["conv_1", ..., "dense_2"]
        target_layers(net, ["conv_9"])   # KerablError: unknown layer 'conv_9' for model demo
        target_layers(classifier, ["mobilenetv2_0.35_96/block_4_add"])   # ["block_4_add"]
    """
    layers = from_paths(network.model, layers or network.targets)
    unknown = [name for name in layers if name not in {l.name for l in network.model.layers}]
    if unknown:
        nested = layer_paths(network.model)
        hint = " (or a path BASE/LAYER that `kerabl layers` lists)" if nested else ""
        raise KerablError(f"unknown layer {unknown[0]!r} for model {network.name}: "
                          f"choose from {', '.join(network.targets)}{hint}")
    return layers


def sweep_writer_args(network, imageset, layers, config: HConfig) -> dict:
    """The keyword arguments of `HResultsWriter` for a run: its recorded config, classes, layers, unit
    counts, grid and the largest image and other-class counts.

    Example:
        HResultsWriter(path, **sweep_writer_args(net, imageset, ["conv_5"], HConfig()))
    """
    from kerabl.masks import n_units  # loads TensorFlow: on first use

    counts = [len(imageset.rows_of(c)) for c in imageset.classes]
    n_others = len(imageset.classes) - 1
    if others_count(config.others) is not None and config.other_images == "studied":
        n_others = min(n_others, others_count(config.others))
    run_config = {
        "study": "H", "model": network.name, "weights_id": network.weights_id,
        "dataset": imageset.name, "preprocess": network.preprocess, "layers": list(layers),
        "classes": list(imageset.class_names), **config.as_dict()}
    if config.other_images == "all":      # the pool: every image of the set, studied or not
        run_config["images_in_set"] = len(imageset)
        run_config["ranks_preprocess"] = ranks_preprocess(network, config)
    return dict(config=run_config, classes=list(imageset.class_names),
                class_index=np.asarray(imageset.classes, dtype=np.int64), layers=list(layers),
                n_units=[n_units(network.model, name, config.unit) for name in layers],
                grid_shape=tuple(config.grid), max_images=max(counts), max_others=n_others)


class Sweep:
    """Per-class state and per-pair computation of the H sweep (one engine per layer, reused).

    Example:
        sweep = Sweep(net, imageset, ["conv_5"], HConfig(), cache)
        state = sweep.start_class(0)     # the class's rows, others, images and ranks
    """

    def __init__(self, network, imageset, layers, config: HConfig, cache,
                 log: Callable[[str], None] = print):
        self.network, self.imageset, self.layers, self.config = network, imageset, layers, config
        self.cache = cache
        self.log = log
        self._ablators: dict[str, object] = {}
        self.pool = None
        self.workers = 1
        self._block = None
        self._no_room = False
        self._means: dict[int, np.ndarray] = {}
        self._heads: dict[str, object] = {}

    def _ablator(self, layer):
        if layer not in self._ablators:
            self._ablators[layer] = rank_engine(self.config.engine, self.network.model, layer,
                                                self.config.precision)
        return self._ablators[layer]

    def start_class(self, ci: int, forward: bool = True) -> dict:
        """Class `ci`'s image rows and other classes; with `forward`, its images and ranks."""
        imageset, net = self.imageset, self.network
        n_classes = len(imageset.classes)
        target_rows = imageset.rows_of(imageset.classes[ci])
        if self.config.other_images == "all":       # every image not of the class
            others = np.array([o for o in range(n_classes) if o != ci], dtype=np.int64)
            other_rows = imageset.other_rows(imageset.classes[ci])
        else:
            others = choose_others(n_classes, ci, self.config.others, self.config.seed)
            other_rows = np.concatenate([imageset.rows_of(imageset.classes[o]) for o in others])
        if not forward:
            return dict(ci=ci, target_rows=target_rows, other_rows=other_rows, others=others)
        images = imageset.load(net.input_size, ranks_preprocess(net, self.config),
                               rows=target_rows)
        labels = np.asarray(imageset.labels)[target_rows]
        scores = predict_batched(net.model, images, 64)[0]
        return dict(ci=ci, target_rows=target_rows, other_rows=other_rows, others=others,
                    images=images, labels=labels, rank_before=true_class_rank(scores, labels))

    def pair(self, state: dict, li: int) -> dict:
        """Every stage of pair (class state["ci"], layer li): grid, probes, ablation."""
        def stages(acts, block):
            found = self.grid(state, acts)
            found.update(self.probes(state, li, acts, found["grid"], block))
            found.update(self.ablate(state, li, acts, found["grid"]))
            return found

        return self.with_activations(state, li, stages)

    def with_activations(self, state: dict, li: int, fn: Callable):
        """`fn(acts, block)` on the pair's activations (`activations`).

        With probe workers, the activations are read into the sweep's shared-memory block, and
        `block` (a `kerabl.hayne.shared.SharedBlock`, else None) lets each worker read its cell's
        columns there; `fn` must keep no view of `acts`. Where the shared-memory folder has no
        room, the activations go to the workers by pipe (said once)."""
        shape = (len(state["target_rows"]) + len(state["other_rows"]),
                 self.cache.n_units(self.layers[li]))
        block = self._shared_block(shape)
        if block is None:
            return fn(self.activations(state, li), None)
        return block.apply(shape, lambda acts: fn(self.activations(state, li, out=acts), block))

    def _shared_block(self, shape: tuple[int, int]):
        """The sweep's shared-memory block, made (or grown) to hold an array of `shape`, sized
        at first for the widest layer; None without probe workers or without room."""
        nbytes = shape[0] * shape[1] * 4
        if self.pool is None or self._no_room or isinstance(self.pool, ThreadPoolExecutor):
            return None     # threads read the activations where they are
        if self._block is not None and self._block.nbytes >= nbytes:
            return self._block
        if self._block is not None:
            self._block.unlink()
        widest = max(self.cache.n_units(layer) for layer in self.layers)
        size = max(nbytes, shape[0] * widest * 4)
        self._block = SharedBlock.create(size)
        if self._block is None:
            self._no_room = True
            self.log(f"probes: the shared-memory folder has no room for the pairs' activations "
                     f"({size / 2 ** 20:.0f} MB); they go to the probe workers by pipe, which is "
                     "slower (the results are the same)")
        return self._block

    def __enter__(self) -> "Sweep":
        return self

    def __exit__(self, kind, *_) -> None:
        """Free the shared-memory block (strictly, so a view left alive is an error, unless the
        sweep is ending by an exception)."""
        if self._block is not None:
            block, self._block = self._block, None
            block.unlink(strict=kind is None)

    def activations(self, state: dict, li: int, out: np.ndarray | None = None) -> np.ndarray:
        """Cached activations of the class's images, then its other classes' images (into `out`
        when given)."""
        rows = np.concatenate([state["target_rows"], state["other_rows"]])
        return self.cache.read(self.layers[li], rows=rows, out=out)

    def grid(self, state: dict, acts: np.ndarray) -> dict:
        """Stage `grid`: unit coordinates and the equal-count grid."""
        n_target = len(state["target_rows"])
        selectivity, magnitude = coordinates(*class_means(acts, n_target, self.config.means),
                                             precision=self.config.means)
        grid = equal_count_grid(selectivity, magnitude, tuple(self.config.grid),
                                legacy_bounds=self.config.legacy_bounds)
        return dict(selectivity=selectivity, magnitude=magnitude, grid=grid)

    def probes(self, state: dict, li: int, acts: np.ndarray, grid, block=None) -> dict:
        """Stage `probe`: the probe scores of each cell, and the leak-free held-out probe (the
        workers read the activations from `block`, the `SharedBlock` holding `acts`, when given)."""
        n_target = len(state["target_rows"])
        fold_task = (acts if block is None else block.whole(acts.shape), n_target, self.config,
                     cell_seed(self.config.seed, state["ci"], li, 2 ** 31 - 1))
        # the held-out fold probe runs beside the cells' probes when there is a pool
        fold = None if self.pool is None else self.pool.submit(pair_fold_probe, fold_task)
        scores = self._probe_scores(acts, n_target, grid.cells, state["ci"], li, block)
        folds = pair_fold_probe(fold_task) if fold is None else fold.result()
        scores["probe_fold"], scores["probe_fold_sd"] = folds
        return scores

    def ablate(self, state: dict, li: int, acts: np.ndarray, grid) -> dict:
        """Stage `ablate`: the true class's ranks with each cell ablated and with none (an
        all-ones mask through the same engine), their mean deficit."""
        layer = self.layers[li]
        ablator = self._ablator(layer)
        if self._can_use_cache(ablator, layer):
            # a copy: the engine keeps its input, and `acts` may be a shared block's view
            ablator.set_activations(acts[:len(state["target_rows"])].copy())
        else:
            ablator.set_images(state["images"])
        from kerabl.masks import cell_masks  # loads TensorFlow: on first use

        masks = cell_masks(ablator.shape, grid.cells, self.config.unit)
        replacement, stored = self.replacement(state, li, len(grid.cells))
        ablator.set_replacement(replacement.with_baseline())
        rank_baseline, rank_after = baseline_and_ablated_ranks(ablator, masks, state["labels"])
        deficit = mean_rank_deficit(rank_baseline, rank_after, clip=self.config.clip)
        return dict(rank_after=rank_after, rank_baseline=rank_baseline, deficit=deficit, **stored)

    def replacement(self, state: dict, li: int, n_cells: int) -> tuple[Replacement, dict]:
        """What the removed units of pair (state["ci"], li) take under `config.ablation`
        (`kerabl.replacement`), and what the results store of it: the layer's mean output over
        every image of the study (`ablation_mean`), or per cell the donor image of each target
        image (`donor_rows`, rows of the image set outside the target class, drawn with
        `draw_donors(pool, n, seed, class, layer, cell)`)."""
        method = self.config.ablation
        if method == "zero":
            return ZERO, {}
        if method == "mean":
            if li not in self._means:
                every = np.arange(len(self.imageset.labels))
                self._means[li] = mean_output(self.layer_outputs(li, every[i:i + 256])
                                              for i in range(0, len(every), 256))
            return Replacement("mean", mean=self._means[li]), {"ablation_mean": self._means[li]}
        pool = np.setdiff1d(np.arange(len(self.imageset.labels)), state["target_rows"])
        donors = np.stack([draw_donors(pool, len(state["target_rows"]), self.config.seed,
                                       state["ci"], li, k) for k in range(n_cells)])
        unique, index = np.unique(donors, return_inverse=True)
        return (Replacement("resample", bank=self.layer_outputs(li, unique),
                            donors=index.reshape(donors.shape)), {"donor_rows": donors})

    def layer_outputs(self, li: int, rows: np.ndarray) -> np.ndarray:
        """The layer's whole output (N, *shape) on the image set's `rows` (sorted): from the
        activation cache when it holds float32 elements, else by a forward pass."""
        from kerabl.engine import predict_batched
        from kerabl.graph import head_model

        layer = self.layers[li]
        shape = tuple(int(d) for d in self.network.model.get_layer(layer).output.shape[1:])
        if (self.config.unit == "element"
                and np.dtype(self.cache.attrs.get("dtype", "float32")) == np.float32):
            return self.cache.read(layer, rows=rows).reshape((-1, *shape))
        if layer not in self._heads:
            self._heads[layer] = head_model(self.network.model, layer)
        images = self.imageset.load(self.network.input_size, self.network.preprocess, rows=rows)
        return predict_batched(self._heads[layer], images, 64)[0].reshape((-1, *shape))

    def _can_use_cache(self, ablator, layer) -> bool:
        """Cached activations feed the tail only when they are the exact layer output."""
        return (self.config.engine == "fast" and self.config.unit == "element"
                and np.dtype(self.cache.attrs.get("dtype", "float32")) == np.float32
                and ranks_preprocess(self.network, self.config) == self.network.preprocess
                and is_cut_point(self.network.model, layer))

    def _probe_scores(self, acts, n_target, cells, ci, li, block=None) -> dict:
        config = self.config
        y = np.r_[np.ones(n_target, dtype=np.int64), np.zeros(len(acts) - n_target, dtype=np.int64)]
        tasks = ((acts[:, units] if block is None else block.columns(acts.shape, units), y,
                  config, cell_seed(config.seed, ci, li, k)) for k, units in enumerate(cells))
        scores = list(bounded_map(self.pool, cell_probe_scores, tasks, 2 * self.workers))
        return {name: np.array([row[j] for row in scores], dtype=np.float64)
                for j, name in enumerate(PROBE_FIELDS)}


PROBE_FIELDS = ("probe", "probe_heldout", "srs_tau", "srs_rho", "probe_loss")


def cell_probe_scores(task) -> tuple[float, float, float, float, float]:
    """Probe scores of one cell: paper metric, held-out metric, Kendall tau, Spearman rho and
    the paper metric's mean loss (paper metric = exp(-loss)).

    Example:
        probe, heldout, tau, rho, loss = cell_probe_scores(task)   # one cell's probe task

    Runs in a worker process when the sweep has a pool: it imports no TensorFlow.
    """
    with single_threaded():
        return _cell_probe_scores(*task)


def pair_fold_probe(task) -> tuple[np.ndarray, np.ndarray]:
    """The leak-free held-out probe of one class x layer pair (`kerabl.hayne.heldout`): mean and
    standard deviation over folds per cell, BLAS on one thread. Runs in a worker process when
    the sweep has a pool (it imports no TensorFlow).

    Example:
        mean, sd = pair_fold_probe((acts, n_target, HConfig(), cell_seed(0, ci, li, 2 ** 31 - 1)))
    """
    acts, n_target, config, seed = task
    with single_threaded():
        return resolve(acts, lambda a: fold_probe_summary(
            a, n_target, grid_shape=tuple(config.grid), legacy_bounds=config.legacy_bounds,
            folds=config.heldout_folds, max_units=config.probe_max_units, seed=seed))


def _cell_probe_scores(x, y, config: HConfig,
                       seed: int) -> tuple[float, float, float, float, float]:
    x = resolve(x)      # a shared block's columns, copied here in the worker
    if x.shape[1] == 0:     # an empty cell (legacy bounds): no probe; srs NaN or the authors' 0
        srs = 0.0 if config.empty_cells == "zero" else np.nan
        return np.nan, np.nan, srs, srs, np.nan
    loss = paper_probe_loss(x, y, n_fits=config.probe_fits, max_units=config.probe_max_units,
                            seed=seed, solver=config.probe_solver,
                            objective=config.probe_objective)
    heldout = heldout_probe_score(x, y, folds=config.heldout_folds,
                                  max_units=config.probe_max_units, seed=seed,
                                  solver=config.probe_solver)
    tau, rho = rsa_scores(x, y, config.srs_matrix) if config.srs else (np.nan, np.nan)
    return float(np.exp(-loss)), heldout, tau, rho, loss
