"""Caption decoding: greedy, batched beam search and temperature sampling.

Every decoder drives a model through ``model.decoder(features) -> (state, step)`` (see
CaptioningRNN.decoder), so it works for all cell types. Outputs are (N, max_length) int
arrays without <START>; after <END> a row holds <NULL>. <START> and <NULL> are never
generated. Dimension letters: N images, k beam width, V vocabulary, H hidden size.
"""

import numpy as np

from capmodel.vocab import END, NULL, START

METHODS = ("greedy", "beam", "temperature")


def _special_ids(model):
    w2i = model.word_to_idx
    if START not in w2i:
        raise ValueError(f"cannot decode: the vocabulary has no {START} token")
    return w2i[START], w2i.get(END), w2i[NULL]


def _log_softmax(scores, banned):
    """Row-wise log-softmax of (M, V) scores with the banned ids at -inf."""
    scores = scores.copy()
    scores[:, banned] = -np.inf  # before the max, so a banned maximum cannot underflow the rest
    scores -= scores.max(axis=1, keepdims=True)
    scores -= np.log(np.exp(scores).sum(axis=1, keepdims=True))
    return scores


def greedy(model, features, max_length=30):
    """Greedy decoding: at each step take the highest-scoring word.

    Returns:
    - captions: Int array of shape (N, max_length)
    """
    start, end, null = _special_ids(model)
    state, step = model.decoder(features)
    N = state[0].shape[0]
    captions = np.full((N, max_length), null, dtype=np.int64)
    words = np.full(N, start, dtype=np.int64)
    done = np.zeros(N, dtype=bool)
    banned = [start, null]
    for t in range(max_length):
        state, scores = step(state, words)
        scores[:, banned] = -np.inf
        words = scores.argmax(axis=1)
        words[done] = null
        captions[:, t] = words
        if end is not None:
            done |= words == end
            if done.all():
                break
    return captions


def temperature_sample(model, features, max_length=30, temperature=1.0, rng=None):
    """Sample each word from softmax(scores / temperature).

    Inputs:
    - temperature: > 0; below 1 sharpens towards greedy, above 1 flattens
    - rng: np.random.Generator or seed; the same seed gives the same captions

    Returns:
    - captions: Int array of shape (N, max_length)
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    rng = np.random.default_rng(rng)
    start, end, null = _special_ids(model)
    state, step = model.decoder(features)
    N = state[0].shape[0]
    captions = np.full((N, max_length), null, dtype=np.int64)
    words = np.full(N, start, dtype=np.int64)
    done = np.zeros(N, dtype=bool)
    for t in range(max_length):
        state, scores = step(state, words)
        logp = _log_softmax(scores.astype(np.float64) / temperature, [start, null])
        cdf = np.cumsum(np.exp(logp), axis=1)
        u = rng.random(N) * cdf[:, -1]
        words = np.minimum((cdf < u[:, None]).sum(axis=1), cdf.shape[1] - 1)
        words[done] = null
        captions[:, t] = words
        if end is not None:
            done |= words == end
            if done.all():
                break
    return captions


def beam_search(model, features, max_length=30, beam_size=3, length_norm=0.0, return_all=False):
    """Beam search over all images at once (N * k hypotheses per step).

    Hypotheses are ranked by total log-probability while searching; a finished one (it
    produced <END>) keeps its score and only extends with <NULL>. The final choice divides
    each score by length ** length_norm (0 = no normalisation, 1 = mean log-probability).
    The greedy caption is decoded too and returned when it scores better, so a beam never
    yields a lower model log-probability than greedy; with beam_size=1 it is exactly greedy.

    Inputs:
    - beam_size: Number k of hypotheses kept per image
    - length_norm: Exponent alpha of the length normalisation
    - return_all: Also return the k beams and their log-probabilities

    Returns:
    - captions: Int array of shape (N, max_length), the best caption per image
    - if return_all, also beams (N, k, max_length) and their log-probabilities (N, k)
    """
    if int(beam_size) != beam_size or beam_size < 1:
        raise ValueError(f"beam_size must be a positive integer, got {beam_size}")
    if length_norm < 0:
        raise ValueError(f"length_norm must be >= 0, got {length_norm}")
    k = int(beam_size)
    start, end, null = _special_ids(model)
    state, step = model.decoder(features)
    N = state[0].shape[0]
    state = tuple(np.repeat(s, k, axis=0) for s in state)  # (N*k, H)
    words = np.full(N * k, start, dtype=np.int64)
    seqs = np.full((N, k, max_length), null, dtype=np.int64)
    lengths = np.zeros((N, k), dtype=np.int64)
    done = np.zeros((N, k), dtype=bool)
    # Only the first copy of each image is live at t = 0, so the k beams differ.
    logp_beam = np.full((N, k), -np.inf)
    logp_beam[:, 0] = 0.0
    banned = [start, null]
    for t in range(max_length):
        state, scores = step(state, words)
        V = scores.shape[1]
        logp = _log_softmax(scores.astype(np.float64), banned).reshape(N, k, V)
        # A finished hypothesis extends only with <NULL>, at no cost.
        logp[done] = -np.inf
        logp[done, null] = 0.0
        total = (logp_beam[:, :, None] + logp).reshape(N, k * V)
        if k * V > k:
            top = np.argpartition(-total, k - 1, axis=1)[:, :k]
        else:
            top = np.broadcast_to(np.arange(k * V), (N, k * V)).copy()
        top_scores = np.take_along_axis(total, top, axis=1)
        order = np.lexsort((top, -top_scores), axis=1)  # best first; ties by lower index
        top = np.take_along_axis(top, order, axis=1)
        parent, words2 = np.divmod(top, V)  # (N, k)
        logp_beam = np.take_along_axis(total, top, axis=1)
        rows = (parent + np.arange(N)[:, None] * k).reshape(-1)
        state = tuple(s[rows] for s in state)
        seqs = np.take_along_axis(seqs, parent[:, :, None], axis=1)
        seqs[:, :, t] = words2
        done = np.take_along_axis(done, parent, axis=1)
        lengths = np.take_along_axis(lengths, parent, axis=1) + ~done
        if end is not None:
            done |= words2 == end
        words = words2.reshape(-1)
        if done.all():
            break

    rank = logp_beam / np.maximum(lengths, 1) ** length_norm if length_norm else logp_beam
    best = rank.argmax(axis=1)
    captions = seqs[np.arange(N), best]
    if k > 1:
        greedy_caps = greedy(model, features, max_length)
        greedy_logp = sequence_log_prob(model, features, greedy_caps)
        if length_norm:
            greedy_rank = greedy_logp / np.maximum(_lengths(greedy_caps, end, null), 1) ** length_norm
        else:
            greedy_rank = greedy_logp
        better = greedy_rank > rank[np.arange(N), best]
        captions[better] = greedy_caps[better]
    if return_all:
        return captions, seqs, logp_beam
    return captions


def _lengths(captions, end, null):
    """Number of generated tokens per caption, <END> included."""
    return (captions != null).sum(axis=1)


def sequence_log_prob(model, features, captions):
    """Model log-probability of each caption (words up to and including <END>).

    Inputs:
    - captions: Int array (N, L) as returned by the decoders (no <START>)

    Returns:
    - logp: Float64 array of shape (N,)
    """
    start, end, null = _special_ids(model)
    captions = np.asarray(captions)
    state, step = model.decoder(features)
    N, L = captions.shape
    words = np.full(N, start, dtype=np.int64)
    total = np.zeros(N)
    live = np.ones(N, dtype=bool)
    for t in range(L):
        state, scores = step(state, words)
        logp = _log_softmax(scores.astype(np.float64), [start, null])
        words = captions[:, t]
        live &= words != null
        total += np.where(live, logp[np.arange(N), words], 0.0)
        if end is not None:
            live &= words != end
        words = np.where(words == null, start, words)  # keep the step valid after the end
    return total


def decode(model, features, max_length=30, method="greedy", **options):
    """Dispatch to one decoder by name ('greedy', 'beam' or 'temperature')."""
    if method == "greedy":
        if options:
            raise ValueError(f"greedy decoding takes no options, got {sorted(options)}")
        return greedy(model, features, max_length)
    if method == "beam":
        return beam_search(model, features, max_length, **options)
    if method == "temperature":
        return temperature_sample(model, features, max_length, **options)
    raise ValueError(f'unknown decoding method "{method}"; choose one of {METHODS}')
