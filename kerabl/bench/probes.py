"""The probe row of the bench: the paper probe's batched solver against the machine's floor.

- `probe_rate(floor_gflops, floor_now=...)`: synthetic cells (550 images, 256 units, the default
  200 fits of 100 units), 800 fits' worth back to back in each worker process, all workers at
  once, as the study runs them; seconds per cell, cells per second, the floating-point rate the
  solver executed and its share of the floor, taken again before each round.
  `probe_line(row)`: the printed row.

Example:
    row = probe_rate(300.0, workers=2, floor_now=matmul_rate)
    row["gflops"], row["floor_share"]      # e.g. 50.0, 0.30
"""

from __future__ import annotations

import time
from typing import Callable, Sequence

import numpy as np

ROWS, TARGET_ROWS, UNITS, FITS, FIT_UNITS = 550, 50, 256, 200, 100

# Seconds between taking the floor and a round: the matmul's BLAS and TensorFlow threads spin
# for a while after it; a round started at once shared the 2 cores with them (17 GFLOP/s
# against 27-29 with this pause or without the floor taken, measured alternately).
SETTLE_S = 1.0

# Fits each worker makes back to back in a round (4 cells of 200 fits, 16 of 50): one cell of 200
# fits is ~0.1 s here, short enough that a moment's load from elsewhere on a shared machine moved
# a round's share by a fifth.
FITS_PER_ROUND = 800

# Rounds of the bench's probe row, the median printed: single rounds of one run ranged from 18 to
# 48 % of their floors on this shared machine, the medians of 3 from 24 to 30 %.
PROBE_ROUNDS = 5


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


def timed_cells(seeds: Sequence[int], fits: int = FITS) -> dict:
    """Cells' paper-probe fits (liblinear objective, sign-certified stop), one BLAS thread, back
    to back: the cells and their fits' column sets are made first, so that the timed span is the
    solver's alone. Returns the span's start and end (`time.perf_counter`, which is the system's
    monotonic clock on Linux, so that spans of processes running at once can be joined), the
    floating-point operations and the Newton Hessians per fit.

    Example:
        span = timed_cells([0, 1])
        span["end"] - span["start"]      # the solver's seconds for two cells
    """
    from kerabl.hayne.logistic import single_threaded, solve_logistic

    cells = []
    for seed in seeds:
        X, y = synthetic_cell(seed)
        rng = np.random.default_rng(seed)
        cells.append((X, y, np.stack([np.sort(rng.choice(X.shape[1], FIT_UNITS, replace=False))
                                      for _ in range(fits)])))
    flops, hessians = 0.0, 0
    with single_threaded():
        start = time.perf_counter()
        for X, y, sets in cells:
            fit = solve_logistic(y, columns=(X, sets), penalise_intercept=True, signs_only=True)
            flops += fit.flops
            hessians += fit.hessians
        end = time.perf_counter()
    return dict(start=start, end=end, cells=len(cells), flops=flops,
                hessians_per_fit=hessians / (fits * len(cells)))


def probe_rate(floor_gflops: float, workers: int = 2, fits: int = FITS, repeats: int = 3,
               floor_now: Callable[[], float] | None = None,
               cells: int | None = None) -> dict:
    """The probe row: `workers` processes each fitting `cells` cells (default: FITS_PER_ROUND
    fits' worth) back to back at the same time, `repeats` rounds. A round's time is the span
    from the first worker's start to the last one's end (what the workers did outside their
    timed span, making the cells and passing results, is not the solver's). With `floor_now`
    (`kerabl.bench.flops.matmul_rate`) the floor is taken again just before each round, and a
    round's share is its rate over that floor: a busy minute on a shared machine then slows both
    sides of the ratio. The median round is reported.

    Example:
        probe_rate(300.0, floor_now=matmul_rate)["floor_share"]

    Returns:
        {"rows", "units", "fits", "fit_units", "workers", "threads", "cells" (per worker and
         round), "cell_s", "cells_per_s", "gflops", "floor_gflops" (the median round's floor),
         "floor_share", "round_shares", "hessians_per_fit"}.
    """
    import multiprocessing

    cells = cells or max(1, -(-FITS_PER_ROUND // fits))
    rounds = []
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        pool.starmap(timed_cells, [([i], fits) for i in range(workers)], chunksize=1)  # imports
        for r in range(repeats):
            floor = floor_gflops
            if floor_now is not None:
                floor = floor_now()
                time.sleep(SETTLE_S)
            first = 100 + r * workers * cells
            spans = pool.starmap(timed_cells, [(range(first + i * cells, first + (i + 1) * cells),
                                                fits) for i in range(workers)], chunksize=1)
            wall = max(span["end"] for span in spans) - min(span["start"] for span in spans)
            gflops = sum(span["flops"] for span in spans) / wall / 1e9
            rounds.append(dict(wall=wall, spans=spans, gflops=gflops, floor=floor,
                               share=gflops / floor))
    middle = sorted(rounds, key=lambda item: item["share"])[len(rounds) // 2]
    spans = middle["spans"]
    return dict(rows=ROWS, units=UNITS, fits=fits, fit_units=FIT_UNITS, workers=workers,
                threads=1, cells=cells,
                cell_s=float(np.median([(span["end"] - span["start"]) / span["cells"]
                                        for span in spans])),
                cells_per_s=workers * cells / middle["wall"], gflops=middle["gflops"],
                floor_gflops=middle["floor"], floor_share=middle["share"],
                round_shares=[item["share"] for item in rounds],
                hessians_per_fit=float(np.mean([span["hessians_per_fit"] for span in spans])))


def probe_line(row: dict) -> str:
    """The printed probe row.

    Example:
        print(probe_line(probe_rate(300.0, floor_now=matmul_rate)))
    """
    shares = ", ".join(f"{100 * share:.0f}" for share in row["round_shares"])
    return (f"probes: {row['fits']} fits of {row['fit_units']} units x {row['rows']} images per "
            f"cell ({row['units']} units), {row['workers']} workers x {row['threads']} thread x "
            f"{row['cells']} cells: "
            f"{row['cell_s']:.2f} s per cell, {row['cells_per_s']:.2f} cells/s, "
            f"{row['gflops']:.1f} GFLOP/s executed = {100 * row['floor_share']:.0f} % of the "
            f"{row['floor_gflops']:.0f} GFLOP/s floor taken just before it (median of "
            f"{len(row['round_shares'])} rounds: {shares} %; {row['hessians_per_fit']:.1f} "
            "Hessians per fit)")
