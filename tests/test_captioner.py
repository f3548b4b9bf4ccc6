"""Tests of captioning new images with a trained model (capmodel.app.captioner, `capmodel caption`)
and of the feature extractor record that makes it possible."""

import json

import numpy as np
import pytest

from capmodel.coco_utils import load_coco_data
from capmodel.datasets import features as feat
from synthetic import draw_photo, photo_folder_with_csv
from capmodel.image_utils import image_from_url


def test_shapes_record_reproduces_the_stored_features(shapes_dir):
    record = feat.read_record(shapes_dir)
    saved = json.loads((shapes_dir / feat.RECORD_FILE).read_text())
    assert saved["extractor"] == "capmodel-randconv-v1" and saved["image_size"] == 64
    assert saved["created_by"] == "capmodel data shapes" and saved["pca_dim"] == 512
    assert record["components"].shape == (2328, saved["pca_components"])
    pca, fc7 = load_coco_data(shapes_dir), load_coco_data(shapes_dir, pca_features=False)
    for split in ("train", "val"):
        images = np.stack([image_from_url(u) for u in pca[f"{split}_urls"][:5]])
        assert np.array_equal(feat.compute(images, record, pca=False), fc7[f"{split}_features"][:5])
        np.testing.assert_allclose(feat.compute(images, record), pca[f"{split}_features"][:5], atol=1e-5)


def test_record_without_pca_file_or_altered_is_refused(shapes_dir, tmp_path):
    import shutil

    d = tmp_path / "d"
    shutil.copytree(shapes_dir, d, ignore=shutil.ignore_patterns("images"))
    with open(d / feat.PCA_FILE, "ab") as f:
        f.write(b"x")
    with pytest.raises(ValueError, match="does not match the checksum"):
        feat.read_record(d)
    (d / feat.PCA_FILE).unlink()
    with pytest.raises(ValueError, match=f"{feat.PCA_FILE}: missing file"):
        feat.read_record(d)
    (d / feat.RECORD_FILE).unlink()
    assert feat.read_record(d) is None


# ------------------------------------------------------------ captioning files

def make_photos(d):
    """12 PNGs (3 colours x 2 shapes x 2 sizes) in d/photos and d/captions.csv without a split column."""
    photo_folder_with_csv(d)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A from-folder dataset of 12 PNGs and a tiny LSTM trained on it for one epoch."""
    from capmodel.app import pipeline
    from capmodel.app.cli import main

    tmp = tmp_path_factory.mktemp("cap")
    make_photos(tmp)
    assert main(["data", "from-folder", str(tmp / "photos"), str(tmp / "captions.csv"), str(tmp / "data")]) == 0
    pipeline.train(tmp / "data", tmp / "model", {"cell_type": "lstm", "num_epochs": 1, "hidden_dim": 16,
                                                 "wordvec_dim": 8, "batch_size": 10}, verbose=False)
    return tmp


def cli(capsys, *args):
    from capmodel.app.cli import main

    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def _expected(tmp, split):
    """{image file name: caption} from the features stored in the data set, decoded as `caption`
    and `sample` do by default (capmodel.app.settings.DECODE: beam search of width 3)."""
    from capmodel import checkpoints
    from capmodel.app import settings as S
    from capmodel.coco_utils import decode_captions

    model, _ = checkpoints.load_model(tmp / "model" / "model")
    data = load_coco_data(tmp / "data")
    defaults = S.defaults(S.DECODE)
    caps = decode_captions(model.sample(data[f"{split}_features"], max_length=defaults["max_length"], method="beam",
                                        beam_size=defaults["beam_size"]), data["idx_to_word"], strip_special=True)
    return {u.rsplit("/", 1)[1]: c for u, c in zip(data[f"{split}_urls"], caps)}


def test_caption_folder_prints_one_line_per_image_as_from_stored_features(trained, capsys):
    code, out, err = cli(capsys, "caption", trained / "model", trained / "photos")
    assert code == 0 and err == ""
    lines = out.splitlines()
    names = sorted(p.name for p in (trained / "photos").iterdir())
    assert [line.split("\t")[0] for line in lines] == [str(trained / "photos" / n) for n in names]
    got = {line.split("\t")[0].rsplit("/", 1)[1]: line.split("\t")[1] for line in lines}
    assert any(got.values())  # a one-epoch model: some captions are just <END>
    # images -> record's extractor -> the features the model was trained on
    expected = {**_expected(trained, "train"), **_expected(trained, "val")}
    assert got == expected


@pytest.mark.parametrize("model_arg", ["model/model.npz", "model/model.json", "model/model"])
def test_model_path_forms(trained, capsys, model_arg):
    image = trained / "photos" / "red_circle_0.png"
    code, out, _ = cli(capsys, "caption", trained / model_arg, image)
    assert code == 0
    assert out == cli(capsys, "caption", trained / "model", image)[1] and out.startswith(f"{image}\t")


def test_csv_html_and_beam(trained, capsys, tmp_path):
    import base64
    import csv
    import re

    code, out, err = cli(capsys, "caption", trained / "model", trained / "photos", "--out", tmp_path / "c.csv",
                         "--html", tmp_path / "g.html", "--method", "beam", "--beam-size", "2")
    assert code == 0 and out == f"12 captions -> {tmp_path / 'c.csv'}, {tmp_path / 'g.html'}\n"
    with open(tmp_path / "c.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["image", "caption", "model"] and len(rows) == 12
    assert {r["model"] for r in rows} == {str(trained / "model")}
    page = (tmp_path / "g.html").read_text()
    uris = re.findall(r'<img src="data:image/png;base64,([^"]+)"', page)
    assert len(uris) == 12 and base64.b64decode(uris[0])[:8] == b"\x89PNG\r\n\x1a\n"
    for r in rows:
        assert f"<b>{r['caption'] or '<i>(empty caption)</i>'}</b><br><small>{r['image']}</small>" in page
    assert "src=\"file:" not in page and "http" not in page  # self-contained
    assert [p.name for p in tmp_path.iterdir()] and not list(tmp_path.glob(".*tmp*"))


def test_precomputed_features_npy_and_h5(trained, capsys, tmp_path):
    import h5py

    data = load_coco_data(trained / "data")
    urls = list(data["val_urls"])
    images = [u.replace("file://", "") for u in urls]
    np.save(tmp_path / "f.npy", data["val_features"])
    with h5py.File(tmp_path / "f.h5", "w") as f:
        f["features"] = data["val_features"]
    expected = _expected(trained, "val")
    for name in ("f.npy", "f.h5"):
        code, out, _ = cli(capsys, "caption", trained / "model", *images, "--features", tmp_path / name)
        assert code == 0
        assert [line.split("\t") for line in out.splitlines()] == [[p, expected[p.rsplit("/", 1)[1]]] for p in images]


@pytest.fixture
def no_record(trained, tmp_path):
    """A copy of the data set without the extractor record, like CS231n's COCO."""
    import shutil

    d = tmp_path / "coco_like"
    shutil.copytree(trained / "data", d)
    (d / feat.RECORD_FILE).unlink()
    (d / feat.PCA_FILE).unlink()
    return d


def test_dataset_without_record_says_so_and_features_work(trained, no_record, capsys, tmp_path):
    code, out, err = cli(capsys, "caption", trained / "model", trained / "photos", "--data", no_record)
    assert code == 2 and out == "" and err.count("\n") == 1
    assert err.startswith(f"capmodel caption: error: capmodel cannot compute the features of data set {no_record}")
    assert "VGG-16 fc7" in err and "--features" in err and "PCA features of width 512" in err
    data = load_coco_data(no_record)
    np.save(tmp_path / "f.npy", data["train_features"][:2])
    # image paths are stored relative to the data set (../photos/...), and the copy has no photos beside it
    images = [u.replace("file://", "") for u in load_coco_data(trained / "data")["train_urls"][:2]]
    code, out, _ = cli(capsys, "caption", trained / "model", *images, "--data", no_record, "--features",
                       tmp_path / "f.npy")
    assert code == 0 and len(out.splitlines()) == 2


def _broken(tmp):
    from PIL import Image

    Image.fromarray(draw_photo("red", "circle")).save(tmp / "broken.png")
    (tmp / "broken.png").write_bytes((tmp / "broken.png").read_bytes()[:50])
    return tmp / "broken.png"


@pytest.mark.parametrize("case, message", [
    ("unreadable image", "cannot read image {tmp}/broken.png"),
    ("empty folder", "{tmp}/empty has no pictures (.png, .jpg"),
    ("missing image", "image {tmp}/ghost.png does not exist"),
    ("not a picture file", "image {tmp}/notes.txt is not a picture file (.png, .jpg"),
    ("model missing", "model file {tmp}/nomodel/model.npz does not exist"),
    ("width mismatch", "features in {tmp}/w.npy have width 7, but the model expects width 512"),
    ("row mismatch", "features in {tmp}/r.npy have 3 rows but 1 images were given"),
    ("pickled features", "cannot read features file {tmp}/o.npy"),
    ("non-finite features", "features in {tmp}/n.npy hold 2 non-finite values (NaN or inf), first in row 0"),
    ("data set missing", "the model's data set {tmp}/gone does not exist"),
    ("other vocabulary", "the vocabulary of {shapes} differs from the model's"),
])
def test_bad_input_gives_one_line_exit_2(trained, shapes_dir, capsys, tmp_path, case, message):
    image = trained / "photos" / "red_circle_0.png"
    model = trained / "model"
    extra = []
    if case == "unreadable image":
        image = _broken(tmp_path)
    elif case == "empty folder":
        image = tmp_path / "empty"
        image.mkdir()
    elif case == "missing image":
        image = tmp_path / "ghost.png"
    elif case == "not a picture file":
        image = tmp_path / "notes.txt"
        image.write_text("a red circle")
    elif case == "model missing":
        model = tmp_path / "nomodel"
        model.mkdir()
    elif case == "width mismatch":
        np.save(tmp_path / "w.npy", np.zeros((1, 7), np.float32))
        extra = ["--features", tmp_path / "w.npy"]
    elif case == "row mismatch":
        np.save(tmp_path / "r.npy", np.zeros((3, 512), np.float32))
        extra = ["--features", tmp_path / "r.npy"]
    elif case == "pickled features":
        np.save(tmp_path / "o.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
        extra = ["--features", tmp_path / "o.npy"]
    elif case == "non-finite features":
        x = np.zeros((1, 512), np.float32)
        x[0, [3, 7]] = [np.nan, np.inf]
        np.save(tmp_path / "n.npy", x)
        extra = ["--features", tmp_path / "n.npy"]
    elif case == "data set missing":
        extra = ["--data", tmp_path / "gone"]
    elif case == "other vocabulary":
        extra = ["--data", shapes_dir]
    code, out, err = cli(capsys, "caption", model, image, *extra)
    assert code == 2 and out == ""
    assert err.startswith("capmodel caption: error: ") and err.count("\n") == 1, err
    assert message.format(tmp=tmp_path, shapes=shapes_dir) in err


def test_every_bad_image_is_named_in_one_error(trained, capsys, tmp_path):
    good = trained / "photos" / "red_circle_0.png"
    (tmp_path / "fake.jpg").write_text("not a picture")
    (tmp_path / "notes.txt").write_text("a red circle")
    code, out, err = cli(capsys, "caption", trained / "model", tmp_path / "ghost.png", good, tmp_path / "notes.txt")
    assert code == 2 and out == "" and err.count("\n") == 1
    assert f"image {tmp_path / 'ghost.png'} does not exist; image {tmp_path / 'notes.txt'} is not a picture" in err
    broken = _broken(tmp_path)
    code, out, err = cli(capsys, "caption", trained / "model", broken, good, tmp_path / "fake.jpg")
    assert code == 2 and err.count("\n") == 1 and "2 of 3 image(s) cannot be read" in err
    assert f"cannot read image {broken}" in err and f"cannot read image {tmp_path / 'fake.jpg'}" in err
    # with precomputed features the pictures are read for the gallery only: the same one error
    np.save(tmp_path / "f.npy", np.zeros((3, 512), np.float32))
    code, out, err = cli(capsys, "caption", trained / "model", broken, good, tmp_path / "fake.jpg",
                         "--features", tmp_path / "f.npy", "--html", tmp_path / "g.html")
    assert code == 2 and "2 of 3 image(s) cannot be read" in err and not (tmp_path / "g.html").exists()


# ----------------------------------------------------------------- the docs


def _tested_blocks(path):
    """The sh blocks of a Markdown file that follow a '<!-- tests/test_captioner.py runs this' marker."""
    import re

    text = path.read_text()
    return [m.group(1).strip().splitlines()
            for m in re.finditer(r"<!-- tests/test_captioner\.py runs this[^>]*-->\n```sh\n(.*?)```", text, re.S)]


def test_docs_own_data_commands_run_verbatim(tmp_path, monkeypatch, capsys):
    import shlex
    from pathlib import Path

    from capmodel.app.cli import main

    blocks = _tested_blocks(Path(__file__).resolve().parents[1] / "docs" / "own-data.md")
    assert [len(b) for b in blocks] == [2, 1]
    make_photos(tmp_path)
    (tmp_path / "captions.csv").rename(tmp_path / "my_photos.csv")
    (tmp_path / "photos").rename(tmp_path / "my_photos")
    monkeypatch.chdir(tmp_path)
    for line in blocks[0] + blocks[1]:
        argv = shlex.split(line)
        assert argv[0] == "capmodel"
        assert main(argv[1:]) == 0, line
    out, err = capsys.readouterr()
    captions = [line.split("\t") for line in out.splitlines() if "\t" in line]
    assert [c[0] for c in captions] == [f"my_photos/{p.name}" for p in sorted((tmp_path / "my_photos").iterdir())]
    assert err.endswith("12 captions -> gallery.html\n") and (tmp_path / "gallery.html").stat().st_size > 1000
    assert json.loads((tmp_path / "models" / "mine" / "model.json").read_text())["epochs"] == 20


# ----------------------------------------------------------------- outputs


@pytest.fixture
def no_encoding(monkeypatch):
    """Captioning that fails loudly if it reaches the encoder: outputs are checked before it."""
    from capmodel.app import captioner

    def encode(*args, **kwargs):
        raise AssertionError("the pictures were encoded before the outputs were checked")

    monkeypatch.setattr(captioner, "encode_images", encode)


@pytest.mark.parametrize("flag, target, message", [
    ("--out", "model/model.npz", "must end in .csv"),
    ("--out", "photos/red_circle_0.png", "must end in .csv"),
    ("--html", "model/model.json", "must end in .html"),
    ("--out", "notes.csv", "exists and is not a file capmodel wrote there"),
    ("--html", "page.html", "exists and is not a page capmodel caption wrote"),
    ("--out", "file/c.csv", "is a file, not a directory"),
    # a user's captions file (capmodel data from-folder's input) has the columns image,caption
    ("--out", "captions.csv", "exists and is not a file capmodel wrote there"),
])
def test_outputs_are_checked_before_encoding_and_never_replace_other_files(trained, capsys, tmp_path, no_encoding,
                                                                          flag, target, message):
    import shutil

    work = tmp_path / "w"
    shutil.copytree(trained / "model", work / "model")
    shutil.copytree(trained / "photos", work / "photos")
    (work / "notes.csv").write_text("name,remark\nx,mine\n")
    (work / "captions.csv").write_text("image,caption\nred_circle_0.png,a red circle\n")
    (work / "page.html").write_text("<!DOCTYPE html><html><body>my page</body></html>\n")
    (work / "file").write_text("")
    before = {p: p.read_bytes() for p in work.rglob("*") if p.is_file()}
    code, out, err = cli(capsys, "caption", work / "model", work / "photos", flag, work / target)
    assert code == 2 and out == "" and err.count("\n") == 1, err
    assert message in err and str(work / target) in err
    assert {p: p.read_bytes() for p in work.rglob("*") if p.is_file()} == before


def test_second_output_refused_leaves_nothing_and_own_outputs_are_replaced(trained, capsys, tmp_path, no_encoding):
    (tmp_path / "file").write_text("")
    code, out, err = cli(capsys, "caption", trained / "model", trained / "photos", "--out", tmp_path / "c.csv",
                         "--html", tmp_path / "file" / "g.html")
    assert code == 2 and "is a file, not a directory" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_a_rerun_replaces_its_own_csv_and_gallery(trained, capsys, tmp_path):
    args = ["caption", trained / "model", trained / "photos" / "red_circle_0.png", "--out", tmp_path / "c.csv",
            "--html", tmp_path / "g.html"]
    assert cli(capsys, *args)[0] == 0
    first = (tmp_path / "c.csv").read_text(), (tmp_path / "g.html").read_text()
    assert 'name="generator" content="capmodel caption"' in first[1]
    code, out, err = cli(capsys, *args)
    assert code == 0, err
    assert ((tmp_path / "c.csv").read_text(), (tmp_path / "g.html").read_text()) == first


def test_a_gallery_that_fails_leaves_no_csv(trained, capsys, tmp_path):
    broken = _broken(tmp_path)
    np.save(tmp_path / "f.npy", np.zeros((1, 512), np.float32))
    code, out, err = cli(capsys, "caption", trained / "model", broken, "--features", tmp_path / "f.npy",
                         "--out", tmp_path / "c.csv", "--html", tmp_path / "g.html")
    assert code == 2 and "1 of 1 image(s) cannot be read" in err
    assert not (tmp_path / "c.csv").exists() and not (tmp_path / "g.html").exists()


def test_caption_and_sample_give_one_model_one_caption_per_picture_by_default(trained, capsys, tmp_path):
    """Both decode with the defaults of capmodel.app.settings.DECODE, so the caption a user gets for a
    picture is the one the workflow scored."""
    import csv

    from capmodel.app import settings as S

    assert S.defaults(S.DECODE)["method"] == "beam"  # else this test would compare greedy with greedy
    assert cli(capsys, "sample", "--model", trained / "model", "--data", trained / "data", "--out",
               tmp_path / "s.csv")[0] == 0
    with open(tmp_path / "s.csv", newline="") as f:
        sampled = {r["url"]: r["generated"] for r in csv.DictReader(f)}
    pictures = [str((trained / "data" / u).resolve()) for u in sampled]
    code, out, err = cli(capsys, "caption", trained / "model", *pictures)
    assert code == 0, err
    assert [line.split("\t")[1] for line in out.splitlines()] == list(sampled.values())
