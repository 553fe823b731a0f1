"""The ablation method in the H study's files and sweep: recorded in the config, part of the resume
check, stored means and donor draws (carried by a merge), the CSV's `ablation` column; the fast
and paper engines give the same numbers under each method on the demo."""

import dataclasses

import numpy as np
import pytest

from kerabl.errors import KerablError
from kerabl.hayne.grid import equal_count_grid
from kerabl.hayne.merge import merge
from kerabl.hayne.results import CSV_COLUMNS, HResults, HResultsWriter, export_csv


def _writer(path, ablation=None, shard=None):
    config = {"study": "H", "seed": 0} | ({} if ablation is None else {"ablation": ablation})
    return HResultsWriter(path, config=config, classes=["a", "b"], class_index=[0, 1],
                          layers=["conv"], n_units=[8], grid_shape=(2, 2), max_images=3,
                          max_others=1, shard=shard)


def _write(writer, ci, mean=None, donors=None):
    rng = np.random.default_rng(ci)
    sel, mag = rng.normal(size=8), rng.normal(size=8)
    grid = equal_count_grid(sel, mag, (2, 2))
    writer.write_class(ci, image_rows=[3 * ci, 3 * ci + 1, 3 * ci + 2], rank_before=[0, 1, 0],
                       others=[1 - ci])
    writer.write_pair(ci, 0, selectivity=sel, magnitude=mag, grid=grid,
                      rank_after=np.ones((4, 3), int), deficit=np.full(4, 0.5),
                      probe=np.full(4, 0.7), probe_heldout=np.full(4, 0.6), srs_tau=np.zeros(4),
                      srs_rho=np.zeros(4), ablation_mean=mean, donor_rows=donors)


def test_mean_cannot_resume_a_zero_file_and_an_old_file_reads_as_zero(tmp_path):
    _write(_writer(tmp_path / "h.h5", "zero"), 0)
    with pytest.raises(KerablError, match='ablation: "zero" -> "mean"') as error:
        _writer(tmp_path / "h.h5", "mean")
    assert "\n" not in str(error.value)
    _write(_writer(tmp_path / "old.h5"), 0)        # written before the option: zero
    assert not _writer(tmp_path / "old.h5", "zero").is_done(1, 0)


def test_means_donors_and_the_csv_column(tmp_path):
    mean = np.arange(8, dtype=np.float32).reshape(2, 2, 2)
    writer = _writer(tmp_path / "mean.h5", "mean")
    for ci in range(2):
        _write(writer, ci, mean=mean)
    res = HResults.open(writer.finish())
    assert res.ablation == "mean" and res.donor_rows is None
    np.testing.assert_array_equal(res.ablation_mean("conv"), mean)
    lines = export_csv(res.path, tmp_path / "cells.csv").read_text().splitlines()
    assert lines[0].split(",") == list(CSV_COLUMNS) and CSV_COLUMNS[-1] == "ablation"
    assert {line.split(",")[-1] for line in lines[1:]} == {"mean"}

    shards = []
    for i in range(2):       # shards of a resample run: each pair's draws survive the merge
        writer = _writer(tmp_path / f"r{i}.h5", "resample", shard=(i, 2))
        _write(writer, i, donors=np.full((4, 3), 5 + i))
        shards.append(writer.finish())
    res = HResults.open(merge(shards, tmp_path / "merged.h5"))
    assert res.ablation == "resample"
    np.testing.assert_array_equal(res.donor_rows[:, 0, :, :3], [np.full((4, 3), 5),
                                                               np.full((4, 3), 6)])
    assert res.ablation_mean("conv") is None


@pytest.mark.slow
@pytest.mark.parametrize("method, unit", [("mean", "element"), ("resample", "element"),
                                          ("resample", "channel")])
def test_fast_and_paper_engines_agree_under_each_method(method, unit, tmp_path):
    from kerabl.data import digits_imageset
    from kerabl.hayne.study import HConfig, run_h_study
    from kerabl.models import load_network

    demo, digits = load_network("demo"), digits_imageset().subset([2, 6])
    config = HConfig(grid=(2, 2), probe_fits=2, heldout_folds=2, srs=False, ablation=method,
                     unit=unit)
    runs = [HResults.open(run_h_study(demo, digits, tmp_path / engine, layers=["conv_3", "dense_2"],
                                      config=dataclasses.replace(config, engine=engine),
                                      progress=False, workers=1, log=lambda message: None))
            for engine in ("fast", "paper")]
    fast, paper = runs
    np.testing.assert_array_equal(fast.rank_after, paper.rank_after)
    np.testing.assert_array_equal(fast.deficit, paper.deficit)
    assert fast.ablation == method and fast.config["ablation"] == method
    if method == "mean":
        assert fast.ablation_mean("conv_3").shape == tuple(
            demo.model.get_layer("conv_3").output.shape[1:])
        return
    labels = np.asarray(digits.labels)
    for ci in range(2):       # donors never of the target class, the same in both engines
        donors = fast.donor_rows[ci][fast.donor_rows[ci] >= 0]
        assert (labels[donors] != labels[fast.image_rows[ci][0]]).all()
    np.testing.assert_array_equal(fast.donor_rows, paper.donor_rows)


@pytest.mark.slow
def test_crosscheck_reruns_each_method_in_torch(tmp_path):
    pytest.importorskip("torch")
    from kerabl.compare import compare_csv
    from kerabl.crosscheck import crosscheck
    from kerabl.data import digits_imageset
    from kerabl.hayne.study import HConfig, run_h_study
    from kerabl.models import load_network

    net, images = load_network("demo"), digits_imageset()
    small = images.subset(images.classes[:2])
    csvs = {}
    for method in ("mean", "resample"):
        out = tmp_path / method
        results = run_h_study(net, small, out, layers=["conv_2", "dense_1"],
                              config=HConfig(grid=(2, 2), probe_fits=2, heldout_folds=2,
                                             srs=False, ablation=method),
                              progress=False, workers=1, log=lambda m: None)
        summary = crosscheck(results, out / "cc", images=small, progress=False, log=lambda m: None)
        assert summary.cells == 2 * 2 * 4 and summary.equal_deficits == summary.cells
        assert summary.ranks_equal == summary.ranks_compared > 0
        assert HResults.open(results).deficit.max() > 0
        csvs[method] = summary.keras_csv
    with pytest.raises(KerablError, match="compare runs of one ablation method"):
        compare_csv(csvs["mean"], csvs["resample"])


@pytest.mark.parametrize("command", ["study", "units", "ablate"])
def test_all_methods_only_in_reproduce_is_one_line(tmp_path, command):
    from typer.testing import CliRunner

    from kerabl.cli import app

    result = CliRunner().invoke(app, [command, "--ablation", "all", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert lines == ["error: --ablation all runs the three methods in `kerabl reproduce` only: "
                     "pass zero, mean or resample"]
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_reproduce_methods_runs_the_three_and_compares_them(tmp_path):
    """`kerabl reproduce --ablation all` as a library call: one folder per method, each results
    file recording its method, and the comparison of their headline numbers written and logged."""
    import json

    from kerabl.data import digits_imageset
    from kerabl.hayne.config import HConfig
    from kerabl.models import load_network
    from kerabl.reproduce import reproduce_methods

    images = digits_imageset()
    small = images.subset(images.classes[:3])
    said = []
    config = HConfig(grid=(2, 2), probe_fits=2, heldout_folds=2, srs=False)
    comparison = reproduce_methods(load_network("demo"), small, tmp_path, config,
                                   layers=["conv_5", "dense_1"], z=False, workers=1,
                                   progress=False, log=said.append)
    assert set(comparison) == {"zero", "mean", "resample"}
    for method in comparison:
        res = HResults.open(tmp_path / method / "h_results.h5")
        assert res.config["ablation"] == method and res.complete
        summary = json.loads((tmp_path / method / "h_summary.json").read_text())
        assert comparison[method]["largest_deficit"]["mean"] == pytest.approx(
            summary["largest_deficit"]["mean"])
    assert HResults.open(tmp_path / "mean" / "h_results.h5").ablation_mean("conv_5") is not None
    assert json.loads((tmp_path / "ablation_summary.json").read_text()) == comparison
    assert any(line.startswith("methods side by side:") for line in said)
    assert sorted(p.name for p in (tmp_path / "figures-methods").glob("*.png")) == [
        "fig3_networks.png", "fig_interaction.png", "fig_probe_contrast.png"]
