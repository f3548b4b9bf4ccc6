"""Numerical gradients by centred differences, used to check every backward pass.

Run these in float64: in float32 the differences are dominated by rounding error.
"""

import numpy as np


def rel_error(x, y):
    """Maximum relative error between two arrays, max |x - y| / max(1e-8, |x| + |y|)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    return float(np.max(np.abs(x - y) / np.maximum(1e-8, np.abs(x) + np.abs(y))))


def eval_numerical_gradient(f, x, verbose=True, h=1e-5):
    """Numerical gradient of a scalar function f at x, by centred differences.

    Inputs:
    - f: Function that takes one argument (x, modified in place) and returns a scalar
    - x: Array at which to evaluate the gradient; restored before returning
    - verbose: If True, print each coordinate and its gradient
    - h: Step size

    Returns:
    - grad: Array of the shape of x
    """
    grad = np.zeros_like(x)
    it = np.nditer(x, flags=["multi_index"], op_flags=["readwrite"])
    while not it.finished:
        ix = it.multi_index
        oldval = x[ix]
        x[ix] = oldval + h
        fxph = f(x)
        x[ix] = oldval - h
        fxmh = f(x)
        x[ix] = oldval
        grad[ix] = (fxph - fxmh) / (2 * h)
        if verbose:
            print(ix, grad[ix])
        it.iternext()
    return grad


def eval_numerical_gradient_array(f, x, df, h=1e-5):
    """Numerical gradient of sum(f(x) * df) at x, for a function f returning an array.

    Inputs:
    - f: Function that takes one argument (x, modified in place) and returns an array
    - x: Array at which to evaluate the gradient; restored before returning
    - df: Upstream gradient, of the shape of f(x)
    - h: Step size

    Returns:
    - grad: Array of the shape of x
    """
    grad = np.zeros_like(x)
    it = np.nditer(x, flags=["multi_index"], op_flags=["readwrite"])
    while not it.finished:
        ix = it.multi_index
        oldval = x[ix]
        x[ix] = oldval + h
        pos = f(x).copy()
        x[ix] = oldval - h
        neg = f(x).copy()
        x[ix] = oldval
        grad[ix] = np.sum((pos - neg) * df) / (2 * h)
        it.iternext()
    return grad


def grad_check_sparse(f, x, analytic_grad, num_checks=10, h=1e-5, rng=None, verbose=True):
    """Compare an analytic gradient with numerical ones at a few random coordinates.

    Inputs:
    - f: Scalar function of x (x is modified in place and restored)
    - x: Array at which the gradient was computed
    - analytic_grad: Analytic gradient, of the shape of x
    - num_checks: How many random coordinates to check
    - h: Step size
    - rng: np.random.Generator or seed choosing the coordinates
    - verbose: If True, print one line per coordinate

    Returns:
    - errors: List of the relative errors at the checked coordinates
    """
    rng = np.random.default_rng(rng)
    errors = []
    for _ in range(num_checks):
        ix = tuple(int(rng.integers(m)) for m in x.shape)
        oldval = x[ix]
        x[ix] = oldval + h
        fxph = f(x)
        x[ix] = oldval - h
        fxmh = f(x)
        x[ix] = oldval
        grad_numerical = (fxph - fxmh) / (2 * h)
        grad_analytic = analytic_grad[ix]
        err = abs(grad_numerical - grad_analytic) / max(abs(grad_numerical) + abs(grad_analytic), 1e-12)
        errors.append(float(err))
        if verbose:
            print(f"numerical: {grad_numerical:f} analytic: {grad_analytic:f}, relative error: {err:e}")
    return errors
