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
                  "CaptioningTransformer.loss"):
        assert (layer, "transformer") in layers
    scaled = [float(r["error"]) for r in rows if r["measure"] == "scaled"]
    assert len(scaled) > 40 and max(scaled) < 1e-7


def test_a_wrong_gradient_is_caught_in_every_family(monkeypatch):
    # One run of the suite with a 1% error in a recurrent and in a transformer backward.
    from capmodel import transformer_layers as tl

    real_gru, real_ffn = rl.gru_backward, tl.feedforward_backward

    def broken_gru(dh, cache):
        dx, dh0, dWx, dWh, db = real_gru(dh, cache)
        return dx, dh0, dWx, dWh * 1.01, db

    def broken_ffn(dout, cache):
        dx, dW1, db1, dW2, db2 = real_ffn(dout, cache)
        return dx, dW1, db1 * 1.01, dW2, db2

    monkeypatch.setattr(rl, "gru_backward", broken_gru)  # one place: the suite looks it up when it runs
    monkeypatch.setattr(tl, "feedforward_backward", broken_ffn)
    failed = {(r["layer"], r["param"]) for r in gradcheck_suite.run(seed=0) if not r["ok"]}
    assert ("gru_sequence", "Wh") in failed
    assert ("feedforward", "b1") in failed and ("CaptioningTransformer.loss", "layers.0.ffn.b1") in failed
