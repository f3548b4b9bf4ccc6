"""The feature extractor record of a dataset, and PCA.

Features come from an image encoder (capmodel.encoders): by default capmodel's fixed
random-conv network (capmodel.encoders.randconv, 2328-d), or a pretrained CNN. Like
CS231n, a 512-d PCA fitted on train is applied to val.

A dataset made by capmodel records its encoder beside its files (RECORD_FILE, a JSON
object, plus PCA_FILE, an HDF5 file with the fitted PCA `mean` (F,) and `components`
(F, K)), so that features of new images can be computed later exactly as the dataset's
were (see write_record / read_record). A model trained on the dataset keeps a copy of
both (MODEL_RECORD_FILE, MODEL_PCA_FILE: snapshot_record / write_model_record), so that it
captions new images without its dataset. Datasets without the record, such as CS231n's
COCO files (VGG-16 fc7), have features capmodel cannot compute.

A dataset with a grid of region features (capmodel.datasets.format.grid_file) records its
side G and, when the regions were projected, the grid PCA fitted on the train regions (every
region a row: GRID_PCA_FILE, `mean` (C,) and `components` (C, K)); a model's copy holds it
too (MODEL_GRID_PCA_FILE), so that it computes the regions of new images
(project_regions).

Dimension letters: N images, S image side, C channels, F feature dimension, K PCA
components (K <= P, the format's PCA width; columns K..P are zero padding), L regions.
"""

import hashlib
import io
import json
from pathlib import Path

import h5py
import numpy as np

from capmodel.datasets import format as fmt
from capmodel.encoders import randconv
from capmodel.safety.atomic import atomic_path, sha256_of, write_text
from capmodel.safety.jsonfile import read_json


def extract(images, batch_size=256, grid=None):
    """Features of uint8 images (N, S, S, 3) by the default encoder -> float32 (N, 2328); with
    grid=G a tuple (features, regions float32 (N, G * G, 128)) (randconv.extract)."""
    return randconv.extract(images, batch_size=batch_size, grid=grid)


def fit_pca(features, dim=512):
    """Fit a PCA on (N, F) features; returns (mean (F,), components (F, K)).

    K is dim, or N if there are fewer images. With fewer images than features, the
    components past the directions the train features vary in (at most N - 1) are zero
    columns: the covariance's eigenvectors there would be an arbitrary basis of its null
    space. Component signs are fixed (largest entry positive) so the result is deterministic.
    """
    return fit_pca_blocks(lambda: iter([features]), len(features), features.shape[1], dim)


def fit_pca_blocks(blocks, num_rows, width, dim=512):
    """fit_pca over features read a block of rows at a time, for more rows than memory holds.

    Inputs:
    - blocks: Function returning an iterator over the (N, F) features as row blocks; it is
      called twice (mean, then covariance), or once when N < F
    - num_rows, width: N and F
    - dim: As fit_pca

    Returns fit_pca's (mean, components); with one block, the same numbers as fit_pca.
    """
    if num_rows >= width:
        mean = sum(b.astype(np.float64).sum(axis=0) for b in blocks()) / num_rows
        cov = np.zeros((width, width))
        for b in blocks():
            # two equal operands, not xc.T @ xc: numpy would take BLAS's syrk, whose
            # rounding differs from earlier capmodel releases' data sets
            cov += (b.astype(np.float64) - mean).T @ (b.astype(np.float64) - mean)
        vals, vecs = np.linalg.eigh(cov / max(num_rows - 1, 1))
        comps = vecs[:, ::-1][:, :dim]
    else:
        # The same components from the (N, N) Gram matrix: eigh of the (F, F) covariance
        # takes seconds for F = 2328, whatever N. N < F rows fit in memory.
        x = np.concatenate(list(blocks())).astype(np.float64)
        mean = x.mean(axis=0)
        xc = x - mean  # (N, F)
        vals, u = np.linalg.eigh(xc @ xc.T)  # (N,), (N, N)
        vals, u = vals[::-1][:dim], u[:, ::-1][:, :dim]
        varies = vals > vals[0] * max(x.shape) * np.finfo(np.float64).eps
        comps = np.zeros((x.shape[1], len(vals)))
        comps[:, varies] = xc.T @ u[:, varies] / np.sqrt(vals[varies])
    signs = np.sign(comps[np.abs(comps).argmax(axis=0), np.arange(comps.shape[1])])
    return mean, comps * signs


def fit_grid_transform(blocks, num_rows, width, dim=None):
    """The transform of a grid's regions, fitted on the train regions (every region a row):
    the grid PCA to dim components (None: no PCA, the encoder's channels), then every
    channel standardised to zero mean and unit variance over the train regions.

    Attention models read regions beside the global features: raw CNN channels are on
    scales of their own (the random-conv regions' channels have standard deviations from
    0.003 to 0.1, a region's norm is a quarter of a global feature's), which the attention
    scores and the context then barely feel; standardised, every channel counts from the
    first step.

    Inputs:
    - blocks: Function returning an iterator over the (n, C) train regions as row blocks
      (called up to three times)
    - num_rows, width: Number of rows and channels C
    - dim: Components K of the PCA, or None

    Returns (mean (C,), components (C, K)) for grid_project / apply_pca: (x - mean) @
    components has zero mean and unit variance per column over the train regions (a
    column that does not vary there is zero). Without PCA, components is diagonal (K = C).
    """
    if dim is None:
        mean = sum(b.astype(np.float64).sum(axis=0) for b in blocks()) / num_rows
        components = np.eye(width)
    else:
        mean, components = fit_pca_blocks(blocks, num_rows, width, dim)
    sq = sum((((b.astype(np.float64) - mean) @ components) ** 2).sum(axis=0) for b in blocks())
    std = np.sqrt(sq / max(num_rows - 1, 1))
    varies = std > std.max(initial=0) * 1e-6
    scale = np.zeros_like(std)
    scale[varies] = 1 / std[varies]
    return mean, components * scale


def apply_pca(features, mean, components):
    """Project (N, F) features onto the fitted components -> float32 (N, dim)."""
    return ((features.astype(np.float64) - mean) @ components).astype(np.float32)


def grid_project(regions, mean=None, components=None):
    """Regions as a grid file holds them: rounded to float16, as extraction stores them, then
    projected onto the grid PCA (mean (C,), components (C, K)) unless mean is None.

    Inputs:
    - regions: (N, L, C) regions of an encoder
    - mean, components: The grid PCA (fit_pca on the train regions, one row per region), or None

    Returns float16 (N, L, K), or (N, L, C) without PCA.
    """
    regions = np.asarray(regions).astype(fmt.GRID_DTYPE)
    if mean is None:
        return regions
    N, L, C = regions.shape
    return apply_pca(regions.reshape(N * L, C), mean, components).reshape(N, L, -1).astype(fmt.GRID_DTYPE)


def pca_project(features, mean, components, dim):
    """apply_pca, then zero-pad to dim columns (a PCA fitted on fewer than dim images has fewer).

    Inputs:
    - features: (N, F) fc7 features
    - mean, components: from fit_pca, of shapes (F,) and (F, K) with K <= dim
    - dim: Output width P (the format's PCA_DIM)

    Returns float32 (N, P).
    """
    out = apply_pca(features, mean, components)
    return np.pad(out, ((0, 0), (0, dim - out.shape[1])))


# ---------------------------------------------------------------- the record

EXTRACTOR_NAME = randconv.EXTRACTOR_NAME  # extract()'s identity
PREPROCESS = randconv.PREPROCESS  # how an image file becomes (S, S, 3): capmodel.datasets.folder
RECORD_FILE = "feature_extractor.json"
PCA_FILE = "feature_extractor_pca.h5"
GRID_PCA_FILE = "feature_extractor_grid_pca.h5"
GRID_KEYS = ("grid", "grid_dim", "grid_pca_components", "grid_pca_file", "grid_pca_sha256")


def _write_pca(path, mean, components):
    with h5py.File(path, "w", track_order=False, libver="earliest") as f:
        f.create_dataset("mean", data=np.asarray(mean, dtype=np.float64), track_times=False)
        f.create_dataset("components", data=np.asarray(components, dtype=np.float64), track_times=False)


def write_record(out_dir, image_size, mean, components, pca_dim, created_by, encoder=None, grid=None,
                 grid_mean=None, grid_components=None):
    """Record the extractor and the fitted PCA in a dataset directory (RECORD_FILE + PCA_FILE).

    Inputs:
    - out_dir: The dataset directory (usually write_dataset's temporary one)
    - image_size: Side S the images were resized to before extract()
    - mean, components: The PCA fitted on the train features, (F,) and (F, K); both None
      for no PCA (`--pca none`: the PCA feature files hold the features themselves)
    - pca_dim: Width P of the dataset's PCA features (K columns, then zeros)
    - created_by: The capmodel command that made the dataset (ownership itself is
      capmodel.safety.ownership's marker)
    - encoder: The capmodel.encoders encoder that computed the features (None: randconv
      at image_size); its record_fields() are recorded
    - grid: Side G of the dataset's grid of regions, or None for a dataset without one (its
      record has no grid keys)
    - grid_mean, grid_components: The grid's transform (fit_grid_transform: PCA and
      standardisation), (C,) and (C, K); both None when the grid files hold the encoder's
      regions as they are (data sets made before the standardisation)
    """
    out_dir = Path(out_dir)
    fields = (encoder.record_fields() if encoder is not None else
              {"extractor": EXTRACTOR_NAME, "preprocess": PREPROCESS, "image_size": int(image_size)})
    if mean is None:
        feature_dim = encoder.feature_dim if encoder is not None else randconv.FEATURE_DIM
        pca = {"feature_dim": int(feature_dim), "pca_components": 0, "pca_dim": int(pca_dim), "pca_file": None,
               "pca_sha256": None}
    else:
        _write_pca(out_dir / PCA_FILE, mean, components)
        pca = {"feature_dim": int(components.shape[0]), "pca_components": int(components.shape[1]),
               "pca_dim": int(pca_dim), "pca_file": PCA_FILE, "pca_sha256": sha256_of(out_dir / PCA_FILE)}
    if grid is not None:
        grid_dim = encoder.grid_dim if encoder is not None else randconv.GRID_DIM
        pca["grid"], pca["grid_dim"] = int(grid), int(grid_dim)
        if grid_mean is None:
            pca.update({"grid_pca_components": 0, "grid_pca_file": None, "grid_pca_sha256": None})
        else:
            _write_pca(out_dir / GRID_PCA_FILE, grid_mean, grid_components)
            pca.update({"grid_pca_components": int(grid_components.shape[1]), "grid_pca_file": GRID_PCA_FILE,
                        "grid_pca_sha256": sha256_of(out_dir / GRID_PCA_FILE)})
    record = {**fields, **pca, "created_by": created_by}
    (out_dir / RECORD_FILE).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")


def read_record(data_dir):
    """The extractor record of a dataset directory, with its PCA arrays; None if there is none.

    Returns a dict with the JSON fields plus 'mean' (F,) and 'components' (F, K) (both
    None for a dataset made without PCA), and 'grid_mean' (C,) and 'grid_components' (C, K)
    (both None without a grid PCA; 'grid' is None for a dataset without a grid). Raises
    ValueError naming the file when the record is malformed or a PCA file is missing or
    altered; whether capmodel has the extractor is capmodel.encoders.registry.get_encoder_for_record's
    check.
    """
    path = Path(data_dir) / RECORD_FILE
    return load_record(path) if path.is_file() else None


def load_record(path):
    """read_record of a record file at any path (its PCA file is beside it), which must exist."""
    path = Path(path)
    record = _record_fields(path)
    record.setdefault("grid", None)
    for prefix, grid in (("", False), ("grid_", True)):
        record[f"{prefix}mean"] = record[f"{prefix}components"] = None
        if record.get(f"{prefix}pca_file") is not None:
            with h5py.File(io.BytesIO(_checked_pca_bytes(path, record, grid)), "r") as f:
                record[f"{prefix}mean"], record[f"{prefix}components"] = (np.asarray(f["mean"]),
                                                                          np.asarray(f["components"]))
    return record


def _record_fields(path):
    """The JSON fields of the record file at path, with the keys every record has."""
    record = read_json(path, "encoder record")
    keys = ("extractor", "preprocess", "image_size", "feature_dim", "pca_dim", "pca_file", "pca_sha256")
    missing = [k for k in keys if not isinstance(record, dict) or k not in record]
    if not missing and record.get("grid") is not None:
        missing = [k for k in GRID_KEYS if k not in record]
    if missing:
        raise ValueError(f"{path}: missing key(s) {', '.join(missing)}")
    return record


def _checked_pca_bytes(path, record, grid=False):
    """The bytes of the PCA file (grid: the grid PCA file) the record at path names, checked
    against its pca_sha256 (grid_pca_sha256) (read once: what is checked is what is used)."""
    prefix = "grid_" if grid else ""
    pca_path = path.parent / record[f"{prefix}pca_file"]
    if not pca_path.is_file():
        raise ValueError(f"{pca_path}: missing file (the {'grid ' if grid else ''}PCA that {path} refers to)")
    data = pca_path.read_bytes()
    if hashlib.sha256(data).hexdigest() != record[f"{prefix}pca_sha256"]:
        raise ValueError(f"{pca_path}: does not match the checksum in {path}; the file was altered")
    return data


# ------------------------------------------------- a model's copy of the record

# A trained model keeps a copy of its data set's record beside model.npz/model.json, so that
# `capmodel caption` needs nothing of the data set; its model.json records identity().
MODEL_RECORD_FILE = "encoder.json"
MODEL_PCA_FILE = "encoder_pca.h5"
MODEL_GRID_PCA_FILE = "encoder_grid_pca.h5"
IDENTITY_KEYS = ("extractor", "preprocess", "image_size", "weights", "weights_sha256", "pca_sha256")
GRID_IDENTITY_KEYS = ("grid", "grid_pca_sha256")  # part of the identity of a record with a grid


def snapshot_record(data_dir):
    """A data set's record as (JSON fields, the PCA file's bytes or None without PCA, the grid
    PCA file's bytes or None without one); None if the data set has no record.

    The bytes are checked against the record's pca_sha256 and grid_pca_sha256. Training takes
    the snapshot when it starts and writes it beside the model when it ends
    (write_model_record), so a data set made again in the meantime cannot give the model a PCA
    its features did not come from.
    """
    path = Path(data_dir) / RECORD_FILE
    if not path.is_file():
        return None
    fields = _record_fields(path)
    pca = None if fields["pca_file"] is None else _checked_pca_bytes(path, fields)
    grid_pca = None if fields.get("grid_pca_file") is None else _checked_pca_bytes(path, fields, grid=True)
    return fields, pca, grid_pca


def write_model_record(model_dir, fields, pca_bytes, grid_pca_bytes=None):
    """Atomically write a snapshot_record() into a model directory as MODEL_RECORD_FILE (the
    fields, pca_file and grid_pca_file renamed), MODEL_PCA_FILE and MODEL_GRID_PCA_FILE (the
    same bytes, so pca_sha256 and grid_pca_sha256 still hold); the record last, so that it
    never names a PCA file not yet complete. Returns identity()."""
    model_dir = Path(model_dir)
    fields = dict(fields)
    for data, name, key in ((pca_bytes, MODEL_PCA_FILE, "pca_file"),
                            (grid_pca_bytes, MODEL_GRID_PCA_FILE, "grid_pca_file")):
        if data is not None:
            with atomic_path(model_dir / name, suffix=".h5") as tmp:
                tmp.write_bytes(data)
            fields[key] = name
    write_text(model_dir / MODEL_RECORD_FILE, json.dumps(fields, indent=2, sort_keys=True) + "\n")
    return identity(fields)


def identity(record):
    """What fixes a record's features (IDENTITY_KEYS: encoder, preprocessing, weights, PCA; and
    GRID_IDENTITY_KEYS for a record with a grid), as a model.json records it; keys a record
    lacks (randconv has no weights) are None."""
    keys = IDENTITY_KEYS + (GRID_IDENTITY_KEYS if record.get("grid") is not None else ())
    return {k: record.get(k) for k in keys}


def identity_differences(record, identity_):
    """The identity keys in which a record differs from an identity a model.json records (the
    grid's keys only when that identity has a grid: an identity without one, such as that of
    a model of a data set without a grid, is not concerned by them)."""
    keys = IDENTITY_KEYS + (GRID_IDENTITY_KEYS if identity_.get("grid") is not None else ())
    return [k for k in keys if record.get(k) != identity_.get(k)]


def compute(images, record, pca=True):
    """Features of uint8 images (N, S, S, 3) as the record's (randconv) dataset has them.

    Returns float32 (N, P) PCA features if pca, else the (N, F) fc7 features.
    """
    return project(extract(images), record, pca)


def project(fc7, record, pca=True):
    """The record's PCA applied to (N, F) features, as its dataset's PCA files have them
    (unchanged for a dataset made without PCA, or when pca is False)."""
    if not pca or record["mean"] is None:
        return fc7
    return pca_project(fc7, record["mean"], record["components"], record["pca_dim"])


def project_regions(regions, record):
    """(N, L, C) regions of the record's encoder at its grid, as its dataset's grid files hold
    them: float16 (N, L, K) after the record's grid PCA, float16 (N, L, C) without one
    (grid_project). Raises ValueError when the record has no grid."""
    if record.get("grid") is None:
        raise ValueError("the encoder record has no grid: its data set was made without --grid")
    return grid_project(regions, record.get("grid_mean"), record.get("grid_components"))
