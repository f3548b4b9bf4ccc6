"""Caption decoding: greedy, batched beam search and temperature sampling.

Every decoder drives a model through ``model.decoder(features) -> (state, step)`` (see
CaptioningRNN.decoder), so it works for all cell types; for a model that attends to image
regions, every function takes them as ``regions`` (N, L, C) and hands them to
``model.decoder(features, regions=regions)``, which keeps them in its state. Outputs are (N, max_length) int
arrays without <START>; after <END> a row holds <NULL>. <START> and <NULL> are never
generated. Dimension letters: N images, k beam width, V vocabulary, H hidden size.
"""

import numpy as np

from capmodel.kernels import parallel
from capmodel.vocab import END, NULL, START

METHODS = ("greedy", "beam", "temperature")


def _special_ids(model):
    w2i = model.word_to_idx
    if START not in w2i:
        raise ValueError(f"cannot decode: the vocabulary has no {START} token")
    return w2i[START], w2i.get(END), w2i[NULL]


def _start(model, features, regions):
    """model.decoder's (state, step); regions are passed only when given, so a model
    without regions keeps its decoder(features) signature."""
    if regions is None:
        return model.decoder(features)
    return model.decoder(features, regions=regions)


def _log_softmax_inplace(scores, banned):
    """Row-wise log-softmax of (M, V) scores, in place, with the banned ids at -inf."""
    scores[:, banned] = -np.inf
    scores -= scores.max(axis=1, keepdims=True)
    lse = np.log(np.exp(scores).sum(axis=1, keepdims=True))
    scores -= lse
    return scores


def _top_k(values, k):
    """Column indices of the k largest entries of each row, best first, ties by lower index."""
    if k <= 4:  # a few argmax passes beat a partition of the whole row
        rows = np.arange(len(values))
        top = np.empty((len(values), k), dtype=np.int64)
        found = np.empty((len(values), k), dtype=values.dtype)
        for j in range(k):  # mask each winner in place, then put the values back
            top[:, j] = values.argmax(axis=1)
            found[:, j] = values[rows, top[:, j]]
            values[rows, top[:, j]] = -np.inf
        for j in reversed(range(k)):
            values[rows, top[:, j]] = found[:, j]
        return top
    top = np.argpartition(-values, k - 1, axis=1)[:, :k]
    order = np.lexsort((top, -np.take_along_axis(values, top, axis=1)), axis=1)
    return np.take_along_axis(top, order, axis=1)


def _word_by_word(model, features, max_length, pick, regions=None):
    """Decode one word per step for every caption: pick(scores (N, V), start, null) -> word
    ids (N,). A caption that produced <END> gets <NULL> from then on; decoding stops when
    all have ended.

    Returns:
    - captions: Int array of shape (N, max_length)
    """
    start, end, null = _special_ids(model)
    state, step = _start(model, features, regions)
    N = state[0].shape[0]
    captions = np.full((N, max_length), null, dtype=np.int64)
    words = np.full(N, start, dtype=np.int64)
    done = np.zeros(N, dtype=bool)
    for t in range(max_length):
        parallel.raise_if_cancelled()
        state, scores = step(state, words)
        words = pick(scores, start, null)
        words[done] = null
        captions[:, t] = words
        if end is not None:
            done |= words == end
            if done.all():
                break
    return captions


def greedy(model, features, max_length=30, regions=None):
    """Greedy decoding: at each step take the highest-scoring word.

    Returns:
    - captions: Int array of shape (N, max_length)
    """
    def highest(scores, start, null):
        scores[:, [start, null]] = -np.inf
        return scores.argmax(axis=1)

    return _word_by_word(model, features, max_length, highest, regions)


def temperature_sample(model, features, max_length=30, temperature=1.0, rng=None, regions=None):
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

    def sampled(scores, start, null):
        logp = _log_softmax_inplace(scores / scores.dtype.type(temperature), [start, null]).astype(np.float64)
        cdf = np.cumsum(np.exp(logp), axis=1)
        u = rng.random(len(cdf)) * cdf[:, -1]
        return np.minimum((cdf < u[:, None]).sum(axis=1), cdf.shape[1] - 1)

    return _word_by_word(model, features, max_length, sampled, regions)


def beam_search(model, features, max_length=30, beam_size=3, length_norm=0.0, return_all=False, regions=None):
    """Beam search over all images at once (N * k hypotheses per step).

    Hypotheses are ranked by total log-probability while searching; a finished one (it
    produced <END>) keeps its score and only extends with <NULL>. The final choice divides
    each score by length ** length_norm (0 = no normalisation, 1 = mean log-probability).
    Each image's greedy path is followed inside the beam; when it is pruned, it goes on as
    an extra "shadow" row of the same batched step and is returned if it ends up scoring
    better, so a beam never yields a lower model log-probability than greedy. With
    beam_size=1 the result is exactly greedy.

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
    state, step = _start(model, features, regions)
    N = state[0].shape[0]
    state = tuple(np.repeat(s, k, axis=0) for s in state)  # (N*k, H)
    words = np.full(N * k, start, dtype=np.int64)
    seqs = np.full((N, k, max_length), null, dtype=np.int64)
    lengths = np.zeros((N, k), dtype=np.int64)
    done = np.zeros((N, k), dtype=bool)
    # Only the first copy of each image is live at t = 0, so the k beams differ.
    logp_beam = np.full((N, k), -np.inf)
    logp_beam[:, 0] = 0.0
    images = np.arange(N)
    greedy_slot = np.zeros(N, dtype=np.int64)  # where each image's greedy path sits in its beam
    greedy_alive = np.ones(N, dtype=bool)
    shadow = _Shadows(max_length, null)  # greedy paths that fell out of their beam
    banned = [start, null]
    for t in range(max_length):
        parallel.raise_if_cancelled()
        M = N * k
        new_state, scores = step(tuple(np.concatenate([s, h]) for s, h in zip(state, shadow.state))
                                 if shadow.size else state, np.concatenate([words, shadow.words]))
        if shadow.size:
            shadow.advance(t, tuple(s[M:] for s in new_state), scores[M:], banned, end)
            new_state, scores = tuple(s[:M] for s in new_state), scores[:M]
        V = scores.shape[1]
        # total = log-softmax(scores) + the beam's score, in one pass after the normaliser
        scores[:, banned] = -np.inf
        mx = scores.max(axis=1, keepdims=True)
        lse = mx + np.log(np.exp(scores - mx).sum(axis=1, keepdims=True))
        scores += (logp_beam.reshape(-1, 1) - lse).astype(scores.dtype)
        logp = scores.reshape(N, k, V)
        # A finished hypothesis extends only with <NULL>, keeping its score.
        logp[done] = -np.inf
        logp[done, null] = logp_beam[done]
        greedy_word = logp[images, greedy_slot].argmax(axis=1)
        greedy_next = greedy_slot * V + greedy_word
        total = logp.reshape(N, k * V)
        top = _top_k(total, k)
        kept = top == greedy_next[:, None]
        pruned = np.flatnonzero(greedy_alive & ~kept.any(axis=1))
        if len(pruned):  # continue these greedy paths as shadow rows
            slot = greedy_slot[pruned]
            seq = seqs[pruned, slot].copy()
            seq[:, t] = greedy_word[pruned]
            shadow.add(pruned, tuple(s[pruned * k + slot] for s in new_state), greedy_word[pruned],
                       total[pruned, greedy_next[pruned]].astype(np.float64), seq,
                       done[pruned, slot] | (greedy_word[pruned] == end), lengths[pruned, slot] + ~done[pruned, slot])
            greedy_alive[pruned] = False
        greedy_slot = kept.argmax(axis=1)
        parent, words2 = np.divmod(top, V)  # (N, k)
        logp_beam = np.take_along_axis(total, top, axis=1).astype(np.float64)
        rows = (parent + images[:, None] * k).reshape(-1)
        state = tuple(s[rows] for s in new_state)
        seqs = np.take_along_axis(seqs, parent[:, :, None], axis=1)
        seqs[:, :, t] = words2
        done = np.take_along_axis(done, parent, axis=1)
        lengths = np.take_along_axis(lengths, parent, axis=1) + ~done
        if end is not None:
            done |= words2 == end
        words = words2.reshape(-1)
        if done.all() and shadow.done.all():
            break

    norm = lambda logp, n: logp / np.maximum(n, 1) ** length_norm if length_norm else logp
    rank = norm(logp_beam, lengths)
    best = rank.argmax(axis=1)
    captions = seqs[images, best]
    if shadow.size:
        better = norm(shadow.logp, shadow.lengths) > rank[shadow.image, best[shadow.image]]
        captions[shadow.image[better]] = shadow.seqs[better]
    if return_all:
        return captions, seqs, logp_beam
    return captions


class _Shadows:
    """Greedy continuations of the images whose greedy path left the beam (M rows)."""

    def __init__(self, max_length, null):
        self.null = null
        self.image = np.zeros(0, dtype=np.int64)
        self.state = ()
        self.words = np.zeros(0, dtype=np.int64)
        self.logp = np.zeros(0)
        self.seqs = np.zeros((0, max_length), dtype=np.int64)
        self.done = np.zeros(0, dtype=bool)
        self.lengths = np.zeros(0, dtype=np.int64)

    @property
    def size(self):
        return len(self.image)

    def add(self, image, state, words, logp, seqs, done, lengths):
        cat = np.concatenate
        self.state = tuple(cat([a, b]) for a, b in zip(self.state, state)) if self.size else state
        self.image, self.words, self.logp = cat([self.image, image]), cat([self.words, words]), cat([self.logp, logp])
        self.seqs, self.done = cat([self.seqs, seqs]), cat([self.done, done])
        self.lengths = cat([self.lengths, lengths])

    def advance(self, t, state, scores, banned, end):
        """Take the greedy word of every live shadow row from this step's scores."""
        logp = _log_softmax_inplace(scores, banned)
        words = logp.argmax(axis=1)
        gain = logp[np.arange(self.size), words].astype(np.float64)
        live = ~self.done
        self.logp += np.where(live, gain, 0.0)
        self.lengths += live
        words[~live] = self.null
        self.seqs[:, t] = words
        if end is not None:
            self.done |= words == end
        self.state, self.words = state, words


def sequence_log_prob(model, features, captions, regions=None):
    """Model log-probability of each caption (words up to and including <END>).

    Inputs:
    - captions: Int array (N, L) as returned by the decoders (no <START>)

    Returns:
    - logp: Float64 array of shape (N,)
    """
    start, end, null = _special_ids(model)
    captions = np.asarray(captions)
    state, step = _start(model, features, regions)
    N, L = captions.shape
    words = np.full(N, start, dtype=np.int64)
    total = np.zeros(N)
    live = np.ones(N, dtype=bool)
    for t in range(L):
        state, scores = step(state, words)
        logp = _log_softmax_inplace(scores, [start, null]).astype(np.float64)
        words = captions[:, t]
        live &= words != null
        total += np.where(live, logp[np.arange(N), words], 0.0)
        if end is not None:
            live &= words != end
        words = np.where(words == null, start, words)  # keep the step valid after the end
    return total


def _in_blocks(decode_block, features, regions):
    """decode_block(features, regions) over blocks of consecutive images, in threads
    (capmodel.kernels.parallel); the blocks' captions concatenated."""
    def block(rows):  # (n,) consecutive image indices
        s = slice(int(rows[0]), int(rows[-1]) + 1) if len(rows) else slice(0, 0)
        return decode_block(features[s], None if regions is None else regions[s])

    return parallel.map_rows(block, np.arange(len(features)))


def decode(model, features, max_length=30, method="greedy", regions=None, **options):
    """Dispatch to one decoder by name ('greedy', 'beam' or 'temperature').

    Greedy and beam search decode each image on its own, so they run over blocks of
    images in parallel threads (capmodel.kernels.parallel: as many as BLAS has threads, each
    with a one-thread BLAS); a failing or interrupted block stops the others at their
    next step. Temperature sampling draws from one random stream in image order, so it
    runs in the calling thread. regions (N, L, C), for a model that attends to them, go
    to model.decoder with the features.
    """
    if regions is not None and len(regions) != len(features):
        raise ValueError(f"regions must have one row per image: {len(features)} images, regions of shape "
                         f"{np.shape(regions)}")
    if method == "greedy":
        if options:
            raise ValueError(f"greedy decoding takes no options, got {sorted(options)}")
        features = model.check_features(features)  # errors name the caller's shape, not a block's
        return _in_blocks(lambda f, r: greedy(model, f, max_length, regions=r), features, regions)
    if method == "beam":
        features = model.check_features(features)
        return _in_blocks(lambda f, r: beam_search(model, f, max_length, regions=r, **options), features, regions)
    if method == "temperature":
        return temperature_sample(model, features, max_length, regions=regions, **options)
    raise ValueError(f'unknown decoding method "{method}"; choose one of {METHODS}')
