"""Tests of models that call other models as layers (transfer-learning classifiers): the flat
graph equals the nested model, inner layers are listed, named by path, and studied in both
studies from a saved .keras file, with results equal to literal recomputations on the nested
model (the inner layer's output replaced, full forward pass)."""

import importlib.util
from pathlib import Path

import keras
import numpy as np
import pytest

from kerabl.activations import record_activations
from kerabl.errors import KerablError
from kerabl.folders import folder_imageset
from kerabl.engine import true_class_rank
from kerabl.hayne.results import HResults
from kerabl.models import Network
from kerabl.nested import flatten_nested, layer_paths, nested_models, resolve_layer
from kerabl.networks import layer_table, load_any_network
from kerabl.weightfiles import randomize_weights
from kerabl.zhou.results import ZResults

from test_cli import assert_one_line_error, invoke, one_process  # noqa: F401 (a fixture)

SIZE = 32
BASE = f"mobilenetv2_0.35_{SIZE}"
LAYER = "block_4_add"          # inside the base: (4, 4, 16) at a 32 x 32 input, a cut point
Z_LAYER = "block_3_project_BN"  # (4, 4, 16): a conv's output, where the Z study has L1 norms
SMALL = ["--grid", "2x2", "--probe-fits", "2", "--heldout-folds", "2", "--no-progress",
         "--preprocess", "tf"]
SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def _base():
    return keras.applications.MobileNetV2(include_top=False, input_shape=(SIZE, SIZE, 3),
                                          alpha=0.35, weights=None)


def _classifiers() -> dict:
    """The two ways of calling a base: a Sequential and a functional model, the same random
    weights (drawn in the same order).

    Random weights shrink the signal about tenfold every two blocks (out_relu ~1e-8), so the
    head's kernel is scaled up to give class scores of order one that differ between images.
    """
    seq = keras.Sequential([_base(), keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3)])
    inputs = keras.Input((SIZE, SIZE, 3), name="image")
    x = _base()(inputs, training=False)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    fun = keras.Model(inputs, keras.layers.Dense(3, name="logits")(x), name="transfer")
    for model in (seq, fun):
        randomize_weights(model, 0, "he")
        dense = model.layers[-1]
        dense.kernel.assign(np.asarray(dense.kernel) * 1e8)
    return {"sequential": seq, "functional": fun}


@pytest.fixture(scope="module")
def nested(tmp_path_factory):
    """The two classifiers, each saved as .keras, and 3 class folders of 3 images."""
    root = tmp_path_factory.mktemp("nested")
    spec = importlib.util.spec_from_file_location("own_model_example",
                                                  SCRIPTS / "own_model_example.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    images = example.make_images(root / "images", 3, seed=5, classes=("a", "b", "c"))
    models = _classifiers()
    for name, model in models.items():
        model.save(root / f"{name}.keras")
    return root, models, images


class Times(keras.layers.Layer):
    """x * mask, the mask a variable (set with `mask.assign`, no rebuild)."""

    def __init__(self, shape, **kwargs):
        super().__init__(**kwargs)
        self.mask = self.add_weight(shape=shape, initializer="ones", trainable=False)

    def call(self, inputs):
        return inputs * self.mask


def _literal(model, target):
    """`model` (nested) with a `Times` layer after the base's `target` layer (shared weights)."""
    base = model.get_layer(BASE)
    times = Times(tuple(base.get_layer(target).output.shape[1:]))

    def call(layer, *args, **kwargs):
        out = layer(*args, **kwargs)
        return times(out) if layer.name == target else out

    masked = keras.models.clone_model(base, clone_function=lambda layer: layer,
                                      call_function=call)
    whole = keras.models.clone_model(
        model, clone_function=lambda layer: masked if layer is base else layer)
    return whole, times.mask


@pytest.mark.slow
def test_flat_graph_equals_the_nested_model_and_names_inner_layers_by_path(nested):
    _, models, _ = nested
    x = np.random.default_rng(0).uniform(-1, 1, (4, SIZE, SIZE, 3)).astype(np.float32)
    for model in models.values():
        assert nested_models(model) == [BASE]
        flat = flatten_nested(model)
        assert not any(isinstance(layer, keras.Model) for layer in flat.layers)
        np.testing.assert_array_equal(flat.predict_on_batch(x), model.predict_on_batch(x))
        assert layer_paths(flat)[LAYER] == f"{BASE}/{LAYER}"
        assert resolve_layer(flat, f"{BASE}/{LAYER}") == resolve_layer(flat, LAYER) == LAYER
        rows = {row["name"]: row for row in layer_table(flat, ())}
        assert rows[LAYER]["inside"] == BASE and rows[LAYER]["cut_point"]
        assert not rows["block_4_project_BN"]["cut_point"]      # the skip crosses it
        assert rows[model.layers[-1].name]["inside"] == ""
    plain = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    assert flatten_nested(plain) is plain and layer_paths(plain) == {}


def test_clashing_inner_names_get_paths_and_a_bare_name_is_refused():
    def tower(name):   # a layer and two plain operations (not layers) on tensors
        inputs = keras.Input((3,))
        return keras.Model(inputs, keras.layers.Dense(2, name="d")(inputs) + inputs[:, :2],
                           name=name)

    inputs = keras.Input((3,), name="x")
    a, b = tower("a"), tower("b")
    outer = keras.Model(inputs, keras.layers.Add(name="sum")([a(inputs), b(inputs)]))
    randomize_weights(outer, 1)
    flat = flatten_nested(outer)
    paths = layer_paths(flat)
    assert (paths["a.d"], paths["b.d"]) == ("a/d", "b/d") and "d" not in paths
    assert resolve_layer(flat, "b/d") == "b.d"
    with pytest.raises(KerablError, match="in several nested models.*a/d, b/d"):
        resolve_layer(flat, "d")
    with pytest.raises(KerablError, match="has no layer 'a/e'"):
        resolve_layer(flat, "a/e")
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(flat.predict_on_batch(x), outer.predict_on_batch(x))


@pytest.mark.slow
def test_layers_command_lists_the_base_inner_layers(nested):
    root, _, _ = nested
    result = invoke("layers", root / "functional.keras")
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line.split() for line in result.output.splitlines()[1:]}
    assert rows[LAYER][-3:] == ["yes", "yes", BASE]
    assert rows["logits"][-2:] == ["yes", "no"] and "image" not in rows
    assert BASE not in rows and "Functional" not in result.output
    assert f"name them as listed or as {BASE}/LAYER" in result.output


@pytest.mark.slow
@pytest.mark.usefixtures("one_process")
@pytest.mark.parametrize("kind", ["sequential", "functional"])
def test_study_and_units_on_an_inner_layer_equal_literal_recomputation(nested, kind, tmp_path):
    root, models, images = nested
    model, path = models[kind], root / f"{kind}.keras"
    data = folder_imageset(images)
    common = ["--model", path, "--images", images, "--layers", f"{BASE}/{LAYER}"]

    result = invoke("study", "--out", tmp_path / "h", *common, *SMALL, "--no-clip")
    assert result.exit_code == 0, result.output
    res = HResults.open(tmp_path / "h" / "h_results.h5")
    assert res.layers == [LAYER] and res.done.all()
    assert list(res.n_units) == [4 * 4 * 16]
    literal, mask = _literal(model, LAYER)
    changed = 0
    for ci, c in enumerate(data.classes):
        rows = data.rows_of(c)
        x = data.load((SIZE, SIZE), "tf", rows=rows)
        labels = np.asarray(data.labels)[rows]
        before = true_class_rank(model.predict_on_batch(x), labels)
        np.testing.assert_array_equal(res.rank_before[ci, :len(rows)], before)
        membership = res.units(ci, LAYER)["membership"]
        for k in range(4):
            mask.assign((membership != k).astype(np.float32).reshape(4, 4, 16))
            after = true_class_rank(literal.predict_on_batch(x), labels)
            np.testing.assert_array_equal(res.rank_after[ci, 0, k, :len(rows)], after)
            np.testing.assert_allclose(res.deficit[ci, 0, k], (after - before).mean(),
                                       atol=1e-12)
            changed += int((after != before).sum())
    assert changed > 0   # some ablations move ranks: the check compares changed ranks

    result = invoke("units", "--out", tmp_path / "z", "--model", path, "--images", images,
                    "--layers", f"{BASE}/{Z_LAYER}", "--no-progress", "--preprocess", "tf")
    assert result.exit_code == 0, result.output
    z = ZResults.open(tmp_path / "z" / "z_results.h5").layer(Z_LAYER)
    x = data.load((SIZE, SIZE), "tf")
    labels = np.asarray(data.labels)
    base = model.get_layer(BASE)
    acts = keras.Model(base.inputs, base.get_layer(Z_LAYER).output).predict_on_batch(x)
    means = [acts[labels == c].mean(axis=(0, 1, 2)) for c in data.classes]
    np.testing.assert_allclose(z["class_means"], np.transpose(means), rtol=1e-5, atol=1e-7)
    base_preds = model.predict_on_batch(x).argmax(axis=1)
    np.testing.assert_allclose(z["base_class_acc"],
                               [(base_preds[labels == c] == c).mean() for c in data.classes])
    literal, mask = _literal(model, Z_LAYER)
    moved = 0
    for unit in range(16):
        ones = np.ones((4, 4, 16), np.float32)
        ones[..., unit] = 0
        mask.assign(ones)
        preds = literal.predict_on_batch(x).argmax(axis=1)
        accuracy = [(preds[labels == c] == c).mean() for c in data.classes]
        np.testing.assert_allclose(z["class_acc"][unit], accuracy, err_msg=f"unit {unit}")
        moved += int((preds != base_preds).sum())
    assert moved > 0   # some single-unit ablations change a prediction


@pytest.mark.slow
def test_a_nested_model_loaded_by_name_is_flat(nested):
    root, models, _ = nested
    net = load_any_network(str(root / "sequential.keras"))
    assert LAYER in net.targets and BASE not in {layer.name for layer in net.model.layers}
    x = np.random.default_rng(1).uniform(-1, 1, (2, SIZE, SIZE, 3)).astype(np.float32)
    np.testing.assert_array_equal(net.model.predict_on_batch(x),
                                  models["sequential"].predict_on_batch(x))


@pytest.mark.slow
def test_recorder_flattens_a_nested_network_and_takes_paths(nested, tmp_path):
    _, models, images = nested
    model = models["sequential"]
    net = Network(name="transfer", model=model, weights_id="random:0", targets=(LAYER,),
                  input_size=(SIZE, SIZE), preprocess="tf", n_classes=3)
    data = folder_imageset(images)
    with record_activations(net, data, [f"{BASE}/{LAYER}"], tmp_path / "acts.h5") as cache:
        recorded = cache.read(LAYER)
    base = model.get_layer(BASE)
    inner = keras.Model(base.inputs, base.get_layer(LAYER).output)
    expected = inner.predict_on_batch(data.load((SIZE, SIZE), "tf")).reshape(len(data), -1)
    np.testing.assert_allclose(recorded, expected, rtol=1e-6, atol=1e-7)
    assert BASE in {layer.name for layer in model.layers}   # the model passed is left as it was


@pytest.mark.slow
def test_unknown_inner_layer_is_one_line_before_any_file(nested, tmp_path):
    root, _, images = nested
    common = ["--model", root / "sequential.keras", "--images", images, "--preprocess", "tf"]
    result = invoke("study", "--out", tmp_path / "h", *common, "--layers", f"{BASE}/block_3_add")
    assert_one_line_error(result, "unknown layer 'mobilenetv2_0.35_32/block_3_add'",
                          "BASE/LAYER")
    result = invoke("units", "--out", tmp_path / "z", *common, "--layers", "block_99_add")
    assert_one_line_error(result, "has no layer 'block_99_add'", "a path BASE/LAYER")
    assert not (tmp_path / "h").exists() and not (tmp_path / "z").exists()


def test_an_inner_layer_without_a_config_is_one_clear_error():
    class Scaled(keras.layers.Layer):   # its array argument leaves it without a config
        def __init__(self, factor, **kwargs):
            super().__init__(**kwargs)
            self.factor = factor

        def call(self, inputs):
            return inputs * self.factor

    inputs = keras.Input((3,))
    inner = keras.Model(inputs, Scaled(np.array([1.0, 2.0, 3.0]), name="scaled")(inputs),
                        name="inner")
    outer_inputs = keras.Input((3,))
    outer = keras.Model(outer_inputs, inner(outer_inputs))
    with pytest.raises(KerablError, match="layer 'scaled' .Scaled. inside a nested model cannot "
                                          "be rebuilt from its config"):
        flatten_nested(outer)
