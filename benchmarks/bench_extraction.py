"""Building a data set from raw pictures, end to end: rate, peak memory and disk.

What the recipes (config/flickr8k.yaml, config/coco-images.yaml) and docs/benchmarks.md quote.
Two measurements, each command run by the real CLI in a child process that reports its peak
resident memory (ru_maxrss):

1. `capmodel data features` with a pretrained encoder (random weights of torchvision's shapes
   in a weights file: the speed and memory do not depend on the values) over --pictures
   JPEGs of COCO's typical size (640 x 480): pictures per second including decoding,
   preprocessing and the checking pass, peak memory, and bytes per picture of the features
   file. Then the projection for Flickr8k (8,091 pictures) and COCO 2014 (123,287), on one
   machine and split over --nodes shards.
2. `capmodel data from-folder` (randconv, small pictures, so it is quick) for each of --sizes
   pictures: the peak memory of extraction plus building the data set, which streams, so it
   should not grow with the number of pictures.

Usage: python benchmarks/bench_extraction.py [--encoder resnet101] [--pictures 48] [--threads 2]
                                             [--sizes 1000 4000] [--nodes 10]
"""

import argparse
import datetime
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATASETS = {"Flickr8k": (8_091, 40_455), "COCO 2014 (Karpathy)": (123_287, 616_767)}
CHILD = ("import resource, sys, time\n"
         "from capmodel.app.cli import main\n"
         "start = time.perf_counter()\n"
         "code = main(sys.argv[1:])\n"
         "print('BENCH', time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,"
         " file=sys.stderr)\n"
         "sys.exit(code)\n")


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--encoder", default="resnet101", help="pretrained encoder to measure")
    p.add_argument("--pictures", type=int, default=48, help="JPEGs for the encoder measurement")
    p.add_argument("--threads", type=int, default=2, help="torch and BLAS threads")
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 4000], help="pictures for the memory measurement")
    p.add_argument("--nodes", type=int, default=10, help="shards in the projection")
    p.add_argument("--out", default=str(HERE / "results" / "extraction.md"), help="markdown table to write")
    return p.parse_args(argv)


def photos(folder, count, size, seed=0):
    """count smooth random JPEGs of size (w, h), and a captions CSV naming them."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    lines = ["image,caption"]
    for i in range(count):
        small = rng.integers(0, 256, (size[1] // 16, size[0] // 16, 3), dtype=np.uint8)
        Image.fromarray(small).resize(size, Image.BILINEAR).save(folder / f"{i:06d}.jpg", quality=90)
        lines.append(f"{i:06d}.jpg,a picture number {i % 50}")
    (folder.parent / f"{folder.name}.csv").write_text("\n".join(lines) + "\n")
    return folder.parent / f"{folder.name}.csv"


def run(argv, threads):
    """Run the capmodel CLI in a child; (seconds, peak MB)."""
    env = {**os.environ, **{v: str(threads) for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}}
    r = subprocess.run([sys.executable, "-c", CHILD, *map(str, argv)], capture_output=True, text=True, env=env)
    if r.returncode != 0:
        sys.exit(f"capmodel {' '.join(map(str, argv))} failed:\n{r.stderr[-2000:]}")
    line = [ln for ln in r.stderr.splitlines() if ln.startswith("BENCH ")][-1].split()
    return float(line[1]), int(line[2]) / 1024


def hours(seconds):
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


def gb(nbytes):
    return f"{nbytes / 1e9:.2f} GB" if nbytes >= 1e8 else f"{nbytes / 1e6:.0f} MB"


def main(argv=None):
    args = parse(argv)
    import torch

    sys.path.insert(0, str(HERE))
    from bench_encoders import random_encoder
    from report import cpu_model, write_results

    lines = ["# Data sets from raw pictures: extraction rate, memory and disk", "",
             f"- command: `{shlex.join(['python', 'benchmarks/bench_extraction.py', *sys.argv[1:]])}`",
             f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
             f"- CPU: {cpu_model()}, {os.cpu_count()} logical cores; {args.threads} threads; torch {torch.__version__}",
             f"- method: the real CLI in a child process; wall time and peak resident memory (ru_maxrss) of "
             f"the whole command", ""]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        enc = random_encoder(args.encoder)
        weights = tmp / f"{args.encoder}.pth"
        torch.save(enc._sd, weights)
        captions = photos(tmp / "coco_like", args.pictures, (640, 480))
        seconds, peak = run(["data", "features", tmp / "coco_like", captions, tmp / "f.h5", "--encoder", args.encoder,
                             "--weights", weights, "--no-progress"], args.threads)
        per_picture = (tmp / "f.h5").stat().st_size / args.pictures
        rate = args.pictures / seconds
        lines += [f"**`capmodel data features --encoder {args.encoder}` on {args.pictures} JPEGs of 640 x 480**", "",
                  "| pictures/s (decoding, checking, preprocessing, network) | peak memory | features file per picture |",
                  "|---|---|---|",
                  f"| {rate:.2f} | {peak:.0f} MB | {per_picture / 1024:.1f} KB |", ""]
        width = enc.feature_dim
        lines += [f"Projection ({args.encoder}, {width}-d features; PCA to 512):", "",
                  f"| data set | pictures | extraction, 1 machine | {args.nodes} shards on {args.nodes} nodes | "
                  "features files | data set |", "|---|---|---|---|---|---|"]
        for name, (n, caps) in DATASETS.items():
            data_bytes = n * (width + 512) * 4 + caps * 17 * 4 * 1.0 + n * 60  # fc7, PCA, captions, URLs
            lines.append(f"| {name} | {n:,} | {hours(n / rate)} | {hours(n / rate / args.nodes)} | "
                         f"{gb(n * per_picture)} | {gb(data_bytes)} |")
        lines += ["", "**`capmodel data from-folder` (randconv, 96 x 64 JPEGs): memory against the number of "
                  "pictures**", "", "| pictures | wall time | peak memory |", "|---|---|---|"]
        for size in args.sizes:
            captions = photos(tmp / f"small_{size}", size, (96, 64), seed=size)
            time.sleep(0.2)
            seconds, peak = run(["data", "from-folder", tmp / f"small_{size}", captions, tmp / f"data_{size}",
                                 "--no-progress"], args.threads)
            lines.append(f"| {size:,} | {seconds:.1f} s | {peak:.0f} MB |")
            print(lines[-1], flush=True)
    load = os.getloadavg()[0]
    lines += ["", f"Load average at the end: {load:.1f} on {os.cpu_count()} cores (above the core count, other "
              "processes shared the CPU and the rates are lower bounds)."]
    print(json.dumps({"rate": rate, "peak_mb": peak}))
    write_results("\n".join(lines) + "\n", args.out)


if __name__ == "__main__":
    main()
