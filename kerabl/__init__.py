"""kerabl: unit-ablation studies of image CNNs in Keras 3.

- `kerabl.models`: the model zoo (alexnet, vgg16, mobilenet_v2, resnet101, demo) and weight loaders.
- `kerabl.masking`: mask layers, `ablated(...)`, cut points and tail models.
- `kerabl.data`: image sets (ImageNet layouts, digits) and preprocessing.
- `kerabl.activations`: the self-describing HDF5 activation cache.
- `kerabl.grid`, `kerabl.probes`, `kerabl.ablation`, `kerabl.study`, `kerabl.results`,
  `kerabl.stats`: the H study.
- `kerabl.units`: the Z study.
- `kerabl.figures`, `kerabl.figures_z`: figures from stored results.

Example:
    import kerabl
    net = kerabl.load_network("demo")
    path = kerabl.run_h_study(net, kerabl.digits_imageset(), "out")

The names below are imported on first use, so `import kerabl` does not load TensorFlow.
"""

import importlib

from kerabl.errors import KerablError

__version__ = "0.1.0"

_LAZY = {
    "load_network": "kerabl.models",
    "masked_model": "kerabl.masking",
    "ablated": "kerabl.masking",
    "digits_imageset": "kerabl.data",
    "paper_imageset": "kerabl.data",
    "synset_imageset": "kerabl.data",
    "record_activations": "kerabl.activations",
    "HConfig": "kerabl.study",
    "run_h_study": "kerabl.study",
    "HResults": "kerabl.results",
    "run_z_study": "kerabl.units",
    "ZResults": "kerabl.units",
}

__all__ = ["KerablError", "__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'kerabl' has no attribute {name!r}")
