"""Row-parallel work: one function over blocks of rows in threads, one BLAS thread each.

Decoding captions is a chain of small steps (a (rows, H) @ (H, kH) matmul, gate math,
a (rows, H) @ (H, V) matmul, an argmax) whose element-wise half NumPy runs on one
core. The images of a batch never interact, so each of w threads decodes its own block
of rows with a one-thread BLAS: the element-wise work runs on every core too (NumPy
releases the GIL in ufuncs and BLAS calls), where a two-thread BLAS on the whole batch
leaves one core waiting during it.

The number of threads is the BLAS library's thread count (threadpoolctl), so a
process limited to one BLAS thread decodes in one thread, calling fn once; results are
deterministic for a given thread count (in float32, a different count may round a
near-tie the other way). The BLAS limit is process-wide while blocks run; calls that
overlap (several threads decoding at once) share it, and the last one to finish puts
the original count back (and ``workers`` counts the original threads meanwhile, so an
overlapping call splits its rows as a lone one would). When a block fails or the caller is
interrupted (Ctrl-C), the other blocks stop at their next ``raise_if_cancelled()`` (the caller waits up to a second for
them before the BLAS limit is lifted); worker threads are daemons, so an interrupted
process never waits for them to finish their blocks.
"""

import contextvars
import threading

import numpy as np

MIN_ROWS = 16  # fewer rows per thread than this: not worth a thread
_limit_lock = threading.Lock()
_limit = {"users": 0, "limiter": None, "threads": 1}
_CANCEL = contextvars.ContextVar("capmodel_parallel_cancel", default=None)


class Cancelled(Exception):
    """Raised by raise_if_cancelled() in a block whose map_rows call has already failed."""


def raise_if_cancelled():
    """Call between steps of a block's work: stops it once another block has failed."""
    event = _CANCEL.get()
    if event is not None and event.is_set():
        raise Cancelled()


def _blas():
    """The BLAS libraries loaded now (a library loaded later, e.g. with torch, counts too; about
    0.4 ms, once per map_rows call)."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController().select(user_api="blas")


def workers(rows):
    """Threads to use for this many rows: the BLAS thread count, at most rows // MIN_ROWS."""
    with _limit_lock:  # while blocks run, BLAS is down to one thread: count those it had before
        blas_threads = _limit["threads"] if _limit["users"] else _blas_threads()
    return max(1, min(blas_threads, rows // MIN_ROWS))


def _blas_threads():
    return max((lib.num_threads for lib in _blas().lib_controllers), default=1)


class _OneBlasThread:
    """BLAS limited to one thread while any map_rows call runs (reference-counted)."""

    def __enter__(self):
        with _limit_lock:
            if _limit["users"] == 0:
                _limit["threads"] = _blas_threads()
                _limit["limiter"] = _blas().limit(limits=1, user_api="blas")
            _limit["users"] += 1

    def __exit__(self, *exc):
        with _limit_lock:
            _limit["users"] -= 1
            if _limit["users"] == 0:
                _limit["limiter"].restore_original_limits()
                _limit["limiter"] = None


one_blas_thread = _OneBlasThread  # for kernels that run blocks of their own work in threads (with workers())


def _concatenate(parts):
    if isinstance(parts[0], tuple):
        return tuple(np.concatenate(p) for p in zip(*parts))
    return np.concatenate(parts)


def map_rows(fn, rows, n_workers=None):
    """fn(block) for contiguous blocks of rows, in threads; the results concatenated.

    Inputs:
    - fn: Maps an array of rows, shape (M, ...), to an array or a tuple of arrays whose
      first axis is M; it may call raise_if_cancelled() between steps
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
    cancel = threading.Event()
    def block(i):
        return rows[bounds[i] : bounds[i + 1]]

    def run(i):
        _CANCEL.set(cancel)  # a new thread starts with an empty context
        try:
            results[i] = fn(block(i))
        except BaseException as e:  # re-raised in the caller's thread
            errors.append(e)
            cancel.set()

    with _OneBlasThread():
        threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(1, n)]
        for t in threads:
            t.start()
        token = _CANCEL.set(cancel)
        try:
            results[0] = fn(block(0))  # the caller's own block
            for t in threads:
                t.join()
        except Cancelled:  # another block failed first: its error is raised below
            for t in threads:
                t.join()
        except BaseException:  # the caller's error or Ctrl-C: stop the others
            cancel.set()
            for t in threads:  # they stop at their next step; wait that long, not for their block
                t.join(timeout=1.0)
            raise
        finally:
            _CANCEL.reset(token)
    failures = [e for e in errors if not isinstance(e, Cancelled)]
    if failures:
        raise failures[0]
    return _concatenate(results)
