"""Fast word embedding and vocabulary softmax loss, shared by every captioning model.

The computation of ``capmodel.rnn_layers``' readable ``word_embedding_forward/backward``,
``temporal_affine_forward/backward`` and ``temporal_softmax_loss``, into arrays from
``capmodel.kernels.buffers.scratch`` (a training loss reuses the previous call's memory),
and, for the loss, on the scored positions only. Dimension letters: N batch,
T time, D word vector, H hidden, V vocabulary, R rows in all, M rows kept.
"""

import numpy as np

from capmodel.kernels.buffers import scratch


def check_word_ids(name, x, V):
    """Raise ValueError unless x is an integer array of ids in [0, V)."""
    if not np.issubdtype(x.dtype, np.integer):
        raise ValueError(f"{name}: word ids must be integers, got dtype {x.dtype}")
    if x.size and (x.min() < 0 or x.max() >= V):
        raise ValueError(
            f"{name}: word ids must be in [0, {V}) for a vocabulary of V={V}, got ids in [{x.min()}, {x.max()}]"
        )


def word_embedding_forward(x, W):
    """Word vectors W[x] of the ids x (N, T), of shape (N, T, D); returns (out, cache)."""
    x = np.asarray(x)
    check_word_ids("word_embedding_forward", x, W.shape[0])
    # ids are checked above, so mode="clip" only spares np.take a buffered copy
    out = np.take(W, x, axis=0, out=scratch("embedding.out", x.shape + W.shape[1:], W.dtype), mode="clip")
    return out, (x, W.shape)


def word_embedding_backward(dout, cache):
    """Gradient dW (V, D) of word_embedding_forward for dout (N, T, D).

    Rows of repeated words are summed, as np.add.at does, by sorting the ids (stably) and
    reducing each run at once, which is several times faster (equal to rounding).
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


def _vocab_scores(h, W_vocab, b_vocab):
    """Scores h @ W_vocab + b_vocab of the rows of h (M, H): shape (M, V)."""
    out = np.matmul(h, W_vocab, out=scratch("affine.out", (h.shape[0], W_vocab.shape[1]),
                                            np.result_type(h, W_vocab)))
    out += b_vocab
    return out


def _softmax_loss(scores, y):
    """Softmax cross-entropy of each row of scores (M, V) against its label in y (M,),
    summed over the rows, and its gradient dscores (M, V)."""
    rows = np.arange(len(y))
    dx = np.subtract(scores, scores.max(axis=1, keepdims=True),
                     out=scratch("softmax.dx", scores.shape, scores.dtype))  # shifted scores
    correct = dx[rows, y].copy()
    np.exp(dx, out=dx)
    sums = dx.sum(axis=1)
    loss = -np.sum(correct - np.log(sums))
    dx *= (1 / sums)[:, None]  # softmax
    dx[rows, y] -= 1
    return float(loss), dx


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


def _vocab_backward(dscores, h, W_vocab):
    """Gradients dh (M, H), dW_vocab (H, V) and db_vocab (V,) of _vocab_scores."""
    dh = np.matmul(dscores, W_vocab.T, out=scratch("affine.dx", h.shape, np.result_type(dscores, W_vocab)))
    return dh, h.T @ dscores, dscores.sum(axis=0)


def kept_rows_softmax_loss(h, y, keep, W_vocab, b_vocab, N, weights=None):
    """Vocabulary scores, softmax loss and their backward for the kept rows of h only.

    Captioning models score every position but the <NULL> padding, whose loss and
    gradient are zero: the R rows of h (all positions, flattened) are reduced to the M kept
    ones, and the loss, summed over positions, is divided by the minibatch size N (the
    masked temporal softmax loss of CS231n, capmodel.rnn_layers.temporal_softmax_loss).

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
    scores = _vocab_scores(h_kept, W_vocab, b_vocab)  # (M, V)
    if weights is None:
        loss, dscores = _softmax_loss(scores, y[keep])
    else:
        loss, dscores = weighted_softmax_loss(scores, y[keep], np.asarray(weights)[keep])
    loss /= N
    dscores /= h.dtype.type(N)
    dh_kept, dW_vocab, db_vocab = _vocab_backward(dscores, h_kept, W_vocab)
    dh = scratch("kept.dh", h.shape, dh_kept.dtype)
    dh.fill(0)
    dh[keep] = dh_kept
    return loss, dh, dW_vocab, db_vocab
