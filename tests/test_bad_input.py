"""Tests of bad input and damaged files (docs/errors.md): `kerabl compare` on NaN, empty and
Excel-written cells; 16-bit PNGs against TensorFlow's decoding; damaged H and Z results in
`export` and `figures`; unreadable images and dangling links named together before any file is
written; a folder passed where a results file belongs."""

import os
from pathlib import Path

import cv2
import h5py
import keras
import numpy as np
import pytest
from PIL import Image

from kerabl.contents import file_table
from kerabl.errors import KerablError
from kerabl.folders import folder_imageset
from kerabl.hayne.results import CSV_COLUMNS, HResults
from kerabl.images import load_image
from kerabl.zhou.results import ZResults

from test_cli import assert_one_line_error, invoke
from test_figures import write_results as write_h
from test_figures_z import write_results as write_z

# ---------------------------------------------------------------------------------------------
# compare


def write_cells(path, rows, *, bom=False, crlf=False):
    """A cell CSV of export's schema; rows are (class, layer, cell, probe, deficit) with None
    for an empty field."""
    def field(v):
        return "" if v is None else str(v)

    lines = [",".join(CSV_COLUMNS)]
    for cls, layer, cell, probe, deficit in rows:
        values = {"class": cls, "class_index": "0", "layer": layer, "cell": str(cell),
                  "probe": field(probe), "deficit": field(deficit)}
        lines.append(",".join(values.get(c, "") for c in CSV_COLUMNS))
    text = ("\r\n" if crlf else "\n").join(lines) + ("\r\n" if crlf else "\n")
    Path(path).write_bytes(("\ufeff" if bom else "").encode() + text.encode())
    return path


CELLS = [("a", "conv_1", 0, 0.5, 1.0), ("a", "conv_1", 1, 0.7, 2.0), ("a", "dense_1", 0, 0.6, 0.5)]


def test_compare_number_against_nan_or_empty_differs(tmp_path):
    a = write_cells(tmp_path / "a.csv", CELLS)
    for missing in (None, "nan"):
        port = [(*c[:3], c[3], missing) for c in CELLS]           # every deficit NaN or empty
        result = invoke("compare", a, write_cells(tmp_path / f"b{missing}.csv", port))
        assert result.exit_code == 1, result.output
        assert "differs: a conv_1 cell 0 deficit 1.0 vs nan" in result.stdout
        assert "3 cells compared, 3 differ" in result.stdout
    both = [(*c[:3], c[3], None) for c in CELLS]                  # empty on both sides: equal
    same = invoke("compare", write_cells(tmp_path / "c.csv", both),
                  write_cells(tmp_path / "d.csv", [(*c[:3], c[3], "nan") for c in CELLS]))
    assert same.exit_code == 0, same.output
    assert "deficit: max |diff| n/a, r n/a (0 pairs)" in same.stdout


def test_compare_of_a_port_without_probes_takes_columns(tmp_path):
    a = write_cells(tmp_path / "a.csv", CELLS)
    port = write_cells(tmp_path / "port.csv", [(*c[:3], None, c[4]) for c in CELLS])  # no probe
    both = invoke("compare", a, port)
    assert both.exit_code == 1 and "probe 0.5 vs nan" in both.stdout, both.output
    deficits = invoke("compare", a, port, "--columns", "deficit")
    assert deficits.exit_code == 0, deficits.output
    assert "conv_1: 2 cells; deficit: max |diff| 0, r 1 (2 pairs)" in deficits.stdout
    assert "probe" not in deficits.stdout.split("\n")[0]
    wrong = invoke("compare", a, port, "--columns", "rank")
    assert wrong.exit_code == 2 and "choose from deficit, probe" in wrong.output


def test_compare_with_nothing_compared_exits_1(tmp_path):
    empty = [(*c[:3], None, None) for c in CELLS]
    result = invoke("compare", write_cells(tmp_path / "a.csv", empty),
                    write_cells(tmp_path / "b.csv", empty))
    assert result.exit_code == 1 and "nothing compared" in result.stdout, result.output
    other_class = [("z", *c[1:]) for c in CELLS]                  # no common cell at all
    result = invoke("compare", write_cells(tmp_path / "c.csv", CELLS),
                    write_cells(tmp_path / "d.csv", other_class))
    assert result.exit_code == 1 and "nothing compared" in result.stdout
    header_only = write_cells(tmp_path / "e.csv", [])
    assert invoke("compare", header_only, header_only).exit_code == 1


def test_compare_reads_an_excel_csv_with_bom_and_crlf(tmp_path):
    a = write_cells(tmp_path / "a.csv", CELLS)
    excel = write_cells(tmp_path / "excel.csv", CELLS, bom=True, crlf=True)
    assert excel.read_bytes()[:3] == b"\xef\xbb\xbf" and b"\r\n" in excel.read_bytes()
    result = invoke("compare", a, excel)
    assert result.exit_code == 0, result.output
    assert "3 cells compared, 0 differ" in result.stdout


# ---------------------------------------------------------------------------------------------
# 16-bit images


def _tf_decoded(path):
    import tensorflow as tf

    raw = tf.io.read_file(str(path))
    sixteen = tf.io.decode_png(raw, channels=3, dtype=tf.uint16)
    return (sixteen.numpy().astype(np.int64) * 255 / 65535,
            tf.image.convert_image_dtype(sixteen, tf.uint8).numpy())


@pytest.mark.parametrize("channels", [1, 3])
def test_16_bit_png_equals_tensorflow_within_one_grey_level(tmp_path, channels):
    rng = np.random.default_rng(channels)
    ramp = np.linspace(0, 65535, 40 * 30).reshape(40, 30)
    dark = (ramp * 0.3 + rng.integers(0, 300, (40, 30))).astype(np.uint16)   # mean ~ 72 of 255
    pixels = dark if channels == 1 else np.stack([dark, dark[::-1], 65535 - dark], -1)
    path = tmp_path / f"deep{channels}.png"
    assert cv2.imwrite(str(path), pixels if channels == 1 else pixels[..., ::-1])
    image = load_image(path)
    scaled, converted = _tf_decoded(path)
    assert image.shape == (40, 30, 3) and image.dtype == np.uint8
    assert np.abs(image.astype(np.int64) - scaled).max() <= 1
    assert np.abs(image.astype(np.int64) - converted).max() <= 1
    if channels == 1:
        assert abs(image.mean() - scaled.mean()) < 1 and image.mean() < 100   # not clipped


def test_32_bit_image_is_refused(tmp_path):
    path = tmp_path / "float.tif"
    Image.fromarray(np.ones((4, 4), np.float32)).save(path)
    with pytest.raises(KerablError, match="32-bit floats"):
        load_image(path)


# ---------------------------------------------------------------------------------------------
# damaged results


def _break_config(f):
    f.attrs["config"] = "{not json"


def _drop(name):
    def damage(f):
        del f[name]
    return damage


def _reshape(name):
    def damage(f):
        data = f[name][()]
        del f[name]
        f[name] = data.reshape(-1)[: max(1, data.size - 1)]
    return damage


H_DAMAGE = {"config": _break_config, "missing": _drop("deficit"), "shape": _reshape("probe"),
            "units": lambda f: [_reshape(f"units/{layer}/selectivity")(f) for layer in f["units"]]}
Z_DAMAGE = {"config": _break_config, "missing": _drop("layer_conv_a/overall_drop"),
            "shape": _reshape("layer_dense_b/l1"), "greedy": _drop("greedy/curves"),
            "labels": _drop("labels")}


def _damaged(path, damage):
    with h5py.File(path, "r+") as f:
        damage(f)
    return path


@pytest.mark.parametrize("kind", sorted(H_DAMAGE))
def test_damaged_h_results_are_one_line_in_export_and_figures(tmp_path, kind):
    path = _damaged(write_h(tmp_path / "h_results.h5", skip=()), H_DAMAGE[kind])
    for args in (["export", path, "--out", tmp_path / "h.csv"],
                 ["figures", path, "--out", tmp_path / "figs"]):
        if kind == "units" and args[0] == "export":
            continue      # export reads no per-unit data
        assert_one_line_error(invoke(*args), str(path), "damaged", "kerabl study")
    assert not (tmp_path / "h.csv").exists() and not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("kind", sorted(Z_DAMAGE))
def test_damaged_z_results_are_one_line_in_export_and_figures(tmp_path, kind):
    path = _damaged(write_z(tmp_path / "z_results.h5"), Z_DAMAGE[kind])
    for args in (["export", path, "--out", tmp_path / "z.csv"],
                 ["figures", path, "--out", tmp_path / "figs"]):
        assert_one_line_error(invoke(*args), str(path), "damaged", "kerabl units")
    assert not (tmp_path / "z.csv").exists()


def test_z_schema_old_files_read_newer_refused(tmp_path):
    path = write_z(tmp_path / "z_results.h5")            # written without a schema, as before
    assert ZResults.open(path).layers == ["conv_a", "dense_b"]
    with h5py.File(path, "r+") as f:
        f.attrs["schema"] = 1
    assert ZResults.open(path).layers == ["conv_a", "dense_b"]
    with h5py.File(path, "r+") as f:
        f.attrs["schema"] = 2
    assert_one_line_error(invoke("export", path, "--out", tmp_path / "z.csv"),
                          "results schema 2", "this kerabl reads 1")


def test_h_results_undamaged_still_read(tmp_path):
    res = HResults.open(write_h(tmp_path / "h_results.h5", skip=()))
    assert res.units(0, "conv_1")["selectivity"].shape == (64,)


def test_export_and_figures_on_a_folder_say_it_is_a_folder(tmp_path):
    write_h(tmp_path / "h_results.h5", skip=())
    for args in (["export", tmp_path, "--out", tmp_path / "x.csv"],
                 ["figures", tmp_path, "--out", tmp_path / "figs"]):
        assert_one_line_error(invoke(*args), f"{tmp_path} is a folder",
                              str(tmp_path / "h_results.h5"))


# ---------------------------------------------------------------------------------------------
# unreadable images


def _folders(root):
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for k in range(3):
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(
                root / cls / f"{k}.png")
    return root


def _spoil(root):
    """Three unreadable images and a dangling link, in both classes; and a text file."""
    (root / "a" / "empty.png").write_bytes(b"")
    (root / "a" / "text.jpg").write_text("not an image")
    whole = (root / "b" / "0.png").read_bytes()
    (root / "b" / "cut.png").write_bytes(whole[: len(whole) // 2])
    os.symlink(root / "gone.png", root / "b" / "link.png")
    (root / "b" / "notes.txt").write_text("labels checked")
    return ["empty.png", "text.jpg", "cut.png", "link.png"]


def test_every_unreadable_image_named_in_one_line(tmp_path):
    bad = _spoil(_folders(tmp_path / "images"))
    images = folder_imageset(tmp_path / "images")
    assert [p.name for p in images.skipped] == ["notes.txt"]
    with pytest.raises(KerablError, match=r"^1 image cannot be read: .*link\.png"):
        file_table(images)      # without decoding, only the dangling link cannot be read
    with pytest.raises(KerablError) as error:
        file_table(images, preprocess="scale")
    line = str(error.value)
    assert "\n" not in line and line.startswith("4 images cannot be read")
    for name in bad:
        assert name in line
    assert "does not exist" in line      # the link says where it points


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    L = keras.layers
    inputs = keras.Input((16, 16, 3))
    x = L.Conv2D(4, 3, activation="relu", name="conv")(inputs)
    x = L.Flatten(name="flatten")(x)
    outputs = L.Dense(2, activation="softmax", name="predictions")(x)
    path = tmp_path_factory.mktemp("tiny") / "tiny.keras"
    keras.Model(inputs, outputs).save(path)
    return path


@pytest.mark.parametrize("stage", ["study", "units"])
def test_study_and_units_name_every_bad_image_before_writing(tmp_path, tiny_model, stage):
    bad = _spoil(_folders(tmp_path / "images"))
    out = tmp_path / "out"
    result = invoke(stage, "--model", tiny_model, "--images", tmp_path / "images",
                    "--out", out, "--preprocess", "scale", "--no-progress")
    assert_one_line_error(result, "4 images cannot be read", *bad)
    assert "(cannot identify image file)" in result.stderr and "(image file is truncated)" \
        in result.stderr
    assert "skipping 1 file in the class folders that is not an image by suffix" in result.stdout
    assert "notes.txt" in result.stdout
    assert not out.exists() or not [p for p in out.rglob("*") if p.is_file()]


def test_units_writes_a_z_file_with_its_schema(tmp_path, tiny_model):
    out = tmp_path / "out"
    result = invoke("units", "--model", tiny_model, "--images", _folders(tmp_path / "images"),
                    "--out", out, "--preprocess", "scale", "--greedy-steps", "2",
                    "--greedy-seeds", "1", "--no-progress")
    assert result.exit_code == 0, result.output
    with h5py.File(out / "z_results.h5", "r") as f:
        assert f.attrs["kind"] == "kerabl.z-results" and int(f.attrs["schema"]) == 1
    assert ZResults.open(out / "z_results.h5").layers
