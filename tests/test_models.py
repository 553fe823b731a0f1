"""Tests of kerabl.models: architectures, random weights, weight files and the demo model."""

from __future__ import annotations

import h5py
import keras
import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from kerabl import models, weightfiles
from kerabl.errors import KerablError
from kerabl.models import (
    LocalResponseNormalization, alexnet_model, build_model, default_targets, demo_model,
    load_network, paper_targets)
from kerabl.weightfiles import (
    randomize_weights, read_manifest, save_heuritech_weights, weights_digest, weights_dir)


def one_line_error(match: str, call, *args, **kwargs) -> str:
    """Run `call`, expect a one-line KerablError containing `match`, return its text."""
    with pytest.raises(KerablError, match=match) as info:
        call(*args, **kwargs)
    text = str(info.value)
    assert "\n" not in text
    return text


@pytest.fixture(scope="module")
def alexnet_file(tmp_path_factory):
    """A heuritech-layout file written from a random Keras AlexNet, and that model."""
    model = randomize_weights(alexnet_model(), seed=5)
    path = save_heuritech_weights(model, tmp_path_factory.mktemp("alex") / "alexnet_weights.h5")
    return path, model


@pytest.fixture(scope="module")
def alexnet_network(alexnet_file):
    """That file loaded through `load_network` into a fresh AlexNet."""
    path, _ = alexnet_file
    return load_network("alexnet", path)


@pytest.fixture(scope="module")
def alexnet_loaded(alexnet_network):
    return alexnet_network.model


# --- architectures and targets ---------------------------------------------------------------

@pytest.mark.parametrize("name, n_targets, first, last", [
    ("alexnet", 7, "conv_1", "dense_2"),
    ("vgg16", 15, "block1_conv1", "fc2"),
    ("mobilenet_v2", 17, "expanded_conv_project_BN", "block_16_project_BN"),
    ("resnet101", 33, "conv2_block1_out", "conv5_block3_out"),
    ("demo", 7, "conv_1", "dense_2"),
])
def test_every_network_builds_with_random_weights(name, n_targets, first, last):
    net = load_network(name, weights=None, seed=2)
    names = {layer.name for layer in net.model.layers}
    assert net.weights_id == ("random-he:2" if name == "mobilenet_v2" else "random:2")
    assert len(net.targets) == n_targets and (net.targets[0], net.targets[-1]) == (first, last)
    assert set(net.targets) <= names
    assert net.model.output.shape == (None, net.n_classes)
    assert tuple(net.model.input.shape[1:3]) == net.input_size
    assert net.model.layers[-1].get_config()["activation"] == "softmax"


def test_alexnet_output_sizes(alexnet_loaded):
    model = alexnet_loaded
    shapes = {name: tuple(model.get_layer(name).output.shape[1:])
              for name in ("conv_1", "conv_2", "conv_3", "conv_4", "conv_5", "flatten")}
    assert shapes == {"conv_1": (55, 55, 96), "conv_2": (27, 27, 256), "conv_3": (13, 13, 384),
                      "conv_4": (13, 13, 384), "conv_5": (13, 13, 256), "flatten": (9216,)}
    assert model.get_layer("conv_2").kernel.shape == (5, 5, 48, 256)
    elements = sum(int(np.prod(shape)) for name, shape in shapes.items() if name != "flatten")
    assert elements + 2 * 4096 == 658_272  # the authors' unit vector per image


def test_mobilenet_targets_and_the_authors_set(alexnet_loaded):
    model = build_model("mobilenet_v2", alpha=0.35)
    blocks = default_targets("mobilenet_v2", model)
    assert blocks[:4] == ("expanded_conv_project_BN", "block_1_project_BN", "block_2_add",
                          "block_3_project_BN")
    paper = paper_targets("mobilenet_v2", model)
    assert len(paper) == 104
    assert sum(int(np.prod(model.get_layer(n).output.shape[1:])) for n in paper) == 5_725_552
    assert paper_targets("alexnet", alexnet_loaded) == models.ALEXNET_TARGETS


def test_demo_variants_keep_relu_targets():
    bn = demo_model(batch_norm=True)
    assert isinstance(bn.get_layer("conv_3"), keras.layers.Activation)
    assert isinstance(bn.get_layer("conv_3_bn"), keras.layers.BatchNormalization)
    assert bn.get_layer("conv_3_conv").get_config()["activation"] == "linear"
    drop = demo_model(channel_dropout=0.2)
    assert sum(isinstance(layer, keras.layers.SpatialDropout2D) for layer in drop.layers) == 5
    plain = demo_model()
    assert all(plain.get_layer(n).get_config()["activation"] == "relu"
               for n in models.DEMO_TARGETS)
    one_line_error("channel_dropout", demo_model, channel_dropout=1.5)


def test_bad_name_and_alpha():
    one_line_error("unknown model 'resnet50'", load_network, "resnet50", None)
    one_line_error("alpha=0.6", load_network, "mobilenet_v2", None, alpha=0.6)


# --- random weights --------------------------------------------------------------------------

def test_random_weights_deterministic_in_seed():
    a, b, c = (randomize_weights(demo_model(), seed) for seed in (7, 7, 8))
    for va, vb, vc in zip(a.weights, b.weights, c.weights):
        np.testing.assert_array_equal(va.numpy(), vb.numpy())
        if va.name == "kernel":
            assert not np.array_equal(va.numpy(), vc.numpy())
    x = np.linspace(0, 1, 2 * 32 * 32 * 3, dtype="float32").reshape(2, 32, 32, 3)
    np.testing.assert_array_equal(a.predict_on_batch(x), b.predict_on_batch(x))


def test_random_weights_follow_the_stated_recipe():
    model = randomize_weights(build_model("mobilenet_v2", alpha=0.35), seed=0)
    by_kind = {}
    for v in model.weights:
        by_kind.setdefault(v.name, []).append(v.numpy())
    assert all(np.all(w == 1) for w in by_kind["gamma"] + by_kind["moving_variance"])
    assert all(np.all(w == 0) for w in by_kind["beta"] + by_kind["moving_mean"])
    depthwise = model.get_layer("block_1_depthwise").weights[0].numpy()
    assert depthwise.shape == (3, 3, 48, 1)
    limit = np.sqrt(6 / (9 * 48 + 9 * 1))  # fans from the kernel shape, as Keras computes them
    assert np.abs(depthwise).max() <= limit and np.abs(depthwise).max() > 0.8 * limit
    w = weightfiles.glorot_uniform((100, 50), np.random.default_rng(0))
    assert w.dtype == np.float32 and abs(w.max() - np.sqrt(6 / 150)) < 0.01


@pytest.mark.slow
def test_random_mobilenet_is_a_live_network():
    """He-uniform kernels from the true fan-in: outputs vary across images (Glorot: all 0.001)."""
    net = load_network("mobilenet_v2", weights=None, seed=0)
    depthwise = net.model.get_layer("block_1_depthwise").weights[0].numpy()
    assert np.abs(depthwise).max() <= np.sqrt(6 / 9) and np.abs(depthwise).max() > 0.8 * np.sqrt(6 / 9)
    x = np.random.default_rng(0).uniform(-1, 1, (4, 224, 224, 3)).astype("float32")
    p = net.model.predict_on_batch(x)
    assert p.std(axis=0).max() > 1e-3 and p.max() > 0.01
    glorot = randomize_weights(build_model("mobilenet_v2", alpha=0.35), seed=0)
    assert glorot.predict_on_batch(x).std(axis=0).max() < 1e-6   # why mobilenet_v2 scales by fan-in


# --- LRN -------------------------------------------------------------------------------------

def test_lrn_matches_the_heuritech_formula():
    x = np.random.default_rng(0).uniform(0, 30, (2, 3, 3, 9)).astype("float32")
    squares = np.pad(x**2, ((0, 0), (0, 0), (0, 0), (2, 2)))
    window = sum(squares[..., i:i + 9] for i in range(5))
    expected = x / (2 + 1e-4 * window) ** 0.75
    np.testing.assert_allclose(LocalResponseNormalization()(x), expected, rtol=1e-5)
    ones = np.asarray(LocalResponseNormalization()(np.ones((1, 1, 1, 9), "float32")))[0, 0, 0]
    assert ones[4] == pytest.approx(0.5944921, rel=1e-6)  # 1 / (2 + 5e-4) ** 0.75
    assert ones[0] == pytest.approx(0.5945367, rel=1e-6)  # 1 / (2 + 3e-4) ** 0.75
    assert LocalResponseNormalization.from_config(
        LocalResponseNormalization(beta=0.5).get_config()).beta == 0.5


# --- heuritech AlexNet weights ---------------------------------------------------------------

def test_heuritech_file_layout(alexnet_file):
    path, _ = alexnet_file
    with h5py.File(path, "r") as f:
        assert sorted(f) == sorted(weightfiles.HEURITECH_LAYERS)
        assert f["conv_2_1"]["conv_2_1_W"].shape == (128, 48, 5, 5)
        assert f["conv_4_2"]["conv_4_2_b"].shape == (192,)
        assert f["dense_1"]["dense_1_W"].shape == (9216, 4096)


def test_heuritech_round_trip(alexnet_file, alexnet_loaded):
    _, original = alexnet_file
    x = np.random.default_rng(1).uniform(0, 255, (2, 227, 227, 3)).astype("float32")
    np.testing.assert_allclose(alexnet_loaded.predict_on_batch(x), original.predict_on_batch(x),
                               rtol=1e-5, atol=1e-7)
    for a, b in zip(alexnet_loaded.weights, original.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def true_convolution(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Valid 2-D convolution as Theano's conv2d does it: x (C, H, W), w (O, C, kh, kw)."""
    windows = sliding_window_view(x, w.shape[2:], axis=(1, 2))  # (C, H', W', kh, kw)
    return np.einsum("cyxij,ocij->oyx", windows, w[:, :, ::-1, ::-1])


@pytest.mark.parametrize("layer, groups, channels", [("conv_2", ("conv_2_1", "conv_2_2"), 96),
                                                     ("conv_3", ("conv_3",), 256)])
def test_theano_kernels_are_flipped(alexnet_file, alexnet_loaded, layer, groups, channels):
    path, _ = alexnet_file
    x = np.random.default_rng(2).normal(size=(channels, 7, 8)).astype("float32")
    with h5py.File(path, "r") as f:
        parts = np.array_split(x, len(groups))
        reference = np.concatenate(
            [true_convolution(part, f[g][f"{g}_W"][()]) + f[g][f"{g}_b"][()][:, None, None]
             for part, g in zip(parts, groups)])
    out = np.asarray(alexnet_loaded.get_layer(layer)(x.transpose(1, 2, 0)[None]))[0]
    np.testing.assert_allclose(out.transpose(2, 0, 1), np.maximum(reference, 0), atol=1e-4)


def test_dense_1_rows_are_chw_in_the_file():
    rows = np.arange(9216, dtype="float32")[:, None]  # file row r = c * 36 + h * 6 + w
    kernel = weightfiles._file_to_keras("dense_1", rows)
    h, w, c = 2, 5, 100  # Keras flattens (h, w, c): row h * 6 * 256 + w * 256 + c
    assert kernel[h * 6 * 256 + w * 256 + c, 0] == c * 36 + h * 6 + w
    np.testing.assert_array_equal(weightfiles._keras_to_file("dense_1", kernel), rows)
    assert weightfiles._file_to_keras("dense_2", rows[:5]).tolist() == rows[:5].tolist()


def test_alexnet_through_load_network(alexnet_file, alexnet_network):
    path, _ = alexnet_file
    assert alexnet_network.weights_id == weights_digest(path)
    assert (alexnet_network.preprocess, alexnet_network.input_size) == ("paper", (227, 227))
    assert alexnet_network.targets == models.ALEXNET_TARGETS


# --- weight files ----------------------------------------------------------------------------

def test_demo_default_weights_reach_95_percent():
    from kerabl.data import digits_split

    net = load_network("demo")
    _, _, x_test, y_test = digits_split()
    accuracy = np.mean(net.model.predict(x_test, verbose=0).argmax(1) == y_test)
    assert accuracy >= 0.95
    assert net.weights_id == "sha256:" + read_manifest()["demo.weights.h5"]["sha256"]
    assert (weights_dir() / "demo.weights.h5").is_file()


def test_missing_weights_file(tmp_path):
    one_line_error("nothing.h5 does not exist", load_network, "demo", tmp_path / "nothing.h5")


def test_not_hdf5(tmp_path):
    path = tmp_path / "notes.weights.h5"
    path.write_text("not weights")
    one_line_error("notes.weights.h5 is not an HDF5 file", load_network, "demo", path)


def test_wrong_architecture(tmp_path):
    other = tmp_path / "bn.weights.h5"
    randomize_weights(demo_model(batch_norm=True), seed=0).save_weights(other)
    one_line_error("does not fit the demo", load_network, "demo", other)
    one_line_error("not the heuritech alexnet_weights.h5", load_network, "alexnet", other)
    one_line_error("does not fit the mobilenet", weightfiles.load_weights_file, "mobilenet_v2",
                   build_model("mobilenet_v2", alpha=0.35), other)


def test_keras_error_becomes_one_line(tmp_path):
    bigger = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4), keras.layers.Dense(2)])
    smaller = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4)])
    smaller.save_weights(tmp_path / "small.weights.h5")
    one_line_error("does not fit", weightfiles.load_weights_file, "demo", bigger,
                   tmp_path / "small.weights.h5")


def test_hash_mismatch(tmp_path):
    fake = tmp_path / "demo.weights.h5"
    randomize_weights(demo_model(), seed=1).save_weights(fake)
    text = one_line_error("sha256", load_network, "demo", fake)
    assert weights_digest(fake).removeprefix("sha256:") in text
    assert read_manifest()["demo.weights.h5"]["sha256"] in text
    vgg = tmp_path / "vgg16_weights_tf_dim_ordering_tf_kernels.h5"
    vgg.write_bytes(b"x")
    one_line_error("md5 9dd4e461268c8034f5c8564e155c67a6, expected 64373286793e",
                   load_network, "vgg16", vgg)


def test_alexnet_has_no_default():
    one_line_error("alexnet_weights.h5.*heuritech", load_network, "alexnet")


def test_keras_default_without_internet(monkeypatch):
    def offline(*args, **kwargs):
        raise Exception("URL fetch failure: no internet")

    monkeypatch.setattr(keras.utils, "get_file", offline)
    text = one_line_error("--weights PATH", load_network, "mobilenet_v2", alpha=0.5)
    assert "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.5_224.h5" in text
