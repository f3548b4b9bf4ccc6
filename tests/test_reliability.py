"""Bad input is refused up front with one line naming the problem; training never turns
bad data or a diverging run into a silently wrong model (issue: never train a silently
wrong model)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from capmodel import metrics
from capmodel.app import pipeline
from capmodel.captioning_solver import CaptioningSolver, TrainingError
from capmodel.classifiers.rnn import CaptioningRNN
from capmodel.app.cli import main
from capmodel.datasets import format as fmt
from synthetic import random_data
from capmodel.validation import Validator

TINY = {"cell_type": "rnn", "hidden_dim": 8, "wordvec_dim": 4, "num_epochs": 1, "batch_size": 50, "print_every": 1000}
TINY_FLAGS = ["--cell-type", "rnn", "--hidden-dim", "8", "--wordvec-dim", "4", "--num-epochs", "1",
              "--batch-size", "50", "--print-every", "1000"]


@pytest.fixture
def broken(shapes_dir, tmp_path):
    """A copy of the shapes data set, changed by the test through edit(file, key, fn)."""
    d = tmp_path / "data"
    shutil.copytree(shapes_dir, d)

    def edit(name, key, fn):
        with h5py.File(d / name, "r+") as f:
            value = fn(np.asarray(f[key]))
            del f[key]
            f.create_dataset(key, data=value)
        return d

    return edit


def _one_line(capsys, command):
    err = capsys.readouterr().err
    assert err.startswith(f"capmodel {command}: error: ") and err.count("\n") == 1, err
    return err


# --- 5 and 10: data problems found by `data check` and refused by `train` before any work


def _nan_row(f):
    f = f.copy()
    f[3, 7] = np.nan
    return f


def _no_start(c):
    c = c.copy()
    c[5, 0] = 3
    return c


def _all_null(c):
    c = c.copy()
    c[2:4, 1:] = 0
    return c


@pytest.mark.parametrize("name, key, fn, message", [
    (fmt.features_file("val", True), "features", _nan_row, "val2014_vgg16_fc7_pca.h5: 1 rows of 'features' hold NaN or Inf (first: row 3)"),
    (fmt.features_file("train", False), "features", lambda f: f[:, :0], "train2014_vgg16_fc7.h5: 'features' has no columns"),
    (fmt.features_file("val", True), "features", lambda f: f[:, :100], "the splits' features differ in width: train2014_vgg16_fc7_pca.h5 has 512, val2014_vgg16_fc7_pca.h5 has 100"),
    (fmt.CAPTIONS_FILE, "train_captions", _no_start, "train_captions: 1 captions do not start with <START> (first: row 5)"),
    (fmt.CAPTIONS_FILE, "val_captions", _all_null, "val_captions: 2 captions hold no word (first: row 2)"),
])
def test_data_check_and_train_refuse_bad_data(broken, tmp_path, capsys, name, key, fn, message):
    d = broken(name, key, fn)
    assert main(["data", "check", str(d)]) == 1
    assert message in capsys.readouterr().err
    if "fc7.h5" in message:  # training on the PCA features does not read the fc7 file
        return
    assert main(["train", "--data", str(d), "--out-dir", str(tmp_path / "m"), *TINY_FLAGS]) == 2
    err = capsys.readouterr().err
    assert message in err and "Iteration" not in capsys.readouterr().out
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("vocab, message", [
    ([1, 2], "must be a JSON object with idx_to_word and word_to_idx, got a list"),
    ("words", "got a str"),
    ({"idx_to_word": ["<NULL>"], "word_to_idx": {"<NULL>": "zero"}}, "word_to_idx['<NULL>'] must be an integer index"),
])
def test_data_check_names_a_bad_vocabulary(shapes_dir, tmp_path, capsys, vocab, message):
    d = tmp_path / "d"
    shutil.copytree(shapes_dir, d)
    (d / fmt.VOCAB_FILE).write_text(json.dumps(vocab))
    assert main(["data", "check", str(d)]) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_empty_val_split_is_refused_before_training(broken, tmp_path):
    d = broken(fmt.CAPTIONS_FILE, "val_captions", lambda c: c[:0])
    broken(fmt.CAPTIONS_FILE, "val_image_idxs", lambda c: c[:0])
    with pytest.raises(ValueError, match="validation needs validation captions, but the val split has none"):
        pipeline.train(d, tmp_path / "m", {**TINY, "val_metric": "bleu4"}, verbose=False)
    assert not (tmp_path / "m").exists()


def test_non_finite_validation_stops_training_naming_the_epoch():
    data = random_data()
    data["val_features"] = data["val_features"].copy()
    data["val_features"][0, 0] = np.nan
    model = CaptioningRNN(data["word_to_idx"], input_dim=16, wordvec_dim=4, hidden_dim=8, seed=0)
    s = CaptioningSolver(model, data, update_rule="adam", batch_size=10, num_epochs=2, verbose=False,
                         validate=Validator(data, val_size=100))
    with pytest.raises(TrainingError, match=r"epoch 1: validation gave a non-finite val_loss \(nan\)"):
        s.train()


# --- 7: divergence


def test_a_diverging_run_stops_and_leaves_no_model(shapes_dir, tmp_path):
    with pytest.raises(TrainingError, match=r"training diverged at iteration \d+: loss .* more than 10 times"):
        pipeline.train(shapes_dir, tmp_path / "m", {**TINY, "update_rule": "sgd", "learning_rate": 10.0,
                                                    "num_epochs": 3, "batch_size": 10}, verbose=False)
    assert not (tmp_path / "m").exists()


# --- 9: late failures now come first


def test_unwritable_out_dir_fails_before_training(shapes_dir, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    start = time.perf_counter()
    assert main(["train", "--data", str(shapes_dir), "--out-dir", str(tmp_path / "file" / "m"), *TINY_FLAGS]) == 2
    err = _one_line(capsys, "train")
    assert "cannot be created" in err and "is a file" in err and time.perf_counter() - start < 5


def test_val_metric_without_the_toolkit_fails_at_once(shapes_dir, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pycocoevalcap" else real(name, *a))
    with pytest.raises(ValueError, match=r"pip install 'capmodel\[metrics\]'"):
        pipeline.train(shapes_dir, tmp_path / "m", {**TINY, "val_metric": "cider"}, verbose=False)
    assert not (tmp_path / "m").exists()


# --- 8: caption text that would shift the PTB tokenizer's lines


def test_line_separators_inside_captions_do_not_shift_the_references():
    assert metrics.java_available(), "java is part of the test machine (METEOR, PTB tokenizer)"
    refs = {i: [f"a {c} square on the left", f"the {c} square"] for i, c in
            enumerate(["red", "blue", "green", "small", "big", "dark"])}
    weird = ["a red\rsquare on the left", "a blue\fsquare on the left", "a green\u2028square on the left",
             "a small\u2029square\x85on the left", "a big\vsquare on the left", "a dark square on the left"]
    cands = dict(enumerate(weird))
    with_java = metrics.evaluate_captions(refs, cands, use_java=True, metrics=("Bleu_4", "CIDEr"))
    without = metrics.evaluate_captions(refs, cands, use_java=False, metrics=("Bleu_4", "CIDEr"))
    assert with_java["Bleu_4"] > 0.99 and without["Bleu_4"] > 0.99
    assert with_java["CIDEr"] == pytest.approx(without["CIDEr"], rel=1e-6)


def test_one_line_folds_every_separator():
    assert metrics.one_line("a\rb\fc\u2028d\u2029e\x85f\x1cg\nh  i") == "a b c d e f g h i"


# --- 11 and 12: one line naming file, row, key or flag


def _samples(path, rows, header="image_idx,url,generated,references\n", encoding="utf-8"):
    path.write_bytes((header + "".join(rows)).encode(encoding) if isinstance(encoding, str) else encoding)
    return path


@pytest.mark.parametrize("content, message", [
    (b"image_idx,url,generated,references\n1,u,a \xff cat,a cat\n", "is not UTF-8 text"),
    ("image_idx,url,generated,references\nseven,u,a cat,a cat\n".encode(), "row 2: image_idx must be an integer, got 'seven'"),
    ("image_idx,url,generated,references\n1,u,a cat,a cat\n1,u,a dog,a dog\n".encode(), "row 3: image_idx 1 appears twice"),
    ("image_idx,url,generated\n1,u,a cat\n".encode(), "has no column 'references'"),
])
def test_evaluate_names_the_file_and_row(tmp_path, capsys, content, message):
    (tmp_path / "s.csv").write_bytes(content)
    assert main(["evaluate", "--samples", str(tmp_path / "s.csv"), "--out", str(tmp_path / "m.json"), "--no-java"]) == 2
    err = _one_line(capsys, "evaluate")
    assert message in err and str(tmp_path / "s.csv") in err and not (tmp_path / "m.json").exists()


def test_evaluate_reads_a_csv_with_a_byte_order_mark(tmp_path):
    (tmp_path / "s.csv").write_bytes("\ufeffimage_idx,url,generated,references\n1,u,a cat,a cat\n".encode())
    assert main(["evaluate", "--samples", str(tmp_path / "s.csv"), "--out", str(tmp_path / "m.json"), "--no-java"]) == 0


@pytest.mark.parametrize("edit, message", [
    (lambda m: m["model"].update(dtype="float3"), "the model description is invalid"),
    (lambda m: m["model"].pop("hidden_dim"), "the model description has no key 'hidden_dim'"),
    (lambda m: m.pop("model"), "does not describe a model"),
])
def test_a_broken_model_json_is_one_line(tiny_model, shapes_dir, tmp_path, capsys, edit, message):
    m = tmp_path / "m"
    shutil.copytree(tiny_model, m)
    meta = json.loads((m / "model.json").read_text())
    edit(meta)
    meta.pop("npz_sha256")
    from capmodel.safety.atomic import sha256_of

    meta["npz_sha256"] = sha256_of(m / "model.npz")
    (m / "model.json").write_text(json.dumps(meta))
    assert main(["sample", "--model", str(m), "--data", str(shapes_dir), "--out", str(tmp_path / "s.csv")]) == 2
    assert message in _one_line(capsys, "sample")


@pytest.mark.parametrize("argv, message", [
    (["sample", "--model", "{model}", "--data", "{data}", "--out", "{tmp}"], "must end in .csv"),
    (["gradcheck", "--out", "{tmp}/g.csv"], "is a directory; give a file name"),
    (["data", "shapes", "{tmp}/f", "--num-train", "2", "--num-val", "1"], "f exists and is not a directory"),
    (["train", "--data", "{data}", "--out-dir", "{tmp}/f", *TINY_FLAGS], "exists and is not a directory"),
    (["summarize", "--metrics", "{tmp}/f", "--out", "{tmp}/a.csv", "--markdown", "{tmp}/a.md"], "is not valid JSON"),
    (["summarize", "--metrics", "{tmp}/nomodel.json", "--out", "{tmp}/a.csv", "--markdown", "{tmp}/a.md"], "has no 'model' field"),
    (["train", "--data", "{data}", "--out-dir", "{tmp}/m", "--bogus"], "unrecognized arguments: --bogus"),
])
def test_output_and_input_problems_are_one_line(tiny_model, shapes_dir, tmp_path, capsys, argv, message):
    (tmp_path / "f").write_text("not json")
    (tmp_path / "g.csv").mkdir()
    (tmp_path / "nomodel.json").write_text('{"Bleu_4": 0.5}')
    argv = [a.format(model=tiny_model, data=shapes_dir, tmp=tmp_path) for a in argv]
    with pytest.raises(SystemExit) if "--bogus" in argv else _nothing():
        code = main(argv)
        assert code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "error:" in err, err


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _ctrl_c_deliverable():
    """A process started in the background inherits SIGINT ignored; a terminal's Ctrl-C is not."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_prints_one_line_keeps_checkpoints_and_exits_130(shapes_dir, tmp_path):
    ckpt = tmp_path / "ckpt"
    cmd = [sys.executable, "-m", "capmodel.app.cli", "train", "--data", str(shapes_dir), "--out-dir", str(tmp_path / "m"),
           "--checkpoint-dir", str(ckpt), "--cell-type", "lstm", "--hidden-dim", "64", "--batch-size", "10",
           "--num-epochs", "50", "--checkpoint-every", "5", "--print-every", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, preexec_fn=_ctrl_c_deliverable)
    for line in proc.stdout:  # wait until training is under way, past the first checkpoint
        if line.startswith("(Iteration 12 "):
            break
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert err.strip().count("\n") == 0 and "capmodel train: interrupted" in err and "Traceback" not in err
    assert any(ckpt.glob("ckpt-*.npz")) and not (tmp_path / "m").exists()


def test_an_empty_train_split_is_a_data_set_problem(broken, capsys):
    d = broken(fmt.CAPTIONS_FILE, "train_captions", lambda c: c[:0])
    broken(fmt.CAPTIONS_FILE, "train_image_idxs", lambda c: c[:0])
    assert main(["data", "check", str(d)]) == 1
    assert "the train split has no captions" in capsys.readouterr().err


def test_empty_references_are_refused(tmp_path, capsys):
    (tmp_path / "s.csv").write_text("image_idx,url,generated,references\n1,u,a cat,a cat |||  ||| a dog\n")
    assert main(["evaluate", "--samples", str(tmp_path / "s.csv"), "--out", str(tmp_path / "m.json"), "--no-java"]) == 2
    assert "row 2: empty reference caption" in _one_line(capsys, "evaluate")


def test_ctrl_c_during_data_generation_is_one_line(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "capmodel.app.cli", "data", "shapes", str(tmp_path / "d"),
                             "--num-train", "3000"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_ctrl_c_deliverable)
    lines = []
    for line in proc.stderr:  # wait until generation is under way
        lines.append(line)
        if line.startswith("train features: 1/"):
            break
    proc.send_signal(signal.SIGINT)
    err = "".join(lines) + proc.stderr.read()
    proc.wait(timeout=60)
    last = err.splitlines()[-1]  # progress lines come first
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert last == "capmodel data shapes: interrupted", err  # no checkpoints to speak of
    assert not (tmp_path / "d").exists()
