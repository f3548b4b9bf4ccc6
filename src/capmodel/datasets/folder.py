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
features of new images the same way. With a grid (grid=G), also each picture's G x G regions
of the encoder's grid layer, projected by a PCA fitted on the train regions (every region a
row; grid_pca components) or not, each channel then standardised over the train regions
(capmodel.datasets.features.fit_grid_transform), in the data set's grid files.

Every check runs before any image is decoded, and the dataset appears only when complete.
Images without any caption are left out with one warning (a folder may hold other files).
Pictures are read with capmodel.image_utils.open_rgb; every unreadable one is named in one
error.
"""

import csv
import os
import sys
from pathlib import Path, PurePosixPath

import numpy as np

from capmodel.datasets import extraction
from capmodel.datasets import features as feat
from capmodel.datasets import format as fmt
from capmodel import image_utils
from capmodel.encoders import randconv, registry
from capmodel.image_utils import IMAGE_SUFFIXES
from capmodel.safety.atomic import remove_file
from capmodel.safety.jsonfile import JSONFileError, read_json
from capmodel.safety.outputs import check_not_inside
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
    """{path relative to images_dir (POSIX): Path} of the picture files in it (IMAGE_SUFFIXES), sorted by name.

    Subfolders are included, also through symbolic links (COCO's train2014/ is often a link
    to shared storage), each real folder once; hidden files and folders are skipped.
    """
    d = Path(images_dir)
    if not d.exists():
        raise FolderError(f"images folder {d} does not exist")
    if not d.is_dir():
        raise FolderError(f"{d} is not a folder of images")
    found, visited = {}, set()
    for root, dirs, files in os.walk(d, followlinks=True):
        real = os.path.realpath(root)
        if real in visited:  # a link back to a folder already listed: a loop or a second way in
            dirs[:] = []
            continue
        visited.add(real)
        dirs[:] = sorted(x for x in dirs if not x.startswith("."))
        rel = Path(root).relative_to(d)
        for name in files:
            p = Path(root) / name
            if not name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES and p.is_file():
                found[(rel / name).as_posix()] = p
    if not found:
        raise FolderError(f"{d} has no pictures ({', '.join(IMAGE_SUFFIXES)})")
    return dict(sorted(found.items()))


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
    empty = []
    for r in rows:
        r["image"] = _normalise_name(r["image"])
        if r["split"] is not None:
            r["split"] = r["split"].lower()  # like the column names
        if not r["image"]:
            raise FolderError(f"{r['where']}: the image name is empty")
        if not isinstance(r["caption"], str) or not tokenize(r["caption"]):
            empty.append(r)
    if len(empty) == 1:
        raise FolderError(f"{empty[0]['where']}: empty caption for image '{empty[0]['image']}' (it has no words)")
    if empty:  # all counted, the first few named: one run finds them all
        shown = "; ".join(f"{r['where']}: image '{r['image']}'" for r in empty[:3])
        raise FolderError(f"{len(empty)} empty captions (they have no words): {shown}"
                          + (", ..." if len(empty) > 3 else ""))
    return rows


def _normalise_name(name):
    """A picture name as a POSIX path ('\\' read as '/'), its spaces kept: a name is a file's name."""
    name = str(name).replace("\\", "/")
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


KARPATHY_SPLITS = {"train": "train", "restval": "train", "val": "val", "test": "test"}


def is_karpathy(data):
    """Whether parsed JSON is a Karpathy split file (dataset_coco.json, dataset_flickr8k.json, ...):
    an object whose 'images' list holds objects with 'sentences'."""
    return isinstance(data, dict) and isinstance(data.get("images"), list) and any(
        isinstance(i, dict) and "sentences" in i for i in data["images"])


def _read_karpathy(path, data):
    """Rows of a Karpathy split file: images[].filepath/filename, split train/restval (both
    train), val or test, sentences[].raw (or their tokens)."""
    rows = []
    for n, item in enumerate(data["images"]):
        where = f"{path} images[{n}]"
        if not isinstance(item, dict) or not isinstance(item.get("filename"), str) or not isinstance(
                item.get("sentences"), list) or not item["sentences"]:
            raise FolderError(f"{where}: expected an object with 'filename' and a non-empty list 'sentences'")
        if not isinstance(item.get("split"), str):
            raise FolderError(f"{where}: no 'split' (Karpathy's files give each image one of "
                              f"{', '.join(KARPATHY_SPLITS)})")
        split = item["split"].strip().lower()
        if split not in KARPATHY_SPLITS:
            raise FolderError(f"{where}: unknown split '{item['split']}'; Karpathy's files use "
                              f"{', '.join(KARPATHY_SPLITS)}")
        image = f"{item['filepath']}/{item['filename']}" if item.get("filepath") else item["filename"]
        for j, sentence in enumerate(item["sentences"]):
            text = sentence.get("raw") if isinstance(sentence, dict) else None
            tokens = sentence.get("tokens") if isinstance(sentence, dict) else None
            if not isinstance(text, str) and isinstance(tokens, list) and all(isinstance(t, str) for t in tokens):
                text = " ".join(tokens)
            if not isinstance(text, str):
                raise FolderError(f"{where} sentences[{j}]: expected 'raw' text or a list of string 'tokens'")
            rows.append({"image": image, "caption": text, "split": KARPATHY_SPLITS[split],
                         "where": f"{where} sentences[{j}]"})
    return rows


def _read_json(path):
    try:
        data = read_json(path, "captions file")
    except JSONFileError as e:
        raise FolderError(str(e)) from None
    if is_karpathy(data):
        return _read_karpathy(path, data)
    rows = []
    if isinstance(data, dict):
        for image, caps in data.items():
            where = f"{path} key '{image}'"
            caps = [caps] if isinstance(caps, str) else caps
            if not isinstance(caps, list) or not caps:
                raise FolderError(f"{where}: expected a caption string or a non-empty list of them")
            if any(isinstance(c, dict) for c in caps):
                raise FolderError(f"{where}: holds objects, not caption strings; a Karpathy split file keeps its "
                                  "pictures under 'images', each with 'filename', 'split' and 'sentences'")
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


def assign_splits(rows, val_fraction=DEFAULT_VAL_FRACTION, seed=0, same=None):
    """{image name: split} from the rows' splits (train, val, test; every data set needs
    train and val), or, when no row has one, a seeded val_fraction of the images in val.

    same: optional {image name: identity of its file}; names of one file (a symlink and
    its target) go to one split, so that val never holds a train picture.
    """
    given = [r for r in rows if r["split"] is not None]
    if given and len(given) != len(rows):
        r = next(r for r in rows if r["split"] is None)
        raise FolderError(f"{r['where']}: no split, but other rows have one; give every row a split or none")
    images = sorted({r["image"] for r in rows})
    groups = {}  # identity -> names, in the order of their first name
    for name in images:
        groups.setdefault((same or {}).get(name, name), []).append(name)
    if given:
        split = {}
        for r in rows:
            if r["split"] not in fmt.ALL_SPLITS:
                raise FolderError(f"{r['where']}: unknown split '{r['split']}'; use one of {', '.join(fmt.ALL_SPLITS)}")
            if split.setdefault(r["image"], r["split"]) != r["split"]:
                raise FolderError(f"{r['where']}: image '{r['image']}' is in split '{r['split']}' here "
                                  f"but '{split[r['image']]}' in an earlier row")
        for s in fmt.SPLITS:
            if s not in split.values():
                raise FolderError(f"no image is in split '{s}'; a dataset needs at least one train and one val image")
        for names in groups.values():
            if len({split[n] for n in names}) > 1:
                shown = ", ".join(f"'{n}' ({split[n]})" for n in names)
                raise FolderError(f"{shown} are the same picture file (a symbolic link and its target) in different "
                                  "splits; put them in one split, or caption only one of them")
        return split
    if not 0 < val_fraction < 1:
        raise FolderError(f"--val-fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    if len(groups) < 2:
        raise FolderError(f"only {len(groups)} captioned picture; a dataset needs at least one train and one val image")
    n_val = min(max(1, round(val_fraction * len(groups))), len(groups) - 1)
    val = set(np.random.default_rng(seed).permutation(len(groups))[:n_val].tolist())
    return {name: "val" if i in val else "train" for i, names in enumerate(groups.values()) for name in names}


# ------------------------------------------------------------------ output


def plan(images_dir, captions_file):
    """What a data set of images_dir and captions_file is made of, checked before any picture
    is decoded: (pictures {name: Path}, caption rows, names of the captioned pictures in
    extraction order (sorted), names of the uncaptioned ones).

    Raises one FolderError naming every captions row whose picture is missing, hidden or
    not a picture file, or naming the first picture whose name holds a line break (which
    the data set's urls files cannot store).
    """
    images = list_images(images_dir)
    rows = read_captions(captions_file)
    missing = {}  # image name -> the first row naming it; all of them in one error
    for r in rows:
        if r["image"] not in images and r["image"] not in missing:
            path = Path(images_dir) / r["image"]
            parts = PurePosixPath(r["image"]).parts
            if PurePosixPath(r["image"]).is_absolute() or ".." in parts:
                what = f"is not a path inside {images_dir}: name pictures by their path relative to it"
            elif any(part.startswith(".") for part in parts) and path.is_file():
                what = "is a hidden file (a name part starts with '.'); capmodel skips hidden files: rename it"
            elif path.is_file():
                what = f"is not a picture file ({', '.join(IMAGE_SUFFIXES)})"
            else:
                what = f"is not in {images_dir}"
                spaced = [n for n in images if n.strip() == r["image"].strip()]
                if spaced:  # names are kept exactly, spaces too
                    what += f" (there is a picture '{spaced[0]}')"
            missing[r["image"]] = f"{r['where']}: image '{r['image']}' {what}"
    if missing:
        raise FolderError("; ".join(missing.values()))
    broken = [r for r in rows if fmt.has_line_break(r["image"])]
    if broken:  # found here, not when the data set's urls files are written after the extraction
        count = len({r["image"] for r in broken})
        raise FolderError(f"{broken[0]['where']}: image {broken[0]['image']!r} has a line break in its name, which "
                          f"a line of {fmt.urls_file('train')} cannot hold ({count} such picture(s)); rename it")
    captioned = {r["image"] for r in rows}
    names = [n for n in images if n in captioned]
    return images, rows, names, [n for n in images if n not in captioned]


def _make_encoder(encoder, weights, image_size, pca, grid=None, grid_pca=None):
    """Check the encoder options and make the encoder (EncoderError/FolderError, one line)."""
    if image_size is not None and registry.is_pretrained(encoder):
        raise FolderError(f"--image-size applies to the randconv encoder only; {encoder} uses torchvision's "
                          "preprocessing for its weights")
    image_size = DEFAULT_IMAGE_SIZE if image_size is None else image_size
    if image_size < MIN_IMAGE_SIZE:
        raise FolderError(f"--image-size must be at least {MIN_IMAGE_SIZE}, got {image_size}")
    if pca is not None and pca < 1:
        raise FolderError(f"--pca must be a positive number of components or 'none', got {pca}")
    if grid is not None and (isinstance(grid, bool) or not isinstance(grid, int) or grid < 1):
        raise FolderError(f"--grid must be a positive number of regions a side, got {grid!r}")
    if grid_pca is not None and grid_pca < 1:
        raise FolderError(f"--grid-pca must be a positive number of components or 'none', got {grid_pca}")
    registry.check_encoder(encoder, weights)
    return lambda: registry.get_encoder(encoder, weights, image_size=image_size)


def extract_features(images_dir, captions_file, out_file, shard=(1, 1), encoder=registry.DEFAULT, weights=None,
                     image_size=None, progress=True, grid=None):
    """One shard of the features of a data set's pictures: `capmodel data features`.

    Inputs:
    - images_dir, captions_file: As make_dataset (the captioned pictures are extracted)
    - out_file: The features file to write (.h5; capmodel.datasets.extraction)
    - shard: (I, N): the I-th of N contiguous parts of the pictures (1-based)
    - encoder, weights, image_size, grid: As make_dataset

    Returns a dict: the file, the shard's rows and the number of pictures.
    """
    out_file = Path(out_file)
    if out_file.suffix.lower() not in (".h5", ".hdf5"):
        raise FolderError(f"features file {out_file} must end in .h5")
    make = _make_encoder(encoder, weights, image_size, None, grid)
    extraction.check_replaceable(out_file)
    images, _, names, _ = plan(images_dir, captions_file)
    model = make()
    model.check_grid(grid)
    start, stop = extraction.shard_range(len(names), *shard, model.batch_size)
    extraction.extract_to_file(out_file, [images[n] for n in names], names, model, start, stop, progress=progress,
                               check=check_pictures, grid=grid)
    return {"features_file": str(out_file), "shard": f"{shard[0]}/{shard[1]}", "rows": [start, stop],
            "pictures": stop - start, "total_pictures": len(names)}


def make_dataset(images_dir, captions_file, out_dir, val_fraction=DEFAULT_VAL_FRACTION, seed=0,
                 min_count=DEFAULT_MIN_COUNT, image_size=None, encoder=registry.DEFAULT, weights=None,
                 pca=fmt.PCA_DIM, features_files=None, progress=True, grid=None, grid_pca=fmt.GRID_PCA_DIM):
    """Build a CS231n-format dataset in out_dir from a folder of images and a captions file.

    Inputs:
    - images_dir: Folder of pictures (image_utils.IMAGE_SUFFIXES)
    - captions_file: CSV (image,caption[,split]), JSON or a Karpathy split file, see the
      module docstring
    - out_dir: Dataset directory to create; it must not exist, be empty, or be a dataset
      capmodel made (capmodel.safety.ownership; it is replaced once the new one is complete)
    - val_fraction, seed: Share of the images that go to val when no split is given
    - min_count: Train words seen fewer times become <UNK>
    - image_size: Side S the images are resized to for the randconv encoder (default 64)
    - encoder, weights: The capmodel.encoders encoder and, for a pretrained CNN, its
      weights file (None: torchvision's download)
    - pca: Width of the PCA fitted on the train features (CS231n: 512), or None for no
      PCA (the PCA feature files then hold the features themselves)
    - features_files: The features files of all shards (extract_features) to use instead
      of extracting here; None extracts into a work file beside out_dir, continued if a
      killed run left one, removed when the data set is complete
    - progress: Show the extraction's progress and ETA on stderr
    - grid: Also store each picture's regions on a G x G grid of the encoder's grid layer
      (capmodel.datasets.format.grid_file); None: no grid
    - grid_pca: Components of the PCA fitted on the train regions (every region a row; at
      most the encoder's channels C: with K >= C it centres and rotates them), or None for
      the encoder's channels; either way each channel is then standardised (zero mean, unit
      variance over the train regions)

    Returns a dict of counts (images and captions per split, vocabulary size) and the
    names of images that had no caption (left out, with one warning on stderr).
    """
    make = _make_encoder(encoder, weights, image_size, pca, grid, grid_pca)
    fmt.check_writable_dataset_dir(out_dir)
    out_dir = Path(out_dir).resolve()
    inputs = [images_dir, captions_file, *([weights] if weights else []), *(features_files or [])]
    check_not_inside(out_dir, inputs, "output data set")  # replacing it would delete them
    images, rows, order, uncaptioned = plan(images_dir, captions_file)
    check_not_inside(out_dir, [images[n] for n in order], "output data set")  # also through symbolic links
    split_of = assign_splits(rows, val_fraction, seed, same={n: images[n].resolve() for n in order})
    if uncaptioned:
        shown = ", ".join(uncaptioned[:5]) + (", ..." if len(uncaptioned) > 5 else "")
        print(f"warning: {len(uncaptioned)} image(s) in {images_dir} have no caption and are left out: {shown}",
              file=sys.stderr)
    splits = [s for s in fmt.ALL_SPLITS if s in split_of.values()]
    names = {s: [n for n in order if split_of[n] == s] for s in splits}
    texts = {s: {n: [] for n in names[s]} for s in splits}
    for r in rows:
        texts[split_of[r["image"]]][r["image"]].append(r["caption"])
    train_text = [c for caps in texts["train"].values() for c in caps]
    word_to_idx, idx_to_word = build_vocab(train_text, min_count=min_count)
    if len(idx_to_word) == len(SPECIAL_TOKENS):
        raise FolderError(f"no train word occurs at least {min_count} times; lower --min-count")
    model = make()
    model.check_grid(grid)
    if pca is not None and pca > model.feature_dim:  # the projection would pad zero columns
        raise FolderError(f"--pca {pca} is wider than the features of encoder {encoder} ({model.feature_dim}); "
                          f"choose at most {model.feature_dim}, or 'none'")
    work = out_dir.parent / f".{out_dir.name}.features.h5"  # ours: capmodel.datasets.extraction marks it
    given = features_files is not None
    if not given:
        # Every picture is decoded before any feature is computed, so one error names all bad ones.
        extraction.extract_to_file(work, [images[n] for n in order], order, model, progress=progress,
                                   check=check_pictures, grid=grid)
        features_files = [work]
    source = extraction.Features(features_files, order, [images[n] for n in order], model.record_fields(), grid)
    row = {n: i for i, n in enumerate(order)}
    idx = {s: np.array([row[n] for n in names[s]], dtype=np.int64) for s in splits}
    captions, image_idxs, fc7, projected, urls, references = {}, {}, {}, {}, {}, {}
    for s in splits:
        caps = list(texts[s].values())
        captions[s] = encode_captions([c for cs in caps for c in cs], word_to_idx)
        image_idxs[s] = np.repeat(np.arange(len(caps), dtype=np.int32), [len(cs) for cs in caps])
        fc7[s] = _feature_writer(source, idx[s], model.feature_dim)
        urls[s] = [images[n] for n in names[s]]  # stored relative to out_dir
        if s != "train":
            references[s] = [[" ".join(tokenize(c)) for c in cs] for cs in caps]
    n_train = len(idx["train"])
    if pca is None:
        mean = comps = None
        projected, pca_dim = fc7, model.feature_dim
    else:
        mean, comps = feat.fit_pca_blocks(lambda: source.rows(idx["train"]), n_train, model.feature_dim,
                                          dim=min(pca, n_train, model.feature_dim))
        projected = {s: _feature_writer(source, idx[s], pca, lambda x: feat.pca_project(x, mean, comps, pca))
                     for s in splits}
        pca_dim = pca
    grids, grid_mean, grid_comps = (None, None, None) if grid is None else _grids(source, idx, grid, grid_pca,
                                                                                   model.grid_dim)
    fmt.write_dataset(out_dir, captions, image_idxs, fc7, projected, urls, idx_to_word, references=references,
                      grids=grids,
                      extra=lambda tmp: feat.write_record(tmp, image_size, mean, comps, pca_dim, CREATED_BY,
                                                          encoder=model, grid=grid, grid_mean=grid_mean,
                                                          grid_components=grid_comps))
    for f in (work, work.with_name(work.name + extraction.PARTIAL_SUFFIX)):  # also those a killed run left
        if not (given and any(f.resolve() == Path(g).resolve() for g in features_files)):
            remove_file(f, extraction.is_ours)
    counts = {f"{s}_{what}": len(v[s]) for s in splits for what, v in (("images", names), ("captions", captions))}
    return {"out_dir": str(out_dir), **counts, "vocab_size": len(idx_to_word), "images_without_captions": uncaptioned}


def _grids(source, idx, grid, grid_pca, channels):
    """({split: format.write_dataset grids entry}, grid transform mean, components) of the
    regions in source: the transform (feat.fit_grid_transform: the PCA unless grid_pca is None,
    then every channel standardised) is fitted on the train regions a block of pictures at a
    time, one row per region, and each split's grid file is written a block at a time."""
    L, n_train = grid * grid, len(idx["train"])
    train_rows = lambda: (b.reshape(-1, channels) for b in source.rows(idx["train"], key=extraction.REGIONS_KEY))
    dim = None if grid_pca is None else min(grid_pca, n_train * L, channels)
    mean, comps = feat.fit_grid_transform(train_rows, n_train * L, channels, dim)
    width = comps.shape[1]

    def writer(i):
        blocks = lambda: (feat.grid_project(b, mean, comps) for b in source.rows(i, key=extraction.REGIONS_KEY))
        return lambda path: fmt.write_grid(path, len(i), grid, width, blocks())

    return {s: writer(i) for s, i in idx.items()}, mean, comps


def _feature_writer(source, idx, width, transform=None):
    """A format.write_dataset features entry: writes the rows idx of source (transformed)
    a block at a time."""
    blocks = lambda: (b if transform is None else transform(b) for b in source.rows(idx))
    return lambda path: fmt.write_features(path, len(idx), width, blocks())
