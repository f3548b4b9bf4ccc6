"""A fixed, deterministic image feature extractor, and PCA, for the embedded dataset.

No pretrained weights can be fetched here, so features come from a small random
convolutional network whose filters are drawn from a fixed seed (the same on every
machine and for every dataset): conv 5x5/2 (24 filters) -> ReLU -> conv 3x3/2 (128
filters) -> ReLU. The feature concatenates a 4x4 average-pooling grid of the second layer
(2048, keeps position) with global max and mean pooling of the second layer and global
max pooling of the first (280, translation invariant: colour and shape wherever the
object is), 2328-d in all. Like CS231n, a 512-d PCA fitted on train is applied to val.

A linear probe on single-object images reads colour, size and position back from these
features, shape less well (benchmarks/probe_features.py prints the figures; the README
quotes them).

A dataset made by capmodel records this extractor beside its files (RECORD_FILE, a JSON
object, plus PCA_FILE, an HDF5 file with the fitted PCA `mean` (F,) and `components`
(F, K)), so that features of new images can be computed later exactly as the dataset's
were (see write_record / read_record). Datasets without the record, such as CS231n's
COCO files (VGG-16 fc7), have features capmodel cannot compute.

Dimension letters: N images, S image side, C channels, F feature dimension, K PCA
components (K <= P, the format's PCA width; columns K..P are zero padding).
"""

import json
from pathlib import Path

import h5py
import numpy as np

from capmodel.safety.atomic import sha256_of

FILTER_SEED = 20141231  # fixed: the same extractor for every dataset and machine
CONV1, CONV2, GRID = 24, 128, 4


def _filters():
    rng = np.random.default_rng(FILTER_SEED)
    w1 = rng.standard_normal((5 * 5 * 3, CONV1)).astype(np.float32) / np.sqrt(5 * 5 * 3)
    w1 -= w1.mean(axis=0)  # zero-mean filters respond to edges and colour contrasts
    b1 = rng.uniform(-0.05, 0.05, CONV1).astype(np.float32)
    w2 = rng.standard_normal((3 * 3 * CONV1, CONV2)).astype(np.float32) / np.sqrt(3 * 3 * CONV1)
    b2 = rng.uniform(-0.05, 0.05, CONV2).astype(np.float32)
    return w1, b1, w2, b2


def _im2col(x, k, stride, pad):
    """(N, S, S, C) -> (N, S', S', k*k*C) patches, with zero padding."""
    x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    N, S, _, C = x.shape
    out = (S - k) // stride + 1
    cols = np.empty((N, out, out, k, k, C), dtype=x.dtype)
    for i in range(k):
        for j in range(k):
            cols[:, :, :, i, j, :] = x[:, i : i + stride * out : stride, j : j + stride * out : stride, :]
    return cols.reshape(N, out, out, k * k * C)


def extract(images, batch_size=256):
    """Features of uint8 images (N, 64, 64, 3) -> float32 (N, 2328)."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[3] != 3 or images.shape[1] != images.shape[2]:
        raise ValueError(f"images must have shape (N, S, S, 3), got {images.shape}")
    w1, b1, w2, b2 = _filters()
    feats = []
    for s in range(0, len(images), batch_size):
        x = images[s : s + batch_size].astype(np.float32) / 255.0 - 0.5
        h1 = np.maximum(_im2col(x, 5, 2, 2) @ w1 + b1, 0)  # (n, S/2, S/2, CONV1)
        h = np.maximum(_im2col(h1, 3, 2, 1) @ w2 + b2, 0)  # (n, S/4, S/4, CONV2)
        n, side = h.shape[0], h.shape[1]
        cell = side // GRID
        grid = h[:, : cell * GRID, : cell * GRID].reshape(n, GRID, cell, GRID, cell, CONV2).mean(axis=(2, 4))
        feats.append(np.concatenate([grid.reshape(n, -1), h.max(axis=(1, 2)), h.mean(axis=(1, 2)),
                                     h1.max(axis=(1, 2))], axis=1))
    return np.concatenate(feats).astype(np.float32)


def fit_pca(features, dim=512):
    """Fit a PCA on (N, F) features; returns (mean (F,), components (F, K)).

    K is dim, or N if there are fewer images. With fewer images than features, the
    components past the directions the train features vary in (at most N - 1) are zero
    columns: the covariance's eigenvectors there would be an arbitrary basis of its null
    space. Component signs are fixed (largest entry positive) so the result is deterministic.
    """
    x = features.astype(np.float64)
    mean = x.mean(axis=0)
    if len(x) >= x.shape[1]:
        cov = (x - mean).T @ (x - mean) / max(len(x) - 1, 1)
        vals, vecs = np.linalg.eigh(cov)
        comps = vecs[:, ::-1][:, :dim]
    else:
        # The same components from the (N, N) Gram matrix: eigh of the (F, F) covariance
        # takes seconds for F = 2328, whatever N.
        xc = x - mean  # (N, F)
        vals, u = np.linalg.eigh(xc @ xc.T)  # (N,), (N, N)
        vals, u = vals[::-1][:dim], u[:, ::-1][:, :dim]
        varies = vals > vals[0] * max(x.shape) * np.finfo(np.float64).eps
        comps = np.zeros((x.shape[1], len(vals)))
        comps[:, varies] = xc.T @ u[:, varies] / np.sqrt(vals[varies])
    signs = np.sign(comps[np.abs(comps).argmax(axis=0), np.arange(comps.shape[1])])
    return mean, comps * signs


def apply_pca(features, mean, components):
    """Project (N, F) features onto the fitted components -> float32 (N, dim)."""
    return ((features.astype(np.float64) - mean) @ components).astype(np.float32)


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

EXTRACTOR_NAME = "capmodel-randconv-v1"  # this module's extract(); change the name if extract() changes
PREPROCESS = "rgb-center-crop-bilinear"  # how an image file becomes (S, S, 3): capmodel.datasets.folder
RECORD_FILE = "feature_extractor.json"
PCA_FILE = "feature_extractor_pca.h5"


def write_record(out_dir, image_size, mean, components, pca_dim, created_by):
    """Record the extractor and the fitted PCA in a dataset directory (RECORD_FILE + PCA_FILE).

    Inputs:
    - out_dir: The dataset directory (usually write_dataset's temporary one)
    - image_size: Side S the images were resized to before extract()
    - mean, components: The PCA fitted on the train features, (F,) and (F, K)
    - pca_dim: Width P of the dataset's PCA features (K columns, then zeros)
    - created_by: The capmodel command that made the dataset (ownership itself is
      capmodel.safety.ownership's marker)
    """
    out_dir = Path(out_dir)
    with h5py.File(out_dir / PCA_FILE, "w", track_order=False, libver="earliest") as f:
        f.create_dataset("mean", data=np.asarray(mean, dtype=np.float64), track_times=False)
        f.create_dataset("components", data=np.asarray(components, dtype=np.float64), track_times=False)
    record = {
        "extractor": EXTRACTOR_NAME, "preprocess": PREPROCESS, "image_size": int(image_size),
        "feature_dim": int(components.shape[0]), "pca_components": int(components.shape[1]),
        "pca_dim": int(pca_dim), "pca_file": PCA_FILE, "pca_sha256": sha256_of(out_dir / PCA_FILE),
        "created_by": created_by,
    }
    (out_dir / RECORD_FILE).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")


def read_record(data_dir):
    """The extractor record of a dataset directory, with its PCA arrays; None if there is none.

    Returns a dict with the JSON fields plus 'mean' (F,) and 'components' (F, K).
    Raises ValueError naming the file when the record is malformed, its PCA file is
    missing or altered, or it names an extractor this version of capmodel does not have.
    """
    path = Path(data_dir) / RECORD_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})")
    keys = ("extractor", "preprocess", "image_size", "feature_dim", "pca_dim", "pca_file", "pca_sha256")
    missing = [k for k in keys if not isinstance(record, dict) or k not in record]
    if missing:
        raise ValueError(f"{path}: missing key(s) {', '.join(missing)}")
    if (record["extractor"], record["preprocess"]) != (EXTRACTOR_NAME, PREPROCESS):
        raise ValueError(f"{path}: extractor {record['extractor']} with preprocessing {record['preprocess']} "
                         f"is not the one this capmodel computes ({EXTRACTOR_NAME}, {PREPROCESS})")
    pca_path = Path(data_dir) / record["pca_file"]
    if not pca_path.is_file():
        raise ValueError(f"{pca_path}: missing file (the PCA that {path} refers to)")
    if sha256_of(pca_path) != record["pca_sha256"]:
        raise ValueError(f"{pca_path}: does not match the checksum in {path}; the file was altered")
    with h5py.File(pca_path, "r") as f:
        record["mean"], record["components"] = np.asarray(f["mean"]), np.asarray(f["components"])
    return record


def compute(images, record, pca=True):
    """Features of uint8 images (N, S, S, 3) as the record's dataset has them.

    Returns float32 (N, P) PCA features if pca, else the (N, F) fc7 features.
    """
    fc7 = extract(images)
    if not pca:
        return fc7
    return pca_project(fc7, record["mean"], record["components"], record["pca_dim"])
