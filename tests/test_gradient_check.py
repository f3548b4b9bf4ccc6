"""Tests of capmodel.gradient_check on functions with known gradients."""

import numpy as np

from capmodel.gradient_check import (eval_numerical_gradient, eval_numerical_gradient_array, grad_check_sparse,
                                     rel_error)


def test_rel_error():
    assert rel_error(np.array([1.0, 2.0]), np.array([1.0, 2.0])) == 0
    assert rel_error(np.array([1.0]), np.array([3.0])) == 0.5
    assert rel_error(np.zeros(3), np.zeros(3)) == 0  # the 1e-8 floor avoids 0 / 0


def test_numerical_gradient_of_known_functions():
    x = np.linspace(-1, 1, 6).reshape(2, 3)
    x0 = x.copy()
    g = eval_numerical_gradient(lambda x: np.sum(x**3), x, verbose=False)
    assert rel_error(g, 3 * x0**2) < 1e-8 and np.array_equal(x, x0)  # x restored
    df = np.arange(6.0).reshape(2, 3)
    g = eval_numerical_gradient_array(lambda x: np.sin(x), x, df)
    assert rel_error(g, np.cos(x0) * df) < 1e-8


def test_grad_check_sparse_flags_a_wrong_gradient(capsys):
    x = np.linspace(-1, 1, 20).reshape(4, 5)
    good = grad_check_sparse(lambda x: np.sum(x**2), x, 2 * x, num_checks=5, rng=0)
    bad = grad_check_sparse(lambda x: np.sum(x**2), x, 2.2 * x, num_checks=5, rng=0)
    assert max(good) < 1e-8 and min(e for e in bad if e > 0) > 0.04
    assert capsys.readouterr().out.count("relative error") == 10
