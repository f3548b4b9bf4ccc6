"""Grids of region features for attention models, across modules: the encoders' regions
(capmodel.encoders.base.grid_pool), the data set format's optional grid files, their streamed,
resumable and sharded extraction with the grid PCA (capmodel.datasets.extraction, folder),
the shapes data set's grid, and a model directory's copy of the grid PCA, which computes the
regions of new pictures (capmodel.app.captioner)."""

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
from synthetic import photo_folder, photo_folder_with_csv

from capmodel.app import captioner, pipeline
from capmodel.app.cli import main
from capmodel.coco_utils import load_coco_data
from capmodel.datasets import extraction, shapes
from capmodel.datasets import features as feat
from capmodel.datasets import format as fmt
from capmodel.encoders import randconv
from capmodel.encoders.base import Encoder, EncoderError, grid_pool

SRC = Path(__file__).resolve().parents[1] / "src"
RECORD_KEYS_WITHOUT_GRID = {"created_by", "extractor", "feature_dim", "image_size", "pca_components", "pca_dim",
                            "pca_file", "pca_sha256", "preprocess"}


def run(*args):
    return main([str(a) for a in args])


def dataset_bytes(d):
    return {p.name: p.read_bytes() for p in sorted(Path(d).iterdir()) if p.is_file() and p.name != ".capmodel-owned"}


# ------------------------------------------------------------------ encoders


@pytest.mark.parametrize("H, W, G", [(16, 16, 4), (16, 16, 3), (16, 16, 16), (13, 11, 5), (7, 7, 7), (7, 7, 2),
                                     (7, 7, 1)])
def test_grid_pool_equals_torch_adaptive_avg_pool2d(H, W, G):
    import torch

    maps = np.random.default_rng(H * W + G).standard_normal((3, H, W, 6)).astype(np.float32)
    want = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(maps).permute(0, 3, 1, 2), G)  # (3, 6, G, G)
    want = want.permute(0, 2, 3, 1).reshape(3, G * G, 6).numpy()  # row-major regions, channels last
    got = grid_pool(maps, G)
    assert got.shape == (3, G * G, 6) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_randconv_regions_pool_its_second_layer_and_leave_the_features_unchanged():
    images = np.random.default_rng(0).integers(0, 256, (5, 64, 64, 3), dtype=np.uint8)
    features = randconv.extract(images)
    same, regions = randconv.extract(images, grid=4)
    assert same.tobytes() == features.tobytes()
    assert regions.shape == (5, 16, randconv.GRID_DIM) and regions.dtype == np.float32
    # at 64 pixels the 4 x 4 regions are the feature's own 4x4 grid of the second layer
    np.testing.assert_allclose(regions.reshape(5, -1), features[:, : 16 * randconv.GRID_DIM], rtol=1e-6, atol=1e-7)
    whole = randconv.extract(images, grid=16)[1]  # the map itself: each region one position
    np.testing.assert_allclose(grid_pool(whole.reshape(5, 16, 16, -1), 4), regions, rtol=1e-5, atol=1e-6)

    encoder = randconv.RandConvEncoder()
    assert (encoder.grid_dim, encoder.native_grid, randconv.RandConvEncoder(40).native_grid) == (128, 16, 10)
    from PIL import Image

    pictures = [Image.fromarray(im) for im in images]
    f, r = encoder.encode(pictures, grid=4)
    assert f.tobytes() == encoder.encode(pictures).tobytes() == features.tobytes()
    assert r.tobytes() == regions.tobytes()
    for bad in (17, 0):
        with pytest.raises(EncoderError) as e:
            encoder.encode(pictures, grid=bad)
        assert "\n" not in str(e.value) and f"grid {bad}" in str(e.value)

    class Global(Encoder):  # an encoder of global features only
        name, feature_dim = "global", 3

    with pytest.raises(EncoderError, match="grid 2: encoder global has no grid layer, so it gives no regions"):
        Global().extract(np.zeros((1, 3)), grid=2)


# ------------------------------------------------------------ the data set format


def test_the_shapes_data_set_has_a_grid_and_its_other_files_do_not_change(shapes_dir, tmp_path):
    data = load_coco_data(shapes_dir)
    images = {s: shapes.generate_split(n, 3, s)[1] for s, n in (("train", 60), ("val", 12))}
    record = feat.read_record(shapes_dir)
    assert (record["grid"], record["grid_dim"], record["grid_pca_file"]) == (4, 128, feat.GRID_PCA_FILE)
    comps = record["grid_components"]  # no PCA: every channel scaled, none mixed
    assert comps.shape == (128, 128) and np.array_equal(comps, np.diag(np.diag(comps)))
    for s in ("train", "val"):
        assert data[f"{s}_regions"].dtype == np.float16
        raw = randconv.extract(images[s], grid=shapes.DEFAULT_GRID)[1].astype(np.float16)  # 4 x 4 x 128
        want = ((raw.astype(np.float64) - record["grid_mean"]) @ comps).astype(np.float32).astype(np.float16)
        assert np.array_equal(data[f"{s}_regions"], want)
    # standardised: each channel has mean 0 and variance 1 over the train regions (0 if it never varies)
    train = data["train_regions"].astype(np.float64).reshape(-1, 128)
    assert np.allclose(train.mean(axis=0), 0, atol=2e-3)
    std = train.std(axis=0, ddof=1)
    assert np.all(np.isclose(std, 1, atol=2e-3) | (std == 0)) and np.count_nonzero(std) > 100
    with h5py.File(shapes_dir / fmt.grid_file("val")) as f:
        assert f["features"].attrs["grid"] == 4
    # switched off, no grid; every other data file is the same bytes either way
    assert run("data", "shapes", tmp_path / "none", "--num-train", 60, "--num-val", 12, "--seed", 3,
               "--grid", "none") == 0
    assert not fmt.has_grid(tmp_path / "none") and "train_regions" not in load_coco_data(tmp_path / "none")
    without, with_grid = dataset_bytes(tmp_path / "none"), dataset_bytes(shapes_dir)
    assert set(with_grid) - set(without) == {fmt.grid_file("train"), fmt.grid_file("val"), feat.GRID_PCA_FILE}
    differ = [n for n in without if without[n] != with_grid[n]]
    assert differ == [feat.RECORD_FILE]  # which gains the grid's keys
    assert set(json.loads(without[feat.RECORD_FILE])) == RECORD_KEYS_WITHOUT_GRID
    # another grid, projected: 2 x 2 regions of 8 components
    assert run("data", "shapes", tmp_path / "pca", "--num-train", 60, "--num-val", 12, "--seed", 3,
               "--grid", 2, "--grid-pca", 8) == 0
    assert load_coco_data(tmp_path / "pca")["val_regions"].shape == (12, 4, 8)
    assert feat.read_record(tmp_path / "pca")["grid_components"].shape == (128, 8)


def test_a_grid_larger_than_the_map_is_refused_before_any_work(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:  # argparse's one line
        run("data", "shapes", tmp_path / "d", "--grid", 17)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--grid" in err and "16" in err and not (tmp_path / "d").exists()
    caps = photo_folder(tmp_path / "photos")
    (tmp_path / "c.csv").write_text("image,caption\n" + "".join(f"{n},{c[0]}\n" for n, c in caps.items()))
    assert run("data", "from-folder", tmp_path / "photos", tmp_path / "c.csv", tmp_path / "d", "--grid", 17,
               "--no-progress") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "grid 17" in err and "at most 16" in err
    assert not (tmp_path / "d").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["c.csv", "photos"]


def test_a_data_set_without_a_grid_loads_as_before(tmp_path):
    caps = photo_folder(tmp_path / "photos")
    (tmp_path / "c.csv").write_text("image,caption\n" + "".join(f"{n},{c[0]}\n" for n, c in caps.items()))
    assert run("data", "from-folder", tmp_path / "photos", tmp_path / "c.csv", tmp_path / "d", "--no-progress") == 0
    assert not list(tmp_path.glob("d/*grid*")) and fmt.problems(tmp_path / "d") == []
    data = load_coco_data(tmp_path / "d")
    assert not [k for k in data if "regions" in k]
    assert set(json.loads((tmp_path / "d" / feat.RECORD_FILE).read_text())) == RECORD_KEYS_WITHOUT_GRID
    assert feat.read_record(tmp_path / "d")["grid"] is None


def _rewrite_grid(path, values, grid):
    path.unlink()
    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=values)
        if grid is not None:
            f["features"].attrs["grid"] = grid


@pytest.mark.parametrize("split, change, message", [
    ("train", lambda r: (r.astype(np.float32), 4),
     "train2014_grid.h5: 'features' must be a float16 array (N, L, C), got float32 (60, 16, 128)"),
    ("train", lambda r: (r[:, :12], 4),
     "must hold L = G * G regions of C > 0 channels per image, got shape (60, 12, 128)"),
    ("val", lambda r: (r, 3),
     "val2014_grid.h5: attribute 'grid' of 'features' must be the grid side 4 of its 16 regions, got np.int64(3)"),
    ("val", lambda r: (r, None), "attribute 'grid' of 'features' must be the grid side 4 of its 16 regions, got None"),
    ("train", lambda r: (r[:59], 4), "train2014_grid.h5: 'features' has 59 rows, but the train split has 60 images"),
    ("val", lambda r: (np.where(np.arange(12)[:, None, None] == 7, np.float16(np.nan), r), 4),
     "val2014_grid.h5: the regions of row 7 of 'features' hold NaN or Inf"),
    ("val", lambda r: (r[:, :, :64], 4),
     ("the splits' grids differ in shape (L regions, C channels): train2014_grid.h5 has (16, 128), "
      "val2014_grid.h5 has (16, 64)")),
    ("val", None,
     "val2014_grid.h5: missing file (the data set's other splits have a grid: every split has one or none does)"),
])
def test_data_check_refuses_a_bad_grid_file_in_one_line(shapes_dir, tmp_path, capsys, split, change, message):
    d = tmp_path / "d"
    shutil.copytree(shapes_dir, d)
    path = d / fmt.grid_file(split)
    if change is None:
        path.unlink()
    else:
        with h5py.File(path) as f:
            regions = f["features"][:]
        _rewrite_grid(path, *change(regions))
    capsys.readouterr()
    assert run("data", "check", d) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    with pytest.raises(fmt.DatasetError, match="invalid dataset"):
        load_coco_data(d)
    assert "train_features" in load_coco_data(d, regions=False)  # the grid left alone: the rest is fine


# ------------------------------------------------------- extraction and sharding


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    """24 pictures and a captions file with train, val and test splits."""
    root = tmp_path_factory.mktemp("pictures")
    caps = photo_folder(root / "photos", copies=4)
    splits = ["train", "train", "val", "train", "test", "train"]
    (root / "c.csv").write_text("image,caption,split\n" + "".join(
        f"{n},{c[0]},{splits[i % 6]}\n" for i, (n, c) in enumerate(caps.items())))
    return root / "photos", root / "c.csv"


@pytest.mark.parametrize("shards", [2, 3])
def test_a_sharded_grid_equals_the_unsharded_one_byte_for_byte(pictures, tmp_path, capsys, monkeypatch, shards):
    """The grid PCA is fitted from block sums of the train regions (8 x 8 regions of 128
    channels: more rows than channels), blocks that straddle the shards' files."""
    images, caps = pictures
    monkeypatch.setattr("capmodel.encoders.randconv.RandConvEncoder.batch_size", 4)  # 24 pictures, 6 batches
    monkeypatch.setattr(fmt, "BLOCK_VALUES", 3 * 64 * 128)  # three pictures' regions at a time
    grid = ("--grid", 8, "--grid-pca", 16)
    assert run("data", "from-folder", images, caps, tmp_path / "whole", *grid, "--no-progress") == 0
    files = [tmp_path / f"shard-{i}.h5" for i in range(1, shards + 1)]
    for i, f in enumerate(reversed(files)):
        assert run("data", "features", images, caps, f, "--shard", f"{shards - i}/{shards}", "--grid", 8,
                   "--no-progress") == 0
    assert run("data", "from-folder", images, caps, tmp_path / "merged", "--features", *files, *grid,
               "--no-progress") == 0
    whole = dataset_bytes(tmp_path / "whole")
    assert dataset_bytes(tmp_path / "merged") == whole
    assert {fmt.grid_file(s) for s in fmt.ALL_SPLITS} | {feat.GRID_PCA_FILE} <= set(whole)
    data = load_coco_data(tmp_path / "whole")
    assert [data[f"{s}_regions"].shape for s in fmt.ALL_SPLITS] == [(16, 64, 16), (4, 64, 16), (4, 64, 16)]
    record = feat.read_record(tmp_path / "whole")
    assert (record["grid"], record["grid_pca_components"], record["grid_mean"].shape) == (8, 16, (128,))
    # the PCA is fitted on the train regions, one row per region, and each component is then
    # standardised: they come out centred, of unit variance, uncorrelated
    train = data["train_regions"].reshape(-1, 16).astype(np.float64)
    assert np.abs(train.mean(axis=0)).max() < 1e-2
    assert np.allclose(np.cov(train, rowvar=False), np.eye(16), atol=1e-2)
    # shards without the grid asked for are refused in one line, and nothing is made
    plain = tmp_path / "plain.h5"
    assert run("data", "features", images, caps, plain, "--no-progress") == 0
    capsys.readouterr()
    assert run("data", "from-folder", images, caps, tmp_path / "bad", "--features", plain, *grid,
               "--no-progress") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds no grid, not the grid of 8 asked for" in err
    assert not (tmp_path / "bad").exists()
    # without --grid the same files make the data set of before, without a grid
    assert run("data", "from-folder", images, caps, tmp_path / "nogrid", "--features", *files, "--no-progress") == 0
    assert run("data", "from-folder", images, caps, tmp_path / "plain", "--features", plain, "--no-progress") == 0
    assert dataset_bytes(tmp_path / "nogrid") == dataset_bytes(tmp_path / "plain")
    assert not fmt.has_grid(tmp_path / "nogrid")


def test_grid_pca_none_keeps_the_encoders_channels_standardised(pictures, tmp_path):
    images, caps = pictures
    assert run("data", "from-folder", images, caps, tmp_path / "d", "--grid", 2, "--grid-pca", "none",
               "--no-progress") == 0
    record = feat.read_record(tmp_path / "d")
    comps = record["grid_components"]  # each channel scaled, none mixed
    assert (record["grid"], record["grid_pca_components"], comps.shape) == (2, 128, (128, 128))
    assert np.array_equal(comps, np.diag(np.diag(comps)))
    data = load_coco_data(tmp_path / "d")
    assert data["train_regions"].shape == (16, 4, 128)
    std = data["train_regions"].reshape(-1, 128).astype(np.float64).std(axis=0, ddof=1)
    assert np.all(np.isclose(std, 1, atol=2e-3) | (std == 0))
    paths = [Path(u.removeprefix("file://")) for u in data["val_urls"]]
    from PIL import Image

    pictures = [Image.open(p).convert("RGB") for p in paths]
    raw = randconv.RandConvEncoder().encode(pictures, grid=2)[1].astype(np.float16)
    want = ((raw.astype(np.float64) - record["grid_mean"]) @ comps).astype(np.float32).astype(np.float16)
    assert np.array_equal(data["val_regions"], want)


@pytest.mark.slow
def test_grid_extraction_killed_midway_resumes_and_equals_an_uninterrupted_one(tmp_path):
    """SIGKILL a `data features --grid` run after some batches; the rerun continues from the
    work file and the features and regions equal those of a run in one go."""
    caps = photo_folder(tmp_path / "photos", copies=8)  # 48 pictures
    (tmp_path / "c.csv").write_text("image,caption\n" + "".join(f"{n},{c[0]}\n" for n, c in caps.items()))
    slow = tmp_path / "slow.py"  # the real CLI, with batches of 4 and a pause after each
    slow.write_text(
        "import sys, time\n"
        "from capmodel.encoders import randconv\n"
        "randconv.RandConvEncoder.batch_size = 4\n"
        "extract = randconv.RandConvEncoder.extract\n"
        "calls = 0\n"
        "def paused(self, x, grid=None):\n"
        "    global calls\n"
        "    calls += 1\n"
        f"    open({str(tmp_path / 'calls')!r}, 'w').write(str(calls))\n"
        "    time.sleep(0.3)\n"
        "    return extract(self, x, grid)\n"
        "randconv.RandConvEncoder.extract = paused\n"
        "from capmodel.app.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n")
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    args = [sys.executable, str(slow), "data", "features", str(tmp_path / "photos"), str(tmp_path / "c.csv")]
    out, partial = tmp_path / "f.h5", tmp_path / "f.h5.partial"
    p = subprocess.Popen(args + [str(out), "--grid", "3"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    calls = tmp_path / "calls"
    while time.time() < deadline and not (calls.exists() and calls.read_text() == "4"):
        time.sleep(0.02)  # the fourth batch is being computed: at least two are written
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert not out.exists()
    done = int(extraction._read_attrs(partial)["done"])
    assert 8 <= done < 48
    r = subprocess.run(args + [str(out), "--grid", "3"], env=env, capture_output=True, text=True, timeout=120,
                       check=False)
    assert r.returncode == 0, r.stderr
    assert f"{done} of 48 pictures already extracted" in r.stdout + r.stderr
    assert not partial.exists()
    r = subprocess.run(args + [str(tmp_path / "g.h5"), "--grid", "3"], env=env, capture_output=True, text=True,
                       timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    with h5py.File(out) as a, h5py.File(tmp_path / "g.h5") as b:
        assert np.array_equal(a["features"][:], b["features"][:]) and a["features"].shape == (48, 2328)
        assert a["regions"].dtype == np.float16 and a["regions"].shape == (48, 9, 128)
        assert np.array_equal(a["regions"][:], b["regions"][:]) and a.attrs["grid"] == 3


def test_a_work_file_of_another_grid_is_not_continued(tmp_path, monkeypatch):
    """A killed run's work file continues only the same work: asked for another grid (or none),
    the extraction starts over; a complete file with a grid also serves a run without one."""
    from capmodel.datasets import folder

    monkeypatch.setattr("capmodel.encoders.randconv.RandConvEncoder.batch_size", 4)
    caps = photo_folder(tmp_path / "photos")
    (tmp_path / "c.csv").write_text("image,caption\n" + "".join(f"{n},{c[0]}\n" for n, c in caps.items()))
    args = (tmp_path / "photos", tmp_path / "c.csv")
    f = tmp_path / "f.h5"
    folder.extract_features(*args, f, grid=2, progress=False)
    os.replace(f, tmp_path / "f.h5.partial")
    with h5py.File(tmp_path / "f.h5.partial", "r+") as h:
        h.attrs["done"] = 4  # as a run killed after one batch leaves it
        h["regions"][4:] = 0
    folder.extract_features(*args, f, grid=3, progress=False)
    with h5py.File(f) as h:
        assert h.attrs["grid"] == 3 and h["regions"].shape == (12, 9, 128)
        regions = h["regions"][:]
    stamp = f.stat().st_mtime_ns
    folder.extract_features(*args, f, progress=False)  # complete, with a grid: kept as it is
    assert f.stat().st_mtime_ns == stamp
    folder.extract_features(*args, tmp_path / "g.h5", grid=3, progress=False)
    with h5py.File(tmp_path / "g.h5") as h:
        assert np.array_equal(h["regions"][:], regions)


# ------------------------------------------------- models computing regions of new pictures


def test_a_model_keeps_the_grid_pca_and_computes_regions_without_its_data_set(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    photo_folder_with_csv(tmp_path)
    assert run("data", "from-folder", "photos", "captions.csv", "data", "--grid", 2, "--grid-pca", 8,
               "--no-progress") == 0
    pipeline.train("data", "model", {"cell_type": "lstm", "num_epochs": 1, "hidden_dim": 8, "wordvec_dim": 8,
                                     "batch_size": 8}, verbose=False)
    data, model = tmp_path / "data", tmp_path / "model"
    original = json.loads((data / feat.RECORD_FILE).read_text())
    copied = json.loads((model / feat.MODEL_RECORD_FILE).read_text())
    assert copied == {**original, "pca_file": feat.MODEL_PCA_FILE, "grid_pca_file": feat.MODEL_GRID_PCA_FILE}
    assert (model / feat.MODEL_GRID_PCA_FILE).read_bytes() == (data / feat.GRID_PCA_FILE).read_bytes()
    identity = json.loads((model / "model.json").read_text())["encoder"]
    assert (identity["grid"], identity["grid_pca_sha256"]) == (2, original["grid_pca_sha256"])

    loaded = load_coco_data(data)
    pictures = [Path(u.removeprefix("file://")) for u in loaded["val_urls"]]
    shutil.copytree(tmp_path / "photos", tmp_path / "kept")
    kept = [tmp_path / "kept" / p.name for p in pictures]
    moved = tmp_path / "elsewhere" / "model"
    shutil.copytree(model, moved)
    shutil.rmtree(data)
    shutil.rmtree(model)
    regions = captioner.model_regions(moved, kept)
    assert regions.dtype == np.float16 and regions.shape == loaded["val_regions"].shape == (len(kept), 4, 8)
    np.testing.assert_array_equal(regions, loaded["val_regions"])
    # `capmodel caption` gives a model that attends over regions (models.uses_regions) these regions
    seen = []

    class Attending:
        uses_regions = True

        def __init__(self, model):
            self.model = model

        def __getattr__(self, name):
            return getattr(self.model, name)

        def sample(self, features, regions=None, **options):
            seen.append(regions)
            return self.model.sample(features, **options)

        def attend(self, features, captions, regions):  # the gallery's weights (N, T, L): flat ones do here
            return np.full((len(features), captions.shape[1] - 1, regions.shape[1]), 1 / regions.shape[1])

    load = captioner.checkpoints.load_model
    monkeypatch.setattr(captioner.checkpoints, "load_model", lambda base: (Attending(load(base)[0]), load(base)[1]))
    rows = captioner.caption_files(moved, kept)
    assert len(rows) == len(kept) and len(seen) == 1 and np.array_equal(seen[0], regions)
    with pytest.raises(ValueError, match="attends over image regions, which precomputed features do not give"):
        captioner.caption_files(moved, kept, features_file=tmp_path / "x.npy")
    monkeypatch.undo()
    # the copy is checked: an altered grid PCA is refused in one line
    with h5py.File(moved / feat.MODEL_GRID_PCA_FILE, "r+") as f:
        f["mean"][0] += 1
    with pytest.raises(ValueError) as e:
        captioner.model_regions(moved, kept)
    assert "\n" not in str(e.value) and f"{feat.MODEL_GRID_PCA_FILE}: does not match the checksum" in str(e.value)


def test_a_model_without_a_grid_says_so_when_asked_for_regions(tmp_path):
    shapes.generate(tmp_path / "d", num_train=20, num_val=4, grid=None)
    pipeline.train(tmp_path / "d", tmp_path / "m", {"cell_type": "rnn", "num_epochs": 1, "hidden_dim": 8,
                                                    "wordvec_dim": 8, "batch_size": 20}, verbose=False)
    assert "grid" not in json.loads((tmp_path / "m" / "model.json").read_text())["encoder"]
    with pytest.raises(ValueError) as e:
        captioner.model_regions(tmp_path / "m", [tmp_path / "d" / "images" / "val"])
    assert "\n" not in str(e.value) and "has no grid of regions (its data set was made without --grid)" in str(e.value)
