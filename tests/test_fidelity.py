"""The authors' formulas written out literally (DESIGN section 2) on small arrays with known answers,
and `--protocol authors` / `HConfig.authors()` checked against them: their grid_space bounds, the
liblinear probe with scikit-learn 0.20's log_loss (eps = 1e-15), the full-matrix srs, and baseline
ranks from the same graph (an all-ones mask gives every deficit exactly 0); and, per network,
the lines of the authors' MobileNetV2 and ResNet scripts (their classes, every other image as
"other", float32 means, the unpenalised probe, their empty cells, ResNet's two preprocessing
recipes) against `--protocol authors` on real images with random weights."""

import dataclasses
import warnings

import numpy as np
import pytest
from scipy import stats
from sklearn.linear_model import LogisticRegression

from kerabl.data import digits_imageset, paper_imageset
from kerabl.hayne.grid import equal_count_grid
from kerabl.hayne.probes import (fit_logistic_batched, hard_log_loss, paper_probe_loss,
                                 paper_probe_score, rsa_scores)
from kerabl.hayne.study import HConfig, run_h_study

# ---------------------------------------------------------------------------------------------
# The authors' formulas, literally


def authors_grid_space(sel, mag):
    """Their grid_space: bounds are sorted values at int(i/4 * N), magnitude bounds from the units
    strictly inside the strip, all four bounds inclusive. Returns the 16 cells' unit lists."""
    y_sorted = np.sort(sel)
    n = len(sel)
    bounds = [y_sorted[int(i / 4 * n)] for i in range(4)] + [y_sorted[-1]]
    cells = []
    for i in range(4):
        lower, upper = bounds[i], bounds[i + 1]
        x_sorted = np.sort(mag[(sel > lower) & (sel < upper)])
        x_bounds = [x_sorted[int(k / 4 * len(x_sorted))] for k in range(4)] + [x_sorted[-1]]
        for j in range(4):
            cells.append([u for u in range(n) if lower <= sel[u] <= upper
                          and x_bounds[j] <= mag[u] <= x_bounds[j + 1]])
    return cells


def log_loss_020(y_true, y_pred, eps=1e-15):
    """scikit-learn 0.20's log_loss for 0/1 labels and a 1-d y_pred, step by step."""
    transformed = np.asarray(y_true)[:, None]
    transformed = np.append(1 - transformed, transformed, axis=1)
    y_pred = np.clip(np.asarray(y_pred), eps, 1 - eps)[:, np.newaxis]
    y_pred = np.append(1 - y_pred, y_pred, axis=1)
    y_pred /= y_pred.sum(axis=1)[:, np.newaxis]
    return (-(transformed * np.log(y_pred)).sum(axis=1)).mean()


def authors_probe_loss(X, y):
    """LogisticRegression(random_state=0) of scikit-learn 0.20 (liblinear), hard predictions."""
    clf = LogisticRegression(random_state=0, solver="liblinear").fit(X, y)
    return log_loss_020(y, clf.predict(X))


def authors_srs(X, y):
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)     # a zero-variance image: NaN
        rdm = 1 - np.corrcoef(X)
    template = np.ones_like(rdm)
    for i in range(len(y)):
        for j in range(len(y)):
            if i == j or (y[i] == 1 and y[j] == 1):
                template[i, j] = 0
    return stats.kendalltau(rdm, template)[0], stats.spearmanr(rdm, template, axis=None)[0]


def authors_coordinates(acts, class_indexes, other_indexes):
    """Their lines (resnet_ablation.py 453-454 and 468-469; the same in the other scripts):
    np.mean of the float32 activations, np.column_stack, then np.sum(X, axis=1) / np.sqrt(2) and
    (X[:, 0] - X[:, 1]) / np.sqrt(2), under numpy 1's casting (a float64 scalar did not promote
    a float32 array: the division was float32)."""
    class_activations = np.mean(acts[class_indexes], axis=0)
    other_activations = np.mean(acts[other_indexes], axis=0)
    X = np.column_stack((class_activations, other_activations))
    assert X.dtype == np.float32
    magnitude = np.sum(X, axis=1) / np.float32(np.sqrt(2))
    selectivity = (X[:, 0] - X[:, 1]) / np.float32(np.sqrt(2))
    return selectivity, magnitude


def authors_probe_fit_liblinear():
    return LogisticRegression(random_state=0, solver="liblinear")      # alexnet_ablation.py 756


def authors_probe_fit_unpenalised():
    # mobilenetv2_ablation.py 1183 (penalty='none'; C=inf in today's scikit-learn)
    return LogisticRegression(C=np.inf, random_state=0)


def authors_probe_mean_loss(act, y, make_clf, fits, seed):
    """Their probe loop (alexnet_ablation.py 754-763, mobilenetv2_ablation.py 1180-1190), its
    unseeded np.random.choice drawn from np.random.default_rng(seed)."""
    from sklearn.exceptions import ConvergenceWarning

    rng = np.random.default_rng(seed)
    losses = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for _ in range(fits):
            clf = make_clf()
            random_indexes = rng.choice(np.arange(act.shape[1]), size=min(act.shape[1], 100),
                                        replace=False)
            clf.fit(act[:, random_indexes], y)
            losses.append(log_loss_020(y, clf.predict(act[:, random_indexes])))
    return np.mean(losses)


def check_cells_against_authors(res, ci, li, acts, n, make_clf, empty_srs):
    """One class x layer of a results file against the authors' lines: coordinates from float32
    means, grid_space, every cell's probe (every fit: scikit-learn's own), full-matrix srs, the
    clipped deficit, and their empty-cell values (deficit 0, srs `empty_srs`, no probe)."""
    from kerabl.hayne.study import cell_seed

    y = np.r_[np.ones(n, dtype=int), np.zeros(len(acts) - n, dtype=int)]
    sel, mag = authors_coordinates(acts, list(range(n)), list(range(n, len(acts))))
    cells = authors_grid_space(sel, mag)
    assert res.cell_count[ci, li].tolist() == [len(c) for c in cells]
    fits = res.config["probe_fits"]
    for k, cell in enumerate(cells):
        scores = [res.srs_tau[ci, li, k], res.srs_rho[ci, li, k], res.probe_loss[ci, li, k]]
        if not cell:
            assert res.deficit[ci, li, k] == 0
            np.testing.assert_array_equal(scores, [empty_srs, empty_srs, np.nan])
            continue
        act = acts[:, cell]
        expected = authors_probe_mean_loss(act, y, make_clf, fits, cell_seed(0, ci, li, k))
        np.testing.assert_allclose(scores, [*authors_srs(act.astype(np.float64), y), expected],
                                   atol=1e-12)
        assert res.probe[ci, li, k] == pytest.approx(np.exp(-expected), abs=1e-12)
    after = res.rank_after[ci, li, :, :n].astype(np.int64)
    before = res.rank_baseline[ci, li, :n].astype(np.int64)
    np.testing.assert_array_equal(res.deficit[ci, li], np.clip(after - before, 0, None).mean(-1))


# ---------------------------------------------------------------------------------------------
# Grid

# 18 units: selectivity 0..17 gives bounds y_sorted[int(i/4 * 18)] = 0, 4, 9, 13 and 17 (the
# interpolated percentiles would be 0, 4.25, 8.5, 12.75, 17). Inside each strip the magnitudes
# are 0, 1, 2(, 3); the boundary units 0, 4, 9, 13 and 17 have magnitudes 0.5, 1.5, 1, 2 and 5.
GRID_MAG = np.array([0.5, 0, 1, 2, 1.5, 0, 1, 2, 3, 1.0, 0, 1, 2, 2.0, 0, 1, 2, 5.0])
GRID_CELLS = [[1], [0, 1, 2], [2, 3, 4], [3],                 # strip 0: units 0..4
              [5, 6, 9], [4, 6, 7, 9], [7, 8], [8],           # strip 1: units 4..9
              [10], [9, 10, 11], [9, 11, 12, 13], [12, 13],   # strip 2: units 9..13
              [14], [14, 15], [13, 15, 16], [13, 16]]         # strip 3: units 13..17


def test_authors_grid_by_hand():
    sel = np.arange(18, dtype=float)
    assert authors_grid_space(sel, GRID_MAG) == GRID_CELLS
    grid = equal_count_grid(sel, GRID_MAG, legacy_bounds=True)
    assert [c.tolist() for c in grid.cells] == GRID_CELLS
    assert grid.sel_edges.tolist() == [0, 4, 9, 13, 17]
    # boundary units 4, 9 and 13 are in two strips; unit 17 (magnitude 5) is in no cell
    assert grid.membership[[4, 9, 13, 17]].tolist() == [2, 4, 10, -1]


@pytest.mark.parametrize("seed, n_units", [(0, 37), (1, 200), (2, 1001)])
def test_legacy_grid_is_authors_grid_space(seed, n_units):
    rng = np.random.default_rng(seed)
    sel, mag = rng.normal(size=(2, n_units)).round(1)      # rounded: many units on the bounds
    grid = equal_count_grid(sel, mag, legacy_bounds=True)
    assert [c.tolist() for c in grid.cells] == authors_grid_space(sel, mag)


# ---------------------------------------------------------------------------------------------
# Probe: liblinear's objective and the eps = 1e-15 loss


def test_log_loss_eps_by_hand():
    right, wrong = -np.log(1 - 1e-15), -np.log(1e-15)
    assert wrong == pytest.approx(34.538776, abs=1e-6)
    assert hard_log_loss([1, 1, 0], [0, 1, 0]) == pytest.approx((wrong + 2 * right) / 3, rel=1e-12)
    for y, pred in [([1, 0, 1, 0], [1, 1, 0, 0]), ([0, 0, 1], [0, 0, 1]), ([1, 0], [0, 1])]:
        assert hard_log_loss(y, pred) == log_loss_020(np.array(y), np.array(pred))


def probe_problem(seed, n=90, units=6):
    rng = np.random.default_rng(seed)
    y = (np.arange(n) < n // 3).astype(int)
    X = np.maximum(rng.normal(size=(n, units)) + 0.5 * y[:, None] * rng.normal(size=units), 0)
    return 3.0 + X, y                              # far from 0: the intercept penalty matters


def test_liblinear_objective_optimum():
    X, y = probe_problem(0)
    Xb = np.concatenate([X, np.ones((len(y), 1))], axis=1)[None]
    w = fit_logistic_batched(Xb, y, penalise_intercept=True)[0]
    ref = LogisticRegression(solver="liblinear", tol=1e-12, max_iter=100000).fit(X, y)
    np.testing.assert_allclose(w, np.r_[ref.coef_[0], ref.intercept_], atol=1e-5)
    unpenalised = fit_logistic_batched(Xb, y)[0]
    assert abs(unpenalised[-1] - w[-1]) > 0.1      # the two objectives differ here


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_probe_score_is_authors_liblinear_fit_when_all_units_are_used(seed):
    X, y = probe_problem(seed)
    expected = authors_probe_loss(X, y)
    assert paper_probe_loss(X, y, n_fits=5, seed=seed) == pytest.approx(expected, abs=1e-12)
    assert paper_probe_score(X, y, n_fits=5, seed=seed) == pytest.approx(np.exp(-expected),
                                                                         abs=1e-12)
    assert paper_probe_loss(X, y, n_fits=5, seed=seed, solver="sklearn") == pytest.approx(
        expected, abs=1e-12)


# ---------------------------------------------------------------------------------------------
# srs


def test_full_matrix_srs_is_scipy_on_full_matrices():
    X, y = probe_problem(4, n=30, units=8)
    tau, rho = rsa_scores(X, y, matrix="full")
    assert (tau, rho) == pytest.approx(authors_srs(X, y), abs=1e-12)
    assert abs(rsa_scores(X, y)[0] - tau) > 1e-3   # the upper triangle is another statistic
    X[5] = 2.0                                     # a zero-variance image: NaN, as theirs
    assert np.isnan(rsa_scores(X, y, matrix="full")).all()
    assert np.isfinite(rsa_scores(X, y)).all()


def test_full_matrix_srs_by_hand():
    # 3 images: 0 and 1 targets (correlation 1), 2 other (correlation -1 with both). Full RDM
    # flattened [0,0,2, 0,0,2, 2,2,0], template [0,0,1, 0,0,1, 1,1,0]: the same order, tau = 1.
    X = np.array([[0.0, 1.0], [0.0, 2.0], [1.0, 0.0]])
    y = np.array([1, 1, 0])
    assert rsa_scores(X, y, matrix="full") == pytest.approx((1.0, 1.0))


# ---------------------------------------------------------------------------------------------
# --protocol authors


def test_protocol_authors_selects_the_authors_choices():
    from kerabl.options import Engine, Model, Objective, Protocol, Solver, SrsMatrix, Unit

    kw = dict(grid="4x4", unit=Unit.element, others="random-10", seed=0, clip=True,
              legacy_bounds=False, probe_fits=200, probe_max_units=100, heldout_folds=5, srs=True,
              engine=Engine.fast, probe_solver=Solver.batched, probe_objective=Objective.liblinear,
              srs_matrix=SrsMatrix.upper)
    default = HConfig.from_options(kw)
    assert default == HConfig() and not default.legacy_bounds and default.srs_matrix == "upper"
    alexnet = HConfig.from_options(kw, Protocol.authors, network=Model.alexnet.value)
    assert alexnet == HConfig.authors("alexnet")
    assert (alexnet.legacy_bounds, alexnet.srs_matrix, alexnet.probe_objective,
            alexnet.others) == (True, "full", "liblinear", "random-10")
    mnv2 = HConfig.from_options(kw, Protocol.authors, network=Model.mobilenet_v2.value)
    assert (mnv2.other_images, mnv2.probe_objective, mnv2.legacy_bounds) == ("all", "unpenalised",
                                                                              True)
    kept = HConfig.from_options({**kw, "others": "all", "probe_fits": 20}, Protocol.authors,
                                network="alexnet")
    assert (kept.others, kept.probe_fits, kept.legacy_bounds) == ("all", 20, True)


@pytest.fixture(scope="module")
def demo():
    from kerabl.models import load_network

    return load_network("demo")


@pytest.fixture(scope="module")
def authors_run(demo, tmp_path_factory):
    imageset = digits_imageset().subset([1, 3, 8])
    out = tmp_path_factory.mktemp("authors")
    path = run_h_study(demo, imageset, out, layers=["conv_5", "dense_1"],
                       config=HConfig.authors("demo", probe_fits=3, heldout_folds=2),
                       progress=False, workers=1, log=lambda message: None)
    return imageset, out, path


def test_protocol_authors_on_the_demo_matches_the_literal_formulas(authors_run):
    from kerabl.activations import open_cache
    from kerabl.hayne.results import HResults

    imageset, out, path = authors_run
    res = HResults.open(path)
    cache = open_cache(out / "activations.h5")
    for ci in range(len(res.classes)):
        n = int((res.image_rows[ci] >= 0).sum())
        others = res.others[ci][res.others[ci] >= 0]
        rows = np.concatenate([res.image_rows[ci][:n]]
                              + [imageset.rows_of(imageset.classes[o]) for o in others])
        for li, layer in enumerate(res.layers):
            acts = cache.read(layer, rows=rows)
            check_cells_against_authors(res, ci, li, acts, n, authors_probe_fit_liblinear,
                                        empty_srs=np.nan)


# ---------------------------------------------------------------------------------------------
# Baseline and ablated ranks from one graph


def _all_ones_deficits(model, layers, images, labels, engine="fast"):
    from kerabl.engine import rank_engine
    from kerabl.hayne.ablation import baseline_and_ablated_ranks, mean_rank_deficit

    deficits = []
    for layer in layers:
        ablator = rank_engine(engine, model, layer)
        ablator.set_images(images)
        ones = np.ones((3, *ablator.shape), dtype=np.float32)
        before, after = baseline_and_ablated_ranks(ablator, ones, labels)
        deficits.append(mean_rank_deficit(before, after, clip=False))
    return np.array(deficits)


@pytest.mark.parametrize("engine", ["fast", "paper"])
def test_all_ones_mask_gives_zero_deficit_on_the_demo(demo, engine):
    images = digits_imageset()
    rows = np.arange(0, len(images), 9)
    x = images.load(demo.input_size, demo.preprocess, rows=rows)
    layers = demo.targets if engine == "fast" else demo.targets[::3]
    deficits = _all_ones_deficits(demo.model, layers, x, np.asarray(images.labels)[rows], engine)
    assert deficits.shape == (len(layers), 3) and (deficits == 0).all()


@pytest.mark.realdata
@pytest.mark.slow
@pytest.mark.parametrize("name", ["alexnet", "vgg16", "resnet101"])
def test_all_ones_mask_gives_zero_deficit_on_imagenet_networks(hayne50, name):
    from kerabl.models import load_network

    net = load_network(name, None, seed=0)
    images = paper_imageset(hayne50, classes="hayne8")
    rows = np.array([0, len(images) - 1])
    x = images.load(net.input_size, net.preprocess, rows=rows)
    layer = net.targets[len(net.targets) // 2]            # a deep tail; the demo tests every layer
    deficits = _all_ones_deficits(net.model, [layer], x, np.asarray(images.labels)[rows])
    assert (deficits == 0).all()


@pytest.mark.realdata
def test_paper_preprocessing_is_cv2_imread_and_resize(hayne50):
    import cv2

    images = paper_imageset(hayne50, classes="hayne8")
    path = images.paths[3]
    expected = cv2.resize(cv2.imread(str(path)), (227, 227)).astype(np.float32)
    np.testing.assert_array_equal(images.load((227, 227), "paper", rows=[3])[0], expected)


# ---------------------------------------------------------------------------------------------
# The authors' MobileNetV2 inputs: their 10 classes, Pillow's default resize, mode 'tf'

def authors_mobilenet_input(image):
    """`Image.resize((224, 224))` with Pillow's default filter, then preprocess_input mode 'tf'."""
    from PIL import Image

    resized = np.asarray(Image.fromarray(image).resize((224, 224)), dtype=np.float32)
    return resized / np.float32(127.5) - np.float32(1.0)


def test_mobilenet_v2_authors_recipe_is_pillow_default_resize_then_tf():
    from PIL import Image

    from kerabl.images import preprocess_images

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (300, 410, 3), dtype=np.uint8),
              rng.integers(0, 256, (150, 120, 3), dtype=np.uint8)]     # shrunk and enlarged
    got = preprocess_images(images, (224, 224), "mobilenet_v2_authors")
    for image, x in zip(images, got):
        bicubic = np.asarray(Image.fromarray(image).resize((224, 224), Image.Resampling.BICUBIC),
                             dtype=np.float32)
        np.testing.assert_array_equal(x, bicubic / np.float32(127.5) - np.float32(1.0))
        np.testing.assert_array_equal(x, authors_mobilenet_input(image))   # the default is BICUBIC
    bilinear = preprocess_images(images, (224, 224), "mobilenet_v2")      # only the filter differs
    assert np.abs(got - bilinear).max() > 0.1


@pytest.mark.realdata
def test_mobilenet_v2_authors_recipe_on_real_images(hayne50):
    from kerabl.images import load_image

    images = paper_imageset(hayne50, classes="hayne10")
    rows = [0, len(images) - 1]
    expected = [authors_mobilenet_input(load_image(images.paths[r])) for r in rows]
    np.testing.assert_array_equal(images.load((224, 224), "mobilenet_v2_authors", rows=rows),
                                  np.stack(expected))


@pytest.mark.realdata
def test_hayne10_is_the_first_10_of_the_authors_list(hayne50):
    from kerabl import imagenet
    from kerabl.data import HAYNE10

    images = paper_imageset(hayne50, classes="hayne10")
    assert [imagenet.wnids()[i] for i in images.classes] == [
        "n04147183", "n01917289", "n01534433", "n01944390", "n02066245", "n02110185", "n03271574",
        "n02870880", "n03388183", "n04442312"]
    assert images.class_names == list(HAYNE10) and images.class_names[8:] == ["fountain_pen",
                                                                              "toaster"]
    assert images.name.startswith("imagenet-paper:hayne10:") and len(images) == 500


def test_hayne10_needs_10_listed_classes(tmp_path):
    from kerabl.data import _chosen_classes
    from kerabl.errors import KerablError

    (tmp_path / "50_classes.json").write_text('{"schooner": "n04147183"}')
    with pytest.raises(KerablError, match="hayne10 is the first 10 classes"):
        _chosen_classes("hayne10", tmp_path)


def test_protocol_authors_gives_mobilenet_v2_the_authors_classes_and_preprocessing(tmp_path,
                                                                                   capsys):
    from kerabl.cli import _authors_inputs, _inputs_of, _study_config
    from kerabl.options import H_OPTIONS, INPUT_OPTIONS, Protocol

    paper, synsets = tmp_path / "paper", tmp_path / "val"
    (paper / "images").mkdir(parents=True)
    (synsets / "n04147183").mkdir(parents=True)
    base = {name: default for name, _, default in INPUT_OPTIONS}
    authors = {**base, "model": "mobilenet_v2", "images": paper, "protocol": Protocol.authors}
    theirs = {"classes": "hayne10", "preprocess": "mobilenet_v2_authors"}
    assert _authors_inputs(authors) == theirs
    assert {k: _inputs_of(authors)[k] for k in theirs} == theirs
    assert _authors_inputs({**authors, "classes": "hayne8"}) == {"preprocess": theirs["preprocess"]}
    assert _authors_inputs({**authors, "preprocess": "mobilenet_v2"}) == {"classes": "hayne10"}
    assert _authors_inputs({**authors, "images": synsets}) == {"preprocess": theirs["preprocess"]}
    assert _authors_inputs({**authors, "protocol": Protocol.default}) == {}
    assert _authors_inputs({**authors, "model": "alexnet"}) == {}
    assert _inputs_of({**authors, "protocol": Protocol.default})["preprocess"] is None
    h_defaults = {name: default for name, _, default in H_OPTIONS if name != "protocol"}
    chosen = _study_config({**h_defaults, **authors}, HConfig().probe_fits)
    assert chosen == HConfig.authors("mobilenet_v2")
    printed = capsys.readouterr().err
    assert "classes=hayne10" in printed and "preprocess=mobilenet_v2_authors" in printed


# ---------------------------------------------------------------------------------------------
# The authors' MobileNetV2 and ResNet scripts under --protocol authors, on real images with
# random weights: a paper folder of 12 classes x 2 images holding only their 50_classes.pkl

RESNET_CLASSES = ['schooner', 'brain_coral', 'junco_bird', 'snail', 'grey_whale', 'siberian_husky',
                  'electric_fan', 'bookcase', 'fountain_pen', 'toaster']       # their line 303
MOBILENET_LAYERS = (['Conv1', 'bn_Conv1'] + [f'expanded_conv_{p}' for p in (
    'depthwise', 'depthwise_BN', 'project', 'project_BN')] + [f'block_{b}_{p}' for b in range(1, 17)
    for p in ('expand', 'expand_BN', 'depthwise', 'depthwise_BN', 'project', 'project_BN')]
    + ['Conv_1', 'Conv_1_bn'])                     # mobilenetv2_ablation.py 895, layer_names


@pytest.fixture(scope="module")
def tiny_paper(hayne50, tmp_path_factory):
    import shutil

    full = paper_imageset(hayne50)
    folder = tmp_path_factory.mktemp("paper")
    (folder / "images").mkdir()
    for name in ("ILSVRC2014_clsloc_validation_ground_truth.txt", "meta_clsloc.mat"):
        (folder / name).symlink_to(hayne50 / name)
    shutil.copy(hayne50 / "50_classes.pkl", folder)
    for c in full.classes[:12]:
        for r in full.rows_of(c)[:2]:
            (folder / "images" / full.paths[r].name).symlink_to(full.paths[r])
    return folder


def invoke(*args):
    from typer.testing import CliRunner

    from kerabl.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.mark.realdata
def test_paper_layout_reads_the_authors_pickle(tiny_paper, hayne50):
    from kerabl.data import paper_class_list

    assert not (tiny_paper / "50_classes.json").exists()
    assert paper_class_list(tiny_paper) == paper_class_list(hayne50)     # the pkl = the JSON
    images = paper_imageset(tiny_paper, classes="hayne10")
    assert images.class_names == RESNET_CLASSES and len(images) == 20


def test_class_pickle_is_read_safely(tmp_path):
    import pickle

    from kerabl.data import paper_class_list
    from kerabl.errors import KerablError

    marker = tmp_path / "ran"
    (tmp_path / "50_classes.pkl").write_bytes(          # os.system('touch ran') when unpickled
        b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR.")
    with pytest.raises(KerablError, match=r"cannot read class list .*refers to os.system"):
        paper_class_list(tmp_path)
    assert not marker.exists()
    (tmp_path / "50_classes.pkl").write_bytes(pickle.dumps(["schooner", "n04147183"]))
    with pytest.raises(KerablError, match="not a pickled dict of strings"):
        paper_class_list(tmp_path)
    (tmp_path / "50_classes.pkl").write_bytes(pickle.dumps({"schooner": 4147183}))
    with pytest.raises(KerablError, match="not a pickled dict of strings"):
        paper_class_list(tmp_path)


@pytest.mark.realdata
def test_a_malicious_class_pickle_is_one_line_exit_2(hayne50, tmp_path):
    (tmp_path / "images").mkdir()
    for name in ("ILSVRC2014_clsloc_validation_ground_truth.txt", "meta_clsloc.mat"):
        (tmp_path / name).symlink_to(hayne50 / name)
    (tmp_path / "50_classes.pkl").write_bytes(b"cos\nsystem\n(S'true'\ntR.")
    result = invoke("study", "--model", "alexnet", "--images", tmp_path, "--out", tmp_path / "o")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.output.strip().count("\n") == 0 and "refers to os.system" in result.output
    assert not (tmp_path / "o").exists()


def test_protocol_authors_takes_each_networks_script():
    from kerabl.errors import KerablError
    from kerabl.hayne.config import authors_inputs

    alexnet = HConfig.authors("alexnet")
    assert (alexnet.probe_solver, alexnet.probe_objective, alexnet.others, alexnet.other_images,
            alexnet.means, alexnet.empty_cells, alexnet.ablation_preprocess) == (
        "sklearn", "liblinear", "random-10", "studied", "float32", "nan", "")
    for unpublished in ("vgg16", "resnet101", "alexnet_torchvision", "demo"):
        assert HConfig.authors(unpublished) == alexnet
    mobilenet = HConfig.authors("mobilenet_v2")
    assert (mobilenet.other_images, mobilenet.probe_objective, mobilenet.empty_cells,
            mobilenet.ablation_preprocess) == ("all", "unpenalised", "zero", "")
    resnet = HConfig.authors("resnet50_torchvision")
    assert resnet == dataclasses.replace(mobilenet, ablation_preprocess="torchvision232")
    given = {"classes": None, "preprocess": None, "class_index": None}
    assert authors_inputs("authors", "resnet50_torchvision", given, paper_layout=False) == {
        "preprocess": "torchvision"}
    assert authors_inputs("authors", "resnet50_torchvision", given, paper_layout=True) == {
        "classes": "hayne10", "preprocess": "torchvision"}
    with pytest.raises(KerablError, match="use --probe-solver sklearn"):
        HConfig(probe_objective="unpenalised")
    with pytest.raises(KerablError, match="unknown other images 'some'"):
        HConfig(other_images="some")


@pytest.mark.realdata
def test_torchvision232_is_resnet50_v2_transforms(hayne50):
    """Their line 371: ToTensor, then ImageClassification(crop_size=224, resize_size=232): a
    bilinear antialiased resize of the float tensor (torch's interpolate), centre crop, normalise.
    kerabl resizes the uint8 image with Pillow's bilinear filter: the same geometry, rounding apart."""
    torch = pytest.importorskip("torch")
    from kerabl.images import load_image, preprocess_images

    images = paper_imageset(hayne50, classes=["schooner"])
    for path in images.paths[:2]:
        image = load_image(path)
        tensor = torch.from_numpy(image.copy()).permute(2, 0, 1)[None].float() / 255
        h, w = image.shape[:2]
        size = (232, int(232 * w / h)) if h <= w else (int(232 * h / w), 232)
        resized = torch.nn.functional.interpolate(tensor, size=size, mode="bilinear",
                                                  align_corners=False, antialias=True)[0]
        top, left = int(round((size[0] - 224) / 2.0)), int(round((size[1] - 224) / 2.0))
        crop = resized[:, top:top + 224, left:left + 224]
        mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
        theirs = ((crop - mean[:, None, None]) / std[:, None, None]).permute(1, 2, 0).numpy()
        ours = preprocess_images([image], (224, 224), "torchvision232")[0]
        assert np.abs(ours - theirs).mean() < 0.01 and np.abs(ours - theirs).max() < 0.02   # a step
        other = preprocess_images([image], (224, 224), "torchvision")[0]     # resize 256
        assert np.abs(other - theirs).mean() > 5 * np.abs(ours - theirs).mean()


def _authors_run(tiny_paper, out, *args):
    result = invoke("study", "--protocol", "authors", "--images", tiny_paper, "--probe-fits", 2,
                    "--heldout-folds", 2, "--workers", 1, "--no-progress", "--out", out, *args)
    assert result.exit_code == 0, result.output
    return result.output


def _check_run_against_authors(tiny_paper, out, make_clf):
    """Their 10 classes, "other" = every other image of the folder (studied or not: line 452 /
    1050), and every cell of every pair against their lines."""
    from kerabl.activations import open_cache
    from kerabl.hayne.results import HResults

    res = HResults.open(out / "h_results.h5")
    assert list(res.classes) == RESNET_CLASSES and res.config["images_in_set"] == 24
    pool = paper_imageset(tiny_paper, drop_empty=True)
    cache = open_cache(out / "activations.h5")
    for ci, name in enumerate(res.classes):
        wid = pool.classes[pool.class_names.index(name)]
        class_indexes = [i for i in range(len(pool)) if pool.labels[i] == wid]
        other_indexes = [i for i in range(len(pool)) if pool.labels[i] != wid]
        assert len(other_indexes) == 22                # 9 studied and 2 unstudied classes
        for li, layer in enumerate(res.layers):
            acts = cache.read(layer, rows=class_indexes + other_indexes)
            check_cells_against_authors(res, ci, li, acts, len(class_indexes), make_clf,
                                        empty_srs=0.0)
    return res


@pytest.mark.slow
@pytest.mark.realdata
def test_protocol_authors_is_the_authors_resnet_script(tiny_paper, tmp_path):
    torch = pytest.importorskip("torch")
    from kerabl.crosscheck import torch_network
    from kerabl.engine import true_class_rank
    from kerabl.models import load_network

    torch.manual_seed(0)
    port = torch_network("resnet50_torchvision")
    for module in port.modules():                  # random BatchNorm statistics
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    torch.save(port.state_dict(), tmp_path / "resnet50.pth")
    net = load_network("resnet50_torchvision", tmp_path / "resnet50.pth")
    bottlenecks = [f"conv{s + 2}_block{b + 1}_out" for s, n in enumerate((3, 4, 6, 3))
                   for b in range(n)]              # their line 308: the 16 Bottleneck outputs
    assert list(net.targets) == bottlenecks
    out = tmp_path / "out"
    printed = _authors_run(tiny_paper, out, "--model", "resnet50_torchvision", "--weights",
                           tmp_path / "resnet50.pth", "--layers", "conv5_block3_out")
    assert "protocol authors (resnet50_torchvision)" in printed
    assert "ablation_preprocess=torchvision232" in printed and "classes=hayne10" in printed
    res = _check_run_against_authors(tiny_paper, out, authors_probe_fit_unpenalised)
    assert (res.config["preprocess"], res.config["ranks_preprocess"]) == ("torchvision",
                                                                          "torchvision232")
    study = paper_imageset(tiny_paper, classes="hayne10")
    differs = False
    for ci, wid in enumerate(study.classes):           # baseline ranks: line 371's recipe
        rows = study.rows_of(wid)
        labels = np.asarray(study.labels)[rows]
        ranks = {recipe: true_class_rank(net.model.predict_on_batch(
            study.load((224, 224), recipe, rows=rows)), labels)
            for recipe in ("torchvision232", "torchvision")}
        np.testing.assert_array_equal(res.rank_baseline[ci, 0, :len(rows)], ranks["torchvision232"])
        differs |= bool((ranks["torchvision"] != ranks["torchvision232"]).any())
    assert differs                                     # the recipe matters to the ranks


@pytest.mark.slow
@pytest.mark.realdata
def test_protocol_authors_is_the_authors_mobilenet_v2_script(tiny_paper, tmp_path):
    from kerabl.models import build_model, paper_targets

    assert list(paper_targets("mobilenet_v2", build_model("mobilenet_v2", alpha=0.35))) == \
        MOBILENET_LAYERS
    out = tmp_path / "out"
    printed = _authors_run(tiny_paper, out, "--model", "mobilenet_v2", "--weights", "random",
                           "--alpha", 0.35, "--layers", "Conv_1_bn")
    assert "preprocess=mobilenet_v2_authors" in printed and "probe_objective=unpenalised" in printed
    first, changed = [line for line in printed.splitlines()
                      if line.startswith(("protocol authors", "your options change"))]
    assert "probe_fits" not in first       # the options given are not listed as the authors'
    assert changed == ("your options change the protocol's choices: probe_fits=2 (protocol: 200), "
                       "heldout_folds=2 (protocol: 5)")
    res = _check_run_against_authors(tiny_paper, out, authors_probe_fit_unpenalised)
    assert res.config["preprocess"] == res.config["ranks_preprocess"] == "mobilenet_v2_authors"
