"""Tests of capmodel.kernels.attention: the packed attention cells, held to the readable
loops of capmodel.attention, in blocks and threads."""

import threading

import numpy as np
import pytest

from capmodel import attention as at
from capmodel.kernels import attention as ka
from capmodel.kernels.buffers import Buffers

W, H, A, L, C = 3, 4, 7, 5, 6
GATES = {"rnn": 1, "lstm": 4, "gru": 3}


def params(rng, k, dtype=np.float64):
    shapes = {"Wx": (W, k * H), "Wh": (H, k * H), "b": (k * H,), "Wc": (C, k * H), "att.Wr": (C, A),
              "att.b": (A,), "att.Wh": (H, A), "att.w": (A,), "att.Wg": (H, C), "att.bg": (C,)}
    return {key: (0.5 * rng.standard_normal(shape)).astype(dtype) for key, shape in shapes.items()}


def ragged(rng, N, T, dtype=np.float64):
    """A packed batch: lengths 0..T sorted longest first, its sizes, inputs and upstream gradients."""
    lengths = np.sort(rng.integers(0, T + 1, size=N))[::-1]
    lengths[0] = T
    sizes = tuple(int((lengths > t).sum()) for t in range(T))
    P = sum(sizes)
    f = lambda *shape: rng.standard_normal(shape).astype(dtype)
    return lengths, sizes, f(P, W), f(N, H), f(N, L, C), f(P, H), f(P, L)


@pytest.mark.parametrize("workers", [1, 2, 3])
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_packed_functions_equal_each_sequence_run_alone(cell, workers):
    rng = np.random.default_rng(20)
    N, T = 11, 5
    p = params(rng, GATES[cell])
    lengths, sizes, x, h0, regions, dh, dalphas = ragged(rng, N, T)
    h, alphas, cache = ka.attention_packed_forward(cell, x, h0, regions, p, sizes, workers=workers)
    dx, dh0, grads = ka.attention_packed_backward(dh, dalphas, cache)
    starts = np.concatenate(([0], np.cumsum(sizes)))
    want_grads = {k: np.zeros_like(v) for k, v in p.items()}
    for i, n in enumerate(lengths):
        rows = [starts[t] + i for t in range(n)]
        if not rows:  # no step: no output, no gradient
            assert not dh0[i].any()
            continue
        h_i, alphas_i, cache_i = at.attention_cell_forward(cell, x[rows][None], h0[i : i + 1], regions[i : i + 1], p)
        np.testing.assert_allclose(h[rows], h_i[0], rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(alphas[rows], alphas_i[0], rtol=1e-12, atol=1e-14)
        dx_i, dh0_i, _, g = at.attention_cell_backward(dh[rows][None], dalphas[rows][None], cache_i)
        np.testing.assert_allclose(dx[rows], dx_i[0], rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(dh0[i], dh0_i[0], rtol=1e-10, atol=1e-13)
        for k in want_grads:
            want_grads[k] += g[k]
    for k, v in want_grads.items():
        np.testing.assert_allclose(grads[k], v, rtol=1e-10, atol=1e-12, err_msg=k)


def test_no_alpha_gradient_equals_a_zero_one():
    rng = np.random.default_rng(21)
    p = params(rng, 4)
    _, sizes, x, h0, regions, dh, dalphas = ragged(rng, 9, 4)
    cache = ka.attention_packed_forward("lstm", x, h0, regions, p, sizes)[2]
    got = ka.attention_packed_backward(dh, None, cache)
    want = ka.attention_packed_backward(dh, np.zeros_like(dalphas), cache)
    np.testing.assert_array_equal(got[0], want[0])
    for k in p:
        np.testing.assert_array_equal(got[2][k], want[2][k])


def test_blocks_of_one_row_give_the_same_result(monkeypatch):
    rng = np.random.default_rng(22)
    p = params(rng, 3)
    _, sizes, x, h0, regions, dh, dalphas = ragged(rng, 8, 4)
    run = lambda: ka.attention_packed_backward(dh, dalphas, ka.attention_packed_forward(
        "gru", x, h0, regions, p, sizes, workers=1)[2])
    whole = run()  # all rows in one block at these sizes
    monkeypatch.setattr(ka, "BLOCK_BYTES", 1)
    assert ka.block_rows(L, A, 8) == 1
    blocked = run()
    np.testing.assert_allclose(blocked[0], whole[0], rtol=1e-13, atol=1e-15)
    for k in p:
        np.testing.assert_allclose(blocked[2][k], whole[2][k], rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_float32_threads_repeat_exactly_and_reuse_their_memory(cell):
    rng = np.random.default_rng(23)
    p = params(rng, GATES[cell], np.float32)
    _, sizes, x, h0, regions, dh, dalphas = ragged(rng, 40, 6, np.float32)
    buffers = Buffers()
    runs = []
    for _ in range(3):
        with buffers.active():
            h, alphas, cache = ka.attention_packed_forward(cell, x, h0, regions, p, sizes, workers=2)
            out = [h.copy(), alphas.copy(), *ka.attention_packed_backward(dh, dalphas, cache)]
        runs.append(out)
    for first, again in zip(runs[0], runs[2]):
        if isinstance(first, dict):
            assert all(first[k].dtype == np.float32 and np.array_equal(first[k], again[k]) for k in first)
        else:
            assert first.dtype == np.float32 and np.array_equal(first, again)
    assert len(ka.worker_threads()._queues) >= 1  # group 1 ran in a worker thread of this thread


def test_an_error_in_a_worker_thread_reaches_the_caller():
    def fail():
        raise RuntimeError("boom in group 1")

    with pytest.raises(RuntimeError, match="boom in group 1"):
        ka.worker_threads().run([lambda: 1, fail])
    assert ka.worker_threads().run([lambda: 1, lambda: 2]) == [1, 2]  # still serving


def test_each_calling_thread_has_workers_of_its_own_which_end_with_it():
    def names():
        return {t.ident for t in threading.enumerate() if t.name == "capmodel-attention"}

    before = names()
    seen = []

    def caller():
        seen.append(ka.worker_threads())
        assert ka.worker_threads().run([lambda: 1, lambda: threading.get_ident()])[1] not in before

    t = threading.Thread(target=caller)
    t.start()
    t.join()
    assert seen[0] is not ka.worker_threads()
    del seen[:]  # the caller's workers are gone with it: their thread stops
    for _ in range(100):
        if names() <= before:
            break
        threading.Event().wait(0.01)
    assert names() <= before


@pytest.mark.parametrize("change, message", [
    (lambda a: a.update(regions=np.zeros((9, L))), r"regions must have shape \(n0=9, L, D\)"),
    (lambda a: a["params"].pop("att.w"), "params lack att.w"),
    (lambda a: a["params"].update({"Wc": np.zeros((C + 1, 4 * H))}), r"Wc must have shape \(6, 16\)"),
    (lambda a: a.update(cell="tanh"), 'unknown cell_type "tanh"'),
    (lambda a: a.update(sizes=(3, 4)), "non-increasing"),
])
def test_bad_inputs_raise_value_error(change, message):
    rng = np.random.default_rng(24)
    _, sizes, x, h0, regions, _, _ = ragged(rng, 9, 4)
    args = {"cell": "lstm", "x": x, "h0": h0, "regions": regions, "params": params(rng, 4), "sizes": sizes}
    change(args)
    with pytest.raises(ValueError, match=message):
        ka.attention_packed_forward(args["cell"], args["x"], args["h0"], args["regions"], args["params"],
                                    args["sizes"])
