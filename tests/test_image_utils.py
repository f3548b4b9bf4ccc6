"""Tests of capmodel.image_utils: open_rgb on the odd files PIL makes here (EXIF-rotated,
16-bit, transparent), thumbnails, and image_from_url over http, file:// and plain paths."""

import base64
import functools
import http.server
import io
import re
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from capmodel.image_utils import BACKGROUND, IMAGE_SUFFIXES, THUMBNAIL_SIDE, image_from_url, open_rgb, thumbnail_uri


@pytest.fixture
def png(tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    path = tmp_path / "img.png"
    Image.fromarray(arr).save(path)
    return path, arr


def test_plain_path_and_file_url(png):
    path, arr = png
    assert np.array_equal(image_from_url(str(path)), arr)
    assert np.array_equal(image_from_url(path.as_uri()), arr)


def test_http_url(png):
    path, arr = png
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(path.parent))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        assert np.array_equal(image_from_url(f"{url}/img.png"), arr)
        with pytest.raises(ValueError, match="could not read image from .*/missing.png"):
            image_from_url(f"{url}/missing.png")
    finally:
        server.shutdown()
        server.server_close()


def test_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="could not read image from .*nothing.png"):
        image_from_url(str(tmp_path / "nothing.png"))
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(ValueError, match="could not read image"):
        image_from_url(str(tmp_path / "text.png"))
    with pytest.raises(ValueError, match="unsupported URL scheme 'ftp'"):
        image_from_url("ftp://example.invalid/x.png")


def as_array(path):
    return np.asarray(open_rgb(path))


@pytest.mark.parametrize("name, mode", [("rgb.png", "RGB"), ("rgb.jpg", "RGB"), ("grey.png", "L"),
                                        ("grey.jpg", "L"), ("palette.png", "P"), ("cmyk.jpg", "CMYK")])
def test_ordinary_files_give_the_pixels_of_pils_rgb_conversion(tmp_path, name, mode):
    """Bit-identity: RGB, grey and palette files without transparency or an EXIF
    orientation come out exactly as Image.convert("RGB") made them before open_rgb."""
    arr = np.random.default_rng(1).integers(0, 256, size=(9, 13, 3), dtype=np.uint8)
    Image.fromarray(arr).convert(mode).save(tmp_path / name)
    with Image.open(tmp_path / name) as img:
        before = np.asarray(img.convert("RGB"))
    assert np.array_equal(as_array(tmp_path / name), before)
    assert before.shape == (9, 13, 3)


def test_exif_orientation_is_applied(tmp_path):
    arr = np.zeros((20, 30, 3), np.uint8)
    arr[:10] = (255, 0, 0)  # top half red
    arr[10:] = (0, 0, 255)  # bottom half blue
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    img.save(tmp_path / "phone.jpg", exif=exif, quality=95)
    with Image.open(tmp_path / "phone.jpg") as stored:
        assert stored.size == (30, 20) and stored.getexif()[0x0112] == 6
    out = as_array(tmp_path / "phone.jpg")
    assert out.shape == (30, 20, 3)  # upright: 20 wide, 30 high
    right, left = out[15, 15].astype(int), out[15, 4].astype(int)
    assert right[0] > 200 and right[2] < 60  # the stored top (red) is now on the right
    assert left[2] > 200 and left[0] < 60


@pytest.mark.parametrize("name, dtype, mode", [("deep.png", np.uint16, "I;16"), ("deep.tif", np.int32, "I")])
def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path, name, dtype, mode):
    values = np.array([[0, 1000, 257 * 100, 32768, 65535]], dtype=dtype)
    Image.fromarray(values).save(tmp_path / name)
    with Image.open(tmp_path / name) as img:
        assert img.mode == mode
    out = as_array(tmp_path / name)
    assert out.shape == (1, 5, 3) and out.dtype == np.uint8
    assert out[..., 0].tolist() == [[0, 4, 100, 128, 255]]  # round(v / 257), not min(v, 255)
    assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 0], out[..., 2])


def test_transparency_is_composited_onto_white(tmp_path):
    assert BACKGROUND == (255, 255, 255)
    rgba = np.array([[[10, 20, 30, 0], [10, 20, 30, 255], [0, 0, 0, 128]]], np.uint8)
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    out = as_array(tmp_path / "rgba.png").astype(int)
    assert out[0, 0].tolist() == [255, 255, 255]  # transparent: the background
    assert out[0, 1].tolist() == [10, 20, 30]  # opaque: unchanged
    assert np.all(abs(out[0, 2] - 127) <= 1)  # half transparent black over white: mid grey
    Image.fromarray(rgba[..., [0, 3]].copy(), mode="LA").save(tmp_path / "la.png")
    assert as_array(tmp_path / "la.png")[0, :2].tolist() == [[255, 255, 255], [10, 10, 10]]


@pytest.mark.parametrize("name", ["palette.png", "palette.gif"])
def test_palette_transparency_is_composited_onto_white(tmp_path, name):
    img = Image.new("P", (3, 1))
    img.putpalette([0, 0, 0, 200, 10, 10, 0, 90, 0] + [0] * (256 * 3 - 9))
    img.putdata([0, 1, 2])
    img.save(tmp_path / name, transparency=0)
    with Image.open(tmp_path / name) as stored:
        assert stored.mode == "P" and stored.info["transparency"] == 0
    assert as_array(tmp_path / name).tolist() == [[[255, 255, 255], [200, 10, 10], [0, 90, 0]]]


@pytest.mark.parametrize("suffix", IMAGE_SUFFIXES)
def test_every_accepted_suffix_reads(tmp_path, suffix):
    arr = np.zeros((6, 8, 3), np.uint8)
    arr[:, 4:] = (200, 40, 40)
    path = tmp_path / f"two_colours{suffix.upper()}"
    Image.fromarray(arr).save(path, **({"lossless": True} if suffix == ".webp" else {}))
    out = as_array(path)
    assert out.shape == (6, 8, 3)
    if suffix in (".jpg", ".jpeg"):
        assert np.abs(out.astype(int) - arr).max() < 40
    else:
        assert np.array_equal(out, arr)


def test_open_rgb_names_the_file(tmp_path):
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(ValueError, match=f"cannot read image {tmp_path / 'text.png'}: "):
        open_rgb(tmp_path / "text.png")
    png = io.BytesIO()
    Image.fromarray(np.zeros((30, 30, 3), np.uint8)).save(png, format="PNG")
    (tmp_path / "cut.png").write_bytes(png.getvalue()[:60])
    with pytest.raises(ValueError, match="cannot read image .*cut.png"):
        open_rgb(tmp_path / "cut.png")


def decode_uri(uri):
    kind, data = uri.removeprefix("data:image/").split(";base64,")
    return kind, Image.open(io.BytesIO(base64.b64decode(data)))


def test_thumbnails_are_small_and_keep_small_pictures_exact(tmp_path):
    yy, xx = np.mgrid[0:1000, 0:1500]
    noise = np.random.default_rng(0).integers(0, 30, size=(1000, 1500, 1))
    photo = np.stack([xx * 200 // 1500, yy * 200 // 1000, (xx + yy) % 256], axis=-1) + noise  # (1000, 1500, 3)
    kind, img = decode_uri(thumbnail_uri(Image.fromarray(photo.astype(np.uint8))))
    assert kind == "jpeg" and img.size == (THUMBNAIL_SIDE, round(THUMBNAIL_SIDE * 2 / 3))
    small = np.random.default_rng(0).integers(0, 256, size=(64, 48, 3), dtype=np.uint8)  # JPEG would be smaller
    kind, img = decode_uri(thumbnail_uri(small))
    assert kind == "png" and np.array_equal(np.asarray(img), small)  # small: exactly as it was
    drawing = np.full((600, 900, 3), 240, np.uint8)
    drawing[100:500, 200:700] = (220, 40, 40)
    kind, img = decode_uri(thumbnail_uri(drawing))
    assert kind == "png" and img.size == (256, 171)  # flat colours: PNG is the smaller


def test_own_data_docs_list_the_accepted_suffixes():
    text = (Path(__file__).resolve().parents[1] / "docs" / "own-data.md").read_text()
    section = text.split("## Which pictures")[1].split("\n## ")[0]
    listed = re.findall(r"`(\.\w+)`", section.split("(`capmodel.image_utils.IMAGE_SUFFIXES`)")[0])
    assert tuple(listed) == IMAGE_SUFFIXES


def test_a_picture_larger_than_the_cap_is_refused_unread(tmp_path, monkeypatch):
    import capmodel.image_utils as iu

    huge = tmp_path / "huge.png"
    with open(huge, "wb") as f:
        f.truncate(iu.MAX_PICTURE_BYTES + 1)  # sparse: nothing is written, and nothing must be read
    with pytest.raises(ValueError, match=rf"huge.png: the file is larger than {iu.MAX_PICTURE_BYTES} bytes"):
        image_from_url(str(huge))
    monkeypatch.setattr(iu, "MAX_PICTURE_BYTES", 100)  # a server sending more than the cap: read up to it
    (tmp_path / "big.png").write_bytes(b"\x89PNG" + bytes(1000))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(ValueError, match="big.png: the picture is larger than 100 bytes"):
            image_from_url(f"http://127.0.0.1:{server.server_port}/big.png")
    finally:
        server.shutdown()
        server.server_close()


_ZERO_DEVICE = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))  # reading the device whole would fail here
from capmodel.app import report_html
from capmodel.image_utils import image_from_url
try:
    image_from_url("/dev/zero")
except ValueError as e:
    print(e)
print(report_html.img_tag("file:///dev/zero"))
"""


def test_a_device_is_not_read_as_a_picture():
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", _ZERO_DEVICE], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.splitlines() == ["could not read image from /dev/zero: not a regular file",
                                     '<span class="na">image unavailable</span>']
