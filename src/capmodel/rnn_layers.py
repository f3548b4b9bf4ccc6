"""Recurrent layers for image captioning, as in CS231n's assignment 3: vanilla RNN, LSTM
and GRU cells, word embedding, temporal affine and the masked temporal softmax loss.

Dimension letters used throughout: N batch size, T sequence length, D input dimension,
H hidden dimension, V vocabulary size, M output dimension. Every forward function
returns (out, cache) and its backward takes (dout, cache) and returns the gradients in
the order of the forward inputs.

These are the reference versions, written to be read: each sequence function is a loop
over its step function. The models train with the fast versions in
``capmodel.kernels.recurrent`` (packed sequences of different lengths, one matmul for
the input projections of all timesteps, reused buffers) and ``capmodel.kernels.words``:
the step functions here give the same bits as the kernels' step cores, the sequence
functions the same values to rounding (tests hold them equal).
"""

import numpy as np

from capmodel.kernels.recurrent import check_recurrent_inputs
from capmodel.kernels.words import check_word_ids


def _sigmoid(a):
    """1 / (1 + exp(-a)); exp's overflow to inf for very negative a gives exactly 0."""
    with np.errstate(over="ignore"):
        return 1 / (1 + np.exp(-a))


def _tanh(a):
    """tanh(a), written as 2 / (1 + exp(-2a)) - 1 as the fast kernels compute it (one exp
    is about twice as fast as np.tanh), so that both give the same bits."""
    with np.errstate(over="ignore"):
        return 2 / (1 + np.exp(-2 * a)) - 1


# --------------------------------------------------------------------------- RNN


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
    check_recurrent_inputs("rnn_step_forward", x, prev_h, Wx, Wh, b, 1, seq=False)
    next_h = _tanh(x @ Wx + b + prev_h @ Wh)
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
    da = dnext_h * (1 - next_h * next_h)  # through the tanh
    return da @ Wx.T, da @ Wh.T, x.T @ da, prev_h.T @ da, da.sum(axis=0)


def rnn_forward(x, h0, Wx, Wh, b):
    """Run a vanilla RNN forward on an entire sequence of data.

    We assume an input sequence composed of T vectors, each of dimension D. The RNN uses
    a hidden size of H, and we work over a minibatch containing N sequences. After
    running the RNN forward, we return the hidden states for all timesteps.

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
    check_recurrent_inputs("rnn_forward", x, h0, Wx, Wh, b, 1, seq=True)
    return _sequence_forward(rnn_step_forward, x, h0, Wx, Wh, b)


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
    return _sequence_backward(rnn_step_backward, dh, cache)


def _sequence_forward(step_forward, x, h0, Wx, Wh, b):
    """The loop of rnn_forward and gru_forward: h (N, T, H) and the cache."""
    N, T, _ = x.shape
    h = np.empty((N, T, h0.shape[1]), dtype=np.result_type(x, h0, Wx, Wh, b))
    caches = []
    prev_h = h0
    for t in range(T):
        prev_h, cache = step_forward(x[:, t], prev_h, Wx, Wh, b)
        h[:, t] = prev_h
        caches.append(cache)
    return h, (x.shape, Wx, Wh, b, caches)


def _sequence_backward(step_backward, dh, cache):
    """The loop of rnn_backward and gru_backward: dx, dh0, dWx, dWh, db."""
    x_shape, Wx, Wh, b, caches = cache
    N, T, H = dh.shape
    dtype = np.result_type(dh, Wx)
    dx = np.empty(x_shape, dtype=dtype)
    dWx, dWh, db = np.zeros(Wx.shape, dtype), np.zeros(Wh.shape, dtype), np.zeros(b.shape, dtype)
    dprev_h = np.zeros((N, H), dtype)
    for t in reversed(range(T)):
        # h[:, t] feeds both the loss and the next step
        dx[:, t], dprev_h, dWx_t, dWh_t, db_t = step_backward(dh[:, t] + dprev_h, caches[t])
        dWx += dWx_t
        dWh += dWh_t
        db += db_t
    return dx, dprev_h, dWx, dWh, db


# -------------------------------------------------------------------------- LSTM


def lstm_step_forward(x, prev_h, prev_c, Wx, Wh, b):
    """Forward pass for a single timestep of an LSTM.

    The input data has dimension D, the hidden state has dimension H, and we use a
    minibatch size of N. The activation vector a = x @ Wx + b + prev_h @ Wh has width 4H
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
    check_recurrent_inputs("lstm_step_forward", x, prev_h, Wx, Wh, b, 4, seq=False)
    if prev_c.shape != prev_h.shape:
        raise ValueError(f"lstm_step_forward: prev_c must have shape {prev_h.shape}, got {prev_c.shape}")
    H = prev_h.shape[1]
    a = x @ Wx + b + prev_h @ Wh  # (N, 4H)
    i, f, o = _sigmoid(a[:, :H]), _sigmoid(a[:, H : 2 * H]), _sigmoid(a[:, 2 * H : 3 * H])
    g = _tanh(a[:, 3 * H :])
    next_c = f * prev_c + i * g
    tc = _tanh(next_c)
    next_h = o * tc
    return next_h, next_c, (x, prev_h, prev_c, Wx, Wh, i, f, o, g, tc)


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
    x, prev_h, prev_c, Wx, Wh, i, f, o, g, tc = cache
    dc = dnext_c + dnext_h * o * (1 - tc * tc)  # next_c reaches the loss directly and through next_h
    di = dc * g * i * (1 - i)  # each gate's gradient before its nonlinearity
    df = dc * prev_c * f * (1 - f)
    do = dnext_h * tc * o * (1 - o)
    dg = dc * i * (1 - g * g)
    da = np.hstack((di, df, do, dg))  # (N, 4H)
    return da @ Wx.T, da @ Wh.T, dc * f, x.T @ da, prev_h.T @ da, da.sum(axis=0)


def lstm_forward(x, h0, Wx, Wh, b):
    """Forward pass for an LSTM over an entire sequence of data.

    We assume an input sequence composed of T vectors, each of dimension D. The LSTM uses
    a hidden size of H, and we work over a minibatch containing N sequences. After
    running the LSTM forward, we return the hidden states for all timesteps. The initial
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
    check_recurrent_inputs("lstm_forward", x, h0, Wx, Wh, b, 4, seq=True)
    N, T, _ = x.shape
    h = np.empty((N, T, h0.shape[1]), dtype=np.result_type(x, h0, Wx, Wh, b))
    caches = []
    prev_h, prev_c = h0, np.zeros_like(h0)
    for t in range(T):
        prev_h, prev_c, cache = lstm_step_forward(x[:, t], prev_h, prev_c, Wx, Wh, b)
        h[:, t] = prev_h
        caches.append(cache)
    return h, (x.shape, Wx, Wh, b, caches)


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
    x_shape, Wx, Wh, b, caches = cache
    N, T, H = dh.shape
    dtype = np.result_type(dh, Wx)
    dx = np.empty(x_shape, dtype=dtype)
    dWx, dWh, db = np.zeros(Wx.shape, dtype), np.zeros(Wh.shape, dtype), np.zeros(b.shape, dtype)
    dprev_h, dprev_c = np.zeros((N, H), dtype), np.zeros((N, H), dtype)
    for t in reversed(range(T)):
        dx[:, t], dprev_h, dprev_c, dWx_t, dWh_t, db_t = lstm_step_backward(dh[:, t] + dprev_h, dprev_c, caches[t])
        dWx += dWx_t
        dWh += dWh_t
        db += db_t
    return dx, dprev_h, dWx, dWh, db


# --------------------------------------------------------------------------- GRU


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
    check_recurrent_inputs("gru_step_forward", x, prev_h, Wx, Wh, b, 3, seq=False)
    H = prev_h.shape[1]
    xa, ha = x @ Wx + b, prev_h @ Wh  # (N, 3H) each
    r = _sigmoid(xa[:, :H] + ha[:, :H])
    z = _sigmoid(xa[:, H : 2 * H] + ha[:, H : 2 * H])
    hn = ha[:, 2 * H :]
    n = _tanh(xa[:, 2 * H :] + r * hn)
    next_h = n + z * (prev_h - n)  # (1 - z) * n + z * prev_h
    return next_h, (x, prev_h, Wx, Wh, r, z, n, hn)


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
    x, prev_h, Wx, Wh, r, z, n, hn = cache
    dn = dnext_h * (1 - z) * (1 - n * n)  # each gradient before its gate's nonlinearity
    dz = dnext_h * (prev_h - n) * (z * (1 - z))
    dr = dn * hn * (r * (1 - r))
    dxa = np.hstack((dr, dz, dn))  # (N, 3H)
    dha = np.hstack((dr, dz, dn * r))  # r scales the hidden side of n only
    dprev_h = dnext_h * z + dha @ Wh.T
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
    check_recurrent_inputs("gru_forward", x, h0, Wx, Wh, b, 3, seq=True)
    return _sequence_forward(gru_step_forward, x, h0, Wx, Wh, b)


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
    return _sequence_backward(gru_step_backward, dh, cache)


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
    check_word_ids("word_embedding_forward", x, W.shape[0])
    return W[x], (x, W.shape)


def word_embedding_backward(dout, cache):
    """Backward pass for word embeddings.

    We cannot back-propagate into the words since they are integers, so we only return
    the gradient for the word embedding matrix. A word that occurs several times gets the
    sum of its rows' gradients.

    Inputs:
    - dout: Upstream gradients of shape (N, T, D)
    - cache: Values from the forward pass

    Returns:
    - dW: Gradient of word embedding matrix, of shape (V, D)
    """
    x, W_shape = cache
    dW = np.zeros(W_shape, dtype=dout.dtype)
    np.add.at(dW, x, dout)  # dW[x] += dout would keep only one row per repeated word
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
        raise ValueError(f"temporal_affine_forward: need x (N, T, D), w (D, M), b (M,); "
                         f"got x {x.shape}, w {w.shape}, b {b.shape}")
    N, T, D = x.shape
    out = (x.reshape(N * T, D) @ w + b).reshape(N, T, w.shape[1])
    return out, (x, w, b)


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
    dout2 = dout.reshape(N * T, b.shape[0])
    dx = (dout2 @ w.T).reshape(N, T, D)
    return dx, x.reshape(N * T, D).T @ dout2, dout2.sum(axis=0)


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
        raise ValueError(f"temporal_softmax_loss: y and mask must have shape {(N, T)}, "
                         f"got {y.shape} and {np.shape(mask)}")
    if y.size and (y.min() < 0 or y.max() >= V):
        raise ValueError(f"temporal_softmax_loss: labels must be in [0, {V}), got [{y.min()}, {y.max()}]")
    x_flat, y_flat = x.reshape(N * T, V), y.reshape(N * T)
    mask_flat = np.asarray(mask, dtype=bool).reshape(N * T)
    rows = np.arange(N * T)

    shifted = x_flat - x_flat.max(axis=1, keepdims=True)  # exp cannot overflow
    exp = np.exp(shifted)
    sums = exp.sum(axis=1)
    log_probs = shifted[rows, y_flat] - np.log(sums)
    loss = -np.sum(log_probs[mask_flat]) / N

    weight = (mask_flat / N).astype(x.dtype)  # 1/N where scored, 0 where masked
    dx_flat = exp * (weight / sums)[:, None]  # softmax, weighted
    dx_flat[rows, y_flat] -= weight
    if verbose:
        print("dx_flat: ", dx_flat.shape)
    return float(loss), dx_flat.reshape(N, T, V)
