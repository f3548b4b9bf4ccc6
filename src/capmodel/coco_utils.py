"""Load CS231n-format COCO captioning data, decode captions and sample minibatches."""

import os

import numpy as np

from capmodel.datasets import format as fmt
from capmodel.vocab import END, NULL, START

DATA_DIR_ENV = "CAPMODEL_DATA_DIR"


def load_coco_data(base_dir=None, max_train=None, pca_features=True, rng=None, regions=True):
    """Load a dataset directory in the CS231n on-disk format (see capmodel.datasets.format).

    Inputs:
    - base_dir: Dataset directory; defaults to the CAPMODEL_DATA_DIR environment variable
    - max_train: If given, subsample this many training captions, with replacement, as
      CS231n did
    - pca_features: Load the 512-d PCA features (True) or the full fc7 features (False)
    - rng: Generator or seed for the subsampling (default: the global NumPy state, as CS231n)
    - regions: Read the data set's grid of region features, when it has one (False leaves
      them on disk: a COCO grid is gigabytes)

    Returns a dict with train_captions, train_image_idxs, val_captions, val_image_idxs,
    train_features, val_features, idx_to_word, word_to_idx, train_urls, val_urls; for a
    data set with a test split, the same test_ keys; with stored reference captions,
    <split>_references (lists of strings per image; see capmodel.datasets.format); for a
    data set with grid files, <split>_regions, float16 (Ni, L, C): L regions of C channels
    per image, for attention models.
    Raises capmodel.datasets.format.DatasetError naming every problem found.
    """
    if base_dir is None:
        base_dir = os.environ.get(DATA_DIR_ENV)
        if not base_dir:
            raise ValueError(f"load_coco_data: pass base_dir or set {DATA_DIR_ENV} to a dataset directory")
    data = fmt.load(base_dir, pca_features=pca_features, regions=regions)
    if max_train is not None:
        num_train = data["train_captions"].shape[0]
        if rng is None:
            mask = np.random.randint(num_train, size=max_train)
        else:
            mask = np.random.default_rng(rng).integers(num_train, size=max_train)
        data["train_captions"] = data["train_captions"][mask]
        data["train_image_idxs"] = data["train_image_idxs"][mask]
    return data


def decode_captions(captions, idx_to_word, strip_special=False):
    """Turn word ids into strings, skipping <NULL> and stopping after <END>.

    Inputs:
    - captions: Int array of shape (N, T), or (T,) for a single caption
    - idx_to_word: List or dict mapping ids to words
    - strip_special: Also drop <START> and <END> (for metrics)

    Returns:
    - A list of N strings, or one string for 1-D input
    """
    captions = np.asarray(captions)
    singleton = captions.ndim == 1
    if singleton:
        captions = captions[None]
    skip = {NULL, START, END} if strip_special else {NULL}
    decoded = []
    for row in captions:
        words = []
        for idx in row:
            word = idx_to_word[int(idx)]
            if word not in skip:
                words.append(word)
            if word == END:
                break
        decoded.append(" ".join(words))
    return decoded[0] if singleton else decoded


def minibatch_rows(data, batch_size=100, split="train", rng=None):
    """Draw the captions of a minibatch: N rows of a split's captions, with replacement.

    Inputs: as sample_coco_minibatch.

    Returns:
    - mask: (N,) ints, rows of data[split + '_captions']
    """
    if split not in fmt.ALL_SPLITS:
        raise ValueError(f'split must be one of {fmt.ALL_SPLITS}, got "{split}"')
    if f"{split}_captions" not in data:
        raise ValueError(f"the data set has no {split} split")
    split_size = data[f"{split}_captions"].shape[0]
    if rng is None:
        return np.random.choice(split_size, batch_size)
    return rng.integers(split_size, size=batch_size)


def sample_coco_minibatch(data, batch_size=100, split="train", rng=None):
    """Sample captions (with replacement) and their images' features and URLs.

    Inputs:
    - data: Dict from load_coco_data
    - batch_size: Number N of captions
    - split: 'train', 'val' or, if the data set has one, 'test'
    - rng: np.random.Generator (default: the global NumPy state, as CS231n)

    Returns a tuple of:
    - captions: (N, T + 1) ints
    - image_features: (N, D)
    - urls: (N,) strings
    """
    mask = minibatch_rows(data, batch_size, split, rng)
    captions = data[f"{split}_captions"][mask]
    image_idxs = data[f"{split}_image_idxs"][mask]
    image_features = data[f"{split}_features"][image_idxs]
    urls = data[f"{split}_urls"][image_idxs]
    return captions, image_features, urls
