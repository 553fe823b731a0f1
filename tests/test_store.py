"""Tests of kerabl.store: every differing key named, CSVs written whole or not at all."""

import pytest

from kerabl.store import config_differences, finish_partial, partial_path, write_csv_atomic


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
