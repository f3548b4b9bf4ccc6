"""Tests of capmodel.attention: soft attention, its gate, the doubly stochastic penalty and
the attention cells, held to plain loops, hand-computed values and numeric gradients."""

import numpy as np
import pytest

from capmodel import attention as at
from capmodel import rnn_layers as rl
from capmodel.gradient_check import eval_numerical_gradient, eval_numerical_gradient_array, rel_error

N, T, L, C, W, H, A = 3, 4, 5, 6, 3, 4, 7
GATES = {"rnn": 1, "lstm": 4, "gru": 3}


def cell_params(rng, k, scale=0.5):
    shapes = {"Wx": (W, k * H), "Wh": (H, k * H), "b": (k * H,), "Wc": (C, k * H), "att.Wr": (C, A),
              "att.b": (A,), "att.Wh": (H, A), "att.w": (A,), "att.Wg": (H, C), "att.bg": (C,)}
    return {key: scale * rng.standard_normal(shape) for key, shape in shapes.items()}


def numeric_grads(f, inputs, douts):
    """Numeric gradients of sum(f() * douts) with respect to each array in inputs (changed in place)."""
    flat = np.concatenate([d.ravel() for d in douts])
    return [eval_numerical_gradient_array(lambda _: np.concatenate([o.ravel() for o in f()]), x, flat)
            for x in inputs]


# ------------------------------------------------------------------- forward


def test_soft_attention_is_the_formula_computed_region_by_region():
    rng = np.random.default_rng(0)
    h, regions, p = rng.standard_normal((N, H)), rng.standard_normal((N, L, C)), cell_params(rng, 1, 1.0)
    context, alpha, _ = at.soft_attention_forward(h, regions, p)
    for n in range(N):
        scores = [p["att.w"] @ np.tanh(regions[n, l] @ p["att.Wr"] + p["att.b"] + h[n] @ p["att.Wh"])
                  for l in range(L)]
        weights = np.exp(scores) / np.sum(np.exp(scores))
        np.testing.assert_allclose(alpha[n], weights, rtol=1e-12)
        np.testing.assert_allclose(context[n], sum(weights[l] * regions[n, l] for l in range(L)), rtol=1e-12)


def test_equal_scores_give_the_mean_region():
    rng = np.random.default_rng(1)
    p = cell_params(rng, 1)
    p["att.w"][:] = 0  # every region scores 0
    regions = rng.standard_normal((N, L, C))
    context, alpha, _ = at.soft_attention_forward(rng.standard_normal((N, H)), regions, p)
    np.testing.assert_allclose(alpha, 1 / L)
    np.testing.assert_allclose(context, regions.mean(axis=1), rtol=1e-12)


def test_attention_looks_where_the_score_is_high():
    # w picks the first attention unit and Wr makes it large for region 2 only
    regions = np.zeros((1, 4, 2))
    regions[0, 2] = [1.0, 0.0]
    p = {"att.Wr": np.array([[5.0], [0.0]]), "att.b": np.zeros(1), "att.Wh": np.zeros((3, 1)), "att.w": np.array([10.0])}
    _, alpha, _ = at.soft_attention_forward(np.ones((1, 3)), regions, p)
    assert alpha[0].argmax() == 2 and alpha[0, 2] > 0.99


def test_gate_scales_the_context():
    rng = np.random.default_rng(2)
    h, context = rng.standard_normal((N, H)), rng.standard_normal((N, C))
    half, _ = at.gate_forward(h, context, np.zeros((H, C)), np.zeros(C))
    np.testing.assert_allclose(half, context / 2)
    closed, _ = at.gate_forward(h, context, np.zeros((H, C)), np.full(C, -50.0))
    assert np.abs(closed).max() < 1e-20


def test_penalty_values_by_hand():
    # caption 0 looks at region 0 twice (sums 2, 0), caption 1 once at each (sums 1, 1)
    alphas = np.array([[[1.0, 0.0], [1.0, 0.0], [0.5, 0.5]],
                       [[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]]])
    mask = np.array([[True, True, False], [True, True, False]])  # the last position is padding
    loss, dalphas = at.doubly_stochastic_penalty(alphas, mask, 3.0)
    assert loss == pytest.approx(3.0 * ((1 - 2) ** 2 + 1 ** 2 + 0 + 0) / 2)
    np.testing.assert_allclose(dalphas[0, 0], -2 * 3.0 / 2 * np.array([-1.0, 1.0]))
    assert not dalphas[:, 2].any() and not dalphas[1].any()


def test_attention_cell_reads_word_and_gated_context_as_one_input():
    # the cell step is capmodel.rnn_layers' step on [x, beta * context] with [Wx; Wc]
    rng = np.random.default_rng(3)
    p = cell_params(rng, 4)
    x, h, c = rng.standard_normal((N, W)), rng.standard_normal((N, H)), rng.standard_normal((N, H))
    regions = rng.standard_normal((N, L, C))
    proj, _ = at.region_projection_forward(regions, p["att.Wr"], p["att.b"])
    next_h, next_c, alpha, _ = at.attention_cell_step_forward("lstm", x, h, c, regions, proj, p)
    context, alpha2, _ = at.soft_attention_forward(h, regions, p)
    gated, _ = at.gate_forward(h, context, p["att.Wg"], p["att.bg"])
    want_h, want_c, _ = rl.lstm_step_forward(np.hstack([x, gated]), h, c, np.vstack([p["Wx"], p["Wc"]]), p["Wh"],
                                             p["b"])
    np.testing.assert_allclose(next_h, want_h, rtol=1e-12)
    np.testing.assert_allclose(next_c, want_c, rtol=1e-12)
    np.testing.assert_allclose(alpha, alpha2, rtol=1e-12)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_sequence_is_the_loop_over_steps(cell):
    rng = np.random.default_rng(4)
    p = cell_params(rng, GATES[cell])
    x, h0, regions = rng.standard_normal((N, T, W)), rng.standard_normal((N, H)), rng.standard_normal((N, L, C))
    h, alphas, _ = at.attention_cell_forward(cell, x, h0, regions, p)
    proj, _ = at.region_projection_forward(regions, p["att.Wr"], p["att.b"])
    prev_h, prev_c = h0, np.zeros_like(h0) if cell == "lstm" else None
    for t in range(T):
        prev_h, prev_c, alpha, _ = at.attention_cell_step_forward(cell, x[:, t], prev_h, prev_c, regions, proj, p)
        np.testing.assert_array_equal(h[:, t], prev_h)
        np.testing.assert_array_equal(alphas[:, t], alpha)


def test_float32_stays_float32():
    rng = np.random.default_rng(5)
    p = {k: v.astype(np.float32) for k, v in cell_params(rng, 4).items()}
    f32 = lambda *shape: rng.standard_normal(shape).astype(np.float32)
    h, alphas, cache = at.attention_cell_forward("lstm", f32(N, T, W), f32(N, H), f32(N, L, C), p)
    assert h.dtype == alphas.dtype == np.float32
    dx, dh0, dregions, grads = at.attention_cell_backward(f32(N, T, H), f32(N, T, L), cache)
    assert all(a.dtype == np.float32 for a in (dx, dh0, dregions, *grads.values()))


# ------------------------------------------------------------------ backward


@pytest.mark.parametrize("with_dalpha", [False, True])
def test_soft_attention_backward_numeric(with_dalpha):
    rng = np.random.default_rng(6)
    h, regions, p = rng.standard_normal((N, H)), rng.standard_normal((N, L, C)), cell_params(rng, 1)
    context, alpha, cache = at.soft_attention_forward(h, regions, p)
    dcontext = rng.standard_normal(context.shape)
    dalpha = rng.standard_normal(alpha.shape) if with_dalpha else np.zeros(alpha.shape)
    dh, dregions, grads = at.soft_attention_backward(dcontext, cache, dalpha if with_dalpha else None)
    keys = at.ATTENTION_KEYS
    num = numeric_grads(lambda: at.soft_attention_forward(h, regions, p)[:2], [h, regions, *(p[k] for k in keys)],
                        [dcontext, dalpha])
    for name, n, a in zip(("h", "regions", *keys), num, (dh, dregions, *(grads[k] for k in keys))):
        assert rel_error(n, a) < 1e-7, name


def test_gate_backward_numeric():
    rng = np.random.default_rng(7)
    inputs = [rng.standard_normal((N, H)), rng.standard_normal((N, C)), rng.standard_normal((H, C)),
              rng.standard_normal(C)]
    out, cache = at.gate_forward(*inputs)
    dout = rng.standard_normal(out.shape)
    for name, n, a in zip(("h", "context", "Wg", "bg"), numeric_grads(lambda: [at.gate_forward(*inputs)[0]],
                                                                    inputs, [dout]), at.gate_backward(dout, cache)):
        assert rel_error(n, a) < 1e-8, name


def test_penalty_backward_numeric():
    rng = np.random.default_rng(8)
    alphas, mask = rng.random((N, T, L)), rng.random((N, T)) > 0.3
    _, dalphas = at.doubly_stochastic_penalty(alphas, mask, 0.7)
    num = eval_numerical_gradient(lambda a: at.doubly_stochastic_penalty(a, mask, 0.7)[0], alphas, verbose=False)
    assert rel_error(num, dalphas) < 1e-8


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_cell_step_backward_numeric(cell):
    rng = np.random.default_rng(9)
    p = cell_params(rng, GATES[cell])
    x, h = rng.standard_normal((N, W)), rng.standard_normal((N, H))
    c = rng.standard_normal((N, H)) if cell == "lstm" else None
    regions, proj = rng.standard_normal((N, L, C)), 0.5 * rng.standard_normal((N, L, A))

    def f():
        next_h, next_c, alpha, _ = at.attention_cell_step_forward(cell, x, h, c, regions, proj, p)
        return [next_h, alpha] + ([next_c] if cell == "lstm" else [])

    outs = f()
    douts = [rng.standard_normal(o.shape) for o in outs]
    cache = at.attention_cell_step_forward(cell, x, h, c, regions, proj, p)[3]
    dx, dh, dc, dregions, dproj, grads = at.attention_cell_step_backward(
        douts[0], douts[2] if cell == "lstm" else None, douts[1], cache)
    keys = [k for k in at.PARAM_KEYS if k not in ("att.Wr", "att.b")]  # those reach the step through proj
    inputs = [x, h, regions, proj, *(p[k] for k in keys)] + ([c] if cell == "lstm" else [])
    analytic = [dx, dh, dregions, dproj, *(grads[k] for k in keys)] + ([dc] if cell == "lstm" else [])
    names = ["x", "h", "regions", "proj", *keys, "c"]
    for name, n, a in zip(names, numeric_grads(f, inputs, douts), analytic):
        # proj's gradient is a product of three factors, so some entries are ~1e-6, where
        # finite differences carry ~1e-11 of noise: it is measured against its largest entry
        err = np.abs(n - a).max() / np.abs(a).max() if name == "proj" else rel_error(n, a)
        assert err < 1e-6, name


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_cell_sequence_backward_numeric(cell):
    rng = np.random.default_rng(10)
    p = cell_params(rng, GATES[cell])
    x, h0, regions = rng.standard_normal((N, T, W)), rng.standard_normal((N, H)), rng.standard_normal((N, L, C))
    h, alphas, cache = at.attention_cell_forward(cell, x, h0, regions, p)
    dh, dalphas = rng.standard_normal(h.shape), rng.standard_normal(alphas.shape)
    dx, dh0, dregions, grads = at.attention_cell_backward(dh, dalphas, cache)
    inputs = [x, h0, regions, *(p[k] for k in at.PARAM_KEYS)]
    num = numeric_grads(lambda: at.attention_cell_forward(cell, x, h0, regions, p)[:2], inputs, [dh, dalphas])
    for name, n, a in zip(("x", "h0", "regions", *at.PARAM_KEYS), num,
                          (dx, dh0, dregions, *(grads[k] for k in at.PARAM_KEYS))):
        assert rel_error(n, a) < 1e-6, name


# -------------------------------------------------------------------- errors


@pytest.mark.parametrize("call, message", [
    (lambda p: at.soft_attention_forward(np.zeros((N, H)), np.zeros((N, C)), p), r"regions must have shape \(N, L, D\)"),
    (lambda p: at.soft_attention_forward(np.zeros((N + 1, H)), np.zeros((N, L, C)), p), "h must have shape"),
    (lambda p: at.soft_attention_forward(np.zeros((N, H)), np.zeros((N, L, C + 1)), p), "need Wr"),
    (lambda p: at.gate_forward(np.zeros((N, H)), np.zeros((N, C + 1)), p["att.Wg"], p["att.bg"]), "need Wg"),
    (lambda p: at.doubly_stochastic_penalty(np.zeros((N, T, L)), np.ones((N, T + 1), bool), 1.0), "mask"),
    (lambda p: at.attention_cell_forward("tanh", np.zeros((N, T, W)), np.zeros((N, H)), np.zeros((N, L, C)), p),
     'unknown cell_type "tanh"'),
])
def test_bad_inputs_raise_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call(cell_params(np.random.default_rng(0), 1))
