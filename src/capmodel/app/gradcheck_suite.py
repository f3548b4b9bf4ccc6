"""Numeric gradient checks of every layer and of every model family's loss, as a table.

Used by ``capmodel gradcheck`` (the workflow's gradcheck stage). Everything runs in
float64 on small random inputs drawn from a seed. The layers shared by every model
(embedding, temporal affine, softmax loss) are checked here; each model family adds the
checks of its own layers and of its loss through ``gradient_checks(rng)`` (see
capmodel.models). Each row: layer, cell, param, measure, error, tolerance, ok, where
measure says how the error is taken:
- rel: CS231n's rel_error, the maximum over entries of |num - ana| / (|num| + |ana|)
- scaled: max |num - ana| / max |ana|, for a model loss: the loss is ~10, so centred
  differences carry ~1e-10 absolute noise, which rel_error's smallest entries turn into
  ~1e-6 whatever the code; scaled by the parameter's largest gradient it measures the
  code (a wrong gradient is off by ~1e-1 either way)
- abs: max |num|, where the analytic gradient is exactly zero by construction
"""

import numpy as np

from capmodel import rnn_layers as rl
from capmodel.gradient_check import eval_numerical_gradient, eval_numerical_gradient_array, rel_error

# Max relative error is dominated by near-zero entries; typical values are 1e-8 and a
# wrong gradient gives ~1e-1 (see tests/test_rnn_layers.py).
LAYER_TOLERANCE = 1e-6
MODEL_TOLERANCE = 1e-7  # scaled error
VOCAB = {"<NULL>": 0, "<START>": 1, "<END>": 2, "<UNK>": 3, "cat": 4, "dog": 5}


def check_array_function(forward, backward, inputs, names, rng):
    """{input name: (measure, error)} of backward against numeric gradients of forward.

    forward(*inputs) returns (*outputs, cache); backward(*douts, cache) returns one
    gradient per input, in the order of inputs. Where the analytic gradient is exactly
    zero by construction (attention's key bias, which the softmax cancels), the relative
    error is noise over noise, so the absolute error is reported instead.
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
        errors[name] = ("abs", float(np.abs(num).max())) if not np.any(analytic[i]) else (
            "rel", rel_error(num, analytic[i]))
    return errors


def model_loss_errors(model, rng, N=2, T=4, D=4, lengths=None):
    """{param: ("scaled", error)} of model.loss's gradients, with O(1) random float64 weights,
    on N captions of T random words (<NULL> among them), caption i cut to lengths[i] by
    <NULL> padding if lengths are given."""
    for name, v in model.params.items():
        model.params[name] = (1.0 if name.endswith("gamma") else 0.0) + 0.5 * rng.standard_normal(v.shape)
    features = rng.standard_normal((N, D))
    captions = rng.integers(len(model.word_to_idx), size=(N, T))
    captions[:, 0] = model.word_to_idx["<START>"]
    for i, n in enumerate(lengths or ()):
        captions[i, n:] = model.word_to_idx["<NULL>"]
    _, grads = model.loss(features, captions)
    errors = {}
    for name in sorted(model.params):
        num = eval_numerical_gradient(lambda _: model.loss(features, captions)[0], model.params[name], verbose=False)
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
    yield "word_embedding", "", {"W": ("rel", rel_error(num, rl.word_embedding_backward(dout, cache)))}, LAYER_TOLERANCE
    yield "temporal_affine", "", check_array_function(
        rl.temporal_affine_forward, rl.temporal_affine_backward,
        [rng.standard_normal((N, T, D)), rng.standard_normal((D, V)), rng.standard_normal(V)], ("x", "w", "b"),
        rng), LAYER_TOLERANCE
    scores = rng.standard_normal((N, T, V))
    y = rng.integers(V, size=(N, T))
    mask = rng.random((N, T)) > 0.3
    _, dx = rl.temporal_softmax_loss(scores, y, mask)
    num = eval_numerical_gradient(lambda s: rl.temporal_softmax_loss(s, y, mask)[0], scores, verbose=False)
    yield "temporal_softmax_loss", "", {"x": ("rel", rel_error(num, dx))}, LAYER_TOLERANCE


def run(seed=0):
    """All checks; returns a list of row dicts."""
    from capmodel import models

    rng = np.random.default_rng(seed)
    rows = []
    checks = [*(c for fam in models.FAMILIES for c in fam.gradient_checks(rng)), *_shared_layers(rng)]
    for layer, cell, errors, tol in checks:
        for param, (measure, err) in errors.items():
            rows.append({"layer": layer, "cell": cell, "param": param, "measure": measure, "error": err,
                         "tolerance": tol, "ok": bool(err < tol)})
    return rows
