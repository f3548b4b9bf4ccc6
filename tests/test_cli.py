"""Tests of the capmodel command line: each stage by hand, and one clear error per bad input."""

import csv
import json
import subprocess
import sys

import pytest

from capmodel.app.cli import build_parser, main
from capmodel.app.samples import REF_SEP, sample_image_urls


def run(*args):
    return subprocess.run([sys.executable, "-m", "capmodel.app.cli", *map(str, args)], capture_output=True, text=True)


def test_every_flag_has_help():
    parser = build_parser()
    stack = [parser]
    while stack:
        p = stack.pop()
        for action in p._actions:
            if action.choices and isinstance(action.choices, dict):
                stack.extend(action.choices.values())
            elif action.dest not in ("help", "version", "command", "data_command"):
                assert action.help, f"{p.prog} {action.dest}"


def test_stages_by_hand(shapes_dir, tmp_path):
    m = tmp_path / "m"
    assert main(["train", "--data", str(shapes_dir), "--out-dir", str(m), "--cell-type", "gru", "--hidden-dim", "32",
                 "--num-epochs", "2", "--batch-size", "25", "--val-metric", "bleu4", "--print-every", "1000"]) == 0
    info = json.loads((m / "model.json").read_text())
    assert info["model"]["cell_type"] == "gru" and info["iterations"] == 24
    with open(m / "history.csv") as f:
        hist = list(csv.DictReader(f))
    assert len(hist) == 24 and float(hist[0]["loss"]) > float(hist[-1]["loss"])
    with open(m / "val.csv") as f:
        val = list(csv.DictReader(f))
    assert [r["epoch"] for r in val] == ["1", "2"] and val[0]["metric"] == "bleu4"
    assert main(["sample", "--model", str(m / "model"), "--data", str(shapes_dir), "--out", str(m / "s.csv"),
                 "--method", "beam", "--beam-size", "2"]) == 0
    with open(m / "s.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 12 and len(rows[0]["references"].split(REF_SEP)) == 5
    # the image as the data set stores it (relative), read through the record's data_dir
    assert rows[0]["url"] == "images/val/000000.png"
    assert sample_image_urls(m / "s.json", [rows[0]["url"]]) == [(shapes_dir / "images/val/000000.png").as_uri()]
    record = json.loads((m / "s.json").read_text())  # what sample did, beside its CSV
    assert record["decoding"] == {"split": "val", "method": "beam", "beam_size": 2, "length_norm": 0.0,
                                  "max_length": 16, "num_images": None} and record["label"] == "beam2"
    assert main(["evaluate", "--samples", str(m / "s.csv"), "--out", str(m / "metrics.json"), "--no-java"]) == 0
    met = json.loads((m / "metrics.json").read_text())
    assert 0 <= met["Bleu_4"] <= 1 and met["settings"]["beam_size"] == 2 and met["model"] == "m"
    assert met["decoding"] == "beam2"
    assert main(["summarize", "--metrics", str(m / "metrics.json"), "--models", str(m / "model.json"),
                 "--val", str(m / "val.csv"), "--out", str(tmp_path / "s.csv"), "--markdown",
                 str(tmp_path / "s.md")]) == 0
    table = (tmp_path / "s.md").read_text()
    best = [r for r in val if r["best"] == "1"][-1]
    assert f"| m | gru | none | xe | 32 | {info['num_params']} | 24 |" in table and f"| {float(best['val_loss']):.4f} |" in table
    assert "| beam2 |" in table


@pytest.mark.parametrize("args, message", [
    (["data", "check", "{tmp}/nothing"], "dataset directory does not exist"),
    (["train", "--data", "{tmp}/nothing", "--out-dir", "{tmp}/o"], "capmodel train: error: invalid dataset"),
    (["train", "--data", "{shapes}", "--out-dir", "{tmp}/o", "--dropout", "1.5"], "--dropout: must be finite number >= 0 and < 1"),
    (["train", "--data", "{shapes}", "--out-dir", "{tmp}/o", "--hidden-dim", "0"], "--hidden-dim: must be integer >= 1"),
    (["sample", "--model", "{tmp}/none", "--data", "{shapes}", "--out", "{tmp}/s.csv"], "none.npz does not exist"),
    (["evaluate", "--samples", "{tmp}/empty.csv", "--out", "{tmp}/m.json"], "has no captions to evaluate"),
    (["train", "--data", "{shapes}", "--out-dir", "{tmp}/o", "--settings", "{tmp}/empty.csv"], "is not valid JSON"),
    (["data", "shapes", "{tmp}/d", "--num-train", "0"], "--num-train: must be integer >= 1"),
    (["data", "check", "{tmp}/empty.csv"], "is a file, not a dataset directory"),
    (["evaluate", "--samples", "{tmp}/none.csv", "--out", "{tmp}/m.json"], "samples file"),
    (["settings", "{{hidden_dim: 8}}", "--out", "{tmp}/m.json"], "settings '{hidden_dim: 8}' is not valid JSON"),
    (["settings", "[8]", "--out", "{tmp}/m.json"], "must be a JSON object of setting -> value"),
    (["settings", "{{}}", "--out", "{tmp}/m.txt"], "must end in .json"),
    (["settings", "{{}}", "--out", "{tmp}/mine.json"], "mine.json exists; capmodel writes this file only where"),
    (["source-revision", "{tmp}", "--out", "{tmp}/mine.json"], "mine.json exists; capmodel writes this file only"),
])
def test_bad_input_one_clear_error(shapes_dir, tmp_path, args, message):
    (tmp_path / "empty.csv").write_text("image_idx,url,generated,references\n")
    (tmp_path / "mine.json").write_text('{"mine": 1}\n')
    args = [a.format(tmp=tmp_path, shapes=shapes_dir) for a in args]
    r = run(*args)
    assert r.returncode == (1 if args[:2] == ["data", "check"] else 2)  # 1: the check ran and found problems
    assert message in r.stderr, r.stderr
    assert r.stderr.count("\n") == 1 or "invalid dataset" in r.stderr, r.stderr
    assert not (tmp_path / "o").exists() and not (tmp_path / "m.json").exists() and not (tmp_path / "s.csv").exists()
    assert (tmp_path / "mine.json").read_text() == '{"mine": 1}\n'


def test_gradcheck_writes_table(gradcheck_table):
    assert set(gradcheck_table[0]) == {"layer", "cell", "param", "measure", "error", "tolerance", "ok"}
    assert all(r["ok"] == "True" for r in gradcheck_table)


def test_sampling_with_another_vocabulary_is_refused(shapes_dir, tmp_path):
    from capmodel.datasets import shapes

    other = tmp_path / "other"
    shapes.generate(other, num_train=20, num_val=4, seed=9, min_count=1)
    assert main(["train", "--data", str(shapes_dir), "--out-dir", str(tmp_path / "m"), "--max-iterations", "1",
                 "--hidden-dim", "8"]) == 0
    r = run("sample", "--model", tmp_path / "m" / "model", "--data", other, "--out", tmp_path / "s.csv")
    assert r.returncode == 2 and "vocabulary of" in r.stderr and not (tmp_path / "s.csv").exists()


def _summarize_inputs(d):
    d.mkdir()
    (d / "metrics.json").write_text(json.dumps({"kind": "metrics", "model": "m", "Bleu_4": 0.25}))
    (d / "val.csv").write_text("epoch,iteration,val_loss,metric,metric_value,best\n1,5,2.5,,,1\n")
    (d / "notes.md").write_text("# my notes\n")
    (d / "mine.csv").write_text("name,remark\nx,mine\n")
    return ["summarize", "--metrics", d / "metrics.json", "--val", d / "val.csv"]


@pytest.mark.parametrize("out, markdown, message", [
    ("val.csv", "s.md", "is also an input of this command"),
    ("s.csv", "metrics.json", "must end in .md"),
    ("mine.csv", "s.md", "mine.csv exists and is not a file capmodel wrote there"),
    ("s.csv", "notes.md", "notes.md exists and is not a file capmodel wrote there"),
])
def test_summarize_checks_both_outputs_first_and_replaces_only_its_own(tmp_path, out, markdown, message):
    d = tmp_path / "d"
    args = _summarize_inputs(d)
    before = {p: p.read_bytes() for p in d.iterdir()}
    r = run(*args, "--out", d / out, "--markdown", d / markdown)
    assert r.returncode == 2 and message in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert {p: p.read_bytes() for p in d.iterdir()} == before
    r = run(*args, "--out", d / "s.csv", "--markdown", d / "s.md")
    assert r.returncode == 0, r.stderr
    assert run(*args, "--out", d / "s.csv", "--markdown", d / "s.md").returncode == 0  # its own: replaced
    assert "| m |" in (d / "s.md").read_text()


@pytest.mark.parametrize("name, message", [("g.npz", "must end in .csv"),
                                           ("mine.csv", "exists and is not a file capmodel wrote there")])
def test_gradcheck_checks_its_output_before_the_checks_run(tmp_path, monkeypatch, capsys, name, message):
    from capmodel.app import gradcheck_suite

    def run_suite(**kwargs):
        raise AssertionError("the gradient checks ran before the output was checked")

    monkeypatch.setattr(gradcheck_suite, "run", run_suite)
    (tmp_path / "mine.csv").write_text("name,remark\n")
    assert main(["gradcheck", "--out", str(tmp_path / name)]) == 2
    assert message in capsys.readouterr().err
    assert (tmp_path / "mine.csv").read_text() == "name,remark\n"
