"""Zero, mean and resample ablation (kerabl.replacement) in every engine: each equals a literal
recomputation (the whole forward pass in numpy with the layer's output replaced) on a tiny model
with hand-set weights, and the engines agree with each other under each method."""

import keras
import numpy as np
import pytest

from kerabl.engine import PaperAblator, TailAblator, channel_engine
from kerabl.errors import KerablError
from kerabl.masks import cell_masks, keep_masks, lambda_masked_model
from kerabl.replacement import METHODS, Replacement, draw_donors, mean_output

# Four 2x2 one-channel images; the conv gives channels (x, 2x) (relu, no bias).
X = np.array([[[1, 2], [3, 4]], [[0, 1], [1, 0]], [[2, 2], [0, 1]], [[4, 0], [0, 3]]],
             np.float32)[..., None]
W_OUT = np.arange(24, dtype=np.float32).reshape(8, 3) % 5 - 2.0     # flatten (h, w, c) -> 3
B_OUT = np.array([0.5, 0.0, -0.5], np.float32)


def tiny_model() -> keras.Model:
    """Input(2, 2, 1) -> conv (1x1, channels x and 2x) -> flatten -> out Dense(3)."""
    inputs = keras.Input((2, 2, 1))
    conv = keras.layers.Conv2D(2, 1, use_bias=False, activation="relu", name="conv")
    out = keras.layers.Dense(3, name="out")
    model = keras.Model(inputs, out(keras.layers.Flatten(name="flat")(conv(inputs))), name="tiny")
    conv.set_weights([np.array([1.0, 2.0], np.float32).reshape(1, 1, 1, 2)])
    out.set_weights([W_OUT, B_OUT])
    return model


def conv_out(x=X) -> np.ndarray:
    return np.maximum(x * np.array([1.0, 2.0], np.float32), 0)            # (N, 2, 2, 2)


def literal(acts: np.ndarray) -> np.ndarray:
    """The network after the conv, in numpy: (..., 2, 2, 2) -> (..., 3)."""
    return acts.reshape(*acts.shape[:-3], 8) @ W_OUT + B_OUT


def replacement(method: str, per_mask: int = 1) -> Replacement:
    acts = conv_out()
    if method == "zero":
        return Replacement()
    if method == "mean":
        return Replacement("mean", mean=acts.mean(0))
    donors = np.array([[1, 2, 3, 0], [3, 3, 0, 1], [2, 0, 1, 1]])[:per_mask]
    return Replacement("resample", bank=acts, donors=donors)


def test_hand_checked_numbers():
    # image 0's conv output: channel 0 = [[1, 2], [3, 4]], channel 1 twice that; the mean of
    # channel 1 over the four images at (0, 0) is 2 * (1 + 0 + 2 + 4) / 4 = 3.5
    rep = Replacement("mean", mean=conv_out().mean(0))
    keep = np.ones((1, 2, 2, 2), np.float32)
    keep[0, 0, 0, 1] = 0
    replaced = rep.apply(conv_out(), keep)[0, 0]
    assert replaced[0, 0, 1] == 3.5 and replaced[0, 0, 0] == 1.0 and replaced[1, 1, 1] == 8.0
    donor = Replacement("resample", bank=conv_out(), donors=np.array([[3, 0, 0, 0]]))
    assert donor.apply(conv_out(), keep)[0, 0, 0, 0, 1] == 8.0     # image 3's 2 * 4
    assert Replacement().apply(conv_out(), keep)[0, 0, 0, 0, 1] == 0.0


@pytest.mark.parametrize("method", METHODS)
def test_h_engines_equal_literal_recomputation(method):
    model = tiny_model()
    masks = cell_masks((2, 2, 2), [np.array([0, 5]), np.array([3]), np.arange(8)], "element")
    rep = replacement(method, per_mask=3)
    expected = literal(rep.apply(conv_out(), masks))                     # (3 masks, 4, 3)
    outputs = {}
    for name, engine in (("tail", TailAblator(model, "conv")), ("paper", PaperAblator(model, "conv", batch_size=2))):
        engine.set_images(X)
        engine.set_replacement(rep)
        outputs[name] = engine.outputs(masks)
        np.testing.assert_allclose(outputs[name], expected, rtol=1e-6, atol=1e-5)
    labels = np.array([0, 1, 2, 0])
    tail, paper = TailAblator(model, "conv"), PaperAblator(model, "conv", batch_size=3)
    for engine in (tail, paper):
        engine.set_images(X)
        engine.set_replacement(rep)
    np.testing.assert_array_equal(tail.ranks(masks, labels), paper.ranks(masks, labels))


@pytest.mark.parametrize("method", METHODS)
def test_z_channel_engines_and_dense_shortcut_equal_literal(method):
    model = tiny_model()
    keep = keep_masks(2, [[0], [1], [0, 1], []])
    rep = replacement(method)                                         # one donor row for all
    full_keep = np.broadcast_to(keep[:, None, None, :], (4, 2, 2, 2))
    expected = literal(rep.apply(conv_out(), full_keep)).argmax(-1)   # (4 masks, 4 images)
    for engine_name, shortcut in (("tail", True), ("tail", False), ("full", False)):
        eng = channel_engine(model, X, "conv", engine_name, None, shortcut)
        assert (eng.cut is not None) == shortcut if engine_name == "tail" else True
        eng.set_replacement(rep)
        np.testing.assert_array_equal(eng.predict(keep), expected, err_msg=engine_name)
        rows = np.array([3, 1])
        np.testing.assert_array_equal(eng.predict(keep, rows), expected[:, rows])
        # one channel per mask: the Dense shortcut's correction runs (no plain tail)
        single = [0, 1, 3]
        np.testing.assert_array_equal(eng.predict(keep[single], rows), expected[single][:, rows])
        if shortcut:
            assert eng.shortcut_flops > 0


@pytest.mark.parametrize("method", METHODS)
def test_random_direction_takes_the_replacements_coordinate(method):
    model = tiny_model()
    q = np.array([[0.6, -0.8], [0.8, 0.6]], np.float32)      # orthogonal, columns = directions
    rep = replacement(method)
    acts = conv_out()
    fill = rep.fill()
    fill = np.zeros_like(acts)[None] if fill is None else np.broadcast_to(fill, (1, *acts.shape))
    expected = []
    for d in q.T:
        coef = ((acts[None] - fill) * d).sum(-1, keepdims=True)
        expected.append(literal(acts[None] - coef * d)[0].argmax(-1))
    eng = channel_engine(model, X, "conv", "tail", None)
    eng.set_replacement(rep)
    np.testing.assert_array_equal(eng.predict_projected(q.T), np.stack(expected))


def test_paper_lambda_with_fill_and_draws():
    model = tiny_model()
    mask = np.zeros((2, 2, 2), np.float32)
    fill = np.full((2, 2, 2), 1.0, np.float32)
    out = lambda_masked_model(model, "conv", mask, fill).predict_on_batch(X[:1])
    np.testing.assert_allclose(out[0], literal(fill), rtol=1e-6)
    donors = draw_donors(np.arange(4, 10), 5, 0, 1, 2, 3)
    assert len(set(donors)) == 5 and set(donors) <= set(range(4, 10))
    np.testing.assert_array_equal(donors, draw_donors(np.arange(4, 10), 5, 0, 1, 2, 3))
    assert not np.array_equal(donors, draw_donors(np.arange(4, 10), 5, 0, 1, 2, 4))
    np.testing.assert_allclose(mean_output([conv_out()[:1], conv_out()[1:]]), conv_out().mean(0))
    with pytest.raises(KerablError, match="use zero, mean or resample"):
        Replacement("noise")


@pytest.mark.parametrize("method", ["mean", "resample"])
def test_z_sweeps_equal_literal_in_both_engines(method):
    from kerabl.zhou.ablation import (greedy_ablation, layer_replacement, random_order_ablation,
                                      single_unit_ablation)

    model, labels = tiny_model(), np.array([0, 1, 2, 0])
    eng = channel_engine(model, X, "conv", "tail", None)
    rep, stored = layer_replacement(eng, labels, "conv", method, seed=3)
    if method == "resample":        # each image's donor is of another class
        assert (labels[stored["donor_rows"]] != labels).all()
    else:
        np.testing.assert_allclose(stored["ablation_mean"], conv_out().mean(0), rtol=1e-6)
    keep = keep_masks(2, [[0], [1]])
    full_keep = np.broadcast_to(keep[:, None, None, :], (2, 2, 2, 2))
    literal_acc = (literal(rep.apply(conv_out(), full_keep)).argmax(-1) == labels).mean(1)
    for engine in ("tail", "full"):
        units = single_unit_ablation(model, X, labels, [0, 1, 2], "conv", engine=engine,
                                     ablation=method, ablation_seed=3)
        np.testing.assert_allclose(units["overall_drop"],
                                   units["base_acc"] - literal_acc, err_msg=engine)
    curves = [greedy_ablation(model, X, labels, 0, "conv", steps=2, engine=e, ablation=method,
                              return_order=True) for e in ("tail", "full")]
    np.testing.assert_array_equal(curves[0][0], curves[1][0])
    np.testing.assert_array_equal(curves[0][1], curves[1][1])
    orders = [random_order_ablation(model, X, labels, 0, "conv", steps=2, seeds=(0, 1), engine=e,
                                    ablation=method) for e in ("tail", "full")]
    np.testing.assert_array_equal(orders[0], orders[1])
