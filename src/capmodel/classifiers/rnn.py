"""CaptioningRNN: image features -> caption, with a vanilla RNN, LSTM or GRU decoder.

Dimension letters: N minibatch, T caption length (inputs), D image feature dimension,
W word vector dimension, H hidden dimension, V vocabulary size.
"""

import numpy as np

from capmodel import rnn_layers as rl
from capmodel.layers import dropout_mask
from capmodel.vocab import END, NULL, START

# cell type -> (sequence forward, sequence backward, gates per hidden unit)
CELLS = {
    "rnn": (rl.rnn_forward, rl.rnn_backward, 1),
    "lstm": (rl.lstm_forward, rl.lstm_backward, 4),
    "gru": (rl.gru_forward, rl.gru_backward, 3),
}
PARAM_NAMES = ("W_proj", "b_proj", "W_embed", "Wx", "Wh", "b", "W_vocab", "b_vocab")


class CaptioningRNN:
    """A CaptioningRNN produces captions from image features using a recurrent network.

    The RNN receives input vectors of size D, has a vocab size of V, works on sequences
    of length T, has an RNN hidden dimension of H, uses word vectors of dimension W, and
    operates on minibatches of size N. The image features, projected to H, are the
    initial hidden state; the caption shifted by one word is the input sequence.

    Note that we don't use any regularization for the CaptioningRNN unless dropout > 0,
    which applies inverted dropout to the embedded words and to the hidden states during
    loss() only, never while sampling.
    """

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

        k = CELLS[cell_type][2]
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

    # ------------------------------------------------------------------ checks

    def _check_features(self, features):
        features = np.asarray(features)
        if features.ndim != 2 or features.shape[1] != self.params["W_proj"].shape[0]:
            raise ValueError(
                f"features must have shape (N, {self.params['W_proj'].shape[0]}), got {features.shape}"
            )
        return features.astype(self.dtype, copy=False)

    def _check_captions(self, captions, N):
        captions = np.asarray(captions)
        V = self.params["W_embed"].shape[0]
        if captions.ndim != 2 or captions.shape[0] != N or captions.shape[1] < 2:
            raise ValueError(f"captions must have shape (N={N}, T+1) with T >= 1, got {captions.shape}")
        if not np.issubdtype(captions.dtype, np.integer):
            raise ValueError(f"captions must be integer word ids, got dtype {captions.dtype}")
        if captions.min() < 0 or captions.max() >= V:
            raise ValueError(
                f"captions contain word ids outside the vocabulary [0, {V}): "
                f"min {captions.min()}, max {captions.max()}"
            )
        return captions

    # -------------------------------------------------------------------- loss

    def loss(self, features, captions, dropout_rng=None):
        """Compute training-time loss for the RNN.

        We input image features and ground-truth captions for those images, and use an
        RNN (or LSTM, or GRU) to compute loss and gradients on all parameters.

        Inputs:
        - features: Input image features, of shape (N, D)
        - captions: Ground-truth captions; an integer array of shape (N, T + 1) where
          each element is in the range 0 <= y[i, t] < V
        - dropout_rng: Generator for the dropout masks (default: the model's own); pass
          a freshly seeded one to get the same masks on every call.

        Returns a tuple of:
        - loss: Scalar loss
        - grads: Dictionary of gradients parallel to self.params
        """
        features = self._check_features(features)
        captions = self._check_captions(captions, features.shape[0])
        p = self.params
        forward, backward, _ = CELLS[self.cell_type]
        rng = self.rng if dropout_rng is None else dropout_rng

        # The input is everything but the last word and the target everything but the
        # first, so the RNN predicts word t + 1 from words up to t. Everything below is
        # time-major, (T, N, ...): the cell's buffers are, so no array is transposed.
        captions_in = captions[:, :-1].T  # (T, N)
        captions_out = captions[:, 1:].T
        T, N = captions_in.shape
        H = self.hidden_dim

        h0 = features @ p["W_proj"] + p["b_proj"]  # (N, H)
        xt, embed_cache = rl.word_embedding_forward(captions_in, p["W_embed"])  # (T, N, W)
        # Masks are drawn as (N, T, ...) so that a seed gives the same masks as before.
        x_mask = dropout_mask((N, T, self.wordvec_dim), self.dropout, rng, self.dtype)
        if x_mask is not None:
            x_mask = x_mask.swapaxes(0, 1)
            xt = xt * x_mask
        h, cell_cache = forward(xt.swapaxes(0, 1), h0, p["Wx"], p["Wh"], p["b"])  # (N, T, H)
        ht = h.swapaxes(0, 1)  # (T, N, H), contiguous
        h_mask = dropout_mask((N, T, H), self.dropout, rng, self.dtype)
        if h_mask is not None:
            h_mask = h_mask.swapaxes(0, 1)
            ht = ht * h_mask
        # <NULL> positions add neither loss nor gradient, so the vocabulary scores are only
        # computed for the M unmasked positions, as one sequence of length M; the loss
        # layer averages over its batch of 1, so divide by N.
        keep = np.flatnonzero(captions_out.reshape(T * N) != self._null)  # (M,)
        h_kept = np.take(ht.reshape(T * N, H), keep, axis=0)[None]  # (1, M, H)
        scores, affine_cache = rl.temporal_affine_forward(h_kept, p["W_vocab"], p["b_vocab"])  # (1, M, V)
        y_kept = captions_out.reshape(T * N)[keep][None]
        loss, dscores = rl.temporal_softmax_loss(scores, y_kept, np.ones(y_kept.shape, dtype=bool))
        loss /= N
        dscores /= self.dtype.type(N)

        grads = {}
        dh_kept, grads["W_vocab"], grads["b_vocab"] = rl.temporal_affine_backward(dscores, affine_cache)
        dht = np.zeros((T * N, H), dtype=dh_kept.dtype)
        dht[keep] = dh_kept[0]
        dht = dht.reshape(T, N, H)
        if h_mask is not None:
            dht *= h_mask
        dx, dh0, grads["Wx"], grads["Wh"], grads["b"] = backward(dht.swapaxes(0, 1), cell_cache)
        dxt = dx.swapaxes(0, 1)  # (T, N, W), contiguous
        if x_mask is not None:
            dxt = dxt * x_mask
        grads["W_embed"] = rl.word_embedding_backward(dxt, embed_cache)
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
        features = self._check_features(features)
        p = self.params
        h0 = features @ p["W_proj"] + p["b_proj"]  # (N, H)
        table = p["W_embed"] @ p["Wx"] + p["b"]  # (V, kH)
        Wh, W_vocab, b_vocab = p["Wh"], p["W_vocab"], p["b_vocab"]
        lstm, gru = self.cell_type == "lstm", self.cell_type == "gru"
        state = (h0, np.zeros_like(h0)) if lstm else (h0,)

        def step(state, words):
            xa = table[words]  # (M, kH)
            if lstm:
                h, c, _, _ = rl.lstm_core_forward(xa, state[0], state[1], Wh)
                state = (h, c)
            elif gru:
                h, _, _ = rl.gru_core_forward(xa, state[0], Wh)
                state = (h,)
            else:
                h = rl.rnn_core_forward(xa, state[0], Wh)
                state = (h,)
            scores = h @ W_vocab  # (M, V)
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
        from capmodel import decoding

        return decoding.decode(self, features, max_length=max_length, method=method, **options)
