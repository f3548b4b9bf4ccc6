"""Tests of capmodel.classifiers.rnn.CaptioningRNN."""

import numpy as np
import pytest

from capmodel.classifiers.rnn import CaptioningRNN
from capmodel.gradient_check import eval_numerical_gradient, rel_error
from synthetic import WithRegions

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


# ------------------------------------------------------------------ attention

ATT_VOCAB = {"<NULL>": 0, "<START>": 1, "<END>": 2, "<UNK>": 3, **{f"w{i}": i for i in range(4, 14)}}


def attention_model(cell_type="lstm", dtype=np.float64, seed=0, C=5, **kwargs):
    return CaptioningRNN(ATT_VOCAB, input_dim=4, wordvec_dim=6, hidden_dim=7, cell_type=cell_type, dtype=dtype,
                         seed=seed, attention="soft", region_dim=C, attention_dim=8, **kwargs)


def ragged_batch(rng, N=5, T=7, L=3, C=5, V=len(ATT_VOCAB)):
    captions = rng.integers(3, V, size=(N, T + 1))
    captions[:, 0] = 1
    for i, n in enumerate([8, 5, 2, 6, 1][:N]):  # unsorted lengths; the last caption scores nothing
        captions[i, n:] = 0
    return rng.standard_normal((N, 4)), captions, rng.standard_normal((N, L, C))


def _readable_attention_loss(model, features, captions, regions, dropout_rng=None):
    """The attention model's loss by the readable layers: every position of the padded
    batch through capmodel.attention's cell, the masked temporal softmax, the penalty."""
    from capmodel import attention as at
    from capmodel import rnn_layers as rl
    from capmodel.layers import dropout_mask

    p = model.params
    cin, cout = captions[:, :-1], captions[:, 1:]
    N, T = cin.shape
    x_mask = dropout_mask((N, T, model.wordvec_dim), model.dropout, dropout_rng, model.dtype)
    x = p["W_embed"][cin] if x_mask is None else p["W_embed"][cin] * x_mask
    h, alphas, _ = at.attention_cell_forward(model.cell_type, x, features @ p["W_proj"] + p["b_proj"], regions, p)
    h_mask = dropout_mask((N, T, model.hidden_dim), model.dropout, dropout_rng, model.dtype)
    h = h if h_mask is None else h * h_mask
    scores, _ = rl.temporal_affine_forward(h, p["W_vocab"], p["b_vocab"])
    loss, _ = rl.temporal_softmax_loss(scores, cout, cout != 0)
    penalty, _ = at.doubly_stochastic_penalty(alphas, cout != 0, model.attention_penalty)
    return loss + penalty


@pytest.mark.parametrize("cell_type", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("dropout", [0.0, 0.3])
@pytest.mark.usefixtures("one_blas_thread")  # ~1,700 losses: threadpoolctl asked once, not each time
def test_attention_loss_is_the_readable_computation_and_its_gradients_numeric(cell_type, dropout):
    rng = np.random.default_rng(30)
    model = attention_model(cell_type, dropout=dropout, attention_penalty=0.7)
    for k, v in model.params.items():
        model.params[k] = 0.5 * rng.standard_normal(v.shape)
    features, captions, regions = ragged_batch(rng)
    f = lambda: model.loss(features, captions, dropout_rng=np.random.default_rng(9), regions=regions)
    loss, grads = f()
    assert loss == pytest.approx(_readable_attention_loss(model, features, captions, regions,
                                                          np.random.default_rng(9)), rel=1e-12)
    for name in sorted(model.params):
        num = eval_numerical_gradient(lambda _: f()[0], model.params[name], verbose=False)
        assert np.abs(num - grads[name]).max() / np.abs(grads[name]).max() < 1e-7, name


def test_penalty_is_that_of_the_attended_weights_at_the_scored_positions():
    rng = np.random.default_rng(31)
    from capmodel import attention as at

    features, captions, regions = ragged_batch(rng)
    with_penalty = attention_model(attention_penalty=2.5)
    without = attention_model(attention_penalty=0.0)
    assert all(np.array_equal(with_penalty.params[k], without.params[k]) for k in without.params)
    alphas = with_penalty.attend(features, captions, regions)
    penalty, _ = at.doubly_stochastic_penalty(alphas, captions[:, 1:] != 0, 2.5)
    got = with_penalty.loss(features, captions, regions=regions)[0] - without.loss(features, captions,
                                                                                   regions=regions)[0]
    assert got == pytest.approx(penalty, rel=1e-10)
    assert penalty > 0


def test_attention_adds_parameters_and_keeps_the_others():
    plain = CaptioningRNN(ATT_VOCAB, input_dim=4, wordvec_dim=6, hidden_dim=7, cell_type="gru", seed=5)
    att = CaptioningRNN(ATT_VOCAB, input_dim=4, wordvec_dim=6, hidden_dim=7, cell_type="gru", seed=5,
                        attention="soft", region_dim=9, attention_dim=11)
    assert not plain.uses_regions and att.uses_regions
    for k, v in plain.params.items():  # drawn first, from the same seed
        assert np.array_equal(att.params[k], v), k
    shapes = {k: v.shape for k, v in att.params.items() if k not in plain.params}
    assert shapes == {"Wc": (9, 21), "att.Wr": (9, 11), "att.b": (11,), "att.Wh": (7, 11), "att.w": (11,),
                      "att.Wg": (7, 9), "att.bg": (9,)}
    assert "attention" not in plain.describe()  # described as before attention existed


@pytest.mark.parametrize("make, call, message", [
    (lambda: attention_model(), lambda m, f, c, r: m.loss(f, c), r"needs regions of shape \(N=5, L, 5\)"),
    (lambda: attention_model(), lambda m, f, c, r: m.loss(f, c, regions=r[:, :, :4]),
     r"regions must have shape \(N=5, L, 5\) with L >= 1, got \(5, 3, 4\)"),
    (lambda: attention_model(), lambda m, f, c, r: m.decoder(f, r[:2]), r"regions must have shape \(N=5"),
    (lambda: attention_model(), lambda m, f, c, r: m.decoder(f), "needs regions"),
    (lambda: CaptioningRNN(ATT_VOCAB, input_dim=4), lambda m, f, c, r: m.loss(f, c, regions=r),
     r"does not attend over image regions \(attention none\), but regions of shape \(5, 3, 5\)"),
    (lambda: CaptioningRNN(ATT_VOCAB, input_dim=4), lambda m, f, c, r: m.attend(f, c, r), "does not attend"),
    (lambda: CaptioningRNN(ATT_VOCAB, input_dim=4, attention="soft"), None, "needs region_dim"),
    (lambda: CaptioningRNN(ATT_VOCAB, input_dim=4, attention="hard", region_dim=3), None,
     'attention must be one of none, soft, got "hard"'),
    (lambda: attention_model(attention_penalty=-1), None, "attention_penalty must be >= 0"),
])
def test_attention_input_errors(make, call, message):
    features, captions, regions = ragged_batch(np.random.default_rng(32))
    with pytest.raises(ValueError, match=message):
        call(make(), features, captions, regions)


@pytest.mark.parametrize("cell_type", ["rnn", "lstm", "gru"])
def test_attention_decoder_steps_give_the_loss_forward_scores(cell_type):
    rng = np.random.default_rng(33)
    model = attention_model(cell_type, dtype=np.float32)
    for k, v in model.params.items():
        model.params[k] = rng.standard_normal(v.shape).astype(np.float32)
    features, captions, regions = ragged_batch(rng)
    captions[captions == 0] = 5  # every position scored
    regions = regions.astype(np.float16)  # as data sets store them: the model casts them
    from capmodel import attention as at

    p = {k: v.astype(np.float64) for k, v in model.params.items()}
    h, _, _ = at.attention_cell_forward(cell_type, p["W_embed"][captions[:, :-1]],
                                        features @ p["W_proj"] + p["b_proj"], regions.astype(np.float64), p)
    want = h @ p["W_vocab"] + p["b_vocab"]  # (N, T, V)
    state, step = model.decoder(features.astype(np.float32), regions)
    for t in range(captions.shape[1] - 1):
        state, scores = step(state, captions[:, t])
        assert scores.dtype == np.float32
        np.testing.assert_allclose(scores, want[:, t], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("cell_type", ["rnn", "lstm", "gru"])
def test_attention_beam_one_is_greedy_and_beam_reorders_the_regions(cell_type):
    from capmodel import decoding

    rng = np.random.default_rng(34)
    model = attention_model(cell_type, dtype=np.float32)
    for k, v in model.params.items():
        model.params[k] = rng.standard_normal(v.shape).astype(np.float32)
    features, regions = rng.standard_normal((9, 4)), rng.standard_normal((9, 6, 5))
    bound = WithRegions(model, regions)
    greedy = decoding.greedy(bound, features, 8)
    assert np.array_equal(decoding.beam_search(bound, features, 8, beam_size=1), greedy)
    beam = decoding.beam_search(bound, features, 8, beam_size=3)
    assert np.all(decoding.sequence_log_prob(bound, features, beam) >= decoding.sequence_log_prob(
        bound, features, greedy) - 1e-4)
    for i in range(0, 9, 4):  # each image alone: the rows of the state never mix images
        alone = decoding.beam_search(WithRegions(model, regions[i : i + 1]), features[i : i + 1], 8, beam_size=3)
        assert np.array_equal(alone[0], beam[i])
    a = decoding.temperature_sample(bound, features, 8, temperature=0.5, rng=3)
    assert np.array_equal(a, decoding.temperature_sample(bound, features, 8, temperature=0.5, rng=3))


def test_attend_gives_weights_per_word_and_region():
    rng = np.random.default_rng(35)
    model = attention_model("gru")
    features, captions, regions = ragged_batch(rng, L=4)
    alphas = model.attend(features, captions, regions)
    assert alphas.shape == (5, 7, 4)
    np.testing.assert_allclose(alphas.sum(axis=2), 1, rtol=1e-12)
    from capmodel import attention as at

    p = model.params
    _, want, _ = at.attention_cell_forward("gru", p["W_embed"][captions[:, :-1]], features @ p["W_proj"] + p["b_proj"],
                                           regions, p)
    np.testing.assert_allclose(alphas, want, rtol=1e-10)


def test_attention_describe_round_trip_and_checkpoint(tmp_path):
    from capmodel import checkpoints, models

    model = attention_model("lstm", dtype=np.float32, attention_penalty=0.25)
    desc = model.describe()
    assert (desc["attention"], desc["region_dim"], desc["attention_dim"], desc["attention_penalty"]) == (
        "soft", 5, 8, 0.25)
    again = models.from_description(desc)
    assert again.describe() == desc
    assert {k: v.shape for k, v in again.params.items()} == {k: v.shape for k, v in model.params.items()}
    checkpoints.save_model(tmp_path / "m", model)
    loaded = checkpoints.load_model(tmp_path / "m")[0]
    features, captions, regions = ragged_batch(np.random.default_rng(36))
    assert loaded.loss(features, captions, regions=regions)[0] == model.loss(features, captions, regions=regions)[0]


def test_from_settings_builds_attention_from_the_settings():
    from capmodel import models

    settings = {"cell_type": "gru", "wordvec_dim": 6, "hidden_dim": 7, "dropout": 0.0, "seed": 2,
                "attention": "soft", "attention_penalty": 0.5}
    model = models.build(ATT_VOCAB, 4, settings, region_dim=12)
    assert (model.uses_regions, model.region_dim, model.attention_penalty) == (True, 12, 0.5)
    plain = models.build(ATT_VOCAB, 4, {**settings, "attention": "none"}, region_dim=12)
    assert not plain.uses_regions  # region_dim is the data set's: it does not switch attention on
    with pytest.raises(ValueError, match="needs region_dim"):
        models.build(ATT_VOCAB, 4, settings)


@pytest.mark.parametrize("cell_type", ["lstm", "gru"])
def test_attention_model_learns_where_to_look(cell_type):
    """The word to say is written in one region, a different one per image, and the global
    features carry nothing: only attention can caption these (Adam, 150 steps)."""
    from capmodel import optim

    rng = np.random.default_rng(37)
    N, L, C = 48, 4, 8
    words = rng.integers(4, 14, size=(N, 2))
    regions = 0.1 * rng.standard_normal((N, L, C)).astype(np.float32)
    where = rng.integers(0, L, size=(N, 2))
    codes = rng.standard_normal((14, C)).astype(np.float32)
    for i in range(N):
        regions[i, where[i, 0]] += codes[words[i, 0]]
        regions[i, where[i, 1]] += codes[words[i, 1]]  # second word in a region of its own (or the same)
    captions = np.c_[np.ones(N, int), words, np.full(N, 2)]
    features = np.zeros((N, 4), np.float32)
    model = CaptioningRNN(ATT_VOCAB, input_dim=4, wordvec_dim=16, hidden_dim=32, cell_type=cell_type, seed=0,
                          attention="soft", region_dim=C)
    configs = {k: {"learning_rate": 1e-2} for k in model.params}
    first = model.loss(features, captions, regions=regions)[0]
    for _ in range(150):
        loss, grads = model.loss(features, captions, regions=regions)
        for k in model.params:
            model.params[k], configs[k] = optim.adam(model.params[k], grads[k], configs[k])
    assert loss < 0.3 * first
    from capmodel import decoding

    said = decoding.greedy(WithRegions(model, regions), features, 3)
    assert np.mean(said[:, 0] == words[:, 0]) > 0.9


def test_threads_may_run_one_attention_models_loss_at_once():
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(38)
    vocab = {"<NULL>": 0, "<START>": 1, "<END>": 2, "<UNK>": 3, **{f"w{i}": i for i in range(4, 30)}}
    model = CaptioningRNN(vocab, input_dim=16, wordvec_dim=32, hidden_dim=48, cell_type="lstm", seed=0,
                          attention="soft", region_dim=24)
    batches = [(rng.standard_normal((40, 16)).astype(np.float32), rng.integers(0, 30, size=(40, 12)),
                rng.standard_normal((40, 9, 24)).astype(np.float32)) for _ in range(6)]
    alone = [model.loss(f, c, regions=r) for f, c, r in batches]
    with ThreadPoolExecutor(3) as pool:
        together = list(pool.map(lambda b: model.loss(b[0], b[1], regions=b[2]), batches * 3))
    # Equal to rounding, not bit for bit: while one loss runs its attention groups BLAS is
    # limited to one thread process-wide (capmodel.kernels.parallel), and OpenBLAS rounds
    # some products differently with one thread than with two.
    for (loss, grads), (want_loss, want) in zip(together, alone * 3):
        assert loss == pytest.approx(want_loss, rel=1e-5)
        for k in want:
            np.testing.assert_allclose(grads[k], want[k], rtol=1e-4, atol=1e-6 * np.abs(want[k]).max(), err_msg=k)
