"""Tests of kerabl.zhou.figures: the plotted data are the stored arrays, and every figure renders."""

import json

import h5py
import numpy as np
import pytest

from kerabl.zhou import figures as figures_z
from kerabl.errors import KerablError
from kerabl.zhou.results import Z_KIND, ZResults

LAYERS = {"conv_a": (5, 4), "dense_b": (7, 1)}   # units, map side
N_IMAGES, CLASSES, K = 12, 3, 2


def write_results(path, thumbnails=True):
    """A results file in run_z_study's layout with random contents."""
    rng = np.random.default_rng(0)
    config = {"network": "fake", "layers": list(LAYERS), "input_size": [6, 6], "preprocess": "none"}
    corr = {a: {d: {"spearman_r": 0.25, "spearman_p": 0.5, "pearson_r": 0.1, "pearson_p": 0.7,
                    "n": 5} for d in ("overall_drop", "max_class_drop")}
            for a in ("l1", "max_class_corr", "selectivity")}
    with h5py.File(path, "w") as f:
        f.attrs.update(kind=Z_KIND, config=json.dumps(config), versions=json.dumps({"numpy": "x"}))
        f["labels"] = np.arange(N_IMAGES) % CLASSES
        f["classes"] = np.arange(CLASSES)
        f.create_dataset("class_names", data=np.array(["a", "b", "c"], dtype=object),
                         dtype=h5py.string_dtype())
        if thumbnails:
            f["thumbnails"] = rng.integers(0, 255, (N_IMAGES, 6, 6, 3), dtype=np.uint8)
        for name, (n, side) in LAYERS.items():
            g = f.create_group(f"layer_{name}")
            for key in ("overall_drop", "max_class_drop", "rand_overall_drop",
                        "rand_max_class_drop", "l1", "max_class_corr", "selectivity"):
                g[key] = rng.random(n)
            g["argmax_class"] = rng.integers(0, CLASSES, n)
            g["top_images"] = rng.integers(0, N_IMAGES, (n, K))
            g["top_maps"] = rng.random((n, K, side, side)).astype("float32")
            g.attrs.update(done=True, layer=name, correlations=json.dumps(corr))
        g = f.create_group("greedy")
        g["curves"] = rng.random((CLASSES, 4))
        g["order"] = rng.integers(0, 5, (CLASSES, 3))
        g["random"] = rng.random((CLASSES, 5, 4))
        g.attrs.update(done=True, layer="conv_a")
    return path


@pytest.fixture()
def z(tmp_path):
    return ZResults.open(write_results(tmp_path / "z.h5"))


def test_drop_curves_plot_the_sorted_stored_drops(z):
    fig = figures_z.build_drop_curves(z)
    for ax, layer in zip(fig.axes, LAYERS):
        units_line, random_line = ax.get_lines()
        d = z.layer(layer)
        np.testing.assert_array_equal(units_line.get_ydata(), np.sort(d["max_class_drop"])[::-1])
        np.testing.assert_array_equal(random_line.get_ydata(),
                                      np.sort(d["rand_max_class_drop"])[::-1])
        assert ax.get_title() == layer
    with pytest.raises(KerablError, match="key"):
        figures_z.build_drop_curves(z, key="rank")


def test_attribute_scatter_plots_stored_pairs_with_rho(z):
    fig = figures_z.build_attribute_scatter(z, "dense_b")
    d = z.layer("dense_b")
    assert len(fig.axes) == 6
    ax = fig.axes[2 * 2 + 1]   # selectivity vs max class drop
    np.testing.assert_allclose(ax.collections[0].get_offsets(),
                               np.c_[d["selectivity"], d["max_class_drop"]])
    assert ax.get_title() == "rho = 0.25"


def test_greedy_curves_plot_greedy_and_random_mean(z):
    fig = figures_z.build_greedy_curves(z, classes=[1])
    greedy, random = fig.axes[0].get_lines()
    np.testing.assert_array_equal(greedy.get_ydata(), z.greedy["curves"][1])
    np.testing.assert_allclose(random.get_ydata(), z.greedy["random"][1].mean(axis=0))
    assert fig.axes[0].get_title() == "b"


def test_top_images_show_the_most_important_units(z):
    fig = figures_z.build_top_images(z, "conv_a", n_units=2)
    d = z.layer("conv_a")
    best = np.argsort(-d["max_class_drop"])[0]
    first = fig.axes[0]
    image, overlay = first.get_images()
    np.testing.assert_allclose(image.get_array(), z.thumbnails[d["top_images"][best][0]] / 255.0)
    np.testing.assert_allclose(overlay.get_array(), d["top_maps"][best][0])
    assert first.get_ylabel().startswith(f"unit {best}\n")


def test_render_writes_every_figure(tmp_path):
    path = write_results(tmp_path / "z.h5")
    paths = figures_z.render_z_figures(path, tmp_path / "figs", formats=("png", "pdf"))
    assert sorted(p.name for p in paths) == sorted(
        f"{n}.{e}" for n in figures_z.FIGURE_NAMES for e in ("png", "pdf"))
    assert all(p.stat().st_size > 1000 for p in paths)
    bare = write_results(tmp_path / "bare.h5", thumbnails=False)
    names = {p.stem for p in figures_z.render_z_figures(bare, tmp_path / "bare", formats=("png",))}
    assert "z_top_images" not in names
    with pytest.raises(KerablError, match="thumbnails"):
        figures_z.build_top_images(ZResults.open(bare), "conv_a")
    part = figures_z.render_z_figures(path, tmp_path / "part", formats=("png",),
                                      names=("z_top_images", "z_drop_curves"))
    assert [p.name for p in part] == ["z_drop_curves.png", "z_top_images.png"]
    assert (part[0].read_bytes() == (tmp_path / "figs" / "z_drop_curves.png").read_bytes())
    with pytest.raises(KerablError, match="no Z figure 'z_nothing': the Z figures are z_drop"):
        figures_z.render_z_figures(path, tmp_path / "part", names=("z_nothing",))


def test_regulariser_curves():
    fig = figures_z.build_regulariser_curves({"base": {"l": np.array([0.1, 0.3])},
                                              "bn": {"l": np.array([0.2, 0.0])}})
    lines = fig.axes[0].get_lines()
    np.testing.assert_array_equal(lines[1].get_ydata(), [0.2, 0.0])
    assert [line.get_label() for line in lines] == ["base", "bn"]


def test_curve_band_mean_and_spread_over_instances():
    seeds = [np.array([0.1, 0.4, 0.0]), np.array([0.2, 0.0, 0.6]), np.array([0.3, 0.2, 0.3])]
    band = figures_z.curve_band(seeds)   # sorted: [.4 .1 0], [.6 .2 0], [.3 .3 .2]
    np.testing.assert_allclose(band["mean"], [1.3 / 3, 0.2, 0.2 / 3])
    np.testing.assert_allclose(band["low"], [0.3, 0.1, 0.0])
    np.testing.assert_allclose(band["high"], [0.6, 0.3, 0.2])
    np.testing.assert_allclose(band["sd"], [np.std([0.4, 0.6, 0.3], ddof=1), 0.1,
                                            np.std([0, 0, 0.2], ddof=1)])
    assert band["n"] == 3
    one = figures_z.curve_band(np.array([0.1, 0.3]))
    np.testing.assert_array_equal(one["mean"], [0.3, 0.1])
    assert one["n"] == 1 and not one["sd"].any()
    np.testing.assert_allclose(figures_z.curve_band(np.stack(seeds))["mean"], band["mean"])
    with pytest.raises(KerablError, match="unit count"):
        figures_z.curve_band([np.zeros(3), np.zeros(4)])
    with pytest.raises(KerablError, match="non-empty"):
        figures_z.curve_band([])


def test_regulariser_curves_draw_mean_and_min_max_band():
    fig = figures_z.build_regulariser_curves({
        "base": {"l": np.array([0.1, 0.3])},
        "bn": {"l": [np.array([0.2, 0.0]), np.array([0.1, 0.5]), np.array([0.0, 0.3])]}})
    ax = fig.axes[0]
    lines = ax.get_lines()
    assert [line.get_label() for line in lines] == ["base", "bn (3 seeds)"]
    np.testing.assert_allclose(lines[1].get_ydata(), [1.0 / 3, 0.1 / 3])
    (band,) = ax.collections
    by_rank = {}   # sorted seeds: [.2 0], [.5 .1], [.3 0] -> low [.2 0], high [.5 .1]
    for x, y in band.get_paths()[0].vertices:
        by_rank.setdefault(round(float(x)), set()).add(round(float(y), 9))
    assert by_rank == {0: {0.2, 0.5}, 1: {0.0, 0.1}}
    assert "min-max" in fig._suptitle.get_text()
