"""Row-parallel work: one function over blocks of rows in threads, one BLAS thread each.

Decoding captions is a chain of small steps (a (rows, H) @ (H, kH) matmul, gate math,
a (rows, H) @ (H, V) matmul, an argmax) whose element-wise half NumPy runs on one
core. The images of a batch never interact, so each of w threads decodes its own block
of rows with a one-thread BLAS: the element-wise work runs on every core too (NumPy
releases the GIL in ufuncs and BLAS calls). Measured on 2 cores at the fair
benchmark's shapes, greedy decoding took 8-13% less time than the whole batch with a
two-thread BLAS; see docs/benchmarks.md.

The number of threads is the BLAS library's thread count (threadpoolctl), so a
process limited to one BLAS thread decodes in one thread as before, and results are
deterministic for a given thread count. The BLAS limit is process-wide while the
blocks run. Worker threads are daemons: on Ctrl-C the caller's KeyboardInterrupt
propagates at once instead of waiting for them.
"""

import threading

import numpy as np

MIN_ROWS = 16  # fewer rows per thread than this: not worth a thread
_controller = None


def _blas():
    global _controller
    if _controller is None:
        from threadpoolctl import ThreadpoolController

        _controller = ThreadpoolController().select(user_api="blas")
    return _controller


def workers(rows):
    """Threads to use for this many rows: the BLAS thread count, at most rows // MIN_ROWS."""
    blas_threads = max((lib.num_threads for lib in _blas().lib_controllers), default=1)
    return max(1, min(blas_threads, rows // MIN_ROWS))


def _concatenate(parts):
    if isinstance(parts[0], tuple):
        return tuple(np.concatenate(p) for p in zip(*parts))
    return np.concatenate(parts)


def map_rows(fn, rows, n_workers=None):
    """fn(block) for contiguous blocks of rows, in threads; the results concatenated.

    Inputs:
    - fn: Maps an array of rows, shape (M, ...), to an array or a tuple of arrays whose
      first axis is M
    - rows: Array of shape (N, ...)
    - n_workers: Threads to use (default: workers(N))

    Returns:
    - fn(rows), computed block by block: an array or tuple of arrays with first axis N
    """
    n = workers(len(rows)) if n_workers is None else n_workers
    if n < 2:
        return fn(rows)
    bounds = np.linspace(0, len(rows), n + 1).astype(int)
    results, errors = [None] * n, []

    block = lambda i: rows[bounds[i] : bounds[i + 1]]

    def run(i):
        try:
            results[i] = fn(block(i))
        except BaseException as e:  # re-raised in the caller's thread
            errors.append(e)

    with _blas().limit(limits=1, user_api="blas"):
        threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(1, n)]
        for t in threads:
            t.start()
        results[0] = fn(block(0))  # the caller's own block; an error here leaves at once
        for t in threads:
            t.join()
    if errors:
        raise errors[0]
    return _concatenate(results)
