"""Tests of capmodel.transformer_layers: reference values, numeric gradient checks, the causal
mask, and the cached decoding step against the full forward pass."""

import numpy as np
import pytest

from capmodel import transformer_layers as tl
from capmodel.gradient_check import eval_numerical_gradient_array, rel_error

# Every analytic gradient below must match centred differences to this relative error
# (float64, O(1) inputs); a wrong gradient is off by ~1e-1. rel_error is the maximum over
# entries, and centred differences of these layers carry ~2e-10 absolute noise, so an
# entry below ~2e-3 can exceed 1e-7 by chance: the seeds give entries away from zero.
TOL = 1e-7


def numeric_grads(f, inputs, dout):
    """Numeric gradients of sum(f() * dout) with respect to each array in inputs.

    f takes no arguments and reads the arrays in inputs, which are changed in place.
    """
    return [eval_numerical_gradient_array(lambda _: f(), x, dout) for x in inputs]


def assert_grad_matches(name, num, analytic):
    """rel_error < TOL, except for key biases: their gradient is exactly zero (a softmax
    ignores a constant added to a row of scores), where rel_error would only measure
    the ~1e-11 noise of the centred differences."""
    if name.endswith("bk"):
        assert not analytic.any() and np.abs(num).max() < 1e-9, name
    else:
        assert rel_error(num, analytic) < TOL, name


def attention_params(rng, W, scale=0.5):
    return {k: scale * rng.standard_normal((W, W) if k[0] == "W" else W) for k in tl.ATTENTION_KEYS}


def layer_params(rng, W, F):
    p = {}
    for block in ("self_attn", "cross_attn"):
        p.update({f"{block}.{k}": v for k, v in attention_params(rng, W, scale=0.3).items()})
    p.update({"ffn.W1": 0.5 * rng.standard_normal((W, F)), "ffn.b1": 0.5 * rng.standard_normal(F),
              "ffn.W2": 0.5 * rng.standard_normal((F, W)), "ffn.b2": 0.5 * rng.standard_normal(W)})
    for n in (1, 2, 3):
        p[f"norm{n}.gamma"] = 1 + 0.3 * rng.standard_normal(W)
        p[f"norm{n}.beta"] = 0.3 * rng.standard_normal(W)
    assert set(p) == set(tl.LAYER_PARAM_KEYS)
    return p


def reference_attention(query, key, value, p, num_heads, mask=None):
    """Multi-head attention written out head by head and query by query, as the paper."""
    N, T, W = query.shape
    S = key.shape[1]
    hs = W // num_heads
    q, k, v = query @ p["Wq"] + p["bq"], key @ p["Wk"] + p["bk"], value @ p["Wv"] + p["bv"]
    ctx = np.zeros((N, T, W))
    for n in range(N):
        for h in range(num_heads):
            cols = slice(h * hs, (h + 1) * hs)
            for t in range(T):
                allowed = [s for s in range(S) if mask is None or mask[t, s]]
                e = np.array([q[n, t, cols] @ k[n, s, cols] / np.sqrt(hs) for s in allowed])
                w = np.exp(e - e.max()) / np.exp(e - e.max()).sum()
                ctx[n, t, cols] = sum(wi * v[n, s, cols] for wi, s in zip(w, allowed))
    return ctx @ p["Wo"] + p["bo"]


# ------------------------------------------------------------ positional encoding


def test_positional_encoding_values():
    table = tl.positional_encoding(3, 4, np.float64)
    expected = np.array([
        [0.0, 1.0, 0.0, 1.0],
        [np.sin(1), np.cos(1), np.sin(0.01), np.cos(0.01)],
        [np.sin(2), np.cos(2), np.sin(0.02), np.cos(0.02)],
    ])
    assert rel_error(expected, table) < 1e-12
    assert tl.positional_encoding(50, 6, np.float32).dtype == np.float32


def test_positional_encoding_forward_adds_first_rows():
    x = np.linspace(-1, 1, 2 * 3 * 4).reshape(2, 3, 4)
    table = tl.positional_encoding(5, 4, np.float64)
    out, _ = tl.positional_encoding_forward(x, table)
    assert np.array_equal(out, x + table[None, :3])


def test_positional_encoding_backward_numeric():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 4))
    table = tl.positional_encoding(5, 4, np.float64)
    out, cache = tl.positional_encoding_forward(x, table)
    dout = rng.standard_normal(out.shape)
    (num,) = numeric_grads(lambda: tl.positional_encoding_forward(x, table)[0], [x], dout)
    assert rel_error(num, tl.positional_encoding_backward(dout, cache)) < TOL


@pytest.mark.parametrize("call, message", [
    (lambda: tl.positional_encoding(4, 5), "even"),
    (lambda: tl.positional_encoding_forward(np.zeros((1, 6, 4)), np.zeros((5, 4))), "max_length=5"),
])
def test_positional_encoding_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# -------------------------------------------------------------------- layer norm


def test_layer_norm_normalises_each_vector():
    rng = np.random.default_rng(1)
    x = 3 + 5 * rng.standard_normal((4, 6, 32))
    out, _ = tl.layer_norm_forward(x, np.ones(32), np.zeros(32))
    assert np.allclose(out.mean(axis=-1), 0, atol=1e-12)
    assert np.allclose(out.var(axis=-1), 1, atol=1e-4)  # eps = 1e-5 against a variance of ~25
    gamma, beta = np.linspace(0.5, 2, 32), np.linspace(-1, 1, 32)
    out2, _ = tl.layer_norm_forward(x, gamma, beta)
    assert np.allclose(out2, out * gamma + beta)


def test_layer_norm_values():
    x = np.linspace(-0.5, 1.0, num=6).reshape(2, 3)
    out, _ = tl.layer_norm_forward(x, np.array([1.0, 2.0, 3.0]), np.array([0.0, 0.1, -0.1]))
    # each row is evenly spaced: normalised to (-sqrt(3/2), 0, sqrt(3/2)) up to eps
    r = np.sqrt(1.5) / np.sqrt(1 + 1e-5 / 0.06)  # rows step by 0.3: variance 0.06
    expected = np.array([[-r, 0.1, 3 * r - 0.1], [-r, 0.1, 3 * r - 0.1]])
    assert rel_error(expected, out) < 1e-12


def test_layer_norm_backward_numeric():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 4, 5))
    gamma, beta = 1 + 0.3 * rng.standard_normal(5), rng.standard_normal(5)
    dout = rng.standard_normal(x.shape)
    out, cache = tl.layer_norm_forward(x, gamma, beta)
    analytic = tl.layer_norm_backward(dout, cache)
    nums = numeric_grads(lambda: tl.layer_norm_forward(x, gamma, beta)[0], [x, gamma, beta], dout)
    for name, num, ana in zip(("dx", "dgamma", "dbeta"), nums, analytic):
        assert rel_error(num, ana) < TOL, name


# ------------------------------------------------------------------- attention


def _attention_inputs(rng, N, T, S, W, self_attention):
    query = rng.standard_normal((N, T, W))
    if self_attention:
        return query, query, query
    return query, rng.standard_normal((N, S, W)), rng.standard_normal((N, S, W))


ATTENTION_CASES = [  # name, T, S, heads, mask, self-attention
    ("self causal", 5, 5, 2, "causal", True),
    ("self unmasked", 4, 4, 2, None, True),
    ("cross", 4, 3, 2, None, False),
    ("cross masked", 4, 3, 1, "random", False),
    ("cross one key", 4, 1, 2, None, False),
    ("per-example mask", 3, 4, 2, "per-example", False),
]


def _mask(kind, rng, N, T, S):
    if kind == "causal":
        return np.tril(np.ones((T, S), dtype=bool))
    if kind == "random":
        m = rng.random((T, S)) < 0.6
        m[:, 0] = True  # every query keeps a key
        return m
    if kind == "per-example":
        m = rng.random((N, T, S)) < 0.6
        m[:, :, -1] = True
        return m
    return None


@pytest.mark.parametrize("name, T, S, nh, mask_kind, self_attention", ATTENTION_CASES)
def test_attention_forward_matches_reference(name, T, S, nh, mask_kind, self_attention):
    rng = np.random.default_rng(3)
    N, W = 2, 6
    query, key, value = _attention_inputs(rng, N, T, S, W, self_attention)
    p = attention_params(rng, W)
    mask = _mask(mask_kind, rng, N, T, S)
    out, _ = tl.multihead_attention_forward(query, key, value, *p.values(), nh, mask)
    if mask is not None and mask.ndim == 3:
        expected = np.concatenate([reference_attention(query[n:n + 1], key[n:n + 1], value[n:n + 1], p, nh, mask[n])
                                   for n in range(N)])
    else:
        expected = reference_attention(query, key, value, p, nh, mask)
    assert rel_error(expected, out) < 1e-10


@pytest.mark.parametrize("name, T, S, nh, mask_kind, self_attention", ATTENTION_CASES)
def test_attention_backward_numeric(name, T, S, nh, mask_kind, self_attention):
    rng = np.random.default_rng(4)
    N, W = 2, 6
    query, key, value = _attention_inputs(rng, N, T, S, W, self_attention)
    p = attention_params(rng, W)
    mask = _mask(mask_kind, rng, N, T, S)
    weights = list(p.values())
    forward = lambda: tl.multihead_attention_forward(query, key, value, *weights, nh, mask)[0]
    out, cache = tl.multihead_attention_forward(query, key, value, *weights, nh, mask)
    dout = rng.standard_normal(out.shape)
    grads = tl.multihead_attention_backward(dout, cache)
    if self_attention:  # one array in three roles: the caller sums the three gradients
        names, inputs, analytic = ["dx"], [query], [grads[0] + grads[1] + grads[2]]
    else:
        names, inputs, analytic = ["dquery", "dkey", "dvalue"], [query, key, value], list(grads[:3])
    names += [f"d{k}" for k in tl.ATTENTION_KEYS]
    inputs += weights
    analytic += list(grads[3:])
    for n, num, ana in zip(names, numeric_grads(forward, inputs, dout), analytic):
        assert_grad_matches(n, num, ana)
    if S == 1:  # the query and key projections cannot matter for one key
        assert not grads[0].any() and not grads[3].any() and not grads[5].any()


def test_causal_mask_blocks_the_future():
    rng = np.random.default_rng(5)
    N, T, W = 2, 6, 8
    x = rng.standard_normal((N, T, W))
    p = attention_params(rng, W)
    causal = np.tril(np.ones((T, T), dtype=bool))
    out, _ = tl.multihead_attention_forward(x, x, x, *p.values(), 2, causal)
    for t in range(T - 1):
        y = x.copy()
        y[:, t + 1:] = rng.standard_normal((N, T - t - 1, W))
        out2, _ = tl.multihead_attention_forward(y, y, y, *p.values(), 2, causal)
        assert np.array_equal(out[:, : t + 1], out2[:, : t + 1])
        assert not np.allclose(out[:, t + 1:], out2[:, t + 1:])  # later positions do see it
    out3, _ = tl.multihead_attention_forward(y, y, y, *p.values(), 2, None)  # no mask: the past sees the future
    assert not np.allclose(out[:, 0], out3[:, 0])


@pytest.mark.parametrize("kwargs, message", [
    ({"num_heads": 4}, "num_heads=4 must divide W=6"),
    ({"attn_mask": np.ones((3, 3))}, "boolean array"),
    ({"attn_mask": np.zeros((3, 2), dtype=bool)}, "attend to no key"),
    ({"key": np.zeros((2, 2, 5))}, "key and value must have shape"),
])
def test_attention_errors(kwargs, message):
    rng = np.random.default_rng(6)
    args = {"query": rng.standard_normal((2, 3, 6)), "key": rng.standard_normal((2, 2, 6)),
            "value": rng.standard_normal((2, 2, 6)), **attention_params(rng, 6), "num_heads": 2}
    args.update(kwargs)
    if "key" in kwargs:
        args["value"] = kwargs["key"]
    with pytest.raises(ValueError, match=message):
        tl.multihead_attention_forward(**args)


# ---------------------------------------------------------------- feed-forward


def test_feedforward_values():
    x = np.linspace(-1, 1, 2 * 3).reshape(1, 2, 3)
    W1 = np.linspace(-0.5, 0.5, 3 * 4).reshape(3, 4)
    b1 = np.array([0.1, -0.8, 0.0, 0.2])
    W2 = np.linspace(0.3, -0.3, 4 * 3).reshape(4, 3)
    b2 = np.array([0.0, 0.5, -0.5])
    out, _ = tl.feedforward_forward(x, W1, b1, W2, b2)
    expected = np.maximum(x @ W1 + b1, 0) @ W2 + b2
    assert rel_error(expected, out) < 1e-12
    assert (np.maximum(x @ W1 + b1, 0) == 0).any()  # the ReLU really cuts something here


def test_feedforward_backward_numeric():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 3, 4))
    weights = [rng.standard_normal(s) for s in ((4, 7), (7,), (7, 4), (4,))]
    out, cache = tl.feedforward_forward(x, *weights)
    dout = rng.standard_normal(out.shape)
    analytic = tl.feedforward_backward(dout, cache)
    nums = numeric_grads(lambda: tl.feedforward_forward(x, *weights)[0], [x, *weights], dout)
    for name, num, ana in zip(("dx", "dW1", "db1", "dW2", "db2"), nums, analytic):
        assert rel_error(num, ana) < TOL, name


# ---------------------------------------------------------------- decoder layer


@pytest.mark.parametrize("S, dropout", [(1, 0.0), (3, 0.0), (1, 0.3), (3, 0.3)])
def test_decoder_layer_backward_numeric(S, dropout):
    rng = np.random.default_rng(13)
    N, T, W, F, nh = 2, 4, 6, 8, 2
    x = rng.standard_normal((N, T, W))
    memory = rng.standard_normal((N, S, W))
    p = layer_params(rng, W, F)
    causal = np.tril(np.ones((T, T), dtype=bool))
    forward = lambda: tl.decoder_layer_forward(x, memory, p, nh, causal, dropout, np.random.default_rng(9))[0]
    out, cache = tl.decoder_layer_forward(x, memory, p, nh, causal, dropout, np.random.default_rng(9))
    if dropout:
        assert not np.allclose(out, tl.decoder_layer_forward(x, memory, p, nh, causal)[0])  # dropout acts
    dout = rng.standard_normal(out.shape)
    dx, dmemory, dparams = tl.decoder_layer_backward(dout, cache)
    assert set(dparams) == set(p)
    names = ["dx", "dmemory", *tl.LAYER_PARAM_KEYS]
    inputs = [x, memory, *(p[k] for k in tl.LAYER_PARAM_KEYS)]
    analytic = [dx, dmemory, *(dparams[k] for k in tl.LAYER_PARAM_KEYS)]
    for name, num, ana in zip(names, numeric_grads(forward, inputs, dout), analytic):
        assert_grad_matches(name, num, ana)


def test_decoder_layer_is_causal():
    rng = np.random.default_rng(10)
    N, T, W, F = 2, 5, 8, 16
    x = rng.standard_normal((N, T, W))
    memory = rng.standard_normal((N, 1, W))
    p = layer_params(rng, W, F)
    causal = np.tril(np.ones((T, T), dtype=bool))
    out, _ = tl.decoder_layer_forward(x, memory, p, 2, causal)
    y = x.copy()
    y[:, 3:] += 1.0
    out2, _ = tl.decoder_layer_forward(y, memory, p, 2, causal)
    assert np.array_equal(out[:, :3], out2[:, :3])
    assert not np.allclose(out[:, 3:], out2[:, 3:])


def test_decoder_layer_dropout_needs_rng():
    rng = np.random.default_rng(11)
    p = layer_params(rng, 4, 4)
    with pytest.raises(ValueError, match="rng"):
        tl.decoder_layer_forward(np.zeros((1, 2, 4)), np.zeros((1, 1, 4)), p, 2, None, dropout=0.5)


@pytest.mark.parametrize("S", [1, 3])
def test_step_equals_full_forward_position_by_position(S):
    rng = np.random.default_rng(12)
    N, T, W, F, nh, layers = 3, 6, 8, 12, 2, 2
    x = rng.standard_normal((N, T, W))
    memory = rng.standard_normal((N, S, W))
    params = [layer_params(rng, W, F) for _ in range(layers)]
    causal = np.tril(np.ones((T, T), dtype=bool))
    full = x
    for p in params:
        full, _ = tl.decoder_layer_forward(full, memory, p, nh, causal)
    mem_kv = [tl.memory_keys_values(memory, p) for p in params]
    caches = [(np.zeros((N, 0, W)), np.zeros((N, 0, W))) for _ in params]
    for t in range(T):
        h = x[:, t:t + 1]
        for i, p in enumerate(params):
            h, k, v = tl.decoder_layer_step(h, *caches[i], *mem_kv[i], p, nh)
            assert k.shape == v.shape == (N, t + 1, W)
            caches[i] = (k, v)
        assert rel_error(full[:, t:t + 1], h) < 1e-10, f"position {t}"
