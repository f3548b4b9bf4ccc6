"""Scratch memory that a training loss reuses from one call to the next.

A training step of CaptioningRNN allocates tens of MB of temporaries at COCO's shapes
(N=100, T=16, H=512): input projections, gate activations, scores and their gradients.
glibc may give freed memory of that size back to the operating system, and then the
next step gets fresh pages, which the kernel maps and zeroes one fault at a time
(benchmarks/bench_buffers.py measures the faults and the time). A model keeps one
Buffers object and activates it around its training loss; the layer functions then
take their internal arrays from it (``scratch``), so once the longest batch has been
seen, no temporary needs a fresh page.

Outside an active Buffers (a user calling lstm_forward, a gradient check, a validation
loss) ``scratch`` is np.empty: every call gets new arrays. Inside one, each
name stands for memory that the next activation hands out again, so a function may use
a name only for arrays that do not outlive the loss: gradients and anything else
returned to the caller of the loss are never scratch. A name is used once per
activation (checked).
"""

import contextlib
import contextvars
import math
import threading

import numpy as np

_ACTIVE = contextvars.ContextVar("capmodel_buffers", default=None)


class Buffers:
    """Named scratch memory kept between activations, one flat array per name and dtype.

    A name's array grows to the largest size asked for and smaller requests get a view of
    its start, so batches whose packed lengths differ (every training batch) reuse the
    same memory. Each thread has arrays of its own, so threads may run the same model's
    loss at once (with dropout, give each call a dropout_rng: the model's own generator
    is shared). Within one activation a name may be handed out once: a second request
    is a RuntimeError (it would overwrite an array still in use).
    """

    def __init__(self):
        self._local = threading.local()

    def __reduce__(self):
        """Copies (copy.deepcopy, pickling by user code) start with no arrays: they are
        scratch, and a thread-local cannot be copied."""
        return (Buffers, ())

    @property
    def _state(self):
        state = self._local.__dict__
        state.setdefault("arrays", {})  # (name, dtype) -> flat array
        state.setdefault("used", None)  # names handed out in the current activation
        return state

    def get(self, name, shape, dtype):
        """An array of this shape and dtype for this name (contents undefined)."""
        shape, dtype = tuple(int(n) for n in shape), np.dtype(dtype)
        state = self._state
        if state["used"] is not None:
            if name in state["used"]:
                raise RuntimeError(f"scratch array {name!r} requested twice in one activation")
            state["used"].add(name)
        size = math.prod(shape)
        flat = state["arrays"].get((name, dtype))
        if flat is None or flat.size < size:
            flat = state["arrays"][(name, dtype)] = np.empty(size, dtype)
        return flat[:size].reshape(shape)

    def names(self):
        """(name, dtype) of the calling thread's arrays."""
        return sorted((name, dtype.name) for name, dtype in self._state["arrays"])

    def array(self, name, dtype):
        """The calling thread's flat array of this name and dtype (for inspection)."""
        return self._state["arrays"][(name, np.dtype(dtype))]

    @property
    def nbytes(self):
        """Bytes held for the calling thread."""
        return sum(a.nbytes for a in self._state["arrays"].values())

    def clear(self):
        """Drop the calling thread's arrays (the memory goes back once nothing else refers to
        it); other threads' arrays go when their threads end or the model is deleted."""
        self._state["arrays"].clear()

    @contextlib.contextmanager
    def active(self):
        """Within this block (in this thread), ``scratch`` hands out this object's arrays."""
        state = self._state
        outer, state["used"] = state["used"], set()
        token = _ACTIVE.set(self)
        try:
            yield self
        finally:
            _ACTIVE.reset(token)
            state["used"] = outer


def scratch(name, shape, dtype):
    """An uninitialised array for an internal temporary: the active Buffers' array of this
    name, or a new one when none is active."""
    buffers = _ACTIVE.get()
    if buffers is None:
        return np.empty(shape, dtype)
    return buffers.get(name, shape, dtype)
