"""Scratch buffers that a training loss reuses from one call to the next.

A training step of CaptioningRNN allocates 60-80 MB of temporaries at COCO's shapes
(N=100, T=16, H=512): input projections, gate activations, scores and their gradients.
glibc may give freed memory of that size back to the operating system, and then the
next step gets fresh pages, which the kernel maps and zeroes one fault at a time
(benchmarks/bench_buffers.py measures it: before captions were packed, 2,700 (LSTM) to
7,200 (GRU) faults per step). A model keeps one Buffers object and
activates it around its loss; the layer functions then take their internal arrays from
it (``scratch``), so from the second step on no temporary needs a fresh page.

Outside an active Buffers (a user calling lstm_forward, a gradient check) ``scratch``
is np.empty: every call gets new arrays, as before. Inside one, each name stands for
one array that the next activation hands out again, so a function may use a name only
for arrays that do not outlive the loss: gradients and anything else returned to the
caller of the loss are never scratch. A name is used once per activation.
"""

import contextlib
import contextvars
import threading

import numpy as np

_ACTIVE = contextvars.ContextVar("capmodel_buffers", default=None)


class Buffers:
    """Named arrays kept between activations; a name gets a new array when its shape or
    dtype changes (a shorter last batch, a different caption length). Each thread has
    arrays of its own, so two threads may run the same model's loss at once."""

    def __init__(self):
        self._local = threading.local()

    def __reduce__(self):
        """Copies (copy.deepcopy, pickling by user code) start with no arrays: they are
        scratch, and a thread-local cannot be copied."""
        return (Buffers, ())

    @property
    def _arrays(self):
        arrays = getattr(self._local, "arrays", None)
        if arrays is None:
            arrays = self._local.arrays = {}
        return arrays

    def get(self, name, shape, dtype):
        """The array of this name, shape and dtype (contents undefined)."""
        shape, dtype = tuple(shape), np.dtype(dtype)
        array = self._arrays.get(name)
        if array is None or array.shape != shape or array.dtype != dtype:
            array = self._arrays[name] = np.empty(shape, dtype)
        return array

    @property
    def nbytes(self):
        """Bytes held for the calling thread."""
        return sum(a.nbytes for a in self._arrays.values())

    def clear(self):
        """Drop the calling thread's arrays (the memory goes back once nothing else refers to
        it)."""
        self._arrays.clear()

    @contextlib.contextmanager
    def active(self):
        """Within this block (in this thread), ``scratch`` hands out this object's arrays."""
        token = _ACTIVE.set(self)
        try:
            yield self
        finally:
            _ACTIVE.reset(token)


def scratch(name, shape, dtype):
    """An uninitialised array for an internal temporary: the active Buffers' array of this
    name, or a new one when none is active."""
    buffers = _ACTIVE.get()
    if buffers is None:
        return np.empty(shape, dtype)
    return buffers.get(name, shape, dtype)
