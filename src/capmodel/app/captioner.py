"""Caption image files with a trained model: `capmodel caption`.

The model's features must be computed as its training set's were. A dataset made by
capmodel (`data shapes`, `data from-folder`) records its encoder (capmodel.encoders: the
random-conv one or a pretrained CNN, whose weights file is checked against the recorded
SHA-256) and PCA (capmodel.datasets.features.read_record); the model's data set is the one
model.json names (`data_dir`), or another one given explicitly. Datasets without the
record, such as CS231n's COCO files (VGG-16 fc7 features after an unpublished PCA), have
features capmodel cannot compute: then precomputed features, one row per image, are the
way in. PCA or fc7 features are used as the model was trained (settings.pca_features).

Dimension letters: N images, D feature dimension.
"""

import html
import json
from pathlib import Path

import numpy as np

from capmodel import checkpoints
from capmodel.encoders import registry
from capmodel.safety.atomic import write_text
from capmodel.coco_utils import decode_captions
from capmodel.datasets import features as feat
from capmodel.datasets import folder
from capmodel.datasets import format as fmt
from capmodel.app.tables import write_csv
from capmodel.image_utils import IMAGE_SUFFIXES, open_rgb, thumbnail_uri

METHODS = ("greedy", "beam")


class FeaturesNotComputable(ValueError):
    """The model's data set has features from an extractor capmodel does not have."""


def collect_images(paths):
    """Image files from a list of files and folders (folders: their picture files, sorted).

    The files are those `data from-folder` reads (image_utils.IMAGE_SUFFIXES). Raises one
    FolderError naming every path that does not exist or is not a picture file.
    """
    found, bad = [], []
    for p in map(Path, paths):
        if p.is_dir():
            found += list(folder.list_images(p).values())
        elif not p.is_file():
            bad.append(f"image {p} does not exist")
        elif p.suffix.lower() not in IMAGE_SUFFIXES:
            bad.append(f"image {p} is not a picture file ({', '.join(IMAGE_SUFFIXES)})")
        else:
            found.append(p)
    if bad:
        raise folder.FolderError("; ".join(bad))
    return found


def load_features(path, num_images):
    """Precomputed features: an .npy array (N, D) or an HDF5 file with a 'features' dataset (N, D)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"features file {path} does not exist")
    if path.suffix not in (".npy", ".h5", ".hdf5"):
        raise ValueError(f"features file {path} must be .npy or .h5/.hdf5, got '{path.suffix}'")
    try:
        if path.suffix == ".npy":
            x = np.load(path, allow_pickle=False)  # never unpickle: an object array is refused
        else:
            import h5py

            with h5py.File(path, "r") as f:
                x = np.asarray(f[fmt.FEATURES_KEY]) if fmt.FEATURES_KEY in f else None
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read features file {path}: {e}") from e
    if x is None:
        raise ValueError(f"features file {path} has no dataset '{fmt.FEATURES_KEY}'")
    if x.ndim != 2 or not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"features in {path} must be a 2-D float array (N, D), got {x.dtype} {x.shape}")
    if len(x) != num_images:
        raise ValueError(f"features in {path} have {len(x)} rows but {num_images} images were given "
                         "(one row per image, in the order given)")
    return x


def compute_features(image_paths, data_dir, pca, model, weights=None):
    """Features of image files with the encoder recorded in data_dir, as the model was trained
    (weights: the pretrained CNN's weights file, when the data set's encoder is one)."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise ValueError(f"the model's data set {data_dir} does not exist; pass --data with the data set "
                         "it was trained on, or --features")
    record = feat.read_record(data_dir)
    if record is None:
        kind = "PCA" if pca else "fc7"
        raise FeaturesNotComputable(
            f"capmodel cannot compute the features of data set {data_dir}: it has no {feat.RECORD_FILE}, so its "
            "features come from an extractor capmodel does not have (CS231n's COCO: VGG-16 fc7). Pass --features "
            f"with precomputed {kind} features of width {model.input_dim}: an .npy (N, D) or an HDF5 file with a "
            f"'{fmt.FEATURES_KEY}' dataset, one row per image in the order given")
    vocab_path = data_dir / fmt.VOCAB_FILE
    if vocab_path.is_file() and json.loads(vocab_path.read_text()).get("word_to_idx") != model.word_to_idx:
        raise ValueError(f"the vocabulary of {data_dir} differs from the model's; pass --data with the data set "
                         "the model was trained on")
    encoder = registry.get_encoder_for_record(record, weights, where=f"data set {data_dir}")
    folder.check_pictures(image_paths)  # one error naming every picture that cannot be read
    return feat.project(folder.encode_files(image_paths, encoder), record, pca=pca)


def caption_files(model_path, paths, data_dir=None, features_file=None, method="greedy", beam_size=3,
                  max_length=16, batch_size=500, weights=None):
    """Caption image files with a trained model.

    Inputs:
    - model_path: Model directory, model.npz, model.json or their base path
    - paths: Image files and folders of images
    - data_dir: Data set whose extractor record to use (default: the model's data_dir)
    - features_file: Precomputed features (N, D) instead, one row per image in order
    - method, beam_size, max_length: Decoding (see capmodel.decoding)
    - weights: Weights file of the data set's pretrained CNN encoder (see capmodel.encoders)

    Returns a list of {'image': path, 'caption': text} in the order of the images.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got '{method}'")
    base = checkpoints.model_base(model_path)
    model, meta = checkpoints.load_model(base)
    images = collect_images(paths)
    pca = meta.get("settings", {}).get("pca_features", True)
    if features_file is not None:
        x = load_features(features_file, len(images))
        where = f"features in {features_file}"
    else:
        data_dir = data_dir or meta.get("data_dir")
        if not data_dir:
            raise ValueError(f"{base.with_suffix('.json')} names no data set; pass --data or --features")
        x = compute_features(images, data_dir, pca, model, weights=weights)
        where = f"features computed with the extractor of {data_dir}"
    if x.shape[1] != model.input_dim:
        raise ValueError(f"{where} have width {x.shape[1]}, but the model expects width {model.input_dim} "
                         f"({'PCA' if pca else 'fc7'} features as it was trained)")
    x = x.astype(model.dtype)
    options = {"beam_size": beam_size} if method == "beam" else {}
    caps = [model.sample(x[s : s + batch_size], max_length=max_length, method=method, **options)
            for s in range(0, len(x), batch_size)]
    idx_to_word = {i: w for w, i in model.word_to_idx.items()}
    texts = decode_captions(np.concatenate(caps), idx_to_word, strip_special=True)
    return [{"image": str(p), "caption": t} for p, t in zip(images, texts)]


def write_captions_csv(path, rows):
    """Atomically write the rows as CSV with columns image, caption."""
    write_csv(path, rows, ["image", "caption"])


def write_gallery(path, rows, title="capmodel captions"):
    """Atomically write a self-contained HTML page: each image (an embedded thumbnail) with its caption.

    Raises one FolderError naming every image that cannot be read.
    """
    uris, bad = [], []
    for r in rows:
        try:
            uris.append(thumbnail_uri(open_rgb(r["image"])))
        except ValueError as e:
            bad.append(str(e))
    if bad:
        raise folder.FolderError(f"{len(bad)} of {len(rows)} image(s) cannot be read: " + "; ".join(bad))
    figures = "\n".join(
        f'<figure><img src="{uri}" alt="{html.escape(r["image"])}">'
        f'<figcaption><b>{html.escape(r["caption"]) or "<i>(empty caption)</i>"}</b>'
        f'<br><small>{html.escape(r["image"])}</small></figcaption></figure>'
        for r, uri in zip(rows, uris))
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; }}
.grid {{ display: flex; flex-wrap: wrap; gap: 1em; }}
figure {{ margin: 0; width: 260px; }}
img {{ width: 256px; image-rendering: pixelated; border: 1px solid #ccc; }}
figcaption {{ overflow-wrap: anywhere; }}
</style></head>
<body><h1>{html.escape(title)}</h1><p>{len(rows)} images</p>
<div class="grid">
{figures}
</div></body></html>
"""
    write_text(path, page)
