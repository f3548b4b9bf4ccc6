"""Tests of the on-disk format's validator (capmodel.datasets.format) and capmodel.coco_utils."""

import json
import shutil

import h5py
import numpy as np
import pytest
from PIL import Image

from capmodel.coco_utils import decode_captions, load_coco_data, sample_coco_minibatch
from capmodel.datasets import format as fmt
from capmodel.image_utils import image_from_url
from synthetic import draw_photo, random_data


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


COCO_URL = "http://images.cocodataset.org/val2014/COCO_val2014_000000000042.jpg"


def _write(out_dir, urls, extra=None):
    """A small dataset through write_dataset, its images at urls ({split: [...]})."""
    d = random_data(num_images=len(urls["train"]), num_val_images=len(urls["val"]), D=4)
    fmt.write_dataset(out_dir, {s: d[f"{s}_captions"] for s in fmt.SPLITS},
                      {s: d[f"{s}_image_idxs"] for s in fmt.SPLITS}, {s: d[f"{s}_features"] for s in fmt.SPLITS},
                      {s: d[f"{s}_features"] for s in fmt.SPLITS}, urls, d["idx_to_word"], extra=extra)


def test_local_images_are_stored_relative_to_the_data_set_and_move_with_it(tmp_path):
    root = tmp_path / "project"
    (root / "photos").mkdir(parents=True)
    for name, color in (("a.png", "red"), ("b b.png", "green")):
        Image.fromarray(draw_photo(color, "circle")).save(root / "photos" / name)
    out = root / "data" / "mine"

    def add_image(tmp):  # written into the temporary directory, named at its final place
        (tmp / "images").mkdir()
        Image.fromarray(draw_photo("blue", "square")).save(tmp / "images" / "c.png")

    # a Path, a file:// URL, a path inside the data set; COCO's http URL as it is
    _write(out, {"train": [root / "photos" / "a.png", (root / "photos" / "b b.png").as_uri(), out / "images" / "c.png"],
                 "val": [COCO_URL]}, extra=add_image)
    assert (out / "train2014_urls.txt").read_text() == "../../photos/a.png\n../../photos/b b.png\nimages/c.png\n"
    assert (out / "val2014_urls.txt").read_text() == COCO_URL + "\n"
    assert fmt.problems(out) == []
    shutil.move(root, tmp_path / "moved")  # the whole project elsewhere
    moved = tmp_path / "moved" / "data" / "mine"
    data = load_coco_data(moved)  # where to read each picture now
    assert list(data["train_urls"]) == [(tmp_path / "moved" / p).as_uri()
                                        for p in ("photos/a.png", "photos/b b.png", "data/mine/images/c.png")]
    assert list(data["val_urls"]) == [COCO_URL]
    assert np.array_equal(image_from_url(data["train_urls"][2]), draw_photo("blue", "square"))
    assert list(fmt.read_urls(moved, "train"))[0] == "../../photos/a.png"  # as stored


def test_a_copied_shapes_data_set_reads_its_own_images(shapes_dir, tmp_path):
    copy = tmp_path / "elsewhere"
    shutil.copytree(shapes_dir, copy)
    assert (copy / "val2014_urls.txt").read_text().splitlines()[:2] == ["images/val/000000.png",
                                                                           "images/val/000001.png"]
    first = load_coco_data(copy)["val_urls"][0]
    assert first == (copy / "images" / "val" / "000000.png").as_uri()
    assert np.array_equal(image_from_url(first), image_from_url(load_coco_data(shapes_dir)["val_urls"][0]))


@pytest.mark.parametrize("data_dir, location, entry", [
    (".", "photos/a.png", "photos/a.png"),  # a plain path, relative to the working directory
    ("data", "data/images/x.png", "images/x.png"),
    ("data/set", "photos/b.png", "../../photos/b.png"),
    ("data", "data/photo:1.png", "./photo:1.png"),  # not a URL scheme
    ("data", COCO_URL, COCO_URL),
    ("data", "https://example.org/a.jpg", "https://example.org/a.jpg"),
])
def test_url_entry_and_image_location_round_trip(tmp_path, monkeypatch, data_dir, location, entry):
    monkeypatch.chdir(tmp_path)
    assert fmt.url_entry(tmp_path / data_dir, location) == entry
    expected = location if "://" in location else (tmp_path / location).as_uri()
    assert fmt.image_location(tmp_path / data_dir, entry) == expected
    assert fmt.image_location(data_dir, entry) == expected  # a relative data_dir: relative to the working directory
    if "://" not in location:  # a Path and a file:// URL of the same file give the same entry
        assert fmt.url_entry(tmp_path / data_dir, tmp_path / location) == entry
        assert fmt.url_entry(tmp_path / data_dir, expected) == entry


def test_url_entry_refuses_what_a_line_cannot_hold(tmp_path):
    with pytest.raises(ValueError, match="unsupported URL scheme 's3'"):
        fmt.url_entry(tmp_path, "s3://bucket/a.png")
    with pytest.raises(ValueError, match="line break"):
        fmt.url_entry(tmp_path, tmp_path / "a\nb.png")
    with pytest.raises(ValueError, match="starts or ends with a space"):
        fmt.url_entry(tmp_path, tmp_path / " a.png")


def test_old_data_sets_with_absolute_file_urls_still_load(shapes_dir, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(shapes_dir, old)
    urls = [(old / e).as_uri() for e in (old / "val2014_urls.txt").read_text().splitlines()]
    (old / "val2014_urls.txt").write_text("".join(u + "\n" for u in urls))  # absolute URLs
    assert fmt.problems(old) == []
    data = load_coco_data(old)
    assert list(data["val_urls"]) == urls and image_from_url(data["val_urls"][0]).shape == (64, 64, 3)
    assert data["train_urls"][0] == (old / "images" / "train" / "000000.png").as_uri()  # relative ones beside


def test_validator_accepts_paths_and_urls_and_names_empty_and_unknown_entries(copy):
    n = len((copy / "val2014_urls.txt").read_text().splitlines())
    entries = ["images/val/000000.png", COCO_URL, "file:///somewhere/x.png", "../photos/a b.png"]
    (copy / "val2014_urls.txt").write_text("".join(e + "\n" for e in (entries * n)[:n]))
    assert fmt.problems(copy) == []
    (copy / "val2014_urls.txt").write_text("".join(e + "\n" for e in (["", "s3://b/x.png", "ftp://h/y.png"] * n)[:n]))
    found = fmt.problems(copy)
    assert any("val2014_urls.txt: 4 empty lines (first: line 1)" in p for p in found), found
    assert any("unsupported URL scheme(s) ftp, s3" in p for p in found), found


def test_data_check_names_local_pictures_that_do_not_exist(shapes_dir, tmp_path):
    from capmodel.app.cli import main

    d = tmp_path / "d"
    shutil.copytree(shapes_dir, d)
    assert main(["data", "check", str(d)]) == 0
    (d / "images" / "val" / "000003.png").unlink()
    (d / "images" / "val" / "000005.png").unlink()
    found = fmt.problems(d, pictures=True)
    assert found == [f"{d}/{fmt.urls_file('val')}: 2 pictures do not exist (first: line 4, images/val/000003.png)"]
    assert main(["data", "check", str(d)]) == 1
    shutil.rmtree(d / "images")
    found = fmt.problems(d, pictures=True)
    assert len(found) == 2 and all("pictures do not exist (first: line 1, images/" in p for p in found), found
    assert fmt.problems(d) == []  # the features alone are a sound data set: training needs no picture
    urls = (d / fmt.urls_file("val")).read_text().splitlines()
    (d / fmt.urls_file("val")).write_text("".join(f"http://example.com/{i}.png\n" for i in range(len(urls))))
    assert len(fmt.problems(d, pictures=True)) == 1  # remote pictures are not fetched
