"""Reading and preprocessing images: decoding files as RGB, and the recipes that resize and
normalise them as a network expects.

- `load_image(path)`: one file as uint8 RGB (Pillow); `load_image_cv2(path)`: as the authors'
  AlexNet code reads it (OpenCV, for the "paper" recipe).
- `preprocess_images(images, size, preprocess)`: resize and normalise a batch;
  `PREPROCESS` names the recipes, `check_preprocess(name)` validates one (any keras.applications
  name works too).
- `BATCH_STEPS`: the recipes that follow a direct resize; `RESIZE_FILTERS`: recipes whose resize
  is not Pillow's bilinear; `IMAGE_SUFFIXES`: the file suffixes read as images.

The image sets that feed these are in `kerabl.data`.

Example:
    batch = preprocess_images([load_image("cat.jpg")], (227, 227), "paper")   # (1, 227, 227, 3)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from kerabl.errors import KerablError


HEURITECH_RESIZE = 256
HEURITECH_MEAN_RGB = (123.68, 116.779, 103.939)


def _imagenet_mode(mode: str):
    def step(batch: np.ndarray) -> np.ndarray:
        from keras.applications import imagenet_utils
        return imagenet_utils.preprocess_input(batch, mode=mode)
    return step


def _application_step(module: str):
    def step(batch: np.ndarray) -> np.ndarray:
        import importlib
        return importlib.import_module(f"keras.applications.{module}").preprocess_input(batch)
    return step


# The recipes that follow a direct resize: name -> step on a float32 RGB 0..255 batch. A new
# recipe of this kind is one entry here; any keras.applications name also works (its own step).
BATCH_STEPS = {
    "scale": lambda batch: batch / np.float32(255.0),
    "caffe": _imagenet_mode("caffe"), "tf": _imagenet_mode("tf"), "torch": _imagenet_mode("torch"),
    "vgg16": _application_step("vgg16"), "resnet101": _application_step("resnet"),
    "mobilenet_v2": _application_step("mobilenet_v2"),
    "mobilenet_v2_authors": _imagenet_mode("tf")}
PREPROCESS = ("paper", "heuritech", "torchvision", "torchvision232", "efficientnet_lite",
              "centre_crop", *BATCH_STEPS, "none")
# Every recipe in a few words, for the note `kerabl study` prints for a model file
RECIPE_SUMMARY = {
    "none": "direct resize, RGB 0..255",
    "centre_crop": "centre crop 0.875 of the shorter side, bicubic, RGB 0..255: for a model "
                   "that normalises its own 0..255 input",
    "efficientnet_lite": "that crop, then (x - 127) / 128",
    "torchvision": "shorter side 256, centre crop, ImageNet mean/std",
    "torchvision232": "shorter side 232, centre crop, ImageNet mean/std",
    "heuritech": "256 x 256, centre crop, RGB mean subtracted",
    "paper": "OpenCV resize, BGR 0..255",
    "scale": "/255", "caffe": "BGR, mean subtracted", "tf": "to [-1, 1]", "torch": "/255, mean/std",
    "vgg16": "caffe", "resnet101": "caffe", "mobilenet_v2": "to [-1, 1]",
    "mobilenet_v2_authors": "bicubic, to [-1, 1]"}
RECIPES_NOTE = ", ".join(f"{name} ({words})" for name, words in RECIPE_SUMMARY.items()) + \
    ", or a keras.applications name (resnet50, ...)"
# Recipes whose direct resize is not Pillow's bilinear: name -> Pillow filter. The authors'
# MobileNetV2 scripts (Python 3, for a 2022 paper) call `Image.resize(size)` without a filter,
# taken as Pillow >= 7.0 (January 2020, the first release without Python 2), whose default for RGB
# images is BICUBIC; Pillow < 7.0 defaulted to NEAREST.
RESIZE_FILTERS = {"mobilenet_v2_authors": "BICUBIC"}


def _batch_step(preprocess: str):
    """The step after the resize of `preprocess` (a BATCH_STEPS or keras.applications name)."""
    if preprocess in BATCH_STEPS:
        return BATCH_STEPS[preprocess]
    if preprocess in PREPROCESS:
        return None
    from kerabl.networks import application_preprocess  # loads TensorFlow: on first use

    return application_preprocess(preprocess)
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".bmp", ".ppm", ".tif", ".tiff", ".webp")


def load_image(path: str | Path) -> np.ndarray:
    """Decode one image file as uint8 RGB, (H, W, 3); greyscale, CMYK and palette become RGB.

    A 16-bit image (greyscale or RGB PNG, 16-bit TIFF) is decoded at full depth and scaled to 8
    bits by its high byte (value // 256, as `tf.image.convert_image_dtype` does).

    Example:
        image = load_image("images/ILSVRC2012_val_00000011.JPEG")
        image.shape, image.dtype  # ((256, 341, 3), dtype('uint8'))

    Raises:
        KerablError: the file is missing, unreadable or not a decodable image, or its pixels are
            32-bit integers or floats (no 8-bit scale to assume).
    """
    from PIL import Image

    try:
        with Image.open(path) as image:
            if image.mode.startswith("I;16"):
                grey = (np.asarray(image).astype(np.uint16) >> 8).astype(np.uint8)
                return np.repeat(grey[..., None], 3, axis=-1)
            if image.mode in ("I", "F"):
                raise KerablError(f"cannot read image {path}: its pixels are 32-bit "
                                  f"{'integers' if image.mode == 'I' else 'floats'}; convert it to "
                                  "an 8- or 16-bit image")
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise KerablError(f"cannot read image {path}: {err}; replace or remove the file") from None


def image_problem(path: str | Path, preprocess: str = "scale") -> str | None:
    """Why `path` cannot be read as the recipe `preprocess` reads it ("paper": OpenCV, else
    Pillow), or None when it decodes: the whole file is decoded, so a truncated one is found.

    Example:
        image_problem("flowers/rose/1.jpg")      # None
        image_problem("flowers/rose/empty.jpg")  # "cannot identify image file ..."
    """
    path = Path(path)
    if path.is_symlink() and not path.exists():
        return f"a link to {os.readlink(path)}, which does not exist"
    try:
        (load_image_cv2 if preprocess == "paper" else load_image)(path)
    except KerablError as error:
        reason = str(error).removeprefix(f"cannot read image {path}")
        reason = reason.split("; replace or remove")[0]
        return reason.replace(f" '{path}'", "").strip(" :;") or "cannot be decoded"
    return None


def load_image_cv2(path: str | Path) -> np.ndarray:
    """Decode one image file as the authors did, `cv2.imread(path)` (BGR), returned as uint8 RGB.

    Example:
        image = load_image_cv2("images/ILSVRC2012_val_00000011.JPEG")   # (256, 341, 3) RGB

    Raises:
        KerablError: the file is missing or OpenCV cannot decode it.
    """
    import cv2

    image = cv2.imread(str(path)) if Path(path).is_file() else None
    if image is None:
        raise KerablError(f"cannot read image {path}: OpenCV cannot decode it; replace or "
                          "remove the file")
    return np.ascontiguousarray(image[..., ::-1])


def _cv2_resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """`cv2.resize(image, (w, h))` as the authors call it (bilinear, no antialiasing), float32."""
    import cv2

    h, w = size
    return cv2.resize(np.ascontiguousarray(image), (w, h)).astype(np.float32)


def _resize(image: np.ndarray, size: tuple[int, int], resample: str = "BILINEAR") -> np.ndarray:
    """Pillow resize (bilinear unless `resample` names another filter) of a uint8 RGB image to
    `size` = (h, w), as float32."""
    from PIL import Image

    h, w = size
    if image.shape[:2] == (h, w):
        return image.astype(np.float32)
    resized = Image.fromarray(image).resize((w, h), getattr(Image.Resampling, resample))
    return np.asarray(resized, dtype=np.float32)


def _centre_crop(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The central `size` = (h, w) window, offsets (H - h) // 2 as convnets-keras crops."""
    h, w = size
    top, left = (image.shape[0] - h) // 2, (image.shape[1] - w) // 2
    return image[top:top + h, left:left + w]


def _preprocess_one(image: np.ndarray, size: tuple[int, int], preprocess: str) -> np.ndarray:
    """One uint8 RGB image -> float32 (h, w, 3) network input (no keras-application step)."""
    if preprocess == "paper":
        return _cv2_resize(image, size)[..., ::-1]
    if preprocess == "heuritech":
        if min(size) > HEURITECH_RESIZE:
            raise KerablError(f"heuritech preprocessing crops from {HEURITECH_RESIZE} px: size "
                              f"{size} is larger; use 'paper' or a size of at most 256")
        square = _resize(image, (HEURITECH_RESIZE, HEURITECH_RESIZE))
        return _centre_crop(square, size) - np.asarray(HEURITECH_MEAN_RGB, dtype=np.float32)
    if preprocess in TORCHVISION_RESIZES:
        return _torchvision_one(image, size, TORCHVISION_RESIZES[preprocess])
    if preprocess == "centre_crop":
        return _crop_bicubic(image, size)
    if preprocess == "efficientnet_lite":
        return (_crop_bicubic(image, size) - LITE_MEAN) / LITE_STD
    return _resize(image, size, RESIZE_FILTERS.get(preprocess, "BILINEAR"))


CROP_PADDING = 32   # the official EfficientNet eval crop: size / (size + 32) of the shorter side
LITE_MEAN, LITE_STD = np.float32(127.0), np.float32(128.0)


def _crop_bicubic(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The official EfficientNet(-Lite) eval geometry: a centred square of size / (size + 32) of
    the shorter side (0.875 at 224; offsets (H - crop + 1) // 2 as TensorFlow's), resized to
    `size` by Pillow's bicubic filter; values stay 0..255 (float32)."""
    h, w = image.shape[:2]
    crop = int(size[0] / (size[0] + CROP_PADDING) * min(h, w))
    top, left = (h - crop + 1) // 2, (w - crop + 1) // 2
    return _resize(np.ascontiguousarray(image[top:top + crop, left:left + crop]), size, "BICUBIC")


TORCHVISION_RESIZE = 256
# The torchvision recipes: name -> shorter side before the centre crop. "torchvision" is
# `ImageClassification(crop_size=224)` (resize 256: AlexNet, ResNet50 V1, ViT_B_16 V1);
# "torchvision232" is `ResNet50_Weights.IMAGENET1K_V2.transforms()` (resize 232).
TORCHVISION_RESIZES = {"torchvision": TORCHVISION_RESIZE, "torchvision232": 232}
TORCHVISION_MEAN = (0.485, 0.456, 0.406)
TORCHVISION_STD = (0.229, 0.224, 0.225)


def _torchvision_one(image: np.ndarray, size: tuple[int, int],
                     short: int = TORCHVISION_RESIZE) -> np.ndarray:
    """torchvision's ImageNet eval transform: Resize(short) (shorter side, Pillow bilinear),
    CenterCrop(size) (offsets int(round((H - h) / 2))), ToTensor (/ 255), Normalize(mean, std)."""
    if max(size) > short:
        raise KerablError(f"torchvision preprocessing crops from {short} px: size "
                          f"{size} is larger; use a size of at most {short}")
    h, w = image.shape[:2]
    resized = _resize(image, (short, int(short * w / h)) if h <= w else (int(short * h / w), short))
    top = int(round((resized.shape[0] - size[0]) / 2.0))
    left = int(round((resized.shape[1] - size[1]) / 2.0))
    crop = resized[top:top + size[0], left:left + size[1]] / np.float32(255)
    mean = np.asarray(TORCHVISION_MEAN, np.float32)
    return (crop - mean) / np.asarray(TORCHVISION_STD, np.float32)


def check_preprocess(preprocess: str) -> None:
    """Raise KerablError unless `preprocess` names a recipe of `PREPROCESS`.

    Example:
        check_preprocess("paper")      # fine
        check_preprocess("imagenet")   # KerablError listing the recipes
    """
    if preprocess not in PREPROCESS and _batch_step(preprocess) is None:
        raise KerablError(f"unknown preprocessing {preprocess!r}: choose one of "
                          f"{', '.join(PREPROCESS)} or a keras.applications name (resnet50)")


def preprocess_images(images: np.ndarray | Sequence[np.ndarray], size: Sequence[int],
                      preprocess: str) -> np.ndarray:
    """Resize and normalise images as a network expects: float32 (N, h, w, 3).

    Example:
        batch = preprocess_images([load_image(p) for p in paths], (227, 227), "paper")
        batch.shape  # (len(paths), 227, 227, 3), BGR, values 0..255

    Recipes (`PREPROCESS`); every resize is Pillow's bilinear resize to `size` = (h, w), no
    aspect-ratio keeping, except "paper" and "mobilenet_v2_authors":

    - "paper": the authors' AlexNet code (`cv2.imread` then `cv2.resize`): OpenCV's own
      bilinear resize (no antialiasing; Pillow's bilinear widens its support when shrinking,
      a different filter), values 0..255 as float, channel order BGR, no crop, no mean
      subtraction. Image sets decode its files with `cv2.imread` (`load_image_cv2`).
    - "heuritech": the convnets-keras `preprocess_image_batch` recipe: resize to 256 x 256,
      subtract the RGB mean [123.68, 116.779, 103.939], centre crop `size` (227 x 227:
      rows and columns 14..240), channel order RGB (its default `color_mode="rgb"`).
    - "vgg16", "resnet101", "mobilenet_v2", or any keras.applications name (resnet50,
      efficientnetb0, ...): direct resize, then that application's `preprocess_input`.
    - "mobilenet_v2_authors": the authors' MobileNetV2 scripts: Pillow's default `Image.resize`
      filter, BICUBIC for RGB images since Pillow 7.0 (their code is Python 3; `RESIZE_FILTERS`),
      then `preprocess_input(mode='tf')` (x / 127.5 - 1). Files are converted to RGB first (the
      same pixels for RGB and greyscale files).
    - "scale" (/255), "caffe" (BGR, ImageNet mean subtracted), "tf" (to [-1, 1]), "torch"
      (/255, ImageNet mean and std): direct resize, then that step (`BATCH_STEPS`).
    - "efficientnet_lite": the official EfficientNet-Lite eval recipe: a centred square crop of
      size / (size + 32) of the shorter side (0.875 at 224), Pillow's bicubic resize to `size`,
      then (x - 127) / 128, RGB: the efficientnet_lite zoo entries' default.
    - "centre_crop": the same crop and bicubic resize, values left at RGB 0..255: for a model
      that normalises its own 0..255 input (a `.keras` Lite with its normalisation inside)
      without the aspect-ratio distortion of a direct resize.
    - "torchvision": torchvision's ImageNet eval transform: shorter side resized to 256 (aspect
      kept), centre crop `size`, RGB / 255, minus mean (0.485, 0.456, 0.406), over std
      (0.229, 0.224, 0.225): the torchvision models' default (and `ViT_B_16_Weights.
      IMAGENET1K_V1.transforms()`, the recipe of the authors' ResNet activations).
    - "torchvision232": the same with the shorter side resized to 232:
      `ResNet50_Weights.IMAGENET1K_V2.transforms()` (the authors' ResNet baseline and ablations).
    - "none": no normalisation: in-memory images are network inputs, only checked and stacked;
      decoded files (uint8) are resized to `size`, RGB 0..255.

    Args:
        images: uint8 RGB images, a (N, H, W, 3) array or a list of (H_i, W_i, 3) arrays
            (float arrays for "none").
        size: (h, w) of the network input.
        preprocess: one of `PREPROCESS`.

    Raises:
        KerablError: unknown recipe, or images that are not (H, W, 3) / do not match `size`
            for "none".
    """
    check_preprocess(preprocess)
    size = (int(size[0]), int(size[1]))
    images = list(images)
    for image in images:
        if np.ndim(image) != 3 or np.shape(image)[-1] != 3:
            raise KerablError(f"images must be (H, W, 3) RGB arrays, got shape {np.shape(image)}; "
                              "decode files with load_image")
    if preprocess == "none":
        if images and all(np.asarray(i).dtype == np.uint8 for i in images):
            return np.stack([_resize(np.asarray(i), size) for i in images])
        if any(np.shape(i)[:2] != size for i in images):
            raise KerablError(f"preprocess 'none' needs images of size {size}: resize them first "
                              "or choose a resizing recipe")
        return np.asarray(images, dtype=np.float32).reshape(len(images), *size, 3)
    batch = np.stack([_preprocess_one(np.asarray(i, dtype=np.uint8), size, preprocess)
                      for i in images]) if images else np.zeros((0, *size, 3), np.float32)
    step = _batch_step(preprocess)
    if step is not None:
        batch = np.asarray(step(batch), dtype=np.float32)
    return np.ascontiguousarray(batch, dtype=np.float32)
