"""Tests of `capmodel data from-folder` (capmodel.datasets.folder) on folders of PNGs drawn here."""

import csv
import json

import numpy as np
import pytest
from PIL import Image

from capmodel.app.cli import main
from capmodel.coco_utils import decode_captions, load_coco_data
from capmodel.datasets import features as feat
from capmodel.datasets import folder
from synthetic import PHOTO_COLORS, PHOTO_SHAPES, draw_photo, photo_folder
from capmodel.datasets import format as fmt

COLORS, SHAPES = PHOTO_COLORS, PHOTO_SHAPES
draw, make_photos = draw_photo, photo_folder


def write_csv(path, rows, header=("image", "caption", "split")):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def run_cli(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def csv_made(tmp_path_factory):
    """A folder of 12 PNGs, a CSV with a split column (k=1 images are val), and the dataset made from them."""
    tmp = tmp_path_factory.mktemp("csv")
    caps = make_photos(tmp / "photos")
    rows = [(n, c, "val" if n.endswith("_1.png") else "train") for n, cs in caps.items() for c in cs]
    write_csv(tmp / "captions.csv", rows)
    code = main(["data", "from-folder", str(tmp / "photos"), str(tmp / "captions.csv"), str(tmp / "data")])
    assert code == 0
    return tmp, caps


def test_csv_with_split_column_makes_a_valid_dataset(csv_made, capsys):
    tmp, caps = csv_made
    assert run_cli(capsys, "data", "check", tmp / "data")[0] == 0
    data = load_coco_data(tmp / "data")
    assert data["train_captions"].shape == (12, 17) and data["val_captions"].shape == (12, 17)
    assert data["train_features"].shape == (6, 512) and data["val_features"].shape == (6, 512)
    val_names = sorted(n for n in caps if n.endswith("_1.png"))
    assert [u.rsplit("/", 1)[1] for u in data["val_urls"]] == val_names
    assert all(u.startswith("file:///") for u in data["train_urls"])
    # every reference caption survives the round trip, attached to its own image
    for split in ("train", "val"):
        texts = decode_captions(data[f"{split}_captions"], data["idx_to_word"], strip_special=True)
        for text, idx in zip(texts, data[f"{split}_image_idxs"]):
            name = data[f"{split}_urls"][idx].rsplit("/", 1)[1]
            assert text in caps[name]
    assert {"red", "green", "blue", "circle", "square"} <= set(data["word_to_idx"])


def test_dataset_records_the_extractor_that_reproduces_its_features(csv_made):
    tmp, caps = csv_made
    record = feat.read_record(tmp / "data")
    assert record["created_by"] == folder.CREATED_BY and record["image_size"] == folder.DEFAULT_IMAGE_SIZE
    assert record["components"].shape == (2328, 6)  # PCA on 6 train images, padded to 512
    data = load_coco_data(tmp / "data", pca_features=False)
    images = folder.read_images([tmp / "photos" / n for n in sorted(caps) if n.endswith("_1.png")], 64)
    assert images.shape == (6, 64, 64, 3)
    assert np.array_equal(feat.compute(images, record, pca=False), data["val_features"])
    pca = load_coco_data(tmp / "data")["val_features"]
    np.testing.assert_allclose(feat.compute(images, record), pca, atol=1e-5)
    assert np.all(pca[:, 6:] == 0) and np.any(pca[:, :6] != 0)


def test_json_with_val_fraction_leaves_out_uncaptioned_images_with_one_warning(tmp_path, capsys):
    caps = make_photos(tmp_path / "photos", copies=2)
    Image.fromarray(draw("red", "circle")).save(tmp_path / "photos" / "extra.png")
    (tmp_path / "photos" / "notes.txt").write_text("not an image")
    (tmp_path / "photos" / "sub").mkdir()
    wide = np.concatenate([draw("blue", "square", 40)] * 2, axis=1)[:, 20:80]  # 40 x 60: cropped to its centre
    Image.fromarray(wide).save(tmp_path / "photos" / "sub" / "photo.JPG", quality=95)
    caps["sub/photo.JPG"] = ["a blue square"]
    (tmp_path / "captions.json").write_text(json.dumps({n: cs if i % 2 else cs[0] for i, (n, cs) in
                                                       enumerate(caps.items())}))
    (tmp_path / "data").mkdir()  # an empty directory is fine
    code, out, err = run_cli(capsys, "data", "from-folder", tmp_path / "photos", tmp_path / "captions.json",
                             tmp_path / "data", "--val-fraction", "0.25", "--seed", "7", "--image-size", "32")
    assert code == 0
    assert err.count("warning") == 1 and "1 image(s)" in err and "extra.png" in err
    stats = json.loads(out)
    assert (stats["train_images"], stats["val_images"]) == (10, 3)  # round(0.25 * 13)
    assert stats["train_captions"] + stats["val_captions"] == 19 and stats["images_without_captions"] == ["extra.png"]
    jpeg = folder.read_image(tmp_path / "photos" / "sub" / "photo.JPG", 32)
    assert jpeg.shape == (32, 32, 3) and abs(int(jpeg[16, 16, 2]) - 230) < 20  # the square's blue centre
    assert feat.read_record(tmp_path / "data")["image_size"] == 32
    data = load_coco_data(tmp_path / "data")
    assert not any(u.endswith("extra.png") for s in ("train", "val") for u in data[f"{s}_urls"])
    # the split is a function of the seed
    rows = [{"image": n, "caption": c, "split": None, "where": ""} for n, cs in caps.items() for c in cs]
    val = sorted(n for n, s in folder.assign_splits(rows, 0.25, seed=7).items() if s == "val")
    assert val == sorted(u.rsplit("/", 1)[1] for u in data["val_urls"])
    assert val != sorted(n for n, s in folder.assign_splits(rows, 0.25, seed=8).items() if s == "val")


def test_json_list_form_and_csv_quoting_parse(tmp_path):
    (tmp_path / "c.json").write_text(json.dumps([
        {"image": "a.png", "captions": ["a red circle", "a ball"], "split": "train"},
        {"image": "sub/b.jpg", "caption": "a blue square", "split": "val"},
    ]))
    rows = folder.read_captions(tmp_path / "c.json")
    assert [(r["image"], r["caption"], r["split"]) for r in rows] == [
        ("a.png", "a red circle", "train"), ("a.png", "a ball", "train"), ("sub/b.jpg", "a blue square", "val")]
    assert folder.assign_splits(rows) == {"a.png": "train", "sub/b.jpg": "val"}
    path = tmp_path / "c.csv"
    path.write_text('\ufeffImage,Caption\na.png,"a red circle, small"\n\nb.png,a square\n')
    rows = folder.read_captions(path)
    assert [(r["image"], r["caption"], r["split"]) for r in rows] == [
        ("a.png", "a red circle, small", None), ("b.png", "a square", None)]
    assert rows[1]["where"].endswith("c.csv line 4")


def test_made_dataset_is_replaceable_until_someone_adds_a_file(csv_made, tmp_path):
    tmp, _ = csv_made
    fmt.check_writable_dataset_dir(tmp / "data")  # ours, unchanged: may be replaced
    import shutil

    from capmodel.safety.ownership import OwnershipError

    copy = tmp_path / "copy"
    shutil.copytree(tmp / "data", copy)
    (copy / "my_notes.txt").write_text("mine")
    with pytest.raises(OwnershipError, match=r"holds 1 file\(s\) capmodel did not write there \(first: my_notes.txt\)"):
        fmt.check_writable_dataset_dir(copy)


def _broken_png(path):
    Image.fromarray(draw("red", "circle")).save(path)
    path.write_bytes(path.read_bytes()[:60])


def _setup(tmp, case):
    """Make the inputs of one error case; returns the from-folder arguments."""
    caps = make_photos(tmp / "photos", copies=1)
    rows = [(n, c, "val" if i == 0 else "train") for i, (n, cs) in enumerate(caps.items()) for c in cs]
    args = [tmp / "photos", tmp / "captions.csv", tmp / "data"]
    if case == "corrupt image":
        _broken_png(tmp / "photos" / "broken.png")
        rows.append(("broken.png", "a broken picture", "train"))
    elif case == "not an image":
        (tmp / "photos" / "fake.png").write_text("hello")
        rows.append(("fake.png", "a fake picture", "train"))
    elif case == "empty folder":
        args[0] = tmp / "empty"
        args[0].mkdir()
        (args[0] / "readme.txt").write_text("no pictures here")
    elif case == "no folder":
        args[0] = tmp / "nowhere"
    elif case == "missing file":
        rows.insert(2, ("ghost.png", "a ghost", "train"))
    elif case == "not a picture file":
        (tmp / "photos" / "drawing.svg").write_text("<svg/>")
        rows.append(("drawing.svg", "a drawing", "train"))
    elif case == "empty caption":
        rows.insert(3, (rows[0][0], "  ", "val"))
    elif case == "no words":
        rows.append((rows[2][0], "!!!", "train"))
    elif case == "unknown split":
        rows.append((rows[1][0], "a thing", "testing"))
    elif case == "split disagrees":
        rows.append((rows[0][0], "a thing", "train"))
    elif case == "no val":
        rows = [(n, c, "train") for n, c, _ in rows]
    elif case == "unknown column":
        write_csv(tmp / "captions.csv", [r[:2] + ("train",) for r in rows], header=("image", "caption", "spilt"))
        return args
    elif case == "extra field":
        write_csv(tmp / "captions.csv", rows + [(rows[0][0], "a red", "circle", "val")])
        return args
    elif case == "not json":
        args[1] = tmp / "captions.json"
        args[1].write_text("{'a.png': 'single quotes'}")
    elif case == "bad extension":
        args[1] = tmp / "captions.txt"
        args[1].write_text("a.png a circle")
    elif case == "user directory":
        (tmp / "data").mkdir()
        (tmp / "data" / "thesis.tex").write_text("precious")
    elif case == "bad fraction":
        rows = [r[:2] for r in rows]
        write_csv(tmp / "captions.csv", rows, header=("image", "caption"))
        return args + ["--val-fraction", "1.5"]
    elif case == "image too small":
        args += ["--image-size", "8"]
    write_csv(tmp / "captions.csv", rows)
    return args


@pytest.mark.parametrize("case, message", [
    ("corrupt image", "cannot read image {tmp}/photos/broken.png"),
    ("not an image", "cannot read image {tmp}/photos/fake.png"),
    ("empty folder", "{tmp}/empty has no pictures (.png, .jpg, .jpeg, .gif"),
    ("no folder", "images folder {tmp}/nowhere does not exist"),
    ("missing file", "{tmp}/captions.csv line 4: image 'ghost.png' is not in {tmp}/photos"),
    ("not a picture file", "image 'drawing.svg' is not a picture file (.png, .jpg"),
    ("empty caption", "{tmp}/captions.csv line 5: empty caption for image 'blue_circle_0.png'"),
    ("no words", "line 14: empty caption for image 'blue_square_0.png' (it has no words)"),
    ("unknown split", "line 14: unknown split 'testing'; use one of train, val, test"),
    ("split disagrees", "line 14: image 'blue_circle_0.png' is in split 'train' here but 'val' in an earlier row"),
    ("no val", "no image is in split 'val'"),
    ("unknown column", "{tmp}/captions.csv line 1: unknown column(s) 'spilt'; the header must be image,caption"),
    ("extra field", "line 14: more fields than the header's 3"),
    ("not json", "captions file {tmp}/captions.json is not valid JSON"),
    ("bad extension", "must end in .csv or .json, got '.txt'"),
    ("user directory", "dataset directory {tmp}/data is not empty and was not created by capmodel"),
    ("bad fraction", "--val-fraction must be between 0 and 1 (exclusive), got 1.5"),
    ("image too small", "--image-size must be at least 16, got 8"),
])
def test_bad_input_gives_one_line_exit_2_and_no_output(tmp_path, capsys, case, message):
    args = _setup(tmp_path, case)
    code, out, err = run_cli(capsys, "data", "from-folder", *args)
    assert code == 2
    assert err.startswith("capmodel data from-folder: error: ") and err.count("\n") == 1, err
    assert message.format(tmp=tmp_path) in err
    if case == "user directory":
        assert [p.name for p in (tmp_path / "data").iterdir()] == ["thesis.tex"]
    else:
        assert not (tmp_path / "data").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".data")]  # no temporary left behind


def test_every_bad_picture_and_missing_file_is_named_in_one_error(tmp_path, capsys):
    caps = make_photos(tmp_path / "photos", copies=1)
    rows = [(n, c, "val" if i == 0 else "train") for i, (n, cs) in enumerate(caps.items()) for c in cs]
    write_csv(tmp_path / "ghosts.csv", rows + [("ghost.png", "a ghost", "train"), ("ghost.png", "boo", "train"),
                                               ("ghost2.jpg", "another", "val")])
    code, _, err = run_cli(capsys, "data", "from-folder", tmp_path / "photos", tmp_path / "ghosts.csv", tmp_path / "d")
    assert code == 2 and err.count("\n") == 1
    assert err.count("'ghost.png' is not in") == 1 and "'ghost2.jpg' is not in" in err
    _broken_png(tmp_path / "photos" / "broken.png")
    (tmp_path / "photos" / "fake.jpg").write_text("hello")
    write_csv(tmp_path / "captions.csv", rows + [("broken.png", "a broken picture", "train"),
                                                 ("fake.jpg", "a fake picture", "val")])
    code, out, err = run_cli(capsys, "data", "from-folder", tmp_path / "photos", tmp_path / "captions.csv",
                             tmp_path / "data")
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "2 of 8 image(s) cannot be read" in err  # one in train, one in val: both named
    assert f"cannot read image {tmp_path / 'photos' / 'broken.png'}" in err
    assert f"cannot read image {tmp_path / 'photos' / 'fake.jpg'}" in err
    assert not (tmp_path / "data").exists()


def _read_image_before_open_rgb(path, side):
    """folder.read_image as it was before image_utils.open_rgb: PIL's convert("RGB")."""
    with Image.open(path) as img:
        rgb = img.convert("RGB")
    w, h = rgb.size
    s = min(w, h)
    rgb = rgb.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
    return np.asarray(rgb.resize((side, side), Image.BILINEAR) if s != side else rgb)


@pytest.mark.parametrize("name, size", [("a.png", (64, 64)), ("b.png", (50, 70)), ("c.jpg", (90, 60)),
                                        ("d.JPEG", (64, 64))])
def test_ordinary_pictures_give_the_same_arrays_as_before(tmp_path, name, size):
    arr = np.random.default_rng(2).integers(0, 256, size=(*size, 3), dtype=np.uint8)
    arr[10:30, 10:30] = (220, 40, 40)
    Image.fromarray(arr).save(tmp_path / name)
    assert np.array_equal(folder.read_image(tmp_path / name, 64), _read_image_before_open_rgb(tmp_path / name, 64))


def test_transparent_pictures_are_read_on_white(tmp_path):
    rgba = np.zeros((40, 40, 4), np.uint8)  # transparent black, but for an opaque blue square
    rgba[10:30, 10:30] = (50, 80, 230, 255)
    Image.fromarray(rgba).save(tmp_path / "logo.png")
    out = folder.read_image(tmp_path / "logo.png", 32)
    assert out[0, 0].tolist() == [255, 255, 255] and out[16, 16].tolist() == [50, 80, 230]


def test_split_names_are_case_insensitive_and_test_is_a_split(tmp_path):
    caps = make_photos(tmp_path / "photos")
    splits = ["Train", "VAL", "train", "Test"]
    rows = [(n, c, splits[i % 4]) for i, (n, cs) in enumerate(caps.items()) for c in cs]
    write_csv(tmp_path / "captions.csv", rows)
    stats = folder.make_dataset(tmp_path / "photos", tmp_path / "captions.csv", tmp_path / "data", progress=False)
    assert (stats["train_images"], stats["val_images"], stats["test_images"]) == (6, 3, 3)


def test_a_hidden_file_named_in_the_captions_gets_a_message_that_says_so(tmp_path, capsys):
    make_photos(tmp_path / "photos")
    Image.fromarray(draw("red", "circle", 40)).save(tmp_path / "photos" / ".secret.png")
    write_csv(tmp_path / "captions.csv", [("red_circle_0.png", "a red circle", "train"),
                                         ("green_square_0.png", "a green square", "val"),
                                         (".secret.png", "a hidden circle", "train")])
    code, _, err = run_cli(capsys, "data", "from-folder", tmp_path / "photos", tmp_path / "captions.csv",
                           tmp_path / "data")
    assert code == 2 and err.count("\n") == 1
    assert "image '.secret.png' is a hidden file" in err and "rename it" in err


def test_a_symlink_and_its_target_go_to_one_split(tmp_path, capsys):
    caps = make_photos(tmp_path / "photos", copies=4)  # 24 pictures
    names = list(caps)
    for n in names[:12]:  # 12 links, each to another picture
        (tmp_path / "photos" / f"link_{n}").symlink_to(tmp_path / "photos" / names[12 + names.index(n) % 12])
    rows = [(n, cs[0]) for n, cs in caps.items()] + [(f"link_{n}", "a link") for n in names[:12]]
    write_csv(tmp_path / "captions.csv", rows, header=("image", "caption"))
    split_of = folder.assign_splits(folder.read_captions(tmp_path / "captions.csv"), 0.5, seed=3,
                                    same={n: (tmp_path / "photos" / n).resolve() for n, _ in rows})
    assert "val" in split_of.values() and "train" in split_of.values()
    for n in names[:12]:
        assert split_of[f"link_{n}"] == split_of[names[12 + names.index(n) % 12]]
    # given splits that separate a link from its target are refused, naming both
    write_csv(tmp_path / "given.csv", [(n, cs[0], "train") for n, cs in caps.items()]
              + [(f"link_{names[0]}", "a link", "val")])
    code, _, err = run_cli(capsys, "data", "from-folder", tmp_path / "photos", tmp_path / "given.csv",
                           tmp_path / "data")
    assert code == 2 and f"'link_{names[0]}' (val)" in err and f"'{names[12]}' (train)" in err
    assert "same picture file" in err and not (tmp_path / "data").exists()


@pytest.mark.parametrize("inside", ["images folder", "captions file", "one picture"])
def test_inputs_inside_the_output_data_set_are_refused_before_anything_is_deleted(tmp_path, capsys, inside):
    from capmodel.datasets import shapes

    d = tmp_path / "d"
    shapes.generate(d, num_train=6, num_val=2, seed=0, min_count=1)  # ours: from-folder may replace it
    caps = make_photos(tmp_path / "photos", copies=1)
    rows = [(n, c, "val" if i == 0 else "train") for i, (n, cs) in enumerate(caps.items()) for c in cs]
    images, captions = tmp_path / "photos", write_csv(tmp_path / "captions.csv", rows)
    if inside == "images folder":
        images = d / "images" / "train"
        rows = [(p.name, "a shape", "val" if i == 0 else "train") for i, p in enumerate(sorted(images.iterdir()))]
        captions = write_csv(tmp_path / "captions.csv", rows)
    elif inside == "captions file":
        captions = tmp_path / "captions.csv"
        (d / "images" / "captions.csv").write_bytes(captions.read_bytes())
        captions = d / "images" / "captions.csv"  # a file the data set did not hold: refused as such
    else:
        first = rows[0][0]
        (images / first).unlink()
        (images / first).symlink_to(d / "images" / "train" / "000000.png")
    before = sorted(p for p in d.rglob("*"))
    capsys.readouterr()
    code, out, err = run_cli(capsys, "data", "from-folder", images, captions, d, "--no-progress")
    assert code == 2 and err.count("\n") == 1, err
    assert "is inside the output data set" in err or "capmodel did not write there" in err, err
    assert sorted(p for p in d.rglob("*")) == before  # nothing deleted


def test_a_picture_name_with_a_line_break_is_refused_before_extraction(tmp_path, capsys, monkeypatch):
    from capmodel.datasets import extraction

    def extract(*args, **kwargs):
        raise AssertionError("extraction started before the names were checked")

    monkeypatch.setattr(extraction, "extract_to_file", extract)
    caps = make_photos(tmp_path / "photos", copies=1)
    first = next(iter(caps))
    (tmp_path / "photos" / first).rename(tmp_path / "photos" / "two\nlines.png")
    rows = [("two\nlines.png" if n == first else n, c, "val" if i == 0 else "train")
            for i, (n, cs) in enumerate(caps.items()) for c in cs]
    write_csv(tmp_path / "captions.csv", rows)
    for command in (["from-folder"], ["features"]):
        out = tmp_path / ("data" if command == ["from-folder"] else "f.h5")
        code, _, err = run_cli(capsys, "data", *command, tmp_path / "photos", tmp_path / "captions.csv", out,
                               "--no-progress")
        assert code == 2 and err.count("\n") == 1, err
        assert "image 'two\\nlines.png' has a line break in its name" in err, err
        assert not out.exists()


def test_a_karpathy_file_with_another_list_key_is_named_as_such(tmp_path, capsys):
    make_photos(tmp_path / "photos", copies=1)
    images = [{"filename": "red_circle_0.png", "split": "train", "sentences": [{"raw": "a red circle"}]}]
    (tmp_path / "k.json").write_text(json.dumps({"imgs": images, "dataset": "flickr8k"}))
    code, _, err = run_cli(capsys, "data", "from-folder", tmp_path / "photos", tmp_path / "k.json", tmp_path / "d")
    assert code == 2 and err.count("\n") == 1, err
    assert f"{tmp_path / 'k.json'} key 'imgs': holds objects, not caption strings" in err
    assert "a Karpathy split file keeps its pictures under 'images'" in err


def test_picture_names_are_kept_exactly(tmp_path, capsys):
    caps = make_photos(tmp_path / "photos", copies=1)
    first = next(iter(caps))
    (tmp_path / "photos" / first).rename(tmp_path / "photos" / f" {first}")  # a name with a leading space
    rows = [(f" {first}" if n == first else n, c, "val" if i < 2 else "train")
            for i, (n, cs) in enumerate(caps.items()) for c in cs]
    write_csv(tmp_path / "captions.csv", rows)
    code, _, err = run_cli(capsys, "data", "from-folder", tmp_path / "photos", tmp_path / "captions.csv",
                           tmp_path / "d", "--no-progress")
    assert code == 0, err
    urls = (tmp_path / "d" / fmt.urls_file("val")).read_text().splitlines()
    assert urls[0] == f"../photos/ {first}"
    # and a name that differs from a file only by spaces says so
    write_csv(tmp_path / "captions.csv", [(n.strip() if n.startswith(" ") else n, c, s) for n, c, s in rows])
    code, _, err = run_cli(capsys, "data", "from-folder", tmp_path / "photos", tmp_path / "captions.csv",
                           tmp_path / "d2")
    assert code == 2 and f"image '{first}' is not in" in err and f"(there is a picture ' {first}')" in err, err


def test_every_empty_caption_is_counted_and_the_first_ones_named(tmp_path, capsys):
    caps = make_photos(tmp_path / "photos", copies=1)
    rows = [(n, c, "val" if i == 0 else "train") for i, (n, cs) in enumerate(caps.items()) for c in cs]
    names = list(caps)
    rows += [(names[1], "!!!", "train"), (names[2], " ", "train"), (names[3], "...", "train"),
             (names[4], "?", "train")]
    write_csv(tmp_path / "captions.csv", rows)
    code, _, err = run_cli(capsys, "data", "from-folder", tmp_path / "photos", tmp_path / "captions.csv",
                           tmp_path / "d")
    assert code == 2 and err.count("\n") == 1, err
    assert "4 empty captions (they have no words): " in err
    for line, name in zip((14, 15, 16), names[1:4]):
        assert f"{tmp_path / 'captions.csv'} line {line}: image '{name}'" in err
    assert names[4] not in err and err.rstrip().endswith(", ...")


def test_a_pca_wider_than_the_features_is_refused_before_extraction(tmp_path, capsys):
    caps = make_photos(tmp_path / "photos", copies=1)
    write_csv(tmp_path / "captions.csv", [(n, c, "val" if i == 0 else "train")
                                          for i, (n, cs) in enumerate(caps.items()) for c in cs])
    code, _, err = run_cli(capsys, "data", "from-folder", tmp_path / "photos", tmp_path / "captions.csv",
                           tmp_path / "d", "--pca", "5000")
    width = folder.registry.get_encoder(folder.registry.DEFAULT).feature_dim
    assert code == 2 and err.count("\n") == 1, err
    assert f"--pca 5000 is wider than the features of encoder randconv ({width})" in err
    assert "train features" not in err and not (tmp_path / "d").exists()


def test_from_folder_help_names_every_captions_form():
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "capmodel.app.cli", "data", "from-folder", "--help"],
                       capture_output=True, text=True)
    text = " ".join(r.stdout.split())
    for form in ("image,caption[,split]", "{image: [captions]}", '[{"image": ..., "captions": [...], "split": ...}',
                 "Karpathy split file"):
        assert form in text, text
