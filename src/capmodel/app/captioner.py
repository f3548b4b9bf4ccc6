"""Caption image files with a trained model: `capmodel caption`.

The model's features must be computed as its training set's were. A dataset made by
capmodel (`data shapes`, `data from-folder`) records its encoder (capmodel.encoders: the
random-conv one or a pretrained CNN, whose weights file is checked against the recorded
SHA-256) and PCA (capmodel.datasets.features.read_record), and a model trained on it keeps
a copy of that record in its own directory, so that it captions without its data set.
Another data set's record can be given explicitly; it must be the one the model records (a
data set made again in place has another PCA). A model whose model.json records no encoder
keeps no copy and uses the data set model.json names (`data_dir`). Datasets without the record, such as
CS231n's COCO files (VGG-16 fc7 features after an unpublished PCA), have features capmodel
cannot compute: then precomputed features, one row per image, are the way in. PCA or fc7
features are used as the model was trained (settings.pca_features).

A record with a grid also computes the regions of new images for models that attend over
them (encode_images(..., regions=True), model_regions): the encoder's grid layer pooled to
the recorded grid and projected by the recorded grid PCA, as the data set's grid files hold
them.

Dimension letters: N images, D feature dimension, L regions, C region channels.
"""

import html
from pathlib import Path

import numpy as np

from capmodel import checkpoints
from capmodel.app import settings as S
from capmodel.encoders import registry
from capmodel.coco_utils import decode_captions
from capmodel.datasets import features as feat
from capmodel.datasets import folder
from capmodel.datasets import format as fmt
from capmodel.app import attention_maps
from capmodel.app.attention_weights import caption_alphas
from capmodel.app.tables import csv_text
from capmodel.image_utils import IMAGE_SUFFIXES, open_rgb, thumbnail_uri
from capmodel.safety.jsonfile import read_json
from capmodel.safety.outputs import check_outputs
from capmodel.safety.staging import write_texts

# The model column says which model wrote a caption, and makes the header differ from a
# captions file of the user's (image,caption[,split], capmodel.datasets.folder), which
# caption --out must never replace.
CSV_COLUMNS = ("image", "caption", "model")
# How the outputs say that capmodel wrote them (capmodel.safety.outputs.kind_of): the CSV's
# header, the gallery's <meta name="generator">. Only such files are replaced.
CSV_KIND = ",".join(CSV_COLUMNS)
GALLERY_KIND = "capmodel caption"
# The gallery draws the attention maps of at most this many pictures (the first ones): a
# row of maps is a picture per word, some 3 to 8 KB each embedded.
MAP_PICTURES = 50


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
    """Precomputed features: an .npy array (N, D) or an HDF5 file with a 'features' dataset (N, D),
    every value finite."""
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
    bad = ~np.isfinite(x)
    if bad.any():  # a model fed NaN decodes nothing and would print empty captions
        raise ValueError(f"features in {path} hold {np.count_nonzero(bad)} non-finite values (NaN or inf), "
                         f"first in row {np.flatnonzero(bad.any(axis=1))[0]}")
    return x


def data_set_record(data_dir, pca=True, input_dim=None):
    """The extractor record of data set data_dir (read_record).

    Raises FeaturesNotComputable for a data set without a record (CS231n's COCO), asking for
    precomputed features of the model's width input_dim."""
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
            f"with precomputed {kind} features of width {input_dim}: an .npy (N, D) or an HDF5 file with a "
            f"'{fmt.FEATURES_KEY}' dataset, one row per image in the order given")
    return record


def check_vocabulary(data_dir, model):
    """Refuse a data set whose vocabulary is not the model's."""
    vocab_path = Path(data_dir) / fmt.VOCAB_FILE
    vocab = read_json(vocab_path, "vocabulary file") if vocab_path.is_file() else None
    if isinstance(vocab, dict) and vocab.get("word_to_idx") != model.word_to_idx:
        raise ValueError(f"the vocabulary of {data_dir} differs from the model's; pass --data with the data set "
                         "the model was trained on")


def model_record(base, meta):
    """The copy of its data set's record a model keeps beside model.json (features.MODEL_RECORD_FILE
    and MODEL_PCA_FILE), which must be the encoder model.json records under 'encoder'.

    Returns None when model.json records no encoder (a model of a data set without a record,
    or a model.json without the 'encoder' key). Raises ValueError naming the file when it is missing or altered.
    """
    identity = meta.get("encoder")
    if not identity:
        return None
    model_json, path = base.with_suffix(".json"), base.parent / feat.MODEL_RECORD_FILE
    if not path.is_file():
        raise ValueError(f"{path}: missing file (the encoder record that {model_json} refers to); copy the whole "
                         "model directory")
    record = feat.load_record(path)
    differ = feat.identity_differences(record, identity)
    if differ:
        raise ValueError(f"{path}: not the encoder that {model_json} records ({', '.join(differ)} differ); the file "
                         "was altered or comes from another model")
    return record


def check_same_encoder(record, data_dir, base, meta):
    """Refuse a data set (--data) whose record is not the one the model was trained with (as its
    model.json records it): a data set made again in place has another PCA, and so other features."""
    identity = meta.get("encoder")
    if not identity:
        return  # model.json records no encoder: nothing to compare
    ours, theirs = identity.get("pca_sha256"), record.get("pca_sha256")
    if ours != theirs:
        named = lambda path, sha: f"{path} (sha256 {sha})" if sha else f"none ({path} records no PCA)"
        raise ValueError(
            f"--data {data_dir}: its PCA {named(Path(data_dir) / (record['pca_file'] or feat.RECORD_FILE), theirs)} "
            f"is not the one the model was trained with, "
            f"{named(base.parent / feat.MODEL_PCA_FILE if ours else base.with_suffix('.json'), ours)}: the data "
            "set was made again since, or is another one; leave out --data to use the model's own copy")
    differ = feat.identity_differences(record, identity)
    if differ:
        raise ValueError(f"--data {data_dir}: its encoder ({Path(data_dir) / feat.RECORD_FILE}) is not the one "
                         f"{base.with_suffix('.json')} records ({', '.join(differ)} differ); leave out --data to "
                         "use the model's own copy")


def encode_images(image_paths, record, pca, weights=None, where="data set", regions=False):
    """Features of image files with the encoder a record names, then its PCA if pca (weights:
    the pretrained CNN's weights file, when the encoder is one; where names the record in errors).

    With regions=True, a tuple (features, regions): the regions float16 (N, L, C) as the
    record's data set's grid files hold them (its grid, then its grid PCA:
    features.project_regions), computed a batch of pictures at a time. Raises ValueError
    when the record has no grid.
    """
    if regions and record.get("grid") is None:
        raise ValueError(f"{where}: its encoder record has no grid of regions (its data set was made without "
                         "--grid), so the regions of new pictures cannot be computed")
    encoder = registry.get_encoder_for_record(record, weights, where=where)
    folder.check_pictures(image_paths)  # one error naming every picture that cannot be read
    if not regions:
        return feat.project(folder.encode_files(image_paths, encoder), record, pca=pca)
    feats, grids = [], []
    for s in range(0, len(image_paths), encoder.batch_size):  # one batch of pictures' regions at a time
        f, r = encoder.encode((folder.open_rgb(p) for p in image_paths[s : s + encoder.batch_size]),
                              grid=record["grid"])
        feats.append(f)
        grids.append(feat.project_regions(r, record))
    if not feats:
        f, r = encoder.encode([], grid=record["grid"])
        feats, grids = [f], [feat.project_regions(r, record)]
    return feat.project(np.concatenate(feats), record, pca=pca), np.concatenate(grids)


def model_regions(model_path, paths, weights=None):
    """The regions of picture files for a model, computed with the encoder record its directory
    keeps (model_record), so that its data set is not needed.

    Inputs:
    - model_path: Model directory, model.npz, model.json or their base path
    - paths: Picture files and folders of them (collect_images)
    - weights: Weights file of the model's pretrained CNN encoder, when it has one

    Returns float16 (N, L, C): for each picture, as its data set's grid files hold theirs.
    Raises ValueError naming the model when it keeps no record, or one without a grid.
    """
    base = checkpoints.model_base(model_path)
    _, meta = checkpoints.load_model(base)
    record = model_record(base, meta)
    if record is None:
        raise ValueError(f"{base.with_suffix('.json')}: the model keeps no encoder record ({feat.MODEL_RECORD_FILE}), "
                         "so it cannot compute the regions of new pictures")
    pca = meta.get("settings", {}).get("pca_features", True)
    return encode_images(collect_images(paths), record, pca, weights, where=f"model {base.parent}", regions=True)[1]


def compute_features(image_paths, data_dir, pca, model, weights=None):
    """Features of image files with the encoder recorded in data set data_dir, as the model was
    trained (weights: the pretrained CNN's weights file, when the data set's encoder is one)."""
    record = data_set_record(data_dir, pca, model.input_dim)
    check_vocabulary(data_dir, model)
    return encode_images(image_paths, record, pca, weights, where=f"data set {data_dir}")


def caption_files(model_path, paths, data_dir=None, features_file=None, decoding=None, batch_size=500,
                  weights=None):
    """Caption image files with a trained model.

    The features come from features_file if given, else from the encoder of data set data_dir
    if given (which must be the one the model records), else from the encoder the model keeps
    in its directory (model_record), else, for a model without one, from its data set
    (model.json's data_dir).

    Inputs:
    - model_path: Model directory, model.npz, model.json or their base path
    - paths: Image files and folders of images
    - data_dir: Data set whose extractor record to use instead of the model's
    - features_file: Precomputed features (N, D) instead, one row per image in order
    - decoding: Dict of decoding settings (capmodel.app.settings.CAPTION_DECODE); those left
      out take the defaults `capmodel sample` has, so both give a model's one caption
    - weights: Weights file of the model's pretrained CNN encoder (see capmodel.encoders)

    Returns a list of {'image': path, 'caption': text, 'model': the model's directory} in
    the order of the images; for a
    model that attends over regions, the first MAP_PICTURES also hold 'alphas' (add_attention).
    """
    decoded = S.decode_record(S.check_all(decoding or {}, S.CAPTION_DECODE, "caption"))
    base = checkpoints.model_base(model_path)
    model, meta = checkpoints.load_model(base)
    images = collect_images(paths)
    pca = meta.get("settings", {}).get("pca_features", True)
    own = None if features_file is not None or data_dir is not None else model_record(base, meta)
    attends = bool(getattr(model, "uses_regions", False))  # a model attending over regions needs them too
    regions = None
    if features_file is not None:
        if attends:
            raise ValueError(f"--features {features_file}: model {base.parent} attends over image regions, which "
                             "precomputed features do not give; leave out --features")
        x = load_features(features_file, len(images))
        where = f"features in {features_file}"
    elif own is not None:
        x = encode_images(images, own, pca, weights, where=f"model {base.parent}", regions=attends)
        x, regions = x if attends else (x, None)
        where = f"features computed with the encoder of model {base.parent}"
    else:
        data_dir = data_dir or meta.get("data_dir")
        if not data_dir:
            raise ValueError(f"{base.with_suffix('.json')} names no data set; pass --data or --features")
        record = data_set_record(data_dir, pca, model.input_dim)
        check_vocabulary(data_dir, model)
        check_same_encoder(record, data_dir, base, meta)
        x = encode_images(images, record, pca, weights, where=f"data set {data_dir}", regions=attends)
        x, regions = x if attends else (x, None)
        where = f"features computed with the extractor of {data_dir}"
    if x.shape[1] != model.input_dim:
        raise ValueError(f"{where} have width {x.shape[1]}, but the model expects width {model.input_dim} "
                         f"({'PCA' if pca else 'fc7'} features as it was trained)")
    x = x.astype(model.dtype)
    method, options = S.sample_options(decoded)
    caps = [model.sample(x[s : s + batch_size], max_length=decoded["max_length"], method=method, **options,
                         **({} if regions is None else {"regions": regions[s : s + batch_size]}))
            for s in range(0, len(x), batch_size)]
    idx_to_word = {i: w for w, i in model.word_to_idx.items()}
    texts = decode_captions(np.concatenate(caps), idx_to_word, strip_special=True)
    rows = [{"image": str(p), "caption": t, "model": str(base.parent)} for p, t in zip(images, texts)]
    if regions is not None:  # where the model looked, for the gallery (gallery_html)
        add_attention(rows, model, x, regions)
    return rows


def check_output_files(out, html, model_path, paths, features_file=None):
    """Check the CSV (out) and gallery (html) to write, either may be None, before any
    picture is read (capmodel.safety.outputs.check_outputs): suffixes .csv and .html, none
    of the command's inputs, writable, and an existing file replaced only if it is a
    caption CSV or gallery that capmodel wrote."""
    base = checkpoints.model_base(model_path)
    inputs = (base.with_suffix(".npz"), base.with_suffix(".json"), *paths,
              *(() if features_file is None else (features_file,)))
    check_outputs([(out, ".csv", CSV_KIND), (html, ".html", GALLERY_KIND)], inputs=inputs)


def write_outputs(rows, csv_path=None, html_path=None, title="capmodel captions"):
    """Write the rows as CSV (CSV_COLUMNS: image, caption, model) and as a gallery (gallery_html),
    either path may be None. Every picture is read first, and the files are renamed into
    place together, so a failure leaves neither."""
    files = {}
    if csv_path is not None:
        files[csv_path] = csv_text(rows, CSV_COLUMNS)
    if html_path is not None:
        files[html_path] = gallery_html(rows, title)
    write_texts(files)


def add_attention(rows, model, features, regions):
    """Give the first MAP_PICTURES rows 'alphas': each word's attention weights (T, L) on the
    picture's regions, read teacher-forced from the caption (attention_weights.caption_alphas).

    Inputs:
    - rows: Caption rows {'image', 'caption'} of the pictures, in order
    - model: The model that wrote the captions, one that attends over regions
    - features: The pictures' global features, of shape (N, D)
    - regions: Their regions, of shape (N, L, C)
    """
    k = min(len(rows), MAP_PICTURES)
    alphas = caption_alphas(model, features[:k], regions[:k], [r["caption"] for r in rows[:k]])
    for r, a in zip(rows, alphas):
        r["alphas"] = a


def gallery_html(rows, title="capmodel captions"):
    """A self-contained HTML page: each image (an embedded thumbnail) with its caption, and,
    for rows with 'alphas' (add_attention), under the caption a row of attention maps: one
    small picture per word, lit where the word put much weight (attention_maps).

    Raises one FolderError naming every image that cannot be read.
    """
    uris, pictures, bad = [], [], []
    for r in rows:
        try:
            picture = open_rgb(r["image"])
        except ValueError as e:
            bad.append(str(e))
        else:
            uris.append(thumbnail_uri(picture))
            # for the maps, a thumbnail of the square the grid covers (not the whole photo)
            pictures.append(attention_maps.thumbnail(picture) if "alphas" in r else None)
    if bad:
        raise folder.FolderError(f"{len(bad)} of {len(rows)} image(s) cannot be read: " + "; ".join(bad))
    figures, mapped = [], 0
    for r, uri, picture in zip(rows, uris, pictures):
        caption = (f'<b>{html.escape(r["caption"]) or "<i>(empty caption)</i>"}</b>'
                   f'<br><small>{html.escape(r["image"])}</small>')
        if picture is None:
            figures.append(f'<figure><img src="{uri}" alt="{html.escape(r["image"])}">'
                           f"<figcaption>{caption}</figcaption></figure>")
            continue
        mapped += 1
        maps = attention_maps.maps_html(picture, r["caption"].split(), r["alphas"])
        figures.append(f'<figure class="wide"><img src="{uri}" alt="{html.escape(r["image"])}">'
                       f"<figcaption>{caption}{maps}</figcaption></figure>")
    note = ""
    if mapped:
        note = (f"<p>Attention maps of the first {mapped} pictures (at most {MAP_PICTURES}): for each word, the "
                "part of the picture the model's grid of regions covers, lit where the model put much weight "
                "when it wrote that word and darkened where it put little; under it the word's largest weight on "
                "one region (1 / L of L regions: it looked everywhere alike).</p>")
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="generator" content="{GALLERY_KIND}">
<title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; }}
.grid {{ display: flex; flex-wrap: wrap; gap: 1em; }}
figure {{ margin: 0; width: 260px; }}
figure > img {{ width: 256px; image-rendering: pixelated; border: 1px solid #ccc; }}
figcaption {{ overflow-wrap: anywhere; }}
figure.wide {{ width: 100%; display: flex; gap: 1em; align-items: flex-start; }}
figure.wide > figcaption {{ flex: 1; }}
{attention_maps.CSS}
</style></head>
<body><h1>{html.escape(title)}</h1><p>{len(rows)} images</p>{note}
<div class="grid">
{chr(10).join(figures)}
</div></body></html>
"""
    return page
