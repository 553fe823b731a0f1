"""The H results file: write, resume, finish, reopen, export, shards and merge."""

import csv

import h5py
import numpy as np
import pytest

from kerabl.errors import KerablError
from kerabl.hayne.grid import equal_count_grid
from kerabl.hayne.merge import merge
from kerabl.hayne.results import HResults, HResultsWriter, export_csv
from kerabl.store import parse_shard

CONFIG = {"model": "demo", "grid": [2, 2], "seed": 0}
LAYOUT = dict(classes=["zero", "one", "two"], class_index=[10, 11, 12], layers=["conv_1", "dense_1"],
              n_units=[8, 12], grid_shape=(2, 2), max_images=4, max_others=2)


def writer(path, config=CONFIG, shard=None):
    return HResultsWriter(path, config=config, shard=shard, **LAYOUT)


def pair_values(ci, li):
    """Deterministic numbers of pair (ci, li): unit u has selectivity u, magnitude -u."""
    u = LAYOUT["n_units"][li]
    sel = np.arange(u, dtype=float) + 100 * ci
    mag = -np.arange(u, dtype=float)
    base = 10.0 * ci + li
    return dict(selectivity=sel, magnitude=mag, grid=equal_count_grid(sel, mag, (2, 2)),
                rank_after=np.arange(12).reshape(4, 3) + ci, deficit=base + np.arange(4),
                probe=np.full(4, 0.5 + ci / 10), probe_heldout=np.full(4, 0.25),
                srs_tau=np.full(4, 0.1 * li), srs_rho=np.full(4, -0.1))


def run(w, pairs=None):
    for ci, li in pairs if pairs is not None else w.pairs():
        w.write_class(ci, image_rows=[3 * ci, 3 * ci + 1, 3 * ci + 2], rank_before=[0, 1, 2],
                      others=[(ci + 1) % 3])
        w.write_pair(ci, li, **pair_values(ci, li))


def test_parse_shard():
    assert parse_shard("2/8") == (2, 8)
    assert parse_shard(" 0/1 ") == (0, 1)
    for bad in ("8/8", "-1/4", "a/b", "3", "1/2/3", "0/0"):
        with pytest.raises(KerablError):
            parse_shard(bad)


def test_write_resume_finish_reopen(tmp_path):
    path = tmp_path / "h.h5"
    w = writer(path)
    assert w.pairs() == [(c, l) for c in range(3) for l in range(2)]
    run(w, w.pairs()[:2])
    assert w.finish() is None and not path.exists()
    with pytest.raises(KerablError, match="incomplete"):
        HResults.open(w.partial_path)
    partial = HResults.open(path, allow_partial=True)
    assert partial.done.sum() == 2 and not partial.complete

    w2 = writer(path)                       # resume: keeps the two done pairs
    assert w2.is_done(0, 1) and not w2.is_done(1, 0)
    run(w2, [p for p in w2.pairs() if not w2.is_done(*p)])
    assert w2.finish() == path and path.exists() and not w2.partial_path.exists()

    res = HResults.open(path)
    assert res.complete and res.done.all() and res.config == CONFIG and res.shard == ""
    assert res.classes == ["zero", "one", "two"] and res.layers == ["conv_1", "dense_1"]
    assert res.class_index.tolist() == [10, 11, 12] and res.grid_shape == (2, 2)
    assert res.versions["numpy"] == np.__version__
    np.testing.assert_array_equal(res.deficit[2, 1], [21, 22, 23, 24])
    np.testing.assert_array_equal(res.probe[1, 0], [0.6] * 4)
    # conv_1 units 0..7: strips {0..3}, {4..7}; magnitude -u puts the larger u in cell j = 0
    np.testing.assert_array_equal(res.cell_count[0, 0], [2, 2, 2, 2])
    np.testing.assert_array_equal(res.cell_selectivity[0, 0], [2.5, 0.5, 6.5, 4.5])
    np.testing.assert_array_equal(res.cell_magnitude[1, 0], [-2.5, -0.5, -6.5, -4.5])
    np.testing.assert_array_equal(res.rank_after[1, 0, 0], [1, 2, 3, -1])
    np.testing.assert_array_equal(res.image_rows[2], [6, 7, 8, -1])
    np.testing.assert_array_equal(res.others, [[1, -1], [2, -1], [0, -1]])
    units = res.units(1, "dense_1")
    np.testing.assert_array_equal(units["membership"], [1, 1, 1, 0, 0, 0, 3, 3, 3, 2, 2, 2])
    np.testing.assert_array_equal(units["selectivity"], np.arange(12) + 100)
    assert units["mag_edges"].shape == (2, 3) and units["sel_edges"][1] == 105.5

    done_again = writer(path)                # a rerun of a finished run does nothing
    assert done_again.complete and done_again.is_done(0, 0) and done_again.finish() == path
    with pytest.raises(KerablError, match="finished"):
        run(done_again, [(0, 0)])


def test_a_run_in_progress_read_by_another_process_goes_on(tmp_path, hold_open):
    """A figure drawn from the `.partial` holds it open: the next pair waits, not fails."""
    path = tmp_path / "h.h5"
    w = writer(path)
    run(w, w.pairs()[:1])
    reader = hold_open(w.partial_path, 1.0)
    run(w, w.pairs()[1:])
    assert reader.wait(10) == 0 and w.finish() == path
    assert HResults.open(path).done.all()


def test_config_mismatch_names_the_key(tmp_path):
    path = tmp_path / "h.h5"
    run(w := writer(path))
    w.finish()
    with pytest.raises(KerablError, match=r"grid: \[2, 2\] -> \[3, 3\].*delete"):
        writer(path, config={**CONFIG, "grid": [3, 3]})
    part = tmp_path / "p.h5"
    run(writer(part), pairs=[(0, 0)])   # one finished pair: a different config is refused
    with pytest.raises(KerablError, match=r"seed: 0 -> 1"):
        writer(part, config={**CONFIG, "seed": 1})
    with pytest.raises(KerablError, match="shard"):
        writer(part, shard=(0, 2))
    assert HResults.open(path).config == CONFIG   # the finished file is untouched


def test_an_empty_partial_of_another_config_is_replaced_and_said(tmp_path):
    part = tmp_path / "p.h5"
    writer(part)
    said = []
    w = HResultsWriter(part, config={**CONFIG, "seed": 1}, log=said.append, **LAYOUT)
    assert len(said) == 1 and "holds no finished pair" in said[0] and "seed: 0 -> 1" in said[0]
    assert not w.complete and w.is_done(*w.pairs()[0]) is False
    same = []
    HResultsWriter(part, config={**CONFIG, "seed": 1}, log=same.append, **LAYOUT)
    assert same == []   # the replacement is this run's: resumed silently


def test_open_errors(tmp_path):
    with pytest.raises(KerablError, match="no results file"):
        HResults.open(tmp_path / "missing.h5")
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f.attrs["kind"] = "something"
    with pytest.raises(KerablError, match="not a kerabl H results file"):
        HResults.open(other)


def test_write_pair_checks_shapes(tmp_path):
    w = writer(tmp_path / "h.h5")
    values = pair_values(0, 0)
    with pytest.raises(KerablError, match="12 units"):
        w.write_pair(0, 1, **values)
    with pytest.raises(KerablError, match="rank_after"):
        w.write_pair(0, 0, **{**values, "rank_after": np.zeros((4, 5))})
    with pytest.raises(KerablError, match="max_others"):
        w.write_class(0, image_rows=[1], rank_before=[0], others=[1, 2, 0])
    assert not w.is_done(0, 0)


def test_export_csv(tmp_path):
    path = tmp_path / "h.h5"
    run(w := writer(path))
    w.finish()
    out = export_csv(path, tmp_path / "h.csv")
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == 3 * 2 * 4
    row = rows[2 * 4 + 1 * 4 + 3]            # class "one", dense_1, cell 3
    assert (row["class"], row["class_index"], row["layer"], row["cell"]) == ("one", "11", "dense_1", "3")
    assert (row["sel_bin"], row["mag_bin"], row["n_units"]) == ("1", "1", "3")
    assert float(row["deficit"]) == 14.0 and float(row["cell_selectivity"]) == 107.0
    assert float(row["srs_tau"]) == 0.1 and not (tmp_path / "h.csv.tmp").exists()


def test_merge_two_shards_equals_unsharded(tmp_path):
    whole = tmp_path / "whole.h5"
    run(w := writer(whole))
    w.finish()
    shard_paths = []
    for i in range(2):
        ws = writer(tmp_path / f"s{i}.h5", shard=(i, 2))
        assert ws.pairs() == [(c, l) for c in range(3) for l in range(2) if (2 * c + l) % 2 == i]
        run(ws)
        shard_paths.append(ws.finish())
    merged = HResults.open(merge(shard_paths, tmp_path / "merged.h5"))
    ref = HResults.open(whole)
    assert merged.shard == "" and merged.config == ref.config and merged.complete
    for name in ("probe", "deficit", "cell_count", "cell_selectivity", "rank_after", "done",
                 "image_rows", "rank_before", "others"):
        np.testing.assert_array_equal(getattr(merged, name), getattr(ref, name))
    for ci in range(3):
        for layer in ref.layers:
            for key, value in ref.units(ci, layer).items():
                np.testing.assert_array_equal(merged.units(ci, layer)[key], value)


def test_merge_refuses_inconsistent_shards(tmp_path):
    paths = {}
    for name, config, shard in (("a", CONFIG, (0, 2)), ("b", CONFIG, (1, 2)),
                                ("c", {**CONFIG, "seed": 5}, (1, 2))):
        ws = writer(tmp_path / f"{name}.h5", config=config, shard=shard)
        run(ws)
        paths[name] = ws.finish()
    with pytest.raises(KerablError, match=r"a\.h5 and .*c\.h5.*seed: 0 -> 5"):
        merge([paths["a"], paths["c"]], tmp_path / "m.h5")
    with pytest.raises(KerablError, match=r"3 of 6 pairs.*shard not given"):
        merge([paths["a"]], tmp_path / "m.h5")
    full = writer(tmp_path / "full.h5")          # done in two files with different numbers
    run(full)
    with h5py.File(full.partial_path, "r+") as f:
        f["deficit"][1, 1, 2] = 99.0
    full.finish()
    with pytest.raises(KerablError, match=r"\(one, dense_1\) differs.*deficit"):
        merge([paths["a"], paths["b"], tmp_path / "full.h5"], tmp_path / "m.h5")
    assert not (tmp_path / "m.h5").exists() and not (tmp_path / "m.h5.tmp").exists()
