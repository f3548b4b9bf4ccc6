"""Tests of capmodel.decoding: greedy, beam search and temperature sampling, all cells."""

import numpy as np
import pytest

from capmodel import decoding
from capmodel.classifiers.rnn import CaptioningRNN

VOCAB = {"<NULL>": 0, "<START>": 1, "<END>": 2, "<UNK>": 3, **{f"w{i}": i + 4 for i in range(16)}}
CELLS = ["rnn", "lstm", "gru"]


def _model(cell, seed=0, scale=1.5):
    """A random model with weights large enough that its distributions are peaked."""
    m = CaptioningRNN(VOCAB, input_dim=8, wordvec_dim=6, hidden_dim=10, cell_type=cell, dtype=np.float64, seed=seed)
    rng = np.random.default_rng(seed + 100)
    for k, v in m.params.items():
        m.params[k] = scale * rng.standard_normal(v.shape)
    return m


def _features(n=40, seed=1):
    return np.random.default_rng(seed).standard_normal((n, 8))


@pytest.mark.parametrize("cell", CELLS)
def test_greedy_is_the_step_by_step_argmax(cell):
    m = _model(cell)
    feats = _features(5)
    caps = m.sample(feats, max_length=12)
    state, step = m.decoder(feats)
    words = np.full(5, 1)
    done = np.zeros(5, bool)
    for t in range(12):
        state, scores = step(state, words)
        scores[:, [0, 1]] = -np.inf
        words = np.where(done, 0, scores.argmax(axis=1))
        assert np.array_equal(caps[:, t], words)
        done |= words == 2


@pytest.mark.parametrize("cell", CELLS)
def test_outputs_never_contain_start_or_null_before_end(cell):
    m = _model(cell)
    for method, opts in (("greedy", {}), ("beam", {"beam_size": 4}), ("temperature", {"rng": 0, "temperature": 2.0})):
        caps = m.sample(_features(), max_length=15, method=method, **opts)
        assert caps.shape == (40, 15)
        for row in caps:
            end = np.flatnonzero(row == 2)
            body = row[: end[0]] if len(end) else row
            assert not np.isin(body, [0, 1]).any()
            if len(end):
                assert np.all(row[end[0] + 1 :] == 0)  # <NULL> after <END>


@pytest.mark.parametrize("cell", CELLS)
def test_beam_of_width_one_is_greedy(cell):
    m = _model(cell)
    feats = _features()
    assert np.array_equal(m.sample(feats, 15, method="beam", beam_size=1), m.sample(feats, 15))


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("k", [2, 3, 5])
def test_wider_beam_never_scores_below_greedy(cell, k):
    m = _model(cell, seed=k)
    feats = _features(60, seed=k)
    greedy = m.sample(feats, 10)
    beam = m.sample(feats, 10, method="beam", beam_size=k)
    lg = decoding.sequence_log_prob(m, feats, greedy)
    lb = decoding.sequence_log_prob(m, feats, beam)
    assert np.all(lb >= lg - 1e-9)
    assert np.mean(lb > lg + 1e-9) > 0.1  # and it really finds better captions


def test_beam_returns_sorted_top_k_with_true_scores():
    m = _model("lstm")
    feats = _features(10)
    best, beams, scores = decoding.beam_search(m, feats, max_length=10, beam_size=4, return_all=True)
    assert beams.shape == (10, 4, 10) and scores.shape == (10, 4)
    assert np.all(np.diff(scores, axis=1) <= 1e-12)  # best first
    for j in range(4):
        np.testing.assert_allclose(decoding.sequence_log_prob(m, feats, beams[:, j]), scores[:, j], rtol=1e-9)


def test_length_norm_prefers_longer_captions():
    m = _model("gru", seed=3)
    feats = _features(80, seed=3)
    lengths = lambda caps: (caps != 0).sum(axis=1).mean()
    plain = m.sample(feats, 15, method="beam", beam_size=5)
    normed = m.sample(feats, 15, method="beam", beam_size=5, length_norm=1.0)
    assert lengths(normed) > lengths(plain) + 0.5  # measured: 14.3 vs 13.4 words


def test_temperature_is_reproducible_and_tends_to_greedy():
    m = _model("lstm")
    feats = _features()
    a = m.sample(feats, 12, method="temperature", temperature=1.0, rng=np.random.default_rng(5))
    b = m.sample(feats, 12, method="temperature", temperature=1.0, rng=np.random.default_rng(5))
    c = m.sample(feats, 12, method="temperature", temperature=1.0, rng=np.random.default_rng(6))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    cold = m.sample(feats, 12, method="temperature", temperature=1e-4, rng=0)
    assert np.array_equal(cold, m.sample(feats, 12))


def test_temperature_matches_the_softmax_distribution():
    m = _model("rnn", scale=0.5)
    feats = np.repeat(_features(1), 4000, axis=0)
    first = m.sample(feats, 1, method="temperature", temperature=1.0, rng=1)[:, 0]
    state, step = m.decoder(feats[:1])
    _, scores = step(state, np.array([1]))
    logp = decoding._log_softmax_inplace(scores.astype(np.float64), [1, 0])[0]
    freq = np.bincount(first, minlength=len(VOCAB)) / len(first)
    assert np.abs(freq - np.exp(logp)).max() < 0.03


def test_bad_options_are_refused():
    m = _model("rnn")
    with pytest.raises(ValueError, match="unknown decoding method"):
        m.sample(_features(2), method="nucleus")
    with pytest.raises(ValueError, match="temperature must be > 0"):
        m.sample(_features(2), method="temperature", temperature=0)
    with pytest.raises(ValueError, match="beam_size must be a positive integer"):
        m.sample(_features(2), method="beam", beam_size=0)
    no_start = CaptioningRNN({"<NULL>": 0, "a": 1}, input_dim=8, wordvec_dim=3, hidden_dim=4)
    with pytest.raises(ValueError, match="no <START> token"):
        no_start.sample(_features(2))


def test_float32_sampling_stays_float32():
    m = CaptioningRNN(VOCAB, input_dim=8, wordvec_dim=6, hidden_dim=10, cell_type="lstm", seed=0)
    state, step = m.decoder(_features(3))
    state, scores = step(state, np.array([1, 1, 1]))
    assert scores.dtype == np.float32 and all(s.dtype == np.float32 for s in state)
