"""Z study across demo network instances: predicting the affected class, and regularisers.

    python scripts/z_instances.py                         # 4 instances + 3 seeds of BN, dropout
    python scripts/z_instances.py --instances 2 --variant-seeds 2 --epochs 3 --out /tmp/zi

Trains (or reuses, when the weights file exists) `--instances` demo models with seeds 0.., plus a
batch-norm and a channel-dropout variant with seeds 0..`--variant-seeds`-1, with
scripts/train_demo.py's `train`. For each network, on the digits test split: single-unit ablation
of `--layers` and the unit attributes.

(a) Predicting the affected class (`kerabl.zhou.instances`): for every unit that hurts some class, a
    LogisticRegression maps its attribute vector to the class it hurts most; trained on all
    instances but one, tested on that one, in turn (accuracy pooled over the folds). Attribute vectors: class correlation (C), class means
    normalised to sum 1 (the vector behind the selectivity index, C), L1 norm (1), and their
    concatenation (the ensemble). Chance is about 1 / 10.
(b) Regularisers: max class drop curves of the BN and dropout variants beside the baseline (the
    plain instances of seeds 0..`--variant-seeds`-1), each the mean over its seeds with the min-max
    band (`kerabl.zhou.figures.curve_band`), written to --figure; the summary gives, per network
    kind and layer, the mean over seeds and [min, max] over seeds of: test accuracy, mean max class
    drop, fraction of units that hurt some class, and the largest max class drop.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

VARIANTS = {"batch norm": {"batch_norm": True, "channel_dropout": 0.0},
            "channel dropout": {"batch_norm": False, "channel_dropout": 0.2}}


def trained_model(out: Path, tag: str, seed: int, epochs: int, batch_norm: bool,
                  channel_dropout: float):
    """A trained demo model: loaded from out/<tag>_e<epochs>.weights.h5 when present (the name
    holds everything that decides the weights: variant, seed, epochs), else trained."""
    from train_demo import train

    from kerabl.models import demo_model

    path = out / f"{tag}_e{epochs}.weights.h5"
    if path.exists():
        model = demo_model(batch_norm=batch_norm, channel_dropout=channel_dropout, seed=seed)
        model.load_weights(path)
        return model
    model, accuracy = train(seed, epochs, batch_norm, channel_dropout)
    model.save_weights(path)
    print(f"trained {tag}: test accuracy {accuracy:.3f}")
    return model


def accuracy(model, images, labels) -> float:
    """Test accuracy of `model` on the images."""
    return float(np.mean(model.predict(images, batch_size=450, verbose=0).argmax(axis=1) == labels))


def spread(values) -> str:
    """'mean [min, max]' of per-seed values."""
    v = np.asarray(values, float)
    return f"{v.mean():.4f} [{v.min():.4f}, {v.max():.4f}]"


def print_summary(label: str, accuracies: list[float], drops: dict[str, list[np.ndarray]]) -> None:
    """One kind of network over its seeds: accuracy, then per layer its drop numbers."""
    print(f"  {label} ({len(accuracies)} seeds): test accuracy {spread(accuracies)}")
    for layer, per_seed in drops.items():
        print(f"    {layer:8s} mean max class drop {spread([d.mean() for d in per_seed])}; "
              f"units hurting a class {spread([np.mean(d > 0) for d in per_seed])}; "
              f"largest {spread([d.max() for d in per_seed])}")


def main(
    out: Annotated[Path, typer.Option(help="folder of the instance weights")] = ROOT / "out" / "z_instances",
    instances: Annotated[int, typer.Option(help="demo instances (seeds 0..n-1)")] = 4,
    variant_seeds: Annotated[int, typer.Option(help="seeds per regulariser variant and baseline")] = 3,
    epochs: Annotated[int, typer.Option(help="training epochs per instance")] = 10,
    layers: Annotated[str, typer.Option(help="comma-separated target layers")] = "conv_4,conv_5,dense_1,dense_2",
    figure: Annotated[Path, typer.Option(help="regulariser figure")] = ROOT / "figures" / "z_regularisers.png",
) -> None:
    """Train demo instances, predict each unit's most-hurt class, compare regularisers."""
    from kerabl.data import digits_split
    from kerabl.zhou.figures import build_regulariser_curves
    from kerabl.zhou.instances import predict_affected_class, unit_table

    for bad, message in ((instances < 2, f"--instances {instances}: need at least 2 (train on some, "
                                          "test on others)"),
                         (variant_seeds < 1, f"--variant-seeds {variant_seeds}: need at least 1 "
                                             "(3 or more for a spread)")):
        if bad:
            print(message, file=sys.stderr)
            raise typer.Exit(2)
    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    _, _, images, labels = digits_split()
    names = [n.strip() for n in layers.split(",") if n.strip()]
    models = [trained_model(out, f"demo_seed{s}", s, epochs, False, 0.0)
              for s in range(max(instances, variant_seeds))]
    tables = [unit_table(model, images, labels, names) for model in models]
    scores = predict_affected_class(tables[:instances])
    print("most-hurt class predicted, leave one instance out; chance ~ 0.10")
    for name, score in scores.items():
        print(f"  {name:14s} {score}")
    runs = {"baseline": (models[:variant_seeds], tables[:variant_seeds])}
    for label, options in VARIANTS.items():
        tag = "demo_" + label.replace(" ", "_")
        kind = [trained_model(out, f"{tag}_seed{s}", s, epochs, **options) for s in range(variant_seeds)]
        runs[label] = (kind, [unit_table(model, images, labels, names) for model in kind])
    print("regularisers: mean over seeds [min, max over seeds]")
    curves = {}
    for label, (kind, kind_tables) in runs.items():
        curves[label] = {layer: [t[layer]["max_class_drop"] for t in kind_tables] for layer in names}
        print_summary(label, [accuracy(m, images, labels) for m in kind], curves[label])
    figure.parent.mkdir(parents=True, exist_ok=True)
    build_regulariser_curves(curves).savefig(figure, dpi=120)
    print(f"wrote {figure}; {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    typer.run(main)
