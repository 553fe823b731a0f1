"""Image sets and preprocessing.

- `digits_split(seed)`: scikit-learn's digits as 32 x 32 x 3 images, the split the demo model
  was trained with (train_demo.py and the studies both call it).
"""

from __future__ import annotations

import numpy as np

DIGITS_SIZE = 32
DIGITS_TEST_FRACTION = 0.25
DIGITS_SEED = 0


def digits_images(x8: np.ndarray) -> np.ndarray:
    """Turn (N, 64) digits rows (values 0..16) into (N, 32, 32, 3) float32 images in [0, 1].

    Each 8 x 8 pixel becomes a 4 x 4 block (nearest-neighbour upsampling) and the grey
    image is repeated on three channels.
    """
    x = np.asarray(x8, dtype=np.float32).reshape(-1, 8, 8) / 16.0
    x = np.repeat(np.repeat(x, 4, axis=1), 4, axis=2)
    return np.repeat(x[..., None], 3, axis=-1)


def digits_split(seed: int = DIGITS_SEED, test_fraction: float = DIGITS_TEST_FRACTION):
    """The demo data: `(x_train, y_train, x_test, y_test)`, stratified, deterministic in `seed`.

    Example:
        x_train, y_train, x_test, y_test = digits_split()
        x_test.shape  # (450, 32, 32, 3)
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        digits.data, digits.target, test_size=test_fraction, random_state=seed,
        stratify=digits.target)
    return (digits_images(x_train), y_train.astype(np.int64),
            digits_images(x_test), y_test.astype(np.int64))
