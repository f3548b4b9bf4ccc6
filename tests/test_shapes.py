"""Tests of the embedded shapes dataset (capmodel.datasets.shapes)."""

import hashlib
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from capmodel.coco_utils import decode_captions, load_coco_data
from capmodel.datasets import format as fmt
from capmodel.datasets import shapes
from capmodel.image_utils import image_from_url

ROOT = Path(__file__).resolve().parents[1]


def _digest(d):
    h = hashlib.sha256()
    for name in sorted(fmt.required_files()):
        if name.endswith(".h5") or name.endswith(".json"):
            h.update((d / name).read_bytes())
    return h.hexdigest()


def test_dataset_is_valid_and_loads(shapes_dir):
    assert fmt.problems(shapes_dir) == []
    data = load_coco_data(shapes_dir)
    assert data["train_captions"].shape == (300, 17) and data["train_captions"].dtype == np.int32
    assert data["train_features"].shape == (60, 512) and data["train_features"].dtype == np.float32
    assert data["val_features"].shape == (12, 512)
    assert load_coco_data(shapes_dir, pca_features=False)["train_features"].shape == (60, 2328)
    assert data["idx_to_word"][:4] == ["<NULL>", "<START>", "<END>", "<UNK>"]
    assert np.bincount(data["train_image_idxs"]).tolist() == [5] * 60


def test_same_seed_same_bytes_other_seed_differs(tmp_path, shapes_dir):
    shapes.generate(tmp_path / "again", num_train=60, num_val=12, seed=3)
    shapes.generate(tmp_path / "other", num_train=60, num_val=12, seed=4)
    assert _digest(tmp_path / "again") == _digest(shapes_dir)
    assert _digest(tmp_path / "other") != _digest(shapes_dir)


def test_val_images_and_fc7_do_not_depend_on_num_train_but_pca_does(tmp_path):
    shapes.generate(tmp_path / "a", num_train=10, num_val=5, seed=1)
    shapes.generate(tmp_path / "b", num_train=20, num_val=5, seed=1)
    a, b = tmp_path / "a", tmp_path / "b"
    same = ["val2014_vgg16_fc7.h5", *(f"images/val/{i:06d}.png" for i in range(5))]
    assert all((a / n).read_bytes() == (b / n).read_bytes() for n in same)
    da, db = load_coco_data(a), load_coco_data(b)
    assert not np.array_equal(da["val_features"], db["val_features"])  # the PCA is fitted on train


def test_images_are_pngs_behind_file_urls_and_match_their_scene(shapes_dir):
    data = load_coco_data(shapes_dir)
    img = image_from_url(data["train_urls"][0])
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8
    scenes, images, _ = shapes.generate_split(60, 3, "train")
    assert np.array_equal(img, images[0])
    o = scenes[0]["objects"][0]
    cy, cx = shapes.CELL_CENTERS[o["row"]] + o["dy"], shapes.CELL_CENTERS[o["col"]] + o["dx"]
    expected = np.clip(np.array(shapes.COLORS[o["color"]][0]) + o["jitter"], 0, 255)
    assert np.abs(img[cy, cx].astype(int) - expected).max() <= 1  # the object's colour at its centre


def test_captions_describe_the_scene_with_variety():
    rng = np.random.default_rng(0)
    scenes = [shapes.sample_scene(rng) for _ in range(200)]
    all_caps = [shapes.captions_for(s, rng) for s in scenes]
    for s, caps in zip(scenes, all_caps):
        assert len(caps) == 5
        colors = {o["color"] for o in s["objects"]}
        for c in caps:
            named = {w for w in c.split() if w in shapes.COLORS}
            assert named <= colors  # never a colour that is not in the image
        assert len(set(caps)) >= 4  # paraphrases, not copies
    flat = [c for caps in all_caps for c in caps]
    assert any("to the left of" in c for c in flat) and any("above" in c for c in flat)
    assert any(c.startswith("two") for c in flat) and any(c.startswith("there is") for c in flat)
    assert any(len(c.split()) > 15 for c in flat)  # some are truncated by the encoder


def test_rare_words_become_unk():
    from capmodel.vocab import build_vocab

    _, i2w = build_vocab(["a crimson ball"] + ["a red ball"] * 10, min_count=5)
    assert "crimson" not in i2w and "red" in i2w


@pytest.fixture(scope="module")
def probe():
    """benchmarks/probe_features.py's figures, which docs/datasets.md quotes."""
    spec = importlib.util.spec_from_file_location("probe_features", ROOT / "benchmarks" / "probe_features.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.probe_features()


@pytest.mark.parametrize("attr, least", [("color", 0.8), ("size", 0.8), ("col", 0.9), ("row", 0.9), ("shape", 0.4)])
def test_features_encode_the_scene(probe, attr, least):
    """A ridge-regression probe on held-out single-object images reads each attribute back."""
    accuracy, chance = probe[attr]
    assert accuracy > least > chance


def test_decode_round_trip(shapes_dir):
    data = load_coco_data(shapes_dir)
    text = decode_captions(data["train_captions"][0], data["idx_to_word"])
    assert text.startswith("<START> ") and text.endswith(" <END>")
