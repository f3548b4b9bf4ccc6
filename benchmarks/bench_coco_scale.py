"""Full-COCO scale, measured through the capmodel CLI.

Writes a dataset with the exact sizes of CS231n's coco_captioning (train 82,783 images /
400,135 captions, val 40,504 images / 195,954 captions, fc7 4096-d and PCA 512-d float32
features, 1,004 words; random content) with capmodel.datasets.format's writer into a new
scratch directory, then runs and times, each as its own process:
- capmodel data check   (the whole dataset, both feature sets)
- capmodel train        (LSTM, H=512, W=256, batch 100, --max-iterations iterations):
                        seconds per iteration and the projected time of one epoch
                        (400,135 // 100 = 4,001 iterations)
- capmodel sample       (beam 3 over the whole val split, or over the first --val-images
                        images, projected linearly to the whole split)
- capmodel evaluate     (BLEU, METEOR, ROUGE-L, CIDEr-D, with Java when installed; over
                        the same images, projected likewise)
Peak memory is each process's maximum resident set size (os.wait4). The scratch
directory, and only it, is removed at the end. The table is printed and written to
benchmarks/results/coco_scale.md.

Usage: python benchmarks/bench_coco_scale.py [--threads 2] [--max-iterations 60] [--val-images N]
"""

import argparse
import datetime
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from capmodel.datasets import format as fmt
from capmodel.safety.jsonfile import read_json
from report import cpu_model, write_results
from capmodel.vocab import CAPTION_LENGTH, SPECIAL_TOKENS

HERE = Path(__file__).resolve().parent
SIZES = {"train": (82_783, 400_135), "val": (40_504, 195_954)}  # (images, captions)
FC7_DIM, VOCAB_SIZE, BATCH = 4096, 1004, 100


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2, help="BLAS threads of every capmodel process")
    p.add_argument("--max-iterations", type=int, default=60, help="training iterations to time")
    p.add_argument("--val-images", type=int, help="sample only this many val images and project (default: all)")
    p.add_argument("--scratch", default=None, help="parent directory of the scratch directory (default: TMPDIR)")
    p.add_argument("--no-java", action="store_true", help="evaluate without Java (no METEOR)")
    p.add_argument("--out", default=str(HERE / "results" / "coco_scale.md"), help="markdown table to write")
    p.add_argument("--write-only", metavar="DIR", help=argparse.SUPPRESS)  # internal: write the dataset to DIR
    return p.parse_args(argv)


def write_coco_sized(out_dir, seed=0):
    """A random dataset with CS231n coco_captioning's exact sizes, via the format writer."""
    rng = np.random.default_rng(seed)
    idx_to_word = list(SPECIAL_TOKENS) + [f"w{i}" for i in range(VOCAB_SIZE - len(SPECIAL_TOKENS))]
    captions, image_idxs, features, pca, urls = {}, {}, {}, {}, {}
    for split, (n_img, n_cap) in SIZES.items():
        caps = np.zeros((n_cap, CAPTION_LENGTH), dtype=np.int32)
        # 5 to 14 words, uniformly: random lengths like real captions' (the packed loss's time
        # depends on them), not COCO's own length histogram
        lengths = rng.integers(5, CAPTION_LENGTH - 2, size=n_cap)
        words = rng.integers(len(SPECIAL_TOKENS), VOCAB_SIZE, size=(n_cap, CAPTION_LENGTH), dtype=np.int32)
        pos = np.arange(CAPTION_LENGTH)
        caps[:, 0] = 1
        inside = (pos >= 1) & (pos[None] <= lengths[:, None])
        caps[inside] = words[inside]
        caps[np.arange(n_cap), lengths + 1] = 2
        captions[split] = caps
        # every image has at least one caption, the rest are spread at random
        idxs = np.concatenate([np.arange(n_img), rng.integers(n_img, size=n_cap - n_img)]).astype(np.int32)
        image_idxs[split] = np.sort(idxs)
        features[split] = rng.random((n_img, FC7_DIM), dtype=np.float32)
        pca[split] = rng.standard_normal((n_img, fmt.PCA_DIM), dtype=np.float32)
        urls[split] = [f"http://images.cocodataset.org/{split}2014/COCO_{split}2014_{i:012d}.jpg"
                       for i in range(n_img)]
    fmt.write_dataset(out_dir, captions, image_idxs, features, pca, urls, idx_to_word)


def busy_jiffies():
    """(system-wide busy jiffies, total jiffies) from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    total = sum(fields[:8])
    return total - fields[3] - fields[4], total


OTHER = []  # other processes' share of the CPU during each command


def run(argv, env, log):
    """Run one command; return (wall seconds, peak RSS in MB, exit status).

    Also records in OTHER the share of the CPU that processes other than the command
    used meanwhile (system-wide busy time minus the command's own user + system time).
    """
    busy0, total0 = busy_jiffies()
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    busy1, total1 = busy_jiffies()
    own = (usage.ru_utime + usage.ru_stime) * os.sysconf("SC_CLK_TCK")
    OTHER.append(max(busy1 - busy0 - own, 0) / max(total1 - total0, 1))
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed with status {proc.returncode}; see:\n{Path(log).read_text()[-3000:]}")
    return seconds, usage.ru_maxrss / 1024, proc.returncode


def main():
    args = parse()
    if args.write_only:
        write_coco_sized(args.write_only)
        return
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(args.threads)
    cli = [sys.executable, "-m", "capmodel.app.cli"]
    scratch = Path(tempfile.mkdtemp(prefix="capmodel-coco-scale-", dir=args.scratch))
    rows = []
    try:
        data, model_dir, logs = scratch / "coco", scratch / "model", scratch / "logs"
        logs.mkdir()
        # A child process writes the data, so that this one stays small: a child's peak
        # memory (ru_maxrss) counts what it inherited from its parent at fork.
        s, mem, _ = run([sys.executable, __file__, "--write-only", str(data)], env, logs / "write.log")
        size_gb = sum(f.stat().st_size for f in data.iterdir()) / 1e9
        rows.append(("write the dataset (format.write_dataset)", s, mem, f"{size_gb:.2f} GB on disk"))

        OTHER.clear()  # the share while writing is not of interest
        s, mem, _ = run([*cli, "data", "check", str(data)], env, logs / "check.log")
        rows.append(("capmodel data check", s, mem, "both feature sets"))

        n = args.max_iterations
        s, mem, _ = run([*cli, "train", "--data", str(data), "--out-dir", str(model_dir), "--cell-type", "lstm",
                         "--hidden-dim", "512", "--wordvec-dim", "256", "--batch-size", str(BATCH),
                         "--num-epochs", "1", "--max-iterations", str(n), "--print-every", "10"],
                        env, logs / "train.log")
        info = read_json(model_dir / "model.json", "model file")
        per_iter = info["train_seconds_this_run"] / info["iterations"]
        iters_per_epoch = SIZES["train"][1] // BATCH
        epoch_min = per_iter * iters_per_epoch / 60
        rows.append((f"capmodel train (LSTM H=512 W=256 batch {BATCH}, {n} iterations)", s, mem,
                     f"{per_iter:.3f} s/iteration; start-up and loading {s - per_iter * n:.1f} s"))
        train_other = OTHER[-1]
        rows.append((f"projected epoch ({iters_per_epoch} iterations)", per_iter * iters_per_epoch, None,
                     f"{epoch_min:.1f} min"))

        n_val = SIZES["val"][0] if args.val_images is None else min(args.val_images, SIZES["val"][0])
        samples = scratch / "samples_val.csv"
        cmd = [*cli, "sample", "--model", str(model_dir / "model"), "--data", str(data), "--out", str(samples),
               "--method", "beam", "--beam-size", "3"]
        if n_val < SIZES["val"][0]:
            cmd += ["--num-images", str(n_val)]
        s, mem, _ = run(cmd, env, logs / "sample.log")
        note = f"{n_val} val images, max_length 16"
        if n_val < SIZES["val"][0]:
            note += f"; projected to all {SIZES['val'][0]}: {s * SIZES['val'][0] / n_val:.0f} s"
        rows.append(("capmodel sample --method beam --beam-size 3", s, mem, note))

        cmd = [*cli, "evaluate", "--samples", str(samples), "--out", str(scratch / "metrics.json")]
        if args.no_java:
            cmd.append("--no-java")
        java = shutil.which("java") is not None and not args.no_java
        s, mem, _ = run(cmd, env, logs / "evaluate.log")
        note = f"{n_val} images; {'with Java (PTB tokenizer, METEOR)' if java else 'no Java'}"
        if n_val < SIZES["val"][0]:
            note += f"; projected to all {SIZES['val'][0]}: {s * SIZES['val'][0] / n_val:.0f} s"
        rows.append(("capmodel evaluate", s, mem, note))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    lines = [
        "# Full-COCO scale, measured through the capmodel CLI",
        "",
        f"- command: `{shlex.join(['python', 'benchmarks/bench_coco_scale.py', *sys.argv[1:]])}`",
        f"- date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- CPU: {cpu_model()}, {os.cpu_count()} logical cores; {args.threads} BLAS threads per process",
        f"- numpy {np.__version__}, Python {platform.python_version()}; random data with CS231n coco_captioning's "
        "sizes (train 82,783 images / 400,135 captions, val 40,504 / 195,954, fc7 4096-d + PCA 512-d, 1,004 words)",
        f"- other processes used {100 * train_other:.0f}% of the CPU during `capmodel train` and "
        f"{100 * max(OTHER):.0f}% at most during any measured command"
        + (" -- WARNING: the machine was busy, times are inflated" if max(OTHER) > 0.15 else ""),
        "",
        "| step | wall s | peak memory MB | notes |",
        "|---|---|---|---|",
    ]
    for name, s, mem, note in rows:
        lines.append(f"| {name} | {s:.1f} | {'' if mem is None else f'{mem:.0f}'} | {note} |")
    lines.append("")
    text = "\n".join(lines)
    write_results(text, args.out)


if __name__ == "__main__":
    main()
