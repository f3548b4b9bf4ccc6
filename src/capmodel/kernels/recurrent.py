"""Fast recurrent layers: the step cores and the packed sequence functions the models train with.

The packed functions (``rnn_packed_forward`` ... ``gru_packed_backward``) run a batch of
sequences of different lengths in PyTorch's PackedSequence layout: rows time-major,
longest sequence first, sizes[t] sequences running at step t, so no work is spent on
padding. The input projections x @ Wx + b of all rows take one matmul before the time
loop, and the weight gradients one matmul after it. Each timestep is one call of a step
core (``rnn_core_forward`` ...), which takes its input projection precomputed;
CaptioningRNN's decoders step the cores too. Gate nonlinearities take one exp pass, the
per-step work writes into preallocated arrays, and the sequence-sized arrays come from
``capmodel.kernels.buffers.scratch``, so a training loss reuses the previous call's memory.

``capmodel.rnn_layers`` has the readable CS231n versions (the sequence functions as loops
over the step functions); its step functions give the bits of the cores here, and tests
hold the packed functions equal to its loops.
Dimension letters as there, plus P packed rows and n0 initial states.
"""

import functools

import numpy as np

from capmodel.kernels.buffers import scratch


def check_recurrent_inputs(name, x, h0, Wx, Wh, b, k, seq):
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
    check_recurrent_inputs(name, x[:0], h0[:0], Wx, Wh, b, k, seq=False)
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
    """out <- tanh(a) = 2 / (1 + exp(-2a)) - 1 (out may be a): one exp instead of a tanh,
    which is about twice as slow in NumPy; exp's overflow to inf gives exactly -1."""
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


def rnn_packed_forward(x, h0, Wx, Wh, b, sizes):
    """Run a vanilla RNN forward over a packed batch of sequences.

    The sequences are packed (see _Steps): row block t of x holds the inputs of the
    sizes[t] sequences still running at step t, which are the first sizes[t] of those
    running at step t - 1. A padded (N, T, D) batch, in time-major row order, is the
    packing with sizes (N,) * T; captions sorted longest first and cut after their last
    scored word skip the work on padding (CaptioningRNN.loss).

    Inputs:
    - x: Packed input data, of shape (P, D), P = sum(sizes)
    - h0: Initial hidden states, of shape (n0, H), n0 >= sizes[0]
    - Wx, Wh, b: Weights and biases, as in capmodel.rnn_layers.rnn_forward
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


# -------------------------------------------------------------------------- LSTM


def lstm_core_forward(xa, prev_h, prev_c, Wh, out=None):
    """Step core of the LSTM, from the precomputed input projection.

    The activation a = xa + prev_h @ Wh has width 4H and is split, in order, into the
    input gate i, forget gate f, output gate o (sigmoids) and the block input g (tanh);
    next_c = f * prev_c + i * g and next_h = o * tanh(next_c). All four gates take one
    exp pass.

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


def lstm_packed_forward(x, h0, Wx, Wh, b, sizes):
    """Forward pass for an LSTM over a packed batch of sequences.

    Packed as in rnn_packed_forward; the initial cell states are zero and the gate layout
    is that of capmodel.rnn_layers.lstm_step_forward.

    Inputs:
    - x: Packed input data, of shape (P, D), P = sum(sizes)
    - h0: Initial hidden states, of shape (n0, H), n0 >= sizes[0]
    - Wx, Wh, b: Weights and biases, as in capmodel.rnn_layers.lstm_forward
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


# --------------------------------------------------------------------------- GRU


def gru_core_forward(xa, prev_h, Wh, out=None):
    """Step core of the GRU, from the precomputed input projection.

    Gate layout as in capmodel.rnn_layers.gru_step_forward (r, z, n; one bias, on the
    input side).

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


def gru_packed_forward(x, h0, Wx, Wh, b, sizes):
    """Forward pass for a GRU over a packed batch of sequences.

    Packed as in rnn_packed_forward; gate layout as in capmodel.rnn_layers.gru_step_forward.

    Inputs:
    - x: Packed input data, of shape (P, D), P = sum(sizes)
    - h0: Initial hidden states, of shape (n0, H), n0 >= sizes[0]
    - Wx, Wh, b: Weights and biases, as in capmodel.rnn_layers.gru_forward
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
