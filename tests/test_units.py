"""Tests of kerabl.zhou: literal accuracies on a hand-set tiny network, attributes against direct
numpy, tail engine == full engine, identity rotation == unit ablation, greedy order, no retrace,
and the resumable results file."""

import subprocess
import sys

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf

from kerabl.zhou import ablation as z_ablation, attributes as z_attributes, results as z_results, study as z_study
from kerabl import engine, graph, masks, tails
from kerabl.errors import KerablError
from kerabl.models import Network, demo_model
from kerabl.weightfiles import randomize_weights

# Class c images switch on hidden unit c; output c reads hidden unit c, output 0 has a bias of
# 0.1, so a zeroed unit sends its class to class 0. The second class-1 image is too weak and is
# misclassified as 0 from the start.
X = np.array([[2, 0, 0], [2, 0, 0], [0, 2, 0], [0, 0.05, 0], [0, 0, 2], [0, 0, 2]], "float32")
Y = np.array([0, 0, 1, 1, 2, 2])
CLASSES = [0, 1, 2]


def tiny_model() -> keras.Model:
    """Input(3) -> hidden Dense(3, relu, identity) -> hidden_2 Dense(3, relu, identity) -> out."""
    inputs = keras.Input((3,))
    layers = [keras.layers.Dense(3, activation="relu", name="hidden"),
              keras.layers.Dense(3, activation="relu", name="hidden_2"),
              keras.layers.Dense(3, activation="softmax", name="out")]
    x = inputs
    for layer in layers:
        x = layer(x)
    eye = np.eye(3, dtype="float32")
    for layer, bias in zip(layers, ([0, 0, 0], [0, 0, 0], [0.1, 0, 0])):
        layer.set_weights([eye, np.array(bias, "float32")])
    return keras.Model(inputs, x, name="tiny")


@pytest.fixture(scope="module")
def tiny() -> keras.Model:
    return tiny_model()


@pytest.fixture(scope="module")
def demo_random():
    """The demo architecture with random weights and 40 random images (4 per class)."""
    model = randomize_weights(demo_model(), seed=3)
    rng = np.random.default_rng(0)
    images = rng.random((40, 32, 32, 3), dtype=np.float32)
    labels = np.repeat(np.arange(10), 4)
    return model, images, labels


@pytest.mark.parametrize("engine", ["tail", "full"])
@pytest.mark.parametrize("batch_size", [1, 4, 64])
def test_unit_feeding_one_class_hurts_only_that_class(tiny, engine, batch_size):
    r = z_ablation.single_unit_ablation(tiny, X, Y, CLASSES, "hidden", engine=engine,
                                   batch_size=batch_size)
    np.testing.assert_allclose(r["base_class_acc"], [1, 0.5, 1])
    assert r["base_acc"] == pytest.approx(5 / 6)
    np.testing.assert_allclose(r["class_acc"], [[1, 0.5, 1], [1, 0, 1], [1, 0.5, 0]])
    np.testing.assert_allclose(r["class_drop"], [[0, 0, 0], [0, 0.5, 0], [0, 0, 1]])
    np.testing.assert_allclose(r["overall_drop"], [0, 1 / 6, 2 / 6])
    np.testing.assert_allclose(r["max_class_drop"], [0, 0.5, 1])
    np.testing.assert_array_equal(r["argmax_class"], [0, 1, 2])


def test_units_subset_and_bad_input(tiny):
    r = z_ablation.single_unit_ablation(tiny, X, Y, CLASSES, "hidden", units=[2])
    np.testing.assert_allclose(r["max_class_drop"], [1.0])
    with pytest.raises(KerablError, match="units must lie"):
        z_ablation.single_unit_ablation(tiny, X, Y, CLASSES, "hidden", units=[3])
    with pytest.raises(KerablError, match="no layer 'nope'"):
        z_ablation.single_unit_ablation(tiny, X, Y, CLASSES, "nope")
    with pytest.raises(KerablError, match="unknown engine 'turbo'"):
        z_ablation.single_unit_ablation(tiny, X, Y, CLASSES, "hidden", engine="turbo")
    spelled = z_ablation.single_unit_ablation(tiny, X, Y, CLASSES, "hidden", units=[2],
                                              engine="fast")     # the H study's name of "tail"
    np.testing.assert_array_equal(spelled["max_class_drop"], r["max_class_drop"])
    with pytest.raises(KerablError, match="classes \\[7\\] have no images"):
        z_ablation.single_unit_ablation(tiny, X, Y, [0, 7], "hidden")


def test_selectivity_and_class_correlation_match_direct_numpy():
    rng = np.random.default_rng(1)
    acts = rng.random((30, 2, 2, 4))
    labels = np.arange(30) % 3
    probs = rng.random((30, 3))
    mean_acts = acts.mean(axis=(1, 2))
    corr = z_attributes.class_correlation(acts, probs)
    for u in range(4):
        for c in range(3):
            assert corr[u, c] == pytest.approx(np.corrcoef(mean_acts[:, u], probs[:, c])[0, 1])
    si = z_attributes.selectivity_index(acts, labels, [0, 1, 2])
    for u in range(4):
        means = np.array([mean_acts[labels == c, u].mean() for c in range(3)])
        top = means.max()
        rest = (means.sum() - top) / 2
        assert si[u] == pytest.approx((top - rest) / (top + rest))


def test_selectivity_literal_and_dead_units():
    acts = np.array([[3.0, 0.0], [1.0, 0.0], [1.0, 0.0]])  # unit 1 never fires
    si = z_attributes.selectivity_index(acts, np.array([0, 1, 2]), [0, 1, 2])
    assert si[0] == pytest.approx((3 - 1) / (3 + 1))
    assert np.isnan(si[1])
    assert np.isnan(z_attributes.class_correlation(acts, np.eye(3))[1]).all()


def test_top_activating_literal():
    acts = np.zeros((4, 2, 2, 2), "float32")
    acts[2, 0, 0, 0] = 4.0          # unit 0: image 2 first, then image 1
    acts[1, 1, 1, 0] = 1.0
    acts[3, :, :, 1] = 1.0          # unit 1: image 3 first; ties among 0, 1, 2 -> lowest index
    idx, maps = z_attributes.top_activating(acts, k=2)
    np.testing.assert_array_equal(idx, [[2, 1], [3, 0]])
    assert maps.shape == (2, 2, 2, 2)
    np.testing.assert_array_equal(maps[0, 0], [[4, 0], [0, 0]])
    np.testing.assert_array_equal(maps[1, 0], np.ones((2, 2)))


def test_l1_norms_by_hand():
    inputs = keras.Input((4, 4, 2))
    conv = keras.layers.Conv2D(3, 2, name="conv")
    x = keras.layers.Activation("relu", name="relu")(conv(inputs))
    dense = keras.layers.Dense(2, name="dense")
    model = keras.Model(inputs, dense(keras.layers.Flatten()(x)))
    kernel = np.arange(2 * 2 * 2 * 3, dtype="float32").reshape(2, 2, 2, 3) - 10
    conv.set_weights([kernel, np.full(3, 100.0, "float32")])   # biases do not count
    w = np.array([[1.0, -2.0]] * 27, "float32")
    dense.set_weights([w, np.zeros(2, "float32")])
    expected = [sum(abs(kernel[..., c]).ravel()) for c in range(3)]
    np.testing.assert_allclose(z_attributes.l1_norms(model, "conv"), expected)
    np.testing.assert_allclose(z_attributes.l1_norms(model, "relu"), expected)  # walks back to conv
    np.testing.assert_allclose(z_attributes.l1_norms(model, "dense"), [27.0, 54.0])


def test_l1_norms_of_concatenation():
    inputs = keras.Input((3,))
    a = keras.layers.Dense(1, name="a")
    b = keras.layers.Dense(2, name="b")
    model = keras.Model(inputs, keras.layers.Concatenate(name="cat")([a(inputs), b(inputs)]))
    a.set_weights([np.array([[1], [-1], [2]], "float32"), np.zeros(1, "float32")])
    b.set_weights([np.array([[1, 0], [0, 3], [0, -1]], "float32"), np.zeros(2, "float32")])
    np.testing.assert_allclose(z_attributes.l1_norms(model, "cat"), [4, 1, 4])


def test_greedy_picks_the_most_harmful_unit_first_and_breaks_ties_low(tiny):
    curve, order = z_ablation.greedy_ablation(tiny, X, Y, 1, "hidden", steps=3, return_order=True)
    np.testing.assert_allclose(curve, [0.5, 0.0, 0.0, 0.0])
    np.testing.assert_array_equal(order, [1, 0, 2])
    curve = z_ablation.greedy_ablation(tiny, X, Y, 2, "hidden", steps=1, candidates=[0, 1])
    np.testing.assert_allclose(curve, [1.0, 1.0])
    with pytest.raises(KerablError, match="steps"):
        z_ablation.greedy_ablation(tiny, X, Y, 1, "hidden", steps=4)


def test_random_order_curves(tiny):
    curves = z_ablation.random_order_ablation(tiny, X, Y, 2, "hidden", steps=3, seeds=(0, 1, 2))
    assert curves.shape == (3, 4)
    np.testing.assert_allclose(curves[:, 0], 1.0)
    np.testing.assert_allclose(curves[:, 3], 0.0)   # every unit ablated
    for seed, row in zip((0, 1, 2), curves):
        first = np.random.default_rng(seed).permutation(3)[0]
        assert row[1] == (0.0 if first == 2 else 1.0)


def test_tail_engine_equals_full_engine_on_demo_shape(demo_random):
    model, images, labels = demo_random
    for layer, subset in (("conv_2", [0, 5, 17, 31]), ("dense_1", [1, 2, 60])):
        tail = z_ablation.single_unit_ablation(model, images, labels, range(10), layer, units=subset)
        full = z_ablation.single_unit_ablation(model, images, labels, range(10), layer, units=subset,
                                          engine="full", batch_size=40)
        for key in ("class_acc", "overall_drop", "base_class_acc"):
            np.testing.assert_array_equal(tail[key], full[key])


def test_identity_rotation_reproduces_unit_ablation(demo_random, tiny):
    model, images, labels = demo_random
    unit = z_ablation.single_unit_ablation(model, images, labels, range(10), "conv_5")
    ident = z_ablation.random_direction_ablation(model, images, labels, range(10), "conv_5",
                                            rotation=np.eye(32))
    for key in ("class_acc", "overall_drop", "max_class_drop", "argmax_class"):
        np.testing.assert_array_equal(ident[key], unit[key])
    assert unit["max_class_drop"].max() > 0      # the comparison is not between zeros
    rand = z_ablation.random_direction_ablation(tiny, X, Y, CLASSES, "hidden", seed=4)
    q = rand["rotation"]
    np.testing.assert_allclose(q.T @ q, np.eye(3), atol=1e-12)
    np.testing.assert_array_equal(q, z_ablation.random_rotation(3, seed=4))
    with pytest.raises(KerablError, match="orthogonal"):
        z_ablation.random_direction_ablation(tiny, X, Y, CLASSES, "hidden", rotation=np.ones((3, 3)))


def test_projection_by_hand(tiny):
    # Direction 0 = (e0 + e1)/sqrt(2) turns a class-1 image (0, 2, 0) into (-1, 1, 0), ReLU'd by
    # hidden_2 to (0, 1, 0): still class 1. Direction 1 = (e1 - e0)/sqrt(2) turns it into (1, 1, 0),
    # which the output bias gives to class 0; class-0 images (2, 0, 0) -> (1, 1, 0) stay class 0.
    s = np.sqrt(0.5)
    rotation = np.array([[s, -s, 0], [s, s, 0], [0, 0, 1]])
    r = z_ablation.random_direction_ablation(tiny, X, Y, CLASSES, "hidden", rotation=rotation)
    np.testing.assert_allclose(r["class_acc"], [[1, 0.5, 1], [1, 0, 1], [1, 0.5, 0]])


def test_no_retrace_across_units(demo_random):
    model, images, labels = demo_random
    eng = engine.channel_engine(model, images, "conv_4", "tail", batch_size=50)
    z_ablation.unit_drops(eng, labels, range(10), None, False, "")
    z_ablation.direction_drops(eng, labels, range(10), 0, None, False, "")
    z_ablation.greedy(eng, labels, 3, 2, None)
    assert eng.traces == 1 and eng.trace_count == 1      # masks and directions: one function


def test_attribute_drop_correlations():
    from scipy import stats

    rng = np.random.default_rng(2)
    attr = rng.random(20)
    overall = attr + 0.1 * rng.random(20)
    top = rng.random(20)
    attr_nan = attr.copy()
    attr_nan[3] = np.nan
    c = z_attributes.attribute_drop_correlations({"a": attr, "b": attr_nan}, overall, top)
    assert c["a"]["overall_drop"]["spearman_r"] == pytest.approx(stats.spearmanr(attr, overall)[0])
    assert c["a"]["max_class_drop"]["pearson_r"] == pytest.approx(stats.pearsonr(attr, top)[0])
    assert c["b"]["overall_drop"]["n"] == 19
    with pytest.raises(KerablError, match="one value per unit"):
        z_attributes.attribute_drop_correlations({"a": attr[:3]}, overall, top)


# ----------------------------------------------------------------------------- the study file

class TinySet:
    """Stand-in image set: the six tiny images, repeated."""

    name = "tiny-set"
    labels = np.tile(Y, 2)
    classes = np.array(CLASSES)
    class_names = ["zero", "one", "two"]

    def load(self, size, preprocess):
        return np.tile(X, (2, 1))


def tiny_network() -> Network:
    return Network(name="tiny", model=tiny_model(), weights_id="hand-set",
                   targets=("hidden", "hidden_2"), input_size=(1, 1), preprocess="none", n_classes=3)


def study(out_dir, **kwargs):
    kwargs = {"greedy_steps": 2, "greedy_seeds": 3, "top_k": 2, **kwargs}
    return z_study.run_z_study(tiny_network(), TinySet(), out_dir, config=z_study.ZConfig(**kwargs),
                               progress=False, log=lambda line: None)


def file_arrays(path) -> dict:
    with h5py.File(path, "r") as f:
        out = {}
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()])
                     if isinstance(obj, h5py.Dataset) else None)
    return out


def test_run_z_study_contents_and_reader(tmp_path):
    path = study(tmp_path / "z")
    z = z_results.ZResults.open(path)
    assert z.layers == ["hidden", "hidden_2"] and z.class_names == ["zero", "one", "two"]
    d = z.layer("hidden")
    np.testing.assert_allclose(d["max_class_drop"], [0, 0.5, 1])
    np.testing.assert_allclose(d["l1"], [1, 1, 1])
    assert d["top_images"].shape == (3, 2) and d["rand_max_class_drop"].shape == (3,)
    assert z.greedy["layer"] == "hidden_2"   # no spatial layer: the last one
    np.testing.assert_allclose(z.greedy["curves"][1], [0.5, 0.0, 0.0])
    assert z.greedy["random"].shape == (3, 3, 3)
    assert z.config["seed"] == 0 and "numpy" in z.versions
    assert z.correlations("hidden")["l1"]["overall_drop"]["n"] == 3
    csv_path = z_results.export_units_csv(path, tmp_path / "u.csv")
    rows = csv_path.read_text().splitlines()
    assert rows[0].split(",") == list(z_results.CSV_COLUMNS) and len(rows) == 1 + 6
    name, unit, overall, top, cls, cls_name = rows[3].split(",")[:6]
    assert (name, unit, cls, cls_name) == ("hidden", "2", "2", "two")
    assert float(overall) == pytest.approx(4 / 12) and float(top) == 1.0


def test_interrupted_study_resumes_and_equals_uninterrupted(tmp_path, monkeypatch):
    whole = study(tmp_path / "whole")
    real = z_study._layer_results
    calls = []

    def failing(model, eng, data, probs, layer, *args):
        calls.append(layer)
        if layer == "hidden_2":
            raise KeyboardInterrupt
        return real(model, eng, data, probs, layer, *args)

    monkeypatch.setattr(z_study, "_layer_results", failing)
    with pytest.raises(KeyboardInterrupt):
        study(tmp_path / "resumed")
    final = tmp_path / "resumed" / "z_results.h5"
    assert not final.exists() and (tmp_path / "resumed" / "z_results.h5.partial").exists()
    with pytest.raises(KerablError, match="has not finished"):
        z_results.ZResults.open(final)
    monkeypatch.setattr(z_study, "_layer_results", lambda *a: (calls.append(a[4]), real(*a))[1])
    study(tmp_path / "resumed")
    assert calls == ["hidden", "hidden_2", "hidden_2"]   # hidden was not recomputed
    a, b = file_arrays(whole), file_arrays(final)
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_rerun_computes_nothing_and_mismatch_names_the_key(tmp_path, monkeypatch):
    path = study(tmp_path / "z")
    monkeypatch.setattr(z_study, "_layer_results", lambda *a: pytest.fail("recomputed"))
    monkeypatch.setattr(z_study, "_greedy_results", lambda *a: pytest.fail("recomputed"))
    assert study(tmp_path / "z") == path
    with pytest.raises(KerablError, match="seed: 0 -> 1"):
        study(tmp_path / "z", seed=1)
    with pytest.raises(KerablError, match="greedy_steps: 2 -> 1; seed: 0 -> 1"):
        study(tmp_path / "z", greedy_steps=1, seed=1)


def test_reader_imports_no_tensorflow(tmp_path):
    path = study(tmp_path / "z")
    code = ("import sys; from kerabl.zhou.results import ZResults; z = ZResults.open(sys.argv[1]); "
            "z.layer('hidden'); import kerabl.zhou.figures; "
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules; print('ok')")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True)
    assert out.stdout.strip() == "ok", out.stderr


# ----------------------------------------------------------------------------- the linear shortcut

def pooled_model() -> keras.Model:
    """4x4x4 -> conv 1x1 (identity, relu) -> 2x2 max pool -> flatten (16) -> Dense(3) -> out.

    Dense output j (j = 0, 1, 2) sums channel j's four pooled values; channel 3 adds 0.5 of its
    values to output 0 and output 0 has a bias of 0.1."""
    inputs = keras.Input((4, 4, 4))
    conv = keras.layers.Conv2D(4, 1, activation="relu", name="conv")
    dense = keras.layers.Dense(3, activation="relu", name="dense")
    out = keras.layers.Dense(3, activation="softmax", name="out")
    x = keras.layers.Flatten(name="flatten")(keras.layers.MaxPooling2D(2, name="pool")(conv(inputs)))
    model = keras.Model(inputs, out(dense(x)))
    conv.set_weights([np.eye(4, dtype="float32")[None, None], np.zeros(4, "float32")])
    kernel = np.zeros((16, 3), "float32")
    for position in range(16):
        channel = position % 4
        if channel < 3:
            kernel[position, channel] = 1.0
        else:
            kernel[position, 0] = 0.5
    dense.set_weights([kernel, np.array([0.1, 0, 0], "float32")])
    out.set_weights([np.eye(3, dtype="float32"), np.zeros(3, "float32")])
    return model


def pooled_images() -> tuple[np.ndarray, np.ndarray]:
    """Image k (k = 0, 1, 2) lights channel k (value 1) in one pixel per pool window; image 3
    lights channels 1 and 3 (class 1: 4 > 0.1 + 2); image 4 lights channel 2 weakly and
    channel 3 (class 0 though labelled 2: 0.1 + 2 > 0.4)."""
    x = np.zeros((5, 4, 4, 4), "float32")
    for k in range(3):
        x[k, ::2, ::2, k] = 1.0
    x[3, ::2, ::2, 1] = x[3, ::2, ::2, 3] = 1.0
    x[4, ::2, ::2, 2], x[4, ::2, ::2, 3] = 0.1, 1.0
    return x, np.array([0, 1, 2, 1, 2])


def test_shortcut_found_from_the_graph_with_its_layout():
    model = pooled_model()
    cut = graph.channel_shortcut(model, "conv")
    assert cut.dense == "dense" and [lay.name for lay in cut.chain] == ["pool", "flatten"]
    np.testing.assert_array_equal(cut.positions, [[0, 4, 8, 12], [1, 5, 9, 13], [2, 6, 10, 14],
                                                  [3, 7, 11, 15]])
    np.testing.assert_array_equal(cut.valid, np.ones((4, 4)))
    assert graph.channel_shortcut(model, "pool").chain[0].name == "flatten"
    assert graph.channel_shortcut(model, "dense") is not None     # Dense -> Dense: no chain
    assert graph.channel_shortcut(model, "out") is None           # nothing follows


def test_no_shortcut_through_weighted_or_branching_layers(demo_random):
    model = demo_random[0]
    assert graph.channel_shortcut(model, "conv_4") is None        # a convolution follows
    assert graph.channel_shortcut(model, "conv_5").dense == "dense_1"
    inputs = keras.Input((4, 4, 2))
    x = keras.layers.Conv2D(2, 1, name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(keras.layers.MaxPooling2D(name="pool")(x))
    bn = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(x)))
    assert graph.channel_shortcut(bn, "conv") is None             # batch norm shifts zeros
    y = keras.layers.Conv2D(2, 1, name="conv")(inputs)
    flat = keras.layers.Flatten()(y)
    two = keras.Model(inputs, keras.layers.Add()([keras.layers.Dense(2)(flat),
                                                  keras.layers.Dense(2)(flat)]))
    assert graph.channel_shortcut(two, "conv") is None            # two consumers


class _RenamedDense(keras.layers.Dense):
    """A Dense under another class name: computes what Dense computes."""


class _ScaledDense(keras.layers.Dense):
    """A Dense subclass whose call computes something else."""

    def call(self, inputs):
        return 2 * super().call(inputs)


class Dense(keras.layers.Layer):
    """Not a keras Dense, though its class has the name."""

    def call(self, inputs):
        return inputs


def test_layer_kinds_are_classes_not_names():
    inputs = keras.Input((2, 2, 3))
    flat = keras.layers.Flatten()(keras.layers.Conv2D(3, 1, name="conv")(inputs))
    for cls, found in ((_RenamedDense, True), (_ScaledDense, False)):
        x = cls(4, name="d")(flat)
        model = keras.Model(inputs, keras.layers.Dense(2, name="out")(keras.layers.Dropout(0.5)(x)))
        assert (graph.channel_shortcut(model, "conv") is not None) == found
    model = keras.Model(inputs, Dense()(flat))
    assert graph.channel_shortcut(model, "conv") is None                 # named Dense, is not one
    x = keras.layers.Dense(4, name="first")(flat)
    scaled = keras.Model(inputs, _ScaledDense(2, name="last")(x))
    assert graph.dense_chain(scaled, "first") is None
    renamed = keras.Model(inputs, _RenamedDense(2, name="last")(x))
    assert [lay.name for _, lay in graph.dense_chain(renamed, "first")] == ["last"]


@pytest.mark.parametrize("batch_size", [1, 7, None])
def test_shortcut_literal_accuracies_and_equal_to_plain_tail(batch_size):
    model = pooled_model()
    x, y = pooled_images()
    kwargs = dict(batch_size=batch_size)
    fast = z_ablation.single_unit_ablation(model, x, y, [0, 1, 2], "conv", **kwargs)
    plain = z_ablation.single_unit_ablation(model, x, y, [0, 1, 2], "conv", shortcut=False, **kwargs)
    full = z_ablation.single_unit_ablation(model, x, y, [0, 1, 2], "conv", engine="full", **kwargs)
    # channel 0 -> image 0 falls to 0.1 vs 0 (still class 0); channel 1 -> image 1 falls to
    # class 0, image 3 to class 0 (0.1 + 2); channel 3 -> image 4 becomes class 2 (0.4 > 0.1).
    np.testing.assert_allclose(fast["base_class_acc"], [1, 1, 0.5])
    np.testing.assert_allclose(fast["class_acc"], [[1, 1, 0.5], [1, 0, 0.5], [1, 1, 0], [1, 1, 1]])
    for key in ("class_acc", "overall_drop", "base_class_acc"):
        np.testing.assert_array_equal(fast[key], plain[key])
        np.testing.assert_array_equal(fast[key], full[key])


def test_shortcut_greedy_subtracts_every_zeroed_channel():
    model = pooled_model()
    x, y = pooled_images()
    eng = engine.tail_engine(model, x, "conv")
    plain = engine.tail_engine(model, x, "conv", shortcut=False)
    sets = [[], [0], [1, 3], [0, 2], [3, 0], [0, 1, 2]]   # the last one drops 12 of 16 inputs
    keep = masks.keep_masks(4, sets)
    assert eng._drops(keep) is None and eng._drops(keep[:5])[0].shape == (5, 2)
    np.testing.assert_array_equal(eng.predict(keep[:5]), plain.predict(keep[:5]))   # shortcut
    np.testing.assert_array_equal(eng.predict(keep), plain.predict(keep))           # plain tail
    np.testing.assert_array_equal(eng.predict(keep)[2], [0, 0, 2, 0, 2])   # image 4: 0.1 < 0.4
    for class_ in (1, 2):
        a = z_ablation.greedy_ablation(model, x, y, class_, "conv", steps=3, return_order=True)
        b = z_ablation.greedy(plain, y, class_, 3, None)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
    assert eng.shortcut_fn.experimental_get_tracing_count() == 1


def test_dense_chain_steps_from_the_graph(demo_random):
    from kerabl.models import load_network

    steps = graph.dense_chain(pooled_model(), "dense")
    assert [(kind, lay.name) for kind, lay in steps] == [("dense", "out")]
    alexnet = load_network("alexnet", weights=None, seed=1)
    steps = graph.dense_chain(alexnet, "dense_1")
    assert [(kind, lay.name) for kind, lay in steps] == [
        ("dense", "dense_2"), ("dense", "dense_3"), ("activation", "softmax")]   # no dropouts
    inputs = keras.Input((4,))
    x = keras.layers.Dense(3, name="first")(inputs)
    bn = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.BatchNormalization()(x)))
    assert graph.dense_chain(bn, "first") is None                 # not a Dense / activation
    assert graph.dense_chain(demo_random[0], "conv_5") is None    # pooling and Dense follow


def test_skip_zero_inputs_equals_the_product_and_counts_kept_inputs():
    kernel = np.arange(8, dtype="float32").reshape(4, 2)
    sparse = np.array([[0, 2, 0, 1], [0, -1, 0, 3]], "float32")    # inputs 0 and 2 always zero
    out, kept = tails.skip_zero_inputs(tf.constant(sparse), tf.constant(kernel))
    np.testing.assert_array_equal(out, sparse @ kernel)
    assert int(kept) == 2
    dense = np.array([[1, 2, 0, 1], [0, -1, 5, 3]], "float32")     # every input used somewhere
    out, kept = tails.skip_zero_inputs(tf.constant(dense), tf.constant(kernel))
    np.testing.assert_array_equal(out, dense @ kernel)
    assert int(kept) == 4


def test_shortcut_skips_dense_inputs_zero_in_every_row():
    model = pooled_model()
    x, _ = pooled_images()
    eng = engine.tail_engine(model, x, "conv")
    plain = engine.tail_engine(model, x, "conv", shortcut=False)
    keep = masks.keep_masks(4, [[2]])
    rows = np.array([0, 1, 3])        # no image lights channel 2: Dense output 2 is 0 in all rows
    np.testing.assert_array_equal(eng.predict(keep, rows=rows), plain.predict(keep, rows=rows))
    # the correction (1 unit x 3 images x 3 outputs x 4 inputs) and `out` on 2 of its 3 inputs
    assert eng.shortcut_flops == 2 * 1 * 3 * 3 * 4 + 2 * 3 * 2 * 3
    assert plain.shortcut_flops is None                       # no shortcut: nothing counted
    eng.predict(masks.keep_masks(4, [[0], [1], [2], [3]]))     # all 3 Dense outputs nonzero
    assert eng.shortcut_flops == 108 + 2 * 4 * 5 * 3 * 4 + 2 * 20 * 3 * 3


def test_shortcut_equals_plain_tail_on_demo(demo_random):
    model, images, labels = demo_random
    fast = engine.tail_engine(model, images, "conv_5", batch_size=None)
    plain = engine.tail_engine(model, images, "conv_5", shortcut=False)
    assert fast.cut.positions.shape == (32, 16)     # 4 x 4 pooled positions per channel
    keep = masks.keep_masks(32, [[u] for u in range(32)] + [[1, 5, 9], [0, 31]])
    preds = fast.predict(keep)
    np.testing.assert_array_equal(preds, plain.predict(keep))
    a = z_ablation.single_unit_ablation(model, images, labels, range(10), "conv_5")
    b = z_ablation.single_unit_ablation(model, images, labels, range(10), "conv_5", shortcut=False)
    np.testing.assert_array_equal(a["class_acc"], b["class_acc"])
    assert a["max_class_drop"].max() > 0       # the comparison is not between zeros
    z_ablation.greedy(fast, labels, 3, 3, None)
    assert fast.trace_count == 1 and fast.shortcut_fn.experimental_get_tracing_count() == 1


def test_shortcut_equals_plain_tail_on_random_alexnet():
    from kerabl.models import load_network

    net = load_network("alexnet", weights=None, seed=1)
    noise = np.random.default_rng(5).normal(0, 1, (6, 227, 227, 3)).astype("float32")
    scale = np.array([5, 20, 60, 100, 150, 200], "float32")[:, None, None, None]
    images = noise * scale + np.linspace(-100, 100, 6, dtype="float32")[:, None, None, None]
    fast = engine.tail_engine(net, images, "conv_5")
    plain = engine.tail_engine(net, images, "conv_5", shortcut=False)
    assert fast.cut.dense == "dense_1" and fast.cut.positions.shape == (256, 36)
    keep = masks.keep_masks(256, [[], [0], [17], [100], [255], [3, 4, 200]])
    preds = fast.predict(keep)
    np.testing.assert_array_equal(preds, plain.predict(keep))
    assert len(np.unique(preds[0])) > 1       # not one class for every image
    dense_flops = 2 * 6 * 6 * (36 * 4096 + 4096 * 4096 + 4096 * 1000)
    assert 0 < fast.shortcut_flops < 0.9 * dense_flops    # dead ReLUs skipped in dense_2, _3


def test_most_hurt_class_counts_ties_and_breaks_them_with_the_seed():
    from kerabl.zhou.heldout import most_hurt_class

    drop = np.array([[0.5, 0.5, 0.1], [0.0, 1.0, 0.0], [0.2, 0.2, 0.2]])
    hurt, tied = most_hurt_class(drop, seed=0)
    np.testing.assert_array_equal(tied, [2, 1, 3])
    assert hurt[0] in (0, 1) and hurt[1] == 1
    np.testing.assert_array_equal(hurt, most_hurt_class(drop, seed=0)[0])
    many, _ = most_hurt_class(np.tile([[0.5, 0.5, 0.0]], (200, 1)), seed=1)
    assert set(many) == {0, 1} and 70 < (many == 0).sum() < 130   # not always the lowest index
    with pytest.raises(KerablError, match="units, classes"):
        most_hurt_class(np.zeros(3))


def test_split_greedy_chooses_on_one_half_and_scores_the_other(tiny):
    from kerabl.engine import channel_engine
    from kerabl.zhou.heldout import split_greedy

    images, labels = np.tile(X, (2, 1)), np.tile(Y, 2)   # class 1: two strong, two weak images
    eng = channel_engine(tiny, images, "hidden", "tail", None)
    choosing, held_out, order = split_greedy(eng, labels, 1, steps=2, seed=0)
    assert order[0] == 1                                  # the unit that feeds class 1
    np.testing.assert_allclose(choosing[1:], 0.0)
    np.testing.assert_allclose(held_out[1:], 0.0)
    # each half has two of the four images; together one strong image per weak one
    assert {choosing[0], held_out[0]} <= {0.0, 0.5, 1.0} and choosing[0] + held_out[0] == 1.0
    with pytest.raises(KerablError, match="at least 2"):
        split_greedy(eng, np.r_[labels[:-1], 7], 7, steps=1)


def test_z_study_stores_split_curves_and_ties(tmp_path):
    z = z_results.ZResults.open(study(tmp_path / "z"))
    g = z.greedy
    assert g["curves_choosing_half"].shape == g["curves_heldout_half"].shape == (3, 3)
    assert g["order_choosing_half"].shape == (3, 2) and int(g["split_seed"]) == 0
    d = z.layer("hidden")
    np.testing.assert_array_equal(d["hurt_ties"], [3, 1, 1])   # unit 0 hurts no class: a 3-way tie
    np.testing.assert_array_equal(d["hurt_class"][1:], [1, 2])
    assert z.config["greedy_split"] == "halves" and z.config["tie_break"] == "random"


def test_z_study_records_its_ablation_method(tmp_path):
    path = study(tmp_path / "mean", ablation="mean")
    z = z_results.ZResults.open(path)
    assert z.config["ablation"] == "mean"
    np.testing.assert_allclose(z.layer("hidden")["ablation_mean"],
                               tiny_model().get_layer("hidden")(np.tile(X, (2, 1))).numpy().mean(0),
                               rtol=1e-6)
    rows = z_results.export_units_csv(path, tmp_path / "u.csv").read_text().splitlines()
    assert rows[0].endswith(",ablation") and all(r.endswith(",mean") for r in rows[1:])
    with pytest.raises(KerablError, match='ablation: "mean" -> "resample"'):
        study(tmp_path / "mean", ablation="resample")
    donors = z_results.ZResults.open(study(tmp_path / "resample", ablation="resample"))
    labels = np.tile(Y, 2)
    assert (labels[donors.layer("hidden")["donor_rows"]] != labels).all()
