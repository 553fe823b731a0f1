"""Tests of kerabl.store: every differing key named, CSVs written whole or not at all, a file
another process holds open waited for."""

import time

import h5py
import numpy as np
import pytest

from kerabl.errors import KerablError
from kerabl.store import config_differences, finish_partial, open_h5, partial_path, write_csv_atomic


def test_config_differences_names_every_key():
    old = {"seed": 0, "grid": [4, 4], "gone": 1}
    new = {"seed": 1, "grid": [4, 4], "added": "x"}
    assert config_differences(old, new) == [
        'added: "<absent>" -> "x"', 'gone: 1 -> "<absent>"', "seed: 0 -> 1"]
    assert config_differences(old, new, ignore=("seed", "gone", "added")) == []


def test_partial_path_sits_beside_the_file(tmp_path):
    assert partial_path(tmp_path / "r.h5") == tmp_path / "r.h5.partial"


def test_finish_partial_renames_over_the_final_name(tmp_path):
    final = tmp_path / "r.h5"
    final.write_bytes(b"old")
    partial_path(final).write_bytes(b"new")
    assert finish_partial(str(final)) == final
    assert final.read_bytes() == b"new" and not partial_path(final).exists()


def test_csv_is_renamed_only_when_complete(tmp_path):
    path = write_csv_atomic(tmp_path / "a.csv", ["x", "y"], [[1, 2.5], [3, "z"]])
    assert path.read_bytes() == b"x,y\r\n1,2.5\r\n3,z\r\n"

    def rows():
        yield [4, 5]
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        write_csv_atomic(tmp_path / "a.csv", ["x", "y"], rows())
    assert path.read_bytes() == b"x,y\r\n1,2.5\r\n3,z\r\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.csv"]


def test_a_writer_waits_for_a_reader_of_the_file(tmp_path, hold_open):
    path = tmp_path / "r.h5.partial"
    with h5py.File(path, "w") as f:
        f["done"] = np.zeros(3, bool)
    reader = hold_open(path, 1.5)
    with pytest.raises(BlockingIOError):   # what a plain open does while the reader holds it
        h5py.File(path, "r+")
    start = time.monotonic()
    with open_h5(path, "r+") as f:
        f["done"][1] = True
    assert time.monotonic() - start > 0.5 and reader.wait(10) == 0
    with open_h5(path) as f:
        assert f["done"][()].tolist() == [False, True, False]


def test_a_file_held_past_the_wait_is_one_line(tmp_path, hold_open):
    path = tmp_path / "r.h5.partial"
    with h5py.File(path, "w") as f:
        f["done"] = np.zeros(3, bool)
    hold_open(path, 5)
    with pytest.raises(KerablError, match=r"r.h5.partial stayed locked by another process for 0 s"):
        open_h5(path, "r+", wait=0.2)
