"""CaptioningRNN: image features -> caption, with a vanilla RNN, LSTM or GRU decoder.

Dimension letters: N minibatch, T caption length (inputs), D image feature dimension,
W word vector dimension, H hidden dimension, V vocabulary size.
"""

import contextlib
from dataclasses import dataclass
from typing import Callable

import numpy as np

from capmodel import decoding
from capmodel.classifiers.inputs import check_captions, check_features, check_weights
from capmodel.kernels import recurrent as kr
from capmodel.kernels import words as kw
from capmodel.kernels.buffers import Buffers
from capmodel.layers import dropout_mask
from capmodel.vocab import END, NULL, START


def _rnn_decode(xa, state, Wh):
    return (kr.rnn_core_forward(xa, state[0], Wh),)


def _lstm_decode(xa, state, Wh):
    return kr.lstm_core_forward(xa, state[0], state[1], Wh)[:2]


def _gru_decode(xa, state, Wh):
    return kr.gru_core_forward(xa, state[0], Wh)[:1]


@dataclass(frozen=True)
class Cell:
    """One recurrent cell, registered once: its layers and how decoding steps it.

    - packed_forward / packed_backward: the packed sequence functions the loss uses
    - gates: gates per hidden unit k (Wx is (W, kH))
    - state_size: arrays in the decoding state ((h,) or (h, c))
    - decode: (xa, state, Wh) -> next state, where xa = x @ Wx + b is precomputed
    """

    packed_forward: Callable
    packed_backward: Callable
    gates: int
    state_size: int
    decode: Callable


CELLS = {
    "rnn": Cell(packed_forward=kr.rnn_packed_forward, packed_backward=kr.rnn_packed_backward, gates=1, state_size=1,
                decode=_rnn_decode),
    "lstm": Cell(packed_forward=kr.lstm_packed_forward, packed_backward=kr.lstm_packed_backward, gates=4,
                 state_size=2, decode=_lstm_decode),
    "gru": Cell(packed_forward=kr.gru_packed_forward, packed_backward=kr.gru_packed_backward, gates=3, state_size=1,
                decode=_gru_decode),
}


class _Packing:
    """The packed order of a minibatch (see capmodel.kernels.recurrent._Steps): the work of the loss.

    A caption's last scored position (its last non-<NULL> target) ends its sequence:
    the states after it change neither the loss nor a gradient, so they are never
    computed. Captions are sorted longest first (stable, so equal lengths keep their
    order); order lists those with at least one scored position.
    """

    def __init__(self, scored):
        T, N = scored.shape  # (T, N) booleans
        lengths = np.where(scored.any(axis=0), T - np.argmax(scored[::-1], axis=0), 0)  # (N,)
        order = np.argsort(-lengths, kind="stable")
        self.order = order[: np.count_nonzero(lengths)]
        self.sizes = tuple(int(n) for n in np.count_nonzero(lengths[:, None] > np.arange(lengths.max(initial=0)),
                                                             axis=0))
        self._t = np.repeat(np.arange(len(self.sizes)), self.sizes)  # (P,) timestep of each row
        self._n = np.concatenate([self.order[:n] for n in self.sizes] or [np.zeros(0, np.int64)])  # caption

    def gather(self, a):
        """The packed rows of a time-major (T, N, ...) array: shape (P, ...)."""
        return a[self._t, self._n]


class CaptioningRNN:
    """A CaptioningRNN produces captions from image features using a recurrent network.

    It implements the model interface of capmodel.models (family "rnn", cell types rnn,
    lstm and gru).

    The RNN receives input vectors of size D, has a vocab size of V, works on sequences
    of length T, has an RNN hidden dimension of H, uses word vectors of dimension W, and
    operates on minibatches of size N. The image features, projected to H, are the
    initial hidden state; the caption shifted by one word is the input sequence.

    Note that we don't use any regularization for the CaptioningRNN unless dropout > 0,
    which applies inverted dropout to the embedded words and to the hidden states during
    loss() only, never while sampling.
    """

    FAMILY = "rnn"
    CELL_TYPES = tuple(CELLS)
    SETTINGS = ()  # wordvec_dim, hidden_dim and dropout are common training settings

    def __init__(self, word_to_idx, input_dim=512, wordvec_dim=128, hidden_dim=128,
                 cell_type="rnn", dtype=np.float32, dropout=0.0, seed=None):
        """Construct a new CaptioningRNN instance.

        Inputs:
        - word_to_idx: A dictionary giving the vocabulary. It contains V entries, and
          maps each string to a unique integer in the range [0, V).
        - input_dim: Dimension D of input image feature vectors.
        - wordvec_dim: Dimension W of word vectors.
        - hidden_dim: Dimension H for the hidden state of the RNN.
        - cell_type: What type of RNN to use; either 'rnn', 'lstm' or 'gru'.
        - dtype: numpy datatype to use; use float32 for training and float64 for
          numeric gradient checking.
        - dropout: Drop probability for embedded words and hidden states (0 = off).
        - seed: int or np.random.Generator for the initial weights and dropout masks.
        """
        if cell_type not in CELLS:
            raise ValueError(f'Invalid cell_type "{cell_type}"; choose one of {sorted(CELLS)}')
        if NULL not in word_to_idx:
            raise ValueError(f"word_to_idx must contain {NULL}")
        V = len(word_to_idx)
        for name, dim in (("input_dim", input_dim), ("wordvec_dim", wordvec_dim), ("hidden_dim", hidden_dim)):
            if int(dim) != dim or dim < 1:
                raise ValueError(f"{name} must be a positive integer, got {dim}")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.cell_type = cell_type
        self.dtype = np.dtype(dtype)
        self.dropout = float(dropout)
        self.word_to_idx = dict(word_to_idx)
        self.idx_to_word = {i: w for w, i in word_to_idx.items()}
        self.input_dim, self.wordvec_dim, self.hidden_dim = int(input_dim), int(wordvec_dim), int(hidden_dim)
        self._null = word_to_idx[NULL]
        self._start = word_to_idx.get(START, None)
        self._end = word_to_idx.get(END, None)
        self.rng = np.random.default_rng(seed)
        self.buffers = Buffers()  # the loss's temporaries, reused by the next call

        k = CELLS[cell_type].gates
        D, W, H = self.input_dim, self.wordvec_dim, self.hidden_dim
        r = self.rng
        self.params = {
            "W_proj": r.standard_normal((D, H)) / np.sqrt(D),
            "b_proj": np.zeros(H),
            "W_embed": r.standard_normal((V, W)) / 100,
            "Wx": r.standard_normal((W, k * H)) / np.sqrt(W),
            "Wh": r.standard_normal((H, k * H)) / np.sqrt(H),
            "b": np.zeros(k * H),
            "W_vocab": r.standard_normal((H, V)) / np.sqrt(H),
            "b_vocab": np.zeros(V),
        }
        for key, value in self.params.items():
            self.params[key] = value.astype(self.dtype)

    # ------------------------------------------------------- model interface

    @classmethod
    def from_settings(cls, word_to_idx, input_dim, settings, dtype=np.float32):
        """A new model from a training settings dict (capmodel.app.settings.train_settings())."""
        return cls(word_to_idx, input_dim=input_dim, wordvec_dim=settings["wordvec_dim"],
                   hidden_dim=settings["hidden_dim"], cell_type=settings["cell_type"], dtype=dtype,
                   dropout=settings["dropout"], seed=settings["seed"])

    def describe(self):
        """JSON-able description that rebuilds this model's shapes (from_description)."""
        return {"family": self.FAMILY, "cell_type": self.cell_type, "input_dim": self.input_dim,
                "wordvec_dim": self.wordvec_dim, "hidden_dim": self.hidden_dim, "dropout": self.dropout,
                "dtype": self.dtype.name, "word_to_idx": self.word_to_idx}

    @classmethod
    def from_description(cls, desc):
        """A model with the shapes of describe()'s dict (weights freshly initialised)."""
        return cls(desc["word_to_idx"], input_dim=desc["input_dim"], wordvec_dim=desc["wordvec_dim"],
                   hidden_dim=desc["hidden_dim"], cell_type=desc["cell_type"], dtype=np.dtype(desc["dtype"]),
                   dropout=desc.get("dropout", 0.0), seed=0)

    # ------------------------------------------------------------------ checks

    def check_features(self, features):
        """features as an array of this model's dtype, or a ValueError naming the bad shape."""
        return check_features(features, self.params["W_proj"].shape[0], self.dtype)

    def _check_captions(self, captions, N):
        return check_captions(captions, N, self.params["W_embed"].shape[0])

    # -------------------------------------------------------------------- loss

    def loss(self, features, captions, dropout_rng=None, training=True, weights=None):
        """Compute training-time loss for the RNN.

        We input image features and ground-truth captions for those images, and use an
        RNN (or LSTM, or GRU) to compute loss and gradients on all parameters.

        Inputs:
        - features: Input image features, of shape (N, D)
        - captions: Ground-truth captions; an integer array of shape (N, T + 1) where
          each element is in the range 0 <= y[i, t] < V
        - dropout_rng: Generator for the dropout masks (default: the model's own); pass
          a freshly seeded one to get the same masks on every call.
        - training: False switches dropout off (validation) and leaves the model's
          random stream untouched.
        - weights: Optional weight of each caption, of shape (N,): the loss is then
          sum_i weights[i] * (loss of caption i) / N (self-critical training passes
          advantages; capmodel.scst).

        Returns a tuple of:
        - loss: Scalar loss
        - grads: Dictionary of gradients parallel to self.params (new arrays each call;
          only internal temporaries of training calls are reused, see capmodel.kernels.buffers)
        """
        # Validation batches differ from training ones and come once an epoch: they get
        # fresh arrays instead of growing the training step's scratch memory.
        with self.buffers.active() if training else contextlib.nullcontext():
            return self._loss(features, captions, dropout_rng, training, weights)

    def _loss(self, features, captions, dropout_rng, training, weights):
        features = self.check_features(features)
        captions = self._check_captions(captions, features.shape[0])
        weights = check_weights(weights, features.shape[0], self.dtype)
        p = self.params
        cell = CELLS[self.cell_type]
        rng = self.rng if dropout_rng is None else dropout_rng
        dropout = self.dropout if training else 0.0

        # The input is everything but the last word and the target everything but the
        # first, so the RNN predicts word t + 1 from words up to t.
        captions_in = captions[:, :-1].T  # (T, N)
        captions_out = captions[:, 1:].T
        T, N = captions_in.shape
        H = self.hidden_dim
        packing = _Packing(captions_out != self._null)
        words_in = packing.gather(captions_in)  # (P,)
        words_out = packing.gather(captions_out)

        h0 = features @ p["W_proj"] + p["b_proj"]  # (N, H)
        x, embed_cache = kw.word_embedding_forward(words_in, p["W_embed"])  # (P, W)
        # Masks are drawn for every (N, T) position, so a seed gives the same masks
        # whatever the captions' lengths.
        x_mask = dropout_mask((N, T, self.wordvec_dim), dropout, rng, self.dtype)
        if x_mask is not None:
            x_mask = packing.gather(x_mask.swapaxes(0, 1))
            x = x * x_mask
        h, cell_cache = cell.packed_forward(x, h0[packing.order], p["Wx"], p["Wh"], p["b"], packing.sizes)  # (P, H)
        h_mask = dropout_mask((N, T, H), dropout, rng, self.dtype)
        if h_mask is not None:
            h_mask = packing.gather(h_mask.swapaxes(0, 1))
            h = h * h_mask
        # <NULL> targets add neither loss nor gradient: only the kept rows are scored.
        keep = np.flatnonzero(words_out != self._null)  # (M,)
        grads = {}
        row_weights = None if weights is None else packing.gather(np.broadcast_to(weights, (T, N)))
        loss, dh, grads["W_vocab"], grads["b_vocab"] = kw.kept_rows_softmax_loss(
            h, words_out, keep, p["W_vocab"], p["b_vocab"], N, row_weights)
        if h_mask is not None:
            dh *= h_mask
        dx, dh0_running, grads["Wx"], grads["Wh"], grads["b"] = cell.packed_backward(dh, cell_cache)
        if x_mask is not None:
            dx = dx * x_mask
        grads["W_embed"] = kw.word_embedding_backward(dx, embed_cache)
        dh0 = np.zeros_like(h0)
        dh0[packing.order] = dh0_running
        grads["W_proj"] = features.T @ dh0
        grads["b_proj"] = dh0.sum(axis=0)
        return loss, grads

    # ---------------------------------------------------------------- decoding

    def decoder(self, features):
        """Start decoding: return the initial state and a step function.

        The step function maps (state, word ids of shape (M,)) to (next state, scores of
        shape (M, V)); a state is a tuple of (M, H) arrays that decoders may reorder by
        row. Embedding and input projection are folded into one (V, kH) table, so a step
        costs one gather instead of two matmuls.
        """
        features = self.check_features(features)
        p = self.params
        h0 = features @ p["W_proj"] + p["b_proj"]  # (N, H)
        table = p["W_embed"] @ p["Wx"] + p["b"]  # (V, kH)
        Wh, W_vocab, b_vocab = p["Wh"], p["W_vocab"], p["b_vocab"]
        cell = CELLS[self.cell_type]
        state = (h0,) + tuple(np.zeros_like(h0) for _ in range(cell.state_size - 1))

        def step(state, words):
            state = cell.decode(table[words], state, Wh)  # table[words]: (M, kH)
            scores = state[0] @ W_vocab  # (M, V)
            scores += b_vocab
            return state, scores

        return state, step

    def sample(self, features, max_length=30, method="greedy", **options):
        """Run a test-time forward pass for the model, sampling captions for features.

        At each timestep we embed the current word, pass it and the previous hidden state
        to the RNN to get the next hidden state, use the hidden state to get scores for
        all vocab words, and choose the next word. The first input word is <START>. Once
        a caption has produced <END>, the rest of its row is <NULL>; <START> and <NULL>
        are never chosen.

        Inputs:
        - features: Array of input image features of shape (N, D).
        - max_length: Maximum length T of generated captions.
        - method: 'greedy' (the default, as CS231n), 'beam' or 'temperature'; see
          capmodel.decoding for their options (beam_size, length_norm, temperature, rng).

        Returns:
        - captions: Array of shape (N, max_length) giving sampled captions, where each
          element is an integer in the range [0, V). The first element of captions
          should be the first sampled word, not the <START> token.
        """
        return decoding.decode(self, features, max_length=max_length, method=method, **options)
