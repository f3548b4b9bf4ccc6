"""Tests of capmodel.safety.staging (a set of files, or a whole directory, replaced all at
once) and of the single-file helpers of capmodel.safety.atomic it shares."""

import os

import pytest

from capmodel.safety import ownership
from capmodel.safety.atomic import install, remove_file
from capmodel.safety.staging import (check_replaceable_dir, files_together, replace_dir, scratch_dir, staged_dir,
                                     write_texts)


def _names(d):
    return sorted(p.name for p in d.iterdir())


def test_files_written_together_are_all_written_or_none(tmp_path):
    write_texts({tmp_path / "a.csv": "a\n", tmp_path / "b.html": "b\n"})
    assert (tmp_path / "a.csv").read_text() == "a\n" and (tmp_path / "b.html").read_text() == "b\n"
    (tmp_path / "file").write_text("")
    with pytest.raises(OSError):
        write_texts({tmp_path / "a.csv": "new\n", tmp_path / "file" / "b.html": "b\n"})
    assert (tmp_path / "a.csv").read_text() == "a\n"  # the old file, untouched
    assert _names(tmp_path) == ["a.csv", "b.html", "file"]  # no staging directory left


def test_a_failure_while_writing_leaves_every_earlier_file(tmp_path):
    out = tmp_path / "m"
    write_texts({out / "x.csv": "1\n", out / "model.json": "{}\n"})
    with pytest.raises(RuntimeError, match="disk full"):
        with files_together([out / "x.csv", out / "model.json"]) as staged:
            staged[out / "x.csv"].write_text("2\n")
            assert (out / "x.csv").read_text() == "1\n"  # nothing moves before the block ends
            raise RuntimeError("disk full")
    assert _names(out) == ["model.json", "x.csv"] and (out / "x.csv").read_text() == "1\n"


def test_the_set_becomes_what_this_run_wrote(tmp_path):
    """A path of the set that the block did not write goes: an earlier run's file of it."""
    out = tmp_path / "m"
    write_texts({out / "pca.h5": "old\n", out / "model.json": "old\n"})
    (out / "notes.txt").write_text("mine")  # not in the set: kept
    with files_together([out / "pca.h5", out / "model.json"]) as staged:
        staged[out / "model.json"].write_text("new\n")
    assert _names(out) == ["model.json", "notes.txt"] and (out / "model.json").read_text() == "new\n"


def test_a_directory_made_for_the_set_goes_when_nothing_was_written(tmp_path):
    with pytest.raises(RuntimeError):
        with files_together([tmp_path / "a" / "b" / "x.csv"]):
            assert (tmp_path / "a" / "b").is_dir()
            raise RuntimeError
    assert _names(tmp_path) == []


def test_staging_left_by_a_killed_run_of_the_same_write_goes(tmp_path):
    stale = tmp_path / ".model.json.staging-abc.tmp"
    stale.mkdir()
    ownership.mark(stale, "temporary")
    (stale / "model.npz").write_bytes(b"half")
    lookalike = tmp_path / ".model.json.staging-mine.tmp"  # not marked: not capmodel's
    lookalike.mkdir()
    other = tmp_path / ".gallery.html.staging-abc.tmp"  # another write's: maybe running now
    other.mkdir()
    ownership.mark(other, "temporary")
    write_texts({tmp_path / "model.json": "{}\n"})
    assert _names(tmp_path) == [".gallery.html.staging-abc.tmp", ".model.json.staging-mine.tmp", "model.json"]


def test_install_and_remove_file(tmp_path):
    (tmp_path / "w.partial").write_text("rows")
    install(tmp_path / "w.partial", tmp_path / "w.h5")
    assert _names(tmp_path) == ["w.h5"] and oct(os.stat(tmp_path / "w.h5").st_mode & 0o777) == oct(
        0o666 & ~_umask())
    (tmp_path / "link").symlink_to(tmp_path / "w.h5")
    (tmp_path / "d").mkdir()
    assert not remove_file(tmp_path / "w.h5", lambda p: False)  # not proven ours: kept
    assert not remove_file(tmp_path / "missing", lambda p: True)
    assert not remove_file(tmp_path / "d", lambda p: True)  # a directory: never
    assert remove_file(tmp_path / "link", lambda p: p.read_text() == "rows")  # the link only
    assert _names(tmp_path) == ["d", "w.h5"]
    assert remove_file(tmp_path / "w.h5", lambda p: p.read_text() == "rows")
    assert _names(tmp_path) == ["d"]


def _umask():
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _dataset(d, files=("a.h5",)):
    d.mkdir()
    for name in files:
        (d / name).write_text(name)
    ownership.mark(d, "dataset", manifest=True)
    return d


def test_replace_dir_replaces_only_its_own_unchanged_directory(tmp_path):
    dst = _dataset(tmp_path / "data")
    replace_dir(_dataset(tmp_path / "new", ("b.h5",)), dst, "dataset", "dataset directory")
    assert _names(dst) == [ownership.MARKER, "b.h5"] and _names(tmp_path) == ["data"]
    (dst / "mine.txt").write_text("a user's file")
    added = r"dataset directory .*/data holds 1 file\(s\) capmodel did not write there \(first: mine.txt\)"
    with pytest.raises(ownership.OwnershipError, match=added):
        replace_dir(_dataset(tmp_path / "new2"), dst, "dataset", "dataset directory")
    (dst / "mine.txt").unlink()
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "x").write_text("")
    with pytest.raises(ownership.OwnershipError, match="was not created by capmodel"):
        check_replaceable_dir(tmp_path / "user", "dataset", "dataset directory")
    with pytest.raises(ownership.OwnershipError, match="made by capmodel as a dataset directory, not a checkpoints"):
        check_replaceable_dir(dst, "checkpoints", "checkpoint directory")


def test_staged_dir_is_all_or_nothing(tmp_path):
    dst = tmp_path / "data"
    with staged_dir(dst, "dataset", "dataset directory") as tmp:
        (tmp / "a.h5").write_text("1")
        assert not dst.exists()
    assert _names(dst) == [ownership.MARKER, "a.h5"] and ownership.marker_of(dst)["files"] == ["a.h5"]
    with pytest.raises(RuntimeError):
        with staged_dir(dst, "dataset", "dataset directory") as tmp:
            (tmp / "b.h5").write_text("2")
            raise RuntimeError
    assert _names(dst) == [ownership.MARKER, "a.h5"] and _names(tmp_path) == ["data"]


def test_scratch_dir_goes_with_what_it_holds_and_clears_a_killed_runs(tmp_path):
    stale = tmp_path / ".d.extract-old"
    stale.mkdir()
    ownership.mark(stale, "temporary")
    with scratch_dir(tmp_path, ".d.extract-") as tmp:
        (tmp / "sub").mkdir()
        (tmp / "sub" / "f").write_text("x")
        assert ownership.is_owned(tmp, "temporary") and not stale.exists()
    assert _names(tmp_path) == []
