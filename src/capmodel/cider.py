"""CIDEr-D rewards: the coco-caption toolkit's CIDEr-D computed with NumPy, on strings or word ids.

Self-critical sequence training rewards every sampled caption with its CIDEr-D against
the references of its image. CiderD gives the numbers of pycocoevalcap's Cider (which is
CIDEr-D), except that the document frequencies come from a fixed corpus given once (for
rewards: the training captions) rather than from the captions being scored.

The definition, as in pycocoevalcap's cider_scorer.py: a caption is, for each n = 1..4,
the vector of its n-gram counts tf(g) weighted by idf(g) = log(S) - log(max(1, df(g))),
where S is the number of reference sets (images) of the corpus and df(g) the number of
them with a reference containing g; an n-gram absent from the corpus has idf log(S).
Against one reference r a candidate c scores, for each n,

    sum_g min(c_g, r_g) * r_g / (|c| |r|)     (0 when either norm is 0)

times the length penalty exp(-(l_c - l_r)^2 / (2 * 6^2)), where the length l of a caption
is, as in the toolkit, its number of bigrams (max(words - 1, 0)). CIDEr-D is 10 times the
mean of these over n and over the references of the candidate.

Word ids: CiderD.from_captions reads training captions in the CS231n format
(capmodel.vocab: <NULL> padding, <START>, <END>) and score_ids scores sampled id arrays
without building strings. A caption is its words before the first <END>, without <NULL>
and <START>: what capmodel.coco_utils.decode_captions(..., strip_special=True) gives, so
score_ids equals score on the decoded strings. <END> is not a token of the reward. The
references that evaluation scores against have no <END>; counting it (as some
self-critical code does) adds an n-gram "... <END>" shared by every caption and its
references and inflates CIDEr-D, so training would maximise a different number from the
one reported.

<UNK> is never a match. Evaluation scores a caption against the words people wrote,
where a rare word is itself, not <UNK>, and a generated <UNK> matches none of them. So
here each <UNK> of a caption or a reference (the id of <UNK>, or the string "<UNK>")
stands for a word of its own: an n-gram containing it counts in its caption's length
and tf-idf norm with the idf of an n-gram found in one reference set only, log(S) (for a
candidate: in none, also log(S)), and never in a match or a document frequency. This is
pycocoevalcap's CIDEr-D with every <UNK> replaced by a distinct new word.

Evaluation stays with capmodel.metrics (pycocoevalcap, document frequencies from the
evaluated set); this module is for rewards. Each n-gram is encoded as one int64 key, its
word ids being digits in base 55108, so one scorer handles at most 55107 distinct words
(the corpus's and those new in one call); more raise ValueError.

Letters: K candidates, M reference captions, S reference sets (images), R the most
references of one set, T time.
"""

import numpy as np

from capmodel.vocab import END, NULL, START, UNK

MAX_N = 4  # 1- to 4-grams
SIGMA = 6.0  # standard deviation of the length penalty, in words
BASE = 55108  # the largest base whose 4-digit numbers fit in int64
MAX_VOCAB = BASE - 1  # ids are shifted by one so that an n-gram's key has n digits


def ngram_keys(flat, lengths, unk=None):
    """Encode every n-gram (n = 1..MAX_N) of ragged word-id sequences as one int64 key.

    The key of the n-gram (w_1, ..., w_n) is sum_i (w_i + 1) * BASE^(n - i): different
    n-grams, of the same or of different n, have different keys.

    Inputs:
    - flat: Word ids of all M sequences one after the other, of shape (W,), in [0, MAX_VOCAB)
    - lengths: Number of words of each sequence, of shape (M,)
    - unk: The id of <UNK> (None: none); n-grams containing it get no key (each is a
      word of its own, which matches nothing) and are only counted

    Returns a list of MAX_N tuples (rows, keys, unknown), the n-th for the n-grams:
    - rows: Sequence of each n-gram occurrence without <UNK>, of shape (P_n,)
    - keys: Its key, of shape (P_n,)
    - unknown: Number of n-grams with <UNK> in each sequence, of shape (M,)
    """
    flat = np.asarray(flat, dtype=np.int64)
    lengths = np.asarray(lengths, dtype=np.int64)
    rows = np.repeat(np.arange(len(lengths)), lengths)  # (W,)
    starts = np.cumsum(lengths) - lengths
    left = lengths[rows] - (np.arange(len(flat)) - starts[rows])  # words from here to the sequence's end
    keys = np.zeros(len(flat), dtype=np.int64)
    has_unk = np.zeros(len(flat), dtype=bool)  # the n-gram starting here contains <UNK>
    out = []
    for n in range(1, MAX_N + 1):
        at = np.flatnonzero(left >= n)  # the (n-1)-gram keys here are already in place
        keys[at] = keys[at] * BASE + flat[at + n - 1] + 1
        if unk is not None:
            has_unk[at] |= flat[at + n - 1] == unk
        known = at[~has_unk[at]]
        unknown = np.bincount(rows[at[has_unk[at]]], minlength=len(lengths))
        out.append((rows[known], keys[known], unknown))
    return out


class _References:
    """Reference captions grouped into sets (one set per image), as tf-idf tables per n.

    For each n: keys[n] (G,) the sorted distinct n-gram keys, idf[n] (G,) their idf,
    cells[n] (U,) sorted set * G + rank of every (set, n-gram) present, counts[n] (U, R)
    the n-gram's count in each reference of the set, norms[n] (S, R) each reference's
    tf-idf norm (its n-grams with <UNK> included, at idf absent_idf). lengths (S, R) are
    the references' bigram counts, num_refs (S,).
    """

    def __init__(self, flat, lengths, sets, slots, num_sets, idf_of=None, unk=None, absent_idf=None):
        """Build the tables; idf_of(n, keys) gives the corpus idf, or None: these sets are
        the corpus and their document frequencies give the idf. unk: the id of <UNK> or
        None; absent_idf: the corpus idf of an n-gram in one set or none, log(S) of the
        corpus (default: of these sets)."""
        sets = np.asarray(sets, dtype=np.int64)
        slots = np.asarray(slots, dtype=np.int64)
        lengths = np.asarray(lengths, dtype=np.int64)
        R = int(slots.max()) + 1
        self.num_refs = np.bincount(sets, minlength=num_sets)
        self.lengths = np.zeros((num_sets, R), dtype=np.int64)
        self.lengths[sets, slots] = np.maximum(lengths - 1, 0)  # the toolkit's length: bigrams
        self.log_size = np.log(float(num_sets))
        absent_idf = self.log_size if absent_idf is None else absent_idf
        self.keys, self.idf, self.cells, self.counts = [], [], [], []
        self.norms = np.zeros((MAX_N, num_sets, R))
        for n, (rows, keys, unknown) in enumerate(ngram_keys(flat, lengths, unk)):
            ukeys, rank = np.unique(keys, return_inverse=True)
            G = max(len(ukeys), 1)
            if num_sets * G * R >= 2**63:
                raise ValueError(f"too many reference n-grams to index: {num_sets} sets x {G} {n + 1}-grams "
                                 f"x {R} references per set exceed int64")
            triples, tf = np.unique((sets[rows] * G + rank) * R + slots[rows], return_counts=True)
            cell, slot = triples // R, triples % R
            first = np.ones(len(cell), dtype=bool)
            first[1:] = cell[1:] != cell[:-1]
            cells = cell[first]
            counts = np.zeros((len(cells), R), dtype=np.min_scalar_type(tf.max(initial=0)))  # (U, R)
            counts[np.cumsum(first) - 1, slot] = tf
            if idf_of is None:
                df = np.bincount(cells % G, minlength=len(ukeys))  # >= 1: every key occurs somewhere
                idf = self.log_size - np.log(df)
            else:
                idf = idf_of(n, ukeys)
            vec = tf * idf[cell % G]
            squares = np.bincount(cell // G * R + slot, weights=vec**2,
                                  minlength=num_sets * R).reshape(num_sets, R).astype(np.float64)  # int when empty
            squares[sets, slots] += unknown * absent_idf**2  # each n-gram with <UNK>: tf 1
            self.norms[n] = np.sqrt(squares)
            self.keys.append(ukeys)
            self.idf.append(idf)
            self.cells.append(cells)
            self.counts.append(counts)


class CiderD:
    """CIDEr-D of captions against references, with document frequencies from a fixed corpus.

    Build it from the corpus's reference sets as strings (CiderD(refs)) or from CS231n
    caption arrays (CiderD.from_captions), then score strings (score) or, for a scorer
    built from arrays, sampled word ids (score_ids).
    """

    def __init__(self, refs):
        """Take the document frequencies from a corpus of reference sets.

        Inputs:
        - refs: List of S reference sets, one per image, each a non-empty list of
          tokenized caption strings (words separated by white space)
        """
        self._word_to_id = {UNK: 0}
        self._next_id = 1
        self._unk = 0
        flat, lengths, sets, slots = self._encode_refs(refs, "refs", grow=True)
        self._set_corpus(_References(flat, lengths, sets, slots, len(refs), unk=self._unk))
        self._images = None

    @classmethod
    def from_captions(cls, captions, image_idxs, word_to_idx):
        """Take the document frequencies and per-image references from CS231n caption arrays.

        Every distinct image of image_idxs is one reference set, holding its captions in
        their order in the array. A caption is its words before the first <END>, without
        <NULL> and <START>.

        Inputs:
        - captions: Integer array of shape (M, T), as data["train_captions"]
        - image_idxs: Integer array of shape (M,), the image of each caption
        - word_to_idx: Dict mapping words to ids, with <NULL>, <START> and <END>

        Returns:
        - A CiderD whose score_ids scores captions against these references
        """
        self = cls.__new__(cls)
        for tok in (NULL, START, END):
            if tok not in word_to_idx:
                raise ValueError(f"word_to_idx is missing the special token {tok}")
        self._word_to_id = dict(word_to_idx)
        self._next_id = max(word_to_idx.values()) + 1
        if self._next_id > MAX_VOCAB:
            raise ValueError(f"CiderD handles word ids below {MAX_VOCAB}, word_to_idx has ids up to {self._next_id - 1}")
        self._special = tuple(word_to_idx[t] for t in (NULL, START, END))
        self._unk = word_to_idx.get(UNK)
        captions = self._check_ids(captions, "captions")
        image_idxs = self._check_image_idxs(image_idxs, len(captions), "captions")
        if len(captions) == 0:
            raise ValueError("from_captions needs at least one caption")
        images, sets = np.unique(image_idxs, return_inverse=True)
        num_refs = np.bincount(sets)
        order = np.argsort(sets, kind="stable")
        slots = np.empty(len(sets), dtype=np.int64)
        slots[order] = np.arange(len(sets)) - (np.cumsum(num_refs) - num_refs)[sets[order]]
        flat, lengths = self._strip(captions)
        self._images = _References(flat, lengths, sets, slots, len(images), unk=self._unk)
        self._image_ids = images
        self._set_corpus(self._images)
        return self

    def score(self, candidates, refs):
        """Score caption strings against their references.

        Inputs:
        - candidates: List of K tokenized caption strings
        - refs: List of K reference sets, the k-th a non-empty list of tokenized strings
          for candidates[k]

        Returns:
        - scores: CIDEr-D of each candidate, float64 array of shape (K,)
        """
        if isinstance(candidates, str) or isinstance(refs, str):
            raise ValueError("score takes a list of candidate strings and a list of reference lists")
        if len(candidates) != len(refs):
            raise ValueError(f"score got {len(candidates)} candidates but {len(refs)} reference sets")
        if len(candidates) == 0:
            return np.zeros(0)
        new = {}  # words outside the corpus, shared by candidates and references of this call
        flat, lengths = self._encode(candidates, "candidates", new)
        ref_flat, ref_lengths, sets, slots = self._encode_refs(refs, "refs", new=new)
        table = _References(ref_flat, ref_lengths, sets, slots, len(refs), idf_of=self._idf_of, unk=self._unk,
                            absent_idf=self._log_size)
        return self._score(table, flat, lengths, np.arange(len(candidates)))

    def score_ids(self, sampled, image_idxs):
        """Score sampled word-id captions against the references of their images.

        Inputs:
        - sampled: Integer array of shape (K, T), as model.sample returns (with or
          without <START>; words after the first <END> are ignored)
        - image_idxs: Integer array of shape (K,), the image of each caption, one of
          the images the scorer was built from

        Returns:
        - scores: CIDEr-D of each caption, float64 array of shape (K,)
        """
        if self._images is None:
            raise ValueError("score_ids needs a scorer built by CiderD.from_captions; this one was built from strings")
        sampled = self._check_ids(sampled, "sampled")
        image_idxs = self._check_image_idxs(image_idxs, len(sampled), "sampled captions")
        pos = np.minimum(np.searchsorted(self._image_ids, image_idxs), len(self._image_ids) - 1)
        unknown = self._image_ids[pos] != image_idxs
        if unknown.any():
            raise ValueError(f"image {image_idxs[unknown][0]} has no reference captions in this scorer")
        flat, lengths = self._strip(sampled)
        return self._score(self._images, flat, lengths, pos)

    def _set_corpus(self, table):
        self._log_size = table.log_size
        self._corpus_keys = table.keys
        self._corpus_idf = table.idf

    def _idf_of(self, n, keys):
        """idf of n-gram keys under the corpus: log(S) for those absent from it (df 0)."""
        corpus = self._corpus_keys[n]
        if len(corpus) == 0:
            return np.full(len(keys), self._log_size)
        pos = np.minimum(np.searchsorted(corpus, keys), len(corpus) - 1)
        return np.where(corpus[pos] == keys, self._corpus_idf[n][pos], self._log_size)

    def _score(self, table, flat, lengths, sets):
        """CIDEr-D of K candidates, the k-th against the references of set sets[k] of table."""
        K, R = len(lengths), table.lengths.shape[1]
        total = np.zeros((K, R))
        for n, (rows, keys, unknown) in enumerate(ngram_keys(flat, lengths, self._unk)):
            ukeys, rank = np.unique(keys, return_inverse=True)
            G = max(len(ukeys), 1)
            pairs, tf = np.unique(rows * G + rank, return_counts=True)  # one per (candidate, n-gram)
            cand, rank = pairs // G, pairs % G
            idf = self._idf_of(n, ukeys)[rank]
            vec = tf * idf
            # an n-gram with <UNK> is in no reference set: idf log(S), tf 1
            norm = np.sqrt(np.bincount(cand, weights=vec**2, minlength=K) + unknown * self._log_size**2)  # (K,)
            # the n-grams each candidate shares with the references of its set
            ref_keys, cells = table.keys[n], table.cells[n]
            if len(cells) == 0:
                continue
            at = np.minimum(np.searchsorted(ref_keys, ukeys), len(ref_keys) - 1)[rank]
            cell = sets[cand] * max(len(ref_keys), 1) + at
            u = np.minimum(np.searchsorted(cells, cell), len(cells) - 1)
            shared = (ref_keys[at] == ukeys[rank]) & (cells[u] == cell)
            ref_vec = table.counts[n][u[shared]] * idf[shared, None]  # (F, R)
            clipped = np.minimum(vec[shared, None], ref_vec) * ref_vec
            dot = np.bincount((cand[shared, None] * R + np.arange(R)).ravel(), weights=clipped.ravel(),
                              minlength=K * R).reshape(K, R).astype(np.float64, copy=False)  # int when empty
            ref_norm = table.norms[n][sets]  # (K, R)
            total += np.divide(dot, norm[:, None] * ref_norm, out=dot,
                               where=(norm[:, None] != 0) & (ref_norm != 0))
        delta = np.maximum(lengths - 1, 0)[:, None] - table.lengths[sets]  # (K, R)
        penalty = np.e ** (-(delta.astype(float) ** 2) / (2 * SIGMA**2))
        return (total * penalty).sum(axis=1) / MAX_N / table.num_refs[sets] * 10.0

    def _encode(self, texts, what, new=None, grow=False):
        """Word ids of caption strings, flat (W,), and their lengths (M,). Words outside
        the scorer's vocabulary join it (grow) or get ids in new, for this call only."""
        ids, flat = self._word_to_id, []
        lengths = np.empty(len(texts), dtype=np.int64)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise ValueError(f"{what}[{i}] is a {type(text).__name__}, not a caption string")
            words = text.split()
            lengths[i] = len(words)
            for w in words:
                if w in ids:
                    flat.append(ids[w])
                elif grow:
                    ids[w] = self._next_id
                    self._next_id += 1
                    flat.append(ids[w])
                else:
                    flat.append(new.setdefault(w, self._next_id + len(new)))
        if self._next_id + (0 if grow else len(new)) > MAX_VOCAB:
            raise ValueError(f"CiderD handles at most {MAX_VOCAB} distinct words, {what} bring the count to "
                             f"{self._next_id + (0 if grow else len(new))}")
        return np.array(flat, dtype=np.int64), lengths

    def _encode_refs(self, refs, what, new=None, grow=False):
        """Word ids of reference sets, flat, with each reference's length, set and slot."""
        if isinstance(refs, str):
            raise ValueError(f"{what} must be a list of reference sets, got a string")
        for k, ref_set in enumerate(refs):
            if isinstance(ref_set, str) or not isinstance(ref_set, (list, tuple)):
                raise ValueError(f"{what}[{k}] must be a list of reference strings, got {type(ref_set).__name__}")
            if len(ref_set) == 0:
                raise ValueError(f"{what}[{k}] is empty: every reference set needs at least one reference")
        num = np.array([len(r) for r in refs], dtype=np.int64)
        if len(refs) == 0:
            raise ValueError(f"{what} is empty: CiderD needs at least one reference set")
        flat, lengths = self._encode([s for r in refs for s in r], what, new, grow)
        sets = np.repeat(np.arange(len(refs)), num)
        slots = np.arange(len(sets)) - np.repeat(np.cumsum(num) - num, num)
        return flat, lengths, sets, slots

    def _strip(self, captions):
        """Word ids of id captions, flat (W,), and their lengths (K,): the words before
        the first <END>, without <NULL> and <START>."""
        null, start, end = self._special
        keep = (captions != null) & (captions != start) & (np.cumsum(captions == end, axis=1) == 0)
        return captions[keep].astype(np.int64), keep.sum(axis=1)

    def _check_ids(self, captions, what):
        captions = np.asarray(captions)
        if captions.ndim != 2 or not np.issubdtype(captions.dtype, np.integer):
            raise ValueError(f"{what} must be an integer array of shape (N, T), got {captions.dtype} "
                             f"of shape {captions.shape}")
        if captions.size and (captions.min() < 0 or captions.max() >= self._next_id):
            bad = captions[(captions < 0) | (captions >= self._next_id)][0]
            raise ValueError(f"{what} holds the word id {bad}, outside the vocabulary's [0, {self._next_id})")
        return captions

    @staticmethod
    def _check_image_idxs(image_idxs, num, what):
        image_idxs = np.asarray(image_idxs)
        if image_idxs.shape != (num,) or not np.issubdtype(image_idxs.dtype, np.integer):
            raise ValueError(f"image_idxs must be an integer array of shape ({num},), one per row of {what}, "
                             f"got {image_idxs.dtype} of shape {image_idxs.shape}")
        return image_idxs
