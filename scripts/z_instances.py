"""Z study across demo network instances: predicting the affected class, and regularisers.

    python scripts/z_instances.py                         # 4 instances + BN + dropout variants
    python scripts/z_instances.py --instances 2 --epochs 3 --out /tmp/zi

Trains (or reuses, when the weights file exists) `--instances` demo models with seeds 0.., plus a
batch-norm and a channel-dropout variant (seed 0), with scripts/train_demo.py's `train`. For each
network, on the digits test split: single-unit ablation of `--layers` and the unit attributes.

(a) Predicting the affected class (`kerabl.zhou.instances`): for every unit that hurts some class, a
    LogisticRegression maps its attribute vector to the class it hurts most; trained on all
    instances but one, tested on that one, in turn (accuracy pooled over the folds). Attribute vectors: class correlation (C), class means
    normalised to sum 1 (the vector behind the selectivity index, C), L1 norm (1), and their
    concatenation (the ensemble). Chance is about 1 / 10.
(b) Regularisers: max class drop curves of the BN and dropout variants beside the
    baseline, written to --figure.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated

import typer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

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
    from kerabl.zhou.figures import build_regulariser_curves
    from kerabl.zhou.instances import predict_affected_class, unit_table

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
