"""Tests of capmodel.image_utils.image_from_url over http, file:// and plain paths."""

import functools
import http.server
import threading

import numpy as np
import pytest
from PIL import Image

from capmodel.image_utils import image_from_url


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
