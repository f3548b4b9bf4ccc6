"""Tests of capmodel.layers: affine, the stable sigmoid and inverted dropout masks."""

import numpy as np
import pytest

from capmodel.gradient_check import eval_numerical_gradient_array, rel_error
from capmodel.layers import affine_backward, affine_forward, dropout_mask, sigmoid


def test_affine_forward_matches_cs231n():
    num_inputs, input_shape, output_dim = 2, (4, 5, 6), 3
    x = np.linspace(-0.1, 0.5, num=num_inputs * np.prod(input_shape)).reshape(num_inputs, *input_shape)
    w = np.linspace(-0.2, 0.3, num=np.prod(input_shape) * output_dim).reshape(np.prod(input_shape), output_dim)
    b = np.linspace(-0.3, 0.1, num=output_dim)
    out, _ = affine_forward(x, w, b)
    correct_out = np.array([[1.49834967, 1.70660132, 1.91485297], [3.25553199, 3.5141327, 3.77273342]])
    assert rel_error(out, correct_out) < 1e-7


def test_affine_backward_numeric():
    rng = np.random.default_rng(0)
    x, w, b = rng.standard_normal((10, 2, 3)), rng.standard_normal((6, 5)), rng.standard_normal(5)
    dout = rng.standard_normal((10, 5))
    dx, dw, db = affine_backward(dout, affine_forward(x, w, b)[1])
    assert rel_error(dx, eval_numerical_gradient_array(lambda x: affine_forward(x, w, b)[0], x, dout)) < 1e-7
    assert rel_error(dw, eval_numerical_gradient_array(lambda w: affine_forward(x, w, b)[0], w, dout)) < 1e-7
    assert rel_error(db, eval_numerical_gradient_array(lambda b: affine_forward(x, w, b)[0], b, dout)) < 1e-7


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sigmoid_is_stable_exact_and_keeps_dtype(dtype):
    x = np.array([-1000, -100, -20, -1, 0, 1, 20, 100, 1000], dtype=dtype)
    with np.errstate(all="raise"):  # no overflow warnings, unlike 1 / (1 + exp(-x))
        y = sigmoid(x.copy())
    assert y.dtype == dtype and np.all((y >= 0) & (y <= 1))
    ref = 1 / (1 + np.exp(-x[2:-2].astype(np.float64)))
    assert np.allclose(y[2:-2], ref, rtol=1e-6)
    assert y[0] == 0 and y[-1] == 1 and y[4] == 0.5


def test_dropout_mask_is_inverted_and_seeded():
    m1 = dropout_mask((200, 300), 0.25, np.random.default_rng(1), np.dtype(np.float32))
    m2 = dropout_mask((200, 300), 0.25, np.random.default_rng(1), np.dtype(np.float32))
    assert m1.dtype == np.float32 and np.array_equal(m1, m2)
    assert set(np.unique(m1)) == {0.0, np.float32(1 / 0.75)}
    assert abs((m1 == 0).mean() - 0.25) < 0.01 and abs(m1.mean() - 1) < 0.02  # expectation kept
    assert dropout_mask((3, 3), 0.0, np.random.default_rng(1), np.dtype(np.float32)) is None
    with pytest.raises(ValueError, match=r"dropout probability must be in \[0, 1\)"):
        dropout_mask((3, 3), 1.0, np.random.default_rng(1), np.dtype(np.float32))
