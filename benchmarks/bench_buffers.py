"""What reusing the loss's temporaries (model.buffers) saves: page faults and time per step.

Each measurement is a fresh process (the allocator's state depends on what a process did
before, so both variants start from the same state), running the benchmark's model and
batches (workload.py: LSTM or GRU, N=100, T=16, V=1004, D=512, W=256, H=512,
float32; four batches of different caption lengths in turn, as training sees them) for
--warmup untimed and --rounds timed training steps (loss, backward, Adam), with 0.2 s
idle before each. Processes alternate between the two variants, --repeats
times each:
- reused: as shipped, the loss takes its temporaries from model.buffers;
- fresh: model.buffers replaced by a stand-in, so every temporary is a new array.
Reported: the median over all timed steps of each variant of the step time and of the
minor page faults (getrusage), which is where fresh memory costs: the kernel maps and
zeroes every new page.

Usage: python benchmarks/bench_buffers.py [--threads 2] [--rounds 15] [--repeats 3]
"""

import argparse
import contextlib
import datetime
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BATCHES = 4  # training steps cycle through this many batches of different lengths


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2, help="BLAS threads")
    p.add_argument("--rounds", type=int, default=15, help="timed steps per process")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per process")
    p.add_argument("--repeats", type=int, default=3, help="processes per variant and cell")
    p.add_argument("--out", default=str(HERE / "results" / "buffers.md"), help="markdown table to write")
    p.add_argument("--child", nargs=2, metavar=("CELL", "VARIANT"), help=argparse.SUPPRESS)  # internal
    return p.parse_args(argv)


class FreshArrays:
    """Stands in for model.buffers: every temporary of the loss is a new array."""

    def active(self):
        return contextlib.nullcontext()


def child(cell, variant, args):
    """Run the steps in this process; print one JSON line of (seconds, faults) per step."""
    import resource
    import time

    import numpy as np

    from capmodel import optim

    sys.path.insert(0, str(HERE))
    from workload import make_inputs, make_model

    model = make_model(cell, np.float32)
    batches = [make_inputs(np.float32, seed) for seed in range(BATCHES)]  # lengths differ, as in training
    if variant == "fresh":
        model.buffers = FreshArrays()
    configs = {k: {"learning_rate": 1e-4} for k in model.params}
    steps = []
    for r in range(args.warmup + args.rounds):
        time.sleep(0.2)
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        start = time.perf_counter()
        _, grads = model.loss(*batches[r % BATCHES])
        for k, w in model.params.items():
            model.params[k], configs[k] = optim.adam(w, grads[k], configs[k])
        if r >= args.warmup:
            steps.append((time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults))
    print(json.dumps(steps))


def main():
    args = parse()
    if args.child:
        return child(*args.child, args)
    import numpy as np

    sys.path.insert(0, str(HERE))
    from report import cpu_model, write_results

    env = {**os.environ, **{v: str(args.threads) for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                                             "MKL_NUM_THREADS")}}
    results = {}
    for cell in ("lstm", "gru"):
        for _ in range(args.repeats):
            for variant in ("reused", "fresh"):
                cmd = [sys.executable, __file__, "--child", cell, variant, "--rounds", str(args.rounds),
                       "--warmup", str(args.warmup)]
                out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
                results.setdefault((cell, variant), []).extend(json.loads(out.strip().splitlines()[-1]))
    lines = ["# Reused buffers against fresh temporaries, one training step", "",
             f"- command: `{shlex.join(['python', 'benchmarks/bench_buffers.py', *sys.argv[1:]])}`",
             f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
             f"- CPU: {cpu_model()}, {os.cpu_count()} logical cores; "
             f"{args.threads} BLAS threads",
             f"- method: {args.repeats} fresh processes per variant and cell, alternating; {args.warmup} untimed and "
             f"{args.rounds} timed steps each, cycling through {BATCHES} batches of different caption lengths, 0.2 s "
             "idle before each; medians over all timed steps", "",
             "| cell | temporaries | step ms | minor page faults per step |", "|---|---|---|---|"]
    for (cell, variant), steps in results.items():
        ms = 1000 * float(np.median([t for t, _ in steps]))
        faults = int(np.median([f for _, f in steps]))
        label = "reused (as shipped)" if variant == "reused" else "fresh each step"
        lines.append(f"| {cell.upper()} | {label} | {ms:.1f} | {faults} |")
    text = "\n".join(lines) + "\n"
    write_results(text, args.out)


if __name__ == "__main__":
    main()
