"""kerabl: unit-ablation studies of image CNNs in Keras 3.

- `kerabl.models`, `kerabl.weightfiles`: the model zoo; random weights, weight files, digests.
- `kerabl.data`, `kerabl.images`, `kerabl.imagenet`: image sets; reading and preprocessing
  images; ImageNet class names.
- `kerabl.networks`, `kerabl.folders`: keras.applications names and .keras files; class folders.
- `kerabl.graph`: the one Keras graph walker (cut points, heads, tails, channel-wise chains).
- `kerabl.masks`: unit kinds, mask arrays, mask layers and `ablated(...)`.
- `kerabl.engine`: the ablation engines (head once, tail per mask; the paper's and full references).
- `kerabl.activations`: the self-describing HDF5 activation cache.
- `kerabl.hayne`: the H study (`config`, `grid`, `probes`, `ablation`, `study`, `stages`,
  `results`, `stats`, `figures`, `stat_figures`, `plot`).
- `kerabl.zhou`: the Z study (`attributes`, `ablation`, `study`, `results`, `figures`).
- `kerabl.reproduce`: both studies, their statistics and figures in one call (`reproduce`).
- docs/architecture.md: the layers these modules form and the contract that checks them.

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
    "masked_model": "kerabl.masks",
    "ablated": "kerabl.masks",
    "digits_imageset": "kerabl.data",
    "paper_imageset": "kerabl.data",
    "synset_imageset": "kerabl.data",
    "load_any_network": "kerabl.networks",
    "folder_imageset": "kerabl.folders",
    "record_activations": "kerabl.activations",
    "HConfig": "kerabl.hayne.config",
    "run_h_study": "kerabl.hayne.study",
    "run_h_stage": "kerabl.hayne.stages",
    "HResults": "kerabl.hayne.results",
    "ZConfig": "kerabl.zhou.study",
    "run_z_study": "kerabl.zhou.study",
    "ZResults": "kerabl.zhou.results",
}

__all__ = ["KerablError", "__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'kerabl' has no attribute {name!r}")
