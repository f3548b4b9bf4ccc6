"""Tests of capmodel.buffers: scratch arrays reused within an active Buffers only."""

import threading

import numpy as np

from capmodel.buffers import Buffers, scratch


def test_scratch_without_active_buffers_is_always_new():
    a = scratch("x", (3, 4), np.float32)
    b = scratch("x", (3, 4), np.float32)
    assert a.shape == (3, 4) and a.dtype == np.float32
    assert not np.shares_memory(a, b)


def test_active_buffers_hand_out_the_same_array_per_name_shape_and_dtype():
    buffers = Buffers()
    with buffers.active():
        a = scratch("x", (3, 4), np.float32)
        other = scratch("y", (3, 4), np.float32)
    with buffers.active():
        assert scratch("x", (3, 4), np.float32) is a
        assert not np.shares_memory(other, a)
        bigger = scratch("x", (5, 4), np.float32)  # a new shape replaces the array
        assert bigger.shape == (5, 4) and not np.shares_memory(bigger, a)
        assert scratch("x", (5, 4), np.float64).dtype == np.float64
    assert buffers.nbytes == 5 * 4 * 8 + 3 * 4 * 4
    buffers.clear()
    assert buffers.nbytes == 0


def test_activation_is_per_thread_and_ends_with_the_block():
    buffers = Buffers()
    seen = {}
    with buffers.active():
        a = scratch("x", (2,), np.float64)
        thread = threading.Thread(target=lambda: seen.setdefault("x", scratch("x", (2,), np.float64)))
        thread.start()
        thread.join()
    assert seen["x"] is not a  # another thread does not get this model's arrays
    assert scratch("x", (2,), np.float64) is not a  # nor does code after the block
