"""Does attention over image regions pay? Global-vector models vs attention on the shapes data.

The shapes captions name positions and relations ("a red circle in the top left corner",
"left of"), which a model that can look at regions should learn better. For each model
family asked (default: lstm and transformer), with the settings of config/config.yaml
(train_defaults + the model's entry) on the shapes data set as `capmodel data shapes`
makes it (the config's data.shapes, with the grid of regions --grid / --grid-pca, by
default the data set's own: capmodel.datasets.shapes.DEFAULT_GRID, DEFAULT_GRID_PCA):
1. the family trained at equal sizes, epochs and seed with attention none (the global
   feature vector) and attention soft (the regions too; the RNN starts from the global
   vector as always), the way `capmodel train` trains (capmodel.app.pipeline.train): the
   data set loaded with its regions, models.build(..., region_dim=C), the cross-entropy
   objective, CaptioningSolver with the Validator and its best-epoch rule;
2. every model captions the val split with the config's `sample:` decoding (beam 3, max 16
   words by default) and greedily, its inputs from models.image_inputs, and is scored with
   pycocoevalcap (METEOR with java).
Prints one Markdown table: BLEU-4, METEOR, CIDEr-D per model and seed (and their means over
--seeds), the attention model's CIDEr-D gain over the model without attention of the same
seed, and the CIDEr-D of greedy captions with its gain.
Everything is kept in --work (the data sets, each run's model, captions and metrics); a
finished step is not redone when the script is run again with the same --work.

Usage: python benchmarks/attention_quality.py [--work DIR] [--families lstm transformer]
       [--grid G] [--grid-pca K|none] [--seeds 0 1] [--set KEY=VALUE ...] [--threads 1]
       [--no-java]
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=Path("attention-quality"), help="directory of every output (kept)")
    p.add_argument("--config", type=Path, default=ROOT / "config" / "config.yaml", help="workflow config to read")
    p.add_argument("--families", nargs="+", default=["lstm", "transformer"], help="model entries of the config")
    p.add_argument("--grid", type=int, help="regions per side of the data set's grid (default: the config's "
                   "data.shapes grid, else capmodel data shapes' default)")
    p.add_argument("--grid-pca", help="components K of the grid PCA, or none (default: as --grid)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="training settings for every model, over the config's (e.g. num_epochs=2)")
    p.add_argument("--seeds", type=int, nargs="+", help="train every model with each of these seeds and report "
                   "the means (default: the config's seed)")
    p.add_argument("--threads", type=int, default=1, help="BLAS threads (and attention worker threads)")
    p.add_argument("--attention", nargs="+", default=["none", "soft"], choices=["none", "soft"],
                   help="which models to train and score (the gain needs both; runs done are read back)")
    p.add_argument("--no-java", action="store_true", help="pure-Python tokenizer, no METEOR (quick checks)")
    return p.parse_args(argv)


ARGS = parse()
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = str(ARGS.threads)

import numpy as np  # noqa: E402
import yaml  # noqa: E402

from capmodel import checkpoints, metrics, models  # noqa: E402
from capmodel.app import pipeline  # noqa: E402
from capmodel.app import settings as S  # noqa: E402
from capmodel.app import workflow_config as wc  # noqa: E402
from capmodel.captioning_solver import CaptioningSolver  # noqa: E402
from capmodel.coco_utils import decode_captions, load_coco_data  # noqa: E402
from capmodel.datasets import shapes  # noqa: E402
from capmodel.objectives import CrossEntropy  # noqa: E402
from capmodel.safety.jsonfile import read_json  # noqa: E402
from capmodel.validation import Validator  # noqa: E402


def shapes_settings(config):
    """The data.shapes settings of the config, with --grid / --grid-pca over them."""
    given = dict((config.get("data") or {}).get("shapes") or {})
    if ARGS.grid is not None:
        given["grid"] = ARGS.grid
    if ARGS.grid_pca is not None:
        given["grid_pca"] = None if ARGS.grid_pca == "none" else int(ARGS.grid_pca)
    return S.check_all(given, S.SHAPES, "data.shapes")


def data_set(work, s):
    """The shapes data set of settings s in work (made once), and its name."""
    pca = "none" if s["grid_pca"] is None else s["grid_pca"]
    name = f"shapes-{s['num_train']}-{s['num_val']}-seed{s['seed']}-min{s['min_count']}-grid{s['grid']}-pca{pca}"
    path = work / name
    if not (path / "coco2014_vocab.json").exists():
        print(f"making the data set {name}", file=sys.stderr, flush=True)
        shapes.generate(path, **s)
    return path


def train_and_score(name, settings, data, work, decode, use_java):
    """Train as capmodel train does (or load the finished run's metrics), caption val with
    the decode settings and greedily, score."""
    out = work / name
    done = out / "metrics.json"
    if done.exists():
        return read_json(done)
    s = S.check_train(settings)
    regions = data.get("train_regions")
    L, C = (None, None) if regions is None else regions.shape[1:]
    model = models.build(data["word_to_idx"], data["train_features"].shape[1], s, region_dim=C, num_regions=L)
    validator = Validator(data, metric=s["val_metric"], val_size=s["val_size"], metric_images=s["val_metric_images"])
    solver_kwargs = {k: s[k] for k in pipeline.solver_keys() if s[k] is not None}
    solver_kwargs["print_every"] = 10**9
    solver = CaptioningSolver(model, data, optim_config={"learning_rate": s["learning_rate"]},
                              objective=CrossEntropy(), validate=validator, verbose=False, **solver_kwargs)
    start = time.perf_counter()
    solver.train()
    seconds = time.perf_counter() - start
    out.mkdir(parents=True, exist_ok=True)
    checkpoints.save_model(out / "model", model)
    refs = metrics.references_by_image(data, "val")
    ids = np.array(list(refs))

    def caption(method, **options):
        caps = np.concatenate([model.sample(max_length=decode["max_length"], method=method, **options,
                                            **models.image_inputs(model, data, "val", ids[b : b + 500]))
                               for b in range(0, len(ids), 500)])
        return dict(zip(ids.tolist(), decode_captions(caps, data["idx_to_word"], strip_special=True)))

    options = {"beam_size": decode["beam_size"], "length_norm": decode["length_norm"]} \
        if decode["method"] == "beam" else {}
    cands = caption(decode["method"], **options)
    scores = metrics.evaluate_captions(refs, cands, use_java=use_java)
    scores.pop("per_image", None)
    greedy = caption("greedy")
    result = {**scores, "CIDEr_greedy": metrics.evaluate_captions(refs, greedy, use_java=use_java,
                                                                  metrics=("CIDEr",))["CIDEr"],
              "train_seconds": round(seconds, 1), "best_epoch": max(
                  (r for r in solver.val_history if r["best"]), key=lambda r: r["epoch"])["epoch"],
              "params": int(sum(v.size for v in model.params.values()))}
    (out / "samples.json").write_text(json.dumps(cands, indent=0))
    done.write_text(json.dumps(result, indent=1))
    print(f"{name}: trained in {seconds:.0f} s, CIDEr-D {result['CIDEr']:.4f}", file=sys.stderr, flush=True)
    return result


def main():
    config = yaml.safe_load(ARGS.config.read_text())
    extra = {}
    for item in ARGS.set:
        key, _, value = item.partition("=")
        extra[key] = S.by_name(S.train_settings())[key].parse(value)
    runs = wc.expand_models({"train_defaults": config.get("train_defaults"),
                             "models": {f: config["models"][f] for f in ARGS.families}})
    decode = S.decode_record(config.get("sample") or {})
    ARGS.work.mkdir(parents=True, exist_ok=True)
    shape_settings = shapes_settings(config)
    if shape_settings["grid"] is None:
        raise SystemExit("attention_quality: the data set needs a grid of regions (--grid G)")
    data_dir = data_set(ARGS.work, shape_settings)
    grid_tag = f"grid{shape_settings['grid']}-pca{shape_settings['grid_pca'] or 'none'}"
    use_java = False if ARGS.no_java else None
    rows, L, C = [], None, None
    for family in ARGS.families:
        results = {"none": {}, "soft": {}}  # attention -> {seed: metrics}
        for seed in ARGS.seeds or [runs[family]["seed"]]:
            chosen = {**extra, **({"seed": seed} if seed != runs[family]["seed"] else {})}
            settings = {k: v for k, v in {**runs[family], **chosen}.items() if k != "scst"}
            data = load_coco_data(data_dir, max_train=settings["max_train"], pca_features=settings["pca_features"],
                                  rng=settings["seed"])
            L, C = data["train_regions"].shape[1:]
            # run names: what each model depends on (the grid and the penalty concern attention only)
            tag = lambda keys: "".join(f"-{k}{v}" for k, v in sorted(chosen.items()) if k in keys)
            names = {"none": f"{family}-none{tag(set(chosen) - {'attention_penalty'})}",
                     "soft": f"{family}-soft-{grid_tag}{tag(set(chosen))}"}
            for attention, name in names.items():
                if attention not in ARGS.attention and not (ARGS.work / name / "metrics.json").exists():
                    continue
                results[attention][seed] = train_and_score(name, {**settings, "attention": attention}, data,
                                                           ARGS.work, decode, use_java)
        keys = ("Bleu_4", "METEOR", "CIDEr", "CIDEr_greedy", "params")
        value = lambda r, k: np.nan if r.get(k) is None else r[k]
        for attention, by_seed in results.items():
            if not by_seed:
                continue
            mean = {k: float(np.mean([value(r, k) for r in by_seed.values()])) for k in keys}
            base = results["none"]
            each = [(str(seed), r, base.get(seed)) for seed, r in by_seed.items()]
            if len(by_seed) > 1:
                shared = [sd for sd in by_seed if sd in base]
                none_mean = {k: float(np.mean([value(base[sd], k) for sd in shared])) for k in keys} if shared \
                    else None
                each.append(("mean", mean, none_mean))
            for label, r, b in each:
                gain = lambda k: f"{100 * (r[k] / b[k] - 1):+.1f}%" if attention == "soft" and b and b[k] > 0 else ""
                rows.append((family, attention, label, r, gain("CIDEr"), gain("CIDEr_greedy")))

    seeds = ARGS.seeds or ["the config's"]
    pca = shape_settings["grid_pca"]
    print(f"Shapes data (config {ARGS.config.name}{', ' + ' '.join(ARGS.set) if ARGS.set else ''}), val split, "
          f"{S.decode_label(decode)} decoding; regions: the data set's grid, the random-conv second layer pooled "
          f"{shape_settings['grid']} x {shape_settings['grid']} (L={L}, C={C}, "
          f"{'channels standardised' if pca is None else f'grid PCA {pca}, standardised'}); "
          f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}")
    print()
    print("| model | attention | seed | BLEU-4 | METEOR | CIDEr-D | CIDEr-D vs attention none | CIDEr-D greedy | "
          "greedy vs attention none | params |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for family, attention, label, m, gain, greedy_gain in rows:
        meteor = "n/a (no java)" if np.isnan(value(m, "METEOR")) else f"{m['METEOR']:.4f}"
        print(f"| {family} | {attention} | {label} | {m['Bleu_4']:.4f} | {meteor} | {m['CIDEr']:.4f} | {gain} | "
              f"{value(m, 'CIDEr_greedy'):.4f} | {greedy_gain} | {m['params']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
