"""Tests of capmodel.app.gradcheck_suite: it passes on the library and catches a broken backward."""

import pytest

from capmodel.app import gradcheck_suite
from capmodel import rnn_layers as rl


def test_a_family_without_checks_is_refused(monkeypatch):
    from capmodel import models

    class Unchecked:
        FAMILY = "unchecked"

    monkeypatch.setattr(models, "FAMILIES", (*models.FAMILIES, Unchecked))
    with pytest.raises(ValueError, match="no gradient checks for the model families unchecked"):
        gradcheck_suite.run(seed=0)


def test_every_layer_and_cell_is_checked_and_passes(gradcheck_table):
    rows = gradcheck_table  # `capmodel gradcheck`'s table, made once per session (conftest.py)
    assert all(r["ok"] == "True" for r in rows)
    layers = {(r["layer"], r["cell"]) for r in rows}
    for cell in ("rnn", "lstm", "gru"):
        assert {(f"{cell}_step", cell), (f"{cell}_sequence", cell), ("CaptioningRNN.loss", cell)} <= layers
    assert {("word_embedding", ""), ("temporal_affine", ""), ("temporal_softmax_loss", "")} <= layers
    for layer in ("layer_norm", "self_attention", "cross_attention", "feedforward", "decoder_layer",
                  "CaptioningTransformer.loss", "CaptioningTransformer.loss (attention)"):
        assert (layer, "transformer") in layers
    # attention over regions: its layers, every cell's attention functions and model loss
    assert {("soft_attention", ""), ("attention_gate", ""), ("doubly_stochastic_penalty", "")} <= layers
    for cell in ("rnn", "lstm", "gru"):
        assert {(f"{cell}_attention_step", cell), (f"{cell}_attention_sequence", cell),
                (f"{cell}_attention_packed", cell), ("CaptioningRNN.loss (attention)", cell)} <= layers
    penalty_and_gate = {r["param"] for r in rows if r["layer"] == "CaptioningRNN.loss (attention)"}
    assert {"att.Wg", "att.bg", "att.w", "att.Wr", "Wc"} <= penalty_and_gate
    scaled = [float(r["error"]) for r in rows if r["measure"] == "scaled"]
    assert len(scaled) > 40 and max(scaled) < 1e-7


def test_a_wrong_gradient_is_caught_in_every_family(monkeypatch):
    # One run of the suite's checks of the layers below with a 1% error in a recurrent and in a
    # transformer backward, in the attention gate and in the fast attention kernel.
    from capmodel import attention as at
    from capmodel import transformer_layers as tl
    from capmodel.kernels import attention as ka

    real_gru, real_ffn, real_gate, real_attend = (rl.gru_backward, tl.feedforward_backward, at.gate_backward,
                                                  ka.attend_rows_backward)

    def broken_gru(dh, cache):
        dx, dh0, dWx, dWh, db = real_gru(dh, cache)
        return dx, dh0, dWx, dWh * 1.01, db

    def broken_ffn(dout, cache):
        dx, dW1, db1, dW2, db2 = real_ffn(dout, cache)
        return dx, dW1, db1 * 1.01, dW2, db2

    def broken_gate(dout, cache):
        dh, dcontext, dWg, dbg = real_gate(dout, cache)
        return dh, dcontext, dWg, dbg * 1.01

    def broken_attend(*args):
        real_attend(*args)
        args[-2][...] *= 1.01  # dw

    monkeypatch.setattr(rl, "gru_backward", broken_gru)  # one place: the suite looks it up when it runs
    monkeypatch.setattr(tl, "feedforward_backward", broken_ffn)
    monkeypatch.setattr(at, "gate_backward", broken_gate)
    monkeypatch.setattr(ka, "attend_rows_backward", broken_attend)
    # the checks of the layers asserted below (the whole suite is the workflow's, conftest.py)
    layers = {"attention_gate", "lstm_attention_sequence", "gru_attention_packed", "CaptioningRNN.loss (attention)",
              "gru_sequence", "feedforward", "CaptioningTransformer.loss"}
    rows = gradcheck_suite.run(seed=0, layers=layers)
    assert {r["layer"] for r in rows} == layers
    failed = {(r["layer"], r["param"]) for r in rows if not r["ok"]}
    assert {("attention_gate", "bg"), ("lstm_attention_sequence", "att.bg")} <= failed
    assert {("gru_attention_packed", "att.w"), ("CaptioningRNN.loss (attention)", "att.w")} <= failed
    assert ("gru_sequence", "Wh") in failed
    assert ("feedforward", "b1") in failed and ("CaptioningTransformer.loss", "layers.0.ffn.b1") in failed
