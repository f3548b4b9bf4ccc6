"""Soft attention over image regions (Show, Attend and Tell), written to be read.

Dimension letters used throughout: N batch size, T sequence length, L image regions,
D region feature dimension, W word vector dimension, H hidden dimension, A attention
width. Every forward function returns its outputs and a cache; its backward takes the
upstream gradients and the cache and returns the gradients in the order of the forward
inputs (parameter dicts as dicts of the same keys).

At every step a recurrent captioner looks at the L regions of its picture (the cells of
a CNN's last feature map, say 7 x 7) and mixes them into one context vector:

    e_l     = w . tanh(r_l Wr + b + h Wh)     additive attention score of region l
    alpha   = softmax(e)                      over the L regions: where the model looks
    context = sum_l alpha_l r_l               (N, D)
    beta    = sigmoid(h Wg + bg)              the gate, one value per channel of D
    input   = [x_t, beta * context]           what the recurrent cell reads at step t

h is the hidden state before the step (the attention decides where to look for the next
word). The projection r_l Wr + b does not depend on h, so it is computed once per image
batch (``region_projection_forward``) and every step reuses it. The gate lets the model
turn the picture down for words that do not need it ("a", "of").

Show, Attend and Tell's doubly stochastic penalty lambda * sum_l (1 - sum_t alpha_tl)^2
asks the model to look, over a whole caption, at every region about once, so that it
does not stare at one spot (``doubly_stochastic_penalty``).

Parameters of an attention cell (a dict, keys as in CaptioningRNN's params):
- Wx [W, kH], Wh [H, kH], b [kH]: the recurrent cell's (k = 1 rnn, 4 lstm, 3 gru)
- Wc [D, kH]: context to the cell's gates (the cell input is [x_t, context_t] with the
  weights [Wx; Wc])
- att.Wr [D, A], att.b [A], att.Wh [H, A], att.w [A]: the attention scores
- att.Wg [H, D], att.bg [D]: the gate

Where the regions are cells of a grid, the weighted sum above keeps what the model looked
at but loses where it was: the regions of a CNN's map carry little of their place. A model
that knows its grid appends to each region its place as L one-hot channels
(``with_positions``), so that the rows of Wr, Wc, Wg that read them are learned position
embeddings: the scores can prefer a place, and the context says where the model looked
("to the left of"). The layers below see D = C + L channels then.

The step and sequence functions reuse capmodel.rnn_layers' cells on the concatenated
input. The models train with the fast versions in ``capmodel.kernels.attention``
(packed sequences, blocked and threaded over the batch); tests hold them equal to these.
"""

import numpy as np

from capmodel import rnn_layers as rl
from capmodel.kernels.attention import ATTENTION_KEYS, CELLS, GATE_KEYS, PARAM_KEYS
from capmodel.layers import sigmoid

__all__ = [
    "region_projection_forward", "region_projection_backward", "attention_step_forward", "attention_step_backward",
    "soft_attention_forward", "soft_attention_backward", "gate_forward", "gate_backward",
    "doubly_stochastic_penalty", "attention_cell_step_forward", "attention_cell_step_backward",
    "attention_cell_forward", "attention_cell_backward", "with_positions",
    # the parameter keys and cell types, from capmodel.kernels.attention
    "ATTENTION_KEYS", "GATE_KEYS", "PARAM_KEYS", "CELLS",
]


def _check_regions(name, regions, h=None):
    if regions.ndim != 3:
        raise ValueError(f"{name}: regions must have shape (N, L, D), got {regions.shape}")
    if h is not None and (h.ndim != 2 or h.shape[0] != regions.shape[0]):
        raise ValueError(f"{name}: h must have shape (N={regions.shape[0]}, H), got {h.shape}")


# -------------------------------------------------------------- attention layer


def with_positions(regions):
    """Each region with its place in the grid appended as L one-hot channels.

    The regions are inputs, not parameters, so there is no backward: the weights that
    read the one-hot channels (a model's rows of Wr, Wc, ... for them) are the learned
    position embeddings.

    Inputs:
    - regions: Region features of shape (N, L, C), region l always the same cell

    Returns:
    - out: Of shape (N, L, C + L), out[:, l, C + l] = 1 and 0 in the other new channels
    """
    _check_regions("with_positions", regions)
    N, L, C = regions.shape
    out = np.zeros((N, L, C + L), dtype=regions.dtype)
    out[:, :, :C] = regions
    out[:, np.arange(L), C + np.arange(L)] = 1
    return out


def region_projection_forward(regions, Wr, b):
    """Project every region to the attention width: regions Wr + b, once per image batch.

    Inputs:
    - regions: Region features, of shape (N, L, D)
    - Wr: Projection weights, of shape (D, A)
    - b: Attention bias, of shape (A,)

    Returns a tuple of:
    - proj: Projected regions, of shape (N, L, A)
    - cache: Values needed for the backward pass
    """
    _check_regions("region_projection_forward", regions)
    if Wr.shape[0] != regions.shape[2] or b.shape != (Wr.shape[1],):
        raise ValueError(f"region_projection_forward: need Wr (D={regions.shape[2]}, A) and b (A,), "
                         f"got {Wr.shape} and {b.shape}")
    return regions @ Wr + b, (regions, Wr)


def region_projection_backward(dproj, cache):
    """Backward pass of :func:`region_projection_forward`.

    Inputs:
    - dproj: Upstream gradients, of shape (N, L, A)
    - cache: Values from the forward pass

    Returns a tuple of:
    - dregions: Gradient of regions, of shape (N, L, D)
    - dWr: Gradient of Wr, of shape (D, A)
    - db: Gradient of b, of shape (A,)
    """
    regions, Wr = cache
    D, A = Wr.shape
    dWr = regions.reshape(-1, D).T @ dproj.reshape(-1, A)
    return dproj @ Wr.T, dWr, dproj.sum(axis=(0, 1))


def attention_step_forward(h, regions, proj, Wh, w):
    """Attention weights and context of one step, from the projected regions.

    Inputs:
    - h: Hidden state that looks, of shape (N, H)
    - regions: Region features, of shape (N, L, D)
    - proj: Projected regions regions Wr + b, of shape (N, L, A)
    - Wh: Hidden-to-attention weights, of shape (H, A)
    - w: Score vector, of shape (A,)

    Returns a tuple of:
    - context: Weighted sum of the regions, of shape (N, D)
    - alpha: Attention weights, of shape (N, L); each row sums to 1
    - cache: Values needed for the backward pass
    """
    _check_regions("attention_step_forward", regions, h)
    if proj.shape[:2] != regions.shape[:2] or Wh.shape != (h.shape[1], proj.shape[2]) or w.shape != (proj.shape[2],):
        raise ValueError(f"attention_step_forward: need proj (N, L, A), Wh (H, A), w (A,) for regions "
                         f"{regions.shape} and h {h.shape}; got {proj.shape}, {Wh.shape}, {w.shape}")
    t = np.tanh(proj + (h @ Wh)[:, None, :])  # (N, L, A)
    e = t @ w  # (N, L)
    e = e - e.max(axis=1, keepdims=True)  # exp cannot overflow
    alpha = np.exp(e)
    alpha /= alpha.sum(axis=1, keepdims=True)
    context = np.einsum("nl,nld->nd", alpha, regions)
    return context, alpha, (h, regions, Wh, w, t, alpha)


def attention_step_backward(dcontext, cache, dalpha=None):
    """Backward pass of :func:`attention_step_forward`.

    Inputs:
    - dcontext: Upstream gradient of the context, of shape (N, D)
    - cache: Values from the forward pass
    - dalpha: Upstream gradient of alpha, of shape (N, L), if alpha reaches the loss
      directly (the doubly stochastic penalty); None counts as zero

    Returns a tuple of:
    - dh: Gradient of h, of shape (N, H)
    - dregions: Gradient of regions through the context, of shape (N, L, D)
    - dproj: Gradient of proj, of shape (N, L, A)
    - dWh: Gradient of Wh, of shape (H, A)
    - dw: Gradient of w, of shape (A,)
    """
    h, regions, Wh, w, t, alpha = cache
    dregions = alpha[:, :, None] * dcontext[:, None, :]
    da = np.einsum("nld,nd->nl", regions, dcontext)  # gradient of alpha
    if dalpha is not None:
        da = da + dalpha
    de = alpha * (da - np.sum(alpha * da, axis=1, keepdims=True))  # through the softmax
    dw = np.einsum("nl,nla->a", de, t)
    dproj = de[:, :, None] * w * (1 - t * t)  # through the tanh
    dha = dproj.sum(axis=1)  # (N, A): h Wh is added to every region's projection
    return dha @ Wh.T, dregions, dproj, h.T @ dha, dw


def soft_attention_forward(h, regions, params):
    """Soft attention of Show, Attend and Tell: where h looks among the regions.

    scores e_l = w . tanh(r_l Wr + b + h Wh), alpha = softmax(e) over the L regions,
    context = sum_l alpha_l r_l. (A model projects the regions once per batch and calls
    :func:`attention_step_forward` at every step; this is the two in one call.)

    Inputs:
    - h: Hidden state, of shape (N, H)
    - regions: Region features, of shape (N, L, D)
    - params: Dict with att.Wr (D, A), att.b (A,), att.Wh (H, A) and att.w (A,)

    Returns a tuple of:
    - context: Weighted sum of the regions, of shape (N, D)
    - alpha: Attention weights, of shape (N, L)
    - cache: Values needed for the backward pass
    """
    proj, proj_cache = region_projection_forward(regions, params["att.Wr"], params["att.b"])
    context, alpha, step_cache = attention_step_forward(h, regions, proj, params["att.Wh"], params["att.w"])
    return context, alpha, (proj_cache, step_cache)


def soft_attention_backward(dcontext, cache, dalpha=None):
    """Backward pass of :func:`soft_attention_forward`.

    Inputs:
    - dcontext: Upstream gradient of the context, of shape (N, D)
    - cache: Values from the forward pass
    - dalpha: Upstream gradient of alpha, of shape (N, L), or None (zero)

    Returns a tuple of:
    - dh: Gradient of h, of shape (N, H)
    - dregions: Gradient of regions, of shape (N, L, D)
    - dparams: Dict of gradients with the keys of params
    """
    proj_cache, step_cache = cache
    dh, dregions, dproj, dWh, dw = attention_step_backward(dcontext, step_cache, dalpha)
    dregions_proj, dWr, db = region_projection_backward(dproj, proj_cache)
    return dh, dregions + dregions_proj, {"att.Wr": dWr, "att.b": db, "att.Wh": dWh, "att.w": dw}


# ------------------------------------------------------------------------ gate


def gate_forward(h, context, Wg, bg):
    """The gate on the context: beta * context with beta = sigmoid(h Wg + bg).

    Inputs:
    - h: Hidden state, of shape (N, H)
    - context: Attention context, of shape (N, D)
    - Wg: Gate weights, of shape (H, D)
    - bg: Gate biases, of shape (D,)

    Returns a tuple of:
    - out: Gated context, of shape (N, D)
    - cache: Values needed for the backward pass
    """
    if Wg.shape != (h.shape[1], context.shape[1]) or bg.shape != (context.shape[1],):
        raise ValueError(f"gate_forward: need Wg (H, D) and bg (D,) for h {h.shape} and context "
                         f"{context.shape}; got {Wg.shape} and {bg.shape}")
    beta = sigmoid(h @ Wg + bg)
    return beta * context, (h, context, Wg, beta)


def gate_backward(dout, cache):
    """Backward pass of :func:`gate_forward`.

    Inputs:
    - dout: Upstream gradient of the gated context, of shape (N, D)
    - cache: Values from the forward pass

    Returns a tuple of:
    - dh: Gradient of h, of shape (N, H)
    - dcontext: Gradient of the context, of shape (N, D)
    - dWg: Gradient of Wg, of shape (H, D)
    - dbg: Gradient of bg, of shape (D,)
    """
    h, context, Wg, beta = cache
    dg = dout * context * beta * (1 - beta)  # before the sigmoid
    return dg @ Wg.T, dout * beta, h.T @ dg, dg.sum(axis=0)


# --------------------------------------------------------------------- penalty


def doubly_stochastic_penalty(alphas, mask, weight):
    """The doubly stochastic penalty of Show, Attend and Tell, and its gradient.

    For each caption n, sum_t alpha[n, t, l] is the attention region l got over the
    caption; the penalty weight * sum_l (1 - sum_t alpha[n, t, l])^2 grows when some
    regions get much more than others. The sum over t runs over the caption's scored
    positions only (mask True: the target word is not <NULL>), so padding neither adds
    to it nor gets a gradient. Like the caption loss it is summed over the captions and
    divided by N.

    Inputs:
    - alphas: Attention weights, of shape (N, T, L)
    - mask: Boolean array of shape (N, T), True at the scored positions
    - weight: lambda >= 0

    Returns a tuple of:
    - loss: Scalar penalty
    - dalphas: Gradient of loss with respect to alphas, of shape (N, T, L); zero where
      mask is False
    """
    mask = np.asarray(mask, dtype=bool)
    if alphas.ndim != 3 or mask.shape != alphas.shape[:2]:
        raise ValueError(f"doubly_stochastic_penalty: need alphas (N, T, L) and mask (N, T), got "
                         f"{alphas.shape} and {mask.shape}")
    N = alphas.shape[0]
    m = mask[:, :, None].astype(alphas.dtype)
    gap = 1 - (alphas * m).sum(axis=1)  # (N, L)
    loss = weight * float(np.sum(gap * gap)) / N
    dalphas = (-2 * weight / N) * gap[:, None, :] * m
    return loss, dalphas.astype(alphas.dtype, copy=False)


# ---------------------------------------------------------------- attention cells


def _cell_forward(cell_type, xc, prev_h, prev_c, Wxc, Wh, b):
    """One step of capmodel.rnn_layers' cell on the input xc: (next_h, next_c, cache)."""
    if cell_type == "lstm":
        return rl.lstm_step_forward(xc, prev_h, prev_c, Wxc, Wh, b)
    step = rl.rnn_step_forward if cell_type == "rnn" else rl.gru_step_forward
    next_h, cache = step(xc, prev_h, Wxc, Wh, b)
    return next_h, None, cache


def _cell_backward(cell_type, dnext_h, dnext_c, cache):
    """(dxc, dprev_h, dprev_c, dWxc, dWh, db) of :func:`_cell_forward`."""
    if cell_type == "lstm":
        return rl.lstm_step_backward(dnext_h, dnext_c, cache)
    step = rl.rnn_step_backward if cell_type == "rnn" else rl.gru_step_backward
    dxc, dprev_h, dWxc, dWh, db = step(dnext_h, cache)
    return dxc, dprev_h, None, dWxc, dWh, db


def attention_cell_step_forward(cell_type, x, prev_h, prev_c, regions, proj, params):
    """One step of an attention cell: look with prev_h, gate the context, step the cell.

    The cell (rnn, lstm or gru, as in capmodel.rnn_layers) reads [x, beta * context]
    with the weights [Wx; Wc].

    Inputs:
    - cell_type: 'rnn', 'lstm' or 'gru'
    - x: Word vectors of this step, of shape (N, W)
    - prev_h: Previous hidden state, of shape (N, H)
    - prev_c: Previous cell state, of shape (N, H) (lstm), or None
    - regions: Region features, of shape (N, L, D)
    - proj: Projected regions (region_projection_forward), of shape (N, L, A)
    - params: Dict of the cell's arrays (see the module docstring)

    Returns a tuple of:
    - next_h: Next hidden state, of shape (N, H)
    - next_c: Next cell state, of shape (N, H) (lstm), or None
    - alpha: Attention weights of this step, of shape (N, L)
    - cache: Values needed for the backward pass
    """
    p = params
    context, alpha, att_cache = attention_step_forward(prev_h, regions, proj, p["att.Wh"], p["att.w"])
    gated, gate_cache = gate_forward(prev_h, context, p["att.Wg"], p["att.bg"])
    xc = np.concatenate([x, gated], axis=1)  # (N, W + D)
    Wxc = np.concatenate([p["Wx"], p["Wc"]])  # (W + D, kH)
    next_h, next_c, cell_cache = _cell_forward(cell_type, xc, prev_h, prev_c, Wxc, p["Wh"], p["b"])
    return next_h, next_c, alpha, (cell_type, x.shape[1], att_cache, gate_cache, cell_cache)


def attention_cell_step_backward(dnext_h, dnext_c, dalpha, cache):
    """Backward pass of :func:`attention_cell_step_forward`.

    Inputs:
    - dnext_h: Gradient of next_h, of shape (N, H)
    - dnext_c: Gradient of next_c, of shape (N, H) (lstm), or None
    - dalpha: Gradient of alpha, of shape (N, L), or None (zero)
    - cache: Values from the forward pass

    Returns a tuple of:
    - dx: Gradient of x, of shape (N, W)
    - dprev_h: Gradient of prev_h, of shape (N, H)
    - dprev_c: Gradient of prev_c, of shape (N, H) (lstm), or None
    - dregions: Gradient of regions through the context, of shape (N, L, D)
    - dproj: Gradient of proj, of shape (N, L, A)
    - dparams: Dict of gradients of the step's parameters (all but att.Wr and att.b,
      which reach the step through proj)
    """
    cell_type, W, att_cache, gate_cache, cell_cache = cache
    g = {}
    dxc, dprev_h, dprev_c, dWxc, g["Wh"], g["b"] = _cell_backward(cell_type, dnext_h, dnext_c, cell_cache)
    g["Wx"], g["Wc"] = dWxc[:W], dWxc[W:]
    dh_gate, dcontext, g["att.Wg"], g["att.bg"] = gate_backward(dxc[:, W:], gate_cache)
    dh_att, dregions, dproj, g["att.Wh"], g["att.w"] = attention_step_backward(dcontext, att_cache, dalpha)
    return dxc[:, :W], dprev_h + dh_gate + dh_att, dprev_c, dregions, dproj, g


def attention_cell_forward(cell_type, x, h0, regions, params):
    """Run an attention cell over a whole sequence: the loop over its step function.

    The regions are projected once, before the loop; the initial cell state (lstm) is
    zero.

    Inputs:
    - cell_type: 'rnn', 'lstm' or 'gru'
    - x: Word vectors, of shape (N, T, W)
    - h0: Initial hidden state, of shape (N, H)
    - regions: Region features, of shape (N, L, D)
    - params: Dict of the cell's arrays (see the module docstring)

    Returns a tuple of:
    - h: Hidden states of all timesteps, of shape (N, T, H)
    - alphas: Attention weights of all timesteps, of shape (N, T, L)
    - cache: Values needed for the backward pass
    """
    if cell_type not in CELLS:
        raise ValueError(f'attention_cell_forward: unknown cell_type "{cell_type}"; choose one of {CELLS}')
    _check_regions("attention_cell_forward", regions, h0)
    N, T, _ = x.shape
    proj, proj_cache = region_projection_forward(regions, params["att.Wr"], params["att.b"])
    h = np.empty((N, T, h0.shape[1]), dtype=np.result_type(x, h0, regions))
    alphas = np.empty((N, T, regions.shape[1]), dtype=h.dtype)
    prev_h, prev_c = h0, (np.zeros_like(h0) if cell_type == "lstm" else None)
    caches = []
    for t in range(T):
        prev_h, prev_c, alphas[:, t], cache = attention_cell_step_forward(cell_type, x[:, t], prev_h, prev_c,
                                                                          regions, proj, params)
        h[:, t] = prev_h
        caches.append(cache)
    return h, alphas, (proj_cache, caches)


def attention_cell_backward(dh, dalphas, cache):
    """Backward pass of :func:`attention_cell_forward`.

    Inputs:
    - dh: Upstream gradients of the hidden states, of shape (N, T, H)
    - dalphas: Upstream gradients of the attention weights, of shape (N, T, L), or None
    - cache: Values from the forward pass

    Returns a tuple of:
    - dx: Gradient of the word vectors, of shape (N, T, W)
    - dh0: Gradient of the initial hidden state, of shape (N, H)
    - dregions: Gradient of the regions, of shape (N, L, D)
    - dparams: Dict of gradients of every parameter
    """
    proj_cache, caches = cache
    N, T, _ = dh.shape
    dx, dproj, dregions, grads = None, 0, 0, {}
    dprev_h, dprev_c = np.zeros_like(dh[:, 0]), np.zeros_like(dh[:, 0])
    for t in reversed(range(T)):
        # h[:, t] feeds both the loss and the next step
        dalpha = None if dalphas is None else dalphas[:, t]
        dx_t, dprev_h, dprev_c, dregions_t, dproj_t, g = attention_cell_step_backward(
            dh[:, t] + dprev_h, dprev_c, dalpha, caches[t])
        if dx is None:
            dx = np.empty((N, T, dx_t.shape[1]), dtype=dx_t.dtype)
        dx[:, t] = dx_t
        dregions = dregions + dregions_t
        dproj = dproj + dproj_t  # every step adds to the gradient of the one projection
        for k, v in g.items():
            grads[k] = grads[k] + v if k in grads else v
    dregions_proj, grads["att.Wr"], grads["att.b"] = region_projection_backward(dproj, proj_cache)
    return dx, dprev_h, dregions + dregions_proj, grads
