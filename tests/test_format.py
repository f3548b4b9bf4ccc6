"""Tests of the on-disk format's validator (capmodel.datasets.format) and capmodel.coco_utils."""

import json
import shutil

import h5py
import numpy as np
import pytest

from capmodel.coco_utils import decode_captions, load_coco_data, sample_coco_minibatch
from capmodel.datasets import format as fmt


@pytest.fixture
def copy(shapes_dir, tmp_path):
    d = tmp_path / "copy"
    shutil.copytree(shapes_dir, d, ignore=shutil.ignore_patterns("images"))
    return d


def _rewrite(path, key, value):
    """Replace dataset key of an HDF5 file by value (None: delete it)."""
    with h5py.File(path, "a") as f:
        del f[key]
        if value is not None:
            f.create_dataset(key, data=value)


def test_missing_file_is_named(copy):
    (copy / "val2014_vgg16_fc7_pca.h5").unlink()
    found = fmt.problems(copy)
    assert found == [f"{copy}/val2014_vgg16_fc7_pca.h5: missing file"]


@pytest.mark.parametrize("breakage, message", [
    (lambda d: _rewrite(d / fmt.CAPTIONS_FILE, "train_captions", np.zeros((300, 12), np.int32)),
     "'train_captions' must have shape (N, 17)"),
    (lambda d: _rewrite(d / fmt.CAPTIONS_FILE, "val_captions", np.zeros((60, 17), np.float32)),
     "'val_captions' must be integer"),
    (lambda d: _rewrite(d / fmt.CAPTIONS_FILE, "train_captions", np.full((300, 17), 999, np.int32)),
     "outside the vocabulary"),
    (lambda d: _rewrite(d / fmt.CAPTIONS_FILE, "train_image_idxs", np.full(300, 60, np.int32)),
     "there are only 60 train images"),
    (lambda d: _rewrite(d / "train2014_vgg16_fc7.h5", "features", np.zeros((59, 2048), np.float32)),
     "train image counts disagree"),
    (lambda d: (d / "val2014_urls.txt").write_text("file:///x\n"), "val image counts disagree"),
    (lambda d: (d / fmt.VOCAB_FILE).write_text(json.dumps({"idx_to_word": ["a", "b", "c", "d"],
                                                           "word_to_idx": {"a": 0, "b": 1, "c": 2, "d": 3}})),
     "special token <NULL> must have id 0"),
    (lambda d: (d / fmt.VOCAB_FILE).write_text("{not json"), "not valid JSON"),
])
def test_each_deviation_is_reported(copy, breakage, message):
    breakage(copy)
    found = fmt.problems(copy)
    assert any(message in p for p in found), found
    with pytest.raises(fmt.DatasetError, match="invalid dataset"):
        load_coco_data(copy, pca_features="fc7" not in message and "train image counts" not in message)


def test_several_problems_one_line_each(copy):
    (copy / "train2014_urls.txt").unlink()
    (copy / "val2014_vgg16_fc7.h5").write_bytes(b"garbage")
    found = fmt.problems(copy)
    assert len(found) == 2
    assert "train2014_urls.txt: missing file" in found[0] + found[1]
    assert any("not a readable HDF5 file" in p for p in found)


def test_missing_directory(tmp_path):
    assert fmt.problems(tmp_path / "nope") == [f"{tmp_path / 'nope'}: dataset directory does not exist"]


def test_sizes_match_the_loaded_dataset(shapes_dir):
    data = fmt.load(shapes_dir)
    assert fmt.sizes(shapes_dir) == {
        "train_images": 60, "val_images": 12,  # the shapes_dir fixture: five captions per image
        "train_captions": 300, "val_captions": 60,
        "vocab_size": len(data["idx_to_word"]),
    }
    assert (len(data["train_urls"]), len(data["val_captions"])) == (60, 60)


@pytest.mark.parametrize("breakage, message", [
    (lambda d: (d / "val2014_urls.txt").unlink(), "val2014_urls.txt: missing file"),
    (lambda d: (d / fmt.CAPTIONS_FILE).write_bytes(b"garbage"), "not a readable HDF5 file"),
    (lambda d: _rewrite(d / fmt.CAPTIONS_FILE, "val_captions", None), "missing dataset 'val_captions'"),
    (lambda d: (d / fmt.VOCAB_FILE).write_text("[]"), "must be a JSON object"),
])
def test_sizes_name_the_broken_file(copy, breakage, message):
    breakage(copy)
    with pytest.raises(fmt.DatasetError, match=message):
        fmt.sizes(copy)


def test_load_without_base_dir_needs_env(monkeypatch, shapes_dir):
    monkeypatch.delenv("CAPMODEL_DATA_DIR", raising=False)
    with pytest.raises(ValueError, match="CAPMODEL_DATA_DIR"):
        load_coco_data()
    monkeypatch.setenv("CAPMODEL_DATA_DIR", str(shapes_dir))
    assert load_coco_data()["train_captions"].shape[0] == 300


def test_max_train_subsamples_with_replacement_like_cs231n(shapes_dir):
    np.random.seed(231)
    small = load_coco_data(shapes_dir, max_train=50)
    np.random.seed(231)
    mask = np.random.randint(300, size=50)
    full = load_coco_data(shapes_dir)
    assert np.array_equal(small["train_captions"], full["train_captions"][mask])
    assert np.array_equal(small["train_image_idxs"], full["train_image_idxs"][mask])


def test_sample_minibatch_pairs_captions_with_their_images(shapes_dir):
    data = load_coco_data(shapes_dir)
    caps, feats, urls = sample_coco_minibatch(data, batch_size=30, split="val", rng=np.random.default_rng(0))
    assert caps.shape == (30, 17) and feats.shape == (30, 512) and urls.shape == (30,)
    for c, f, u in zip(caps, feats, urls):
        rows = np.flatnonzero((data["val_captions"] == c).all(axis=1))
        imgs = data["val_image_idxs"][rows]
        assert any(np.array_equal(data["val_features"][i], f) and data["val_urls"][i] == u for i in imgs)


def test_decode_captions_cs231n_rules():
    i2w = ["<NULL>", "<START>", "<END>", "<UNK>", "a", "cat"]
    caps = np.array([[1, 4, 5, 2, 4, 0], [1, 4, 0, 5, 2, 0]])
    assert decode_captions(caps, i2w) == ["<START> a cat <END>", "<START> a cat <END>"]
    assert decode_captions(caps[0], i2w) == "<START> a cat <END>"
    assert decode_captions(caps, i2w, strip_special=True) == ["a cat", "a cat"]
