"""The HDF5 activation cache: values, fingerprint, resume, reads."""

from pathlib import Path

import h5py
import numpy as np
import pytest

import kerabl.activations as activations
import kerabl.data as data
from kerabl.activations import open_cache, record_activations
from kerabl.data import ImageSet
from kerabl.errors import KerablError

N_IMAGES = 10
SIZE = (4, 4)


@pytest.fixture(scope="module")
def tiny_model():
    """conv (2 filters 2x2, valid, hand-set) -> ReLU 3x3x2, flatten -> dense 3 (hand-set)."""
    import keras

    inputs = keras.Input((*SIZE, 3))
    conv = keras.layers.Conv2D(2, 2, activation="relu", name="conv")(inputs)
    flat = keras.layers.Flatten()(conv)
    dense = keras.layers.Dense(3, name="dense")(flat)
    model = keras.Model(inputs, keras.layers.Softmax()(dense))
    kernel = np.zeros((2, 2, 3, 2), np.float32)
    kernel[0, 0, 0, 0] = 1.0          # filter 0: the red pixel at the window's top left
    kernel[1, 1, 2, 1] = -1.0         # filter 1: minus the blue pixel at the bottom right
    model.get_layer("conv").set_weights([kernel, np.array([0.0, 2.0], np.float32)])
    dense_w = np.zeros((18, 3), np.float32)
    dense_w[0, 0], dense_w[1, 1], dense_w[17, 2] = 1.0, 1.0, 0.5
    model.get_layer("dense").set_weights([dense_w, np.array([0.0, 0.0, 1.0], np.float32)])
    return model


def _pixels(seed=0):
    return np.random.default_rng(seed).uniform(0, 3, size=(N_IMAGES, *SIZE, 3)).astype(np.float32)


def _conv_expected(x):
    """The hand-set conv layer in numpy: (N, 3, 3, 2)."""
    f0 = x[:, :3, :3, 0]
    f1 = 2.0 - x[:, 1:, 1:, 2]
    return np.maximum(np.stack([f0, f1], axis=-1), 0.0)


@pytest.fixture()
def memory_set():
    labels = np.array([5, 5, 5, 7, 7, 7, 7, 9, 9, 9])
    return ImageSet(name="tiny:mem", labels=labels, classes=[5, 7, 9],
                    class_names=["a", "b", "c"], images=_pixels())


@pytest.fixture()
def file_set(tmp_path):
    """The same pixels as PNG files (integer values 0..2 survive uint8 exactly)."""
    from PIL import Image

    pixels = np.round(_pixels()).astype(np.uint8)
    paths = []
    for i, image in enumerate(pixels):
        paths.append(tmp_path / f"img{i}.png")
        Image.fromarray(image).save(paths[-1])
    return ImageSet(name="tiny:files", labels=np.repeat([1, 2], 5), classes=[1, 2],
                    class_names=["x", "y"], paths=paths), pixels.astype(np.float32)


def _record(model, imageset, path, **kw):
    kw.setdefault("model_name", "tiny")
    kw.setdefault("weights_id", "hand-set")
    return record_activations(model, imageset, ["conv", "dense"], path, progress=False, **kw)


@pytest.mark.parametrize("batch_size", [1, 3, 32])
def test_element_and_channel_values(tiny_model, memory_set, tmp_path, batch_size):
    x = memory_set.images
    conv = _conv_expected(x)
    dense = conv.reshape(N_IMAGES, -1) @ tiny_model.get_layer("dense").get_weights()[0] \
        + np.array([0.0, 0.0, 1.0])
    with _record(tiny_model, memory_set, tmp_path / "e.h5", batch_size=batch_size) as cache:
        assert cache.n_units("conv") == 18 and cache.layer_shape("conv") == (3, 3, 2)
        np.testing.assert_allclose(cache.read("conv"), conv.reshape(N_IMAGES, -1), atol=1e-5)
        np.testing.assert_allclose(cache.read("dense"), dense, atol=1e-5)
        np.testing.assert_array_equal(cache.labels, memory_set.labels)
        assert cache.attrs["unit"] == "element" and cache.attrs["preprocess"] == "none"
    with _record(tiny_model, memory_set, tmp_path / "c.h5", unit="channel",
                 batch_size=batch_size) as cache:
        assert cache.n_units("conv") == 2 and cache.n_units("dense") == 3
        np.testing.assert_allclose(cache.read("conv"), conv.mean(axis=(1, 2)), atol=1e-5)
        np.testing.assert_allclose(cache.read("dense"), dense, atol=1e-5)


def test_literal_values(tiny_model, tmp_path):
    """One all-ones image: conv filter 0 = 1, filter 1 = 2 - 1 = 1 everywhere; dense = 1, 1, 1.5."""
    ones = ImageSet(name="ones", labels=[0], classes=[0], class_names=["o"],
                    images=np.ones((1, *SIZE, 3), np.float32))
    with _record(tiny_model, ones, tmp_path / "o.h5") as cache:
        np.testing.assert_allclose(cache.read("conv"), np.ones((1, 18)), atol=1e-6)
        np.testing.assert_allclose(cache.read("dense"), [[1.0, 1.0, 1.5]], atol=1e-6)
        with h5py.File(cache.path, "r") as f:
            np.testing.assert_array_equal(f["rows"]["0"][...], [0])
            assert f["layers"]["conv"].compression is None    # read fast, pair after pair


def _counting(monkeypatch):
    calls = []
    original = activations._activation_fn

    def counted(model, layers):
        run = original(model, layers)

        def wrapper(batch):
            calls.append(len(batch))
            return run(batch)
        return wrapper
    monkeypatch.setattr(activations, "_activation_fn", counted)
    return calls


def test_second_run_does_no_forward_pass(tiny_model, memory_set, tmp_path, monkeypatch):
    calls = _counting(monkeypatch)
    _record(tiny_model, memory_set, tmp_path / "a.h5", batch_size=4).close()
    assert calls == [4, 4, 2]
    cache = _record(tiny_model, memory_set, tmp_path / "a.h5", batch_size=4)
    assert calls == [4, 4, 2]
    assert cache.read("conv").shape == (N_IMAGES, 18)
    cache.close()


def test_changed_argument_recomputes_and_says_what(tiny_model, memory_set, tmp_path,
                                                    monkeypatch):
    calls = _counting(monkeypatch)
    messages = []
    _record(tiny_model, memory_set, tmp_path / "a.h5", log=messages.append).close()
    _record(tiny_model, memory_set, tmp_path / "a.h5", unit="channel",
            log=messages.append).close()
    assert len(calls) == 2
    assert any("unit: element -> channel" in m for m in messages)
    _record(tiny_model, memory_set, tmp_path / "a.h5", unit="channel", weights_id="other",
            log=messages.append).close()
    assert len(calls) == 3 and "weights_id: hand-set -> other" in messages[-2]
    assert messages[-1].startswith("activation cache: ")    # its size, before it is written
    with open_cache(tmp_path / "a.h5") as cache:
        assert cache.attrs["weights_id"] == "other" and cache.unit == "channel"


def test_interrupted_run_resumes_and_matches(tiny_model, file_set, tmp_path, monkeypatch):
    imageset, pixels = file_set
    whole = _record(tiny_model, imageset, tmp_path / "whole.h5", batch_size=2,
                    preprocess="paper")
    expected = _conv_expected(pixels[..., ::-1]).reshape(N_IMAGES, -1)   # paper = BGR
    np.testing.assert_allclose(whole.read("conv"), expected, atol=1e-5)

    original = data.load_image_cv2
    monkeypatch.setattr(data, "load_image_cv2", _raise_on_call(original, 5))   # batch 2 (0-based)
    target = tmp_path / "cut.h5"
    with pytest.raises(KerablError, match="img4.png"):
        _record(tiny_model, imageset, target, batch_size=2, preprocess="paper")
    partial = Path(str(target) + ".partial")
    assert not target.exists() and partial.exists()
    with h5py.File(partial, "r") as f:
        assert f.attrs["rows_done"] == 4 and not f.attrs["complete"]

    monkeypatch.setattr(data, "load_image_cv2", original)
    calls = _counting(monkeypatch)
    messages = []
    resumed = _record(tiny_model, imageset, target, batch_size=2, preprocess="paper",
                      log=messages.append)
    assert calls == [2, 2, 2] and "resuming" in messages[0]
    assert not partial.exists()
    for layer in ("conv", "dense"):
        np.testing.assert_array_equal(resumed.read(layer), whole.read(layer))
    whole.close()
    resumed.close()


def _stopped_partial(tiny_model, imageset, tmp_path, monkeypatch):
    """A whole cache and a `.partial` of the same recording stopped at its third batch."""
    whole = _record(tiny_model, imageset, tmp_path / "whole.h5", batch_size=2, preprocess="paper")
    target = tmp_path / "cut.h5"
    monkeypatch.setattr(data, "load_image_cv2", _raise_on_call(data.load_image_cv2, 5))
    with pytest.raises(KerablError):
        _record(tiny_model, imageset, target, batch_size=2, preprocess="paper")
    monkeypatch.undo()
    return whole, target, Path(str(target) + ".partial")


def _assert_rerun_starts_afresh(tiny_model, imageset, whole, target, reason):
    messages = []
    resumed = _record(tiny_model, imageset, target, batch_size=2, preprocess="paper",
                      log=messages.append)
    assert reason in messages[0] and "afresh" in messages[0]
    for layer in ("conv", "dense"):
        np.testing.assert_array_equal(resumed.read(layer), whole.read(layer))
    whole.close()
    resumed.close()


def test_partial_cut_off_mid_write_starts_afresh(tiny_model, file_set, tmp_path, monkeypatch):
    """A process killed while it flushed its last chunk leaves it undecodable: the rerun says so
    and starts afresh instead of failing on the read HDF5 needs to resume."""
    imageset, _ = file_set
    whole, target, partial = _stopped_partial(tiny_model, imageset, tmp_path, monkeypatch)
    with h5py.File(partial, "r") as f:
        chunk = f["layers/conv"].id.get_chunk_info_by_coord((0, 0))
    with open(partial, "r+b") as raw:             # the chunk as a kill -9 mid-flush leaves it
        raw.seek(chunk.byte_offset)
        raw.write(np.random.default_rng(0).bytes(chunk.size // 2))
    _assert_rerun_starts_afresh(tiny_model, imageset, whole, target,
                                "its last rows were cut off mid-write")


def test_partial_killed_before_its_first_flush_starts_afresh(tiny_model, file_set, tmp_path,
                                                             monkeypatch):
    """A process killed before HDF5 flushed its attributes can leave a `.partial` whose
    fingerprint reads back but whose `rows_done` does not: the rerun starts afresh."""
    imageset, _ = file_set
    whole, target, partial = _stopped_partial(tiny_model, imageset, tmp_path, monkeypatch)
    with h5py.File(partial, "r+") as f:
        del f.attrs["rows_done"]
    _assert_rerun_starts_afresh(tiny_model, imageset, whole, target, "cut off mid-write")


def test_partial_with_other_arguments_starts_afresh(tiny_model, file_set, tmp_path,
                                                    monkeypatch):
    imageset, _ = file_set
    target = tmp_path / "cut.h5"
    monkeypatch.setattr(data, "load_image_cv2", _raise_on_call(data.load_image_cv2, 3))
    with pytest.raises(KerablError):
        _record(tiny_model, imageset, target, batch_size=2, preprocess="paper")
    monkeypatch.undo()
    calls = _counting(monkeypatch)
    messages = []
    _record(tiny_model, imageset, target, batch_size=2, preprocess="heuritech",
            log=messages.append).close()
    assert len(calls) == 5 and "preprocess: paper -> heuritech" in messages[0]


def _raise_on_call(original, k):
    count = []

    def loader(path):
        count.append(path)
        if len(count) == k:
            raise KerablError(f"cannot read image {path}")
        return original(path)
    return loader


def test_reads_by_rows_cols_and_blocks_agree(tiny_model, memory_set, tmp_path, monkeypatch):
    monkeypatch.setattr(activations, "CHUNK_COLS", 4)      # several column chunks
    monkeypatch.setattr(activations, "CHUNK_ROWS", 3)
    with _record(tiny_model, memory_set, tmp_path / "a.h5") as cache:
        full = cache.read("conv")
        rows, cols = np.array([9, 0, 4, 4]), np.array([17, 2, 3, 11, 2])
        np.testing.assert_array_equal(cache.read("conv", rows=rows), full[rows])
        np.testing.assert_array_equal(cache.read("conv", cols=cols), full[:, cols])
        np.testing.assert_array_equal(cache.read("conv", rows=rows, cols=cols),
                                      full[rows][:, cols])
        np.testing.assert_array_equal(cache.read("conv", rows=cache.labels == 7), full[3:7])
        blocks = list(cache.column_blocks("conv", block=5, rows=[1, 8]))
        assert [b[0] for b in blocks] == [slice(0, 5), slice(5, 10), slice(10, 15),
                                          slice(15, 18)]
        np.testing.assert_array_equal(np.concatenate([b[1] for b in blocks], axis=1),
                                      full[[1, 8]])
        np.testing.assert_allclose(cache.mean("conv", rows=[0, 1, 2]), full[:3].mean(axis=0),
                                   rtol=1e-6)
        with pytest.raises(KerablError, match="not in cache"):
            cache.read("nope")
        for which in (rows, None):      # into a given array: the same values, that array
            into = np.full(full[which if which is not None else slice(None)].shape, np.nan,
                           dtype=np.float32)
            assert cache.read("conv", rows=which, out=into) is into
            np.testing.assert_array_equal(into, cache.read("conv", rows=which))
        with pytest.raises(KerablError, match="out= takes all columns"):
            cache.read("conv", rows=rows, out=np.empty((3, full.shape[1]), np.float32))
        with pytest.raises(KerablError, match="out= takes all columns"):
            cache.read("conv", cols=cols, out=np.empty((len(full), cols.size), np.float32))


class _CountingDataset:
    """An h5py dataset that records the row range of every read."""

    def __init__(self, ds):
        self.ds, self.chunks, self.shape, self.dtype, self.reads = ds, ds.chunks, ds.shape, \
            ds.dtype, []

    def read_direct(self, out, source, dest):
        self.reads.append((source[0].start, source[0].stop))
        self.ds.read_direct(out, source, dest)


def test_scattered_rows_decode_each_chunk_block_once(tmp_path):
    data = np.arange(100 * 6, dtype=np.float32).reshape(100, 6)
    with h5py.File(tmp_path / "c.h5", "w") as f:
        chunked = _CountingDataset(f.create_dataset("x", data=data, chunks=(10, 6),
                                                    compression="lzf"))
        rows = np.r_[np.random.default_rng(0).permutation(50), 7, 7, np.arange(60, 80)]
        np.testing.assert_array_equal(activations._read_rows(chunked, rows, 1, 5),
                                      data[rows, 1:5])
        # blocks 0-4 once each (buffered), blocks 6 and 7 whole and in order (straight in)
        assert sorted(chunked.reads) == [(0, 10), (10, 20), (20, 30), (30, 40), (40, 50),
                                         (60, 70), (70, 80)]
        plain = _CountingDataset(f.create_dataset("y", data=data))
        np.testing.assert_array_equal(activations._read_rows(plain, rows[::-1], 0, 6),
                                      data[rows[::-1]])


def test_float16_storage(tiny_model, memory_set, tmp_path):
    with _record(tiny_model, memory_set, tmp_path / "h.h5", dtype="float16") as cache:
        x = cache.read("conv")
        assert x.dtype == np.float32 and cache.attrs["dtype"] == "float16"
        np.testing.assert_allclose(x, _conv_expected(memory_set.images).reshape(N_IMAGES, -1),
                                   rtol=2e-3)


def test_bad_input(tiny_model, memory_set, tmp_path):
    with pytest.raises(KerablError, match="model_name"):
        record_activations(tiny_model, memory_set, ["conv"], tmp_path / "x.h5", progress=False)
    with pytest.raises(KerablError, match="unknown layer 'conv9'"):
        record_activations(tiny_model, memory_set, ["conv9"], tmp_path / "x.h5",
                           model_name="t", weights_id="w", progress=False)
    with pytest.raises(KerablError, match="unit"):
        _record(tiny_model, memory_set, tmp_path / "x.h5", unit="pixel")
    other = tmp_path / "other.h5"
    other.write_bytes(b"not hdf5")
    with pytest.raises(KerablError, match="not a kerabl activation cache"):
        _record(tiny_model, memory_set, other)
    with pytest.raises(KerablError, match="not a readable HDF5"):
        open_cache(other)
    with h5py.File(tmp_path / "plain.h5", "w") as f:
        f.attrs["x"] = 1
    with pytest.raises(KerablError, match="not a complete kerabl"):
        open_cache(tmp_path / "plain.h5")
