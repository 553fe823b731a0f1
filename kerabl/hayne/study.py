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

import collections
import contextlib
import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from kerabl.contents import contents_digest, image_files
from kerabl.errors import KerablError
from kerabl.hayne.baseline import log_baseline
from kerabl.progress import progress_bar
from kerabl.validate import check_grid_fits, check_live_outputs, check_precision, check_study_images

UNITS = ("element", "channel")
ENGINE_NAMES = ("fast", "paper")
CONTROLS = ("none", "permuted-labels")


@dataclass(frozen=True)
class HConfig:
    """Protocol options of the H study; defaults are the authors' choices except where theirs
    is a bug (the README's deviation table lists each difference).

    Example:
        HConfig(grid=(4, 4), others="all", probe_fits=50)
        HConfig.authors("alexnet")       # alexnet_ablation.py exactly, bugs included
    """

    grid: tuple[int, int] = (4, 4)
    unit: str = "element"
    others: str = "random-10"
    seed: int = 0
    clip: bool = True
    legacy_bounds: bool = False
    probe_fits: int = 200
    probe_max_units: int = 100
    heldout_folds: int = 5
    srs: bool = True
    engine: str = "fast"
    probe_solver: str = "batched"
    control: str = "none"
    probe_objective: str = "liblinear"
    srs_matrix: str = "upper"
    precision: str = "float32"

    @classmethod
    def authors(cls, network: str = "alexnet", **changes) -> "HConfig":
        """Every choice of the authors' code: `alexnet_ablation.py` (used for every network but
        MobileNetV2), or for "mobilenet_v2" `mobilenet_paper_results.py` (every other image as
        "other", the lbfgs probe). Their grid bounds, full-matrix srs, liblinear probe, random-10
        others; `changes` override single fields.

        Example:
            HConfig.authors("mobilenet_v2").others    # "all"
        """
        choices = dict(legacy_bounds=True, srs_matrix="full", probe_objective="liblinear",
                       others="random-10", grid=(4, 4), unit="element", clip=True,
                       probe_fits=200, probe_max_units=100)
        if network == "mobilenet_v2":
            choices.update(others="all", probe_objective="lbfgs")
        return cls(**{**choices, **changes})

    def __post_init__(self):
        if self.unit not in UNITS:
            raise KerablError(f"unknown unit kind {self.unit!r}: use one of {', '.join(UNITS)}")
        if self.engine not in ENGINE_NAMES:
            raise KerablError(f"unknown engine {self.engine!r}: use fast or paper")
        if self.probe_solver not in ("batched", "sklearn"):
            raise KerablError(f"unknown probe solver {self.probe_solver!r}: use batched or sklearn")
        if self.control not in CONTROLS:
            raise KerablError(f"unknown control {self.control!r}: use none or permuted-labels")
        if self.probe_objective not in ("liblinear", "lbfgs"):
            raise KerablError(f"unknown probe objective {self.probe_objective!r}: "
                              "use liblinear or lbfgs")
        if self.srs_matrix not in ("upper", "full"):
            raise KerablError(f"unknown srs matrix {self.srs_matrix!r}: use upper or full")
        check_precision(self.precision, self.engine)
        if len(self.grid) != 2 or min(self.grid) < 1:
            raise KerablError(f"grid must be two positive integers, got {self.grid}")

    def as_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v
                for k, v in dataclasses.asdict(self).items()}


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
                workers: int | None = None, log: Callable[[str], None] = print) -> Path | None:
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
            in this process. Results do not depend on it.

    Returns:
        The finished results file, or None for a shard whose file is written but not renamed
        because it does not cover every pair (it is renamed when its own pairs are done).
    """
    from kerabl.activations import record_activations
    from kerabl.hayne.results import HResultsWriter

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    layers = target_layers(network, layers)
    cache_path = Path(cache_path or out_dir / "activations.h5")
    preprocess = network.preprocess
    studied = imageset   # the true labels: the baseline is the network's own accuracy
    if config.control == "permuted-labels":
        from kerabl.hayne.controls import permuted_labels
        imageset = permuted_labels(imageset, config.seed)
        log(f"control: class labels permuted among the images (seed {config.seed}); "
            "every class is a random set of images")

    check_study_images(imageset)
    check_live_outputs(network, imageset)
    files, note = image_files(imageset, cache_path)
    writer_args = _writer_args(network, imageset, layers, config)
    writer_args["config"]["contents"] = contents_digest(files)
    check_grid_fits(tuple(config.grid), dict(zip(layers, writer_args["n_units"])))
    writer = HResultsWriter(out_dir / results_name(shard), shard=shard, log=log,
                            contents_note=note, **writer_args)
    if writer.complete:
        log(f"results are complete, nothing to compute: {out_dir / results_name(shard)}")
        return out_dir / results_name(shard)
    log_baseline(network, studied, log)
    cache = record_activations(network, imageset, layers, cache_path, unit=config.unit,
                               preprocess=preprocess, progress=progress, files=files, log=log)
    todo = [(ci, li) for ci, li in writer.pairs() if not writer.is_done(ci, li)]
    sweep = _Sweep(network, imageset, layers, config, cache, log)
    sweep.workers = worker_count(workers)
    bar = progress_bar("H study: class x layer", len(todo), enabled=progress)
    with probe_pool(sweep.workers) as sweep.pool, sweep, bar as advance:
        for ci in sorted({ci for ci, _ in todo}):
            state = sweep.start_class(ci)
            writer.write_class(ci, image_rows=state["target_rows"],
                               rank_before=state["rank_before"], others=state["others"])
            for li in [li for c, li in todo if c == ci]:
                writer.write_pair(ci, li, **sweep.pair(state, li))
                advance(1)
    return writer.finish()


def target_layers(network, layers: Sequence[str] | None) -> list[str]:
    """`layers` (default: the network's targets), each checked to be a layer of the model.

    Example:
        target_layers(load_network("demo"), None)   # ["conv_1", ..., "dense_2"]
        target_layers(net, ["conv_9"])   # KerablError: unknown layer 'conv_9' for model demo
    """
    layers = list(layers or network.targets)
    unknown = [name for name in layers if name not in {l.name for l in network.model.layers}]
    if unknown:
        raise KerablError(f"unknown layer {unknown[0]!r} for model {network.name}: "
                          f"choose from {', '.join(network.targets)}")
    return layers


def _writer_args(network, imageset, layers, config: HConfig) -> dict:
    from kerabl.hayne.grid import others_count
    from kerabl.masks import n_units

    counts = [len(imageset.rows_of(c)) for c in imageset.classes]
    n_others = len(imageset.classes) - 1
    if others_count(config.others) is not None:
        n_others = min(n_others, others_count(config.others))
    run_config = {
        "study": "H", "model": network.name, "weights_id": network.weights_id,
        "dataset": imageset.name, "preprocess": network.preprocess, "layers": list(layers),
        "classes": list(imageset.class_names), **config.as_dict()}
    return dict(config=run_config, classes=list(imageset.class_names),
                class_index=np.asarray(imageset.classes, dtype=np.int64), layers=list(layers),
                n_units=[n_units(network.model, name, config.unit) for name in layers],
                grid_shape=tuple(config.grid), max_images=max(counts), max_others=n_others)


class _Sweep:
    """Per-class state and per-pair computation of the H sweep (one engine per layer, reused)."""

    def __init__(self, network, imageset, layers, config: HConfig, cache,
                 log: Callable[[str], None] = print):
        from kerabl.hayne.ablation import ENGINES

        self.network, self.imageset, self.layers, self.config = network, imageset, layers, config
        self.cache = cache
        self.log = log
        self._engine = ENGINES[config.engine]
        self._ablators: dict[str, object] = {}
        self.pool = None
        self.workers = 1
        self._block = None
        self._no_room = False

    def _ablator(self, layer):
        if layer not in self._ablators:
            extra = {} if self.config.engine == "paper" else {"precision": self.config.precision}
            self._ablators[layer] = self._engine(self.network.model, layer, **extra)
        return self._ablators[layer]

    def start_class(self, ci: int, forward: bool = True) -> dict:
        """Class `ci`'s image rows and other classes; with `forward`, its images and ranks."""
        from kerabl.engine import predict_batched
        from kerabl.hayne.ablation import true_class_rank
        from kerabl.hayne.grid import choose_others

        imageset, net = self.imageset, self.network
        n_classes = len(imageset.classes)
        target_rows = imageset.rows_of(imageset.classes[ci])
        others = choose_others(n_classes, ci, self.config.others, self.config.seed)
        other_rows = np.concatenate([imageset.rows_of(imageset.classes[o]) for o in others])
        if not forward:
            return dict(ci=ci, target_rows=target_rows, other_rows=other_rows, others=others)
        images = imageset.load(net.input_size, net.preprocess, rows=target_rows)
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
        from kerabl.hayne.shared import SharedBlock

        nbytes = shape[0] * shape[1] * 4
        if self.pool is None or self._no_room:
            return None
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

    def __enter__(self) -> "_Sweep":
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
        from kerabl.hayne.grid import coordinates, equal_count_grid

        n_target = len(state["target_rows"])
        selectivity, magnitude = coordinates(acts[:n_target].mean(0, dtype=np.float64),
                                             acts[n_target:].mean(0, dtype=np.float64))
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
        from kerabl.hayne.ablation import baseline_and_ablated_ranks, mean_rank_deficit
        from kerabl.masks import cell_masks

        layer = self.layers[li]
        ablator = self._ablator(layer)
        if self._can_use_cache(ablator, layer):
            # a copy: the engine keeps its input, and `acts` may be a shared block's view
            ablator.set_activations(acts[:len(state["target_rows"])].copy())
        else:
            ablator.set_images(state["images"])
        masks = cell_masks(ablator.shape, grid.cells, self.config.unit)
        rank_baseline, rank_after = baseline_and_ablated_ranks(ablator, masks, state["labels"])
        deficit = mean_rank_deficit(rank_baseline, rank_after, clip=self.config.clip)
        return dict(rank_after=rank_after, rank_baseline=rank_baseline, deficit=deficit)

    def _can_use_cache(self, ablator, layer) -> bool:
        """Cached activations feed the tail only when they are the exact layer output."""
        from kerabl.graph import is_cut_point

        return (self.config.engine == "fast" and self.config.unit == "element"
                and np.dtype(self.cache.attrs.get("dtype", "float32")) == np.float32
                and is_cut_point(self.network.model, layer))

    def _probe_scores(self, acts, n_target, cells, ci, li, block=None) -> dict:
        config = self.config
        y = np.r_[np.ones(n_target, dtype=np.int64), np.zeros(len(acts) - n_target, dtype=np.int64)]
        tasks = ((acts[:, units] if block is None else block.columns(acts.shape, units), y,
                  config, cell_seed(config.seed, ci, li, k)) for k, units in enumerate(cells))
        scores = list(bounded_map(self.pool, cell_probe_scores, tasks, 2 * self.workers))
        return {name: np.array([row[j] for row in scores], dtype=np.float64)
                for j, name in enumerate(PROBE_FIELDS)}


def bounded_map(pool, fn, tasks, in_flight: int = 4):
    """`map(fn, tasks)` in order, on `pool` when given, with at most `in_flight` tasks built and
    sent at once, so the cells of a large layer are never all copied together.

    Example:
        with probe_pool(4) as pool:
            scores = list(bounded_map(pool, cell_probe_scores, tasks, in_flight=8))
    """
    if pool is None:
        yield from map(fn, tasks)
        return
    pending: collections.deque = collections.deque()
    for task in tasks:
        pending.append(pool.submit(fn, task))
        if len(pending) >= in_flight:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


PROBE_FIELDS = ("probe", "probe_heldout", "srs_tau", "srs_rho", "probe_loss")


def cell_probe_scores(task) -> tuple[float, float, float, float, float]:
    """Probe scores of one cell: paper metric, held-out metric, Kendall tau, Spearman rho and
    the paper metric's mean loss (paper metric = exp(-loss)).

    Example:
        probe, heldout, tau, rho, loss = cell_probe_scores(task)   # one cell's probe task

    Runs in a worker process when the sweep has a pool: it imports no TensorFlow.
    """
    from kerabl.hayne.logistic import single_threaded

    with single_threaded():
        return _cell_probe_scores(*task)


def pair_fold_probe(task) -> tuple[np.ndarray, np.ndarray]:
    """The leak-free held-out probe of one class x layer pair (`kerabl.hayne.heldout`): mean and
    standard deviation over folds per cell, BLAS on one thread. Runs in a worker process when
    the sweep has a pool (it imports no TensorFlow).

    Example:
        mean, sd = pair_fold_probe((acts, n_target, HConfig(), cell_seed(0, ci, li, 2 ** 31 - 1)))
    """
    from kerabl.hayne.heldout import fold_probe_summary
    from kerabl.hayne.logistic import single_threaded
    from kerabl.hayne.shared import resolve

    acts, n_target, config, seed = task
    with single_threaded():
        return resolve(acts, lambda a: fold_probe_summary(
            a, n_target, grid_shape=tuple(config.grid), legacy_bounds=config.legacy_bounds,
            folds=config.heldout_folds, max_units=config.probe_max_units, seed=seed))


def _cell_probe_scores(x, y, config: HConfig,
                       seed: int) -> tuple[float, float, float, float, float]:
    from kerabl.hayne.probes import heldout_probe_score, paper_probe_loss, rsa_scores
    from kerabl.hayne.shared import resolve

    x = resolve(x)      # a shared block's columns, copied here in the worker
    if x.shape[1] == 0:
        return (np.nan,) * 5
    loss = paper_probe_loss(x, y, n_fits=config.probe_fits, max_units=config.probe_max_units,
                            seed=seed, solver=config.probe_solver,
                            objective=config.probe_objective)
    heldout = heldout_probe_score(x, y, folds=config.heldout_folds,
                                  max_units=config.probe_max_units, seed=seed,
                                  solver=config.probe_solver)
    tau, rho = rsa_scores(x, y, config.srs_matrix) if config.srs else (np.nan, np.nan)
    return float(np.exp(-loss)), heldout, tau, rho, loss


def worker_count(workers: int | None) -> int:
    """The probe workers to run: `workers` as given, else one per CPU core.

    Example:
        worker_count(None)     # os.cpu_count() (1 where it is unknown)
    """
    return workers or os.cpu_count() or 1


def probe_pool(workers: int):
    """Worker processes for the probes (`worker_pool`); None (no processes) for workers <= 1.

    Example:
        with probe_pool(4) as pool:       # None (no processes) for workers <= 1
            results = list(bounded_map(pool, cell_probe_scores, tasks))
    """
    return contextlib.nullcontext(None) if workers <= 1 else worker_pool(workers)


def worker_pool(workers: int):
    """A pool of `workers` spawned processes (they import only what their tasks import: the
    probes numpy and scikit-learn, the figures matplotlib).

    Example:
        with worker_pool(1) as pool:      # one process beside this one
            future = pool.submit(fn, task)

    Each worker ignores Ctrl-C (its parent stops the run) and exits within a second of its
    parent's end, whatever ended it (`kill -9` included); when the block ends by an exception
    the pending tasks are cancelled and the workers stopped at once.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    return _stopping(ProcessPoolExecutor(max_workers=workers,
                                         mp_context=multiprocessing.get_context("spawn"),
                                         initializer=_worker_start, initargs=(os.getpid(),)))


@contextlib.contextmanager
def _stopping(pool):
    try:
        yield pool
    except BaseException:
        processes = list((getattr(pool, "_processes", None) or {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            process.terminate()
        for process in processes:
            process.join(5)
        raise
    pool.shutdown(wait=True)


def _worker_start(parent: int) -> None:
    """In a worker: ignore SIGINT, and exit when the parent process is gone."""
    import signal
    import threading
    import time

    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def watch():
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="kerabl-parent-watch").start()
