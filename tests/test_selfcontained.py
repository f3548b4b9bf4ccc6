"""Tests of self-contained models: a trained model directory keeps its data set's encoder record
(capmodel.datasets.features.MODEL_RECORD_FILE, MODEL_PCA_FILE) and `capmodel caption` needs
nothing else, wherever the directory goes; a data set made again in place is refused."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from synthetic import draw_photo, photo_folder_with_csv, random_resnet50_file

import capmodel
from capmodel.app import captioner, pipeline
from capmodel.app.cli import main
from capmodel.datasets import features as feat
from capmodel.safety.atomic import sha256_of

TRAIN = {"cell_type": "lstm", "num_epochs": 15, "hidden_dim": 32, "wordvec_dim": 16, "batch_size": 8,
         "learning_rate": 0.02}


def new_pictures(d):
    """Two pictures the data set does not have: a PNG and a JPEG."""
    d.mkdir(parents=True, exist_ok=True)
    Image.fromarray(draw_photo("green", "square", side=44)).save(d / "a.png")
    Image.fromarray(draw_photo("blue", "circle", side=52)).save(d / "b.jpg", quality=95)
    return [d / "a.png", d / "b.jpg"]


def make_and_train(tmp, monkeypatch, *data_args, settings=TRAIN):
    """A from-folder data set tmp/data and a model tmp/model trained on it, both made from tmp
    as a user would type them: model.json records the relative path 'data'."""
    tmp.mkdir(parents=True, exist_ok=True)
    monkeypatch.chdir(tmp)
    photo_folder_with_csv(tmp)
    assert main(["data", "from-folder", "photos", "captions.csv", "data", *map(str, data_args)]) == 0
    pipeline.train("data", "model", settings, verbose=False)
    monkeypatch.chdir(tmp.parent)
    return tmp / "model"


def capmodel_cli(*args, cwd):
    """`capmodel ARGS` in a new process started in cwd, with the capmodel these tests import."""
    env = {**os.environ, "PYTHONPATH": str(Path(capmodel.__file__).parents[1])}
    return subprocess.run([sys.executable, "-m", "capmodel.app.cli", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, check=False)


def cli(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_training_keeps_the_encoder_record_in_the_model_directory(tmp_path, monkeypatch):
    model = make_and_train(tmp_path, monkeypatch)
    data = tmp_path / "data"
    meta = json.loads((model / "model.json").read_text())
    assert meta["data_dir"] == "data"  # relative: useless from anywhere else
    original = json.loads((data / feat.RECORD_FILE).read_text())
    copied = json.loads((model / feat.MODEL_RECORD_FILE).read_text())
    assert copied == {**original, "pca_file": feat.MODEL_PCA_FILE}
    assert (model / feat.MODEL_PCA_FILE).read_bytes() == (data / feat.PCA_FILE).read_bytes()
    assert sha256_of(model / feat.MODEL_PCA_FILE) == copied["pca_sha256"] == meta["encoder"]["pca_sha256"]
    assert meta["encoder"] == {"extractor": "capmodel-randconv-v1", "preprocess": "rgb-center-crop-bilinear",
                               "image_size": 64, "weights": None, "weights_sha256": None,
                               "pca_sha256": original["pca_sha256"]}
    assert not [p.name for p in model.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_copied_model_captions_png_and_jpeg_with_its_data_set_deleted(tmp_path, monkeypatch):
    model = make_and_train(tmp_path / "orig", monkeypatch)
    pictures = new_pictures(tmp_path / "new")
    before = capmodel_cli("caption", model, *pictures, cwd=tmp_path / "orig")
    assert before.returncode == 0, before.stderr
    lines = before.stdout.splitlines()
    assert [line.split("\t")[0] for line in lines] == [str(p) for p in pictures]
    assert all(line.split("\t")[1] for line in lines), lines  # trained enough to say something

    moved = tmp_path / "elsewhere" / "my model"
    shutil.copytree(model, moved)
    shutil.rmtree(tmp_path / "orig")
    (tmp_path / "somewhere").mkdir()
    after = capmodel_cli("caption", moved, *pictures, cwd=tmp_path / "somewhere")
    assert after.returncode == 0 and after.stderr == "", after.stderr
    assert after.stdout == before.stdout


def test_a_data_set_made_again_in_place_is_refused_with_data(tmp_path, monkeypatch, capsys):
    model = make_and_train(tmp_path, monkeypatch, settings={**TRAIN, "num_epochs": 1})
    data = tmp_path / "data"
    old_sha = feat.read_record(data)["pca_sha256"]
    picture = tmp_path / "photos" / "red_circle_0.png"
    assert cli(capsys, "caption", model, picture, "--data", data)[0] == 0  # the same data set: fine
    # one picture edited, the data set made again: the same split and words, another PCA
    rgb = np.asarray(Image.open(picture)).copy()
    rgb[:4, :4] = (0, 0, 0)
    Image.fromarray(rgb).save(picture)
    monkeypatch.chdir(tmp_path)
    assert cli(capsys, "data", "from-folder", "photos", "captions.csv", "data")[0] == 0
    new_sha = feat.read_record(data)["pca_sha256"]
    assert new_sha != old_sha
    code, out, err = cli(capsys, "caption", model, picture, "--data", data)
    assert code == 2 and out == "" and err.count("\n") == 1
    assert err == (f"capmodel caption: error: --data {data}: its PCA {data / feat.PCA_FILE} (sha256 {new_sha}) is "
                   f"not the one the model was trained with, {model / feat.MODEL_PCA_FILE} (sha256 {old_sha}): the "
                   "data set was made again since, or is another one; leave out --data to use the model's own copy\n")
    code, out, _ = cli(capsys, "caption", model, picture)  # the model's own copy still works
    assert code == 0 and out.startswith(f"{picture}\t")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model trained for one epoch on a from-folder data set, from the data set's parent."""
    tmp = tmp_path_factory.mktemp("sc")
    photo_folder_with_csv(tmp)
    assert main(["data", "from-folder", str(tmp / "photos"), str(tmp / "captions.csv"), str(tmp / "data")]) == 0
    pipeline.train(tmp / "data", tmp / "model", {**TRAIN, "num_epochs": 1}, verbose=False)
    return tmp


@pytest.mark.parametrize("case, message", [
    ("PCA altered", "{m}/encoder_pca.h5: does not match the checksum in {m}/encoder.json; the file was altered"),
    ("PCA missing", "{m}/encoder_pca.h5: missing file (the PCA that {m}/encoder.json refers to)"),
    ("record missing", ("{m}/encoder.json: missing file (the encoder record that {m}/model.json refers to); "
                        "copy the whole model directory")),
    ("record edited", ("{m}/encoder.json: not the encoder that {m}/model.json records (image_size, pca_sha256 "
                       "differ); the file was altered or comes from another model")),
    ("record not JSON", "encoder record {m}/encoder.json is not valid JSON"),
])
def test_an_altered_model_record_gives_one_line_naming_the_file(trained, tmp_path, capsys, case, message):
    m = tmp_path / "m"
    shutil.copytree(trained / "model", m)
    if case == "PCA altered":
        with open(m / feat.MODEL_PCA_FILE, "ab") as f:
            f.write(b"x")
    elif case == "PCA missing":
        (m / feat.MODEL_PCA_FILE).unlink()
    elif case == "record missing":
        (m / feat.MODEL_RECORD_FILE).unlink()
    elif case == "record edited":  # consistent in itself, but not the model's encoder
        record = json.loads((m / feat.MODEL_RECORD_FILE).read_text())
        with open(m / feat.MODEL_PCA_FILE, "ab") as f:
            f.write(b"x")
        record.update(image_size=32, pca_sha256=sha256_of(m / feat.MODEL_PCA_FILE))
        (m / feat.MODEL_RECORD_FILE).write_text(json.dumps(record))
    elif case == "record not JSON":
        (m / feat.MODEL_RECORD_FILE).write_text("{")
    code, out, err = cli(capsys, "caption", m, trained / "photos" / "red_circle_0.png")
    assert code == 2 and out == "" and err.count("\n") == 1, err
    assert err.startswith("capmodel caption: error: " + message.format(m=m))


def test_an_old_model_without_the_record_still_uses_its_data_set(trained, tmp_path, capsys):
    m = tmp_path / "old"
    shutil.copytree(trained / "model", m)
    pictures = sorted((trained / "photos").iterdir())[:3]
    new = cli(capsys, "caption", m, *pictures)
    meta = json.loads((m / "model.json").read_text())
    del meta["encoder"]
    (m / "model.json").write_text(json.dumps(meta))
    (m / feat.MODEL_RECORD_FILE).unlink()
    (m / feat.MODEL_PCA_FILE).unlink()
    assert cli(capsys, "caption", m, *pictures) == new and new[0] == 0  # through data_dir
    code, _, err = cli(capsys, "caption", m, *pictures, "--data", tmp_path / "gone")
    assert code == 2 and f"the model's data set {tmp_path / 'gone'} does not exist" in err


def test_a_data_set_without_a_record_gives_the_model_none(trained, tmp_path, capsys):
    """CS231n's COCO has no record: nothing is copied, and captioning needs --features as before."""
    data = tmp_path / "coco_like"
    shutil.copytree(trained / "data", data)
    (data / feat.RECORD_FILE).unlink()
    (data / feat.PCA_FILE).unlink()
    pipeline.train(data, tmp_path / "m", {**TRAIN, "num_epochs": 1}, verbose=False)
    assert json.loads((tmp_path / "m" / "model.json").read_text())["encoder"] is None
    assert not (tmp_path / "m" / feat.MODEL_RECORD_FILE).exists()
    assert not (tmp_path / "m" / feat.MODEL_PCA_FILE).exists()
    code, _, err = cli(capsys, "caption", tmp_path / "m", trained / "photos" / "red_circle_0.png")
    assert code == 2 and f"capmodel cannot compute the features of data set {data}" in err and "--features" in err


def test_a_broken_record_stops_training_before_it_starts(trained, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(trained / "data", data)
    with open(data / feat.PCA_FILE, "ab") as f:
        f.write(b"x")
    with pytest.raises(ValueError, match=f"{data / feat.PCA_FILE}: does not match the checksum"):
        pipeline.train(data, tmp_path / "m", {**TRAIN, "num_epochs": 1}, verbose=False)
    assert not (tmp_path / "m").exists()


def test_a_model_with_a_pretrained_encoder_captions_from_a_copy_given_the_weights_file(
        resnet50_file, tmp_path, monkeypatch, capsys):
    model = make_and_train(tmp_path / "orig", monkeypatch, "--encoder", "resnet50", "--weights", resnet50_file,
                           "--pca", "4", settings={**TRAIN, "cell_type": "rnn", "num_epochs": 2})
    capsys.readouterr()
    meta = json.loads((model / "model.json").read_text())
    assert meta["encoder"]["extractor"] == "resnet50" and meta["encoder"]["weights"] is None
    assert meta["encoder"]["weights_sha256"] == sha256_of(resnet50_file)
    pictures = new_pictures(tmp_path / "new")
    before = cli(capsys, "caption", model, *pictures, "--weights", resnet50_file)
    assert before[0] == 0 and [line.split("\t")[0] for line in before[1].splitlines()] == list(map(str, pictures))

    moved = tmp_path / "elsewhere" / "model"
    shutil.copytree(model, moved)
    shutil.rmtree(tmp_path / "orig")
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert cli(capsys, "caption", moved, *pictures, "--weights", resnet50_file) == before
    # another random initialisation: refused by the weights' SHA-256
    other = random_resnet50_file(tmp_path / "other.pt", seed=2)
    code, out, err = cli(capsys, "caption", moved, *pictures, "--weights", other)
    assert code == 2 and out == "" and err.count("\n") == 1
    assert err == (f"capmodel caption: error: --weights {other} has sha256 {sha256_of(other)}, but the features of "
                   f"model {moved} were computed with weights of sha256 {sha256_of(resnet50_file)} (resnet50.pt)\n")
    code, _, err = cli(capsys, "caption", moved, *pictures)
    assert code == 2 and err.count("\n") == 1 and "from the weights file resnet50.pt" in err
    assert "pass it with --weights" in err
    assert captioner.caption_files(moved, pictures, weights=resnet50_file)[1]["image"] == str(pictures[1])
