"""The attention weights of given captions of pictures, as the caption gallery and the model
report draw them (capmodel.app.attention_maps): each caption is read teacher-forced by the
model that wrote it (model.attend), and each word gets the weights the model put on the
regions when it predicted that word.

Dimension letters: N pictures, D feature dimension, T words, L regions, C region channels.
"""

from pathlib import Path

import h5py
import numpy as np

from capmodel import checkpoints
from capmodel.datasets import format as fmt
from capmodel.vocab import NULL, START, UNK


def caption_ids(texts, word_to_idx):
    """Captions as the model reads them: <START> then each word's id, <NULL> padding.

    Inputs:
    - texts: N captions, words separated by spaces (as capmodel writes them; a word
      outside the vocabulary reads as <UNK>)
    - word_to_idx: The model's vocabulary

    Returns a tuple of:
    - captions: Integer array of shape (N, T + 1), T the most words of a caption (at least 1)
    - lengths: Integer array of shape (N,), the words of each caption
    """
    words = [t.split() for t in texts]
    T = max([1, *map(len, words)])
    captions = np.full((len(texts), T + 1), word_to_idx[NULL], dtype=np.int32)
    captions[:, 0] = word_to_idx[START]
    for i, ws in enumerate(words):
        captions[i, 1 : len(ws) + 1] = [word_to_idx.get(w, word_to_idx[UNK]) for w in ws]
    return captions, np.array([len(ws) for ws in words], dtype=np.int64)


def caption_alphas(model, features, regions, texts):
    """Each word's attention weights on the regions, for captions of pictures.

    The weights of a word are those the model used to predict it from the words before it.

    Inputs:
    - model: A model that attends over regions (model.uses_regions)
    - features: Global features of the pictures, of shape (N, D)
    - regions: Their region features, of shape (N, L, C)
    - texts: One caption of each picture (N strings)

    Returns a list of N arrays, the i-th of shape (T_i, L) for the T_i words of caption i
    (an empty caption gives (0, L)).
    """
    if not getattr(model, "uses_regions", False):
        raise ValueError("the model does not attend over image regions: it has no attention maps")
    if len(texts) != len(features):
        raise ValueError(f"{len(texts)} captions for {len(features)} pictures")
    if not texts:
        return []
    captions, lengths = caption_ids(texts, model.word_to_idx)
    alphas = model.attend(features, captions, regions)  # (N, T, L)
    return [a[:n] for a, n in zip(alphas, lengths)]


def split_inputs(data_dir, split, image_idxs, pca=True):
    """The global features and regions of some images of a data set's split, read from its
    files without loading the rest (a report needs a few images of a split that may be large).

    Inputs:
    - data_dir: Data set directory (capmodel.datasets.format)
    - split: 'train', 'val' or 'test'
    - image_idxs: Integer sequence of shape (N,), images of the split
    - pca: Read the PCA features (as the model was trained: settings.pca_features)

    Returns a tuple (features (N, D) float32, regions (N, L, C) float16). Raises ValueError
    naming the file when the data set has no grid.
    """
    data_dir = Path(data_dir)
    idxs = np.asarray(image_idxs, dtype=np.int64)
    order = np.unique(idxs)  # h5py reads rows in increasing order
    back = np.searchsorted(order, idxs)
    out = []
    for name in (fmt.features_file(split, pca), fmt.grid_file(split)):
        path = data_dir / name
        if not path.is_file():
            raise ValueError(f"{path}: missing file (the model attends over regions; its data set needs a grid)")
        with h5py.File(path, "r") as f:
            d = f[fmt.FEATURES_KEY]
            if len(order) and order[-1] >= d.shape[0]:
                raise ValueError(f"{path}: image {order[-1]} asked for, but '{fmt.FEATURES_KEY}' has {d.shape[0]} rows")
            out.append(np.asarray(d[order])[back])
    return out[0].astype(np.float32), out[1]


def model_alphas(model_path, data_dir, split, image_idxs, texts):
    """The attention weights of the captions of some images of a split, by a trained model.

    Inputs:
    - model_path: Model directory, model.npz, model.json or their base path
    - data_dir: The data set the images belong to
    - split: Its split holding them
    - image_idxs: N images of the split
    - texts: The model's caption of each (N strings)

    Returns a list as caption_alphas, or None when the model does not attend over regions.
    """
    model, meta = checkpoints.load_model(checkpoints.model_base(model_path))
    if not getattr(model, "uses_regions", False):
        return None
    pca = meta.get("settings", {}).get("pca_features", True)
    features, regions = split_inputs(data_dir, split, image_idxs, pca)
    return caption_alphas(model, features, regions, list(texts))
