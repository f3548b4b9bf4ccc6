"""Numeric gradient checks of every layer and of every model family's loss, as a table.

Used by ``capmodel gradcheck`` (the workflow's gradcheck stage). Everything runs in
float64 on small random inputs drawn from a seed. The layers shared by every model
(embedding, temporal affine, softmax loss) are checked by ``_shared_layers``; each model
family registered in capmodel.models has its checks here, in ``FAMILY_CHECKS`` (its
layers and its loss): a new family adds its entry. A family's checks (a generator of rng)
yield (layer, cell, check, tolerance), where check() computes {param: (measure, error)};
``run`` calls it before asking for the next one, so it may read the generator's current
values, and skips the checks of layers not selected. Each row: layer, cell, param,
measure, error, tolerance, ok, where measure says how the error is taken:
- rel: CS231n's rel_error, the maximum over entries of |num - ana| / (|num| + |ana|)
- scaled: max |num - ana| / max |ana|, for a model loss: the loss is ~10, so centred
  differences carry ~1e-10 absolute noise, which rel_error's smallest entries turn into
  ~1e-6 whatever the code; scaled by the parameter's largest gradient it measures the
  code (a wrong gradient is off by ~1e-1 either way)
- abs: max |num|, where the analytic gradient is exactly zero by construction

The layer functions are looked up in their modules when the checks run, so a test that
replaces one (monkeypatch) sees the replacement checked.
"""

import functools
import itertools

import numpy as np

from capmodel import attention as at
from capmodel import models
from capmodel import rnn_layers as rl
from capmodel import transformer_layers as tl
from capmodel.classifiers.rnn import CaptioningRNN
from capmodel.classifiers.transformer import CaptioningTransformer
from capmodel.gradient_check import eval_numerical_gradient, eval_numerical_gradient_array, rel_error
from capmodel.kernels import attention as ka
from capmodel.kernels import parallel
from capmodel.kernels import recurrent as kr
from capmodel.kernels import words as kw

# Max relative error is dominated by near-zero entries; typical values are 1e-8 and a
# wrong gradient gives ~1e-1 (see tests/test_rnn_layers.py).
LAYER_TOLERANCE = 1e-6
MODEL_TOLERANCE = 1e-7  # scaled error
VOCAB = {"<NULL>": 0, "<START>": 1, "<END>": 2, "<UNK>": 3, "cat": 4, "dog": 5}


def check_array_function(forward, backward, inputs, names, rng, scaled=()):
    """{input name: (measure, error)} of backward against numeric gradients of forward.

    forward(*inputs) returns (*outputs, cache); backward(*douts, cache) returns one
    gradient per input, in the order of inputs. Where the analytic gradient is exactly
    zero by construction (attention's key bias, which the softmax cancels), the relative
    error is noise over noise, so the absolute error is reported instead. The inputs
    named in scaled get the scaled error: their gradients are products of several
    factors (the projected regions' in attention: score gradient x w x tanh'), so some
    entries are ~1e-6 and their relative error is finite-difference noise.
    """
    outs = forward(*inputs)[:-1]
    douts = [rng.standard_normal(o.shape) for o in outs]
    analytic = backward(*douts, forward(*inputs)[-1])
    flat_dout = np.concatenate([d.ravel() for d in douts])
    errors = {}
    for i, (x, name) in enumerate(zip(inputs, names)):
        def f(xi, i=i):
            args = list(inputs)
            args[i] = xi
            return np.concatenate([r.ravel() for r in forward(*args)[:-1]])
        num = eval_numerical_gradient_array(f, x, flat_dout)
        if not np.any(analytic[i]):
            errors[name] = ("abs", float(np.abs(num).max()))
        elif name in scaled:
            errors[name] = ("scaled", float(np.abs(num - analytic[i]).max() / np.abs(analytic[i]).max()))
        else:
            errors[name] = ("rel", rel_error(num, analytic[i]))
    return errors


def model_loss_errors(model, rng, N=2, T=4, D=4, lengths=None, weighted=False):
    """{param: ("scaled", error)} of model.loss's gradients, with O(1) random float64 weights,
    on N captions of T random words (<NULL> among them), caption i cut to lengths[i] by
    <NULL> padding if lengths are given. weighted: the loss of self-critical training,
    each caption weighted by a fixed random advantage of either sign. A model that uses
    regions gets 3 random ones per image."""
    for name, v in model.params.items():
        model.params[name] = (1.0 if name.endswith("gamma") else 0.0) + 0.5 * rng.standard_normal(v.shape)
    features = rng.standard_normal((N, D))
    captions = rng.integers(len(model.word_to_idx), size=(N, T))
    captions[:, 0] = model.word_to_idx["<START>"]
    for i, n in enumerate(lengths or ()):
        captions[i, n:] = model.word_to_idx["<NULL>"]
    weights = rng.standard_normal(N) if weighted else None
    inputs = {"weights": weights}
    if getattr(model, "uses_regions", False):
        inputs["regions"] = rng.standard_normal((N, 3, model.region_dim))
    _, grads = model.loss(features, captions, **inputs)
    errors = {}
    for name in sorted(model.params):
        num = eval_numerical_gradient(lambda _: model.loss(features, captions, **inputs)[0],
                                      model.params[name], verbose=False)
        scale = np.abs(grads[name]).max()
        errors[name] = ("abs", float(np.abs(num).max())) if scale == 0 else (
            "scaled", float(np.abs(num - grads[name]).max() / scale))
    return errors


def _shared_layers(rng):
    N, T, D, V = 3, 5, 4, 7
    x = rng.integers(V, size=(N, T))
    W = rng.standard_normal((V, D))
    out, cache = rl.word_embedding_forward(x, W)
    dout = rng.standard_normal(out.shape)
    num = eval_numerical_gradient_array(lambda W: rl.word_embedding_forward(x, W)[0], W, dout)
    yield "word_embedding", "", lambda: {"W": ("rel", rel_error(num, rl.word_embedding_backward(dout, cache)))}, LAYER_TOLERANCE
    yield "temporal_affine", "", lambda: check_array_function(
        rl.temporal_affine_forward, rl.temporal_affine_backward,
        [rng.standard_normal((N, T, D)), rng.standard_normal((D, V)), rng.standard_normal(V)], ("x", "w", "b"),
        rng), LAYER_TOLERANCE
    scores = rng.standard_normal((N, T, V))
    y = rng.integers(V, size=(N, T))
    mask = rng.random((N, T)) > 0.3
    _, dx = rl.temporal_softmax_loss(scores, y, mask)
    num = eval_numerical_gradient(lambda s: rl.temporal_softmax_loss(s, y, mask)[0], scores, verbose=False)
    yield "temporal_softmax_loss", "", lambda: {"x": ("rel", rel_error(num, dx))}, LAYER_TOLERANCE
    wrng = _spawned(rng)
    scores, y, w = wrng.standard_normal((N * T, V)), wrng.integers(V, size=N * T), wrng.standard_normal(N * T)
    _, dx = kw.weighted_softmax_loss(scores, y, w)
    num = eval_numerical_gradient(lambda s: kw.weighted_softmax_loss(s, y, w)[0], scores, verbose=False)
    yield "weighted_softmax_loss", "", lambda: {"x": ("rel", rel_error(num, dx))}, LAYER_TOLERANCE


# The inputs of each recurrent cell's step function, and its gates per hidden unit
# (Wx is (D, gates * H)).
RNN_STEP_INPUTS = {"rnn": (("x", "prev_h", "Wx", "Wh", "b"), 1),
                   "lstm": (("x", "prev_h", "prev_c", "Wx", "Wh", "b"), 4),
                   "gru": (("x", "prev_h", "Wx", "Wh", "b"), 3)}


def _spawned(rng):
    """A generator of its own, so the checks after it draw what they always drew."""
    return np.random.default_rng(rng.bit_generator.seed_seq.spawn(1)[0])


def _rnn_family(rng):
    """Every cell's step and sequence functions (capmodel.rnn_layers), its packed functions
    (capmodel.kernels.recurrent, which the model trains with) and CaptioningRNN's loss."""
    N, T, D, H = 3, 5, 4, 5
    for cell, (names, k) in RNN_STEP_INPUTS.items():
        shapes = {"x": (N, D), "prev_h": (N, H), "prev_c": (N, H), "Wx": (D, k * H), "Wh": (H, k * H),
                  "b": (k * H,)}
        yield f"{cell}_step", cell, lambda: check_array_function(
            getattr(rl, f"{cell}_step_forward"), getattr(rl, f"{cell}_step_backward"),
            [rng.standard_normal(shapes[n]) for n in names], names, rng), LAYER_TOLERANCE
        seq = [(N, T, D), (N, H), (D, k * H), (H, k * H), (k * H,)]
        yield f"{cell}_sequence", cell, lambda: check_array_function(
            getattr(rl, f"{cell}_forward"), getattr(rl, f"{cell}_backward"), [rng.standard_normal(s) for s in seq],
            ("x", "h0", "Wx", "Wh", "b"), rng), LAYER_TOLERANCE
        # ragged: sequences of 4, 3, 1 and 0 steps (the last only has an initial state)
        sizes, prng = (3, 2, 2, 1), _spawned(rng)
        packed = [(sum(sizes), D), (4, H)] + seq[2:]
        yield f"{cell}_packed", cell, lambda: check_array_function(
            functools.partial(getattr(kr, f"{cell}_packed_forward"), sizes=sizes),
            getattr(kr, f"{cell}_packed_backward"), [prng.standard_normal(s) for s in packed],
            ("x", "h0", "Wx", "Wh", "b"), prng), LAYER_TOLERANCE
    for cell in RNN_STEP_INPUTS:
        model = CaptioningRNN(VOCAB, input_dim=D, wordvec_dim=3, hidden_dim=H, cell_type=cell, dtype=np.float64,
                              seed=0)
        yield "CaptioningRNN.loss", cell, lambda: model_loss_errors(model, rng, D=D), MODEL_TOLERANCE
    for cell in RNN_STEP_INPUTS:  # captions of different lengths: the loss packs them
        model = CaptioningRNN(VOCAB, input_dim=D, wordvec_dim=3, hidden_dim=H, cell_type=cell, dtype=np.float64,
                              seed=0)
        yield "CaptioningRNN.loss (ragged captions)", cell, lambda: model_loss_errors(
            model, _spawned(rng), N=4, T=6, D=D, lengths=(6, 4, 2, 1)), MODEL_TOLERANCE
    for cell in RNN_STEP_INPUTS:  # self-critical training: ragged sampled captions, weighted
        model = CaptioningRNN(VOCAB, input_dim=D, wordvec_dim=3, hidden_dim=H, cell_type=cell, dtype=np.float64,
                              seed=0)
        yield "CaptioningRNN.loss (SCST weights)", cell, lambda: model_loss_errors(
            model, _spawned(rng), N=4, T=6, D=D, lengths=(6, 4, 2, 1), weighted=True), MODEL_TOLERANCE
    yield from _rnn_attention(_spawned(rng))


def _params(rng, shapes):
    """Random parameters of std 0.5: larger ones saturate the tanh of a cell fed by attention,
    whose near-zero derivatives give gradient entries of ~1e-6, where the relative error
    measures finite-difference noise."""
    return {k: 0.5 * rng.standard_normal(shape) for k, shape in shapes.items()}


def _attention_shapes(k, W, H, C, A):
    """The shapes of an attention cell's parameters (capmodel.attention.PARAM_KEYS)."""
    return {"Wx": (W, k * H), "Wh": (H, k * H), "b": (k * H,), "Wc": (C, k * H), "att.Wr": (C, A), "att.b": (A,),
            "att.Wh": (H, A), "att.w": (A,), "att.Wg": (H, C), "att.bg": (C,)}


def _with_params(forward, backward, n_inputs, keys):
    """forward(*inputs, params) and backward(*douts, cache) -> (*input grads, grad dict) as
    functions of positional arrays (the inputs, then the parameters in the order of keys),
    for check_array_function."""
    def fwd(*arrays):
        return forward(*arrays[:n_inputs], dict(zip(keys, arrays[n_inputs:])))

    def bwd(*args):
        *grads, dparams = backward(*args)
        return (*grads, *(dparams[k] for k in keys))

    return fwd, bwd


def _rnn_attention(rng):
    """Soft attention (capmodel.attention), its gate and penalty, every attention cell's
    step, sequence and packed functions (capmodel.kernels.attention, which the model
    trains with), and CaptioningRNN's loss with attention: ragged captions, the penalty,
    SCST weights."""
    N, T, L, C, W, H, A = 3, 4, 5, 4, 3, 5, 6
    r = rng.standard_normal
    keys = at.ATTENTION_KEYS
    fwd, bwd = _with_params(at.soft_attention_forward,
                            lambda dcontext, dalpha, cache: at.soft_attention_backward(dcontext, cache, dalpha), 2,
                            keys)
    shapes = _attention_shapes(1, W, H, C, A)
    yield "soft_attention", "", lambda: check_array_function(
        fwd, bwd, [r((N, H)), r((N, L, C)), *(r(shapes[k]) for k in keys)], ("h", "regions", *keys),
        rng), LAYER_TOLERANCE
    yield "attention_gate", "", lambda: check_array_function(
        at.gate_forward, at.gate_backward, [r((N, H)), r((N, C)), r((H, C)), r(C)], ("h", "context", "Wg", "bg"),
        rng), LAYER_TOLERANCE
    alphas, mask = rng.random((N, T, L)), rng.random((N, T)) > 0.3
    _, dalphas = at.doubly_stochastic_penalty(alphas, mask, 0.7)
    num = eval_numerical_gradient(lambda a: at.doubly_stochastic_penalty(a, mask, 0.7)[0], alphas, verbose=False)
    yield "doubly_stochastic_penalty", "", lambda: {"alphas": ("rel", rel_error(num, dalphas))}, LAYER_TOLERANCE
    for cell, (_, k) in RNN_STEP_INPUTS.items():
        p = _params(rng, _attention_shapes(k, W, H, C, A))
        step_keys = tuple(key for key in at.PARAM_KEYS if key not in ("att.Wr", "att.b"))  # they reach it via proj
        lstm = cell == "lstm"

        def step_forward(x, prev_h, *rest, cell=cell, lstm=lstm):
            prev_c, (regions, proj, params) = (rest[0], rest[1:]) if lstm else (None, rest)
            next_h, next_c, alpha, cache = at.attention_cell_step_forward(cell, x, prev_h, prev_c, regions, proj,
                                                                          params)
            return (next_h, next_c, alpha, cache) if lstm else (next_h, alpha, cache)

        def step_backward(dnext_h, *rest, lstm=lstm):
            dnext_c, (dalpha, cache) = (rest[0], rest[1:]) if lstm else (None, rest)
            dx, dprev_h, dprev_c, dregions, dproj, g = at.attention_cell_step_backward(dnext_h, dnext_c, dalpha,
                                                                                     cache)
            return (dx, dprev_h, *((dprev_c,) if lstm else ()), dregions, dproj, g)

        n_in = 5 if lstm else 4
        fwd, bwd = _with_params(step_forward, step_backward, n_in, step_keys)
        inputs = [r((N, W)), r((N, H)), *((r((N, H)),) if lstm else ()), r((N, L, C)), 0.5 * r((N, L, A))]
        names = ("x", "prev_h", *(("prev_c",) if lstm else ()), "regions", "proj")
        yield (f"{cell}_attention_step", cell, lambda: check_array_function(
            fwd, bwd, [*inputs, *(p[key] for key in step_keys)], (*names, *step_keys), rng, scaled=("proj",)),
            LAYER_TOLERANCE)
        fwd, bwd = _with_params(functools.partial(at.attention_cell_forward, cell), at.attention_cell_backward, 3,
                                at.PARAM_KEYS)
        yield f"{cell}_attention_sequence", cell, lambda: check_array_function(
            fwd, bwd, [r((N, T, W)), r((N, H)), r((N, L, C)), *(p[key] for key in at.PARAM_KEYS)],
            ("x", "h0", "regions", *at.PARAM_KEYS), rng), LAYER_TOLERANCE
        # ragged: sequences of 4, 3, 1 and 0 steps, in 2 groups (threads)
        sizes = (3, 2, 2, 1)
        fwd, bwd = _with_params(functools.partial(_packed_forward, cell, sizes=sizes), ka.attention_packed_backward,
                                3, at.PARAM_KEYS)  # regions are an input without a gradient here
        regions = r((4, L, C))
        fwd_regions = lambda x, h0, *params, fwd=fwd, regions=regions: fwd(x, h0, regions, *params)
        yield f"{cell}_attention_packed", cell, lambda: check_array_function(
            fwd_regions, bwd, [r((sum(sizes), W)), r((4, H)), *(p[key] for key in at.PARAM_KEYS)],
            ("x", "h0", *at.PARAM_KEYS), rng), LAYER_TOLERANCE
    for cell in RNN_STEP_INPUTS:  # ragged captions and the penalty
        model = CaptioningRNN(VOCAB, input_dim=4, wordvec_dim=3, hidden_dim=H, cell_type=cell, dtype=np.float64,
                              seed=0, attention="soft", region_dim=C, attention_dim=A, attention_penalty=0.7,
                              num_regions=3)  # the regions' places too, as trained by default
        yield "CaptioningRNN.loss (attention)", cell, lambda: model_loss_errors(
            model, rng, N=4, T=6, lengths=(6, 4, 2, 1)), MODEL_TOLERANCE
    # SCST weights scale each caption's word losses alike in every cell (the unweighted
    # penalty included): one cell checks them
    yield "CaptioningRNN.loss (attention, SCST weights)", "lstm", lambda: model_loss_errors(
        CaptioningRNN(VOCAB, input_dim=4, wordvec_dim=3, hidden_dim=H, cell_type="lstm", dtype=np.float64, seed=0,
                      attention="soft", region_dim=C, attention_dim=A), rng, N=4, T=6, lengths=(6, 4, 2, 1),
        weighted=True), MODEL_TOLERANCE


def _packed_forward(cell, x, h0, regions, params, sizes):
    return ka.attention_packed_forward(cell, x, h0, regions, params, sizes, workers=2)


def _transformer_family(rng):
    """Layer norm, attention (causal self-attention and cross-attention), the
    feed-forward block, a decoder layer and CaptioningTransformer's loss."""
    N, T, S, W, nh, F = 2, 4, 3, 6, 2, 5
    r = rng.standard_normal
    yield "layer_norm", "transformer", lambda: check_array_function(
        tl.layer_norm_forward, tl.layer_norm_backward, [r((N, T, W)), 1 + 0.3 * r(W), r(W)],
        ("x", "gamma", "beta"), rng), LAYER_TOLERANCE
    causal = np.tril(np.ones((T, T), dtype=bool))
    names = ("query", "key", "value", "Wq", "bq", "Wk", "bk", "Wv", "bv", "Wo", "bo")
    for kind, kv_len, mask in (("self_attention", T, causal), ("cross_attention", S, None)):
        x, m = r((N, T, W)), r((N, kv_len, W))
        weights = [r((W, W)) if i % 2 == 0 else r(W) for i in range(8)]
        forward = functools.partial(_attention_forward, num_heads=nh, mask=mask)
        yield kind, "transformer", lambda: check_array_function(
            forward, tl.multihead_attention_backward, [x, m, m.copy(), *weights], names, rng), LAYER_TOLERANCE
    yield "feedforward", "transformer", lambda: check_array_function(
        tl.feedforward_forward, tl.feedforward_backward, [r((N, T, W)), r((W, F)), r(F), r((F, W)), r(W)],
        ("x", "W1", "b1", "W2", "b2"), rng), LAYER_TOLERANCE
    layer = {}
    for key in tl.LAYER_PARAM_KEYS:
        shape = ((W, F) if key == "ffn.W1" else (F, W) if key == "ffn.W2" else (F,) if key == "ffn.b1"
                 else (W, W) if ".W" in key else (W,))
        layer[key] = 1 + 0.3 * r(W) if key.endswith("gamma") else r(shape)
    yield "decoder_layer", "transformer", lambda: check_array_function(
        functools.partial(tl.decoder_layer_forward, params=layer, num_heads=nh, attn_mask=causal),
        lambda dout, cache: tl.decoder_layer_backward(dout, cache)[:2],
        [r((N, T, W)), r((N, S, W))], ("x", "memory"), rng), LAYER_TOLERANCE
    # The models' losses are checked at every coordinate of every parameter (one loss per side of
    # each): width 4 (2 heads of 2) and feed-forward 3 keep every part of the 2 layers at half the cost.
    W, F = 4, 3
    model = CaptioningTransformer(VOCAB, input_dim=4, wordvec_dim=W, num_heads=nh, num_layers=2, hidden_dim=F,
                                  max_length=8, dtype=np.float64, seed=0)
    yield "CaptioningTransformer.loss", "transformer", lambda: model_loss_errors(model, rng, D=4), MODEL_TOLERANCE
    yield "CaptioningTransformer.loss (SCST weights)", "transformer", lambda: model_loss_errors(
        model, _spawned(rng), N=4, T=6, D=4, lengths=(6, 4, 2, 1), weighted=True), MODEL_TOLERANCE
    arng = _spawned(rng)  # the memory of the global feature and 3 regions
    model = CaptioningTransformer(VOCAB, input_dim=4, wordvec_dim=W, num_heads=nh, num_layers=2, hidden_dim=F,
                                  max_length=8, dtype=np.float64, seed=0, attention="soft", region_dim=5,
                                  num_regions=3)
    yield "CaptioningTransformer.loss (attention)", "transformer", lambda: model_loss_errors(
        model, arng, N=4, T=6, D=4, lengths=(6, 4, 2, 1)), MODEL_TOLERANCE
    yield "CaptioningTransformer.loss (attention, SCST weights)", "transformer", lambda: model_loss_errors(
        model, arng, N=4, T=6, D=4, lengths=(6, 4, 2, 1), weighted=True), MODEL_TOLERANCE


def _attention_forward(query, key, value, *weights, num_heads, mask):
    return tl.multihead_attention_forward(query, key, value, *weights, num_heads, mask)


# The checks of each model family of capmodel.models, by its FAMILY name.
FAMILY_CHECKS = {CaptioningRNN.FAMILY: _rnn_family, CaptioningTransformer.FAMILY: _transformer_family}


def run(seed=0, layers=None):
    """All checks, or with layers (a collection of layer names) only theirs; returns a list of
    row dicts. The skipped checks draw no inputs, so a selection's checks draw other random
    inputs than they do in the whole suite, and their errors differ from the table's."""
    missing = [fam.FAMILY for fam in models.FAMILIES if fam.FAMILY not in FAMILY_CHECKS]
    if missing:
        raise ValueError(f"no gradient checks for the model families {', '.join(missing)}; add them to "
                         "capmodel.app.gradcheck_suite.FAMILY_CHECKS")
    rng = np.random.default_rng(seed)
    rows = []
    # BLAS on one thread for the whole run, as the kernels' threaded groups set it anyway: the
    # kernels then ask threadpoolctl neither for the thread count nor for the limit on each of
    # the thousands of loss evaluations (a scan of the loaded libraries each, a third of the run)
    with parallel.one_blas_thread():
        checks = itertools.chain(*(FAMILY_CHECKS[fam.FAMILY](rng) for fam in models.FAMILIES), _shared_layers(rng))
        for layer, cell, check, tol in checks:
            if layers is not None and layer not in layers:
                continue
            for param, (measure, err) in check().items():  # before the next check: it reads the loop's values
                rows.append({"layer": layer, "cell": cell, "param": param, "measure": measure, "error": err,
                             "tolerance": tol, "ok": bool(err < tol)})
    return rows
