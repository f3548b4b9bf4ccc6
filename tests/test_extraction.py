"""Data sets from raw pictures at scale: Karpathy split files, streamed and resumable
feature extraction, shards merged into the same data set (capmodel.datasets.extraction,
`capmodel data features`, `capmodel data from-folder --features`)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from capmodel.app.cli import main
from capmodel.coco_utils import load_coco_data
from capmodel.datasets import extraction
from capmodel.datasets import format as fmt
from capmodel.encoders.base import Encoder
from synthetic import photo_folder

SRC = Path(__file__).resolve().parents[1] / "src"


def karpathy_file(path, captions, splits):
    """A Karpathy-format split file over photo_folder's pictures, in subfolder 'pics'."""
    images = []
    for n, (name, caps) in enumerate(captions.items()):
        images.append({"filepath": "pics", "filename": name, "imgid": n, "split": splits[n % len(splits)],
                       "sentences": [{"raw": c.capitalize() + ".", "tokens": c.split()} for c in caps]})
    path.write_text(json.dumps({"dataset": "fixture", "images": images}))
    return path


@pytest.fixture(scope="module")
def karpathy(tmp_path_factory):
    """photo_folder's 12 pictures under root/pics, and a Karpathy file with every split."""
    root = tmp_path_factory.mktemp("karpathy")
    caps = photo_folder(root / "images" / "pics", copies=2)
    caps["blue_square_1.png"] = ["A café in Straße", "a blue square"]  # in the test split  # raw words kept as people wrote them
    splits = ["train", "restval", "val", "test", "train", "restval"]
    karpathy_file(root / "dataset_fixture.json", caps, splits)
    return root, caps, splits


def run(*args):
    return main([str(a) for a in args])


def test_karpathy_file_builds_train_val_and_test_with_raw_references(karpathy, tmp_path, capsys):
    root, caps, splits = karpathy
    assert run("data", "from-folder", root / "images", root / "dataset_fixture.json", tmp_path / "data",
               "--no-progress") == 0
    stats = json.loads(capsys.readouterr().out)
    names = list(caps)
    want = {s: sorted(f"pics/{n}" for i, n in enumerate(names) if {"restval": "train"}.get(splits[i % 6], splits[i % 6]) == s)
            for s in fmt.ALL_SPLITS}
    assert {s: stats[f"{s}_images"] for s in fmt.ALL_SPLITS} == {s: len(v) for s, v in want.items()} == \
        {"train": 8, "val": 2, "test": 2}
    assert fmt.splits_of(tmp_path / "data") == ("train", "val", "test")
    assert fmt.problems(tmp_path / "data") == []
    data = load_coco_data(tmp_path / "data")
    for s in fmt.ALL_SPLITS:
        assert [u.split("/images/")[1] for u in data[f"{s}_urls"]] == want[s]
        assert data[f"{s}_features"].shape == (len(want[s]), 512)
    # val/test references: every caption of the image, its words as written (not <UNK>), not truncated
    assert "train_references" not in data
    for s in ("val", "test"):
        for i, name in enumerate(want[s]):
            assert data[f"{s}_references"][i] == [c.lower() for c in caps[name.split("/")[1]]]
    # the vocabulary comes from train (restval included) only
    train_words = {w for n in want["train"] for c in caps[n.split("/")[1]] for w in c.lower().split()}
    assert set(data["idx_to_word"][4:]) == train_words and "café" not in train_words


def test_sample_and_baseline_use_the_test_split(karpathy, tmp_path, capsys):
    root, caps, _ = karpathy
    assert run("data", "from-folder", root / "images", root / "dataset_fixture.json", tmp_path / "data",
               "--no-progress") == 0
    assert run("train", "--data", tmp_path / "data", "--out-dir", tmp_path / "m", "--num-epochs", "2",
               "--batch-size", "8", "--hidden-dim", "16", "--wordvec-dim", "8") == 0
    capsys.readouterr()
    assert run("sample", "--model", tmp_path / "m", "--data", tmp_path / "data", "--out", tmp_path / "t.csv",
               "--split", "test") == 0
    rows = (tmp_path / "t.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 and "café in straße" in (tmp_path / "t.csv").read_text()
    assert json.loads((tmp_path / "t.json").read_text())["decoding"]["split"] == "test"
    # a data set without a test split says so in one line
    photo_folder(tmp_path / "p2")
    lines = ["image,caption"] + [f"{n},{c}" for n, cs in caps.items() if "/" not in n for c in cs[:1]
                                 if (tmp_path / "p2" / n).exists()]
    (tmp_path / "c2.csv").write_text("\n".join(lines) + "\n")
    assert run("data", "from-folder", tmp_path / "p2", tmp_path / "c2.csv", tmp_path / "d2", "--no-progress") == 0
    capsys.readouterr()
    assert run("baseline", "--data", tmp_path / "d2", "--out", tmp_path / "b.csv", "--split", "test") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "has no test split" in err and not (tmp_path / "b.csv").exists()


def _dataset_bytes(d):
    return {p.name: p.read_bytes() for p in sorted(Path(d).iterdir()) if p.is_file() and p.name != ".capmodel"}


@pytest.mark.parametrize("shards", [2, 3])
def test_sharded_extraction_equals_the_unsharded_run_byte_for_byte(karpathy, tmp_path, capsys, monkeypatch, shards):
    root, _, _ = karpathy
    monkeypatch.setattr("capmodel.encoders.randconv.RandConvEncoder.batch_size", 4)  # 12 pictures, 3 batches
    images, caps = root / "images", root / "dataset_fixture.json"
    assert run("data", "from-folder", images, caps, tmp_path / "whole", "--no-progress") == 0
    files = [tmp_path / f"shard-{i}.h5" for i in range(1, shards + 1)]
    for i, f in enumerate(reversed(files)):  # any order of the jobs
        assert run("data", "features", images, caps, f, "--shard", f"{shards - i}/{shards}", "--no-progress") == 0
    rows = [json.loads(line)["rows"] for line in capsys.readouterr().out.splitlines()[1:]]
    assert sorted(r[1] - r[0] for r in rows) in ([4, 8], [4, 4, 4])  # whole batches per shard
    assert run("data", "from-folder", images, caps, tmp_path / "merged", "--features", *files, "--no-progress") == 0
    assert _dataset_bytes(tmp_path / "merged") == _dataset_bytes(tmp_path / "whole")
    # a missing shard, or a shard of other pictures, is refused in one line and makes nothing
    capsys.readouterr()
    assert run("data", "from-folder", images, caps, tmp_path / "bad", "--features", *files[1:], "--no-progress") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "rows 0..3 of 12 are in no file" in err
    other = tmp_path / "other.csv"
    other.write_text("image,caption\n" + "".join(f"pics/{n},a thing\n" for n in sorted(os.listdir(images / "pics"))[:4]))
    assert run("data", "from-folder", images, other, tmp_path / "bad", "--features", *files, "--no-progress") == 2
    assert "was made for other pictures" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_a_users_file_is_never_replaced_by_a_features_file(karpathy, tmp_path, capsys):
    root, _, _ = karpathy
    mine = tmp_path / "mine.h5"
    mine.write_text("my notes")
    assert run("data", "features", root / "images", root / "dataset_fixture.json", mine, "--no-progress") == 2
    assert "is not a features file capmodel wrote" in capsys.readouterr().err and mine.read_text() == "my notes"
    assert run("data", "features", root / "images", root / "dataset_fixture.json", tmp_path / "x.h5",
               "--shard", "3/2") == 2
    assert "--shard 3/2" in capsys.readouterr().err


@pytest.mark.slow
def test_extraction_killed_midway_resumes_and_equals_an_uninterrupted_one(tmp_path):
    """SIGKILL a `data features` run after some batches; the rerun continues from the work
    file (without redoing the finished batches) and the file equals one made in one go."""
    caps = photo_folder(tmp_path / "photos", copies=8)  # 48 pictures
    (tmp_path / "c.csv").write_text("image,caption\n" + "".join(f"{n},{c[0]}\n" for n, c in caps.items()))
    slow = tmp_path / "slow.py"  # the real CLI, with batches of 4 and a pause after each
    slow.write_text(
        "import sys, time\n"
        "from capmodel.encoders import randconv\n"
        "randconv.RandConvEncoder.batch_size = 4\n"
        "extract = randconv.RandConvEncoder.extract\n"
        "calls = 0\n"
        "def paused(self, x):\n"
        "    global calls\n"
        "    calls += 1\n"
        f"    open({str(tmp_path / 'calls')!r}, 'w').write(str(calls))\n"
        "    time.sleep(0.3)\n"
        "    return extract(self, x)\n"
        "randconv.RandConvEncoder.extract = paused\n"
        "from capmodel.app.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n")
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    args = [sys.executable, str(slow), "data", "features", str(tmp_path / "photos"), str(tmp_path / "c.csv")]
    out, partial = tmp_path / "f.h5", tmp_path / "f.h5.partial"
    p = subprocess.Popen(args + [str(out)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    calls = tmp_path / "calls"
    while time.time() < deadline and not (calls.exists() and calls.read_text() == "4"):
        time.sleep(0.02)  # the fourth batch is being computed: at least two are written
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert not out.exists()  # the file gets its name only when complete
    done = int(extraction._read_attrs(partial)["done"])
    assert 8 <= done < 48
    r = subprocess.run(args + [str(out)], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert f"{done} of 48 pictures already extracted" in r.stdout + r.stderr
    assert not partial.exists()
    r = subprocess.run(args + [str(tmp_path / "g.h5")], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    with h5py.File(out) as a, h5py.File(tmp_path / "g.h5") as b:
        assert np.array_equal(a["features"][:], b["features"][:]) and a["features"].shape == (48, 2328)


def test_features_are_read_one_block_at_a_time(karpathy, tmp_path):
    """Features.rows yields the rows asked for, in order, in blocks no larger than asked."""
    root, caps, _ = karpathy
    f = tmp_path / "f.h5"
    assert run("data", "features", root / "images", root / "dataset_fixture.json", f, "--no-progress") == 0
    names = sorted(f"pics/{n}" for n in caps)
    from capmodel.encoders import randconv

    paths = [root / "images" / n for n in names]
    source = extraction.Features([f], names, paths, randconv.RandConvEncoder().record_fields())
    with h5py.File(f) as h:
        whole = h["features"][:]
    idx = np.array([0, 3, 4, 9, 11])
    blocks = list(source.rows(idx, block=4))
    assert max(len(b) for b in blocks) <= 4 and np.array_equal(np.concatenate(blocks), whole[idx])


def test_unfinished_repeated_or_stale_features_files_are_refused(karpathy, tmp_path, capsys, monkeypatch):
    """A shard's work file (a killed job's .partial), a file given twice, and a file of
    pictures replaced since under the same names are refused in one line each."""
    root, caps, _ = karpathy
    monkeypatch.setattr("capmodel.encoders.randconv.RandConvEncoder.batch_size", 4)
    images = tmp_path / "images"
    import shutil

    shutil.copytree(root / "images", images)
    k = root / "dataset_fixture.json"
    f1, f2 = tmp_path / "s1.h5", tmp_path / "s2.h5"
    assert run("data", "features", images, k, f1, "--shard", "1/2", "--no-progress") == 0
    assert run("data", "features", images, k, f2, "--shard", "2/2", "--no-progress") == 0
    unfinished = tmp_path / "s2.h5.partial"
    shutil.copy(f2, unfinished)
    with h5py.File(unfinished, "r+") as f:
        f.attrs["done"] = 4  # as a job killed after its first batch leaves it
    capsys.readouterr()
    for files, message in (([f1, unfinished], "is unfinished (4 of 8 rows)"), ([f1, f2, f1], "is given twice"),
                           ([f1, tmp_path], "is a directory")):
        assert run("data", "from-folder", images, k, tmp_path / "d", "--features", *files, "--no-progress") == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
    # a picture replaced under the same name: the files no longer describe it
    first = images / "pics" / "blue_circle_0.png"
    first.write_bytes((images / "pics" / "red_square_1.png").read_bytes())
    assert run("data", "from-folder", images, k, tmp_path / "d", "--features", f1, f2, "--no-progress") == 2
    assert "was made for other pictures (names, sizes or modification times differ" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()
    # and a rerun of the extraction does the work again instead of keeping the old rows
    assert run("data", "features", images, k, f1, "--shard", "1/2", "--no-progress") == 0
    assert run("data", "features", images, k, f2, "--shard", "2/2", "--no-progress") == 0
    assert run("data", "from-folder", images, k, tmp_path / "d", "--features", f1, f2, "--no-progress") == 0
    assert run("data", "from-folder", images, k, tmp_path / "whole", "--no-progress") == 0
    for name in ("train2014_vgg16_fc7.h5", "val2014_vgg16_fc7.h5", "test2014_vgg16_fc7.h5"):
        assert (tmp_path / "d" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes()


def test_pictures_in_linked_folders_are_found_once(tmp_path, capsys):
    """COCO's train2014/ is often a symbolic link to shared storage: its pictures are listed
    under the link's name; a link back to a listed folder (a loop) is not followed again."""
    from capmodel.datasets import folder

    caps = photo_folder(tmp_path / "storage" / "train2014")
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "train2014").symlink_to(tmp_path / "storage" / "train2014", target_is_directory=True)
    (tmp_path / "storage" / "train2014" / "loop").symlink_to(tmp_path / "images", target_is_directory=True)
    found = folder.list_images(tmp_path / "images")
    assert sorted(found) == sorted(f"train2014/{n}" for n in caps)


def test_a_test_split_missing_a_file_is_reported_as_such(karpathy, tmp_path, capsys):
    root, _, _ = karpathy
    assert run("data", "from-folder", root / "images", root / "dataset_fixture.json", tmp_path / "data",
               "--no-progress") == 0
    (tmp_path / "data" / fmt.urls_file("test")).unlink()
    capsys.readouterr()
    assert run("data", "check", tmp_path / "data") == 1
    err = capsys.readouterr().err
    assert f"{fmt.urls_file('test')}: missing file" in err


class TinyEncoder(Encoder):
    """A 6-d encoder (a fixed projection of 4 x 4 thumbnails), so that a few dozen pictures
    are more than its width and the PCA is fitted from block sums, as for COCO."""

    name, feature_dim, batch_size = "randconv", 6, 4
    projection = np.random.default_rng(0).standard_normal((48, 6))

    def preprocess(self, rgb):
        return np.asarray(rgb.resize((4, 4)), dtype=np.float64).reshape(-1) / 255

    def _forward(self, batch):
        return batch @ self.projection

    def record_fields(self):
        return {"extractor": "tiny", "preprocess": "tiny", "image_size": 4}


def test_shards_equal_one_run_also_when_the_pca_is_fitted_from_block_sums(tmp_path, monkeypatch):
    """With more train pictures than feature columns the PCA sums blocks of rows; the blocks
    are cut on the whole list, not per file, so any sharding gives the same bytes."""
    from capmodel.datasets import folder

    monkeypatch.setattr("capmodel.encoders.registry.get_encoder", lambda *a, **k: TinyEncoder())
    monkeypatch.setattr(extraction, "BLOCK_ROWS", 5)  # blocks that straddle the shards' files
    caps = photo_folder(tmp_path / "photos", copies=4)  # 24 pictures, 19 of them train
    (tmp_path / "c.csv").write_text("image,caption\n" + "".join(f"{n},{c[0]}\n" for n, c in caps.items()))
    args = (tmp_path / "photos", tmp_path / "c.csv")
    width = TinyEncoder.feature_dim  # the widest PCA of its features
    stats = folder.make_dataset(*args, tmp_path / "whole", pca=width, progress=False)
    assert stats["train_images"] > TinyEncoder.feature_dim
    files = [tmp_path / f"s{i}.h5" for i in (1, 2, 3)]
    for i, f in enumerate(files, start=1):
        folder.extract_features(*args, f, shard=(i, 3), progress=False)
    folder.make_dataset(*args, tmp_path / "sharded", features_files=files, pca=width, progress=False)
    assert _dataset_bytes(tmp_path / "sharded") == _dataset_bytes(tmp_path / "whole")


def test_a_data_set_moved_with_its_linked_pictures_folder_still_finds_them(tmp_path):
    """proj/photos is a symbolic link to shared storage: the urls files go through the link, so
    the project copied elsewhere (the link with it) still reads its pictures."""
    import shutil

    from capmodel.datasets import folder

    caps = photo_folder(tmp_path / "storage" / "pics")
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "photos").symlink_to(tmp_path / "storage" / "pics", target_is_directory=True)
    (proj / "c.csv").write_text("image,caption\n" + "".join(f"{n},{c[0]}\n" for n, c in caps.items()))
    folder.make_dataset(proj / "photos", proj / "c.csv", proj / "data", progress=False)
    assert fmt.read_urls(proj / "data", "train")[0].startswith("../photos/")
    moved = tmp_path / "elsewhere" / "deeper" / "proj"
    shutil.copytree(proj, moved, symlinks=True)
    shutil.rmtree(proj)
    data = load_coco_data(moved / "data")
    paths = [Path(u.removeprefix("file://")) for s in ("train", "val") for u in data[f"{s}_urls"]]
    assert len(paths) == 12 and all(p.is_file() and str(p).startswith(str(moved / "photos")) for p in paths)
