"""Attention models in the application: `capmodel train --attention soft` (regions read only
when a model needs them, a data set without a grid refused before it is read, the run's data
identity and memory estimate counting the regions, --init-from and self-critical training),
`capmodel sample` and `baseline`, `capmodel caption` from a copied model directory with its
data set deleted, and resume after kill -9."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

import capmodel
from capmodel import checkpoints
from capmodel.app import memory, pipeline, samples
from capmodel.app import settings as S
from capmodel.app.cli import main
from capmodel.app.tables import read_csv
from capmodel.coco_utils import decode_captions, load_coco_data
from capmodel.datasets import format as fmt
from capmodel.datasets import shapes
from capmodel.models import image_inputs
from capmodel.objectives import CrossEntropy
from synthetic import model_params, resumable_train_cmd

SMALL = ["--hidden-dim", "16", "--wordvec-dim", "8", "--batch-size", "20", "--print-every", "1000"]


def cli(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def capmodel_cli(*args, cwd):
    """`capmodel ARGS` in a new process started in cwd, with the capmodel these tests import."""
    env = {**os.environ, "PYTHONPATH": str(Path(capmodel.__file__).parents[1]), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "capmodel.app.cli", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, check=False)


@pytest.fixture(scope="module")
def grid_data(tmp_path_factory):
    """A small shapes data set with its 4 x 4 grid, the regions projected to 32 channels."""
    out = tmp_path_factory.mktemp("att") / "shapes"
    shapes.generate(out, num_train=40, num_val=8, seed=1, grid=4, grid_pca=32)
    return out


@pytest.fixture(scope="module")
def no_grid_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("att") / "nogrid"
    shapes.generate(out, num_train=40, num_val=8, seed=1, grid=None)
    return out


@pytest.fixture(scope="module")
def att_model(grid_data, tmp_path_factory):
    """An attention LSTM trained for 2 epochs on grid_data."""
    out = tmp_path_factory.mktemp("att") / "lstm_att"
    assert main(["train", "--data", str(grid_data), "--out-dir", str(out), "--cell-type", "lstm", "--attention",
                 "soft", "--num-epochs", "2", *SMALL]) == 0
    return out


class Loads:
    """Records the regions argument of every load_coco_data call of the application."""

    def __init__(self, monkeypatch):
        self.regions = []
        for module in (pipeline, samples):
            monkeypatch.setattr(module, "load_coco_data", self)

    def __call__(self, *args, **kw):
        self.regions.append(kw.get("regions", True))
        return load_coco_data(*args, **kw)


# ------------------------------------------------------------------------------ train


def test_an_attention_model_is_built_with_the_data_sets_region_width(att_model):
    desc = json.loads((att_model / "model.json").read_text())["model"]
    assert (desc["attention"], desc["region_dim"], desc["num_regions"]) == ("soft", 32, 16)  # places on by default
    model, _ = checkpoints.load_model(checkpoints.model_base(att_model))
    assert model.uses_regions and model.params["att.Wr"].shape[0] == model.params["Wc"].shape[0] == 32 + 16


def test_a_model_without_region_positions_reads_the_regions_as_a_set(grid_data, tmp_path, capsys):
    code, _, err = cli(capsys, "train", "--data", grid_data, "--out-dir", tmp_path / "m", "--cell-type", "lstm",
                       "--attention", "soft", "--no-region-positions", "--max-iterations", "2", *SMALL)
    assert code == 0, err
    desc = json.loads((tmp_path / "m" / "model.json").read_text())["model"]
    assert "num_regions" not in desc and desc["region_dim"] == 32


@pytest.mark.parametrize("attention, cell", [("none", "lstm"), ("soft", "lstm"), ("soft", "transformer")])
def test_training_reads_the_regions_only_when_the_model_attends(grid_data, tmp_path, monkeypatch, capsys, attention,
                                                                cell):
    loads = Loads(monkeypatch)
    code, _, err = cli(capsys, "train", "--data", grid_data, "--out-dir", tmp_path / "m", "--cell-type", cell,
                       "--attention", attention, "--max-iterations", "2", *SMALL)
    assert code == 0, err
    assert loads.regions == [attention == "soft"]
    desc = json.loads((tmp_path / "m" / "model.json").read_text())["model"]
    assert desc.get("attention", "none") == attention and desc.get("region_dim") == (32 if attention == "soft" else None)


@pytest.mark.parametrize("cell", ["gru", "transformer"])
def test_a_data_set_without_a_grid_is_refused_before_it_is_read(no_grid_data, tmp_path, monkeypatch, capsys, cell):
    loads = Loads(monkeypatch)
    code, _, err = cli(capsys, "train", "--data", no_grid_data, "--out-dir", tmp_path / "m", "--cell-type", cell,
                       "--attention", "soft", *SMALL)
    assert code == 2 and loads.regions == []  # refused before the data set was read
    assert err.count("\n") == 1, err
    assert err.startswith(f"capmodel train: error: --data {no_grid_data}: a model with --attention soft attends over "
                          "image regions, but the data set has no train2014_grid.h5; make the data set with a grid "
                          "(--grid G"), err
    assert not (tmp_path / "m").exists()


def test_the_checkpoints_know_the_regions_of_an_attention_run(grid_data, tmp_path, capsys):
    """The run's data identity covers the regions when the model uses them: a grid changed
    between a kill and the rerun is another data set for an attention run, and no change for
    a run of a model that does not read it."""
    data = tmp_path / "data"
    shutil.copytree(grid_data, data)
    runs = {a: ["train", "--data", str(data), "--checkpoint-dir", str(tmp_path / f"ckpt-{a}"), "--keep-checkpoints",
                "--max-iterations", "1", "--attention", a, *SMALL] for a in ("none", "soft")}
    for a, args in runs.items():
        assert main([*args, "--out-dir", str(tmp_path / f"{a}-1")]) == 0
    capsys.readouterr()
    with h5py.File(data / fmt.grid_file("train"), "r+") as f:
        f[fmt.FEATURES_KEY][0, 0, 0] += 1  # one region channel of one image
    assert main([*runs["none"], "--out-dir", str(tmp_path / "none-2")]) == 0
    assert "Resumed from" in capsys.readouterr().out
    assert main([*runs["soft"], "--out-dir", str(tmp_path / "soft-2")]) == 2
    assert "belongs to a run with other settings (data differ)" in capsys.readouterr().err
    sha = {n: json.loads((tmp_path / n / "model.json").read_text())["data_sha256"] for n in ("none-1", "none-2",
                                                                                             "soft-1")}
    assert sha["none-1"] == sha["none-2"] != sha["soft-1"]
    with_regions = load_coco_data(data, regions=True)
    assert pipeline.data_sha256(with_regions) != pipeline.data_sha256(load_coco_data(grid_data, regions=True))


def test_the_memory_estimate_counts_the_regions(grid_data):
    data = load_coco_data(grid_data)
    s = S.check_train({"cell_type": "lstm", "hidden_dim": 16, "wordvec_dim": 8})
    T = data["train_captions"].shape[1] - 1
    plain = memory.bytes_per_row(pipeline.models.build(data["word_to_idx"], 512, s), T)
    for cell in ("lstm", "transformer"):
        model = pipeline.models.build(data["word_to_idx"], 512, {**s, "cell_type": cell, "attention": "soft"},
                                      region_dim=32)
        assert memory.bytes_per_row(model, T, 16) > memory.bytes_per_row(model, T, 0) > 0
    model = pipeline.models.build(data["word_to_idx"], 512, {**s, "attention": "soft"}, region_dim=32)
    # per row: the 16 x 32 regions, their 16 x 16 projection and its gradient; per step alpha,
    # context and their gradients, in float32
    assert memory.bytes_per_row(model, T, 16) - plain == 4 * (16 * 32 + 2 * 16 * 16 + T * 2 * (16 + 32))
    per_row = memory.bytes_per_row(model, T, 16)
    s = {**s, "batch_size": 10}
    memory.check_training(model, data, s, CrossEntropy(), available=10 * per_row)
    with pytest.raises(ValueError, match="--batch-size 10: one training step over 10 captions"):
        memory.check_training(model, data, s, CrossEntropy(), available=10 * per_row - 1)


def test_regions_that_do_not_fit_in_memory_are_refused_before_they_are_read(grid_data, tmp_path, monkeypatch,
                                                                            capsys):
    size = sum((grid_data / fmt.grid_file(s)).stat().st_size for s in ("train", "val"))
    held = 48 * 16 * 32 * 2  # 48 images' 16 regions of 32 float16 channels
    assert held <= size
    memory.check_regions(grid_data, available=held)
    with pytest.raises(ValueError) as e:
        memory.check_regions(grid_data, available=held - 1)
    assert "\n" not in str(e.value)
    assert str(e.value).startswith(f"data set {grid_data}: its regions (train2014_grid.h5, val2014_grid.h5) need "
                                   "about 0.0 GB in memory")
    loads = Loads(monkeypatch)
    real = memory.check_regions
    monkeypatch.setattr(memory, "check_regions", lambda data_dir: real(data_dir, available=held - 1))
    code, _, err = cli(capsys, "train", "--data", grid_data, "--out-dir", tmp_path / "m", "--attention", "soft",
                       *SMALL)
    assert code == 2 and loads.regions == [] and "its regions (train2014_grid.h5" in err
    assert not (tmp_path / "m").exists()
    code, _, err = cli(capsys, "train", "--data", grid_data, "--out-dir", tmp_path / "m", "--max-iterations", "1",
                       *SMALL)
    assert code == 0, err  # a model without attention does not hold them


@pytest.mark.parametrize("cell", ["lstm", "transformer"])
def test_an_attention_model_fine_tunes_from_itself_by_cross_entropy_and_scst(grid_data, att_model, tmp_path, capsys,
                                                                            cell):
    start = att_model
    if cell == "transformer":
        start = tmp_path / "start"
        assert main(["train", "--data", str(grid_data), "--out-dir", str(start), "--cell-type", cell, "--attention",
                     "soft", "--num-epochs", "1", *SMALL]) == 0
    for objective in ("xe", "scst"):
        out = tmp_path / objective
        code, _, err = cli(capsys, "train", "--data", grid_data, "--out-dir", out, "--init-from", start,
                           "--cell-type", cell, "--attention", "soft", "--objective", objective, "--num-epochs", "1",
                           "--scst-samples", "2", *SMALL)
        assert code == 0, err
        meta = json.loads((out / "model.json").read_text())
        assert meta["model"]["attention"] == "soft" and meta["init_from"]["path"] == str(start)
        assert meta["settings"]["objective"] == objective
        if meta["improved_on_start"]:  # the kept model is a trained one, not the start's copy
            with np.load(out / "model.npz") as new, np.load(start / "model.npz") as old:
                assert any(not np.array_equal(new[k], old[k]) for k in old.files)
    history = (tmp_path / "scst" / "history.csv").read_text().splitlines()
    assert history[0].startswith("iteration,epoch,loss,learning_rate,") and len(history) > 1


def test_init_from_a_model_without_attention_is_refused_in_one_line(grid_data, tmp_path, capsys):
    plain = tmp_path / "plain"
    assert main(["train", "--data", str(grid_data), "--out-dir", str(plain), "--max-iterations", "1", *SMALL]) == 0
    code, _, err = cli(capsys, "train", "--data", grid_data, "--out-dir", tmp_path / "o", "--init-from", plain,
                       "--attention", "soft", *SMALL)
    assert code == 2 and err.count("\n") == 1
    assert "the model does not match the training settings: attention None (settings: 'soft')" in err, err


# ------------------------------------------------------------------ sample, baseline


@pytest.mark.parametrize("method, options", [("greedy", {}), ("beam", {"beam_size": 3}),
                                             ("temperature", {"temperature": 0.7, "seed": 2})])
def test_sample_reads_the_regions_for_an_attention_model_with_every_decoder(grid_data, att_model, tmp_path,
                                                                            monkeypatch, method, options):
    loads = Loads(monkeypatch)
    out = tmp_path / "s.csv"
    rows = samples.sample(att_model, grid_data, out, {"method": method, "max_length": 8, **options})
    assert loads.regions == [True] and len(rows) == 8
    model, _ = checkpoints.load_model(checkpoints.model_base(att_model))
    data = load_coco_data(grid_data)
    record = S.decode_record({"method": method, "max_length": 8, **options})
    ids = np.array([r["image_idx"] for r in rows])
    caps = samples.caption_images(model, data, "val", ids, record)
    texts = decode_captions(caps, data["idx_to_word"], strip_special=True)
    assert [r["generated"] for r in rows] == texts
    if method != "temperature":  # the regions change what the model says
        other = model.sample(data["val_features"][ids], max_length=8, method=method,
                             regions=data["val_regions"][ids][::-1], **options)
        assert not np.array_equal(other, caps)


def test_sample_and_baseline_leave_the_regions_unread_when_nothing_attends(grid_data, tmp_path, monkeypatch):
    plain = tmp_path / "plain"
    pipeline.train(grid_data, plain, {"hidden_dim": 16, "wordvec_dim": 8, "max_iterations": 1}, verbose=False)
    loads = Loads(monkeypatch)
    samples.sample(plain, grid_data, tmp_path / "s.csv", {"max_length": 4})
    samples.baseline(grid_data, tmp_path / "b.csv")
    assert loads.regions == [False, False]


def test_sampling_an_attention_model_on_a_data_set_without_a_grid_is_one_line(no_grid_data, att_model, tmp_path,
                                                                              monkeypatch, capsys):
    loads = Loads(monkeypatch)
    code, _, err = cli(capsys, "sample", "--model", att_model, "--data", no_grid_data, "--out", tmp_path / "s.csv")
    assert code == 2 and loads.regions == [] and err.count("\n") == 1
    assert f"--data {no_grid_data}: model {att_model / 'model'} attends over image regions, but the data set has " \
           "no train2014_grid.h5" in err, err
    assert not (tmp_path / "s.csv").exists()


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru", "transformer"])
def test_beam_search_of_width_one_is_greedy_decoding_with_regions(grid_data, cell):
    data = load_coco_data(grid_data)
    s = S.check_train({"cell_type": cell, "attention": "soft", "hidden_dim": 16, "wordvec_dim": 8, "seed": 3})
    model = pipeline.models.build(data["word_to_idx"], data["train_features"].shape[1], s, region_dim=32)
    rng = np.random.default_rng(0)
    for k, v in model.params.items():  # weights of std 0.5: captions that differ from image to image
        model.params[k] = (k.endswith("gamma") + 0.5 * rng.standard_normal(v.shape)).astype(v.dtype)
    inputs = image_inputs(model, data, "val", np.arange(8))
    greedy = model.sample(max_length=12, method="greedy", **inputs)
    beam = model.sample(max_length=12, method="beam", beam_size=1, **inputs)
    np.testing.assert_array_equal(beam, greedy)
    assert len({tuple(row) for row in greedy}) > 1  # the regions make the captions differ


# -------------------------------------------------------------- a copied model directory


def test_a_copied_attention_model_captions_picture_files_with_its_data_set_deleted(tmp_path):
    """End to end through the CLI: a shapes data set (its pictures are files), an attention
    LSTM trained on it, the model directory copied elsewhere and the data set deleted; the
    copy captions the pictures as the model captioned them before, and as `capmodel sample`
    captions the same images from the data set's stored features and regions."""
    orig = tmp_path / "orig"
    orig.mkdir()
    made = capmodel_cli("data", "shapes", "data", "--num-train", "60", "--num-val", "6", "--grid", "4",
                        "--grid-pca", "32", cwd=orig)
    assert made.returncode == 0, made.stderr
    trained = capmodel_cli("train", "--data", "data", "--out-dir", "model", "--cell-type", "lstm", "--attention",
                           "soft", "--num-epochs", "12", "--learning-rate", "0.02", "--hidden-dim", "32",
                           "--wordvec-dim", "16", "--batch-size", "25", cwd=orig)
    assert trained.returncode == 0, trained.stderr
    sampled = capmodel_cli("sample", "--model", "model", "--data", "data", "--out", "s.csv", "--method", "greedy",
                           cwd=orig)
    assert sampled.returncode == 0, sampled.stderr
    by_sample = {int(r["image_idx"]): r["generated"] for r in read_csv(orig / "s.csv")}
    pictures = tmp_path / "pictures"
    shutil.copytree(orig / "data" / "images" / "val", pictures)
    before = capmodel_cli("caption", "model", pictures, "--method", "greedy", cwd=orig)
    assert before.returncode == 0, before.stderr

    moved = tmp_path / "elsewhere" / "my model"
    shutil.copytree(orig / "model", moved)
    assert (moved / "encoder.json").is_file() and (moved / "encoder_grid_pca.h5").is_file()
    shutil.rmtree(orig)
    (tmp_path / "somewhere").mkdir()
    after = capmodel_cli("caption", moved, pictures, "--method", "greedy", cwd=tmp_path / "somewhere")
    assert after.returncode == 0 and after.stderr == "", after.stderr
    assert after.stdout == before.stdout
    lines = [line.split("\t") for line in after.stdout.splitlines()]
    assert [Path(p).name for p, _ in lines] == sorted(p.name for p in pictures.iterdir())
    assert all(caption for _, caption in lines), lines  # trained enough to say something
    # each picture's caption is the one sampling gave its image from the data set's features
    assert [caption for _, caption in lines] == [by_sample[i] for i in sorted(by_sample)]
    beam = capmodel_cli("caption", moved, pictures, cwd=tmp_path / "somewhere")  # the default decoder: beam 3
    assert beam.returncode == 0 and len(beam.stdout.splitlines()) == len(lines), beam.stderr


# --------------------------------------------------------------------------- resume

# About 4 s of attention training (about 360 iterations) so that kills land at many points.
RESUME = ["--cell-type", "lstm", "--attention", "soft", "--hidden-dim", "32", "--wordvec-dim", "16",
          "--batch-size", "10", "--num-epochs", "12", "--checkpoint-every", "7", "--dropout", "0.2",
          "--val-metric", "bleu4", "--val-metric-images", "8", "--print-every", "1000", "--seed", "5"]


def _train_cmd(data, out, ckpt):
    return resumable_train_cmd(data, out, ckpt, RESUME)


@pytest.mark.slow
def test_an_attention_model_killed_twice_resumes_to_identical_parameters(grid_data, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ref = tmp_path / "ref"
    subprocess.run(_train_cmd(grid_data, ref, tmp_path / "ref-ckpt"), check=True, capture_output=True, env=env)
    out, ckpt = tmp_path / "out", tmp_path / "ckpt"
    rng = np.random.default_rng(0)
    kills = 0
    while kills < 2:  # kill -9 at a random moment after the run has written a checkpoint, twice
        proc = subprocess.Popen(_train_cmd(grid_data, out, ckpt), stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, env=env, text=True)
        before = set(ckpt.glob("ckpt-*.npz")) if ckpt.exists() else set()
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline and (
                not ckpt.exists() or set(ckpt.glob("ckpt-*.npz")) == before):
            time.sleep(0.05)  # until this run has written a checkpoint of its own
        time.sleep(rng.uniform(0.0, 0.5))
        assert proc.poll() is None, "training ended before it could be killed: make it longer"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        kills += 1
    done = subprocess.run(_train_cmd(grid_data, out, ckpt), capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert "Resumed from" in done.stdout
    expected, got = model_params(ref), model_params(out)
    assert sorted(expected) == sorted(got) and "params/att.Wr" in got
    assert all(np.array_equal(expected[k], got[k]) for k in expected)
    assert (ref / "history.csv").read_text() == (out / "history.csv").read_text()
    assert (ref / "val.csv").read_text() == (out / "val.csv").read_text()
    assert not ckpt.exists()
