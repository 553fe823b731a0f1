"""Tests of kerabl.hayne.study: a tiny H sweep on the demo model writes a complete results file, a rerun
computes nothing, runs are deterministic, an interrupted sweep resumes to the same numbers, shards
merge to the unsharded run, and the engines and the worker count do not change the numbers."""

import dataclasses

import numpy as np
import pytest

import kerabl.hayne.study
import kerabl.hayne.results
from kerabl.data import digits_imageset
from kerabl.errors import KerablError
from kerabl.models import load_network
from kerabl.hayne.merge import merge
from kerabl.hayne.results import CELL_ARRAYS, CLASS_ARRAYS, HResults
from kerabl.hayne.study import HConfig, run_h_study

LAYERS = ["conv_2", "dense_1"]
CONFIG = HConfig(grid=(2, 2), probe_fits=2, heldout_folds=2)


@pytest.fixture(scope="module")
def demo():
    return load_network("demo")


@pytest.fixture(scope="module")
def digits3():
    return digits_imageset().subset([0, 4, 7])


def _run(demo, imageset, out, **kwargs):
    kwargs = {"layers": LAYERS, "config": CONFIG, "progress": False, "workers": 1,
              "log": lambda message: None, **kwargs}
    return run_h_study(demo, imageset, out, **kwargs)


@pytest.fixture(scope="module")
def baseline(demo, digits3, tmp_path_factory):
    return _run(demo, digits3, tmp_path_factory.mktemp("baseline"))


def _all_arrays(path) -> dict:
    res = HResults.open(path)
    arrays = {name: getattr(res, name) for name in CELL_ARRAYS + CLASS_ARRAYS
              + ("done", "rank_after")}
    for ci in range(len(res.classes)):
        for layer in res.layers:
            arrays.update({f"{ci}/{layer}/{k}": v for k, v in res.units(ci, layer).items()})
    return arrays


def _assert_same_results(a, b):
    first, second = _all_arrays(a), _all_arrays(b)
    assert first.keys() == second.keys()
    for key in first:
        np.testing.assert_array_equal(first[key], second[key], err_msg=key)


def test_results_file_is_complete(baseline, digits3):
    assert baseline.name == "h_results.h5" and baseline.is_file()
    res = HResults.open(baseline)
    assert res.complete and res.done.all()
    assert res.classes == ["0", "4", "7"] and res.layers == LAYERS
    assert res.grid_shape == (2, 2)
    np.testing.assert_array_equal(res.n_units, [16 * 16 * 32, 64])
    assert res.config["probe_fits"] == 2 and res.config["grid"] == [2, 2]
    assert res.config["model"] == "demo" and res.config["classes"] == ["0", "4", "7"]
    for name in ("probe", "probe_heldout", "deficit", "srs_tau", "srs_rho",
                 "cell_selectivity", "cell_magnitude", "probe_fold", "probe_fold_sd"):
        assert getattr(res, name).shape == (3, 2, 4) and np.isfinite(getattr(res, name)).all()
    assert (res.deficit >= 0).all() and res.deficit.max() > 0
    assert ((res.probe > 0) & (res.probe <= 1)).all()
    for ci, c in enumerate(digits3.classes):
        n = len(digits3.rows_of(c))
        np.testing.assert_array_equal(res.image_rows[ci, :n], digits3.rows_of(c))
        assert (res.rank_before[ci, :n] >= 0).all() and (res.rank_after[ci, :, :, :n] >= 0).all()
        assert (res.rank_after[ci, :, :, n:] == -1).all()
        np.testing.assert_array_equal(res.others[ci, :2], [o for o in range(3) if o != ci])
    # the stored deficit is the clipped mean of the stored ranks
    n0 = len(digits3.rows_of(0))
    expected = np.clip(res.rank_after[0, 1, :, :n0] - res.rank_before[0, :n0], 0, None).mean(-1)
    np.testing.assert_allclose(res.deficit[0, 1], expected)


def test_cells_are_equal_count_and_disjoint(baseline):
    res = HResults.open(baseline)
    for li, layer in enumerate(res.layers):
        u = res.n_units[li]
        for ci in range(len(res.classes)):
            counts = res.cell_count[ci, li]
            assert counts.sum() == u and counts.max() - counts.min() <= 1
            membership = res.units(ci, layer)["membership"]
            assert membership.min() == 0 and membership.max() == 3   # every unit in one cell
            np.testing.assert_array_equal(np.bincount(membership, minlength=4), counts)


def test_second_run_computes_nothing(baseline, demo, digits3, monkeypatch):
    before = (baseline.stat().st_mtime_ns, baseline.read_bytes())

    def no_forward_pass(*args, **kwargs):
        raise AssertionError("a finished run recorded activations again")

    monkeypatch.setattr(kerabl.hayne.study, "record_activations", no_forward_pass)
    messages = []
    path = _run(demo, digits3, baseline.parent, log=messages.append)
    assert path == baseline
    assert any("nothing to compute" in m for m in messages)
    assert (baseline.stat().st_mtime_ns, baseline.read_bytes()) == before


def test_runs_are_deterministic(baseline, demo, digits3, tmp_path):
    _assert_same_results(baseline, _run(demo, digits3, tmp_path))


def test_a_different_config_is_refused(baseline, demo, digits3):
    with pytest.raises(KerablError, match="different run"):
        _run(demo, digits3, baseline.parent, config=HConfig(grid=(2, 2), probe_fits=3,
                                                            heldout_folds=2))


def test_interrupted_run_resumes_to_the_same_numbers(baseline, demo, digits3, tmp_path,
                                                     monkeypatch):
    original = kerabl.hayne.results.HResultsWriter.write_pair
    calls = []

    def interrupted(self, *args, **kwargs):
        calls.append(args[:2])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(kerabl.hayne.results.HResultsWriter, "write_pair", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _run(demo, digits3, tmp_path)
    final = tmp_path / "h_results.h5"
    assert not final.exists() and (tmp_path / "h_results.h5.partial").exists()
    assert HResults.open(final, allow_partial=True).done.sum() == 2

    resumed = []

    def watched(self, ci, li, **kwargs):
        assert not final.exists()
        resumed.append((ci, li))
        return original(self, ci, li, **kwargs)

    monkeypatch.setattr(kerabl.hayne.results.HResultsWriter, "write_pair", watched)
    assert _run(demo, digits3, tmp_path) == final
    assert resumed == [(1, 0), (1, 1), (2, 0), (2, 1)]   # only the pairs not yet done
    assert not (tmp_path / "h_results.h5.partial").exists()
    _assert_same_results(baseline, final)


def test_shards_merge_to_the_unsharded_run(baseline, demo, digits3, tmp_path):
    paths = [_run(demo, digits3, tmp_path / f"s{i}", shard=(i, 2)) for i in range(2)]
    assert [p.name for p in paths] == ["h_results.shard-0-of-2.h5", "h_results.shard-1-of-2.h5"]
    assert HResults.open(paths[0]).done.tolist() == [[True, False], [True, False], [True, False]]
    merged = merge(paths, tmp_path / "merged.h5")
    _assert_same_results(baseline, merged)


def test_paper_engine_gives_the_fast_engine_numbers(demo, tmp_path):
    digits = digits_imageset().subset([2, 6])
    config = HConfig(grid=(2, 2), probe_fits=2, heldout_folds=2, srs=False)
    fast = HResults.open(_run(demo, digits, tmp_path / "fast", layers=["conv_3", "dense_2"],
                              config=config))
    paper = HResults.open(_run(demo, digits, tmp_path / "paper", layers=["conv_3", "dense_2"],
                               config=dataclasses.replace(config, engine="paper")))
    np.testing.assert_array_equal(fast.rank_after, paper.rank_after)
    np.testing.assert_array_equal(fast.deficit, paper.deficit)
    assert fast.deficit.max() > 0


def _shm_names() -> set:
    import os

    return set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()


def test_worker_processes_give_the_same_numbers(demo, tmp_path, monkeypatch):
    import kerabl.hayne.shared as shared
    from kerabl.masks import n_units

    digits = digits_imageset().subset([1, 9])
    kwargs = dict(layers=["dense_2", "conv_2"],
                  config=HConfig(grid=(2, 2), probe_fits=3, heldout_folds=2))
    one = _run(demo, digits, tmp_path / "one", workers=1, **kwargs)
    made, before = [], _shm_names()
    create = shared.SharedBlock.create.__func__
    monkeypatch.setattr(shared.SharedBlock, "create",
                        classmethod(lambda cls, n: made.append(n) or create(cls, n)))
    two = _run(demo, digits, tmp_path / "two", workers=2, **kwargs)
    _assert_same_results(one, two)
    # one block for the sweep, sized for its widest layer (conv_2), and freed at its end
    rows = len(digits.rows_of(digits.classes[0])) + len(digits.rows_of(digits.classes[1]))
    assert made == [rows * n_units(demo.model, "conv_2", "element") * 4]
    assert _shm_names() == before

    said = []
    monkeypatch.setattr(shared, "room_for", lambda nbytes: False)
    piped = _run(demo, digits, tmp_path / "piped", workers=2, log=said.append, **kwargs)
    _assert_same_results(one, piped)
    assert sum("no room for the pairs' activations" in line for line in said) == 1


def test_unknown_layer_is_refused_before_any_file(demo, digits3, tmp_path):
    with pytest.raises(KerablError, match="unknown layer 'conv_9'"):
        _run(demo, digits3, tmp_path, layers=["conv_9"])
    assert list(tmp_path.iterdir()) == []


def test_permuted_labels_control(demo, digits3, tmp_path):
    from kerabl.hayne.controls import permuted_labels

    control = permuted_labels(digits3, seed=0)
    assert not np.array_equal(control.labels, digits3.labels)
    np.testing.assert_array_equal(np.sort(control.labels), np.sort(digits3.labels))
    path = _run(demo, digits3, tmp_path, config=dataclasses.replace(CONFIG, control="permuted-labels"))
    res = HResults.open(path)
    assert res.config["control"] == "permuted-labels" and res.config["seed"] == 0
    np.testing.assert_array_equal(res.image_rows[0, :len(control.rows_of(control.classes[0]))],
                                  control.rows_of(control.classes[0]))
    with pytest.raises(KerablError, match="unknown control"):
        HConfig(control="shuffled")
