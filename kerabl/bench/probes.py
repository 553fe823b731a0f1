"""The probe row of the bench: the paper probe's batched solver against the machine's floor.

- `probe_rate(floor_gflops, floor_now=...)`: one synthetic cell per worker process (550 images,
  256 units, the default 200 fits of 100 units), all workers at once, as the study runs them;
  seconds per cell, cells per second, the floating-point rate the solver executed and its share
  of the floor, taken again before each round. `probe_line(row)`: the printed row.

Example:
    row = probe_rate(300.0, workers=2, floor_now=matmul_rate)
    row["gflops"], row["floor_share"]      # e.g. 50.0, 0.30
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

ROWS, TARGET_ROWS, UNITS, FITS, FIT_UNITS = 550, 50, 256, 200, 100

# Seconds between taking the floor and a round: the matmul's BLAS and TensorFlow threads spin
# for a while after it; a round started at once shared the 2 cores with them (17 GFLOP/s
# against 27-29 with this pause or without the floor taken, measured alternately).
SETTLE_S = 1.0


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


def probe_rate(floor_gflops: float, workers: int = 2, fits: int = FITS, repeats: int = 3,
               floor_now: Callable[[], float] | None = None) -> dict:
    """The probe row: `workers` processes each fitting one cell at the same time, `repeats`
    rounds. With `floor_now` (`kerabl.bench.flops.matmul_rate`) the floor is taken again just
    before each round, and a round's share is its rate over that floor: a busy minute on a
    shared machine then slows both sides of the ratio. The median round is reported.

    Example:
        probe_rate(300.0, floor_now=matmul_rate)["floor_share"]

    Returns:
        {"rows", "units", "fits", "fit_units", "workers", "threads", "cell_s", "cells_per_s",
         "gflops", "floor_gflops" (the median round's floor), "floor_share", "round_shares",
         "hessians_per_fit"}.
    """
    import multiprocessing

    rounds = []
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        pool.map(timed_cell, range(workers), chunksize=1)           # imports, first touches
        for r in range(repeats):
            floor = floor_gflops
            if floor_now is not None:
                floor = floor_now()
                time.sleep(SETTLE_S)
            start = time.perf_counter()
            cells = pool.starmap(timed_cell, [(100 + r * workers + i, fits)
                                              for i in range(workers)], chunksize=1)
            wall = time.perf_counter() - start
            gflops = sum(c["flops"] for c in cells) / wall / 1e9
            rounds.append(dict(wall=wall, cells=cells, gflops=gflops, floor=floor,
                               share=gflops / floor))
    middle = sorted(rounds, key=lambda item: item["share"])[len(rounds) // 2]
    cells = middle["cells"]
    return dict(rows=ROWS, units=UNITS, fits=fits, fit_units=FIT_UNITS, workers=workers,
                threads=1, cell_s=float(np.median([c["seconds"] for c in cells])),
                cells_per_s=workers / middle["wall"], gflops=middle["gflops"],
                floor_gflops=middle["floor"], floor_share=middle["share"],
                round_shares=[item["share"] for item in rounds],
                hessians_per_fit=float(np.mean([c["hessians_per_fit"] for c in cells])))


def probe_line(row: dict) -> str:
    """The printed probe row.

    Example:
        print(probe_line(probe_rate(300.0, floor_now=matmul_rate)))
    """
    shares = ", ".join(f"{100 * share:.0f}" for share in row["round_shares"])
    return (f"probes: {row['fits']} fits of {row['fit_units']} units x {row['rows']} images per "
            f"cell ({row['units']} units), {row['workers']} workers x {row['threads']} thread: "
            f"{row['cell_s']:.2f} s per cell, {row['cells_per_s']:.2f} cells/s, "
            f"{row['gflops']:.1f} GFLOP/s executed = {100 * row['floor_share']:.0f} % of the "
            f"{row['floor_gflops']:.0f} GFLOP/s floor taken just before it (median of "
            f"{len(row['round_shares'])} rounds: {shares} %; {row['hessians_per_fit']:.1f} "
            "Hessians per fit)")
