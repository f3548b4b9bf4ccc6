"""Fair benchmark: capmodel (NumPy) against the same model in PyTorch on the CPU.

Shapes of CS231n's COCO model: N=100 captions of T=16 input words (17 tokens), V=1004,
D=512, W=256, H=512; 2 threads each (threadpoolctl for NumPy's BLAS,
torch.set_num_threads for torch). Cases: the training step (loss + backward + Adam on
every parameter) of the LSTM and the GRU in float32 and float64, greedy sampling and
beam-3 sampling (float32).

What makes it fair (see docs/benchmarks.md):
- both models hold identical parameters; losses, gradients and greedy captions are
  checked equal before anything is timed, and the run stops if they are not;
- equal work: both greedy decoders stop once every caption has ended (the steps each
  ran are checked equal);
- the timing of timing.py: 0.2 s of idle time before every timed call, repeated (up to
  --quiet-wait seconds) until the machine is quiet, the order alternating between
  rounds (capmodel first, then torch first), warm-up calls, then medians, min and max
  over --rounds rounds, and the share of the CPU that other processes used during the
  timed rounds, with a warning above 15%.

Beam search: torch has no built-in beam search, so only capmodel's beam is timed and
reported as its ratio to capmodel's greedy decoding of the same images.

Usage: python benchmarks/bench_fair.py [--threads 2] [--rounds 15] [--out benchmarks/results/latest.md]
Needs the bench extra: pip install -e '.[bench]' (torch, CPU).
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
    p.add_argument("--max-length", type=int, default=30, help="maximum caption length when sampling")
    p.add_argument("--quiet-wait", type=float, default=10.0,
                   help="before each timed call, wait up to this many seconds for a gap in which other "
                        "processes used under 15%% of the CPU (0: never wait)")
    p.add_argument("--cases", nargs="+", help="run only cases whose name contains one of these words")
    p.add_argument("--out", default=str(HERE / "results" / "latest.md"), help="markdown results file to write")
    return p.parse_args(argv)


ARGS = parse()
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = str(ARGS.threads)

import datetime  # noqa: E402
import platform  # noqa: E402
import shlex  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

sys.path.insert(0, str(HERE))
from torch_reference import TorchCaptioner  # noqa: E402
from report import cpu_model, write_results  # noqa: E402
from timing import BUSY_WARNING, PairTimer, ms  # noqa: E402
from workload import D, H, N, T, V, VOCAB, W, make_inputs, make_model  # noqa: E402

from capmodel import decoding, optim  # noqa: E402
from capmodel.cider import CiderD  # noqa: E402
from capmodel.scst import SelfCritical  # noqa: E402

TOLERANCE = {"float32": 2e-4, "float64": 1e-9}  # relative error of losses and gradients


TIMER = PairTimer(ARGS.rounds, ARGS.warmup, ARGS.gap, ARGS.quiet_wait)
LOAD, time_pair = TIMER.load, TIMER.time_pair


# ------------------------------------------------------------------ cases


def make_models(cell, dtype):
    model = make_model(cell, dtype)
    tdtype = {"float32": torch.float32, "float64": torch.float64}[np.dtype(dtype).name]
    return model, TorchCaptioner(model.params, cell, tdtype)


def rel(a, b):
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / max(np.linalg.norm(np.asarray(b, np.float64)), 1e-30))


def check_train(model, tmodel, features, captions, dtype):
    """Stop unless both frameworks give the same loss and gradients."""
    loss, grads = model.loss(features, captions)
    tloss = tmodel.loss(torch.from_numpy(features), torch.from_numpy(captions))
    tloss.backward()
    tgrads = tmodel.grads_like_capmodel()
    tmodel.zero_grad(set_to_none=True)
    worst = max([rel(loss, tloss.item())] + [rel(grads[k], tgrads[k]) for k in grads])
    if worst > TOLERANCE[np.dtype(dtype).name]:
        sys.exit(f"the two models disagree (relative error {worst:.1e}): they would not do the same work")
    assert all(g.dtype == np.dtype(dtype) for g in grads.values()), "capmodel changed the dtype"
    return worst


def adam_steps(model, tmodel, tparams, features, captions):
    """One training iteration in each framework: loss, backward and Adam on every parameter
    (what CaptioningSolver does each iteration, and its torch equivalent)."""
    configs = {k: {"learning_rate": 1e-4} for k in model.params}
    topt = torch.optim.Adam(tparams, lr=1e-4, betas=(0.9, 0.999), eps=1e-8)
    tf, tc = torch.from_numpy(features), torch.from_numpy(captions)

    def np_step():
        loss, grads = model.loss(features, captions)
        for k, w in model.params.items():
            model.params[k], configs[k] = optim.adam(w, grads[k], configs[k])

    def torch_step():
        topt.zero_grad(set_to_none=True)
        tmodel.loss(tf, tc).backward()
        topt.step()

    return np_step, torch_step


def train_case(cell, dtype):
    model, tmodel = make_models(cell, dtype)
    features, captions = make_inputs(dtype)
    err = check_train(model, tmodel, features, captions, dtype)
    np_step, torch_step = adam_steps(model, tmodel, tmodel.trainable(), features, captions)
    ta, tb = time_pair(np_step, torch_step)
    assert all(p.dtype == np.dtype(dtype) for p in model.params.values()), "capmodel changed the dtype"
    return ta, tb, f"loss and gradients agree to {err:.0e}"


def sample_case(cell, beam):
    model, tmodel = make_models(cell, np.float32)
    features, _ = make_inputs(np.float32)
    L = ARGS.max_length
    caps = model.sample(features, max_length=L)
    tcaps = tmodel.greedy(torch.from_numpy(features), L).numpy()
    if not np.array_equal(caps, tcaps):
        sys.exit(f"greedy captions differ in {np.mean(caps != tcaps):.1%} of the positions")
    steps = int((caps != 0).sum(axis=1).max())  # both stop after the longest caption
    if beam:
        ta, tb = time_pair(lambda: model.sample(features, max_length=L, method="beam", beam_size=3),
                           lambda: model.sample(features, max_length=L))
        return ta, tb, f"capmodel beam-3 vs capmodel greedy; greedy captions equal to torch's, {steps} steps"
    ta, tb = time_pair(lambda: model.sample(features, max_length=L),
                       lambda: tmodel.greedy(torch.from_numpy(features), L))
    return ta, tb, f"captions equal, both ran {steps} of max {L} steps"


def load_torch_transformer():
    """TorchCaptioningTransformer of the cross-check test (the computation it verifies)."""
    import importlib.util

    path = HERE.parent / "tests" / "test_transformer_torch.py"
    spec = importlib.util.spec_from_file_location("test_transformer_torch", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.TorchCaptioningTransformer


def transformer_models(end=True):
    """CaptioningTransformer (W=256, 4 heads, 2 layers, F=4W) and the same torch model."""
    from capmodel.classifiers.transformer import CaptioningTransformer

    # Without <END> no caption ends early: torch's greedy loop always runs every step.
    ids = (2, *range(4, V)) if not end else range(4, V)
    vocab = {"<NULL>": 0, "<START>": 1, "<UNK>": 3, **({"<END>": 2} if end else {}), **{f"w{i}": i for i in ids}}
    model = CaptioningTransformer(vocab, input_dim=D, wordvec_dim=W, num_heads=4, num_layers=2, seed=0)
    return model, load_torch_transformer()(model)


def transformer_train_case():
    model, tmodel = transformer_models()
    features, captions = make_inputs(np.float32)
    tf, tc = torch.from_numpy(features), torch.from_numpy(captions)
    loss = model.loss(features, captions)[0]
    err = rel(loss, tmodel.loss(tf, tc).item())
    if err > TOLERANCE["float32"]:
        sys.exit(f"the two transformers disagree (relative loss error {err:.1e})")
    np_step, torch_step = adam_steps(model, tmodel, tmodel.parameters(), features, captions)
    ta, tb = time_pair(np_step, torch_step)
    return ta, tb, f"losses agree to {err:.0e}"


def transformer_sample_case():
    model, tmodel = transformer_models(end=False)
    features, _ = make_inputs(np.float32)
    L = min(ARGS.max_length, model.max_length)
    caps = model.sample(features, max_length=L)
    tcaps = tmodel.greedy(torch.from_numpy(features), L).numpy()
    if not np.array_equal(caps, tcaps):
        sys.exit(f"greedy captions differ in {np.mean(caps != tcaps):.1%} of the positions")
    ta, tb = time_pair(lambda: model.sample(features, max_length=L),
                       lambda: tmodel.greedy(torch.from_numpy(features), L))
    return ta, tb, (f"captions equal, both ran {L} steps; capmodel caches keys and values, torch's "
                    "nn.TransformerDecoder re-runs the prefix each step")


def scst_case():
    """One self-critical iteration against one cross-entropy iteration on as many captions."""
    model = make_model("lstm", np.float32)
    features, _ = make_inputs(np.float32)
    K, L = 5, T  # 5 samples per image, at most as long as the training captions
    refs = np.concatenate([make_inputs(np.float32, seed=k)[1] for k in range(K)])  # (K * N, T + 1), 5 per image
    # Equal work: a random model never ends its captions, a trained one does. <END> gets
    # the probability 1/14 at each step, so that sampled captions are about as long as the
    # cross-entropy captions (checked below).
    p_end = 1 / 14
    model.params["b_vocab"][VOCAB["<END>"]] += np.float32(np.log(p_end / (1 - p_end) * (V - 1)))
    sampled = decoding.temperature_sample(model, np.repeat(features, K, axis=0), max_length=L, rng=np.random.default_rng(0))
    words = lambda caps: float(np.mean(np.argmax(np.c_[caps == VOCAB["<END>"], np.ones(len(caps), bool)], axis=1)))
    sampled_words, xe_words = words(sampled), words(refs[:, 1:])
    if abs(sampled_words - xe_words) > 1.5:
        sys.exit(f"sampled captions have {sampled_words:.1f} words on average, the cross-entropy ones {xe_words:.1f}: "
                 "not equal work")
    images = np.tile(np.arange(N), K)
    objective = SelfCritical(CiderD.from_captions(refs, images, VOCAB), samples=K, baseline="greedy", max_length=L)
    configs = {k: {"learning_rate": 1e-4} for k in model.params}
    rng = np.random.default_rng(0)
    repeated = np.repeat(features, K, axis=0)  # (K * N, D): each image once per caption

    def update(grads):
        for k, w in model.params.items():
            model.params[k], configs[k] = optim.adam(w, grads[k], configs[k])

    def scst_step():
        update(objective(model, features, np.arange(N), rng)[1])

    def xe_step():
        update(model.loss(repeated, refs)[1])

    ta, tb = time_pair(scst_step, xe_step)
    return ta, tb, (f"SCST: {N} images x {K} samples ({sampled_words:.1f} words on average, max {L}), greedy "
                    f"baseline, CIDEr-D rewards, Adam; cross-entropy: {K * N} captions of {xe_words:.1f} words on "
                    "average, Adam")


CASES = [
    ("LSTM train step float32", lambda: train_case("lstm", np.float32)),
    ("GRU train step float32", lambda: train_case("gru", np.float32)),
    ("LSTM train step float64", lambda: train_case("lstm", np.float64)),
    ("GRU train step float64", lambda: train_case("gru", np.float64)),
    ("LSTM greedy sample float32", lambda: sample_case("lstm", beam=False)),
    ("GRU greedy sample float32", lambda: sample_case("gru", beam=False)),
    ("LSTM beam-3 sample float32", lambda: sample_case("lstm", beam=True)),
    ("GRU beam-3 sample float32", lambda: sample_case("gru", beam=True)),
    ("Transformer train step float32", transformer_train_case),
    ("Transformer greedy sample float32", transformer_sample_case),
    ("LSTM SCST iteration float32", scst_case),
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
            print(f"{name:28s} capmodel {ms(ta):>20s}  other {ms(tb):>20s}  ratio {ratio:.2f}  ({note})", flush=True)
    share = LOAD.share
    lines = [
        "# Benchmark results: capmodel (NumPy) vs PyTorch on the CPU",
        "",
        f"- command: `{command}`",
        f"- date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- CPU: {cpu_model()}, {os.cpu_count()} logical cores; {ARGS.threads} threads per framework",
        f"- numpy {np.__version__}, torch {torch.__version__}, Python {platform.python_version()}",
        f"- shapes: N={N}, T={T} (captions of {T + 1} tokens), V={V}, D={D}, W={W}, H={H}; "
        f"sampling max_length={ARGS.max_length}; the Transformer: width W={W}, 4 heads, 2 layers, feed-forward 4W",
        f"- method: {TIMER.method()}",
        f"- other processes used {100 * share:.1f}% of the CPU during the timed rounds"
        + (f" -- WARNING: above {100 * BUSY_WARNING:.0f}%, the machine was busy and the figures are noisy"
           if share > BUSY_WARNING else ""),
        "",
        "| case | capmodel ms | PyTorch ms | ratio | check |",
        "|---|---|---|---|---|",
    ]
    for name, ta, tb, ratio, note in rows:
        other = (f"capmodel greedy {ms(tb)}" if "beam" in name else f"capmodel cross-entropy {ms(tb)}"
                 if "SCST" in name else ms(tb))
        label = "beam / greedy " if "beam" in name else "SCST / cross-entropy " if "SCST" in name else ""
        lines.append(f"| {name} | {ms(ta)} | {other} | {label}{ratio:.2f} | {note} |")
    lines += ["", "ratio = capmodel median / PyTorch median (below 1: capmodel is faster); for beam-3, "
              "capmodel beam-3 median / capmodel greedy median; for SCST, one capmodel self-critical iteration "
              "(sampling, rewards, baseline, weighted loss, Adam) / one capmodel cross-entropy iteration on as "
              "many captions.", ""]
    print()
    write_results("\n".join(lines), ARGS.out)
    if share > BUSY_WARNING:
        print(f"WARNING: other processes used {100 * share:.0f}% of the CPU; rerun on a quieter machine",
              file=sys.stderr)


if __name__ == "__main__":
    main()
