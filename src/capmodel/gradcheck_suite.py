"""Numeric gradient checks of every layer and of the model loss, as a table.

Used by ``capmodel gradcheck`` (the workflow's gradcheck stage). Everything runs in
float64 on small random inputs drawn from a seed. Each row: layer, cell, param,
rel_error, tolerance, ok.
"""

import numpy as np

from capmodel import rnn_layers as rl
from capmodel.classifiers.rnn import CELLS, CaptioningRNN
from capmodel.gradient_check import eval_numerical_gradient, eval_numerical_gradient_array, rel_error

# Max relative error is dominated by near-zero entries; typical values are 1e-8 and a
# wrong gradient gives ~1e-1 (see tests/test_rnn_layers.py).
LAYER_TOLERANCE = 1e-6
MODEL_TOLERANCE = 1e-5

STEPS = {
    "rnn": (rl.rnn_step_forward, rl.rnn_step_backward, ("x", "prev_h", "Wx", "Wh", "b")),
    "lstm": (rl.lstm_step_forward, rl.lstm_step_backward, ("x", "prev_h", "prev_c", "Wx", "Wh", "b")),
    "gru": (rl.gru_step_forward, rl.gru_step_backward, ("x", "prev_h", "Wx", "Wh", "b")),
}


def _check_array_function(forward, backward, inputs, names, rng):
    """rel_error of backward against numeric gradients, for each input of forward."""
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
        errors[name] = rel_error(eval_numerical_gradient_array(f, x, flat_dout), analytic[i])
    return errors


def run(seed=0):
    """All checks; returns a list of row dicts."""
    rng = np.random.default_rng(seed)
    rows = []

    def add(layer, cell, errors, tol):
        for param, err in errors.items():
            rows.append({"layer": layer, "cell": cell, "param": param, "rel_error": err,
                         "tolerance": tol, "ok": bool(err < tol)})

    N, T, D, H = 3, 5, 4, 5
    for cell, (fwd, bwd, k) in CELLS.items():
        step_f, step_b, names = STEPS[cell]
        shapes = {"x": (N, D), "prev_h": (N, H), "prev_c": (N, H), "Wx": (D, k * H), "Wh": (H, k * H), "b": (k * H,)}
        add(f"{cell}_step", cell, _check_array_function(
            step_f, step_b, [rng.standard_normal(shapes[n]) for n in names], names, rng), LAYER_TOLERANCE)
        seq_names = ("x", "h0", "Wx", "Wh", "b")
        seq_shapes = [(N, T, D), (N, H), (D, k * H), (H, k * H), (k * H,)]
        add(f"{cell}_sequence", cell, _check_array_function(
            fwd, bwd, [rng.standard_normal(s) for s in seq_shapes], seq_names, rng), LAYER_TOLERANCE)

    V = 7
    x = rng.integers(V, size=(N, T))
    W = rng.standard_normal((V, D))
    out, cache = rl.word_embedding_forward(x, W)
    dout = rng.standard_normal(out.shape)
    num = eval_numerical_gradient_array(lambda W: rl.word_embedding_forward(x, W)[0], W, dout)
    add("word_embedding", "", {"W": rel_error(num, rl.word_embedding_backward(dout, cache))}, LAYER_TOLERANCE)

    add("temporal_affine", "", _check_array_function(
        rl.temporal_affine_forward, rl.temporal_affine_backward,
        [rng.standard_normal((N, T, D)), rng.standard_normal((D, V)), rng.standard_normal(V)], ("x", "w", "b"), rng),
        LAYER_TOLERANCE)

    scores = rng.standard_normal((N, T, V))
    y = rng.integers(V, size=(N, T))
    mask = rng.random((N, T)) > 0.3
    _, dx = rl.temporal_softmax_loss(scores, y, mask)
    num = eval_numerical_gradient(lambda s: rl.temporal_softmax_loss(s, y, mask)[0], scores, verbose=False)
    add("temporal_softmax_loss", "", {"x": rel_error(num, dx)}, LAYER_TOLERANCE)

    vocab = {"<NULL>": 0, "<START>": 1, "<END>": 2, "<UNK>": 3, "cat": 4, "dog": 5}
    features = rng.standard_normal((2, D))
    captions = rng.integers(len(vocab), size=(2, 4))
    for cell in CELLS:
        model = CaptioningRNN(vocab, input_dim=D, wordvec_dim=3, hidden_dim=H, cell_type=cell,
                              dtype=np.float64, seed=seed)
        for name, v in model.params.items():
            model.params[name] = 0.5 * rng.standard_normal(v.shape)
        _, grads = model.loss(features, captions)
        errors = {}
        for name in sorted(model.params):
            num = eval_numerical_gradient(lambda _: model.loss(features, captions)[0], model.params[name],
                                          verbose=False)
            errors[name] = rel_error(num, grads[name])
        add("CaptioningRNN.loss", cell, errors, MODEL_TOLERANCE)
    return rows
