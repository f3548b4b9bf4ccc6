"""The benchmarks' workload: CS231n's COCO model shapes, its vocabulary, model and batch.

N=100 captions of T=16 input words (17 tokens), V=1004 words, D=512 image features,
W=256 word vectors, H=512 hidden units. The captions have 5 to 16 words, then <END> and
<NULL> padding, as real captions do. bench_fair.py, profile_step.py and bench_buffers.py
all time this.
"""

import numpy as np

from capmodel.classifiers.rnn import CaptioningRNN

N, T, V, D, W, H = 100, 16, 1004, 512, 256, 512
VOCAB = {"<NULL>": 0, "<START>": 1, "<END>": 2, "<UNK>": 3, **{f"w{i}": i for i in range(4, V)}}


def make_inputs(dtype, seed=0):
    """features (N, D) of dtype and captions (N, T + 1), the same for every run of a seed."""
    rng = np.random.default_rng(seed)
    features = rng.standard_normal((N, D)).astype(dtype)
    captions = rng.integers(4, V, size=(N, T + 1))
    captions[:, 0] = 1
    lengths = rng.integers(5, T + 1, size=N)  # <END> then <NULL> padding, as real captions
    for i, n in enumerate(lengths):
        captions[i, n] = 2
        captions[i, n + 1 :] = 0
    return features, captions


def make_model(cell, dtype):
    """A CaptioningRNN with the workload's shapes and seed 0."""
    return CaptioningRNN(VOCAB, input_dim=D, wordvec_dim=W, hidden_dim=H, cell_type=cell, dtype=dtype, seed=0)
