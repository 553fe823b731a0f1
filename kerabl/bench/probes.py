"""The probe row of the bench: the paper probe's batched solver against the machine's floor.

- `probe_rate(floor_gflops, floor_now=...)`: synthetic cells (550 images, 256 units, the default
  200 fits of 100 units), 800 fits' worth back to back in each worker process, all workers at
  once, as the study runs them; seconds per cell, cells per second, the floating-point rate the
  solver executed and its share of the floor, taken again before each round; beside it the
  work of plain Newton on the same fits (a Hessian formed and factored at every step; counted by
  `plain_cells` after every worker's timed span, not timed) over the solver's time: the rate a solver doing the textbook
  method's work would need to finish in the same time.
  `probe_line(row)`: the printed row.

Example:
    row = probe_rate(300.0, workers=2, floor_now=matmul_rate)
    row["gflops"], row["floor_share"]      # e.g. 37.1, 0.12: what the solver executed
    row["plain_share"]                     # e.g. 0.37: plain Newton's work in the same time
"""

from __future__ import annotations

import time
from typing import Callable, Sequence

import numpy as np

from kerabl.hayne.logistic import single_threaded, solve_logistic


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


def _cells(seeds: Sequence[int], fits: int) -> list:
    """(X, y, column sets) of each seed's synthetic cell and its fits."""
    cells = []
    for seed in seeds:
        X, y = synthetic_cell(seed)
        rng = np.random.default_rng(seed)
        cells.append((X, y, np.stack([np.sort(rng.choice(X.shape[1], FIT_UNITS, replace=False))
                                      for _ in range(fits)])))
    return cells


def timed_cells(seeds: Sequence[int], fits: int = FITS) -> dict:
    """Cells' paper-probe fits (liblinear objective, sign-certified stop), one BLAS thread, back
    to back: the cells and their fits' column sets are made first, so that the timed span is the
    solver's alone. Returns the span's start and end (`time.perf_counter`, which is the system's
    monotonic clock on Linux, so that spans of processes running at once can be joined), the
    floating-point operations, the Newton Hessians per fit and each cell's hard predictions
    (`signs`, for `plain_cells`).

    Example:
        span = timed_cells([0, 1])
        span["end"] - span["start"]      # the solver's seconds for two cells
    """
    cells = _cells(seeds, fits)
    fits_made = []
    with single_threaded():
        start = time.perf_counter()
        for X, y, sets in cells:
            fits_made.append(solve_logistic(y, columns=(X, sets), penalise_intercept=True,
                                            signs_only=True))
        end = time.perf_counter()
    return dict(start=start, end=end, cells=len(cells),
                flops=sum(fit.flops for fit in fits_made),
                hessians_per_fit=sum(fit.hessians for fit in fits_made) / (fits * len(cells)),
                signs=[fit.margins > 0 for fit in fits_made])


def plain_cells(seeds: Sequence[int], fits: int, signs: Sequence[np.ndarray]) -> dict:
    """The same cells' fits by plain Newton (`solve_logistic(..., plain_newton=True)`), untimed:
    its operations (`plain_flops`), Hessians per fit, and whether its hard predictions equal
    `signs` (the solver's, from `timed_cells`) on every row of every fit (`plain_same`).

    Example:
        span = timed_cells([0, 1], fits=3)
        plain_cells([0, 1], 3, span["signs"])["plain_flops"]
    """
    with single_threaded():
        plain = [solve_logistic(y, columns=(X, sets), penalise_intercept=True, signs_only=True,
                                plain_newton=True) for X, y, sets in _cells(seeds, fits)]
    return dict(plain_flops=sum(fit.flops for fit in plain),
                plain_hessians_per_fit=sum(fit.hessians for fit in plain) / (fits * len(plain)),
                plain_same=all(np.array_equal(fit.margins > 0, ref)
                               for fit, ref in zip(plain, signs)))


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
         "floor_share", "round_shares", "hessians_per_fit", "plain_gflops" and "plain_share"
         (plain Newton's operations on the median round's fits over its time and floor),
         "plain_hessians_per_fit", "plain_same" (its predictions equal the solver's in every
         round)}.
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
            seeds = [range(first + i * cells, first + (i + 1) * cells) for i in range(workers)]
            spans = pool.starmap(timed_cells, [(part, fits) for part in seeds], chunksize=1)
            # plain Newton's count once every timed span has ended, so that none shares the
            # machine with it
            jobs = [(part, fits, span.pop("signs")) for part, span in zip(seeds, spans)]
            for span, plain in zip(spans, pool.starmap(plain_cells, jobs, chunksize=1)):
                span.update(plain)
            wall = max(span["end"] for span in spans) - min(span["start"] for span in spans)
            gflops = sum(span["flops"] for span in spans) / wall / 1e9
            plain = sum(span["plain_flops"] for span in spans) / wall / 1e9
            rounds.append(dict(wall=wall, spans=spans, gflops=gflops, floor=floor,
                               share=gflops / floor, plain_gflops=plain, plain_share=plain / floor))
    middle = sorted(rounds, key=lambda item: item["share"])[len(rounds) // 2]
    spans = middle["spans"]
    return dict(rows=ROWS, units=UNITS, fits=fits, fit_units=FIT_UNITS, workers=workers,
                threads=1, cells=cells,
                cell_s=float(np.median([(span["end"] - span["start"]) / span["cells"]
                                        for span in spans])),
                cells_per_s=workers * cells / middle["wall"], gflops=middle["gflops"],
                floor_gflops=middle["floor"], floor_share=middle["share"],
                round_shares=[item["share"] for item in rounds],
                hessians_per_fit=float(np.mean([span["hessians_per_fit"] for span in spans])),
                plain_gflops=middle["plain_gflops"], plain_share=middle["plain_share"],
                plain_hessians_per_fit=float(np.mean([span["plain_hessians_per_fit"]
                                                      for span in spans])),
                plain_same=all(span["plain_same"] for item in rounds for span in item["spans"]))


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
            f"Hessians per fit); plain Newton's work on the same fits "
            f"({row['plain_hessians_per_fit']:.1f} Hessians per fit, predictions "
            f"{'the same' if row['plain_same'] else 'DIFFERENT'}) in this time: "
            f"{row['plain_gflops']:.1f} GFLOP/s = {100 * row['plain_share']:.0f} % of the floor")
