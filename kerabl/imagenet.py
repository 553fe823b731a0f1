"""The ImageNet (ILSVRC2012) class index, as Keras ImageNet models order their 1000 outputs.

Keras indexes the outputs by WNID in sorted order (output 0 = n01440764, tench). The table
ships with the package (`imagenet_classes.json`, made by `scripts/make_class_index.py` from
the devkit's `meta_clsloc.mat`), so nothing is downloaded.

- `wnids()`: the 1000 WNIDs in output order.
- `class_names()`: the 1000 short names (first synonym, spaces -> underscores) in output order.
- `index_of(wnid)`: the output index of a WNID.
- `read_meta_clsloc(path)`: ILSVRC2014_ID -> (WNID, words) for the 1000 leaf classes of a
  `meta_clsloc.mat`.
- `class_index_table(meta)`: the sorted [wnid, name, words] table built from that mapping.
- `is_paper_layout(folder)`: a folder in the paper's layout of the validation images.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from kerabl.errors import KerablError

N_CLASSES = 1000
TABLE_PATH = Path(__file__).with_name("imagenet_classes.json")


@lru_cache(maxsize=1)
def _table() -> tuple[tuple[str, str, str], ...]:
    """The shipped table, read once."""
    if not TABLE_PATH.is_file():
        raise KerablError(f"{TABLE_PATH} is missing: reinstall kerabl or run "
                          "scripts/make_class_index.py META_CLSLOC_MAT")
    return tuple(tuple(row) for row in json.loads(TABLE_PATH.read_text()))


@lru_cache(maxsize=1)
def _positions() -> dict[str, int]:
    return {wnid: i for i, (wnid, _, _) in enumerate(_table())}


def wnids() -> list[str]:
    """The 1000 WNIDs in Keras output order (sorted).

    Example:
        ids = wnids()
        ids[0]  # 'n01440764'
    """
    return [row[0] for row in _table()]


def class_names() -> list[str]:
    """The 1000 short class names in Keras output order.

    Example:
        names = class_names()
        names[0]  # 'tench'
    """
    return [row[1] for row in _table()]


def index_of(wnid: str) -> int:
    """The Keras output index of an ImageNet WNID.

    Example:
        index_of("n01440764")  # 0
        index_of("n04147183")  # 780 (schooner)
        index_of("tench")      # 0: a class name (unique in `class_names()`) is accepted too

    Raises:
        KerablError: `wnid` is not one of the 1000 ILSVRC2012 classes.
    """
    try:
        return _positions()[wnid]
    except KeyError:
        names = class_names()
        if wnid in names and names.count(wnid) == 1:
            return names.index(wnid)
        raise KerablError(f"unknown ImageNet class {wnid!r}: use one of the 1000 ILSVRC2012 "
                          "class WNIDs (e.g. n01440764) or names (e.g. tench)") from None


def _scalar(field) -> object:
    """The single value inside a loadmat struct field (stored as [[x]] or [x])."""
    return field.ravel()[0].item()


def read_meta_clsloc(path: str | Path) -> dict[int, tuple[str, str]]:
    """Read the devkit's `meta_clsloc.mat`: ILSVRC2014_ID (1..1000) -> (WNID, words).

    Example:
        meta = read_meta_clsloc("imagenet-val-hayne50/meta_clsloc.mat")
        meta[1]  # ('n02119789', 'kit fox, Vulpes macrotis')

    Raises:
        KerablError: the file is missing, unreadable, or lacks the 1000 leaf synsets.
    """
    import scipy.io

    path = Path(path)
    if not path.is_file():
        raise KerablError(f"{path} not found: give the devkit's meta_clsloc.mat")
    try:
        synsets = scipy.io.loadmat(str(path))["synsets"].ravel()
        rows = {int(_scalar(s["ILSVRC2014_ID"])): (str(_scalar(s["WNID"])), str(_scalar(s["words"])))
                for s in synsets}
    except (KeyError, ValueError, TypeError, OSError) as err:
        raise KerablError(f"{path} is not a readable meta_clsloc.mat with a 'synsets' struct "
                          f"({err}): give the ILSVRC devkit's file") from None
    leaves = {i: rows[i] for i in range(1, N_CLASSES + 1) if i in rows}
    if len(leaves) != N_CLASSES:
        raise KerablError(f"{path} has {len(leaves)} synsets with ILSVRC2014_ID 1..1000, "
                          "expected 1000: give the ILSVRC devkit's meta_clsloc.mat")
    return leaves


def class_index_table(meta: dict[int, tuple[str, str]]) -> list[list[str]]:
    """The [wnid, name, words] rows sorted by WNID (Keras output order).

    Example:
        table = class_index_table(read_meta_clsloc("meta_clsloc.mat"))
        table[0]  # ['n01440764', 'tench', 'tench, Tinca tinca']
    """
    return [[wnid, words.split(",")[0].strip().replace(" ", "_"), words]
            for wnid, words in sorted(meta.values())]


def is_paper_layout(images: Path) -> bool:
    """An image folder in the paper's layout: an images/ folder, or the ILSVRC2012 validation
    files themselves.

    Example:
        is_paper_layout(Path("imagenet-val-hayne50"))   # True: it holds images/
    """
    return images.is_dir() and ((images / "images").is_dir()
                                or any(images.glob("ILSVRC2012_val_*")))
