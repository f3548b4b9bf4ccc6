"""Small shared layers: affine, sigmoid, dropout, and row-block threading.

Every forward function returns ``(out, cache)`` and every backward function takes
``(dout, cache)`` and returns the gradients in the order of the forward inputs.
"""

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

MIN_BLOCK_ROWS = 32  # smaller blocks cost more in thread hand-offs than they gain


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


# ------------------------------------------------------------ row-block threading

_pool = None
_pool_lock = threading.Lock()
_blas = None


def _blas_controller():
    global _blas
    if _blas is None:
        from threadpoolctl import ThreadpoolController

        _blas = ThreadpoolController().select(user_api="blas")
    return _blas


def _reset_after_fork():
    global _pool
    _pool = None  # the pool's threads do not exist in a forked child


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


def blas_threads():
    """The number of threads NumPy's BLAS uses now (1 if it cannot be found)."""
    counts = [c.num_threads for c in _blas_controller().lib_controllers]
    return max(counts) if counts else 1


def row_blocks(n, workers=None):
    """Split n rows into at most `workers` (default: the BLAS thread count) contiguous
    blocks of at least MIN_BLOCK_ROWS rows; returns a list of slices.

    The split depends only on n and the worker count, so work done block by block is
    deterministic for a given thread count.
    """
    workers = blas_threads() if workers is None else workers
    k = max(1, min(workers, n // MIN_BLOCK_ROWS))
    bounds = [n * i // k for i in range(k + 1)]
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]


def run_row_blocks(n, fn, workers=None):
    """Call fn(rows) for the row blocks of row_blocks(n, workers), in parallel threads.

    NumPy releases the GIL inside ufuncs and BLAS calls, so threads working on separate
    rows run on separate cores; meanwhile BLAS is limited to one thread, so the threads
    do not compete with BLAS's own workers. Use it for work whose rows are independent
    (a recurrence over time, an element-wise pass); fn must write its results into
    preallocated arrays. Returns the list of fn's return values, in block order.
    """
    blocks = row_blocks(n, workers)
    if len(blocks) == 1:
        return [fn(blocks[0])]
    global _pool
    with _pool_lock:
        if _pool is None or _pool._max_workers < len(blocks) - 1:
            _pool = ThreadPoolExecutor(max_workers=len(blocks) - 1, thread_name_prefix="capmodel-rows")
        pool = _pool
    with _blas_controller().limit(limits=1):
        futures = [pool.submit(fn, rows) for rows in blocks[1:]]
        try:
            first = fn(blocks[0])
        finally:
            rest = [f.result() for f in futures]
    return [first, *rest]
