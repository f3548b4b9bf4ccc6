"""Small shared layers: affine, sigmoid, dropout.

Every forward function returns ``(out, cache)`` and every backward function takes
``(dout, cache)`` and returns the gradients in the order of the forward inputs.
"""

import numpy as np


def affine_forward(x, w, b):
    """Compute an affine (fully connected) layer.

    The input x has shape (N, d_1, ..., d_k); it is reshaped to (N, D) with
    D = d_1 * ... * d_k, and mapped to M outputs.

    Inputs:
    - x: Input data, of shape (N, d_1, ..., d_k)
    - w: Weights, of shape (D, M)
    - b: Biases, of shape (M,)

    Returns a tuple of:
    - out: Output, of shape (N, M)
    - cache: (x, w, b)
    """
    out = x.reshape(x.shape[0], -1) @ w + b
    return out, (x, w, b)


def affine_backward(dout, cache):
    """Backward pass of :func:`affine_forward`.

    Inputs:
    - dout: Upstream derivative, of shape (N, M)
    - cache: Tuple from the forward pass

    Returns a tuple of:
    - dx: Gradient with respect to x, of shape (N, d_1, ..., d_k)
    - dw: Gradient with respect to w, of shape (D, M)
    - db: Gradient with respect to b, of shape (M,)
    """
    x, w, b = cache
    dx = (dout @ w.T).reshape(x.shape)
    dw = x.reshape(x.shape[0], -1).T @ dout
    db = dout.sum(axis=0)
    return dx, dw, db


def sigmoid(x, out=None):
    """Numerically stable logistic sigmoid, written as 0.5 * (1 + tanh(x / 2)).

    The tanh form never overflows (1 / (1 + exp(-x)) does for x < -88 in float32) and
    keeps the dtype of x. With ``out`` given (it may be x itself) no temporary is made.
    """
    out = np.multiply(x, 0.5, out=out)
    np.tanh(out, out=out)
    out *= 0.5
    out += 0.5
    return out


def dropout_mask(shape, p, rng, dtype):
    """Inverted-dropout mask: zeros with probability p, 1 / (1 - p) elsewhere.

    Inputs:
    - shape: Shape of the activations the mask multiplies
    - p: Drop probability in [0, 1)
    - rng: np.random.Generator that draws the mask
    - dtype: dtype of the returned mask

    Returns:
    - mask: Array of the given shape, or None when p == 0
    """
    if p <= 0:
        return None
    if not 0 <= p < 1:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    keep = rng.random(shape, dtype=np.float32) >= p
    return keep.astype(dtype) / dtype.type(1.0 - p)
