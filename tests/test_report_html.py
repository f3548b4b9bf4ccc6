"""Tests of capmodel.app.report_html: pictures embedded in the reports as thumbnails."""

import base64
import io

import numpy as np
from PIL import Image

from capmodel.app import report_html
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
