"""Tests of capmodel.classifiers.rnn.CaptioningRNN."""

import numpy as np
import pytest

from capmodel.classifiers.rnn import CaptioningRNN
from capmodel.gradient_check import eval_numerical_gradient, rel_error

CS231N_VOCAB = {"<NULL>": 0, "cat": 2, "dog": 3}  # no <START>/<END>: loss must still work


@pytest.mark.parametrize("cell_type, feature_range, expected", [
    ("rnn", (-1.5, 0.3), 9.83235591003),
    ("lstm", (-0.5, 1.7), 9.82445935443),
])
def test_loss_matches_cs231n(cell_type, feature_range, expected):
    N, D, W, H, T = 10, 20, 30, 40, 13
    model = CaptioningRNN(CS231N_VOCAB, input_dim=D, wordvec_dim=W, hidden_dim=H, cell_type=cell_type,
                          dtype=np.float64)
    for k, v in model.params.items():
        model.params[k] = np.linspace(-1.4, 1.3, num=v.size).reshape(*v.shape)
    features = np.linspace(*feature_range, num=N * D).reshape(N, D)
    captions = (np.arange(N * T) % len(CS231N_VOCAB)).reshape(N, T)
    loss, _ = model.loss(features, captions)
    assert abs(loss - expected) < 1e-10


@pytest.mark.parametrize("cell_type", ["rnn", "lstm", "gru"])
def test_loss_gradients_numeric(cell_type):
    rng = np.random.default_rng(231)
    N, T, D, W, H = 2, 3, 4, 5, 6
    V = len(CS231N_VOCAB)
    captions = rng.integers(V, size=(N, T))
    features = rng.standard_normal((N, D))
    model = CaptioningRNN(CS231N_VOCAB, input_dim=D, wordvec_dim=W, hidden_dim=H, cell_type=cell_type,
                          dtype=np.float64, seed=0)
    # O(1) weights everywhere: the default W_embed / 100 makes dWx entries so small that
    # the check would measure finite-difference noise instead of the gradient.
    for k, v in model.params.items():
        model.params[k] = 0.5 * rng.standard_normal(v.shape)
    loss, grads = model.loss(features, captions)
    for name in sorted(model.params):
        num = eval_numerical_gradient(lambda _: model.loss(features, captions)[0], model.params[name],
                                      verbose=False)
        # Centred differences of a loss near 10 carry ~1e-10 absolute noise, so entries
        # near 1e-5 reach 1e-6 relative error; a wrong gradient is off by ~1e-1.
        assert rel_error(num, grads[name]) < 1e-5, name


@pytest.mark.parametrize("cell_type", ["rnn", "lstm", "gru"])
def test_loss_gradients_with_fixed_dropout_mask(cell_type):
    rng = np.random.default_rng(1)
    N, T, D, W, H = 3, 4, 4, 5, 6
    vocab = {"<NULL>": 0, "<START>": 1, "<END>": 2, "<UNK>": 3, "a": 4}
    captions = rng.integers(5, size=(N, T))
    features = rng.standard_normal((N, D))
    model = CaptioningRNN(vocab, input_dim=D, wordvec_dim=W, hidden_dim=H, cell_type=cell_type,
                          dtype=np.float64, dropout=0.4, seed=0)
    for k, v in model.params.items():
        model.params[k] = 0.5 * rng.standard_normal(v.shape)
    f = lambda: model.loss(features, captions, dropout_rng=np.random.default_rng(7))
    loss, grads = f()
    no_drop = CaptioningRNN(vocab, input_dim=D, wordvec_dim=W, hidden_dim=H, cell_type=cell_type,
                            dtype=np.float64, seed=0)
    no_drop.params = {k: v.copy() for k, v in model.params.items()}
    assert loss != pytest.approx(no_drop.loss(features, captions)[0])  # dropout really acts
    for name in sorted(model.params):
        num = eval_numerical_gradient(lambda _: f()[0], model.params[name], verbose=False)
        # Centred differences of a loss near 10 carry ~1e-10 absolute noise, so entries
        # near 1e-5 reach 1e-6 relative error; a wrong gradient is off by ~1e-1.
        assert rel_error(num, grads[name]) < 1e-5, name


@pytest.mark.parametrize("cell_type", ["rnn", "lstm", "gru"])
def test_initial_loss_near_log_v_per_token(cell_type):
    rng = np.random.default_rng(0)
    V, N, T = 50, 64, 10
    vocab = {"<NULL>": 0, "<START>": 1, "<END>": 2, **{f"w{i}": i for i in range(3, V)}}
    model = CaptioningRNN(vocab, input_dim=32, wordvec_dim=16, hidden_dim=32, cell_type=cell_type, seed=0)
    captions = rng.integers(1, V, size=(N, T + 1))
    loss, _ = model.loss(rng.standard_normal((N, 32)), captions)
    assert abs(loss / T - np.log(V)) < 0.15 * np.log(V)


@pytest.mark.parametrize("cell_type, k", [("rnn", 1), ("lstm", 4), ("gru", 3)])
def test_param_shapes(cell_type, k):
    vocab = {"<NULL>": 0, "<START>": 1, "<END>": 2, "x": 3}
    m = CaptioningRNN(vocab, input_dim=7, wordvec_dim=5, hidden_dim=6, cell_type=cell_type)
    shapes = {k2: v.shape for k2, v in m.params.items()}
    assert shapes == {"W_proj": (7, 6), "b_proj": (6,), "W_embed": (4, 5), "Wx": (5, k * 6),
                      "Wh": (6, k * 6), "b": (k * 6,), "W_vocab": (6, 4), "b_vocab": (4,)}


def test_float32_model_stays_float32():
    rng = np.random.default_rng(0)
    vocab = {"<NULL>": 0, "<START>": 1, "<END>": 2, "x": 3}
    for cell in ("rnn", "lstm", "gru"):
        m = CaptioningRNN(vocab, input_dim=4, wordvec_dim=3, hidden_dim=5, cell_type=cell, dropout=0.2, seed=0)
        loss, grads = m.loss(rng.standard_normal((2, 4)), rng.integers(4, size=(2, 5)))  # float64 features
        assert all(g.dtype == np.float32 for g in grads.values())
        assert all(p.dtype == np.float32 for p in m.params.values())


def test_same_seed_same_weights():
    vocab = {"<NULL>": 0, "<START>": 1, "<END>": 2, "x": 3}
    a = CaptioningRNN(vocab, input_dim=4, wordvec_dim=3, hidden_dim=5, seed=3)
    b = CaptioningRNN(vocab, input_dim=4, wordvec_dim=3, hidden_dim=5, seed=3)
    assert all(np.array_equal(a.params[k], b.params[k]) for k in a.params)


@pytest.mark.parametrize("kwargs, captions, features, message", [
    ({"cell_type": "transformer"}, None, None, "Invalid cell_type"),
    ({}, np.array([[1, 2, 9]]), np.zeros((1, 4)), "outside the vocabulary"),
    ({}, np.array([[1, 2, 3]]), np.zeros((1, 5)), r"features must have shape \(N, 4\)"),
    ({}, np.array([1, 2, 3]), np.zeros((1, 4)), "captions must have shape"),
    ({}, np.array([[1.0, 2.0]]), np.zeros((1, 4)), "integer word ids"),
])
def test_bad_input_raises_value_error(kwargs, captions, features, message):
    vocab = {"<NULL>": 0, "<START>": 1, "<END>": 2, "x": 3}
    with pytest.raises(ValueError, match=message):
        m = CaptioningRNN(vocab, input_dim=4, wordvec_dim=3, hidden_dim=5, **kwargs)
        m.loss(features, captions)


def test_vocab_without_null_is_refused():
    with pytest.raises(ValueError, match="<NULL>"):
        CaptioningRNN({"a": 0, "b": 1})


def _cs231n_loss(model, features, captions, dropout_rng=None):
    """CaptioningRNN's loss computed as CS231n does: every position of the padded batch
    goes through the cell, and the temporal softmax masks the <NULL> targets."""
    from capmodel import rnn_layers as rl
    from capmodel.layers import dropout_mask

    p = model.params
    forward, backward = getattr(rl, f"{model.cell_type}_forward"), getattr(rl, f"{model.cell_type}_backward")
    cin, cout = captions[:, :-1], captions[:, 1:]
    N, T = cin.shape
    x_mask = dropout_mask((N, T, model.wordvec_dim), model.dropout, dropout_rng, model.dtype)
    h0 = features @ p["W_proj"] + p["b_proj"]
    x, embed_cache = rl.word_embedding_forward(cin, p["W_embed"])
    x = x if x_mask is None else x * x_mask
    h, cell_cache = forward(x, h0, p["Wx"], p["Wh"], p["b"])
    h_mask = dropout_mask((N, T, model.hidden_dim), model.dropout, dropout_rng, model.dtype)
    h = h if h_mask is None else h * h_mask
    scores, affine_cache = rl.temporal_affine_forward(h, p["W_vocab"], p["b_vocab"])
    loss, dscores = rl.temporal_softmax_loss(scores, cout, cout != 0)
    dh, dW_vocab, db_vocab = rl.temporal_affine_backward(dscores, affine_cache)
    dh = dh if h_mask is None else dh * h_mask
    dx, dh0, dWx, dWh, db = backward(dh, cell_cache)
    dx = dx if x_mask is None else dx * x_mask
    return loss, {"W_proj": features.T @ dh0, "b_proj": dh0.sum(axis=0), "Wx": dWx, "Wh": dWh, "b": db,
                  "W_embed": rl.word_embedding_backward(dx, embed_cache), "W_vocab": dW_vocab, "b_vocab": db_vocab}


@pytest.mark.parametrize("cell_type", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_packed_loss_equals_the_padded_computation(cell_type, dropout):
    """The loss skips the states after each caption's last scored word; loss and every
    gradient are those of running the whole padded batch."""
    rng = np.random.default_rng(3)
    N, T, D, W, H = 6, 7, 4, 5, 6
    vocab = {"<NULL>": 0, "<START>": 1, "<END>": 2, "<UNK>": 3, "a": 4, "b": 5}
    captions = rng.integers(3, 6, size=(N, T + 1))
    captions[:, 0] = 1
    for i, n in enumerate([8, 5, 2, 6, 1, 3]):  # unsorted lengths; row 4 scores nothing
        captions[i, n:] = 0
    captions[0, 3] = 0  # a <NULL> inside a caption is not its end
    features = rng.standard_normal((N, D))
    model = CaptioningRNN(vocab, input_dim=D, wordvec_dim=W, hidden_dim=H, cell_type=cell_type,
                          dtype=np.float64, dropout=dropout, seed=0)
    for k, v in model.params.items():
        model.params[k] = 0.5 * rng.standard_normal(v.shape)
    loss, grads = model.loss(features, captions, dropout_rng=np.random.default_rng(9))
    want_loss, want = _cs231n_loss(model, features, captions, dropout_rng=np.random.default_rng(9))
    assert loss == pytest.approx(want_loss, rel=1e-12)
    for name in model.params:
        np.testing.assert_allclose(grads[name], want[name], rtol=1e-9, atol=1e-12, err_msg=name)


def test_loss_reuses_its_temporaries_and_returns_fresh_gradients():
    rng = np.random.default_rng(4)
    N, T, D = 5, 6, 7
    vocab = {"<NULL>": 0, "<START>": 1, "<END>": 2, "<UNK>": 3, "a": 4, "b": 5}
    model = CaptioningRNN(vocab, input_dim=D, wordvec_dim=8, hidden_dim=9, cell_type="lstm", seed=0)
    features = rng.standard_normal((N, D)).astype(np.float32)
    longest = rng.integers(1, 6, size=(N, T))  # no <NULL>: every caption runs all T - 1 steps
    _, first = model.loss(features, longest)
    kept = {k: v.copy() for k, v in first.items()}
    held = {key: model.buffers.array(*key) for key in model.buffers.names()}
    assert len(held) >= 10 and model.buffers.nbytes > 0
    for n in range(1, T):  # shorter packed batches, as every training batch is
        shorter = longest.copy()
        shorter[:, n:] = 0
        model.loss(features, shorter)
        assert model.buffers.names() == sorted(held)
        assert all(model.buffers.array(*key) is a for key, a in held.items())  # same memory, no new pages
    model.loss(features, longest, training=False)  # validation: fresh arrays, the scratch stays as it is
    assert all(model.buffers.array(*key) is a for key, a in held.items())
    for name, g in first.items():  # the gradients are the caller's: later losses leave them alone
        assert np.array_equal(g, kept[name]), name
        assert not any(np.shares_memory(g, a) for a in held.values()), name


def test_threads_may_run_one_models_loss_at_once():
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(6)
    vocab = {"<NULL>": 0, "<START>": 1, "<END>": 2, "<UNK>": 3, **{f"w{i}": i for i in range(4, 30)}}
    model = CaptioningRNN(vocab, input_dim=16, wordvec_dim=32, hidden_dim=48, cell_type="gru", seed=0)
    batches = [(rng.standard_normal((40, 16)).astype(np.float32), rng.integers(0, 30, size=(40, 12)))
               for _ in range(8)]
    alone = [model.loss(f, c) for f, c in batches]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda b: model.loss(*b), batches * 3))
    for (loss, grads), (want_loss, want) in zip(together, alone * 3):
        assert loss == want_loss
        assert all(np.array_equal(grads[k], want[k]) for k in want)
