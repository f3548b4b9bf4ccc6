"""Tests of captioning new images with a trained model (capmodel.captioner, `capmodel caption`)
and of the feature extractor record that makes it possible."""

import json

import numpy as np
import pytest

from capmodel.coco_utils import load_coco_data
from capmodel.datasets import features as feat
from capmodel.image_utils import image_from_url


def test_shapes_record_reproduces_the_stored_features(shapes_dir):
    record = feat.read_record(shapes_dir)
    saved = json.loads((shapes_dir / feat.RECORD_FILE).read_text())
    assert saved["extractor"] == "capmodel-randconv-v1" and saved["image_size"] == 64
    assert saved["created_by"] == "capmodel data shapes" and saved["pca_dim"] == 512
    assert record["components"].shape == (2328, saved["pca_components"])
    pca, fc7 = load_coco_data(shapes_dir), load_coco_data(shapes_dir, pca_features=False)
    for split in ("train", "val"):
        images = np.stack([image_from_url(u) for u in pca[f"{split}_urls"][:5]])
        assert np.array_equal(feat.compute(images, record, pca=False), fc7[f"{split}_features"][:5])
        np.testing.assert_allclose(feat.compute(images, record), pca[f"{split}_features"][:5], atol=1e-5)


def test_record_without_pca_file_or_altered_is_refused(shapes_dir, tmp_path):
    import shutil

    d = tmp_path / "d"
    shutil.copytree(shapes_dir, d, ignore=shutil.ignore_patterns("images"))
    with open(d / feat.PCA_FILE, "ab") as f:
        f.write(b"x")
    with pytest.raises(ValueError, match="does not match the checksum"):
        feat.read_record(d)
    (d / feat.PCA_FILE).unlink()
    with pytest.raises(ValueError, match=f"{feat.PCA_FILE}: missing file"):
        feat.read_record(d)
    (d / feat.RECORD_FILE).unlink()
    assert feat.read_record(d) is None
