"""Checks run before a study builds a model or writes a file: each failure is one `KerablError`.

- `check_listed_once`, `check_at_least`: command-line options (the H study's own are
  `kerabl.hayne.config`'s; the network's liveness is `kerabl.engine.check_live_outputs`).
- `check_study_images(imageset)`: classes named once, two or more, two images or more each.
- `check_grid_fits(grid, n_units)`: a unit per grid cell in every layer.
- `check_output_file(path)`: a file's folder exists and is writable, the path is no folder.
- `os_error_line(err)`, `quiet_tensorflow()`, `import_tensorflow()`: the terminal's lines.
"""

from __future__ import annotations

import os
from pathlib import Path

from kerabl.choices import PRECISIONS, engine_kind
from kerabl.errors import KerablError


def check_listed_once(text: str | None, option: str) -> None:
    """A comma-separated option names each item once.

    Example:
        check_listed_once("conv_1,conv_1", "--layers")   # KerablError: conv_1 is listed twice
    """
    items = [item.strip() for item in (text or "").split(",") if item.strip()]
    twice = sorted({item for item in items if items.count(item) > 1})
    if twice:
        raise KerablError(f"{twice[0]} is listed twice in {option}: name each once")


def check_at_least(value: int | None, least: int, option: str, why: str = "") -> None:
    """An integer option is at least `least` (None passes: the default applies).

    Example:
        check_at_least(-5, 0, "--seed")   # KerablError: --seed must be at least 0, got -5
    """
    if value is not None and value < least:
        raise KerablError(f"{option} must be at least {least}{why}, got {value}")


def check_precision(precision: str, engine: str = "fast") -> None:
    """The tail's arithmetic: one of `kerabl.engine.PRECISIONS`, and float32 unless the engine
    is the tail one, spelled "fast" on the command line (the paper engine runs the authors'
    float32 model).

    Example:
        check_precision("bfloat16")            # passes
        check_precision("bfloat16", "paper")   # KerablError: ... needs --engine fast ...
    """
    if precision not in PRECISIONS:
        raise KerablError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    if precision != "float32" and engine_kind(engine) != "tail":
        raise KerablError(f"precision {precision} needs --engine fast: the {engine} engine runs "
                          "the authors' float32 model")


def check_study_images(imageset) -> None:
    """A study's image set: classes named once, at least two, two images or more each.

    Example:
        check_study_images(digits_imageset())   # passes: 10 classes of ~45 images
    """
    classes, names = list(imageset.classes), list(imageset.class_names)
    twice = [n for c, n in zip(classes, names) if classes.count(c) > 1]
    if twice:
        raise KerablError(f"class {twice[0]} is listed twice in --classes (by name and WNID, or "
                          "twice): name each class once")
    if len(classes) < 2:
        raise KerablError(f"the study needs at least two classes (the other classes' images are "
                          f"the probes' negatives), got {', '.join(names) or 'none'}: name two or "
                          "more in --classes")
    for c, name in zip(classes, names):
        n = len(imageset.rows_of(c))
        if n < 2:
            raise KerablError(f"class {name} has {n} image: the probes and the rank deficits "
                              "need at least 2 per class; add images or drop the class")


def check_grid_fits(grid: tuple[int, int], n_units: dict[str, int]) -> None:
    """Every layer has at least one unit per grid cell.

    Example:
        check_grid_fits((4, 4), {"conv_1": 8192})   # passes
    """
    cells = grid[0] * grid[1]
    small = {layer: n for layer, n in n_units.items() if n < cells}
    if small:
        layer, n = next(iter(small.items()))
        raise KerablError(f"--grid {grid[0]}x{grid[1]} has {cells} cells but layer {layer} has "
                          f"only {n} units: use a smaller grid or other layers")


def check_output_file(path: Path, option: str = "--out") -> None:
    """A file to write: its folder exists and is writable, and it is not a folder.

    Example:
        check_output_file(Path("out/results.csv"))   # KerablError when out/ is missing
    """
    path = Path(path)
    folder = path.parent
    if path.is_dir():
        raise KerablError(f"{option} {path} is a folder: name a file inside it, e.g. "
                          f"{path / 'results.csv'}")
    if not folder.is_dir():
        raise KerablError(f"{option} {path}: folder {folder} does not exist; create it or "
                          "choose another path")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise KerablError(f"{option} {path}: folder {folder} is not writable; choose another path")


def os_error_line(err: OSError) -> str:
    """An OS error as one line naming the path (permissions, a missing folder, a full disk).

    Example:
        os_error_line(PermissionError(13, "Permission denied", "out/x.h5"))
        # 'out/x.h5: Permission denied; check the path and its permissions, or free disk space'
    """
    reason = err.strerror or (str(err).splitlines() or [type(err).__name__])[0][:160]
    where = f"{err.filename}: " if err.filename else ""
    return f"{where}{reason}; check the path and its permissions, or free disk space"


def quiet_tensorflow() -> None:
    """TensorFlow's C++ start-up lines and retracing warnings off, unless the user set the level.

    Example:
        quiet_tensorflow()   # then import tensorflow: no oneDNN / CUDA / cpu_feature_guard lines
    """
    import logging

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    logging.getLogger("tensorflow").addFilter(
        lambda record: "triggered tf.function retracing" not in record.getMessage())


def onednn_by_default() -> None:
    """TensorFlow's oneDNN CPU kernels on, unless the user set TF_ENABLE_ONEDNN_OPTS (then it is
    kept). Called by the `kerabl` command before TensorFlow is imported; child processes inherit it.

    Example:
        onednn_by_default()   # then import tensorflow: oneDNN on, whatever the CPU

    TensorFlow turns oneDNN on by itself only on CPUs with AVX-512 VNNI, bfloat16 or AMX; on an
    AVX2 CPU it runs its own kernels, whose float32 matmul reaches about half the machine's
    rate on 2 cores (`kerabl bench` prints which ran). Results differ from those kernels' by
    float rounding only (docs/performance.md, oneDNN, gives the demo's differences).
    """
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")


def import_tensorflow() -> None:
    """Import TensorFlow and start its CPU device; with TF_CPP_MIN_LOG_LEVEL 3 the C++ lines
    it writes while starting (absl's, which ignore that level) are dropped.

    Example:
        import_tensorflow()   # then build models: the terminal shows kerabl's lines only
    """
    import sys

    if "tensorflow" in sys.modules or os.environ.get("TF_CPP_MIN_LOG_LEVEL") != "3":
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            import tensorflow as tf

            tf.config.list_logical_devices("CPU")
    finally:
        os.dup2(saved, 2)
        os.close(saved)
