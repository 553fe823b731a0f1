"""Tests of kerabl.graph and kerabl.masks: hand-checked masks, no-leak ablation, no retrace, cut points, tails,
the paper (Lambda) engine and save/load, on tiny models and on the zoo's Keras applications."""

import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from kerabl.errors import KerablError
from kerabl.graph import cut_points, head_model, is_cut_point, tail_extras, tail_model
from kerabl.masks import ablated, chw_to_hwc, hwc_to_chw, lambda_masked_model, masked_model, n_units, unit_mask, UnitMask
from kerabl.models import load_network

X_DENSE = np.array([[1.0, 2.0, 3.0, 1.0]], dtype=np.float32)


def dense_model() -> keras.Model:
    """Input(4) -> hidden Dense(3, relu) -> out Dense(2); on X_DENSE hidden = [2, 3, 3], out = [5.5, 6]."""
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(3, activation="relu", name="hidden")
    out = keras.layers.Dense(2, name="out")
    model = keras.Model(inputs, out(hidden(inputs)), name="tiny_dense")
    hidden.set_weights([np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1]], "float32"),
                        np.array([0, 0, -1], "float32")])
    out.set_weights([np.array([[1, 0], [0, 1], [1, 1]], "float32"), np.array([0.5, 0], "float32")])
    return model


def conv_model() -> keras.Model:
    """Input(3, 3, 1) -> 1x1 conv with channels (x, 2x); the model output is the conv output."""
    inputs = keras.Input((3, 3, 1))
    conv = keras.layers.Conv2D(2, 1, use_bias=False, name="conv")
    model = keras.Model(inputs, conv(inputs), name="tiny_conv")
    conv.set_weights([np.array([1.0, 2.0], "float32").reshape(1, 1, 1, 2)])
    return model


def demo_like(seed: int = 0) -> keras.Model:
    """Two convs, a pool and a softmax head on 8x8x3, random weights from `seed`."""
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv_1")(inputs)
    x = keras.layers.MaxPooling2D(name="pool_1")(x)
    x = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="conv_2")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(5, activation="softmax", name="softmax")(x)
    model = keras.Model(inputs, x, name="demo_like")
    rng = np.random.default_rng(seed)
    model.set_weights([rng.normal(size=w.shape).astype("float32") for w in model.get_weights()])
    return model


def images(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (n, size, size, 3)).astype("float32")


# ----------------------------------------------------------------------------- hand-checked numbers


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("units, expected", [([], [5.5, 6.0]), ([0], [3.5, 6.0]),
                                             ([2], [2.5, 3.0]), ([1, 2], [2.5, 0.0])])
def test_dense_units_give_hand_computed_outputs(units, expected, batch):
    masked = masked_model(dense_model(), ["hidden"])
    x = np.repeat(X_DENSE, batch, axis=0)
    with ablated(masked, {"hidden": units}) as m:
        np.testing.assert_array_equal(m.predict_on_batch(x), np.tile(expected, (batch, 1)))


def test_conv_channel_unit_zeroes_exactly_that_channel():
    masked = masked_model(conv_model(), ["conv"])
    x = np.arange(9, dtype="float32").reshape(1, 3, 3, 1)
    with ablated(masked, {"conv": [1]}, unit="channel"):
        y = masked.predict_on_batch(x)
    np.testing.assert_array_equal(y[..., 0], x[..., 0])
    np.testing.assert_array_equal(y[..., 1], np.zeros((1, 3, 3)))


def test_conv_element_unit_hits_hwc_position():
    masked = masked_model(conv_model(), ["conv"])
    x = np.arange(1, 10, dtype="float32").reshape(1, 3, 3, 1)
    full = np.concatenate([x, 2 * x], axis=-1)
    with ablated(masked, {"conv": [7]}, unit="element"):  # 7 = h 1 * 6 + w 0 * 2 + c 1
        y = masked.predict_on_batch(x)
    assert y[0, 1, 0, 1] == 0.0
    full[0, 1, 0, 1] = 0.0
    np.testing.assert_array_equal(y, full)


def test_n_units_and_unit_mask():
    model = conv_model()
    assert n_units(model, "conv", "element") == 18
    assert n_units(model, "conv", "channel") == 2
    assert n_units(dense_model(), "hidden", "channel") == 3
    mask = unit_mask((2, 2, 3), [4], "element")
    assert mask.dtype == np.float32 and mask.sum() == 11 and mask[0, 1, 1] == 0.0
    mask = unit_mask((2, 2, 3), [0, 2], "channel")
    np.testing.assert_array_equal(mask[..., 1], np.ones((2, 2)))
    assert mask[..., [0, 2]].sum() == 0.0
    np.testing.assert_array_equal(unit_mask((3,), [], "element"), np.ones(3, "float32"))


@pytest.mark.parametrize("call", [
    lambda: unit_mask((2, 2, 3), [12], "element"),
    lambda: unit_mask((2, 2, 3), [-1], "channel"),
    lambda: unit_mask((2, 2, 3), [0.5], "element"),
    lambda: unit_mask((2, 2, 3), [0], "neuron"),
    lambda: n_units(conv_model(), "nope", "element"),
])
def test_bad_units_raise(call):
    with pytest.raises(KerablError):
        call()


def test_chw_hwc_conversion():
    shape = (3, 3, 2)  # (H, W, C)
    assert chw_to_hwc([12], shape).tolist() == [7]  # (c 1, h 1, w 0): 1*9 + 1*3 + 0 -> 1*6 + 0 + 1
    assert hwc_to_chw([7, 1], shape).tolist() == [12, 9]
    hwc = np.arange(18).reshape(shape)
    chw = hwc.transpose(2, 0, 1).reshape(-1)  # value at each CHW position = its HWC index
    np.testing.assert_array_equal(chw_to_hwc(np.arange(18), shape), chw)
    idx = np.random.default_rng(0).permutation(18)[:7]
    np.testing.assert_array_equal(chw_to_hwc(hwc_to_chw(idx, shape), shape), idx)
    assert chw_to_hwc([4], (6,)).tolist() == [4]
    with pytest.raises(KerablError):
        chw_to_hwc([18], shape)


# ----------------------------------------------------------------------------- ablated, masks


def test_unknown_target_lists_valid_names():
    with pytest.raises(KerablError, match="hidden"):
        masked_model(dense_model(), ["hiden"])
    with pytest.raises(KerablError):
        masked_model(dense_model(), [])


def test_ablated_restores_after_exception_and_nests():
    masked = masked_model(dense_model(), ["hidden", "out"])
    with pytest.raises(RuntimeError):
        with ablated(masked, {"hidden": [0, 1, 2], "out": [1]}):
            np.testing.assert_array_equal(masked.predict_on_batch(X_DENSE), [[0.5, 0.0]])
            raise RuntimeError("inside")
    for layer in masked.layers:
        if isinstance(layer, UnitMask):
            np.testing.assert_array_equal(layer.mask.numpy(), np.ones(layer.mask.shape))
    with ablated(masked, {"hidden": [2]}):
        with ablated(masked, {"out": [0]}):
            np.testing.assert_array_equal(masked.predict_on_batch(X_DENSE), [[0.0, 3.0]])
        np.testing.assert_array_equal(masked.predict_on_batch(X_DENSE), [[2.5, 3.0]])
    np.testing.assert_array_equal(masked.predict_on_batch(X_DENSE), [[5.5, 6.0]])


def test_ablated_refuses_bad_layers_and_units_without_touching_masks():
    masked = masked_model(dense_model(), ["hidden"])
    with pytest.raises(KerablError, match="hidden"):
        with ablated(masked, {"out": [0]}):
            pass
    with pytest.raises(KerablError):
        with ablated(masked, {"hidden": [3]}):
            pass
    with pytest.raises(KerablError, match="masked_model"):
        with ablated(dense_model(), {"hidden": [0]}):
            pass
    np.testing.assert_array_equal(masked.get_layer("hidden_mask").mask.numpy(), np.ones(3))


def test_changing_masks_does_not_retrace():
    masked = masked_model(dense_model(), ["hidden"])
    traces = []

    @tf.function
    def run(x):
        traces.append(1)
        return masked(x, training=False)

    x = tf.constant(X_DENSE)
    outputs = [run(x).numpy().tolist()]
    for units in ([0], [2], [1, 2]):
        with ablated(masked, {"hidden": units}):
            outputs.append(run(x).numpy().tolist())
    assert outputs == [[[5.5, 6.0]], [[3.5, 6.0]], [[2.5, 3.0]], [[2.5, 0.0]]]
    assert len(traces) == 1


def test_save_load_safe_mode_keeps_masks(tmp_path):
    masked = masked_model(dense_model(), ["hidden"])
    path = tmp_path / "masked.keras"
    with ablated(masked, {"hidden": [2]}):
        masked.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    assert isinstance(loaded.get_layer("hidden_mask"), UnitMask)
    np.testing.assert_array_equal(loaded.predict_on_batch(X_DENSE), [[2.5, 3.0]])
    with ablated(loaded, {"hidden": [0]}):
        np.testing.assert_array_equal(loaded.predict_on_batch(X_DENSE), [[3.5, 6.0]])
    np.testing.assert_array_equal(loaded.predict_on_batch(X_DENSE), [[2.5, 3.0]])


def test_lambda_engine_equals_ablated_on_demo_like_model():
    model = demo_like()
    x = images(4, 8)
    units = np.random.default_rng(1).choice(n_units(model, "conv_2", "element"), 40, replace=False)
    masked = masked_model(model, ["conv_2"])
    with ablated(masked, {"conv_2": units}):
        fast = masked.predict_on_batch(x)
    paper = lambda_masked_model(model, "conv_2", unit_mask((4, 4, 6), units, "element"))
    assert not np.array_equal(fast, model.predict_on_batch(x))
    np.testing.assert_array_equal(paper.predict_on_batch(x), fast)
    with pytest.raises(KerablError, match="shape"):
        lambda_masked_model(model, "conv_2", np.ones((4, 4, 5), "float32"))


def test_tail_inside_residual_block_of_tiny_model():
    inputs = keras.Input((4,))
    a = keras.layers.Dense(4, name="a")(inputs)
    b = keras.layers.Dense(4, name="b")(a)
    out = keras.layers.Add(name="add")([a, b])
    model = keras.Model(inputs, keras.layers.Dense(2, name="c")(out))
    assert cut_points(model) == ["a", "add", "c"]
    assert tail_extras(model, "b") == ["a"]
    tail = tail_model(model, "b")
    assert tail.kerabl_extra == ("a",) and [t.name for t in tail.inputs] == ["b", "a"]
    x = np.random.default_rng(0).normal(size=(3, 4)).astype("float32")
    np.testing.assert_array_equal(tail.predict_on_batch(head_model(model, "b").predict_on_batch(x)),
                                  model.predict_on_batch(x))


def test_model_input_used_after_a_layer_is_an_extra_tail_input():
    inputs = keras.Input((3,), name="x")
    a = keras.layers.Dense(3, name="a")(inputs)
    cat = keras.layers.Concatenate(name="cat")([inputs, a])
    model = keras.Model(inputs, keras.layers.Dense(2, name="out")(cat))
    assert cut_points(model) == ["cat", "out"]
    assert tail_extras(model, "a") == ["x"]
    x = np.random.default_rng(0).normal(size=(2, 3)).astype("float32")
    np.testing.assert_array_equal(
        tail_model(model, "a").predict_on_batch(head_model(model, "a").predict_on_batch(x)),
        model.predict_on_batch(x))


def test_masked_model_shares_layers_and_takes_sequential():
    model = dense_model()
    masked = masked_model(model, ["hidden"])
    assert masked.get_layer("hidden") is model.get_layer("hidden")
    seq = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="d1"),
                            keras.layers.Dense(2, name="d2")])
    masked_seq = masked_model(seq, ["d1"])
    assert [layer.name for layer in masked_seq.layers[1:]] == ["d1", "d1_mask", "d2"]
    np.testing.assert_array_equal(masked_seq.predict_on_batch(X_DENSE),
                                  seq.predict_on_batch(X_DENSE))
    with pytest.raises(KerablError, match="already has"):
        masked_model(masked, ["hidden"])


# ----------------------------------------------------------------------------- zoo models


@pytest.fixture(scope="module")
def vgg16():
    return load_network("vgg16", weights=None, seed=0)


@pytest.fixture(scope="module")
def resnet101():
    return load_network("resnet101", weights=None, seed=0)


@pytest.fixture(scope="module")
def mobilenet_v2():
    return load_network("mobilenet_v2", weights=None, alpha=0.35, seed=0)


@pytest.fixture(scope="module")
def x224():
    return images(2, 224, seed=3) * 100.0


@pytest.fixture(scope="module")
def vgg_out(vgg16, x224):
    return vgg16.model.predict_on_batch(x224)


@pytest.fixture(scope="module")
def resnet_out(resnet101, x224):
    return resnet101.model.predict_on_batch(x224)


def test_vgg16_masked_equals_original_and_cut_points(vgg16, vgg_out, x224):
    model = vgg16.model
    np.testing.assert_array_equal(masked_model(model, vgg16.targets).predict_on_batch(x224),
                                  vgg_out)
    assert cut_points(model) == [layer.name for layer in model.layers[1:]]


def test_vgg16_tail_and_lambda_engine(vgg16, vgg_out, x224):
    model = vgg16.model
    head, tail = head_model(model, "block3_conv2"), tail_model(model, "block3_conv2")
    assert len(tail.inputs) == 1 and tail.kerabl_extra == ()
    act = head.predict_on_batch(x224)
    np.testing.assert_array_equal(tail.predict_on_batch(act), vgg_out)
    units = np.random.default_rng(2).choice(256, 64, replace=False)
    masked = masked_model(model, ["block3_conv2"])
    with ablated(masked, {"block3_conv2": units}, unit="channel"):
        fast = masked.predict_on_batch(x224)
    paper = lambda_masked_model(model, "block3_conv2", unit_mask(act.shape[1:], units, "channel"))
    np.testing.assert_array_equal(paper.predict_on_batch(x224), fast)


def test_mobilenet_v2_masked_equals_original_and_cut_points(mobilenet_v2, x224):
    model = mobilenet_v2.model
    np.testing.assert_array_equal(
        masked_model(model, mobilenet_v2.targets).predict_on_batch(x224),
        model.predict_on_batch(x224))
    points = set(cut_points(model))
    adds = [layer.name for layer in model.layers if re.fullmatch(r"block_\d+_add", layer.name)]
    assert len(adds) == 10 and set(adds) <= points
    assert "block_1_project_BN" in points
    assert not is_cut_point(model, "block_2_expand_relu")
    assert set(mobilenet_v2.targets) <= points


def test_resnet101_masked_equals_original_and_cut_points(resnet101, resnet_out, x224):
    model = resnet101.model
    np.testing.assert_array_equal(masked_model(model, resnet101.targets).predict_on_batch(x224),
                                  resnet_out)
    points = set(cut_points(model))
    blocks = [layer.name for layer in model.layers
              if re.fullmatch(r"conv\d_block\d+_(add|out)", layer.name)]
    assert len(blocks) == 66 and set(blocks) <= points
    assert not is_cut_point(model, "conv2_block2_1_conv")
    assert not is_cut_point(model, "conv3_block1_0_conv")


@pytest.mark.parametrize("layer, extras", [("conv3_block2_out", ()),
                                           ("conv3_block2_2_relu", ("conv3_block1_out",))])
def test_resnet101_tail_of_head_equals_model(resnet101, resnet_out, x224, layer, extras):
    tail = tail_model(resnet101.model, layer)
    assert tail.kerabl_extra == extras
    parts = head_model(resnet101.model, layer).predict_on_batch(x224)
    np.testing.assert_array_equal(tail.predict_on_batch(parts), resnet_out)
