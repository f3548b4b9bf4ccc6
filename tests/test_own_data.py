"""The README's recipe for building a dataset from your own images and captions."""

import numpy as np

from capmodel.coco_utils import load_coco_data
from capmodel.datasets import features, format
from capmodel.vocab import build_vocab, encode_captions


def test_readme_recipe(tmp_path):
    rng = np.random.default_rng(0)
    # your data: images (N, S, S, 3) uint8 per split and a list of captions per image
    images = {"train": rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8),
              "val": rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)}
    texts = {"train": [["a dog on grass", "a brown dog"]] * 6, "val": [["a cat", "a cat on a sofa"]] * 2}
    urls = {s: [f"file:///photos/{s}/{i}.jpg" for i in range(len(images[s]))] for s in images}

    # --- the recipe, as in README.md ---
    word_to_idx, idx_to_word = build_vocab([c for caps in texts["train"] for c in caps], min_count=1)
    captions, image_idxs, fc7 = {}, {}, {}
    for split in ("train", "val"):
        flat = [c for caps in texts[split] for c in caps]
        captions[split] = encode_captions(flat, word_to_idx)
        image_idxs[split] = np.repeat(np.arange(len(texts[split])), [len(c) for c in texts[split]])
        fc7[split] = features.extract(images[split])
    mean, comps = features.fit_pca(fc7["train"], dim=min(512, len(fc7["train"])))
    pca = {s: np.pad(features.apply_pca(f, mean, comps), ((0, 0), (0, 512 - comps.shape[1]))) for s, f in fc7.items()}
    format.write_dataset(tmp_path / "mydata", captions, image_idxs, fc7, pca, urls, idx_to_word)
    # --- end of recipe ---

    assert format.problems(tmp_path / "mydata") == []
    data = load_coco_data(tmp_path / "mydata")
    assert data["train_captions"].shape == (12, 17) and data["val_features"].shape == (2, 512)
    assert "<UNK>" in data["word_to_idx"] and data["word_to_idx"]["dog"] > 3
