"""Tests of the `kerabl` command line (typer's CliRunner on kerabl.cli.app): the stages listed,
`study` -> `export` -> `figures` on the demo model, and bad input answered with one line and exit
status 2, never a traceback or a finished-looking results file."""

import contextlib
import csv

import pytest
from typer.testing import CliRunner

import kerabl.hayne.results
import kerabl.hayne.study
from kerabl.cli import app
from kerabl.errors import KerablError
from kerabl.hayne.results import CSV_COLUMNS

STAGES = ("activations", "study", "units", "figures", "export", "merge", "reproduce")
SMALL = ["--grid", "2x2", "--probe-fits", "2", "--heldout-folds", "2", "--no-progress"]


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def assert_one_line_error(result, *fragments):
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.fixture
def one_process(monkeypatch):
    """Probes in this process: the worker pool is tested in test_study; here it only costs time."""
    monkeypatch.setattr(kerabl.hayne.study, "probe_pool", lambda workers: contextlib.nullcontext(None))


@pytest.fixture(scope="module")
def study_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(kerabl.hayne.study, "probe_pool", lambda workers: contextlib.nullcontext(None))
        result = invoke("study", "--out", out, "--layers", "conv_5,dense_2", *SMALL)
    return out, result


def test_help_lists_the_stages():
    result = invoke("--help")
    assert result.exit_code == 0
    for stage in STAGES:
        assert stage in result.output


def test_study_writes_results_and_prints_the_path(study_run):
    out, result = study_run
    assert result.exit_code == 0, result.output
    path = out / "h_results.h5"
    assert f"results: {path}" in result.output
    res = kerabl.hayne.results.HResults.open(path)
    assert res.done.all() and res.layers == ["conv_5", "dense_2"] and len(res.classes) == 10
    assert res.grid_shape == (2, 2) and res.config["probe_fits"] == 2
    assert res.config["heldout_folds"] == 2 and res.config["others"] == "random-10"
    # the baseline printed before the sweep is the one the stored ranks give
    from kerabl.hayne.baseline import results_baseline
    assert results_baseline(res).lines()[0] in result.output.splitlines()


def test_export_writes_one_row_per_class_layer_cell(study_run, tmp_path):
    out, _ = study_run
    csv_path = tmp_path / "h.csv"
    result = invoke("export", out / "h_results.h5", "--out", csv_path)
    assert result.exit_code == 0, result.output
    assert f"csv: {csv_path}" in result.output
    with open(csv_path, newline="") as fh:
        rows = list(csv.reader(fh))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert CSV_COLUMNS[:7] == ("class", "class_index", "layer", "cell", "sel_bin", "mag_bin",
                               "n_units")
    body = rows[1:]
    assert len(body) == 10 * 2 * 4
    assert body[0][:7] == ["0", "0", "conv_5", "0", "0", "0", "512"]
    assert body[-1][:7] == ["9", "9", "dense_2", "3", "1", "1", "16"]
    assert all(field != "" for row in body for field in row)   # every value was computed


def test_figures_writes_png_files(study_run, tmp_path):
    out, _ = study_run
    result = invoke("figures", out / "h_results.h5", "--out", tmp_path / "figs")
    assert result.exit_code == 0, result.output
    pngs = sorted((tmp_path / "figs").glob("*.png"))
    assert len(pngs) >= 4
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)


def test_figures_of_several_files_add_fig3_side_by_side(study_run, tmp_path):
    out, _ = study_run
    result = invoke("figures", out / "h_results.h5", out / "h_results.h5", "--out", tmp_path)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "0-demo" / "fig2b_deficit_grids.png").is_file()
    assert (tmp_path / "1-demo" / "fig2b_deficit_grids.png").is_file()
    assert (tmp_path / "fig3_networks.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("args, fragment", [
    (["--layers", "conv_9"], "conv_9"),
    (["--weights", "/nonexistent.h5"], "/nonexistent.h5"),
    (["--images", "/nonexistent-images"], "/nonexistent-images"),
    (["--grid", "4by4"], "4by4"),
    (["--others", "some"], "some"),
    (["--shard", "2/2"], "2/2"),
    (["--model", "alexnet"], "alexnet"),
    (["--model", "vgg16", "--weights", "random"], "--images is required"),   # before any build
])
def test_study_bad_input_is_one_line_and_exit_2(tmp_path, args, fragment):
    result = invoke("study", "--out", tmp_path, *SMALL, *args)   # the bad value last: it wins
    assert_one_line_error(result, fragment)
    assert not (tmp_path / "h_results.h5").exists()


def test_figures_on_a_missing_file(tmp_path):
    assert_one_line_error(invoke("figures", tmp_path / "none.h5"), "none.h5", "does not exist")


def test_failed_run_leaves_no_results_file(tmp_path, monkeypatch, one_process):
    original = kerabl.hayne.results.HResultsWriter.write_pair
    calls = []

    def failing(self, *args, **kwargs):
        calls.append(args)
        if len(calls) == 2:
            raise KerablError("disk full: free some space")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(kerabl.hayne.results.HResultsWriter, "write_pair", failing)
    result = invoke("study", "--out", tmp_path, "--layers", "dense_2", *SMALL)
    assert_one_line_error(result, "disk full")
    assert not (tmp_path / "h_results.h5").exists()
    assert (tmp_path / "h_results.h5.partial").exists()


@pytest.mark.parametrize("command", [["export"], ["merge"], ["figures"]])
def test_a_file_that_is_not_hdf5_is_one_line_and_exit_2(tmp_path, command):
    bad = tmp_path / "notes.h5"
    bad.write_text("not an HDF5 file\n")
    assert_one_line_error(invoke(*command, bad, "--out", tmp_path / "out"), "notes.h5",
                          "not an HDF5 results file")
    assert not (tmp_path / "out").exists()


def _arrays(path):
    import h5py
    import numpy as np

    with h5py.File(path, "r") as f:
        out = {}
        f.visititems(lambda name, obj: out.__setitem__(name, np.asarray(obj))
                     if hasattr(obj, "shape") else None)
        return out


@pytest.mark.slow
def test_reproduce_draws_the_h_figures_beside_the_z_study(tmp_path, one_process):
    """With more than one worker the H figures are drawn in a spawned process while the Z study
    runs, and half the Z figures there after it: the same figure files as drawn in turn, and the
    wall-time line says which it was."""
    args = ["--layers", "dense_2", *SMALL]
    beside = invoke("reproduce", "--out", tmp_path / "beside", "--workers", "2", *args)
    in_turn = invoke("reproduce", "--out", tmp_path / "turn", "--workers", "1", *args)
    assert beside.exit_code == 0 and in_turn.exit_code == 0, beside.output + in_turn.output
    assert "H figures (beside the Z study)" in beside.output
    assert "Z figures (half beside)" in beside.output and "Z figures (half" not in in_turn.output
    assert "H figures (beside" not in in_turn.output and "H figures" in in_turn.output
    names = [sorted(p.name for p in (tmp_path / run / "figures").iterdir())
             for run in ("beside", "turn")]
    assert names[0] == names[1]
    assert "fig2b_deficit_grids.png" in names[0] and "z_attributes.png" in names[0]
    # the baseline before the sweep, and per class in the summary (10 digit classes)
    assert beside.output.count("baseline: top-1 ") == 2 and beside.output.count(": top-1 ") == 12


@pytest.mark.parametrize("signum", ["SIGTERM", "SIGINT"])
def test_an_interrupt_a_library_turns_into_another_error_still_ends_as_an_interrupt(
        tmp_path, monkeypatch, signum):
    """TensorFlow catches a KeyboardInterrupt that lands while it traces a function and raises
    a TypeError instead; the command must still end with the interrupt's line and status 130."""
    import os
    import signal
    import time

    import kerabl.cli_tools

    def swallowing(path, send=True):
        try:
            if send:
                os.kill(os.getpid(), getattr(signal, signum))
                time.sleep(2)  # the handler runs here at the latest
        except KeyboardInterrupt:
            raise TypeError("Failed to convert elements of (None, 512) to Tensor") from None
        raise TypeError("a genuine bug")

    monkeypatch.setattr(kerabl.cli_tools, "results_kind", swallowing)
    result = invoke("export", tmp_path / "h_results.h5", "--out", tmp_path / "r.csv")
    assert result.exit_code == 130, (result.output, result.exception)
    assert result.stderr.strip() == ("interrupted: finished work is kept; rerun the same "
                                     "command to resume")
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler

    monkeypatch.setattr(kerabl.cli_tools, "results_kind", lambda path: swallowing(path, False))
    result = invoke("export", tmp_path / "h_results.h5", "--out", tmp_path / "r.csv")
    assert result.exit_code == 1 and str(result.exception) == "a genuine bug"


def test_reproduce_killed_midway_then_rerun_equals_an_uninterrupted_run(tmp_path, monkeypatch,
                                                                       one_process):
    import numpy as np

    args = ["--layers", "conv_5,dense_2", "--probe-fits", "2", "--grid", "2x2",
            "--heldout-folds", "2", "--no-z", "--no-progress"]
    whole = invoke("reproduce", "--out", tmp_path / "whole", *args)
    assert whole.exit_code == 0, whole.output

    original = kerabl.hayne.results.HResultsWriter.write_pair
    calls = []

    def interrupted(self, *a, **k):
        calls.append(a)
        if len(calls) == 7:
            raise KeyboardInterrupt
        return original(self, *a, **k)

    monkeypatch.setattr(kerabl.hayne.results.HResultsWriter, "write_pair", interrupted)
    killed = invoke("reproduce", "--out", tmp_path / "rerun", *args)
    assert killed.exit_code != 0
    assert not (tmp_path / "rerun" / "h_results.h5").exists()
    monkeypatch.setattr(kerabl.hayne.results.HResultsWriter, "write_pair", original)
    rerun = invoke("reproduce", "--out", tmp_path / "rerun", *args)
    assert rerun.exit_code == 0, rerun.output

    a, b = _arrays(tmp_path / "whole" / "h_results.h5"), _arrays(tmp_path / "rerun" / "h_results.h5")
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert ((tmp_path / "whole" / "h_summary.json").read_text()
            == (tmp_path / "rerun" / "h_summary.json").read_text())
    assert (tmp_path / "rerun" / "figures" / "fig2b_deficit_grids.png").is_file()
    assert "largest mean rank deficit" in rerun.output
