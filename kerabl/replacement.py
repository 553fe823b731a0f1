"""How a removed unit is removed: the value it takes, for every engine of both studies.

- `METHODS`: "zero" (both papers: the unit is set to 0), "mean" (its mean activation over the
  study's images) and "resample" (its value in another image of the study's set).
- `Replacement`: what the removed units of a layer take, as "keep mask + replacement values":
  an engine computes `keep * a + (1 - keep) * fill` where `fill` is 0, the layer's mean output
  (`mean`, one array of the layer's output shape) or, per mask and image, a donor image's
  output (`bank[donors[mask, image]]`). `apply(acts, keep)` is that formula in numpy.
- `mean_output(batches)`: the mean of a layer's output over batches of images (float64 sums).
- `draw_donors(pool, n, seed, *keys)`: the resample draw of one (class, layer, cell): `n` donor
  rows from `pool` (the study's images outside the target class), seeded by `method_seed`.

No TensorFlow here: the engines (`kerabl.engine`), the paper engine's Lambda
(`kerabl.masks.lambda_masked_model`) and the torch port (`kerabl.crosscheck`) all take a
`Replacement` or its arrays.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np

from kerabl.errors import KerablError

METHODS = ("zero", "mean", "resample")

# The last key of the resample draw's seed, so that it never equals a probe fit's seed.
RESAMPLE_KEY = 0x5E5A


def check_method(method: str) -> str:
    """`method` when it is one of `METHODS`, else a one-line error naming them.

    Example:
        check_method("mean")     # "mean"
        check_method("noise")    # KerablError: unknown ablation 'noise': use zero, mean or resample
    """
    if method == "all":      # `kerabl reproduce --ablation all` runs each of the three
        raise KerablError("--ablation all runs the three methods in `kerabl reproduce` only: "
                          "pass zero, mean or resample")
    if method not in METHODS:
        raise KerablError(f"unknown ablation {method!r}: use zero, mean or resample")
    return method


def method_seed(seed: int, *keys: int) -> int:
    """The seed of one resample draw (e.g. keys = class, layer, cell), independent of run order.

    Example:
        method_seed(0, 1, 2, 3)   # the draw of class 1, layer 2, cell 3 of a run with seed 0
    """
    return int(np.random.SeedSequence([int(seed), *map(int, keys), RESAMPLE_KEY])
               .generate_state(1)[0])


def draw_donors(pool, n: int, seed: int, *keys: int) -> np.ndarray:
    """`n` donor rows drawn from `pool` with the seed `method_seed(seed, *keys)`: without
    replacement while the pool is large enough, else with.

    Example:
        draw_donors(np.arange(10, 50), 5, 0, 3, 1, 7)   # 5 distinct rows of 10..49
    """
    pool = np.asarray(pool, dtype=np.int64).ravel()
    if pool.size == 0:
        raise KerablError("resample ablation needs images outside the target class: "
                          "study at least two classes")
    rng = np.random.default_rng(method_seed(seed, *keys))
    return rng.choice(pool, size=int(n), replace=pool.size < n).astype(np.int64)


def mean_output(batches: Iterable[np.ndarray]) -> np.ndarray:
    """The mean over images of a layer's output, from (n, *shape) batches (float64 sums).

    Example:
        mean_output([np.ones((2, 3)), 3 * np.ones((2, 3))])   # array([2., 2., 2.], float32)
    """
    total, count = None, 0
    for batch in batches:
        batch = np.asarray(batch)
        part = batch.sum(axis=0, dtype=np.float64)
        total = part if total is None else total + part
        count += len(batch)
    if not count:
        raise KerablError("mean ablation needs at least one image")
    return (total / count).astype(np.float32)


@dataclass(frozen=True)
class Replacement:
    """The values the removed units of one layer take (see the module docstring).

    Example:
        Replacement()                                   # zero ablation
        Replacement("mean", mean=acts.mean(0))          # mean ablation
        Replacement("resample", bank=acts, donors=np.array([[3, 0, 1]]))   # image i gets row
        rep.apply(acts, keep)                           # (G, N, *shape): keep*a + (1-keep)*fill

    Attributes:
        method: one of `METHODS`.
        mean: (*shape) the layer's mean output ("mean").
        bank: (B, *shape) layer outputs of the donor images ("resample").
        donors: (G or 1, N) int rows of `bank`, per mask and image ("resample"); one row is
            shared by every mask.
    """

    method: str = "zero"
    mean: np.ndarray | None = None
    bank: np.ndarray | None = None
    donors: np.ndarray | None = None

    def __post_init__(self):
        check_method(self.method)
        if self.method == "mean" and self.mean is None:
            raise KerablError("mean ablation needs the layer's mean output")
        if self.method == "resample" and (self.bank is None or self.donors is None):
            raise KerablError("resample ablation needs a bank of donor outputs and the donors")
        if self.donors is not None and np.ndim(self.donors) != 2:
            raise KerablError(f"donors must be (masks or 1, images); got shape "
                              f"{np.shape(self.donors)}")

    @property
    def is_zero(self) -> bool:
        return self.method == "zero"

    def fill(self, masks=slice(None), images=slice(None)) -> np.ndarray | None:
        """The replacement values of masks `masks` and images `images`, broadcastable to
        (masks, images, *shape) float32: None (zero), (1, 1, *shape) (mean) or
        (masks or 1, images, *shape) (resample)."""
        if self.method == "zero":
            return None
        if self.method == "mean":
            return np.asarray(self.mean, dtype=np.float32)[None, None]
        donors = np.asarray(self.donors)
        rows = donors[masks if len(donors) > 1 else slice(None)][:, images]
        return np.asarray(self.bank, dtype=np.float32)[rows]

    def for_images(self, rows) -> "Replacement":
        """The replacement of the images `rows` only (resample: those columns of `donors`)."""
        if rows is None or self.method != "resample":
            return self
        return Replacement(self.method, bank=self.bank, donors=np.asarray(self.donors)[:, rows])

    def with_baseline(self) -> "Replacement":
        """The replacement for masks preceded by an all-ones (baseline) mask: per-mask donors
        get a first row (any: a kept unit takes nothing from it)."""
        if self.method != "resample" or len(self.donors) == 1:
            return self
        donors = np.asarray(self.donors)
        return Replacement(self.method, bank=self.bank, donors=np.concatenate([donors[:1], donors]))

    def apply(self, acts: np.ndarray, keep: np.ndarray) -> np.ndarray:
        """`keep * acts + (1 - keep) * fill`: (G, N, *shape) from acts (N, *shape) and keep
        masks (G, *shape or broadcastable), in numpy (the reference the engines are tested
        against)."""
        acts = np.asarray(acts, dtype=np.float32)
        keep = np.asarray(keep, dtype=np.float32)[:, None]
        out = keep * acts[None]
        fill = self.fill(slice(None), slice(None))
        return out if fill is None else out + (1.0 - keep) * fill


ZERO = Replacement()
