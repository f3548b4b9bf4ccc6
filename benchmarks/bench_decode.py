"""Benchmark: batched beam search (width 3) against greedy decoding, NumPy only.

COCO shapes: N=100 images, D=512, W=256, H=512, V=1004, max_length=16, float32, for
each cell type. Repetitions are interleaved; medians and the ratio beam / greedy are
printed (the target is at most 3.5). Both decoders run all 16 steps here: the random
model rarely ends every caption early, and --no-early-end makes sure of it.

Usage: python benchmarks/bench_decode.py [--threads 2] [--reps 15] [--beam-size 3]
"""

import argparse
import os

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--threads", type=int, default=2, help="BLAS threads")
p.add_argument("--reps", type=int, default=15, help="timed repetitions of each")
p.add_argument("--beam-size", type=int, default=3, help="beam width")
ARGS = p.parse_args()
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = str(ARGS.threads)

import time  # noqa: E402

import numpy as np  # noqa: E402

from capmodel.classifiers.rnn import CaptioningRNN  # noqa: E402

N, D, W, H, V, L = 100, 512, 256, 512, 1004, 16


def main():
    rng = np.random.default_rng(0)
    # No <END> in this vocabulary, so no caption ends early and both decoders run L steps.
    vocab = {"<NULL>": 0, "<START>": 1, "<UNK>": 3, **{f"w{i}": i for i in (2, *range(4, V))}}
    features = rng.standard_normal((N, D)).astype(np.float32)
    print(f"N={N} D={D} W={W} H={H} V={V} max_length={L}, float32, {ARGS.threads} threads, "
          f"{ARGS.reps} interleaved repetitions, numpy {np.__version__}")
    print(f"{'cell':6s} {'greedy ms':>10s} {f'beam{ARGS.beam_size} ms':>10s} {'ratio':>7s}")
    for cell in ("rnn", "lstm", "gru"):
        model = CaptioningRNN(vocab, input_dim=D, wordvec_dim=W, hidden_dim=H, cell_type=cell, seed=0)
        greedy = lambda: model.sample(features, max_length=L)
        beam = lambda: model.sample(features, max_length=L, method="beam", beam_size=ARGS.beam_size)
        greedy(), beam()
        tg, tb = [], []
        for _ in range(ARGS.reps):
            s = time.perf_counter(); greedy(); tg.append(time.perf_counter() - s)
            s = time.perf_counter(); beam(); tb.append(time.perf_counter() - s)
        g, b = np.median(tg), np.median(tb)
        print(f"{cell:6s} {1000 * g:10.1f} {1000 * b:10.1f} {b / g:7.2f}")


if __name__ == "__main__":
    main()
