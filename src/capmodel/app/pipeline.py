"""The workflow's stages as library functions: train, and summarize (the samples files of
sample, baseline and evaluate: capmodel.app.samples).

Each reads files, calls the library and writes its outputs atomically; the CLI
(capmodel.app.cli) only parses arguments and calls these. File layouts are those of the
design: results/models/<model>/{model.npz,model.json,history.csv,val.csv,
encoder.json,encoder_pca.h5,encoder_grid_pca.h5,samples_<split>.csv,samples_<split>.json,
metrics.json,scores_<split>.csv}, results/summary.{csv,md}.
"""

import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

from capmodel import checkpoints, metrics, models
from capmodel.app import memory, model_dir
from capmodel.app import settings as S
from capmodel.app.tables import read_csv, write_csv
from capmodel.captioning_solver import CS231N_KWARGS, EXTRA_KWARGS, CaptioningSolver
from capmodel.cider import CiderD
from capmodel.coco_utils import load_coco_data
from capmodel.datasets import features as feat
from capmodel.datasets import format as fmt
from capmodel.objectives import CrossEntropy
from capmodel.safety import ownership
from capmodel.safety.atomic import check_writable, sha256_of, write_text
from capmodel.safety.jsonfile import read_json
from capmodel.scst import SelfCritical
from capmodel.validation import Validator


def solver_keys():
    """The training settings that are CaptioningSolver keyword arguments (validation aside;
    the objective setting names the objective train() builds for the solver)."""
    return tuple(s.name for s in S.train_settings()
                 if s.name in CS231N_KWARGS + EXTRA_KWARGS and not s.name.startswith("val_") and s.name != "objective")


def scst_objective(data, s):
    """The self-critical objective of settings s, rewarded by CIDEr-D against the
    training captions of data."""
    scorer = CiderD.from_captions(data["train_captions"], data["train_image_idxs"], data["word_to_idx"])
    return SelfCritical(scorer, samples=s["scst_samples"], baseline=s["scst_baseline"],
                        max_length=data["train_captions"].shape[1] - 1)


# The objective each value of the `objective` setting builds, from the data and the settings.
OBJECTIVES = {"xe": lambda data, s: CrossEntropy(), "scst": scst_objective}


def resolve_start(init_from, out_dir):
    """The checkpoint base of the --init-from model (None without one), refused when
    training would overwrite it."""
    if init_from is None:
        return None
    try:
        base = checkpoints.model_base(init_from)
    except checkpoints.CheckpointError as e:
        raise ValueError(f"--init-from {init_from}: {e}") from e
    if base.with_suffix(".npz").resolve() == (Path(out_dir) / "model.npz").resolve():
        raise ValueError(f"--out-dir {out_dir} holds the --init-from model, which training would overwrite; "
                         "choose another --out-dir")
    return base


def load_start(model, start, init_from, encoder):
    """Set model's parameters to those of the trained model at start (resolve_start's
    base of init_from, which errors name); the two must be of the same family, sizes and
    vocabulary, the start trained on features of the same encoder (its model.json's
    'encoder' equal to encoder, the identity of the data set's record, when it records
    one), and its parameters finite. Returns the SHA-256 of the start's parameter file."""
    try:
        given_model, meta = checkpoints.load_model(start)
    except checkpoints.CheckpointError as e:
        raise ValueError(f"--init-from {init_from}: {e}") from e
    if "encoder" in meta and meta["encoder"] != encoder:
        theirs = meta["encoder"] or {}
        differ = sorted(k for k in set(theirs) | set(encoder or {}) if theirs.get(k) != (encoder or {}).get(k))
        shown = ", ".join(f"{k} {theirs.get(k)!r} (the data set's: {(encoder or {}).get(k)!r})" for k in differ)
        raise ValueError(f"--init-from {init_from}: the model was trained on other features than the data set's "
                         f"({shown}); fine-tune on features of the encoder it was trained on")
    built, given = model.describe(), given_model.describe()
    differ = sorted(k for k in set(built) | set(given) if k not in ("dtype", "dropout") and built.get(k) != given.get(k))
    if built.get("cell_type") != given.get("cell_type"):
        differ = ["cell_type"]  # another family: its other keys say nothing more
    if differ:
        shown = ", ".join(f"{k} {given.get(k)!r} (settings: {built.get(k)!r})" if k != "word_to_idx"
                          else "vocabulary (another data set's)" for k in differ)
        if differ == ["num_regions"] and None in (given.get("num_regions"), built.get("num_regions")):
            # both attend; one knows the regions' places, the other not
            shown += f" (region_positions {'true' if given.get('num_regions') else 'false'} matches the model)"
        elif differ == ["num_regions"]:  # both know places, of grids of different sizes
            shown += " (the model learned the places of another grid: fine-tune on a data set of its grid)"
        raise ValueError(f"--init-from {init_from}: the model does not match the training settings: {shown}")
    for k in sorted(model.params):
        bad = np.count_nonzero(~np.isfinite(given_model.params[k]))
        if bad:
            raise ValueError(f"--init-from {init_from}: parameter {k} has {bad} non-finite values (NaN or inf); "
                             "start from a sound model")
        model.params[k] = given_model.params[k].astype(model.dtype)
    return sha256_of(start.with_suffix(".npz"))


def uses_regions(settings):
    """Whether the model of checked training settings attends over image regions (its
    uses_regions), known before the data set is read, so that the regions are read only then."""
    return settings["attention"] != "none"


def check_grid(data_dir, needed_by, num_regions=None):
    """Refuse, before reading it, a data set without the grid of regions that an attention
    model needs (needed_by names it: "a model with --attention soft", "model M"): one line naming the data
    set, the missing file and how to make one. With num_regions L (a model that learned the
    places of its grid), also one whose grid has another number of regions, naming both."""
    base = Path(data_dir)
    if not base.is_dir():
        return  # the data set's own check names it
    for split in fmt.splits_of(base):
        if not (base / fmt.grid_file(split)).exists():
            raise ValueError(f"--data {data_dir}: {needed_by} attends over image regions, but the data set has no "
                             f"{fmt.grid_file(split)}; make the data set with a grid (--grid G of capmodel data "
                             "shapes, data from-folder or data features)")
    if num_regions is None:
        return
    for split, (shape, _) in fmt.grid_layouts(base).items():  # an unreadable one: the data set's check names it
        if len(shape) == 3 and shape[1] != num_regions:
            raise ValueError(f"--data {data_dir}: its {fmt.grid_file(split)} has a grid of {_grid(shape[1])}, "
                             f"but {needed_by} learned the places of a grid of {_grid(num_regions)} "
                             "(region_positions); use a data set made with the model's grid")


def _grid(L):
    """L regions as a reader says them: '16 regions (4 x 4)' for a square grid."""
    side = round(L ** 0.5)
    return f"{L} regions ({side} x {side})" if side * side == L else f"{L} regions"


def read_settings_file(path, what="settings file"):
    """A JSON object of settings from path (as the workflow writes them), named in errors."""
    path = Path(path)
    values = read_json(path, what)
    if not isinstance(values, dict):
        raise ValueError(f"{what} {path} must hold a JSON object of setting -> value")
    return values


def data_sha256(data):
    """SHA-256 of what a data dict holds (every array, its dtype and shape, the vocabulary and
    stored references; the image locations aside): the data set's identity by content, the
    same wherever the data set lies, and another after the data set is made again in place."""
    h = hashlib.sha256()
    for key in sorted(k for k in data if not k.endswith("_urls")):
        value = data[key]
        h.update(f"{key}\0".encode())
        if isinstance(value, np.ndarray) and value.dtype != object:
            h.update(f"{value.dtype.str}{value.shape}\0".encode())
            h.update(np.ascontiguousarray(value).data)
        else:
            h.update(json.dumps(value, sort_keys=True, default=str).encode())
    return h.hexdigest()


def run_fingerprint(data, s, start_sha):
    """What a resumed run must share with the checkpoints' run: the data (by content:
    {'sha256': data_sha256, 'encoder': the record's identity}), the settings that matter (a
    cross-entropy run's does not include the unused self-critical settings, nor a run's
    region_positions unless it gives the regions their places, so that a run checkpointed
    before the setting existed resumes) and the start model."""
    unused = ("objective", "scst_samples", "scst_baseline") if s["objective"] == "xe" else ()
    if s["attention"] == "none" or not s["region_positions"]:
        unused += ("region_positions",)
    record = {"data": data, "settings": {k: v for k, v in s.items() if k not in unused}}
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
    settings, the output and checkpoint locations (files in out_dir named as outputs are
    replaced only if capmodel wrote them there for a model: model_dir.check_outputs), the
    data set (consistent, finite, a usable val split), the memory a training step needs
    (capmodel.app.memory) and the metrics toolkit when a val_metric is asked for. With a
    checkpoint_dir the run resumes from the newest valid checkpoint there; that directory
    must have been made by capmodel with the same settings and data set, known by its
    content (data_sha256; with restart_on_change, the checkpoints of another run are
    removed and training starts over). It is removed after success (only capmodel's own
    files) unless keep_checkpoints (a bool; then only the temporary files of killed writes
    go). With init_from (a trained model of the same encoder's features) training starts
    from its weights, validated first as epoch 0 and kept when no epoch beats it (said in
    one line, and in model.json's improved_on_start); objective "scst" needs one. The
    outputs appear together or not at all (capmodel.app.model_dir.write_model).
    """
    s = S.check_train(settings)
    if s["objective"] == "scst" and init_from is None:
        raise ValueError("objective scst fine-tunes a trained model: give it with --init-from MODEL")
    out_dir = Path(out_dir)
    check_writable(out_dir, "output directory", directory=True)
    model_dir.check_outputs(out_dir)
    start = resolve_start(init_from, out_dir)
    memory.check_max_train(s["max_train"])
    if verbose:
        print(f"BLAS threads: {blas_threads()}", flush=True)
    ckpt = None
    if checkpoint_dir is not None:
        ckpt = checkpoints.CheckpointDir(checkpoint_dir)
        ownership.check_owned(ckpt.path, "checkpoints", "checkpoint directory")
    attends = uses_regions(s)
    if attends:
        check_grid(data_dir, f"a model with --attention {s['attention']}")
        memory.check_regions(data_dir)
    data = load_coco_data(data_dir, max_train=s["max_train"], pca_features=s["pca_features"], rng=s["seed"],
                          regions=attends)
    record = feat.snapshot_record(data_dir)  # the encoder the model's features came from, kept beside it
    encoder = None if record is None else feat.identity(record[0])
    L, C = data["train_regions"].shape[1:] if attends else (None, None)
    model = models.build(data["word_to_idx"], data["train_features"].shape[1], s, region_dim=C, num_regions=L)
    start_sha = None if start is None else load_start(model, start, init_from, encoder)
    objective = OBJECTIVES[s["objective"]](data, s)
    memory.check_training(model, data, s, objective)
    validator = Validator(data, metric=s["val_metric"], val_size=s["val_size"], metric_images=s["val_metric_images"])
    data_id = {"sha256": data_sha256(data), "encoder": encoder}
    if ckpt is not None:
        ckpt.claim(run_fingerprint(data_id, s, start_sha), restart=restart_on_change,
                   warn=print if verbose else lambda _: None)
    solver_kwargs = {k: s[k] for k in solver_keys() if s[k] is not None}
    progress = verbose and sys.stderr.isatty()  # a bar in a terminal, timed lines in a log
    solver = CaptioningSolver(model, data, optim_config={"learning_rate": s["learning_rate"]}, objective=objective,
                              validate=validator, validate_start=start is not None, verbose=verbose,
                              progress=progress, checkpoint_dir=ckpt, **solver_kwargs)
    began = time.perf_counter()
    solver.train()
    seconds = time.perf_counter() - began
    improved = None if start is None else not solver.start_kept()
    if improved is False and verbose:
        first = solver.val_history[0]
        name = solver.validator.metric or "val_loss"
        print(f"no epoch beat the start (validation {name} {first[name]:.4f} at epoch 0): the model written is "
              f"the --init-from model {init_from}, unchanged", flush=True)
    model_dir.write_model(out_dir, model, solver, record, {
        "settings": s, "data_dir": str(data_dir), "data_sha256": data_id["sha256"],
        "train_seconds_this_run": round(seconds, 3),
        "init_from": None if start is None else {"path": str(init_from), "sha256": start_sha},
        "improved_on_start": improved,
    })
    if ckpt is not None and keep_checkpoints:
        ckpt.remove_temporary()  # a killed run's half-written files are of no use
    elif ckpt is not None:
        ckpt.remove()
    return model, solver


def blas_threads():
    """Threads NumPy's BLAS will use (so a job can show it uses what it asked for)."""
    from threadpoolctl import threadpool_info

    counts = [p["num_threads"] for p in threadpool_info() if p.get("user_api") == "blas"]
    return max(counts) if counts else 1




def summarize(metrics_files, out_csv, out_md, model_files=(), val_files=()):
    """One row per model: its metrics, and from model.json / val.csv (matched by directory)
    its cell type, attention (none for a model of before attention) and objective, the kept
    epoch, that epoch's validation loss, iterations, parameters and training time."""
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
            row.update({"cell_type": st.get("cell_type", ""), "attention": st.get("attention", "none"),
                        "objective": st.get("objective", "xe"),
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
    cols = ["model", "cell_type", "attention", "objective", "hidden_dim", "params", "iterations", "train_seconds",
            "best_epoch", "val_loss", "decoding", *metrics.METRIC_NAMES]
    cols = [c for c in cols if any(c in r for r in rows)]
    cell = lambda v: f"{v:.4f}" if isinstance(v, float) else str(v)
    write_csv(out_csv, [{c: cell(r.get(c, "")) for c in cols} for r in rows], cols)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in cols) + " |" for r in rows]
    write_text(out_md, "\n".join(lines) + "\n")
    return rows
