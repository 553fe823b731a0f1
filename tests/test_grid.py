"""The unit grid: equal-count cells, the legacy inclusive bounds, coordinates, other classes."""

import numpy as np
import pytest

from kerabl.errors import KerablError
from kerabl.hayne.grid import choose_others, coordinates, equal_count_grid


@pytest.mark.parametrize("n_units", [16, 17, 100, 1003])
@pytest.mark.parametrize("ties", [False, True])
def test_cells_equal_count_disjoint_covering(n_units, ties):
    rng = np.random.default_rng(n_units)
    sel, mag = rng.normal(size=(2, n_units))
    if ties:
        sel, mag = np.round(sel), np.round(mag)
    grid = equal_count_grid(sel, mag)
    counts = np.array([c.size for c in grid.cells])
    assert counts.max() - counts.min() <= 1
    assert np.array_equal(np.sort(np.concatenate(grid.cells)), np.arange(n_units))
    assert np.array_equal(np.bincount(grid.membership, minlength=16), counts)
    strips = [np.concatenate(grid.cells[4 * i:4 * i + 4]) for i in range(4)]
    for low, high in zip(strips, strips[1:]):
        assert sel[low].max() <= sel[high].min()
    assert np.all(np.diff(grid.sel_edges) >= 0) and np.all(np.diff(grid.mag_edges, axis=1) >= 0)


def test_hand_made_16_units():
    sel = np.repeat([0.0, 1.0, 2.0, 3.0], 4) + np.arange(16) * 1e-3
    mag = np.tile([3.0, 1.0, 0.0, 2.0], 4)
    grid = equal_count_grid(sel[::-1], mag[::-1])       # order of units does not matter
    # unit u (before reversing) is in strip u // 4 at magnitude rank [3, 1, 0, 2][u % 4]
    assert grid.membership.tolist() == [14, 12, 13, 15, 10, 8, 9, 11, 6, 4, 5, 7, 2, 0, 1, 3]
    assert grid.units((3, 3)).tolist() == [3] and grid.units(0).tolist() == [13]
    assert grid.sel_edges[1] == pytest.approx(0.5 * (0.003 + 1.004))
    assert grid.mag_edges[0].tolist() == [0.0, 0.5, 1.5, 2.5, 3.0]


def test_legacy_bounds_put_boundary_unit_in_two_cells():
    sel = np.arange(9, dtype=float)          # 2 strips: q = [0, 4, 8]; unit 4 is on the bound
    mag = np.array([0, 1, 2, 3, 1.5, 0, 1, 2, 3], dtype=float)
    grid = equal_count_grid(sel, mag, shape=(2, 2), legacy_bounds=True)
    assert grid.sel_edges.tolist() == [0.0, 4.0, 8.0]
    # magnitude bounds come from units strictly inside: 1..3 -> [1, 2, 3]; 5..7 -> [0, 1, 2]
    assert grid.mag_edges.tolist() == [[1.0, 2.0, 3.0], [0.0, 1.0, 2.0]]
    # unit 4 is in strip 0 (cell 0) and strip 1 (cell 3); units 0 and 8 fall outside every cell
    assert [c.tolist() for c in grid.cells] == [[1, 2, 4], [2, 3], [5, 6], [4, 6, 7]]
    assert grid.membership.tolist() == [-1, 0, 0, 1, 0, 2, 2, 3, -1]
    default = equal_count_grid(sel, mag, shape=(2, 2))
    assert (default.membership >= 0).all()


def test_grid_errors():
    with pytest.raises(KerablError, match="cannot fill"):
        equal_count_grid(np.arange(10.0), np.arange(10.0))
    with pytest.raises(KerablError, match="NaN"):
        equal_count_grid(np.r_[np.nan, np.arange(16.0)], np.arange(17.0))


def test_coordinates_by_hand():
    sel, mag = coordinates([3.0, 1.0, 0.0], [1.0, 1.0, 2.0])
    r = np.sqrt(2.0)
    np.testing.assert_allclose(sel, [2 / r, 0.0, -2 / r])
    np.testing.assert_allclose(mag, [4 / r, 2 / r, 2 / r])
    assert sel.dtype == np.float64


def test_choose_others():
    a = choose_others(50, 7, seed=3)
    assert a.tolist() == choose_others(50, 7, seed=3).tolist() and a.size == 10
    assert 7 not in a and len(set(a.tolist())) == 10
    assert a.tolist() != choose_others(50, 8, seed=3).tolist()
    assert a.tolist() != choose_others(50, 7, seed=4).tolist()
    assert choose_others(8, 2, mode="all").tolist() == [0, 1, 3, 4, 5, 6, 7]
    assert choose_others(8, 2).tolist() == [0, 1, 3, 4, 5, 6, 7]      # fewer than 10 others
    assert choose_others(50, 0, mode="random-3").size == 3
    for bad in ("random", "random-0", "some"):
        with pytest.raises(KerablError):
            choose_others(8, 0, mode=bad)
