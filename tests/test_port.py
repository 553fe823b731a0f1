"""Tests of the PyTorch side: torchvision-layout weights into Keras (and the demo's Keras weights
into torch) giving the same outputs, `kerabl convert`, the torch reference engine (`crosscheck`) on
a small demo study, `kerabl compare` on hand-made CSVs, and the torchvision preprocessing."""

import csv

import keras
import numpy as np
import pytest
from typer.testing import CliRunner

from kerabl.cli import app
from kerabl.compare import compare_csv
from kerabl.data import digits_imageset, paper_imageset
from kerabl.images import preprocess_images
from kerabl.hayne.results import CSV_COLUMNS

torch = pytest.importorskip("torch")

from kerabl import torch_models  # noqa: E402
from kerabl.crosscheck import (chw_mask, crosscheck, hook_points, torch_from_keras,  # noqa: E402
                               torch_network)
from kerabl.models import load_network  # noqa: E402


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def keras_at(model, layers, x):
    """The outputs of `layers` (one sub-model, one pass)."""
    sub = keras.Model(model.inputs, [model.get_layer(layer).output for layer in layers])
    return [np.asarray(out) for out in sub.predict_on_batch(x)]


def torch_at(net, modules, x_nhwc):
    """The outputs of `modules` (forward hooks, one pass), channels last like Keras."""
    seen = {}
    handles = [m.register_forward_hook(lambda m, i, o, n=n: seen.setdefault(n, o.detach()))
               for n, m in enumerate(modules)]
    with torch.inference_mode():
        net(torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2))))
    for handle in handles:
        handle.remove()
    outs = [seen[n].numpy() for n in range(len(modules))]
    return [out.transpose(0, 2, 3, 1) if out.ndim == 4 else out for out in outs]


def assert_same_outputs(name, keras_model, net, layers, x):
    points = hook_points(name, net, keras_model)
    torch_outs = torch_at(net, [points[layer] for layer in layers], x)
    for keras_out, torch_out in zip(keras_at(keras_model, layers, x), torch_outs):
        assert_close(keras_out, torch_out)


def assert_close(keras_out, torch_out):
    """Equal to 1e-4 of the largest magnitude (random weights give small activations)."""
    scale = float(np.abs(torch_out).max())
    assert scale > 0
    assert float(np.abs(keras_out - torch_out).max()) <= 1e-4 * scale


def random_state(name: str, seed: int):
    """A torch-initialised network with random BatchNorm statistics, as torch would save it."""
    torch.manual_seed(seed)
    net = torch_network(name)
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.1, 0.1)
            assert module.running_mean.shape == (n,)
    return net


def test_demo_keras_weights_in_torch_give_the_same_outputs():
    net = load_network("demo")
    port = torch_from_keras("demo", net.model)
    x = digits_imageset().load((32, 32), "none", rows=np.arange(0, 450, 15))
    assert_same_outputs("demo", net.model, port, ("conv_2", "pool_5", "dense_1"), x)
    keras_probs = np.asarray(net.model.predict_on_batch(x))
    with torch.inference_mode():
        torch_probs = port(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    assert np.abs(keras_probs - torch_probs).max() < 1e-4
    assert (keras_probs.argmax(1) == torch_probs.argmax(1)).all()


def test_state_dict_round_trip_and_misfit(tmp_path):
    model = torch_models.resnet50_torchvision_model()
    state = {k: v.numpy() for k, v in random_state("resnet50_torchvision", 1).state_dict().items()}
    torch_models.torch_to_keras("resnet50_torchvision", model, state)
    back = torch_models.keras_to_torch("resnet50_torchvision", model)
    assert sorted(back) == sorted(state)
    assert all(np.array_equal(back[k], state[k]) for k in state if "num_batches" not in k)
    del state["layer2.0.downsample.1.running_var"]
    with pytest.raises(Exception, match="missing layer2.0.downsample.1.running_var"):
        torch_models.torch_to_keras("resnet50_torchvision", model, state)


@pytest.mark.slow
@pytest.mark.realdata
@pytest.mark.parametrize("name, layers, n_images", [
    ("vgg16", ("block1_conv2", "block5_pool", "fc1", "fc2"), 1),  # one image: VGG16 is slow
    ("alexnet_torchvision", ("conv_2", "pool_5", "dense_1", "dense_3"), 2),
    ("resnet50_torchvision", ("conv1_relu", "conv3_block1_out", "conv5_block3_out", "predictions"), 2),
])
def test_torchvision_state_dicts_give_keras_the_same_outputs(tmp_path, hayne50, name, layers,
                                                            n_images):
    port = random_state(name, 0)
    path = tmp_path / f"{name}.pth"
    torch.save(port.state_dict(), path)
    net = load_network(name, path)
    assert net.preprocess == "torchvision" and net.weights_id.startswith("sha256:")
    images = paper_imageset(hayne50, classes=["schooner"])
    x = images.load(net.input_size, net.preprocess, rows=np.arange(n_images))
    assert_same_outputs(name, net.model, port, layers, x)


def test_convert_writes_keras_weights_and_missing_torch_is_one_line(tmp_path, monkeypatch):
    port = torch_from_keras("demo", load_network("demo").model)
    for p in port.parameters():
        p.data.mul_(1.5)
    torch.save(port.state_dict(), tmp_path / "demo.pth")
    result = invoke("convert", tmp_path / "demo.pth", "--model", "demo", "--out",
                    tmp_path / "demo_x.weights.h5")
    assert result.exit_code == 0, result.output
    net = load_network("demo", tmp_path / "demo_x.weights.h5")
    kernel = net.model.get_layer("conv_1").get_weights()[0]
    np.testing.assert_array_equal(kernel, port.features[0].weight.detach().numpy().transpose(2, 3, 1, 0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo.pth", "demo_x.weights.h5"]

    bad = invoke("convert", tmp_path / "demo.pth", "--model", "vgg16", "--out", tmp_path / "v.weights.h5")
    assert bad.exit_code == 2 and "does not fit vgg16" in bad.stderr
    assert not (tmp_path / "v.weights.h5").exists()

    def no_torch():
        raise torch_models.KerablError(torch_models.TORCH_EXTRA)
    monkeypatch.setattr(torch_models, "import_torch", no_torch)
    result = invoke("activations", "--weights", tmp_path / "demo.pth", "--out", tmp_path / "a.h5")
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [f"error: {torch_models.TORCH_EXTRA}"]


def test_crosscheck_of_a_missing_file_is_one_line(tmp_path):
    result = invoke("crosscheck", tmp_path / "absent.h5", "--out", tmp_path / "cc")
    assert result.exit_code == 2 and "does not exist" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "cc").exists()


def test_chw_mask_zeroes_the_converted_units():
    mask = chw_mask((2, 2, 3), np.array([3, 11]), "element")
    assert mask.shape == (3, 2, 2) and mask.sum() == 10
    assert mask[0, 0, 1] == 0 and mask[2, 1, 1] == 0
    assert (chw_mask((2, 2, 3), np.array([1]), "channel")[1] == 0).all()


@pytest.mark.slow
def test_crosscheck_of_a_small_demo_study(tmp_path):
    from kerabl.hayne.study import HConfig, run_h_study

    net = load_network("demo")
    images = digits_imageset()
    small = images.subset(images.classes[:2])
    config = HConfig(grid=(2, 2), probe_fits=2, heldout_folds=2, srs=False)
    for unit in ("element", "channel"):
        out = tmp_path / unit
        results = run_h_study(net, small, out, layers=["conv_2", "pool_5", "dense_1"],
                              config=HConfig(**{**config.__dict__, "unit": unit}),
                              progress=False, workers=1, log=lambda m: None)
        summary = crosscheck(results, out / "cc", images=small, progress=False, log=lambda m: None)
        assert summary.cells == 2 * 3 * 4 and summary.equal_deficits == summary.cells
        assert summary.ranks_equal == summary.ranks_compared > 0
        assert summary.line().startswith("cells: 24 compared, 24 with equal deficits, max |deficit diff| 0,")
        with open(summary.port_csv) as fh:
            rows = list(csv.DictReader(fh))
        assert len(rows) == 24 and tuple(rows[0]) == CSV_COLUMNS
        assert compare_csv(summary.keras_csv, summary.port_csv, columns=("deficit",)).ok
        assert not compare_csv(summary.keras_csv, summary.port_csv).ok   # the port has no probe


def write_cells(path, rows, columns=CSV_COLUMNS):
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        for cls, layer, cell, probe, deficit in rows:
            writer.writerow([cls, 0, layer, cell, cell // 2, cell % 2, 3, "", "", probe, "",
                             deficit, "", ""][:len(columns)])
    return path


CELLS = [("a", "conv_1", 0, 0.5, 1.0), ("a", "conv_1", 1, 0.7, 2.0), ("a", "conv_1", 2, 0.9, 0.0),
         ("a", "dense_1", 0, 0.6, 0.5), ("a", "dense_1", 1, 0.8, 3.5)]


def test_compare_equal_off_missing_and_other_schema(tmp_path):
    a = write_cells(tmp_path / "a.csv", CELLS)
    same = invoke("compare", a, write_cells(tmp_path / "b.csv", CELLS), "--out", tmp_path / "fig")
    assert same.exit_code == 0, same.output
    assert "conv_1: 3 cells; deficit: max |diff| 0, r 1 (3 pairs); probe: max |diff| 0, r 1" \
        in same.stdout
    assert (tmp_path / "fig" / "compare.png").is_file()

    off = [c if c[:3] != ("a", "dense_1", 1) else (*c[:4], 3.25) for c in CELLS]
    result = invoke("compare", a, write_cells(tmp_path / "off.csv", off), "--tolerance", "0.1")
    assert result.exit_code == 1
    assert "differs: a dense_1 cell 1 deficit 3.5 vs 3.25" in result.stdout
    assert "dense_1: 2 cells; deficit: max |diff| 0.25" in result.stdout
    assert invoke("compare", a, tmp_path / "off.csv", "--tolerance", "0.3").exit_code == 0

    short = invoke("compare", a, write_cells(tmp_path / "short.csv", CELLS[:3]))
    assert short.exit_code == 1
    assert "2 cells only in A" in short.stdout and "('a', 'dense_1', 0)" in short.stdout

    z = tmp_path / "z.csv"
    z.write_text("layer,unit,overall_drop\nconv_1,0,0.1\n")
    for other in (z, tmp_path / "absent.csv"):
        result = invoke("compare", a, other)
        assert result.exit_code == 2 and "Traceback" not in result.output
        assert len(result.stderr.strip().splitlines()) == 1
    assert "no column class, cell, deficit, probe" in invoke("compare", a, z).stderr


def test_torchvision_preprocessing_is_resize_256_centre_crop_normalise():
    from PIL import Image

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    out = preprocess_images([image], (224, 224), "torchvision")[0]
    resized = np.asarray(Image.fromarray(image).resize((341, 256), Image.Resampling.BILINEAR))
    crop = resized[16:240, 58:282] / np.float32(255)  # int(round(16.0)), int(round(58.5)) = 58
    expected = (crop - np.float32([0.485, 0.456, 0.406])) / np.float32([0.229, 0.224, 0.225])
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-6)
