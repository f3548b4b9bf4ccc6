"""Training time on a Flickr8k-sized data set, measured through the capmodel CLI.

What the README's and docs/own-data.md's own-photos training command costs on the machine
people have. Writes a random data set of Flickr8k's size with capmodel.datasets.format's
writer (by default Karpathy's split: 6,000 train and 1,000 val images, 5 captions each;
features of EfficientNet-Lite0's width, 1,280, and their 512-d PCA; captions of 8 to 15
words, 11 on average, drawn from --vocab words (V, the `vocab_size` that `capmodel data
from-folder` prints; it depends on the captions and on --min-count)), then runs
`capmodel train` with each --settings string for --epochs epochs in its own process and
reports the wall time of the whole command per epoch (training iterations, the per-epoch
validation loss and the model files), the time of --project epochs, and the process's CPU
time (user + system) per epoch. The content is random: the time depends on the sizes, not
on the values.

Usage: python benchmarks/bench_own_data.py [--threads 2] [--vocab 2600 8000] [--epochs 1]
           [--project 10] [--settings "" "--batch-size 25"]
"""

import argparse
import datetime
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from capmodel.datasets import format as fmt
from capmodel.vocab import CAPTION_LENGTH, SPECIAL_TOKENS
from report import cpu_model, write_results

HERE = Path(__file__).resolve().parent
FEATURE_DIM = 1280  # EfficientNet-Lite0
CAPTIONS_PER_IMAGE = 5


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2, help="BLAS threads of the training process")
    p.add_argument("--train-images", type=int, default=6000, help="train images (Flickr8k, Karpathy: 6,000)")
    p.add_argument("--val-images", type=int, default=1000, help="val images (Flickr8k, Karpathy: 1,000)")
    p.add_argument("--vocab", type=int, nargs="+", default=[2600, 8000], help="vocabulary sizes V to time")
    p.add_argument("--epochs", type=int, default=1, help="epochs each timed run trains")
    p.add_argument("--project", type=int, default=10, help="epochs of the projected total")
    p.add_argument("--settings", nargs="+", default=["", "--batch-size 25"],
                   help="capmodel train flags of each run (quoted strings; '' = the defaults)")
    p.add_argument("--out", default=str(HERE / "results" / "own_data.md"), help="markdown table to write")
    return p.parse_args(argv)


def write_flickr8k_sized(out_dir, train_images, val_images, vocab, seed=0):
    """A random data set of the given sizes via the format writer."""
    rng = np.random.default_rng(seed)
    idx_to_word = list(SPECIAL_TOKENS) + [f"w{i}" for i in range(vocab - len(SPECIAL_TOKENS))]
    zipf = 1.0 / np.arange(1, vocab - len(SPECIAL_TOKENS) + 1)  # word frequencies of natural text
    captions, image_idxs, features, pca, urls = {}, {}, {}, {}, {}
    for split, n in (("train", train_images), ("val", val_images)):
        c = n * CAPTIONS_PER_IMAGE
        caps = np.zeros((c, CAPTION_LENGTH), np.int32)
        lengths = np.clip(np.rint(rng.normal(11, 2.5, c)).astype(int), 8, CAPTION_LENGTH - 2)
        words = rng.choice(np.arange(len(SPECIAL_TOKENS), vocab), size=(c, CAPTION_LENGTH - 2), p=zipf / zipf.sum())
        caps[:, 0] = 1  # <START>
        for i, length in enumerate(lengths):
            caps[i, 1 : length + 1] = words[i, :length]
            caps[i, length + 1] = 2  # <END>
        captions[split], image_idxs[split] = caps, np.repeat(np.arange(n, dtype=np.int32), CAPTIONS_PER_IMAGE)
        features[split] = rng.standard_normal((n, FEATURE_DIM)).astype(np.float32)
        pca[split] = rng.standard_normal((n, fmt.PCA_DIM)).astype(np.float32)
        urls[split] = [f"https://example.org/{split}/{i}.jpg" for i in range(n)]
    fmt.write_dataset(out_dir, captions, image_idxs, features, pca, urls, idx_to_word)


def train_seconds(data_dir, model_dir, flags, epochs, threads):
    """(wall seconds, CPU seconds: user + system) of one `capmodel train` process."""
    env = {**os.environ, **{v: str(threads) for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}}
    cmd = [sys.executable, "-m", "capmodel.app.cli", "train", "--data", str(data_dir), "--out-dir", str(model_dir),
           "--num-epochs", str(epochs), "--print-every", "1000000", *shlex.split(flags)]
    time.sleep(0.2)  # let other threads settle (docs/benchmarks.md)
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            err.seek(0)
            raise SystemExit(f"capmodel train {flags} failed: {err.read().strip()[-2000:]}")
    return seconds, usage.ru_utime + usage.ru_stime


def cpu_busy():
    """(busy, total) jiffies of the whole machine from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def minutes(seconds):
    return f"{seconds / 60:.1f} min" if seconds < 3600 else f"{seconds / 3600:.2f} h"


def main(argv=None):
    args = parse(argv)

    lines = ["# Training time on a Flickr8k-sized data set", "",
             f"- command: `{shlex.join(['python', 'benchmarks/bench_own_data.py', *sys.argv[1:]])}`",
             f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
             f"- CPU: {cpu_model()}, {os.cpu_count()} logical cores; {args.threads} BLAS threads; numpy {np.__version__}",
             f"- data: {args.train_images:,} train / {args.val_images:,} val images, {CAPTIONS_PER_IMAGE} captions "
             f"each, random {FEATURE_DIM}-d features with a 512-d PCA, captions of 8-15 words (11 on average)",
             f"- method: `capmodel train --num-epochs {args.epochs}` in its own process, wall time of the whole "
             f"command (validation loss each epoch, model files) per epoch, and its CPU time (user + system: on a loaded "
             f"machine with --threads 1, close to a quiet machine's wall time); LSTM, other settings default unless "
             f"given",
             "", f"| capmodel train flags | V | per epoch | {args.project} epochs | CPU time per epoch |",
             "|---|---|---|---|---|"]
    own_start = os.times()
    busy0, total0 = cpu_busy()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for vocab in args.vocab:
            data = tmp / f"data_{vocab}"
            write_flickr8k_sized(data, args.train_images, args.val_images, vocab)
            for i, flags in enumerate(args.settings):
                wall, cpu = train_seconds(data, tmp / f"model_{vocab}_{i}", flags, args.epochs, args.threads)
                seconds = wall / args.epochs
                lines.append(f"| `{flags or '(defaults)'}` | {vocab:,} | {minutes(seconds)} | "
                             f"{minutes(seconds * args.project)} | {minutes(cpu / args.epochs)} |")
                print(lines[-1], flush=True)
    busy1, total1 = cpu_busy()
    own_end = os.times()
    ours = (own_end.children_user + own_end.children_system + own_end.user + own_end.system
            - own_start.children_user - own_start.children_system - own_start.user - own_start.system)
    ticks = os.sysconf("SC_CLK_TCK")
    other = max(0.0, ((busy1 - busy0) / ticks - ours) / max((total1 - total0) / ticks, 1e-9))
    lines += ["", f"Other processes used {other:.0%} of the CPU meanwhile (above about 15%, the times are upper "
              "bounds of a quiet machine's)."]
    write_results("\n".join(lines) + "\n", args.out)


if __name__ == "__main__":
    main()
