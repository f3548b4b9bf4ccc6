"""Tests of self-contained models: a trained model directory keeps its data set's encoder record
(capmodel.datasets.features.MODEL_RECORD_FILE, MODEL_PCA_FILE) and `capmodel caption` needs
nothing else, wherever the directory goes; a data set made again in place is refused."""

import json
import shutil

import pytest
from synthetic import photo_folder_with_csv

from capmodel.app import pipeline
from capmodel.app.cli import main
from capmodel.datasets import features as feat
from capmodel.safety.atomic import sha256_of

TRAIN = {"cell_type": "lstm", "num_epochs": 15, "hidden_dim": 32, "wordvec_dim": 16, "batch_size": 8,
         "learning_rate": 0.02}


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


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model trained for one epoch on a from-folder data set, from the data set's parent."""
    tmp = tmp_path_factory.mktemp("sc")
    photo_folder_with_csv(tmp)
    assert main(["data", "from-folder", str(tmp / "photos"), str(tmp / "captions.csv"), str(tmp / "data")]) == 0
    pipeline.train(tmp / "data", tmp / "model", {**TRAIN, "num_epochs": 1}, verbose=False)
    return tmp


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
