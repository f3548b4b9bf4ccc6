"""Tests of capmodel.app.report_html: pictures embedded in the reports as thumbnails."""

import base64
import io
import json

import numpy as np
from PIL import Image

from capmodel.app import report_html
from capmodel.app.samples import sample_image_urls
from capmodel.image_utils import THUMBNAIL_SIDE


def embedded(tag):
    """The picture of an <img> tag from img_tag: (format, PIL image)."""
    kind, data = tag.split('src="data:image/')[1].split('"')[0].split(";base64,")
    return kind, Image.open(io.BytesIO(base64.b64decode(data)))


def test_a_large_photo_is_embedded_as_a_thumbnail(tmp_path):
    yy, xx = np.mgrid[0:1200, 0:1800]
    noise = np.random.default_rng(0).integers(0, 40, size=(1200, 1800, 1))
    photo = (np.stack([xx * 200 // 1800, yy * 200 // 1200, (xx + yy) % 200], axis=-1) + noise).astype(np.uint8)
    img = Image.fromarray(photo)
    exif = img.getexif()
    exif[0x0112] = 6  # stored sideways, shown upright
    img.save(tmp_path / "photo.jpg", exif=exif, quality=90)
    url = (tmp_path / "photo.jpg").as_uri()
    tag = report_html.img_tag(url)
    kind, thumb = embedded(tag)
    assert kind == "jpeg" and thumb.size == (round(THUMBNAIL_SIDE * 2 / 3), THUMBNAIL_SIDE)  # upright
    assert len(tag) < 40_000  # the full picture as PNG would be megabytes
    assert report_html.thumbnail(url).shape == (THUMBNAIL_SIDE, round(THUMBNAIL_SIDE * 2 / 3), 3)


def test_small_pictures_stay_exact_and_unreadable_ones_are_noted(tmp_path):
    small = np.random.default_rng(1).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    Image.fromarray(small).save(tmp_path / "shape.png")
    kind, thumb = embedded(report_html.img_tag((tmp_path / "shape.png").as_uri()))
    assert kind == "png" and np.array_equal(np.asarray(thumb), small)
    assert "image unavailable" in report_html.img_tag((tmp_path / "gone.png").as_uri())


def test_pictures_of_a_samples_file_resolve_against_its_record_old_file_urls_as_they_are(tmp_path, monkeypatch):
    run = tmp_path / "run"
    (run / "resources" / "data" / "images").mkdir(parents=True)
    new, old = (np.random.default_rng(k).integers(0, 256, size=(8, 8, 3), dtype=np.uint8) for k in (2, 3))
    Image.fromarray(new).save(run / "resources" / "data" / "images" / "0.png")
    Image.fromarray(old).save(tmp_path / "old.png")
    (run / "s.json").write_text(json.dumps({"kind": "samples_record", "data_dir": "resources/data"}))
    monkeypatch.chdir(run)  # as the workflow's jobs: the data_dir is relative to the run directory
    urls = sample_image_urls(run / "s.json", ["images/0.png", (tmp_path / "old.png").as_uri()])
    assert urls == [(run / "resources" / "data" / "images" / "0.png").as_uri(), (tmp_path / "old.png").as_uri()]
    for url, pixels in zip(urls, (new, old)):
        assert np.array_equal(np.asarray(embedded(report_html.img_tag(url))[1]), pixels)
