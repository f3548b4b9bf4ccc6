"""Does self-critical training pay? Cross-entropy vs SCST fine-tuning on the shapes data.

For each model family asked (default: lstm and transformer), with the settings of
config/config.yaml (train_defaults + the model's entry) on the shapes data set as `make run`
generates it:
1. cross-entropy training to the configured epochs (the start);
2. from the start, --epochs more epochs of cross-entropy (learning rate --lr, CIDEr-D
   validation, best epoch kept), and --epochs epochs of SCST with each baseline (greedy and
   mean; --samples per image, the same learning rate and seed);
3. every model captions the val split with beam search (beam 3, as the workflow's default
   `sample:`) and is scored by `capmodel evaluate` (pycocoevalcap; METEOR with java).
Prints one Markdown table: BLEU-4, METEOR, CIDEr-D per run and the CIDEr-D gain of each SCST
run over the cross-entropy continuation. Everything is kept in --work; a finished step is
not redone when the script is run again with the same --work.

Usage: python benchmarks/scst_quality.py [--work DIR] [--families lstm transformer]
       [--epochs 2] [--lr 5e-4] [--samples 5] [--threads 2] [--no-java]
"""

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=Path("scst-quality"), help="directory of every output (kept)")
    p.add_argument("--config", type=Path, default=ROOT / "config" / "config.yaml", help="workflow config to read")
    p.add_argument("--families", nargs="+", default=["lstm", "transformer"], help="model entries of the config")
    p.add_argument("--epochs", type=int, default=2, help="epochs of each continuation")
    p.add_argument("--lr", type=float, default=None, help="learning rate of the continuations "
                   "(default: the scst section's default)")
    p.add_argument("--samples", type=int, default=None, help="SCST samples per image (default: the setting's)")
    p.add_argument("--threads", type=int, default=2, help="BLAS threads")
    p.add_argument("--no-java", action="store_true", help="pure-Python tokenizer, no METEOR (quick checks)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse(argv)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    import yaml

    from capmodel.app import pipeline
    from capmodel.app import settings as S
    from capmodel.app import workflow_config as wc
    from capmodel.app.samples import evaluate, sample
    from capmodel.datasets import shapes
    from capmodel.safety.jsonfile import read_json

    config = yaml.safe_load(args.config.read_text())
    models = wc.expand_models({"train_defaults": config.get("train_defaults"),
                               "models": {f: config["models"][f] for f in args.families}})
    scst_defaults = S.defaults(S.SCST)
    lr = args.lr if args.lr is not None else scst_defaults["learning_rate"]
    samples = args.samples if args.samples is not None else scst_defaults["samples"]
    decode = S.decode_record(config.get("sample") or {})
    args.work.mkdir(parents=True, exist_ok=True)

    data = args.work / "shapes"
    if not (data / "coco2014_vocab.json").exists():
        shapes.generate(data, **S.check_all(config["data"]["shapes"], S.SHAPES, "data.shapes"))

    def run(name, settings, init_from=None):
        out = args.work / name
        if not (out / "model.json").exists():
            start = time.perf_counter()
            pipeline.train(data, out, settings, init_from=init_from, verbose=False)
            print(f"trained {name} in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
        samples_csv = out / f"samples_{decode['split']}.csv"
        if not (out / "metrics.json").exists():
            sample(out / "model.npz", data, samples_csv, decode)
            evaluate(samples_csv, out / "metrics.json", name=name, use_java=False if args.no_java else None)
        return read_json(out / "metrics.json", "metrics file")

    rows = []
    for family in args.families:
        base = models[family]
        start = run(f"{family}-xe", base)
        more = {**base, "num_epochs": args.epochs, "learning_rate": lr, "val_metric": S.SCST_VAL_METRIC}
        results = {"cross-entropy (start)": start,
                   f"+{args.epochs} epochs cross-entropy": run(f"{family}-xe+{args.epochs}", more, args.work / f"{family}-xe")}
        for baseline in ("greedy", "mean"):
            scst = {**more, "objective": "scst", "scst_samples": samples, "scst_baseline": baseline}
            results[f"+{args.epochs} epochs SCST, {baseline} baseline"] = run(
                f"{family}-scst-{baseline}", scst, args.work / f"{family}-xe")
        reference = results[f"+{args.epochs} epochs cross-entropy"]["CIDEr"]
        for label, m in results.items():
            gain = f"{100 * (m['CIDEr'] / reference - 1):+.1f}%" if "SCST" in label else ""
            rows.append((family, label, m["Bleu_4"], m.get("METEOR"), m["CIDEr"], gain))

    print(f"Shapes data (config {args.config.name}), val split, {S.decode_label(decode)} decoding; "
          f"continuations: learning rate {lr:g}, SCST {samples} samples per image")
    print()
    print("| model | training | BLEU-4 | METEOR | CIDEr-D | CIDEr-D vs cross-entropy continuation |")
    print("|---|---|---|---|---|---|")
    for family, label, bleu, meteor, cider, gain in rows:
        meteor = "n/a (no java)" if meteor is None else f"{meteor:.4f}"
        print(f"| {family} | {label} | {bleu:.4f} | {meteor} | {cider:.4f} | {gain} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
