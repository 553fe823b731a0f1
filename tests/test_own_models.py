"""Tests of models and data outside the zoo: keras.applications names and `.keras` files (custom
layers), class folders with any names, the preprocess steps, `kerabl layers`, the stage commands
`grid` -> `probe` -> `ablate` against `kerabl study`, and bad input refused with one line before
any forward pass."""

import importlib.util
import json
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from kerabl.images import preprocess_images
from kerabl.errors import KerablError
from kerabl.folders import folder_imageset
from kerabl.hayne.results import HResults
from kerabl.models import build_model, default_targets
from kerabl.weightfiles import randomize_weights
from kerabl.networks import arrays_digest, block_targets, input_size_of, load_any_network

from test_cli import assert_one_line_error, invoke, one_process  # noqa: F401 (a fixture)

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
SMALL = ["--grid", "2x2", "--probe-fits", "2", "--heldout-folds", "2", "--no-progress"]
LAYER_MODULE = '''
import keras

@keras.saving.register_keras_serializable("kerabl_test")
class Doubled(keras.layers.Layer):
    """2 * x: a custom layer that a .keras file can only load when it is registered."""

    def call(self, inputs):
        return 2.0 * inputs
'''


def _example():
    spec = importlib.util.spec_from_file_location("own_model_example", SCRIPTS / "own_model_example.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def custom_model(tmp_path_factory):
    """A .keras model with a registered custom layer, its layer module, and 3 class folders."""
    root = tmp_path_factory.mktemp("own")
    (root / "doubled_layer.py").write_text(LAYER_MODULE)
    spec = importlib.util.spec_from_file_location("doubled_layer", root / "doubled_layer.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["doubled_layer"] = module
    spec.loader.exec_module(module)
    L = keras.layers
    inputs = keras.Input((16, 16, 3))
    x = L.Conv2D(4, 3, activation="relu", name="conv")(inputs)
    x = module.Doubled(name="doubled")(x)
    x = L.MaxPooling2D(2, name="pool")(x)
    x = L.Flatten(name="flatten")(x)
    x = L.Dense(8, activation="relu", name="hidden")(x)
    outputs = L.Dense(3, activation="softmax", name="predictions")(x)
    path = root / "doubled.keras"
    keras.Model(inputs, outputs).save(path)
    images = _example().make_images(root / "images", 5, seed=3,
                                    classes=("zebra crossing", "Äpfel", "10_b"))
    return path, root / "doubled_layer.py", images


def test_block_targets_are_the_zoo_defaults_of_demo_and_vgg16():
    for name in ("demo", "vgg16"):
        model = build_model(name)
        assert block_targets(model) == default_targets(name, model)


def test_block_targets_end_after_bn_and_relu_and_skip_inside_residuals():
    L = keras.layers
    inputs = keras.Input((8, 8, 3))
    x = L.Conv2D(4, 3, padding="same", name="c1")(inputs)
    x = L.BatchNormalization(name="bn1")(x)
    a = L.ReLU(name="relu1")(x)
    y = L.Conv2D(4, 3, padding="same", activation="relu", name="inner")(a)  # skip crosses it
    y = L.Add(name="add")([a, y])
    y = L.GlobalAveragePooling2D(name="gap")(y)
    outputs = L.Dense(2, name="logits")(y)
    assert block_targets(keras.Model(inputs, outputs)) == ("relu1", "add")


def test_resnet50_random_weights_and_its_block_outputs():
    net = load_any_network("resnet50", None, seed=0)
    assert net.name == "ResNet50" and net.weights_id == "random:0"
    assert net.input_size == (224, 224) and net.n_classes == 1000 and net.preprocess == "resnet50"
    assert net.targets == ("conv1_relu", *default_targets("resnet101", net.model))
    assert len(net.targets) == 17


def test_random_weights_keep_constant_state_only_when_asked():
    inputs = keras.Input((4, 4, 3))
    x = keras.layers.Normalization(name="norm")(inputs)   # mean 0, variance 1, count 0
    outputs = keras.layers.Dense(2, name="out")(keras.layers.Flatten()(x))
    model = keras.Model(inputs, outputs)
    with pytest.raises(KerablError, match="cannot randomise variable"):
        randomize_weights(model, 0)
    randomize_weights(model, 0, keep_constant=True)
    norm = model.get_layer("norm")
    assert float(np.sum(norm.variance)) == 3.0 and float(np.sum(np.abs(norm.mean))) == 0.0
    assert np.ptp(np.asarray(model.get_layer("out").kernel)) > 0


def test_preprocess_steps_give_known_numbers():
    image = np.full((2, 3, 3), [10, 20, 30], np.uint8)
    np.testing.assert_allclose(preprocess_images([image], (4, 4), "scale")[0, 0, 0],
                               np.array([10, 20, 30]) / 255, rtol=1e-6)
    np.testing.assert_allclose(preprocess_images([image], (4, 4), "tf")[0, 0, 0],
                               np.array([10, 20, 30]) / 127.5 - 1, rtol=1e-6)
    caffe = preprocess_images([image], (4, 4), "caffe")[0, 0, 0]
    np.testing.assert_allclose(caffe, [30 - 103.939, 20 - 116.779, 10 - 123.68], atol=1e-4)
    np.testing.assert_allclose(preprocess_images([image], (4, 4), "ResNet50")[0, 0, 0], caffe)
    torch = preprocess_images([image], (4, 4), "torch")[0, 0, 0]
    np.testing.assert_allclose(torch, (np.array([10, 20, 30]) / 255 - [0.485, 0.456, 0.406])
                               / [0.229, 0.224, 0.225], rtol=1e-5)
    resized = preprocess_images([image], (4, 4), "none")
    assert resized.shape == (1, 4, 4, 3) and np.allclose(resized, [10, 20, 30])


def test_class_folders_any_names_sorted_or_indexed(custom_model, tmp_path):
    _, _, images = custom_model
    data = folder_imageset(images)
    assert data.class_names == ["10_b", "zebra crossing", "Äpfel"] and data.classes == [0, 1, 2]
    assert len(data) == 15 and list(data.labels[:5]) == [0] * 5
    index = tmp_path / "index.json"
    index.write_text(json.dumps({"Äpfel": 7, "10_b": 2}))
    mapped = folder_imageset(images, class_index=index)
    assert mapped.class_names == ["Äpfel", "10_b"] and mapped.classes == [7, 2]
    chosen = folder_imageset(images, classes=["zebra crossing", "10_b"])
    assert chosen.classes == [1, 0]
    with pytest.raises(KerablError, match="at least two"):
        folder_imageset(images, classes=["Äpfel"])


def test_input_shape_the_images_cannot_take():
    for shape in ((16, 16, 1), (None, None, 3), (3, 16, 16)):
        model = keras.Sequential([keras.Input(shape), keras.layers.GlobalAveragePooling2D(),
                                  keras.layers.Dense(2)])
        with pytest.raises(KerablError, match=r"\(None, h, w, 3\)"):
            input_size_of(model, "m")


def test_layers_command_lists_units_cut_points_and_targets(custom_model):
    path, layer_file, _ = custom_model
    result = invoke("layers", path)
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line.split() for line in result.output.splitlines()[1:-1]}
    assert rows["conv"][-3:] == ["784", "yes", "yes"]   # 14 x 14 x 4
    assert rows["doubled"][-3:] == ["784", "yes", "no"]  # no conv/dense since the last target
    assert rows["hidden"][-3:] == ["8", "yes", "yes"] and rows["predictions"][-1] == "no"
    assert "2 default targets: conv, hidden" in result.output
    listed = invoke("--help").output
    assert all(name in listed for name in ("grid", "probe", "ablate", "layers"))


@pytest.mark.usefixtures("one_process")
def test_keras_file_with_custom_layer_studied_stage_by_stage_equals_study(custom_model, tmp_path):
    path, _, images = custom_model
    common = ["--model", path, "--images", images, "--preprocess", "scale", *SMALL]
    result = invoke("study", "--out", tmp_path / "study", *common)
    assert result.exit_code == 0, result.output
    res = HResults.open(tmp_path / "study" / "h_results.h5")
    assert res.layers == ["conv", "hidden"] and res.classes == ["10_b", "zebra crossing", "Äpfel"]
    assert res.config["model"] == "doubled" and res.config["preprocess"] == "scale"
    assert res.done.all() and np.isfinite(res.deficit).all()
    for stage in ("grid", "probe", "ablate"):
        result = invoke(stage, "--out", tmp_path / "stages", *common)
        assert result.exit_code == 0, result.output
        assert "baseline: top-1 " in result.output   # every stage prints the network's accuracy
    assert f"ablate: {tmp_path / 'stages' / 'h_results.h5'}" in result.output
    for name in ("study", "stages"):
        assert invoke("export", tmp_path / name / "h_results.h5", "--out",
                      tmp_path / f"{name}.csv").exit_code == 0
    assert (tmp_path / "study.csv").read_bytes() == (tmp_path / "stages.csv").read_bytes()
    other = [("3" if a == "2" and common[i - 1] == "--probe-fits" else a)
             for i, a in enumerate(common)]
    assert_one_line_error(invoke("probe", "--out", tmp_path / "stages", *other),
                          "probe_fits: 2 -> 3")


def test_stage_before_its_input_is_refused(custom_model, tmp_path):
    path, _, images = custom_model
    result = invoke("ablate", "--model", path, "--images", images, "--preprocess", "scale",
                    "--out", tmp_path, *SMALL)
    assert_one_line_error(result, "kerabl grid")


def _no_forward_pass(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a forward pass ran")
    monkeypatch.setattr(keras.Model, "predict_on_batch", refuse)
    monkeypatch.setattr(keras.Model, "predict", refuse)


def test_bad_input_is_one_line_before_any_forward_pass(custom_model, tmp_path, monkeypatch):
    path, layer_file, images = custom_model
    out = tmp_path / "out"
    more = tmp_path / "four"
    _example().make_images(more, 2, classes=("a", "b", "c", "d"))
    index = tmp_path / "index.json"
    index.write_text(json.dumps({"a": 0, "b": 1, "d": 5}))
    (tmp_path / "one" / "only").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "one" / "only" / "x.png")
    grey = keras.Sequential([keras.Input((16, 16, 1)), keras.layers.Flatten(),
                             keras.layers.Dense(3)])
    grey.save(tmp_path / "grey.keras")
    monkeypatch.delitem(keras.saving.get_custom_objects(), "kerabl_test>Doubled")
    _no_forward_pass(monkeypatch)
    cases = [
        (["--model", path, "--images", images], ["'Doubled'", "--custom-objects"]),
        (["--model", path, "--images", more, "--custom-objects", f"{layer_file}:Doubled"],
         ["3 outputs", "4 classes", "--class-index"]),
        (["--model", path, "--images", more, "--custom-objects", f"{layer_file}:Doubled",
          "--class-index", index], ["output index 5", "3 outputs"]),
        (["--model", tmp_path / "grey.keras", "--images", images], ["(None, 16, 16, 1)"]),
        (["--model", path, "--images", tmp_path / "one"], ["at least two"]),
        (["--model", "NoSuchNet", "--images", images], ["unknown model 'NoSuchNet'"]),
        (["--model", path, "--images", images, "--custom-objects", "no_such_module:X"],
         ["cannot import no_such_module"]),
    ]
    for args, fragments in cases:
        assert_one_line_error(invoke("study", "--out", out, *args, *SMALL), *fragments)
        assert not out.exists()


def test_example_script_trains_a_model_kerabl_studies(tmp_path):
    example = _example()
    images = example.make_images(tmp_path / "images", 12, seed=0)
    held_out = example.make_images(tmp_path / "held-out", 4, seed=1)
    model = example.train(images, epochs=6)
    assert example.accuracy(model, held_out) >= 0.75   # chance: 0.25
    model.save(tmp_path / "patterns.keras")
    net = load_any_network(str(tmp_path / "patterns.keras"))
    assert net.targets == ("conv_1", "conv_2", "dense_1") and net.input_size == (32, 32)
    assert net.weights_id.startswith("sha256:") and net.preprocess == "none"
    other = randomize_weights(example.pattern_model(), 1)
    assert arrays_digest(net.model) == arrays_digest(model) != arrays_digest(other)
    random = load_any_network(str(tmp_path / "patterns.keras"), None, seed=4)
    assert random.weights_id == "random:4"
    model.save_weights(tmp_path / "trained.weights.h5")
    again = load_any_network(str(tmp_path / "patterns.keras"), tmp_path / "trained.weights.h5")
    x = np.random.default_rng(0).random((2, 32, 32, 3), dtype=np.float32)
    assert not np.allclose(random.model.predict_on_batch(x), net.model.predict_on_batch(x))
    np.testing.assert_allclose(again.model.predict_on_batch(x), net.model.predict_on_batch(x))


@pytest.mark.slow
@pytest.mark.realdata
@pytest.mark.usefixtures("one_process")
def test_resnet50_random_on_two_paper_classes_and_two_layers(hayne50, tmp_path):
    from kerabl.data import paper_imageset
    from kerabl.imagenet import wnids

    paper = paper_imageset(hayne50, classes=["schooner", "brain_coral"])
    folder = tmp_path / "val"
    for ci in paper.classes:
        (folder / wnids()[ci]).mkdir(parents=True)
        for row in paper.rows_of(ci)[:4]:
            (folder / wnids()[ci] / paper.paths[row].name).symlink_to(paper.paths[row])
    result = invoke("study", "--model", "ResNet50", "--weights", "random", "--images", folder,
                    "--layers", "conv4_block6_out,conv5_block3_out", "--out", tmp_path / "out",
                    "--others", "all", *SMALL)
    assert result.exit_code == 0, result.output
    res = HResults.open(tmp_path / "out" / "h_results.h5")
    assert res.classes == ["brain_coral", "schooner"] and list(res.class_index) == [109, 780]
    assert res.config["model"] == "ResNet50" and res.config["weights_id"] == "random:0"
    assert list(res.n_units) == [14 * 14 * 1024, 7 * 7 * 2048] and res.done.all()
    assert (res.cell_count[:, 0] == 14 * 14 * 1024 // 4).all()
    assert np.isfinite(res.deficit).all() and np.isfinite(res.probe).all()
