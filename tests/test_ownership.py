"""The project deletes only what it created: checkpoint directories, data sets, archives
placed by hand, model names that would escape results/ (issue: never lose a user's data)."""

import io
import os
import stat
import zipfile

import pytest

from capmodel.safety import ownership
from capmodel.checkpoints import CheckpointDir
from capmodel.app.cli import main
from capmodel.datasets import fetch
from capmodel.datasets import format as fmt
from capmodel.app.workflow_config import expand_models

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
    assert ownership.remove_owned(d, "checkpoints", lambda f: f.name.startswith("ckpt-")) is False
    assert d.is_dir() and list(d.iterdir()) == []  # emptied of our files, but the directory is theirs


def test_remove_owned_never_touches_unmarked_or_other_kind(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (d / "ckpt-1.npz").write_bytes(b"x")
    assert ownership.remove_owned(d, "checkpoints", lambda f: True) is False and (d / "ckpt-1.npz").exists()
    ownership.mark(d, "dataset")
    assert ownership.remove_owned(d, "checkpoints", lambda f: True) is False and (d / "ckpt-1.npz").exists()


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


# --- found by a hostile probe of the first fix


def test_sample_never_overwrites_the_json_beside_its_csv(shapes_dir, tmp_path, capsys):
    m = tmp_path / "m"
    assert main(["train", "--data", str(shapes_dir), "--out-dir", str(m), *TINY]) == 0
    model_json = (m / "model.json").read_bytes()
    # model.csv's record would be model.json: refused before any work, the model intact
    assert main(["sample", "--model", str(m), "--data", str(shapes_dir), "--out", str(m / "model.csv")]) == 2
    assert "model.json is also an input of this command" in _one_error_line(capsys, "sample")
    assert (m / "model.json").read_bytes() == model_json and not (m / "model.csv").exists()
    (tmp_path / "notes.json").write_text('{"mine": 1}')
    assert main(["baseline", "--data", str(shapes_dir), "--out", str(tmp_path / "notes.csv")]) == 2
    assert "notes.json exists and is not a samples record capmodel wrote" in _one_error_line(capsys, "baseline")
    assert (tmp_path / "notes.json").read_text() == '{"mine": 1}' 
    assert main(["sample", "--model", str(m), "--data", str(shapes_dir), "--out", str(m / "model.npz")]) == 2
    assert "must end in .csv" in _one_error_line(capsys, "sample")
    # a second run replaces its own outputs
    for _ in range(2):
        assert main(["sample", "--model", str(m), "--data", str(shapes_dir), "--out", str(m / "s.csv")]) == 0


def test_evaluate_never_writes_over_its_input(tmp_path, capsys):
    (tmp_path / "s.csv").write_text("image_idx,url,generated,references\n1,u,a cat,a cat\n")
    assert main(["evaluate", "--samples", str(tmp_path / "s.csv"), "--out", str(tmp_path / "s.csv"), "--no-java"]) == 2
    assert "must end in .json" in _one_error_line(capsys, "evaluate")
    (tmp_path / "s.json").write_text('{"kind": "samples_record", "decoding": {}}')
    assert main(["evaluate", "--samples", str(tmp_path / "s.csv"), "--out", str(tmp_path / "s.json"), "--no-java"]) == 2
    assert "is also an input of this command" in _one_error_line(capsys, "evaluate")


def test_user_files_named_like_checkpoints_are_kept(shapes_dir, tmp_path):
    ckpt = tmp_path / "ck"
    args = ["train", "--data", str(shapes_dir), "--checkpoint-dir", str(ckpt), *TINY]
    assert main([*args, "--out-dir", str(tmp_path / "m1"), "--keep-checkpoints"]) == 0
    (ckpt / "ckpt-notes.json").write_text("{}")
    (ckpt / "ckpt-000000001.json").write_text('{"my": "notes"}')
    assert main([*args, "--out-dir", str(tmp_path / "m2")]) == 0
    assert sorted(p.name for p in ckpt.iterdir()) == [ownership.MARKER, "ckpt-000000001.json", "ckpt-notes.json"]


def test_a_symlinked_checkpoint_dir_is_cleaned_without_breaking_the_run(shapes_dir, tmp_path):
    real, link = tmp_path / "real", tmp_path / "link"
    assert main(["train", "--data", str(shapes_dir), "--out-dir", str(tmp_path / "m1"), "--checkpoint-dir",
                 str(real), "--keep-checkpoints", *TINY]) == 0
    link.symlink_to(real)
    assert main(["train", "--data", str(shapes_dir), "--out-dir", str(tmp_path / "m2"), "--checkpoint-dir",
                 str(link), *TINY]) == 0
    assert (tmp_path / "m2" / "model.npz").exists() and link.is_symlink() and real.is_dir()
    assert list(real.iterdir()) == []


@pytest.mark.parametrize("make, message", [
    (lambda d: (d / "o").symlink_to(d / "gone"), "symbolic link to a missing target"),
    (lambda d: (d / "o").symlink_to(d / "o"), "symbolic link to a missing target (or a link loop)"),
])
def test_broken_links_as_outputs_are_refused_before_training(shapes_dir, tmp_path, capsys, make, message):
    make(tmp_path)
    assert main(["train", "--data", str(shapes_dir), "--out-dir", str(tmp_path / "o"), *TINY]) == 2
    assert message in _one_error_line(capsys, "train")
    assert main(["data", "shapes", str(tmp_path / "o"), "--num-train", "5", "--num-val", "2"]) == 2
    assert "symbolic link" in _one_error_line(capsys, "data shapes")


def test_a_killed_generation_leaves_no_temporary_directory_behind(tmp_path):
    stale = tmp_path / ".d.tmp-abc123"
    stale.mkdir()
    ownership.mark(stale, "temporary")
    (stale / "coco2014_captions.h5").write_bytes(b"half")
    foreign = tmp_path / ".d.tmp-mine"  # looks alike but is not ours
    foreign.mkdir()
    assert main(["data", "shapes", str(tmp_path / "d"), "--num-train", "5", "--num-val", "2"]) == 0
    assert not stale.exists() and foreign.exists()


def test_an_empty_directory_added_to_a_dataset_blocks_its_replacement(tmp_path, capsys):
    d = tmp_path / "d"
    assert main(["data", "shapes", str(d), "--num-train", "5", "--num-val", "2"]) == 0
    capsys.readouterr()
    (d / "mywork").mkdir()
    assert main(["data", "shapes", str(d), "--num-train", "5", "--num-val", "2"]) == 2
    assert "first: mywork" in _one_error_line(capsys, "data shapes") and (d / "mywork").is_dir()


@pytest.mark.parametrize("name", [2024, True, "x\n"])
def test_odd_model_names(name):
    if name == "x\n":
        with pytest.raises(ValueError, match="must start with a letter or digit"):
            expand_models({"models": {name: {"cell_type": "rnn"}}})
    else:
        assert list(expand_models({"models": {name: {"cell_type": "rnn"}}})) == [str(name)]
