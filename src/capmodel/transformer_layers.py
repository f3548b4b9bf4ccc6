"""Transformer decoder layers for captioning: sinusoidal positional encoding, layer norm,
multi-head attention, the position-wise feed-forward block, and a post-norm decoder
layer, each with its backward pass, plus the cached one-position step used for decoding.

Dimension letters used throughout: N batch size, T target (caption) length, S source
(memory) length, W model width, nh attention heads, hs = W // nh head size, F inner
width of the feed-forward block, V vocabulary size. M is the number of rows a decoder
steps at once (images times beams).

The decoder layer is post-norm, as "Attention is all you need", CS231n's
TransformerDecoderLayer and PyTorch's nn.TransformerDecoderLayer default (norm_first=False):

    x = norm1(x + dropout(self_attn(x, x, x, causal mask)))
    x = norm2(x + dropout(cross_attn(x, memory, memory)))
    x = norm3(x + dropout(ffn(x)))

Pre-norm trains deep stacks without a learning-rate warm-up, but a captioner has two
or three layers, where post-norm trains as well; keeping the PyTorch default means a
capmodel model is exactly a torch.nn.TransformerDecoder with the same weights, which the
tests check. Dropout sits where PyTorch puts it on the residual branches; PyTorch's two
other dropouts (on the attention probabilities and inside the feed-forward block) are
left out, so one mask per branch is all the backward pass has to keep.

Layer parameters are a dict of arrays with these keys (shapes in brackets):
- self_attn.Wq, self_attn.Wk, self_attn.Wv, self_attn.Wo [W, W] and
  self_attn.bq, self_attn.bk, self_attn.bv, self_attn.bo [W]: causal self-attention
- cross_attn.* with the same eight names: attention over the memory
- ffn.W1 [W, F], ffn.b1 [F], ffn.W2 [F, W], ffn.b2 [W]: the feed-forward block
- norm1.gamma, norm1.beta, norm2.gamma, norm2.beta, norm3.gamma, norm3.beta [W]
Weights multiply from the right (x @ Wq), as everywhere in capmodel; a torch Linear
holds the transpose.

Attention over a memory of one position (the CS231n captioner attends to one projected
image feature) takes a shortcut that is exact: a softmax over one key is 1, so the
output is the projected value at every query and the query and key projections get a
zero gradient. Computing them anyway would only add rounding noise.
"""

import numpy as np

from capmodel.layers import dropout_mask

ATTENTION_KEYS = ("Wq", "bq", "Wk", "bk", "Wv", "bv", "Wo", "bo")
FFN_KEYS = ("W1", "b1", "W2", "b2")
NORM_KEYS = ("gamma", "beta")
LAYER_PARAM_KEYS = (
    tuple(f"self_attn.{k}" for k in ATTENTION_KEYS)
    + tuple(f"cross_attn.{k}" for k in ATTENTION_KEYS)
    + tuple(f"ffn.{k}" for k in FFN_KEYS)
    + tuple(f"norm{i}.{k}" for i in (1, 2, 3) for k in NORM_KEYS)
)


def _linear(x, W, b):
    """x @ W + b over the last axis of x, of shape (..., Din) -> (..., Dout)."""
    out = x.reshape(-1, x.shape[-1]) @ W
    out += b
    return out.reshape(*x.shape[:-1], W.shape[1])


def _linear_backward(dout, x, W):
    """Gradients (dx, dW, db) of out = x @ W + b, for x of shape (..., Din)."""
    d2 = dout.reshape(-1, dout.shape[-1])
    x2 = x.reshape(-1, x.shape[-1])
    return (d2 @ W.T).reshape(x.shape), x2.T @ d2, d2.sum(axis=0)


def _split_heads(x, num_heads):
    """(N, T, W) -> (N, nh, T, hs), a view."""
    N, T, W = x.shape
    return x.reshape(N, T, num_heads, W // num_heads).transpose(0, 2, 1, 3)


def _merge_heads(x):
    """(N, nh, T, hs) -> (N, T, W), a copy in row-major order."""
    N, nh, T, hs = x.shape
    return x.transpose(0, 2, 1, 3).reshape(N, T, nh * hs)


# ----------------------------------------------------------- positional encoding


def positional_encoding(max_len, W, dtype=np.float32):
    """Sinusoidal positional encoding table of "Attention is all you need".

    Row p holds sin(p / 10000^(2i/W)) in column 2i and cos(p / 10000^(2i/W)) in
    column 2i + 1, as CS231n's PositionalEncoding; it is computed in float64 and then
    cast, so float32 and float64 tables agree to float32 rounding.

    Inputs:
    - max_len: Number of positions L
    - W: Model width, even
    - dtype: dtype of the table

    Returns:
    - table: Array of shape (L, W)
    """
    if int(W) != W or W < 2 or W % 2:
        raise ValueError(f"positional_encoding: W must be a positive even integer, got {W}")
    if int(max_len) != max_len or max_len < 1:
        raise ValueError(f"positional_encoding: max_len must be a positive integer, got {max_len}")
    pos = np.arange(max_len)[:, None]
    angle = pos * 10000.0 ** (-np.arange(0, W, 2) / W)  # (L, W/2)
    table = np.empty((max_len, W))
    table[:, 0::2] = np.sin(angle)
    table[:, 1::2] = np.cos(angle)
    return table.astype(dtype)


def positional_encoding_forward(x, table):
    """Add the encodings of positions 0 .. T-1 to a sequence.

    Inputs:
    - x: Input sequence, of shape (N, T, W)
    - table: Positional encoding table, of shape (L, W) with L >= T

    Returns a tuple of:
    - out: x + table[:T], of shape (N, T, W)
    - cache: Values needed for the backward pass
    """
    if x.ndim != 3 or table.ndim != 2 or x.shape[2] != table.shape[1]:
        raise ValueError(
            f"positional_encoding_forward: need x (N, T, W) and table (L, W), got {x.shape} and {table.shape}"
        )
    if x.shape[1] > table.shape[0]:
        raise ValueError(
            f"positional_encoding_forward: sequence of {x.shape[1]} positions is longer than the "
            f"table's max_length={table.shape[0]}"
        )
    return x + table[: x.shape[1]], None


def positional_encoding_backward(dout, cache):
    """Backward pass of :func:`positional_encoding_forward`.

    The table is a constant, so only the input gets a gradient.

    Inputs:
    - dout: Upstream gradients, of shape (N, T, W)
    - cache: Cache from the forward pass

    Returns:
    - dx: Gradient of x, of shape (N, T, W)
    """
    return dout


# -------------------------------------------------------------------- layer norm


def layer_norm_forward(x, gamma, beta, eps=1e-5):
    """Layer normalisation over the last axis.

    Each vector x[..., :] of width W is shifted to mean 0 and scaled to variance 1 (the
    biased variance, as PyTorch's nn.LayerNorm), then multiplied by gamma and shifted by
    beta.

    Inputs:
    - x: Input data, of shape (..., W), usually (N, T, W)
    - gamma: Scale, of shape (W,)
    - beta: Shift, of shape (W,)
    - eps: Added to the variance before the square root

    Returns a tuple of:
    - out: Output, of the shape of x
    - cache: Values needed for the backward pass
    """
    if gamma.shape != (x.shape[-1],) or beta.shape != (x.shape[-1],):
        raise ValueError(
            f"layer_norm_forward: gamma and beta must have shape {(x.shape[-1],)}, got {gamma.shape} and {beta.shape}"
        )
    xhat = x - x.mean(axis=-1, keepdims=True)
    var = np.mean(xhat * xhat, axis=-1, keepdims=True)
    var += x.dtype.type(eps)
    rstd = np.sqrt(var, out=var)
    np.reciprocal(rstd, out=rstd)  # (..., 1)
    xhat *= rstd
    out = xhat * gamma
    out += beta
    return out, (xhat, rstd, gamma)


def layer_norm_backward(dout, cache):
    """Backward pass of :func:`layer_norm_forward`.

    With xhat the normalised input and g = dout * gamma, the input gradient is
    rstd * (g - mean(g) - xhat * mean(g * xhat)), the means taken over the last axis.

    Inputs:
    - dout: Upstream gradients, of shape (..., W)
    - cache: Values from the forward pass

    Returns a tuple of:
    - dx: Gradient of x, of shape (..., W)
    - dgamma: Gradient of gamma, of shape (W,)
    - dbeta: Gradient of beta, of shape (W,)
    """
    xhat, rstd, gamma = cache
    W = xhat.shape[-1]
    d2 = dout.reshape(-1, W)
    dgamma = np.einsum("ij,ij->j", d2, xhat.reshape(-1, W))
    dbeta = d2.sum(axis=0)
    g = dout * gamma
    dx = g - g.mean(axis=-1, keepdims=True)
    dx -= xhat * np.mean(g * xhat, axis=-1, keepdims=True)
    dx *= rstd
    return dx, dgamma, dbeta


# ------------------------------------------------------------------- attention


def _check_attention_inputs(query, key, value, Wq, Wo, num_heads, attn_mask):
    if query.ndim != 3 or key.ndim != 3 or value.ndim != 3:
        raise ValueError(
            f"multihead_attention_forward: query, key and value must be (N, T, W), (N, S, W), (N, S, W); "
            f"got {query.shape}, {key.shape}, {value.shape}"
        )
    N, T, W = query.shape
    if key.shape != value.shape or key.shape[0] != N or key.shape[2] != W:
        raise ValueError(
            f"multihead_attention_forward: key and value must have shape (N={N}, S, W={W}), "
            f"got {key.shape} and {value.shape}"
        )
    if Wq.shape != (W, W) or Wo.shape != (W, W):
        raise ValueError(f"multihead_attention_forward: weights must have shape {(W, W)}, got {Wq.shape}")
    if int(num_heads) != num_heads or num_heads < 1 or W % num_heads:
        raise ValueError(f"multihead_attention_forward: num_heads={num_heads} must divide W={W}")
    if attn_mask is not None:
        S = key.shape[1]
        m = np.asarray(attn_mask)
        if m.dtype != bool or m.shape not in ((T, S), (N, T, S)):
            raise ValueError(
                f"multihead_attention_forward: attn_mask must be a boolean array of shape {(T, S)} or "
                f"{(N, T, S)}, got {m.dtype} {m.shape}"
            )
        if not m.any(axis=-1).all():
            raise ValueError("multihead_attention_forward: attn_mask lets some query attend to no key")


def _attention_core_forward(q, k, v, num_heads, attn_mask=None):
    """Scaled dot-product attention of projected queries, keys and values.

    Inputs:
    - q: Projected queries, of shape (N, T, W)
    - k, v: Projected keys and values, of shape (N, S, W)
    - num_heads: Number of heads nh
    - attn_mask: None, or boolean (T, S) or (N, T, S), True where a query may attend

    Returns a tuple of:
    - ctx: Attention output before the output projection, of shape (N, T, W)
    - cache: Values needed for the backward pass
    """
    W = q.shape[2]
    qh = _split_heads(q, num_heads)  # (N, nh, T, hs)
    kh = _split_heads(k, num_heads)  # (N, nh, S, hs)
    vh = _split_heads(v, num_heads)  # (N, nh, S, hs)
    scores = qh @ kh.transpose(0, 1, 3, 2)  # (N, nh, T, S)
    scores *= q.dtype.type(1.0 / np.sqrt(W // num_heads))
    if attn_mask is not None:
        blocked = ~np.asarray(attn_mask)
        if blocked.ndim == 3:
            blocked = blocked[:, None]  # (N, 1, T, S), the same for every head
        np.copyto(scores, -np.inf, where=blocked)
    scores -= scores.max(axis=-1, keepdims=True)
    probs = np.exp(scores, out=scores)
    probs /= probs.sum(axis=-1, keepdims=True)
    ctx = _merge_heads(probs @ vh)  # (N, T, W)
    return ctx, (qh, kh, vh, probs)


def _attention_core_backward(dctx, cache):
    """Gradients (dq, dk, dv) of :func:`_attention_core_forward`."""
    qh, kh, vh, probs = cache
    nh, hs = qh.shape[1], qh.shape[3]
    dctxh = _split_heads(dctx, nh)  # (N, nh, T, hs)
    dvh = probs.transpose(0, 1, 3, 2) @ dctxh  # (N, nh, S, hs)
    dprobs = dctxh @ vh.transpose(0, 1, 3, 2)  # (N, nh, T, S)
    # softmax backward: p * (dp - sum(p * dp)); blocked keys have p = 0 and get nothing
    dscores = dprobs
    dscores -= np.sum(dprobs * probs, axis=-1, keepdims=True)
    dscores *= probs
    dscores *= qh.dtype.type(1.0 / np.sqrt(hs))
    dqh = dscores @ kh  # (N, nh, T, hs)
    dkh = dscores.transpose(0, 1, 3, 2) @ qh  # (N, nh, S, hs)
    return _merge_heads(dqh), _merge_heads(dkh), _merge_heads(dvh)


def _one_key(key, attn_mask):
    """Whether attention reduces to copying the value: one key that every query sees."""
    return key.shape[1] == 1 and (attn_mask is None or np.all(attn_mask))


def multihead_attention_forward(query, key, value, Wq, bq, Wk, bk, Wv, bv, Wo, bo, num_heads, attn_mask=None):
    """Multi-head scaled dot-product attention.

    The queries, keys and values are projected to width W and split into nh heads of
    size hs = W // nh; each head computes softmax(q k^T / sqrt(hs)) v over the S keys,
    with blocked keys at -inf, and the heads are concatenated and projected by Wo. The
    softmax subtracts the row max first. Self-attention passes the same array as query,
    key and value and sums the three input gradients.

    Inputs:
    - query: Queries, of shape (N, T, W)
    - key: Keys, of shape (N, S, W)
    - value: Values, of shape (N, S, W)
    - Wq, Wk, Wv, Wo: Projection weights, of shape (W, W)
    - bq, bk, bv, bo: Projection biases, of shape (W,)
    - num_heads: Number of heads nh, which must divide W
    - attn_mask: None (attend everywhere), or a boolean array of shape (T, S) or
      (N, T, S), True where query t may attend to key s (the transpose of the sense
      of PyTorch's boolean attn_mask). Every query needs at least one allowed key.

    Returns a tuple of:
    - out: Output, of shape (N, T, W)
    - cache: Values needed for the backward pass
    """
    _check_attention_inputs(query, key, value, Wq, Wo, num_heads, attn_mask)
    v = _linear(value, Wv, bv)  # (N, S, W)
    if _one_key(key, attn_mask):
        # every query gets the same row, so project it once and repeat it
        ctx = v
        out = np.repeat(_linear(v, Wo, bo), query.shape[1], axis=1)  # (N, T, W)
        return out, (query, key, value, Wq, Wk, Wv, Wo, ctx, None)
    q = _linear(query, Wq, bq)  # (N, T, W)
    k = _linear(key, Wk, bk)  # (N, S, W)
    ctx, core = _attention_core_forward(q, k, v, num_heads, attn_mask)
    out = _linear(ctx, Wo, bo)
    return out, (query, key, value, Wq, Wk, Wv, Wo, ctx, core)


def multihead_attention_backward(dout, cache):
    """Backward pass of :func:`multihead_attention_forward`.

    Inputs:
    - dout: Upstream gradients, of shape (N, T, W)
    - cache: Values from the forward pass

    Returns a tuple of:
    - dquery: Gradient of query, of shape (N, T, W)
    - dkey: Gradient of key, of shape (N, S, W)
    - dvalue: Gradient of value, of shape (N, S, W)
    - dWq, dbq, dWk, dbk, dWv, dbv, dWo, dbo: Gradients of the projections; dbk is
      exactly zero (the softmax cancels a constant added to a row of scores), and with
      one key so are dquery, dkey, dWq, dbq and dWk
    """
    query, key, value, Wq, Wk, Wv, Wo, ctx, core = cache
    if core is None:  # one key: the output row was repeated over the T queries
        dctx, dWo, dbo = _linear_backward(dout.sum(axis=1, keepdims=True), ctx, Wo)
        dvalue, dWv, dbv = _linear_backward(dctx, value, Wv)
        zero = lambda a: np.zeros(a.shape, dtype=dout.dtype)
        return zero(query), zero(key), dvalue, zero(Wq), zero(Wq[0]), zero(Wk), zero(Wk[0]), dWv, dbv, dWo, dbo
    dctx, dWo, dbo = _linear_backward(dout, ctx, Wo)
    dq, dk, dv = _attention_core_backward(dctx, core)
    dquery, dWq, dbq = _linear_backward(dq, query, Wq)
    dkey, dWk, _ = _linear_backward(dk, key, Wk)
    # The key bias adds q . bk to every score of a row, which the softmax cancels, so
    # its gradient is exactly zero (computed, it would be rounding noise).
    dbk = np.zeros(Wk.shape[1], dtype=dout.dtype)
    dvalue, dWv, dbv = _linear_backward(dv, value, Wv)
    return dquery, dkey, dvalue, dWq, dbq, dWk, dbk, dWv, dbv, dWo, dbo


# ---------------------------------------------------------------- feed-forward


def feedforward_forward(x, W1, b1, W2, b2):
    """Position-wise feed-forward block relu(x @ W1 + b1) @ W2 + b2.

    Inputs:
    - x: Input, of shape (N, T, W)
    - W1: First weights, of shape (W, F)
    - b1: First biases, of shape (F,)
    - W2: Second weights, of shape (F, W)
    - b2: Second biases, of shape (W,)

    Returns a tuple of:
    - out: Output, of shape (N, T, W)
    - cache: Values needed for the backward pass
    """
    W = x.shape[-1]
    if W1.shape[0] != W or W2.shape != (W1.shape[1], W) or b1.shape != (W1.shape[1],) or b2.shape != (W,):
        raise ValueError(
            f"feedforward_forward: need W1 (W, F), b1 (F,), W2 (F, W), b2 (W,) with W={W}; got "
            f"{W1.shape}, {b1.shape}, {W2.shape}, {b2.shape}"
        )
    h = _linear(x, W1, b1)  # (N, T, F)
    np.maximum(h, 0, out=h)
    return _linear(h, W2, b2), (x, W1, W2, h)


def feedforward_backward(dout, cache):
    """Backward pass of :func:`feedforward_forward`.

    Inputs:
    - dout: Upstream gradients, of shape (N, T, W)
    - cache: Values from the forward pass

    Returns a tuple of:
    - dx: Gradient of x, of shape (N, T, W)
    - dW1, db1, dW2, db2: Gradients of the weights and biases
    """
    x, W1, W2, h = cache
    dh, dW2, db2 = _linear_backward(dout, h, W2)
    dh *= h > 0
    dx, dW1, db1 = _linear_backward(dh, x, W1)
    return dx, dW1, db1, dW2, db2


# ---------------------------------------------------------------- decoder layer


def _attention_params(params, prefix):
    return tuple(params[f"{prefix}.{k}"] for k in ATTENTION_KEYS)


def _residual_norm_forward(x, branch, mask, gamma, beta):
    """layer_norm(x + branch * mask), the sub-layer connection of a post-norm layer."""
    if mask is not None:
        branch *= mask
    branch += x
    return layer_norm_forward(branch, gamma, beta)


def decoder_layer_forward(x, memory, params, num_heads, attn_mask, dropout=0.0, rng=None):
    """Forward pass of one post-norm Transformer decoder layer.

    Causal self-attention over the caption, cross-attention over the memory, then the
    feed-forward block; each sub-layer's output is dropped out, added to its input and
    layer-normalised (see the module docstring for the formula and the parameter keys).

    Inputs:
    - x: Input sequence, of shape (N, T, W)
    - memory: Sequence to attend to (the projected image), of shape (N, S, W)
    - params: Dict of the layer's arrays, keys as in LAYER_PARAM_KEYS
    - num_heads: Number of attention heads nh
    - attn_mask: Boolean (T, T) self-attention mask, True where t may attend to t'
      (a lower-triangular matrix for captioning), or None
    - dropout: Drop probability of the three residual branches (0 = off)
    - rng: np.random.Generator drawing the dropout masks; required if dropout > 0

    Returns a tuple of:
    - out: Output sequence, of shape (N, T, W)
    - cache: Values needed for the backward pass
    """
    if dropout > 0 and rng is None:
        raise ValueError("decoder_layer_forward: dropout > 0 needs an rng for the masks")
    p = params
    masks = [dropout_mask(x.shape, dropout, rng, x.dtype) for _ in range(3)]
    a, sa_cache = multihead_attention_forward(x, x, x, *_attention_params(p, "self_attn"), num_heads, attn_mask)
    x1, n1_cache = _residual_norm_forward(x, a, masks[0], p["norm1.gamma"], p["norm1.beta"])
    a, ca_cache = multihead_attention_forward(x1, memory, memory, *_attention_params(p, "cross_attn"), num_heads)
    x2, n2_cache = _residual_norm_forward(x1, a, masks[1], p["norm2.gamma"], p["norm2.beta"])
    f, ff_cache = feedforward_forward(x2, p["ffn.W1"], p["ffn.b1"], p["ffn.W2"], p["ffn.b2"])
    out, n3_cache = _residual_norm_forward(x2, f, masks[2], p["norm3.gamma"], p["norm3.beta"])
    return out, (masks, sa_cache, n1_cache, ca_cache, n2_cache, ff_cache, n3_cache)


def decoder_layer_backward(dout, cache):
    """Backward pass of :func:`decoder_layer_forward`.

    Inputs:
    - dout: Upstream gradients, of shape (N, T, W)
    - cache: Values from the forward pass

    Returns a tuple of:
    - dx: Gradient of x, of shape (N, T, W)
    - dmemory: Gradient of memory, of shape (N, S, W)
    - dparams: Dict of gradients with the keys of params
    """
    masks, sa_cache, n1_cache, ca_cache, n2_cache, ff_cache, n3_cache = cache
    g = {}
    dx2, g["norm3.gamma"], g["norm3.beta"] = layer_norm_backward(dout, n3_cache)
    df = dx2 if masks[2] is None else dx2 * masks[2]
    dff = feedforward_backward(df, ff_cache)
    dx2 += dff[0]
    g["ffn.W1"], g["ffn.b1"], g["ffn.W2"], g["ffn.b2"] = dff[1:]

    dx1, g["norm2.gamma"], g["norm2.beta"] = layer_norm_backward(dx2, n2_cache)
    da = dx1 if masks[1] is None else dx1 * masks[1]
    dca = multihead_attention_backward(da, ca_cache)
    dx1 += dca[0]
    dmemory = dca[1] + dca[2]
    g.update(zip((f"cross_attn.{k}" for k in ATTENTION_KEYS), dca[3:]))

    dx, g["norm1.gamma"], g["norm1.beta"] = layer_norm_backward(dx1, n1_cache)
    da = dx if masks[0] is None else dx * masks[0]
    dsa = multihead_attention_backward(da, sa_cache)
    dx += dsa[0]
    dx += dsa[1]
    dx += dsa[2]
    g.update(zip((f"self_attn.{k}" for k in ATTENTION_KEYS), dsa[3:]))
    return dx, dmemory, g


def cross_attention_weights(cache):
    """The cross-attention weights of a decoder_layer_forward call, from its cache.

    Inputs:
    - cache: Cache returned by :func:`decoder_layer_forward`

    Returns:
    - probs: Attention weights of every head, query and memory position, of shape
      (N, nh, T, S); each (N, nh, T) row sums to 1 (a memory of one position takes a
      shortcut without weights: ones of shape (N, 1, T, 1))
    """
    query, _, _, _, _, _, _, ctx, core = cache[3]
    if core is None:  # one key: the softmax of one score
        return np.ones((query.shape[0], 1, query.shape[1], 1), dtype=ctx.dtype)
    return core[3]


# ------------------------------------------------------------ cached decoding


def memory_keys_values(memory, params):
    """Project the memory to the cross-attention keys and values, once per decode.

    Inputs:
    - memory: Sequence the decoder attends to, of shape (M, S, W)
    - params: Dict of one layer's arrays

    Returns a tuple of:
    - memory_k: Keys, of shape (M, S, W)
    - memory_v: Values, of shape (M, S, W)
    """
    return (_linear(memory, params["cross_attn.Wk"], params["cross_attn.bk"]),
            _linear(memory, params["cross_attn.Wv"], params["cross_attn.bv"]))


def decoder_layer_step(x, self_k, self_v, memory_k, memory_v, params, num_heads):
    """One position of :func:`decoder_layer_forward` for decoding, with cached keys/values.

    Position t attends to the cached projected keys and values of positions 0 .. t-1
    and to its own, so a step costs one position instead of a re-run of the prefix, and
    the output equals row t of the full causal forward pass (no dropout). No backward.

    Inputs:
    - x: Input at the new position t, of shape (M, 1, W)
    - self_k, self_v: Self-attention keys and values of positions 0 .. t-1, of shape
      (M, t, W)
    - memory_k, memory_v: Cross-attention keys and values from memory_keys_values,
      of shape (M, S, W)
    - params: Dict of the layer's arrays
    - num_heads: Number of attention heads nh

    Returns a tuple of:
    - out: Output at position t, of shape (M, 1, W)
    - next_k, next_v: self_k and self_v extended by position t, of shape (M, t + 1, W)
    """
    p = params
    q = _linear(x, p["self_attn.Wq"], p["self_attn.bq"])  # (M, 1, W)
    next_k = np.concatenate([self_k, _linear(x, p["self_attn.Wk"], p["self_attn.bk"])], axis=1)  # (M, t+1, W)
    next_v = np.concatenate([self_v, _linear(x, p["self_attn.Wv"], p["self_attn.bv"])], axis=1)
    ctx, _ = _attention_core_forward(q, next_k, next_v, num_heads)  # the new position sees all of them
    a = _linear(ctx, p["self_attn.Wo"], p["self_attn.bo"])
    x1, _ = _residual_norm_forward(x, a, None, p["norm1.gamma"], p["norm1.beta"])
    if _one_key(memory_k, None):
        ctx = memory_v
    else:
        q = _linear(x1, p["cross_attn.Wq"], p["cross_attn.bq"])
        ctx, _ = _attention_core_forward(q, memory_k, memory_v, num_heads)
    a = _linear(ctx, p["cross_attn.Wo"], p["cross_attn.bo"])
    x2, _ = _residual_norm_forward(x1, a, None, p["norm2.gamma"], p["norm2.beta"])
    f, _ = feedforward_forward(x2, p["ffn.W1"], p["ffn.b1"], p["ffn.W2"], p["ffn.b2"])
    out, _ = _residual_norm_forward(x2, f, None, p["norm3.gamma"], p["norm3.beta"])
    return out, next_k, next_v
