"""The workflow's stages as library functions: train, sample, evaluate, baseline, summarize.

Each reads files, calls the library and writes its outputs atomically; the CLI
(capmodel.cli) only parses arguments and calls these. File layouts are those of the
design: results/models/<model>/{model.npz,model.json,history.csv,val.csv,
samples_<split>.csv,metrics.json}, results/summary.{csv,md}.
"""

import json
import time
from pathlib import Path

import numpy as np

from capmodel import checkpoints, metrics
from capmodel.atomic import write_json, write_text
from capmodel.captioning_solver import CaptioningSolver
from capmodel.classifiers.rnn import CaptioningRNN
from capmodel.coco_utils import decode_captions, load_coco_data
from capmodel.tables import read_csv, write_csv

REF_SEP = " ||| "
TRAIN_DEFAULTS = {
    "cell_type": "lstm", "wordvec_dim": 128, "hidden_dim": 256, "dropout": 0.0,
    "update_rule": "adam", "learning_rate": 5e-3, "lr_decay": 0.95, "batch_size": 100, "num_epochs": 10,
    "seed": 0, "grad_clip": None, "max_train": None, "pca_features": True, "val_metric": None,
    "val_metric_images": 200, "val_size": 5000, "patience": None, "lr_schedule": None, "lr_step_size": 1,
    "lr_gamma": 0.1, "warmup_iterations": 0, "min_lr": 0.0, "checkpoint_every": None, "print_every": 50,
    "max_iterations": None,
}
SOLVER_KEYS = ("update_rule", "lr_decay", "batch_size", "num_epochs", "seed", "grad_clip", "val_metric",
               "val_metric_images", "val_size", "patience", "lr_schedule", "lr_step_size", "lr_gamma",
               "warmup_iterations", "min_lr", "checkpoint_every", "print_every", "max_iterations")


def train(data_dir, out_dir, settings, checkpoint_dir=None, keep_checkpoints=False, verbose=True):
    """Train one model and write model.npz/.json, history.csv and val.csv into out_dir.

    settings: dict over TRAIN_DEFAULTS' keys (unknown keys raise ValueError). With a
    checkpoint_dir the run resumes from the newest valid checkpoint there; that directory
    must have been made with the same settings. It is removed after success unless
    keep_checkpoints.
    """
    unknown = sorted(set(settings) - set(TRAIN_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown training settings: {', '.join(unknown)}")
    s = {**TRAIN_DEFAULTS, **{k: v for k, v in settings.items() if v is not None}}
    out_dir = Path(out_dir)
    if verbose:
        print(f"BLAS threads: {blas_threads()}", flush=True)
    ckpt = None
    if checkpoint_dir is not None:
        ckpt = checkpoints.CheckpointDir(checkpoint_dir)
        ckpt.claim({"data_dir": str(Path(data_dir).resolve()), "settings": s})
    data = load_coco_data(data_dir, max_train=s["max_train"], pca_features=s["pca_features"], rng=s["seed"])
    model = CaptioningRNN(data["word_to_idx"], input_dim=data["train_features"].shape[1],
                          wordvec_dim=s["wordvec_dim"], hidden_dim=s["hidden_dim"], cell_type=s["cell_type"],
                          dropout=s["dropout"], seed=s["seed"])
    solver_kwargs = {k: s[k] for k in SOLVER_KEYS if s[k] is not None}
    solver = CaptioningSolver(model, data, optim_config={"learning_rate": s["learning_rate"]}, validate=True,
                              verbose=verbose, checkpoint_dir=checkpoint_dir, **solver_kwargs)
    start = time.perf_counter()
    solver.train()
    seconds = time.perf_counter() - start

    out_dir.mkdir(parents=True, exist_ok=True)
    num_train = data["train_captions"].shape[0]
    ipe = max(num_train // s["batch_size"], 1)
    write_csv(out_dir / "history.csv",
              [{"iteration": i + 1, "epoch": i // ipe, "loss": f"{l:.6f}", "learning_rate": f"{lr:.6g}"}
               for i, (l, lr) in enumerate(zip(solver.loss_history, solver.lr_history))],
              ["iteration", "epoch", "loss", "learning_rate"])
    metric = s["val_metric"]
    write_csv(out_dir / "val.csv",
              [{"epoch": r["epoch"], "iteration": r["iteration"], "val_loss": f"{r['val_loss']:.6f}",
                "metric": metric or "", "metric_value": f"{r[metric]:.6f}" if metric else "",
                "best": int(r["best"])} for r in solver.val_history],
              ["epoch", "iteration", "val_loss", "metric", "metric_value", "best"])
    best = next((r for r in reversed(solver.val_history) if r["best"]), None)
    checkpoints.save_model(out_dir / "model", model, extra={
        "settings": s, "data_dir": str(data_dir), "iterations": solver.iteration, "epochs": solver.epoch,
        "early_stopped": bool(solver.finished), "best_epoch": best["epoch"] if best else None,
        "final_train_loss": solver.loss_history[-1] if solver.loss_history else None,
        "train_seconds_this_run": round(seconds, 3),
    })
    if ckpt is not None and not keep_checkpoints:
        ckpt.remove()
    return model, solver


def blas_threads():
    """Threads NumPy's BLAS will use (so a job can show it uses what it asked for)."""
    from threadpoolctl import threadpool_info

    counts = [p["num_threads"] for p in threadpool_info() if p.get("user_api") == "blas"]
    return max(counts) if counts else 1


def sample(model_base, data_dir, out_csv, split="val", method="greedy", max_length=16, num_images=None,
           batch_size=500, **options):
    """Caption the images of a split; write image_idx, url, generated, references as CSV."""
    model, meta = checkpoints.load_model(model_base)
    pca = meta.get("settings", {}).get("pca_features", True)
    data = load_coco_data(data_dir, pca_features=pca)
    if data["word_to_idx"] != model.word_to_idx:
        raise ValueError(f"the vocabulary of {data_dir} differs from the model's ({model_base}); "
                         "sample with the dataset the model was trained on")
    refs = metrics.references_by_image(data, split, num_images)
    ids = np.array(list(refs), dtype=np.int64)
    if "rng" in options and options["rng"] is not None:
        options["rng"] = np.random.default_rng(options["rng"])
    captions = []
    for s in range(0, len(ids), batch_size):
        feats = data[f"{split}_features"][ids[s : s + batch_size]]
        captions.append(model.sample(feats, max_length=max_length, method=method, **options))
    caps = np.concatenate(captions) if captions else np.zeros((0, max_length), int)
    texts = decode_captions(caps, data["idx_to_word"], strip_special=True)
    urls = data[f"{split}_urls"]
    rows = [{"image_idx": int(i), "url": urls[i], "generated": t, "references": REF_SEP.join(refs[int(i)])}
            for i, t in zip(ids, texts)]
    write_csv(out_csv, rows, ["image_idx", "url", "generated", "references"])
    return rows


def baseline(data_dir, out_csv, split="val", num_images=None):
    """The most-frequent-training-caption baseline, written like sample()'s output."""
    data = load_coco_data(data_dir)
    caption = metrics.most_frequent_caption(data)
    refs = metrics.references_by_image(data, split, num_images)
    urls = data[f"{split}_urls"]
    rows = [{"image_idx": i, "url": urls[i], "generated": caption, "references": REF_SEP.join(r)}
            for i, r in refs.items()]
    write_csv(out_csv, rows, ["image_idx", "url", "generated", "references"])
    return caption


def evaluate(samples_csv, out_json, use_java=None, name=None, settings=None):
    """Score a samples CSV with the coco-caption metrics; write them (and settings) as JSON."""
    if not Path(samples_csv).is_file():
        raise ValueError(f"samples file {samples_csv} does not exist (make it with 'capmodel sample')")
    rows = read_csv(samples_csv)
    if not rows:
        raise ValueError(f"{samples_csv} has no captions to evaluate")
    for col in ("image_idx", "generated", "references"):
        if col not in rows[0]:
            raise ValueError(f"{samples_csv} has no column '{col}'")
    refs = {int(r["image_idx"]): r["references"].split(REF_SEP) for r in rows}
    cands = {int(r["image_idx"]): r["generated"] for r in rows}
    scores = metrics.evaluate_captions(refs, cands, use_java=use_java)
    result = {"model": name or Path(samples_csv).parent.name, "samples": str(samples_csv), **scores,
              "settings": settings or {}}
    write_json(out_json, result)
    return result


def summarize(metrics_files, out_csv, out_md):
    """One row per model from metrics.json files (+ model.json beside them when present)."""
    rows = []
    for f in metrics_files:
        m = json.loads(Path(f).read_text())
        row = {"model": m["model"]}
        model_json = Path(f).parent / "model.json"
        if model_json.exists():
            info = json.loads(model_json.read_text())
            st = info.get("settings", {})
            row.update({"cell_type": st.get("cell_type", ""), "hidden_dim": st.get("hidden_dim", ""),
                        "iterations": info.get("iterations", ""), "best_epoch": info.get("best_epoch", "")})
            val = Path(f).parent / "val.csv"
            if val.exists():
                vr = read_csv(val)
                row["best_val_loss"] = min((float(r["val_loss"]) for r in vr), default="")
        decoding = m.get("settings", {}).get("method", "")
        if m.get("settings", {}).get("beam_size") and decoding == "beam":
            decoding = f"beam{m['settings']['beam_size']}"
        row["decoding"] = decoding
        row.update({k: m[k] for k in metrics.METRIC_NAMES if k in m})
        rows.append(row)
    cols = ["model", "cell_type", "hidden_dim", "iterations", "best_epoch", "best_val_loss", "decoding",
            *metrics.METRIC_NAMES]
    cols = [c for c in cols if any(c in r for r in rows)]
    fmt = lambda v: f"{v:.4f}" if isinstance(v, float) else str(v)
    write_csv(out_csv, [{c: fmt(r.get(c, "")) for c in cols} for r in rows], cols)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    write_text(out_md, "\n".join(lines) + "\n")
    return rows
