"""Tests of capmodel.kernels.recurrent: the step cores and packed sequences, held to the
readable functions of capmodel.rnn_layers."""

import numpy as np
import pytest

from capmodel import rnn_layers as rl
from capmodel.kernels import recurrent as kr


@pytest.mark.parametrize("k, fwd, bwd", [
    (1, kr.rnn_packed_forward, kr.rnn_packed_backward),
    (4, kr.lstm_packed_forward, kr.lstm_packed_backward),
    (3, kr.gru_packed_forward, kr.gru_packed_backward),
])
def test_packed_functions_repeat_exactly_and_keep_float32(k, fwd, bwd):
    rng = np.random.default_rng(13)
    N, T, D, H = 64, 5, 7, 8
    f32 = lambda *shape: rng.standard_normal(shape).astype(np.float32)
    x, h0, Wx, Wh, b, dh = f32(T * N, D), f32(N, H), f32(D, k * H), f32(H, k * H), f32(k * H), f32(T * N, H)
    runs = []
    for _ in range(2):
        h, cache = fwd(x, h0, Wx, Wh, b, (N,) * T)
        runs.append((h, *bwd(dh, cache)))
    for first, again in zip(*runs):
        assert first.dtype == np.float32
        assert np.array_equal(first, again)  # deterministic: bit-identical resume relies on it


@pytest.mark.parametrize("cell, k", [("rnn", 1), ("lstm", 4), ("gru", 3)])
def test_step_cores_give_the_bits_of_the_readable_step_functions(cell, k):
    rng = np.random.default_rng(14)
    N, D, H = 3, 4, 5
    x, h, c = rng.standard_normal((N, D)), rng.standard_normal((N, H)), rng.standard_normal((N, H))
    Wx, Wh, b = rng.standard_normal((D, k * H)), rng.standard_normal((H, k * H)), rng.standard_normal(k * H)
    xa = x @ Wx + b
    if cell == "lstm":
        got = kr.lstm_core_forward(xa, h, c, Wh)[:2]
        want = rl.lstm_step_forward(x, h, c, Wx, Wh, b)[:2]
    else:
        got = getattr(kr, f"{cell}_core_forward")(xa, h, Wh)
        got = got[:1] if cell == "gru" else (got,)
        want = getattr(rl, f"{cell}_step_forward")(x, h, Wx, Wh, b)[:1]
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


def test_lstm_core_backward_may_overwrite_dnext_c():
    rng = np.random.default_rng(15)
    N, H = 3, 4
    prev_h, prev_c, xa = rng.standard_normal((N, H)), rng.standard_normal((N, H)), rng.standard_normal((N, 4 * H))
    Wh = rng.standard_normal((H, 4 * H))
    _, _, acts, tc = kr.lstm_core_forward(xa, prev_h, prev_c, Wh)
    dnext_h, dnext_c = rng.standard_normal((N, H)), rng.standard_normal((N, H))
    da1, da2 = np.empty((N, 4 * H)), np.empty((N, 4 * H))
    expected = kr.lstm_core_backward(dnext_h, dnext_c.copy(), prev_c, acts, tc, da1)
    buf = dnext_c.copy()
    got = kr.lstm_core_backward(dnext_h, buf, prev_c, acts, tc, da2, dprev_c=buf)
    assert got is buf
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(da2, da1)


def test_gates_saturate_without_nan_or_warning():
    N, H = 2, 3
    xa = np.full((N, 4 * H), -1e4, dtype=np.float32)  # exp(-a) overflows to inf
    xa[1] = 1e4
    with np.errstate(all="raise"):
        h, c, acts, _ = kr.lstm_core_forward(xa, np.zeros((N, H), np.float32), np.zeros((N, H), np.float32),
                                             np.zeros((H, 4 * H), np.float32))
    np.testing.assert_array_equal(acts[0], [0] * 3 * H + [-1] * H)
    np.testing.assert_array_equal(acts[1], [1] * 4 * H)
    assert np.isfinite(h).all() and h.dtype == np.float32


PACKED = [
    (1, rl.rnn_forward, rl.rnn_backward, kr.rnn_packed_forward, kr.rnn_packed_backward),
    (4, rl.lstm_forward, rl.lstm_backward, kr.lstm_packed_forward, kr.lstm_packed_backward),
    (3, rl.gru_forward, rl.gru_backward, kr.gru_packed_forward, kr.gru_packed_backward),
]


@pytest.mark.parametrize("k, fwd, bwd, packed_fwd, packed_bwd", PACKED)
def test_packed_sequences_equal_each_sequence_run_alone(k, fwd, bwd, packed_fwd, packed_bwd):
    """Each packed sequence gets the states and gradients of running the readable
    capmodel.rnn_layers loop on it alone for its own length; the sum of its weight
    gradients is the packed weight gradient."""
    rng = np.random.default_rng(21)
    D, H = 3, 4
    lengths = [5, 3, 3, 1, 0]  # longest first; the last has no step
    sizes = [sum(n > t for n in lengths) for t in range(max(lengths))]  # (4, 3, 3, 1, 1)
    xs = [rng.standard_normal((n, D)) for n in lengths]
    h0 = rng.standard_normal((len(lengths), H))
    dhs = [rng.standard_normal((n, H)) for n in lengths]
    Wx, Wh, b = rng.standard_normal((D, k * H)), rng.standard_normal((H, k * H)), rng.standard_normal(k * H)
    # packed rows: step t holds the t-th input of every sequence still running
    rows = [(j, t) for t in range(len(sizes)) for j in range(sizes[t])]
    x = np.array([xs[j][t] for j, t in rows])
    dh = np.array([dhs[j][t] for j, t in rows])
    h, cache = packed_fwd(x, h0, Wx, Wh, b, sizes)
    dx, dh0, dWx, dWh, db = packed_bwd(dh, cache)
    sums = [np.zeros_like(Wx), np.zeros_like(Wh), np.zeros_like(b)]
    for j, n in enumerate(lengths):
        if n == 0:
            assert not dh0[j].any()  # no step: no gradient
            continue
        hj, cj = fwd(xs[j][None], h0[j : j + 1], Wx, Wh, b)
        dxj, dh0j, *weights = bwd(dhs[j][None], cj)
        mine = [i for i, (jj, _) in enumerate(rows) if jj == j]
        np.testing.assert_allclose(h[mine], hj[0], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(dx[mine], dxj[0], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(dh0[j], dh0j[0], rtol=1e-10, atol=1e-12)
        for total, w in zip(sums, weights):
            total += w
    for total, w in zip(sums, (dWx, dWh, db)):
        np.testing.assert_allclose(w, total, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("sizes, h0_shape, message", [
    ((2, 3), (3, 4), r"sizes must be non-increasing \(longest sequences first\), got \(2, 3\)"),
    ((4, 1), (3, 4), r"sizes\[0\]=4 sequences cannot start from h0 of 3 rows"),
    ((3, -1, 3), (3, 4), r"sizes must be non-negative integers, got \(3, -1, 3\)"),
    ((2.5, 2.5), (3, 4), r"sizes must be non-negative integers"),
    ((3, 1), (3, 4), r"x has 5 rows but the sizes add up to 4"),
    ((3, 2), (4,), r"h0 must have shape \(n0, H\), got \(4,\)"),
])
def test_packed_sizes_are_checked(sizes, h0_shape, message):
    x, h0 = np.zeros((5, 2)), np.zeros(h0_shape)
    with pytest.raises(ValueError, match="^lstm_packed_forward: " + message):
        kr.lstm_packed_forward(x, h0, np.zeros((2, 16)), np.zeros((4, 16)), np.zeros(16), sizes)
