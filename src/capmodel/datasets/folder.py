"""A dataset from your own images and captions: `capmodel data from-folder`.

Input: a folder of pictures (the files capmodel.image_utils.IMAGE_SUFFIXES names,
subfolders included, hidden files skipped) and a captions file naming them by their path relative to the folder, either
- CSV with a header row and columns image,caption[,split], one row per caption (several
  rows per image allowed), or
- JSON: {"a.png": ["caption 1", "caption 2"], ...} (a single string is one caption), or
  a list of {"image": ..., "caption": "..." or "captions": [...], "split": ...}.
The split is 'train' or 'val'. Without splits, a seeded fraction of the images (at least
one) goes to val.

Output: a dataset in the CS231n on-disk format (capmodel.datasets.format): vocabulary from
the train captions, fc7 features from capmodel's fixed extractor (capmodel.datasets.features)
on the images centre-cropped to a square and resized to S x S, a PCA fitted on train, the
images' paths relative to the dataset, and the extractor's record, so that `capmodel caption` computes the
features of new images the same way.

Every check runs before any image is decoded, and the dataset appears only when complete.
Images without any caption are left out with one warning (a folder may hold other files).
Pictures are read with capmodel.image_utils.open_rgb; every unreadable one is named in one
error.
"""

import csv
import json
import sys
from pathlib import Path, PurePosixPath

import numpy as np

from capmodel.datasets import features as feat
from capmodel.datasets import format as fmt
from capmodel import image_utils
from capmodel.encoders import randconv, registry
from capmodel.image_utils import IMAGE_SUFFIXES
from capmodel.vocab import SPECIAL_TOKENS, build_vocab, encode_captions, tokenize

DEFAULT_IMAGE_SIZE = randconv.DEFAULT_IMAGE_SIZE  # the shapes images' side; the extractor needs S >= 16
DEFAULT_VAL_FRACTION = 0.2
DEFAULT_MIN_COUNT = 1  # small caption sets: keep every word; raise it for thousands of captions
MIN_IMAGE_SIZE = randconv.MIN_IMAGE_SIZE
CREATED_BY = "capmodel data from-folder"
CSV_COLUMNS = ("image", "caption", "split")


class FolderError(ValueError):
    """The images folder, the captions file or the output directory cannot be used."""


# ------------------------------------------------------------------ images


def list_images(images_dir):
    """{path relative to images_dir (POSIX): Path} of the picture files in it (IMAGE_SUFFIXES), sorted by name."""
    d = Path(images_dir)
    if not d.exists():
        raise FolderError(f"images folder {d} does not exist")
    if not d.is_dir():
        raise FolderError(f"{d} is not a folder of images")
    found = {}
    for p in sorted(d.rglob("*")):
        rel = p.relative_to(d)
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not any(s.startswith(".") for s in rel.parts):
            found[rel.as_posix()] = p
    if not found:
        raise FolderError(f"{d} has no pictures ({', '.join(IMAGE_SUFFIXES)})")
    return found


def open_rgb(path):
    """A picture as an RGB PIL image (image_utils.open_rgb: EXIF orientation, 16 to 8 bits,
    transparency onto white); FolderError naming the file when it cannot be decoded."""
    try:
        return image_utils.open_rgb(path)
    except ValueError as e:
        raise FolderError(str(e)) from e


def read_image(path, side):
    """Read an image file as uint8 (side, side, 3): RGB, centre-cropped to a square, resized bilinearly.

    This is the preprocessing the extractor record calls features.PREPROCESS, after
    image_utils.open_rgb (EXIF orientation, 16 to 8 bits, transparency onto white). Raises
    FolderError naming the file when it cannot be decoded.
    """
    return randconv.square_resize(open_rgb(path), side)


def _each(paths, read):
    """[read(p) for p in paths], or one FolderError naming every file read() refused, so that
    one run reports all of them."""
    out, bad = [], []
    for p in paths:
        try:
            out.append(read(p))
        except FolderError as e:
            bad.append(str(e))
    if bad:
        raise FolderError(f"{len(bad)} of {len(paths)} image(s) cannot be read: " + "; ".join(bad))
    return out


def read_images(paths, side):
    """read_image for each path -> uint8 (N, side, side, 3); one FolderError naming every
    file that cannot be decoded."""
    images = _each(paths, lambda p: read_image(p, side))
    return np.stack(images) if images else np.zeros((0, side, side, 3), np.uint8)


def check_pictures(paths):
    """Decode every picture once, keeping none; one FolderError naming every one that fails."""
    def decodes(p):
        open_rgb(p)

    _each(paths, decodes)


def encode_files(paths, encoder):
    """Features of image files by a capmodel.encoders encoder -> float32 (N, F), decoding one batch at a time."""
    return encoder.encode(open_rgb(p) for p in paths)


# ---------------------------------------------------------------- captions


def read_captions(path):
    """Parse a captions file (CSV or JSON, by extension) into rows.

    Returns a list of dicts {image, caption, split (None if not given), where}, where
    'where' locates the row for error messages ("captions.csv line 4"). Raises
    FolderError for a file that cannot be parsed or a row without an image or caption.
    """
    path = Path(path)
    if not path.is_file():
        raise FolderError(f"captions file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".json"):
        raise FolderError(f"captions file {path} must end in .csv or .json, got '{suffix}'")
    try:
        rows = _read_csv(path) if suffix == ".csv" else _read_json(path)
    except UnicodeDecodeError as e:
        raise FolderError(f"captions file {path} is not UTF-8 text ({e})")
    if not rows:
        raise FolderError(f"captions file {path} has no captions")
    for r in rows:
        r["image"] = _normalise_name(r["image"])
        if not r["image"]:
            raise FolderError(f"{r['where']}: the image name is empty")
        if not isinstance(r["caption"], str) or not tokenize(r["caption"]):
            raise FolderError(f"{r['where']}: empty caption for image '{r['image']}' (it has no words)")
    return rows


def _normalise_name(name):
    name = str(name).strip().replace("\\", "/")
    return PurePosixPath(name).as_posix() if name else ""


def _read_csv(path):
    with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: spreadsheets often write a BOM
        reader = csv.DictReader(f, restkey="\0extra")
        if not reader.fieldnames:
            raise FolderError(f"captions file {path} is empty (expected a header row image,caption[,split])")
        reader.fieldnames = [c.strip().lower() for c in reader.fieldnames]
        unknown = [c for c in reader.fieldnames if c not in CSV_COLUMNS]
        missing = [c for c in CSV_COLUMNS[:2] if c not in reader.fieldnames]
        if unknown or missing:
            problem = (f"unknown column(s) {', '.join(repr(c) for c in unknown)}" if unknown
                       else f"no column {', '.join(repr(c) for c in missing)}")
            raise FolderError(f"{path} line 1: {problem}; the header must be image,caption[,split]")
        rows = []
        for row in reader:
            where = f"{path} line {reader.line_num}"
            if "\0extra" in row:
                raise FolderError(f"{where}: more fields than the header's {len(reader.fieldnames)} "
                                  "(put a caption that contains commas in double quotes)")
            if all(v in (None, "") for v in row.values()):
                continue  # blank line
            split = row.get("split") if "split" in reader.fieldnames else None
            rows.append({"image": row["image"] or "", "caption": row["caption"] or "",
                         "split": (split or "").strip() if "split" in reader.fieldnames else None, "where": where})
    return rows


def _read_json(path):
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise FolderError(f"captions file {path} is not valid JSON ({e})")
    rows = []
    if isinstance(data, dict):
        for image, caps in data.items():
            where = f"{path} key '{image}'"
            caps = [caps] if isinstance(caps, str) else caps
            if not isinstance(caps, list) or not caps:
                raise FolderError(f"{where}: expected a caption string or a non-empty list of them")
            rows += [{"image": image, "caption": c, "split": None, "where": f"{where} caption {j + 1}"}
                     for j, c in enumerate(caps)]
    elif isinstance(data, list):
        for i, item in enumerate(data):
            where = f"{path} item {i}"
            if not isinstance(item, dict) or "image" not in item or ("caption" in item) == ("captions" in item):
                raise FolderError(f"{where}: expected an object with 'image' and either 'caption' or 'captions'")
            extra = sorted(set(item) - {"image", "caption", "captions", "split"})
            if extra:
                raise FolderError(f"{where}: unknown key(s) {', '.join(extra)}")
            caps = [item["caption"]] if "caption" in item else item["captions"]
            if not isinstance(caps, list) or not caps:
                raise FolderError(f"{where}: 'captions' must be a non-empty list of strings")
            split = item.get("split")
            rows += [{"image": item["image"], "caption": c, "split": None if split is None else str(split).strip(),
                      "where": where} for c in caps]
    else:
        raise FolderError(f"captions file {path}: expected a JSON object or list, got {type(data).__name__}")
    return rows


# ------------------------------------------------------------------- splits


def assign_splits(rows, val_fraction=DEFAULT_VAL_FRACTION, seed=0):
    """{image name: 'train' or 'val'} from the rows' splits, or a seeded val_fraction of the images."""
    given = [r for r in rows if r["split"] is not None]
    if given and len(given) != len(rows):
        r = next(r for r in rows if r["split"] is None)
        raise FolderError(f"{r['where']}: no split, but other rows have one; give every row a split or none")
    images = sorted({r["image"] for r in rows})
    if given:
        split = {}
        for r in rows:
            if r["split"] not in fmt.SPLITS:
                raise FolderError(f"{r['where']}: unknown split '{r['split']}'; use one of {', '.join(fmt.SPLITS)}")
            if split.setdefault(r["image"], r["split"]) != r["split"]:
                raise FolderError(f"{r['where']}: image '{r['image']}' is in split '{r['split']}' here "
                                  f"but '{split[r['image']]}' in an earlier row")
        for s in fmt.SPLITS:
            if s not in split.values():
                raise FolderError(f"no image is in split '{s}'; a dataset needs at least one train and one val image")
        return split
    if not 0 < val_fraction < 1:
        raise FolderError(f"--val-fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    if len(images) < 2:
        raise FolderError(f"only {len(images)} captioned image; a dataset needs at least one train and one val image")
    n_val = min(max(1, round(val_fraction * len(images))), len(images) - 1)
    val = set(np.random.default_rng(seed).permutation(len(images))[:n_val].tolist())
    return {name: "val" if i in val else "train" for i, name in enumerate(images)}


# ------------------------------------------------------------------ output


def make_dataset(images_dir, captions_file, out_dir, val_fraction=DEFAULT_VAL_FRACTION, seed=0,
                 min_count=DEFAULT_MIN_COUNT, image_size=None, encoder=registry.DEFAULT, weights=None,
                 pca=fmt.PCA_DIM):
    """Build a CS231n-format dataset in out_dir from a folder of images and a captions file.

    Inputs:
    - images_dir: Folder of PNG/JPEG images
    - captions_file: CSV (image,caption[,split]) or JSON, see the module docstring
    - out_dir: Dataset directory to create; it must not exist, be empty, or be a dataset
      capmodel made (capmodel.safety.ownership; it is replaced once the new one is complete)
    - val_fraction, seed: Share of the images that go to val when no split is given
    - min_count: Train words seen fewer times become <UNK>
    - image_size: Side S the images are resized to for the randconv encoder (default 64)
    - encoder, weights: The capmodel.encoders encoder and, for a pretrained CNN, its
      weights file (None: torchvision's download)
    - pca: Width of the PCA fitted on the train features (CS231n: 512), or None for no
      PCA (the PCA feature files then hold the features themselves)

    Returns a dict of counts (images and captions per split, vocabulary size) and the
    names of images that had no caption (left out, with one warning on stderr).
    """
    if image_size is not None and registry.is_pretrained(encoder):
        raise FolderError(f"--image-size applies to the randconv encoder only; {encoder} uses torchvision's "
                          "preprocessing for its weights")
    image_size = DEFAULT_IMAGE_SIZE if image_size is None else image_size
    if image_size < MIN_IMAGE_SIZE:
        raise FolderError(f"--image-size must be at least {MIN_IMAGE_SIZE}, got {image_size}")
    if pca is not None and pca < 1:
        raise FolderError(f"--pca must be a positive number of components or 'none', got {pca}")
    registry.check_encoder(encoder, weights)
    fmt.check_writable_dataset_dir(out_dir)
    out_dir = Path(out_dir).resolve()
    images = list_images(images_dir)
    rows = read_captions(captions_file)
    missing = {}  # image name -> the first row naming it; all of them in one error
    for r in rows:
        if r["image"] not in images and r["image"] not in missing:
            what = (f"is not a picture file ({', '.join(IMAGE_SUFFIXES)})"
                    if (Path(images_dir) / r["image"]).is_file() else f"is not in {images_dir}")
            missing[r["image"]] = f"{r['where']}: image '{r['image']}' {what}"
    if missing:
        raise FolderError("; ".join(missing.values()))
    split_of = assign_splits(rows, val_fraction, seed)
    uncaptioned = [name for name in images if name not in split_of]
    if uncaptioned:
        shown = ", ".join(uncaptioned[:5]) + (", ..." if len(uncaptioned) > 5 else "")
        print(f"warning: {len(uncaptioned)} image(s) in {images_dir} have no caption and are left out: {shown}",
              file=sys.stderr)
    names = {s: [n for n in images if split_of.get(n) == s] for s in fmt.SPLITS}
    texts = {s: {n: [] for n in names[s]} for s in fmt.SPLITS}
    for r in rows:
        texts[split_of[r["image"]]][r["image"]].append(r["caption"])
    train_text = [c for caps in texts["train"].values() for c in caps]
    word_to_idx, idx_to_word = build_vocab(train_text, min_count=min_count)
    if len(idx_to_word) == len(SPECIAL_TOKENS):
        raise FolderError(f"no train word occurs at least {min_count} times; lower --min-count")

    # Every picture is decoded before any feature is computed, so one error names all bad ones.
    check_pictures([images[n] for s in fmt.SPLITS for n in names[s]])
    model = registry.get_encoder(encoder, weights, image_size=image_size)
    captions, image_idxs, fc7, urls = {}, {}, {}, {}
    for s in fmt.SPLITS:
        caps = list(texts[s].values())
        captions[s] = encode_captions([c for cs in caps for c in cs], word_to_idx)
        image_idxs[s] = np.repeat(np.arange(len(caps), dtype=np.int32), [len(cs) for cs in caps])
        fc7[s] = encode_files([images[n] for n in names[s]], model)
        urls[s] = [images[n] for n in names[s]]  # stored relative to out_dir
    if pca is None:
        mean = comps = None
        projected, pca_dim = fc7, model.feature_dim
    else:
        mean, comps = feat.fit_pca(fc7["train"], dim=min(pca, len(fc7["train"]), model.feature_dim))
        projected, pca_dim = {s: feat.pca_project(fc7[s], mean, comps, pca) for s in fmt.SPLITS}, pca
    fmt.write_dataset(out_dir, captions, image_idxs, fc7, projected, urls, idx_to_word,
                      extra=lambda tmp: feat.write_record(tmp, image_size, mean, comps, pca_dim, CREATED_BY,
                                                          encoder=model))
    return {
        "out_dir": str(out_dir), "train_images": len(names["train"]), "val_images": len(names["val"]),
        "train_captions": len(captions["train"]), "val_captions": len(captions["val"]),
        "vocab_size": len(idx_to_word), "images_without_captions": uncaptioned,
    }
