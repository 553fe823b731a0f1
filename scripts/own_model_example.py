"""A worked example of your own model and data: generated class-folder images, a small Keras
model trained on them in a few seconds, saved as `.keras`, ready for `kerabl study`.

    python scripts/own_model_example.py --out example
    kerabl layers example/patterns.keras
    kerabl study --model example/patterns.keras --images example/images --preprocess scale \\
        --grid 2x2 --probe-fits 20 --out example/run
    kerabl figures example/run/h_results.h5 --out example/figures

Four classes of 32 x 32 to 40 x 40 RGB images (`example/images/<class>/*.png`): horizontal
stripes, vertical stripes, a disc, a checkerboard, each with a random colour, phase and noise
drawn from `np.random.default_rng(seed)`. The model (conv_1, conv_2, dense_1, softmax output)
sees the images as kerabl feeds them with `--preprocess scale`: resized to 32 x 32, /255.
Prints the training time and the accuracy on held-out generated images.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

CLASSES = ("horizontal stripes", "vertical stripes", "disc", "checkerboard")
SIZE = 32


def pattern(kind: int, rng: np.random.Generator) -> np.ndarray:
    """One uint8 RGB image of class `kind` (0..3), its side 32..40 px."""
    side = int(rng.integers(SIZE, SIZE + 9))
    yy, xx = np.mgrid[0:side, 0:side] / side
    period, phase = rng.uniform(0.15, 0.3), rng.uniform(0, 1)
    if kind == 0:
        mask = np.sin(2 * np.pi * (yy / period + phase)) > 0
    elif kind == 1:
        mask = np.sin(2 * np.pi * (xx / period + phase)) > 0
    elif kind == 2:
        cy, cx = rng.uniform(0.35, 0.65, 2)
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 < rng.uniform(0.04, 0.09)
    else:
        mask = (np.sin(2 * np.pi * (yy / period + phase)) > 0) ^ (
            np.sin(2 * np.pi * (xx / period + phase)) > 0)
    colour = rng.uniform(0.5, 1.0, 3)
    image = mask[..., None] * colour + rng.normal(0, 0.08, (side, side, 3))
    return (np.clip(image, 0, 1) * 255).astype(np.uint8)


def make_images(folder: Path, per_class: int, seed: int = 0,
                classes: tuple[str, ...] = CLASSES) -> Path:
    """Write `per_class` PNGs into `folder/<class name>/`; return `folder`."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for kind, name in enumerate(classes):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(pattern(kind % 4, rng)).save(folder / name / f"{i:04d}.png")
    return folder


def pattern_model(n_classes: int = len(CLASSES)):
    """The example CNN: two conv stages, one hidden dense layer, softmax output."""
    import keras

    L = keras.layers
    inputs = keras.Input((SIZE, SIZE, 3), name="input")
    x = L.Conv2D(8, 3, activation="relu", name="conv_1")(inputs)
    x = L.MaxPooling2D(2, name="pool_1")(x)
    x = L.Conv2D(16, 3, activation="relu", name="conv_2")(x)
    x = L.MaxPooling2D(2, name="pool_2")(x)
    x = L.Flatten(name="flatten")(x)
    x = L.Dense(16, activation="relu", name="dense_1")(x)
    outputs = L.Dense(n_classes, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name="patterns")


def train(images: Path, epochs: int = 8, seed: int = 0):
    """Train `pattern_model` on the class folders under `images`; return the model."""
    import keras

    from kerabl.folders import folder_imageset
    from kerabl.weightfiles import randomize_weights

    data = folder_imageset(images)
    x, y = data.load((SIZE, SIZE), "scale"), data.labels
    model = randomize_weights(pattern_model(len(data.classes)), seed)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    order = np.random.default_rng(seed).permutation(len(x))
    model.fit(x[order], y[order], epochs=epochs, batch_size=16, shuffle=False, verbose=0)
    return model


def accuracy(model, images: Path) -> float:
    """Accuracy of `model` on the class folders under `images` (as kerabl feeds them)."""
    from kerabl.engine import predict_batched
    from kerabl.folders import folder_imageset

    data = folder_imageset(images)
    scores = predict_batched(model, data.load((SIZE, SIZE), "scale"), 64)[0]
    return float(np.mean(np.argmax(scores, axis=1) == data.labels))


def main(
    out: Annotated[Path, typer.Option(help="Folder for images/, held-out/ and patterns.keras.")]
    = Path("example"),
    per_class: Annotated[int, typer.Option(help="Training images per class.")] = 40,
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 8,
    seed: Annotated[int, typer.Option(help="Seed of the images and the weights.")] = 0,
) -> None:
    start = time.perf_counter()
    images = make_images(out / "images", per_class, seed)
    held_out = make_images(out / "held-out", 10, seed + 1)
    model = train(images, epochs, seed)
    model.save(out / "patterns.keras")
    print(f"trained in {time.perf_counter() - start:.1f} s; held-out accuracy "
          f"{accuracy(model, held_out):.3f}; model: {out / 'patterns.keras'}; images: {images}")


if __name__ == "__main__":
    typer.run(main)
