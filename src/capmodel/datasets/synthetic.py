"""Random captioning data in memory, in the load_coco_data dict format.

For tests and debugging: nothing is learnable beyond memorising, use the shapes dataset
(capmodel.datasets.shapes) for a real task.
"""

import numpy as np

from capmodel.vocab import CAPTION_LENGTH, SPECIAL_TOKENS


def random_data(num_images=20, captions_per_image=2, num_val_images=6, D=16, num_words=12, seed=0):
    """A data dict like load_coco_data's: random float32 features and random captions of
    3 to 15 words over num_words words (w0, w1, ...), each image with its own captions."""
    rng = np.random.default_rng(seed)
    idx_to_word = list(SPECIAL_TOKENS) + [f"w{i}" for i in range(num_words)]
    V = len(idx_to_word)
    data = {"idx_to_word": idx_to_word, "word_to_idx": {w: i for i, w in enumerate(idx_to_word)}}
    for split, n_img in (("train", num_images), ("val", num_val_images)):
        n_cap = n_img * captions_per_image
        caps = np.zeros((n_cap, CAPTION_LENGTH), dtype=np.int32)
        for i in range(n_cap):
            length = rng.integers(3, CAPTION_LENGTH - 1)
            caps[i, 0] = 1
            caps[i, 1 : length + 1] = rng.integers(len(SPECIAL_TOKENS), V, size=length)
            caps[i, length + 1] = 2
        data[f"{split}_captions"] = caps
        data[f"{split}_image_idxs"] = np.repeat(np.arange(n_img), captions_per_image).astype(np.int32)
        data[f"{split}_features"] = rng.standard_normal((n_img, D)).astype(np.float32)
        data[f"{split}_urls"] = np.asarray([f"file:///{split}/{i}.png" for i in range(n_img)])
    return data
