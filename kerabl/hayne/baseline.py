"""Baseline accuracy of the H study: how well the unablated network classifies the studied images.

The first sign of a wrong preprocessing recipe or a wrong class index is a network that is
near chance, or far below its stated accuracy, on the images it is studied on.

- `Baseline`: top-1 and top-5 overall and per class, and what they suggest (`lines()`).
- `baseline_from_ranks(ranks, class_names, ...)`: from each image's 0-based true-class rank.
- `baseline_accuracy(network, imageset)`: one forward pass over the studied images.
- `results_baseline(res)`: from the ranks a results file stored (`kerabl.hayne.stats.summary`).
- `log_baseline(network, imageset, log)`: its lines, as the study and its stages print them.
- `FAR_BELOW`, `NEAR_CHANCE`: the thresholds of the warning.

Example:
    base = baseline_accuracy(net, imageset)
    for line in base.lines(): print(line)
    # baseline: top-1 77.0 %, top-5 92.8 % on 2500 studied images (50 classes)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from kerabl.engine import predict_batched, true_class_rank

# a warning when top-1 is below this share of the accuracy the zoo entry states
FAR_BELOW = 0.6
# ... or when top-1 is at most this many times chance (1 / number of outputs)
NEAR_CHANCE = 3.0


@dataclass(frozen=True)
class Baseline:
    """Top-1 / top-5 (fractions) of the unablated network, overall and per class.

    Example:
        base = baseline_from_ranks([np.array([0, 3]), np.array([7])], ["a", "b"], 10)
        base.top1, base.top5, base.per_class["a"]   # 1/3, 2/3, (0.5, 1.0)
    """

    top1: float
    top5: float
    n_images: int
    n_outputs: int
    per_class: dict = field(default_factory=dict)
    stated_top1: float | None = None
    chance_expected: str = ""

    @property
    def warning(self) -> str | None:
        """Why the accuracy looks wrong, or None (never where chance is expected)."""
        if self.chance_expected or not self.n_images:
            return None
        chance = 1.0 / max(self.n_outputs, 1)
        if self.top1 <= NEAR_CHANCE * chance:
            return (f"warning: top-1 {100 * self.top1:.1f} % is near chance "
                    f"({100 * chance:.2g} %): the preprocessing recipe (--preprocess) or the "
                    "class index (--class-index) is probably wrong")
        if self.stated_top1 is not None and 100 * self.top1 < FAR_BELOW * self.stated_top1:
            return (f"warning: top-1 {100 * self.top1:.1f} % is far below the "
                    f"{self.stated_top1:.1f} % this network is stated to reach on ImageNet: the "
                    "preprocessing recipe (--preprocess) or the class index is probably wrong")
        return None

    def lines(self, per_class: bool = False) -> list[str]:
        """The overall line, the per-class lines when asked, and the warning if any.

        Example:
            base.lines()[0]   # "baseline: top-1 77.0 %, top-5 92.8 % on 400 studied images ..."
        """
        stated = f"; stated ImageNet top-1 {self.stated_top1:.1f} %" if self.stated_top1 else ""
        random = f" ({self.chance_expected}: chance is expected)" if self.chance_expected else ""
        out = [f"baseline: top-1 {100 * self.top1:.1f} %, top-5 {100 * self.top5:.1f} % on "
               f"{self.n_images} studied images ({len(self.per_class)} classes){stated}{random}"]
        if per_class:
            out += [f"  {name}: top-1 {100 * t1:.1f} %, top-5 {100 * t5:.1f} %"
                    for name, (t1, t5) in self.per_class.items()]
        return out + ([self.warning] if self.warning else [])

    def as_dict(self) -> dict:
        """JSON-ready: every field, per_class as {name: [top1, top5]} (`from_dict` reverses it)."""
        return {"top1": self.top1, "top5": self.top5, "n_images": self.n_images,
                "n_outputs": self.n_outputs, "stated_top1": self.stated_top1,
                "chance_expected": self.chance_expected,
                "per_class": {k: list(v) for k, v in self.per_class.items()}}

    @classmethod
    def from_dict(cls, d: dict) -> "Baseline":
        """The `Baseline` that `as_dict` wrote.

        Example:
            Baseline.from_dict(json.load(open("h_summary.json"))["baseline"]).lines(True)
        """
        return cls(**{**d, "per_class": {k: tuple(v) for k, v in d["per_class"].items()}})


def baseline_from_ranks(ranks: Sequence[np.ndarray], class_names: Sequence[str], n_outputs: int,
                        *, stated_top1: float | None = None,
                        chance_expected: str = "") -> Baseline:
    """The baseline from each class's true-class ranks (0 = the top output; negatives skipped);
    `chance_expected` names why chance is the expected level ("random weights"), which silences
    the warning.

    Example:
        baseline_from_ranks([res.rank_before[i] for i in range(len(res.classes))], res.classes,
                            1000, stated_top1=75.1)
    """
    per_class, hits1, hits5, n = {}, 0, 0, 0
    for name, r in zip(class_names, ranks):
        r = np.asarray(r)
        r = r[r >= 0]
        t1, t5 = int((r == 0).sum()), int((r < 5).sum())
        per_class[str(name)] = (t1 / max(r.size, 1), t5 / max(r.size, 1))
        hits1, hits5, n = hits1 + t1, hits5 + t5, n + r.size
    return Baseline(top1=hits1 / max(n, 1), top5=hits5 / max(n, 1), n_images=n,
                    n_outputs=int(n_outputs), per_class=per_class, stated_top1=stated_top1,
                    chance_expected=chance_expected)


def stated_top1(network) -> float | None:
    """The ImageNet top-1 (%) the network's zoo entry states for its default weights, or None.

    Example:
        stated_top1(load_network("efficientnet_lite0"))   # 75.1
    """
    from kerabl.models import STATED_TOP1

    if str(network.weights_id).startswith("random"):
        return None
    return STATED_TOP1.get(network.name)


def baseline_accuracy(network, imageset, batch_size: int = 64) -> Baseline:
    """Top-1 / top-5 of `network` on every image of `imageset` (its recipe), per class.

    Example:
        baseline_accuracy(load_network("demo"), digits_imageset()).top1   # 0.97...
    """
    labels = np.asarray(imageset.labels)
    ranks = []
    for c in imageset.classes:
        rows = imageset.rows_of(c)
        scores = predict_batched(network.model,
                                 imageset.load(network.input_size, network.preprocess, rows=rows),
                                 batch_size)[0]
        ranks.append(true_class_rank(scores, labels[rows]))
    return baseline_from_ranks(ranks, imageset.class_names, network.n_classes,
                               stated_top1=stated_top1(network),
                               chance_expected="random weights" if str(network.weights_id)
                               .startswith("random") else "")


def log_baseline(network, imageset, log) -> Baseline:
    """Compute `baseline_accuracy` and pass its lines (and warning) to `log`; return it.

    Example:
        log_baseline(net, imageset, print)   # baseline: top-1 ..., top-5 ... on 400 images
    """
    baseline = baseline_accuracy(network, imageset)
    for line in baseline.lines():
        log(line)
    return baseline


def results_baseline(res) -> Baseline:
    """The baseline of an H results file from its stored `rank_before` (finished classes).

    Example:
        results_baseline(HResults.open("out/h_results.h5")).lines(per_class=True)

    Under the permuted-labels control the stored ranks are of the permuted labels (chance).
    """
    from kerabl.models import STATED_TOP1

    config = getattr(res, "config", {})
    weights_id = str(config.get("weights_id", ""))
    done = np.asarray(res.done, dtype=bool).any(axis=1)
    ranks = [np.asarray(res.rank_before[ci]) for ci in range(len(res.classes)) if done[ci]]
    names = [name for ci, name in enumerate(res.classes) if done[ci]]
    control = config.get("control", "none")
    chance = ("random weights" if weights_id.startswith("random") else
              "" if control == "none" else f"control {control}")
    return baseline_from_ranks(ranks, names, int(config.get("n_outputs", 1000)),
                               stated_top1=None if chance else
                               STATED_TOP1.get(str(config.get("model"))), chance_expected=chance)
