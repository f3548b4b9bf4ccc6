"""Training that survives and improves: resume after kill -9, corrupt checkpoints,
validation, early stopping, schedules and dropout in the solver."""

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from capmodel import checkpoints
from capmodel.captioning_solver import CaptioningSolver, TrainingError
from capmodel.classifiers.rnn import CaptioningRNN
from synthetic import model_params, random_data, resumable_train_cmd

# About 4 s of training (1200 iterations) so that kills land at many different points.
TRAIN = ["--cell-type", "lstm", "--hidden-dim", "128", "--wordvec-dim", "32", "--batch-size", "10",
         "--num-epochs", "16", "--checkpoint-every", "7", "--dropout", "0.2", "--val-metric", "bleu4",
         "--val-metric-images", "12", "--print-every", "1000", "--seed", "5"]


def _train_cmd(data, out, ckpt):
    return resumable_train_cmd(data, out, ckpt, TRAIN)


@pytest.fixture(scope="module")
def reference_run(shapes_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ref")
    subprocess.run(_train_cmd(shapes_dir, tmp / "out", tmp / "ckpt"), check=True, capture_output=True,
                   env={**os.environ, "OMP_NUM_THREADS": "1"})
    return tmp / "out"


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kill_9_and_resume_is_bit_identical(shapes_dir, tmp_path, reference_run, seed):
    rng = np.random.default_rng(seed)
    out, ckpt = tmp_path / "out", tmp_path / "ckpt"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    kills = 0
    for _ in range(3):  # kill at a random moment, up to three times
        proc = subprocess.Popen(_train_cmd(shapes_dir, out, ckpt), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env=env)
        time.sleep(rng.uniform(0.3, 3.5))
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait()
    done = subprocess.run(_train_cmd(shapes_dir, out, ckpt), capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert kills >= 1
    ref, got = model_params(reference_run), model_params(out)
    assert all(np.array_equal(ref[k], got[k]) for k in ref)
    assert (reference_run / "history.csv").read_text() == (out / "history.csv").read_text()
    assert not ckpt.exists()  # removed after success


def _solver(data, model, tmp_path, **kw):
    return CaptioningSolver(model, data, update_rule="adam", batch_size=8, num_epochs=3, seed=1, verbose=False,
                            checkpoint_dir=tmp_path, **kw)


def _small_model(data, seed=0, **kw):
    return CaptioningRNN(data["word_to_idx"], input_dim=16, wordvec_dim=8, hidden_dim=12, seed=seed, **kw)


def test_in_process_resume_equals_uninterrupted(tmp_path):
    data = random_data()
    full = _small_model(data)
    full_solver = _solver(data, full, tmp_path / "a")
    full_solver.train()
    part = _small_model(data)
    _solver(data, part, tmp_path / "b", max_iterations=8).train()
    resumed = _small_model(data, seed=99)  # different init: everything must come from the checkpoint
    s = _solver(data, resumed, tmp_path / "b")
    assert s.resume() and s.iteration == 8
    s.train()
    assert s.loss_history == full_solver.loss_history and len(s.loss_history) == 15
    assert all(np.array_equal(full.params[k], resumed.params[k]) for k in full.params)


def test_corrupt_newest_checkpoint_falls_back_to_previous(tmp_path, capsys):
    data = random_data()
    _solver(data, _small_model(data), tmp_path, checkpoint_every=2, max_iterations=6).train()
    newest = sorted(tmp_path.glob("ckpt-*.npz"))[-1]
    assert newest.name == "ckpt-000000006.npz"
    newest.write_bytes(newest.read_bytes()[:50])  # truncated
    s = _solver(data, _small_model(data), tmp_path)
    assert s.resume() and s.iteration == 5  # epoch end at 5 (40 captions / 8)
    assert "skipping unusable checkpoint" in capsys.readouterr().out


def test_resume_refuses_other_vocabulary_or_shapes(tmp_path):
    data = random_data()
    _solver(data, _small_model(data), tmp_path, max_iterations=3).train()
    other = random_data(num_words=13)
    with pytest.raises(checkpoints.CheckpointError, match="vocabulary mismatch"):
        _solver(other, _small_model(other), tmp_path).resume()
    wide = CaptioningRNN(data["word_to_idx"], input_dim=16, wordvec_dim=8, hidden_dim=20)
    with pytest.raises(checkpoints.CheckpointError, match="shape mismatch for parameter W_proj"):
        _solver(data, wide, tmp_path).resume()


def test_cli_refuses_a_checkpoint_dir_of_other_settings(shapes_dir, tmp_path, capsys):
    from capmodel.app.cli import main

    args = ["train", "--data", str(shapes_dir), "--out-dir", str(tmp_path / "o"), "--checkpoint-dir",
            str(tmp_path / "c"), "--keep-checkpoints", "--max-iterations", "2", "--hidden-dim", "16"]
    assert main(args) == 0
    assert main([*args[:-1], "32"]) == 2
    assert "belongs to a run with other settings (hidden_dim differ)" in capsys.readouterr().err


def test_non_finite_loss_keeps_last_good_checkpoint(tmp_path):
    data = random_data()
    model = _small_model(data)
    s = _solver(data, model, tmp_path, checkpoint_every=1, optim_config={"learning_rate": 1e-3})
    s.max_iterations = 4
    s.train()
    good = {k: v.copy() for k, v in model.params.items()}
    real_loss = model.loss
    model.loss = lambda features, captions: (float("nan"), real_loss(features, captions)[1])  # the 5th step diverges
    s2 = _solver(data, model, tmp_path)
    with pytest.raises(TrainingError, match="non-finite loss at iteration 5"):
        s2.train()
    arrays, meta = checkpoints.load(sorted(tmp_path.glob("ckpt-*.json"))[-1].with_suffix(""))
    assert meta["iteration"] == 4
    assert all(np.array_equal(arrays[f"params/{k}"], good[k]) for k in good)


def test_validation_keeps_best_and_early_stops():
    data = random_data(num_images=30, num_val_images=10)
    model = _small_model(data)
    # A learning rate this high makes validation worse after the first epochs (higher ones diverge).
    s = CaptioningSolver(model, data, update_rule="sgd", optim_config={"learning_rate": 0.7}, batch_size=10,
                         num_epochs=30, seed=0, verbose=False, validate=True, patience=2)
    s.train()
    assert s.finished and s.epoch < 30
    best = min(s.val_history, key=lambda r: r["val_loss"])
    assert best["best"] and s.val_history[-1]["epoch"] - best["epoch"] == 2
    assert s.validator.loss(s.model) == pytest.approx(best["val_loss"], rel=1e-5)  # best params restored


def test_val_metric_is_recorded():
    data = random_data()
    s = CaptioningSolver(_small_model(data), data, update_rule="adam", batch_size=10, num_epochs=2, seed=0,
                         verbose=False, val_metric="cider", val_metric_images=5)
    s.train()
    assert [r["epoch"] for r in s.val_history] == [1, 2]
    assert all(r["cider"] >= 0 and "val_loss" in r for r in s.val_history)


def test_schedule_and_warmup_reach_the_optimizer():
    data = random_data()
    s = CaptioningSolver(_small_model(data), data, update_rule="adam", optim_config={"learning_rate": 0.01},
                         batch_size=10, num_epochs=2, seed=0, verbose=False, lr_schedule="cosine",
                         warmup_iterations=2)
    s.train()
    assert s.lr_history[0] == pytest.approx(0.005) and s.lr_history[1] == pytest.approx(0.01)
    assert s.lr_history[-1] < 0.001


def test_dropout_is_deterministic_given_the_seed_and_off_when_sampling():
    data = random_data()
    runs = []
    for _ in range(2):
        m = _small_model(data, dropout=0.5)
        CaptioningSolver(m, data, update_rule="adam", batch_size=10, num_epochs=1, seed=3, verbose=False).train()
        runs.append(m)
    assert all(np.array_equal(runs[0].params[k], runs[1].params[k]) for k in runs[0].params)
    f = data["val_features"]
    assert np.array_equal(runs[0].sample(f, 10), runs[0].sample(f, 10))


START = {"cell_type": "lstm", "hidden_dim": 16, "wordvec_dim": 8, "batch_size": 25, "seed": 0, "print_every": 1000}


@pytest.fixture(scope="module")
def start_model(shapes_dir, tmp_path_factory):
    """A small cross-entropy LSTM on the shapes data, the start of --init-from runs."""
    from capmodel.app import pipeline

    out = tmp_path_factory.mktemp("start") / "a"
    pipeline.train(shapes_dir, out, {**START, "num_epochs": 6, "learning_rate": 0.01}, verbose=False)
    return out


def test_a_cross_entropy_run_from_a_model_keeps_it_when_no_epoch_beats_it(shapes_dir, start_model, tmp_path, capsys):
    """--init-from with --objective xe validates the start as epoch 0, as self-critical
    training does: a learning rate that makes every epoch worse returns the start, and
    the run says so in one line and in model.json."""
    from capmodel.app import pipeline

    out = tmp_path / "b"
    pipeline.train(shapes_dir, out, {**START, "num_epochs": 2, "learning_rate": 1.0}, init_from=start_model)
    val = (out / "val.csv").read_text().splitlines()
    assert val[1].startswith("0,0,") and val[1].endswith(",1")  # the start, validated before any update
    assert [line[-1] for line in val[2:]] == ["0", "0"]  # both epochs worse
    start, got = model_params(start_model), model_params(out)
    assert all(np.array_equal(start[k], got[k]) for k in start)
    said = [line for line in capsys.readouterr().out.splitlines() if "no epoch beat the start" in line]
    assert len(said) == 1 and said[0].startswith("no epoch beat the start (validation val_loss ") and \
        said[0].endswith(f"at epoch 0): the model written is the --init-from model {start_model}, unchanged")
    assert json.loads((out / "model.json").read_text())["improved_on_start"] is False


def test_model_json_says_whether_a_run_improved_on_its_start(shapes_dir, start_model, tmp_path, capsys):
    from capmodel.app import pipeline

    pipeline.train(shapes_dir, tmp_path / "c", {**START, "num_epochs": 1, "learning_rate": 0.01},
                   init_from=start_model)
    assert json.loads((tmp_path / "c" / "model.json").read_text())["improved_on_start"] is True
    assert "no epoch beat the start" not in capsys.readouterr().out
    assert json.loads((start_model / "model.json").read_text())["improved_on_start"] is None  # no start


def test_a_first_epoch_without_any_gradient_stops_training(tiny_data):
    """Nothing can change the model: the run stops after its first epoch instead of
    returning the start as if it had trained."""

    class Flat:
        params = {"w": np.zeros(3)}

        def loss(self, features, captions):
            return 1.0, {"w": np.zeros(3)}

    solver = CaptioningSolver(Flat(), tiny_data, batch_size=10, num_epochs=3, verbose=False)
    with pytest.raises(TrainingError, match=r"^epoch 1: every gradient of the epoch was exactly 0, so training "
                                            r"cannot change the model: the loss does not depend on the parameters$"):
        solver.train()
    assert solver.iteration == 4  # one epoch: 40 captions / 10


def test_a_start_trained_on_other_features_is_refused(shapes_dir, start_model, tmp_path, capsys):
    """Both model.json files record the encoder (and its PCA's SHA-256): a start whose
    features came from another encoder or PCA is refused before training."""
    from capmodel.app.cli import main

    other = tmp_path / "other"
    other.mkdir()
    for f in start_model.iterdir():
        (other / f.name).write_bytes(f.read_bytes())
    meta = json.loads((other / "model.json").read_text())
    meta["encoder"]["pca_sha256"] = "0" * 64
    (other / "model.json").write_text(json.dumps(meta))
    argv = ["--cell-type", "lstm", "--hidden-dim", "16", "--wordvec-dim", "8", "--num-epochs", "1"]
    assert main(["train", "--data", str(shapes_dir), "--out-dir", str(tmp_path / "o"), "--init-from", str(other),
                 *argv]) != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.search(
        rf"^capmodel train: error: --init-from {other}: the model was trained on other features than the data "
        r"set's \(pca_sha256 '0{64}' \(the data set's: '[0-9a-f]{64}'\)\)", err), err
    assert not (tmp_path / "o").exists()
    assert main(["train", "--data", str(shapes_dir), "--out-dir", str(tmp_path / "o"), "--init-from",
                 str(start_model), *argv]) == 0  # its own data set's features


def test_checkpoints_know_their_data_set_by_content(tmp_path, capsys):
    """A data set made again in place between a kill and the rerun is another data set (its
    checkpoints are refused); the same data set at another path is the same one."""
    import shutil

    from capmodel.app.cli import main
    from capmodel.datasets import shapes

    data = tmp_path / "data"
    shapes.generate(data, num_train=20, num_val=6, seed=3)
    args = ["train", "--checkpoint-dir", str(tmp_path / "ckpt"), "--keep-checkpoints", "--max-iterations", "1",
            "--hidden-dim", "16", "--wordvec-dim", "8", "--batch-size", "10"]
    assert main([*args, "--data", str(data), "--out-dir", str(tmp_path / "a")]) == 0
    shutil.copytree(data, tmp_path / "moved")
    assert main([*args, "--data", str(tmp_path / "moved"), "--out-dir", str(tmp_path / "b")]) == 0
    assert "Resumed from" in capsys.readouterr().out
    shapes.generate(data, num_train=20, num_val=6, seed=4)  # made again in place
    assert main([*args, "--data", str(data), "--out-dir", str(tmp_path / "c")]) != 0
    assert "belongs to a run with other settings (data differ)" in capsys.readouterr().err
    a, b = (json.loads((tmp_path / d / "model.json").read_text()) for d in "ab")
    assert a["data_sha256"] == b["data_sha256"] and a["data_dir"] != b["data_dir"]


def _no_space(monkeypatch, after=0):
    """Make the (after+1)-th np.savez of a checkpoint pair fail as a full disk does."""
    calls = []
    real = checkpoints.np.savez

    def savez(path, **arrays):
        calls.append(path)
        if len(calls) > after:
            Path(path).write_bytes(b"PK")  # what a full disk leaves: a partial file
            raise OSError(28, "No space left on device")
        return real(path, **arrays)

    monkeypatch.setattr(checkpoints.np, "savez", savez)


def test_a_full_disk_after_training_leaves_no_outputs_and_names_the_file(shapes_dir, tmp_path, monkeypatch,
                                                                          capsys):
    from capmodel.app.cli import main

    out = tmp_path / "m"
    _no_space(monkeypatch)
    assert main(["train", "--data", str(shapes_dir), "--out-dir", str(out), "--hidden-dim", "16", "--wordvec-dim",
                 "8", "--num-epochs", "1"]) != 0
    err = capsys.readouterr().err
    assert err == (f"capmodel train: error: {out / 'model.npz'}: No space left on device (training finished, but "
                   "none of its outputs was written)\n")
    assert not out.exists()  # history.csv and val.csv went with the model
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["train", "--data", str(shapes_dir), "--out-dir", str(out), "--hidden-dim", "16", "--wordvec-dim",
                 "8", "--num-epochs", "1"]) != 0
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_a_full_disk_while_checkpointing_names_the_checkpoint(shapes_dir, tmp_path, monkeypatch, capsys):
    from capmodel.app.cli import main

    _no_space(monkeypatch)
    assert main(["train", "--data", str(shapes_dir), "--out-dir", str(tmp_path / "m"), "--checkpoint-dir",
                 str(tmp_path / "c"), "--hidden-dim", "16", "--wordvec-dim", "8", "--num-epochs", "1"]) != 0
    err = capsys.readouterr().err
    assert re.fullmatch(rf"capmodel train: error: {tmp_path / 'c'}/\S+: No space left on device\n", err), err


@pytest.mark.parametrize("name", ["history.csv", "val.csv", "model.json", "encoder.json"])
def test_the_output_directory_keeps_files_capmodel_did_not_write(shapes_dir, start_model, tmp_path, capsys, name):
    """--out-dir replaces only the outputs capmodel wrote there for a model: a user's file of
    the same name, or one changed since, is refused before training."""
    from capmodel.app.cli import main

    argv = ["train", "--data", str(shapes_dir), "--hidden-dim", "16", "--wordvec-dim", "8", "--num-epochs", "1"]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / name).write_text("my own file\n")
    assert main([*argv, "--out-dir", str(mine)]) != 0
    assert f"--out-dir {mine} holds {name}, which capmodel did not write there for a model (no model.json of " \
        "capmodel's there records it)" in capsys.readouterr().err
    assert (mine / name).read_text() == "my own file\n" and len(list(mine.iterdir())) == 1

    ours = tmp_path / "ours"
    assert main([*argv, "--out-dir", str(ours)]) == 0
    assert main([*argv, "--out-dir", str(ours), "--seed", "1"]) == 0  # capmodel's own model: replaced
    for declared in ("model.npz", "model.json", "history.csv", "val.csv"):  # what the workflow deletes first
        (ours / declared).unlink()
    assert main([*argv, "--out-dir", str(ours)]) == 0  # the encoder record left behind is capmodel's
    if name != "model.json":
        (ours / name).write_text("edited\n")
        assert main([*argv, "--out-dir", str(ours)]) != 0
        assert f"holds {name}, which capmodel did not write there for a model (it changed since)" in \
            capsys.readouterr().err


def test_kept_checkpoints_lose_the_temporary_files_of_a_killed_run(shapes_dir, tmp_path):
    from capmodel.app import pipeline

    ckpt = tmp_path / "ckpt"
    settings = {**START, "num_epochs": 1, "max_iterations": 1}
    pipeline.train(shapes_dir, tmp_path / "a", settings, checkpoint_dir=ckpt, keep_checkpoints=True, verbose=False)
    stale = [ckpt / ".ckpt-000000002.npz.k1ll3d.tmp.npz", ckpt / ".run_config.json.x9y8z7.tmp"]
    for f in stale:
        f.write_bytes(b"half")  # what a kill during a write leaves
    (ckpt / "notes.txt").write_text("mine")
    pipeline.train(shapes_dir, tmp_path / "b", settings, checkpoint_dir=ckpt, keep_checkpoints=True, verbose=False)
    assert not any(f.exists() for f in stale)
    assert (ckpt / "notes.txt").exists() and list(ckpt.glob("ckpt-*.npz"))
