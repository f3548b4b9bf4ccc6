"""Tests of capmodel.cider: CIDEr-D equal to pycocoevalcap's, on strings and on word ids."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.cider.cider_scorer import CiderScorer

from capmodel.cider import CiderD
from capmodel.coco_utils import decode_captions
from capmodel.vocab import build_vocab, encode_captions

ROOT = Path(__file__).resolve().parents[1]
WORDS = [f"w{i}" for i in range(40)]
ZIPF = 1 / np.arange(1, len(WORDS) + 1) / np.sum(1 / np.arange(1, len(WORDS) + 1))  # frequent words repeat


def caption(rng, lo, hi, words=WORDS):
    p = ZIPF if words is WORDS else None
    return " ".join(rng.choice(words, size=rng.integers(lo, hi + 1), p=p))


def corpus(rng, num_images):
    """Reference sets of 1 to 7 captions of 0 to 14 words (5 per image most often)."""
    sizes = rng.choice([1, 2, 5, 5, 5, 5, 7], size=num_images)
    return [[caption(rng, 0 if rng.random() < 0.01 else 1, 14) for _ in range(n)] for n in sizes]


def candidates(rng, refs, new_words=()):
    """One candidate per reference set: random, empty, a copy of a reference, very long,
    one word repeated, a reference with a word repeated, or partly new words."""
    out = []
    for r in refs:
        kind = rng.integers(7)
        if kind == 0:
            out.append(caption(rng, 1, 14))
        elif kind == 1:
            out.append("")
        elif kind == 2:
            out.append(r[rng.integers(len(r))])
        elif kind == 3:
            out.append(caption(rng, 40, 90))
        elif kind == 4:
            out.append(" ".join(["w0"] * rng.integers(1, 9)))
        elif kind == 5:
            words = r[0].split() or ["w1"]
            out.append(" ".join(words + words[: rng.integers(1, len(words) + 1)]))
        else:
            out.append(caption(rng, 1, 10) + " " + caption(rng, 1, 4, list(new_words) or WORDS))
    return out


def test_scores_equal_pycocoevalcap_when_built_from_the_refs_it_scores():
    rng = np.random.default_rng(0)
    refs = corpus(rng, 300)
    cands = candidates(rng, refs, new_words=["x1", "x2", "x3"])
    ours = CiderD(refs).score(cands, refs)
    mean, theirs = Cider().compute_score({i: r for i, r in enumerate(refs)}, {i: [c] for i, c in enumerate(cands)})
    assert ours.dtype == np.float64 and ours.shape == (300,)
    assert np.abs(ours - theirs).max() < 1e-9
    assert ours.mean() == pytest.approx(mean, abs=1e-9)
    copies = [k for k, (c, r) in enumerate(zip(cands, refs)) if c in r and c]
    assert len(copies) > 20 and ours[copies].min() > 0.1 and ours.max() > 3  # the scores are not all ~0
    assert (ours[[k for k, c in enumerate(cands) if not c]] == 0).all()


def test_scores_with_another_corpus_equal_pycocoevalcap_given_its_document_frequencies():
    """Train df, score val: pycocoevalcap's CiderScorer, with the df it computes on the
    training sets and padded with empty items to the training corpus's size (its log of
    the corpus size is the log of its number of items), scores the val candidates."""
    rng = np.random.default_rng(1)
    train, val = corpus(rng, 400), corpus(rng, 150)
    val = [r[:-1] + [r[-1] + " v1 v2"] if k % 3 == 0 else r for k, r in enumerate(val)]  # n-grams with df 0
    cands = candidates(rng, val, new_words=["v1", "v2", "x1"])
    ours = CiderD(train).score(cands, val)

    train_scorer = CiderScorer()
    for r in train:
        train_scorer += ("", r)
    train_scorer.compute_doc_freq()
    scorer = CiderScorer()
    for c, r in zip(cands, val):
        scorer += (c, r)
    for _ in range(len(train) - len(val)):
        scorer += ("", [""])
    scorer.document_frequency = train_scorer.document_frequency
    theirs = np.array(scorer.compute_cider()[: len(val)])
    assert np.abs(ours - theirs).max() < 1e-9
    assert np.abs(ours - CiderD(val).score(cands, val)).max() > 0.1  # the corpus matters


def id_corpus(rng, num_images):
    """CS231n-format training data: captions (M, 17), shuffled, with their image ids."""
    refs = corpus(rng, num_images)
    word_to_idx, idx_to_word = build_vocab([c for r in refs for c in r])
    image_ids = rng.permutation(10 * num_images)[:num_images]  # not 0..S-1
    image_idxs = np.repeat(image_ids, [len(r) for r in refs])
    captions = encode_captions([c for r in refs for c in r], word_to_idx)
    order = rng.permutation(len(captions))
    return captions[order], image_idxs[order], word_to_idx, idx_to_word


def sampled_captions(rng, captions, image_idxs, num, V):
    """(num, 16) sampled ids as model.sample returns them, with <END> anywhere or nowhere,
    stray <NULL>/<START>/<UNK>, and copies of a reference of the image; and their images."""
    rows = rng.integers(len(captions), size=num)
    sampled = rng.integers(3, V, size=(num, 16))
    for k, row in enumerate(rows):
        kind = k % 6
        if kind == 0:
            sampled[k] = captions[row, 1:]  # a reference of the image, padded
        elif kind == 1:
            sampled[k, rng.integers(16)] = 2  # words after <END> are ignored
        elif kind == 2:
            sampled[k, rng.integers(16, size=3)] = rng.integers(0, 4, size=3)
        elif kind == 3:
            sampled[k, 0] = 2  # empty
    return sampled, image_idxs[rows]


def test_score_ids_equals_score_on_the_decoded_strings():
    rng = np.random.default_rng(2)
    captions, image_idxs, word_to_idx, idx_to_word = id_corpus(rng, 200)
    scorer = CiderD.from_captions(captions, image_idxs, word_to_idx)
    sampled, images = sampled_captions(rng, captions, image_idxs, 300, len(idx_to_word))
    ours = scorer.score_ids(sampled, images)

    texts = decode_captions(captions, idx_to_word, strip_special=True)
    refs_of = {i: [t for t, j in zip(texts, image_idxs) if j == i] for i in np.unique(image_idxs)}
    decoded = decode_captions(sampled, idx_to_word, strip_special=True)
    refs = [refs_of[i] for i in images]
    assert np.abs(ours - scorer.score(decoded, refs)).max() < 1e-9
    assert np.abs(ours - CiderD(list(refs_of.values())).score(decoded, refs)).max() < 1e-9
    assert ours[::6].min() > 0.1 and (ours[3::6] == 0).all()  # the copies score, the empty ones do not
    assert "" in decoded and any("<UNK>" in d for d in decoded)


def _distinct_unknowns(texts, counter):
    """Each <UNK> of the caption strings replaced by a new word of its own (u0, u1, ...)."""
    out = []
    for t in texts:
        words = []
        for w in t.split():
            if w == "<UNK>":
                w = f"u{next(counter)}"
            words.append(w)
        out.append(" ".join(words))
    return out


def test_unk_is_never_a_match():
    """The reward scores as evaluation does, against the words people wrote: a <UNK> of a
    sample or a reference is a word of its own, so CIDEr-D on ids equals pycocoevalcap's
    with every <UNK> replaced by a distinct new word (df from all the training images)."""
    import itertools

    rng = np.random.default_rng(5)
    refs = [[" ".join(w if rng.random() > 0.1 else f"r{rng.integers(2000)}" for w in c.split()) for c in r]
            for r in corpus(rng, 120)]  # with rare words, which become <UNK>
    word_to_idx, idx_to_word = build_vocab([c for r in refs for c in r], min_count=2)
    image_idxs = np.repeat(np.arange(len(refs)), [len(r) for r in refs])
    captions = encode_captions([c for r in refs for c in r], word_to_idx)
    assert (captions == word_to_idx["<UNK>"]).sum() > 100
    scorer = CiderD.from_captions(captions, image_idxs, word_to_idx)
    sampled, _ = sampled_captions(rng, captions, image_idxs, len(refs), len(idx_to_word))
    sampled[::5, 2] = word_to_idx["<UNK>"]  # more <UNK> in the samples
    ours = scorer.score_ids(sampled, np.arange(len(refs)))

    counter = itertools.count()
    texts = _distinct_unknowns(decode_captions(captions, idx_to_word, strip_special=True), counter)
    gts = {i: [t for t, j in zip(texts, image_idxs) if j == i] for i in range(len(refs))}
    cands = _distinct_unknowns(decode_captions(sampled, idx_to_word, strip_special=True), counter)
    _, theirs = Cider().compute_score(gts, {i: [c] for i, c in enumerate(cands)})
    assert np.abs(ours - theirs).max() < 1e-9
    # the strings scorer agrees, with "<UNK>" as it decodes
    decoded = [[t for t, j in zip(decode_captions(captions, idx_to_word, strip_special=True), image_idxs) if j == i]
               for i in range(len(refs))]
    assert np.abs(CiderD(decoded).score(decode_captions(sampled, idx_to_word, strip_special=True), decoded)
                  - ours).max() < 1e-9
    # a copy of a reference with <UNK> in it is no perfect match: its <UNK> matches nothing
    one = CiderD([["a <UNK> dog runs", "a cat sits"], ["a man walks"]])
    assert one.score(["a <UNK> dog runs"], [["a <UNK> dog runs", "a cat sits"]])[0] < \
        one.score(["a brown dog runs"], [["a brown dog runs", "a cat sits"]])[0]


def test_end_is_not_a_token_of_the_reward():
    w2i, _ = build_vocab(["a b c", "a b d"])
    scorer = CiderD.from_captions(encode_captions(["a b c", "a b d", "c d"], w2i), [0, 0, 1], w2i)
    a, b, c = w2i["a"], w2i["b"], w2i["c"]
    rows = [[a, b, c, 2, 0, 0], [1, a, b, c, 2, 0], [a, b, c, 2, a, a], [a, 0, b, c, 2, 2]]
    scores = scorer.score_ids(np.array(rows), [0, 0, 0, 0])
    assert scores == pytest.approx([scorer.score(["a b c"], [["a b c", "a b d"]])[0]] * 4, abs=1e-12)
    counting_end = CiderD([["a b c <END>", "a b d <END>"], ["c d <END>"]])
    with_end = counting_end.score(["a b c <END>"], [["a b c <END>", "a b d <END>"]])[0]
    assert with_end > scores[0] + 1  # what counting <END> in corpus, references and candidate adds
    no_end = scorer.score_ids(np.array([[a, b, c, a, a, a]]), [0])[0]
    assert no_end == pytest.approx(scorer.score(["a b c a a a"], [["a b c", "a b d"]])[0], abs=1e-12)


def test_captions_sharing_no_n_gram_with_their_references_score_zero():
    w2i, _ = build_vocab(["a b c", "d e"])
    scorer = CiderD.from_captions(encode_captions(["a b c", "d e"], w2i), [0, 1], w2i)
    d, e = w2i["d"], w2i["e"]
    assert (scorer.score_ids(np.array([[d, e, 2], [d, 2, 0]]), [0, 0]) == 0).all()
    assert (CiderD([["a b c"], ["d e"]]).score(["d e", "x"], [["a b c"], ["a b c"]]) == 0).all()


@pytest.mark.parametrize("call, message", [
    (lambda s: s.score(["a"], [["a"], ["b"]]), "1 candidates but 2 reference sets"),
    (lambda s: s.score(["a", "b"], [["a"], []]), r"refs\[1\] is empty"),
    (lambda s: s.score(["a"], ["a b"]), r"refs\[0\] must be a list of reference strings, got str"),
    (lambda s: s.score([["a"]], [["a"]]), r"candidates\[0\] is a list, not a caption string"),
    (lambda s: s.score_ids(np.zeros((1, 3), int), [0]), "needs a scorer built by CiderD.from_captions"),
])
def test_errors_name_the_problem(call, message):
    with pytest.raises(ValueError, match=message):
        call(CiderD([["a b", "b c"], ["c"]]))


@pytest.mark.parametrize("call, message", [
    (lambda s: s.score_ids(np.zeros((2, 3), int), [0]), r"shape \(2,\), one per row of sampled"),
    (lambda s: s.score_ids(np.zeros(3, int), [0]), r"integer array of shape \(N, T\)"),
    (lambda s: s.score_ids(np.full((1, 3), 9), [0]), r"word id 9, outside the vocabulary's \[0, 6\)"),
    (lambda s: s.score_ids(np.zeros((1, 3), int), [5]), "image 5 has no reference captions"),
    (lambda s: CiderD.from_captions(np.zeros((1, 3), int), [0], {"<NULL>": 0}), "missing the special token <START>"),
])
def test_id_errors_name_the_problem(call, message):
    w2i, _ = build_vocab(["a b"])
    with pytest.raises(ValueError, match=message):
        call(CiderD.from_captions(encode_captions(["a b"], w2i), [0], w2i))


def test_benchmark_runs_and_agrees_with_pycocoevalcap():
    """A small run of benchmarks/bench_cider.py (it checks its scores against pycocoevalcap)."""
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_cider.py"), "--images", "2000",
                           "--rounds", "1"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "pycocoevalcap / score_ids" in done.stdout
