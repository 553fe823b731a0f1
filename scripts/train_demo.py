"""Train the demo model on scikit-learn's digits and ship its weights.

    python scripts/train_demo.py                      # writes weights/demo.weights.h5
    python scripts/train_demo.py --batch-norm --out /tmp/demo_bn.weights.h5

Uses `kerabl.data.digits_split()` (the split the studies use), random initial weights from
`kerabl.weightfiles.randomize_weights(model, seed)` and batches shuffled by
`np.random.default_rng(seed)`. Prints the held-out accuracy. When writing the shipped file it
also updates its sha256 in weights/manifest.json.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
SHIPPED = ROOT / "weights" / "demo.weights.h5"


def shuffled_epochs(x: np.ndarray, y: np.ndarray, epochs: int, seed: int):
    """The training set repeated `epochs` times, each copy in its own seeded random order."""
    rng = np.random.default_rng(seed)
    order = np.concatenate([rng.permutation(len(x)) for _ in range(epochs)])
    return x[order], y[order]


def train(seed: int, epochs: int, batch_norm: bool, channel_dropout: float, batch_size: int = 32):
    """Train a demo model; return it with its held-out accuracy."""
    import keras

    from kerabl.data import digits_split
    from kerabl.models import demo_model
    from kerabl.weightfiles import randomize_weights

    x_train, y_train, x_test, y_test = digits_split()
    model = demo_model(batch_norm=batch_norm, channel_dropout=channel_dropout, seed=seed)
    randomize_weights(model, seed)
    steps = epochs * int(np.ceil(len(x_train) / batch_size))
    schedule = keras.optimizers.schedules.CosineDecay(1e-3, decay_steps=steps)
    model.compile(optimizer=keras.optimizers.Adam(schedule),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    x, y = shuffled_epochs(x_train, y_train, epochs, seed)
    model.fit(x, y, batch_size=batch_size, epochs=1, shuffle=False, verbose=2)
    predicted = model.predict(x_test, batch_size=450, verbose=0).argmax(axis=1)
    plain = demo_model(batch_norm=batch_norm, channel_dropout=channel_dropout, seed=seed)
    plain.set_weights(model.get_weights())  # no optimizer state in the shipped file
    return plain, float(np.mean(predicted == y_test))


def update_manifest(path: Path) -> str:
    """Store `path`'s sha256 under its name in weights/manifest.json; return the digest."""
    from kerabl.weightfiles import MANIFEST, weights_digest

    manifest_path = SHIPPED.parent / MANIFEST
    manifest = json.loads(manifest_path.read_text())
    digest = weights_digest(path)
    manifest["files"].setdefault(path.name, {})["sha256"] = digest.removeprefix("sha256:")
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    return digest


def main(
    seed: Annotated[int, typer.Option(help="seed of the initial weights, order and dropout")] = 0,
    epochs: Annotated[int, typer.Option(help="passes over the training split")] = 20,
    batch_norm: Annotated[bool, typer.Option(help="BatchNormalization after each conv")] = False,
    channel_dropout: Annotated[float, typer.Option(help="SpatialDropout2D rate")] = 0.0,
    out: Annotated[Path, typer.Option(help="weights file to write")] = SHIPPED,
) -> None:
    """Train the demo CNN on the digits split and write its weights."""
    import keras

    keras.utils.set_random_seed(seed)  # only for TensorFlow's own kernels; the rest is seeded
    start = time.perf_counter()
    model, accuracy = train(seed, epochs, batch_norm, channel_dropout)
    out.parent.mkdir(parents=True, exist_ok=True)
    model.save_weights(out)
    print(f"held-out accuracy {accuracy:.4f} (450 images), trained in "
          f"{time.perf_counter() - start:.0f} s, wrote {out}")
    if out.resolve() == SHIPPED:
        print(f"manifest: {SHIPPED.name} {update_manifest(out)}")


if __name__ == "__main__":
    typer.run(main)
