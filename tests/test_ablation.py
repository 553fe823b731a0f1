"""Tests of kerabl.engine and kerabl.hayne.ablation: ranks and deficits on literal tables, both engines on a hand-set
network with known ranks, one trace per fast ablator, and fast == paper on the demo model and a
random-weight VGG16 (the acceptance test of the fast engine)."""

import warnings

import keras
import numpy as np
import pytest

from kerabl.engine import PaperAblator, TailAblator
from kerabl.engine import true_class_rank
from kerabl.hayne.ablation import mean_rank_deficit
from kerabl.masks import cell_masks
from kerabl.data import digits_imageset
from kerabl.errors import KerablError
from kerabl.hayne.grid import coordinates, equal_count_grid
from kerabl.graph import head_model
from kerabl.models import load_network

# ----------------------------------------------------------------------------- ranks and deficits


def test_true_class_rank_literals():
    scores = np.array([[0.1, 0.7, 0.2],
                       [0.5, 0.5, 0.0],    # tie: class 0 comes first
                       [0.5, 0.5, 0.0],
                       [0.3, 0.3, 0.3],
                       [0.9, 0.05, 0.05]])
    labels = np.array([2, 0, 1, 2, 0])
    ranks = true_class_rank(scores, labels)
    assert ranks.dtype == np.int64
    np.testing.assert_array_equal(ranks, [1, 0, 1, 2, 0])


def test_true_class_rank_is_a_stable_descending_sort():
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 4, size=(50, 7)).astype(np.float32)  # many ties
    labels = rng.integers(0, 7, size=50)
    order = np.argsort(-scores, axis=1, kind="stable")
    expected = [int(np.flatnonzero(row == lab)[0]) for row, lab in zip(order, labels)]
    np.testing.assert_array_equal(true_class_rank(scores, labels), expected)


def test_mean_rank_deficit_clip_and_no_clip():
    before = np.array([0, 3, 1, 2])
    after = np.array([[2, 1, 1, 5],     # deficits 2, -2, 0, 3
                      [0, 3, 0, 2]])    # deficits 0, 0, -1, 0
    np.testing.assert_allclose(mean_rank_deficit(before, after), [5 / 4, 0.0])
    np.testing.assert_allclose(mean_rank_deficit(before, after, clip=False), [3 / 4, -1 / 4])
    assert mean_rank_deficit(before, after[0]).shape == ()


# ----------------------------------------------------------------------------- a hand-set network
# hidden = relu(x @ W1 + b1) = [x0, x1, x2, 1]; logits = hidden @ W2.
W1 = np.eye(3, 4, dtype=np.float32)
B1 = np.array([0, 0, 0, 1], dtype=np.float32)
W2 = np.array([[5, 0, 0],
               [0, 2, 0],
               [0, 0, 1],
               [0, 1, 3]], dtype=np.float32)
# Image A (label 0): logits [5, 3, 4]; B (label 1): [0, 3, 3], a tie won by the lower index;
# C (label 2): [0, 1, 5].
IMAGES = np.array([[1, 1, 1], [0, 1, 0], [0, 0, 2]], dtype=np.float32)
LABELS = np.array([0, 1, 2])
HIDDEN = np.array([[1, 1, 1, 1], [0, 1, 0, 1], [0, 0, 2, 1]], dtype=np.float32)
CELLS = [np.array([], dtype=np.int64), np.array([0]), np.array([1]), np.array([3]),
         np.array([2, 3])]
# Rank of each image's true class (columns A, B, C) with each cell zeroed (rows).
EXPECTED_RANKS = np.array([[0, 0, 0],
                           [2, 0, 0],    # A: [0, 3, 4]
                           [0, 1, 0],    # B: [0, 1, 3]
                           [0, 0, 0],    # A: [5, 2, 1]; B: [0, 2, 0]; C: [0, 0, 2]
                           [0, 0, 2]])   # C: [0, 0, 0], all tied, class 2 last


@pytest.fixture(scope="module")
def toy():
    inputs = keras.Input((3,), name="x")
    hidden = keras.layers.Dense(4, activation="relu", name="hidden")(inputs)
    logits = keras.layers.Dense(3, use_bias=False, name="logits")(hidden)
    model = keras.Model(inputs, keras.layers.Activation("softmax", name="softmax")(logits))
    model.get_layer("hidden").set_weights([W1, B1])
    model.get_layer("logits").set_weights([W2])
    return model


def test_cell_masks_shape_and_zeros():
    masks = cell_masks((4,), CELLS, "element")
    assert masks.shape == (5, 4) and masks.dtype == np.float32
    np.testing.assert_array_equal(masks[4], [1, 1, 0, 0])
    np.testing.assert_array_equal(masks[0], [1, 1, 1, 1])
    conv = cell_masks((2, 2, 3), [np.array([1]), np.array([0, 2])], "channel")
    assert conv.shape == (2, 2, 2, 3)
    assert (conv[0, ..., 1] == 0).all() and conv[0].sum() == 8
    np.testing.assert_array_equal(conv[1].reshape(4, 3), [[0, 1, 0]] * 4)
    elem = cell_masks((2, 2, 3), [np.array([4, 11])], "element")
    assert elem[0, 0, 1, 1] == 0 and elem[0, 1, 1, 2] == 0 and elem.sum() == 10
    with pytest.raises(KerablError):
        cell_masks((4,), [np.array([4])], "element")


@pytest.mark.parametrize("engine", [TailAblator, PaperAblator])
def test_engines_give_the_literal_ranks(toy, engine):
    ablator = engine(toy, "hidden")
    ablator.set_images(IMAGES)
    masks = cell_masks(ablator.shape, CELLS, "element")
    ranks = ablator.ranks(masks, LABELS)
    np.testing.assert_array_equal(ranks, EXPECTED_RANKS)
    scores = ablator.outputs(masks[3:4])[0]   # unit 3 zeroed: logits [5,2,1], [0,2,0], [0,0,2]
    np.testing.assert_allclose(scores[1], np.exp([0, 2, 0]) / np.exp([0, 2, 0]).sum(), rtol=1e-6)


def test_tail_ablator_traces_once(toy):
    ablator = TailAblator(toy, "hidden")
    with pytest.raises(KerablError):
        ablator.ranks(cell_masks((4,), CELLS, "element"), LABELS)
    masks = cell_masks((4,), CELLS, "element")
    ablator.set_activations(HIDDEN)                  # "class" 1: the three images
    np.testing.assert_array_equal(ablator.ranks(masks, LABELS), EXPECTED_RANKS)
    ablator.set_activations(HIDDEN[1:2])             # "class" 2: one image, fewer masks
    np.testing.assert_array_equal(ablator.ranks(masks[1:3], LABELS[1:2]), EXPECTED_RANKS[1:3, 1:2])
    ablator.set_images(IMAGES[[2, 0]])               # "class" 3: from images, another order
    np.testing.assert_array_equal(ablator.ranks(masks[4:], LABELS[[2, 0]]), [[2, 0]])
    ablator.set_activations(HIDDEN.reshape(3, 4))    # back to all images, all masks
    np.testing.assert_array_equal(ablator.ranks(masks, LABELS), EXPECTED_RANKS)
    assert ablator.traces == 1


def test_tail_ablator_chunks_give_the_same_ranks(toy):
    ablator = TailAblator(toy, "hidden", batch_floats=4)   # one image and one mask per call
    ablator.set_activations(HIDDEN)
    np.testing.assert_array_equal(ablator.ranks(cell_masks((4,), CELLS, "element"), LABELS),
                                  EXPECTED_RANKS)
    assert ablator.traces == 1


# ----------------------------------------------------------------------------- fast == paper


def _grid_cells(acts_target, acts_other, shape):
    sel, mag = coordinates(acts_target.reshape(len(acts_target), -1).mean(0),
                           acts_other.reshape(len(acts_other), -1).mean(0))
    return equal_count_grid(sel, mag, shape).cells


@pytest.fixture(scope="module")
def demo():
    return load_network("demo")


@pytest.mark.parametrize("layer", ["conv_2", "dense_1"])
def test_fast_and_paper_engines_agree_on_demo(demo, layer):
    digits = digits_imageset().subset([3, 5, 8])
    images = digits.load(demo.input_size, demo.preprocess)
    target = digits.labels == 3
    head = head_model(demo.model, layer)
    acts = np.asarray(head.predict(images, verbose=0))
    cells = _grid_cells(acts[target], acts[~target], (2, 2))
    fast, paper = TailAblator(demo.model, layer), PaperAblator(demo.model, layer)
    for engine in (fast, paper):
        engine.set_images(images[target])
    masks = cell_masks(fast.shape, cells, "element")
    fast_out, paper_out = fast.outputs(masks), paper.outputs(masks)
    np.testing.assert_allclose(fast_out, paper_out, rtol=1e-4, atol=1e-6)
    labels = digits.labels[target]
    fast_ranks = fast.ranks(masks, labels)
    np.testing.assert_array_equal(fast_ranks, paper.ranks(masks, labels))
    assert fast_ranks.shape == (4, target.sum()) and fast_ranks.max() > 0


def test_dense_layers_run_on_the_rows_of_several_front_calls(demo, monkeypatch):
    """The tail is cut before its first Dense: the convolutions run per call of `batch_floats`
    copies, the Dense layers on the gathered rows of several calls, and the outputs are the
    unsplit tail's."""
    import kerabl.engine as engine

    rng = np.random.default_rng(0)
    whole = TailAblator(demo.model, "conv_2")
    acts = np.maximum(rng.standard_normal((6, *whole.shape)).astype(np.float32), 0)
    masks = (rng.random((5, *whole.shape)) > 0.3).astype(np.float32)
    per_copy = int(np.prod(whole.shape))
    split = TailAblator(demo.model, "conv_2", batch_floats=4 * per_copy)   # 4 copies per call
    backs = []
    run_back = engine.TailAblator._run_back
    monkeypatch.setattr(engine.TailAblator, "_run_back", lambda self, pending, out, classes: (
        backs.append(sum(int(p[2].shape[0]) for p in pending)), run_back(self, pending, out,
                                                                           classes))[1])
    for ablator in (whole, split):
        ablator.set_activations(acts)
    expected = whole.outputs(masks)
    backs.clear()
    np.testing.assert_array_equal(split.outputs(masks), expected)
    assert split._back_fn is not None and sum(backs) == 5 * 6 and max(backs) > 4
    monkeypatch.setattr(engine, "dense_split", lambda tail: None)
    plain = TailAblator(demo.model, "conv_2")
    plain.set_activations(acts)
    assert plain._back_fn is None
    np.testing.assert_allclose(plain.outputs(masks), expected, rtol=1e-5, atol=1e-7)
    assert split.trace_count == 1 and TailAblator(demo.model, "dense_2")._back_fn is None


@pytest.mark.slow
def test_fast_and_paper_engines_agree_on_random_vgg16():
    net = load_network("vgg16", weights=None)
    rng = np.random.default_rng(0)
    pixels = rng.uniform(0, 255, size=(2, 224, 224, 3)).astype(np.float32)
    images = keras.applications.vgg16.preprocess_input(pixels)
    labels = rng.integers(0, 1000, size=2)
    layer = "block4_conv3"
    fast, paper = TailAblator(net.model, layer), PaperAblator(net.model, layer)
    fast.set_images(images)
    paper.set_images(images)
    sel, mag = rng.normal(size=(2, 28 * 28 * 512))
    cells = equal_count_grid(sel, mag, (3, 1)).cells
    assert sum(c.size for c in cells) == 28 * 28 * 512
    masks = cell_masks(fast.shape, cells, "element")
    fast_out, paper_out = fast.outputs(masks), paper.outputs(masks)
    assert fast_out.shape == (3, 2, 1000)
    np.testing.assert_allclose(fast_out, paper_out, rtol=1e-4, atol=1e-7)
    np.testing.assert_array_equal(fast.ranks(masks, labels), paper.ranks(masks, labels))


def test_float16_storage_refuses_values_beyond_its_range(toy):
    ablator = TailAblator(toy, "hidden", storage="float16")
    ablator.set_activations(HIDDEN)
    np.testing.assert_array_equal(ablator.ranks(cell_masks((4,), CELLS, "element"), LABELS),
                                  EXPECTED_RANKS)
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # the check itself must not overflow
        with pytest.raises(KerablError, match="beyond float16's range"):
            ablator.set_activations(HIDDEN * 1e5)


# ----------------------------------------------------------------------------- one engine, both studies


def _residual_model():
    """conv_a -> conv_b -> add(conv_a, conv_b) -> flatten -> dense: conv_b is not a cut point."""
    inputs = keras.Input((4, 4, 2))
    a = keras.layers.Conv2D(3, 3, padding="same", activation="relu", name="conv_a")(inputs)
    b = keras.layers.Conv2D(3, 3, padding="same", activation="relu", name="conv_b")(a)
    x = keras.layers.Flatten()(keras.layers.Add()([a, b]))
    model = keras.Model(inputs, keras.layers.Dense(5, activation="softmax", name="out")(x))
    rng = np.random.default_rng(7)
    model.set_weights([rng.normal(0, 1, w.shape).astype("float32") for w in model.get_weights()])
    return model


def test_one_engine_answers_masks_keep_vectors_and_directions_with_one_trace():
    from kerabl.engine import FullEngine
    from kerabl.masks import keep_masks

    model = _residual_model()
    images = np.random.default_rng(8).normal(0, 1, (6, 4, 4, 2)).astype("float32")
    fast = TailAblator(model, "conv_b", batch_floats=200)   # skip tensor as extra input; 2 calls
    fast.set_images(images)
    keep = keep_masks(3, [[], [0], [2], [0, 1]])
    full_masks = np.broadcast_to(keep[:, None, None, :], (4, 4, 4, 3))
    scores = fast.outputs(full_masks)
    paper = PaperAblator(model, "conv_b")
    paper.set_images(images)
    np.testing.assert_allclose(scores, paper.outputs(full_masks), rtol=1e-5, atol=1e-7)   # fast == paper
    preds = fast.predict(keep)
    np.testing.assert_array_equal(preds, scores.argmax(axis=-1))     # keep-vector == full mask
    full = FullEngine(model, "conv_b", images, batch_size=None)
    np.testing.assert_array_equal(preds, full.predict(keep))           # tail == full
    assert len(np.unique(preds)) > 1                                    # not one class everywhere
    # removing direction e_c zeroes channel c exactly: the same predictions as dropping it
    np.testing.assert_array_equal(fast.predict_projected(np.eye(3)), fast.predict(keep_masks(3, [[0], [1], [2]])))
    np.testing.assert_array_equal(fast.predict(keep, rows=np.array([4, 1])), preds[:, [4, 1]])
    fast.set_images(images[:2])                                         # another image count
    np.testing.assert_array_equal(fast.predict(keep), preds[:, :2])
    assert fast.traces == 1 and fast.trace_count == 1
    with pytest.raises(KerablError, match="full engine only zeroes"):
        full.predict_projected(np.eye(3))
