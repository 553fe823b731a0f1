"""The probe row of the bench: the paper probe's batched solver against the machine's floor.

- `probe_rate(floor_gflops)`: one synthetic cell per worker process (550 images, 256 units, the
  default 200 fits of 100 units), all workers at once, as the study runs them; seconds per
  cell, cells per second, the floating-point rate the solver executed and its share of the floor.

Example:
    row = probe_rate(300.0, workers=2)
    row["gflops"], row["floor_share"]      # e.g. 50.0, 0.17
"""

from __future__ import annotations

import time

import numpy as np

ROWS, TARGET_ROWS, UNITS, FITS, FIT_UNITS = 550, 50, 256, 200, 100


def synthetic_cell(seed: int, rows: int = ROWS, units: int = UNITS,
                   n_target: int = TARGET_ROWS) -> tuple[np.ndarray, np.ndarray]:
    """ReLU-like activations of one cell (float32, as a network's are) and its labels; the
    target rows are shifted up a little so that the probe has something to find (the cost
    depends on the shape and on how far the classes separate, which this makes like a real
    cell's).

    Example:
        X, y = synthetic_cell(0)     # (550, 256) float32, 50 ones then 500 zeros
    """
    rng = np.random.default_rng(seed)
    y = np.r_[np.ones(n_target, np.int64), np.zeros(rows - n_target, np.int64)]
    x = rng.standard_normal((rows, units)) + 0.25 * y[:, None]
    return (np.maximum(x, 0.0) * 3.0).astype(np.float32), y


def timed_cell(seed: int, fits: int = FITS) -> dict:
    """One cell's paper-probe fits (liblinear objective, sign-certified stop), one BLAS thread:
    seconds, floating-point operations, Newton Hessians per fit.

    Example:
        timed_cell(0)["seconds"]
    """
    from kerabl.hayne.logistic import single_threaded, solve_logistic

    X, y = synthetic_cell(seed)
    rng = np.random.default_rng(seed)
    sets = np.stack([np.sort(rng.choice(X.shape[1], FIT_UNITS, replace=False))
                     for _ in range(fits)])
    with single_threaded():
        start = time.perf_counter()
        fit = solve_logistic(y, columns=(X, sets), penalise_intercept=True, signs_only=True)
        seconds = time.perf_counter() - start
    return dict(seconds=seconds, flops=fit.flops, hessians_per_fit=fit.hessians / fits)


def probe_rate(floor_gflops: float, workers: int = 2, fits: int = FITS,
               repeats: int = 3) -> dict:
    """The probe row: `workers` processes each fitting one cell at the same time, `repeats`
    times (the median round is reported).

    Example:
        probe_rate(300.0)["cell_s"]

    Returns:
        {"rows", "units", "fits", "fit_units", "workers", "threads", "cell_s", "cells_per_s",
         "gflops", "floor_share", "hessians_per_fit"}.
    """
    import multiprocessing

    rounds = []
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        pool.map(timed_cell, range(workers), chunksize=1)           # imports, first touches
        for r in range(repeats):
            start = time.perf_counter()
            cells = pool.starmap(timed_cell, [(100 + r * workers + i, fits)
                                              for i in range(workers)], chunksize=1)
            rounds.append((time.perf_counter() - start, cells))
    wall, cells = sorted(rounds, key=lambda item: item[0])[len(rounds) // 2]
    gflops = sum(c["flops"] for c in cells) / wall / 1e9
    return dict(rows=ROWS, units=UNITS, fits=fits, fit_units=FIT_UNITS, workers=workers,
                threads=1, cell_s=float(np.median([c["seconds"] for c in cells])),
                cells_per_s=workers / wall, gflops=gflops, floor_share=gflops / floor_gflops,
                hessians_per_fit=float(np.mean([c["hessians_per_fit"] for c in cells])))


def probe_line(row: dict, floor_gflops: float) -> str:
    """The printed probe row.

    Example:
        print(probe_line(probe_rate(300.0), 300.0))
    """
    return (f"probes: {row['fits']} fits of {row['fit_units']} units x {row['rows']} images per "
            f"cell ({row['units']} units), {row['workers']} workers x {row['threads']} thread: "
            f"{row['cell_s']:.2f} s per cell, {row['cells_per_s']:.2f} cells/s, "
            f"{row['gflops']:.1f} GFLOP/s executed = {100 * row['floor_share']:.0f} % of the "
            f"{floor_gflops:.0f} GFLOP/s floor ({row['hessians_per_fit']:.1f} Hessians per fit)")
