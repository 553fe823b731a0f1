"""kerabl: unit-ablation studies of image CNNs in Keras 3.

- `kerabl.models`: the model zoo (alexnet, vgg16, mobilenet_v2, resnet101, demo) and weight loaders.
- `kerabl.masking`: mask layers, `ablated(...)`, cut points and tail models.
- `kerabl.data`: image sets (ImageNet layouts, digits) and preprocessing.
- `kerabl.activations`: the self-describing HDF5 activation cache.
- `kerabl.grid`, `kerabl.probes`, `kerabl.ablation`, `kerabl.study`: the H study.
- `kerabl.units`: the Z study.
- `kerabl.figures`: figures from stored results.
"""

__version__ = "0.1.0"

from kerabl.errors import KerablError

__all__ = ["KerablError", "__version__"]
