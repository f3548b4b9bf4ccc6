"""The project deletes only what it created: checkpoint directories, data sets, archives
placed by hand, model names that would escape results/ (issue: never lose a user's data)."""

import io
import os
import stat
import zipfile

import pytest

from capmodel import ownership
from capmodel.checkpoints import CheckpointDir
from capmodel.cli import main
from capmodel.datasets import fetch
from capmodel.datasets import format as fmt
from capmodel.workflow_config import expand_models

TINY = ["--cell-type", "rnn", "--hidden-dim", "8", "--wordvec-dim", "4", "--num-epochs", "1",
        "--batch-size", "50", "--print-every", "1000"]


def _one_error_line(capsys, command):
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"capmodel {command}: error: "), err
    return err


def test_checkpoint_dir_with_user_files_is_refused_before_training(shapes_dir, tmp_path, capsys, monkeypatch):
    user = tmp_path / "work"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    monkeypatch.chdir(user)
    # --checkpoint-dir . used to empty the working directory after a successful run
    assert main(["train", "--data", str(shapes_dir), "--out-dir", "model", "--checkpoint-dir", ".", *TINY]) == 2
    err = _one_error_line(capsys, "train")
    assert "not empty and was not created by capmodel" in err
    assert sorted(p.name for p in user.iterdir()) == ["notes.txt"]  # nothing trained, nothing written


def test_checkpoint_dir_made_by_capmodel_is_removed_file_by_file(shapes_dir, tmp_path):
    ckpt = tmp_path / "ckpt"
    assert main(["train", "--data", str(shapes_dir), "--out-dir", str(tmp_path / "m"), "--checkpoint-dir",
                 str(ckpt), *TINY]) == 0
    assert not ckpt.exists() and (tmp_path / "m" / "model.npz").exists()


def test_empty_checkpoint_dir_given_by_user_is_kept(shapes_dir, tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    assert main(["train", "--data", str(shapes_dir), "--out-dir", str(tmp_path / "m"), "--checkpoint-dir",
                 str(ckpt), "--keep-checkpoints", *TINY]) == 0
    assert any(ckpt.glob("ckpt-*.npz")) and ownership.is_owned(ckpt, "checkpoints")
    (ckpt / "added-later.txt").write_text("a user's file")
    assert not fmt.problems(shapes_dir)
    assert CheckpointDir(ckpt).remove() is False  # a user's file is left, and so the directory
    assert sorted(p.name for p in ckpt.iterdir()) == [ownership.MARKER, "added-later.txt"]


def test_remove_owned_keeps_a_directory_the_user_made(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    ownership.claim(d, "checkpoints", "checkpoint directory")
    (d / "ckpt-1.npz").write_bytes(b"x")
    assert ownership.remove_owned(d, "checkpoints", ("ckpt-*",)) is False
    assert d.is_dir() and list(d.iterdir()) == []  # emptied of our files, but the directory is theirs


def test_remove_owned_never_touches_unmarked_or_other_kind(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (d / "ckpt-1.npz").write_bytes(b"x")
    assert ownership.remove_owned(d, "checkpoints", ("ckpt-*",)) is False and (d / "ckpt-1.npz").exists()
    ownership.mark(d, "dataset")
    assert ownership.remove_owned(d, "checkpoints", ("ckpt-*",)) is False and (d / "ckpt-1.npz").exists()


@pytest.mark.parametrize("name", ["..", ".", ".hidden", "a/b", "", "-x"])
def test_model_names_must_be_safe_path_components(name):
    with pytest.raises(ValueError, match="must start with a letter or digit"):
        expand_models({"models": {name: {"cell_type": "rnn"}}})


def test_data_shapes_refuses_a_directory_that_is_not_a_dataset(tmp_path, capsys):
    d = tmp_path / "mine"
    d.mkdir()
    (d / "thesis.tex").write_text("years of work")
    assert main(["data", "shapes", str(d), "--num-train", "5", "--num-val", "2"]) == 2
    assert "not created by capmodel" in _one_error_line(capsys, "data shapes")
    assert [p.name for p in d.iterdir()] == ["thesis.tex"]


def test_data_shapes_replaces_its_own_dataset_and_fills_an_empty_dir(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    assert main(["data", "shapes", str(d), "--num-train", "5", "--num-val", "2", "--seed", "1"]) == 0
    assert ownership.is_owned(d, "dataset") and not fmt.problems(d)
    first = (d / fmt.CAPTIONS_FILE).read_bytes()
    assert main(["data", "shapes", str(d), "--num-train", "6", "--num-val", "2", "--seed", "2"]) == 0
    assert (d / fmt.CAPTIONS_FILE).read_bytes() != first and not fmt.problems(d)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary leftovers


def test_outputs_are_readable_by_group_and_others(tmp_path, shapes_dir):
    old = os.umask(0o022)
    try:
        assert main(["data", "shapes", str(tmp_path / "d"), "--num-train", "5", "--num-val", "2"]) == 0
        assert main(["train", "--data", str(shapes_dir), "--out-dir", str(tmp_path / "m"), *TINY]) == 0
    finally:
        os.umask(old)
    for p in [tmp_path / "d", tmp_path / "m" / "model.npz", tmp_path / "m" / "model.json",
              tmp_path / "m" / "history.csv"]:
        mode = stat.S_IMODE(p.stat().st_mode)
        assert mode == (0o755 if p.is_dir() else 0o644), (p, oct(mode))


def _zip(entries):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data, link in entries:
            info = zipfile.ZipInfo(name)
            if link:
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
            z.writestr(info, data)
    return buf.getvalue()


def test_fetch_keeps_a_bad_zip_placed_by_hand(tmp_path, capsys):
    placed = tmp_path / "coco.zip"
    placed.write_bytes(b"PK\x03\x04 half a download")
    assert main(["data", "fetch", str(tmp_path / "coco"), "--url", "http://127.0.0.1:9/x.zip", "--no-progress"]) == 2
    err = _one_error_line(capsys, "data fetch")
    assert "placed there by hand and is kept" in err
    assert placed.read_bytes() == b"PK\x03\x04 half a download"


def test_fetch_refuses_symlink_entries_with_one_line(tmp_path, capsys):
    (tmp_path / "coco.zip").write_bytes(_zip([("d/link", "/etc", True), ("d/link/passwd", "x", False)]))
    assert main(["data", "fetch", str(tmp_path / "coco"), "--url", "http://127.0.0.1:9/x.zip", "--no-progress"]) == 2
    assert "symbolic links are not allowed" in _one_error_line(capsys, "data fetch")
    assert not (tmp_path / "coco").exists()


def test_fetch_refuses_to_replace_a_directory_that_is_not_ours(tmp_path, shapes_dir):
    d = tmp_path / "coco"
    d.mkdir()
    (d / "keep.txt").write_text("x")
    with pytest.raises(ownership.OwnershipError, match="not created by capmodel"):
        fetch.fetch(d, url="http://127.0.0.1:9/x.zip", progress=False)
    assert (d / "keep.txt").exists()
