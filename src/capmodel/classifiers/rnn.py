"""CaptioningRNN: image features -> caption, with a vanilla RNN, LSTM or GRU decoder,
optionally attending over image regions (Show, Attend and Tell).

Dimension letters: N minibatch, T caption length (inputs), D image feature dimension,
W word vector dimension, H hidden dimension, V vocabulary size, L image regions, C
channels of a region (region_dim), A attention width.
"""

import contextlib
from dataclasses import dataclass
from typing import Callable

import numpy as np

from capmodel import decoding
from capmodel.attention import with_positions
from capmodel.classifiers.inputs import (ATTENTION_PENALTY, check_attend_inputs, check_attention, check_captions,
                                        check_features, check_num_regions, check_regions, check_weights)
from capmodel.kernels import attention as ka
from capmodel.kernels import recurrent as kr
from capmodel.kernels import words as kw
from capmodel.kernels.buffers import Buffers
from capmodel.layers import dropout_mask, sigmoid
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

    With attention="soft" the model also reads the L regions of each picture, (N, L, C)
    arrays passed as ``regions=`` (Show, Attend and Tell, capmodel.attention): at every
    step the hidden state before it scores the regions, their softmax-weighted sum (the
    context), scaled by a gate, is fed with the word vector (the cell input is
    [x_t, context_t]), and the loss gains the doubly stochastic penalty
    attention_penalty * sum_l (1 - sum_t alpha_tl)^2 per caption, the sum over t running
    over the caption's scored positions, divided by N like the word loss. The initial
    hidden state still comes from the global features. The regions are projected once
    per image batch. With num_regions L the regions carry their places in the grid
    (L one-hot channels appended, so the attention layers read C + L channels).
    ``attend`` returns the attention weights of given captions.
    """

    FAMILY = "rnn"
    CELL_TYPES = tuple(CELLS)
    SETTINGS = ()  # wordvec_dim, hidden_dim and dropout are common training settings
    DEFAULTS = {}  # the common settings' defaults (CS231n's learning rate) suit it

    def __init__(self, word_to_idx, input_dim=512, wordvec_dim=128, hidden_dim=128,
                 cell_type="rnn", dtype=np.float32, dropout=0.0, seed=None, attention="none", region_dim=None,
                 attention_dim=None, attention_penalty=ATTENTION_PENALTY, num_regions=None):
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
        - attention: 'none' (the image is the global feature vector only) or 'soft'
          (attention over image regions, see the class docstring).
        - region_dim: Channels C of the regions; required with attention 'soft'.
        - attention_dim: Attention width A (default: hidden_dim).
        - attention_penalty: Weight lambda >= 0 of the doubly stochastic penalty (0: none).
        - num_regions: L, with attention 'soft': each region also carries its place in
          the grid (capmodel.attention.with_positions: L more channels read by learned
          weights), and the model takes exactly L regions. None: the regions are a set
          of any size, their places unknown to the model.
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
        self.region_dim = check_attention(attention, region_dim)
        self.num_regions = check_num_regions(num_regions, attention)
        self.attention = attention
        if attention_dim is None:
            attention_dim = hidden_dim
        if int(attention_dim) != attention_dim or attention_dim < 1:
            raise ValueError(f"attention_dim must be a positive integer, got {attention_dim}")
        if not attention_penalty >= 0:
            raise ValueError(f"attention_penalty must be >= 0, got {attention_penalty}")
        self.attention_dim, self.attention_penalty = int(attention_dim), float(attention_penalty)
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
        if attention == "soft":  # drawn after the others, which stay those of a model without attention
            C, A = self._width, self.attention_dim
            self.params.update({
                "Wc": r.standard_normal((C, k * H)) / np.sqrt(C),
                "att.Wr": r.standard_normal((C, A)) / np.sqrt(C),
                "att.b": np.zeros(A),
                "att.Wh": r.standard_normal((H, A)) / np.sqrt(H),
                "att.w": r.standard_normal(A) / np.sqrt(A),
                "att.Wg": r.standard_normal((H, C)) / np.sqrt(H),
                "att.bg": np.zeros(C),
            })
        for key, value in self.params.items():
            self.params[key] = value.astype(self.dtype)

    # ------------------------------------------------------- model interface

    @classmethod
    def from_settings(cls, word_to_idx, input_dim, settings, dtype=np.float32, region_dim=None, num_regions=None):
        """A new model from a training settings dict (capmodel.app.settings.train_settings());
        region_dim, num_regions: the channels C and the number L of the data set's regions
        (needed with attention soft; L kept with the region_positions setting)."""
        attention = settings.get("attention", "none")
        return cls(word_to_idx, input_dim=input_dim, wordvec_dim=settings["wordvec_dim"],
                   hidden_dim=settings["hidden_dim"], cell_type=settings["cell_type"], dtype=dtype,
                   dropout=settings["dropout"], seed=settings["seed"], attention=attention,
                   region_dim=region_dim if attention != "none" else None,
                   attention_penalty=settings.get("attention_penalty", ATTENTION_PENALTY),
                   num_regions=num_regions if attention != "none" and settings.get("region_positions") else None)

    @property
    def uses_regions(self):
        """True when the model attends over image regions (loss, decoder and sample need them)."""
        return self.attention == "soft"

    @property
    def _width(self):
        """Channels of the regions the attention layers read: C, plus L with positions."""
        return self.region_dim + (self.num_regions or 0)

    def describe(self):
        """JSON-able description that rebuilds this model's shapes (from_description)."""
        desc = {"family": self.FAMILY, "cell_type": self.cell_type, "input_dim": self.input_dim,
                "wordvec_dim": self.wordvec_dim, "hidden_dim": self.hidden_dim, "dropout": self.dropout,
                "dtype": self.dtype.name, "word_to_idx": self.word_to_idx}
        if self.uses_regions:  # a model without attention is described as before attention existed
            desc.update({"attention": self.attention, "region_dim": self.region_dim,
                         "attention_dim": self.attention_dim, "attention_penalty": self.attention_penalty})
            if self.num_regions is not None:
                desc["num_regions"] = self.num_regions
        return desc

    @classmethod
    def from_description(cls, desc):
        """A model with the shapes of describe()'s dict (weights freshly initialised)."""
        return cls(desc["word_to_idx"], input_dim=desc["input_dim"], wordvec_dim=desc["wordvec_dim"],
                   hidden_dim=desc["hidden_dim"], cell_type=desc["cell_type"], dtype=np.dtype(desc["dtype"]),
                   dropout=desc.get("dropout", 0.0), seed=0, attention=desc.get("attention", "none"),
                   region_dim=desc.get("region_dim"), attention_dim=desc.get("attention_dim"),
                   attention_penalty=desc.get("attention_penalty", 1.0), num_regions=desc.get("num_regions"))

    # ------------------------------------------------------------------ checks

    def check_features(self, features):
        """features as an array of this model's dtype, or a ValueError naming the bad shape."""
        return check_features(features, self.params["W_proj"].shape[0], self.dtype)

    def _check_captions(self, captions, N):
        return check_captions(captions, N, self.params["W_embed"].shape[0])

    def check_regions(self, regions, N):
        """regions (N, L, C) as an array of this model's dtype, None for a model without
        attention; a ValueError naming the shape or what is missing otherwise."""
        return check_regions(regions, N, self.region_dim, self.dtype, self.uses_regions, self.num_regions)

    def _placed(self, regions):
        """Checked regions as the attention layers read them: with their places appended
        (with_positions) when the model knows its grid."""
        return regions if regions is None or self.num_regions is None else with_positions(regions)

    # -------------------------------------------------------------------- loss

    def loss(self, features, captions, dropout_rng=None, training=True, weights=None, regions=None):
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
          advantages; capmodel.scst). The attention penalty is not weighted: it
          regularises where the model looks, whatever the caption's reward.
        - regions: Region features of shape (N, L, C), for a model with attention only.

        Returns a tuple of:
        - loss: Scalar loss
        - grads: Dictionary of gradients parallel to self.params (new arrays each call;
          only internal temporaries of training calls are reused, see capmodel.kernels.buffers)
        """
        # Validation batches differ from training ones and come once an epoch: they get
        # fresh arrays instead of growing the training step's scratch memory.
        with self.buffers.active() if training else contextlib.nullcontext():
            return self._loss(features, captions, dropout_rng, training, weights, regions)

    def _loss(self, features, captions, dropout_rng, training, weights, regions):
        features = self.check_features(features)
        captions = self._check_captions(captions, features.shape[0])
        weights = check_weights(weights, features.shape[0], self.dtype)
        regions = self._placed(self.check_regions(regions, features.shape[0]))
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
        if regions is None:
            h, cell_cache = cell.packed_forward(x, h0[packing.order], p["Wx"], p["Wh"], p["b"], packing.sizes)  # (P, H)
        else:
            h, alphas, cell_cache = ka.attention_packed_forward(self.cell_type, x, h0[packing.order],
                                                                regions[packing.order], p, packing.sizes)
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
        if regions is None:
            dx, dh0_running, grads["Wx"], grads["Wh"], grads["b"] = cell.packed_backward(dh, cell_cache)
        else:
            penalty, dalphas = self._penalty(alphas, words_out != self._null, packing.sizes, N)
            loss += penalty
            dx, dh0_running, attention_grads = ka.attention_packed_backward(dh, dalphas, cell_cache)
            grads.update(attention_grads)
        if x_mask is not None:
            dx = dx * x_mask
        grads["W_embed"] = kw.word_embedding_backward(dx, embed_cache)
        dh0 = np.zeros_like(h0)
        dh0[packing.order] = dh0_running
        grads["W_proj"] = features.T @ dh0
        grads["b_proj"] = dh0.sum(axis=0)
        return loss, grads

    def _penalty(self, alphas, scored, sizes, N):
        """The doubly stochastic penalty of packed attention weights and its gradient.

        capmodel.attention.doubly_stochastic_penalty for the packed layout: sequence i
        (in the packed order) sums its alphas (P, L) over its scored rows (scored (P,));
        a caption without a scored position (not packed) adds the constant L.

        Returns a tuple of:
        - loss: Scalar penalty, lambda * sum over the N captions of sum_l gap_l^2, / N
        - dalphas: Gradient of alphas, of shape (P, L), or None when lambda is 0
        """
        lam = self.attention_penalty
        if lam == 0:
            return 0.0, None
        n0, L = (sizes[0] if sizes else 0), alphas.shape[1]
        starts = np.concatenate(([0], np.cumsum(sizes, dtype=np.int64)))
        kept = alphas * scored[:, None]  # (P, L)
        gap = np.ones((n0, L), dtype=alphas.dtype)  # 1 - sum_t alpha_tl, per sequence
        for t, n in enumerate(sizes):
            gap[:n] -= kept[starts[t] : starts[t + 1]]
        loss = lam * (float(np.sum(gap * gap)) + L * (N - n0)) / N
        seq = np.concatenate([np.arange(n) for n in sizes] or [np.zeros(0, np.int64)])  # sequence of each row
        dalphas = gap[seq]
        dalphas *= alphas.dtype.type(-2 * lam / N)
        dalphas *= scored[:, None]
        return loss, dalphas

    # ---------------------------------------------------------------- decoding

    def decoder(self, features, regions=None):
        """Start decoding: return the initial state and a step function.

        The step function maps (state, word ids of shape (M,)) to (next state, scores of
        shape (M, V)); a state is a tuple of arrays whose first axis is the row M, which
        decoders may repeat and reorder: (h,) or (h, c), of shape (M, H), and with
        attention also the regions (M, L, C) and their projection (M, L, A), computed once
        here. Embedding and input projection are folded into one (V, kH) table, so a step
        costs one gather instead of two matmuls.
        """
        features = self.check_features(features)
        regions = self._placed(self.check_regions(regions, features.shape[0]))
        p = self.params
        h0 = features @ p["W_proj"] + p["b_proj"]  # (N, H)
        table = p["W_embed"] @ p["Wx"] + p["b"]  # (V, kH)
        Wh, W_vocab, b_vocab = p["Wh"], p["W_vocab"], p["b_vocab"]
        cell = CELLS[self.cell_type]
        state = (h0,) + tuple(np.zeros_like(h0) for _ in range(cell.state_size - 1))

        if regions is not None:
            return self._attention_decoder(state, regions, table)

        def step(state, words):
            state = cell.decode(table[words], state, Wh)  # table[words]: (M, kH)
            scores = state[0] @ W_vocab  # (M, V)
            scores += b_vocab
            return state, scores

        return state, step

    def _attention_decoder(self, state, regions, table):
        """decoder() of an attention model: the state gains the regions and their projection."""
        p = self.params
        cell = CELLS[self.cell_type]
        k = cell.state_size
        A = self.attention_dim
        proj = regions @ p["att.Wr"] + p["att.b"]  # (N, L, A), once
        Wag = np.concatenate([p["att.Wh"], p["att.Wg"]], axis=1)  # (H, A + C)
        Wh, Wc, W_vocab, b_vocab, bg, w = p["Wh"], p["Wc"], p["W_vocab"], p["b_vocab"], p["att.bg"], p["att.w"]
        L = regions.shape[1]
        work = np.empty((ka.block_rows(L, A, self.dtype.itemsize), L, A), self.dtype)

        def step(state, words):
            h, regions, proj = state[0], state[k], state[k + 1]
            M = len(h)
            hag = h @ Wag  # (M, A + C)
            alpha, context = np.empty((M, L), self.dtype), np.empty((M, self._width), self.dtype)
            ka.attend_rows(proj, hag[:, :A], w, regions, alpha, context, work)
            beta = sigmoid(hag[:, A:] + bg)
            context *= beta
            xa = context @ Wc
            xa += table[words]  # (M, kH)
            next_state = cell.decode(xa, state[:k], Wh)
            scores = next_state[0] @ W_vocab  # (M, V)
            scores += b_vocab
            return next_state + (regions, proj), scores

        return state + (regions, proj), step

    def attend(self, features, captions, regions):
        """The attention weights each word of the given captions puts on the regions.

        The captions are read teacher-forced, as in the loss (no dropout): the weights of
        position t are those the model used to predict word t + 1 from the words up to t.

        Inputs:
        - features: Input image features, of shape (N, D)
        - captions: Captions with <START>, an integer array of shape (N, T + 1)
        - regions: Region features, of shape (N, L, C)

        Returns:
        - alphas: Attention weights, of shape (N, T, L); each row sums to 1
        """
        features, captions, regions = check_attend_inputs(self, features, captions, regions)
        regions = self._placed(regions)
        p = self.params
        N, T = captions.shape[0], captions.shape[1] - 1
        h0 = features @ p["W_proj"] + p["b_proj"]
        x = p["W_embed"][captions[:, :-1].T.reshape(-1)]  # (T * N, W), time-major
        _, alphas, _ = ka.attention_packed_forward(self.cell_type, x, h0, regions, p, (N,) * T)
        return alphas.reshape(T, N, -1).transpose(1, 0, 2).copy()

    def sample(self, features, max_length=30, method="greedy", regions=None, **options):
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
        - regions: Region features of shape (N, L, C), for a model with attention only.

        Returns:
        - captions: Array of shape (N, max_length) giving sampled captions, where each
          element is an integer in the range [0, V). The first element of captions
          should be the first sampled word, not the <START> token.
        """
        if regions is not None:  # given to the decoders only when there are any
            options["regions"] = regions
        return decoding.decode(self, features, max_length=max_length, method=method, **options)
