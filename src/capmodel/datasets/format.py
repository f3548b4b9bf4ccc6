"""The CS231n COCO captioning on-disk format, defined once.

A dataset directory holds:
- coco2014_captions.h5: train_captions (Nc, 17) int32, train_image_idxs (Nc,) int32,
  val_captions, val_image_idxs
- train2014_vgg16_fc7.h5 / val2014_vgg16_fc7.h5: dataset `features`, (Ni, F) float32
- train2014_vgg16_fc7_pca.h5 / val2014_vgg16_fc7_pca.h5: dataset `features`, (Ni, 512) float32
- coco2014_vocab.json: {"idx_to_word": [...], "word_to_idx": {...}}, with <NULL>=0,
  <START>=1, <END>=2, <UNK>=3
- train2014_urls.txt / val2014_urls.txt: one image location per line, Ni lines: a POSIX
  path relative to the dataset directory (the images of a dataset capmodel made, e.g.
  images/train/000001.png or ../photos/a.png), or an http(s) URL (CS231n's COCO), or an
  absolute file:// URL (which some data sets hold), read as it is

Beyond CS231n (capmodel's own data sets; the loader reads them when present):
- an optional `test` split: test_captions / test_image_idxs in the captions file, and
  test2014_vgg16_fc7(_pca).h5 and test2014_urls.txt (Karpathy's splits have one);
- references.json: {"val": [[caption, ...] per image], "test": ...}, each split's reference
  captions as words (capmodel.vocab.tokenize joined by spaces), neither truncated nor
  mapped through the training vocabulary, so scores compare against the words people
  wrote rather than <UNK>s. Without it, references are decoded from the captions file.
- a grid of region features per split, for attention models: {split}2014_grid.h5
  (grid_file), dataset `features`, float16 (Ni, L, C), L = G * G regions of each image in
  row-major order (attribute `grid` = G on the dataset), C channels (after the grid PCA
  the data set records, or the encoder's own). Every split has one or none does; the
  loader adds {split}_regions when they are there.

The writer, the loader (capmodel.coco_utils), the validator and every generator use the
names and checks below.
"""

import json
import math
import os
import re
import urllib.parse
import urllib.request
from pathlib import Path

import h5py
import numpy as np

from capmodel.safety.jsonfile import JSONFileError, read_json
from capmodel.safety.staging import check_replaceable_dir, staged_dir
from capmodel.vocab import CAPTION_LENGTH, SPECIAL_TOKENS

SPLITS = ("train", "val")  # every data set has these
OPTIONAL_SPLITS = ("test",)  # capmodel's data sets may have these too
ALL_SPLITS = SPLITS + OPTIONAL_SPLITS
CAPTIONS_FILE = "coco2014_captions.h5"
VOCAB_FILE = "coco2014_vocab.json"
REFERENCES_FILE = "references.json"
FEATURES_KEY = "features"
PCA_DIM = 512
GRID_ATTR = "grid"  # attribute of a grid file's dataset: the side G of its L = G * G regions
GRID_DTYPE = np.float16
GRID_PCA_DIM = 512  # default width of the PCA fitted on the train regions
BLOCK_VALUES = 1 << 22  # values of a grid read or checked at a time (memory stays bounded)
REMOTE_SCHEMES = ("http", "https")
DATASET_DIR = "dataset directory"  # how messages name a data set being written


def features_file(split, pca=True):
    """File name of a split's features, e.g. train2014_vgg16_fc7_pca.h5."""
    return f"{split}2014_vgg16_fc7{'_pca' if pca else ''}.h5"


def grid_file(split):
    """File name of a split's grid of region features, e.g. train2014_grid.h5."""
    return f"{split}2014_grid.h5"


def urls_file(split):
    """File name of a split's image URLs, e.g. val2014_urls.txt."""
    return f"{split}2014_urls.txt"


def required_files():
    """Every file a complete dataset directory has."""
    names = [CAPTIONS_FILE, VOCAB_FILE]
    for split in SPLITS:
        names += [features_file(split, True), features_file(split, False), urls_file(split)]
    return names


def splits_of(base_dir):
    """The splits of a dataset directory: train, val, and each optional split any of whose
    files is there (a missing one of them is then reported as missing)."""
    base = Path(base_dir)
    return SPLITS + tuple(s for s in OPTIONAL_SPLITS if any(
        (base / f).exists() for f in (urls_file(s), features_file(s, True), features_file(s, False), grid_file(s))))


def check_split(base_dir, split):
    """Raise DatasetError unless the dataset at base_dir has the split."""
    if split not in splits_of(base_dir):
        known = ", ".join(ALL_SPLITS)
        raise DatasetError(f"dataset {base_dir} has no {split} split ({urls_file(split)} is missing)"
                           if split in ALL_SPLITS else f"unknown split '{split}'; use one of {known}")


def has_grid(base_dir):
    """Whether a dataset directory has grid files (any split's: a missing one is then reported)."""
    return any((Path(base_dir) / grid_file(s)).exists() for s in ALL_SPLITS)


def write_dataset(out_dir, captions, image_idxs, features, pca_features, urls, idx_to_word, extra=None,
                  references=None, grids=None):
    """Write a complete dataset directory atomically.

    Everything is written into a temporary sibling directory that is renamed onto
    out_dir at the end (capmodel.safety.staging.staged_dir), so out_dir is either absent,
    the old dataset, or complete. The new directory carries capmodel's ownership marker;
    an existing out_dir is replaced only if it is empty or a dataset capmodel made, to which
    nobody added a file since (see capmodel.safety.ownership).

    Inputs (dicts keyed by 'train', 'val' and optionally 'test', the splits written):
    - captions: int32 arrays (Nc, 17); image_idxs: int32 arrays (Nc,)
    - features: float32 (Ni, F); pca_features: float32 (Ni, 512). A features entry may
      instead be a function that writes the split's file at the path it is given
      (write_features), for features streamed from disk.
    - urls: lists of Ni image locations: local files (Path objects, plain paths or file://
      URLs), stored relative to out_dir so that the dataset can move with its images, or
      http(s) URLs, stored unchanged (see url_entry)
    - idx_to_word: list of words, starting with the special tokens
    - extra: optional function called with the temporary directory to add more files
      (the shapes dataset's images) before the rename
    - references: optional dict split -> list of Ni lists of reference strings
      (REFERENCES_FILE), for the splits that are scored
    - grids: optional dict with every split: its regions (Ni, L, C) (stored as float16,
      grid_file), or a function that writes the split's grid file at the path it is given
      (write_grid)
    """
    splits = tuple(captions)
    if set(SPLITS) - set(splits) or set(splits) - set(ALL_SPLITS):
        raise ValueError(f"write_dataset: the splits must be {', '.join(SPLITS)} and optionally "
                         f"{', '.join(OPTIONAL_SPLITS)}, got {', '.join(splits)}")
    if grids is not None and set(grids) != set(splits):
        raise ValueError(f"write_dataset: grids must cover the splits {', '.join(splits)}, got {', '.join(grids)}")
    out_dir = Path(out_dir)
    with staged_dir(out_dir, "dataset", DATASET_DIR) as tmp:
        final = out_dir.parent.resolve() / out_dir.name  # where the dataset will be
        entries = {s: _url_entries(final, urls[s]) for s in splits}
        _write_h5(tmp / CAPTIONS_FILE, {
            f"{s}_{k}": np.asarray(v[s], dtype=np.int32)
            for s in splits for k, v in (("captions", captions), ("image_idxs", image_idxs))
        })
        for s in splits:
            for pca, given in ((False, features[s]), (True, pca_features[s])):
                if callable(given):
                    given(tmp / features_file(s, pca))
                else:
                    _write_h5(tmp / features_file(s, pca), {FEATURES_KEY: np.asarray(given, dtype=np.float32)})
            (tmp / urls_file(s)).write_text("".join(u + "\n" for u in entries[s]))
            if grids is not None:
                given = grids[s]
                if callable(given):
                    given(tmp / grid_file(s))
                else:
                    given = np.asarray(given)
                    write_grid(tmp / grid_file(s), len(given), math.isqrt(given.shape[1]), given.shape[2], [given])
        if references:
            (tmp / REFERENCES_FILE).write_text(json.dumps(
                {s: [list(r) for r in references[s]] for s in ALL_SPLITS if s in references}, ensure_ascii=False))
        vocab = {"idx_to_word": list(idx_to_word), "word_to_idx": {w: i for i, w in enumerate(idx_to_word)}}
        (tmp / VOCAB_FILE).write_text(json.dumps(vocab))
        if extra is not None:
            extra(tmp)


def url_entry(data_dir, location):
    """How the urls file of the dataset at data_dir records one image (the inverse of
    image_location).

    Inputs:
    - data_dir: The dataset directory (it need not exist yet)
    - location: An http(s) URL, returned unchanged; or a local file: a Path, a plain path
      (relative to the working directory) or a file:// URL

    Returns the entry, a str: for a local file its POSIX path relative to data_dir, e.g.
    'images/train/000001.png' or '../../photos/a.png', from the resolved data set directory
    to the picture's absolute path as named (a folder that is a symbolic link, such as
    COCO's train2014/ on shared storage, stays in the entry, so the data set and that link
    can move together). Raises ValueError for another URL scheme
    and for a path that a line of the urls file cannot hold.
    """
    return _url_entries(Path(data_dir).resolve(), [location])[0]


def _url_entries(base, locations):
    """url_entry of each location, against base, an absolute directory without symbolic links."""
    entries = []
    for location in locations:
        scheme = None if isinstance(location, os.PathLike) else _SCHEME.match(str(location))
        if scheme:
            scheme = scheme.group(1).lower()
            if scheme in REMOTE_SCHEMES:
                entries.append(str(location))
                continue
            if scheme == "file":
                location = urllib.request.url2pathname(urllib.parse.urlparse(str(location)).path)
            else:
                raise ValueError(f"image location {location}: unsupported URL scheme '{scheme}' "
                                 f"(a file, a file:// URL or an {'/'.join(REMOTE_SCHEMES)} URL)")
        # The picture's path as named (a folder linked to shared storage stays the link), from
        # the resolved data set directory: moved together, the two still find each other.
        entry = Path(os.path.relpath(os.path.abspath(location), base)).as_posix()
        if _has_scheme(entry):  # a file named like 'photo:1.png' in the dataset directory itself
            entry = f"./{entry}"
        if entry != entry.strip() or has_line_break(entry):  # the reader takes stripped lines
            raise ValueError(f"image {str(location)!r}: a path with a line break or that starts or ends with a "
                             f"space cannot be stored in a line of {urls_file('train')}; rename the file")
        entries.append(entry)
    return entries


def has_line_break(text):
    """Whether text holds a line break of any kind (str.splitlines': \\n, \\r, \\v, \\f,
    U+2028, ...), which one line of a urls file cannot hold."""
    return len(f"{text}.".splitlines()) > 1


def image_location(data_dir, entry):
    """Where to read the image that an entry of data_dir's urls file records.

    Inputs:
    - data_dir: The dataset directory; a relative one is relative to the working directory
    - entry: A line of the urls file: a URL (http(s) or file://, returned unchanged) or a
      path relative to data_dir (an absolute path is taken as it is)

    Returns a str, an http(s) URL or an absolute file:// URL, that
    capmodel.image_utils.image_from_url reads.
    """
    return image_locations(data_dir, [entry])[0]


def image_locations(data_dir, entries):
    """image_location of each entry (data_dir is resolved once): a list of str."""
    base = Path(data_dir).resolve()
    return [str(e) if _has_scheme(str(e)) else Path(os.path.normpath(base / str(e))).as_uri() for e in entries]


# A URL's scheme (RFC 3986), of two letters or more: one letter is a Windows drive.
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]+):")


def _has_scheme(entry):
    return _SCHEME.match(entry) is not None


def check_writable_dataset_dir(out_dir):
    """Raise OwnershipError unless out_dir may receive a dataset: absent, empty, or one of
    ours to which nobody added a file since capmodel wrote it
    (capmodel.safety.staging.check_replaceable_dir).

    Call it before any expensive work, so a run that would be refused fails at once.
    """
    check_replaceable_dir(out_dir, "dataset", DATASET_DIR)


def _write_h5(path, datasets):
    # Fixed creation settings keep the bytes identical for identical arrays.
    with h5py.File(path, "w", track_order=False, libver="earliest") as f:
        for name, value in datasets.items():
            f.create_dataset(name, data=value, track_times=False)


def write_features(path, num_rows, width, chunks):
    """Write a features file (FEATURES_KEY, float32 (num_rows, width)) from an iterable of
    row blocks, holding one block in memory at a time; the bytes equal those of
    _write_h5 with the whole array."""
    with h5py.File(path, "w", track_order=False, libver="earliest") as f:
        d = f.create_dataset(FEATURES_KEY, shape=(num_rows, width), dtype=np.float32, track_times=False)
        at = 0
        for block in chunks:
            d[at : at + len(block)] = block
            at += len(block)
        if at != num_rows:
            raise ValueError(f"write_features: {path} got {at} rows, expected {num_rows}")


def write_grid(path, num_rows, grid, width, chunks):
    """Write a grid file (FEATURES_KEY, float16 (num_rows, grid * grid, width), attribute
    GRID_ATTR = grid) from an iterable of row blocks (n, grid * grid, width), holding one
    block in memory at a time."""
    if grid < 1:
        raise ValueError(f"write_grid: {path}: the grid side must be at least 1, got {grid}")
    shape = (num_rows, grid * grid, width)
    with h5py.File(path, "w", track_order=False, libver="earliest") as f:
        d = f.create_dataset(FEATURES_KEY, shape=shape, dtype=GRID_DTYPE, track_times=False)
        d.attrs[GRID_ATTR] = np.int64(grid)
        at = 0
        for block in chunks:
            if block.shape[1:] != shape[1:]:
                raise ValueError(f"write_grid: {path} got a block of shape {block.shape}, expected (n, {shape[1]}, "
                                 f"{shape[2]})")
            d[at : at + len(block)] = np.asarray(block, dtype=GRID_DTYPE)
            at += len(block)
        if at != num_rows:
            raise ValueError(f"write_grid: {path} got {at} rows, expected {num_rows}")


def _gather(base_dir, kinds, regions="check"):
    """Read what can be read of a dataset; return (data, problems), one message per problem.

    regions: "load" reads the grid files into {split}_regions, "check" only checks them (the
    data then holds placeholders of their shape), None leaves them alone."""
    base = Path(base_dir)
    if not base.is_dir():
        what = "is a file, not a dataset directory" if base.exists() else "dataset directory does not exist"
        return {}, [f"{base}: {what}"]
    splits = splits_of(base)
    readers = [lambda: _read_captions(base, splits), lambda: _read_vocab(base), lambda: _read_references(base, splits)]
    for split in splits:
        readers.append(lambda s=split: {f"{s}_urls": _read_urls(base, s)})
        for pca in kinds:
            key = f"{split}_features" + ("_pca" if pca and len(kinds) > 1 else "")
            readers.append(lambda s=split, p=pca, k=key: {k: _read_features(base, s, p)})
        if regions is not None and has_grid(base):
            readers.append(lambda s=split: {f"{s}_regions": _read_grid(base, s, load=regions == "load")})
    data, found = {}, []
    if len(kinds) == 1:
        data["features_pca"] = kinds[0]
    for read in readers:
        try:
            data.update(read())
        except DatasetError as e:
            found.append(str(e))
    return data, found + problems_in_data(data, base)


def problems(base_dir, pca_features=None, pictures=False):
    """Every way in which base_dir deviates from the format, as one message per problem.

    pca_features None checks both feature sets; True or False checks only that one. With
    pictures, every local picture the urls files name must exist too (a stat each; http(s)
    URLs are not fetched): training needs only the features, captioning and reports the
    pictures. Returns an empty list for a valid dataset.
    """
    kinds = (True, False) if pca_features is None else (bool(pca_features),)
    data, found = _gather(base_dir, kinds)
    if pictures:
        found += _missing_pictures(Path(base_dir), data)
    return found


def _missing_pictures(base, data):
    """One message per urls file that names local pictures that do not exist."""
    found = []
    for split in ALL_SPLITS:
        entries = data.get(f"{split}_urls")
        if entries is None:
            continue
        missing = [i for i, url in enumerate(image_locations(base, entries)) if url.startswith("file:")
                   and not os.path.isfile(urllib.request.url2pathname(urllib.parse.urlparse(url).path))]
        if missing:
            found.append(f"{base}/{urls_file(split)}: {len(missing)} pictures do not exist (first: line "
                         f"{missing[0] + 1}, {entries[missing[0]]})")
    return found


def problems_in_data(data, where="data"):
    """Consistency problems between the loaded arrays of a dataset (see problems())."""
    found = []
    V = len(data["idx_to_word"]) if "idx_to_word" in data else None
    if "idx_to_word" in data:
        for i, tok in enumerate(SPECIAL_TOKENS):
            w2i = data.get("word_to_idx", {})
            if w2i.get(tok) != i or data["idx_to_word"][i:i + 1] != [tok]:
                found.append(f"{where}/{VOCAB_FILE}: special token {tok} must have id {i}")
        if data.get("word_to_idx") and any(data["idx_to_word"][i] != w for w, i in data["word_to_idx"].items()
                                           if 0 <= i < V):
            found.append(f"{where}/{VOCAB_FILE}: idx_to_word and word_to_idx disagree")
    found += _feature_problems(data, where)
    found += _grid_problems(data, where)
    caps = data.get("train_captions")
    if caps is not None and caps.shape[0] == 0:
        found.append(f"{where}/{CAPTIONS_FILE}: the train split has no captions")
    for split in [s for s in ALL_SPLITS if f"{s}_urls" in data or f"{s}_captions" in data]:
        caps, idxs = data.get(f"{split}_captions"), data.get(f"{split}_image_idxs")
        if caps is not None and caps.size and "word_to_idx" in data:
            found += _caption_problems(caps, data["word_to_idx"], f"{where}/{CAPTIONS_FILE}: {split}_captions")
        if caps is not None and V is not None and caps.size and (caps.min() < 0 or caps.max() >= V):
            found.append(f"{where}/{CAPTIONS_FILE}: {split}_captions has word ids in "
                         f"[{caps.min()}, {caps.max()}], outside the vocabulary [0, {V})")
        if data.get(f"{split}_urls") is not None:
            found += _url_problems(data[f"{split}_urls"], f"{where}/{urls_file(split)}")
        sizes = {}
        for key in (f"{split}_features", f"{split}_features_pca", f"{split}_urls", f"{split}_references"):
            if data.get(key) is not None:
                sizes[key] = len(data[key])
        if len(set(sizes.values())) > 1:
            found.append(f"{where}: {split} image counts disagree: "
                         + ", ".join(f"{k} has {n}" for k, n in sizes.items()))
        if idxs is not None and sizes and idxs.size:
            n_img = min(sizes.values())
            if idxs.min() < 0 or idxs.max() >= n_img:
                found.append(f"{where}/{CAPTIONS_FILE}: {split}_image_idxs has values in "
                             f"[{idxs.min()}, {idxs.max()}], but there are only {n_img} {split} images")
    return found


def _feature_keys(data):
    """(data key, pca?) of each split's features: both kinds, or one kind under _features."""
    if any(f"{s}_features_pca" in data for s in SPLITS):
        return (("_features_pca", True), ("_features", False))
    return (("_features", data.get("features_pca", True)),)


def _feature_problems(data, where):
    """Empty or non-finite features, and split widths that differ."""
    found = []
    for suffix, pca in _feature_keys(data):
        widths = {}
        for split in ALL_SPLITS:
            f = data.get(split + suffix)
            if f is None:
                continue
            name = f"{where}/{features_file(split, pca)}"
            if f.shape[1] == 0:
                found.append(f"{name}: '{FEATURES_KEY}' has no columns (shape {f.shape})")
                continue
            widths[split] = f.shape[1]
            finite = np.isfinite(f).all(axis=1)
            if not finite.all():
                rows = np.flatnonzero(~finite)
                found.append(f"{name}: {len(rows)} rows of '{FEATURES_KEY}' hold NaN or Inf (first: row {rows[0]})")
        if len(set(widths.values())) > 1:
            found.append(f"{where}: the splits' features differ in width: "
                         + ", ".join(f"{features_file(s, pca)} has {w}" for s, w in widths.items()))
    return found


def _grid_problems(data, where):
    """Grids whose rows are not the split's images, and splits whose grids differ in shape."""
    found, shapes = [], {}
    for split in ALL_SPLITS:
        regions = data.get(f"{split}_regions")
        if regions is None:
            continue
        shapes[split] = regions.shape[1:]
        images = next((len(data[k]) for k in (f"{split}_urls", f"{split}_features", f"{split}_features_pca")
                       if data.get(k) is not None), None)
        if images is not None and len(regions) != images:
            found.append(f"{where}/{grid_file(split)}: '{FEATURES_KEY}' has {len(regions)} rows, but the {split} "
                         f"split has {images} images")
    if len(set(shapes.values())) > 1:
        found.append(f"{where}: the splits' grids differ in shape (L regions, C channels): "
                     + ", ".join(f"{grid_file(s)} has {shape}" for s, shape in shapes.items()))
    return found


def _url_problems(entries, name):
    """Empty entries and URL schemes that no reader supports (a path or http(s)/file URL is fine)."""
    found = []
    empty = [i for i, e in enumerate(entries) if not e]
    if empty:
        found.append(f"{name}: {len(empty)} empty lines (first: line {empty[0] + 1})")
    schemes = {m.group(1).lower() for m in map(_SCHEME.match, entries) if m}
    other = sorted(schemes - {*REMOTE_SCHEMES, "file"})
    if other:
        found.append(f"{name}: unsupported URL scheme(s) {', '.join(other)}: an entry is a path relative to "
                     f"the dataset directory or an {'/'.join(REMOTE_SCHEMES)} or file URL")
    return found


def _caption_problems(caps, word_to_idx, name):
    """Captions must start with <START> and hold at least one word before <END>/<NULL>."""
    found = []
    start, null, end = (word_to_idx.get(t) for t in (SPECIAL_TOKENS[1], SPECIAL_TOKENS[0], SPECIAL_TOKENS[2]))
    no_start = np.flatnonzero(caps[:, 0] != start)
    if len(no_start):
        found.append(f"{name}: {len(no_start)} captions do not start with {SPECIAL_TOKENS[1]} "
                     f"(first: row {no_start[0]})")
    empty = np.flatnonzero(np.isin(caps[:, 1], [null, end]))
    if len(empty):
        found.append(f"{name}: {len(empty)} captions hold no word (first: row {empty[0]})")
    return found


class DatasetError(ValueError):
    """A dataset file is missing or does not follow the format."""


def _open_h5(path):
    if not path.exists():
        raise DatasetError(f"{path}: missing file")
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise DatasetError(f"{path}: not a readable HDF5 file ({e})")


def _read_captions(base, splits=SPLITS):
    path = base / CAPTIONS_FILE
    out = {}
    with _open_h5(path) as f:
        for split in splits:
            caps_key, idx_key = f"{split}_captions", f"{split}_image_idxs"
            for key in (caps_key, idx_key):
                if key not in f:
                    raise DatasetError(f"{path}: missing dataset '{key}'")
                if not np.issubdtype(f[key].dtype, np.integer):
                    raise DatasetError(f"{path}: '{key}' must be integer, got {f[key].dtype}")
            caps, idxs = np.asarray(f[caps_key]), np.asarray(f[idx_key])
            if caps.ndim != 2 or caps.shape[1] != CAPTION_LENGTH:
                raise DatasetError(f"{path}: '{caps_key}' must have shape (N, {CAPTION_LENGTH}), got {caps.shape}")
            if idxs.shape != (caps.shape[0],):
                raise DatasetError(f"{path}: '{idx_key}' must have shape ({caps.shape[0]},) to match "
                                   f"'{caps_key}', got {idxs.shape}")
            out[caps_key], out[idx_key] = caps, idxs
    return out


def _read_features(base, split, pca):
    path = base / features_file(split, pca)
    with _open_h5(path) as f:
        if FEATURES_KEY not in f:
            raise DatasetError(f"{path}: missing dataset '{FEATURES_KEY}'")
        d = f[FEATURES_KEY]
        if d.ndim != 2 or not np.issubdtype(d.dtype, np.floating):
            raise DatasetError(f"{path}: '{FEATURES_KEY}' must be a 2-D float array, got {d.dtype} {d.shape}")
        return np.asarray(d)


def _read_grid(base, split, load=True):
    """A split's grid file checked (dtype, shape, grid side, finite values, a block of rows
    at a time); its regions float16 (Ni, L, C), or if not load a placeholder of their shape
    and dtype that holds no memory."""
    path = base / grid_file(split)
    if not path.exists() and has_grid(base):
        raise DatasetError(f"{path}: missing file (the data set's other splits have a grid: every split has one "
                           "or none does)")
    with _open_h5(path) as f:
        if FEATURES_KEY not in f:
            raise DatasetError(f"{path}: missing dataset '{FEATURES_KEY}'")
        d = f[FEATURES_KEY]
        if d.ndim != 3 or d.dtype != GRID_DTYPE:
            raise DatasetError(f"{path}: '{FEATURES_KEY}' must be a float16 array (N, L, C), got {d.dtype} {d.shape}")
        n, L, C = d.shape
        side = math.isqrt(L)
        if L == 0 or side * side != L or C == 0:
            raise DatasetError(f"{path}: '{FEATURES_KEY}' must hold L = G * G regions of C > 0 channels per image, "
                               f"got shape {d.shape}")
        grid = d.attrs.get(GRID_ATTR)
        if grid is None or np.ndim(grid) != 0 or grid != side:
            raise DatasetError(f"{path}: attribute '{GRID_ATTR}' of '{FEATURES_KEY}' must be the grid side {side} "
                               f"of its {L} regions, got {grid!r}")
        values = np.asarray(d) if load else None
        source = d if values is None else values
        step = max(1, BLOCK_VALUES // (L * C))
        for s in range(0, n, step):
            finite = np.isfinite(source[s : s + step]).all(axis=(1, 2))
            if not finite.all():
                raise DatasetError(f"{path}: the regions of row {s + int(np.argmin(finite))} of '{FEATURES_KEY}' "
                                   "hold NaN or Inf")
    return values if load else np.broadcast_to(np.zeros((), GRID_DTYPE), (n, L, C))


def grid_layouts(base_dir):
    """{split: (shape, dtype)} of the grid files of a data set's splits, read without
    loading their regions (for checks made before loading); a split whose grid file is
    missing or unreadable is left out: problems() and load() name it."""
    out = {}
    for split in splits_of(base_dir):
        try:
            with h5py.File(Path(base_dir) / grid_file(split), "r") as f:
                d = f[FEATURES_KEY]
                out[split] = (d.shape, d.dtype)
        except (OSError, KeyError):
            continue
    return out


def _read_json(path, what):
    try:
        return read_json(path, what)
    except JSONFileError as e:
        raise DatasetError(str(e)) from None


def _read_vocab(base):
    path = base / VOCAB_FILE
    if not path.exists():
        raise DatasetError(f"{path}: missing file")
    vocab = _read_json(path, "vocabulary file")
    if not isinstance(vocab, dict):
        raise DatasetError(f"{path}: must be a JSON object with idx_to_word and word_to_idx, "
                           f"got a {type(vocab).__name__}")
    for key, kind in (("idx_to_word", list), ("word_to_idx", dict)):
        if not isinstance(vocab.get(key), kind):
            raise DatasetError(f"{path}: missing key '{key}' ({kind.__name__})")
    if not all(isinstance(w, str) for w in vocab["idx_to_word"]):
        raise DatasetError(f"{path}: idx_to_word must be a list of strings")
    bad = [w for w, i in vocab["word_to_idx"].items() if isinstance(i, bool) or not isinstance(i, int)]
    if bad:
        raise DatasetError(f"{path}: word_to_idx['{bad[0]}'] must be an integer index, "
                           f"got {vocab['word_to_idx'][bad[0]]!r}")
    return {"idx_to_word": vocab["idx_to_word"], "word_to_idx": vocab["word_to_idx"]}


def _read_references(base, splits):
    """{split_references: [[str, ...] per image]} from REFERENCES_FILE, if the dataset has one."""
    path = base / REFERENCES_FILE
    if not path.exists():
        return {}
    refs = _read_json(path, "references file")
    if not isinstance(refs, dict):
        raise DatasetError(f"{path}: must be a JSON object split -> list of reference lists")
    out = {}
    for split, per_image in refs.items():
        if split not in splits:
            raise DatasetError(f"{path}: split '{split}' is not a split of this dataset ({', '.join(splits)})")
        if not isinstance(per_image, list) or not all(
                isinstance(r, list) and r and all(isinstance(c, str) and c.strip() for c in r) for r in per_image):
            raise DatasetError(f"{path}: '{split}' must be a list of non-empty lists of non-empty strings, "
                               "one list per image")
        out[f"{split}_references"] = per_image
    return out


def _read_urls(base, split):
    path = base / urls_file(split)
    if not path.exists():
        raise DatasetError(f"{path}: missing file")
    return np.asarray([line.strip() for line in path.read_text().splitlines()])


def read_urls(base_dir, split):
    """The entries of a split's urls file as stored (see image_location), a (Ni,) str array.

    Outputs that may move with a run directory (the samples files) keep these, not the
    absolute locations that load() returns. Raises DatasetError when the file is missing.
    """
    return _read_urls(Path(base_dir), split)


def sizes(base_dir):
    """How large a dataset is, read without loading its captions or features (for reports).

    Returns a dict with <split>_images (lines of the URL files) and <split>_captions for
    each split (splits_of), and vocab_size (words, special tokens included).
    Raises DatasetError naming the file when one is missing or malformed; problems()
    checks the rest.
    """
    base = Path(base_dir)
    out = {}
    path = base / CAPTIONS_FILE
    with _open_h5(path) as f:
        for split in splits_of(base):
            key = f"{split}_captions"
            if key not in f:
                raise DatasetError(f"{path}: missing dataset '{key}'")
            out[f"{split}_images"] = len(_read_urls(base, split))
            out[key] = f[key].shape[0]  # the shape only: no caption is read
    out["vocab_size"] = len(_read_vocab(base)["idx_to_word"])
    return out


def load(base_dir, pca_features=True, regions=True):
    """Read every part of a dataset; raise DatasetError listing all problems found.

    The {split}_urls are where to read each image: the entries of the urls files resolved
    against base_dir (image_locations), http(s) URLs as stored. A data set with grid files
    adds {split}_regions, float16 (Ni, L, C), unless regions is False (they are then
    neither read nor checked).
    """
    data, found = _gather(base_dir, (bool(pca_features),), regions="load" if regions else None)
    if found:
        raise DatasetError(f"invalid dataset {base_dir}:\n" + "\n".join(f"- {p}" for p in found))
    data.pop("features_pca", None)
    for split in splits_of(base_dir):
        data[f"{split}_urls"] = np.asarray(image_locations(base_dir, data[f"{split}_urls"]))
    return data
