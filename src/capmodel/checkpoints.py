"""Checkpoints as plain data: arrays in an .npz file, everything else in a JSON file.

A checkpoint ``NAME`` is the pair ``NAME.npz`` + ``NAME.json``. Both are written
atomically, the .npz first; the JSON records the SHA-256 of the .npz, so a pair torn by a
crash, a truncated file or a corrupt one is detected on load. Nothing is pickled: arrays
load with ``allow_pickle=False``.
"""

import re
import zipfile
from pathlib import Path

import numpy as np

from capmodel import models
from capmodel.safety import ownership
from capmodel.safety.atomic import atomic_path, sha256_of, write_json
from capmodel.safety.jsonfile import JSONFileError, as_read_back, read_json

FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, or does not fit the model."""


def save(base, arrays, meta):
    """Write base.npz (arrays, a dict of name -> ndarray) and base.json (meta, a JSON-able dict)."""
    base = Path(base)
    with atomic_path(base.with_suffix(".npz"), suffix=".npz") as tmp:
        np.savez(tmp, **arrays)
    meta = dict(meta, format_version=FORMAT_VERSION, npz_sha256=sha256_of(base.with_suffix(".npz")))
    write_json(base.with_suffix(".json"), meta)


def load(base):
    """Read a checkpoint pair; return (arrays, meta) or raise CheckpointError naming the file."""
    base = Path(base)
    npz, js = base.with_suffix(".npz"), base.with_suffix(".json")
    for f in (npz, js):
        if not f.exists():
            raise CheckpointError(f"checkpoint file {f} does not exist")
    try:
        meta = read_json(js, "checkpoint metadata")
    except JSONFileError as e:
        raise CheckpointError(f"{e}; the file is corrupt or truncated") from None
    if not isinstance(meta, dict) or "npz_sha256" not in meta:
        raise CheckpointError(f"checkpoint metadata {js} has no npz_sha256 field; not a capmodel checkpoint")
    if sha256_of(npz) != meta["npz_sha256"]:
        raise CheckpointError(f"checkpoint arrays {npz} do not match the checksum in {js}: corrupt, truncated or torn write")
    try:
        with np.load(npz, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, ValueError, OSError) as e:
        raise CheckpointError(f"cannot read checkpoint arrays {npz}: {e}")
    return arrays, meta


# -------------------------------------------------------- checkpoint dirs


class CheckpointDir:
    """A directory of resumable training checkpoints ckpt-<iteration>.{npz,json}.

    capmodel owns it (capmodel.safety.ownership): claim() creates it with the ownership marker,
    or takes an empty or already-owned one, and refuses any other directory; remove()
    deletes only the files it wrote there (is_ours), then the directory if capmodel created it and
    nothing else is left. A fingerprint (the run's settings and data) is recorded on the
    first claim and compared on every later one, so a resume never mixes two runs.
    """

    # ours: checkpoints, the fingerprint, and temporary files a killed write left behind
    NAME = re.compile(r"ckpt-\d{9}")
    TEMPORARY = re.compile(r"\.(ckpt-\d{9}\.(npz|json)|run_config\.json)\.\w+\.tmp(\.npz)?")

    def __init__(self, path, keep=2):
        if int(keep) < 1:
            raise ValueError(f"a checkpoint directory keeps at least 1 checkpoint, got keep={keep}")
        self.path = Path(path)
        self.keep = int(keep)  # checkpoints kept while training; older ones are pruned
        self.claimed = False

    def claim(self, fingerprint=None, restart=False, warn=print):
        """Create or take the directory; with a fingerprint, refuse one of another run, or
        with restart remove that run's checkpoints (capmodel's own files) and start over."""
        ownership.claim(self.path, "checkpoints", "checkpoint directory")
        self.claimed = True
        if fingerprint is None:
            return
        record = as_read_back(fingerprint)
        path = self.path / "run_config.json"
        if not path.exists():
            write_json(path, record)
            return
        try:
            old = read_json(path, "run fingerprint")
        except JSONFileError as e:
            raise CheckpointError(f"{e}; delete {self.path} to start over") from None
        if old != record:
            changed = sorted(k for k in set(old) | set(record) if k != "settings" and old.get(k) != record.get(k))
            old_s, new_s = old.get("settings", {}), record.get("settings", {})
            changed += sorted(k for k in set(old_s) | set(new_s) if old_s.get(k) != new_s.get(k))
            if restart:
                warn(f"the checkpoints in {self.path} are of a run with other settings ({', '.join(changed)} "
                     "differ): starting over")
                self.remove()
                ownership.claim(self.path, "checkpoints", "checkpoint directory")
                write_json(path, record)
                return
            raise CheckpointError(
                f"checkpoint directory {self.path} belongs to a run with other settings "
                f"({', '.join(changed)} differ); delete it to start over or use another directory"
            )

    def save(self, iteration, arrays, meta):
        """Write checkpoint ckpt-<iteration>, then prune all but the newest `keep`; an
        OSError (a full disk) names the checkpoint."""
        base = self.path / f"ckpt-{iteration:09d}"
        try:
            save(base, arrays, meta)
        except OSError as e:
            if getattr(e, "filename", None) and Path(e.filename).parent == self.path:
                raise
            raise OSError(e.errno, e.strerror or str(e), str(base.with_suffix(".npz"))) from e
        for js in self._checkpoints()[: -self.keep]:
            ownership.remove_files(self.path, "checkpoints", [js.with_suffix(".npz"), js])

    def _checkpoints(self):
        """The checkpoint JSON files, oldest first (by their iteration in the name)."""
        return sorted(p for p in self.path.glob("ckpt-*.json") if self.NAME.fullmatch(p.stem))

    def newest(self, warn=print):
        """(arrays, meta, path) of the newest valid checkpoint, or None; corrupt ones are skipped."""
        for js in reversed(self._checkpoints()):
            try:
                arrays, meta = load(js.with_suffix(""))
            except CheckpointError as e:
                warn(f"warning: skipping unusable checkpoint: {e}")
                continue
            return arrays, meta, js.with_suffix(".npz")
        return None

    def is_ours(self, f):
        """A file capmodel wrote here: a checkpoint pair (the JSON must say so), the
        fingerprint, or a temporary file of an interrupted write."""
        if self.TEMPORARY.fullmatch(f.name):
            return True
        if f.name == "run_config.json":
            return True
        if f.suffix == ".npz" and self.NAME.fullmatch(f.stem):
            return True
        if f.suffix == ".json" and self.NAME.fullmatch(f.stem):
            try:
                meta = read_json(f)
            except JSONFileError:
                return False
            return isinstance(meta, dict) and meta.get("kind") == "training_state"
        return False

    def remove_temporary(self):
        """Delete the temporary files that writes killed halfway left here (TEMPORARY)."""
        ownership.remove_files(self.path, "checkpoints",
                               [f for f in self.path.iterdir() if self.TEMPORARY.fullmatch(f.name)])

    def remove(self):
        """Delete the checkpoints (only capmodel's own files); True if the directory went too."""
        return ownership.remove_owned(self.path, "checkpoints", self.is_ours)


# ------------------------------------------------------------------ models


def check_model_fits(model, meta, arrays, where):
    """Raise CheckpointError unless the checkpoint's vocabulary and shapes match the model."""
    saved_vocab = meta.get("model", {}).get("word_to_idx")
    V = len(model.word_to_idx)
    if saved_vocab != model.word_to_idx:
        n = 0 if saved_vocab is None else len(saved_vocab)
        raise CheckpointError(
            f"vocabulary mismatch: checkpoint {where} has {n} words, the model {V}"
            + ("" if n != V else " (same size, different words)")
        )
    for name, value in model.params.items():
        key = f"params/{name}"
        if key not in arrays:
            raise CheckpointError(f"checkpoint {where} has no parameter {name}")
        if arrays[key].shape != value.shape:
            raise CheckpointError(
                f"shape mismatch for parameter {name}: checkpoint {where} has {arrays[key].shape}, model has {value.shape}"
            )


def model_base(path):
    """The checkpoint base (model.npz + model.json without extension) for a model path.

    Accepts the model directory, model.npz, model.json or the base path itself; raises
    CheckpointError naming the missing file.
    """
    path = Path(path)
    if path.suffix not in ("", ".npz", ".json") and not path.is_dir():
        raise CheckpointError(f"{path} is not a model file: give the model directory, model.npz, model.json "
                              "or their base path")
    base = path / "model" if path.is_dir() else path.with_suffix("") if path.suffix in (".npz", ".json") else path
    for f in (base.with_suffix(".npz"), base.with_suffix(".json")):
        if not f.is_file():
            raise CheckpointError(
                f"model file {f} does not exist (give the model directory, model.npz, model.json or their base path)")
    return base


def save_model(base, model, extra=None):
    """Save a trained model as base.npz (params) + base.json (config and vocabulary)."""
    arrays = {f"params/{k}": v for k, v in model.params.items()}
    save(base, arrays, {"kind": "model", "model": model.describe(), **(extra or {})})


def load_model(base):
    """Rebuild a model (any registered family) from save_model's files; returns (model, meta)."""
    arrays, meta = load(base)
    where = Path(base).with_suffix(".json")
    m = meta.get("model")
    if not isinstance(m, dict) or not m:
        raise CheckpointError(f"{where} does not describe a model (no 'model' object)")
    try:
        model = models.from_description(m)
    except KeyError as e:
        raise CheckpointError(f"{where}: the model description has no key {e}")
    except (TypeError, ValueError, OverflowError) as e:
        raise CheckpointError(f"{where}: the model description is invalid ({e})")
    check_model_fits(model, meta, arrays, Path(base).with_suffix(".npz"))
    for k in model.params:
        model.params[k] = arrays[f"params/{k}"].astype(model.dtype)
    return model, meta
