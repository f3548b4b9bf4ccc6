"""Recurrent layers for captioning: vanilla RNN, LSTM and GRU cells, word embedding,
temporal affine and the masked temporal softmax loss.

Dimension letters used throughout: N batch size, T sequence length, D input
dimension, H hidden dimension, V vocabulary size, M output dimension.

Each sequence function is built from the same step core as its step function. The
sequence versions project the inputs of all timesteps with one matmul before the time
loop and accumulate the weight gradients with one matmul after it, which is what makes
them as fast as a framework on a CPU; the step functions keep the CS231n contract.
"""

import numpy as np

from capmodel.layers import sigmoid


def _check_recurrent_inputs(name, x, h0, Wx, Wh, b, k, seq):
    """Raise ValueError naming the first shape that does not fit a k-gate cell."""
    want_x = 3 if seq else 2
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


def _project(x, W, b):
    """Apply x @ W + b over the last axis of x, of shape (..., D) -> (..., M)."""
    out = x.reshape(-1, x.shape[-1]) @ W
    out += b
    return out.reshape(*x.shape[:-1], W.shape[1])


# --------------------------------------------------------------------------- RNN


def _rnn_core_forward(xa, prev_h, Wh):
    """tanh(xa + prev_h @ Wh), where xa = x @ Wx + b is already computed, shape (N, H)."""
    a = prev_h @ Wh
    a += xa
    return np.tanh(a, out=a)


def _rnn_core_backward(dnext_h, next_h):
    """Gradient with respect to the pre-activation a, of shape (N, H)."""
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
    next_h = _rnn_core_forward(x @ Wx + b, prev_h, Wh)
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
    da = _rnn_core_backward(dnext_h, next_h)
    return da @ Wx.T, da @ Wh.T, x.T @ da, prev_h.T @ da, da.sum(axis=0)


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
    N, T, _ = x.shape
    xa = _project(x, Wx, b)  # (N, T, H)
    h = np.empty((N, T, h0.shape[1]), dtype=np.result_type(xa, h0))
    prev_h = h0
    for t in range(T):
        prev_h = h[:, t] = _rnn_core_forward(xa[:, t], prev_h, Wh)
    return h, (x, h0, Wx, Wh, h)


def _prev_states(h0, h):
    """States entering each timestep: (h0, h_0, ..., h_{T-2}), of shape (N, T, H)."""
    hp = np.empty_like(h)
    hp[:, 0] = h0
    hp[:, 1:] = h[:, :-1]
    return hp


def _input_grads(x, Wx, da, h0, h):
    """dx, dWx, dWh and db from the pre-activation gradients da of every timestep."""
    N, T, D = x.shape
    da2 = da.reshape(N * T, -1)
    dx = (da2 @ Wx.T).reshape(N, T, D)
    dWx = x.reshape(N * T, D).T @ da2
    dWh = _prev_states(h0, h).reshape(N * T, -1).T @ da2
    return dx, dWx, dWh, da2.sum(axis=0)


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
    x, h0, Wx, Wh, h = cache
    N, T, H = h.shape
    da = np.empty_like(h)
    dnext = np.zeros((N, H), dtype=h.dtype)
    for t in reversed(range(T)):
        dnext += dh[:, t]
        da[:, t] = _rnn_core_backward(dnext, h[:, t])
        dnext = da[:, t] @ Wh.T
    dx, dWx, dWh, db = _input_grads(x, Wx, da, h0, h)
    return dx, dnext, dWx, dWh, db


# -------------------------------------------------------------------------- LSTM


def _lstm_core_forward(xa, prev_h, prev_c, Wh, out=None):
    """One LSTM step from the precomputed input projection xa = x @ Wx + b, shape (N, 4H).

    Returns next_h, next_c, the activated gates (N, 4H) in order i, f, o, g, and tanh(next_c).
    out: optional buffers (acts, next_c, tc) to write into, so the sequence version fills
    its cache without copies.
    """
    N, H = prev_h.shape
    if out is None:
        dtype = np.result_type(xa, prev_h)
        out = (np.empty((N, 4 * H), dtype), np.empty((N, H), dtype), np.empty((N, H), dtype))
    acts, next_c, tc = out
    np.matmul(prev_h, Wh, out=acts)
    acts += xa
    sigmoid(acts[:, : 3 * H], out=acts[:, : 3 * H])
    np.tanh(acts[:, 3 * H :], out=acts[:, 3 * H :])
    i, f, o, g = acts[:, :H], acts[:, H : 2 * H], acts[:, 2 * H : 3 * H], acts[:, 3 * H :]
    np.multiply(f, prev_c, out=next_c)
    next_c += i * g
    np.tanh(next_c, out=tc)
    next_h = o * tc
    return next_h, next_c, acts, tc


def _lstm_core_backward(dnext_h, dnext_c, prev_c, acts, tc, da):
    """Write the pre-activation gradient into da (N, 4H) and return dprev_c (N, H)."""
    H = prev_c.shape[1]
    i, f, o, g = acts[:, :H], acts[:, H : 2 * H], acts[:, 2 * H : 3 * H], acts[:, 3 * H :]
    dc = dnext_h * o
    dc *= 1 - tc * tc
    dc += dnext_c
    np.multiply(dc, g, out=da[:, :H])  # di
    np.multiply(dc, prev_c, out=da[:, H : 2 * H])  # df
    np.multiply(dnext_h, tc, out=da[:, 2 * H : 3 * H])  # do
    np.multiply(dc, i, out=da[:, 3 * H :])  # dg
    sig = acts[:, : 3 * H]
    da[:, : 3 * H] *= sig * (1 - sig)
    da[:, 3 * H :] *= 1 - g * g
    dc *= f
    return dc


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
    next_h, next_c, acts, tc = _lstm_core_forward(x @ Wx + b, prev_h, prev_c, Wh)
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
    dprev_c = _lstm_core_backward(dnext_h, dnext_c, prev_c, acts, tc, da)
    return da @ Wx.T, da @ Wh.T, dprev_c, x.T @ da, prev_h.T @ da, da.sum(axis=0)


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
    N, T, _ = x.shape
    H = h0.shape[1]
    xa = _project(x, Wx, b)  # (N, T, 4H)
    dtype = np.result_type(xa, h0)
    h = np.empty((N, T, H), dtype=dtype)
    c = np.empty((T + 1, N, H), dtype=dtype)  # c[t] enters step t; c[0] = 0
    tcs = np.empty((T, N, H), dtype=dtype)
    acts = np.empty((T, N, 4 * H), dtype=dtype)
    c[0] = 0
    prev_h = h0
    for t in range(T):
        prev_h, _, _, _ = _lstm_core_forward(xa[:, t], prev_h, c[t], Wh, out=(acts[t], c[t + 1], tcs[t]))
        h[:, t] = prev_h
    return h, (x, h0, Wx, Wh, h, c, acts, tcs)


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
    x, h0, Wx, Wh, h, c, acts, tcs = cache
    N, T, H = h.shape
    da = np.empty((N, T, 4 * H), dtype=h.dtype)
    dnext_h = np.zeros((N, H), dtype=h.dtype)
    dnext_c = np.zeros((N, H), dtype=h.dtype)
    WhT = Wh.T
    for t in reversed(range(T)):
        dnext_h += dh[:, t]
        dnext_c = _lstm_core_backward(dnext_h, dnext_c, c[t], acts[t], tcs[t], da[:, t])
        dnext_h = da[:, t] @ WhT
    dx, dWx, dWh, db = _input_grads(x, Wx, da, h0, h)
    return dx, dnext_h, dWx, dWh, db


# --------------------------------------------------------------------------- GRU


def _gru_core_forward(xa, prev_h, Wh):
    """One GRU step from the precomputed input projection xa = x @ Wx + b, shape (N, 3H).

    Returns next_h, the activated gates (N, 3H) in order r, z, n, and hn = prev_h @ Wh[:, 2H:].
    """
    H = prev_h.shape[1]
    ha = prev_h @ Wh  # (N, 3H)
    gates = xa + ha
    sigmoid(gates[:, : 2 * H], out=gates[:, : 2 * H])
    r, z = gates[:, :H], gates[:, H : 2 * H]
    hn = ha[:, 2 * H :]
    n = gates[:, 2 * H :]
    np.multiply(r, hn, out=n)
    n += xa[:, 2 * H :]
    np.tanh(n, out=n)
    next_h = n + z * (prev_h - n)  # (1 - z) * n + z * prev_h
    return next_h, gates, hn


def _gru_core_backward(dnext_h, prev_h, gates, hn, dxa, dha):
    """Write the gradients of xa (N, 3H) and of ha = prev_h @ Wh (N, 3H); return the
    direct part of dprev_h (through z), of shape (N, H)."""
    H = prev_h.shape[1]
    r, z, n = gates[:, :H], gates[:, H : 2 * H], gates[:, 2 * H :]
    dn = dnext_h * (1 - z)
    dn *= 1 - n * n  # gradient of the n pre-activation
    dz = dnext_h * (prev_h - n)
    dz *= z * (1 - z)
    np.multiply(dn, hn, out=dxa[:, :H])
    dxa[:, :H] *= r * (1 - r)  # dr pre-activation
    dxa[:, H : 2 * H] = dz
    dxa[:, 2 * H :] = dn
    dha[:, : 2 * H] = dxa[:, : 2 * H]
    np.multiply(dn, r, out=dha[:, 2 * H :])
    return dnext_h * z


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
    next_h, gates, hn = _gru_core_forward(x @ Wx + b, prev_h, Wh)
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
    dprev_h = _gru_core_backward(dnext_h, prev_h, gates, hn, dxa, dha)
    dprev_h += dha @ Wh.T
    return dxa @ Wx.T, dprev_h, x.T @ dxa, prev_h.T @ dha, dxa.sum(axis=0)


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
    N, T, _ = x.shape
    H = h0.shape[1]
    xa = _project(x, Wx, b)  # (N, T, 3H)
    dtype = np.result_type(xa, h0)
    h = np.empty((N, T, H), dtype=dtype)
    gates = np.empty((T, N, 3 * H), dtype=dtype)
    hns = np.empty((T, N, H), dtype=dtype)
    prev_h = h0
    for t in range(T):
        prev_h, gates[t], hns[t] = _gru_core_forward(xa[:, t], prev_h, Wh)
        h[:, t] = prev_h
    return h, (x, h0, Wx, Wh, h, gates, hns)


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
    x, h0, Wx, Wh, h, gates, hns = cache
    N, T, H = h.shape
    D = x.shape[2]
    dxa = np.empty((N, T, 3 * H), dtype=h.dtype)
    dha = np.empty((N, T, 3 * H), dtype=h.dtype)
    dnext = np.zeros((N, H), dtype=h.dtype)
    WhT = Wh.T
    hp = _prev_states(h0, h)
    for t in reversed(range(T)):
        dnext += dh[:, t]
        direct = _gru_core_backward(dnext, hp[:, t], gates[t], hns[t], dxa[:, t], dha[:, t])
        dnext = dha[:, t] @ WhT
        dnext += direct
    dxa2 = dxa.reshape(N * T, 3 * H)
    dx = (dxa2 @ Wx.T).reshape(N, T, D)
    dWx = x.reshape(N * T, D).T @ dxa2
    dWh = hp.reshape(N * T, H).T @ dha.reshape(N * T, 3 * H)
    return dx, dnext, dWx, dWh, dxa2.sum(axis=0)


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
    return W[x], (x, W.shape)


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
    dW[sorted_ids[starts]] = np.add.reduceat(dout.reshape(-1, W_shape[1])[order], starts, axis=0)
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
    return _project(x, w, b), (x, w, b)


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
    dx = (dout2 @ w.T).reshape(N, T, D)
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

    dx = x.reshape(N * T, V) - x.reshape(N * T, V).max(axis=1, keepdims=True)  # shifted scores
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
