"""Time CIDEr-D rewards: capmodel.cider against pycocoevalcap on the same captions.

The corpus is synthetic at COCO's size: --images images (80,000) with 5 captions each
(400,000) in CS231n's array format, 8 to 15 words from a 1004-word vocabulary: half from
a Zipf law, half from 6 words of the image, so that an image's references share words.
Scored: --batch (500) sampled captions of 16 ids as model.sample returns them (words,
then <END> at a random place or nowhere; every third a reference of the image with words
replaced), each against the 5 references of its image, document frequencies from the
whole corpus. Timed, the median of --rounds rounds:
- capmodel score_ids on the id arrays;
- capmodel score on the decoded strings;
- pycocoevalcap's CiderScorer on the same strings, given the corpus's document
  frequencies (computed with its own n-grams, for the n-grams it will look up) and the
  corpus's size.
Building the scorer (once per training run) is timed once. The three must give the same
scores (1e-9), else the script fails.

Usage: python benchmarks/bench_cider.py [--images 80000] [--batch 500] [--rounds 7]
"""

import argparse
import statistics
import time
from collections import defaultdict

import numpy as np
from pycocoevalcap.cider.cider_scorer import CiderScorer, precook

from capmodel.cider import CiderD
from capmodel.coco_utils import decode_captions

V, REFS, T, POOL = 1004, 5, 16, 6
IDX_TO_WORD = ["<NULL>", "<START>", "<END>", "<UNK>"] + [f"w{i}" for i in range(4, V)]
WORD_TO_IDX = {w: i for i, w in enumerate(IDX_TO_WORD)}


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=80_000, help="images of the corpus, 5 captions each")
    p.add_argument("--batch", type=int, default=500, help="sampled captions scored per round")
    p.add_argument("--rounds", type=int, default=7, help="timed rounds of each scorer")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic data")
    return p.parse_args(argv)


def make_corpus(rng, num_images):
    """Captions (M, 17) with <START>, <END> and <NULL> padding, 5 per image in order."""
    zipf = 1 / np.arange(1, V - 3)
    words = rng.choice(np.arange(4, V), p=zipf / zipf.sum(), size=(num_images * REFS, 15))
    pools = rng.choice(np.arange(4, V), p=zipf / zipf.sum(), size=(num_images, POOL))
    own = rng.random(words.shape) < 0.5  # words of the image's own pool
    pooled = pools[np.repeat(np.arange(num_images), REFS)[:, None], rng.integers(POOL, size=words.shape)]
    words = np.where(own, pooled, words)
    lengths = rng.integers(8, 16, size=len(words))
    captions = np.zeros((len(words), 17), dtype=np.int32)
    captions[:, 0] = 1
    captions[:, 1:16] = np.where(np.arange(15) < lengths[:, None], words, 0)
    captions[np.arange(len(words)), lengths + 1] = 2
    return captions, np.repeat(np.arange(num_images), REFS)


def make_sampled(rng, captions, num_images, batch):
    """(batch, 16) sampled ids and their images."""
    images = rng.integers(num_images, size=batch)
    sampled = rng.integers(4, V, size=(batch, T))
    copies = np.arange(batch) % 3 == 0
    refs = captions[images * REFS + rng.integers(REFS, size=batch), 1:]  # (batch, 16), no <START>
    keep = rng.random((batch, T)) < 0.8
    sampled[copies] = np.where(keep[copies] | (refs[copies] < 4), refs[copies], sampled[copies])
    ends = rng.integers(6, T + 4, size=batch)  # beyond T: no <END>
    for k, e in enumerate(ends):
        if e < T and not copies[k]:
            sampled[k, e] = 2
            sampled[k, e + 1 :] = 0
    return sampled, images


class CorpusSized(list):
    """CiderScorer's items, of the corpus's length: it takes log(len(crefs)) as the log of
    the corpus size, and iterates over the items themselves."""

    def __init__(self, items, size):
        super().__init__(items)
        self.size = size

    def __len__(self):
        return self.size


def corpus_df(texts, num_images, wanted):
    """pycocoevalcap's document frequencies (its precook n-grams) of the wanted n-grams."""
    df = defaultdict(float)
    for i in range(num_images):
        for ngram in {g for t in texts[i * REFS : (i + 1) * REFS] for g in precook(t)} & wanted:
            df[ngram] += 1
    return df


def pycoco_scores(cands, refs, df, num_images):
    scorer = CiderScorer()
    for c, r in zip(cands, refs):
        scorer += (c, r)
    scorer.document_frequency = df
    scorer.crefs = CorpusSized(scorer.crefs, num_images)
    return np.array(scorer.compute_cider())


def median_time(fn, rounds):
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main(argv=None):
    args = parse(argv)
    rng = np.random.default_rng(args.seed)
    captions, image_idxs = make_corpus(rng, args.images)
    start = time.perf_counter()
    scorer = CiderD.from_captions(captions, image_idxs, WORD_TO_IDX)
    build = time.perf_counter() - start
    sampled, images = make_sampled(rng, captions, args.images, args.batch)

    texts = decode_captions(captions, IDX_TO_WORD, strip_special=True)
    cands = decode_captions(sampled, IDX_TO_WORD, strip_special=True)
    refs = [texts[i * REFS : (i + 1) * REFS] for i in images]
    wanted = {g for t in cands + [r for rs in refs for r in rs] for g in precook(t)}
    df = corpus_df(texts, args.images, wanted)

    t_ids, s_ids = median_time(lambda: scorer.score_ids(sampled, images), args.rounds)
    t_str, s_str = median_time(lambda: scorer.score(cands, refs), args.rounds)
    t_coco, s_coco = median_time(lambda: pycoco_scores(cands, refs, df, args.images), args.rounds)
    diff = max(np.abs(s_ids - s_coco).max(), np.abs(s_str - s_coco).max())
    if not diff < 1e-9:
        raise SystemExit(f"the scores differ from pycocoevalcap's by up to {diff:.3g}")

    print(f"CIDEr-D of {args.batch} sampled captions (T={T}) against {REFS} references each, "
          f"df from {len(captions)} captions of {args.images} images (mean CIDEr-D {s_coco.mean():.3f})")
    print(f"build: CiderD.from_captions {build:.2f} s (once per training run)")
    print(f"scores agree with pycocoevalcap: max |difference| {diff:.2g}")
    print(f"median of {args.rounds} rounds:")
    print(f"  capmodel score_ids (ids)      {1e3 * t_ids:8.2f} ms")
    print(f"  capmodel score (strings)      {1e3 * t_str:8.2f} ms")
    print(f"  pycocoevalcap CiderScorer     {1e3 * t_coco:8.2f} ms")
    print(f"pycocoevalcap / score_ids: {t_coco / t_ids:.0f}x, pycocoevalcap / score: {t_coco / t_str:.0f}x")


if __name__ == "__main__":
    main()
