"""The H study stage by stage: `grid` -> `probe` -> `ablate`, each from what the one before stored.

- `run_h_stage(stage, network, imageset, out_dir, ...)`: one stage for every class x layer pair.
  `grid` stores unit coordinates and cells from the activation cache (recording it if absent)
  in `out_dir/h_stages.h5`; `probe` stores the probe scores of the stored cells there; `ablate`
  computes the rank deficits of the stored cells and writes `out_dir/h_results.h5`, the same
  file `run_h_study` writes with the same options. Each stage resumes, skips stored pairs, and
  refuses a stage file written with other options, naming them.

Example:
    for stage in STAGES:
        path = run_h_stage(stage, net, digits_imageset(), "out", config=HConfig(probe_fits=20))
    # path == Path("out/h_results.h5")
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Sequence

import h5py
import numpy as np

from kerabl.errors import KerablError
from kerabl.hayne.baseline import log_baseline
from kerabl.hayne.grid import Grid
from kerabl.hayne.results import HResultsWriter
from kerabl.hayne.study import (HConfig, Sweep, check_cache_room, pool_note, probe_pool,
                                results_name, study_activations, sweep_writer_args,
                                target_layers, worker_count)
from kerabl.nested import flat_network
from kerabl.progress import progress_bar
from kerabl.space import check_room
from kerabl.store import config_differences, open_h5

STAGES = ("grid", "probe", "ablate")
STAGE_FILE = "h_stages.h5"
KIND = "kerabl.h-stages"
_GRID_ARRAYS = ("selectivity", "magnitude", "membership", "sel_edges", "mag_edges", "cell_units",
                "cell_sizes")


class StageFile:
    """The stored grids and probe scores of a stage-by-stage run (`out_dir/h_stages.h5`).

    Example:
        stages = StageFile("out/h_stages.h5", run)   # run: the results file's config + layout
        stages.has(0, 2, "grid")
        grid = stages.grid(0, 2)["grid"]
    """

    def __init__(self, path: Path, run: dict, create: bool):
        self.path = Path(path)
        if not self.path.exists():
            if not create:
                raise KerablError(f"no stage file {self.path}: run `kerabl grid` with these "
                                  "options first")
            with h5py.File(self.path, "w") as f:
                f.attrs.update(kind=KIND, run=json.dumps(run))
            return
        try:
            with h5py.File(self.path, "r") as f:
                kind, stored = f.attrs.get("kind"), json.loads(f.attrs.get("run", "{}"))
        except OSError:
            raise KerablError(f"{self.path} is not readable HDF5: delete it and rerun "
                              "`kerabl grid`") from None
        if kind != KIND:
            raise KerablError(f"{self.path} is not a kerabl stage file: delete it or use "
                              "another --out")
        differences = config_differences(stored, json.loads(json.dumps(run)))
        if differences:
            raise KerablError(f"{self.path} was written with other options "
                              f"({'; '.join(differences)}): pass the options of `kerabl grid`, "
                              "or delete the file to start again")

    def has(self, ci: int, li: int, stage: str) -> bool:
        name = f"{stage}/{ci}_{li}"
        with open_h5(self.path) as f:
            return name in f and bool(f[name].attrs.get("done", False))

    def _write(self, stage: str, ci: int, li: int, arrays: dict) -> None:
        with open_h5(self.path, "a") as f:
            name = f"{stage}/{ci}_{li}"
            if name in f:
                del f[name]  # a group left without its flag by an interrupted write
            g = f.create_group(name)
            for key, value in arrays.items():
                g.create_dataset(key, data=value, compression="gzip" if np.size(value) > 1024
                                 else None)
            g.attrs["done"] = True

    def _read(self, stage: str, ci: int, li: int) -> dict:
        with open_h5(self.path) as f:
            return {key: ds[()] for key, ds in f[f"{stage}/{ci}_{li}"].items()}

    def write_grid(self, ci: int, li: int, found: dict) -> None:
        grid = found["grid"]
        self._write("grid", ci, li, dict(
            selectivity=found["selectivity"], magnitude=found["magnitude"],
            membership=grid.membership, sel_edges=grid.sel_edges, mag_edges=grid.mag_edges,
            cell_units=np.concatenate(grid.cells) if grid.cells else np.zeros(0, np.int64),
            cell_sizes=np.array([c.size for c in grid.cells], dtype=np.int64)))

    def grid(self, ci: int, li: int) -> dict:
        a = self._read("grid", ci, li)
        cells = np.split(a["cell_units"].astype(np.int64), np.cumsum(a["cell_sizes"])[:-1])
        shape = (a["mag_edges"].shape[0], a["mag_edges"].shape[1] - 1)
        grid = Grid(shape=shape, membership=a["membership"], sel_edges=a["sel_edges"],
                    mag_edges=a["mag_edges"], cells=list(cells))
        return dict(selectivity=a["selectivity"], magnitude=a["magnitude"], grid=grid)

    def write_probes(self, ci: int, li: int, scores: dict) -> None:
        self._write("probe", ci, li, dict(scores))   # every field of `Sweep.probes`

    def probes(self, ci: int, li: int) -> dict:
        return self._read("probe", ci, li)


def run_h_stage(stage: str, network, imageset, out_dir, *, layers: Sequence[str] | None = None,
                config: HConfig = HConfig(), cache_path=None, progress: bool = True,
                workers: int | None = None, log: Callable[[str], None] = print,
                cache: str = "file") -> Path:
    """Run one stage of the H study for every class x layer pair; return the file it wrote.

    Example:
        run_h_stage("grid", net, images, "out")     # out/h_stages.h5
        run_h_stage("probe", net, images, "out")    # out/h_stages.h5
        run_h_stage("ablate", net, images, "out")   # out/h_results.h5

    Args:
        stage: "grid", "probe" or "ablate" (`STAGES`), run in that order.
        network, imageset, layers, config, cache_path, workers, cache: as `run_h_study`, the
            same for every stage.

    Raises:
        KerablError: an unknown stage, a stage whose inputs are not stored yet, or a stage file
            written with other options.
    """
    if stage not in STAGES:
        raise KerablError(f"unknown stage {stage!r}: use one of {', '.join(STAGES)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    network = flat_network(network)   # a model calling other models: one graph
    layers = target_layers(network, layers)
    args = sweep_writer_args(network, imageset, layers, config)
    cache_path = cache_path or out_dir / "activations.h5"
    check_cache_room(network, imageset, layers, config, cache_path, cache)
    run = {**args["config"], "n_units": args["n_units"]}
    stages = StageFile(out_dir / STAGE_FILE, run, create=stage == "grid")
    pairs = [(ci, li) for ci in range(len(imageset.classes)) for li in range(len(layers))]
    if stage == "ablate":
        writer = HResultsWriter(out_dir / results_name(None), **args)
        if writer.complete:
            log(f"results are complete, nothing to compute: {writer.path}")
            return writer.path
        todo = [p for p in pairs if not writer.is_done(*p)]
    else:
        todo = [p for p in pairs if not stages.has(*p, stage)]
    needed = {"probe": "grid", "ablate": "probe"}.get(stage)
    missing = [p for p in todo if needed and not stages.has(*p, needed)]
    if missing:
        ci, li = missing[0]
        raise KerablError(f"{len(missing)} pairs have no stored {needed} (first: class "
                          f"{imageset.class_names[ci]}, layer {layers[li]}): run `kerabl "
                          f"{needed}` with these options first")
    log_baseline(network, imageset, log)
    acts = study_activations(network, imageset, layers, config, cache_path, cache, progress, log)
    sweep = Sweep(network, imageset, layers, config, acts, log)
    sweep.workers = worker_count(workers) if stage == "probe" else 1
    bar = progress_bar(f"H {stage}: class x layer", len(pairs), enabled=progress,
                       done=len(pairs) - len(todo), every=0)
    if note := pool_note(sweep.workers):
        log(note)
    with probe_pool(sweep.workers) as sweep.pool, sweep, bar as advance:
        for ci in sorted({ci for ci, _ in todo}):
            state = sweep.start_class(ci, forward=stage == "ablate")
            if stage == "ablate":
                writer.write_class(ci, image_rows=state["target_rows"],
                                   rank_before=state["rank_before"], others=state["others"])
            for li in [li for c, li in todo if c == ci]:
                check_room(stages.path)        # a pair's arrays: kB, in the margin
                _run_pair(stage, sweep, stages, state, li, writer if stage == "ablate" else None)
                advance(1)
    return writer.finish() if stage == "ablate" else stages.path


def _run_pair(stage: str, sweep: Sweep, stages: StageFile, state: dict, li: int, writer) -> None:
    ci = state["ci"]
    if stage == "grid":
        stages.write_grid(ci, li, sweep.grid(state, sweep.activations(state, li)))
        return
    found = stages.grid(ci, li)
    if stage == "probe":
        stages.write_probes(ci, li, sweep.with_activations(
            state, li, lambda acts, block: sweep.probes(state, li, acts, found["grid"], block)))
        return
    acts = sweep.activations(state, li)
    found.update(stages.probes(ci, li))
    found.update(sweep.ablate(state, li, acts, found["grid"]))
    writer.write_pair(ci, li, **found)
