"""A trained model's directory: the files `capmodel train` writes there (OUTPUTS), all
together or none, and which existing files it may replace.

model.json, written last, records the SHA-256 of the other outputs ('outputs'), so a later
run can tell the files capmodel wrote for a model from a user's files of the same names
(check_outputs). write_model writes the outputs through capmodel.safety.staging's
files_together: a failure, such as a full disk, leaves none of them and raises an OSError
naming the file.
"""

from pathlib import Path

from capmodel import checkpoints
from capmodel.app.tables import write_csv
from capmodel.datasets import features as feat
from capmodel.safety.atomic import sha256_of
from capmodel.safety.jsonfile import JSONFileError, read_json
from capmodel.safety.staging import files_together

OUTPUTS = ("history.csv", "val.csv", feat.MODEL_PCA_FILE, feat.MODEL_GRID_PCA_FILE, feat.MODEL_RECORD_FILE, "model.npz",
           "model.json")
MODEL_FILES = ("model.npz", "model.json")  # the model itself; model.json records the SHA-256 of the rest


def check_outputs(out_dir):
    """Refuse an output directory holding a file named as one of OUTPUTS that capmodel did
    not write there for a model. A model.json of kind 'model' vouches for the model.npz of
    its npz_sha256 and the files its 'outputs' record by SHA-256 (a model.json without an
    'outputs' record vouches for every output in its directory); without a model.json (the
    workflow deletes a job's declared outputs before it reruns), an encoder.json that is a
    model's copy of an encoder record vouches for the encoder_pca.h5 of its pca_sha256 and
    the encoder_grid_pca.h5 of its grid_pca_sha256."""
    out_dir = Path(out_dir)
    present = [n for n in OUTPUTS if (out_dir / n).exists() or (out_dir / n).is_symlink()]
    if not present:
        return
    meta = _json_object(out_dir / "model.json")
    ours = meta is not None and meta.get("kind") == "model"
    recorded = {}
    if ours:
        outputs = meta.get("outputs", {name: None for name in OUTPUTS})  # none recorded: the whole directory
        recorded = {"model.json": None, "model.npz": meta.get("npz_sha256"),
                    **(outputs if isinstance(outputs, dict) else {})}
    else:
        record = _json_object(out_dir / feat.MODEL_RECORD_FILE) or {}
        if record.get("pca_file", "") in (None, feat.MODEL_PCA_FILE) and "extractor" in record:
            recorded = {feat.MODEL_RECORD_FILE: None, feat.MODEL_PCA_FILE: record.get("pca_sha256")}
            if record.get("grid_pca_file") == feat.MODEL_GRID_PCA_FILE:
                recorded[feat.MODEL_GRID_PCA_FILE] = record.get("grid_pca_sha256")
    for name in present:
        path = out_dir / name
        if path.is_symlink() or not path.is_file():
            why = "it is not a plain file"
        elif name not in recorded:
            why = "no model.json of capmodel's there records it"
        elif recorded[name] is None or recorded[name] == sha256_of(path):
            continue
        else:
            why = "it changed since"
        raise ValueError(f"--out-dir {out_dir} holds {name}, which capmodel did not write there for a model ({why}); "
                         "capmodel does not overwrite it: move it away or choose another --out-dir")


def _json_object(path):
    """The JSON object in path, or None (missing, unreadable, not an object)."""
    try:
        value = read_json(path)
    except JSONFileError:
        return None
    return value if isinstance(value, dict) else None


class _Writing:
    """Names the output being written: an OSError inside the block (a full disk's names no
    file, or a temporary one) is raised again naming out_dir / name."""

    def __init__(self, out_dir):
        self.out_dir, self.name = Path(out_dir), None

    def __call__(self, name):
        self.name = name
        return self

    def __enter__(self):
        return self

    def __exit__(self, kind, e, tb):
        if isinstance(e, OSError):
            raise OSError(e.errno, f"{e.strerror or e} (training finished, but none of its outputs was written)",
                          str(self.out_dir / self.name)) from e
        return False


def write_model(out_dir, model, solver, record, info):
    """Write a trained model's files (OUTPUTS) into out_dir, all together or none
    (capmodel.safety.staging.files_together): model.json appears last; a failure (a full
    disk) leaves out_dir as it was and raises an OSError naming the file. Output files of
    an earlier model there that this one does not have go (check_outputs has made sure
    they are capmodel's)."""
    out_dir = Path(out_dir)
    with files_together(out_dir / name for name in OUTPUTS) as staged:
        _write_outputs(staged[out_dir / "model.json"].parent, _Writing(out_dir), model, solver, record, info)


def _write_outputs(out_dir, writing, model, solver, record, info):
    """history.csv (one row per iteration, with the objective's statistics), val.csv (one
    row per validation), the encoder record (when the data set has one) and model.npz/.json,
    which holds info, the run's summary and the SHA-256 of the other files ('outputs');
    writing(name) names the file in errors."""
    stat_names = list(solver.stats_history[0]) if solver.stats_history else []
    with writing("history.csv"):
        write_csv(out_dir / "history.csv",
                  [{"iteration": i, "epoch": solver.epoch_of(i), "loss": f"{l:.6f}", "learning_rate": f"{lr:.6g}",
                    **{k: f"{v:.6f}" for k, v in (solver.stats_history[i - 1] if stat_names else {}).items()}}
                   for i, (l, lr) in enumerate(zip(solver.loss_history, solver.lr_history), start=1)],
                  ["iteration", "epoch", "loss", "learning_rate", *stat_names])
    metric = solver.validator.metric
    with writing("val.csv"):
        write_csv(out_dir / "val.csv",
                  [{"epoch": r["epoch"], "iteration": r["iteration"], "val_loss": f"{r['val_loss']:.6f}",
                    "metric": metric or "", "metric_value": f"{r[metric]:.6f}" if metric else "",
                    "best": int(r["best"])} for r in solver.val_history],
                  ["epoch", "iteration", "val_loss", "metric", "metric_value", "best"])
    best = next((r for r in reversed(solver.val_history) if r["best"]), None)
    with writing(feat.MODEL_RECORD_FILE):
        encoder = None if record is None else feat.write_model_record(out_dir, *record)
    outputs = {n: sha256_of(out_dir / n) for n in OUTPUTS if n not in MODEL_FILES and (out_dir / n).exists()}
    with writing("model.npz"):
        _save_model(out_dir, model, solver, info, best, outputs, encoder)


def _save_model(out_dir, model, solver, info, best, outputs, encoder):
    checkpoints.save_model(out_dir / "model", model, extra={
        "settings": info["settings"], "data_dir": info["data_dir"], "data_sha256": info["data_sha256"],
        "outputs": outputs, "iterations": solver.iteration,
        "epochs": solver.epoch, "early_stopped": bool(solver.finished), "best_epoch": best["epoch"] if best else None,
        "best_val_loss": best["val_loss"] if best else None,
        "num_params": int(sum(v.size for v in model.params.values())),
        "final_train_loss": solver.loss_history[-1] if solver.loss_history else None,
        "train_seconds_this_run": info["train_seconds_this_run"], "init_from": info["init_from"],
        "improved_on_start": info["improved_on_start"], "encoder": encoder,
    })
