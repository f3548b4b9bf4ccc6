"""Does attention over image regions pay? Global-vector models vs attention on the shapes data.

The shapes captions name positions and relations ("a red circle in the top left corner",
"left of"), which a model that can look at regions should learn better. For each model
family asked (default: lstm and transformer), with the settings of config/config.yaml
(train_defaults + the model's entry) on the shapes data set as `make run` generates it:
1. the grid of regions of every picture: the random-conv encoder's second layer
   (16 x 16 x 128 at 64 px) average-pooled to --grid x --grid (adaptive pooling bins),
   centred by the training regions' mean (what a grid PCA does before it rotates);
2. the family trained twice, at equal sizes, epochs and seed: attention none (the global
   feature vector) and attention soft (the regions too; the RNN starts from the global
   vector as always); the same CaptioningSolver, validation and best-epoch rule as
   `capmodel train`;
3. every model captions the val split with beam search (beam 3, max 16 words, as the
   workflow's default `sample:`) and is scored with pycocoevalcap (METEOR with java).
Prints one Markdown table: BLEU-4, METEOR, CIDEr-D per model (means over --seeds), the
attention model's CIDEr-D gain, each seed's CIDEr-D, and the CIDEr-D of greedy captions. Everything is kept in --work; a finished step is not redone when the script
is run again with the same --work.

Until the data sets carry grids and the solver passes them (issue 26's grid data and
solver work), the regions reach the models through RegionsByIndex below: each image's
row of the features gains its index, from which the adapter looks its regions up.

Usage: python benchmarks/attention_quality.py [--work DIR] [--families lstm transformer]
       [--grid 4] [--seeds 0 1] [--set KEY=VALUE ...] [--threads 2] [--no-java]
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
    p.add_argument("--grid", type=int, default=4, help="regions per side (the second layer map is 16 x 16)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="training settings for every model, over the config's (e.g. num_epochs=2)")
    p.add_argument("--seeds", type=int, nargs="+", help="train every model with each of these seeds and report "
                   "the means (default: the config's seed)")
    p.add_argument("--threads", type=int, default=2, help="BLAS threads")
    p.add_argument("--no-java", action="store_true", help="pure-Python tokenizer, no METEOR (quick checks)")
    return p.parse_args(argv)


ARGS = parse()
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = str(ARGS.threads)

import numpy as np  # noqa: E402
import yaml  # noqa: E402

from capmodel import checkpoints, decoding, metrics, models  # noqa: E402
from capmodel.app import pipeline  # noqa: E402
from capmodel.app import settings as S  # noqa: E402
from capmodel.app import workflow_config as wc  # noqa: E402
from capmodel.captioning_solver import CaptioningSolver  # noqa: E402
from capmodel.coco_utils import decode_captions, load_coco_data  # noqa: E402
from capmodel.datasets import format as fmt  # noqa: E402
from capmodel.datasets import shapes  # noqa: E402
from capmodel.encoders import randconv  # noqa: E402
from capmodel.kernels import parallel  # noqa: E402
from capmodel.safety.jsonfile import read_json  # noqa: E402
from capmodel.validation import Validator  # noqa: E402


# ------------------------------------------------------------------------ grid


def second_layer_grid(images, G):
    """The random-conv encoder's second layer map (N, S/4, S/4, 128) of uint8 images
    (N, S, S, 3), average-pooled to G x G (adaptive bins), as (N, G * G, 128) float32."""
    w1, b1, w2, b2 = randconv._filters()
    x = images.astype(np.float32) / 255.0 - 0.5
    h1 = np.maximum(randconv._im2col(x, 5, 2, 2) @ w1 + b1, 0)
    h = np.maximum(randconv._im2col(h1, 3, 2, 1) @ w2 + b2, 0)  # (N, S', S', 128)
    S = h.shape[1]
    bins = [(i * S // G, -(-(i + 1) * S // G)) for i in range(G)]  # [floor(i S / G), ceil((i + 1) S / G))
    out = np.empty((len(h), G, G, h.shape[3]), np.float32)
    for r, (r0, r1) in enumerate(bins):
        for c, (c0, c1) in enumerate(bins):
            out[:, r, c] = h[:, r0:r1, c0:c1].mean(axis=(1, 2))
    return out.reshape(len(h), G * G, -1)


def grids(data_dir, work, G):
    """{split: regions (Ni, G * G, 128) float16}, centred by the training mean; cached in work."""
    from PIL import Image

    paths = {split: work / f"grid{G}_{split}.npy" for split in ("train", "val")}
    if not all(p.exists() for p in paths.values()):
        raw = {}
        for split in paths:
            entries = fmt.image_locations(data_dir, fmt.read_urls(data_dir, split))
            blocks = []
            for s in range(0, len(entries), 500):
                images = np.stack([randconv.square_resize(Image.open(e.removeprefix("file://")).convert("RGB"),
                                                          shapes.SIZE) for e in entries[s : s + 500]])
                blocks.append(second_layer_grid(images, G))
            raw[split] = np.concatenate(blocks)
        mean = raw["train"].reshape(-1, raw["train"].shape[2]).mean(axis=0)
        for split, path in paths.items():
            np.save(path, (raw[split] - mean).astype(np.float16))
    return {split: np.load(path, allow_pickle=False) for split, path in paths.items()}


# ------------------------------------------------------------------- adapter


class RegionsByIndex:
    """A model whose inputs carry their image index in the last feature column: the
    adapter passes the image's regions (train for index i >= 0, stored as i + 1; val for
    -(i + 1)) to the model's loss and decoders, so the solver and the validator need
    not know about regions."""

    def __init__(self, model, regions):
        self.model, self.regions = model, regions
        self.params, self.rng, self.word_to_idx = model.params, model.rng, model.word_to_idx

    @staticmethod
    def with_index(data):
        """A copy of data whose {split}_features gain the index column."""
        out = dict(data)
        for split, sign in (("train", 1), ("val", -1)):
            f = data[f"{split}_features"]
            out[f"{split}_features"] = np.c_[f, sign * (np.arange(len(f)) + 1)].astype(np.float32)
        return out

    def split(self, features):
        features = np.asarray(features)
        idx = features[:, -1].astype(np.int64)
        if not self.model.uses_regions:
            return features[:, :-1], None
        train = idx > 0
        regions = np.empty((len(idx), *self.regions["train"].shape[1:]), self.regions["train"].dtype)
        regions[train] = self.regions["train"][idx[train] - 1]
        regions[~train] = self.regions["val"][-idx[~train] - 1]
        return features[:, :-1], regions

    def loss(self, features, captions, **kwargs):
        features, regions = self.split(features)
        return self.model.loss(features, captions, regions=regions, **kwargs)

    def sample(self, features, max_length=30, method="greedy", **options):
        features, regions = self.split(features)
        if regions is None:
            return self.model.sample(features, max_length=max_length, method=method, **options)
        model = self.model

        class Bound:  # what decoding.decode(model, features, regions=regions) does, block by block
            word_to_idx = model.word_to_idx

            def __init__(self, rows):
                self.rows = rows

            def decoder(self, f):
                return model.decoder(f, regions[self.rows])

        run = {"greedy": decoding.greedy, "beam": decoding.beam_search}[method]
        return parallel.map_rows(lambda rows: run(Bound(rows), features[rows], max_length, **options),
                                 np.arange(len(features)))

    def describe(self):
        return self.model.describe()


# ---------------------------------------------------------------------- runs


def train_and_score(name, settings, data, regions, work, decode, use_java):
    """Train (or load the finished run's metrics), caption val with the decode settings, score."""
    out = work / name
    done = out / "metrics.json"
    if done.exists():
        return read_json(done)
    s = S.check_train(settings)
    model = models.build(data["word_to_idx"], data["train_features"].shape[1], s,
                         region_dim=regions["train"].shape[2])
    adapter = RegionsByIndex(model, regions)
    indexed = RegionsByIndex.with_index(data)
    validator = Validator(indexed, metric=s["val_metric"], val_size=s["val_size"],
                          metric_images=s["val_metric_images"])
    solver_kwargs = {k: s[k] for k in pipeline.solver_keys() if s[k] is not None}
    solver_kwargs["print_every"] = 10**9
    solver = CaptioningSolver(adapter, indexed, optim_config={"learning_rate": s["learning_rate"]},
                              validate=validator, verbose=False, **solver_kwargs)
    start = time.perf_counter()
    solver.train()
    seconds = time.perf_counter() - start
    out.mkdir(parents=True, exist_ok=True)
    checkpoints.save_model(out / "model", model)
    refs = metrics.references_by_image(data, "val")
    ids = np.array(list(refs))

    def caption(method, **options):
        caps = np.concatenate([adapter.sample(indexed["val_features"][ids[b : b + 500]],
                                              max_length=decode["max_length"], method=method, **options)
                               for b in range(0, len(ids), 500)])
        return dict(zip(ids.tolist(), decode_captions(caps, data["idx_to_word"], strip_special=True)))

    options = {"beam_size": decode["beam_size"], "length_norm": decode["length_norm"]} if decode["method"] == "beam" \
        else {}
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
    data_dir = ARGS.work / "shapes"
    if not (data_dir / "coco2014_vocab.json").exists():
        shapes.generate(data_dir, **S.check_all(config["data"]["shapes"], S.SHAPES, "data.shapes"))
    regions = grids(data_dir, ARGS.work, ARGS.grid)
    use_java = False if ARGS.no_java else None
    rows = []
    for family in ARGS.families:
        results = {"none": [], "soft": []}
        for seed in ARGS.seeds or [runs[family]["seed"]]:
            chosen = {**extra, **({"seed": seed} if seed != runs[family]["seed"] else {})}
            settings = {k: v for k, v in {**runs[family], **chosen}.items() if k != "scst"}
            data = load_coco_data(data_dir, max_train=settings["max_train"], pca_features=settings["pca_features"],
                                  rng=settings["seed"])
            # run names: what each model depends on (the grid and the penalty concern attention only)
            tag = lambda keys: "".join(f"-{k}{v}" for k, v in sorted(chosen.items()) if k in keys)
            names = {"none": f"{family}-none{tag(set(chosen) - {'attention_penalty'})}",
                     "soft": f"{family}-soft-grid{ARGS.grid}{tag(set(chosen))}"}
            for attention, name in names.items():
                results[attention].append(train_and_score(name, {**settings, "attention": attention}, data, regions,
                                                          ARGS.work, decode, use_java))
        mean = {a: {k: float(np.mean([r.get(k, np.nan) if r.get(k) is not None else np.nan for r in rs]))
                    for k in ("Bleu_4", "METEOR", "CIDEr", "CIDEr_greedy", "params")} for a, rs in results.items()}
        for attention, m in mean.items():
            gain = f"{100 * (m['CIDEr'] / mean['none']['CIDEr'] - 1):+.1f}%" if attention == "soft" else ""
            rows.append((family, attention, m, gain, [r["CIDEr"] for r in results[attention]]))

    G, C = ARGS.grid, regions["train"].shape[2]
    seeds = ARGS.seeds or ["the config's"]
    print(f"Shapes data (config {ARGS.config.name}{', ' + ' '.join(ARGS.set) if ARGS.set else ''}), val split "
          f"({len(regions['val'])} images), {S.decode_label(decode)} decoding; regions: the random-conv second "
          f"layer pooled {G} x {G} (L={G * G}, C={C}); mean over seed{'s' if len(seeds) > 1 else ''} "
          f"{', '.join(map(str, seeds))}")
    print()
    print("| model | attention | BLEU-4 | METEOR | CIDEr-D | CIDEr-D vs attention none | CIDEr-D of each seed | "
          "CIDEr-D greedy | params |")
    print("|---|---|---|---|---|---|---|---|---|")
    for family, attention, m, gain, each in rows:
        meteor = "n/a (no java)" if np.isnan(m["METEOR"]) else f"{m['METEOR']:.4f}"
        print(f"| {family} | {attention} | {m['Bleu_4']:.4f} | {meteor} | {m['CIDEr']:.4f} | {gain} | "
              f"{', '.join(f'{c:.4f}' for c in each)} | {m['CIDEr_greedy']:.4f} | {m['params']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
