"""Attention benchmark: capmodel's attention LSTM (NumPy) against the same model in PyTorch.

Shapes of the issue: N=100 captions of T=16 input words (benchmarks/workload.py), V=1004,
D=512 global features, L=49 regions of C=512 channels (a 7 x 7 grid after the grid
PCA), W=256, H=512, attention width A=H; 2 threads each (threadpoolctl for NumPy's BLAS,
torch.set_num_threads for torch). Cases: the training step (loss with the doubly
stochastic penalty, backward and Adam on every parameter) and greedy decoding, float32.

The torch model is TorchAttentionLSTM of tests/test_attention_torch.py, the computation
that test checks against capmodel's. Before anything is timed the run stops unless
both give the same loss and gradients and the same greedy captions; both greedy
decoders stop once every caption has ended. Timing as bench_fair.py (timing.py: gaps,
alternating order, medians, the CPU share of other processes).

Usage: python benchmarks/bench_attention.py [--threads 2] [--rounds 15] [--out benchmarks/results/attention.md]
Needs torch (the test extra).
"""

import argparse
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2, help="BLAS / torch threads of each framework")
    p.add_argument("--rounds", type=int, default=15, help="timed rounds of each case (>= 15 for published figures)")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls of each function before timing")
    p.add_argument("--gap", type=float, default=0.2, help="idle seconds before each timed call")
    p.add_argument("--quiet-wait", type=float, default=10.0,
                   help="before each timed call, wait up to this many seconds for a gap in which other "
                        "processes used under 15%% of the CPU (0: never wait)")
    p.add_argument("--regions", type=int, default=49, help="regions L per image")
    p.add_argument("--region-dim", type=int, default=512, help="channels C of a region")
    p.add_argument("--max-length", type=int, default=30, help="maximum caption length when decoding")
    p.add_argument("--cases", nargs="+", help="run only cases whose name contains one of these words")
    p.add_argument("--out", default=str(HERE / "results" / "attention.md"), help="markdown results file to write")
    return p.parse_args(argv)


ARGS = parse()
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = str(ARGS.threads)

import datetime  # noqa: E402
import importlib.util  # noqa: E402
import platform  # noqa: E402
import shlex  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

sys.path.insert(0, str(HERE))
from report import cpu_model, write_results  # noqa: E402
from timing import BUSY_WARNING, PairTimer, ms  # noqa: E402
from workload import D, H, N, T, V, VOCAB, W, make_inputs  # noqa: E402

from capmodel import decoding, optim  # noqa: E402
from capmodel.classifiers.rnn import CaptioningRNN  # noqa: E402
from capmodel.kernels import parallel  # noqa: E402

TOLERANCE = 2e-4  # relative error of float32 losses and gradients
TIMER = PairTimer(ARGS.rounds, ARGS.warmup, ARGS.gap, ARGS.quiet_wait)


def load_torch_model():
    """TorchAttentionLSTM of the cross-check test (the computation it verifies)."""
    path = HERE.parent / "tests" / "test_attention_torch.py"
    spec = importlib.util.spec_from_file_location("test_attention_torch", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.TorchAttentionLSTM


def make_models():
    model = CaptioningRNN(VOCAB, input_dim=D, wordvec_dim=W, hidden_dim=H, cell_type="lstm", seed=0,
                          attention="soft", region_dim=ARGS.region_dim)
    return model, load_torch_model()(model)


def make_regions(seed=1):
    """Random regions of unit variance, as a grid after its PCA has roughly."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((N, ARGS.regions, ARGS.region_dim)).astype(np.float32)


def rel(a, b):
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / max(np.linalg.norm(np.asarray(b, np.float64)), 1e-30))


def train_case():
    model, tmodel = make_models()
    features, captions = make_inputs(np.float32)
    regions = make_regions()
    tf, tc, tr = torch.from_numpy(features), torch.from_numpy(captions), torch.from_numpy(regions)
    loss, grads = model.loss(features, captions, regions=regions)
    tloss = tmodel.loss(tf, tc, tr)
    tloss.backward()
    tgrads = tmodel.grads_like()
    tmodel.zero_grad(set_to_none=True)
    worst = max([rel(loss, tloss.item())] + [rel(grads[k], tgrads[k]) for k in grads])
    if worst > TOLERANCE:
        sys.exit(f"the two models disagree (relative error {worst:.1e}): they would not do the same work")
    configs = {k: {"learning_rate": 1e-4} for k in model.params}
    topt = torch.optim.Adam(tmodel.trainable(), lr=1e-4, betas=(0.9, 0.999), eps=1e-8)

    def np_step():
        _, grads = model.loss(features, captions, regions=regions)
        for k, w in model.params.items():
            model.params[k], configs[k] = optim.adam(w, grads[k], configs[k])

    def torch_step():
        topt.zero_grad(set_to_none=True)
        tmodel.loss(tf, tc, tr).backward()
        topt.step()

    ta, tb = TIMER.time_pair(np_step, torch_step)
    assert all(p.dtype == np.float32 for p in model.params.values()), "capmodel changed the dtype"
    return ta, tb, f"loss and gradients agree to {worst:.0e}"


def greedy_case():
    model, tmodel = make_models()
    features, _ = make_inputs(np.float32)
    regions = make_regions()
    tf, tr = torch.from_numpy(features), torch.from_numpy(regions)
    L = ARGS.max_length

    class Bound:
        """The model with the regions of the rows it decodes."""

        word_to_idx = model.word_to_idx

        def __init__(self, rows):
            self.rows = rows

        def decoder(self, f):
            return model.decoder(f, regions[self.rows])

    def np_greedy():
        # what decoding.decode(model, features, regions=regions) does: blocks of images
        # in threads, each with a one-thread BLAS
        return parallel.map_rows(lambda rows: decoding.greedy(Bound(rows), features[rows], L), np.arange(N))

    caps = np_greedy()
    tcaps = tmodel.greedy(tf, tr, L).numpy()
    if not np.array_equal(caps, tcaps):
        sys.exit(f"greedy captions differ in {np.mean(caps != tcaps):.1%} of the positions")
    steps = int((caps != 0).sum(axis=1).max())
    ta, tb = TIMER.time_pair(np_greedy, lambda: tmodel.greedy(tf, tr, L))
    return ta, tb, f"captions equal, both ran {steps} of max {L} steps"


CASES = [
    ("attention LSTM train step float32", train_case),
    ("attention LSTM greedy sample float32", greedy_case),
]


def main():
    torch.set_num_threads(ARGS.threads)
    command = "python " + shlex.join([os.path.relpath(sys.argv[0]) if os.path.exists(sys.argv[0]) else sys.argv[0],
                                      *sys.argv[1:]])
    rows = []
    with threadpool_limits(limits=ARGS.threads, user_api="blas"):
        for name, run in CASES:
            if ARGS.cases and not any(w.lower() in name.lower() for w in ARGS.cases):
                continue
            ta, tb, note = run()
            ratio = np.median(ta) / np.median(tb)
            rows.append((name, ta, tb, ratio, note))
            print(f"{name:38s} capmodel {ms(ta):>20s}  PyTorch {ms(tb):>20s}  ratio {ratio:.2f}  ({note})", flush=True)
    share = TIMER.load.share
    lines = [
        "# Benchmark results: capmodel's attention LSTM (NumPy) vs PyTorch on the CPU",
        "",
        f"- command: `{command}`",
        f"- date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- CPU: {cpu_model()}, {os.cpu_count()} logical cores; {ARGS.threads} threads per framework",
        f"- numpy {np.__version__}, torch {torch.__version__}, Python {platform.python_version()}",
        f"- shapes: N={N}, T={T} (captions of {T + 1} tokens), V={V}, D={D}, W={W}, H={H}, L={ARGS.regions} regions "
        f"of C={ARGS.region_dim}, attention width A={H}; decoding max_length={ARGS.max_length}",
        f"- method: {TIMER.method()}",
        f"- other processes used {100 * share:.1f}% of the CPU during the timed rounds"
        + (f" -- WARNING: above {100 * BUSY_WARNING:.0f}%, the machine was busy and the figures are noisy"
           if share > BUSY_WARNING else ""),
        "",
        "| case | capmodel ms | PyTorch ms | ratio | check |",
        "|---|---|---|---|---|",
    ]
    for name, ta, tb, ratio, note in rows:
        lines.append(f"| {name} | {ms(ta)} | {ms(tb)} | {ratio:.2f} | {note} |")
    lines += ["", "ratio = capmodel median / PyTorch median (below 1: capmodel is faster).", ""]
    print()
    write_results("\n".join(lines), ARGS.out)
    if share > BUSY_WARNING:
        print(f"WARNING: other processes used {100 * share:.0f}% of the CPU; rerun on a quieter machine",
              file=sys.stderr)


if __name__ == "__main__":
    main()
