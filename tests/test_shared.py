"""Tests of kerabl.hayne.shared: a sweep's shared-memory block read by a worker process gives the
arrays the parent wrote, and a block is never closed under a live view."""

import numpy as np
import pytest

from kerabl.hayne.shared import SharedBlock, resolve, room_for
from kerabl.hayne.study import worker_pool

pytestmark = pytest.mark.skipif(not room_for(1 << 20), reason="no shared-memory folder with room")


def _column_sums(ref):
    return resolve(ref).sum(axis=0)


def _whole_sum(ref):
    return resolve(ref, lambda a: a.sum(axis=0))


def test_a_worker_reads_the_columns_and_the_whole_array_the_parent_wrote():
    x = np.arange(6 * 10, dtype=np.float32).reshape(6, 10)
    y = -np.arange(3 * 4, dtype=np.float32).reshape(3, 4)
    block = SharedBlock.create(x.nbytes)
    try:
        with worker_pool(1) as pool:
            block.apply(x.shape, lambda a: a.__setitem__(Ellipsis, x))
            units = np.array([7, 2, 2, 9])
            np.testing.assert_array_equal(pool.submit(_column_sums, block.columns(x.shape, units))
                                          .result(), x[:, units].sum(0))
            np.testing.assert_array_equal(pool.submit(_whole_sum, block.whole(x.shape)).result(),
                                          x.sum(0))
            # the next pair: a smaller array at the block's start, read by the same worker
            block.apply(y.shape, lambda a: a.__setitem__(Ellipsis, y))
            np.testing.assert_array_equal(pool.submit(_whole_sum, block.whole(y.shape)).result(),
                                          y.sum(0))
    finally:
        block.unlink()


def test_plain_arrays_pass_through_resolve():
    x = np.ones((3, 2), dtype=np.float32)
    assert resolve(x) is x
    assert resolve(x, lambda a: a.shape) == (3, 2)


def test_a_view_left_alive_keeps_the_block_from_closing():
    block = SharedBlock.create(64)
    kept = block.apply((4, 4), lambda a: a)          # a view that outlives the call: a misuse
    with pytest.raises(BufferError):
        block.unlink()
    del kept
    block = SharedBlock.create(64)
    with pytest.raises(ValueError, match="does not fit"):
        block.whole((5, 4))
    block.unlink()


def test_no_block_without_room(tmp_path, monkeypatch):
    import kerabl.hayne.shared as shared

    assert not room_for(1, folder=str(tmp_path / "absent"))
    monkeypatch.setattr(shared, "room_for", lambda nbytes: False)
    assert SharedBlock.create(64) is None
