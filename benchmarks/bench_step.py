"""Benchmark: one LSTM training step and one greedy sample, NumPy (capmodel) vs PyTorch (CPU).

COCO shapes: N=100 captions of T=16 input words, V=1004, D=512, W=256, H=512, float32.
A training step is loss + backward + an Adam update of every parameter; sampling is
greedy decoding of max_length=30 words. Both models hold the same weights and first must
compute the same loss. Repetitions are interleaved (numpy, torch, numpy, torch, ...) with
the same thread count, and medians and ratios are printed (ratio = numpy / torch, so
below 1 means capmodel is faster).

Usage: python benchmarks/bench_step.py [--threads 2] [--reps 15] [--dtype float32]
Needs the bench extra: pip install -e '.[bench]' (torch==2.13.0, CPU).
"""

import argparse
import os
import sys


def parse():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2, help="BLAS / torch threads")
    p.add_argument("--reps", type=int, default=15, help="timed repetitions of each")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32", help="precision of both models")
    return p.parse_args()


ARGS = parse()
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = str(ARGS.threads)

import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from capmodel import optim  # noqa: E402
from capmodel.classifiers.rnn import CaptioningRNN  # noqa: E402

N, T, V, D, W, H = 100, 16, 1004, 512, 256, 512


class TorchCaptioner(torch.nn.Module):
    """The CS231n captioning LSTM written in PyTorch, with weights copied from capmodel."""

    def __init__(self, params, dtype):
        super().__init__()
        t = lambda a: torch.nn.Parameter(torch.tensor(np.ascontiguousarray(a), dtype=dtype))
        self.proj = torch.nn.Linear(D, H).to(dtype)
        self.embed = torch.nn.Embedding(V, W).to(dtype)
        self.lstm = torch.nn.LSTM(W, H, batch_first=True).to(dtype)
        self.vocab = torch.nn.Linear(H, V).to(dtype)
        # capmodel gates are (i, f, o, g), torch's (i, f, g, o); torch has two biases.
        order = np.r_[0:H, H:2 * H, 3 * H:4 * H, 2 * H:3 * H]
        with torch.no_grad():
            self.proj.weight = t(params["W_proj"].T)
            self.proj.bias = t(params["b_proj"])
            self.embed.weight = t(params["W_embed"])
            self.lstm.weight_ih_l0 = t(params["Wx"][:, order].T)
            self.lstm.weight_hh_l0 = t(params["Wh"][:, order].T)
            self.lstm.bias_ih_l0 = t(params["b"][order])
            self.lstm.bias_hh_l0 = t(np.zeros(4 * H))
            self.vocab.weight = t(params["W_vocab"].T)
            self.vocab.bias = t(params["b_vocab"])

    def loss(self, features, captions):
        cin, cout = captions[:, :-1], captions[:, 1:]
        h0 = self.proj(features).unsqueeze(0)
        out, _ = self.lstm(self.embed(cin), (h0, torch.zeros_like(h0)))
        scores = self.vocab(out)
        ce = torch.nn.functional.cross_entropy(scores.reshape(-1, V), cout.reshape(-1), reduction="none")
        return (ce * (cout.reshape(-1) != 0)).sum() / features.shape[0]

    @torch.no_grad()
    def sample(self, features, max_length=30, start=1):
        h = self.proj(features)
        c = torch.zeros_like(h)
        words = torch.full((features.shape[0],), start, dtype=torch.long)
        cell = self.cell
        out = torch.empty((features.shape[0], max_length), dtype=torch.long)
        for t in range(max_length):
            h, c = cell(self.embed(words), (h, c))
            scores = self.vocab(h)
            scores[:, :2] = -float("inf")  # never <NULL> or <START>, as capmodel
            words = scores.argmax(dim=1)
            out[:, t] = words
        return out

    def make_cell(self):
        self.cell = torch.nn.LSTMCell(W, H).to(self.proj.weight.dtype)
        with torch.no_grad():
            self.cell.weight_ih.copy_(self.lstm.weight_ih_l0)
            self.cell.weight_hh.copy_(self.lstm.weight_hh_l0)
            self.cell.bias_ih.copy_(self.lstm.bias_ih_l0)
            self.cell.bias_hh.copy_(self.lstm.bias_hh_l0)


def main():
    torch.set_num_threads(ARGS.threads)
    dtype = np.dtype(ARGS.dtype)
    tdtype = {"float32": torch.float32, "float64": torch.float64}[ARGS.dtype]
    rng = np.random.default_rng(0)
    vocab = {"<NULL>": 0, "<START>": 1, "<END>": 2, "<UNK>": 3, **{f"w{i}": i for i in range(4, V)}}
    model = CaptioningRNN(vocab, input_dim=D, wordvec_dim=W, hidden_dim=H, cell_type="lstm", dtype=dtype, seed=0)
    features = rng.standard_normal((N, D)).astype(dtype)
    captions = rng.integers(4, V, size=(N, T + 1))
    captions[:, 0] = 1
    lengths = rng.integers(5, T + 1, size=N)
    for i, n in enumerate(lengths):  # <END> then <NULL> padding, like real captions
        captions[i, n] = 2
        captions[i, n + 1:] = 0

    tmodel = TorchCaptioner(model.params, tdtype)
    tmodel.make_cell()
    tf, tc = torch.tensor(features), torch.tensor(captions)
    np_loss = model.loss(features, captions)[0]
    t_loss = tmodel.loss(tf, tc).item()
    rel = abs(np_loss - t_loss) / abs(t_loss)
    print(f"same loss check: capmodel {np_loss:.6f}, torch {t_loss:.6f}, relative difference {rel:.1e}")
    if rel > (1e-4 if dtype == np.float32 else 1e-10):
        sys.exit("the two models disagree: the benchmark would compare different computations")

    configs = {k: {"learning_rate": 1e-4} for k in model.params}
    topt = torch.optim.Adam(tmodel.parameters(), lr=1e-4, betas=(0.9, 0.999), eps=1e-8)

    def np_step():
        loss, grads = model.loss(features, captions)
        for k, w in model.params.items():
            model.params[k], configs[k] = optim.adam(w, grads[k], configs[k])

    def torch_step():
        topt.zero_grad(set_to_none=True)
        tmodel.loss(tf, tc).backward()
        topt.step()

    def np_sample():
        return model.sample(features, max_length=30)

    def torch_sample():
        return tmodel.sample(tf, max_length=30)

    results = {}
    for name, a, b in (("train step", np_step, torch_step), ("greedy sample(30)", np_sample, torch_sample)):
        a(), b(), a(), b()  # warm-up
        ta, tb = [], []
        for _ in range(ARGS.reps):
            s = time.perf_counter(); a(); ta.append(time.perf_counter() - s)
            s = time.perf_counter(); b(); tb.append(time.perf_counter() - s)
        results[name] = (np.median(ta), np.median(tb))
    print(f"\nLSTM, N={N} T={T} V={V} D={D} W={W} H={H}, {ARGS.dtype}, {ARGS.threads} threads, "
          f"{ARGS.reps} interleaved repetitions, torch {torch.__version__}, numpy {np.__version__}")
    print(f"{'':20s} {'capmodel ms':>12s} {'torch ms':>10s} {'ratio':>7s}")
    for name, (a, b) in results.items():
        print(f"{name:20s} {1000 * a:12.1f} {1000 * b:10.1f} {a / b:7.2f}")


if __name__ == "__main__":
    main()
