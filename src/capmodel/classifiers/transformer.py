"""CaptioningTransformer: image features -> caption, with a Transformer decoder.

Dimension letters: N minibatch, T caption length (inputs), D image feature dimension,
W model width (= word vector dimension), nh attention heads, F feed-forward inner width,
V vocabulary size, L = max_length positions (in ``attend`` and for regions: L image
regions), C channels of a region (region_dim).

Parameter keys (shapes in brackets):
- W_proj [D, W], b_proj [W]: image feature -> the first memory position
- W_proj_regions [C, W], b_proj_regions [W]: with attention "soft" only, each region ->
  one more memory position ([C + L, W] with num_regions L: its last L rows are the
  learned embeddings of the regions' places)
- W_embed [V, W]: word embeddings
- layers.{i}.{key} for i in 0 .. num_layers-1, with key one of
  capmodel.transformer_layers.LAYER_PARAM_KEYS (self_attn.Wq, ..., cross_attn.Wq, ...,
  ffn.W1, ffn.b1, ffn.W2, ffn.b2, norm1.gamma, ..., norm3.beta)
- W_vocab [W, V], b_vocab [V]: output scores
"""

import numpy as np

from capmodel import decoding
from capmodel import transformer_layers as tl
from capmodel.attention import with_positions
from capmodel.classifiers.inputs import (check_attend_inputs, check_attention, check_captions, check_features,
                                        check_num_regions, check_regions, check_weights)
from capmodel.kernels import words as kw
from capmodel.layers import dropout_mask
from capmodel.setting_spec import Setting
from capmodel.vocab import NULL

FAMILY = "transformer"
DESCRIPTION_KEYS = ("family", "input_dim", "wordvec_dim", "num_heads", "num_layers", "max_length", "hidden_dim",
                    "dropout", "dtype", "word_to_idx")


class CaptioningTransformer:
    """A CaptioningTransformer produces captions from image features with a Transformer decoder.

    The design is CS231n's: the image feature, projected to width W, is a memory of one
    position that every decoder layer cross-attends to; the caption's words are embedded
    to width W and the sinusoidal positional encoding is added; num_layers post-norm
    decoder layers (causal self-attention, cross-attention, feed-forward) follow, and a
    final affine layer gives scores over the V words. The loss is the masked temporal
    softmax loss of CaptioningRNN: summed over time, averaged over N, <NULL> targets
    excluded.

    Weights start as in CS231n (and nanoGPT): normal with std 0.02 for the projections
    and the embedding, zero biases, layer norms at gamma = 1, beta = 0, so every score
    starts near 0 and the initial loss is near log(V) per word.

    With dropout > 0, inverted dropout acts on the embedded words plus positions (as
    CS231n's PositionalEncoding) and on the three residual branches of every layer,
    during loss(training=True) only, never while sampling.

    With attention="soft" the memory has 1 + L positions: the projected global feature,
    then the L regions of the picture ((N, L, C) arrays passed as ``regions=``), each
    projected by W_proj_regions, once per image batch; cross-attention then really
    chooses where to look, and ``attend`` returns where (the last layer's weights).
    """

    # The model interface of capmodel.models: cell_type "transformer", its own settings.
    FAMILY = FAMILY
    CELL_TYPES = ("transformer",)
    SETTINGS = (
        Setting("num_heads", int, 4, "attention heads of the transformer (wordvec_dim must be divisible by it)",
                minimum=1),
        Setting("num_layers", int, 2, "decoder layers of the transformer", minimum=1),
    )
    # Its defaults of common settings: Adam at the recurrent models' 5e-3 is too fast for it,
    # with or without attention (docs/library.md, "Does attention pay on the shapes data?").
    DEFAULTS = {"learning_rate": 2e-3}

    @classmethod
    def from_settings(cls, word_to_idx, input_dim, settings, dtype=np.float32, region_dim=None, num_regions=None):
        """A new model from a training settings dict (capmodel.app.settings.train_settings());
        region_dim, num_regions: the channels C and the number L of the data set's regions
        (needed with attention soft; L kept with the region_positions setting). The
        attention_penalty setting concerns recurrent models only."""
        attention = settings.get("attention", "none")
        return cls(word_to_idx, input_dim=input_dim, wordvec_dim=settings["wordvec_dim"],
                   num_heads=settings["num_heads"], num_layers=settings["num_layers"],
                   hidden_dim=settings["hidden_dim"], dtype=dtype, dropout=settings["dropout"],
                   seed=settings["seed"], attention=attention, region_dim=region_dim if attention != "none" else None,
                   num_regions=num_regions if attention != "none" and settings.get("region_positions") else None)

    def __init__(self, word_to_idx, input_dim=512, wordvec_dim=256, num_heads=4, num_layers=2, max_length=50,
                 hidden_dim=None, dtype=np.float32, dropout=0.0, seed=None, attention="none", region_dim=None,
                 num_regions=None):
        """Construct a new CaptioningTransformer instance.

        Inputs:
        - word_to_idx: A dictionary giving the vocabulary. It contains V entries, and
          maps each string to a unique integer in the range [0, V).
        - input_dim: Dimension D of input image feature vectors.
        - wordvec_dim: Model width W (word vectors, attention and residual stream); it
          must be even and divisible by num_heads.
        - num_heads: Number of attention heads nh.
        - num_layers: Number of decoder layers.
        - max_length: Number of positions L the model can attend over: the longest
          caption input (T <= L) and the most decoding steps.
        - hidden_dim: Inner width F of the feed-forward blocks; None means 4 * W. (The
          workflow's hidden_dim setting, the RNN's H, is passed here for transformers.)
        - dtype: numpy datatype to use; use float32 for training and float64 for
          numeric gradient checking.
        - dropout: Drop probability (0 = off); see the class docstring for where.
        - seed: int or np.random.Generator for the initial weights and dropout masks.
        - attention: 'none' (a memory of one position, the global feature) or 'soft'
          (the global feature and the L regions, see the class docstring).
        - region_dim: Channels C of the regions; required with attention 'soft'.
        - num_regions: L, with attention 'soft': each region also carries its place in
          the grid (capmodel.attention.with_positions; the rows of W_proj_regions that
          read it are learned position embeddings of the memory), and the model takes
          exactly L regions. None: the regions are a set of any size.
        """
        if NULL not in word_to_idx:
            raise ValueError(f"word_to_idx must contain {NULL}")
        if hidden_dim is None:
            hidden_dim = 4 * wordvec_dim
        dims = (("input_dim", input_dim), ("wordvec_dim", wordvec_dim), ("num_heads", num_heads),
                ("num_layers", num_layers), ("max_length", max_length), ("hidden_dim", hidden_dim))
        for name, dim in dims:
            if int(dim) != dim or dim < 1:
                raise ValueError(f"{name} must be a positive integer, got {dim}")
        if wordvec_dim % num_heads or wordvec_dim % 2:
            raise ValueError(f"wordvec_dim must be even and divisible by num_heads={num_heads}, got {wordvec_dim}")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.region_dim = check_attention(attention, region_dim)
        self.num_regions = check_num_regions(num_regions, attention)
        self.attention = attention
        self.dtype = np.dtype(dtype)
        self.dropout = float(dropout)
        self.word_to_idx = dict(word_to_idx)
        self.idx_to_word = {i: w for w, i in word_to_idx.items()}
        self.input_dim, self.wordvec_dim, self.hidden_dim = int(input_dim), int(wordvec_dim), int(hidden_dim)
        self.num_heads, self.num_layers, self.max_length = int(num_heads), int(num_layers), int(max_length)
        self._null = word_to_idx[NULL]
        self.rng = np.random.default_rng(seed)
        self.pe = tl.positional_encoding(self.max_length, self.wordvec_dim, self.dtype)  # (L, W)

        V = len(word_to_idx)
        D, W, F = self.input_dim, self.wordvec_dim, self.hidden_dim
        normal = lambda *shape: 0.02 * self.rng.standard_normal(shape)
        params = {"W_proj": normal(D, W), "b_proj": np.zeros(W), "W_embed": normal(V, W)}
        for i in range(self.num_layers):
            layer = {}
            for block in ("self_attn", "cross_attn"):
                for k in ("q", "k", "v", "o"):
                    layer[f"{block}.W{k}"] = normal(W, W)
                    layer[f"{block}.b{k}"] = np.zeros(W)
            layer.update({"ffn.W1": normal(W, F), "ffn.b1": np.zeros(F), "ffn.W2": normal(F, W), "ffn.b2": np.zeros(W)})
            for n in (1, 2, 3):
                layer[f"norm{n}.gamma"] = np.ones(W)
                layer[f"norm{n}.beta"] = np.zeros(W)
            params.update({f"layers.{i}.{k}": layer[k] for k in tl.LAYER_PARAM_KEYS})
        params.update({"W_vocab": normal(W, V), "b_vocab": np.zeros(V)})
        if attention == "soft":  # drawn after the others, which stay those of a model without attention
            params.update({"W_proj_regions": normal(self.region_dim + (self.num_regions or 0), W), "b_proj_regions": np.zeros(W)})
        self.params = {k: v.astype(self.dtype) for k, v in params.items()}

    # ------------------------------------------------------------ description

    @property
    def uses_regions(self):
        """True when the model attends over image regions (loss, decoder and sample need them)."""
        return self.attention == "soft"

    def describe(self):
        """A JSON-able description, enough to rebuild the model with from_description."""
        desc = {
            "family": FAMILY,
            "input_dim": self.input_dim,
            "wordvec_dim": self.wordvec_dim,
            "num_heads": self.num_heads,
            "num_layers": self.num_layers,
            "max_length": self.max_length,
            "hidden_dim": self.hidden_dim,
            "dropout": self.dropout,
            "dtype": self.dtype.name,
            "word_to_idx": dict(self.word_to_idx),
        }
        if self.uses_regions:  # a model without attention is described as before attention existed
            desc.update({"attention": self.attention, "region_dim": self.region_dim})
            if self.num_regions is not None:
                desc["num_regions"] = self.num_regions
        return desc

    @classmethod
    def from_description(cls, desc):
        """Rebuild an untrained model (seed 0) of the shapes that describe() recorded."""
        missing = [k for k in DESCRIPTION_KEYS if k not in desc]
        if missing:
            raise ValueError(f"model description lacks {', '.join(missing)}")
        if desc["family"] != FAMILY:
            raise ValueError(f'model description is of family "{desc["family"]}", not "{FAMILY}"')
        return cls({w: int(i) for w, i in desc["word_to_idx"].items()}, input_dim=desc["input_dim"],
                   wordvec_dim=desc["wordvec_dim"], num_heads=desc["num_heads"], num_layers=desc["num_layers"],
                   max_length=desc["max_length"], hidden_dim=desc["hidden_dim"], dtype=np.dtype(desc["dtype"]),
                   dropout=desc["dropout"], seed=0, attention=desc.get("attention", "none"),
                   region_dim=desc.get("region_dim"), num_regions=desc.get("num_regions"))

    # ------------------------------------------------------------------ checks

    def check_features(self, features):
        """features as an array of this model's dtype, or a ValueError naming the bad shape."""
        return check_features(features, self.input_dim, self.dtype)

    def _check_captions(self, captions, N):
        return check_captions(captions, N, len(self.word_to_idx), self.max_length)

    def check_regions(self, regions, N):
        """regions (N, L, C) as an array of this model's dtype, None for a model without
        attention; a ValueError naming the shape or what is missing otherwise."""
        return check_regions(regions, N, self.region_dim, self.dtype, self.uses_regions, self.num_regions)

    def _placed(self, regions):
        """Checked regions as the memory reads them: with their places appended
        (with_positions) when the model knows its grid."""
        return regions if regions is None or self.num_regions is None else with_positions(regions)

    def _memory(self, features, regions):
        """The memory the decoder layers cross-attend to: the projected features, then the
        projected regions (with attention), of shape (N, 1 + L, W) (L = 0 without)."""
        p = self.params
        memory = (features @ p["W_proj"] + p["b_proj"])[:, None]  # (N, 1, W)
        if regions is None:
            return memory
        projected = regions @ p["W_proj_regions"] + p["b_proj_regions"]  # (N, L, W), once per batch
        return np.concatenate([memory, projected], axis=1)

    def _layer_params(self, i):
        prefix = f"layers.{i}."
        return {k: self.params[prefix + k] for k in tl.LAYER_PARAM_KEYS}

    # -------------------------------------------------------------------- loss

    def loss(self, features, captions, dropout_rng=None, training=True, weights=None, regions=None):
        """Compute training-time loss for the Transformer.

        Inputs:
        - features: Input image features, of shape (N, D)
        - captions: Ground-truth captions; an integer array of shape (N, T + 1) where
          each element is in the range 0 <= y[i, t] < V and T <= max_length
        - dropout_rng: Generator for the dropout masks (default: the model's own); pass
          a freshly seeded one to get the same masks on every call.
        - training: False turns dropout off (validation loss).
        - weights: Optional weight of each caption, of shape (N,): the loss is then
          sum_i weights[i] * (loss of caption i) / N (self-critical training passes
          advantages; capmodel.scst).
        - regions: Region features of shape (N, L, C), for a model with attention only.

        Returns a tuple of:
        - loss: Scalar loss
        - grads: Dictionary of gradients parallel to self.params
        """
        features = self.check_features(features)
        captions = self._check_captions(captions, features.shape[0])
        weights = check_weights(weights, features.shape[0], self.dtype)
        regions = self._placed(self.check_regions(regions, features.shape[0]))
        p = self.params
        rng = self.rng if dropout_rng is None else dropout_rng
        drop = self.dropout if training else 0.0

        # Position t sees words 0 .. t of the input and predicts word t + 1.
        captions_in = captions[:, :-1]
        captions_out = captions[:, 1:]
        N, T = captions_in.shape
        memory = self._memory(features, regions)  # (N, 1 + L, W)
        x, embed_cache = kw.word_embedding_forward(captions_in, p["W_embed"])  # (N, T, W)
        x, _ = tl.positional_encoding_forward(x, self.pe)
        x_mask = dropout_mask(x.shape, drop, rng, self.dtype)
        if x_mask is not None:
            x *= x_mask
        causal = np.tril(np.ones((T, T), dtype=bool))
        layer_caches = []
        for i in range(self.num_layers):
            x, cache = tl.decoder_layer_forward(x, memory, self._layer_params(i), self.num_heads, causal, drop, rng)
            layer_caches.append(cache)

        # <NULL> targets add neither loss nor gradient: only the K kept positions are scored.
        W = self.wordvec_dim
        keep = np.flatnonzero(captions_out.reshape(N * T) != self._null)  # (K,)
        grads = {}
        loss, dx, grads["W_vocab"], grads["b_vocab"] = kw.kept_rows_softmax_loss(
            x.reshape(N * T, W), captions_out.reshape(N * T), keep, p["W_vocab"], p["b_vocab"], N,
            None if weights is None else np.repeat(weights, T))
        dx = dx.reshape(N, T, W)
        dmemory = np.zeros_like(memory)
        for i in reversed(range(self.num_layers)):
            dx, dmem, dlayer = tl.decoder_layer_backward(dx, layer_caches[i])
            dmemory += dmem
            grads.update({f"layers.{i}.{k}": v for k, v in dlayer.items()})
        if x_mask is not None:
            dx *= x_mask
        dx = tl.positional_encoding_backward(dx, None)
        grads["W_embed"] = kw.word_embedding_backward(dx, embed_cache)
        if regions is not None:
            dregions = dmemory[:, 1:].reshape(-1, W)  # (N * L, W)
            grads["W_proj_regions"] = regions.reshape(len(dregions), -1).T @ dregions
            grads["b_proj_regions"] = dregions.sum(axis=0)
        dmemory = dmemory[:, 0]  # (N, W)
        grads["W_proj"] = features.T @ dmemory
        grads["b_proj"] = dmemory.sum(axis=0)
        return loss, grads

    def attend(self, features, captions, regions):
        """The attention weights each word of the given captions puts on the regions.

        The captions are read teacher-forced, as in the loss (no dropout). The weights are
        the last layer's cross-attention, averaged over the heads; the global feature's
        memory position is dropped and the rest renormalised to sum to 1.

        Inputs:
        - features: Input image features, of shape (N, D)
        - captions: Captions with <START>, an integer array of shape (N, T + 1)
        - regions: Region features, of shape (N, L, C)

        Returns:
        - alphas: Attention weights, of shape (N, T, L); each row sums to 1
        """
        features, captions, regions = check_attend_inputs(self, features, captions, regions)
        regions = self._placed(regions)
        x = self.params["W_embed"][captions[:, :-1]]  # (N, T, W)
        x, _ = tl.positional_encoding_forward(x, self.pe)
        memory = self._memory(features, regions)
        T = x.shape[1]
        causal = np.tril(np.ones((T, T), dtype=bool))
        for i in range(self.num_layers):
            x, cache = tl.decoder_layer_forward(x, memory, self._layer_params(i), self.num_heads, causal)
        probs = tl.cross_attention_weights(cache).mean(axis=1)[:, :, 1:]  # (N, T, L), the global one dropped
        return probs / probs.sum(axis=2, keepdims=True)

    # ---------------------------------------------------------------- decoding

    def decoder(self, features, regions=None):
        """Start decoding: return the initial state and a step function.

        The state is a tuple of 4 arrays per layer, each with the row M as first axis:
        the cross-attention keys and values of the memory (with attention, the global
        feature and the regions), of shape (M, 1 + L, W), computed once here, and the self-attention keys and values of the positions decoded so
        far, of shape (M, t, W), t = 0 at the start. Decoders may repeat, reorder and
        concatenate rows. The step function maps (state, word ids of shape (M,)) to
        (next state, scores of shape (M, V)): it runs position t only, attending to the
        cached keys and values, and equals row t of the full forward pass.
        """
        features = self.check_features(features)
        regions = self._placed(self.check_regions(regions, features.shape[0]))
        p = self.params
        memory = self._memory(features, regions)  # (N, 1 + L, W)
        layers = [self._layer_params(i) for i in range(self.num_layers)]
        N, W = len(features), self.wordvec_dim
        state = []
        for lp in layers:
            empty = np.zeros((N, 0, W), dtype=self.dtype)
            state.extend((*tl.memory_keys_values(memory, lp), empty, empty.copy()))
        W_embed, W_vocab, b_vocab, pe = p["W_embed"], p["W_vocab"], p["b_vocab"], self.pe
        nh, L = self.num_heads, self.max_length

        def step(state, words):
            t = state[2].shape[1]
            if t >= L:
                raise ValueError(f"cannot decode position {t + 1}: the model has max_length={L} positions")
            x = W_embed[words][:, None]  # (M, 1, W)
            x += pe[t]
            next_state = []
            for i, lp in enumerate(layers):
                mem_k, mem_v, self_k, self_v = state[4 * i : 4 * i + 4]
                x, next_k, next_v = tl.decoder_layer_step(x, self_k, self_v, mem_k, mem_v, lp, nh)
                next_state.extend((mem_k, mem_v, next_k, next_v))
            scores = x[:, 0] @ W_vocab  # (M, V)
            scores += b_vocab
            return tuple(next_state), scores

        return tuple(state), step

    def sample(self, features, max_length=30, method="greedy", regions=None, **options):
        """Run a test-time forward pass for the model, sampling captions for features.

        The first input word is <START>; each step runs one new position of the decoder
        against the cached keys and values of the earlier ones, scores all vocab words
        and chooses the next word. Once a caption has produced <END>, the rest of its row
        is <NULL>; <START> and <NULL> are never chosen.

        Inputs:
        - features: Array of input image features of shape (N, D).
        - max_length: Maximum length T of generated captions, at most the model's
          max_length.
        - method: 'greedy' (the default, as CS231n), 'beam' or 'temperature'; see
          capmodel.decoding for their options (beam_size, length_norm, temperature, rng).
        - regions: Region features of shape (N, L, C), for a model with attention only.

        Returns:
        - captions: Array of shape (N, max_length) giving sampled captions, where each
          element is an integer in the range [0, V). The first element of captions
          should be the first sampled word, not the <START> token.
        """
        if max_length > self.max_length:
            raise ValueError(
                f"cannot sample captions of max_length={max_length}: "
                f"the model has max_length={self.max_length} positions"
            )
        if regions is not None:  # given to the decoders only when there are any
            options["regions"] = regions
        return decoding.decode(self, features, max_length=max_length, method=method, **options)
