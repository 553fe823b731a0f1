"""Image sets: which images a study runs on, their labels and the study's classes.

- `ImageSet`: images (files or an in-memory array), their labels as model output indices, the
  study's classes in study order; `batches(...)`, `load(...)`, `rows_of(...)`, `subset(...)`.
- `paper_imageset(folder, classes="hayne50")`: the Hayne et al. layout (`images/`,
  ground truth, `meta_clsloc.mat`, `50_classes.json`, or the authors' `50_classes.pkl`).
- `synset_imageset(folder, classes=None)`: one sub-folder of images per WNID (`n01440764/*.JPEG`).
- `digits_imageset(seed)`: the demo model's held-out digits, already preprocessed.
- `digits_split(seed)`: scikit-learn's digits as 32 x 32 x 3 images, the split the demo model
  was trained with (train_demo.py and the studies both call it).

Reading and preprocessing the images (`load_image`, `preprocess_images`, the `PREPROCESS`
recipes) is `kerabl.images`; class folders of any names are `kerabl.folders`.

Example:
    imageset = digits_imageset()
    len(imageset.labels), imageset.classes[:2]   # 450, ["0", "1"]
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from kerabl import imagenet
from kerabl.errors import KerablError
from kerabl.images import (IMAGE_SUFFIXES, check_preprocess, load_image, load_image_cv2,
                           preprocess_images)

DIGITS_SIZE = 32
DIGITS_TEST_FRACTION = 0.25
DIGITS_SEED = 0


def digits_images(x8: np.ndarray) -> np.ndarray:
    """Turn (N, 64) digits rows (values 0..16) into (N, 32, 32, 3) float32 images in [0, 1].

    Example:
        digits_images(np.full((2, 64), 16)).shape   # (2, 32, 32, 3), all ones

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


# ---------------------------------------------------------------------------------------------
# Image sets

@dataclass
class ImageSet:
    """Images with their true classes, in the order a study reads them.

    Example:
        images = paper_imageset("imagenet-val-hayne50", classes="hayne8")
        for batch in images.batches((227, 227), "paper", batch_size=32): ...
        schooner_rows = images.rows_of(images.classes[0])

    Attributes:
        name: identifies the data for cache fingerprints.
        labels: (N,) int64, the model output index of each image's true class.
        classes: output indices of the study's classes, in study order.
        class_names: names of `classes`, same order.
        paths: image files (decoded on demand), or None for in-memory images.
        images: (N, h, w, 3) float32 network inputs for in-memory sets, else None.
        skipped: files in the class folders that are not read (not images by their suffix);
            a study says how many and names a few.
    """

    name: str
    labels: np.ndarray
    classes: list[int]
    class_names: list[str]
    paths: list[Path] | None = None
    images: np.ndarray | None = None
    skipped: list[Path] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        self.classes = [int(c) for c in self.classes]
        self.class_names = [str(n) for n in self.class_names]
        if (self.paths is None) == (self.images is None):
            raise KerablError(f"image set {self.name!r} needs exactly one of paths or images")
        n = len(self.paths) if self.paths is not None else len(self.images)
        if n != len(self.labels):
            raise KerablError(f"image set {self.name!r} has {n} images but {len(self.labels)} "
                              "labels: give one label per image")
        if len(self.classes) != len(self.class_names):
            raise KerablError(f"image set {self.name!r}: {len(self.classes)} classes but "
                              f"{len(self.class_names)} class names")
        if self.paths is not None:
            self.paths = [Path(p) for p in self.paths]

    def __len__(self) -> int:
        return len(self.labels)

    def _rows(self, rows: Sequence[int] | np.ndarray | None) -> np.ndarray:
        if rows is None:
            return np.arange(len(self), dtype=np.int64)
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
            raise KerablError(f"row indices must lie in 0..{len(self) - 1} for image set "
                              f"{self.name!r}")
        return rows

    def batches(self, size: Sequence[int], preprocess: str, batch_size: int = 32,
                rows: Sequence[int] | np.ndarray | None = None) -> Iterator[np.ndarray]:
        """Float32 NHWC batches of network inputs, in row order; each file is decoded once.

        Example:
            for batch in images.batches((227, 227), "paper", batch_size=16): ...
            first = next(images.batches((32, 32), "none", rows=[4, 2]))   # rows 4 then 2

        Args:
            size: (h, w) network input size.
            preprocess: one of `PREPROCESS` ("none" for in-memory sets).
            batch_size: images per batch (the last batch may be smaller).
            rows: indices of the images to give, in that order (default: all).
        """
        check_preprocess(preprocess)
        if batch_size < 1:
            raise KerablError(f"batch_size must be at least 1, got {batch_size}")
        if self.images is not None and preprocess != "none":
            raise KerablError(f"image set {self.name!r} holds preprocessed images: use "
                              f"preprocess 'none', not {preprocess!r}")
        rows = self._rows(rows)
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            if self.images is not None:
                yield preprocess_images(self.images[chunk], size, "none")
            else:
                decode = load_image_cv2 if preprocess == "paper" else load_image
                yield preprocess_images([decode(self.paths[r]) for r in chunk], size, preprocess)

    def load(self, size: Sequence[int], preprocess: str,
             rows: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """All (or the given) rows as one float32 (N, h, w, 3) array.

        Example:
            x = images.load((227, 227), "paper", rows=images.rows_of(images.classes[0]))
        """
        rows = self._rows(rows)
        parts = list(self.batches(size, preprocess, batch_size=64, rows=rows))
        return np.concatenate(parts) if parts else np.zeros((0, *size, 3), np.float32)

    def rows_of(self, class_index: int) -> np.ndarray:
        """Row indices of the images of one class (given as its model output index).

        Example:
            rows = images.rows_of(images.classes[0])   # 50 rows for a paper class
        """
        if int(class_index) not in self.classes:
            raise KerablError(f"class {class_index} is not in image set {self.name!r}: choose "
                              f"one of {self.classes}")
        return np.flatnonzero(self.labels == int(class_index))

    def _names_of(self, classes: Sequence[int]) -> tuple[list[int], dict[int, str]]:
        """`classes` as ints and the set's name of each class, or a one-line error."""
        classes = [int(c) for c in classes]
        names = dict(zip(self.classes, self.class_names))
        missing = [c for c in classes if c not in names]
        if missing:
            raise KerablError(f"classes {missing} are not in image set {self.name!r}: choose "
                              f"from {self.classes}")
        return classes, names

    def other_rows(self, class_index: int) -> np.ndarray:
        """Row indices of every image not of class `class_index`, studied class or not (the
        "other" pool of `HConfig(other_images="all")`).

        Example:
            pool = images.other_rows(images.classes[0])   # 2,450 rows on the paper's 50 x 50
        """
        self.rows_of(class_index)               # a studied class, or a one-line error
        return np.flatnonzero(self.labels != int(class_index))

    def studying(self, classes: Sequence[int]) -> ImageSet:
        """Every image of this set, with only `classes` (output indices, in that order) studied:
        the images of the other classes stay in, as "other" images of `other_rows`.

        Example:
            pool = paper_imageset(folder)                       # 50 classes, 2,500 images
            study = pool.studying(pool.classes[:10])            # 10 studied, 2,500 images
        """
        classes, names = self._names_of(classes)
        return replace(self, name=f"{self.name}:studying-{_digest(classes)}", classes=classes,
                       class_names=[names[c] for c in classes])

    def subset(self, classes: Sequence[int]) -> ImageSet:
        """The images of some classes (output indices), in the given class order.

        Example:
            first8 = images.subset(images.classes[:8])
        """
        classes, names = self._names_of(classes)
        rows = np.concatenate([self.rows_of(c) for c in classes]) if classes else np.zeros(0, int)
        return replace(
            self, name=f"{self.name}:subset-{_digest(classes)}", labels=self.labels[rows],
            classes=classes, class_names=[names[c] for c in classes],
            paths=None if self.paths is None else [self.paths[r] for r in rows],
            images=None if self.images is None else self.images[rows])


def _digest(items: Sequence) -> str:
    """A short stable digest of a sequence of values."""
    return hashlib.sha1("\n".join(map(str, items)).encode()).hexdigest()[:12]


def from_classes(name: str, folder: Path, class_ids: list[int], class_names: list[str],
                 files_per_class: list[list[Path]], skipped: Sequence[Path] = ()) -> ImageSet:
    """An ImageSet from files grouped by class (study order), named with a digest of both.

    Example:
        from_classes("flowers", root, [0, 1], ["daisy", "rose"], [daisies, roses])
    """
    paths = [p for files in files_per_class for p in files]
    labels = np.repeat(np.asarray(class_ids, dtype=np.int64), [len(f) for f in files_per_class])
    digest = _digest([*class_ids, *(p.name for p in paths)])
    return ImageSet(name=f"{name}:{folder.resolve()}:{digest}", labels=labels,
                    classes=class_ids, class_names=class_names, paths=paths,
                    skipped=list(skipped))


# ---------------------------------------------------------------------------------------------
# The paper's layout

PAPER_GROUND_TRUTH = "ILSVRC2014_clsloc_validation_ground_truth.txt"
PAPER_META = "meta_clsloc.mat"
PAPER_CLASS_LIST = "50_classes.json"
PAPER_CLASS_PICKLE = "50_classes.pkl"     # the authors' own data/ folder holds only this one
HAYNE8 = ("schooner", "brain_coral", "junco_bird", "snail", "grey_whale", "siberian_husky",
          "electric_fan", "bookcase")
HAYNE10 = HAYNE8 + ("fountain_pen", "toaster")    # the authors' MobileNetV2 and ResNet scripts
# Named class sets: name -> how many classes of the class list, in file order (None: all).
PAPER_CLASS_SETS = {"hayne50": None, "hayne8": len(HAYNE8), "hayne10": len(HAYNE10)}


def default_classes(model: str) -> str:
    """The class set a study of `model` runs on when none is named: the authors' 50 for their
    AlexNet, the first 8 of them for the other ImageNet networks (hours less on a CPU).

    Example:
        default_classes("alexnet"), default_classes("vgg16")   # "hayne50", "hayne8"
    """
    return "hayne50" if model == "alexnet" else "hayne8"
_PAPER_FILE = re.compile(r"ILSVRC2012_val_(\d{8})\.JPEG$", re.IGNORECASE)


def _required_file(path: Path, what: str, option: str) -> Path:
    if not path.is_file():
        raise KerablError(f"{what} not found at {path}: put it there or pass {option}=")
    return path


def _read_ground_truth(path: Path) -> np.ndarray:
    """ILSVRC2014_ID of each validation image (index 0 = image 1)."""
    try:
        return np.loadtxt(path, dtype=np.int64, ndmin=1)
    except ValueError as err:
        raise KerablError(f"{path} is not one integer ILSVRC2014_ID per line ({err}): give the "
                          "devkit's validation ground truth") from None


def _read_class_list(path: Path) -> list[tuple[str, str]]:
    """(name, WNID) pairs of a class-list JSON object, in file order."""
    try:
        listed = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise KerablError(f"cannot read class list {path} ({err}): give a JSON object "
                          "name -> WNID") from None
    if not isinstance(listed, dict) or not all(isinstance(v, str) for v in listed.values()):
        raise KerablError(f"class list {path} must be a JSON object name -> WNID")
    return list(listed.items())


def paper_class_list(root: Path) -> list[tuple[str, str]]:
    """(name, WNID) pairs of the paper layout's class list, in file order: `50_classes.json`, or,
    where that is absent, the authors' `50_classes.pkl` (read by `read_class_pickle`).

    Example:
        paper_class_list(Path("imagenet-val-hayne50"))[:2]   # [("schooner", "n04147183"), ...]
    """
    root = Path(root)
    if not (root / PAPER_CLASS_LIST).is_file() and (root / PAPER_CLASS_PICKLE).is_file():
        return read_class_pickle(root / PAPER_CLASS_PICKLE)
    return _read_class_list(_required_file(root / PAPER_CLASS_LIST, "class list", "classes"))


def read_class_pickle(path: Path) -> list[tuple[str, str]]:
    """(name, WNID) pairs of a pickled dict name -> WNID, in its order, read safely: the
    unpickler builds only plain containers and strings (any class or function reference is
    refused), and the result must be a dict of strings.

    Example:
        read_class_pickle(Path("data/50_classes.pkl"))[0]    # ("schooner", "n04147183")
    """
    import io
    import pickle

    class _PlainData(pickle.Unpickler):
        def find_class(self, module, name):
            raise pickle.UnpicklingError(f"it refers to {module}.{name}")

    try:
        listed = _PlainData(io.BytesIO(Path(path).read_bytes())).load()
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError,
            IndexError, AttributeError, UnicodeDecodeError) as err:
        raise KerablError(f"cannot read class list {path} ({err}): give a pickled dict "
                          "name -> WNID, or 50_classes.json") from None
    if not isinstance(listed, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in listed.items()):
        raise KerablError(f"class list {path} is not a pickled dict of strings name -> WNID: "
                          "give the authors' 50_classes.pkl or 50_classes.json")
    return list(listed.items())


def _chosen_classes(classes: str | Sequence[str] | Path, root: Path) -> list[tuple[str, str]]:
    """(name, WNID) of the requested classes in study order."""
    if isinstance(classes, Path):
        return _read_class_list(classes)
    if isinstance(classes, str) and classes not in PAPER_CLASS_SETS:
        raise KerablError(f"classes={classes!r}: use {', '.join(map(repr, PAPER_CLASS_SETS))}, a "
                          "list of WNIDs or names, or the path of a class-list JSON")
    listed = paper_class_list(root)
    if isinstance(classes, str):
        count = PAPER_CLASS_SETS[classes] or len(listed)
        if len(listed) < count:
            raise KerablError(f"{classes} is the first {count} classes of the class list, "
                              f"but {root} lists {len(listed)}: give the authors' list")
        return listed[:count]
    return _named_classes(classes, listed)


def _named_classes(requested: Sequence[str], listed: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Each requested WNID or class-list name as (name, WNID); unknown WNIDs get ImageNet names."""
    by_name = dict(listed)
    by_wnid = {wnid: name for name, wnid in listed}
    chosen = []
    for item in requested:
        item = str(item).strip()
        if item in by_name:
            chosen.append((item, by_name[item]))
        elif item in by_wnid:
            chosen.append((by_wnid[item], item))
        else:
            chosen.append((imagenet.class_names()[imagenet.index_of(item)], item))
    return chosen


def paper_imageset(folder: str | Path, ground_truth: str | Path | None = None,
                   meta: str | Path | None = None,
                   classes: str | Sequence[str] | Path = "hayne50",
                   drop_empty: bool = False) -> ImageSet:
    """The Hayne et al. image set: ILSVRC2012 validation images of the study's classes.

    Example:
        images = paper_imageset("imagenet-val-hayne50")            # 50 x 50
        first8 = paper_imageset("imagenet-val-hayne50", classes="hayne8")
        first10 = paper_imageset("imagenet-val-hayne50", classes="hayne10")  # + 2 more

    `folder` is the dataset root (holding `images/`) or the image folder itself; the other
    files default to the dataset root (the image folder's parent in the second case):
    `ILSVRC2014_clsloc_validation_ground_truth.txt` (line i = ILSVRC2014_ID of
    `ILSVRC2012_val_<i>.JPEG`), `meta_clsloc.mat` (ILSVRC2014_ID -> WNID) and
    `50_classes.json` (name -> WNID, file order = study order; where it is absent, the
    authors' `50_classes.pkl`, read by `read_class_pickle`). Labels are Keras output
    indices (sorted WNIDs). Rows are grouped by class in study order, by file name within one.

    Args:
        folder: dataset root or image folder.
        ground_truth: the ground-truth file, if not in the dataset root.
        meta: `meta_clsloc.mat`, if not in the dataset root.
        classes: "hayne50" (all 50 listed classes), "hayne8" (the first 8 in file order),
            "hayne10" (the first 10: the authors' MobileNetV2 and ResNet scripts),
            a list of WNIDs or class-list names, or the Path of a class-list JSON.
        drop_empty: leave out the classes without images (the "other" pool of a folder that
            holds some of the listed classes) instead of raising.

    Raises:
        KerablError: a missing folder or file (named), an image number beyond the ground
            truth, or a requested class without images.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise KerablError(f"image folder {folder} does not exist: pass the dataset root or "
                          "its images/ folder")
    has_images = (folder / "images").is_dir()
    image_dir, root = (folder / "images", folder) if has_images else (folder, folder.parent)
    gt_path = _required_file(Path(ground_truth or root / PAPER_GROUND_TRUTH), "ground truth",
                             "ground_truth")
    meta_path = _required_file(Path(meta or root / PAPER_META), "meta_clsloc.mat", "meta")
    chosen = _chosen_classes(classes, root)
    id_to_wnid = {i: wnid for i, (wnid, _) in imagenet.read_meta_clsloc(meta_path).items()}
    truth = _read_ground_truth(gt_path)

    wanted = {wnid: k for k, (_, wnid) in enumerate(chosen)}
    files_per_class: list[list[Path]] = [[] for _ in chosen]
    for path in sorted(image_dir.iterdir()):
        match = _PAPER_FILE.match(path.name)
        if not match:
            continue
        number = int(match.group(1))
        if not 1 <= number <= len(truth):
            raise KerablError(f"{path.name}: image number {number} is beyond the {len(truth)} "
                              f"lines of {gt_path}; check the ground-truth file")
        k = wanted.get(id_to_wnid.get(int(truth[number - 1])))
        if k is not None:
            files_per_class[k].append(path)
    if drop_empty and any(files_per_class):
        chosen, files_per_class = map(list, zip(*[(c, f) for c, f in zip(chosen, files_per_class)
                                                   if f]))
    empty = [f"{name} ({wnid})" for (name, wnid), f in zip(chosen, files_per_class) if not f]
    if empty:
        raise KerablError(f"no images of class {', '.join(empty)} in {image_dir}: check the "
                          "folder and the class list")
    return from_classes(f"imagenet-paper:{classes if isinstance(classes, str) else 'list'}",
                         image_dir, [imagenet.index_of(w) for _, w in chosen],
                         [name for name, _ in chosen], files_per_class)


def synset_imageset(folder: str | Path, classes: Sequence[str] | None = None) -> ImageSet:
    """Images in one sub-folder per class WNID (`val/n01440764/*.JPEG`, the common layout).

    Example:
        images = synset_imageset("val", classes=["n04147183", "n01917289"])
        images.class_names  # ['schooner', 'brain_coral']

    Args:
        folder: the folder holding the WNID sub-folders.
        classes: WNIDs in study order, or None for every WNID sub-folder (sorted).

    Raises:
        KerablError: missing folder, unknown WNID, or a class folder without images.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise KerablError(f"image folder {folder} does not exist: pass the folder of WNID "
                          "sub-folders")
    if classes is None:
        classes = sorted(p.name for p in folder.iterdir()
                         if p.is_dir() and re.fullmatch(r"n\d{8}", p.name))
        if not classes:
            raise KerablError(f"{folder} has no WNID sub-folders (like n01440764/): check the "
                              "layout")
    ids = [imagenet.index_of(str(c).strip()) for c in classes]
    classes = [imagenet.wnids()[i] for i in ids]   # class names given as their WNIDs
    files_per_class, skipped = [], []
    for wnid in classes:
        sub = folder / wnid
        entries = [p for p in sub.iterdir() if not p.is_dir()] if sub.is_dir() else []
        files = sorted(p for p in entries if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise KerablError(f"no images of class {wnid} in {sub}: check the folder")
        files_per_class.append(files)
        skipped += sorted(p for p in entries if p.suffix.lower() not in IMAGE_SUFFIXES)
    return from_classes("imagenet-synsets", folder, ids,
                        [imagenet.class_names()[i] for i in ids], files_per_class, skipped)


def digits_imageset(seed: int = DIGITS_SEED) -> ImageSet:
    """The demo model's held-out test digits (450 images, 10 classes), preprocess "none".

    Example:
        digits = digits_imageset()
        digits.load((32, 32), "none").shape  # (450, 32, 32, 3)
    """
    _, _, x_test, y_test = digits_split(seed)
    return ImageSet(name=f"digits-test:seed{seed}", labels=y_test, classes=list(range(10)),
                    class_names=[str(d) for d in range(10)], images=x_test)
