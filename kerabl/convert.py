"""`kerabl convert`: a torch state dict written once as the Keras `.weights.h5` of a network.

- `convert_file(path, name, out)`: the checked conversion (the layouts and the arithmetic are in
  `kerabl.torch_models`), written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import os
from pathlib import Path

from kerabl.errors import KerablError
from kerabl.models import build_model, check_name
from kerabl.torch_models import TORCH_MODELS, load_state_dict_file


def convert_file(path, name: str, out) -> Path:
    """`kerabl convert`: a torch state dict written as the Keras `.weights.h5` of network `name`.

    Example:
        convert_file("vgg16-397923af.pth", "vgg16", "vgg16_tv.weights.h5")
        load_network("vgg16", "vgg16_tv.weights.h5")   # no torch needed from here on

    The file is written under a temporary name and renamed when complete.
    """
    out = Path(out)
    if not out.name.endswith(".weights.h5"):
        raise KerablError(f"--out {out} must end in .weights.h5 (Keras's weights format)")
    if check_name(name) not in TORCH_MODELS:
        raise KerablError(f"{name} has no torch layout: torch weights fit {', '.join(TORCH_MODELS)}")
    model = build_model(name)
    load_state_dict_file(name, model, path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name.removesuffix(".weights.h5") + ".partial.weights.h5")
    try:
        model.save_weights(tmp)
        os.replace(tmp, out)
    except OSError as error:
        raise KerablError(f"cannot write {out} ({error.strerror}): choose a writable --out") from None
    finally:
        tmp.unlink(missing_ok=True)
    return out
