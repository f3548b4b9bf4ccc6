"""Tests of capmodel.kernels.buffers: scratch arrays reused within an active Buffers only."""

import threading

import numpy as np
import pytest

from capmodel.kernels.buffers import Buffers, scratch


def test_scratch_without_active_buffers_is_always_new():
    a = scratch("x", (3, 4), np.float32)
    b = scratch("x", (3, 4), np.float32)
    assert a.shape == (3, 4) and a.dtype == np.float32
    assert not np.shares_memory(a, b)


def test_active_buffers_hand_out_the_same_memory_per_name_and_dtype():
    buffers = Buffers()
    with buffers.active():
        a = scratch("x", (3, 4), np.float32)
        other = scratch("y", (3, 4), np.float32)
    assert not np.shares_memory(other, a)
    with buffers.active():
        smaller = scratch("x", (2, 5), np.float32)  # fits: a view of the same memory
        assert smaller.shape == (2, 5) and np.shares_memory(smaller, a)
    with buffers.active():
        bigger = scratch("x", (5, 4), np.float32)  # does not fit: the name's memory grows
        assert bigger.shape == (5, 4) and not np.shares_memory(bigger, a)
    with buffers.active():
        assert scratch("x", (5, 4), np.float64).dtype == np.float64  # each dtype its own
    assert buffers.names() == [("x", "float32"), ("x", "float64"), ("y", "float32")]
    assert buffers.nbytes == 5 * 4 * 4 + 5 * 4 * 8 + 3 * 4 * 4
    buffers.clear()
    assert buffers.nbytes == 0 and buffers.names() == []


def test_a_name_is_handed_out_once_per_activation():
    buffers = Buffers()
    with buffers.active():
        scratch("x", (3,), np.float32)
        with pytest.raises(RuntimeError, match="'x' requested twice"):
            scratch("x", (3,), np.float32)
    with buffers.active():  # a new activation may use it again
        scratch("x", (3,), np.float32)


def test_activation_is_per_thread_and_ends_with_the_block():
    buffers = Buffers()
    seen = {}
    with buffers.active():
        a = scratch("x", (2,), np.float64)
        thread = threading.Thread(target=lambda: seen.setdefault("x", scratch("x", (2,), np.float64)))
        thread.start()
        thread.join()
    assert not np.shares_memory(seen["x"], a)  # another thread does not get this model's arrays
    assert not np.shares_memory(scratch("x", (2,), np.float64), a)  # nor does code after the block


def test_a_deep_copied_model_starts_with_empty_buffers():
    import copy

    from capmodel.classifiers.rnn import CaptioningRNN

    rng = np.random.default_rng(0)
    vocab = {"<NULL>": 0, "<START>": 1, "<END>": 2, "<UNK>": 3, "a": 4}
    model = CaptioningRNN(vocab, input_dim=8, wordvec_dim=4, hidden_dim=6, cell_type="lstm", seed=0)
    features, captions = rng.standard_normal((5, 8)).astype(np.float32), rng.integers(0, 5, size=(5, 6))
    loss, grads = model.loss(features, captions)
    twin = copy.deepcopy(model)
    assert model.buffers.nbytes > 0 and twin.buffers.nbytes == 0
    twin_loss, twin_grads = twin.loss(features, captions)
    assert twin_loss == loss and all(np.array_equal(twin_grads[k], grads[k]) for k in grads)
