"""Feature extraction throughput of each image encoder, and what it means for COCO.

Each encoder (capmodel.encoders.registry) runs extract() on a batch of random,
already-preprocessed inputs: at each pretrained CNN's input side (224 x 224; EfficientNet-Lite1
240, Lite2 260) with random weights of the right shapes (the speed does not depend on their
values), and for randconv at its default side 64 (as data sets use it) and at 224. Reported: images per second, the median of
--rounds timed runs after one warm-up run, on --threads threads (torch.set_num_threads and
the BLAS threads). Decoding and resizing the pictures are not included; the preprocessing
column times the encoder's preprocess() of one 640 x 480 picture (COCO's typical size)
for reference. The projection divides COCO 2014's 123,287 images by the
rate, on one machine and split over 10 SLURM nodes of the same speed.

Usage: python benchmarks/bench_encoders.py [--threads 2] [--rounds 3] [--batch 16] [--encoders NAME ...]
"""

import argparse
import datetime
import os
import shlex
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
COCO_IMAGES = 123_287  # train2014 + val2014
NODES = 10


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2, help="torch and BLAS threads")
    p.add_argument("--rounds", type=int, default=3, help="timed runs per encoder (median reported)")
    p.add_argument("--batch", type=int, default=16, help="images per run")
    p.add_argument("--encoders", nargs="+", default=None, help="encoders to time (default: all)")
    p.add_argument("--out", default=str(HERE / "results" / "encoders.md"), help="markdown table to write")
    return p.parse_args(argv)


def hours(seconds):
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


def random_encoder(name):
    """The pretrained encoder with random weights of the shapes its weights have."""
    import torch

    from capmodel.encoders import efficientnet, imagenet, torchnets

    lite = imagenet.LITE_NETWORKS.get(name)
    network = lite or imagenet.NETWORKS[name]
    shapes = efficientnet.expected_shapes(network) if lite else torchnets.expected_shapes(network.arch)
    gen = torch.Generator().manual_seed(0)
    sd = {}
    for k, shape in shapes.items():
        if k.endswith("num_batches_tracked"):
            sd[k] = torch.tensor(0)
        elif k.endswith("running_var"):
            sd[k] = torch.ones(shape)
        else:
            fan_in = max(1, int(torch.tensor(shape[1:]).prod())) if len(shape) > 1 else 1
            sd[k] = torch.randn(shape, generator=gen) / fan_in ** 0.5
    cls = efficientnet.EfficientNetLiteEncoder if lite else torchnets.TorchEncoder
    return cls(network, sd, None, "random")


def time_extract(encoder, inputs, rounds):
    encoder.extract(inputs)  # warm-up
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        encoder.extract(inputs)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main(argv=None):
    args = parse(argv)
    for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[v] = str(args.threads)
    import numpy as np
    import torch
    from PIL import Image
    from threadpoolctl import threadpool_limits

    from capmodel.encoders import imagenet, randconv, registry

    sys.path.insert(0, str(HERE))
    from report import cpu_model, write_results

    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8))
    cases = [("randconv", 64), ("randconv", 224)] + [(n, net.resolution) for n, net in imagenet.LITE_NETWORKS.items()]
    cases += [(n, net.crop) for n, net in imagenet.NETWORKS.items()]
    cases = [c for c in cases if args.encoders is None or c[0] in args.encoders]
    lines = ["# Image encoders: feature extraction throughput", "",
             f"- command: `{shlex.join(['python', 'benchmarks/bench_encoders.py', *sys.argv[1:]])}`",
             f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
             f"- CPU: {cpu_model()}, {os.cpu_count()} logical cores; {args.threads} threads; "
             f"torch {torch.__version__}, numpy {np.__version__}",
             f"- method: extract() on {args.batch} random preprocessed images, random weights; median of "
             f"{args.rounds} runs after one warm-up; COCO = {COCO_IMAGES:,} images, network time only", "",
             "| encoder | input | features | images/s | preprocess ms/image | COCO, 1 machine | "
             f"COCO, {NODES} SLURM nodes |", "|---|---|---|---|---|---|---|"]
    with threadpool_limits(args.threads):
        for name, side in cases:
            if name == randconv.NAME:
                enc = registry.get_encoder(name, image_size=side)
                inputs = rng.integers(0, 256, (args.batch, side, side, 3), dtype=np.uint8)
            else:
                enc = random_encoder(name)
                inputs = rng.standard_normal((args.batch, 3, side, side)).astype(np.float32)
            rate = args.batch / time_extract(enc, inputs, args.rounds)
            start = time.perf_counter()
            for _ in range(5):
                enc.preprocess(photo)
            prep = (time.perf_counter() - start) / 5 * 1000
            lines.append(f"| {name} | {side} x {side} | {enc.feature_dim} | {rate:.1f} | {prep:.1f} | "
                         f"{hours(COCO_IMAGES / rate)} | {hours(COCO_IMAGES / rate / NODES)} |")
            print(lines[-1], flush=True)
    load = os.getloadavg()[0]
    lines += ["", f"Load average at the end: {load:.1f} on {os.cpu_count()} cores (above the core count, other "
              "processes shared the CPU and the rates are lower bounds)."]
    write_results("\n".join(lines) + "\n", args.out)


if __name__ == "__main__":
    main()
