"""The workflow's stages as library functions: train, sample, evaluate, baseline, summarize.

Each reads files, calls the library and writes its outputs atomically; the CLI
(capmodel.app.cli) only parses arguments and calls these. File layouts are those of the
design: results/models/<model>/{model.npz,model.json,history.csv,val.csv,
encoder.json,encoder_pca.h5,samples_<split>.csv,metrics.json}, results/summary.{csv,md}.
"""

import json
import sys
import time
from pathlib import Path

import numpy as np

from capmodel import checkpoints, metrics, models
from capmodel.app import settings as S
from capmodel.app.tables import read_csv, write_csv
from capmodel.captioning_solver import CS231N_KWARGS, EXTRA_KWARGS, CaptioningSolver
from capmodel.cider import CiderD
from capmodel.coco_utils import decode_captions, load_coco_data
from capmodel.datasets import features as feat
from capmodel.datasets import format as fmt
from capmodel.progress import clock, track
from capmodel.safety import ownership
from capmodel.safety.atomic import check_writable, sha256_of, write_json, write_text
from capmodel.safety.outputs import check_output
from capmodel.scst import SelfCritical
from capmodel.validation import Validator

REF_SEP = " ||| "


def solver_keys():
    """The training settings that are CaptioningSolver keyword arguments (validation aside;
    the objective setting names what train() builds into the solver's objective)."""
    return tuple(s.name for s in S.train_settings()
                 if s.name in CS231N_KWARGS + EXTRA_KWARGS and not s.name.startswith("val_") and s.name != "objective")


def load_start(model, init_from):
    """Set model's parameters to those of the trained model at init_from (any form
    capmodel.checkpoints.load_model takes); the two must be of the same family, sizes
    and vocabulary, and its parameters finite. Returns the SHA-256 of the start's
    parameter file."""
    try:
        start, _ = checkpoints.load_model(checkpoints.model_base(init_from))
    except checkpoints.CheckpointError as e:
        raise ValueError(f"--init-from {init_from}: {e}") from e
    built, given = model.describe(), start.describe()
    differ = sorted(k for k in set(built) | set(given) if k not in ("dtype", "dropout") and built.get(k) != given.get(k))
    if built.get("cell_type") != given.get("cell_type"):
        differ = ["cell_type"]  # another family: its other keys say nothing more
    if differ:
        shown = ", ".join(f"{k} {given.get(k)!r} (settings: {built.get(k)!r})" if k != "word_to_idx"
                          else "vocabulary (another data set's)" for k in differ)
        raise ValueError(f"--init-from {init_from}: the model does not match the training settings: {shown}")
    for k in sorted(model.params):
        bad = np.count_nonzero(~np.isfinite(start.params[k]))
        if bad:
            raise ValueError(f"--init-from {init_from}: parameter {k} has {bad} non-finite values (NaN or inf); "
                             "start from a sound model")
        model.params[k] = start.params[k].astype(model.dtype)
    return sha256_of(checkpoints.model_base(init_from).with_suffix(".npz"))


def scst_objective(data, s):
    """The self-critical objective of settings s, rewarded by CIDEr-D against the
    training captions of data."""
    scorer = CiderD.from_captions(data["train_captions"], data["train_image_idxs"], data["word_to_idx"])
    return SelfCritical(scorer, samples=s["scst_samples"], baseline=s["scst_baseline"],
                        max_length=data["train_captions"].shape[1] - 1)


def read_settings_file(path, what="settings file"):
    """A JSON object of settings from path (as the workflow writes them), named in errors."""
    path = Path(path)
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{what} {path} does not exist")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{what} {path} is not readable JSON ({e})")
    if not isinstance(values, dict):
        raise ValueError(f"{what} {path} must hold a JSON object of setting -> value")
    return values


def run_fingerprint(data_dir, s, start_sha):
    """What a resumed run must share with the checkpoints' run: the data, the settings that
    matter (a cross-entropy run's does not include the unused self-critical settings, so its
    checkpoints from before they existed still resume) and the start model."""
    unused = ("objective", "scst_samples", "scst_baseline") if s["objective"] == "xe" else ()
    record = {"data_dir": str(Path(data_dir).resolve()), "settings": {k: v for k, v in s.items() if k not in unused}}
    if start_sha is not None:
        record["init_from_sha256"] = start_sha
    return record


def train(data_dir, out_dir, settings, checkpoint_dir=None, keep_checkpoints=False, verbose=True, init_from=None,
          restart_on_change=False):
    """Train one model and write model.npz/.json, history.csv and val.csv into out_dir, and,
    when the data set records its encoder, a copy of that record (capmodel.datasets.features'
    MODEL_RECORD_FILE and MODEL_PCA_FILE, taken when training starts), whose identity
    model.json records under 'encoder' (None for a data set without a record).

    settings: dict over capmodel.app.settings.train_settings() (unknown keys or values out of
    range raise SettingError). Everything that can fail is checked before training: the
    settings, the output and checkpoint locations, the data set (consistent, finite, a
    usable val split) and the metrics toolkit when a val_metric is asked for. With a
    checkpoint_dir the run resumes from the newest valid checkpoint there; that directory
    must have been made by capmodel with the same settings (with restart_on_change, the
    checkpoints of a run with other settings are removed and training starts over). It is
    removed after success (only capmodel's own files) unless keep_checkpoints. With init_from
    (a trained model) training starts from its weights; objective "scst" needs one.
    """
    s = S.check_train(settings)
    if s["objective"] == "scst" and init_from is None:
        raise ValueError("objective scst fine-tunes a trained model: give it with --init-from MODEL")
    out_dir = Path(out_dir)
    check_writable(out_dir, "output directory", directory=True)
    if init_from is not None:
        try:
            start_npz = checkpoints.model_base(init_from).with_suffix(".npz")
        except checkpoints.CheckpointError as e:
            raise ValueError(f"--init-from {init_from}: {e}") from e
        if start_npz.resolve() == (out_dir / "model.npz").resolve():
            raise ValueError(f"--out-dir {out_dir} holds the --init-from model, which training would overwrite; "
                             "choose another --out-dir")
    if verbose:
        print(f"BLAS threads: {blas_threads()}", flush=True)
    ckpt = None
    if checkpoint_dir is not None:
        ckpt = checkpoints.CheckpointDir(checkpoint_dir)
        ownership.check_owned(ckpt.path, "checkpoints", "checkpoint directory")
    data = load_coco_data(data_dir, max_train=s["max_train"], pca_features=s["pca_features"], rng=s["seed"])
    record = feat.snapshot_record(data_dir)  # the encoder the model's features came from, kept beside it
    model = models.build(data["word_to_idx"], data["train_features"].shape[1], s)
    start_sha = None if init_from is None else load_start(model, init_from)
    objective = scst_objective(data, s) if s["objective"] == "scst" else None
    validator = Validator(data, metric=s["val_metric"], val_size=s["val_size"], metric_images=s["val_metric_images"])
    if ckpt is not None:
        ckpt.claim(run_fingerprint(data_dir, s, start_sha), restart=restart_on_change,
                   warn=print if verbose else lambda _: None)
    solver_kwargs = {k: s[k] for k in solver_keys() if s[k] is not None}
    progress = verbose and sys.stderr.isatty()  # a bar in a terminal, timed lines in a log
    solver = CaptioningSolver(model, data, optim_config={"learning_rate": s["learning_rate"]}, validate=validator,
                              verbose=verbose, progress=progress, checkpoint_dir=checkpoint_dir, objective=objective,
                              **solver_kwargs)
    start = time.perf_counter()
    solver.train()
    seconds = time.perf_counter() - start

    out_dir.mkdir(parents=True, exist_ok=True)
    num_train = data["train_captions"].shape[0] if objective is None else len(np.unique(data["train_image_idxs"]))
    ipe = max(num_train // s["batch_size"], 1)
    stat_names = list(solver.stats_history[0]) if solver.stats_history else []
    write_csv(out_dir / "history.csv",
              [{"iteration": i + 1, "epoch": i // ipe, "loss": f"{l:.6f}", "learning_rate": f"{lr:.6g}",
                **{k: f"{v:.6f}" for k, v in (solver.stats_history[i] if stat_names else {}).items()}}
               for i, (l, lr) in enumerate(zip(solver.loss_history, solver.lr_history))],
              ["iteration", "epoch", "loss", "learning_rate", *stat_names])
    metric = s["val_metric"]
    write_csv(out_dir / "val.csv",
              [{"epoch": r["epoch"], "iteration": r["iteration"], "val_loss": f"{r['val_loss']:.6f}",
                "metric": metric or "", "metric_value": f"{r[metric]:.6f}" if metric else "",
                "best": int(r["best"])} for r in solver.val_history],
              ["epoch", "iteration", "val_loss", "metric", "metric_value", "best"])
    best = next((r for r in reversed(solver.val_history) if r["best"]), None)
    encoder = None if record is None else feat.write_model_record(out_dir, *record)
    checkpoints.save_model(out_dir / "model", model, extra={
        "settings": s, "data_dir": str(data_dir), "iterations": solver.iteration, "epochs": solver.epoch,
        "early_stopped": bool(solver.finished), "best_epoch": best["epoch"] if best else None,
        "best_val_loss": best["val_loss"] if best else None,
        "num_params": int(sum(v.size for v in model.params.values())),
        "final_train_loss": solver.loss_history[-1] if solver.loss_history else None,
        "train_seconds_this_run": round(seconds, 3),
        "init_from": None if init_from is None else {"path": str(init_from), "sha256": start_sha},
        "encoder": encoder,
    })
    if ckpt is not None and not keep_checkpoints:
        ckpt.remove()
    return model, solver


def blas_threads():
    """Threads NumPy's BLAS will use (so a job can show it uses what it asked for)."""
    from threadpoolctl import threadpool_info

    counts = [p["num_threads"] for p in threadpool_info() if p.get("user_api") == "blas"]
    return max(counts) if counts else 1


def samples_record(samples_csv):
    """Where `capmodel sample`/`baseline` record what they did: the CSV's .json sibling."""
    return Path(samples_csv).with_suffix(".json")


def sample_image_urls(record_json, entries):
    """Where to read the pictures of a samples file, for reports.

    The url column holds each image as its dataset's urls file does: a path relative to
    the dataset directory, or a URL (capmodel.datasets.format.image_location). They are
    resolved against the data_dir of the samples record (record_json); a relative data_dir
    is relative to the working directory, as it was when the samples were made (the run
    directory in the workflow), so a run directory moved or copied elsewhere keeps its pictures.

    Returns a list of http(s) or absolute file:// URLs, one per entry.
    """
    path = Path(record_json)
    try:
        data_dir = json.loads(path.read_text(encoding="utf-8"))["data_dir"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"samples record {path}: cannot read its data_dir ({e})") from e
    return fmt.image_locations(data_dir, entries)


def _check_samples_outputs(out_csv, inputs=()):
    check_output(out_csv, ".csv", inputs=inputs)
    check_output(samples_record(out_csv), ".json", kind="samples_record", inputs=inputs)


def sample(model, data_dir, out_csv, settings=None, batch_size=500):
    """Caption the images of a split; write image_idx, url, generated, references as CSV,
    and the decoding record (settings and label) beside it (samples_record)."""
    record = S.decode_record(settings or {})
    base = checkpoints.model_base(model)
    _check_samples_outputs(out_csv, inputs=(base.with_suffix(".npz"), base.with_suffix(".json")))
    fmt.check_split(data_dir, record["split"])
    model, meta = checkpoints.load_model(base)
    pca = meta.get("settings", {}).get("pca_features", True)
    data = load_coco_data(data_dir, pca_features=pca)
    if data["word_to_idx"] != model.word_to_idx:
        raise ValueError(f"the vocabulary of {data_dir} differs from the model's ({base}); "
                         "sample with the dataset the model was trained on")
    split, method = record["split"], record["method"]
    refs = metrics.references_by_image(data, split, record["num_images"])
    ids = np.array(list(refs), dtype=np.int64)
    options = {k: record[k] for k in S.METHOD_SETTINGS[method]}
    if method == "temperature":
        options["rng"] = np.random.default_rng(options.pop("seed"))
    captions = []
    batches = range(0, len(ids), batch_size)
    for s in track(batches, len(batches), f"{method} decoding of {len(ids)} {split} images", unit="batches"):
        feats = data[f"{split}_features"][ids[s : s + batch_size]]
        captions.append(model.sample(feats, max_length=record["max_length"], method=method, **options))
    caps = np.concatenate(captions) if captions else np.zeros((0, record["max_length"]), int)
    texts = decode_captions(caps, data["idx_to_word"], strip_special=True)
    urls = fmt.read_urls(data_dir, split)  # as stored: relative to data_dir (sample_image_urls)
    rows = [{"image_idx": int(i), "url": urls[i], "generated": t, "references": REF_SEP.join(refs[int(i)])}
            for i, t in zip(ids, texts)]
    write_csv(out_csv, rows, ["image_idx", "url", "generated", "references"])
    write_json(samples_record(out_csv), {"kind": "samples_record", "model": str(base), "data_dir": str(data_dir),
                                         "decoding": record, "label": S.decode_label(record)})
    return rows


def baseline(data_dir, out_csv, split="val", num_images=None):
    """The most-frequent-training-caption baseline, written like sample()'s output."""
    _check_samples_outputs(out_csv)
    fmt.check_split(data_dir, split)
    data = load_coco_data(data_dir)
    caption = metrics.most_frequent_caption(data)
    refs = metrics.references_by_image(data, split, num_images)
    urls = fmt.read_urls(data_dir, split)  # as stored: relative to data_dir (sample_image_urls)
    rows = [{"image_idx": i, "url": urls[i], "generated": caption, "references": REF_SEP.join(r)}
            for i, r in refs.items()]
    write_csv(out_csv, rows, ["image_idx", "url", "generated", "references"])
    record = {"split": split, "method": "most_frequent_caption", "num_images": num_images}
    write_json(samples_record(out_csv), {"kind": "samples_record", "model": None, "data_dir": str(data_dir),
                                         "decoding": record, "label": "most frequent caption"})
    return caption


def read_samples(samples_csv):
    """{image_idx: (generated, [references])} from a samples CSV; errors name file and row."""
    path = Path(samples_csv)
    if path.is_dir():
        raise ValueError(f"samples file {path} is a directory; give the CSV from 'capmodel sample'")
    if not path.is_file():
        raise ValueError(f"samples file {path} does not exist (make it with 'capmodel sample')")
    try:
        rows = read_csv(path)
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})")
    if not rows:
        raise ValueError(f"{path} has no captions to evaluate")
    for col in ("image_idx", "generated", "references"):
        if col not in rows[0]:
            raise ValueError(f"{path} has no column '{col}' (columns: {', '.join(rows[0])})")
    out = {}
    for n, r in enumerate(rows, start=2):  # row 1 is the header
        try:
            i = int(r["image_idx"])
        except (TypeError, ValueError):
            raise ValueError(f"{path}, row {n}: image_idx must be an integer, got {r['image_idx']!r}")
        if i in out:
            raise ValueError(f"{path}, row {n}: image_idx {i} appears twice")
        if r["generated"] is None or r["references"] is None:
            raise ValueError(f"{path}, row {n}: missing columns")
        refs = r["references"].split(REF_SEP)
        if not all(ref.strip() for ref in refs):
            raise ValueError(f"{path}, row {n}: empty reference caption (references are joined by '{REF_SEP.strip()}')")
        out[i] = (r["generated"], refs)
    return out


def evaluate(samples_csv, out_json, use_java=None, name=None, scores_csv=None):
    """Score a samples CSV with the coco-caption metrics; write them and the decoding
    record of the samples (when present) as JSON, and with scores_csv the per-image
    scores (image_idx, generated, Bleu_4, ROUGE_L, CIDEr) as CSV."""
    record_path = samples_record(samples_csv)
    inputs = (samples_csv, record_path)
    check_output(out_json, ".json", kind="metrics", inputs=inputs)
    if scores_csv is not None:
        check_output(scores_csv, ".csv", inputs=inputs + (out_json,))
    samples = read_samples(samples_csv)
    record = {}
    if record_path.exists():
        record = read_settings_file(record_path, "samples record")
    refs = {i: r for i, (_, r) in samples.items()}
    cands = {i: g for i, (g, _) in samples.items()}
    start = time.perf_counter()
    print(f"scoring the captions of {len(cands)} images ...", file=sys.stderr, flush=True)
    scores = metrics.evaluate_captions(refs, cands, use_java=use_java)
    print(f"scored in {clock(time.perf_counter() - start)}", file=sys.stderr, flush=True)
    per_image = scores.pop("per_image")
    result = {"kind": "metrics", "model": name or Path(samples_csv).parent.name, "samples": str(samples_csv), **scores,
              "settings": record.get("decoding", {}), "decoding": record.get("label", "")}
    if scores_csv is not None:
        names = [m for m in ("Bleu_4", "ROUGE_L", "CIDEr") if any(m in v for v in per_image.values())]
        write_csv(scores_csv, [{"image_idx": i, "generated": cands[i], **{m: f"{v[m]:.6f}" for m in names}}
                               for i, v in per_image.items()], ["image_idx", "generated", *names])
    write_json(out_json, result)
    return result


def summarize(metrics_files, out_csv, out_md, model_files=(), val_files=()):
    """One row per model: its metrics, and from model.json / val.csv (matched by directory)
    the kept epoch, that epoch's validation loss, iterations, parameters and training time."""
    by_dir = lambda files: {Path(f).parent.resolve(): Path(f) for f in files}
    infos, vals = by_dir(model_files), by_dir(val_files)
    rows = []
    for f in metrics_files:
        m = read_settings_file(f, "metrics file")
        if "model" not in m:
            raise ValueError(f"metrics file {f} has no 'model' field; make it with 'capmodel evaluate'")
        row = {"model": m["model"]}
        d = Path(f).parent.resolve()
        if d in infos:
            info = read_settings_file(infos[d], "model file")
            st = info.get("settings", {})
            row.update({"cell_type": st.get("cell_type", ""), "objective": st.get("objective", "xe"),
                        "hidden_dim": st.get("hidden_dim", ""),
                        "params": info.get("num_params", ""), "iterations": info.get("iterations", ""),
                        "train_seconds": info.get("train_seconds_this_run", ""),
                        "best_epoch": info.get("best_epoch", "")})
            if d in vals:
                kept = [r for r in read_csv(vals[d]) if str(r["best"]) == "1"][-1:]  # the last best: kept
                row["val_loss"] = float(kept[0]["val_loss"]) if kept else ""
        row["decoding"] = m.get("decoding", "")
        row.update({k: m[k] for k in metrics.METRIC_NAMES if k in m})
        rows.append(row)
    cols = ["model", "cell_type", "objective", "hidden_dim", "params", "iterations", "train_seconds", "best_epoch",
            "val_loss", "decoding", *metrics.METRIC_NAMES]
    cols = [c for c in cols if any(c in r for r in rows)]
    cell = lambda v: f"{v:.4f}" if isinstance(v, float) else str(v)
    write_csv(out_csv, [{c: cell(r.get(c, "")) for c in cols} for r in rows], cols)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in cols) + " |" for r in rows]
    write_text(out_md, "\n".join(lines) + "\n")
    return rows
