"""Recurrent layers for captioning: vanilla RNN, LSTM and GRU cells, word embedding,
temporal affine and the masked temporal softmax loss.

Dimension letters used throughout: N batch size, T sequence length, D input
dimension, H hidden dimension, V vocabulary size, M output dimension; for packed
sequences, P rows in all and n0 initial states.

Each sequence function is built from the same public step core as its step function
(``rnn_core_forward``, ``lstm_core_forward``, ``gru_core_forward`` and their backward
partners); the decoders of CaptioningRNN use the cores too. What makes the sequence
versions as fast as a framework on a CPU:
- the inputs of all timesteps are projected with one matmul before the time loop, and
  the weight gradients are accumulated with one matmul after it;
- every sequence function is the padded face of a packed one (``lstm_packed_forward``
  and so on, PyTorch's PackedSequence layout): rows are time-major, so every timestep
  reads and writes one contiguous block and the states entering the steps are a view;
  a caption batch sorted longest first and cut after each caption's last scored word
  skips the padding (CaptioningRNN.loss);
- all gate nonlinearities of a step take one exp pass: sigmoid(a) = 1 / (1 + exp(-a))
  and tanh(a) = 2 / (1 + exp(-2a)) - 1, which is exact algebra; NumPy's exp is about
  twice as fast as its tanh, and an exp overflow to inf gives exactly 0 or -1;
- the per-step work writes into preallocated buffers (out=), so a step allocates
  almost nothing, and the sequence-sized arrays come from ``capmodel.kernels.buffers.scratch``:
  within a model's loss they are the previous step's arrays, whose pages are already
  mapped (fresh pages cost the kernel a fault and a zeroing each; benchmarks/bench_buffers.py).
Running the time loop on two half-batches in two Python threads (one-thread BLAS each)
was measured too: faster on a busy machine, but 15-20% slower on an idle one, so the
loops run in the calling thread and BLAS uses all its threads. Splitting each step by
hidden units over two threads did no better: OpenBLAS's idle workers spin on the cores
for about 0.1 s after a call, and the two-thread sgemm is already the best use of them.
The sequence functions return (N, T, ...) arrays that may be transposed views of their
time-major buffers; a caller that passes time-major views back gets them for free.
"""

import functools

import numpy as np

from capmodel.kernels.buffers import scratch


def _check_recurrent_inputs(name, x, h0, Wx, Wh, b, k, seq):
    """Raise ValueError naming the first shape that does not fit a k-gate cell."""
    want_x = 3 if seq else 2  # seq: (N, T, D), else (N, D)
    if x.ndim != want_x:
        raise ValueError(f"{name}: x must have {want_x} dimensions, got shape {x.shape}")
    D = x.shape[-1]
    if h0.ndim != 2 or h0.shape[0] != x.shape[0]:
        raise ValueError(f"{name}: h must have shape (N, H) with N={x.shape[0]}, got {h0.shape}")
    H = h0.shape[1]
    if Wx.shape != (D, k * H):
        raise ValueError(f"{name}: Wx must have shape {(D, k * H)}, got {Wx.shape}")
    if Wh.shape != (H, k * H):
        raise ValueError(f"{name}: Wh must have shape {(H, k * H)}, got {Wh.shape}")
    if b.shape != (k * H,):
        raise ValueError(f"{name}: b must have shape {(k * H,)}, got {b.shape}")


def _project(x, W, b, name=None):
    """Apply x @ W + b over the last axis of x, of shape (..., D) -> (..., M), into the
    scratch array of this name if one is given."""
    x2 = x.reshape(-1, x.shape[-1])
    out = None if name is None else scratch(name, (x2.shape[0], W.shape[1]), np.result_type(x2, W))
    out = np.matmul(x2, W, out=out)
    out += b
    return out.reshape(*x.shape[:-1], W.shape[1])


def _time_major(x):
    """The (T, N, ...) contiguous version of an (N, T, ...) array: free when x is itself a
    transposed view of a time-major array (as the sequence functions return)."""
    return np.ascontiguousarray(x.swapaxes(0, 1))


class _Steps:
    """Where each timestep's rows are in a packed sequence and in its state buffer.

    A packed sequence (PyTorch's PackedSequence layout) holds the rows of step 0, then
    those of step 1, and so on; sizes[t] sequences run at step t, sizes never grow, and
    the sequences running at step t are the first sizes[t] of those at step t - 1 (sort
    them longest first). A padded (N, T) batch is the packing with sizes (N,) * T, whose
    rows are the time-major order. The states live in one (n0 + P, H) buffer: the n0
    initial states, then the state after each row of the sequence.
    """

    def __init__(self, sizes, n0, name="packed"):
        sizes = tuple(sizes)
        if not all(isinstance(n, (int, np.integer)) and n >= 0 for n in sizes):
            raise ValueError(f"{name}: sizes must be non-negative integers, got {sizes}")
        self.sizes = tuple(int(n) for n in sizes)
        if self.sizes and self.sizes[0] > n0:
            raise ValueError(f"{name}: sizes[0]={self.sizes[0]} sequences cannot start from h0 of {n0} rows")
        if any(a < b for a, b in zip(self.sizes, self.sizes[1:])):
            raise ValueError(f"{name}: sizes must be non-increasing (longest sequences first), got {self.sizes}")
        self.n0 = n0
        self.starts = np.concatenate(([0], np.cumsum(self.sizes, dtype=np.int64)))  # row offsets
        self.rows = int(self.starts[-1])  # P

    def __iter__(self):
        """(t, rows of step t in the sequence, rows of the states entering step t)."""
        prev = 0
        for t, n in enumerate(self.sizes):
            a = int(self.starts[t])
            yield t, slice(a, a + n), slice(prev, prev + n)
            prev = self.n0 + a

    def entering(self, states, name):
        """The (P, H) states entering every row, in sequence order: a view of the buffer
        when no sequence ends early, else a gathered copy."""
        if all(n == self.n0 for n in self.sizes):
            return states[: self.rows]
        index = np.concatenate([np.arange(p.start, p.stop) for _, _, p in self] or [np.zeros(0, np.int64)])
        return np.take(states, index, axis=0, mode="clip", out=scratch(name, (self.rows, states.shape[1]),
                                                                           states.dtype))


def _check_packed_inputs(name, x, h0, Wx, Wh, b, k, sizes):
    """Raise ValueError naming the first shape or size that does not fit; return the _Steps."""
    if x.ndim != 2:
        raise ValueError(f"{name}: x must have shape (P, D), got {x.shape}")
    if h0.ndim != 2:
        raise ValueError(f"{name}: h0 must have shape (n0, H), got {h0.shape}")
    _check_recurrent_inputs(name, x[:0], h0[:0], Wx, Wh, b, k, seq=False)
    steps = _Steps(sizes, h0.shape[0], name)
    if steps.rows != x.shape[0]:
        raise ValueError(f"{name}: x has {x.shape[0]} rows but the sizes add up to {steps.rows}")
    return steps


def _start_packed(cell, x, h0, Wx, Wh, b, k, sizes):
    """Checks, the input projection xa (P, kH) and the (n0 + P, H) state buffer holding h0,
    shared by the packed forward functions; returns (steps, xa, hs)."""
    steps = _check_packed_inputs(f"{cell}_packed_forward", x, h0, Wx, Wh, b, k, sizes)
    xa = _project(x, Wx, b, name="recurrent.xa")
    n0 = h0.shape[0]
    hs = scratch(f"{cell}.hs", (n0 + steps.rows, h0.shape[1]), np.result_type(xa, h0))
    hs[:n0] = h0
    return steps, xa, hs


def _padded_forward(packed_forward, x, h0, Wx, Wh, b):
    """A packed forward function run on a padded (N, T, D) batch: h (N, T, H), cache."""
    N, T, D = x.shape
    h, cache = packed_forward(_time_major(x).reshape(T * N, D), h0, Wx, Wh, b, (N,) * T)
    return h.reshape(T, N, -1).swapaxes(0, 1), cache


def _padded_backward(packed_backward, dh, cache):
    """Its backward for dh of shape (N, T, H): dx (N, T, D), dh0, dWx, dWh, db."""
    N, T, H = dh.shape
    dx, *grads = packed_backward(_time_major(dh).reshape(T * N, H), cache)
    return (dx.reshape(T, N, -1).swapaxes(0, 1), *grads)


def _packed_weight_grads(x, W, da, hp=None):
    """dx (P, D), dW (D, M), dWh (H, M) and db (M,) from the gradients da (P, M) of the
    pre-activations and the states hp (P, H) entering each row (dWh is None without hp:
    the GRU's hidden-side gradient is not da)."""
    dx = np.matmul(da, W.T, out=scratch("recurrent.dx", (da.shape[0], W.shape[0]), np.result_type(da, W)))
    dWh = None if hp is None else hp.T @ da
    return dx, x.T @ da, dWh, da.sum(axis=0)


@functools.lru_cache(maxsize=64)
def _exp_scale(kind, H, dtype):
    """Per-column factors s with exp(s * a) = exp(-a) for sigmoid gates, exp(-2a) for tanh ones."""
    n_sigmoid = {"lstm": 3, "gru": 2}[kind] * H
    s = np.full(n_sigmoid + H, -2, dtype=dtype)
    s[:n_sigmoid] = -1
    s.flags.writeable = False
    return s


def _sigmoid_of_exp(a):
    """a <- 1 / (1 + exp(a)), in place (a already holds -a or -2a of the pre-activation).
    exp overflows to inf for very large a, which gives exactly 0: no NaN, no warning."""
    with np.errstate(over="ignore", under="ignore"):
        np.exp(a, out=a)
    a += 1
    np.divide(1, a, out=a)  # twice as fast as np.reciprocal here
    return a


def _tanh(a, out):
    """out <- tanh(a) = 2 / (1 + exp(-2a)) - 1 (out may be a): one exp instead of a tanh."""
    np.multiply(a, -2, out=out)
    with np.errstate(over="ignore", under="ignore"):
        np.exp(out, out=out)
    out += 1
    np.divide(2, out, out=out)
    out -= 1
    return out


# --------------------------------------------------------------------------- RNN


def rnn_core_forward(xa, prev_h, Wh, out=None):
    """Step core of the vanilla RNN: next_h = tanh(xa + prev_h @ Wh).

    The input projection is computed by the caller (for all timesteps at once, or as a
    table lookup when decoding), so a step costs one matmul.

    Inputs:
    - xa: Input projection x @ Wx + b of this timestep, of shape (N, H)
    - prev_h: Hidden state from the previous timestep, of shape (N, H)
    - Wh: Hidden-to-hidden weights, of shape (H, H)
    - out: Optional array of shape (N, H) to write next_h into

    Returns:
    - next_h: Next hidden state, of shape (N, H)
    """
    if out is None:
        out = np.empty(prev_h.shape, dtype=np.result_type(xa, prev_h))
    np.matmul(prev_h, Wh, out=out)
    out += xa
    return _tanh(out, out)


def rnn_core_backward(dnext_h, next_h):
    """Backward of :func:`rnn_core_forward` through the tanh.

    Inputs:
    - dnext_h: Gradient of the loss with respect to next_h, of shape (N, H)
    - next_h: Output of the forward step, of shape (N, H)

    Returns:
    - da: Gradient with respect to the pre-activation xa + prev_h @ Wh, of shape (N, H)
    """
    return dnext_h * (1 - next_h * next_h)


def rnn_step_forward(x, prev_h, Wx, Wh, b):
    """Run the forward pass for a single timestep of a vanilla RNN with tanh activation.

    The input data has dimension D, the hidden state has dimension H, and the
    minibatch is of size N.

    Inputs:
    - x: Input data for this timestep, of shape (N, D)
    - prev_h: Hidden state from previous timestep, of shape (N, H)
    - Wx: Weight matrix for input-to-hidden connections, of shape (D, H)
    - Wh: Weight matrix for hidden-to-hidden connections, of shape (H, H)
    - b: Biases of shape (H,)

    Returns a tuple of:
    - next_h: Next hidden state, of shape (N, H)
    - cache: Tuple of values needed for the backward pass
    """
    _check_recurrent_inputs("rnn_step_forward", x, prev_h, Wx, Wh, b, 1, seq=False)
    next_h = rnn_core_forward(x @ Wx + b, prev_h, Wh)
    return next_h, (x, prev_h, Wx, Wh, next_h)


def rnn_step_backward(dnext_h, cache):
    """Backward pass for a single timestep of a vanilla RNN.

    Inputs:
    - dnext_h: Gradient of loss with respect to next hidden state, of shape (N, H)
    - cache: Cache object from the forward pass

    Returns a tuple of:
    - dx: Gradients of input data, of shape (N, D)
    - dprev_h: Gradients of previous hidden state, of shape (N, H)
    - dWx: Gradients of input-to-hidden weights, of shape (D, H)
    - dWh: Gradients of hidden-to-hidden weights, of shape (H, H)
    - db: Gradients of bias vector, of shape (H,)
    """
    x, prev_h, Wx, Wh, next_h = cache
    da = rnn_core_backward(dnext_h, next_h)
    return da @ Wx.T, da @ Wh.T, x.T @ da, prev_h.T @ da, da.sum(axis=0)


def rnn_packed_forward(x, h0, Wx, Wh, b, sizes):
    """Run a vanilla RNN forward over a packed batch of sequences.

    The sequences are packed (see _Steps): row block t of x holds the inputs of the
    sizes[t] sequences still running at step t, which are the first sizes[t] of those
    running at step t - 1. A padded (N, T, D) batch is the packing with sizes (N,) * T
    (the padded function does just that); captions sorted longest first and cut after
    their last scored word skip the work on padding (CaptioningRNN.loss).

    Inputs:
    - x: Packed input data, of shape (P, D), P = sum(sizes)
    - h0: Initial hidden states, of shape (n0, H), n0 >= sizes[0]
    - Wx, Wh, b: Weights and biases, as in rnn_forward
    - sizes: Sequences running at each step, non-increasing, of length T

    Returns a tuple of:
    - h: Hidden state after every row, of shape (P, H)
    - cache: Values needed in the backward pass
    """
    steps, xa, hs = _start_packed("rnn", x, h0, Wx, Wh, b, 1, sizes)  # xa (P, H); hs: h0, then each row's
    n0 = h0.shape[0]

    for _, rows, prev in steps:
        rnn_core_forward(xa[rows], hs[prev], Wh, out=hs[n0:][rows])
    return hs[n0:], (x, Wx, Wh, hs, steps)


def rnn_packed_backward(dh, cache):
    """Backward pass of rnn_packed_forward.

    Inputs:
    - dh: Upstream gradients of all hidden states, of shape (P, H)
    - cache: Cache object from the forward pass

    Returns a tuple of:
    - dx: Gradient of the packed inputs, of shape (P, D)
    - dh0: Gradient of the initial hidden states, of shape (n0, H)
    - dWx, dWh, db: Gradients of the weights and biases
    """
    x, Wx, Wh, hs, steps = cache
    n0, H = steps.n0, hs.shape[1]
    da = scratch("rnn.da", (steps.rows, H), hs.dtype)
    WhT = Wh.T

    dnext = np.zeros((n0, H), dtype=hs.dtype)  # a sequence's rows stay 0 until its last step
    for _, rows, _ in reversed(list(steps)):
        d = dnext[: rows.stop - rows.start]
        d += dh[rows]
        da[rows] = rnn_core_backward(d, hs[n0:][rows])
        np.matmul(da[rows], WhT, out=d)
    dx, dWx, dWh, db = _packed_weight_grads(x, Wx, da, steps.entering(hs, "rnn.entering"))
    return dx, dnext, dWx, dWh, db


def rnn_forward(x, h0, Wx, Wh, b):
    """Run a vanilla RNN forward on an entire sequence of data.

    We assume an input sequence composed of T vectors, each of dimension D. The RNN uses
    a hidden size of H, and we work over a minibatch containing N sequences.

    Inputs:
    - x: Input data for the entire timeseries, of shape (N, T, D)
    - h0: Initial hidden state, of shape (N, H)
    - Wx: Weight matrix for input-to-hidden connections, of shape (D, H)
    - Wh: Weight matrix for hidden-to-hidden connections, of shape (H, H)
    - b: Biases of shape (H,)

    Returns a tuple of:
    - h: Hidden states for the entire timeseries, of shape (N, T, H)
    - cache: Values needed in the backward pass
    """
    _check_recurrent_inputs("rnn_forward", x, h0, Wx, Wh, b, 1, seq=True)
    return _padded_forward(rnn_packed_forward, x, h0, Wx, Wh, b)


def rnn_backward(dh, cache):
    """Compute the backward pass for a vanilla RNN over an entire sequence of data.

    Inputs:
    - dh: Upstream gradients of all hidden states, of shape (N, T, H)
    - cache: Cache object from the forward pass

    Returns a tuple of:
    - dx: Gradient of inputs, of shape (N, T, D)
    - dh0: Gradient of initial hidden state, of shape (N, H)
    - dWx: Gradient of input-to-hidden weights, of shape (D, H)
    - dWh: Gradient of hidden-to-hidden weights, of shape (H, H)
    - db: Gradient of biases, of shape (H,)
    """
    return _padded_backward(rnn_packed_backward, dh, cache)


# -------------------------------------------------------------------------- LSTM


def lstm_core_forward(xa, prev_h, prev_c, Wh, out=None):
    """Step core of the LSTM, from the precomputed input projection.

    The activation a = xa + prev_h @ Wh has width 4H and is split, in order, into the
    input gate i, forget gate f, output gate o (sigmoids) and the block input g (tanh);
    next_c = f * prev_c + i * g and next_h = o * tanh(next_c). All four gates take one
    exp pass (see the module docstring).

    Inputs:
    - xa: Input projection x @ Wx + b of this timestep, of shape (N, 4H)
    - prev_h: Previous hidden state, of shape (N, H)
    - prev_c: Previous cell state, of shape (N, H)
    - Wh: Hidden-to-hidden weights, of shape (H, 4H)
    - out: Optional arrays (acts, next_c, tc, next_h) to write into, so the sequence
      version fills its cache without copies

    Returns a tuple of:
    - next_h: Next hidden state, of shape (N, H)
    - next_c: Next cell state, of shape (N, H)
    - acts: Activated gates i, f, o, g, of shape (N, 4H)
    - tc: tanh(next_c), of shape (N, H)
    """
    N, H = prev_h.shape
    if out is None:
        dtype = np.result_type(xa, prev_h)
        out = (np.empty((N, 4 * H), dtype), np.empty((N, H), dtype), np.empty((N, H), dtype),
               np.empty((N, H), dtype))
    acts, next_c, tc, next_h = out
    np.matmul(prev_h, Wh, out=acts)
    acts += xa
    acts *= _exp_scale("lstm", H, acts.dtype)  # -a for i, f, o; -2a for g
    _sigmoid_of_exp(acts)
    i, f, o, g = acts[:, :H], acts[:, H : 2 * H], acts[:, 2 * H : 3 * H], acts[:, 3 * H :]
    g *= 2  # tanh(a) = 2 sigmoid(2a) - 1
    g -= 1
    np.multiply(i, g, out=tc)
    np.multiply(f, prev_c, out=next_c)
    next_c += tc
    _tanh(next_c, out=tc)
    np.multiply(o, tc, out=next_h)
    return next_h, next_c, acts, tc


def lstm_core_backward(dnext_h, dnext_c, prev_c, acts, tc, da, dprev_c=None):
    """Backward of :func:`lstm_core_forward` down to the pre-activation a.

    Inputs:
    - dnext_h: Gradient of next_h, of shape (N, H)
    - dnext_c: Gradient of next_c, of shape (N, H)
    - prev_c: Cell state entering the step, of shape (N, H)
    - acts, tc: Gates and tanh(next_c) returned by the forward step
    - da: Array of shape (N, 4H) that receives the gradient of a
    - dprev_c: Optional array of shape (N, H) for the result; it may be dnext_c itself

    Returns:
    - dprev_c: Gradient of prev_c, of shape (N, H)
    """
    H = prev_c.shape[1]
    i, f, o, g = acts[:, :H], acts[:, H : 2 * H], acts[:, 2 * H : 3 * H], acts[:, 3 * H :]
    da_i, da_f, da_o, da_g = da[:, :H], da[:, H : 2 * H], da[:, 2 * H : 3 * H], da[:, 3 * H :]
    # da_f and da_g serve as scratch until their own turn
    dc = da_f
    np.multiply(tc, tc, out=da_g)
    np.subtract(1, da_g, out=da_g)  # 1 - tanh(c)^2
    np.multiply(dnext_h, o, out=dc)
    dc *= da_g
    dc += dnext_c  # total gradient of next_c
    np.multiply(dnext_h, tc, out=da_o)
    np.multiply(dc, g, out=da_i)
    np.multiply(dc, i, out=da_g)
    if dprev_c is None:
        dprev_c = np.empty_like(dc)
    np.multiply(dc, f, out=dprev_c)
    dc *= prev_c  # now da_f before the sigmoid derivative
    sig, dsig = acts[:, : 3 * H], da[:, : 3 * H]
    dsig *= sig
    sig_1 = np.subtract(1, sig)
    dsig *= sig_1
    g2 = np.multiply(g, g)
    np.subtract(1, g2, out=g2)
    da_g *= g2
    return dprev_c


def lstm_step_forward(x, prev_h, prev_c, Wx, Wh, b):
    """Forward pass for a single timestep of an LSTM.

    The input data has dimension D, the hidden state has dimension H, and we use a
    minibatch size of N. The activation vector a = x @ Wx + prev_h @ Wh + b has width 4H
    and is split, in order, into the input gate i, forget gate f, output gate o (each a
    sigmoid) and the block input g (tanh): next_c = f * prev_c + i * g and
    next_h = o * tanh(next_c).

    Inputs:
    - x: Input data, of shape (N, D)
    - prev_h: Previous hidden state, of shape (N, H)
    - prev_c: previous cell state, of shape (N, H)
    - Wx: Input-to-hidden weights, of shape (D, 4H)
    - Wh: Hidden-to-hidden weights, of shape (H, 4H)
    - b: Biases, of shape (4H,)

    Returns a tuple of:
    - next_h: Next hidden state, of shape (N, H)
    - next_c: Next cell state, of shape (N, H)
    - cache: Tuple of values needed for backward pass.
    """
    _check_recurrent_inputs("lstm_step_forward", x, prev_h, Wx, Wh, b, 4, seq=False)
    if prev_c.shape != prev_h.shape:
        raise ValueError(f"lstm_step_forward: prev_c must have shape {prev_h.shape}, got {prev_c.shape}")
    next_h, next_c, acts, tc = lstm_core_forward(x @ Wx + b, prev_h, prev_c, Wh)
    return next_h, next_c, (x, prev_h, prev_c, Wx, Wh, acts, tc)


def lstm_step_backward(dnext_h, dnext_c, cache):
    """Backward pass for a single timestep of an LSTM.

    Inputs:
    - dnext_h: Gradients of next hidden state, of shape (N, H)
    - dnext_c: Gradients of next cell state, of shape (N, H)
    - cache: Values from the forward pass

    Returns a tuple of:
    - dx: Gradient of input data, of shape (N, D)
    - dprev_h: Gradient of previous hidden state, of shape (N, H)
    - dprev_c: Gradient of previous cell state, of shape (N, H)
    - dWx: Gradient of input-to-hidden weights, of shape (D, 4H)
    - dWh: Gradient of hidden-to-hidden weights, of shape (H, 4H)
    - db: Gradient of biases, of shape (4H,)
    """
    x, prev_h, prev_c, Wx, Wh, acts, tc = cache
    da = np.empty_like(acts)
    dprev_c = lstm_core_backward(dnext_h, dnext_c, prev_c, acts, tc, da)
    return da @ Wx.T, da @ Wh.T, dprev_c, x.T @ da, prev_h.T @ da, da.sum(axis=0)


def lstm_packed_forward(x, h0, Wx, Wh, b, sizes):
    """Forward pass for an LSTM over a packed batch of sequences.

    Packed as in rnn_packed_forward; the initial cell states are zero and the gate layout
    is that of lstm_step_forward.

    Inputs:
    - x: Packed input data, of shape (P, D), P = sum(sizes)
    - h0: Initial hidden states, of shape (n0, H), n0 >= sizes[0]
    - Wx, Wh, b: Weights and biases, as in lstm_forward
    - sizes: Sequences running at each step, non-increasing, of length T

    Returns a tuple of:
    - h: Hidden state after every row, of shape (P, H)
    - cache: Values needed for the backward pass
    """
    steps, xa, hs = _start_packed("lstm", x, h0, Wx, Wh, b, 4, sizes)  # xa (P, 4H); hs: h0, then each row's
    n0, H = h0.shape
    dtype, P = hs.dtype, steps.rows
    cs = scratch("lstm.cs", (n0 + P, H), dtype)
    tcs = scratch("lstm.tcs", (P, H), dtype)
    acts = scratch("lstm.acts", (P, 4 * H), dtype)
    cs[:n0] = 0

    for _, rows, prev in steps:
        out = (acts[rows], cs[n0:][rows], tcs[rows], hs[n0:][rows])
        lstm_core_forward(xa[rows], hs[prev], cs[prev], Wh, out=out)
    return hs[n0:], (x, Wx, Wh, hs, cs, acts, tcs, steps)


def lstm_packed_backward(dh, cache):
    """Backward pass of lstm_packed_forward.

    Inputs:
    - dh: Upstream gradients of all hidden states, of shape (P, H)
    - cache: Values from the forward pass

    Returns a tuple of:
    - dx: Gradient of the packed inputs, of shape (P, D)
    - dh0: Gradient of the initial hidden states, of shape (n0, H)
    - dWx, dWh, db: Gradients of the weights and biases
    """
    x, Wx, Wh, hs, cs, acts, tcs, steps = cache
    n0, H = steps.n0, hs.shape[1]
    da = scratch("lstm.da", (steps.rows, 4 * H), hs.dtype)
    WhT = Wh.T

    dnext_h = np.zeros((n0, H), dtype=hs.dtype)  # a sequence's rows stay 0 until its last step
    dnext_c = np.zeros_like(dnext_h)
    for _, rows, prev in reversed(list(steps)):
        n = rows.stop - rows.start
        dh_n, dc_n = dnext_h[:n], dnext_c[:n]
        dh_n += dh[rows]
        lstm_core_backward(dh_n, dc_n, cs[prev], acts[rows], tcs[rows], da[rows], dprev_c=dc_n)
        np.matmul(da[rows], WhT, out=dh_n)
    dx, dWx, dWh, db = _packed_weight_grads(x, Wx, da, steps.entering(hs, "lstm.entering"))
    return dx, dnext_h, dWx, dWh, db


def lstm_forward(x, h0, Wx, Wh, b):
    """Forward pass for an LSTM over an entire sequence of data.

    We assume an input sequence composed of T vectors, each of dimension D. The LSTM uses
    a hidden size of H, and we work over a minibatch containing N sequences. The initial
    cell state is zero; the gate layout is that of :func:`lstm_step_forward`.

    Inputs:
    - x: Input data, of shape (N, T, D)
    - h0: Initial hidden state, of shape (N, H)
    - Wx: Weights for input-to-hidden connections, of shape (D, 4H)
    - Wh: Weights for hidden-to-hidden connections, of shape (H, 4H)
    - b: Biases, of shape (4H,)

    Returns a tuple of:
    - h: Hidden states for all timesteps of all sequences, of shape (N, T, H)
    - cache: Values needed for the backward pass.
    """
    _check_recurrent_inputs("lstm_forward", x, h0, Wx, Wh, b, 4, seq=True)
    return _padded_forward(lstm_packed_forward, x, h0, Wx, Wh, b)


def lstm_backward(dh, cache):
    """Backward pass for an LSTM over an entire sequence of data.

    Inputs:
    - dh: Upstream gradients of hidden states, of shape (N, T, H)
    - cache: Values from the forward pass

    Returns a tuple of:
    - dx: Gradient of input data, of shape (N, T, D)
    - dh0: Gradient of initial hidden state, of shape (N, H)
    - dWx: Gradient of input-to-hidden weight matrix, of shape (D, 4H)
    - dWh: Gradient of hidden-to-hidden weight matrix, of shape (H, 4H)
    - db: Gradient of biases, of shape (4H,)
    """
    return _padded_backward(lstm_packed_backward, dh, cache)


# --------------------------------------------------------------------------- GRU


def gru_core_forward(xa, prev_h, Wh, out=None):
    """Step core of the GRU, from the precomputed input projection.

    Gate layout as in :func:`gru_step_forward` (r, z, n; one bias, on the input side).

    Inputs:
    - xa: Input projection x @ Wx + b of this timestep, of shape (N, 3H)
    - prev_h: Previous hidden state, of shape (N, H)
    - Wh: Hidden-to-hidden weights, of shape (H, 3H)
    - out: Optional arrays (gates, ha, next_h) of shapes (N, 3H), (N, 3H), (N, H) to
      write into

    Returns a tuple of:
    - next_h: Next hidden state, of shape (N, H)
    - gates: Activated r, z, n, of shape (N, 3H)
    - hn: The n part of prev_h @ Wh, of shape (N, H) (a view of ha)
    """
    N, H = prev_h.shape
    if out is None:
        dtype = np.result_type(xa, prev_h)
        out = (np.empty((N, 3 * H), dtype), np.empty((N, 3 * H), dtype), np.empty((N, H), dtype))
    gates, ha, next_h = out
    np.matmul(prev_h, Wh, out=ha)
    rz = gates[:, : 2 * H]
    np.add(xa[:, : 2 * H], ha[:, : 2 * H], out=rz)
    np.negative(rz, out=rz)
    _sigmoid_of_exp(rz)
    r, z, n = gates[:, :H], gates[:, H : 2 * H], gates[:, 2 * H :]
    hn = ha[:, 2 * H :]
    np.multiply(r, hn, out=n)
    n += xa[:, 2 * H :]
    _tanh(n, out=n)
    np.subtract(prev_h, n, out=next_h)
    next_h *= z
    next_h += n  # (1 - z) * n + z * prev_h
    return next_h, gates, hn


def gru_core_backward(dnext_h, prev_h, gates, hn, dxa, dha):
    """Backward of :func:`gru_core_forward` down to xa and ha = prev_h @ Wh.

    Inputs:
    - dnext_h: Gradient of next_h, of shape (N, H)
    - prev_h: Hidden state entering the step, of shape (N, H)
    - gates, hn: Returned by the forward step
    - dxa: Array of shape (N, 3H) that receives the gradient of xa
    - dha: Array of shape (N, 3H) that receives the gradient of ha

    Returns:
    - dprev_h_direct: The part of dprev_h through z (the rest is dha @ Wh.T), (N, H)
    """
    H = prev_h.shape[1]
    r, z, n = gates[:, :H], gates[:, H : 2 * H], gates[:, 2 * H :]
    dr, dz, dn = dxa[:, :H], dxa[:, H : 2 * H], dxa[:, 2 * H :]
    np.subtract(1, z, out=dz)  # scratch: 1 - z
    np.multiply(dnext_h, dz, out=dn)
    tmp = np.multiply(n, n)
    np.subtract(1, tmp, out=tmp)
    dn *= tmp  # gradient of the n pre-activation
    np.multiply(z, dz, out=tmp)  # z (1 - z)
    np.subtract(prev_h, n, out=dz)
    dz *= dnext_h
    dz *= tmp
    np.multiply(dn, hn, out=dr)
    np.subtract(1, r, out=tmp)
    tmp *= r
    dr *= tmp  # dr pre-activation
    dha[:, : 2 * H] = dxa[:, : 2 * H]
    np.multiply(dn, r, out=dha[:, 2 * H :])
    return np.multiply(dnext_h, z, out=tmp)


def gru_step_forward(x, prev_h, Wx, Wh, b):
    """Forward pass for a single timestep of a GRU (gated recurrent unit).

    Gate layout (width 3H, in order r, z, n), with one bias on the input side:
        xa = x @ Wx + b, ha = prev_h @ Wh
        r = sigmoid(xa_r + ha_r)          reset gate
        z = sigmoid(xa_z + ha_z)          update gate
        n = tanh(xa_n + r * ha_n)         candidate state
        next_h = (1 - z) * n + z * prev_h
    This is PyTorch's nn.GRU with its hidden-side bias b_hh set to zero.

    Inputs:
    - x: Input data, of shape (N, D)
    - prev_h: Previous hidden state, of shape (N, H)
    - Wx: Input-to-hidden weights, of shape (D, 3H)
    - Wh: Hidden-to-hidden weights, of shape (H, 3H)
    - b: Biases, of shape (3H,)

    Returns a tuple of:
    - next_h: Next hidden state, of shape (N, H)
    - cache: Tuple of values needed for the backward pass
    """
    _check_recurrent_inputs("gru_step_forward", x, prev_h, Wx, Wh, b, 3, seq=False)
    next_h, gates, hn = gru_core_forward(x @ Wx + b, prev_h, Wh)
    return next_h, (x, prev_h, Wx, Wh, gates, hn)


def gru_step_backward(dnext_h, cache):
    """Backward pass for a single timestep of a GRU.

    Inputs:
    - dnext_h: Gradient of loss with respect to next hidden state, of shape (N, H)
    - cache: Cache object from the forward pass

    Returns a tuple of:
    - dx: Gradient of input data, of shape (N, D)
    - dprev_h: Gradient of previous hidden state, of shape (N, H)
    - dWx: Gradient of input-to-hidden weights, of shape (D, 3H)
    - dWh: Gradient of hidden-to-hidden weights, of shape (H, 3H)
    - db: Gradient of biases, of shape (3H,)
    """
    x, prev_h, Wx, Wh, gates, hn = cache
    dxa = np.empty_like(gates)
    dha = np.empty_like(gates)
    dprev_h = gru_core_backward(dnext_h, prev_h, gates, hn, dxa, dha)
    dprev_h += dha @ Wh.T
    return dxa @ Wx.T, dprev_h, x.T @ dxa, prev_h.T @ dha, dxa.sum(axis=0)


def gru_packed_forward(x, h0, Wx, Wh, b, sizes):
    """Forward pass for a GRU over a packed batch of sequences.

    Packed as in rnn_packed_forward; gate layout as in gru_step_forward.

    Inputs:
    - x: Packed input data, of shape (P, D), P = sum(sizes)
    - h0: Initial hidden states, of shape (n0, H), n0 >= sizes[0]
    - Wx, Wh, b: Weights and biases, as in gru_forward
    - sizes: Sequences running at each step, non-increasing, of length T

    Returns a tuple of:
    - h: Hidden state after every row, of shape (P, H)
    - cache: Values needed for the backward pass
    """
    steps, xa, hs = _start_packed("gru", x, h0, Wx, Wh, b, 3, sizes)  # xa (P, 3H); hs: h0, then each row's
    n0, H = h0.shape
    dtype, P = hs.dtype, steps.rows
    gates = scratch("gru.gates", (P, 3 * H), dtype)
    has = scratch("gru.has", (P, 3 * H), dtype)

    for _, rows, prev in steps:
        gru_core_forward(xa[rows], hs[prev], Wh, out=(gates[rows], has[rows], hs[n0:][rows]))
    return hs[n0:], (x, Wx, Wh, hs, gates, has, steps)


def gru_packed_backward(dh, cache):
    """Backward pass of gru_packed_forward.

    Inputs:
    - dh: Upstream gradients of all hidden states, of shape (P, H)
    - cache: Values from the forward pass

    Returns a tuple of:
    - dx: Gradient of the packed inputs, of shape (P, D)
    - dh0: Gradient of the initial hidden states, of shape (n0, H)
    - dWx, dWh, db: Gradients of the weights and biases
    """
    x, Wx, Wh, hs, gates, has, steps = cache
    n0, H = steps.n0, hs.shape[1]
    dxa = scratch("gru.dxa", (steps.rows, 3 * H), hs.dtype)
    dha = scratch("gru.dha", (steps.rows, 3 * H), hs.dtype)
    WhT = Wh.T

    dnext = np.zeros((n0, H), dtype=hs.dtype)  # a sequence's rows stay 0 until its last step
    for _, rows, prev in reversed(list(steps)):
        d = dnext[: rows.stop - rows.start]
        d += dh[rows]
        direct = gru_core_backward(d, hs[prev], gates[rows], has[rows][:, 2 * H :], dxa[rows], dha[rows])
        np.matmul(dha[rows], WhT, out=d)
        d += direct
    dx, dWx, _, db = _packed_weight_grads(x, Wx, dxa)
    dWh = steps.entering(hs, "gru.entering").T @ dha
    return dx, dnext, dWx, dWh, db


def gru_forward(x, h0, Wx, Wh, b):
    """Forward pass for a GRU over an entire sequence of data.

    Gate layout as in :func:`gru_step_forward`.

    Inputs:
    - x: Input data, of shape (N, T, D)
    - h0: Initial hidden state, of shape (N, H)
    - Wx: Input-to-hidden weights, of shape (D, 3H)
    - Wh: Hidden-to-hidden weights, of shape (H, 3H)
    - b: Biases, of shape (3H,)

    Returns a tuple of:
    - h: Hidden states for all timesteps, of shape (N, T, H)
    - cache: Values needed for the backward pass
    """
    _check_recurrent_inputs("gru_forward", x, h0, Wx, Wh, b, 3, seq=True)
    return _padded_forward(gru_packed_forward, x, h0, Wx, Wh, b)


def gru_backward(dh, cache):
    """Backward pass for a GRU over an entire sequence of data.

    Inputs:
    - dh: Upstream gradients of hidden states, of shape (N, T, H)
    - cache: Values from the forward pass

    Returns a tuple of:
    - dx: Gradient of input data, of shape (N, T, D)
    - dh0: Gradient of initial hidden state, of shape (N, H)
    - dWx: Gradient of input-to-hidden weights, of shape (D, 3H)
    - dWh: Gradient of hidden-to-hidden weights, of shape (H, 3H)
    - db: Gradient of biases, of shape (3H,)
    """
    return _padded_backward(gru_packed_backward, dh, cache)


# -------------------------------------------------- embedding, affine and loss


def word_embedding_forward(x, W):
    """Forward pass for word embeddings.

    We operate on minibatches of size N where each sequence has length T. We assume a
    vocabulary of V words, assigning each word to a vector of dimension D.

    Inputs:
    - x: Integer array of shape (N, T) giving indices of words. Each element idx of x
      must be in the range 0 <= idx < V.
    - W: Weight matrix of shape (V, D) giving word vectors for all words.

    Returns a tuple of:
    - out: Array of shape (N, T, D) giving word vectors for all input words.
    - cache: Values needed for the backward pass
    """
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.integer):
        raise ValueError(f"word_embedding_forward: word ids must be integers, got dtype {x.dtype}")
    V = W.shape[0]
    if x.size and (x.min() < 0 or x.max() >= V):
        raise ValueError(
            f"word_embedding_forward: word ids must be in [0, {V}) for a vocabulary of V={V}, "
            f"got ids in [{x.min()}, {x.max()}]"
        )
    # ids are checked above, so mode="clip" only spares np.take a buffered copy
    out = np.take(W, x, axis=0, out=scratch("embedding.out", x.shape + W.shape[1:], W.dtype), mode="clip")
    return out, (x, W.shape)


def word_embedding_backward(dout, cache):
    """Backward pass for word embeddings.

    We cannot back-propagate into the words since they are integers, so we only return
    the gradient for the word embedding matrix. Rows of repeated words are summed (the
    result of np.add.at, computed by sorting the ids and reducing each run at once,
    which is several times faster).

    Inputs:
    - dout: Upstream gradients of shape (N, T, D)
    - cache: Values from the forward pass

    Returns:
    - dW: Gradient of word embedding matrix, of shape (V, D)
    """
    x, W_shape = cache
    dW = np.zeros(W_shape, dtype=dout.dtype)
    ids = x.reshape(-1)
    if ids.size == 0:
        return dW
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    starts = np.flatnonzero(np.r_[True, sorted_ids[1:] != sorted_ids[:-1]])
    rows = np.take(dout.reshape(-1, W_shape[1]), order, axis=0, mode="clip",
                   out=scratch("embedding.sorted", (ids.size, W_shape[1]), dout.dtype))
    dW[sorted_ids[starts]] = np.add.reduceat(rows, starts, axis=0)
    return dW


def temporal_affine_forward(x, w, b):
    """Forward pass for a temporal affine layer.

    The input is a set of D-dimensional vectors arranged into a minibatch of N
    timeseries, each of length T. We use an affine function to transform each of those
    vectors into a new vector of dimension M.

    Inputs:
    - x: Input data of shape (N, T, D)
    - w: Weights of shape (D, M)
    - b: Biases of shape (M,)

    Returns a tuple of:
    - out: Output data of shape (N, T, M)
    - cache: Values needed for the backward pass
    """
    if x.ndim != 3 or w.shape[0] != x.shape[2] or b.shape != (w.shape[1],):
        raise ValueError(
            f"temporal_affine_forward: need x (N, T, D), w (D, M), b (M,); "
            f"got x {x.shape}, w {w.shape}, b {b.shape}"
        )
    return _project(x, w, b, name="affine.out"), (x, w, b)


def temporal_affine_backward(dout, cache):
    """Backward pass for temporal affine layer.

    Input:
    - dout: Upstream gradients of shape (N, T, M)
    - cache: Values from forward pass

    Returns a tuple of:
    - dx: Gradient of input, of shape (N, T, D)
    - dw: Gradient of weights, of shape (D, M)
    - db: Gradient of biases, of shape (M,)
    """
    x, w, b = cache
    N, T, D = x.shape
    M = b.shape[0]
    dout2 = dout.reshape(N * T, M)
    dx = np.matmul(dout2, w.T, out=scratch("affine.dx", (N * T, D), np.result_type(dout2, w))).reshape(N, T, D)
    dw = x.reshape(N * T, D).T @ dout2
    return dx, dw, dout2.sum(axis=0)


def temporal_softmax_loss(x, y, mask, verbose=False):
    """A temporal version of softmax loss for use in RNNs.

    We assume that we are making predictions over a vocabulary of size V for each
    timestep of a timeseries of length T, over a minibatch of size N. The input x gives
    scores for all vocabulary elements at all timesteps, and y gives the indices of the
    ground-truth element at each timestep. We use a cross-entropy loss at each timestep,
    summing the loss over all timesteps and averaging across the minibatch. Positions
    where mask is False contribute neither loss nor gradient.

    Inputs:
    - x: Input scores, of shape (N, T, V)
    - y: Ground-truth indices, of shape (N, T) where each element is in the range
      0 <= y[i, t] < V
    - mask: Boolean array of shape (N, T) where mask[i, t] tells whether or not the
      scores at x[i, t] should contribute to the loss.
    - verbose: If True, print the shape of the gradient.

    Returns a tuple of:
    - loss: Scalar giving loss
    - dx: Gradient of loss with respect to scores x, of shape (N, T, V)
    """
    N, T, V = x.shape
    y = np.asarray(y)
    if y.shape != (N, T) or np.shape(mask) != (N, T):
        raise ValueError(
            f"temporal_softmax_loss: y and mask must have shape {(N, T)}, got {y.shape} and {np.shape(mask)}"
        )
    if y.size and (y.min() < 0 or y.max() >= V):
        raise ValueError(f"temporal_softmax_loss: labels must be in [0, {V}), got [{y.min()}, {y.max()}]")
    y_flat = y.reshape(N * T)
    mask_flat = np.asarray(mask, dtype=bool).reshape(N * T)
    rows = np.arange(N * T)

    x2 = x.reshape(N * T, V)
    dx = np.subtract(x2, x2.max(axis=1, keepdims=True), out=scratch("softmax.dx", (N * T, V), x.dtype))  # shifted
    correct = dx[rows, y_flat].copy()
    np.exp(dx, out=dx)
    sums = dx.sum(axis=1)
    log_probs = correct - np.log(sums)
    loss = -np.sum(log_probs[mask_flat]) / N

    scale = (mask_flat / N).astype(x.dtype) / sums  # softmax normaliser and mask in one
    dx *= scale[:, None]
    dx[rows, y_flat] -= (mask_flat / N).astype(x.dtype)
    if verbose:
        print("dx_flat: ", dx.shape)
    return float(loss), dx.reshape(N, T, V)


def weighted_softmax_loss(x, y, w):
    """Softmax loss with a weight per row: sum_i -w_i * log softmax(x_i)[y_i].

    Self-critical training weights each sampled word by its caption's advantage, which
    may be negative.

    Inputs:
    - x: Scores, of shape (M, V)
    - y: Target indices, of shape (M,)
    - w: Weight of each row, of shape (M,)

    Returns a tuple of:
    - loss: Scalar loss
    - dx: Gradient of loss with respect to x, of shape (M, V)
    """
    rows = np.arange(x.shape[0])
    dx = np.subtract(x, x.max(axis=1, keepdims=True), out=scratch("weighted_softmax.dx", x.shape, x.dtype))
    correct = dx[rows, y].copy()  # shifted scores of the targets
    np.exp(dx, out=dx)
    sums = dx.sum(axis=1)
    loss = -float(np.dot(w, correct - np.log(sums)))
    w = w.astype(x.dtype)
    dx *= (w / sums)[:, None]  # softmax times weight
    dx[rows, y] -= w
    return loss, dx


def kept_rows_softmax_loss(h, y, keep, W_vocab, b_vocab, N, weights=None):
    """Vocabulary scores, softmax loss and their backward for the kept rows of h only.

    Captioning models score every position but the <NULL> padding, whose loss and
    gradient are zero: the R rows of h (all positions, flattened) are reduced to the M kept
    ones, scored as one sequence of length M, and the loss, summed over positions, is
    divided by the minibatch size N (the masked temporal softmax loss of CS231n).

    Inputs:
    - h: Hidden states or decoder outputs, of shape (R, H)
    - y: Target word ids, of shape (R,)
    - keep: Indices of the rows that count, of shape (M,)
    - W_vocab, b_vocab: Output projection, of shapes (H, V) and (V,)
    - N: Minibatch size to average over
    - weights: Optional weight of each row of h, of shape (R,): the loss becomes
      sum over kept rows of weight * cross-entropy, divided by N

    Returns a tuple of:
    - loss: Scalar loss
    - dh: Gradient of shape (R, H), zero in the rows not kept
    - dW_vocab, db_vocab: Gradients of the output projection
    """
    h_kept = np.take(h, keep, axis=0, out=scratch("kept.h", (len(keep), h.shape[1]), h.dtype), mode="clip")
    h_kept = h_kept[None]  # (1, M, H)
    scores, affine_cache = temporal_affine_forward(h_kept, W_vocab, b_vocab)  # (1, M, V)
    y_kept = y[keep][None]
    if weights is None:
        loss, dscores = temporal_softmax_loss(scores, y_kept, np.ones(y_kept.shape, dtype=bool))
    else:
        loss, dscores = weighted_softmax_loss(scores[0], y_kept[0], np.asarray(weights)[keep])
        dscores = dscores[None]
    loss /= N
    dscores /= h.dtype.type(N)
    dh_kept, dW_vocab, db_vocab = temporal_affine_backward(dscores, affine_cache)
    dh = scratch("kept.dh", h.shape, dh_kept.dtype)
    dh.fill(0)
    dh[keep] = dh_kept[0]
    return loss, dh, dW_vocab, db_vocab

