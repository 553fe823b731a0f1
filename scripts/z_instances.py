"""Z study across demo network instances: predicting the affected class, and regularisers.

    python scripts/z_instances.py                         # 4 instances + BN + dropout variants
    python scripts/z_instances.py --instances 2 --epochs 3 --out /tmp/zi

Trains (or reuses, when the weights file exists) `--instances` demo models with seeds 0.., plus a
batch-norm and a channel-dropout variant (seed 0), with scripts/train_demo.py's `train`. For each
network, on the digits test split: single-unit ablation of `--layers` and the unit attributes.

(a) Predicting the affected class (DESIGN 3.7): for every unit that hurts some class, a
    LogisticRegression maps its attribute vector to the class it hurts most; trained on all
    instances but one, tested on that one, in turn (accuracy pooled over the folds). Attribute vectors: class correlation (C), class means
    normalised to sum 1 (the vector behind the selectivity index, C), L1 norm (1), and their
    concatenation (the ensemble). Chance is about 1 / 10.
(b) Regularisers (DESIGN 3.8): max class drop curves of the BN and dropout variants beside the
    baseline, written to --figure.
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

FEATURES = ("class_corr", "class_profile", "l1")
VARIANTS = {"batch norm": {"batch_norm": True, "channel_dropout": 0.0},
            "channel dropout": {"batch_norm": False, "channel_dropout": 0.2}}


def trained_model(out: Path, tag: str, seed: int, epochs: int, batch_norm: bool,
                  channel_dropout: float):
    """A trained demo model: loaded from out/<tag>.weights.h5 when present, else trained."""
    from train_demo import train

    from kerabl.models import demo_model

    path = out / f"{tag}.weights.h5"
    if path.exists():
        model = demo_model(batch_norm=batch_norm, channel_dropout=channel_dropout, seed=seed)
        model.load_weights(path)
        return model
    model, accuracy = train(seed, epochs, batch_norm, channel_dropout)
    model.save_weights(path)
    print(f"trained {tag}: test accuracy {accuracy:.3f}")
    return model


def unit_table(model, images: np.ndarray, labels: np.ndarray, layers: list[str]) -> dict:
    """Per layer: ablation drops and the attribute vectors of every channel unit."""
    from kerabl import units
    from kerabl.masking import head_model

    classes = np.arange(10)
    probs = model.predict(images, verbose=0)
    table = {}
    for layer in layers:
        r = units.single_unit_ablation(model, images, labels, classes, layer)
        acts = head_model(model, layer).predict(images, verbose=0)
        means = np.clip(units.class_means(acts, labels, classes), 0, None)
        total = means.sum(axis=1, keepdims=True)
        table[layer] = {
            "max_class_drop": r["max_class_drop"], "argmax_class": r["argmax_class"],
            "class_corr": np.nan_to_num(units.class_correlation(acts, probs)),
            "class_profile": np.divide(means, total, out=np.zeros_like(means), where=total > 0),
            "l1": units.l1_norms(model, layer)[:, None]}
    return table


def stack(tables: list[dict], features: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the units that hurt some class: features (standardised per layer) and class."""
    xs, ys = [], []
    for table in tables:
        for d in table.values():
            hurt = d["max_class_drop"] > 0
            x = np.concatenate([d[f] for f in features], axis=1)
            spread = x.std(axis=0)
            xs.append(((x - x.mean(axis=0)) / np.where(spread > 0, spread, 1.0))[hurt])
            ys.append(d["argmax_class"][hurt])
    return np.concatenate(xs), np.concatenate(ys)


def predict_affected_class(tables: list[dict]) -> dict[str, float]:
    """Leave-one-instance-out accuracy of LogisticRegression per attribute vector and ensemble.

    Each instance in turn is the test set and the others the training set; the correct
    predictions of all folds are pooled over all test units.
    """
    from sklearn.linear_model import LogisticRegression

    scores: dict = {}
    for name, features in [*((f, (f,)) for f in FEATURES), ("ensemble", FEATURES)]:
        correct = total = 0
        for held in range(len(tables)):
            x_train, y_train = stack(tables[:held] + tables[held + 1:], features)
            x_test, y_test = stack(tables[held:held + 1], features)
            clf = LogisticRegression(max_iter=2000, random_state=0).fit(x_train, y_train)
            correct += int((clf.predict(x_test) == y_test).sum())
            total += len(y_test)
        scores[name] = round(correct / max(total, 1), 3)
    scores["test units"] = total
    return scores


def main(
    out: Annotated[Path, typer.Option(help="folder of the instance weights")] = ROOT / "out" / "z_instances",
    instances: Annotated[int, typer.Option(help="demo instances (seeds 0..n-1)")] = 4,
    epochs: Annotated[int, typer.Option(help="training epochs per instance")] = 10,
    layers: Annotated[str, typer.Option(help="comma-separated target layers")] = "conv_4,conv_5,dense_1,dense_2",
    figure: Annotated[Path, typer.Option(help="regulariser figure")] = ROOT / "figures" / "z_regularisers.png",
) -> None:
    """Train demo instances, predict each unit's most-hurt class, compare regularisers."""
    from kerabl.data import digits_split
    from kerabl.errors import KerablError
    from kerabl.figures_z import build_regulariser_curves

    if instances < 2:
        raise KerablError(f"--instances {instances}: need at least 2 (train on some, test on others)")
    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    _, _, images, labels = digits_split()
    names = [n.strip() for n in layers.split(",") if n.strip()]
    tables = [unit_table(trained_model(out, f"demo_seed{s}", s, epochs, False, 0.0), images,
                         labels, names) for s in range(instances)]
    scores = predict_affected_class(tables)
    print("most-hurt class predicted, leave one instance out; chance ~ 0.10")
    for name, score in scores.items():
        print(f"  {name:14s} {score}")
    curves = {"baseline": {layer: d["max_class_drop"] for layer, d in tables[0].items()}}
    for label, options in VARIANTS.items():
        tag = "demo_" + label.replace(" ", "_")
        table = unit_table(trained_model(out, tag, 0, epochs, **options), images, labels, names)
        curves[label] = {layer: d["max_class_drop"] for layer, d in table.items()}
        print(f"  {label}: mean max class drop " +
              ", ".join(f"{layer} {v.mean():.4f}" for layer, v in curves[label].items()))
    print("  baseline: mean max class drop " +
          ", ".join(f"{layer} {v.mean():.4f}" for layer, v in curves["baseline"].items()))
    figure.parent.mkdir(parents=True, exist_ok=True)
    build_regulariser_curves(curves).savefig(figure, dpi=120)
    print(f"wrote {figure}; {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    typer.run(main)
