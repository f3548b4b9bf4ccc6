"""Tests of capmodel.classifiers.transformer.CaptioningTransformer."""

import json

import numpy as np
import pytest

from capmodel import decoding
from capmodel import transformer_layers as tl
from capmodel.captioning_solver import CaptioningSolver
from capmodel.classifiers.transformer import CaptioningTransformer
from capmodel.coco_utils import decode_captions
from synthetic import WithRegions, random_data
from capmodel.gradient_check import eval_numerical_gradient, rel_error

VOCAB = {"<NULL>": 0, "<START>": 1, "<END>": 2, "<UNK>": 3, **{f"w{i}": i for i in range(4, 9)}}


def small_model(dtype=np.float64, dropout=0.0, seed=0, **kwargs):
    args = dict(input_dim=5, wordvec_dim=8, num_heads=2, num_layers=2, hidden_dim=12, max_length=10)
    args.update(kwargs)
    return CaptioningTransformer(VOCAB, dtype=dtype, dropout=dropout, seed=seed, **args)


def randomize(model, rng):
    """O(1) weights everywhere: at the 0.02 init most gradients are so small that the check
    would measure finite-difference noise instead of the gradient."""
    for k, v in model.params.items():
        if k.endswith("gamma"):
            model.params[k] = (1 + 0.3 * rng.standard_normal(v.shape)).astype(model.dtype)
        else:
            model.params[k] = (0.5 * rng.standard_normal(v.shape)).astype(model.dtype)


def padded_captions(rng, N, T, V, lengths=None):
    """<START>, words, <END>, then <NULL> padding; (N, T + 1) ints."""
    captions = np.zeros((N, T + 1), dtype=np.int64)
    captions[:, 0] = 1
    lengths = rng.integers(1, T, size=N) if lengths is None else lengths
    for i, n in enumerate(lengths):
        captions[i, 1:n + 1] = rng.integers(4, V, size=n)
        captions[i, n + 1] = 2
    return captions


def full_scores(model, features, captions_in):
    """Scores (N, T, V) of every position from one full causal forward pass (no dropout)."""
    p = model.params
    T = captions_in.shape[1]
    memory = (features @ p["W_proj"] + p["b_proj"])[:, None]
    x = p["W_embed"][captions_in] + model.pe[:T]
    causal = np.tril(np.ones((T, T), dtype=bool))
    for i in range(model.num_layers):
        layer = {k: p[f"layers.{i}.{k}"] for k in tl.LAYER_PARAM_KEYS}
        x, _ = tl.decoder_layer_forward(x, memory, layer, model.num_heads, causal)
    return x @ p["W_vocab"] + p["b_vocab"]


# ------------------------------------------------------------------- gradients


def zero_gradient(name):
    """Parameters whose exact gradient is zero, which capmodel returns as exact zeros: key
    biases (a softmax ignores a constant added to a row of scores) and the cross-attention
    query/key projections (attention over the one memory position has weight 1)."""
    return name.endswith(".bk") or any(name.endswith(f"cross_attn.{k}") for k in ("Wq", "bq", "Wk"))


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_loss_gradients_numeric(dropout):
    rng = np.random.default_rng(231)
    N, T = 3, 5
    model = small_model(dropout=dropout, wordvec_dim=4, hidden_dim=6)  # ~900 weights, 2 losses each
    randomize(model, rng)
    features = rng.standard_normal((N, 5))
    captions = padded_captions(rng, N, T, len(VOCAB), lengths=[4, 2, 3])
    loss_fn = lambda: model.loss(features, captions, dropout_rng=np.random.default_rng(7))
    loss, grads = loss_fn()
    if dropout:
        assert loss != pytest.approx(model.loss(features, captions, training=False)[0])  # dropout acts
    assert set(grads) == set(model.params)
    for name in model.params:
        num = eval_numerical_gradient(lambda _: loss_fn()[0], model.params[name], verbose=False)
        if zero_gradient(name):
            assert not grads[name].any() and np.abs(num).max() < 1e-9, name
            continue
        # The loss is ~9, so centred differences carry ~2e-10 absolute noise: relative to
        # each parameter's largest gradient entry the error stays below 1e-7 (measured
        # <= 4e-8), while rel_error, the maximum over entries, is set by the smallest
        # entries (measured <= 9e-7 here; CaptioningRNN's bound is 1e-5). A wrong
        # gradient is off by ~1e-1 on both.
        assert np.abs(num - grads[name]).max() < 1e-7 * np.abs(grads[name]).max(), name
        assert rel_error(num, grads[name]) < 1e-5, name


def test_training_false_turns_dropout_off():
    rng = np.random.default_rng(1)
    model = small_model(dropout=0.5)
    randomize(model, rng)
    features, captions = rng.standard_normal((2, 5)), padded_captions(rng, 2, 4, len(VOCAB))
    plain = small_model()
    plain.params = model.params
    assert model.loss(features, captions, training=False)[0] == plain.loss(features, captions)[0]
    assert model.loss(features, captions)[0] != plain.loss(features, captions)[0]


# ------------------------------------------------------------------- the loss


def test_initial_loss_near_log_v_per_token():
    rng = np.random.default_rng(0)
    V, N, T = 50, 64, 10
    vocab = {"<NULL>": 0, "<START>": 1, "<END>": 2, **{f"w{i}": i for i in range(3, V)}}
    model = CaptioningTransformer(vocab, input_dim=32, wordvec_dim=16, num_heads=2, seed=0)
    captions = rng.integers(1, V, size=(N, T + 1))  # no <NULL>: every position counts
    loss, _ = model.loss(rng.standard_normal((N, 32)), captions)
    assert abs(loss / T - np.log(V)) < 0.02 * np.log(V)


def test_null_positions_contribute_nothing():
    """The padded batch loss is the mean of each caption's loss without its padding."""
    rng = np.random.default_rng(2)
    model = small_model()
    randomize(model, rng)
    N, T = 4, 7
    features = rng.standard_normal((N, 5))
    lengths = [6, 1, 3, 4]
    captions = padded_captions(rng, N, T, len(VOCAB), lengths=lengths)
    loss, grads = model.loss(features, captions)
    parts = [model.loss(features[i:i + 1], captions[i:i + 1, :n + 2]) for i, n in enumerate(lengths)]
    assert loss == pytest.approx(np.mean([l for l, _ in parts]), rel=1e-12)
    for k in grads:
        assert np.allclose(grads[k], np.mean([g[k] for _, g in parts], axis=0), rtol=1e-9, atol=1e-12), k
    all_null = captions.copy()
    all_null[:, 1:] = 0
    loss0, grads0 = model.loss(features, all_null)
    assert loss0 == 0 and not any(g.any() for g in grads0.values())


def test_param_names_and_shapes():
    m = CaptioningTransformer(VOCAB, input_dim=7, wordvec_dim=6, num_heads=3, num_layers=2, hidden_dim=10)
    shapes = {k: v.shape for k, v in m.params.items()}
    expected = {"W_proj": (7, 6), "b_proj": (6,), "W_embed": (9, 6), "W_vocab": (6, 9), "b_vocab": (9,)}
    for i in range(2):
        for block in ("self_attn", "cross_attn"):
            expected.update({f"layers.{i}.{block}.W{x}": (6, 6) for x in "qkvo"})
            expected.update({f"layers.{i}.{block}.b{x}": (6,) for x in "qkvo"})
        expected.update({f"layers.{i}.ffn.W1": (6, 10), f"layers.{i}.ffn.b1": (10,),
                         f"layers.{i}.ffn.W2": (10, 6), f"layers.{i}.ffn.b2": (6,)})
        expected.update({f"layers.{i}.norm{n}.{k}": (6,) for n in (1, 2, 3) for k in ("gamma", "beta")})
    assert shapes == expected
    assert CaptioningTransformer(VOCAB, input_dim=7, wordvec_dim=6, num_heads=3).hidden_dim == 24  # 4 * W


def test_float32_model_stays_float32():
    rng = np.random.default_rng(0)
    model = small_model(dtype=np.float32, dropout=0.2)
    features = rng.standard_normal((2, 5))  # float64 in, float32 throughout
    loss, grads = model.loss(features, padded_captions(rng, 2, 5, len(VOCAB)))
    assert all(p.dtype == np.float32 for p in model.params.values())
    assert all(g.dtype == np.float32 for g in grads.values())
    state, step = model.decoder(features)
    state, scores = step(state, np.array([1, 1]))
    assert scores.dtype == np.float32 and all(s.dtype == np.float32 for s in state)
    assert model.dtype == np.float32 and isinstance(model.rng, np.random.Generator)


def test_same_seed_same_weights():
    a, b, c = small_model(seed=3), small_model(seed=3), small_model(seed=4)
    assert all(np.array_equal(a.params[k], b.params[k]) for k in a.params)
    assert not np.array_equal(a.params["W_embed"], c.params["W_embed"])


@pytest.mark.parametrize("features, captions, message", [
    (np.zeros((2, 4)), np.ones((2, 3), dtype=int), r"features must have shape \(N, 5\), got \(2, 4\)"),
    (np.zeros((2, 5)), np.ones((3, 3), dtype=int), r"captions must have shape \(N=2, T\+1\).*got \(3, 3\)"),
    (np.zeros((2, 5)), np.ones((2, 1), dtype=int), r"captions must have shape"),
    (np.zeros((2, 5)), np.ones((2, 3)), "integer word ids"),
    (np.zeros((2, 5)), np.full((2, 3), 9), r"outside the vocabulary \[0, 9\)"),
    (np.zeros((2, 5)), np.ones((2, 12), dtype=int), "T=11 input words, more than the model's max_length=10"),
])
def test_bad_input_raises_value_error(features, captions, message):
    with pytest.raises(ValueError, match=message):
        small_model().loss(features, captions)


@pytest.mark.parametrize("kwargs, message", [
    ({"wordvec_dim": 9, "num_heads": 3}, "even and divisible by num_heads=3"),
    ({"wordvec_dim": 8, "num_heads": 3}, "divisible by num_heads=3"),
    ({"num_layers": 0}, "num_layers must be a positive integer"),
    ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
])
def test_bad_construction_raises_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        small_model(**kwargs)
    with pytest.raises(ValueError, match="<NULL>"):
        CaptioningTransformer({"a": 0, "b": 1})


# ------------------------------------------------------------------- decoding


@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-12), (np.float32, 2e-5)])
def test_decoder_steps_equal_full_forward_scores(dtype, tol):
    rng = np.random.default_rng(4)
    model = small_model(dtype=dtype)
    randomize(model, rng)
    N, T = 3, 8
    features = rng.standard_normal((N, 5)).astype(dtype)
    captions_in = rng.integers(0, len(VOCAB), size=(N, T))
    expected = full_scores(model, features, captions_in)
    state, step = model.decoder(features)
    for t in range(T):
        state, scores = step(state, captions_in[:, t])
        assert scores.shape == (N, len(VOCAB))
        assert rel_error(expected[:, t], scores) < tol, f"position {t}"
        assert all(s.shape[0] == N for s in state) and state[2].shape[1] == t + 1


def test_decoder_state_rows_can_be_reordered():
    """Beam search repeats and reorders rows: a reordered state steps like the reordered batch."""
    rng = np.random.default_rng(5)
    model = small_model()
    randomize(model, rng)
    features = rng.standard_normal((3, 5))
    state, step = model.decoder(features)
    state, _ = step(state, np.array([1, 1, 1]))
    state, _ = step(state, np.array([4, 5, 6]))
    rows = np.array([2, 0, 0, 1])
    _, scores = step(tuple(s[rows] for s in state), np.array([7, 8, 8, 4]))
    state_b, step_b = model.decoder(features[rows])
    state_b, _ = step_b(state_b, np.array([1, 1, 1, 1]))
    state_b, _ = step_b(state_b, np.array([6, 4, 4, 5]))
    _, expected = step_b(state_b, np.array([7, 8, 8, 4]))
    assert rel_error(expected, scores) < 1e-12


def test_decoding_beyond_max_length_raises():
    model = small_model(max_length=4)
    features = np.zeros((2, 5))
    state, step = model.decoder(features)
    for _ in range(4):
        state, _ = step(state, np.array([1, 1]))
    with pytest.raises(ValueError, match="cannot decode position 5: the model has max_length=4"):
        step(state, np.array([1, 1]))
    with pytest.raises(ValueError, match="max_length=4"):
        model.sample(features, max_length=5)


def test_greedy_beam_and_temperature_run():
    rng = np.random.default_rng(6)
    model = small_model()
    randomize(model, rng)
    features = rng.standard_normal((4, 5))
    greedy = model.sample(features, max_length=8)
    assert greedy.shape == (4, 8) and greedy.dtype == np.int64
    assert not (greedy == 1).any()  # never <START>; <NULL> only after <END>
    ended = np.cumsum(greedy == 2, axis=1) - (greedy == 2) > 0
    assert np.array_equal(greedy == 0, ended)
    beam1 = model.sample(features, max_length=8, method="beam", beam_size=1)
    assert np.array_equal(beam1, greedy)
    beam3 = model.sample(features, max_length=8, method="beam", beam_size=3, length_norm=0.0)
    assert np.all(decoding.sequence_log_prob(model, features, beam3)
                  >= decoding.sequence_log_prob(model, features, greedy) - 1e-9)
    hot = model.sample(features, max_length=8, method="temperature", temperature=1.0, rng=3)
    assert np.array_equal(hot, model.sample(features, max_length=8, method="temperature", temperature=1.0, rng=3))
    cold = model.sample(features, max_length=8, method="temperature", temperature=1e-4, rng=3)
    assert np.array_equal(cold, greedy)  # a near-zero temperature is greedy


# ------------------------------------------------------------- description


def test_describe_round_trip():
    model = small_model(dtype=np.float32, dropout=0.1, seed=0)
    desc = json.loads(json.dumps(model.describe()))
    assert desc == {"family": "transformer", "input_dim": 5, "wordvec_dim": 8, "num_heads": 2, "num_layers": 2,
                    "max_length": 10, "hidden_dim": 12, "dropout": 0.1, "dtype": "float32", "word_to_idx": VOCAB}
    rebuilt = CaptioningTransformer.from_description(desc)
    assert rebuilt.describe() == model.describe()
    assert rebuilt.idx_to_word == model.idx_to_word
    assert {k: (v.shape, v.dtype) for k, v in rebuilt.params.items()} == \
           {k: (v.shape, v.dtype) for k, v in model.params.items()}
    assert all(np.array_equal(rebuilt.params[k], model.params[k]) for k in model.params)  # both seed 0


@pytest.mark.parametrize("change, message", [
    ({"family": "rnn"}, 'family "rnn", not "transformer"'),
    ({"num_heads": None}, "lacks num_heads"),
])
def test_from_description_rejects_other_models(change, message):
    desc = small_model().describe()
    desc.update(change)
    if change.get("num_heads", 0) is None:
        del desc["num_heads"]
    with pytest.raises(ValueError, match=message):
        CaptioningTransformer.from_description(desc)


# ---------------------------------------------------------------- overfitting


@pytest.mark.slow
def test_overfits_50_examples_and_samples_them_back():
    """CS231n's check: 50 captions, Adam, 100 epochs of batch 25 (W=128 here for speed)."""
    data = random_data(num_images=50, captions_per_image=1, D=64, num_words=30, seed=1)
    model = CaptioningTransformer(data["word_to_idx"], input_dim=64, wordvec_dim=128, num_heads=2, num_layers=2,
                                  max_length=30, seed=0)
    solver = CaptioningSolver(model, data, update_rule="adam", num_epochs=100, batch_size=25,
                              optim_config={"learning_rate": 3e-3}, verbose=False, seed=0)
    solver.train()
    assert len(solver.loss_history) == 200
    assert solver.loss_history[-1] < 0.1
    features = data["train_features"][data["train_image_idxs"]]
    generated = decode_captions(model.sample(features, max_length=16), data["idx_to_word"], strip_special=True)
    reference = decode_captions(data["train_captions"], data["idx_to_word"], strip_special=True)
    assert generated == reference


# ------------------------------------------------------------------ attention


def attention_model(dtype=np.float64, seed=0, C=3, **kwargs):
    return small_model(dtype=dtype, seed=seed, attention="soft", region_dim=C, **kwargs)


def full_scores_over(model, features, regions, captions_in):
    """full_scores with the memory of the global feature and the regions, built by hand."""
    p = model.params
    T = captions_in.shape[1]
    memory = np.concatenate([(features @ p["W_proj"] + p["b_proj"])[:, None],
                             regions @ p["W_proj_regions"] + p["b_proj_regions"]], axis=1)
    x = p["W_embed"][captions_in] + model.pe[:T]
    causal = np.tril(np.ones((T, T), dtype=bool))
    for i in range(model.num_layers):
        layer = {k: p[f"layers.{i}.{k}"] for k in tl.LAYER_PARAM_KEYS}
        x, cache = tl.decoder_layer_forward(x, memory, layer, model.num_heads, causal)
    return x @ p["W_vocab"] + p["b_vocab"], tl.cross_attention_weights(cache)


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_attention_loss_gradients_numeric(dropout):
    rng = np.random.default_rng(40)
    model = attention_model(dropout=dropout)
    randomize(model, rng)
    N, T = 3, 5
    features, regions = rng.standard_normal((N, 5)), rng.standard_normal((N, 4, 3))
    captions = padded_captions(rng, N, T, len(VOCAB), lengths=[4, 2, 1])
    f = lambda: model.loss(features, captions, dropout_rng=np.random.default_rng(2), regions=regions)
    _, grads = f()
    assert set(grads) == set(model.params)
    for name in sorted(model.params):
        num = eval_numerical_gradient(lambda _: f()[0], model.params[name], verbose=False)
        if name.endswith(".bk"):  # the softmax cancels it: exactly zero
            assert not grads[name].any() and np.abs(num).max() < 1e-8, name
            continue
        assert np.abs(num - grads[name]).max() / np.abs(grads[name]).max() < 1e-7, name


@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-12), (np.float32, 2e-5)])
def test_attention_decoder_steps_equal_full_forward_scores(dtype, tol):
    rng = np.random.default_rng(41)
    model = attention_model(dtype=dtype)
    randomize(model, rng)
    N, T = 3, 6
    features, regions = rng.standard_normal((N, 5)).astype(dtype), rng.standard_normal((N, 4, 3)).astype(dtype)
    captions_in = rng.integers(0, len(VOCAB), size=(N, T))
    expected, _ = full_scores_over(model, features, regions, captions_in)
    state, step = model.decoder(features, regions)
    assert state[0].shape == (N, 5, 8)  # the memory keys: the global feature and 4 regions
    for t in range(T):
        state, scores = step(state, captions_in[:, t])
        assert rel_error(expected[:, t], scores) < tol, f"position {t}"


def test_attention_memory_attends_for_real_and_attend_returns_where():
    rng = np.random.default_rng(42)
    model = attention_model()
    randomize(model, rng)
    N, T, L = 3, 5, 4
    features, regions = rng.standard_normal((N, 5)), rng.standard_normal((N, L, 3))
    captions = padded_captions(rng, N, T, len(VOCAB))
    _, probs = full_scores_over(model, features, regions, captions[:, :-1])  # (N, nh, T, 1 + L)
    alphas = model.attend(features, captions, regions)
    assert alphas.shape == (N, T, L)
    want = probs.mean(axis=1)[:, :, 1:]
    np.testing.assert_allclose(alphas, want / want.sum(axis=2, keepdims=True), rtol=1e-12)
    assert alphas.std() > 0.01  # not the always-1 weight of a one-position memory
    other = regions.copy()
    other[:, 0] += 3.0  # the regions change the captions' scores
    assert not np.allclose(model.loss(features, captions, regions=regions)[0],
                           model.loss(features, captions, regions=other)[0])


def test_attention_beam_one_is_greedy_and_sampling_runs():
    rng = np.random.default_rng(43)
    model = attention_model(dtype=np.float32)
    randomize(model, rng)
    features, regions = rng.standard_normal((5, 5)), rng.standard_normal((5, 4, 3)).astype(np.float16)
    bound = WithRegions(model, regions)
    greedy = decoding.greedy(bound, features, 8)
    assert np.array_equal(decoding.beam_search(bound, features, 8, beam_size=1), greedy)
    beam = decoding.beam_search(bound, features, 8, beam_size=3)
    assert np.all(decoding.sequence_log_prob(bound, features, beam)
                  >= decoding.sequence_log_prob(bound, features, greedy) - 1e-4)
    sampled = decoding.temperature_sample(bound, features, 8, temperature=2.0, rng=1)
    assert sampled.shape == (5, 8)


def test_attention_parameters_describe_and_checkpoint(tmp_path):
    from capmodel import checkpoints, models

    plain, model = small_model(seed=4), attention_model(seed=4, C=7)
    for k, v in plain.params.items():
        assert np.array_equal(model.params[k], v), k
    assert {k: v.shape for k, v in model.params.items() if k not in plain.params} == {
        "W_proj_regions": (7, 8), "b_proj_regions": (8,)}
    assert model.uses_regions and not plain.uses_regions and "attention" not in plain.describe()
    desc = model.describe()
    assert (desc["attention"], desc["region_dim"]) == ("soft", 7)
    assert models.from_description(json.loads(json.dumps(desc))).describe() == desc
    checkpoints.save_model(tmp_path / "m", model)
    loaded = checkpoints.load_model(tmp_path / "m")[0]
    rng = np.random.default_rng(44)
    features, regions = rng.standard_normal((2, 5)), rng.standard_normal((2, 3, 7))
    captions = padded_captions(rng, 2, 4, len(VOCAB))
    assert loaded.loss(features, captions, regions=regions)[0] == model.loss(features, captions, regions=regions)[0]


@pytest.mark.parametrize("make, call, message", [
    (attention_model, lambda m, f, c, r: m.loss(f, c), "needs regions"),
    (attention_model, lambda m, f, c, r: m.decoder(f, r[:, :, :2]), r"regions must have shape \(N=2, L, 3\)"),
    (small_model, lambda m, f, c, r: m.decoder(f, r), "does not attend over image regions"),
    (small_model, lambda m, f, c, r: m.attend(f, c, r), "does not attend over image regions"),
    (lambda: small_model(attention="soft"), None, "needs region_dim"),
])
def test_attention_input_errors(make, call, message):
    rng = np.random.default_rng(45)
    features, regions = rng.standard_normal((2, 5)), rng.standard_normal((2, 3, 3))
    with pytest.raises(ValueError, match=message):
        call(make(), features, padded_captions(rng, 2, 4, len(VOCAB)), regions)
