"""Image sets, decoding, preprocessing recipes and the ImageNet class index."""

import json

import numpy as np
import pytest
from PIL import Image

from kerabl import imagenet
from kerabl.data import (HAYNE8, ImageSet, digits_imageset, digits_split, paper_imageset,
                         synset_imageset)
from kerabl.images import load_image, preprocess_images
from kerabl.errors import KerablError


# ---------------------------------------------------------------------------------------------
# digits

def test_digits_imageset_is_the_demo_test_split():
    digits = digits_imageset()
    _, _, x_test, y_test = digits_split()
    assert len(digits) == 450 and digits.classes == list(range(10))
    assert digits.class_names == [str(d) for d in range(10)]
    np.testing.assert_array_equal(digits.labels, y_test)
    np.testing.assert_array_equal(digits.load((32, 32), "none"), x_test)
    assert digits.name == "digits-test:seed0" and digits.paths is None
    assert len(digits.rows_of(3)) == int((y_test == 3).sum())
    with pytest.raises(KerablError, match="preprocessed images"):
        next(digits.batches((32, 32), "paper"))


def test_imageset_rows_batches_and_subset():
    images = np.arange(5 * 2 * 2 * 3, dtype=np.float32).reshape(5, 2, 2, 3)
    s = ImageSet(name="t", labels=[4, 2, 4, 2, 2], classes=[4, 2], class_names=["d", "b"],
                 images=images)
    np.testing.assert_array_equal(s.rows_of(2), [1, 3, 4])
    batches = list(s.batches((2, 2), "none", batch_size=2, rows=[4, 0, 1]))
    assert [len(b) for b in batches] == [2, 1]
    np.testing.assert_array_equal(np.concatenate(batches), images[[4, 0, 1]])
    sub = s.subset([2])
    assert sub.classes == [2] and sub.class_names == ["b"] and sub.name != s.name
    np.testing.assert_array_equal(sub.load((2, 2), "none"), images[[1, 3, 4]])
    with pytest.raises(KerablError, match="not in image set"):
        s.rows_of(7)
    with pytest.raises(KerablError, match="labels"):
        ImageSet(name="bad", labels=[1], classes=[1], class_names=["a"], images=images)


# ---------------------------------------------------------------------------------------------
# decoding

def test_load_image_converts_grey_and_cmyk_to_rgb(tmp_path):
    grey = np.tile(np.arange(0, 240, 16, dtype=np.uint8), (6, 1))        # (6, 15)
    Image.fromarray(grey, mode="L").save(tmp_path / "grey.jpg", quality=100)
    out = load_image(tmp_path / "grey.jpg")
    assert out.shape == (6, 15, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[..., 0], out[..., 2])
    assert abs(int(out[0, 14, 0]) - 224) <= 3

    Image.new("CMYK", (7, 5), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg", quality=100)
    red = load_image(tmp_path / "cmyk.jpg")
    assert red.shape == (5, 7, 3) and red.dtype == np.uint8
    assert red[2, 3, 0] > 240 and red[2, 3, 1] < 15 and red[2, 3, 2] < 15


def test_corrupt_or_missing_image_names_the_file(tmp_path):
    bad = tmp_path / "broken.JPEG"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(KerablError, match="broken.JPEG"):
        load_image(bad)
    with pytest.raises(KerablError, match="absent.png"):
        load_image(tmp_path / "absent.png")


# ---------------------------------------------------------------------------------------------
# preprocessing

def _rgb(r, g, b, h=3, w=3):
    return np.broadcast_to(np.array([r, g, b], np.uint8), (h, w, 3)).copy()


def test_paper_is_bgr_without_mean_or_crop():
    image = np.array([[[10, 20, 30], [40, 50, 60]], [[70, 80, 90], [100, 110, 120]]], np.uint8)
    out = preprocess_images([image], (2, 2), "paper")
    assert out.dtype == np.float32 and out.shape == (1, 2, 2, 3)
    np.testing.assert_array_equal(out[0, 0, 1], [60, 50, 40])
    np.testing.assert_array_equal(out[0, 1, 0], [90, 80, 70])
    resized = preprocess_images([_rgb(10, 20, 30, 9, 12)], (5, 7), "paper")
    assert resized.shape == (1, 5, 7, 3)
    np.testing.assert_allclose(resized[0], np.broadcast_to([30, 20, 10], (5, 7, 3)))


def test_heuritech_resizes_crops_centre_and_subtracts_rgb_mean():
    rows, cols = np.meshgrid(np.arange(256), np.arange(256), indexing="ij")
    image = np.stack([rows, cols, np.full_like(rows, 100)], axis=-1).astype(np.uint8)
    out = preprocess_images(image[None], (227, 227), "heuritech")[0]
    assert out.shape == (227, 227, 3)
    np.testing.assert_allclose(out[0, 0], [14 - 123.68, 14 - 116.779, 100 - 103.939], atol=1e-4)
    np.testing.assert_allclose(out[226, 5], [240 - 123.68, 19 - 116.779, 100 - 103.939],
                               atol=1e-4)


def test_keras_application_recipes():
    vgg = preprocess_images([_rgb(10, 20, 30)], (4, 4), "vgg16")
    np.testing.assert_allclose(vgg[0, 0, 0], [30 - 103.939, 20 - 116.779, 10 - 123.68],
                               atol=1e-4)
    np.testing.assert_allclose(preprocess_images([_rgb(10, 20, 30)], (4, 4), "resnet101"), vgg)
    mobile = preprocess_images([_rgb(0, 255, 51)], (4, 4), "mobilenet_v2")
    np.testing.assert_allclose(mobile[0, 3, 3], [-1.0, 1.0, -0.6], atol=1e-6)


def test_preprocess_rejects_bad_input():
    with pytest.raises(KerablError, match="unknown preprocessing"):
        preprocess_images([_rgb(1, 2, 3)], (3, 3), "bogus")
    with pytest.raises(KerablError, match="size"):
        preprocess_images([np.zeros((3, 3, 3), np.float32)], (4, 4), "none")
    with pytest.raises(KerablError, match=r"\(H, W, 3\)"):
        preprocess_images([np.zeros((3, 3), np.uint8)], (3, 3), "paper")


# ---------------------------------------------------------------------------------------------
# class index

def test_class_index():
    ids = imagenet.wnids()
    assert len(ids) == 1000 and ids == sorted(ids) and len(set(ids)) == 1000
    assert ids[0] == "n01440764" and imagenet.class_names()[0] == "tench"
    assert imagenet.index_of("n04147183") == 780
    assert imagenet.class_names()[780] == "schooner"
    with pytest.raises(KerablError, match="n99999999"):
        imagenet.index_of("n99999999")


# ---------------------------------------------------------------------------------------------
# synset layout and paper layout errors

def _jpeg(path, colour):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 6), colour).save(path)


def test_synset_layout(tmp_path):
    _jpeg(tmp_path / "n04147183" / "b.JPEG", (200, 0, 0))
    _jpeg(tmp_path / "n04147183" / "a.JPEG", (0, 200, 0))
    _jpeg(tmp_path / "n01440764" / "c.jpg", (0, 0, 200))
    (tmp_path / "notes").mkdir()
    every = synset_imageset(tmp_path)
    assert every.classes == [0, 780] and every.class_names == ["tench", "schooner"]
    np.testing.assert_array_equal(every.labels, [0, 780, 780])
    assert [p.name for p in every.paths] == ["c.jpg", "a.JPEG", "b.JPEG"]
    chosen = synset_imageset(tmp_path, classes=["n04147183", "n01440764"])
    np.testing.assert_array_equal(chosen.labels, [780, 780, 0])
    x = chosen.load((6, 8), "paper")
    assert abs(x[0, 0, 0, 1] - 200) <= 2 and abs(x[2, 0, 0, 0] - 200) <= 2   # BGR
    with pytest.raises(KerablError, match="n01443537"):
        synset_imageset(tmp_path, classes=["n01443537"])
    with pytest.raises(KerablError, match="unknown ImageNet class"):
        synset_imageset(tmp_path, classes=["n00000001"])


def test_paper_layout_missing_files_are_named(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(KerablError, match="ground truth not found"):
        paper_imageset(tmp_path)
    (tmp_path / "ILSVRC2014_clsloc_validation_ground_truth.txt").write_text("1\n2\n")
    with pytest.raises(KerablError, match="meta_clsloc.mat not found"):
        paper_imageset(tmp_path / "images")
    with pytest.raises(KerablError, match="does not exist"):
        paper_imageset(tmp_path / "nowhere")


# ---------------------------------------------------------------------------------------------
# the paper's 2,500 images

@pytest.mark.realdata
def test_paper_layout_hayne50(hayne50):
    images = paper_imageset(hayne50)
    listed = json.loads((hayne50 / "50_classes.json").read_text())
    assert len(images.paths) == 2500 and len(images.classes) == 50
    assert images.class_names == list(listed)
    assert images.classes == [imagenet.index_of(w) for w in listed.values()]
    for name, wnid in listed.items():
        rows = images.rows_of(imagenet.index_of(wnid))
        assert len(rows) == 50
    truth = np.loadtxt(hayne50 / "ILSVRC2014_clsloc_validation_ground_truth.txt", dtype=int)
    meta = imagenet.read_meta_clsloc(hayne50 / "meta_clsloc.mat")
    for path, label in zip(images.paths, images.labels):
        wnid = meta[truth[int(path.stem.split("_")[-1]) - 1]][0]
        assert label == imagenet.index_of(wnid)
    same = paper_imageset(hayne50 / "images")
    assert same.name == images.name and same.paths == images.paths


@pytest.mark.realdata
def test_paper_greyscale_images_load_as_rgb(hayne50):
    images = paper_imageset(hayne50)
    grey = []
    for path in images.paths:
        with Image.open(path) as image:
            if image.mode == "L":
                grey.append(path)
    assert len(grey) == 45
    for path in grey:
        x = load_image(path)
        assert x.ndim == 3 and x.shape[2] == 3 and x.dtype == np.uint8


@pytest.mark.realdata
def test_paper_layout_hayne8(hayne50):
    images = paper_imageset(hayne50, classes="hayne8")
    assert images.class_names == list(HAYNE8) and len(images) == 400
    assert [len(images.rows_of(c)) for c in images.classes] == [50] * 8
    batch = next(images.batches((227, 227), "paper", batch_size=4))
    assert batch.shape == (4, 227, 227, 3) and batch.dtype == np.float32
    assert 0 <= batch.min() and batch.max() <= 255
