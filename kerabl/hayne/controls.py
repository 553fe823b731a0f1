"""Controls of the H study: runs whose answer is known in advance.

- `permuted_labels(imageset, seed)`: the same images with their class labels shuffled among
  them (class sizes kept). Every "class" is then a random set of images: a sound held-out probe
  sits at chance in every cell, while a training-set score or a leaky cross-validation need not.

No TensorFlow here.
"""

from __future__ import annotations

import dataclasses

import numpy as np


def permuted_labels(imageset, seed: int = 0):
    """A copy of `imageset` whose labels are a seeded permutation of its labels.

    Example:
        control = permuted_labels(digits_imageset(), seed=0)
        np.bincount(control.labels) == np.bincount(digits_imageset().labels)   # sizes kept

    The permutation is `np.random.default_rng([seed, 1]).permutation` over the images; the
    image files, names and class list are unchanged (so the activation cache is reused).
    """
    labels = np.asarray(imageset.labels)
    order = np.random.default_rng([seed, 1]).permutation(labels.size)
    return dataclasses.replace(imageset, labels=labels[order])
