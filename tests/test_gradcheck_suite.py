"""Tests of capmodel.gradcheck_suite: it passes on the library and catches a broken backward."""

import numpy as np

from capmodel import gradcheck_suite
from capmodel import rnn_layers as rl


def test_every_layer_and_cell_is_checked_and_passes():
    rows = gradcheck_suite.run(seed=0)
    assert all(r["ok"] for r in rows)
    layers = {(r["layer"], r["cell"]) for r in rows}
    for cell in ("rnn", "lstm", "gru"):
        assert {(f"{cell}_step", cell), (f"{cell}_sequence", cell), ("CaptioningRNN.loss", cell)} <= layers
    assert {("word_embedding", ""), ("temporal_affine", ""), ("temporal_softmax_loss", "")} <= layers


def test_a_wrong_gradient_is_caught(monkeypatch):
    real = rl.gru_backward

    def broken(dh, cache):
        dx, dh0, dWx, dWh, db = real(dh, cache)
        return dx, dh0, dWx, dWh * 1.01, db  # 1% off

    monkeypatch.setattr(rl, "gru_backward", broken)
    monkeypatch.setitem(gradcheck_suite.CELLS, "gru", (rl.gru_forward, broken, 3))
    failed = [(r["layer"], r["param"]) for r in gradcheck_suite.run(seed=0) if not r["ok"]]
    assert ("gru_sequence", "Wh") in failed
