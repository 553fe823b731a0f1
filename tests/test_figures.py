"""Tests of kerabl.figures on small results files written through kerabl.hayne.results.

The main file has 3 classes x 3 layers on a 3 x 4 grid (non-square, so a transposed panel
fails) with hand-set numbers: deficit[c, l, k] = 100 c + 10 l + k, probe[c, l, k] =
0.5 + 0.1 l + 0.01 k, and pair (class 2, layer 0) not done.
"""

from __future__ import annotations

import json
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kerabl.hayne import figures
from kerabl.errors import KerablError
from kerabl.hayne.grid import equal_count_grid
from kerabl.hayne.results import HResults, HResultsWriter

SHAPE = (3, 4)
K = SHAPE[0] * SHAPE[1]
CLASSES = ["junco_bird", "brain_coral", "bookcase"]
LAYERS = ["conv_1", "conv_2", "dense_1"]
N_UNITS = [64, 40, 25]
N_IMAGES = 5
SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def _unit_coordinates(ci: int, li: int, n_units: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([ci, li])
    sel = rng.normal(size=n_units)
    return sel, rng.gamma(2.0, size=n_units) + 0.3 * sel


def write_results(path: Path, *, skip=((2, 0),), deficit_offset: float = 0.0) -> Path:
    """A results file with the hand-set numbers above; pairs in `skip` are left undone."""
    writer = HResultsWriter(path, config={"model": "toy", "unit": "element", "grid": list(SHAPE)},
                            classes=CLASSES, class_index=[13, 109, 453], layers=LAYERS,
                            n_units=N_UNITS, grid_shape=SHAPE, max_images=N_IMAGES, max_others=2)
    k = np.arange(K, dtype=np.float64)
    for ci in range(len(CLASSES)):
        writer.write_class(ci, image_rows=np.arange(N_IMAGES) + 10 * ci,
                           rank_before=np.zeros(N_IMAGES, dtype=np.int64),
                           others=[c for c in range(len(CLASSES)) if c != ci])
        for li, n_units in enumerate(N_UNITS):
            if (ci, li) in skip:
                continue
            sel, mag = _unit_coordinates(ci, li, n_units)
            writer.write_pair(ci, li, selectivity=sel, magnitude=mag,
                              grid=equal_count_grid(sel, mag, SHAPE),
                              rank_after=np.ones((K, N_IMAGES), dtype=np.int64),
                              deficit=100 * ci + 10 * li + k + deficit_offset,
                              probe=0.5 + 0.1 * li + 0.01 * k,
                              probe_heldout=np.full(K, 0.5), srs_tau=np.zeros(K),
                              srs_rho=np.zeros(K))
    writer.finish()
    return path


@pytest.fixture(scope="module")
def results_path(tmp_path_factory) -> Path:
    return write_results(tmp_path_factory.mktemp("fig") / "partial.h5")


@pytest.fixture(scope="module")
def res(results_path) -> HResults:
    return HResults.open(results_path, allow_partial=True)


@pytest.fixture(scope="module")
def complete_path(tmp_path_factory) -> Path:
    return write_results(tmp_path_factory.mktemp("fig") / "complete.h5", skip=(),
                         deficit_offset=1.0)


def _grid(base: float) -> np.ndarray:
    return base + np.arange(K, dtype=np.float64).reshape(SHAPE)


def test_fig2_arrays_are_the_stored_numbers_and_their_means(res):
    panels, layer_means, class_means = figures.fig2_arrays(res, "deficit")
    assert panels.shape == (3, 3, 3, 4)
    np.testing.assert_array_equal(panels[1, 2], _grid(120.0))
    np.testing.assert_array_equal(panels[1, 2], res.deficit[1, 2].reshape(SHAPE))
    assert np.isnan(panels[2, 0]).all()                                     # not done
    np.testing.assert_allclose(layer_means[0], _grid(50.0))                 # classes 0, 1 only
    np.testing.assert_allclose(layer_means[1], _grid(110.0))
    np.testing.assert_allclose(class_means[2], _grid(215.0))                # layers 1, 2 only
    np.testing.assert_allclose(class_means[0], _grid(10.0))
    with pytest.raises(KerablError, match="unknown metric"):
        figures.fig2_arrays(res, "accuracy")


def test_fig2_panel_images_equal_stored_arrays(res):
    fig = figures.build_fig2(res, "deficit")
    n_rows, n_cols = len(CLASSES) + 1, len(LAYERS) + 1
    panels, layer_means, class_means = figures.fig2_arrays(res, "deficit")
    axes = fig.axes[:n_rows * n_cols]
    image = lambda r, c: np.ma.filled(axes[r * n_cols + c].images[0].get_array(), np.nan)
    for ci in range(len(CLASSES)):
        for li in range(len(LAYERS)):
            np.testing.assert_array_equal(image(ci, li), res.deficit[ci, li].reshape(SHAPE))
        np.testing.assert_allclose(image(ci, n_cols - 1), class_means[ci])
    for li in range(len(LAYERS)):
        np.testing.assert_allclose(image(n_rows - 1, li), layer_means[li])
    # corner: mean over layers of the layer means: (50 + 110 + 120) / 3 + k
    np.testing.assert_allclose(image(n_rows - 1, n_cols - 1), _grid(280.0 / 3))
    assert {ax.images[0].norm.vmin for ax in axes} == {0.0}                 # one colour scale
    assert {ax.images[0].norm.vmax for ax in axes} == {231.0}
    assert [axes[r * n_cols].get_ylabel() for r in range(n_rows)] == CLASSES + ["layer mean"]
    assert [axes[c].get_title() for c in range(n_cols)] == LAYERS + ["class\nmean"]
    assert axes[0].images[0].origin == "lower"


def test_fig2_size_scales_with_classes_and_layers(res):
    small = figures._fig2_layout(3, 3, SHAPE, 12)["size"]
    big = figures._fig2_layout(50, 7, (4, 4), 12)
    assert big["size"][1] > 20 > small[1]                                   # 51 rows of ~0.45 in
    assert big["panel_width"] == pytest.approx(0.45)


def test_fig1_scatter_is_magnitude_vs_selectivity_with_cells(res):
    units = res.units(1, "conv_2")
    fig = figures.build_fig1(res, "brain_coral", "conv_2")
    points = fig.axes[0].collections[0]
    np.testing.assert_array_equal(points.get_offsets()[:, 0], units["magnitude"])
    np.testing.assert_array_equal(points.get_offsets()[:, 1], units["selectivity"])
    np.testing.assert_array_equal(points.get_array(), units["membership"])
    horizontal = sorted(line.get_ydata()[0] for line in fig.axes[0].lines)
    np.testing.assert_allclose(horizontal, np.sort(units["sel_edges"]))
    assert "all 40 units" in fig.axes[0].get_title()


def test_fig1_subsample_is_seeded_and_said(res):
    a = figures.fig1_arrays(res, "junco_bird", "conv_1", max_points=10, seed=3)
    b = figures.fig1_arrays(res, "junco_bird", "conv_1", max_points=10, seed=3)
    c = figures.fig1_arrays(res, "junco_bird", "conv_1", max_points=10, seed=4)
    np.testing.assert_array_equal(a["index"], b["index"])
    assert not np.array_equal(a["index"], c["index"])
    np.testing.assert_array_equal(a["magnitude"], res.units(0, "conv_1")["magnitude"][a["index"]])
    fig = figures.build_fig1(res, "junco_bird", "conv_1", max_points=10, seed=3)
    assert "10 of 64 units (random, seed 3)" in fig.axes[0].get_title()
    with pytest.raises(KerablError, match="no stored unit coordinates"):
        figures.fig1_arrays(res, "bookcase", "conv_1")                       # pair not done
    with pytest.raises(KerablError, match="not in the results"):
        figures.fig1_arrays(res, "goldfish", "conv_1")


def test_fig3_grids_are_means_over_classes_and_layers(res, complete_path):
    other = HResults.open(complete_path)
    fig = figures.build_fig3([res, other], ["partial", "complete"])
    # done pairs of `res`: mean of 100 c + 10 l over 8 pairs = 87.5 + 11.25
    np.testing.assert_allclose(fig.axes[1].images[0].get_array(), _grid(98.75))
    np.testing.assert_allclose(fig.axes[3].images[0].get_array(), _grid(111.0))
    np.testing.assert_allclose(fig.axes[0].images[0].get_array(),
                               0.6125 + 0.01 * np.arange(K).reshape(SHAPE))   # 0.5 + 0.1 * 9 / 8
    assert fig.axes[2].get_title() == "complete: probe score (paper metric)"
    with pytest.raises(KerablError, match="labels"):
        figures.build_fig3([res], ["a", "b"])


def test_probe_vs_deficit_points_and_line(res):
    from kerabl.hayne.stats import probe_deficit_correlation

    fig = figures.build_probe_vs_deficit(res)
    ax = fig.axes[0]
    conv_1 = ax.collections[0].get_offsets()
    assert conv_1.shape == (2 * K, 2)                                       # classes 0, 1 done
    np.testing.assert_allclose(conv_1[:K, 0], 0.5 + 0.01 * np.arange(K))
    np.testing.assert_allclose(conv_1[K:, 1], 100 + np.arange(K))
    corr = probe_deficit_correlation(res)
    assert f"Pearson r = {corr['pearson_r']:.3f}" in ax.get_title()
    assert f"n = {8 * K}" in ax.get_title()
    a = figures.probe_deficit_arrays(res)
    (xs, ys), = [line.get_data() for line in ax.lines]
    fit = np.polyfit(a["probe"], a["deficit"], 1)
    np.testing.assert_allclose(ys, np.polyval(fit, xs))


def test_render_writes_every_figure(results_path, tmp_path):
    paths = figures.render_h_figures(results_path, tmp_path / "figs", allow_partial=True)
    names = sorted(p.name for p in paths)
    stems = ["fig1_units_plane", "fig2a_probe_grids", "fig2b_deficit_grids",
             "fig3_network_means", "fig_probe_vs_deficit", "fig_probe_contrast", "fig_interaction"]
    assert names == sorted(f"{s}.{ext}" for s in stems for ext in ("png", "pdf"))
    for path in paths:
        head = path.read_bytes()[:8]
        assert head.startswith(b"\x89PNG" if path.suffix == ".png" else b"%PDF")
        assert path.stat().st_size > 2000
    with pytest.raises(KerablError, match="not finished"):
        figures.render_h_figures(results_path, tmp_path / "x")
    with pytest.raises(KerablError, match="format"):
        figures.fig_probe_vs_deficit(HResults.open(results_path, allow_partial=True),
                                     tmp_path / "x", formats=("docx",))


def test_scripts_write_their_figures(complete_path, tmp_path):
    calls = {"fig1_units_plane": [str(complete_path), str(tmp_path / "f1"), "--layer", "conv_1"],
             "fig2_class_layer_grids": [str(complete_path), str(tmp_path / "f2"),
                                        "--metric", "probe"],
             "fig3_network_means": [str(complete_path), str(complete_path), "--out",
                                    str(tmp_path / "f3"), "--labels", "a", "b"],
             "fig_probe_vs_deficit": [str(complete_path), str(tmp_path / "f4")]}
    for script, argv in calls.items():
        runpy.run_path(str(SCRIPTS / f"{script}.py"))["main"](argv + ["--formats", "png"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f1.png", "f2.png", "f3.png", "f4.png"]


def test_figures_render_with_tensorflow_blocked(complete_path, tmp_path):
    code = f"""
import sys, json
sys.modules["tensorflow"] = None
sys.modules["keras"] = None
from kerabl.hayne.figures import render_h_figures
paths = render_h_figures({str(complete_path)!r}, {str(tmp_path)!r}, formats=("png",))
print(json.dumps({{"n": len(paths), "pyplot": "matplotlib.pyplot" in sys.modules}}))
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1], timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert json.loads(run.stdout.strip().splitlines()[-1]) == {"n": 7, "pyplot": False}


def test_probe_contrast_and_interaction_figures(complete_path):
    from kerabl.hayne.stats import interaction_test, majority_probe_level

    res = HResults.open(complete_path)
    fig = figures.build_probe_contrast([res, res], ["true", "control"])
    probe_mean = figures.fig3_arrays([res])[0, 0]
    np.testing.assert_allclose(fig.axes[4].images[0].get_array(), probe_mean)
    assert np.isnan(np.asarray(fig.axes[2].images[0].get_array(), float)).all()  # no fold probe
    assert f"{majority_probe_level(res):.3f}" in fig.axes[0].get_title()
    assert majority_probe_level(res) == pytest.approx(np.exp(-34.538776394910684 * 4 / 12))  # eps 1e-15
    fig = figures.build_interaction_coefficients([res], ["toy"])
    test = interaction_test(res)
    points = fig.axes[0].lines[0].get_ydata()
    np.testing.assert_allclose(points, [test["coef_interaction"][k] for k in
                                        ("selectivity", "magnitude", "selectivity_x_magnitude")])
    with pytest.raises(KerablError, match="one label"):
        figures.build_probe_contrast([res], [])


def test_fig1_units_in_no_cell_are_masked():
    """Legacy (inclusive-bounds) grids can leave a unit in no cell (membership -1): drawn grey."""
    from types import SimpleNamespace

    units = {"selectivity": np.array([-1.0, 0.0, 1.0, 2.0]), "magnitude": np.array([1.0, 2, 3, 4]),
             "membership": np.array([0, -1, 1, 1]), "sel_edges": np.array([-1.0, 0.5, 2.0]),
             "mag_edges": np.array([[1.0, 1.5], [3.0, 4.0]])}
    stand_in = SimpleNamespace(classes=["a"], layers=["l"], grid_shape=(2, 1),
                               units=lambda ci, layer: units)
    colours = figures.build_fig1(stand_in, "a", "l").axes[0].collections[0].get_array()
    assert list(np.ma.getmaskarray(colours)) == [False, True, False, False]
    np.testing.assert_array_equal(colours.compressed(), [0, 1, 1])
