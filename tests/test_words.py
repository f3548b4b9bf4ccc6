"""Tests of capmodel.kernels.words: the models' word embedding and vocabulary loss equal the
readable capmodel.rnn_layers functions."""

import numpy as np
import pytest

from capmodel import rnn_layers as rl
from capmodel.kernels import words as kw


def test_word_embedding_equals_the_readable_one():
    rng = np.random.default_rng(0)
    x, W = rng.integers(7, size=(5, 6)), rng.standard_normal((7, 3))
    out, cache = kw.word_embedding_forward(x, W)
    want, want_cache = rl.word_embedding_forward(x, W)
    np.testing.assert_array_equal(out, want)
    dout = rng.standard_normal(out.shape)
    np.testing.assert_allclose(kw.word_embedding_backward(dout, cache), rl.word_embedding_backward(dout, want_cache),
                               rtol=1e-13, atol=1e-15)
    with pytest.raises(ValueError, match="word ids must be in"):
        kw.word_embedding_forward(np.array([[0, 7]]), W)


def test_kept_rows_loss_equals_the_masked_temporal_softmax_loss():
    """Scoring only the kept rows gives the loss and gradients of scoring every position
    and masking the rest out."""
    rng = np.random.default_rng(1)
    N, T, H, V = 4, 5, 6, 7
    h, y = rng.standard_normal((N * T, H)), rng.integers(V, size=N * T)
    W_vocab, b_vocab = rng.standard_normal((H, V)), rng.standard_normal(V)
    mask = rng.random(N * T) > 0.4
    loss, dh, dW, db = kw.kept_rows_softmax_loss(h, y, np.flatnonzero(mask), W_vocab, b_vocab, N)
    scores, cache = rl.temporal_affine_forward(h.reshape(N, T, H), W_vocab, b_vocab)
    want_loss, dscores = rl.temporal_softmax_loss(scores, y.reshape(N, T), mask.reshape(N, T))
    want_dh, want_dW, want_db = rl.temporal_affine_backward(dscores, cache)
    assert loss == pytest.approx(want_loss, rel=1e-13)
    assert not dh[~mask].any()
    for got, want in ((dh, want_dh.reshape(N * T, H)), (dW, want_dW), (db, want_db)):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)
