"""Class folders: one sub-folder of images per class, Keras's `image_dataset_from_directory`
convention, any folder names.

- `folder_imageset(folder, classes=None, class_index=None)`: the image set; output index of a
  class = its folder's position in sorted order, or the index a `--class-index` JSON gives it.
- `read_class_index(path)`: that JSON (folder name -> output index).
- `is_synset_layout(folder)`: whether every class folder is an ImageNet WNID (`n01440764`).
- `check_outputs(imageset, n_outputs, expected, model)`: the model's output count fits the
  classes (before any forward pass).
- `study_imageset(model, images, classes, class_index)`: the image set a study runs on, whichever
  of the digits, the paper's layout, synset folders or class folders `images` is.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Sequence

from kerabl.data import (PAPER_CLASS_SETS, ImageSet, default_classes, digits_imageset, from_classes,
                         paper_imageset, synset_imageset)
from kerabl.errors import KerablError
from kerabl.imagenet import is_paper_layout
from kerabl.images import IMAGE_SUFFIXES

WNID = re.compile(r"n\d{8}")


def class_folders(folder: Path) -> list[str]:
    """The sub-folder names of `folder`, sorted (hidden ones skipped).

    Example:
        class_folders("flowers")   # ["daisy", "rose", "tulip"]
    """
    return sorted(p.name for p in Path(folder).iterdir() if p.is_dir() and not p.name.startswith("."))


def is_synset_layout(folder: str | Path) -> bool:
    """Whether `folder`'s sub-folders are all ImageNet WNIDs (and there is at least one).

    Example:
        is_synset_layout("val")   # True for val/n01440764/, val/n01443537/, ...
    """
    names = class_folders(Path(folder))
    return bool(names) and all(WNID.fullmatch(n) for n in names)


def read_class_index(path: str | Path) -> dict[str, int]:
    """A JSON object folder name -> model output index.

    Example:
        read_class_index("classes.json")   # {"cats": 0, "dogs": 1}
    """
    try:
        mapping = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise KerablError(f"cannot read class index {path} ({err}): give a JSON object "
                          "folder name -> output index") from None
    if not isinstance(mapping, dict) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in mapping.values()):
        raise KerablError(f"class index {path} must be a JSON object folder name -> output "
                          "index (an integer >= 0)")
    if len(set(mapping.values())) != len(mapping):
        raise KerablError(f"class index {path} gives two folders the same output index: give "
                          "each folder its own")
    return {str(k): int(v) for k, v in mapping.items()}


def folder_imageset(folder: str | Path, classes: Sequence[str] | None = None,
                    class_index: str | Path | dict | None = None) -> ImageSet:
    """Images in one sub-folder per class (any names; files found recursively, sorted).

    Example:
        images = folder_imageset("flowers")                    # daisy -> 0, rose -> 1, ...
        images = folder_imageset("flowers", classes=["rose", "daisy"])
        images = folder_imageset("flowers", class_index="flowers.json")

    Args:
        folder: the folder of class folders.
        classes: folder names in study order (default: every folder, sorted; with a class
            index, every folder it names).
        class_index: a JSON file (or dict) folder name -> model output index; default: the
            folder's position in sorted order, as `image_dataset_from_directory` labels it.

    Raises:
        KerablError: a missing folder, an unknown class, a class without images, or fewer than
            two classes (a study compares a class with the others).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise KerablError(f"image folder {folder} does not exist: pass the folder of class "
                          "folders")
    names = class_folders(folder)
    if class_index is None:
        index = {name: k for k, name in enumerate(names)}
    else:
        index = class_index if isinstance(class_index, dict) else read_class_index(class_index)
        missing = [n for n in index if n not in names]
        if missing:
            raise KerablError(f"class index names folder {missing[0]!r}, which is not in "
                              f"{folder}: fix the JSON or the folder")
    chosen = [str(c).strip() for c in classes] if classes else list(index)
    unknown = [c for c in chosen if c not in index]
    if unknown:
        raise KerablError(f"class {unknown[0]!r} is not a class folder of {folder}"
                          + (" named in the class index" if class_index is not None else "")
                          + f": choose from {', '.join(sorted(index))}")
    if len(chosen) < 2:
        raise KerablError(f"{folder} gives {len(chosen)} class ({', '.join(chosen) or 'none'}): "
                          "a study compares each class with others; give at least two class "
                          "folders")
    files_per_class, skipped = [], []
    for name in chosen:
        # a dangling link is kept: the study names it with every other unreadable image
        entries = [p for p in (folder / name).rglob("*") if not p.is_dir()]
        files = sorted(p for p in entries if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise KerablError(f"no images in class folder {folder / name}: add images "
                              f"({', '.join(IMAGE_SUFFIXES)}) or remove the folder")
        files_per_class.append(files)
        skipped += sorted(p for p in entries if p.suffix.lower() not in IMAGE_SUFFIXES)
    return from_classes("class-folders", folder, [index[c] for c in chosen], chosen,
                        files_per_class, skipped)


def check_outputs(imageset: ImageSet, n_outputs: int, expected: int | None, model: str) -> None:
    """Refuse a model whose output count does not fit the image set's classes.

    Example:
        check_outputs(folder_imageset("flowers"), 5, expected=5, model="flowers")   # fine

    Args:
        imageset: the study's images.
        n_outputs: the model's class-score count.
        expected: the count the images' labelling implies (sorted class folders: their number;
            ImageNet layouts: 1000), or None when only the indices must fit (a class index).
        model: the model's name, for the message.
    """
    if expected is not None and n_outputs != expected:
        raise KerablError(f"model {model} has {n_outputs} outputs but the images are labelled "
                          f"for {expected} classes: pass a model with {expected} outputs, or "
                          "--class-index FILE.json mapping each folder to its output index")
    top = max(imageset.classes)
    if top >= n_outputs:
        raise KerablError(f"class {imageset.class_names[imageset.classes.index(top)]} has output "
                          f"index {top} but model {model} has {n_outputs} outputs: fix the "
                          "class index or pass the model trained on these classes")


def study_imageset(model: str, images: Path | None, classes: str | None,
                   class_index: Path | None = None) -> tuple[ImageSet, int | None]:
    """The image set of a study of `model` and the output count its labels imply (None: only
    the indices must fit): the digits for the demo without `images`; else the paper's layout,
    synset folders or class folders. `classes` (comma-separated, or a class set of the paper's
    layout) defaults to `data.default_classes(model)`.

    Example:
        imageset, n_outputs = study_imageset("demo", None, None)       # the digits, 10
        study_imageset("alexnet", Path("imagenet-val-hayne50"), None)  # hayne50, 1000
    """
    if class_index is not None and images is None:
        raise KerablError("--class-index applies to class folders: pass --images DIR too")
    if images is None:
        if model != "demo":
            raise KerablError(f"--images is required for {model}: pass the ImageNet "
                              "validation folder (paper layout or synset folders) or class "
                              "folders")
        if classes:
            raise KerablError("--classes applies to ImageNet images; the demo uses all 10 digits")
        return digits_imageset(), 10
    if not images.is_dir():
        raise KerablError(f"image folder {images} does not exist: pass an existing folder")
    chosen = classes or default_classes(model)
    listed = None if classes is None else classes.split(",")
    if class_index is None and is_paper_layout(images):
        listed = chosen if chosen in PAPER_CLASS_SETS else chosen.split(",")
        return paper_imageset(images, classes=listed), 1000
    if class_index is None and is_synset_layout(images):
        return synset_imageset(images, classes=listed), 1000
    imageset = folder_imageset(images, classes=listed, class_index=class_index)
    return imageset, None if class_index else len(class_folders(images))


def with_other_pool(imageset: ImageSet, images: Path | None, model: str,
                    class_index: Path | None = None) -> tuple[ImageSet, str]:
    """The study's classes with every image of the folder in the set, as the "other" pool of
    `HConfig(other_images="all")`: every listed class of the paper layout, every synset or class
    folder; and the line that says so. The demo's digits (`images` None) are returned as they are.

    Example:
        pool, note = with_other_pool(hayne10, Path("imagenet-val-hayne50"), "mobilenet_v2")
        note   # "other images: every image of imagenet-val-hayne50 not of the target class ..."
    """
    if images is None:          # the demo digits: every class is studied already
        return imageset, "other images: every image of the digits not of the target class"
    if class_index is None and is_paper_layout(images):   # the listed classes it holds
        pool = paper_imageset(images, classes="hayne50", drop_empty=True)
    else:
        pool, _ = study_imageset(model, images, None, class_index)
    chosen = pool.studying(imageset.classes)
    return chosen, (f"other images: every image of {images} not of the target class "
                    f"({len(chosen)} images, {len(pool.classes)} classes)")
