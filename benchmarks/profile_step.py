"""Where the time of one capmodel training step goes (LSTM and GRU, float32).

Same model, shapes and threads as bench_fair.py. The kernel functions that
CaptioningRNN.loss calls (capmodel.kernels.recurrent and .words), the step cores the
packed sequence functions call once per timestep and the Adam update are wrapped with timers (module attributes patched for this process
only); each section's median over --rounds steps is reported with its share of the
median step. The rest of the sequence functions is their input projection (forward) and
their recurrent and weight-gradient matmuls (backward); "rest of loss" is everything in
CaptioningRNN.loss not listed.

Usage: python benchmarks/profile_step.py [--threads 2] [--rounds 15] [--out benchmarks/results/profile.md]
"""

import argparse
import os
import shlex
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2, help="BLAS threads")
    p.add_argument("--rounds", type=int, default=15, help="timed steps")
    p.add_argument("--out", default=str(HERE / "results" / "profile.md"), help="markdown table to write")
    return p.parse_args(argv)


ARGS = parse()
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = str(ARGS.threads)

import collections  # noqa: E402
import dataclasses  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from capmodel import optim  # noqa: E402
from capmodel.classifiers.rnn import _Packing  # noqa: E402
from capmodel.kernels import recurrent as kr  # noqa: E402
from capmodel.kernels import words as kw  # noqa: E402
from report import write_results  # noqa: E402
from workload import D, H, N, T, V, W, make_inputs, make_model  # noqa: E402

TIMES = collections.defaultdict(float)


def timed(label, fn):
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            TIMES[label] += time.perf_counter() - start
    return wrapper


def patch(cell):
    for module, name, label in (
            (kr, f"{cell}_core_forward", f"{cell.upper()} step cores, forward (h @ Wh and gates, per step)"),
            (kr, f"{cell}_core_backward", f"{cell.upper()} step cores, backward (gates, per step)"),
            (kw, "word_embedding_forward", "word embedding forward"),
            (kw, "word_embedding_backward", "word embedding backward"),
            (kw, "_vocab_scores", "vocabulary scores (matmul)"),
            (kw, "_softmax_loss", "softmax loss"),
            (kw, "_vocab_backward", "vocabulary backward (2 matmuls)"),
            (kr, f"{cell}_packed_forward", "sequence forward total"),
            (kr, f"{cell}_packed_backward", "sequence backward total")):
        setattr(module, name, timed(label, getattr(module, name)))


def profile(cell):
    import capmodel.classifiers.rnn as crnn

    saved = {(m, k): getattr(m, k) for m in (kr, kw) for k in dir(m) if not k.startswith("__")}
    saved_cells = dict(crnn.CELLS)
    patch(cell)
    crnn.CELLS[cell] = dataclasses.replace(crnn.CELLS[cell], packed_forward=getattr(kr, f"{cell}_packed_forward"),
                                           packed_backward=getattr(kr, f"{cell}_packed_backward"))
    try:
        return _profile(cell)
    finally:
        for (m, k), v in saved.items():
            setattr(m, k, v)
        crnn.CELLS.update(saved_cells)


def _profile(cell):
    model = make_model(cell, np.float32)
    features, captions = make_inputs(np.float32)
    configs = {k: {"learning_rate": 1e-4} for k in model.params}
    adam = timed("Adam, every parameter", optim.adam)

    def step():
        start = time.perf_counter()
        _, grads = timed("loss total", model.loss)(features, captions)
        for k, w in model.params.items():
            model.params[k], configs[k] = adam(w, grads[k], configs[k])
        TIMES["step"] += time.perf_counter() - start

    rounds = collections.defaultdict(list)
    for r in range(3 + ARGS.rounds):
        TIMES.clear()
        time.sleep(0.2)
        step()
        if r >= 3:
            for k, v in derived(TIMES).items():
                rounds[k].append(v)
    med = {k: 1000 * float(np.median(v)) for k, v in rounds.items()}
    total = med.pop("step")
    return total, sorted(med.items(), key=lambda kv: -kv[1])


def derived(times):
    """One step's sections, with the remainders computed within the step (not from medians)."""
    t = dict(times)
    core_f = next(v for k, v in t.items() if "cores, forward" in k)
    core_b = next(v for k, v in t.items() if "cores, backward" in k)
    t["input projection matmul (before the time loop)"] = t.pop("sequence forward total") - core_f
    t["dh @ Wh.T per step + weight-gradient matmuls (backward)"] = t.pop("sequence backward total") - core_b
    listed = [k for k in t if k not in ("step", "loss total", "Adam, every parameter")]
    t["rest of loss (h0 projection, gathers, scatters)"] = t.pop("loss total") - sum(t[k] for k in listed)
    return t


def main():
    lines = [f"Profile of one training step (loss + backward + Adam), N={N} T={T} V={V} D={D} W={W} H={H}, "
             f"float32, {ARGS.threads} threads, median of {ARGS.rounds} steps "
             f"(`{shlex.join(['python', 'benchmarks/profile_step.py', *sys.argv[1:]])}`)".rstrip(), ""]
    _, captions = make_inputs(np.float32)
    rows = _Packing(captions[:, 1:].T != 0).sizes
    lines += [f"The batch packs to {sum(rows)} of its N x T = {N * T} positions ({sum(rows) / (N * T):.0%}): each "
              f"caption runs up to its last scored word.", ""]
    with threadpool_limits(limits=ARGS.threads, user_api="blas"):
        for cell in ("lstm", "gru"):
            total, rows = profile(cell)
            lines += [f"| {cell.upper()} section | ms | share |", "|---|---|---|"]
            lines += [f"| {k} | {v:.1f} | {100 * v / total:.0f}% |" for k, v in rows]
            lines += [f"| **step total** | **{total:.1f}** | 100% |", ""]
    text = "\n".join(lines)
    write_results(text, ARGS.out)


if __name__ == "__main__":
    main()
