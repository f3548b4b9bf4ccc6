"""Tests of capmodel.rnn_layers: the CS231n reference values and numeric gradient checks."""

import numpy as np
import pytest

from capmodel import rnn_layers as rl
from capmodel.gradient_check import eval_numerical_gradient, eval_numerical_gradient_array, rel_error


def test_rnn_step_forward_matches_cs231n():
    N, D, H = 3, 10, 4
    x = np.linspace(-0.4, 0.7, num=N * D).reshape(N, D)
    prev_h = np.linspace(-0.2, 0.5, num=N * H).reshape(N, H)
    Wx = np.linspace(-0.1, 0.9, num=D * H).reshape(D, H)
    Wh = np.linspace(-0.3, 0.7, num=H * H).reshape(H, H)
    b = np.linspace(-0.2, 0.4, num=H)
    next_h, _ = rl.rnn_step_forward(x, prev_h, Wx, Wh, b)
    expected_next_h = np.asarray([
        [-0.58172089, -0.50182032, -0.41232771, -0.31410098],
        [0.66854692, 0.79562378, 0.87755553, 0.92795967],
        [0.97934501, 0.99144213, 0.99646691, 0.99854353]])
    assert rel_error(expected_next_h, next_h) < 1e-7


def test_rnn_forward_matches_cs231n():
    N, T, D, H = 2, 3, 4, 5
    x = np.linspace(-0.1, 0.3, num=N * T * D).reshape(N, T, D)
    h0 = np.linspace(-0.3, 0.1, num=N * H).reshape(N, H)
    Wx = np.linspace(-0.2, 0.4, num=D * H).reshape(D, H)
    Wh = np.linspace(-0.4, 0.1, num=H * H).reshape(H, H)
    b = np.linspace(-0.7, 0.1, num=H)
    h, _ = rl.rnn_forward(x, h0, Wx, Wh, b)
    expected_h = np.asarray([
        [[-0.42070749, -0.27279261, -0.11074945, 0.05740409, 0.22236251],
         [-0.39525808, -0.22554661, -0.0409454, 0.14649412, 0.32397316],
         [-0.42305111, -0.24223728, -0.04287027, 0.15997045, 0.35014525]],
        [[-0.55857474, -0.39065825, -0.19198182, 0.02378408, 0.23735671],
         [-0.27150199, -0.07088804, 0.13562939, 0.33099728, 0.50158768],
         [-0.51014825, -0.30524429, -0.06755202, 0.17806392, 0.40333043]]])
    assert rel_error(expected_h, h) < 1e-7


def test_word_embedding_forward_matches_cs231n():
    V, D = 5, 3
    x = np.asarray([[0, 3, 1, 2], [2, 1, 0, 3]])
    W = np.linspace(0, 1, num=V * D).reshape(V, D)
    out, _ = rl.word_embedding_forward(x, W)
    expected_out = np.asarray([
        [[0., 0.07142857, 0.14285714], [0.64285714, 0.71428571, 0.78571429],
         [0.21428571, 0.28571429, 0.35714286], [0.42857143, 0.5, 0.57142857]],
        [[0.42857143, 0.5, 0.57142857], [0.21428571, 0.28571429, 0.35714286],
         [0., 0.07142857, 0.14285714], [0.64285714, 0.71428571, 0.78571429]]])
    assert rel_error(expected_out, out) < 1e-7


def test_lstm_step_forward_matches_cs231n():
    N, D, H = 3, 4, 5
    x = np.linspace(-0.4, 1.2, num=N * D).reshape(N, D)
    prev_h = np.linspace(-0.3, 0.7, num=N * H).reshape(N, H)
    prev_c = np.linspace(-0.4, 0.9, num=N * H).reshape(N, H)
    Wx = np.linspace(-2.1, 1.3, num=4 * D * H).reshape(D, 4 * H)
    Wh = np.linspace(-0.7, 2.2, num=4 * H * H).reshape(H, 4 * H)
    b = np.linspace(0.3, 0.7, num=4 * H)
    next_h, next_c, _ = rl.lstm_step_forward(x, prev_h, prev_c, Wx, Wh, b)
    expected_next_h = np.asarray([
        [0.24635157, 0.28610883, 0.32240467, 0.35525807, 0.38474904],
        [0.49223563, 0.55611431, 0.61507696, 0.66844003, 0.7159181],
        [0.56735664, 0.66310127, 0.74419266, 0.80889665, 0.858299]])
    expected_next_c = np.asarray([
        [0.32986176, 0.39145139, 0.451556, 0.51014116, 0.56717407],
        [0.66382255, 0.76674007, 0.87195994, 0.97902709, 1.08751345],
        [0.74192008, 0.90592151, 1.07717006, 1.25120233, 1.42395676]])
    assert rel_error(expected_next_h, next_h) < 1e-7
    assert rel_error(expected_next_c, next_c) < 1e-7


def test_lstm_forward_matches_cs231n():
    N, D, H, T = 2, 5, 4, 3
    x = np.linspace(-0.4, 0.6, num=N * T * D).reshape(N, T, D)
    h0 = np.linspace(-0.4, 0.8, num=N * H).reshape(N, H)
    Wx = np.linspace(-0.2, 0.9, num=4 * D * H).reshape(D, 4 * H)
    Wh = np.linspace(-0.3, 0.6, num=4 * H * H).reshape(H, 4 * H)
    b = np.linspace(0.2, 0.7, num=4 * H)
    h, _ = rl.lstm_forward(x, h0, Wx, Wh, b)
    expected_h = np.asarray([
        [[0.01764008, 0.01823233, 0.01882671, 0.0194232],
         [0.11287491, 0.12146228, 0.13018446, 0.13902939],
         [0.31358768, 0.33338627, 0.35304453, 0.37250975]],
        [[0.45767879, 0.4761092, 0.4936887, 0.51041945],
         [0.6704845, 0.69350089, 0.71486014, 0.7346449],
         [0.81733511, 0.83677871, 0.85403753, 0.86935314]]])
    assert rel_error(expected_h, h) < 1e-7


def _check_grads(forward, backward, inputs, seed):
    """Numerically check backward(dout, cache) against forward(*inputs) for every input."""
    rng = np.random.default_rng(seed)
    outs = forward(*inputs)
    outs = outs[:-1]  # drop the cache
    douts = [rng.standard_normal(o.shape) for o in outs]
    analytic = backward(*douts, outs_cache(forward, inputs))
    for i, x in enumerate(inputs):
        def f(xi, i=i):
            args = list(inputs)
            args[i] = xi
            res = forward(*args)[:-1]
            return np.concatenate([r.ravel() for r in res])
        num = eval_numerical_gradient_array(f, x, np.concatenate([d.ravel() for d in douts]))
        # 1e-6, CS231n's bound for its LSTM checks: max relative error is dominated by
        # near-zero entries (typical values are 1e-8); a wrong gradient gives ~1e-1.
        assert rel_error(num, analytic[i]) < 1e-6, f"input {i} of {forward.__name__}"


def outs_cache(forward, inputs):
    return forward(*inputs)[-1]


@pytest.mark.parametrize("k, step_f, step_b", [
    (1, rl.rnn_step_forward, rl.rnn_step_backward),
    (3, rl.gru_step_forward, rl.gru_step_backward),
])
def test_step_backward_numeric(k, step_f, step_b):
    rng = np.random.default_rng(1)
    N, D, H = 4, 5, 6
    inputs = [rng.standard_normal(s) for s in ((N, D), (N, H), (D, k * H), (H, k * H), (k * H,))]
    _check_grads(step_f, step_b, inputs, seed=2)


def test_lstm_step_backward_numeric():
    rng = np.random.default_rng(3)
    N, D, H = 4, 5, 6
    inputs = [rng.standard_normal(s) for s in ((N, D), (N, H), (N, H), (D, 4 * H), (H, 4 * H), (4 * H,))]
    _check_grads(rl.lstm_step_forward, rl.lstm_step_backward, inputs, seed=4)


@pytest.mark.parametrize("k, fwd, bwd", [
    (1, rl.rnn_forward, rl.rnn_backward),
    (4, rl.lstm_forward, rl.lstm_backward),
    (3, rl.gru_forward, rl.gru_backward),
])
def test_sequence_backward_numeric(k, fwd, bwd):
    rng = np.random.default_rng(5)
    N, T, D, H = 2, 6, 3, 5
    inputs = [rng.standard_normal(s) for s in ((N, T, D), (N, H), (D, k * H), (H, k * H), (k * H,))]
    _check_grads(fwd, bwd, inputs, seed=6)


@pytest.mark.parametrize("step_f, fwd, k", [
    (rl.rnn_step_forward, rl.rnn_forward, 1),
    (rl.gru_step_forward, rl.gru_forward, 3),
])
def test_sequence_equals_repeated_steps(step_f, fwd, k):
    rng = np.random.default_rng(7)
    N, T, D, H = 3, 4, 5, 6
    x = rng.standard_normal((N, T, D))
    h = rng.standard_normal((N, H))
    Wx, Wh, b = rng.standard_normal((D, k * H)), rng.standard_normal((H, k * H)), rng.standard_normal(k * H)
    hs, _ = fwd(x, h, Wx, Wh, b)
    for t in range(T):
        h, _ = step_f(x[:, t], h, Wx, Wh, b)
        np.testing.assert_allclose(hs[:, t], h, rtol=1e-12, atol=1e-12)


def test_gru_matches_its_documented_equations():
    rng = np.random.default_rng(8)
    N, D, H = 2, 3, 4
    x, h = rng.standard_normal((N, D)), rng.standard_normal((N, H))
    Wx, Wh, b = rng.standard_normal((D, 3 * H)), rng.standard_normal((H, 3 * H)), rng.standard_normal(3 * H)
    sig = lambda a: 1 / (1 + np.exp(-a))
    xa, ha = x @ Wx + b, h @ Wh
    r = sig(xa[:, :H] + ha[:, :H])
    z = sig(xa[:, H:2 * H] + ha[:, H:2 * H])
    n = np.tanh(xa[:, 2 * H:] + r * ha[:, 2 * H:])
    expected = (1 - z) * n + z * h
    out, _ = rl.gru_step_forward(x, h, Wx, Wh, b)
    assert rel_error(expected, out) < 1e-12


def test_word_embedding_backward_numeric():
    rng = np.random.default_rng(9)
    N, T, V, D = 50, 3, 5, 6
    x = rng.integers(V, size=(N, T))
    W = rng.standard_normal((V, D))
    out, cache = rl.word_embedding_forward(x, W)
    dout = rng.standard_normal(out.shape)
    dW = rl.word_embedding_backward(dout, cache)
    dW_num = eval_numerical_gradient_array(lambda W: rl.word_embedding_forward(x, W)[0], W, dout)
    assert rel_error(dW, dW_num) < 1e-7


def test_temporal_affine_backward_numeric():
    rng = np.random.default_rng(10)
    x, w, b = rng.standard_normal((2, 3, 4)), rng.standard_normal((4, 5)), rng.standard_normal(5)
    _check_grads(rl.temporal_affine_forward, rl.temporal_affine_backward, [x, w, b], seed=11)


@pytest.mark.parametrize("N, T, V, p, expected", [
    (100, 1, 10, 1.0, 2.3), (100, 10, 10, 1.0, 23.0), (5000, 10, 10, 0.1, 2.3)])
def test_temporal_softmax_loss_sanity(N, T, V, p, expected):
    rng = np.random.default_rng(12)
    x = 0.001 * rng.standard_normal((N, T, V))
    y = rng.integers(V, size=(N, T))
    mask = rng.random((N, T)) <= p
    loss, _ = rl.temporal_softmax_loss(x, y, mask)
    assert abs(loss - expected) < 0.1 * expected


def test_temporal_softmax_loss_gradient_and_mask():
    rng = np.random.default_rng(13)
    N, T, V = 7, 8, 9
    x = rng.standard_normal((N, T, V))
    y = rng.integers(V, size=(N, T))
    mask = rng.random((N, T)) > 0.5
    loss, dx = rl.temporal_softmax_loss(x, y, mask)
    dx_num = eval_numerical_gradient(lambda x: rl.temporal_softmax_loss(x, y, mask)[0], x, verbose=False)
    assert rel_error(dx, dx_num) < 1e-7
    assert np.all(dx[~mask] == 0)
    # masked positions carry no loss: changing their scores changes nothing
    x2 = x.copy()
    x2[~mask] += 100
    assert rl.temporal_softmax_loss(x2, y, mask)[0] == pytest.approx(loss, abs=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_layers_preserve_dtype(dtype):
    rng = np.random.default_rng(14)
    N, T, D, H = 2, 3, 4, 5
    for k, fwd, bwd in ((1, rl.rnn_forward, rl.rnn_backward), (4, rl.lstm_forward, rl.lstm_backward),
                        (3, rl.gru_forward, rl.gru_backward)):
        args = [rng.standard_normal(s).astype(dtype) for s in ((N, T, D), (N, H), (D, k * H), (H, k * H), (k * H,))]
        h, cache = fwd(*args)
        assert h.dtype == dtype
        assert all(g.dtype == dtype for g in bwd(np.ones_like(h), cache))
    x = rng.standard_normal((N, T, 6)).astype(dtype)
    loss, dx = rl.temporal_softmax_loss(x, rng.integers(6, size=(N, T)), np.ones((N, T), bool))
    assert dx.dtype == dtype


@pytest.mark.parametrize("call, message", [
    (lambda: rl.rnn_forward(np.zeros((2, 3, 4)), np.zeros((2, 5)), np.zeros((4, 6)), np.zeros((5, 5)), np.zeros(5)),
     "Wx must have shape"),
    (lambda: rl.lstm_forward(np.zeros((2, 3, 4)), np.zeros((3, 5)), np.zeros((4, 20)), np.zeros((5, 20)), np.zeros(20)),
     "h must have shape"),
    (lambda: rl.gru_step_forward(np.zeros((2, 4)), np.zeros((2, 5)), np.zeros((4, 15)), np.zeros((5, 15)), np.zeros(14)),
     "b must have shape"),
    (lambda: rl.word_embedding_forward(np.array([[0, 5]]), np.zeros((5, 3))), "word ids must be in"),
    (lambda: rl.temporal_softmax_loss(np.zeros((2, 3, 4)), np.zeros((2, 2), int), np.ones((2, 3))), "must have shape"),
])
def test_bad_shapes_raise_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()
