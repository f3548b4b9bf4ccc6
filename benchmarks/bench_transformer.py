"""Benchmark: one Transformer training step and greedy sampling, NumPy (capmodel) vs PyTorch (CPU).

Shapes: N=100 captions of T=16 input words, V=1004, D=512, W=256, 4 heads, 2 layers,
feed-forward width F=4W=1024, float32. A training step is loss + backward + an Adam
update of every parameter; sampling is greedy decoding of --max-length words for the
N images. The torch model is tests/test_transformer_torch.py's TorchCaptioningTransformer
(torch.nn.TransformerDecoder) holding the same weights; the losses must agree before
anything is timed. Both decoders run every step (the vocabulary has no <END>); torch's
decoder has no key/value cache, so its greedy loop re-runs the prefix as CS231n's
sample() does, while capmodel steps one position against its cache.

Method (/work/shared/notes/benchmarking.md): both sides use the same thread count, each
timed call follows a 0.2 s idle gap (so the other library's spinning threads are gone),
the order alternates between rounds, and medians (with min and max) over --reps rounds
are printed with ratio = capmodel / torch (below 1 means capmodel is faster), and the
share of CPU other processes used meanwhile (above ~15% the figures are noise).

Usage: python benchmarks/bench_transformer.py [--threads 2] [--reps 15] [--max-length 16]
Needs the bench extra: pip install -e '.[bench]' (torch==2.13.0, CPU).
"""

import argparse
import os
import sys

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--threads", type=int, default=2, help="BLAS / torch threads")
p.add_argument("--reps", type=int, default=15, help="timed rounds of each")
p.add_argument("--max-length", type=int, default=16, help="greedy decoding steps")
ARGS = p.parse_args()
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = str(ARGS.threads)

import importlib.util  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from capmodel import optim  # noqa: E402
from capmodel.classifiers.transformer import CaptioningTransformer  # noqa: E402

N, T, V, D, W, NH, LAYERS = 100, 16, 1004, 512, 256, 4, 2
GAP = 0.2  # seconds of idle before each timed call


def load_torch_model_class():
    """TorchCaptioningTransformer from the cross-check test, the computation it verifies."""
    path = Path(__file__).resolve().parents[1] / "tests" / "test_transformer_torch.py"
    spec = importlib.util.spec_from_file_location("test_transformer_torch", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.TorchCaptioningTransformer


def cpu_jiffies():
    """(busy, total) jiffies of all CPUs from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def timed(fn):
    time.sleep(GAP)
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main():
    torch.set_num_threads(ARGS.threads)
    rng = np.random.default_rng(0)
    # No <END>: no caption ends early, so both decoders run all max_length steps.
    vocab = {"<NULL>": 0, "<START>": 1, "<UNK>": 3, **{f"w{i}": i for i in (2, *range(4, V))}}
    model = CaptioningTransformer(vocab, input_dim=D, wordvec_dim=W, num_heads=NH, num_layers=LAYERS, seed=0)
    features = rng.standard_normal((N, D)).astype(np.float32)
    captions = rng.integers(4, V, size=(N, T + 1))
    captions[:, 0] = 1
    for i, n in enumerate(rng.integers(5, T + 1, size=N)):  # a last word, then <NULL> padding
        captions[i, n + 1:] = 0

    tmodel = load_torch_model_class()(model)
    tf, tc = torch.tensor(features), torch.tensor(captions)
    np_loss = model.loss(features, captions)[0]
    t_loss = tmodel.loss(tf, tc).item()
    rel = abs(np_loss - t_loss) / abs(t_loss)
    print(f"same loss check: capmodel {np_loss:.6f}, torch {t_loss:.6f}, relative difference {rel:.1e}")
    if rel > 1e-5:
        sys.exit("the two models disagree: the benchmark would compare different computations")
    same = (model.sample(features, ARGS.max_length) == tmodel.greedy(tf, ARGS.max_length).numpy()).mean()
    print(f"greedy captions: {100 * same:.1f}% of the words agree")

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

    cases = (
        ("train step", np_step, torch_step),
        (f"greedy sample({ARGS.max_length})", lambda: model.sample(features, max_length=ARGS.max_length),
         lambda: tmodel.greedy(tf, ARGS.max_length)),
    )
    results = {}
    busy0, total0, own0 = *cpu_jiffies(), time.process_time()
    for name, a, b in cases:
        a(), b(), a(), b()  # warm-up
        ta, tb = [], []
        for r in range(ARGS.reps):
            if r % 2:
                tb.append(timed(b))
                ta.append(timed(a))
            else:
                ta.append(timed(a))
                tb.append(timed(b))
        results[name] = (np.array(ta), np.array(tb))
    busy1, total1, own1 = *cpu_jiffies(), time.process_time()
    hz = os.sysconf("SC_CLK_TCK")
    ncpu = os.cpu_count()
    others = max(0.0, (busy1 - busy0) - (own1 - own0) * hz) / max(1, total1 - total0)

    print(f"\nTransformer, N={N} T={T} V={V} D={D} W={W} heads={NH} layers={LAYERS} F={model.hidden_dim}, float32, "
          f"{ARGS.threads} threads, {ARGS.reps} alternating rounds, {GAP}s gap, torch {torch.__version__}, "
          f"numpy {np.__version__}")
    print(f"{'':20s} {'capmodel ms (min-max)':>24s} {'torch ms (min-max)':>24s} {'ratio':>6s}")
    for name, (a, b) in results.items():
        fa = f"{1000 * np.median(a):.1f} ({1000 * a.min():.0f}-{1000 * a.max():.0f})"
        fb = f"{1000 * np.median(b):.1f} ({1000 * b.min():.0f}-{1000 * b.max():.0f})"
        print(f"{name:20s} {fa:>24s} {fb:>24s} {np.median(a) / np.median(b):6.2f}")
    print(f"other processes used {100 * others:.0f}% of the {ncpu} CPUs while timing")


if __name__ == "__main__":
    main()
